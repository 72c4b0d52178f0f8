"""One owner per case, end to end, with agents working from their own mail client.

customer mail → ack + owner notification → the owner's reply as a client writes it (Re:,
quote, signature) → relay to the customer without the quote or the token → the customer's
reply → forwarded to the owner only; plus a spoofed agent, a non-owner reply, commands and
a concurrent #take. Runs against pymap and Dovecot.
"""

from __future__ import annotations

import email
import email.policy
import time
from pathlib import Path
from typing import Any

import pytest
from spine import (
    acks_to,
    customer_mail,
    db,
    header,
    reply_to,
    running_daemon,
    wait_until,
    write_config,
)

from mailcare.sandbox import LabSmtp

USER, PASSWORD = "support@lab.test", "secret"
CUSTOMER = "mario.rossi@libero.it"


class Box:
    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        if kind == "pymap":
            self.lab: Any = request.getfixturevalue("lab_imap")
            self.user, self.port = USER, self.lab.port
        else:
            self.lab = request.getfixturevalue("dovecot")
            self.user, self.port = request.getfixturevalue("dovecot_user"), self.lab.port

    def deliver(self, raw: bytes) -> None:
        self.lab.deliver(self.user, raw)


@pytest.fixture(params=["pymap", pytest.param("dovecot", marks=pytest.mark.dovecot)])
def box(request: pytest.FixtureRequest) -> Box:
    return Box(request.param, request)


def _config(tmp_path: Path, box: Box, sink: LabSmtp, extra: str = "") -> Path:
    return write_config(
        tmp_path / "mailcare.toml",
        imap_host="127.0.0.1",
        imap_port=box.port,
        user=box.user,
        password=PASSWORD,
        smtp_host=sink.host,
        smtp_port=sink.port,
        state_dir=tmp_path / "state",
        extra=extra,
    )


def _text(data: bytes) -> str:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    part = msg.get_body(("plain",))
    return part.get_content() if part else ""


def _to(sink: LabSmtp, address: str) -> list[Any]:
    return [r for r in sink.received if address in r.rcpt_tos]


def _settle(daemon: Any, sink: LabSmtp, processed: int, sent: int) -> None:
    wait_until(lambda: daemon.processed >= processed, what=f"{processed} processed")
    wait_until(lambda: len(sink.received) >= sent, what=f"{sent} mails at the sink")
    time.sleep(0.3)


def test_full_round_trip(tmp_path: Path, box: Box, lab_smtp: LabSmtp) -> None:
    config = _config(tmp_path, box, lab_smtp)
    with running_daemon(config) as daemon:
        box.deliver(customer_mail(sender=CUSTOMER, message_id="<c1@libero.it>"))
        _settle(daemon, lab_smtp, 1, 2)
        ack = acks_to(lab_smtp.received, CUSTOMER)[0]
        notice = next(r for r in lab_smtp.received if r is not ack)
        owner = notice.rcpt_tos[0]
        assert "Giulia Rossi" in _text(ack.data) or "Marco Bianchi" in _text(ack.data)
        assert "fibra" in _text(notice.data)  # the customer's text reaches the owner
        assert "assistenza+1000." in header(notice.data, "Reply-To")

        # The owner hits Reply in their client: Re:, a quote of the notification, a signature.
        box.deliver(
            reply_to(
                notice.data,
                f"Owner <{owner}>",
                "Buongiorno, ho verificato: guasto in centrale, risolto entro "
                "le 18.\n\nSaluti\n-- \nAssistenza tecnica",
            )
        )
        _settle(daemon, lab_smtp, 2, 3)
        relay = lab_smtp.received[-1]
        assert relay.rcpt_tos[0] == CUSTOMER
        body = _text(relay.data)
        assert "guasto in centrale" in body
        assert "Nuova pratica" not in body and "> " not in body  # quote removed
        assert "assistenza+" not in body  # no token leaks into the text
        assert header(relay.data, "Auto-Submitted") == ""  # a person's mail, not automatic
        assert "(Assistenza ExampleNet)" in header(relay.data, "From")
        assert header(relay.data, "In-Reply-To") == "<c1@libero.it>"
        assert header(relay.data, "Subject").startswith("[EX #1000]")

        # The customer answers the relay: forwarded to the owner only, no new ack.
        box.deliver(reply_to(relay.data, f"Mario <{CUSTOMER}>", "Grazie, ora funziona."))
        _settle(daemon, lab_smtp, 3, 4)
        forward = lab_smtp.received[-1]
        assert forward.rcpt_tos == (owner,) or list(forward.rcpt_tos) == [owner]
        assert "ora funziona" in _text(forward.data)
    assert len(acks_to(lab_smtp.received, CUSTOMER)) == 1
    store = db(tmp_path / "state")
    case = store.case(1000)
    assert case is not None and case["owner"] == owner and case["state"] == "open"
    kinds = [e["kind"] for e in store.case_events(1000)]
    assert "relayed" in kinds


def test_spoofed_agent_is_held_and_never_relayed(
    tmp_path: Path, box: Box, lab_smtp: LabSmtp
) -> None:
    """S01/S04: From an agent's address without a valid token runs nothing, relays nothing."""
    config = _config(tmp_path, box, lab_smtp)
    with running_daemon(config) as daemon:
        box.deliver(customer_mail(sender=CUSTOMER))
        _settle(daemon, lab_smtp, 1, 2)
        ack = acks_to(lab_smtp.received, CUSTOMER)[0]
        before = len(lab_smtp.received)
        forged = customer_mail(
            sender="giulia@examplenet.it",
            subject="Re: [EX #1000] x",
            body="#close\nIl problema è risolto, chiudo.",
        )
        box.deliver(forged)
        wait_until(lambda: daemon.processed >= 2)
        time.sleep(1.0)
    assert not [r for r in lab_smtp.received[before:] if CUSTOMER in r.rcpt_tos]
    store = db(tmp_path / "state")
    case = store.case(1000)
    assert case is not None and case["state"] != "closed"
    events = store.case_events(1000)
    assert any(e["kind"] == "agent_auth_failed" for e in events)
    assert ack  # the customer got exactly their ack, nothing else


