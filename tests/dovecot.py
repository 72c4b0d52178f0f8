"""A private Debian Dovecot on 127.0.0.1 for the IMAP tests (RELIABILITY.md §0).

Dovecot is the server mailcare meets in production far more often than pymap, and it has
the levers the fault cases need: `doveadm kick` (BYE during IDLE), `mailbox update
--uid-validity`, `mailbox delete`, `expunge`, and real MOVE/UIDPLUS/CONDSTORE semantics.
The instance lives entirely in one temporary folder (config, sockets, state, log, Maildir)
and listens on a free loopback port, so it never touches a system Dovecot.

As root (CI containers) Dovecot refuses to let mail processes run as uid 0, so mail
belongs to `nobody` (65534) and the folder is made traversable for it; as any other user
everything runs as that user.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
USERS: Mapping[str, str] = {"support@lab.test": "secret", "agent1@lab.test": "secret"}
NOBODY = 65534


class DovecotError(RuntimeError):
    """Dovecot could not be started or a doveadm lever failed; the message has its output."""


def available() -> str | None:
    """None when Dovecot can run here, else the reason it cannot."""
    for binary in (DOVECOT, DOVEADM):
        if not os.access(binary, os.X_OK):
            return f"{binary} not found (apt-get install dovecot-imapd)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class Dovecot:
    """One running Dovecot instance; use `Dovecot.start()` and `stop()`."""

    def __init__(self, users: Mapping[str, str] = USERS, spare: int = 500) -> None:
        self.users = dict(users)
        self._spare = [f"box{n}@lab.test" for n in range(1, spare + 1)]
        self.host = "127.0.0.1"
        self.port = 0
        self.lab = Path(tempfile.mkdtemp(prefix="mailcare-dovecot-"))
        self.config = self.lab / "dovecot.conf"
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, users: Mapping[str, str] = USERS) -> Dovecot:
        instance = cls(users)
        try:
            instance._launch()
        except BaseException:
            instance.stop()
            raise
        return instance

    # -- setup ---------------------------------------------------------------------------
    def _launch(self) -> None:
        self.port = _free_port()
        self._write_files()
        # Foreground (-F): the test owns the master process, so stop() ends exactly it, and
        # no daemonised child keeps a pipe of ours open.
        with (self.lab / "log" / "stderr.log").open("wb") as stderr:
            self._process = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        self._wait_listening(timeout=10.0)

    def _identity(self) -> tuple[int, int, str, str]:
        """(mail uid, mail gid, internal user, login user) for whoever runs the tests."""
        if os.getuid() == 0:
            internal = "dovecot" if _user_exists("dovecot") else "nobody"
            login = "dovenull" if _user_exists("dovenull") else "nobody"
            return NOBODY, NOBODY, internal, login
        me = getpass.getuser()
        return os.getuid(), os.getgid(), me, me

    def _write_files(self) -> None:
        uid, gid, internal, login = self._identity()
        for sub in ("run", "state", "log", "mail"):
            (self.lab / sub).mkdir()
        users = self.lab / "users"
        entries = [*self.users.items(), *((name, "secret") for name in self._spare)]
        users.write_text("".join(f"{name}:{{PLAIN}}{pw}\n" for name, pw in entries))
        if os.getuid() == 0:
            # mkdtemp makes 0700 folders; mail processes run as nobody and must reach Maildir.
            self.lab.chmod(0o755)
            os.chown(self.lab / "mail", uid, gid)
            users.chmod(0o644)
        self.config.write_text(self._config_text(uid, gid, internal, login))

    def _config_text(self, uid: int, gid: int, internal: str, login: str) -> str:
        lab = self.lab
        return f"""\
base_dir = {lab}/run
state_dir = {lab}/state
instance_name = mailcare-lab-{self.port}
protocols = imap
listen = 127.0.0.1
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {min(uid, 500)}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# Production keeps the 2 s penalty; tests that log in with a wrong password wait less.
auth_failure_delay = 0
log_path = {lab}/log/dovecot.log
mail_location = maildir:~/Maildir
mail_max_userip_connections = 100
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {lab}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={lab}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
  # No growing auth penalty (up to 15 s per login) for 127.0.0.1 after the wrong-password
  # tests: every later test logs in from the same address.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise DovecotError(f"dovecot exited at start: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
                return
            time.sleep(0.05)
        raise DovecotError(f"dovecot is not listening on {self.port}: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for name in ("stderr.log", "dovecot.log"):
            log = self.lab / "log" / name
            if log.exists():
                text += "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        return text or "(no log)"

    # -- teardown ------------------------------------------------------------------------
    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.lab, ignore_errors=True)

    # -- levers --------------------------------------------------------------------------
    def fresh_user(self) -> str:
        """A mailbox no other test used, so tests sharing one Dovecot never see each
        other's mail. They are all in the users file from the start: Dovecot re-reads a
        changed passwd-file at most once a second, too slow for adding them on demand."""
        name = self._spare.pop(0)
        self.users[name] = "secret"
        return name

    def doveadm(self, *args: str, stdin: bytes | None = None) -> str:
        result = subprocess.run(
            [DOVEADM, "-c", str(self.config), *args],
            input=stdin,
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise DovecotError(
                f"doveadm {' '.join(args)}: exit {result.returncode}: "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result.stdout.decode(errors="replace")

    def deliver(self, user: str, raw: bytes, folder: str = "INBOX") -> None:
        """Save a message as an LDA would (no Sieve); IDLE sessions hear of it."""
        self.doveadm("save", "-u", user, "-m", folder, stdin=raw)

    def kick(self, user: str) -> None:
        """Disconnect every session of the user: clients in IDLE get `* BYE`."""
        self.doveadm("kick", user)

    def set_uidvalidity(self, user: str, value: int, folder: str = "INBOX") -> None:
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(value), folder)

    def status(self, user: str, folder: str = "INBOX") -> dict[str, int]:
        """messages, uidvalidity, uidnext and unseen of a folder."""
        out = self.doveadm(
            "-f", "flow", "mailbox", "status", "-u", user,
            "messages uidvalidity uidnext unseen", folder,
        )  # fmt: skip
        # flow format: "INBOX messages=1 uidnext=2 ..." (the folder name comes first)
        pairs = (word.partition("=") for word in out.split())
        return {key: int(value) for key, sep, value in pairs if sep}

    def create_folder(self, user: str, folder: str) -> None:
        self.doveadm("mailbox", "create", "-u", user, folder)

    def delete_folder(self, user: str, folder: str) -> None:
        """Delete a folder and what is in it (`-s` also unsubscribes)."""
        self.doveadm("mailbox", "delete", "-u", user, "-s", "-r", folder)

    def folders(self, user: str) -> list[str]:
        return self.doveadm("mailbox", "list", "-u", user).split()

    def expunge(self, user: str, uid: int, folder: str = "INBOX") -> None:
        self.doveadm("expunge", "-u", user, "mailbox", folder, "uid", str(uid))

    def flags(self, user: str, folder: str = "INBOX") -> dict[int, str]:
        """UID -> the flags line doveadm prints (for \\Seen and keyword assertions)."""
        out = self.doveadm("-f", "tab", "fetch", "-u", user, "uid flags", "mailbox", folder)
        rows = out.splitlines()[1:]
        parsed = (row.split("\t", 1) for row in rows if row.strip())
        return {int(uid): (rest[0] if rest else "") for uid, *rest in parsed}
