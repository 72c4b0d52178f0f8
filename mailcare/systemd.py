"""sd_notify(3) without libsystemd: a datagram to $NOTIFY_SOCKET.

The daemon reports READY=1 after its first IMAP login and store check, WATCHDOG=1 from the
intake loop itself (so a wedged loop stops the pings and systemd restarts it), STATUS= with
a one-line summary, and STOPPING=1 on the way out.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time


class Notifier:
    """Talks to systemd when started by it; does nothing otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Ping at half the interval, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = int(usec) / 2e6 if watched else 0.0
        self._last_ping = 0.0
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *lines: str) -> None:
        if not self._address:
            return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):  # systemd gone (e.g. during shutdown): nothing to do
            self._socket.sendto("\n".join(lines).encode(), self._address)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={_one_line(status)}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={_one_line(status)}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self, now: float | None = None) -> None:
        """Ping when due; cheap enough to call on every loop iteration."""
        if not self.watchdog_interval:
            return
        now = time.monotonic() if now is None else now
        if now - self._last_ping >= min(1.0, self.watchdog_interval / 2):
            self._last_ping = now
            self.send("WATCHDOG=1")


def _one_line(text: str) -> str:
    """A newline would end the STATUS= field and start a bogus one (an error text may hold
    several lines)."""
    return " ".join(text.split())
