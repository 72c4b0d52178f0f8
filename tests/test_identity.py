"""Agent identity: From, Authentication-Results and reply token (RELIABILITY S01-S10)."""

from __future__ import annotations

import pytest

from mailcare import identity, tokens
from mailcare.config import AgentSection
from mailcare.identity import Identity
from mailcare.mail import Address, Mail

SECRET = b"identity-test-secret-0123456789a"
SUPPORT = "support@lab.test"
TRUSTED = "mx.lab.test"
AGENT1 = "agent1@lab.test"
AGENT2 = "agent2@lab.test"
AGENTS = (
    AgentSection(name="Anna", address=AGENT1),
    AgentSection(name="Bruno", address=AGENT2),
    AgentSection(name="Ugo", address="ugo@bücher.example"),
)
PASS = f"{TRUSTED}; dkim=pass header.d=lab.test header.s=s1; dmarc=pass header.from=lab.test"


def make_mail(
    sender: str | None = AGENT1,
    *,
    clean: bool = True,
    top: tuple[tuple[str, str], ...] = (("Authentication-Results", PASS),),
    reply_to: tuple[str, ...] = (),
) -> Mail:
    """A parsed mail whose raw header block holds `top` in order, then From/To/Subject."""
    fields = [*top, ("From", sender or ""), ("To", SUPPORT), ("Subject", "Re: [EX#123] router")]
    raw = "".join(f"{name}: {value}\r\n" for name, value in fields) + "\r\n#close\r\n"
    headers: dict[str, tuple[str, ...]] = {}
    for name, value in fields:
        headers[name.lower()] = (*headers.get(name.lower(), ()), value)
    return Mail(
        raw=raw.encode("utf-8"),
        message_id="m1@lab.test",
        synthetic_id=False,
        sender=Address("", sender) if sender is not None else None,
        sender_clean=clean and sender is not None,
        to=(Address("", SUPPORT),),
        cc=(),
        reply_to=tuple(Address("", a) for a in reply_to),
        recipients=(SUPPORT,),
        return_path=sender,
        subject="Re: [EX#123] router",
        subject_key="router",
        date=None,
        in_reply_to=(),
        references=(),
        thread_index=None,
        thread_topic=None,
        headers=headers,
        text="#close",
        new_text="#close",
        language="it",
        attachments=(),
        is_dsn=False,
        defects=(),
        size=len(raw),
    )


def token_for(addressee: str, case: int = 123, sender: str | None = None) -> tokens.ReplyToken:
    """What threading finds: the token issued to `addressee`, checked against the sender."""
    address = tokens.reply_address(SUPPORT, SECRET, case, addressee)
    found = tokens.find_reply_token([address], SUPPORT, SECRET, sender or addressee)
    assert found is not None
    return found


def verify(
    mail: Mail,
    token: tokens.ReplyToken | None = None,
    *,
    case: int | None = 123,
    trusted: str = TRUSTED,
    secret: bytes | None = None,
) -> Identity:
    return identity.verify_agent(
        mail, agents=AGENTS, token=token, case=case, trusted_authserv_id=trusted, secret=secret
    )


def test_verified_agent() -> None:
    assert verify(make_mail(), token_for(AGENT1)) == Identity(AGENT1, AGENT1, "")


def test_verified_with_dkim_only_and_no_dmarc_result() -> None:
    top = (("Authentication-Results", f"{TRUSTED}; dkim=pass header.d=lab.test"),)
    assert verify(make_mail(top=top), token_for(AGENT1)).agent == AGENT1


def test_verified_without_authres_when_no_authserv_is_configured() -> None:
    assert verify(make_mail(top=()), token_for(AGENT1), trusted="").agent == AGENT1


def test_s01_spoofed_from_without_authres_or_token() -> None:
    assert verify(make_mail(top=())) == Identity(None, AGENT1, "no_authres")
    assert verify(make_mail(top=()), trusted="") == Identity(None, AGENT1, "no_token")


def test_s02_dmarc_fail() -> None:
    top = (("Authentication-Results", f"{TRUSTED}; dmarc=fail header.from=lab.test"),)
    assert verify(make_mail(top=top), token_for(AGENT1)) == Identity(None, AGENT1, "dmarc_fail")


