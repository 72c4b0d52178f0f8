"""Loop prevention and bounces through the whole daemon (RELIABILITY L01-L16, B01-B06).

The rules themselves have unit tests (test_loops.py, test_bounces.py); here the real daemon
reads real mail from an IMAP server and the SMTP sink shows what actually went out. Every
test checks both sides of "never make things worse": the mail is stored (a case or a note,
never dropped) and no automatic mail goes where it must not.
"""

from __future__ import annotations

import email
import email.policy
import logging
import threading
import time
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import pytest
from spine import (
    SUPPORT,
    Rig,
    acks_to,
    customer_mail,
    header,
    running_daemon,
    wait_until,
    with_top_headers,
)

from mailcare.sandbox import LabImap, LabSmtp, Received

AGENT_ADDRESSES = ("giulia@examplenet.it", "marco@examplenet.it")


@pytest.fixture
def rig(tmp_path: Path, lab_imap: LabImap, lab_smtp: LabSmtp) -> Rig:
    return Rig(tmp_path, lab_imap, "support@lab.test", lab_smtp)


def run(rig: Rig, mails: list[bytes], **tables: Any) -> list[Received]:
    """Deliver `mails`, run the daemon until all are processed and the outbox is empty;
    return everything the sink received."""
    for raw in mails:
        rig.deliver(raw)
    with running_daemon(rig.config(**tables)) as daemon:
        rig.settle(daemon, len(mails))
    return rig.sink.received


def suppressed(rig: Rig) -> dict[str, str]:
    """Address -> why the automatic answer to it was withheld (from the case log)."""
    return {e["to"]: e["reason"] for e in rig.events("suppressed_autoreply")}


def case_of(rig: Rig, sender: str) -> list[tuple[Any, ...]]:
    return rig.rows("SELECT number, is_auto, state FROM cases WHERE customer = ?", sender)


def with_attachment(raw: bytes, name: str, data: bytes) -> bytes:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes(policy=email.policy.SMTP)


# -- L01-L07, L14: mail the daemon must not answer ----------------------------------------


def test_l01_null_return_path_opens_a_case_without_ack(rig: Rig) -> None:
    received = run(
        rig,
        [
            with_top_headers(customer_mail(sender="l01a@example.org"), "Return-Path: <>"),
            with_top_headers(customer_mail(sender="l01b@example.org"), "Return-Path: <<>>"),
            with_top_headers(
                customer_mail(sender="l01c@example.org"), "Return-Path: <l01c@example.org>"
            ),
        ],
    )
    for sender in ("l01a@example.org", "l01b@example.org"):
        assert case_of(rig, sender), f"{sender}: no case"
        assert acks_to(received, sender) == []
        assert suppressed(rig)[sender] == "null-return-path"
    assert len(acks_to(received, "l01c@example.org")) == 1  # the control


def test_l02_auto_submitted_values(rig: Rig) -> None:
    values = [
        "auto-replied",
        "auto-generated",
        "auto-notified",
        'Auto-Replied; owner-email="x@y.example"',
        "AUTO-GENERATED",
    ]
    mails = [
        customer_mail(sender=f"l02-{n}@example.org", Auto_Submitted=value)
        for n, value in enumerate(values)
    ]
    mails.append(customer_mail(sender="l02-no@example.org", Auto_Submitted="no"))
    received = run(rig, mails)
    for n in range(len(values)):
        sender = f"l02-{n}@example.org"
        assert acks_to(received, sender) == [], values[n]
        assert [row[1] for row in case_of(rig, sender)] == [1], "case flagged is_auto"
        assert suppressed(rig)[sender].startswith("auto-submitted:")
    assert len(acks_to(received, "l02-no@example.org")) == 1
    assert [row[1] for row in case_of(rig, "l02-no@example.org")] == [0]


