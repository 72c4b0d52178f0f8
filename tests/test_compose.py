"""Templates and outgoing mail: rendering, header safety, RFC 3834 markers, wire format."""

from __future__ import annotations

import dataclasses
import email
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.policy import compat32
from email.policy import default as default_policy
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailcare import compose
from mailcare.compose import (
    MAX_SUBJECT_CHARS,
    SAMPLE_VALUES,
    SAMPLE_VARIANTS,
    Outgoing,
    Rendered,
    TemplateError,
    Templates,
    address,
    build,
    clean_subject,
    one_line,
    sender_name,
)

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
WHEN = datetime(2026, 11, 23, 10, 0, tzinfo=timezone(timedelta(hours=1)))
SUPPORT = "assistenza@examplenet.it"
KINDS = {
    "ack", "redirect", "route_customer", "route_forward", "notify_owner", "forward_owner",
    "relay", "not_owner", "owner_alert", "command_reply", "take_conflict", "reminder",
    "escalation", "report",
}  # fmt: skip
BANNED = (
    "important to us",
    "importante per noi",
    "do not reply",
    "don't reply",
    "non rispondere",
    "non risponda",
    "noreply",
    "no-reply",
)


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates(TEMPLATES, languages=("it", "en"), default_language="it")


def outgoing(**changes: Any) -> Outgoing:
    base = Outgoing(
        to=("mario.bianchi@example.com",),
        from_name=sender_name("Giulia Rossi", "Assistenza ExampleNet"),
        from_addr=SUPPORT,
        subject="[EX #1042] La fibra non funziona da ieri sera",
        text="Gentile Mario,\n\nabbiamo aperto la pratica n. 1042.\n",
        message_id="mc.ack.1042.abcdefghabcdefgh@examplenet.it",
        reply_to="assistenza+1042.abcdefabcdef@examplenet.it",
        in_reply_to="CAF123.456@mail.gmail.com",
        references=("root.1@example.com",),
        loop_domain="examplenet.it",
        extra_headers=(("X-Mailcare-Case", "1042"),),
    )
    return dataclasses.replace(base, **changes)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def body(message: EmailMessage) -> str:
    """The decoded text/plain content with LF line ends (the parser keeps the CRLFs)."""
    return str(message.get_content()).replace("\r\n", "\n")


def display_name(raw: bytes) -> str:
    """The From display name, decoded as RFC 2047 says (whitespace between adjacent encoded
    words is dropped; Python 3.11's address parser keeps it, the legacy decoder does not)."""
    field = email.message_from_bytes(raw, policy=compat32)["From"]
    name, _ = parseaddr(re.sub(r"\r?\n", "", str(field)))
    return str(make_header(decode_header(name)))


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def header_names(raw: bytes) -> list[str]:
    """Field names at the start of header lines (continuation lines start with a space)."""
    lines = header_block(raw).split(b"\r\n")
    return [line.split(b":", 1)[0].decode().lower() for line in lines if line[:1] not in b" \t"]


def assert_wire_format(raw: bytes) -> None:
    """CRLF only (Postfix 3.9+ rejects bare LF), ends in CRLF, no line over 998 octets."""
    assert raw.endswith(b"\r\n")
    assert re.search(rb"(?<!\r)\n", raw) is None, "bare LF"
    assert re.search(rb"\r(?!\n)", raw) is None, "bare CR"
    assert b"\0" not in raw
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


# -- templates ---------------------------------------------------------------------------------


def test_every_kind_and_language_renders_with_sample_values(templates: Templates) -> None:
    assert set(templates.kinds()) == KINDS
    assert set(SAMPLE_VALUES) == KINDS
    for kind in KINDS:
        for lang in ("it", "en"):
            assert templates.path(kind, lang).is_file(), f"{kind}.{lang} missing"
    assert templates.check() == []


