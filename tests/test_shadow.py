"""Shadow mode: the live inbox is processed and every decision recorded, nothing is sent and
nothing changes on the IMAP server. Going live afterwards does not send what shadow mode
only recorded.
"""

from __future__ import annotations

import email
import email.policy
import time
from pathlib import Path
from typing import Any

import pytest
from spine import (
    SUPPORT,
    config_text,
    customer_mail,
    db,
    running_daemon,
    wait_until,
    with_settings,
)

from mailcare.sandbox import LabImap, LabSmtp

USER, PASSWORD = "support@lab.test", "secret"


def shadow_config(
    tmp_path: Path,
    host: str,
    port: int,
    user: str,
    sink: LabSmtp,
    *,
    mode: str = "shadow",
    processed_folder: str = "",
) -> Path:
    text = config_text(
        imap_host=host,
        imap_port=port,
        user=user,
        password=PASSWORD,
        smtp_host=sink.host,
        smtp_port=sink.port,
        state_dir=tmp_path / "state",
    )
    path = tmp_path / "mailcare.toml"
    path.write_text(
        with_settings(text, mailcare={"mode": mode}, imap={"processed_folder": processed_folder}),
        encoding="utf-8",
    )
    return path


def rows(store: Any, sql: str) -> list[dict[str, Any]]:
    return [dict(row) for row in store.query(sql)]


def marked(flags: dict[int, str]) -> set[int]:
    return {uid for uid, line in flags.items() if "$MailcareProcessed" in line}


def mails() -> list[bytes]:
    return [
        customer_mail(sender="anna@example.org", subject="Fibra lenta", message_id="<s1@lab.test>"),
        customer_mail(
            sender="bruno@example.org",
            subject="No dial tone",
            body="Since this morning the phone line has no dial tone.",
            message_id="<s2@lab.test>",
        ),
        # an out-of-office: recorded, never answered, shadow or not
        customer_mail(
            sender="carla@example.org",
            subject="Out of office",
            body="I am away until Monday.",
            message_id="<s3@lab.test>",
            Auto_Submitted="auto-replied",
        ),
    ]


def test_shadow_records_every_decision_and_sends_nothing(
    tmp_path: Path, lab_imap: LabImap, lab_smtp: LabSmtp
) -> None:
    config = shadow_config(
        tmp_path, lab_imap.host, lab_imap.port, USER, lab_smtp, processed_folder="Processed"
    )
    delivered = mails()
    with running_daemon(config) as daemon:
        for raw in delivered:
            lab_imap.deliver(USER, raw)
        wait_until(lambda: daemon.processed == 3, what="three mails processed")
        time.sleep(1.5)  # an outbox worker, if one ran, would have sent by now
        assert daemon.outbox is None
    assert lab_smtp.received == []
    # Nothing moved to Processed, nothing quarantined, every message untouched.
    assert lab_imap.folders(USER) == ["INBOX"]
    assert lab_imap.messages(USER) == delivered

    store = db(tmp_path / "state")
    cases = {row["customer"]: row for row in store.cases()}
    assert {"anna@example.org", "bruno@example.org"} <= set(cases)
    outbox = rows(store, "SELECT kind, status, to_addr, data FROM outbox ORDER BY id")
    assert outbox and {row["status"] for row in outbox} == {"shadow"}
    acks = [row for row in outbox if row["kind"] == "ack"]
    assert sorted(row["to_addr"] for row in acks) == ["anna@example.org", "bruno@example.org"]
    assert not any(row["to_addr"] == "carla@example.org" for row in outbox)
    # What would have been sent is the complete mail, ready to review.
    ack = email.message_from_bytes(acks[0]["data"], policy=email.policy.default)
    assert SUPPORT in str(ack["From"]) and str(ack["Auto-Submitted"]) == "auto-replied"
    assert "[EX #" in str(ack["Subject"])
    # Every decision is in the case history, including why carla got no answer.
    events = rows(store, "SELECT case_number, kind, detail FROM events ORDER BY id")
    opened = [e for e in events if e["kind"] == "case_opened"]
    assert len(opened) == len(cases)
    details = " ".join(e["kind"] + " " + e["detail"] for e in events)
    assert "auto" in details.lower()
    assert rows(store, "SELECT COUNT(*) AS n FROM messages WHERE direction = 'in'")[0]["n"] == 3

    # Going live: what shadow mode recorded is never sent; new mail is answered for real.
    live = shadow_config(tmp_path, lab_imap.host, lab_imap.port, USER, lab_smtp, mode="live")
    with running_daemon(live) as daemon:
        lab_imap.deliver(USER, customer_mail(sender="dario@example.org", subject="Router KO"))
        wait_until(lambda: daemon.processed == 1, what="the new mail processed")
        wait_until(lambda: len(lab_smtp.received) >= 2, what="ack and owner notification")
        time.sleep(0.5)
    recipients = {to for received in lab_smtp.received for to in received.rcpt_tos}
    assert "dario@example.org" in recipients
    assert not recipients & {"anna@example.org", "bruno@example.org", "carla@example.org"}
    store = db(tmp_path / "state")
    statuses = rows(store, "SELECT status, COUNT(*) AS n FROM outbox GROUP BY status")
    assert {row["status"]: row["n"] for row in statuses}["shadow"] == len(outbox)