def test_l03_precedence_every_header_counts(rig: Rig) -> None:
    mails = [
        customer_mail(sender=f"l03-{value}@example.org", Precedence=value)
        for value in ("bulk", "junk", "list")
    ]
    # RT's vector: the first Precedence is harmless, the second one is not.
    mails.append(
        with_top_headers(
            customer_mail(sender="l03-two@example.org"),
            "Precedence: never-bounce",
            "Precedence: bulk",
        )
    )
    received = run(rig, mails)
    for sender in ("l03-bulk", "l03-junk", "l03-list", "l03-two"):
        assert case_of(rig, f"{sender}@example.org")
        assert acks_to(received, f"{sender}@example.org") == []
    assert suppressed(rig)["l03-two@example.org"] == "precedence:bulk"


def test_l04_mailing_list_headers(rig: Rig) -> None:
    headers = {
        "List-Id": "<support.lists.example.org>",
        "List-Help": "<mailto:list-request@lists.example.org?subject=help>",
        "List-Subscribe": "<mailto:list-request@lists.example.org?subject=subscribe>",
        "List-Unsubscribe": "<https://lists.example.org/unsubscribe>",
        "List-Post": "<mailto:list@lists.example.org>",
        "List-Owner": "<mailto:list-owner@lists.example.org>",
        "List-Archive": "<https://lists.example.org/archive/>",
    }
    mails = [
        customer_mail(sender=f"l04-{n}@example.org", **{name.replace("-", "_"): value})
        for n, (name, value) in enumerate(headers.items())
    ]
    received = run(rig, mails)
    for n, name in enumerate(headers):
        sender = f"l04-{n}@example.org"
        assert case_of(rig, sender), f"{name}: no case"
        assert acks_to(received, sender) == [], name
        assert suppressed(rig)[sender] == f"list-header:{name.lower()}"


def test_l06_system_senders(rig: Rig) -> None:
    locals_ = [
        "MAILER-DAEMON",
        "LISTSERV",
        "majordomo",
        "foo-request",
        "owner-foo",
        "noreply",
        "no-reply",
        "postmaster",
        "abuse",
        "root",
    ]
    senders = [f"{local}@l06.example.net" for local in locals_]
    mails = [
        with_top_headers(
            customer_mail(sender=sender, subject=f"Avviso {n}"), f"Return-Path: <{sender}>"
        )
        for n, sender in enumerate(senders)
    ]
    received = run(rig, mails)
    assert not [r for r in received if set(r.rcpt_tos) & {s.lower() for s in senders}]
    assert not [r for r in received if r.rcpt_tos[0] not in AGENT_ADDRESSES]
    # Humans read postmaster@ and abuse@ (RFC 5230 4.6): their mail is a case as usual.
    for local in ("postmaster", "abuse"):
        assert case_of(rig, f"{local}@l06.example.net"), local
    assert rig.count("SELECT COUNT(*) FROM messages WHERE direction = 'in'") == len(senders)


