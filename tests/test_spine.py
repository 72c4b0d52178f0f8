"""The spine end to end against real servers: pymap + aiosmtpd, and Debian's Dovecot.

New mail → exactly one ack with the RFC 3834 header set; a reply → same case, no second ack;
a restart → no duplicate; SIGKILL in the middle of a batch → nothing lost, nothing acked twice.
"""

from __future__ import annotations

import json
import random
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from spine import (
    SUPPORT,
    acks_to,
    customer_mail,
    db,
    header,
    kill,
    reply_to,
    running_daemon,
    start_process,
    wait_until,
    write_config,
)

from mailcare.sandbox import LabImap, LabSmtp

USER, PASSWORD = "support@lab.test", "secret"


class Mailbox:
    """One delivery lever over either IMAP server."""

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        if kind == "pymap":
            self.lab: Any = request.getfixturevalue("lab_imap")
            self.user = USER
            self.host, self.port = self.lab.host, self.lab.port
        else:
            self.lab = request.getfixturevalue("dovecot")
            self.user = request.getfixturevalue("dovecot_user")
            self.host, self.port = "127.0.0.1", self.lab.port

    def deliver(self, raw: bytes) -> None:
        self.lab.deliver(self.user, raw)

    def count(self) -> int:
        if self.kind == "pymap":
            return len(self.lab.messages(self.user))
        return self.lab.status(self.user)["messages"]


@pytest.fixture(params=["pymap", pytest.param("dovecot", marks=pytest.mark.dovecot)])
def mailbox(request: pytest.FixtureRequest) -> Mailbox:
    return Mailbox(request.param, request)


def _config(tmp_path: Path, box: Mailbox, sink: LabSmtp, **kwargs: Any) -> Path:
    return write_config(
        tmp_path / "mailcare.toml",
        imap_host=box.host,
        imap_port=box.port,
        user=box.user,
        password=PASSWORD,
        smtp_host=sink.host,
        smtp_port=sink.port,
        state_dir=tmp_path / "state",
        **kwargs,
    )


def test_new_mail_gets_exactly_one_ack_with_the_right_headers(
    tmp_path: Path, mailbox: Mailbox, lab_smtp: LabSmtp
) -> None:
    """L15: one RCPT, Auto-Submitted, In-Reply-To/References, tag, Message-ID on our domain."""
    config = _config(tmp_path, mailbox, lab_smtp)
    original = customer_mail(message_id="<first@lab.test>")
    with running_daemon(config) as daemon:
        mailbox.deliver(original)
        wait_until(lambda: len(lab_smtp.received) >= 2, what="ack and owner notification")
        time.sleep(0.5)
        assert daemon.processed == 1
    acks = acks_to(lab_smtp.received, "mario.rossi@libero.it")
    assert len(acks) == 1
    ack = acks[0]
    assert ack.rcpt_tos == ("mario.rossi@libero.it",) or list(ack.rcpt_tos) == [
        "mario.rossi@libero.it"
    ]
    assert ack.mail_from.startswith("assistenza+b1000.")  # VERP: bounces tie back to the case
    assert header(ack.data, "Subject") == "[EX #1000] Internet non va"
    assert header(ack.data, "In-Reply-To") == "<first@lab.test>"
    assert "<first@lab.test>" in header(ack.data, "References")
    assert header(ack.data, "Auto-Submitted") == "auto-replied"
    assert header(ack.data, "X-Auto-Response-Suppress") == "All"
    assert header(ack.data, "Message-ID").endswith("@examplenet.it>")
    assert SUPPORT in header(ack.data, "From")
    assert "assistenza+1000." in header(ack.data, "Reply-To")
    assert b"\n" not in ack.data.replace(b"\r\n", b"")  # CRLF only (Postfix 3.9+)
    text = ack.data.decode("utf-8", "replace")
    assert "1000" in text
    owner_mail = [r for r in lab_smtp.received if r is not ack]
    assert owner_mail and owner_mail[0].rcpt_tos[0] in (
        "giulia@examplenet.it",
        "marco@examplenet.it",
    )


def test_reply_joins_the_case_without_a_second_ack(
    tmp_path: Path, mailbox: Mailbox, lab_smtp: LabSmtp
) -> None:
    config = _config(tmp_path, mailbox, lab_smtp)
    with running_daemon(config) as daemon:
        mailbox.deliver(customer_mail())
        wait_until(lambda: len(lab_smtp.received) >= 2)
        ack = acks_to(lab_smtp.received, "mario.rossi@libero.it")[0]
        mailbox.deliver(
            reply_to(
                ack.data, "Cliente <mario.rossi@libero.it>", "Aggiungo: il modem è un ExampleBox 3."
            )
        )
        wait_until(lambda: daemon.processed == 2)
        wait_until(lambda: len(lab_smtp.received) >= 3, what="forward to the owner")
        time.sleep(0.3)
    assert len(acks_to(lab_smtp.received, "mario.rossi@libero.it")) == 1
    forward = lab_smtp.received[-1]
    assert forward.rcpt_tos[0].endswith("@examplenet.it")  # the owner, and only the owner
    store = db(tmp_path / "state")
    messages = store.case_messages(1000)
    inbound = [m for m in messages if m["direction"] == "in"]
    assert [m["matched_by"] for m in inbound][1] in ("token", "tag", "references", "own-message-id")
    assert len(store.cases()) == 1