def test_s02_dmarc_fail_wins_over_dkim_pass() -> None:
    value = f"{TRUSTED}; dkim=pass header.d=lab.test; dmarc=fail header.from=lab.test"
    top = (("Authentication-Results", value),)
    assert verify(make_mail(top=top), token_for(AGENT1)).reason == "dmarc_fail"


def test_s03a_forged_pass_below_the_trusted_fail() -> None:
    top = (
        ("Authentication-Results", f"{TRUSTED}; dmarc=fail header.from=lab.test"),
        ("Received", "from evil.example by relay.evil.example"),
        ("Authentication-Results", f"{TRUSTED}; dmarc=pass header.from=lab.test"),
    )
    assert verify(make_mail(top=top), token_for(AGENT1)).reason == "dmarc_fail"


def test_s03b_forged_pass_under_a_received_line_that_is_not_ours() -> None:
    top = (
        ("Received", "from attacker.test by relay.attacker.test with ESMTP"),
        ("Authentication-Results", f"{TRUSTED}; dmarc=pass header.from=lab.test"),
    )
    assert verify(make_mail(top=top), token_for(AGENT1)).reason == "authres_untrusted"


def test_s03b_our_own_received_above_the_authres_is_fine() -> None:
    top = (
        ("Received", f"from {TRUSTED} by imap.lab.test with LMTP id 42"),
        ("Authentication-Results", PASS),
        ("Received", "from client.example by mx.lab.test with ESMTPS"),
    )
    assert verify(make_mail(top=top), token_for(AGENT1)).agent == AGENT1


def test_s03c_authres_from_another_server() -> None:
    top = (("Authentication-Results", "evil.example; dmarc=pass header.from=lab.test"),)
    assert verify(make_mail(top=top), token_for(AGENT1)).reason == "authres_untrusted"


def test_authserv_id_is_compared_case_insensitively() -> None:
    assert verify(make_mail(), token_for(AGENT1), trusted="MX.Lab.Test").agent == AGENT1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (";;; garbage ===", "authres_malformed"),
        ("", "authres_malformed"),
        ("mx.lab.test; dkim", "authres_malformed"),
        ("mx.lab.test; none", "dkim_fail"),
    ],
)
def test_malformed_or_empty_authres_fails_closed(value: str, reason: str) -> None:
    top = (("Authentication-Results", value),)
    assert verify(make_mail(top=top), token_for(AGENT1)) == Identity(None, AGENT1, reason)


def test_dmarc_pass_for_another_header_from_is_a_fail() -> None:
    top = (("Authentication-Results", f"{TRUSTED}; dmarc=pass header.from=attacker.test"),)
    assert verify(make_mail(top=top), token_for(AGENT1)).reason == "dmarc_fail"


@pytest.mark.parametrize(
    ("signer", "expected"),
    [
        ("header.d=lab.test", AGENT1),
        ("header.d=LAB.test", AGENT1),
        ("header.i=@lab.test", AGENT1),
        ("header.d=attacker.test", None),
        ("header.d=sub.lab.test", None),
        ("header.d=test", None),
        ("header.d=xlab.test", None),
    ],
)
def test_dkim_alignment(signer: str, expected: str | None) -> None:
    top = (("Authentication-Results", f"{TRUSTED}; dkim=pass {signer}"),)
    result = verify(make_mail(top=top), token_for(AGENT1))
    assert result.agent == expected
    if expected is None:
        assert result.reason == "dkim_fail"


def test_dkim_fail_result() -> None:
    top = (("Authentication-Results", f"{TRUSTED}; dkim=fail header.d=lab.test; spf=pass"),)
    assert verify(make_mail(top=top), token_for(AGENT1)).reason == "dkim_fail"


def test_s04_forged_token_with_attackers_own_authres() -> None:
    forged = tokens.find_reply_token(
        ["support+123.0000@lab.test"], SUPPORT, SECRET, "agent7@lab.test"
    )
    agents = (*AGENTS, AgentSection(name="Sette", address="agent7@lab.test"))
    attacker = (("Authentication-Results", f"{TRUSTED}; dkim=pass header.d=attacker.test"),)
    mail = make_mail("agent7@lab.test", top=attacker)
    result = identity.verify_agent(
        mail, agents=agents, token=forged, case=123, trusted_authserv_id=TRUSTED
    )
    assert result == Identity(None, "agent7@lab.test", "dkim_fail")
    honest_auth = make_mail("agent7@lab.test")
    result = identity.verify_agent(
        honest_auth, agents=agents, token=forged, case=123, trusted_authserv_id=TRUSTED
    )
    assert result == Identity(None, "agent7@lab.test", "token_invalid")


