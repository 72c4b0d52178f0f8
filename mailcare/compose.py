"""Outgoing mail: a template rendered to text, then the text built into RFC 5322 bytes.

Two rules shape this module.

* User data is only ever a *value*. Templates come from the admin's `templates/` folder and
  are compiled once in a Jinja2 sandbox; a customer's subject or name is passed in and
  printed, never parsed as template source, so `{{ 7*7 }}` in a subject stays literal
  (RELIABILITY M03). Plain-text templates are not HTML-escaped: `O'Brien <b>` must reach
  the reader as written (M04).
* Every header line is made here. Values are cleaned of CR, LF, NUL and other controls
  (M01/M02), and non-ASCII text is written as RFC 2047 encoded words by this module. The
  `email` package of Python 3.11 re-parses header values it is handed, and while doing so it
  decodes encoded-word syntax found *inside* them: a customer subject or name holding the
  literal text `=?utf-8?q?x=0D=0ABcc:_y?=` comes out as a second header line (the
  CVE-2024-6923 family; Python 3.11.7 is affected). The package still does what it is good
  at: the MIME structure, body transfer encodings, attachments and CRLF output, through
  `EmailMessage` with the SMTP policy. Header objects made here reach it through the header
  protocol documented in `email.policy` (an object with a matching `name` is stored as is
  and folded by calling its `fold`), which also keeps building fast.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import errors as email_errors
from email import quoprimime
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8, EmailPolicy
from email.utils import format_datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

# RFC 5322 §2.1.1: lines SHOULD stay within 78 characters and MUST within 998.
MAX_LINE = 78
MAX_SUBJECT_CHARS = 998
MAX_NAME_CHARS = 200
MAX_FILENAME_CHARS = 150
MAX_MESSAGE_ID_CHARS = 250
# References keep the thread root and the most recent ten (what mail clients thread on).
REFERENCES_TAIL = 10
# Payload of one q-encoded word, so that `Subject: =?utf-8?q?...?=` stays within 78.
_EW_PAYLOAD = 56
_EW_CHARSET = "utf-8"
# What the q encoding writes as one character (RFC 2047 §5(3), as email.quoprimime does):
# letters, digits, "!*+-/" as themselves and the space as "_"; anything else is =XX per byte.
_Q_LITERAL = frozenset(string.ascii_letters + string.digits + "!*+-/ ")

_KIND = re.compile(r"[a-z][a-z0-9_]{0,63}")
_LANG = re.compile(r"[a-z]{2,3}")
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_DOT_ATOM_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*")
_PLAIN_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\- ]+")
_MIME_TYPE = re.compile(r"([a-z0-9][a-z0-9!#$&^_.+\-]{0,63})/([a-z0-9][a-z0-9!#$&^_.+\-]{0,63})")
# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators become
# spaces in header values; str.split() then collapses every run of whitespace.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# In bodies keep tab and newline; CR is handled by line splitting.
_BODY_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# Set by the header code itself; an `extra_headers` entry may not replace them.
_RESERVED = frozenset(
    {
        "from", "sender", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id",
        "in-reply-to", "references", "mime-version", "content-type",
        "content-transfer-encoding", "content-disposition", "auto-submitted",
        "x-auto-response-suppress", "precedence", "x-mailcare-loop", "return-path",
        "received", "resent-from", "resent-to", "resent-cc", "resent-bcc",
    }
)  # fmt: skip


# Errors a template can raise while rendering: undefined values and sandbox refusals are
# jinja2.TemplateError; a filter fed the wrong type raises the builtin ones.
_RENDER_ERRORS = (jinja2.TemplateError, TypeError, ValueError, LookupError, ArithmeticError)


class TemplateError(Exception):
    """A template is missing, malformed, or needs a value it was not given.

    The message starts with `kind.lang:` so an admin can find the file."""


@dataclass(frozen=True)
class Rendered:
    """A rendered template: a one-line subject and a plain-text body ending in a newline."""

    subject: str
    text: str
    lang: str = ""  # the language actually used (after falling back to the default)


@dataclass(frozen=True)
class _Compiled:
    subject: jinja2.Template
    body: jinja2.Template


# -- templates -----------------------------------------------------------------------------


class Templates:
    """The `templates/<kind>.<lang>.txt` files, compiled on first use and kept.

    A file is `Subject: ...` on line 1, an empty line 2, then the body; both parts are
    Jinja2 templates. Build a new instance to pick up edited files (SIGHUP does that)."""

    def __init__(self, folder: Path, *, languages: Sequence[str], default_language: str) -> None:
        self.folder = Path(folder)
        self.default_language = default_language
        self.languages = tuple(dict.fromkeys([*languages, default_language]))
        # No autoescape (plain text, M04); StrictUndefined so a missing value is an error,
        # not an empty hole in a customer's mail; trim/lstrip so `{% if %}` lines vanish.
        self._env = SandboxedEnvironment(
            autoescape=False,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._cache: dict[tuple[str, str], _Compiled | None] = {}

    def path(self, kind: str, lang: str) -> Path:
        return self.folder / f"{kind}.{lang}.txt"

    def kinds(self) -> list[str]:
        """Every kind that has at least one template file, sorted."""
        found = set()
        for path in self.folder.glob("*.*.txt"):
            kind, _, lang = path.name[: -len(".txt")].partition(".")
            if _KIND.fullmatch(kind) and _LANG.fullmatch(lang):
                found.add(kind)
        return sorted(found)

    def render(self, kind: str, lang: str, values: Mapping[str, Any]) -> Rendered:
        """Render `kind` in `lang`, or in the default language when that file is missing.

        Raises TemplateError when no file exists or the template fails (a missing value
        included); the caller must not send anything then."""
        used, compiled = self._resolve(kind, lang)
        try:
            subject, text = _evaluate(compiled, {"lang": used, **values})
        except _RENDER_ERRORS as exc:
            raise TemplateError(f"{kind}.{used}: {exc}") from exc
        return Rendered(subject=subject, text=text, lang=used)

    def check(self) -> list[str]:
        """Render every kind in every language with SAMPLE_VALUES (and SAMPLE_VARIANTS).

        Returns one line per problem, e.g. "ack.en: 'owner_name' is undefined"; an empty
        list means every mail the daemon can send will render."""
        problems: list[str] = []
        for kind in sorted(set(self.kinds()) | set(SAMPLE_VALUES)):
            for lang in self.languages:
                problems.extend(self._check_one(kind, lang))
        return problems

    def _check_one(self, kind: str, lang: str) -> list[str]:
        name = f"{kind}.{lang}"
        try:
            compiled = self._compiled(kind, lang)
        except TemplateError as exc:
            return [str(exc)]
        if compiled is None:
            if lang == self.default_language:
                return [f"{name}: missing {self.path(kind, lang)} (no fallback)"]
            return [f"{name}: missing, mail falls back to {kind}.{self.default_language}"]
        base = SAMPLE_VALUES.get(kind, _COMMON_SAMPLE)
        problems = []
        for overrides in ({}, *SAMPLE_VARIANTS.get(kind, ())):
            label = name + (f" ({_describe(overrides)})" if overrides else "")
            try:
                subject, text = _evaluate(compiled, {"lang": lang, **base, **overrides})
            except _RENDER_ERRORS as exc:
                problems.append(f"{label}: {exc}")
                continue
            if not subject:
                problems.append(f"{label}: the subject is empty")
            if not text.strip():
                problems.append(f"{label}: the body is empty")
        return problems

    def _resolve(self, kind: str, lang: str) -> tuple[str, _Compiled]:
        if not _KIND.fullmatch(kind):
            raise TemplateError(f"{kind!r}: not a template kind")
        wanted = _language(lang)
        candidates = [wanted] if wanted in self.languages else []
        for candidate in [*candidates, self.default_language]:
            compiled = self._compiled(kind, candidate)
            if compiled is not None:
                return candidate, compiled
        raise TemplateError(f"{kind}.{self.default_language}: no template file in {self.folder}")

    def _compiled(self, kind: str, lang: str) -> _Compiled | None:
        key = (kind, lang)
        if key not in self._cache:
            self._cache[key] = self._load(kind, lang)
        return self._cache[key]

    def _load(self, kind: str, lang: str) -> _Compiled | None:
        name, path = f"{kind}.{lang}", self.path(kind, lang)
        try:
            source = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"{name}: cannot read {path}: {exc}") from exc
        subject, body = _split_source(name, source)
        try:
            return _Compiled(self._env.from_string(subject), self._env.from_string(body))
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{name}: line {exc.lineno}: {exc.message}") from exc


def _language(lang: str) -> str:
    """The primary language subtag: "it-IT", "IT" and "it_it" all mean "it"."""
    return re.split(r"[-_]", lang.strip().lower(), maxsplit=1)[0]


def _split_source(name: str, source: str) -> tuple[str, str]:
    """Line 1 is the subject template, line 2 is empty, the rest is the body template.

    The body keeps two leading newlines so Jinja's line numbers match the file's."""
    source = source.lstrip("\ufeff").replace("\r\n", "\n")
    first, _, rest = source.partition("\n")
    if not first.startswith("Subject:"):
        raise TemplateError(f"{name}: line 1 must be 'Subject: ...'")
    blank, _, body = rest.partition("\n")
    if blank.strip():
        raise TemplateError(f"{name}: line 2 must be empty (it separates subject and body)")
    return first[len("Subject:") :].strip(), "\n\n" + body


def _evaluate(compiled: _Compiled, values: Mapping[str, Any]) -> tuple[str, str]:
    subject = clean_subject(compiled.subject.render(values))
    return subject, _clean_text(compiled.body.render(values))


def _describe(overrides: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in overrides.items())


def one_line(value: str) -> str:
    """A header-safe single line: controls and line breaks become spaces, runs collapse."""
    if value.isprintable() and "  " not in value and value.strip() == value:
        return value  # the common case, checked at C speed
    return " ".join(_CONTROLS.sub(" ", value).split())


def clean_subject(value: str) -> str:
    """A rendered subject as it goes on the wire: one line, at most 998 characters."""
    return one_line(value)[:MAX_SUBJECT_CHARS].rstrip()


def _clean_text(text: str) -> str:
    """LF line ends, no stray controls, no leading blank lines, exactly one final newline."""
    text = _BODY_CONTROLS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text.lstrip("\n").rstrip() + "\n"


def sender_name(person: str, display_name: str) -> str:
    """The From name of mail written by (or for) a person: "Giulia Rossi (Assistenza X)"."""
    return f"{person} ({display_name})" if person else display_name


# -- sample values (for `mailcare check` and the tests) ---------------------------------------

_COMMON_SAMPLE: Mapping[str, Any] = MappingProxyType(
    {
        "company": "ExampleNet",
        "display_name": "Assistenza ExampleNet",
        "support_address": "assistenza@examplenet.it",
        "case_number": 1042,
        "case_tag": "[EX #1042]",
        "subject": "La fibra non funziona da ieri sera",
        "customer_name": "Mario Bianchi",
        "customer_address": "mario.bianchi@example.com",
        "owner_name": "Giulia Rossi",
        "owner_address": "giulia.rossi@examplenet.it",
        "lang": "it",
    }
)

_CUSTOMER_TEXT = (
    "Buongiorno,\nda ieri sera la fibra non va: il modem ha la luce rossa fissa.\n"
    "Ho già provato a spegnerlo e riaccenderlo.\n\nMario Bianchi"
)
_COMMANDS_HELP = (
    "#take                    prendi in carico la pratica\n"
    "#assign <nome>           assegna la pratica a un collega\n"
    "#scope in|out <categoria>  decidi se la richiesta è nostra\n"
    "#close                   chiudi la pratica"
)


def _sample(**values: Any) -> Mapping[str, Any]:
    return MappingProxyType({**_COMMON_SAMPLE, **values})


# Per kind, realistic values a caller passes. Prose values (reason, where, tell, promise,
# due, waiting_since, period) arrive already written in the mail's language, without a
# final full stop; the templates add the punctuation.
SAMPLE_VALUES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "ack": _sample(
            promise="entro 4 ore lavorative (entro martedì 24 novembre alle 13:00)",
            unsure=False,
        ),
        "redirect": _sample(
            subject="Il mio smartphone non si accende più",
            understood="smartphone che non si accende",
            reason="ExampleNet fornisce linee Internet e telefoniche, ma non vende né ripara "
            "smartphone",
            where="il negozio in cui ha acquistato il telefono o l'assistenza del produttore",
            tell="modello del telefono, data di acquisto e cosa succede quando prova ad accenderlo",
            category="smartphone",
        ),
        "route_customer": _sample(
            subject="Fattura di ottobre addebitata due volte", team="Amministrazione"
        ),
        "route_forward": _sample(
            subject="Fattura di ottobre addebitata due volte",
            team="Amministrazione",
            customer_text="Buongiorno,\nla fattura di ottobre mi è stata addebitata due volte "
            "sul conto.\nPotete rimborsarmi?\n\nMario Bianchi",
        ),
        "notify_owner": _sample(
            scope_kind="in",
            scope_category="connettivita",
            scope_confidence=0.82,
            scope_reason="parole chiave: fibra, modem",
            unsure=False,
            customer_text=_CUSTOMER_TEXT,
            commands_help=_COMMANDS_HELP,
        ),
        "forward_owner": _sample(
            customer_text="Aggiornamento: ora la luce del modem lampeggia arancione.",
            new_participant="",
            reopened=False,
        ),
        "relay": _sample(
            body="Buongiorno Mario,\nho controllato la linea: c'era un guasto in centrale, "
            "ora risolto.\nMi conferma che il modem ha di nuovo la luce verde?\n\n"
            "Cordiali saluti",
            agent_name="Giulia Rossi",
        ),
        "not_owner": _sample(held_text="Ciao Mario, ti richiamo io oggi pomeriggio."),
        "owner_alert": _sample(
            event="other_agent_reply",
            agent_name="Luca Neri",
            held_text="Buongiorno, abbiamo inviato un tecnico per domani mattina.",
            claimed="",
            reason="",
            new_participant="",
            bounced_address="",
            bounce_status="",
            previous_owner="",
        ),
        "command_reply": _sample(
            results=["pratica assegnata a Luca Neri"],
            errors=["#scope fuori: usa in, out o route"],
            unknown=["#chiudi"],
            commands_help=_COMMANDS_HELP,
        ),
        "take_conflict": _sample(),
        "reminder": _sample(waiting_since="lunedì 23 novembre alle 9:12", due="oggi alle 13:12"),
        "escalation": _sample(
            previous_owner="Giulia Rossi", owner_name="Paolo Conti", overdue_hours=2.5
        ),
        "report": _sample(
            period="16–22 novembre 2026",
            summary_lines=[
                "38 pratiche nuove, 35 chiuse",
                "prima risposta in media dopo 1,8 ore lavorative",
                "3 pratiche oltre la scadenza",
                "6 richieste indirizzate altrove (smartphone, energia)",
            ],
        ),
    }
)

# Further combinations `check` renders, so every branch of every template is exercised.
SAMPLE_VARIANTS: Mapping[str, tuple[Mapping[str, Any], ...]] = MappingProxyType(
    {
        "ack": ({"unsure": True, "customer_name": ""},),
        "redirect": ({"understood": "", "tell": "", "customer_name": ""},),
        "route_customer": ({"customer_name": ""},),
        "route_forward": ({"customer_name": ""},),
        "notify_owner": (
            {"unsure": True, "scope_kind": "unsure", "scope_category": "",
             "scope_confidence": 0.41, "customer_name": ""},
        ),
        "forward_owner": ({"reopened": True, "new_participant": "luca.verdi@example.com"},),
        "not_owner": ({"held_text": ""},),
        "owner_alert": (
            {"event": "spoof_held", "agent_name": "", "held_text": "",
             "claimed": "giulia.rossi@examplenet.it", "reason": "DKIM non valido"},
            {"event": "new_participant", "agent_name": "", "held_text": "",
             "new_participant": "luca.verdi@example.com"},
            {"event": "bounce", "agent_name": "", "held_text": "",
             "bounced_address": "mario.bianchi@example.com", "bounce_status": "permanent"},
            {"event": "auto_reply", "agent_name": "", "held_text": "Sono fuori ufficio."},
            {"event": "transfer", "agent_name": "Luca Neri", "held_text": "",
             "previous_owner": "Luca Neri"},
            {"event": "unexpected", "agent_name": "", "held_text": ""},
        ),
        "command_reply": ({"results": [], "errors": [], "unknown": ["#boh"]},),
        "escalation": ({"owner_name": "Giulia Rossi", "overdue_hours": 1},),
    }
)  # fmt: skip


# -- building the message ----------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """One mail to send, as plain values. `build` turns it into bytes.

    Addresses are bare `local@domain`; `to` (and `cc`) are also the envelope recipients."""

    to: tuple[str, ...]
    from_name: str
    from_addr: str
    subject: str
    text: str
    message_id: str  # without brackets
    reply_to: str = ""
    cc: tuple[str, ...] = ()
    in_reply_to: str = ""
    references: tuple[str, ...] = ()
    # RFC 3834 auto-response: Auto-Submitted, X-Auto-Response-Suppress, Precedence (L15).
    automatic: bool = True
    loop_domain: str = ""  # X-Mailcare-Loop: <domain> marks mail we sent (L08)
    attachments: tuple[tuple[str, str, bytes], ...] = ()  # (filename, content-type, data)
    extra_headers: tuple[tuple[str, str], ...] = ()  # internal, e.g. ("X-Mailcare-Case", "1042")


class _Header(str):
    """A header line made by this module, handed to the email package as a header object.

    EmailPolicy stores an object whose `name` matches as is and folds it by calling
    `fold(policy=...)`; the package never re-parses the text (see the module docstring).
    The str value is the unfolded field body, which is what `msg[name]` reads back."""

    name: str
    _line: str

    def __new__(cls, name: str, tokens: Sequence[str]) -> _Header:
        value = " ".join(tokens)
        header = super().__new__(cls, value)
        header.name = name
        if len(name) + 2 + len(value) <= MAX_LINE:
            header._line = f"{name}: {value}" if value else f"{name}:"
        else:
            header._line = _fold(name, tokens)
        return header

    def fold(self, *, policy: EmailPolicy) -> str:
        return self._line.replace("\r\n", policy.linesep) + policy.linesep


def _fold(name: str, tokens: Sequence[str]) -> str:
    """`Name: tok tok ...`, breaking before a token that would pass 78 characters.

    Tokens are never split, and each break replaces exactly one space, so unfolding
    (removing CRLF) gives back the single-spaced value. Text tokens are at most 76
    characters, so their lines stay within 78; only an address or a Message-ID can be
    longer, and those are capped far below 998."""
    lines: list[str] = []
    line = f"{name}:"
    for token in tokens:
        if len(line) + 1 + len(token) > MAX_LINE:
            lines.append(line)
            line = ""
        line = f"{line} {token}"
    lines.append(line)
    return "\r\n".join(lines)


# RFC 3834 §3.1.7 plus what Exchange and the mailing-list world honour (RELIABILITY L15).
_AUTOMATIC = (
    _Header("Auto-Submitted", ["auto-replied"]),
    _Header("X-Auto-Response-Suppress", ["All"]),
    _Header("Precedence", ["bulk"]),
)
_MIME_VERSION = _Header("MIME-Version", ["1.0"])
_TEXT_PLAIN = _Header("Content-Type", ["text/plain;", 'charset="utf-8"'])
_CTE = {
    cte: _Header("Content-Transfer-Encoding", [cte]) for cte in ("7bit", "8bit", "quoted-printable")
}


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 q-encoded words of at most 75 characters, each holding whole characters.

    Spaces are encoded inside the words ("_"), so folding between words loses nothing."""
    words: list[str] = []
    start = size = 0
    for index, char in enumerate(text):
        width = 1 if char in _Q_LITERAL else 3 * len(char.encode("utf-8", "surrogatepass"))
        if size + width > _EW_PAYLOAD:
            words.append(_q_word(text[start:index]))
            start, size = index, 0
        size += width
    if start < len(text):
        words.append(_q_word(text[start:]))
    return words


