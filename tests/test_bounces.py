"""bounces.analyze on literal DSNs and plain-text bounces (RELIABILITY B01-B03, B06)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mailcare.bounces import Bounce, analyze, is_daemon_mail
from mailcare.mail import parse

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
FLANKER_BOUNCES = CORPUS / "flanker" / "tests" / "fixtures" / "messages" / "bounce"


def dsn(action: str, status: str, recipient: str = "Gone@Customer.test") -> bytes:
    """A Postfix-style RFC 3464 report for our ack, delivered to a VERP address."""
    return f"""Return-Path: <>
Delivered-To: support+c12.a1b2c3@lab.test
Date: Wed,  1 May 2024 10:00:05 +0000 (UTC)
From: MAILER-DAEMON@mx.customer.test (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: support+c12.a1b2c3@lab.test
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="8B2C3E0A5F.1714557605/mx.customer.test"
Message-Id: <20240501100005.9D1E0A5F@mx.customer.test>

This is a MIME-encapsulated message.

--8B2C3E0A5F.1714557605/mx.customer.test
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.customer.test.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{recipient}>: host mail.customer.test said: {status} error

--8B2C3E0A5F.1714557605/mx.customer.test
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.customer.test
X-Postfix-Queue-ID: 8B2C3E0A5F
Arrival-Date: Wed,  1 May 2024 10:00:03 +0000 (UTC)

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Remote-MTA: dns; mail.customer.test
Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected

--8B2C3E0A5F.1714557605/mx.customer.test
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Return-Path: <support+c12.a1b2c3@lab.test>
From: Assistenza ExampleNet <support@lab.test>
To: {recipient}
Subject: [EX #12] Abbiamo ricevuto la sua richiesta
Message-ID: <ack.12.a1b2c3@lab.test>
Auto-Submitted: auto-replied

--8B2C3E0A5F.1714557605/mx.customer.test--
""".replace("\n", "\r\n").encode()


EXIM_BOUNCE = b"""Return-path: <>
Envelope-to: support+c12.a1b2c3@lab.test
Received: from Debian-exim by mx.customer.test with local (Exim 4.96)
\tid 1s2AbC-000123-4d
\tfor support+c12.a1b2c3@lab.test; Wed, 01 May 2024 10:00:05 +0000
X-Failed-Recipients: gone@customer.test
Auto-Submitted: auto-replied
From: Mail Delivery System <Mailer-Daemon@mx.customer.test>
To: support+c12.a1b2c3@lab.test
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1s2AbC-000123-4d@mx.customer.test>
Date: Wed, 01 May 2024 10:00:05 +0000

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  gone@customer.test
    host mail.customer.test [192.0.2.25]
    SMTP error from remote mail server after RCPT TO:<gone@customer.test>:
    550 5.1.1 <gone@customer.test>: Recipient address rejected: User unknown

------ This is a copy of the message, including all the headers. ------

Return-path: <support+c12.a1b2c3@lab.test>
Message-ID: <ack.12.a1b2c3@lab.test>
From: Assistenza ExampleNet <support@lab.test>
To: gone@customer.test
Subject: [EX #12] Abbiamo ricevuto la sua richiesta

Abbiamo ricevuto la sua richiesta.
"""


def test_b01_permanent_dsn_for_our_ack() -> None:
    bounce = analyze(parse(dsn("failed", "5.1.1")))
    assert bounce == Bounce(
        permanent=frozenset({"gone@customer.test"}),
        temporary=frozenset(),
        original_message_ids=("ack.12.a1b2c3@lab.test",),
        envelope_to=("support+c12.a1b2c3@lab.test",),
        standard=True,
    )
    assert all(isinstance(address, str) for address in bounce.permanent)


def test_b02_delayed_dsn_is_temporary_only() -> None:
    bounce = analyze(parse(dsn("delayed", "4.4.1")))
    assert bounce is not None
    assert bounce.permanent == frozenset()
    assert bounce.temporary == frozenset({"gone@customer.test"})
    assert bounce.original_message_ids == ("ack.12.a1b2c3@lab.test",)
    assert bounce.standard is True


def test_b03_exim_plain_text_bounce() -> None:
    parsed = parse(EXIM_BOUNCE)
    assert parsed.is_dsn is False
    bounce = analyze(parsed)
    assert bounce is not None
    assert bounce.permanent == frozenset({"gone@customer.test"})
    assert bounce.standard is False
    assert bounce.original_message_ids == ("ack.12.a1b2c3@lab.test",)
    assert bounce.envelope_to == ("support+c12.a1b2c3@lab.test",)


def test_success_dsn_is_not_a_bounce() -> None:
    assert analyze(parse(dsn("delivered", "2.0.0"))) is None


def test_ordinary_mail_is_not_a_bounce() -> None:
    raw = b"From: Mario <mario@acme.it>\r\nSubject: Stampante\r\n\r\nNon stampa.\r\n"
    parsed = parse(raw)
    assert is_daemon_mail(parsed) is False
    assert analyze(parsed) is None


def test_postmaster_writing_by_hand_is_not_a_bounce() -> None:
    raw = (
        b"From: Postmaster <postmaster@customer.test>\r\nTo: support@lab.test\r\n"
        b"Subject: Question\r\n\r\nCould you whitelist our new server?\r\n"
    )
    parsed = parse(raw)
    assert is_daemon_mail(parsed) is True
    assert analyze(parsed) is None


def test_null_sender_counts_as_daemon_mail() -> None:
    parsed = parse(b"Return-Path: <>\r\nFrom: someone@x.test\r\n\r\nhi\r\n")
    assert is_daemon_mail(parsed) is True


def test_dsn_we_cannot_read_is_still_a_bounce() -> None:
    """is_dsn with a broken structure: no recipients known, but never a customer mail."""
    raw = (
        b"From: MAILER-DAEMON@x.test\r\nContent-Type: multipart/report; "
        b"report-type=delivery-status; boundary=nope\r\n\r\ngarbage\r\n"
    )
    bounce = analyze(parse(raw))
    assert bounce == Bounce(frozenset(), frozenset(), (), (), False)


def test_deeply_nested_dsn_does_not_raise() -> None:
    depth = 1000
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    raw = (
        b"From: MAILER-DAEMON@x.test\r\nReturn-Path: <>\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=top\r\n\r\n"
        b"--top\r\n" + opening + b"Content-Type: text/plain\r\n\r\nx\r\n--top--\r\n"
    )
    bounce = analyze(parse(raw))
    assert bounce is not None
    assert bounce.permanent == frozenset()


def test_b06_bounce_storm_is_fast() -> None:
    raws = [dsn("failed", "5.1.1", recipient=f"user{i}@customer.test") for i in range(200)]
    started = time.perf_counter()
    bounces = [analyze(parse(raw)) for raw in raws]
    elapsed = time.perf_counter() - started
    assert elapsed < 5, f"200 DSNs took {elapsed:.2f} s"
    assert {b.permanent for b in bounces if b} == {
        frozenset({f"user{i}@customer.test"}) for i in range(200)
    }


@pytest.mark.skipif(not FLANKER_BOUNCES.is_dir(), reason="shared corpus not present")
def test_flanker_bounce_fixtures_never_raise() -> None:
    for path in sorted(FLANKER_BOUNCES.iterdir()):
        bounce = analyze(parse(path.read_bytes()))
        assert bounce is None or isinstance(bounce, Bounce), path.name


@pytest.mark.skipif(not FLANKER_BOUNCES.is_dir(), reason="shared corpus not present")
@pytest.mark.parametrize(
    ("name", "permanent", "temporary", "standard"),
    [
        ("mailbox-full.eml", {"user@aol.com"}, set(), True),
        ("no-mx.eml", set(), {"user@example.com"}, True),
        ("office365.eml", {"noname@example.com"}, set(), True),
        ("gmail-no-dns.eml", {"user@example.comm"}, set(), False),
        ("gmail-invalid-address.eml", {"awfawfawfawfawfaw@someserverhere.com"}, set(), False),
    ],
)
def test_flanker_bounce_fixtures_expected_recipients(
    name: str, permanent: set[str], temporary: set[str], standard: bool
) -> None:
    bounce = analyze(parse((FLANKER_BOUNCES / name).read_bytes()))
    assert bounce is not None
    assert (bounce.permanent, bounce.temporary, bounce.standard) == (
        frozenset(permanent),
        frozenset(temporary),
        standard,
    )
