"""`mailcare run` as systemd runs it: sd_notify (D01-D03), SIGHUP reload, log formats,
`mailcare check`, and no secret in logs or the database (D06).

The daemon runs as a real process where the test is about the process (signals, the
notify socket, stderr); the rest uses the in-thread daemon, which is faster.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from spine import (
    ROOT,
    SUPPORT,
    acks_to,
    config_text,
    customer_mail,
    header,
    reply_to,
    running_daemon,
    wait_until,
    with_settings,
)

from mailcare.cli import main
from mailcare.logs import setup_logging
from mailcare.sandbox import LabAuth, LabImap, LabSmtp
from mailcare.systemd import Notifier

USER = "support@lab.test"
PASSWORD = "secret"

# -- helpers -------------------------------------------------------------------------------


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; every datagram is kept with the
    monotonic time it arrived."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.1)
        self._lock = threading.Lock()
        self._got: list[tuple[float, str]] = []
        self._open = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._open:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._got.append((time.monotonic(), data.decode("utf-8", "replace")))

    def env(self, watchdog_usec: int = 2_000_000) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": str(watchdog_usec)}

    def messages(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._got)

    def lines(self) -> list[str]:
        return [line for _, data in self.messages() for line in data.split("\n")]

    def times(self, line: str) -> list[float]:
        return [at for at, data in self.messages() if line in data.split("\n")]

    def wait_for(self, line: str, timeout: float = 30.0) -> float:
        wait_until(lambda: bool(self.times(line)), timeout, f"{line} on the notify socket")
        return self.times(line)[0]

    def close(self) -> None:
        self._open = False
        self._thread.join(2)
        self._sock.close()


class DaemonProcess:
    """`mailcare run` in a child process, its stderr collected line by line as it comes."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailcare.cli", "run", "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self._lock:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def wait_for(self, pattern: str, timeout: float = 30.0, after: int = 0) -> str:
        """The first stderr line from index `after` on that matches the regex `pattern`;
        fails at once, with the whole output, when the daemon exits first."""

        def matching() -> list[str]:
            return [line for line in self.lines[after:] if re.search(pattern, line)]

        def exited() -> bool:
            return self.process.poll() is not None

        wait_until(lambda: bool(matching()) or exited(), timeout, f"a line matching {pattern!r}")
        if exited():
            self._reader.join(5)  # the last lines may still be in the pipe
        found = matching()
        assert found, f"daemon exited ({self.process.returncode}):\n" + "\n".join(self.lines)
        return found[0]

    def send(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> tuple[int, float]:
        """Send `sig`, wait for the exit; (exit code, seconds it took)."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        self._reader.join(5)
        return code, time.monotonic() - started

    def stdout(self) -> bytes:
        assert self.process.stdout is not None
        return self.process.stdout.read()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


@pytest.fixture
def processes() -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemon processes; any still running at the end are killed."""
    started: list[DaemonProcess] = []

    def start(config: Path, *args: str, env: dict[str, str] | None = None) -> DaemonProcess:
        daemon = DaemonProcess(config, *args, env=env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def write(
    tmp_path: Path,
    imap_port: int,
    sink: LabSmtp,
    *,
    user: str = USER,
    password: str = PASSWORD,
    **tables: Any,
) -> Path:
    """The lab config with some tables' keys replaced."""
    text = config_text(
        imap_host="127.0.0.1",
        imap_port=imap_port,
        user=user,
        password=password,
        smtp_host=sink.host,
        smtp_port=sink.port,
        state_dir=tmp_path / "state",
    )
    path = tmp_path / "mailcare.toml"
    path.write_text(with_settings(text, **tables), encoding="utf-8")
    return path


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def examples(tmp_path: Path) -> Path:
    folder = tmp_path / "examples"
    folder.mkdir(exist_ok=True)
    for name in ("connectivity", "building"):
        shutil.copy(ROOT / "classifiers" / f"{name}.jsonl", folder)
    return folder


def scope_toml(tmp_path: Path) -> str:
    """[scope] and its categories as TOML text (with_settings writes flat tables only)."""
    lines = ["[scope]", f'examples_dir = "{examples(tmp_path)}"']
    lines += ["[scope.categories.connectivity]", 'kind = "in"', 'queue = "network"']
    lines += ["[scope.categories.building]", 'kind = "out"', 'keywords = ["citofono"]']
    for lang in ("it", "en"):
        lines += [
            f"[scope.categories.building.text.{lang}]",
            'reason = "Non riguarda la linea."',
            'where = "l\'amministratore"',
        ]
    return "\n".join(lines) + "\n"


def acked(sink: LabSmtp, customer: str) -> bool:
    return len(acks_to(sink.received, customer)) == 1


def logins(proxy: Any) -> int:
    """LOGIN commands the daemon sent through the proxy: one per IMAP connection."""
    return bytes(proxy.upstream).count(b" LOGIN ")


# -- sd_notify -----------------------------------------------------------------------------


def test_d01_no_ready_while_imap_is_down(
    tmp_path: Path, lab_smtp: LabSmtp, notify: NotifySocket, processes: Callable[..., DaemonProcess]
) -> None:
    """D01: the daemon waits (systemd's start timeout applies) instead of claiming READY;
    the outage is one log line, not one per retry, and `systemctl status` says why;
    SIGTERM still stops it cleanly."""
    port = closed_port()
    config = write(tmp_path, port, lab_smtp)
    daemon = processes(config, env=notify.env())
    daemon.wait_for("event=imap_unavailable")
    time.sleep(3.0)  # reconnect_max = 2 s: a couple of retries happen meanwhile
    assert daemon.process.poll() is None
    assert "READY=1" not in notify.lines()
    assert notify.times("WATCHDOG=1"), "the retry loop itself keeps the watchdog fed"
    assert sum("event=imap_unavailable" in line for line in daemon.lines) == 1
    status = [line for line in notify.lines() if line.startswith("STATUS=")]
    assert status and status[0].startswith(f"STATUS=IMAP 127.0.0.1:{port} unavailable")
    code, took = daemon.stop()
    assert code == 0 and took < 10
    assert "STOPPING=1" in notify.lines()
    assert (tmp_path / "state" / "mailcare.db").exists()


def test_d01_d02_d03_ready_watchdog_status_stopping(
    tmp_path: Path,
    lab_imap: LabImap,
    lab_smtp: LabSmtp,
    notify: NotifySocket,
    fault_proxy: Callable[[str, int], Any],
    processes: Callable[..., DaemonProcess],
) -> None:
    proxy = fault_proxy(lab_imap.host, lab_imap.port)
    # A long IMAP timeout: a stalled server wedges the loop instead of raising quickly.
    config = write(tmp_path, proxy.port, lab_smtp, imap={"timeout": 120})
    daemon = processes(config, env=notify.env(2_000_000))

    # D01: READY=1 after login and SELECT, with the store already open and migrated.
    notify.wait_for("READY=1")
    assert (tmp_path / "state" / "mailcare.db").exists()
    assert any(line.startswith("STATUS=processed 0 mails") for line in notify.lines())

    # STATUS= follows the work.
    lab_imap.deliver(USER, customer_mail())
    wait_until(
        lambda: any(line.startswith("STATUS=processed 1 mails") for line in notify.lines()),
        30,
        "STATUS after one mail",
    )

    # D02: pings at <= 1 s intervals (half of the 2 s WATCHDOG_USEC, at most 1 s) ...
    time.sleep(2.5)
    healthy = notify.times("WATCHDOG=1")
    recent = [at for at in healthy if at > healthy[-1] - 2.5]
    gaps = [b - a for a, b in itertools.pairwise(recent)]
    assert len(recent) >= 3 and max(gaps) <= 1.5, gaps
    # ... and none once the loop is wedged on a stalled IMAP server.
    proxy.stall()
    stalled_at = time.monotonic()
    time.sleep(4.5)  # the IDLE slice in progress ends within ~1 s, then DONE hangs
    after = [at for at in notify.times("WATCHDOG=1") if at > stalled_at + 2.5]
    assert after == [], "pings kept coming from a wedged loop"
    assert daemon.process.poll() is None
    # The server answers again: the same loop resumes pinging.
    proxy.passthrough()
    resumed = time.monotonic()
    wait_until(
        lambda: any(at > resumed for at in notify.times("WATCHDOG=1")), 15, "pings after the stall"
    )

    # D03: SIGTERM -> STOPPING=1 and exit 0 quickly.
    code, took = daemon.stop(signal.SIGTERM)
    assert code == 0, "\n".join(daemon.lines)
    assert took < 10
    assert notify.lines()[-1] == "STOPPING=1"
    assert b" LOGOUT" in bytes(proxy.upstream)  # IDLE ended and the session closed politely
    assert any("event=stopped" in line for line in daemon.lines)


def test_notifier_datagrams(notify: NotifySocket) -> None:
    """sd_notify's wire format: newline-separated assignments, one datagram per call."""
    env = {**notify.env(2_000_000), "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier(env)
    notifier.ready("processed 0 mails;\noutbox 0 pending")
    notifier.watchdog(now=100.0)
    notifier.watchdog(now=100.2)  # too soon: the interval is min(1 s, WATCHDOG_USEC / 4)
    notifier.watchdog(now=100.6)
    notifier.stopping()
    wait_until(lambda: len(notify.messages()) == 4, 5, "four datagrams")
    assert [data for _, data in notify.messages()] == [
        "READY=1\nSTATUS=processed 0 mails; outbox 0 pending",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "STOPPING=1",
    ]


def test_notifier_watchdog_only_for_its_own_pid_and_silent_without_systemd() -> None:
    other = Notifier(
        {
            "NOTIFY_SOCKET": "/nonexistent",
            "WATCHDOG_USEC": "2000000",
            "WATCHDOG_PID": str(os.getpid() + 1),
        }
    )
    assert other.enabled and other.watchdog_interval == 0.0  # meant for another process
    alone = Notifier({})
    assert not alone.enabled
    alone.ready("x")  # no socket, no error
    alone.watchdog(now=1.0)


# -- SIGHUP --------------------------------------------------------------------------------


def test_sighup_reloads_config_templates_and_scope_keeping_the_connection(
    tmp_path: Path,
    lab_imap: LabImap,
    lab_smtp: LabSmtp,
    notify: NotifySocket,
    fault_proxy: Callable[[str, int], Any],
    processes: Callable[..., DaemonProcess],
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    proxy = fault_proxy(lab_imap.host, lab_imap.port)
    config = write(tmp_path, proxy.port, lab_smtp, mailcare={"templates_dir": str(templates)})
    daemon = processes(config, env=notify.env())
    notify.wait_for("READY=1")

    lab_imap.deliver(USER, customer_mail(sender="a@example.org"))
    wait_until(lambda: len(acks_to(lab_smtp.received, "a@example.org")) == 1)
    first = acks_to(lab_smtp.received, "a@example.org")[0].data.decode("utf-8", "replace")
    assert "Servizio Clienti Nuovo" not in first and "PROMEMORIA-RELOAD" not in first

    # New display name, a new line in the ack template, a scope model with a rule.
    ack = templates / "ack.it.txt"
    ack.write_text(ack.read_text(encoding="utf-8") + "PROMEMORIA-RELOAD\n", encoding="utf-8")
    text = config.read_text(encoding="utf-8")
    text = with_settings(text, mailcare={"display_name": "Servizio Clienti Nuovo"})
    config.write_text(text + scope_toml(tmp_path), encoding="utf-8")
    mark = len(daemon.lines)
    daemon.send(signal.SIGHUP)
    assert "imap_reconnect=False" in daemon.wait_for("event=reloaded", after=mark)

    lab_imap.deliver(USER, customer_mail(sender="b@example.org"))
    lab_imap.deliver(
        USER,
        customer_mail(
            sender="c@example.org",
            subject="Citofono",
            body="Il citofono del palazzo non suona più.",
        ),
    )
    wait_until(lambda: len(acks_to(lab_smtp.received, "b@example.org")) == 1)
    second = acks_to(lab_smtp.received, "b@example.org")[0].data.decode("utf-8", "replace")
    assert "PROMEMORIA-RELOAD" in second
    assert "Servizio Clienti Nuovo" in header(
        acks_to(lab_smtp.received, "b@example.org")[0].data, "From"
    )
    wait_until(lambda: len(acks_to(lab_smtp.received, "c@example.org")) == 1)
    redirect = acks_to(lab_smtp.received, "c@example.org")[0].data.decode("utf-8", "replace")
    assert "amministratore" in redirect  # the out category's text: the new scope decided
    assert logins(proxy) == 1  # the same IMAP connection throughout

    # The counter would notice a reconnect: an IMAP setting change makes one.
    config.write_text(
        with_settings(config.read_text(encoding="utf-8"), imap={"timeout": 11}), encoding="utf-8"
    )
    mark = len(daemon.lines)
    daemon.send(signal.SIGHUP)
    assert "imap_reconnect=True" in daemon.wait_for("event=reloaded", after=mark)
    lab_imap.deliver(USER, customer_mail(sender="d@example.org"))
    wait_until(lambda: len(acks_to(lab_smtp.received, "d@example.org")) == 1)
    assert logins(proxy) == 2
    code, _ = daemon.stop()
    assert code == 0


def test_bad_reload_is_rejected_and_the_old_config_keeps_working(
    tmp_path: Path, lab_imap: LabImap, lab_smtp: LabSmtp, caplog: pytest.LogCaptureFixture
) -> None:
    """Each broken change is refused with one log line naming the problem, and the running
    configuration goes on answering mail (in English too: ack.en is the broken template)."""
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    config = write(tmp_path, lab_imap.port, lab_smtp, mailcare={"templates_dir": str(templates)})
    good = config.read_text(encoding="utf-8")
    ack_en = (templates / "ack.en.txt").read_text(encoding="utf-8")
    breakages = {
        "(at line": lambda: config.write_text(good + "\n[unclosed\n", encoding="utf-8"),
        "imap.pasword: unknown key": lambda: config.write_text(
            with_settings(good, imap={"pasword": "x"}), encoding="utf-8"
        ),
        "templates: ack.en": lambda: (templates / "ack.en.txt").write_text(
            "Subject: {{ case_tag }\n\nbroken\n", encoding="utf-8"
        ),
        "state_dir": lambda: config.write_text(
            with_settings(good, mailcare={"state_dir": str(tmp_path / "elsewhere")}),
            encoding="utf-8",
        ),
    }
    caplog.set_level("INFO", logger="mailcare")
    with running_daemon(config) as daemon:
        for n, (reason, breakage) in enumerate(breakages.items()):
            caplog.clear()
            breakage()
            daemon.request_reload()
            wait_until(lambda: any("event=reload" in r.getMessage() for r in caplog.records))
            customer = f"c{n}@example.org"
            body = "My fibre line is down since yesterday."
            lab_imap.deliver(USER, customer_mail(sender=customer, subject="Help", body=body))
            wait_until(
                partial(acked, lab_smtp, customer),
                what=f"the old config still answers after: {reason}",
            )
            lines = [r.getMessage() for r in caplog.records if "event=reload" in r.getMessage()]
            assert len(lines) == 1 and lines[0].startswith("event=reload_rejected"), lines
            assert reason in lines[0] and "\n" not in lines[0]
            config.write_text(good, encoding="utf-8")
            (templates / "ack.en.txt").write_text(ack_en, encoding="utf-8")
    assert daemon.processed == len(breakages)
    assert not (tmp_path / "elsewhere").exists()


# -- logs ----------------------------------------------------------------------------------


def test_text_logs_for_journald_carry_a_priority_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under systemd (JOURNAL_STREAM set) journald stamps the time itself and reads the
    level from a `<N>` prefix (sd-daemon(3)), so `journalctl -p warning` works."""
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    stream = io.StringIO()
    setup_logging("text", "DEBUG", stream)
    try:
        log = logging.getLogger("mailcare")
        log.debug("event=debugging")
        log.info("case=1042 action=ack to=a@example.org")
        log.warning("event=smtp_temporary_failure")
        log.error("event=imap_unavailable")
    finally:
        setup_logging("text", "WARNING", sys.stderr)
    assert stream.getvalue().splitlines() == [
        "<7>event=debugging",
        "<6>case=1042 action=ack to=a@example.org",
        "<4>event=smtp_temporary_failure",
        "<3>event=imap_unavailable",
    ]


def test_text_logs_outside_systemd_have_a_timestamp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    setup_logging("text", "INFO", stream)
    try:
        logging.getLogger("mailcare").info("case=1 action=ack to=x@example.org")
    finally:
        setup_logging("text", "WARNING", sys.stderr)
    line = stream.getvalue().strip()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO case=1 action=ack to=x@example.org", line
    )


def reply_macs(received: list[Any]) -> set[str]:
    """The MAC part of every reply address (`support+<case>.<mac>@`) mailcare handed out."""
    local = re.escape(SUPPORT.partition("@")[0])
    found: set[str] = set()
    for message in received:
        for name in ("Reply-To", "From"):
            found.update(re.findall(rf"{local}\+\d+\.([a-z0-9]+)@", header(message.data, name)))
    return found


def test_json_logs_and_d06_no_secret_in_a_debug_log_or_the_database(
    tmp_path: Path, lab_smtp: LabSmtp, notify: NotifySocket, processes: Callable[..., DaemonProcess]
) -> None:
    """One JSON object per stderr line (decisions with their fields), and D06: neither the
    IMAP nor the SMTP password nor a full reply-token MAC is in a DEBUG log; the database
    holds no password, and tokens only inside the mails that carry them."""
    imap_password, smtp_password = "imap-Pw-7f3c9e", "smtp-Pw-91ab44"
    auth = LabAuth(passwords={"mailer@examplenet.it": smtp_password})
    with LabImap({USER: imap_password}) as imap, LabSmtp(authenticator=auth) as sink:
        config = write(
            tmp_path,
            imap.port,
            sink,
            password=imap_password,
            smtp={"username": "mailer@examplenet.it", "password": smtp_password},
            log={"level": "DEBUG"},
        )
        daemon = processes(config, "--log-format", "json", env=notify.env())
        notify.wait_for("READY=1")
        imap.deliver(USER, customer_mail(sender="a@example.org"))
        wait_until(lambda: len(sink.received) >= 2, what="ack and owner notification")
        ack = acks_to(sink.received, "a@example.org")[0]
        notice = next(r for r in sink.received if r is not ack)
        owner = notice.rcpt_tos[0]
        # The owner answers from their mail client, to the reply address with their token;
        # the customer answers to theirs: both tokens are read and checked.
        imap.deliver(USER, reply_to(notice.data, owner, "Buongiorno, controllo la linea."))
        imap.deliver(USER, reply_to(ack.data, "a@example.org", "Grazie, attendo."))
        wait_until(lambda: len(sink.received) >= 4, what="relay and forward")
        code, _ = daemon.stop()
    assert code == 0
    assert daemon.stdout() == b""
    lines = daemon.lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["level"] == "debug" for r in records)  # a full DEBUG log
    decisions = [r["fields"] for r in records if "action" in r.get("fields", {})]
    (ack_line,) = [d for d in decisions if d["action"] == "ack"]
    assert ack_line["to"] == "a@example.org" and ack_line["case"].isdigit()
    assert ack_line["reason"].startswith("new case, scope ")  # free text kept whole
    assert {"notify_owner", "relay", "forward_owner", "sent"} <= {d["action"] for d in decisions}

    log_text = "\n".join(lines)
    macs = reply_macs(sink.received)
    assert len(macs) >= 2  # the customer's and the owner's tokens
    for secret in (imap_password, smtp_password, *macs):
        assert secret not in log_text

    db_path = tmp_path / "state" / "mailcare.db"
    raw_db = b"".join(path.read_bytes() for path in db_path.parent.glob("mailcare.db*"))
    for password in (imap_password, smtp_password):
        assert password.encode() not in raw_db
    assert_tokens_only_in_mail_bytes(db_path, macs)


def assert_tokens_only_in_mail_bytes(db_path: Path, macs: set[str]) -> None:
    """Reply tokens are part of the mails (the Reply-To we sent, the To of replies), so the
    stored raw bytes carry them; no other column may (events, cases, failures, …)."""
    mail_bytes = {("messages", "raw"), ("messages", "recipients"), ("outbox", "data")}
    conn = sqlite3.connect(db_path)
    try:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        for table in tables:
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            for column in columns:
                if (table, column) in mail_bytes:
                    continue
                for (value,) in conn.execute(f'SELECT "{column}" FROM "{table}"'):
                    text = (
                        value.decode("utf-8", "replace")
                        if isinstance(value, bytes)
                        else (str(value))
                    )
                    leaked = [mac for mac in macs if mac in text]
                    assert not leaked, f"{table}.{column} holds a reply token: {text[:200]}"
    finally:
        conn.close()


# -- mailcare check ------------------------------------------------------------------------


def run_check(config: Path) -> Any:
    return CliRunner().invoke(main, ["check", "--config", str(config)])


def test_check_all_ok(tmp_path: Path, lab_imap: LabImap, lab_smtp: LabSmtp) -> None:
    config = write(tmp_path, lab_imap.port, lab_smtp)
    config.write_text(config.read_text(encoding="utf-8") + scope_toml(tmp_path), encoding="utf-8")
    result = run_check(config)
    assert result.exit_code == 0, result.output
    output = result.output
    assert re.search(r"templates: \d+ kinds x 2 languages render", output)
    assert "scope: model ready" in output
    assert f"imap: logged in to 127.0.0.1:{lab_imap.port}" in output
    assert f"smtp: 127.0.0.1:{lab_smtp.port} answered: 220" in output
    assert "problem:" not in output


def test_check_wrong_imap_password_names_imap(
    tmp_path: Path, lab_imap: LabImap, lab_smtp: LabSmtp
) -> None:
    config = write(tmp_path, lab_imap.port, lab_smtp, password="wrong")
    result = run_check(config)
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1
    assert problems[0].startswith(f"problem: imap: 127.0.0.1:{lab_imap.port}")
    assert "wrong" not in problems[0]  # the password itself is never echoed
    assert "smtp: 127.0.0.1" in result.output  # the other checks still ran


def test_check_reports_every_problem_one_line_each(tmp_path: Path, lab_smtp: LabSmtp) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    (templates / "ack.en.txt").write_text("Subject: {{ nonsense }}\n\nhi\n", encoding="utf-8")
    config = write(tmp_path, closed_port(), lab_smtp, mailcare={"templates_dir": str(templates)})
    result = run_check(config)
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
    assert any(p.startswith("problem: templates: ack.en") for p in problems), problems
    assert any(p.startswith("problem: imap:") for p in problems), problems
    assert "Traceback" not in result.output


def test_check_unknown_key_names_the_key(
    tmp_path: Path, lab_imap: LabImap, lab_smtp: LabSmtp
) -> None:
    config = write(tmp_path, lab_imap.port, lab_smtp, smtp={"retry_bse": 1})
    result = run_check(config)
    assert result.exit_code == 2
    assert "smtp.retry_bse: unknown key" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_sighup_applies_a_new_log_format_and_level(
    tmp_path: Path,
    lab_imap: LabImap,
    lab_smtp: LabSmtp,
    notify: NotifySocket,
    processes: Callable[..., DaemonProcess],
) -> None:
    config = write(tmp_path, lab_imap.port, lab_smtp)
    daemon = processes(config, env=notify.env())
    notify.wait_for("READY=1")
    config.write_text(
        with_settings(config.read_text(encoding="utf-8"), log={"format": "json"}),
        encoding="utf-8",
    )
    mark = len(daemon.lines)
    daemon.send(signal.SIGHUP)
    line = daemon.wait_for("event=reloaded", after=mark)
    record = json.loads(line[line.index("{") :])
    assert record["level"] == "info" and record["fields"]["event"] == "reloaded"
    code, _ = daemon.stop()
    assert code == 0