def _q_word(text: str) -> str:
    return quoprimime.header_encode(text.encode("utf-8", "surrogatepass"), _EW_CHARSET)


def _needs_encoding(text: str) -> bool:
    """True when text cannot go out as plain folded ASCII words.

    `=?` must be encoded even in ASCII: a reader would otherwise decode it as an encoded
    word, which is how a literal `=?...=0D=0A...?=` turns into a line break downstream."""
    return (
        not text.isascii()
        or "=?" in text
        or (len(text) > MAX_LINE - 2 and max(map(len, text.split(" "))) > MAX_LINE - 2)
    )


def _text_tokens(value: str) -> list[str]:
    """Tokens of an unstructured header value (Subject, X-...)."""
    value = one_line(value)
    if not value:
        return []
    return _encoded_words(value) if _needs_encoding(value) else value.split(" ")


def _phrase_tokens(name: str) -> list[str]:
    """A display name: atoms, one quoted string, or encoded words (RFC 5322 §3.2.5)."""
    name = one_line(name)[:MAX_NAME_CHARS].rstrip()
    if not name:
        return []
    if _needs_encoding(name):
        return _encoded_words(name)
    if _PLAIN_PHRASE.fullmatch(name):
        return name.split(" ")
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return [quoted] if len(quoted) <= MAX_LINE - 2 else _encoded_words(name)


