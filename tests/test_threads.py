"""Unit tests for threading: each rule, each attack, the reopen window, on plain values."""

from __future__ import annotations

import ast
import base64
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailcare import threads
from mailcare.mail import Address, Mail, parse
from mailcare.threads import (
    CaseView,
    Match,
    ThreadContext,
    conversation_key,
    forwarded_sender,
    lookup,
    match,
    subject_tag,
)
from mailcare.tokens import message_id, reply_address

SUPPORT = "assistenza@examplenet.it"
DOMAIN = "examplenet.it"
SECRET = b"threading-test-secret"
NOW = 1_700_000_000.0
DAY = 86400.0
CUSTOMER = "mario.rossi@cliente.it"
AGENT = "luca@examplenet.it"
STRANGER = "mallory@attacker.example"


def make_mail(**fields: object) -> Mail:
    """A `Mail` built directly, so the rules can be tested without the parser."""
    sender = fields.pop("sender", CUSTOMER)
    values: dict[str, object] = {
        "raw": b"",
        "message_id": "new-mail@cliente.it",
        "synthetic_id": False,
        "sender": Address("", sender) if isinstance(sender, str) else sender,
        "sender_clean": True,
        "to": (Address("Assistenza", SUPPORT),),
        "cc": (),
        "reply_to": (),
        "recipients": (SUPPORT,),
        "return_path": None,
        "subject": "Problema fattura",
        "subject_key": "problema fattura",
        "date": None,
        "in_reply_to": (),
        "references": (),
        "thread_index": None,
        "thread_topic": None,
        "headers": {},
        "text": "",
        "new_text": "",
        "language": "it",
        "attachments": (),
        "is_dsn": False,
        "defects": (),
        "size": 0,
    }
    values.update(fields)
    return Mail(**values)  # type: ignore[arg-type]


def case(number: int, **fields: object) -> CaseView:
    values: dict[str, object] = {
        "number": number,
        "state": "open",
        "customer": CUSTOMER,
        "owner": AGENT,
        "participants": frozenset({CUSTOMER, AGENT}),
        "subject_key": "problema fattura",
        "closed_at": None,
    }
    values.update(fields)
    return CaseView(**values)  # type: ignore[arg-type]


def context(
    *views: CaseView,
    known: dict[str, int] | None = None,
    thread_index_case: int | None = None,
    subject_cases: tuple[int, ...] = (),
) -> ThreadContext:
    return ThreadContext(
        known_ids=known or {},
        cases={v.number: v for v in views},
        thread_index_case=thread_index_case,
        subject_cases=subject_cases,
    )


def decide(
    mail: Mail,
    ctx: ThreadContext,
    *,
    agents: frozenset[str] = frozenset({AGENT}),
    now: float = NOW,
    reopen_days: int = 14,
) -> Match:
    return match(
        mail,
        ctx,
        case_tag="EX",
        support_address=SUPPORT,
        secret=SECRET,
        reopen_days=reopen_days,
        now=now,
        agents=agents,
    )


def token_for(number: int, addressee: str) -> str:
    return reply_address(SUPPORT, SECRET, number, addressee)


def our_id(number: int, kind: str = "ack") -> str:
    return message_id(SECRET, DOMAIN, number, kind, f"source-{number}")


def thread_index(conversation: bytes, replies: int = 0) -> str:
    """An Outlook Thread-Index: 22 conversation bytes plus one 5-byte block per reply."""
    data = b"\x01" + conversation[:21].ljust(21, b"\0") + b"\x10\x20\x30\x40\x50" * replies
    return base64.b64encode(data).decode("ascii")


# -- subject_tag / conversation_key / lookup -----------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("[EX #1042] Problema", 1042),
        ("R: [ex#1042] Problema", 1042),
        ("Re: [EX  #1042] Problema", 1042),
        ("Re:[ Ex # 1042 ]Problema", 1042),
        ("Fwd: R: [EX #7] x [EX #9]", 7),
        ("[EXT #1042] Problema", None),
        ("EX #1042 Problema", None),
        ("[EX #] Problema", None),
        ("[RT #1042] Problema", None),
    ],
)
def test_subject_tag_is_tolerant_of_case_and_spacing(subject: str, expected: int | None) -> None:
    assert subject_tag(subject, "EX") == expected


