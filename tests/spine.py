"""Helpers for end-to-end tests: a config aimed at lab servers, sample mail, a daemon
running in a thread or as a real `mailcare run` subprocess."""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from mailcare import config as config_mod
from mailcare.daemon import Daemon
from mailcare.store import Store

SUPPORT = "assistenza@examplenet.it"
AGENTS = (("Giulia Rossi", "giulia@examplenet.it"), ("Marco Bianchi", "marco@examplenet.it"))
ROOT = Path(__file__).resolve().parents[1]


def config_text(
    imap_host: str,
    imap_port: int,
    user: str,
    password: str,
    smtp_host: str,
    smtp_port: int,
    state_dir: Path,
    *,
    extra: str = "",
    scope: bool = False,
) -> str:
    """A complete TOML config for the lab. Without `scope` no model is trained (fast)."""
    agents = "".join(
        f'\n[[agents]]\nname = "{name}"\naddress = "{address}"\n' for name, address in AGENTS
    )
    text = f"""
[mailcare]
support_address = "{SUPPORT}"
display_name = "Assistenza ExampleNet"
company = "ExampleNet"
case_tag = "EX"
state_dir = "{state_dir}"
templates_dir = "{ROOT / "templates"}"
secret = "test-secret-0123456789"

[imap]
host = "{imap_host}"
port = {imap_port}
tls = "none"
username = "{user}"
password = "{password}"
idle = true
poll_interval = 1
timeout = 10
batch_size = 50
reconnect_max = 2

[smtp]
host = "{smtp_host}"
port = {smtp_port}
tls = "none"
retry_base = 0.2
retry_max = 1

[limits]
per_sender_max = 50

[owners]
policy = "round_robin"
{agents}
{extra}
"""
    if scope:
        sample = (ROOT / "mailcare.toml").read_text(encoding="utf-8")
        text += "\n" + sample[sample.index("\n[scope]\n") :].replace(
            'examples_dir = "classifiers"', f'examples_dir = "{ROOT / "classifiers"}"'
        )
    return text


def write_config(path: Path, **kwargs: Any) -> Path:
    path.write_text(config_text(**kwargs), encoding="utf-8")
    return path


def customer_mail(
    sender: str = "mario.rossi@libero.it",
    subject: str = "Internet non va",
    body: str = "Da ieri sera la fibra non funziona, la spia è rossa.",
    **headers: str,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Cliente <{sender}>"
    msg["To"] = headers.pop("To", SUPPORT)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(_now())
    msg["Message-ID"] = headers.pop("message_id", None) or make_msgid(domain="lab.test")
    for key, value in headers.items():
        msg[key.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)


def reply_to(sent: bytes, sender: str, body: str, prefix: str = "Re: ", **headers: str) -> bytes:
    """A reply as a mail client writes it: to the Reply-To, threaded, with the quote."""
    original = email.message_from_bytes(sent, policy=email.policy.default)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = str(original["Reply-To"] or original["From"])
    msg["Subject"] = prefix + str(original["Subject"])
    msg["Date"] = format_datetime(_now())
    msg["Message-ID"] = make_msgid(domain="lab.test")
    msg["In-Reply-To"] = str(original["Message-ID"])
    msg["References"] = str(original["Message-ID"])
    for key, value in headers.items():
        msg[key.replace("_", "-")] = value
    part = original.get_body(("plain",))
    quoted = "\n".join("> " + line for line in (part.get_content() if part else "").splitlines())
    msg.set_content(f"{body}\n\nOn Mon, someone wrote:\n{quoted}\n")
    return msg.as_bytes(policy=email.policy.SMTP)


def _now() -> Any:
    from datetime import datetime

    return datetime.now().astimezone()


def header(data: bytes, name: str) -> str:
    return str(email.message_from_bytes(data, policy=email.policy.default).get(name, ""))


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


@contextmanager
def running_daemon(config_path: Path) -> Iterator[Daemon]:
    """The real daemon in a thread of the test process; stopped (SIGTERM path) at the end."""
    settings = config_mod.load(config_path)
    daemon = Daemon(settings, config_path=config_path)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: daemon.ready, 30, "daemon ready")
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(30)
        assert not thread.is_alive(), "daemon did not stop"