def address(value: str) -> str:
    """A validated bare address `local@domain`; ValueError when it is not exactly one.

    The domain is turned to its ASCII (IDNA) form; a non-ASCII local part is kept
    (it needs SMTPUTF8, which `build` switches to)."""
    candidate = one_line(value)
    local, at, domain = candidate.rpartition("@")
    if at and domain and not domain.isascii():
        try:
            candidate = f"{local}@{domain.encode('idna').decode('ascii')}"
        except UnicodeError as exc:
            raise ValueError(f"not a valid mail domain: {domain!r}") from exc
    if not candidate.isprintable():  # format characters, surrogates, unassigned code points
        raise ValueError(f"not a usable mail address: {value!r}")
    if _DOT_ATOM_ADDRESS.fullmatch(candidate):
        return candidate
    return _quoted_address(value, candidate)


def _quoted_address(value: str, candidate: str) -> str:
    """Rare forms (a quoted local part) are checked by the email package's own parser."""
    try:
        parsed = Address(addr_spec=candidate)
    except (ValueError, IndexError, email_errors.HeaderParseError) as exc:
        raise ValueError(f"not a single mail address: {value!r}") from exc
    if not parsed.domain or not parsed.username:
        raise ValueError(f"not a single mail address: {value!r}")
    return str(parsed.addr_spec)


