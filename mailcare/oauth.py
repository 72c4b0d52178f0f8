"""XOAUTH2 access tokens from an external command, the way isync and aerc get them.

Google Workspace and Microsoft 365 refuse basic auth; the admin installs whatever OAuth2
helper their provider needs and names it in `oauth2_token_command`. Its output is either a
bare token or JSON with `access_token` and `expires_in`. The token is cached until shortly
before it expires, so the command runs once per token, not once per connection.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
from collections.abc import Callable


class TokenError(Exception):
    """The token command failed; the message says how."""


class TokenCommand:
    def __init__(
        self,
        command: str,
        *,
        default_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command = command
        self.default_ttl = default_ttl
        self._clock = clock
        self._token = ""
        self._expires = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._token and self._clock() < self._expires:
                return self._token
            token, ttl = self._run()
            self._token, self._expires = token, self._clock() + max(0.0, ttl - 60.0)
            return token

    def invalidate(self) -> None:
        """Forget the cached token (after the server rejected it)."""
        with self._lock:
            self._token, self._expires = "", 0.0

    def _run(self) -> tuple[str, float]:
        try:
            done = subprocess.run(
                shlex.split(self.command), capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TokenError(f"oauth2_token_command: {exc}") from exc
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no output"])[0]
            raise TokenError(f"oauth2_token_command exited {done.returncode}: {first}")
        return parse_token_output(done.stdout, self.default_ttl)


def parse_token_output(output: str, default_ttl: float) -> tuple[str, float]:
    """A bare token, or JSON {"access_token": ..., "expires_in": seconds}."""
    text = output.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
            return str(data["access_token"]), float(data.get("expires_in", default_ttl))
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError(f"oauth2_token_command printed unusable JSON: {exc}") from exc
    token = text.splitlines()[0].strip() if text else ""
    if not token:
        raise TokenError("oauth2_token_command printed nothing")
    return token, default_ttl


def token_source(auth: str, command: str) -> TokenCommand | None:
    return TokenCommand(command) if auth == "xoauth2" and command else None