def test_subject_tag_uses_the_configured_tag() -> None:
    assert subject_tag("Re: [ACME #5] x", "ACME") == 5
    assert subject_tag("Re: [ACME #5] x", "EX") is None


def test_conversation_key_is_shared_by_a_whole_outlook_conversation() -> None:
    root = thread_index(b"conversation-one")
    reply = thread_index(b"conversation-one", replies=2)
    other = thread_index(b"conversation-two", replies=1)
    assert conversation_key(root) == conversation_key(reply) is not None
    assert conversation_key(other) != conversation_key(root)
    assert len(base64.b64decode(conversation_key(reply) or "")) == 22


def test_conversation_key_tolerates_folding_and_missing_padding() -> None:
    value = thread_index(b"abc", replies=1)
    folded = value[:10] + "\r\n " + value[10:].rstrip("=")
    assert conversation_key(folded) == conversation_key(value)


@pytest.mark.parametrize("garbage", ["", "not base64 at all!", "AQID", "====", "\u00e8\u00e8"])
def test_conversation_key_of_garbage_is_none(garbage: str) -> None:
    assert conversation_key(garbage) is None


def test_lookup_lists_everything_the_store_must_resolve() -> None:
    forged = f"assistenza+1050.{'a' * 12}@{DOMAIN}"
    mail = make_mail(
        subject="R: [EX #1042] Problema fattura",
        message_id="m3@cliente.it",
        in_reply_to=(our_id(1042),),
        references=("m1@cliente.it", our_id(1042), "m3@cliente.it"),
        recipients=(SUPPORT, token_for(1042, CUSTOMER), forged, "altro@cliente.it"),
        thread_index=thread_index(b"conv", replies=1),
    )
    found = lookup(mail, case_tag="EX", support_address=SUPPORT, secret=SECRET)
    assert found.message_ids == ("m3@cliente.it", our_id(1042), "m1@cliente.it")
    assert found.tag_case == 1042
    # Token-shaped addresses are listed unverified: the store loads the case, match judges.
    assert found.token_cases == (1042, 1050)
    assert found.own_cases == (1042,)
    assert found.thread_index == conversation_key(thread_index(b"conv"))
    assert found.subject_key == "problema fattura"
    assert found.sender == CUSTOMER


def test_lookup_ignores_own_message_ids_whose_mac_fails() -> None:
    forged = our_id(1042).replace("mc.ack.1042.", "mc.ack.1043.")
    mail = make_mail(in_reply_to=(forged,), sender=None)
    found = lookup(mail, case_tag="EX", support_address=SUPPORT, secret=SECRET)
    assert found.own_cases == ()
    assert found.sender is None
    assert found.thread_index is None


# -- rule 1: signed reply address -------------------------------------------------------


def test_valid_token_joins_its_case() -> None:
    mail = make_mail(recipients=(token_for(1042, CUSTOMER),))
    result = decide(mail, context(case(1042)))
    assert (result.case, result.matched_by) == (1042, "token")
    assert result.token is not None and result.token.valid
    assert not result.new_participant and not result.reopen


def test_token_wins_over_disagreeing_tag_and_references() -> None:
    mail = make_mail(
        subject="R: [EX #1043] Problema",
        recipients=(token_for(1042, CUSTOMER),),
        in_reply_to=("m@x",),
    )
    ctx = context(case(1042), case(1043), case(1044), known={"m@x": 1044})
    result = decide(mail, ctx)
    assert (result.case, result.matched_by) == (1042, "token")
    assert result.related == (1043, 1044)
    assert "#1043" in result.reason and "#1044" in result.reason and "not merged" in result.reason


def test_s04_forged_token_is_never_trusted_but_is_reported() -> None:
    forged = f"assistenza+1042.{'b' * 12}@{DOMAIN}"
    mail = make_mail(recipients=(forged,), sender=AGENT)
    result = decide(mail, context(case(1042)))
    assert result.case is None and result.matched_by == "new"
    assert result.token is not None and not result.token.valid and result.token.case == 1042
    assert "does not verify" in result.reason


def test_s05_token_issued_to_someone_else_does_not_verify() -> None:
    # The customer's notification was forwarded; a colleague replies through its address.
    mail = make_mail(recipients=(token_for(1042, CUSTOMER),), sender="collega@cliente.it")
    result = decide(mail, context(case(1042)))
    assert result.case is None
    assert result.token is not None and not result.token.valid