def _mailbox_tokens(name: str, addr: str) -> list[str]:
    phrase = _phrase_tokens(name)
    return [*phrase, f"<{addr}>"] if phrase else [addr]


def _address_list_tokens(addresses: Iterable[str]) -> list[str]:
    tokens = [f"{addr}," for addr in addresses]
    tokens[-1] = tokens[-1].rstrip(",")
    return tokens


def _message_id(value: str) -> str | None:
    """`<id>` for a Message-ID given with or without brackets; None when unusable."""
    value = one_line(value).strip("<>")
    if not value or not value.isascii() or len(value) > MAX_MESSAGE_ID_CHARS:
        return None
    if any(char in value for char in " <>"):
        return None
    return f"<{value}>"


def _references(out: Outgoing) -> list[str]:
    """Unique, bracketed, capped to the first and the last ten, ending with In-Reply-To."""
    parent = _message_id(out.in_reply_to) if out.in_reply_to else None
    ids = [i for i in (_message_id(r) for r in out.references) if i and i != parent]
    ids = list(dict.fromkeys([*ids, parent] if parent else ids))
    if len(ids) > REFERENCES_TAIL + 1:
        ids = [ids[0], *ids[-REFERENCES_TAIL:]]
    return ids


def _recipients(out: Outgoing) -> tuple[list[str], list[str]]:
    to = [address(a) for a in out.to]
    cc = [address(a) for a in out.cc]
    if not to:
        raise ValueError("a mail needs at least one To address")
    if out.automatic and (len(to) != 1 or cc):
        # RFC 3834 §3.1.3: an automatic response goes to one address only.
        raise ValueError("an automatic mail goes to exactly one recipient")
    return to, cc


