"""mail.parse on literal inputs: one rule per test, RELIABILITY ids in the names."""

from __future__ import annotations

import ast
import base64
import importlib
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcare.mail import (
    Address,
    Mail,
    attachments_payloads,
    detect_language,
    normalize_addr,
    normalize_subject,
    parse,
    parse_address,
    reply_text,
    strip_prefixes,
    strip_signature,
)

CONTROL = ("\r", "\n", "\x00")


def mail(*headers: str, body: str = "Buongiorno,\r\nho un problema.\r\n") -> bytes:
    """A message from header lines and a body, with CRLF line ends as on the wire."""
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode("utf-8")


def header_strings(parsed: Mail) -> list[str]:
    """Every string in a Mail that came from a header (must be one line)."""
    found = [parsed.message_id, parsed.subject, parsed.subject_key, *parsed.recipients]
    found += [parsed.return_path or "", parsed.thread_index or "", parsed.thread_topic or ""]
    found += [*parsed.in_reply_to, *parsed.references, *parsed.defects]
    for address in (parsed.sender, *parsed.to, *parsed.cc, *parsed.reply_to):
        if address is not None:
            found += [address.name, address.addr]
    found += [a.filename for a in parsed.attachments]
    found += [v for values in parsed.headers.values() for v in values] + list(parsed.headers)
    return found


def assert_one_line(parsed: Mail) -> None:
    for value in header_strings(parsed):
        assert not any(c in value for c in CONTROL), repr(value)


# --------------------------------------------------------------------------- injection


def test_m01_crlf_in_encoded_subject_is_flattened() -> None:
    parsed = parse(mail("From: a@b.test", "Subject: =?utf-8?q?Hello=0D=0ABcc=3A_x@evil.example?="))
    assert parsed.subject == "Hello Bcc: x@evil.example"
    assert parsed.header("subject") == ("Hello Bcc: x@evil.example",)
    assert_one_line(parsed)


def test_m02_crlf_in_display_name_is_flattened_and_not_clean() -> None:
    parsed = parse(mail("From: =?utf-8?q?Eve=0D=0ABcc=3A_v@x?= <eve@attacker.test>"))
    assert parsed.sender == Address("Eve Bcc: v@x", "eve@attacker.test")
    assert parsed.sender_clean is False
    assert "From: control characters in display name" in parsed.defects
    assert_one_line(parsed)


def test_nul_in_header_is_removed() -> None:
    parsed = parse(b"Subject: a\x00b\r\nFrom: x@y.test\r\n\r\nbody\x00\r\n")
    assert parsed.subject == "a b"
    assert "\x00" not in parsed.text


# --------------------------------------------------------------------------- hostile MIME


def nested(depth: int) -> bytes:
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--" % i for i in reversed(range(depth)))
    head = b"From: a@b.test\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    return head + opening + b"Content-Type: text/plain\r\n\r\nhello" + closing + b"\r\n"


def test_m06_deep_nesting_is_a_defect_not_a_crash() -> None:
    raw = nested(1000)
    assert len(raw) > 40_000
    started = time.perf_counter()
    parsed = parse(raw)
    assert time.perf_counter() - started < 2
    assert "recursion: MIME nesting too deep" in parsed.defects
    assert parsed.subject == "deep"  # the headers still count
    assert parsed.sender == Address("", "a@b.test")


def test_m06_moderate_nesting_still_finds_the_text() -> None:
    parsed = parse(nested(10))
    assert parsed.text == "hello"
    assert parsed.defects == ()


def test_m07_many_parts_are_capped() -> None:
    """50,000 parts: parse looks at the first `max_parts` and says so. Quarantining such
    mail before parsing is the caller's pre-parse limit (limits.max_mime_parts)."""
    parts = b"".join(
        b"--XX\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(50_000)
    )
    raw = (
        b"Subject: many\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        + parts
        + b"--XX--\r\n"
    )
    started = time.perf_counter()
    parsed = parse(raw)
    assert time.perf_counter() - started < 3
    assert parsed.text == "part 0"
    assert "mime: more than 1000 parts, rest ignored" in parsed.defects


def test_m08_thousands_of_parens_in_from() -> None:
    parsed = parse(mail("From: " + "(" * 3000 + "a@b.test", "Subject: x"))
    assert parsed.sender is None
    assert parsed.sender_clean is False
    assert "From: unparseable" in parsed.defects