def test_every_variant_renders_distinct_text(templates: Templates) -> None:
    """The variants reach other branches: each one changes the text it renders."""
    for kind, variants in SAMPLE_VARIANTS.items():
        for lang in ("it", "en"):
            plain = templates.render(kind, lang, SAMPLE_VALUES[kind])
            for overrides in variants:
                varied = templates.render(kind, lang, {**SAMPLE_VALUES[kind], **overrides})
                assert varied != plain, (kind, lang, overrides)


def test_italian_ack_names_owner_case_and_promise(templates: Templates) -> None:
    values = SAMPLE_VALUES["ack"]
    rendered = templates.render("ack", "it", values)
    assert rendered == Rendered(
        subject="[EX #1042] La fibra non funziona da ieri sera", text=rendered.text, lang="it"
    )
    assert "Giulia Rossi" in rendered.text
    assert "1042" in rendered.text
    assert values["promise"] in rendered.text
    assert "[EX #1042] nell'oggetto" in rendered.text
    assert rendered.text.startswith("Gentile Mario Bianchi,\n\n")
    assert rendered.text.endswith("Assistenza ExampleNet\n")


def test_unsure_ack_says_a_person_reads_it_without_hedging(templates: Templates) -> None:
    text = templates.render("ack", "it", {**SAMPLE_VALUES["ack"], "unsure": True}).text
    assert "La leggerà di persona Giulia Rossi" in text
    for hedge in ("forse", "potrebbe", "non siamo sicuri"):
        assert hedge not in text


def test_redirect_says_where_and_leaves_the_exit(templates: Templates) -> None:
    values = SAMPLE_VALUES["redirect"]
    it = templates.render("redirect", "it", values).text
    assert values["where"] in it and values["reason"] in it and values["tell"] in it
    assert "Se abbiamo capito male, risponda semplicemente a questa mail" in it
    en = templates.render("redirect", "en", {**values, "understood": ""}).text
    assert f'"{values["subject"]}"' in en  # falls back to the subject
    assert "just reply to this email and a person from our team will look at it" in en
    assert en.endswith("Giulia Rossi\nAssistenza ExampleNet\n")


def test_relay_is_the_agents_words_and_a_signature(templates: Templates) -> None:
    values = SAMPLE_VALUES["relay"]
    rendered = templates.render("relay", "en", values)
    assert rendered.subject == "[EX #1042] La fibra non funziona da ieri sera"
    assert rendered.text == values["body"] + "\n\n-- \nGiulia Rossi\nExampleNet\n"


def test_notify_owner_asks_for_scope_when_unsure(templates: Templates) -> None:
    values = {**SAMPLE_VALUES["notify_owner"], "unsure": True, "scope_confidence": 0.4}
    text = templates.render("notify_owner", "en", values).text
    assert "#scope in <category>" in text and "40% confidence" in text
    assert "reply to this email: the first lines may hold commands" in text
    assert values["commands_help"] in text and values["customer_text"] in text


def test_no_banned_phrases_in_any_template() -> None:
    files = sorted(TEMPLATES.glob("*.txt"))
    assert len(files) == 2 * len(KINDS)
    for path in files:
        text = path.read_text(encoding="utf-8").casefold()
        for phrase in BANNED:
            assert phrase not in text, f"{path.name}: {phrase!r}"


def test_m03_template_syntax_in_values_stays_literal(templates: Templates) -> None:
    hostile = {
        "subject": "{{ 7*7 }}",
        "customer_name": "{% for i in range(10**8) %}x{% endfor %}",
        "promise": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    }
    rendered = templates.render("ack", "en", {**SAMPLE_VALUES["ack"], **hostile})
    assert rendered.subject == "[EX #1042] {{ 7*7 }}"
    assert "Hello {% for i in range(10**8) %}x{% endfor %}," in rendered.text
    assert hostile["promise"] in rendered.text
    assert "49" not in rendered.subject


