"""IMAP, SMTP and hostile-input faults through the whole daemon (RELIABILITY I, O, M cases).

The adapters have their own protocol tests (test_imap.py, test_smtp.py). These run the real
daemon, in a thread or as `mailcare run`, against pymap, Debian's Dovecot and the aiosmtpd
sink, and break things the way they break in production: a cut or stalled connection, a
server kicking its clients, a server that is not there yet, a wrong password, a folder
deleted under the daemon's feet, a second instance, a backlog, SMTP refusals and crashes,
and mail built to hurt the parser. Each test ends with the mail accounted for: stored once,
answered at most once, or visibly set aside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from spine import (
    Rig,
    Watched,
    acks_to,
    customer_mail,
    header,
    running_daemon,
    wait_until,
)

import mailcare.pipeline
from mailcare import config as config_mod
from mailcare.daemon import Daemon
from mailcare.sandbox import DROP, LabImap, LabSmtp, Received
from mailcare.systemd import Notifier

USER = "support@lab.test"


@pytest.fixture
def rig(tmp_path: Path, lab_imap: LabImap, lab_smtp: LabSmtp) -> Rig:
    return Rig(tmp_path, lab_imap, USER, lab_smtp)


@pytest.fixture
def dove(tmp_path: Path, dovecot: Any, dovecot_user: str, lab_smtp: LabSmtp) -> Rig:
    return Rig(tmp_path, dovecot, dovecot_user, lab_smtp)


@pytest.fixture
def info_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="mailcare")
    return caplog


def lines_with(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


class LatePort:
    """A loopback port where nothing listens until `open()` (connection refused: the server
    is down), then a plain TCP relay to the real server (it came up)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    def open(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                server = socket.create_connection(self.target)
                self._sockets += [client, server]
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        for each in (source, target):
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for each in [*self._sockets, *([self._listener] if self._listener else [])]:
            each.close()


@contextlib.contextmanager
def late_port(host: str, port: int) -> Iterator[LatePort]:
    late = LatePort(host, port)
    try:
        yield late
    finally:
        late.close()


@contextlib.contextmanager
def daemon_thread(config_path: Path, notifier: Notifier | None = None) -> Iterator[Daemon]:
    """The daemon in a thread, without waiting for READY (for servers that are not up)."""
    daemon = Daemon(config_mod.load(config_path), config_path=config_path, notifier=notifier)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(30)
        assert not thread.is_alive(), "daemon did not stop"


def one_case_one_ack(rig: Rig, sender: str) -> None:
    assert rig.count("SELECT COUNT(*) FROM cases WHERE customer = ?", sender) == 1
    assert (
        rig.count("SELECT COUNT(*) FROM messages WHERE direction = 'in' AND sender = ?", sender)
        == 1
    )
    assert len(acks_to(rig.sink.received, sender)) == 1


# -- IMAP ---------------------------------------------------------------------------------


@pytest.mark.dovecot
def test_i01_uidvalidity_change_neither_acks_nor_duplicates(
    dove: Rig, info_log: pytest.LogCaptureFixture
) -> None:
    senders = [f"i01-{n}@example.org" for n in range(20)]
    for n, sender in enumerate(senders):
        dove.deliver(customer_mail(sender=sender, subject=f"Guasto {n}"))
    with running_daemon(dove.config()) as daemon:
        dove.settle(daemon, 20)
        sent = len(dove.sink.received)
        dove.imap.set_uidvalidity(dove.user, 12345)
        dove.deliver(customer_mail(sender="i01-after@example.org", subject="Dopo il cambio"))
        # The 20 old mails come back under new UIDs; only the new one is news.
        dove.settle(daemon, 41)
    changed = lines_with(info_log, "event=uidvalidity_changed")
    assert len(changed) == 1 and "new=12345" in changed[0]
    assert len(dove.sink.received) == sent + 2  # the new mail's ack and owner notification
    assert dove.count("SELECT COUNT(*) FROM cases") == 21
    assert dove.count("SELECT COUNT(*) FROM messages WHERE direction = 'in'") == 21
    one_case_one_ack(dove, "i01-after@example.org")
    assert dove.rows("SELECT uidvalidity FROM folders") == [(12345,)]


def test_i02_connection_cut_mid_fetch(
    rig: Rig, fault_proxy: Callable[..., Any], info_log: pytest.LogCaptureFixture
) -> None:
    proxy = fault_proxy(rig.imap.host, rig.imap.port)
    big = customer_mail(
        sender="i02@example.org",
        subject="Foto del modem",
        body="Allego le foto.\n" + ("0123456789abcdef" * 4 + "\n") * 46_000,
    )
    assert len(big) > 3_000_000
    with running_daemon(rig.config(imap_port=proxy.port)) as daemon:
        proxy.cut(200_000)  # the next 200 KB from the server, then both sides close
        rig.deliver(big)
        wait_until(lambda: bool(lines_with(info_log, "event=imap_unavailable")), 20, "the cut")
        proxy.passthrough()
        rig.settle(daemon, 1)
    assert "FETCH" in lines_with(info_log, "event=imap_unavailable")[0]
    assert lines_with(info_log, "event=imap_recovered")
    one_case_one_ack(rig, "i02@example.org")
    assert len(rig.rows("SELECT raw FROM messages WHERE direction = 'in'")[0][0]) == len(big)


@pytest.mark.dovecot
def test_i03_bye_during_idle_reconnects_without_spinning(
    dove: Rig, fault_proxy: Callable[..., Any]
) -> None:
    """`doveadm kick` sends BYE to the idling daemon; while the server then does not answer
    (the proxy stalls every new connection) the daemon must sleep, not spin."""
    proxy = fault_proxy("127.0.0.1", dove.imap.port)
    config = dove.config(imap_port=proxy.port, imap={"timeout": 1.0, "reconnect_max": 1.0})
    run = Watched(config)
    try:
        run.wait_for("event=ready")
        time.sleep(0.5)  # into IDLE
        dove.imap.kick(dove.user)
        run.wait_for("event=imap_unavailable")
        proxy.stall()  # before the first reconnect (backoff >= 0.5 s)
        before, started = run.cpu_seconds(), time.monotonic()
        time.sleep(3.0)
        busy = (run.cpu_seconds() - before) / (time.monotonic() - started)
        assert busy < 0.05, f"{busy:.0%} CPU while the server is away"
        proxy.passthrough()
        run.wait_for("event=imap_recovered")
        dove.deliver(customer_mail(sender="i03@example.org"))
        wait_until(lambda: bool(acks_to(dove.sink.received, "i03@example.org")))
    finally:
        assert run.stop() == 0, run.output[-3000:]
    unavailable = [line for line in run.output.splitlines() if "event=imap_unavailable" in line]
    assert len(unavailable) == 1  # one line per outage
    # The BYE, the EOF after it, or (on a loaded machine) the DONE that found a dead peer.
    assert any(word in unavailable[0] for word in ("BYE", "EOF", "IDLE"))


def test_i04_silent_stall_is_detected(
    rig: Rig, fault_proxy: Callable[..., Any], info_log: pytest.LogCaptureFixture
) -> None:
    proxy = fault_proxy(rig.imap.host, rig.imap.port)
    config = rig.config(imap_port=proxy.port, imap={"timeout": 1.5, "reconnect_max": 1.0})
    with running_daemon(config) as daemon:
        proxy.stall()
        rig.deliver(customer_mail(sender="i04@example.org"))
        wait_until(
            lambda: bool(lines_with(info_log, "event=imap_unavailable")), 10, "stall detected"
        )
        proxy.passthrough()
        rig.settle(daemon, 1)
        assert daemon.processed == 1
    assert lines_with(info_log, "event=imap_recovered")
    one_case_one_ack(rig, "i04@example.org")


def test_i06_server_down_at_start(
    rig: Rig, tmp_path: Path, info_log: pytest.LogCaptureFixture
) -> None:
    """No READY=1 while IMAP is unreachable, one log line, no crash; then it works."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.2)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    with notify, late_port(rig.imap.host, rig.imap.port) as late:
        config = rig.config(imap_port=late.port, imap={"reconnect_max": 1.0})
        with daemon_thread(config, notifier) as daemon:
            wait_until(lambda: bool(lines_with(info_log, "event=imap_unavailable")))
            rig.deliver(customer_mail(sender="i06@example.org"))
            time.sleep(2.5)  # a few reconnect attempts
            assert not daemon.ready and b"READY=1" not in drain(notify)
            late.open()
            wait_until(lambda: daemon.ready, what="READY once the server is up")
            rig.settle(daemon, 1)
            assert b"READY=1" in drain(notify)
    unavailable = lines_with(info_log, "event=imap_unavailable")
    assert len(unavailable) == 1 and "Connection refused" in unavailable[0]
    assert len(lines_with(info_log, "event=imap_recovered")) == 1
    one_case_one_ack(rig, "i06@example.org")


def drain(sock: socket.socket) -> bytes:
    got = b""
    with contextlib.suppress(TimeoutError):
        while True:
            got += sock.recv(4096) + b"\n"
    return got


@pytest.mark.dovecot
def test_i07_wrong_password(dove: Rig, info_log: pytest.LogCaptureFixture) -> None:
    password = "Wr0ng-pa55word-i07"
    with daemon_thread(dove.config(password=password)) as daemon:
        wait_until(lambda: bool(lines_with(info_log, "event=imap_auth_failed")))
        time.sleep(2)
        assert not daemon.ready
    assert len(lines_with(info_log, "event=imap_auth_failed")) == 1
    assert password not in info_log.text
    assert all(password not in (r.exc_text or "") for r in info_log.records)
    log = (dove.imap.lab / "log" / "dovecot.log").read_text(errors="replace")
    attempts = [line for line in log.splitlines() if dove.user in line and "auth failed" in line]
    assert len(attempts) <= 1, attempts  # no tight retry loop against the server


@pytest.mark.dovecot
def test_i08_quarantine_folder_deleted_while_running(
    dove: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison = poison_pipeline(monkeypatch, {"i08-a@lab.test", "i08-b@lab.test"})
    config = dove.config(limits={"quarantine_after": 1})
    with running_daemon(config) as daemon:
        dove.deliver(customer_mail(sender="i08@example.org", message_id="<i08-a@lab.test>"))
        wait_until(lambda: quarantined(dove) == 1, what="first quarantine")
        folder = next(name for name in dove.imap.folders(dove.user) if "quarantine" in name)
        dove.imap.delete_folder(dove.user, folder)
        assert folder not in dove.imap.folders(dove.user)
        dove.deliver(customer_mail(sender="i08@example.org", message_id="<i08-b@lab.test>"))
        dove.deliver(customer_mail(sender="i08-ok@example.org"))
        wait_until(lambda: quarantined(dove) == 2, what="second quarantine")
        dove.settle(daemon, 1)
    assert poison == {"i08-a@lab.test": 1, "i08-b@lab.test": 1}
    assert folder in dove.imap.folders(dove.user)  # recreated
    assert dove.imap.status(dove.user, folder)["messages"] == 1
    assert dove.imap.status(dove.user)["messages"] == 1  # the good one stays in INBOX
    one_case_one_ack(dove, "i08-ok@example.org")


def poison_pipeline(monkeypatch: pytest.MonkeyPatch, poison: set[str]) -> dict[str, int]:
    """Make processing raise for these Message-IDs, as a bug would; returns the attempts."""
    real = mailcare.pipeline.process
    attempts: dict[str, int] = {}

    def process(store: Any, engine: Any, mail: Any, **kwargs: Any) -> Any:
        if mail.message_id in poison:
            attempts[mail.message_id] = attempts.get(mail.message_id, 0) + 1
            raise RuntimeError(f"simulated bug on {mail.message_id}")
        return real(store, engine, mail, **kwargs)

    monkeypatch.setattr(mailcare.pipeline, "process", process)
    return attempts


def quarantined(rig: Rig) -> int:
    return rig.count("SELECT COUNT(*) FROM failures WHERE quarantined = 1")


def test_i10_second_daemon_refuses(rig: Rig) -> None:
    with running_daemon(rig.config()) as daemon:
        second = Watched(rig.path)  # `mailcare run` with the same config and state folder
        second.process.wait(30)  # it stops by itself
        assert second.stop() == 1
        assert "another instance holds" in second.output
        assert len(second.output.strip().splitlines()) == 1  # one line, no traceback
        rig.deliver(customer_mail(sender="i10@example.org"))
        rig.settle(daemon, 1)  # the first one carries on
    one_case_one_ack(rig, "i10@example.org")


def test_i12_backlog_in_uid_order_with_caps(rig: Rig) -> None:
    """2,000 mails waiting at start: READY first, then all of them in UID order in batches,
    and no sender gets more acks than the cap however many of its mails wait."""
    senders = [f"i12-{n}@example.org" for n in range(100)]
    total = 2000
    for n in range(total):
        rig.deliver(plain_mail(senders[n % len(senders)], f"Richiesta {n}", f"i12-{n:04d}"))
    config = rig.config(limits={"per_sender_max": 3}, imap={"batch_size": 200})
    # Agents away: no owner notifications, so the test times intake, not 2,000 renderings.
    config.write_text(config.read_text().replace("[[agents]]\n", "[[agents]]\naway = true\n"))
    with running_daemon(config) as daemon:
        assert daemon.processed < total  # READY before the backlog is done
        rig.settle(daemon, total, timeout=120)
    order = rig.rows("SELECT message_id, uid FROM messages WHERE direction = 'in' ORDER BY id")
    assert [mid for mid, _ in order] == [f"i12-{n:04d}@lab.test" for n in range(total)]
    uids = [uid for _, uid in order]
    assert uids == sorted(uids)
    for sender in senders:
        assert len(acks_to(rig.sink.received, sender)) == 3
    assert len(rig.sink.received) == 3 * len(senders)


def plain_mail(sender: str, subject: str, key: str) -> bytes:
    """A minimal customer mail, built by formatting (the email package needs ~5 ms a mail)."""
    return (
        f"From: Cliente <{sender}>\r\nTo: assistenza@examplenet.it\r\n"
        f"Subject: {subject}\r\nDate: {format_datetime(datetime.now(UTC))}\r\n"
        f"Message-ID: <{key}@lab.test>\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"\r\nLa linea non funziona da stamattina.\r\n"
    ).encode()


# -- SMTP ---------------------------------------------------------------------------------


def ack_fault(
    customer: str,
    answers: list[str | None],
    seen: list[Received],
    then: Callable[[Received], None] | None = None,
) -> Callable[[Received], Any]:
    """A sink DATA hook: the ack to `customer` gets `answers` in turn (None = 250), then 250."""

    def fault(message: Received) -> str | None:
        if customer not in message.rcpt_tos:
            return None
        seen.append(message)
        if then is not None:
            then(message)
        return answers.pop(0) if answers else None

    return fault


def test_o01_temporary_failures_then_one_delivery(rig: Rig) -> None:
    customer = "o01@example.org"
    seen: list[Received] = []
    rig.sink.fault = ack_fault(customer, ["451 4.3.0 Try again later (lab)"] * 3, seen)
    with running_daemon(rig.config()) as daemon:
        rig.deliver(customer_mail(sender=customer))
        wait_until(lambda: bool(acks_to(rig.sink.received, customer)), 20, "delivery")
        rig.settle(daemon, 1)
    assert len(seen) == 4
    assert len({header(m.data, "Message-ID") for m in seen}) == 1
    assert len(acks_to(rig.sink.received, customer)) == 1
    status, attempts, error = rig.rows(
        "SELECT status, attempts, last_error FROM outbox WHERE kind = 'ack'"
    )[0]
    assert (status, attempts) == ("sent", 4) and "451" in error
    assert rig.rows("SELECT state FROM cases") == [("new",)]  # the case is unaffected


def test_o02_permanent_failure_is_recorded_once(rig: Rig) -> None:
    customer = "o02@example.org"
    seen: list[Received] = []
    rig.sink.fault = ack_fault(customer, ["554 5.7.1 Rejected by policy (lab)"] * 9, seen)
    with running_daemon(rig.config()) as daemon:
        rig.deliver(customer_mail(sender=customer))
        rig.settle(daemon, 1)
        time.sleep(1.5)  # longer than retry_max: a retry would have come by now
    assert len(seen) == 1
    assert rig.rows("SELECT status, attempts FROM outbox WHERE kind = 'ack'") == [("failed", 1)]
    failed = rig.rows("SELECT detail FROM events WHERE kind = 'send_failed:ack'")
    assert len(failed) == 1 and "554" in failed[0][0]
    assert acks_to(rig.sink.received, customer) == []
    # The dead address shares B01's suppression: no more automatic mail to it for a while.
    suppressed = rig.rows("SELECT address, reason FROM suppressions")
    assert suppressed and suppressed[0][0] == customer and "5xx" in suppressed[0][1]


def test_o03_partial_refusal_is_recorded_per_address(rig: Rig) -> None:
    """mailcare itself writes to one recipient per mail today; a row with three (a relay with
    the customer's Cc) must still be delivered once to the two that are accepted."""
    from mailcare.plan import Outbound, Plan

    to = ("o03@example.org", "perm-gone@example.org", "o03-cc@example.org")
    with running_daemon(rig.config()) as daemon:
        rig.deliver(customer_mail(sender="o03@example.org"))
        rig.settle(daemon, 1)
        store = rig_store(rig)
        with store.batch():
            store.apply(
                Plan(
                    case=1000,
                    outgoing=[
                        Outbound(
                            case=1000,
                            kind="relay",
                            message_id="o03-relay@examplenet.it",
                            envelope_from="assistenza@examplenet.it",
                            to=to,
                            automatic=False,
                            data=customer_mail(
                                sender="assistenza@examplenet.it",
                                subject="Risposta",
                                message_id="<o03-relay@examplenet.it>",
                            ),
                            text="Risposta",
                        )
                    ],
                ),
                now=time.time(),
            )
        store.close()
        assert daemon.outbox is not None
        daemon.outbox.wake()
        wait_until(lambda: rig.pending() == 0, 20, "relay sent")
        time.sleep(1.5)
    copies = [
        r for r in rig.sink.received if header(r.data, "Message-ID") == "<o03-relay@examplenet.it>"
    ]
    assert len(copies) == 1 and set(copies[0].rcpt_tos) == {to[0], to[2]}
    status, attempts, refused = rig.rows(
        "SELECT status, attempts, refused FROM outbox WHERE kind = 'relay'"
    )[0]
    assert (status, attempts) == ("sent", 1)
    assert "perm-gone@example.org" in refused and "550" in refused
    sent = [e for e in rig.events("sent:relay")]
    assert sent and "perm-gone@example.org" in sent[0]["refused"]


def rig_store(rig: Rig) -> Any:
    from mailcare.store import Store

    return Store(rig.state / "mailcare.db")


def test_o04_sink_down_then_up(rig: Rig, info_log: pytest.LogCaptureFixture) -> None:
    senders = [f"o04-{n}@example.org" for n in range(3)]
    late = LatePort(rig.sink.host, rig.sink.port)
    with contextlib.closing(late), running_daemon(rig.config(smtp_port=late.port)) as daemon:
        for sender in senders:
            rig.deliver(customer_mail(sender=sender))
        wait_until(lambda: daemon.processed == 3, what="intake goes on")
        time.sleep(1.5)
        assert rig.pending() == 6 and rig.sink.received == []
        late.open()
        rig.settle(daemon, 3)
    for sender in senders:
        one_case_one_ack(rig, sender)
    assert len(rig.sink.received) == 6
    assert len(lines_with(info_log, "event=smtp_temporary_failure")) == 1  # one per outage
    assert lines_with(info_log, "event=smtp_recovered")


def test_o06_crash_after_the_servers_250(rig: Rig) -> None:
    """The sink takes the ack, then the daemon is SIGKILLed before it hears 250."""
    customer = "o06@example.org"
    seen: list[Received] = []
    runs: list[Watched] = []

    def crash(message: Received) -> None:
        if len(seen) == 1:
            os.kill(runs[-1].pid, signal.SIGKILL)

    rig.sink.fault = ack_fault(customer, [], seen, then=crash)
    config = rig.config()
    runs.append(Watched(config))
    try:
        runs[-1].wait_for("event=ready")
        rig.deliver(customer_mail(sender=customer))
        wait_until(lambda: runs[-1].process.poll() is not None, 20, "the crash")
        assert runs[-1].stop() == -signal.SIGKILL
        runs.append(Watched(config))
        wait_until(
            lambda: rig.count("SELECT COUNT(*) FROM outbox") > 0 and rig.pending() == 0,
            20,
            "the resend",
        )
    finally:
        assert runs[-1].stop() == 0, runs[-1].output[-3000:]
    acks = acks_to(rig.sink.received, customer)
    assert 1 <= len(acks) <= 2  # at most one duplicate …
    assert len({header(a.data, "Message-ID") for a in acks}) == 1  # … with the same id
    assert rig.count("SELECT COUNT(*) FROM cases") == 1


def test_o07_disconnect_after_data(rig: Rig) -> None:
    customer = "o07@example.org"
    seen: list[Received] = []
    rig.sink.fault = ack_fault(customer, [DROP], seen)
    with running_daemon(rig.config()) as daemon:
        rig.deliver(customer_mail(sender=customer))
        wait_until(lambda: len(seen) >= 2, 20, "the retry")
        rig.settle(daemon, 1)
    acks = acks_to(rig.sink.received, customer)
    assert len(acks) == 2  # stored before the drop, and the retry
    assert len({header(a.data, "Message-ID") for a in acks}) == 1
    assert rig.rows("SELECT status FROM outbox WHERE kind = 'ack'") == [("sent",)]


# -- hostile mail (M06-M08, M10) and a poison message ----------------------------------------


def nested(depth: int) -> bytes:
    head = (
        "From: Cliente <m06@example.org>\r\nTo: assistenza@examplenet.it\r\n"
        "Subject: nidificato\r\nMessage-ID: <m06@lab.test>\r\nMIME-Version: 1.0\r\n"
    )
    parts = [head]
    for level in range(depth):
        parts.append(f'Content-Type: multipart/mixed; boundary="b{level}"\r\n\r\n--b{level}\r\n')
    parts.append("Content-Type: text/plain\r\n\r\nciao\r\n")
    parts += [f"--b{level}--\r\n" for level in reversed(range(depth))]
    return "".join(parts).encode()


def many_parts(count: int) -> bytes:
    head = (
        "From: Cliente <m07@example.org>\r\nTo: assistenza@examplenet.it\r\n"
        "Subject: tante parti\r\nMessage-ID: <m07@lab.test>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="p"\r\n\r\n'
    )
    part = "--p\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    return (head + part * count + "--p--\r\n").encode()


def paren_from(count: int) -> bytes:
    return (
        "From: " + "(" * count + "m08@example.org\r\nTo: assistenza@examplenet.it\r\n"
        "Subject: parentesi\r\nMessage-ID: <m08@lab.test>\r\n\r\nciao\r\n"
    ).encode()


def hostile_then_normal(
    rig: Rig, hostile: bytes, message_id: str, **tables: Any
) -> tuple[Daemon, float]:
    """Deliver the hostile mail and a normal one after it; the normal one must be answered.
    Returns the daemon and the seconds the pair took."""
    with running_daemon(rig.config(**tables)) as daemon:
        started = time.monotonic()
        rig.deliver(hostile)
        rig.deliver(customer_mail(sender="next@example.org"))
        wait_until(
            lambda: bool(acks_to(rig.sink.received, "next@example.org")), 60, "the next mail's ack"
        )
        took = time.monotonic() - started
        rig.settle(daemon, 1)
    one_case_one_ack(rig, "next@example.org")
    stored = rig.count("SELECT COUNT(*) FROM messages WHERE message_id = ?", message_id)
    assert stored == 1 or quarantined(rig) == 1, "the hostile mail vanished"
    return daemon, took


@pytest.mark.dovecot
def test_m06_deep_mime_nesting(dove: Rig) -> None:
    # On Dovecot: pymap itself hits Python's recursion limit when this mail is appended.
    hostile_then_normal(dove, nested(1000), "m06@lab.test")


@pytest.mark.dovecot
def test_m07_fifty_thousand_parts(dove: Rig) -> None:
    raw = many_parts(50_000)  # on Dovecot: pymap parses this on append for seconds
    assert len(raw) > 1_500_000
    _, took = hostile_then_normal(dove, raw, "m07@lab.test")
    assert took < 15  # a pre-parse limit, not 19 s of parsing


def test_m08_three_thousand_parens_in_from(rig: Rig) -> None:
    hostile_then_normal(rig, paren_from(3000), "m08@lab.test")


def test_m10_message_over_the_size_limit(rig: Rig) -> None:
    raw = customer_mail(
        sender="m10@example.org",
        subject="Allegato enorme",
        message_id="<m10@lab.test>",
        body="x" * 300_000,
    )
    hostile_then_normal(rig, raw, "m10@lab.test", limits={"max_message_bytes": 100_000})
    stored = rig.rows("SELECT raw, case_number FROM messages WHERE message_id = 'm10@lab.test'")
    assert len(stored[0][0]) < 100_000  # the headers, not the 300 KB body
    assert stored[0][1] is not None  # a case says it came
    assert len(rig.imap.messages(USER)) == 2  # and it is still on the server


def test_poison_message_is_quarantined_and_the_loop_goes_on(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, info_log: pytest.LogCaptureFixture
) -> None:
    attempts = poison_pipeline(monkeypatch, {"poison@lab.test"})
    with running_daemon(rig.config(limits={"quarantine_after": 3})) as daemon:
        rig.deliver(customer_mail(sender="poison@example.org", message_id="<poison@lab.test>"))
        rig.deliver(customer_mail(sender="after@example.org"))
        wait_until(lambda: quarantined(rig) == 1, what="quarantine")
        rig.settle(daemon, 1)
        time.sleep(1)
    assert attempts == {"poison@lab.test": 3}  # then never again
    assert rig.rows("SELECT attempts, quarantined FROM failures") == [(3, 1)]
    assert lines_with(info_log, "event=quarantined")
    one_case_one_ack(rig, "after@example.org")
    assert [header(m, "Message-ID") for m in rig.imap.messages(USER, "mailcare/quarantine")] == [
        "<poison@lab.test>"
    ]
    assert len(rig.imap.messages(USER)) == 1