def test_non_owner_reply_is_held_and_both_agents_told(
    tmp_path: Path, box: Box, lab_smtp: LabSmtp
) -> None:
    config = _config(tmp_path, box, lab_smtp)
    with running_daemon(config) as daemon:
        box.deliver(customer_mail(sender=CUSTOMER))
        _settle(daemon, lab_smtp, 1, 2)
        ack = acks_to(lab_smtp.received, CUSTOMER)[0]
        notice = next(r for r in lab_smtp.received if r is not ack)
        owner = notice.rcpt_tos[0]
        other = next(a for a in ("giulia@examplenet.it", "marco@examplenet.it") if a != owner)
        # The owner forwards the notification; the colleague answers with the owner's token.
        from mailcare import tokens

        token_address = tokens.reply_address(
            "assistenza@examplenet.it", b"test-secret-0123456789", 1000, other
        )
        box.deliver(
            customer_mail(
                sender=other,
                subject="Re: [EX #1000] Internet non va",
                body="Ci penso io: riavvii il router.",
                To=token_address,
            )
        )
        _settle(daemon, lab_smtp, 2, 4)
    new = lab_smtp.received[2:]
    assert not [r for r in new if CUSTOMER in r.rcpt_tos]  # nothing reached the customer
    told_other = [r for r in new if other in r.rcpt_tos]
    told_owner = [r for r in new if owner in r.rcpt_tos]
    assert told_other and "#take" in _text(told_other[0].data)
    assert told_owner


def test_commands_take_note_close(tmp_path: Path, box: Box, lab_smtp: LabSmtp) -> None:
    from mailcare import tokens

    config = _config(tmp_path, box, lab_smtp)
    secret = b"test-secret-0123456789"
    with running_daemon(config) as daemon:
        box.deliver(customer_mail(sender=CUSTOMER))
        _settle(daemon, lab_smtp, 1, 2)
        owner = next(r for r in lab_smtp.received if CUSTOMER not in r.rcpt_tos).rcpt_tos[0]
        other = next(a for a in ("giulia@examplenet.it", "marco@examplenet.it") if a != owner)
        to_other = tokens.reply_address("assistenza@examplenet.it", secret, 1000, other)
        box.deliver(
            customer_mail(
                sender=other,
                subject="Re: [EX #1000]",
                body="#take\n#note cliente business, priorità alta",
                To=to_other,
            )
        )
        wait_until(lambda: daemon.processed >= 2)
        time.sleep(0.5)
        to_new_owner = tokens.reply_address("assistenza@examplenet.it", secret, 1000, other)
        box.deliver(
            customer_mail(sender=other, subject="Re: [EX #1000]", body="#close", To=to_new_owner)
        )
        wait_until(lambda: daemon.processed >= 3)
        time.sleep(0.5)
        box.deliver(
            customer_mail(
                sender=other, subject="Re: [EX #1000]", body="#frobnicate", To=to_new_owner
            )
        )
        wait_until(lambda: daemon.processed >= 4)
        wait_until(
            lambda: any(
                "#take" in _text(r.data) and other in r.rcpt_tos for r in lab_smtp.received
            ),
            what="reply listing commands",
        )
    store = db(tmp_path / "state")
    case = store.case(1000)
    assert case is not None and case["owner"] == other and case["state"] == "closed"
    events = store.case_events(1000)
    assert [e for e in events if e["kind"] == "note"]
    assert [e for e in events if e["kind"] == "owner_changed"]


def test_concurrent_take_leaves_one_owner(
    tmp_path: Path, lab_smtp: LabSmtp, request: pytest.FixtureRequest
) -> None:
    """S12: two #take in the same second: exactly one owner, the other agent is told."""
    from mailcare import tokens

    box = Box("pymap", request)
    config = _config(tmp_path, box, lab_smtp, extra="")
    secret = b"test-secret-0123456789"
    with running_daemon(config) as daemon:
        box.deliver(customer_mail(sender=CUSTOMER))
        _settle(daemon, lab_smtp, 1, 2)
        owner = next(r for r in lab_smtp.received if CUSTOMER not in r.rcpt_tos).rcpt_tos[0]
        other = next(a for a in ("giulia@examplenet.it", "marco@examplenet.it") if a != owner)
        # the owner passes the case on, then both race to take it back
        for agent in (other, owner):
            box.deliver(
                customer_mail(
                    sender=agent,
                    subject="Re: [EX #1000]",
                    body="#take",
                    To=tokens.reply_address("assistenza@examplenet.it", secret, 1000, agent),
                )
            )
        wait_until(lambda: daemon.processed >= 3)
        wait_until(
            lambda: any(owner in r.rcpt_tos for r in lab_smtp.received[2:]), what="loser told"
        )
    store = db(tmp_path / "state")
    case = store.case(1000)
    assert case is not None and case["owner"] == other
    kinds = [e["kind"] for e in store.case_events(1000)]
    assert kinds.count("take") == 1 and "take_refused" in kinds