def test_m04_plain_text_is_not_html_escaped(templates: Templates) -> None:
    name = "O'Brien <b>&</b>"
    rendered = templates.render("ack", "en", {**SAMPLE_VALUES["ack"], "customer_name": name})
    assert f"Hello {name}," in rendered.text
    assert "&#39;" not in rendered.text and "&amp;" not in rendered.text
    sent = body(parse(build(outgoing(text=rendered.text), date=WHEN)))
    assert f"Hello {name}," in sent


def test_m01_rendered_subject_is_one_line(templates: Templates) -> None:
    values = {**SAMPLE_VALUES["ack"], "subject": "Hello\r\nBcc: x@evil.example\x00 \u2028end"}
    rendered = templates.render("ack", "it", values)
    assert rendered.subject == "[EX #1042] Hello Bcc: x@evil.example end"


def test_a_missing_language_falls_back_to_the_default(tmp_path: Path) -> None:
    (tmp_path / "ack.it.txt").write_text("Subject: {{ case_tag }} ciao\n\nCiao.\n")
    found = Templates(tmp_path, languages=("it", "en"), default_language="it")
    for lang in ("en", "de", "it-IT", "IT"):
        rendered = found.render("ack", lang, {"case_tag": "[EX #1]"})
        assert rendered == Rendered(subject="[EX #1] ciao", text="Ciao.\n", lang="it")
    assert "ack.en: missing, mail falls back to ack.it" in found.check()


def test_a_configured_language_is_used_when_present(tmp_path: Path) -> None:
    (tmp_path / "ack.it.txt").write_text("Subject: ciao\n\nCiao.\n")
    (tmp_path / "ack.en.txt").write_text("Subject: hello\n\nHello {{ lang }}.\n")
    found = Templates(tmp_path, languages=("it", "en"), default_language="it")
    assert found.render("ack", "en-GB", {}) == Rendered("hello", "Hello en.\n", "en")


def test_missing_value_is_reported_by_check_and_refused_by_render(tmp_path: Path) -> None:
    for kind in SAMPLE_VALUES:
        for lang in ("it", "en"):
            source = (TEMPLATES / f"{kind}.{lang}.txt").read_text(encoding="utf-8")
            (tmp_path / f"{kind}.{lang}.txt").write_text(source, encoding="utf-8")
    (tmp_path / "ack.en.txt").write_text("Subject: {{ case_tag }}\n\nHi {{ owner_nam }}\n")
    found = Templates(tmp_path, languages=("it", "en"), default_language="it")
    assert found.check() == [
        "ack.en: 'owner_nam' is undefined",
        "ack.en (unsure=True, customer_name=''): 'owner_nam' is undefined",
    ]
    with pytest.raises(TemplateError, match=r"^ack\.en: 'owner_nam' is undefined$"):
        found.render("ack", "en", SAMPLE_VALUES["ack"])


def test_check_reports_broken_files_by_name_and_line(tmp_path: Path) -> None:
    (tmp_path / "ack.it.txt").write_text("Subject: x\n\nuno\n{% if %}\n")
    (tmp_path / "relay.it.txt").write_text("Oggetto: x\n\ncorpo\n")
    (tmp_path / "report.it.txt").write_text("Subject: x\ncorpo subito\n")
    found = Templates(tmp_path, languages=("it",), default_language="it")
    problems = found.check()
    assert "ack.it: line 4: Expected an expression, got 'end of statement block'" in problems
    assert "relay.it: line 1 must be 'Subject: ...'" in problems
    assert "report.it: line 2 must be empty (it separates subject and body)" in problems
    assert f"redirect.it: missing {tmp_path / 'redirect.it.txt'} (no fallback)" in problems
    with pytest.raises(TemplateError, match="no template file"):
        found.render("redirect", "it", SAMPLE_VALUES["redirect"])