def _extra_header(name: str, value: str) -> _Header:
    if not _HEADER_NAME.fullmatch(name) or name.lower() in _RESERVED:
        raise ValueError(f"extra header {name!r} is not allowed")
    return _Header(name, _text_tokens(value))


def _headers(out: Outgoing, date: datetime) -> list[_Header]:
    """Every top-level header except the MIME ones, in the order they go out."""
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("the Date of a mail must be timezone-aware")
    message_id = _message_id(out.message_id)
    if message_id is None or "@" not in message_id:
        raise ValueError(f"not a usable Message-ID: {out.message_id!r}")
    to, cc = _recipients(out)
    headers = [
        _Header("From", _mailbox_tokens(out.from_name, address(out.from_addr))),
        _Header("To", _address_list_tokens(to)),
    ]
    if cc:
        headers.append(_Header("Cc", _address_list_tokens(cc)))
    if out.reply_to:
        headers.append(_Header("Reply-To", [address(out.reply_to)]))
    headers += [
        _Header("Subject", _text_tokens(clean_subject(out.subject))),
        _Header("Date", [format_datetime(date)]),
        _Header("Message-ID", [message_id]),
    ]
    headers += _thread_headers(out)
    headers += _marker_headers(out)
    headers += [_extra_header(name, value) for name, value in out.extra_headers]
    headers.append(_MIME_VERSION)
    return headers


