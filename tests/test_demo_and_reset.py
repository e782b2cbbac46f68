"""The demo keeps to a data directory of its own, and `reset` removes a data directory's state, only it,
only after asking, and never while a daemon uses it."""

from __future__ import annotations

import pytest

from engram_ff.daemon.checkpoints import make_folder
from engram_ff.daemon.cli import main
from engram_ff.daemon.config import load_config
from engram_ff.daemon.demo import demo_config
from engram_ff.daemon.lock import DataDirLock
from engram_ff.ingest.reader import catch_up
from engram_ff.state.db import open_db
from tests.daemon_helpers import write_day


def test_the_demo_has_its_own_data_dir_and_watch_folder(tmp_path):
    real = load_config(environ={"XDG_DATA_HOME": str(tmp_path)}, watch_dir=str(tmp_path / "my-engram"))
    demo = demo_config(real, data_given=False)
    assert demo.data_dir != real.data_dir and demo.data_dir.name == "engram-ff-demo"
    assert demo.watch == demo.data_dir / "engram"  # never the user's watch folder
    assert demo.update_budget_minutes == 2.0
    assert demo_config(real, data_given=True).data_dir == real.data_dir  # an explicit --data wins


def test_the_demo_refuses_a_watch_folder(tmp_path, capsys):
    assert main(["run", "--demo", "--watch", str(tmp_path)]) == 2
    assert "the demo watches a folder of its own" in capsys.readouterr().err


@pytest.fixture
def data_dir(tmp_path):
    """A data directory with the default watch folder inside it, a database and checkpoint files."""
    data = tmp_path / "data"
    write_day(data / "engram", "2026-01-01", 5)
    catch_up(open_db(data / "engram-ff.db"), data / "engram")
    make_folder(data / "checkpoints")
    for name in (
        "run000001-final-0000300-0a1b2c3d.pt",
        "run000001-final-0000300-0a1b2c3d.pt.sha256",
        ".run000002-partial-0000100-0a1b2c3d.pt.x8_k2q.tmp",
    ):
        (data / "checkpoints" / name).write_bytes(b"checkpoint")
    for name in ("today.pt", "today.pt.sha256", ".today.pt.k2x9_a.tmp"):  # the day's learning (daemon/today.py)
        (data / name).write_bytes(b"overlay")
    return data


def test_reset_removes_the_state_and_keeps_the_logs(data_dir, tmp_path, capsys):
    outside = tmp_path / "precious.pt"
    outside.write_bytes(b"not ours")
    (data_dir / "checkpoints" / "run000009-final-0000001-deadbeef.pt").symlink_to(outside)
    (data_dir / "notes.txt").write_text("the user's own file")
    assert main(["reset", "--data", str(data_dir), "--yes"]) == 0
    out = capsys.readouterr().out
    assert "5 messages from 1 file" in out and "are not touched" in out
    assert sorted(p.name for p in data_dir.iterdir()) == ["engram", "notes.txt"]
    assert (data_dir / "engram" / "raw" / "2026-01-01.jsonl").stat().st_size > 0
    assert outside.read_bytes() == b"not ours"  # a symlink goes, never what it points at


def test_reset_asks_first(data_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda question: "no")
    assert main(["reset", "--data", str(data_dir)]) == 1
    assert capsys.readouterr().out.endswith("nothing removed\n") and (data_dir / "engram-ff.db").exists()
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["reset", "--data", str(data_dir)]) == 2
    assert "pass --yes" in capsys.readouterr().err and (data_dir / "engram-ff.db").exists()


def test_reset_refuses_while_a_daemon_holds_the_data_dir(data_dir, capsys):
    with DataDirLock(data_dir / "engram-ff.lock"):
        assert main(["reset", "--data", str(data_dir), "--yes"]) == 1
    assert "already uses" in capsys.readouterr().err and (data_dir / "engram-ff.db").exists()