def test_kind_names_cannot_reach_outside_the_folder(templates: Templates) -> None:
    for kind in ("../ack", "ack/../../etc", "ACK", ""):
        with pytest.raises(TemplateError, match="not a template kind"):
            templates.render(kind, "it", SAMPLE_VALUES["ack"])


def test_rendered_text_has_one_final_newline_and_no_leading_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "x.it.txt").write_text("Subject: s\n\n\n\n{{ a }}\r\n\n\n")
    found = Templates(tmp_path, languages=("it",), default_language="it")
    assert found.render("x", "it", {"a": "uno\r\ndue\rtre\x00"}).text == "uno\ndue\ntre\n"


# -- building ----------------------------------------------------------------------------------


def test_l15_automatic_mail_carries_the_rfc3834_header_set() -> None:
    raw = build(outgoing(), date=WHEN)
    assert_wire_format(raw)
    message = parse(raw)
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["X-Auto-Response-Suppress"] == "All"
    assert message["Precedence"] == "bulk"
    assert message["X-Mailcare-Loop"] == "examplenet.it"
    assert message["X-Mailcare-Case"] == "1042"
    assert header_names(raw).count("to") == 1
    assert [a.addr_spec for a in message["To"].addresses] == ["mario.bianchi@example.com"]
    assert "cc" not in header_names(raw) and "bcc" not in header_names(raw)
    assert message["In-Reply-To"] == "<CAF123.456@mail.gmail.com>"
    assert message["References"].split()[-1] == "<CAF123.456@mail.gmail.com>"
    assert message["Message-ID"] == "<mc.ack.1042.abcdefghabcdefgh@examplenet.it>"
    assert message["Date"].datetime == WHEN
    assert message["MIME-Version"] == "1.0"


def test_l15_automatic_mail_goes_to_exactly_one_recipient() -> None:
    with pytest.raises(ValueError, match="exactly one recipient"):
        build(outgoing(to=("a@example.com", "b@example.com")), date=WHEN)
    with pytest.raises(ValueError, match="exactly one recipient"):
        build(outgoing(cc=("b@example.com",)), date=WHEN)
    with pytest.raises(ValueError, match="at least one"):
        build(outgoing(to=(), automatic=False), date=WHEN)


def test_relay_is_not_marked_automatic_and_may_copy_others() -> None:
    raw = build(
        outgoing(automatic=False, cc=("luca.verdi@example.com",), to=("a@x.it", "b@y.it")),
        date=WHEN,
    )
    names = header_names(raw)
    for marker in ("auto-submitted", "x-auto-response-suppress", "precedence"):
        assert marker not in names
    assert "x-mailcare-loop" in names
    message = parse(raw)
    assert [a.addr_spec for a in message["To"].addresses] == ["a@x.it", "b@y.it"]
    assert message["Cc"] == "luca.verdi@example.com"


def test_from_header_quotes_a_display_name_with_specials() -> None:
    raw = build(outgoing(), date=WHEN)
    assert b'From: "Giulia Rossi (Assistenza ExampleNet)" <assistenza@examplenet.it>\r\n' in raw
    sender = parse(raw)["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == (
        "Giulia Rossi (Assistenza ExampleNet)",
        SUPPORT,
    )


@pytest.mark.parametrize(
    "subject",
    [
        "Hello\r\nBcc: x@evil.example",
        "=?utf-8?q?Hello=0D=0ABcc=3A_x@evil.example?=",
        "Re: =?utf-8?q?Hello=0D=0ABcc=3A_x@evil.example?= è",
        "Hello\nBcc: x@evil.example\r\n\r\nbody",
    ],
)
def test_m01_crlf_in_subject_gives_one_subject_line_and_no_injected_header(subject: str) -> None:
    raw = build(outgoing(subject=subject), date=WHEN)
    assert_wire_format(raw)
    names = header_names(raw)
    assert names.count("subject") == 1
    assert "bcc" not in names
    assert not re.search(rb"^bcc:", raw, re.IGNORECASE | re.MULTILINE)
    message = parse(raw)
    assert message["Subject"] == clean_subject(subject)
    assert message.get_all("Bcc") is None