def test_m09_huge_subject_is_capped() -> None:
    raw = b"Subject: " + b"A" * 5_000_000 + b"\r\nFrom: a@b.test\r\n\r\nhi\r\n"
    started = time.perf_counter()
    parsed = parse(raw, max_header_bytes=64_000)
    assert time.perf_counter() - started < 5
    assert len(parsed.subject) == 998
    assert len(parsed.header("subject")[0]) == 64_000
    assert parsed.sender == Address("", "a@b.test")


def test_m12_unknown_charset_body_gives_replacement_characters() -> None:
    raw = b"Content-Type: text/plain; charset=x-klingon\r\n\r\nabc \xff\xfe\r\n"
    parsed = parse(raw)
    assert parsed.text.startswith("abc ")
    assert "\ufffd" in parsed.text
    assert "charset: unknown x-klingon" in parsed.defects


def test_m12_unknown_charset_encoded_word() -> None:
    parsed = parse(b"Subject: =?x-klingon?q?abc=FF?= tail\r\n\r\nx")
    assert parsed.subject == "abc\ufffd tail"


def test_m12_raw_8bit_headers_read_as_utf8_then_latin1() -> None:
    parsed = parse(b"Subject: caf\xc3\xa9 \xe9t\xe9\r\nFrom: Jos\xe9 <j@x.test>\r\n\r\nx")
    assert parsed.subject == "café été"
    assert parsed.sender == Address("José", "j@x.test")


def test_m12_bad_base64_decodes_what_it_can() -> None:
    raw = b"Content-Transfer-Encoding: base64\r\n\r\nSGVsbG8gd29ybGQ\r\n"
    parsed = parse(raw)
    assert parsed.text == "Hello world"
    assert "base64: bad length" in parsed.defects


def test_m12_declared_charset_with_broken_bytes() -> None:
    raw = b"Content-Type: text/plain; charset=utf-8\r\n\r\nok \xff\r\n"
    assert parse(raw).text == "ok \ufffd\n"


def test_undeclared_8bit_body_is_utf8_or_latin1() -> None:
    raw = b"Subject: x\r\n\r\nperch\xc3\xa9 citt\xe0\r\n"
    assert parse(raw).text == "perché città\n"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n",
        b"just a fragment without any header",
        b"\x00\xff\xfe\x80 binary junk \x81",
        b"Content-Type: multipart/mixed\r\n\r\nno boundary at all",
        b'Content-Type: multipart/mixed; boundary="x"\r\n\r\nno delimiter here',
        b'Content-Type: multipart/alternative; boundary="x"\r\n\r\n--x\r\n\r\nopen end',
        b"Date: not a date\r\nMessage-ID: <>\r\nTo: undisclosed-recipients:;\r\n\r\n",
        b"Content-Type: text/html\r\n\r\n<p>unclosed <b>tags <!-- and comments",
        b'From: <>\r\nReply-To: ,,,\r\nCc: "unterminated <a@b>\r\n\r\n',
    ],
)
def test_never_raises_on_broken_input(raw: bytes) -> None:
    parsed = parse(raw)
    assert isinstance(parsed, Mail)
    assert parsed.size == len(raw)
    assert_one_line(parsed)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_never_raises_on_random_bytes(raw: bytes) -> None:
    assert_one_line(parse(raw))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"From: ",
                b"To: ",
                b"Subject: ",
                b"Content-Type: multipart/mixed; boundary=q",
                b"Content-Type: text/html",
                b"\r\n",
                b"\r\n\r\n",
                b"--q\r\n",
                b"--q--",
                b"=?utf-8?q?",
                b"?=",
                b"<",
                b">",
                b"(",
                b")",
                b'"',
                b"@",
                b",",
                b"a@b.test",
                b"\xff",
                b"\x00",
                b" ",
                b"Content-Transfer-Encoding: base64",
                b"Return-Path: <>",
            ]
        ),
        max_size=60,
    )
)
def test_never_raises_on_mail_shaped_noise(pieces: list[bytes]) -> None:
    assert_one_line(parse(b"".join(pieces)))


# --------------------------------------------------------------------------- identity (S07-S10)