def start_process(config_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`mailcare run` as a separate process, the way systemd starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "mailcare.cli", "run", "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def kill(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> bytes:
    process.send_signal(sig)
    out, _ = process.communicate(timeout=30)
    return out


def db(state_dir: Path) -> Store:
    return Store(state_dir / "mailcare.db")


def acks_to(received: list[Any], address: str) -> list[Any]:
    return [
        r
        for r in received
        if address in r.rcpt_tos and header(r.data, "Auto-Submitted").startswith("auto-replied")
    ]


# -- reliability helpers (tests/test_reliability_*.py, bench/soak_kill.py) -------------------


def toml_value(value: Any) -> str:
    """A Python value written as TOML (the few types a config needs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def with_settings(text: str, **tables: Mapping[str, Any]) -> str:
    """A config text with keys set in its tables, replacing the values already there:
    `with_settings(text, limits={"per_sender_max": 3})`. A missing table is added. TOML
    forbids a table twice, so a test cannot simply append `[limits]` to `config_text`."""
    lines = text.splitlines()
    for table, values in tables.items():
        header_line = f"[{table}]"
        if header_line not in (line.strip() for line in lines):
            lines += ["", header_line]
        start = next(i for i, line in enumerate(lines) if line.strip() == header_line) + 1
        end = next(
            (i for i in range(start, len(lines)) if lines[i].lstrip().startswith("[")), len(lines)
        )
        kept = [line for line in lines[start:end] if line.partition("=")[0].strip() not in values]
        lines[start:end] = [f"{key} = {toml_value(value)}" for key, value in values.items()] + kept
    return "\n".join(lines) + "\n"


class Rig:
    """One test's lab: a mailbox on pymap (`LabImap`) or Dovecot, the SMTP sink, a state
    folder, and the config joining them, with tables overridable per test."""

    def __init__(self, tmp: Path, imap: Any, user: str, sink: Any) -> None:
        self.tmp, self.imap, self.user, self.sink = tmp, imap, user, sink
        self.state = tmp / "state"
        self.path = tmp / "mailcare.toml"

    def config(
        self,
        *,
        imap_port: int | None = None,
        smtp_port: int | None = None,
        password: str = "secret",
        scope: bool = False,
        **tables: Mapping[str, Any],
    ) -> Path:
        text = config_text(
            imap_host="127.0.0.1",
            imap_port=imap_port or self.imap.port,
            user=self.user,
            password=password,
            smtp_host=self.sink.host,
            smtp_port=smtp_port or self.sink.port,
            state_dir=self.state,
            scope=scope,
        )
        self.path.write_text(with_settings(text, **tables), encoding="utf-8")
        return self.path

    def deliver(self, raw: bytes, folder: str = "INBOX") -> None:
        self.imap.deliver(self.user, raw, folder)

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Read the daemon's database (read-only, a fresh connection each time)."""
        import sqlite3

        conn = sqlite3.connect(f"file:{self.state / 'mailcare.db'}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def count(self, sql: str, *args: Any) -> int:
        return int(self.rows(sql, *args)[0][0])

    def pending(self) -> int:
        return self.count("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")

    def settle(self, daemon: Daemon, processed: int, timeout: float = 30.0) -> None:
        """Wait until the daemon processed `processed` mails and sent what it queued, plus a
        short grace so a mail that should not go out would have shown up at the sink."""
        wait_until(lambda: daemon.processed >= processed, timeout, f"{processed} processed")
        wait_until(lambda: self.pending() == 0, timeout, "outbox drained")
        time.sleep(0.3)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [
            {"case": case, **json.loads(detail)}
            for case, detail in self.rows(
                "SELECT case_number, detail FROM events WHERE kind = ? ORDER BY id", kind
            )
        ]


def with_top_headers(raw: bytes, *lines: str) -> bytes:
    """Header lines put above the others, where an MTA or LDA writes Return-Path and
    Authentication-Results."""
    return "".join(f"{line}\r\n" for line in lines).encode() + raw


class Watched:
    """A `mailcare run` subprocess whose output is read while it runs, so a test can wait for
    a log line, measure its CPU time, and stop it with any signal."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.process = start_process(config_path, env)
        self.pid = self.process.pid
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self._lines.append(raw.decode("utf-8", "replace"))

    @property
    def output(self) -> str:
        return "".join(list(self._lines))

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        wait_until(
            lambda: text in self.output or self.process.poll() is not None, timeout, repr(text)
        )
        if text not in self.output:
            self._reader.join(5)
            assert text in self.output, (
                f"exited ({self.process.returncode}) without {text!r}:\n{self.output[-3000:]}"
            )

    def cpu_seconds(self) -> float:
        """User + system CPU time so far, from /proc (no psutil needed)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` (if still running) and wait; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code
