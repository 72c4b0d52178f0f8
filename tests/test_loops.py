"""Loop protection: who may get an automatic mail from us (RELIABILITY L01-L16)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailcare import loops, tokens
from mailcare.config import LimitsSection
from mailcare.mail import Address, Mail, parse

SECRET = b"loops-test-secret-0123456789abcd"
SUPPORT = "assistenza@examplenet.it"


def make_mail(
    *,
    sender: str | None = "cliente@example.com",
    return_path: str | None = "cliente@example.com",
    recipients: tuple[str, ...] = (SUPPORT,),
    subject: str = "Problema con la fattura",
    headers: dict[str, tuple[str, ...]] | None = None,
    message_id: str = "abc123@mail.example.com",
    is_dsn: bool = False,
) -> Mail:
    """A parsed mail as `mail.parse` would build it, with only what loop rules read."""
    lowered = {name.lower(): values for name, values in (headers or {}).items()}
    return Mail(
        raw=b"",
        message_id=message_id,
        synthetic_id=False,
        sender=Address("", sender) if sender is not None else None,
        sender_clean=sender is not None,
        to=tuple(Address("", r) for r in recipients),
        cc=(),
        reply_to=(),
        recipients=recipients,
        return_path=return_path,
        subject=subject,
        subject_key=subject.casefold(),
        date=None,
        in_reply_to=(),
        references=(),
        thread_index=None,
        thread_topic=None,
        headers=lowered,
        text="",
        new_text="",
        language="it",
        attachments=(),
        is_dsn=is_dsn,
        defects=(),
        size=0,
    )


def judge(mail: Mail, **kwargs: Any) -> loops.LoopVerdict:
    return loops.classify(mail, support_address=SUPPORT, secret=SECRET, **kwargs)


def test_clean_customer_mail_may_be_answered() -> None:
    verdict = judge(make_mail())
    assert verdict == loops.LoopVerdict(automatic=False, kind="human", may_reply=True, reason="")


@pytest.mark.parametrize("return_path", ["", "<>", "<<>>", " <> "])
def test_l01_null_return_path(return_path: str) -> None:
    verdict = judge(make_mail(return_path=return_path))
    assert not verdict.may_reply
    assert verdict.reason == "null-return-path"
    assert verdict.automatic


def test_l01_null_return_path_seen_only_in_the_header() -> None:
    mail = make_mail(return_path=None, headers={"Return-Path": ("<>",)})
    assert judge(mail).reason == "null-return-path"


@pytest.mark.parametrize(
    ("value", "reason", "kind"),
    [
        ("auto-replied", "auto-submitted:auto-replied", "auto_reply"),
        ("auto-generated", "auto-submitted:auto-generated", "robot"),
        ("auto-notified", "auto-submitted:auto-notified", "robot"),
        ('Auto-Replied; owner-email="x@y"', "auto-submitted:auto-replied", "auto_reply"),
        ("AUTO-GENERATED", "auto-submitted:auto-generated", "robot"),
        ("auto-replied (vacation)", "auto-submitted:auto-replied", "auto_reply"),
    ],
)
def test_l02_auto_submitted_values(value: str, reason: str, kind: str) -> None:
    verdict = judge(make_mail(headers={"Auto-Submitted": (value,)}))
    assert (verdict.may_reply, verdict.reason, verdict.kind, verdict.automatic) == (
        False,
        reason,
        kind,
        True,
    )


def test_l02_auto_submitted_no_is_a_person() -> None:
    verdict = judge(make_mail(headers={"Auto-Submitted": ("no",)}))
    assert verdict.may_reply and not verdict.automatic


def test_l02_any_of_several_auto_submitted_headers_counts() -> None:
    verdict = judge(make_mail(headers={"Auto-Submitted": ("no", "auto-generated")}))
    assert verdict.reason == "auto-submitted:auto-generated"


@pytest.mark.parametrize(
    ("value", "kind"),
    [("bulk", "list"), ("junk", "list"), ("list", "list"), ("auto_reply", "auto_reply")],
)
def test_l03_precedence(value: str, kind: str) -> None:
    verdict = judge(make_mail(headers={"Precedence": (value,)}))
    assert (verdict.may_reply, verdict.reason, verdict.kind) == (False, f"precedence:{value}", kind)


def test_l03_every_precedence_header_is_examined() -> None:
    verdict = judge(make_mail(headers={"Precedence": ("never-bounce", "Bulk")}))
    assert verdict.reason == "precedence:bulk"


def test_l03_other_precedence_values_do_not_suppress() -> None:
    assert judge(make_mail(headers={"Precedence": ("first-class",)})).may_reply


@pytest.mark.parametrize("name", loops.LIST_HEADERS)
def test_l04_mailing_list_headers(name: str) -> None:
    verdict = judge(make_mail(headers={name: ("<x.lists.example.com>",)}))
    assert (verdict.may_reply, verdict.reason, verdict.kind) == (
        False,
        f"list-header:{name}",
        "list",
    )
    assert verdict.automatic


def test_l04_all_seven_list_headers_are_checked() -> None:
    assert set(loops.LIST_HEADERS) == {
        "list-id",
        "list-help",
        "list-subscribe",
        "list-unsubscribe",
        "list-post",
        "list-owner",
        "list-archive",
    }


@pytest.mark.parametrize(
    ("value", "may_reply", "reason"),
    [
        ("All", False, "x-auto-response-suppress:all"),
        ("DR, AutoReply", False, "x-auto-response-suppress:autoreply"),
        ("OOF", True, ""),
        ("DR, RN", True, ""),
        ("DR,NDR,RN,NRN,OOF", True, ""),
    ],
)
def test_l05_x_auto_response_suppress(value: str, may_reply: bool, reason: str) -> None:
    verdict = judge(make_mail(headers={"X-Auto-Response-Suppress": (value,)}))
    assert (verdict.may_reply, verdict.reason) == (may_reply, reason)
    assert not verdict.automatic
    assert verdict.kind == "human"


@pytest.mark.parametrize(
    ("local", "label", "kind"),
    [
        ("MAILER-DAEMON", "mailer-daemon", "bounce"),
        ("LISTSERV", "listserv", "list"),
        ("majordomo", "majordomo", "list"),
        ("foo-request", "*-request", "list"),
        ("owner-foo", "owner-*", "robot"),
        ("noreply", "noreply", "robot"),
        ("no-reply", "noreply", "robot"),
        ("noreply-billing", "noreply", "robot"),
        ("no-reply+news", "noreply", "robot"),
        ("root", "root", "robot"),
    ],
)
def test_l06_robot_senders(local: str, label: str, kind: str) -> None:
    address = f"{local}@x.example"
    verdict = judge(make_mail(sender=address, return_path=address))
    assert (verdict.may_reply, verdict.reason, verdict.kind) == (
        False,
        f"robot-sender:{label}",
        kind,
    )
    assert verdict.automatic


@pytest.mark.parametrize("local", ["postmaster", "abuse"])
def test_l06_postmaster_and_abuse_are_people_without_auto_reply(local: str) -> None:
    verdict = judge(make_mail(sender=f"{local}@x.example", return_path=f"{local}@x.example"))
    assert (verdict.may_reply, verdict.reason) == (False, f"robot-sender:{local}")
    assert verdict.kind == "human"
    assert not verdict.automatic


def test_l06_robot_envelope_sender_with_human_from() -> None:
    verdict = judge(make_mail(return_path="bounces-request@lists.example"))
    assert verdict.reason == "robot-sender:*-request"


def test_l06_ordinary_names_are_not_robots() -> None:
    for local in ("rootkit.fan", "mario.noreply", "request", "owner", "postmaster2"):
        address = f"{local}@x.example"
        assert judge(make_mail(sender=address, return_path=address)).may_reply, local


@pytest.mark.parametrize(
    "sender",
    [
        SUPPORT,
        "Assistenza@ExampleNet.it",
        "assistenza+42.abcdef@examplenet.it",
        "help@examplenet.it",
    ],
)
def test_l07_mail_from_our_own_address_or_alias(sender: str) -> None:
    verdict = judge(make_mail(sender=sender), aliases=("help@examplenet.it",))
    assert (verdict.kind, verdict.may_reply, verdict.reason) == ("own", False, "own-address")


def test_l08_loop_header_marks_returned_mail_but_keeps_it() -> None:
    """Our loop header means "never answer", not "drop": anyone can write it (S14)."""
    verdict = judge(make_mail(headers={"X-Mailcare-Loop": ("ExampleNet.it",)}))
    assert (verdict.kind, verdict.reason) == ("own_mail_returned", "own-loop-header")
    assert not verdict.may_reply and verdict.automatic


def test_l07_loop_header_of_another_installation_is_ignored() -> None:
    assert judge(make_mail(headers={"X-Mailcare-Loop": ("other.example",)})).may_reply


def test_l08_our_ack_comes_back() -> None:
    ack_id = tokens.message_id(SECRET, "examplenet.it", 17, "ack", "orig@x|c@x")
    mail = make_mail(
        message_id=ack_id,
        sender="forwarder@customer.example",
        headers={"Auto-Submitted": ("auto-replied",)},
    )
    verdict = judge(mail)
    assert verdict.kind == "own_mail_returned"
    assert verdict.reason == "own-mail-returned"
    assert verdict.own_case == 17
    assert verdict.automatic and not verdict.may_reply


def test_l08_forged_own_message_id_is_not_own_mail() -> None:
    forged = "mc.ack.17.aaaaaaaabbbbbbbb@examplenet.it"
    verdict = judge(make_mail(message_id=forged))
    assert verdict.kind == "human" and verdict.may_reply and verdict.own_case is None


def test_l12_out_of_office_reply_to_our_ack() -> None:
    mail = make_mail(
        subject="Automatic reply: [EX#17] Problema con la fattura",
        headers={"Auto-Submitted": ("auto-replied",), "X-Auto-Response-Suppress": ("All",)},
    )
    verdict = judge(mail)
    assert (verdict.kind, verdict.automatic, verdict.may_reply) == ("auto_reply", True, False)
    assert verdict.reason == "auto-submitted:auto-replied"


def test_l12_exchange_oof_without_auto_submitted() -> None:
    mail = make_mail(
        subject="Out of Office: Problema con la fattura",
        headers={"X-Auto-Response-Suppress": ("All",)},
    )
    verdict = judge(mail)
    assert (verdict.kind, verdict.automatic) == ("auto_reply", True)


def test_l12_oof_subject_of_auto_generated_mail_is_an_auto_reply() -> None:
    mail = make_mail(
        subject="Risposta automatica: fattura", headers={"Auto-Submitted": ("auto-generated",)}
    )
    assert judge(mail).kind == "auto_reply"


@pytest.mark.parametrize(
    "subject",
    [
        "Auto: si è rotta la frizione",
        "Out of office da lunedì, rispondete a Luca",
        "Abwesenheitsnotiz",
    ],
)
def test_oof_subject_alone_never_costs_a_customer_the_ack(subject: str) -> None:
    verdict = judge(make_mail(subject=subject))
    assert verdict.may_reply and verdict.kind == "human"


@pytest.mark.parametrize("name", ["X-Autoreply", "X-Autorespond", "X-Autogenerated"])
def test_legacy_autoreply_headers(name: str) -> None:
    verdict = judge(make_mail(headers={name: ("yes",)}))
    assert (verdict.kind, verdict.may_reply) == ("auto_reply", False)
    assert verdict.reason.startswith(name.lower())


def test_l13_agent_out_of_office_to_a_notification_token() -> None:
    token = tokens.reply_address(SUPPORT, SECRET, 8, "agent1@examplenet.it")
    mail = make_mail(
        sender="agent1@examplenet.it",
        recipients=(token,),
        subject="Automatic reply: [EX#8] nuovo caso",
        headers={"Auto-Submitted": ("auto-replied",)},
    )
    verdict = judge(mail)
    assert verdict.kind == "auto_reply" and verdict.automatic and not verdict.may_reply


def test_l14_not_addressed_to_us() -> None:
    verdict = judge(make_mail(recipients=("someone@example.com",)))
    assert (verdict.may_reply, verdict.reason, verdict.kind) == (
        False,
        "not-addressed-to-us",
        "human",
    )
    assert judge(make_mail(recipients=()), require_addressed=False).may_reply


def test_l14_plus_address_and_alias_count_as_addressed() -> None:
    plus = tokens.reply_address(SUPPORT, SECRET, 3, "cliente@example.com")
    assert judge(make_mail(recipients=(plus,))).may_reply
    aliased = make_mail(recipients=("info@examplenet.it",))
    assert judge(aliased, aliases=["info@examplenet.it"]).may_reply


def test_l16_every_suppressor_also_blocks_redirects() -> None:
    """The redirect uses the same verdict as the ack, so each L01-L06 vector refuses it."""
    vectors = [
        make_mail(return_path=""),
        make_mail(headers={"Auto-Submitted": ("auto-generated",)}),
        make_mail(headers={"Precedence": ("bulk",)}),
        make_mail(headers={"List-Id": ("<l.example>",)}),
        make_mail(headers={"X-Auto-Response-Suppress": ("All",)}),
        make_mail(sender="noreply@x.example"),
    ]
    assert [judge(mail).may_reply for mail in vectors] == [False] * len(vectors)
    assert judge(make_mail()).may_reply


def test_b01_dsn_is_a_bounce() -> None:
    mail = make_mail(sender="MAILER-DAEMON@mx.example", return_path="", is_dsn=True)
    verdict = judge(mail)
    assert (verdict.kind, verdict.reason, verdict.automatic) == ("bounce", "null-return-path", True)


def test_b03_plain_text_bounce_from_mailer_daemon() -> None:
    mail = make_mail(sender="Mailer-Daemon@mx.example", return_path="")
    verdict = judge(mail)
    assert verdict.kind == "bounce" and not verdict.may_reply


def test_reason_is_the_first_rule_that_refused() -> None:
    mail = make_mail(
        return_path="",
        headers={"Auto-Submitted": ("auto-replied",), "Precedence": ("bulk",)},
    )
    assert judge(mail).reason == "null-return-path"


def test_missing_sender_gets_no_automatic_mail() -> None:
    verdict = judge(make_mail(sender=None))
    assert (verdict.may_reply, verdict.reason, verdict.kind) == (False, "no-sender", "human")
    assert judge(make_mail(sender=None, headers={"Precedence": ("junk",)})).reason == (
        "precedence:junk"
    )


def test_l09_rate_limit_sliding_window() -> None:
    sent = [1000.0, 1100.0, 1200.0]
    assert not loops.rate_ok(sent, 1300.0, max_count=3, window=3600)
    assert loops.rate_ok(sent, 1000.0 + 3600, max_count=3, window=3600)
    assert loops.rate_ok(sent[:2], 1300.0, max_count=3, window=3600)


def test_l10_l11_rate_limit_zero_means_never() -> None:
    assert not loops.rate_ok([], 0.0, max_count=0, window=60)


def test_rate_limit_counts_future_times() -> None:
    """A clock stepped backwards must not reopen the tap."""
    assert not loops.rate_ok([5000.0], 100.0, max_count=1, window=60)


def test_default_rate_windows() -> None:
    """Defaults: 3 automatic mails per sender per hour, 5 per case per day."""
    limits = LimitsSection()
    assert (limits.per_sender_max, limits.per_sender_window) == (3, 3600.0)
    assert (limits.per_case_max, limits.per_case_window) == (5, 86400.0)
    now = 100_000.0
    hour_ago = [now - 3599, now - 1800, now - 60]
    assert not loops.rate_ok(
        hour_ago, now, max_count=limits.per_sender_max, window=limits.per_sender_window
    )
    assert loops.rate_ok(
        [now - 3601, *hour_ago[1:]],
        now,
        max_count=limits.per_sender_max,
        window=limits.per_sender_window,
    )
    day = [now - 86_000 + i for i in range(5)]
    assert not loops.rate_ok(day, now, max_count=limits.per_case_max, window=limits.per_case_window)
    later = now + 1000
    assert loops.rate_ok(day, later, max_count=limits.per_case_max, window=limits.per_case_window)


CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not present")


def corpus_verdicts(folder: str, pattern: str) -> list[tuple[str, loops.LoopVerdict]]:
    found = []
    for path in sorted((CORPUS / folder).glob(pattern)):
        if path.is_file():
            verdict = judge(parse(path.read_bytes()), require_addressed=False)
            found.append((path.name, verdict))
    return found


@needs_corpus
def test_b01_b03_real_bounces_are_never_answered() -> None:
    verdicts = corpus_verdicts("flanker/tests/fixtures/messages/bounce", "*.eml")
    assert len(verdicts) >= 8
    assert [name for name, verdict in verdicts if verdict.may_reply] == []
    bounces = [name for name, verdict in verdicts if verdict.kind == "bounce"]
    assert len(bounces) >= 6


@needs_corpus
def test_l04_real_mailing_list_mail_is_never_answered() -> None:
    verdicts = corpus_verdicts("notmuch/test/corpora/lkml", "**/*")
    assert len(verdicts) > 20
    assert [name for name, verdict in verdicts if verdict.may_reply] == []
    assert {verdict.kind for _, verdict in verdicts} == {"list"}
