"""The sd_notify protocol over a real unix datagram socket, path and abstract names alike."""

import os
import socket

import pytest

from engram_ff.daemon.notify import Notifier


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        name = f"engram-ff-test-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + name)
        address = "@" + name
    sock.settimeout(5)
    yield sock, address
    sock.close()


def test_ready_status_watchdog_stopping(listener):
    sock, address = listener
    notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "4000000"})
    assert notifier.enabled and notifier.watchdog_interval == 2.0
    notifier.ready("3 files")
    assert sock.recv(4096).decode().split("\n") == ["READY=1", "STATUS=3 files"]
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.stopping()
    assert sock.recv(4096).decode().split("\n") == ["STOPPING=1", "STATUS=stopping"]
    notifier.close()


def test_watchdog_for_another_pid_is_ignored():
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_without_systemd_every_call_is_a_no_op():
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("x") is False