def test_s05_forwarded_token_falls_back_to_the_other_rules() -> None:
    mail = make_mail(
        recipients=(token_for(1042, AGENT),),
        sender="collega@cliente.it",
        in_reply_to=("m1@cliente.it",),
    )
    result = decide(mail, context(case(1042), known={"m1@cliente.it": 1042}))
    assert (result.case, result.matched_by) == (1042, "references")
    assert result.new_participant
    assert result.token is not None and not result.token.valid


def test_s06_token_of_case_a_rewritten_for_case_b_does_not_verify() -> None:
    mac = token_for(1042, CUSTOMER).split("+")[1].split("@")[0].split(".")[1]
    mail = make_mail(recipients=(f"assistenza+1043.{mac}@{DOMAIN}",))
    result = decide(mail, context(case(1042), case(1043)))
    assert result.case is None
    assert result.token is not None and (result.token.case, result.token.valid) == (1043, False)


def test_token_for_a_case_that_does_not_exist_is_ignored() -> None:
    mail = make_mail(recipients=(token_for(999, CUSTOMER),))
    result = decide(mail, context())
    assert result.case is None and result.matched_by == "new"


# -- rule 2: subject tag ----------------------------------------------------------------


def test_tag_from_a_participant_joins() -> None:
    mail = make_mail(subject="R: [EX #1042] Problema fattura")
    result = decide(mail, context(case(1042)))
    assert (result.case, result.matched_by, result.new_participant) == (1042, "tag", False)


def test_tag_from_a_cc_participant_joins() -> None:
    view = case(1042, participants=frozenset({CUSTOMER, "ufficio@cliente.it"}))
    mail = make_mail(subject="Re: [EX #1042] x", sender="ufficio@cliente.it")
    assert decide(mail, context(view)).matched_by == "tag"


def test_tag_from_an_agent_joins_even_when_not_yet_a_participant() -> None:
    view = case(1042, participants=frozenset({CUSTOMER}))
    mail = make_mail(subject="Re: [EX #1042] x", sender=AGENT)
    result = decide(mail, context(view))
    assert (result.case, result.matched_by) == (1042, "tag")
    assert result.new_participant  # first time this agent writes in the case


def test_m14_tag_from_a_stranger_opens_a_new_case_that_remembers_the_claim() -> None:
    mail = make_mail(subject="Re: [EX #1042] Problema fattura", sender=STRANGER)
    result = decide(mail, context(case(1042), subject_cases=()))
    assert result.case is None
    assert (result.matched_by, result.linked_case) == ("new:stranger-tag", 1042)
    assert STRANGER in result.reason


def test_m14_stranger_tag_is_not_rescued_by_the_subject_rule() -> None:
    # The stranger is a participant of another case with the same subject: still a claim.
    other = case(1050, participants=frozenset({STRANGER}))
    mail = make_mail(subject="Re: [EX #1042] Problema fattura", sender=STRANGER)
    result = decide(mail, context(case(1042), other, subject_cases=(1050,)))
    assert (result.case, result.matched_by) == (None, "new:stranger-tag")


def test_stranger_tag_confirmed_by_our_message_id_joins_as_new_participant() -> None:
    # A colleague of the customer answers our ack that was forwarded to them.
    mail = make_mail(
        subject="R: [EX #1042] Problema fattura",
        sender="collega@cliente.it",
        in_reply_to=(our_id(1042),),
    )
    result = decide(mail, context(case(1042)))
    assert (result.case, result.matched_by) == (1042, "own-message-id")
    assert result.new_participant
    assert "confirms the subject tag" in result.reason


def test_stranger_tag_disagreeing_with_references_opens_a_new_case() -> None:
    mail = make_mail(subject="[EX #1042] x", sender=STRANGER, in_reply_to=("m@x",))
    ctx = context(case(1042), case(1044, participants=frozenset({STRANGER})), known={"m@x": 1044})
    result = decide(mail, ctx)
    assert (result.case, result.matched_by, result.linked_case) == (None, "new:stranger-tag", 1042)
    assert result.related == (1044,)


def test_tag_of_an_unknown_case_is_ignored() -> None:
    mail = make_mail(subject="Re: [EX #77] Problema", sender=STRANGER)
    result = decide(mail, context())
    assert (result.case, result.matched_by, result.linked_case) == (None, "new", None)


