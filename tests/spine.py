"""Helpers for end-to-end tests: a config aimed at lab servers, sample mail, a daemon
running in a thread or as a real `mailcare run` subprocess."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
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


def config_text(imap_host: str, imap_port: int, user: str, password: str, smtp_host: str,
                smtp_port: int, state_dir: Path, *, extra: str = "", scope: bool = False) -> str:
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
templates_dir = "{ROOT / 'templates'}"
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
        text += "\n" + sample[sample.index("[scope]"):].replace(
            'examples_dir = "classifiers"', f'examples_dir = "{ROOT / "classifiers"}"')
    return text


def write_config(path: Path, **kwargs: Any) -> Path:
    path.write_text(config_text(**kwargs), encoding="utf-8")
    return path


def customer_mail(sender: str = "mario.rossi@libero.it", subject: str = "Internet non va",
                  body: str = "Da ieri sera la fibra non funziona, la spia è rossa.",
                  **headers: str) -> bytes:
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


def reply_to(sent: bytes, sender: str, body: str, prefix: str = "Re: ",
             **headers: str) -> bytes:
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
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def kill(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> bytes:
    process.send_signal(sig)
    out, _ = process.communicate(timeout=30)
    return out


def db(state_dir: Path) -> Store:
    return Store(state_dir / "mailcare.db")


def acks_to(received: list[Any], address: str) -> list[Any]:
    return [r for r in received if address in r.rcpt_tos and
            header(r.data, "Auto-Submitted").startswith("auto-replied")]