def test_reset_refuses_a_folder_that_was_never_engram_ffs(tmp_path, capsys):
    """Issue #20.1: a.pt and notes.tmp in a checkpoints/ folder of the user's own are not ours."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "a.pt").write_text("x")
    (tmp_path / "checkpoints" / "notes.tmp").write_text("x")
    assert main(["reset", "--data", str(tmp_path), "--yes"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an engram-ff data directory" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["a.pt", "notes.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]  # not even a lock file left


def test_reset_removes_only_engram_ffs_files_and_keeps_a_folder_it_did_not_make(data_dir, capsys):
    """Beside our checkpoints: the user's own files stay, and so does a checkpoint folder without our marker."""
    folder = data_dir / "checkpoints"
    for name in ("a.pt", "notes.tmp", "run1.pt"):
        (folder / name).write_text("the user's")
    assert main(["reset", "--data", str(data_dir), "--yes"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [".engram-ff-checkpoints", "a.pt", "notes.tmp", "run1.pt"]
    other = data_dir.parent / "other"
    (other / "checkpoints").mkdir(parents=True)  # made by the user, but holding a checkpoint engram-ff wrote
    name = "run000003-final-0000010.pt"
    (other / "checkpoints" / name).write_bytes(b"model")
    (other / "checkpoints" / f"{name}.sha256").write_text(f"{'ab' * 32}  {name}\n")
    assert main(["reset", "--data", str(other), "--yes"]) == 0
    assert (other / "checkpoints").is_dir() and list((other / "checkpoints").iterdir()) == []
    assert "removed 2 files" in capsys.readouterr().out


def test_reset_names_the_watch_folder_the_data_dir_last_used(data_dir, tmp_path, capsys):
    from engram_ff.state.queries import remember

    elsewhere = tmp_path / "logs" / "engram"
    db = open_db(data_dir / "engram-ff.db")
    remember(db, "watch_dir", str(elsewhere))  # as `run --watch ~/logs/engram --data DATA` records it
    db.close()
    assert main(["reset", "--data", str(data_dir), "--yes"]) == 0
    assert f"The Engram logs in {elsewhere} are not touched" in capsys.readouterr().out


def test_no_database_in_the_default_dir_names_the_demos(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    open_db(tmp_path / "engram-ff-demo" / "engram-ff.db").close()
    assert main(["ask", "Who is Victor?"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the demo's data is in {tmp_path / 'engram-ff-demo'}: add `--data" in err
    assert not (tmp_path / "engram-ff").exists()


def test_update_reads_what_was_appended_first_and_remembers_the_folder(tmp_path, capsys, monkeypatch):
    """With no daemon running, nothing ingests lines as they are appended: `update` reads them itself, from
    --watch, and later from the folder the data directory remembers."""
    from tests.daemon_helpers import FAST

    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    data, watch = tmp_path / "state", tmp_path / "logs" / "engram"
    write_day(watch, "2026-01-01", 40)
    assert main(["update", "--watch", str(watch), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ingested {watch}: 1 files, 40 lines read: 40 new messages") and "update 1 (run 1) ok" in out
    write_day(watch, "2026-01-02", 30)
    assert main(["update", "--data", str(data)]) == 0  # no --watch: the folder this data directory used
    out = capsys.readouterr().out
    assert out.startswith(f"ingested {watch}: 2 files") and "30 new messages" in out and "update 2 (run 3) ok" in out
    assert main(["status", "--data", str(data)]) == 0
    assert f"watch folder  {watch}\n" in capsys.readouterr().out


def test_the_demo_says_what_next_and_its_ask_line_works(tmp_path):
    """The demo's closing lines, run as printed: they name its --data, so `ask` finds the demo's model."""
    import shlex
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from tests.daemon_helpers import environment

    script = Path(sys.executable).with_name("engram-ff")
    env = environment(XDG_DATA_HOME=str(tmp_path / "share"), HOME=str(tmp_path))
    demo = subprocess.Popen(
        [str(script), "run", "--demo"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out = []
    try:
        for line in demo.stdout:
            out.append(line)
            if line.startswith("  ") and " ask --data " in line:
                break
    finally:
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=120)
    text = "".join(out)
    assert demo.returncode == 0 and "answer_rank" in text and "who-is-victor" in text  # the demo's facts
    assert "answer_rank: where a fact's true answer ranks" in text and "canary: the oldest held-out text" in text
    assert "Ctrl-C stops it." in text and "keeps watching" in text
    assert "apscheduler" not in err and "Adding job tentatively" not in err
    asked = subprocess.run(shlex.split(out[-1]), env=env, capture_output=True, text=True, timeout=120)
    assert asked.returncode == 0 and asked.stdout.strip(), asked.stderr
    assert str(tmp_path / "share" / "engram-ff-demo") in out[-1]
    assert not (tmp_path / "share" / "engram-ff").exists()  # the demo never touched the default directory
