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
        "import sys\n"
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