def test_s07_display_name_spoof_uses_the_real_address() -> None:
    parsed = parse(mail('From: "agent1@lab.test" <evil@attacker.test>'))
    assert parsed.sender == Address("agent1@lab.test", "evil@attacker.test")


@pytest.mark.parametrize(
    "value", ["agent1@lab.test <evil@attacker.test>", "agent1@lab.test)<evil@attacker.test>"]
)
def test_s08_parser_differential_from_is_not_clean(value: str) -> None:
    parsed = parse(mail(f"From: {value}"))
    assert parsed.sender_clean is False
    assert "From: not exactly one well-formed mailbox" in parsed.defects


def test_s09_two_mailboxes_in_from_are_not_clean() -> None:
    parsed = parse(mail("From: agent1@lab.test, evil@attacker.test"))
    assert parsed.sender == Address("", "agent1@lab.test")
    assert parsed.sender_clean is False


def test_s09_two_from_headers_are_not_clean() -> None:
    parsed = parse(mail("From: agent1@lab.test", "From: evil@attacker.test"))
    assert parsed.sender_clean is False


def test_s09_sender_and_reply_to_never_become_the_sender() -> None:
    parsed = parse(
        mail("From: evil@attacker.test", "Sender: agent1@lab.test", "Reply-To: agent1@lab.test")
    )
    assert parsed.sender == Address("", "evil@attacker.test")
    assert parsed.reply_to == (Address("", "agent1@lab.test"),)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("agent1@LAB.test", "agent1@lab.test"),
        ("Agent1@lab.test", "agent1@lab.test"),
        ("agent1@lab.test.", "agent1@lab.test"),
        ("agent1@l\u0430b.test", "agent1@xn--lb-7kc.test"),  # Cyrillic а
    ],
)
def test_s10_address_normalisation(value: str, expected: str) -> None:
    parsed = parse(mail(f"From: {value}"))
    assert parsed.sender is not None
    assert parsed.sender.addr == expected
    assert parsed.sender.domain == expected.rpartition("@")[2]
    assert parsed.sender_clean is True


def test_s10_homoglyph_domain_never_equals_ascii() -> None:
    assert normalize_addr("agent1@l\u0430b.test") != normalize_addr("agent1@lab.test")


def test_non_ascii_local_part_keeps_its_case() -> None:
    assert normalize_addr("Jürgen@Example.DE") == "Jürgen@example.de"


@pytest.mark.parametrize(
    ("value", "name", "addr"),
    [
        ("Mario Rossi <Mario.Rossi@Example.IT>", "Mario Rossi", "mario.rossi@example.it"),
        ('"Rossi, Mario" <m@x.it>', "Rossi, Mario", "m@x.it"),
        ("=?utf-8?q?Jos=C3=A9_P=C3=A9rez?= <j@x.es>", "José Pérez", "j@x.es"),
        ('"=?utf-8?q?Jos=C3=A9?=" <j@x.es>', "José", "j@x.es"),
        ("m@x.it (Mario)", "Mario", "m@x.it"),
        ("<m@x.it>", "", "m@x.it"),
    ],
)
def test_clean_from_forms(value: str, name: str, addr: str) -> None:
    parsed = parse(mail(f"From: {value}"))
    assert parsed.sender == Address(name, addr)
    assert parsed.sender_clean is True


def test_encoded_word_with_at_sign_stays_a_display_name() -> None:
    parsed = parse(mail("From: =?utf-8?q?agent1@lab.test?= <evil@attacker.test>"))
    assert parsed.sender == Address("agent1@lab.test", "evil@attacker.test")


def test_missing_from() -> None:
    parsed = parse(mail("Subject: x"))
    assert parsed.sender is None
    assert parsed.sender_clean is False


def test_parse_address() -> None:
    assert parse_address("Ann <ANN@Example.ORG>") == Address("Ann", "ann@example.org")
    assert parse_address("ann@example.org") == Address("", "ann@example.org")
    assert parse_address("not an address") is None
    assert parse_address("a@b.test, c@d.test") is None
    assert parse_address("agent1@lab.test <evil@attacker.test>") is None


# --------------------------------------------------------------------------- envelope fields