def _thread_headers(out: Outgoing) -> list[_Header]:
    parent = _message_id(out.in_reply_to) if out.in_reply_to else None
    references = _references(out)
    headers = [_Header("In-Reply-To", [parent])] if parent else []
    if references:
        headers.append(_Header("References", references))
    return headers


def _marker_headers(out: Outgoing) -> list[_Header]:
    headers = list(_AUTOMATIC) if out.automatic else []
    loop = one_line(out.loop_domain)
    if loop:
        headers.append(_Header("X-Mailcare-Loop", _text_tokens(loop)))
    return headers


def _body_lines(text: str) -> list[bytes]:
    text = _BODY_CONTROLS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text.rstrip("\n").encode("utf-8", "surrogatepass").split(b"\n")


def _text_body(text: str) -> tuple[str, bytes]:
    """text/plain in UTF-8, LF line ends: 7bit or 8bit when every line fits 998 octets,
    else quoted-printable. Returns the transfer encoding and the encoded body."""
    lines = _body_lines(text)
    data = b"\n".join(lines) + b"\n"
    if max(map(len, lines)) <= 998:
        return ("7bit" if data.isascii() else "8bit"), data
    encoded = quoprimime.body_encode(data.decode("latin-1"), maxlinelen=76)
    return "quoted-printable", encoded.encode("ascii")


