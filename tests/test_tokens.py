"""Signed reply addresses, Message-IDs and VERP senders."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailcare import tokens

SECRET = b"0123456789abcdef0123456789abcdef"
OTHER_SECRET = b"fedcba9876543210fedcba9876543210"
SUPPORT = "assistenza@examplenet.it"
DOMAIN = "examplenet.it"


def test_reply_address_shape() -> None:
    address = tokens.reply_address(SUPPORT, SECRET, 123, "cliente@example.com")
    assert re.fullmatch(r"assistenza\+123\.[a-z2-7]{12}@examplenet\.it", address)


def test_reply_address_is_stable_and_per_addressee() -> None:
    first = tokens.reply_address(SUPPORT, SECRET, 5, "a@x.it")
    assert first == tokens.reply_address(SUPPORT, SECRET, 5, "A@X.IT")
    assert first != tokens.reply_address(SUPPORT, SECRET, 5, "b@x.it")
    assert first != tokens.reply_address(SUPPORT, SECRET, 6, "a@x.it")
    assert first != tokens.reply_address(SUPPORT, OTHER_SECRET, 5, "a@x.it")


def test_read_reply_token_round_trip() -> None:
    address = tokens.reply_address(SUPPORT, SECRET, 77, "a@x.it")
    parsed = tokens.read_reply_token(address, SUPPORT)
    assert parsed is not None
    case, mac = parsed
    assert case == 77
    assert tokens.verify_reply_token(SECRET, case, mac, "a@x.it")
    assert tokens.verify_reply_token(SECRET, case, mac.upper(), "A@x.it")


def test_read_reply_token_rejects_other_shapes() -> None:
    assert tokens.read_reply_token("assistenza@examplenet.it", SUPPORT) is None
    assert tokens.read_reply_token("assistenza+77.abc@other.it", SUPPORT) is None
    assert tokens.read_reply_token("vendite+77.abc@examplenet.it", SUPPORT) is None
    assert tokens.read_reply_token("assistenza+b77.abc@examplenet.it", SUPPORT) is None
    assert tokens.read_reply_token("assistenza+x.abc@examplenet.it", SUPPORT) is None
    assert tokens.read_reply_token("assistenza+77@examplenet.it", SUPPORT) is None
    assert tokens.read_reply_token("assistenza+" + "9" * 40 + ".ab@examplenet.it", SUPPORT) is None
    assert tokens.read_reply_token("no-at-sign", SUPPORT) is None


def test_read_reply_token_tolerates_case_brackets_and_trailing_dot() -> None:
    parsed = tokens.read_reply_token("<Assistenza+9.ABC@ExampleNet.IT.>", SUPPORT)
    assert parsed == (9, "abc")


def test_s04_forged_token_is_token_shaped_but_invalid() -> None:
    found = tokens.find_reply_token(
        ["assistenza+123.0000@examplenet.it"], SUPPORT, SECRET, "agent7@lab.test"
    )
    assert found == tokens.ReplyToken(case=123, addressee="agent7@lab.test", valid=False)


def test_s05_token_forwarded_to_another_addressee_does_not_verify() -> None:
    agent1_token = tokens.reply_address(SUPPORT, SECRET, 12, "agent1@lab.test")
    found = tokens.find_reply_token([agent1_token], SUPPORT, SECRET, "agent2@lab.test")
    assert found is not None
    assert (found.case, found.valid) == (12, False)
    mine = tokens.find_reply_token([agent1_token], SUPPORT, SECRET, "agent1@lab.test")
    assert mine == tokens.ReplyToken(case=12, addressee="agent1@lab.test", valid=True)


def test_s06_token_for_case_a_does_not_verify_for_case_b() -> None:
    address = tokens.reply_address(SUPPORT, SECRET, 1, "agent1@lab.test")
    parsed = tokens.read_reply_token(address, SUPPORT)
    assert parsed is not None
    assert not tokens.verify_reply_token(SECRET, 2, parsed[1], "agent1@lab.test")
    forged = address.replace("+1.", "+2.")
    found = tokens.find_reply_token([forged], SUPPORT, SECRET, "agent1@lab.test")
    assert found == tokens.ReplyToken(case=2, addressee="agent1@lab.test", valid=False)


def test_find_reply_token_prefers_the_one_issued_to_the_sender() -> None:
    customer = tokens.reply_address(SUPPORT, SECRET, 4, "c@x.it")
    agent = tokens.reply_address(SUPPORT, SECRET, 4, "agent1@lab.test")
    found = tokens.find_reply_token(["c@x.it", customer, agent], SUPPORT, SECRET, "agent1@lab.test")
    assert found == tokens.ReplyToken(case=4, addressee="agent1@lab.test", valid=True)


def test_find_reply_token_none_without_token() -> None:
    recipients = ["assistenza@examplenet.it", "someone@else.it"]
    assert tokens.find_reply_token(recipients, SUPPORT, SECRET, "c@x.it") is None
    assert tokens.find_reply_token([], SUPPORT, SECRET, "c@x.it") is None


def test_verify_reply_token_survives_hostile_mac() -> None:
    assert not tokens.verify_reply_token(SECRET, 1, "\udcff\x00é", "a@x.it")
    assert not tokens.verify_reply_token(SECRET, 1, "", "a@x.it")


def test_message_id_shape_and_stability() -> None:
    first = tokens.message_id(SECRET, DOMAIN, 42, "ack", "orig@x.it|c@x.it")
    assert re.fullmatch(r"mc\.ack\.42\.[a-z2-7]{16}@examplenet\.it", first)
    assert first == tokens.message_id(SECRET, DOMAIN, 42, "ack", "orig@x.it|c@x.it")
    assert first != tokens.message_id(SECRET, DOMAIN, 42, "ack", "orig@x.it|d@x.it")
    assert first != tokens.message_id(SECRET, DOMAIN, 42, "redirect", "orig@x.it|c@x.it")


def test_l08_read_own_message_id_verifies() -> None:
    issued = tokens.message_id(SECRET, DOMAIN, 42, "ack", "k")
    own = tokens.read_own_message_id(SECRET, DOMAIN, issued)
    assert own == tokens.OwnMessage(case=42, kind="ack")
    assert tokens.read_own_message_id(SECRET, DOMAIN, f"<{issued.upper()}>") == own


def test_l08_read_own_message_id_rejects_forgeries() -> None:
    issued = tokens.message_id(SECRET, DOMAIN, 42, "ack", "k")
    assert tokens.read_own_message_id(OTHER_SECRET, DOMAIN, issued) is None
    assert tokens.read_own_message_id(SECRET, "other.it", issued) is None
    assert tokens.read_own_message_id(SECRET, DOMAIN, issued.replace(".42.", ".43.")) is None
    assert tokens.read_own_message_id(SECRET, DOMAIN, issued.replace(".ack.", ".note.")) is None
    for forged in ("mc.ack.42.aaaaaaaaaaaaaaaa@examplenet.it", "notify-123-7-17000@examplenet.it"):
        assert tokens.read_own_message_id(SECRET, DOMAIN, forged) is None
    assert tokens.read_own_message_id(SECRET, DOMAIN, "") is None


def test_message_id_rejects_kind_that_would_break_parsing() -> None:
    for kind in ("", "a.b", "x@y", "Ack"):
        try:
            tokens.message_id(SECRET, DOMAIN, 1, kind, "k")
        except ValueError as exc:
            assert "kind" in str(exc)
        else:
            raise AssertionError(f"accepted kind {kind!r}")


def test_verp_sender_shape() -> None:
    sender = tokens.verp_sender(SUPPORT, SECRET, 9, "gone@customer.test")
    assert re.fullmatch(r"assistenza\+b9\.[a-z2-7]{12}@examplenet\.it", sender)
    assert tokens.read_verp(sender, SUPPORT) is not None
    assert tokens.read_reply_token(sender, SUPPORT) is None


def test_b01_verp_verifies_for_the_failed_recipient() -> None:
    sender = tokens.verp_sender(SUPPORT, SECRET, 9, "gone@customer.test")
    failed = ["other@x.it", "GONE@customer.test"]
    assert tokens.verify_verp(sender, SUPPORT, SECRET, failed) == 9


def test_b04_forged_dsn_verifies_for_nothing() -> None:
    sender = tokens.verp_sender(SUPPORT, SECRET, 9, "gone@customer.test")
    assert tokens.verify_verp(sender, SUPPORT, SECRET, ["customer@x.it"]) is None
    assert tokens.verify_verp(sender, SUPPORT, OTHER_SECRET, ["gone@customer.test"]) is None
    forged = sender.replace("+b9.", "+b10.")
    assert tokens.verify_verp(forged, SUPPORT, SECRET, ["gone@customer.test"]) is None
    assert tokens.verify_verp(SUPPORT, SUPPORT, SECRET, ["gone@customer.test"]) is None
    assert tokens.verify_verp("assistenza+b9.zz@examplenet.it", SUPPORT, SECRET, []) is None


def test_is_our_address() -> None:
    assert tokens.is_our_address("Assistenza@ExampleNet.it", SUPPORT)
    assert tokens.is_our_address("assistenza+anything@examplenet.it", SUPPORT)
    assert tokens.is_our_address("help@examplenet.it", SUPPORT, ["Help@examplenet.it"])
    assert not tokens.is_our_address("assistenza@examplenet.it.evil.test", SUPPORT)
    assert not tokens.is_our_address("xassistenza@examplenet.it", SUPPORT)
    assert not tokens.is_our_address("help@examplenet.it", SUPPORT)


def test_normalize_address_uses_idna_for_the_domain() -> None:
    assert tokens.normalize_address("Mario@Bücher.example") == "mario@xn--bcher-kva.example"
    assert tokens.normalize_address(" <a@B.it.> ") == "a@b.it"


@given(
    case=st.integers(min_value=1, max_value=10**12),
    addressee=st.emails(),
    other=st.emails(),
)
def test_reply_tokens_verify_only_for_their_addressee(
    case: int, addressee: str, other: str
) -> None:
    address = tokens.reply_address(SUPPORT, SECRET, case, addressee)
    found = tokens.find_reply_token([address], SUPPORT, SECRET, addressee)
    assert found == tokens.ReplyToken(case=case, addressee=addressee, valid=True)
    if tokens.normalize_address(other) != tokens.normalize_address(addressee):
        again = tokens.find_reply_token([address], SUPPORT, SECRET, other)
        assert again is not None and not again.valid


@given(case=st.integers(min_value=0, max_value=10**15), key=st.text(max_size=200))
def test_own_message_ids_round_trip(case: int, key: str) -> None:
    issued = tokens.message_id(SECRET, DOMAIN, case, "relay", key)
    assert tokens.read_own_message_id(SECRET, DOMAIN, issued) == tokens.OwnMessage(case, "relay")


FORBIDDEN_IMPORTS = {
    "sqlite_utils",
    "sqlite3",
    "imapclient",
    "aiosmtplib",
    "asyncio",
    "socket",
    "time",
}
# Clock reads (`datetime.now()`, `date.today()`…) and file access.
FORBIDDEN_METHODS = {"now", "today", "utcnow", "monotonic", "perf_counter", "read_text", "open"}
FORBIDDEN_FUNCTIONS = {"open", "input", "print"}


@pytest.mark.parametrize("module", ["tokens", "loops", "commands", "owners", "hours", "identity"])
def test_small_rules_are_pure(module: str) -> None:
    """No sockets, SQLite, asyncio, clock or files: every rule is a function of its inputs."""
    path = Path(tokens.__file__).with_name(f"{module}.py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names = {(node.module or "").split(".")[0]}
        else:
            names = set()
        assert not names & FORBIDDEN_IMPORTS, f"{module} imports {names & FORBIDDEN_IMPORTS}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in FORBIDDEN_METHODS, f"{module}:{node.lineno}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_FUNCTIONS, f"{module}:{node.lineno}"