@pytest.mark.parametrize(
    ("value", "expected"),
    [("<>", ""), ("<<>>", ""), ("< >", ""), ("<Bounce+X@Example.org>", "bounce+x@example.org")],
)
def test_l01_return_path_forms(value: str, expected: str) -> None:
    assert parse(mail(f"Return-Path: {value}")).return_path == expected


def test_l01_topmost_return_path_wins() -> None:
    parsed = parse(mail("Return-Path: <>", "Return-Path: <customer@example.org>"))
    assert parsed.return_path == ""


def test_l01_absent_return_path_is_none() -> None:
    assert parse(mail("From: a@b.test")).return_path is None


def test_recipients_collects_every_envelope_header() -> None:
    parsed = parse(
        mail(
            "To: Support <Assistenza@ExampleNet.it>, other@x.test",
            "Cc: c@x.test",
            "Delivered-To: assistenza+c12.abc@examplenet.it",
            "X-Original-To: alias@examplenet.it",
            "Envelope-To: env@examplenet.it",
            "Resent-To: r@x.test",
            "Resent-Cc: rc@x.test, C@X.test",
        )
    )
    assert parsed.recipients == (
        "assistenza@examplenet.it",
        "other@x.test",
        "c@x.test",
        "assistenza+c12.abc@examplenet.it",
        "alias@examplenet.it",
        "env@examplenet.it",
        "r@x.test",
        "rc@x.test",
    )
    assert parsed.to == (
        Address("Support", "assistenza@examplenet.it"),
        Address("", "other@x.test"),
    )


def test_long_cc_list_with_comments_and_groups() -> None:
    parsed = parse(
        mail('Cc: "Doe, John" <j@x.test>, a@b.test (Ann), Team: t1@x.test, t2@x.test;, <z@y.test>')
    )
    assert [a.addr for a in parsed.cc] == [
        "j@x.test",
        "a@b.test",
        "t1@x.test",
        "t2@x.test",
        "z@y.test",
    ]


def test_m13a_missing_message_id_gets_a_stable_synthetic_one() -> None:
    raw = mail("From: a@b.test", "Subject: no id")
    first, again = parse(raw), parse(raw)
    assert first.synthetic_id is True
    assert first.message_id == again.message_id
    assert first.message_id.startswith("synthetic.")
    assert first.message_id.endswith("@mailcare.invalid")
    assert parse(raw + b"x").message_id != first.message_id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<abc@x.test>", "abc@x.test"),
        ("abc@x.test", "abc@x.test"),
        ("<abc@x.test> (comment)", "abc@x.test"),
        ("  <a@b>  <c@d>", "a@b"),
    ],
)
def test_message_id_forms(value: str, expected: str) -> None:
    parsed = parse(mail(f"Message-ID: {value}"))
    assert (parsed.message_id, parsed.synthetic_id) == (expected, False)


def test_in_reply_to_and_references_are_deduplicated_in_order() -> None:
    parsed = parse(mail("In-Reply-To: <b@x> <b@x>", "References: <a@x>\r\n <b@x> <a@x> <c@x>"))
    assert parsed.in_reply_to == ("b@x",)
    assert parsed.references == ("a@x", "b@x", "c@x")


def test_references_cap_keeps_root_and_nearest() -> None:
    ids = " ".join(f"<id{i}@x>" for i in range(300))
    parsed = parse(mail(f"References: {ids}"))
    assert len(parsed.references) == 100
    assert parsed.references[0] == "id0@x"
    assert parsed.references[-1] == "id299@x"


def test_in_reply_to_without_brackets() -> None:
    assert parse(mail("In-Reply-To: abc@x.test")).in_reply_to == ("abc@x.test",)


def test_headers_map_is_decoded_lowercase_and_ordered() -> None:
    parsed = parse(
        mail(
            "Received: one",
            "Received: two\r\n\tfolded",
            "X-Thing: =?utf-8?q?caf=C3=A9?=",
            "Thread-Index: AQHZ1234==",
            "Thread-Topic: =?utf-8?q?Stampante_rotta?=",
        )
    )
    assert parsed.header("RECEIVED") == ("one", "two\tfolded")
    assert parsed.headers["x-thing"] == ("café",)
    assert parsed.thread_index == "AQHZ1234=="
    assert parsed.thread_topic == "Stampante rotta"
    assert parsed.header("missing") == ()