def _set_text(msg: EmailMessage, text: str) -> None:
    """The text part of a mail with attachments. Headers and payload are set directly
    rather than through `set_content`, which re-parses its own headers several times."""
    cte, data = _text_body(text)
    msg["Content-Type"] = _TEXT_PLAIN
    msg["Content-Transfer-Encoding"] = _CTE[cte]
    msg.set_payload(data.decode("ascii", "surrogateescape"))


def _plain(headers: Sequence[_Header], text: str) -> bytes:
    """A mail without attachments, written out directly: the headers are already folded
    and the body encoded, so the email package's generator (most of a build's cost) has
    nothing left to decide. `build` gives the same bytes either way (tests/test_compose)."""
    cte, data = _text_body(text)
    head = "".join(f"{h._line}\r\n" for h in (*headers, _TEXT_PLAIN, _CTE[cte]))
    body = data.replace(b"\n", b"\r\n")
    return head.encode("utf-8") + b"\r\n" + body


def _attach(msg: EmailMessage, filename: str, content_type: str, data: bytes) -> None:
    """Add one attachment part; the email package writes its headers (RFC 2231 filenames).

    `=?` is broken up in the filename because the package would decode it as an encoded
    word inside the parameter (the same header-injection path as the subject)."""
    name = one_line(filename)[:MAX_FILENAME_CHARS].replace("=?", "= ?") or "attachment"
    maintype, subtype = _split_type(content_type)
    cte = "base64"
    if maintype == "message":
        # RFC 2046 §5.2.1 allows only 7bit/8bit/binary in message/*, and the email package
        # writes such a part as ASCII only; anything else travels as an opaque file.
        lines = data.splitlines()
        if data.isascii() and max(map(len, lines), default=0) <= 998:
            data, cte = b"".join(line + b"\r\n" for line in lines), "7bit"
        else:
            maintype, subtype = "application", "octet-stream"
    msg.add_attachment(data, maintype, subtype, cte=cte, filename=name)