@pytest.mark.parametrize(
    "name",
    [
        "Eve\r\nBcc: v@x",
        "=?utf-8?q?Eve=0D=0ABcc=3A_v@x?=",
        'Eve" <evil@attacker.test>, "x',
        "Zoë =?utf-8?q?Eve=0D=0ABcc=3A_v@x?=",
    ],
)
def test_m02_display_name_cannot_inject_headers_or_addresses(name: str) -> None:
    raw = build(outgoing(from_name=name), date=WHEN)
    assert_wire_format(raw)
    names = header_names(raw)
    assert names.count("from") == 1 and "bcc" not in names
    sender = parse(raw)["From"]
    assert len(sender.addresses) == 1
    assert sender.addresses[0].addr_spec == SUPPORT
    assert display_name(raw) == one_line(name)


def test_addresses_are_checked_before_they_reach_a_header() -> None:
    for bad in ("no-at-sign", "a@b.it, c@d.it", "x@y.it\r\nBcc: z@evil.test", "a b@c.it", "@x"):
        with pytest.raises(ValueError):
            build(outgoing(to=(bad,)), date=WHEN)
    assert address(" Mario.Bianchi@Example.com ") == "Mario.Bianchi@Example.com"
    assert address('"mario bianchi"@example.com') == '"mario bianchi"@example.com'
    assert address("mario@exämple.it") == "mario@xn--exmple-cua.it"


def test_a_non_ascii_local_part_switches_to_smtputf8() -> None:
    raw = build(outgoing(to=("mário@example.com",)), date=WHEN)
    assert_wire_format(raw)
    assert "To: mário@example.com\r\n".encode() in raw


def test_extra_headers_cannot_replace_our_own() -> None:
    for name in ("Bcc", "To", "auto-submitted", "X Bad", "Bad:Name", ""):
        with pytest.raises(ValueError, match="not allowed"):
            build(outgoing(extra_headers=((name, "x"),)), date=WHEN)
    raw = build(outgoing(extra_headers=(("X-Mailcare-Note", "uno\r\nBcc: due"),)), date=WHEN)
    assert b"X-Mailcare-Note: uno Bcc: due\r\n" in raw


def test_message_ids_are_bracketed_and_validated() -> None:
    with pytest.raises(ValueError, match="Message-ID"):
        build(outgoing(message_id="no-domain"), date=WHEN)
    raw = build(outgoing(message_id="<a@b.it>", in_reply_to=" <p@q.it> "), date=WHEN)
    message = parse(raw)
    assert message["Message-ID"] == "<a@b.it>"
    assert message["In-Reply-To"] == "<p@q.it>"


def test_references_keep_the_root_and_the_last_ten_and_end_with_the_parent() -> None:
    refs = tuple(f"id{i}@example.com" for i in range(30))
    raw = build(outgoing(references=(*refs, refs[3]), in_reply_to="parent@x.it"), date=WHEN)
    assert_wire_format(raw)
    got = parse(raw)["References"].split()
    assert got == [f"<{refs[0]}>", *(f"<{r}>" for r in refs[-9:]), "<parent@x.it>"]
    assert all(len(line) <= 78 for line in header_block(raw).split(b"\r\n"))


def test_references_always_end_with_the_parent() -> None:
    out = outgoing(references=("p@x.it", "a@x.it", "<junk id with spaces>"), in_reply_to="p@x.it")
    assert parse(build(out, date=WHEN))["References"] == "<a@x.it> <p@x.it>"
    assert "references" not in header_names(
        build(outgoing(references=(), in_reply_to=""), date=WHEN)
    )