def test_restart_sends_no_duplicate(tmp_path: Path, mailbox: Mailbox, lab_smtp: LabSmtp) -> None:
    config = _config(tmp_path, mailbox, lab_smtp)
    for n in range(3):
        mailbox.deliver(customer_mail(sender=f"c{n}@example.org", subject=f"Guasto {n}"))
    with running_daemon(config) as daemon:
        wait_until(lambda: daemon.processed == 3 and len(lab_smtp.received) >= 6)
    sent_before = len(lab_smtp.received)
    with running_daemon(config) as daemon:
        time.sleep(1.5)
        assert daemon.processed == 0
    assert len(lab_smtp.received) == sent_before
    assert mailbox.count() == 3  # nothing deleted


def test_sigkill_during_a_batch_loses_nothing_and_acks_once(
    tmp_path: Path, mailbox: Mailbox, lab_smtp: LabSmtp
) -> None:
    """C01/I11/O06 in miniature: kill -9 while a backlog drains, restart, check invariants."""
    config = _config(tmp_path, mailbox, lab_smtp)
    total = 60
    for n in range(total):
        mailbox.deliver(customer_mail(sender=f"k{n}@example.org", subject=f"Problema {n}"))
    rng = random.Random(7)
    for _ in range(3):
        process = start_process(config)
        time.sleep(rng.uniform(0.3, 1.5))
        kill(process, signal.SIGKILL)
    process = start_process(config)
    try:
        store = db(tmp_path / "state")
        wait_until(lambda: _stored(store) == total, 60, "all mail stored")
        wait_until(lambda: _pending(store) == 0, 60, "outbox drained")
    finally:
        out = kill(process, signal.SIGTERM)
    assert process.returncode == 0, out.decode(errors="replace")[-2000:]
    store = db(tmp_path / "state")
    assert store.check() == "ok"
    assert _stored(store) == total
    assert len(store.cases()) == total
    ack_ids: dict[str, set[str]] = {}
    for received in lab_smtp.received:
        if header(received.data, "Auto-Submitted"):
            ack_ids.setdefault(received.rcpt_tos[0], set()).add(header(received.data, "Message-ID"))
    customers = {f"k{n}@example.org" for n in range(total)}
    acked = {to for to in ack_ids if to in customers}
    assert acked == customers  # every case has its ack …
    assert all(len(ack_ids[to]) == 1 for to in customers)  # … and never two different ones
    assert mailbox.count() == total


def _stored(store: Any) -> int:
    return int(
        next(iter(store.query("SELECT COUNT(*) AS n FROM messages WHERE direction = 'in'")))["n"]
    )


def _pending(store: Any) -> int:
    return int(
        next(iter(store.query("SELECT COUNT(*) AS n FROM outbox WHERE status = 'pending'")))["n"]
    )


def test_case_json_lists_both_directions(
    tmp_path: Path, lab_imap: LabImap, lab_smtp: LabSmtp
) -> None:
    from click.testing import CliRunner

    from mailcare.cli import main

    box = Mailbox.__new__(Mailbox)
    box.kind, box.lab, box.user = "pymap", lab_imap, USER
    box.host, box.port = lab_imap.host, lab_imap.port
    config = _config(tmp_path, box, lab_smtp)
    with running_daemon(config):
        lab_imap.deliver(USER, customer_mail())
        wait_until(lambda: len(lab_smtp.received) >= 2)
    result = CliRunner().invoke(main, ["case", "1000", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    directions = {m["direction"] for m in data["messages"]}
    assert directions == {"in", "out"}
    for m in data["messages"]:
        assert m["message_id"] and m["role"]
    assert data["messages"][0]["matched_by"] == "new"
    kinds = [e["kind"] for e in data["events"]]
    assert "case_opened" in kinds and any(k.startswith("sent:") for k in kinds)


def test_c04_fresh_state_on_a_full_mailbox_acks_nothing_old(
    tmp_path: Path, lab_imap: LabImap, lab_smtp: LabSmtp
) -> None:
    """C04: a new or lost database pointed at a mailbox full of old mail must not start an
    ack storm: the old mail is stored as cases, and only fresh mail is answered."""
    from email.utils import format_datetime

    box = Mailbox.__new__(Mailbox)
    box.kind, box.lab, box.user = "pymap", lab_imap, USER
    box.host, box.port = lab_imap.host, lab_imap.port
    old = format_datetime(datetime.now(UTC) - timedelta(days=10))
    for n in range(5):
        raw = customer_mail(sender=f"old{n}@example.org", subject=f"Vecchio {n}")
        lab_imap.deliver(
            USER,
            raw.replace(b"Date: ", b"X-Old-Date: ", 1).replace(
                b"\r\n\r\n", f"\r\nDate: {old}\r\n\r\n".encode(), 1
            ),
        )
    lab_imap.deliver(USER, customer_mail(sender="fresh@example.org", subject="Nuovo"))
    with running_daemon(_config(tmp_path, box, lab_smtp)) as daemon:
        wait_until(lambda: daemon.processed == 6)
        wait_until(lambda: acks_to(lab_smtp.received, "fresh@example.org") != [])
        time.sleep(0.5)
    customers = {r.rcpt_tos[0] for r in lab_smtp.received if "@example.org" in r.rcpt_tos[0]}
    assert customers == {"fresh@example.org"}
    store = db(tmp_path / "state")
    assert len(store.cases()) == 6
    reasons = [e for e in store.case_events(1000) if e["kind"] == "suppressed_autoreply"]
    assert reasons and "stale-mail" in reasons[0]["detail"]