def test_s05_agent2_uses_agent1s_forwarded_token() -> None:
    forwarded = token_for(AGENT1, sender=AGENT2)
    assert not forwarded.valid
    mail = make_mail(AGENT2)
    assert verify(mail, forwarded) == Identity(None, AGENT2, "token_invalid")
    assert verify(mail, forwarded, secret=SECRET) == Identity(None, AGENT2, "token_other_agent")


def test_s05_token_checked_for_someone_else() -> None:
    checked_for_agent1 = token_for(AGENT1)
    assert verify(make_mail(AGENT2), checked_for_agent1).reason == "token_other_agent"


def test_s06_token_for_case_a_used_on_case_b() -> None:
    assert verify(make_mail(), token_for(AGENT1, case=1), case=2).reason == "token_other_case"


def test_s06_token_with_the_case_number_changed() -> None:
    genuine = tokens.reply_address(SUPPORT, SECRET, 1, AGENT1)
    tampered = tokens.find_reply_token([genuine.replace("+1.", "+2.")], SUPPORT, SECRET, AGENT1)
    result = verify(make_mail(), tampered, case=2, secret=SECRET)
    assert result == Identity(None, AGENT1, "token_invalid")


def test_token_case_is_enough_when_the_thread_names_no_case() -> None:
    assert verify(make_mail(), token_for(AGENT1, case=9), case=None).agent == AGENT1


def test_s07_display_name_spoof() -> None:
    """`"agent1@lab.test" <evil@attacker.test>` parses to evil@attacker.test."""
    result = verify(make_mail("evil@attacker.test"), token_for(AGENT1))
    assert result == Identity(None, None, "not_agent")


def test_s08_parser_differential_from_is_defective() -> None:
    """`agent1@lab.test <evil@attacker.test>` parses to agent1 WITH a defect: never an agent."""
    result = verify(make_mail(AGENT1, clean=False), token_for(AGENT1))
    assert result == Identity(None, AGENT1, "from_defective")


def test_s09_multiple_from_mailboxes() -> None:
    result = verify(make_mail(AGENT1, clean=False), token_for(AGENT1))
    assert result.agent is None and result.reason == "from_defective"


def test_s09_missing_from() -> None:
    assert verify(make_mail(None), token_for(AGENT1)) == Identity(None, None, "from_defective")


def test_s09_sender_header_is_never_identity() -> None:
    mail = make_mail(
        "evil@attacker.test", top=(("Sender", AGENT1), ("Authentication-Results", PASS))
    )
    assert verify(mail, token_for(AGENT1)).reason == "not_agent"


def test_s09_reply_to_agent_is_never_identity_and_is_flagged() -> None:
    mail = make_mail("customer@example.com", reply_to=(AGENT1,))
    assert verify(mail, token_for(AGENT1)) == Identity(None, None, "not_agent")
    assert identity.reply_to_agent(mail, AGENTS) == AGENT1
    own = make_mail(AGENT1, reply_to=(AGENT1,))
    assert identity.reply_to_agent(own, AGENTS) is None


@pytest.mark.parametrize(
    ("address", "matches"),
    [
        ("agent1@LAB.test", True),
        ("Agent1@lab.test", True),
        ("agent1@lab.test.", False),
        ("agent1@l\u0430b.test", False),  # Cyrillic а
        ("agent1@xn--lb-8kc.test", False),
        ("agent1+x@lab.test", False),
        ("ugo@xn--bcher-kva.example", True),
        ("ugo@BÜCHER.example", True),
    ],
)
def test_s10_look_alike_and_case_variants(address: str, matches: bool) -> None:
    assert (identity.find_agent(address, AGENTS) is not None) is matches


def test_s10_homoglyph_sender_is_not_the_agent() -> None:
    result = verify(make_mail("agent1@l\u0430b.test"), token_for(AGENT1))
    assert result == Identity(None, None, "not_agent")