def test_header_values_are_capped() -> None:
    parsed = parse(mail("X-Long: " + "b" * 5000), max_header_bytes=1024)
    assert parsed.header("x-long") == ("b" * 1024,)


def test_date_parsing() -> None:
    assert parse(mail("Date: Wed, 01 May 2024 10:00:00 +0200")).date == datetime.fromisoformat(
        "2024-05-01T10:00:00+02:00"
    )
    assert parse(mail("Date: Wed, 01 May 2024 10:00:00 -0000")).date == datetime(
        2024, 5, 1, 10, tzinfo=UTC
    )
    broken = parse(mail("Date: yesterday-ish"))
    assert broken.date is None
    assert "Date: unparseable" in broken.defects


def test_is_dsn() -> None:
    dsn = 'Content-Type: multipart/report; report-type="delivery-status"; boundary=x'
    assert parse(mail(dsn, body="--x--\r\n")).is_dsn is True
    mdn = "Content-Type: multipart/report; report-type=disposition-notification; boundary=x"
    assert parse(mail(mdn, body="--x--\r\n")).is_dsn is False
    assert parse(mail("Subject: x")).is_dsn is False


# --------------------------------------------------------------------------- subjects


@pytest.mark.parametrize(
    ("subject", "key"),
    [
        ("Re: Stampante rotta", "stampante rotta"),
        ("R: Stampante rotta", "stampante rotta"),  # Outlook italiano
        ("RIF: Stampante rotta", "stampante rotta"),
        ("I: Stampante rotta", "stampante rotta"),  # inoltro
        ("Inoltro: Stampante rotta", "stampante rotta"),
        ("AW: WG: Drucker kaputt", "drucker kaputt"),
        ("SV: VS: Skrivaren", "skrivaren"),
        ("Antw: Doorst: Printer", "printer"),
        ("Odp: Drukarka", "drukarka"),
        ("TR: RE : Imprimante", "imprimante"),  # French "RE :" with a space
        ("Réf: Imprimante", "imprimante"),
        ("RV: Impresora", "impresora"),
        ("YNT: Yazıcı", "yazıcı"),
        ("Re[2]: Re: Fwd: Fw: Printer", "printer"),
        ("RE^3: Printer", "printer"),
        ("回复: 转发: 打印机坏了", "打印机坏了"),
        ("答复：打印机", "打印机"),  # full-width colon
        ("Re: [EX #1234] Printer", "printer"),
        ("[Case #123] Re:   Printer    broken", "printer broken"),
        ("Re: Printer [rt.example.com #42]", "printer"),
        ("Automatic reply: Printer", "automatic reply: printer"),
        ("Risposta automatica: Re: Stampante", "risposta automatica: re: stampante"),
        ("Regarding: the printer", "regarding: the printer"),
        ("Ire: nothing", "ire: nothing"),
    ],
)
def test_subject_key(subject: str, key: str) -> None:
    assert normalize_subject(subject) == key


def test_subject_key_of_encoded_word_prefix() -> None:
    parsed = parse(mail("Subject: =?iso-8859-1?q?AW=3A_Hallo?="))
    assert parsed.subject == "AW: Hallo"
    assert parsed.subject_key == "hallo"


def test_subject_key_of_split_encoded_words() -> None:
    parsed = parse(mail("Subject: =?utf-8?q?Re=3A_Stam?=\r\n =?utf-8?q?pante?="))
    assert (parsed.subject, parsed.subject_key) == ("Re: Stampante", "stampante")


def test_strip_prefixes_keeps_case_and_rest() -> None:
    assert strip_prefixes("RE: AW: Hello World") == "Hello World"
    assert strip_prefixes("Hello: World") == "Hello: World"


def test_subject_whitespace_is_collapsed() -> None:
    assert parse(mail("Subject:  a\r\n\t b   c ")).subject == "a b c"


# --------------------------------------------------------------------------- body and new text


def test_multipart_alternative_prefers_plain_text() -> None:
    body = (
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: "
        "quoted-printable\r\n\r\nCiao, la stampante =C3=A8 rotta.\r\n"
        "--b\r\nContent-Type: text/html\r\n\r\n<p>HTML version</p>\r\n--b--\r\n"
    )
    parsed = parse(mail('Content-Type: multipart/alternative; boundary="b"', body=body))
    assert parsed.text == "Ciao, la stampante è rotta."
    assert parsed.attachments == ()


