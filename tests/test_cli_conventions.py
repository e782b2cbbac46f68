"""Conventions people expect from git, systemctl and sqlite-utils, and no command typed by mistake that
creates or destroys data. Each runs the real command line in-process (daemon/cli.py's main)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from engram_ff.daemon.cli import main
from engram_ff.state.db import open_db


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("engram-ff 0.")


def test_bare_bench_prints_its_help(capsys):
    assert main(["bench"]) == 2
    out = capsys.readouterr().out
    assert "usage: engram-ff bench" in out and "incremental" in out and "--quick" in out


def test_a_misused_command_answers_with_its_own_usage(capsys):
    with pytest.raises(SystemExit) as done:
        main(["status", "--bogus"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "usage: engram-ff status" in err and "unrecognized arguments: --bogus" in err


@pytest.mark.parametrize("command", [["generate"], ["ask", "hi"]])
def test_a_negative_temperature_is_refused(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--temperature", "-1"])
    assert done.value.code == 2 and "--temperature: must be 0 (greedy) or more" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "--verbose"],
        ["history"],
        ["history", "--plot", "h.png"],
        ["probe"],
        ["learned"],
        ["ask", "Who is Victor?"],
        ["generate"],
        ["update"],
        ["reset", "--yes"],
    ],
)
def test_a_mistyped_data_dir_is_an_error_and_nothing_is_created(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "dta"
    assert main([*command, "--data", str(typo)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("engram-ff: ") and err.count("\n") == 1 and str(typo) in err
    assert not typo.exists()


def test_a_missing_watch_folder_is_a_clear_message(tmp_path, capsys):
    data = tmp_path / "data"
    open_db(data / "engram-ff.db").close()
    assert main(["ingest", "--watch", str(tmp_path / "nope"), "--data", str(tmp_path / "fresh")]) == 1
    assert "watch folder" in capsys.readouterr().err and not (tmp_path / "fresh").exists()
    assert main(["update", "--watch", str(tmp_path / "nope"), "--data", str(data)]) == 1
    assert f"watch folder {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_an_update_with_an_empty_watch_folder_is_skipped_after_reading_it(tmp_path, capsys):
    """With no daemon running, `update` reads the watch folder first; an empty one leaves nothing to train."""
    data, watch = tmp_path / "data", tmp_path / "engram"
    (watch / "raw").mkdir(parents=True)
    open_db(data / "engram-ff.db").close()
    assert main(["update", "--watch", str(watch), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ingested {watch}: 0 files") and "update 1 (run 1) skipped" in out


def test_history_plot_into_a_missing_folder_is_one_line(tmp_path, capsys):
    open_db(tmp_path / "engram-ff.db").close()
    assert main(["history", "--data", str(tmp_path), "--plot", "/missing/dir/h.png"]) == 1
    assert (
        capsys.readouterr().err
        == "engram-ff: cannot write /missing/dir/h.png: the folder /missing/dir does not exist\n"
    )


def test_json_for_scripts(tmp_path, capsys):
    open_db(tmp_path / "engram-ff.db").close()
    for command in (["status"], ["history"], ["learned"]):
        assert main([*command, "--data", str(tmp_path), "--json"]) == 0
        json.loads(capsys.readouterr().out)  # whole output is one JSON document
    assert main(["status", "--data", str(tmp_path), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["daemon"] == {"running": False, "pid": None} and facts["messages"]["train"] == 0


def test_ctrl_c_in_a_command_is_one_line(tmp_path):
    """SIGINT while a command waits (reset, for its answer on a terminal) ends it with one line, no traceback."""
    open_db(tmp_path / "engram-ff.db").close()
    script = tmp_path / "reset_on_a_terminal.py"
    script.write_text(
        "import signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal leaves it, also under nohup\n"
        "from engram_ff.daemon.cli import main\n"
        "sys.stdin.isatty = lambda: True  # the prompt needs a terminal; stdin stays an open, silent pipe\n"
        f"sys.exit(main(['reset', '--data', {str(tmp_path)!r}]))\n"
    )
    child = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_output = child.stdout.readline()  # the question is printed before input() waits
        assert "This removes" in wait_for_output
        child.send_signal(signal.SIGINT)
        child.wait(timeout=60)  # before communicate closes stdin: a loaded child could read EOF, "no", first
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130 and err == "engram-ff: interrupted\n"
    assert (tmp_path / "engram-ff.db").exists()  # nothing removed


def test_a_mistyped_command_gets_the_nearest_one(capsys):
    with pytest.raises(SystemExit) as done:
        main(["staus"])
    err = capsys.readouterr().err
    assert (
        done.value.code == 2
        and err.splitlines()[-1] == "engram-ff: error: unknown command 'staus': did you mean 'status'?"
    )


def test_help_and_dash_v_work_as_in_git(capsys):
    assert main(["help"]) == 0
    assert "usage: engram-ff" in capsys.readouterr().out
    assert main(["help", "ask"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: engram-ff ask") and "--data DIR" in out
    assert main(["help", "lerned"]) == 2 and "did you mean 'learned'?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["-V"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("engram-ff 0.")


@pytest.mark.parametrize("command", ["ask", "generate", "history", "learned", "probe"])
def test_commands_that_never_read_the_engram_folder_offer_no_watch(command, capsys):
    assert main(["help", command]) == 0
    assert "--watch" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main([command, *(["q"] if command == "ask" else []), "--watch", "/tmp"])
    assert done.value.code == 2 and "unrecognized arguments: --watch" in capsys.readouterr().err


def test_data_before_the_command_is_the_commands(tmp_path, capsys):
    open_db(tmp_path / "engram-ff.db").close()
    assert main(["--data", str(tmp_path), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["database"] == str(tmp_path / "engram-ff.db")
    with pytest.raises(SystemExit) as done:
        main(["--data", str(tmp_path), "status", "--data", str(tmp_path / "other")])
    assert done.value.code == 2 and "--data given twice" in capsys.readouterr().err


def test_data_naming_the_database_file_says_it_takes_the_directory(tmp_path, capsys):
    open_db(tmp_path / "engram-ff.db").close()
    assert main(["status", "--data", str(tmp_path / "engram-ff.db")]) == 2
    assert capsys.readouterr().err == (
        f"engram-ff: {tmp_path / 'engram-ff.db'} is a file: --data takes the data directory that holds "
        f"engram-ff.db, e.g. --data {tmp_path}\n"
    )


def test_hints_keep_the_users_data_dir(tmp_path, capsys):
    open_db(tmp_path / "engram-ff.db").close()
    assert main(["ask", "hi", "--data", str(tmp_path)]) == 1
    assert capsys.readouterr().err.endswith(f"run `engram-ff update --data {tmp_path}` first\n")
    assert main(["learned", "--data", str(tmp_path)]) == 0
    assert f"`engram-ff update --data {tmp_path}` runs one now" in capsys.readouterr().out
    assert main(["probe", "--data", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (  # said once, not once by the log and once by the command
        f"engram-ff: no trained checkpoint yet: run `engram-ff update --data {tmp_path}` first\n"
    )


def test_config_show_origin_says_where_each_value_came_from(tmp_path, capsys, monkeypatch):
    toml = tmp_path / "e.toml"
    toml.write_text('schedule = "04:30"\n')
    monkeypatch.setenv("ENGRAM_FF_BATCH_SIZE", "8")
    assert main(["config", "--config", str(toml), "--data", str(tmp_path), "--show-origin"]) == 0
    lines = {line.split(" =")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["schedule"].endswith(f"# from file {toml}") and '"04:30"' in lines["schedule"]
    assert lines["batch_size"].endswith("# from environment ENGRAM_FF_BATCH_SIZE")
    assert lines["data_dir"].endswith("# from flag --data")
    assert lines["seq_len"].endswith("# from the default")


def test_library_chatter_is_hidden_unless_debug():
    import logging

    from engram_ff.daemon.logs import setup_logging

    setup_logging("INFO")
    assert not logging.getLogger("apscheduler.scheduler").isEnabledFor(logging.INFO)
    assert not logging.getLogger("matplotlib.font_manager").isEnabledFor(logging.INFO)
    assert logging.getLogger("apscheduler.scheduler").isEnabledFor(logging.WARNING)
    setup_logging("DEBUG")
    assert logging.getLogger("apscheduler.scheduler").isEnabledFor(logging.DEBUG)
    setup_logging("INFO")
