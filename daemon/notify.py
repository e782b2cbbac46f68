"""systemd's notify protocol: a datagram of `KEY=VALUE` lines to the socket named in NOTIFY_SOCKET.

A few lines over a unix datagram socket are all sd_notify is, so we speak it ourselves rather than
depend on libsystemd. Outside systemd (no NOTIFY_SOCKET) every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace: a leading NUL byte instead of '@'
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_usec = self._watchdog_usec(environ)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self.address else None

    @staticmethod
    def _watchdog_usec(environ) -> int | None:
        """WATCHDOG_USEC applies to us only if WATCHDOG_PID is unset or names this process."""
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) if int(usec) > 0 else None
        except ValueError:
            return None

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the timeout systemd gave us, as sd_watchdog_enabled advises."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def send(self, **fields: object) -> bool:
        if self._socket is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        assert self.address is not None, "a socket is made only for an address"
        try:
            self._socket.sendto(message.encode(), self.address)
            return True
        except OSError as exc:
            log.warning("systemd notify to %r failed: %s", self.address, exc)
            return False

    def ready(self, status: str) -> bool:
        return self.send(ready=1, status=status)

    def status(self, status: str) -> bool:
        return self.send(status=status)

    def watchdog(self) -> bool:
        return self.send(watchdog=1)

    def reloading(self) -> bool:
        return self.send(reloading=1)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(stopping=1, status=status)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