def test_html_only_mail_is_converted() -> None:
    html = (
        "<html><head><style>p {color: red}</style></head><body>"
        "<p>Buongiorno,</p><p>la <b>stampante</b> non funziona.</p>"
        "<blockquote>vecchio messaggio</blockquote></body></html>"
    )
    parsed = parse(mail("Content-Type: text/html; charset=utf-8", body=html))
    assert "Buongiorno," in parsed.text
    assert "la stampante non funziona." in parsed.text
    assert "color" not in parsed.text
    assert "<p>" not in parsed.text
    assert "vecchio messaggio" not in parsed.new_text
    assert parsed.new_text.startswith("Buongiorno,")


def test_attachments_are_listed_without_decoding() -> None:
    pdf = base64.b64encode(b"%PDF" + b"x" * 3000).decode()
    body = (
        "--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
        "--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="fattura.pdf"\r\n\r\n{pdf}\r\n'
        "--b\r\nContent-Type: image/png; name*=utf-8''sch%C3%A9ma.png\r\n\r\nPNGDATA\r\n"
        "--b--\r\n"
    )
    raw = mail('Content-Type: multipart/mixed; boundary="b"', body=body)
    parsed = parse(raw)
    assert parsed.text == "See attached."
    assert [(a.filename, a.content_type) for a in parsed.attachments] == [
        ("fattura.pdf", "application/pdf"),
        ("schéma.png", "image/png"),
    ]
    assert abs(parsed.attachments[0].size - 3004) <= 3
    assert attachments_payloads(raw) == [
        ("fattura.pdf", "application/pdf", b"%PDF" + b"x" * 3000),
        ("schéma.png", "image/png", b"PNGDATA"),
    ]


def test_attachments_payloads_never_raises() -> None:
    assert attachments_payloads(nested(1000)) == []
    assert attachments_payloads(b"\xff\x00junk") == []


def test_forwarded_message_is_an_attachment() -> None:
    body = (
        "--b\r\nContent-Type: text/plain\r\n\r\nForwarding this.\r\n"
        "--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: c@x.test\r\nSubject: inner\r\n\r\n"
        "inner body\r\n--b--\r\n"
    )
    raw = mail('Content-Type: multipart/mixed; boundary="b"', body=body)
    parsed = parse(raw)
    assert parsed.text == "Forwarding this."
    assert [a.content_type for a in parsed.attachments] == ["message/rfc822"]
    assert attachments_payloads(raw) == [
        ("", "message/rfc822", b"From: c@x.test\r\nSubject: inner\r\n\r\ninner body")
    ]


ITALIAN_OUTLOOK = """Buongiorno,
la stampante continua a dare errore 5.

Cordiali saluti
Mario Rossi
ACME Srl

-----Messaggio originale-----
Da: Assistenza <assistenza@examplenet.it>
Inviato: lunedì 3 aprile 2023 10:12
A: Mario Rossi <mario@acme.it>
Oggetto: [EX #12] Ricevuta la richiesta

Abbiamo ricevuto la sua richiesta.
"""


def test_new_text_cuts_italian_outlook_history_and_signature() -> None:
    parsed = parse(mail("From: Mario Rossi <mario@acme.it>", body=ITALIAN_OUTLOOK))
    assert parsed.new_text == "Buongiorno,\nla stampante continua a dare errore 5."
    assert parsed.language == "it"


@pytest.mark.parametrize(
    "header",
    [
        "Il giorno lun 3 apr 2023 alle ore 10:12 Assistenza <assistenza@examplenet.it> ha scritto:",
        "On Mon, Apr 3, 2023 at 10:12 AM Assistenza <assistenza@examplenet.it> wrote:",
        "Am Mo., 3. Apr. 2023 um 10:12 Uhr schrieb Assistenza <assistenza@examplenet.it>:",
        "On Mon, Apr 3, 2023 at 10:12 AM Assistenza\n<assistenza@examplenet.it> wrote:",
    ],
)
def test_new_text_cuts_at_reply_headers(header: str) -> None:
    text = f"La linea cade ancora.\n\n{header}\n\n> Abbiamo ricevuto la sua richiesta.\n> Grazie\n"
    assert reply_text(text, ("it", "en", "de")) == "La linea cade ancora."