def test_tag_wins_over_disagreeing_references() -> None:
    mail = make_mail(subject="R: [EX #1042] x", in_reply_to=("m@x",))
    result = decide(mail, context(case(1042), case(1044), known={"m@x": 1044}))
    assert (result.case, result.matched_by, result.related) == (1042, "tag", (1044,))


# -- rule 3: our Message-IDs, then In-Reply-To / References --------------------------------


def test_our_own_message_id_names_the_case_for_any_sender() -> None:
    mail = make_mail(sender=STRANGER, references=("unknown@x", our_id(1042, "reply")))
    result = decide(mail, context(case(1042)))
    assert (result.case, result.matched_by, result.new_participant) == (
        1042,
        "own-message-id",
        True,
    )


def test_forged_own_message_id_is_not_trusted() -> None:
    forged = our_id(1042)[:-3] + "aaa"
    mail = make_mail(in_reply_to=(forged,))
    assert decide(mail, context(case(1042))).case is None


def test_in_reply_to_is_preferred_over_references() -> None:
    mail = make_mail(in_reply_to=("parent@x",), references=("root@x", "other@x"))
    ctx = context(case(1), case(2), known={"parent@x": 2, "root@x": 1, "other@x": 1})
    result = decide(mail, ctx)
    assert (result.case, result.matched_by, result.related) == (2, "references", (1,))
    assert "In-Reply-To <parent@x>" in result.reason


def test_references_are_tried_from_last_to_first() -> None:
    mail = make_mail(references=("root@x", "middle@x", "unknown@x"))
    result = decide(mail, context(case(1), case(2), known={"root@x": 1, "middle@x": 2}))
    assert result.case == 2 and result.related == (1,)


def test_a_parent_arriving_after_its_reply_joins_the_replys_case() -> None:
    # The reply came first and its case now owns the id it mentioned: ours.
    mail = make_mail(message_id="parent@cliente.it")
    result = decide(mail, context(case(1042), known={"parent@cliente.it": 1042}))
    assert (result.case, result.matched_by, result.new_participant) == (1042, "references", False)


def test_the_mails_own_id_keeps_a_message_in_the_case_that_owns_it() -> None:
    mail = make_mail(message_id="p@x", in_reply_to=("g@x",))
    result = decide(mail, context(case(1), case(2), known={"p@x": 1, "g@x": 2}))
    assert (result.case, result.related) == (1, (2,))


def test_m14_references_from_a_stranger_join_as_a_new_participant() -> None:
    # The issue allows it; plan tells the owner and never adds the sender to customer mail.
    mail = make_mail(sender=STRANGER, references=("victim-original@cliente.it",))
    result = decide(mail, context(case(1042), known={"victim-original@cliente.it": 1042}))
    assert (result.case, result.matched_by) == (1042, "references")
    assert result.new_participant
    assert STRANGER in result.reason


def test_mail_without_sender_can_only_join_as_a_new_participant() -> None:
    mail = make_mail(sender=None, subject="R: [EX #1042] x", in_reply_to=("m@x",))
    result = decide(mail, context(case(1042), known={"m@x": 1042}))
    assert (result.case, result.matched_by, result.new_participant) == (1042, "references", True)


def test_known_id_of_a_case_missing_from_context_is_ignored() -> None:
    mail = make_mail(in_reply_to=("m@x",))
    assert decide(mail, context(known={"m@x": 5})).case is None


# -- rule 4: Outlook quirks ------------------------------------------------------------


def test_thread_index_joins_when_nothing_else_matches() -> None:
    mail = make_mail(sender=CUSTOMER, thread_index=thread_index(b"c1", replies=1))
    result = decide(mail, context(case(1042), thread_index_case=1042))
    assert (result.case, result.matched_by) == (1042, "thread-index")


def test_references_win_over_thread_index() -> None:
    mail = make_mail(thread_index=thread_index(b"c1", replies=1), in_reply_to=("m@x",))
    ctx = context(case(1), case(2), known={"m@x": 1}, thread_index_case=2)
    result = decide(mail, ctx)
    assert (result.case, result.matched_by, result.related) == (1, "references", (2,))


def test_garbled_thread_index_matches_nothing() -> None:
    mail = make_mail(thread_index="%%%")
    assert decide(mail, context(case(1042), thread_index_case=1042)).case is None