def _split_type(content_type: str) -> tuple[str, str]:
    match = _MIME_TYPE.fullmatch(one_line(content_type).partition(";")[0].strip().lower())
    if match is None or match.group(1) == "multipart":
        return "application", "octet-stream"
    return match.group(1), match.group(2)


class _HeaderClasses(HeaderRegistry):
    """The stock registry, remembering the class it makes per header name.

    The stock one builds a new class on every lookup, and `EmailMessage.__setitem__` looks
    one up for every header it stores (to enforce "at most one To"): without the cache
    that is most of the cost of a build."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


_SMTP = SMTP.clone(header_factory=_HeaderClasses())
_SMTPUTF8 = SMTPUTF8.clone(header_factory=_HeaderClasses())


def _policy(headers: Sequence[_Header]) -> EmailPolicy[EmailMessage]:
    """SMTP (CRLF, 8bit bodies); SMTPUTF8 only when an address has a non-ASCII local part."""
    return _SMTP if all(h.isascii() for h in headers) else _SMTPUTF8


def build(out: Outgoing, *, date: datetime) -> bytes:
    """The mail as RFC 5322 bytes: CRLF line ends only, ending in CRLF.

    Raises ValueError for what must never be sent: an unusable address or Message-ID, an
    automatic mail to more than one recipient, a naive `date`, a reserved extra header."""
    headers = _headers(out, date)
    if not out.attachments:
        return _plain(headers, out.text)
    return _composed(headers, out)


def _composed(headers: Sequence[_Header], out: Outgoing) -> bytes:
    """A mail with attachments, through the email package (RFC 2231 names, base64)."""
    msg = EmailMessage(policy=_policy(headers))
    for header in headers:
        msg[header.name] = header
    _set_text(msg, out.text)
    for filename, content_type, data in out.attachments:
        _attach(msg, filename, content_type, data)
    return msg.as_bytes()