def test_l07_own_address_and_alias(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailcare")
    mails = [
        customer_mail(sender=SUPPORT, subject="Copia di una nostra risposta"),
        customer_mail(sender="help@examplenet.it", subject="Inoltro automatico"),
    ]
    received = run(rig, mails, mailcare={"aliases": ["help@examplenet.it"]})
    assert received == []
    assert rig.count("SELECT COUNT(*) FROM cases") == 0
    assert rig.count("SELECT COUNT(*) FROM messages WHERE role = 'own'") == 2  # kept, not lost
    assert len(rig.events("own_address_inbound")) == 2
    assert sum("own_address_inbound" in r.getMessage() for r in caplog.records) == 2


def test_l14_bcc_opens_a_case_without_ack(rig: Rig) -> None:
    """Delivered by Bcc: only the LDA's Delivered-To names us, never To or Cc."""
    raw = customer_mail(sender="l14@example.org").replace(
        f"To: {SUPPORT}".encode(), b"To: team@l14.example.org"
    )
    raw = with_top_headers(raw, f"Delivered-To: {SUPPORT}", "Return-Path: <l14@example.org>")
    received = run(rig, [raw, customer_mail(sender="l14-control@example.org")])
    assert case_of(rig, "l14@example.org")
    assert acks_to(received, "l14@example.org") == []
    assert suppressed(rig)["l14@example.org"] == "not-addressed-to-us"
    assert len(acks_to(received, "l14-control@example.org")) == 1


# -- L08, L12: our own mail and answers to it come back ------------------------------------


def test_l08_our_own_ack_forwarded_back(rig: Rig) -> None:
    with running_daemon(rig.config()) as daemon:
        rig.deliver(customer_mail(sender="l08@example.org"))
        rig.settle(daemon, 1)
        ack = acks_to(rig.sink.received, "l08@example.org")[0]
        sent = len(rig.sink.received)
        # The customer's auto-forward sends it back unchanged, then once with a new
        # Message-ID (some forwarders rewrite it; the loop header still marks it as ours).
        rig.deliver(
            with_top_headers(
                ack.data, "Received: from mx.example.org by lab", "Return-Path: <l08@example.org>"
            )
        )
        renamed = ack.data.replace(
            header(ack.data, "Message-ID").encode(), make_msgid(domain="fwd.example.org").encode()
        )
        rig.deliver(with_top_headers(renamed, "Return-Path: <l08@example.org>"))
        rig.settle(daemon, 3)
    assert len(rig.sink.received) == sent  # no ack, no notification
    assert rig.count("SELECT COUNT(*) FROM cases") == 1
    # The unchanged copy is our own stored outgoing mail (same Message-ID): a duplicate.
    assert daemon.processed == 3
    # The renamed copy is kept: as our own mail, or as a silent note on its case (L08).
    kept = "SELECT COUNT(*) FROM messages WHERE direction = 'in' AND role IN ('own', 'auto')"
    assert rig.count(kept) == 1


def test_l12_out_of_office_reply_to_our_ack(rig: Rig) -> None:
    with running_daemon(rig.config()) as daemon:
        rig.deliver(customer_mail(sender="l12@example.org"))
        rig.settle(daemon, 1)
        ack = acks_to(rig.sink.received, "l12@example.org")[0]
        sent = len(rig.sink.received)
        state = case_of(rig, "l12@example.org")[0][2]
        oof = EmailMessage()
        oof["From"] = "Cliente <l12@example.org>"
        oof["To"] = header(ack.data, "Reply-To")
        oof["Subject"] = "Automatic reply: " + header(ack.data, "Subject")
        oof["Date"] = format_datetime(time_now())
        oof["Message-ID"] = make_msgid(domain="example.org")
        oof["In-Reply-To"] = header(ack.data, "Message-ID")
        oof["Auto-Submitted"] = "auto-replied"
        oof.set_content("Sono fuori ufficio fino a lunedì.")
        rig.deliver(oof.as_bytes(policy=email.policy.SMTP))
        rig.settle(daemon, 2)
    assert len(rig.sink.received) == sent  # no ack, owner not notified
    case, _, state_after = case_of(rig, "l12@example.org")[0]
    assert state_after == state
    roles = rig.rows(
        "SELECT role FROM messages WHERE case_number = ? AND direction = 'in' ORDER BY id", case
    )
    assert [r[0] for r in roles] == ["customer", "auto"]
    assert rig.count("SELECT COUNT(*) FROM cases") == 1


def time_now() -> Any:
    from datetime import datetime

    return datetime.now().astimezone()


# -- L09-L11: senders that no header gives away --------------------------------------------


def test_l09_ping_pong_robot_stops_by_itself(rig: Rig) -> None:
    """A ticket robot answers every mail with a brand-new one and no loop headers."""
    robot = "tickets@robot.example"
    replies: list[int] = []

    def answer_everything(message: Received) -> None:
        if robot in message.rcpt_tos:
            replies.append(len(replies) + 1)
            ticket = customer_mail(
                sender=robot,
                subject=f"Ticket {len(replies)} aperto",
                body="Abbiamo ricevuto la vostra richiesta.",
            )
            threading.Thread(target=rig.deliver, args=(ticket,), daemon=True).start()
        return None

    rig.sink.fault = answer_everything
    cap = 3
    with running_daemon(
        rig.config(limits={"per_sender_max": cap, "per_sender_window": 60})
    ) as daemon:
        rig.deliver(customer_mail(sender=robot, subject="Richiesta"))
        quiet_for(lambda: (daemon.processed, len(rig.sink.received)), 2.0, timeout=30)
        rig.settle(daemon, cap + 1)
    acks = acks_to(rig.sink.received, robot)
    assert len(acks) == cap
    stored = rig.count("SELECT COUNT(*) FROM messages WHERE direction = 'in' AND sender = ?", robot)
    assert stored == cap + 1 == daemon.processed  # every robot mail stored, none lost
    assert rig.count("SELECT COUNT(*) FROM cases WHERE customer = ?", robot) == cap + 1
    limited = [
        e for e in rig.events("suppressed_autoreply") if e["reason"] == "rate-limited:sender"
    ]
    assert len(limited) == 1  # once when the tap closes, not once per mail


def quiet_for(state: Any, seconds: float, timeout: float) -> None:
    """Wait until `state()` has not changed for `seconds`."""
    deadline = time.monotonic() + timeout
    last, since = state(), time.monotonic()
    while time.monotonic() - since < seconds:
        assert time.monotonic() < deadline, "never went quiet"
        time.sleep(0.1)
        now = state()
        if now != last:
            last, since = now, time.monotonic()


def test_l10_one_ack_per_case_and_per_sender_cap(rig: Rig) -> None:
    sender = "l10@example.org"
    first = customer_mail(sender=sender, subject="Linea lenta")
    chain = [first]
    for n in range(4):
        parent = header(chain[-1], "Message-ID")
        chain.append(
            customer_mail(
                sender=sender,
                subject="Re: Linea lenta",
                body=f"Aggiornamento {n}: ancora lenta.",
                In_Reply_To=parent,
                References=parent,
            )
        )
    new_threads = [customer_mail(sender=sender, subject=f"Altro problema {n}") for n in range(3)]
    received = run(rig, chain + new_threads, limits={"per_sender_max": 3})
    cases = rig.rows("SELECT number FROM cases WHERE customer = ? ORDER BY number", sender)
    assert len(cases) == 4  # the chain is one case
    first_case = cases[0][0]
    assert (
        rig.count(
            "SELECT COUNT(*) FROM messages WHERE case_number = ? AND direction = 'in'", first_case
        )
        == 5
    )
    acks = acks_to(received, sender)
    assert len(acks) == 3  # the first thread's ack + two new threads, then the cap
    # Acks of different cases may leave on different connections, in any order.
    replied_to = [header(ack.data, "In-Reply-To") for ack in acks]
    assert header(first, "Message-ID") in replied_to
    assert not {header(mail, "Message-ID") for mail in chain[1:]} & set(replied_to)
    assert list(suppressed(rig).values()) == ["rate-limited:sender"]


def test_l11_forged_sender_backscatter(rig: Rig) -> None:
    victim = "victim@example.net"
    canary = "CANARY-7f3a-body"
    mails = [
        with_attachment(
            customer_mail(sender=victim, subject=f"Offerta {n}", body=f"{canary} {n} compra ora"),
            "payload.bin",
            b"CANARY-7f3a-attachment" * 100,
        )
        for n in range(100)
    ]
    received = run(rig, mails, limits={"per_sender_max": 3})
    assert rig.count("SELECT COUNT(*) FROM cases WHERE customer = ?", victim) == 100
    acks = acks_to(received, victim)
    assert 1 <= len(acks) <= 3
    for ack in acks:
        assert b"CANARY-7f3a" not in ack.data  # a reflector must not relay content
        assert header(ack.data, "Content-Type").startswith(("text/plain", "multipart/alt"))


def test_l16_redirect_obeys_the_same_rules(rig: Rig) -> None:
    subject, body = "Bolletta della luce", "La bolletta della luce di Enel è troppo alta."
    suppressors: dict[str, list[str]] = {
        "l16-null": ["Return-Path: <>"],
        "l16-auto": ["Auto-Submitted: auto-generated"],
        "l16-bulk": ["Precedence: bulk"],
        "l16-list": ["List-Id: <x.lists.example.org>"],
        "l16-suppress": ["X-Auto-Response-Suppress: All"],
    }
    mails = [
        with_top_headers(
            customer_mail(sender=f"{name}@example.org", subject=subject, body=body), *lines
        )
        for name, lines in suppressors.items()
    ]
    mails.append(
        with_top_headers(
            customer_mail(sender="noreply@l16.example.org", subject=subject, body=body)
        )
    )
    clean = [
        with_attachment(
            customer_mail(sender="l16@example.org", subject=subject, body=body),
            "bolletta.pdf",
            b"CANARY-l16" * 50,
        )
        for _ in range(3)
    ]
    received = run(rig, mails + clean, scope=True, limits={"per_sender_max": 1})
    redirects = [
        r
        for r in received
        if header(r.data, "Auto-Submitted") and not r.rcpt_tos[0].endswith("@examplenet.it")
    ]  # owner notifications are automatic too, but go to agents
    assert [r.rcpt_tos for r in redirects] == [("l16@example.org",)]
    assert b"CANARY-l16" not in redirects[0].data
    # The clean mails are classified and redirected; machine-generated ones are not even
    # classified (nobody to answer), and stay with a person.
    states = {
        row[0] for row in rig.rows("SELECT state FROM cases WHERE customer = 'l16@example.org'")
    }
    assert states == {"redirected"}


# -- bounces -------------------------------------------------------------------------------


def dsn(
    to: str, recipient: str, *, action: str = "failed", status: str = "5.1.1", original: bytes = b""
) -> bytes:
    """An RFC 3464 delivery report as Postfix writes it, from MAILER-DAEMON to `to`, with the
    returned mail's header block in a text/rfc822-headers part."""
    head = original.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    boundary = "dsn-" + make_msgid().strip("<>").replace("@", ".")
    text = f"""\
Return-Path: <>
Delivered-To: {to}
From: Mail Delivery System <MAILER-DAEMON@mx.customer.example>
To: {to}
Subject: Undelivered Mail Returned to Sender
Date: {format_datetime(time_now())}
Message-ID: {make_msgid(domain="mx.customer.example")}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset=us-ascii

Your message could not be delivered to {recipient}.

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.customer.example

Final-Recipient: rfc822; {recipient}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {status.replace(".", "")[:1]}50 {status} mailbox problem

--{boundary}
Content-Type: text/rfc822-headers

{head}

--{boundary}--
"""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def first_ack(rig: Rig, sender: str) -> Received:
    """Let `sender` open a case (the daemon is running); return our ack to them."""
    rig.deliver(customer_mail(sender=sender, subject="Fibra ferma"))
    wait_until(lambda: bool(acks_to(rig.sink.received, sender)), what="the ack")
    return acks_to(rig.sink.received, sender)[0]


def test_b01_permanent_dsn_for_our_ack(rig: Rig) -> None:
    customer = "b01@customer.example"
    with running_daemon(rig.config()) as daemon:
        ack = first_ack(rig, customer)
        rig.settle(daemon, 1)
        assert ack.mail_from.startswith("assistenza+b1000.")
        cases_before = rig.count("SELECT COUNT(*) FROM cases")
        sent = len(rig.sink.received)
        rig.deliver(dsn(ack.mail_from, customer, original=ack.data))
        rig.settle(daemon, 2)
        alerts = rig.sink.received[sent:]
        # The owner hears of it; nothing goes to the customer or to the bounce's sender.
        assert [r.rcpt_tos[0] for r in alerts if r.rcpt_tos[0] in AGENT_ADDRESSES] == [
            r.rcpt_tos[0] for r in alerts
        ]
        assert len(alerts) == 1
        assert "1000" in header(alerts[0].data, "Subject")
        # Further automatic mail to that address is suppressed.
        rig.deliver(customer_mail(sender=customer, subject="Nuovo problema, altro thread"))
        rig.settle(daemon, 3)
    assert rig.count("SELECT COUNT(*) FROM cases") == cases_before + 1
    bounce = rig.rows("SELECT case_number, role FROM messages WHERE matched_by = 'bounce'")
    assert bounce == [(1000, "bounce")]
    until = rig.rows("SELECT until FROM suppressions WHERE address = ?", customer)
    assert until and until[0][0] > time.time() + 86400
    assert len(acks_to(rig.sink.received, customer)) == 1
    assert suppressed(rig)[customer] == "address-suppressed-after-bounce"


def test_b02_delayed_dsn_is_only_a_note(rig: Rig) -> None:
    customer = "b02@customer.example"
    with running_daemon(rig.config()) as daemon:
        ack = first_ack(rig, customer)
        rig.settle(daemon, 1)
        sent = len(rig.sink.received)
        rig.deliver(
            dsn(ack.mail_from, customer, action="delayed", status="4.4.1", original=ack.data)
        )
        rig.settle(daemon, 2)
        assert len(rig.sink.received) == sent  # a delay is nobody's problem yet
        rig.deliver(customer_mail(sender=customer, subject="Altra domanda"))
        rig.settle(daemon, 3)
    assert rig.rows("SELECT case_number FROM messages WHERE matched_by = 'bounce'") == [(1000,)]
    assert [e["temporary"] for e in rig.events("bounce")] == [[customer]]
    assert rig.count("SELECT COUNT(*) FROM suppressions") == 0
    assert len(acks_to(rig.sink.received, customer)) == 2  # still answered


def test_b04_forged_dsn_changes_nothing(rig: Rig) -> None:
    """An attacker tries to silence a customer with a DSN we never caused."""
    customer = "b04@customer.example"
    with running_daemon(rig.config()) as daemon:
        ack = first_ack(rig, customer)
        rig.settle(daemon, 1)
        sent = len(rig.sink.received)
        mac = ack.mail_from.partition(".")[2].partition("@")[0]
        forged_verp = ack.mail_from.replace(mac, "x" * len(mac))
        assert forged_verp != ack.mail_from
        forged_headers = ack.data.replace(
            header(ack.data, "Message-ID").encode(), b"<mc.ack.1000.aaaaaaaaaaaaaaaa@examplenet.it>"
        )
        rig.deliver(dsn(forged_verp, customer, original=forged_headers))
        rig.deliver(dsn(SUPPORT, customer, original=forged_headers))
        rig.settle(daemon, 3)
        assert len(rig.sink.received) == sent
        rig.deliver(customer_mail(sender=customer, subject="Ancora io, nuovo problema"))
        rig.settle(daemon, 4)
    assert len(rig.events("bounce_unverified")) == 2
    assert rig.events("bounce") == []
    assert rig.count("SELECT COUNT(*) FROM suppressions") == 0
    assert len(acks_to(rig.sink.received, customer)) == 2  # the customer still hears from us
    assert rig.count("SELECT COUNT(*) FROM messages WHERE role = 'bounce'") == 2  # kept


def test_b06_bounce_storm_sends_nothing(rig: Rig) -> None:
    """200 DSNs for mail we never sent (spam forging our address): stored, never answered."""
    mails = [
        dsn(
            SUPPORT,
            f"gone{n}@elsewhere.example",
            original=customer_mail(sender=SUPPORT, subject=f"spam {n}"),
        )
        for n in range(200)
    ]
    for raw in mails:
        rig.deliver(raw)
    started = time.monotonic()
    with running_daemon(rig.config()) as daemon:
        rig.settle(daemon, 200, timeout=60)
    assert time.monotonic() - started < 60
    assert rig.sink.received == []
    assert rig.count("SELECT COUNT(*) FROM messages WHERE direction = 'in'") == 200
    assert rig.count("SELECT COUNT(*) FROM outbox") == 0
    assert rig.count("SELECT COUNT(*) FROM cases") == 0