@pytest.mark.dovecot
def test_shadow_changes_no_flag_on_dovecot(
    tmp_path: Path, dovecot: Any, dovecot_user: str, lab_smtp: LabSmtp
) -> None:
    """Dovecot keeps keywords (pymap drops them): shadow mode must not set one, nor \\Seen."""
    for raw in mails()[:2]:
        dovecot.deliver(dovecot_user, raw)
    before = dovecot.flags(dovecot_user)
    config = shadow_config(tmp_path, dovecot.host, dovecot.port, dovecot_user, lab_smtp)
    with running_daemon(config) as daemon:
        wait_until(lambda: daemon.processed == 2, what="two mails processed")
        time.sleep(1.0)
    assert dovecot.flags(dovecot_user) == before
    assert not any("$MailcareProcessed" in flags or "\\Seen" in flags for flags in before.values())
    assert lab_smtp.received == []
    assert dovecot.status(dovecot_user)["messages"] == 2

    # The same check would notice marking: live mode sets the keyword on new mail only.
    live = shadow_config(tmp_path, dovecot.host, dovecot.port, dovecot_user, lab_smtp, mode="live")
    with running_daemon(live) as daemon:
        dovecot.deliver(dovecot_user, customer_mail(sender="dario@example.org"))
        wait_until(lambda: daemon.processed == 1, what="the new mail processed")
        wait_until(
            lambda: len(marked(dovecot.flags(dovecot_user))) == 1, what="keyword on the live mail"
        )
    after = dovecot.flags(dovecot_user)
    # Live mode SELECTs read-write, which ends \Recent; what shadow mode recorded stays
    # unmarked, as the progress mark says those mails were handled.
    assert marked(after) == set(after) - set(before)
    assert not any("\\Seen" in after[uid] for uid in after)


def test_shadow_decisions_are_logged_like_live_ones(
    tmp_path: Path, lab_imap: LabImap, lab_smtp: LabSmtp, caplog: pytest.LogCaptureFixture
) -> None:
    """The journal shows what shadow mode would have done, one line per decision."""
    config = shadow_config(tmp_path, lab_imap.host, lab_imap.port, USER, lab_smtp)
    caplog.set_level("INFO", logger="mailcare")
    with running_daemon(config) as daemon:
        lab_imap.deliver(USER, mails()[0])
        wait_until(lambda: daemon.processed == 1)
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("event=shadow_mode") for line in lines)
    decision = [line for line in lines if "action=ack" in line]
    assert len(decision) == 1 and "to=anna@example.org" in decision[0]
    assert "\n" not in decision[0]