def test_subject_rule_needs_prefix_participant_and_same_key() -> None:
    reply = make_mail(subject="R: Problema fattura")
    ctx = context(case(1042), subject_cases=(1042,))
    assert decide(reply, ctx).matched_by == "subject"
    # No reply prefix: a new mail with a common subject is a new case.
    assert decide(replace(reply, subject="Problema fattura"), ctx).case is None
    # A non-participant never joins by subject.
    assert decide(replace(reply, sender=Address("", STRANGER)), ctx).case is None
    # Different normalized subject (the store's answer is re-checked).
    other = context(case(1042, subject_key="altro"), subject_cases=(1042,))
    assert decide(reply, other).case is None


def test_subject_rule_takes_the_newest_matching_case() -> None:
    reply = make_mail(subject="RE: Problema fattura")
    result = decide(reply, context(case(1), case(7), subject_cases=(7, 1)))
    assert result.case == 7


def test_subject_rule_accepts_an_unknown_prefix_that_thread_topic_reveals() -> None:
    # Hungarian Outlook writes "Vá:"; the parser does not know it, Thread-Topic shows it.
    reply = make_mail(
        subject="Vá: Problema fattura",
        subject_key="vá: problema fattura",
        thread_topic="Problema fattura",
    )
    found = lookup(reply, case_tag="EX", support_address=SUPPORT, secret=SECRET)
    assert found.subject_key == "problema fattura"
    ctx = context(case(1042), subject_cases=(1042,))
    assert decide(reply, ctx).matched_by == "subject"
    # Without the prefix (subject equals the topic) it is not a reply.
    plain = replace(reply, subject="Problema fattura", subject_key="problema fattura")
    assert decide(plain, ctx).case is None


def test_encoded_word_reply_prefix_counts_as_a_prefix() -> None:
    raw = (
        b"From: Mario Rossi <mario.rossi@cliente.it>\r\n"
        b"To: assistenza@examplenet.it\r\n"
        b"Subject: =?utf-8?q?R=3A_Problema_fattura?=\r\n"
        b"Message-ID: <enc-1@cliente.it>\r\n"
        b"Date: Mon, 03 Jun 2024 10:00:00 +0200\r\n"
        b"\r\nGrazie\r\n"
    )
    mail = parse(raw)
    assert mail.subject == "R: Problema fattura"
    ctx = context(case(1042, subject_key=mail.subject_key), subject_cases=(1042,))
    assert decide(mail, ctx).matched_by == "subject"


def test_encoded_word_hiding_the_whole_prefix_and_tag() -> None:
    raw = (
        b"From: mario.rossi@cliente.it\r\n"
        b"To: assistenza@examplenet.it\r\n"
        b"Subject: =?iso-8859-1?b?UjogW0VYICMxMDQyXSBGYXR0dXJh?=\r\n"
        b"Message-ID: <enc-2@cliente.it>\r\n"
        b"\r\nx\r\n"
    )
    mail = parse(raw)
    found = lookup(mail, case_tag="EX", support_address=SUPPORT, secret=SECRET)
    assert found.tag_case == 1042
    assert decide(mail, context(case(1042))).matched_by == "tag"


# -- rule 5: new cases and the reopen window ----------------------------------------------


def test_nothing_matches_opens_a_new_case() -> None:
    result = decide(make_mail(), context())
    assert (result.case, result.matched_by, result.linked_case) == (None, "new", None)
    assert result.token is None and result.related == ()
    assert result.reason


@pytest.mark.parametrize(
    ("closed_ago", "joins"),
    [
        (1.0, True),
        (14 * DAY - 1, True),
        (14 * DAY, True),  # exactly on the boundary: still within the window
        (14 * DAY + 1, False),
        (400 * DAY, False),
    ],
)
def test_reopen_window_boundaries(closed_ago: float, joins: bool) -> None:
    view = case(1042, state="closed", closed_at=NOW - closed_ago)
    mail = make_mail(in_reply_to=("m@x",))
    result = decide(mail, context(view, known={"m@x": 1042}))
    if joins:
        assert (result.case, result.matched_by, result.reopen) == (1042, "references", True)
    else:
        assert (result.case, result.matched_by) == (None, "new:closed-case")
        assert result.linked_case == 1042 and not result.reopen