def test_lone_surrogates_and_invisible_characters_never_break_a_build() -> None:
    raw = build(outgoing(subject="a\udce8b", from_name="n\ud800", text="x\udcff\n"), date=WHEN)
    assert_wire_format(raw)
    for bad in ("a\u200b@b.it", "a\udce8@b.it"):
        with pytest.raises(ValueError, match="not a usable mail address"):
            build(outgoing(to=(bad,)), date=WHEN)


def test_a_naive_date_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build(outgoing(), date=datetime(2026, 11, 23, 10, 0))
    utc = parse(build(outgoing(), date=WHEN.astimezone(UTC)))
    assert utc["Date"] == "Mon, 23 Nov 2026 09:00:00 +0000"


@pytest.mark.parametrize(
    ("text", "cte"),
    [
        ("Hello Mario,\nall good.\n", "7bit"),
        ("Gentile Mario,\nla linea è di nuovo attiva.\n", "8bit"),
        ("x" * 1200 + "\nè\n", "quoted-printable"),
    ],
)
def test_body_transfer_encoding_fits_the_text(text: str, cte: str) -> None:
    raw = build(outgoing(text=text), date=WHEN)
    assert_wire_format(raw)
    message = parse(raw)
    assert message["Content-Transfer-Encoding"] == cte
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert body(message) == text


def test_body_line_ends_and_controls_are_normalised() -> None:
    raw = build(outgoing(text="uno\r\ndue\rtre\nquattro\x00\x07\n\n\n"), date=WHEN)
    assert_wire_format(raw)
    assert raw.endswith(b"\r\n\r\nuno\r\ndue\r\ntre\r\nquattro\r\n")


def test_attachments_are_parts_and_hostile_filenames_stay_in_their_parameter() -> None:
    files = (
        ("fattura ottobre è.pdf", "application/pdf", b"%PDF-1.4 \x00\xff"),
        ("=?utf-8?q?a=0D=0ABcc=3A_x@evil.test?=.txt", "text/plain", b"ciao\n"),
        ("inoltrata.eml", "message/rfc822", b"From: a@b.it\nSubject: x\n\ncorpo\n"),
        ("non-ascii.eml", "message/rfc822", b"From: a@b.it\n\ncorpo \xc3\xa8\n"),
        ("weird", "multipart/mixed; boundary=x", b"--x--"),
    )
    raw = build(outgoing(automatic=False, attachments=files), date=WHEN)
    assert_wire_format(raw)
    assert not re.search(rb"^bcc:", raw, re.IGNORECASE | re.MULTILINE)
    message = parse(raw)
    assert message.get_content_type() == "multipart/mixed"
    text_part = message.get_body(("plain",))
    assert isinstance(text_part, EmailMessage) and body(text_part) == outgoing().text
    parts = list(message.iter_attachments())
    assert [p.get_content_type() for p in parts] == [
        "application/pdf",
        "text/plain",
        "message/rfc822",
        "application/octet-stream",
        "application/octet-stream",
    ]
    assert parts[0].get_filename() == "fattura ottobre è.pdf"
    assert parts[0].get_payload(decode=True) == files[0][2]
    assert "\n" not in (parts[1].get_filename() or "") and "Bcc" in (parts[1].get_filename() or "")
    assert parts[2]["Content-Transfer-Encoding"] == "7bit"
    assert b"Subject: x\r\n\r\ncorpo\r\n" in raw
    assert parts[3].get_payload(decode=True) == files[3][2]