def test_new_text_keeps_inline_answers() -> None:
    text = (
        "Hi,\nOn Tue, 2011-03-01 at 18:02 +0530, Ann wrote:\n> How do I reset it?\n\n"
        "Hold the button for ten seconds.\n\n> And the password?\n\nIt is on the label.\n"
    )
    assert reply_text(text) == ("Hi,\n\nHold the button for ten seconds.\n\nIt is on the label.")


def test_new_text_of_bottom_posted_reply() -> None:
    text = "On 04/02/2012 06:26 PM, Ann wrote:\n> Hi\nHello"
    assert reply_text(text) == "Hello"


def test_new_text_of_a_bare_forward_is_the_forwarded_text() -> None:
    text = (
        "---------- Forwarded message ---------\nFrom: Customer <c@x.test>\n"
        "Date: Mon, 3 Apr 2023 at 10:12\nSubject: Printer\nTo: agent@lab.test\n\n"
        "The printer is broken.\n"
    )
    assert reply_text(text) == "The printer is broken."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello\n\n-- \nMario\nACME", "Hello"),
        ("Hello\n\nSent from my iPhone", "Hello"),
        ("Ciao\n\nInviato da iPhone", "Ciao"),
        (
            "Hello\n\nSent from my desk, which is easier.",
            "Hello\n\nSent from my desk, which is easier.",
        ),
        ("Help!\n\nBest regards,\nMario Rossi\nACME Srl\n+39 02 1234", "Help!"),
        ("Aiuto!\n\nGrazie mille\nMario", "Aiuto!"),
        (
            "It broke.\nThanks, the printer works now after a restart.",
            "It broke.\nThanks, the printer works now after a restart.",
        ),
        ("Thanks, Mario", "Thanks, Mario"),  # a sign-off as the whole mail stays
        ("It broke.\n\n-Mario Rossi", "It broke."),
        ("It broke.\nMario Rossi ha chiamato ieri.", "It broke.\nMario Rossi ha chiamato ieri."),
        ("Stuff -- not a signature.\nBye", "Stuff -- not a signature.\nBye"),
    ],
)
def test_strip_signature(text: str, expected: str) -> None:
    assert strip_signature(text, ("it", "en"), sender_name="Mario Rossi") == expected


def test_new_text_is_fast_on_long_lines() -> None:
    text = ("parola " * 3000 + "\n") * 20 + "On Mon, Ann wrote:\n> quoted\n"
    started = time.perf_counter()
    assert reply_text(text).startswith("parola")
    assert time.perf_counter() - started < 1


# --------------------------------------------------------------------------- language


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Buongiorno, non riesco ad accedere al mio account da ieri. Potete aiutarmi?", "it"),
        ("Salve, la fattura di marzo riporta un importo sbagliato.", "it"),
        ("Hello, I cannot log into my account since yesterday. Can you help me?", "en"),
        ("Hi, the March invoice shows the wrong amount, please check it.", "en"),
        ("ok", "it"),  # too short to tell: the default
        ("", "it"),
        ("12345 ---- 678", "it"),
    ],
)
def test_language_detection(text: str, language: str) -> None:
    assert detect_language(text, ("it", "en"), "it") == language


def test_language_with_single_configured_language() -> None:
    assert detect_language("Hello there, how are you today?", ("it",), "it") == "it"


def test_language_of_parsed_mail() -> None:
    body = "Hello, my modem keeps disconnecting every evening. What can I do about it?"
    assert parse(mail("From: a@b.test", body=body)).language == "en"
    assert (
        parse(
            mail("From: a@b.test", body=body), default_language="en", languages=("en", "it")
        ).language
        == "en"
    )


# --------------------------------------------------------------------------- purity


@pytest.mark.parametrize("module", ["mailcare.mail", "mailcare.bounces"])
def test_parsing_stays_in_the_pure_core(module: str) -> None:
    """No sockets, SQLite, asyncio or clock: parsing is a function of the bytes."""
    source = Path(str(importlib.import_module(module).__file__)).read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    forbidden = {"sqlite_utils", "sqlite3", "imapclient", "aiosmtplib", "asyncio", "socket", "time"}
    assert not imported & forbidden
    assert ".now(" not in source and "today(" not in source