def test_reopen_days_zero_opens_a_new_case_for_any_closed_case() -> None:
    view = case(1042, state="closed", closed_at=NOW - 1)
    mail = make_mail(recipients=(token_for(1042, CUSTOMER),))
    result = decide(mail, context(view), reopen_days=0)
    assert (result.matched_by, result.linked_case) == ("new:closed-case", 1042)
    assert result.token is not None and result.token.valid


def test_open_case_with_an_old_closed_at_is_simply_joined() -> None:
    view = case(1042, state="open", closed_at=NOW - 100 * DAY)  # it was reopened since
    result = decide(make_mail(subject="[EX #1042] x"), context(view))
    assert (result.case, result.reopen) == (1042, False)


def test_closed_case_without_closed_at_reopens() -> None:
    view = case(1042, state="closed", closed_at=None)
    result = decide(make_mail(subject="[EX #1042] x"), context(view))
    assert (result.case, result.reopen) == (1042, True)


def test_redirected_case_is_joined_without_reopening() -> None:
    view = case(1042, state="redirected")
    result = decide(make_mail(subject="[EX #1042] x"), context(view))
    assert (result.case, result.reopen) == (1042, False)


# -- forwarded_sender ------------------------------------------------------------------


def test_forwarded_sender_from_an_inline_outlook_forward_in_italian() -> None:
    text = (
        "Apro un caso per il cliente.\n\n"
        "________________________________\n"
        "Da: Mario Rossi <Mario.Rossi@Cliente.IT>\n"
        "Inviato: lunedì 3 giugno 2024 10:00\n"
        "A: Luca Bianchi <luca@examplenet.it>\n"
        "Oggetto: Problema fattura\n\n"
        "Buongiorno, la fattura è sbagliata.\n"
    )
    found = forwarded_sender(make_mail(sender=AGENT, text=text))
    assert found == Address("Mario Rossi", "mario.rossi@cliente.it")


def test_forwarded_sender_reads_outlook_mailto_brackets() -> None:
    text = (
        "FYI\n\n-----Original Message-----\n"
        "From: Rossi, Mario [mailto:mario.rossi@cliente.it]\n"
        "Sent: Monday, June 3, 2024 10:00 AM\nTo: Luca\nSubject: Problema\n\nTesto\n"
    )
    found = forwarded_sender(make_mail(sender=AGENT, text=text))
    assert found is not None and found.addr == "mario.rossi@cliente.it"
    assert found.name == "Rossi, Mario"


def test_forwarded_sender_prefers_an_attached_message() -> None:
    inner = EmailMessage()
    inner["From"] = "Anna Bianchi <anna@bianchi.example>"
    inner["Subject"] = "Aiuto"
    inner.set_content("Ciao")
    outer = EmailMessage()
    outer["From"] = AGENT
    outer["To"] = SUPPORT
    outer.set_content("Da: Qualcun Altro <altro@example.org>\nOggetto: x\n")
    outer.add_attachment(inner)
    mail = make_mail(sender=AGENT, raw=outer.as_bytes(), text="Vedi allegato.")
    assert forwarded_sender(mail) == Address("Anna Bianchi", "anna@bianchi.example")


def test_forwarded_sender_skips_the_forwarder_and_handles_no_forward() -> None:
    text = (
        "Sopra\n\n---------- Forwarded message ---------\n"
        f"From: Luca <{AGENT}>\nDate: Mon, 3 Jun 2024\nSubject: x\nTo: <{CUSTOMER}>\n\n"
        "> Da: Mario <mario.rossi@cliente.it>\n> Inviato: ieri\n> Oggetto: x\n> testo\n"
    )
    assert forwarded_sender(make_mail(sender=AGENT, text=text)) == Address(
        "Mario", "mario.rossi@cliente.it"
    )
    assert forwarded_sender(make_mail(sender=AGENT, text="Solo testo, niente inoltro.")) is None


def test_forwarded_sender_survives_hostile_mime() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n"
        b"--x\r\nContent-Type: message/rfc822\r\n\r\n"
    )
    assert forwarded_sender(make_mail(raw=raw, text="")) is None


# -- purity ----------------------------------------------------------------------------


def test_threads_stays_in_the_pure_core() -> None:
    tree = ast.parse(Path(threads.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    forbidden = {"sqlite3", "sqlite_utils", "imapclient", "aiosmtplib", "asyncio", "socket", "time"}
    assert not imported & forbidden