@pytest.mark.parametrize("size", [200, 5_000_000])
def test_m09_a_huge_subject_is_capped_and_folded(size: int) -> None:
    start = time.perf_counter()
    for subject in ("x" * size, "è" * size, "parola " * (size // 7)):
        raw = build(outgoing(subject=subject), date=WHEN)
        assert_wire_format(raw)
        assert all(len(line) <= 78 for line in header_block(raw).split(b"\r\n"))
        decoded = parse(raw)["Subject"]
        assert decoded == clean_subject(subject)
        assert len(decoded) <= MAX_SUBJECT_CHARS
    assert time.perf_counter() - start < 5


@settings(max_examples=150, deadline=None)
@given(subject=st.text(max_size=300), name=st.text(max_size=120), text=st.text(max_size=400))
def test_any_text_round_trips_and_keeps_the_wire_format(subject: str, name: str, text: str) -> None:
    raw = build(outgoing(subject=subject, from_name=name, text=text), date=WHEN)
    assert_wire_format(raw)
    assert all(len(line) <= 78 for line in header_block(raw).split(b"\r\n"))
    words = re.findall(rb"=\?utf-8\?q\?[^?]*\?=", header_block(raw))
    assert all(len(word) <= 75 for word in words)  # RFC 2047 §2
    names = header_names(raw)
    assert names.count("subject") == 1 and names.count("from") == 1 and "bcc" not in names
    message = parse(raw)
    assert message["Subject"] == clean_subject(subject)
    sender = message["From"].addresses
    assert len(sender) == 1 and sender[0].addr_spec == SUPPORT
    assert display_name(raw) == one_line(name)[:200].rstrip()


def test_rendered_templates_build_into_valid_mail(templates: Templates) -> None:
    for kind in sorted(KINDS):
        for lang in ("it", "en"):
            rendered = templates.render(kind, lang, SAMPLE_VALUES[kind])
            raw = build(outgoing(subject=rendered.subject, text=rendered.text), date=WHEN)
            assert_wire_format(raw)
            message = parse(raw)
            assert message["Subject"] == rendered.subject
            assert body(message) == rendered.text


def test_building_is_fast() -> None:
    """A catastrophe guard, far below the measured rate (several thousand a second)."""
    out = outgoing()
    start = time.perf_counter()
    for _ in range(1000):
        build(out, date=WHEN)
    assert time.perf_counter() - start < 3


def _corpus_mails() -> list[Path]:
    folders = ("cpython-test_email", "flanker", "rt-bestpractical")
    return sorted(
        path
        for folder in folders
        for path in (CORPUS / folder).rglob("*")
        if path.is_file() and path.name not in ("COPYING", "LICENSE", "MANIFEST.md")
    )


@pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not present")
def test_real_subjects_names_and_bodies_build_safely(templates: Templates) -> None:
    """Real mail (RFC 2047 oddities, GB18030, broken MIME) as the customer's values."""
    from mailcare.mail import parse as parse_mail

    checked = 0
    for path in _corpus_mails():
        mail = parse_mail(path.read_bytes())
        name = mail.sender.name if mail.sender else ""
        values = {**SAMPLE_VALUES["notify_owner"], "subject": mail.subject,
                  "customer_name": name, "customer_text": mail.text}  # fmt: skip
        rendered = templates.render("notify_owner", "it", values)
        raw = build(outgoing(subject=rendered.subject, from_name=name, text=rendered.text),
                    date=WHEN)  # fmt: skip
        assert_wire_format(raw)
        message = parse(raw)
        assert message["Subject"] == clean_subject(rendered.subject)
        assert display_name(raw) == one_line(name)[:200].rstrip()
        checked += 1
    assert checked > 50


@settings(max_examples=300, deadline=None)
@given(
    subject=st.text(max_size=300),
    name=st.text(max_size=120),
    text=st.text(max_size=400) | st.text(min_size=1000, max_size=1400),
    local=st.sampled_from(["mario.bianchi", "mário", "ジョン"]),
)
def test_direct_writer_equals_the_email_package(
    subject: str, name: str, text: str, local: str
) -> None:
    """A mail without attachments is written without the email package's generator; the
    bytes must be exactly what the package writes from the same headers and body."""
    out = outgoing(subject=subject, from_name=name, text=text, to=(f"{local}@example.com",))
    headers = compose._headers(out, WHEN)
    assert compose._plain(headers, out.text) == compose._composed(headers, out)
    assert build(out, date=WHEN) == compose._plain(headers, out.text)
