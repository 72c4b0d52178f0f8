"""Which case a mail belongs to, decided on plain values.

Threading is one question asked in two halves so that the decision stays a pure function:

1. `lookup(mail)` lists what must be looked up (Message-IDs, the subject tag, reply-token
   and own-Message-ID case numbers, the Outlook conversation key, the subject key);
2. the store answers with a `ThreadContext` (who owns those ids, the cases they name);
3. `match(mail, ctx, ...)` decides: join an existing case, or open a new one and why.

Rules, strongest first (an earlier rule wins when rules disagree; cases are never merged):

1. a signed reply address `support+<case>.<mac>@domain` that verifies for this sender;
2. the subject tag `[EX #1042]`, only from a participant of that case or an agent; from
   anyone else it is a claim (RELIABILITY M14): a new case that remembers the number,
   unless an id-based rule below points at the very same case;
3. our own MAC-verified Message-IDs in In-Reply-To/References, then any known Message-ID:
   the mail's own (a parent arriving after its reply), In-Reply-To, References last first;
4. Outlook: the Thread-Index conversation key, then the subject of a reply from a
   participant when the normalized subject is the same;
5. otherwise a new case. Joining a case closed longer than `reopen_days` opens a new case
   linked to the old one instead; within the window the case reopens.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses

from mailparser_reply import EmailReplyParser

from .mail import (
    Address,
    Mail,
    clean_line,
    decode_words,
    normalize_addr,
    normalize_subject,
    strip_prefixes,
)
from .tokens import ReplyToken, find_reply_token, read_own_message_id, read_reply_token

DAY = 86400.0

# Outlook's Thread-Index: 22 bytes (reserved byte, FILETIME, GUID) name the conversation;
# every reply appends a 5-byte block, so the first 22 bytes are shared by the whole thread.
_CONVERSATION_BYTES = 22

# Header words that open an inline forward block, in the languages our agents write.
_FORWARD_FROM = re.compile(
    r"^[>*\s]*(?:from|da|von|de|mittente|exp[ée]diteur)\s*\**\s*:\s*\**\s*(?P<value>.+?)\s*$",
    re.IGNORECASE,
)
_MAILTO = re.compile("mailto:", re.IGNORECASE)
_ADDR_SPEC = re.compile(r"[^\s<>\[\]()\"',;:]+@[^\s<>\[\]()\"',;:]+")
_FORWARD_LANGUAGES = ("it", "en", "de", "fr", "es")
# The forward header sits near the top; scanning a bounded prefix keeps regexes cheap.
_FORWARD_SCAN = 20_000


@dataclass(frozen=True)
class CaseView:
    """What threading needs to know about one case.

    `participants` holds addresses in `Address.addr` form: the customer, the addresses Cc'd
    on customer mail, every agent who took part, and every sender who joined the case.
    """

    number: int
    state: str  # "new" | "open" | "waiting" | "redirected" | "closed"
    customer: str
    owner: str | None
    participants: frozenset[str]
    subject_key: str
    closed_at: float | None  # epoch seconds


@dataclass(frozen=True)
class Lookup:
    """What the store must resolve for one mail (see `ThreadContext` for the answers)."""

    message_ids: tuple[str, ...]  # the mail's own id, In-Reply-To, References (no brackets)
    tag_case: int | None  # number of the subject tag [EX #1042]
    token_cases: tuple[int, ...]  # cases of reply-token-shaped recipients (not verified)
    own_cases: tuple[int, ...]  # cases named by our MAC-verified Message-IDs
    thread_index: str | None  # Outlook conversation key (see `conversation_key`)
    subject_key: str
    sender: str | None


@dataclass(frozen=True)
class ThreadContext:
    """The store's answer to a `Lookup`. The store must keep these semantics exactly:

    * Id ownership. Whenever a mail (in or out) is recorded on a case, that case owns the
      mail's Message-ID and every id it mentions in In-Reply-To and References. Ownership is
      first come, first kept (`INSERT OR IGNORE`): an id never moves to another case and two
      cases never share an id. Mentioned ids matter: a reply usually names the thread's root,
      so replies that arrive before their parents still meet in one case, and a parent
      arriving late finds its own Message-ID already owned by its replies' case.
    * `known_ids`: for each id in `lookup.message_ids` that some case owns, id -> that case.
    * `cases`: a `CaseView` for every case number named anywhere: the values of `known_ids`,
      `lookup.tag_case`, `lookup.token_cases`, `lookup.own_cases`, `thread_index_case` and
      `subject_cases`. Numbers of cases that do not exist are left out (rules then ignore them).
    * `thread_index_case`: the case owning `lookup.thread_index`; a case owns the conversation
      key of every recorded mail that carried a Thread-Index, first come, first kept.
    * `subject_cases`: cases in which `lookup.sender` is a participant and whose `subject_key`
      equals a non-empty `lookup.subject_key`, newest (highest number) first; a few suffice.
    * After a `match`, the store records the sender as a participant of the case it joined
      (or opened); `Match.related` names cases the mail also pointed at, for a link event.

    Out-of-order arrival: two replies can arrive before anything connecting them (long
    threads trim References so they no longer name the root) and open two cases. A later
    mail naming both joins one by rule order and reports the other in `Match.related`;
    cases are never merged. In delivery order this does not happen: each mail names a
    parent or an ancestor that an earlier mail already brought into the case.
    """

    known_ids: Mapping[str, int]
    cases: Mapping[int, CaseView]
    thread_index_case: int | None
    subject_cases: tuple[int, ...]


@dataclass(frozen=True)
class Match:
    """The decision: which case, by which rule, and what else the caller must do."""

    case: int | None  # existing case joined; None = open a new case
    # "token" | "own-message-id" | "tag" | "references" | "thread-index" | "subject" | "new"
    # | "new:stranger-tag" | "new:closed-case"
    matched_by: str
    new_participant: bool  # the sender is not (yet) a participant of the joined case
    reopen: bool  # joins a closed case within reopen_days: the case reopens
    linked_case: int | None  # new case: the old case it follows, or the number a stranger claimed
    token: ReplyToken | None  # the reply token found (valid or not) for the identity check
    reason: str  # one readable line: why
    # Other existing cases this mail also pointed at through a rule that lost. They are
    # never merged; the store may record the link so people can see the threads meet.
    related: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Clue:
    """One rule's vote for one case."""

    rule: str
    case: int
    why: str


@dataclass(frozen=True)
class _Inputs:
    """The per-call facts every rule reads, computed once."""

    mail: Mail
    ctx: ThreadContext
    sender: str | None
    agents: frozenset[str]
    domain: str
    secret: bytes
    token: ReplyToken | None
    reopen_days: int
    now: float


# -- small parsers ----------------------------------------------------------------------


def subject_tag(subject: str, case_tag: str) -> int | None:
    """The case number of the first `[TAG #123]` in a subject, tolerant of case and spacing.

    >>> subject_tag("R: [ex#1042] Fattura", "EX")
    1042
    >>> subject_tag("Re: [EX  # 7] x", "EX"), subject_tag("[RT #7] x", "EX")
    (7, None)
    """
    pattern = rf"\[\s*{re.escape(case_tag)}\s*#\s*([0-9]{{1,18}})\s*\]"
    found = re.search(pattern, subject, re.IGNORECASE)
    return int(found.group(1)) if found else None


def conversation_key(thread_index: str) -> str | None:
    """The Outlook conversation a Thread-Index belongs to: base64 of its first 22 bytes.

    Every reply in a conversation extends the same 22-byte header with 5-byte blocks, so
    the header alone identifies the conversation. Returns None for anything undecodable
    or too short, so a garbled header simply does not match.

    >>> conversation_key("AdnQ" * 8) == conversation_key("AdnQ" * 8 + "AAAAAAAA")
    True
    """
    text = "".join(thread_index.split())
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(data) < _CONVERSATION_BYTES:
        return None
    return base64.b64encode(data[:_CONVERSATION_BYTES]).decode("ascii")


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))


def _sender(mail: Mail) -> str | None:
    return mail.sender.addr if mail.sender is not None else None


def _domain(support_address: str) -> str:
    return support_address.rpartition("@")[2]


def _parent_ids(mail: Mail) -> Iterator[tuple[str, str]]:
    """(header, id) for In-Reply-To, then References from the nearest parent to the root."""
    for mid in mail.in_reply_to:
        yield "In-Reply-To", mid
    for mid in reversed(mail.references):
        yield "References", mid


# -- lookup -------------------------------------------------------------------------------


def lookup(mail: Mail, *, case_tag: str, support_address: str, secret: bytes) -> Lookup:
    """Everything the store must resolve before `match` can decide."""
    domain = _domain(support_address)
    tokens = (read_reply_token(r, support_address) for r in mail.recipients)
    own = (read_own_message_id(secret, domain, mid) for _, mid in _parent_ids(mail))
    return Lookup(
        message_ids=_unique((mail.message_id, *mail.in_reply_to, *mail.references)),
        tag_case=subject_tag(mail.subject, case_tag),
        token_cases=tuple(dict.fromkeys(t[0] for t in tokens if t is not None)),
        own_cases=tuple(dict.fromkeys(o.case for o in own if o is not None)),
        thread_index=conversation_key(mail.thread_index) if mail.thread_index else None,
        subject_key=_subject_key(mail),
        sender=_sender(mail),
    )


# -- the rules, each a list of votes ------------------------------------------------------


def _token_clues(inp: _Inputs) -> list[_Clue]:
    """Rule 1: only a token that verifies for this sender counts."""
    token = inp.token
    if token is None or not token.valid or token.case not in inp.ctx.cases:
        return []
    return [_Clue("token", token.case, "signed reply address")]


def _may_use_tag(inp: _Inputs, case: CaseView) -> bool:
    """A subject tag is trusted only from people who already take part, or agents (M14)."""
    return inp.sender is not None and (inp.sender in case.participants or inp.sender in inp.agents)


def _tag_clues(inp: _Inputs, tag: int | None) -> tuple[list[_Clue], int | None]:
    """Rule 2: (votes, claimed number). A stranger's tag is a claim, not a vote."""
    view = inp.ctx.cases.get(tag) if tag is not None else None
    if view is None:
        return [], None
    if _may_use_tag(inp, view):
        return [_Clue("tag", view.number, f"subject tag #{view.number}")], None
    return [], view.number


def _own_id_clues(inp: _Inputs) -> list[_Clue]:
    """Rule 3a: our own signed Message-IDs name their case for any sender."""
    clues = []
    for header, mid in _parent_ids(inp.mail):
        own = read_own_message_id(inp.secret, inp.domain, mid)
        if own is not None and own.case in inp.ctx.cases:
            clues.append(_Clue("own-message-id", own.case, f"our Message-ID in {header}"))
    return clues


def _reference_clues(inp: _Inputs) -> list[_Clue]:
    """Rule 3b: known ids; the mail's own first (keeps a message in the case owning its id)."""
    candidates = [("Message-ID", inp.mail.message_id), *_parent_ids(inp.mail)]
    clues = []
    for header, mid in candidates:
        case = inp.ctx.known_ids.get(mid)
        if case is not None and case in inp.ctx.cases:
            clues.append(_Clue("references", case, f"{header} <{mid}>"))
    return clues


def _thread_index_clues(inp: _Inputs) -> list[_Clue]:
    """Rule 4a: Outlook's conversation key, for clients that drop References."""
    case = inp.ctx.thread_index_case
    key = conversation_key(inp.mail.thread_index) if inp.mail.thread_index else None
    if key is None or case is None or case not in inp.ctx.cases:
        return []
    return [_Clue("thread-index", case, "Outlook Thread-Index conversation")]


def _reply_key(mail: Mail) -> str | None:
    """The subject key of a reply, or None when the subject shows no reply/forward prefix.

    `mail.subject` is already RFC 2047-decoded, so a prefix hidden in an encoded-word counts.
    Outlook also sends the original subject as Thread-Topic: a longer subject ending with
    the topic is a reply whose prefix we do not know by name, keyed on the topic.
    """
    subject = mail.subject.strip()
    if strip_prefixes(subject) != subject:
        return mail.subject_key
    topic = (mail.thread_topic or "").strip()
    if topic and len(subject) > len(topic) and subject.casefold().endswith(topic.casefold()):
        return normalize_subject(topic)
    return None


def _subject_key(mail: Mail) -> str:
    return _reply_key(mail) or mail.subject_key


def _subject_clues(inp: _Inputs) -> list[_Clue]:
    """Rule 4b, the last resort: a participant's reply with the same normalized subject."""
    key = _reply_key(inp.mail)
    if not key or inp.sender is None:
        return []
    for number in inp.ctx.subject_cases:
        view = inp.ctx.cases.get(number)
        if view is not None and view.subject_key == key and inp.sender in view.participants:
            return [_Clue("subject", number, "reply prefix and same subject from a participant")]
    return []


# -- deciding -----------------------------------------------------------------------------


def _choose(clues: list[_Clue], claim: int | None) -> _Clue | None:
    """The earliest vote; a stranger's tag claim only stands aside for a rule that names
    the same case (our own ids, references, Thread-Index) or for a verified token."""
    if claim is None:
        return clues[0] if clues else None
    return next((c for c in clues if c.rule == "token" or c.case == claim), None)


def _notes(inp: _Inputs, chosen: _Clue | None, clues: list[_Clue], claim: int | None) -> str:
    """What the reason line must also say: disagreeing rules, a bad token, a stranger's tag."""
    taken = chosen.case if chosen is not None else None
    others = [c for c in clues if c.case != taken]
    note = ""
    if others:
        note += "; also pointed at " + ", ".join(f"#{c.case} by {c.why}" for c in others)
        note += " (not merged)"
    if inp.token is not None and not inp.token.valid:
        note += f"; reply token for #{inp.token.case} does not verify for this sender (ignored)"
    if claim is not None and chosen is not None:
        verb = "confirms" if claim == chosen.case else "overrides"
        note += f"; this {verb} the subject tag #{claim} of a non-participant"
    return note


def _related(chosen: _Clue | None, clues: list[_Clue]) -> tuple[int, ...]:
    taken = chosen.case if chosen is not None else None
    return tuple(dict.fromkeys(c.case for c in clues if c.case != taken))


def _closed_too_long(view: CaseView, reopen_days: int, now: float) -> bool:
    if view.state != "closed" or view.closed_at is None:
        return False
    return view.closed_at + reopen_days * DAY < now


def _new(
    inp: _Inputs, matched_by: str, reason: str, linked: int | None, related: tuple[int, ...]
) -> Match:
    return Match(
        case=None,
        matched_by=matched_by,
        new_participant=False,
        reopen=False,
        linked_case=linked,
        token=inp.token,
        reason=reason,
        related=related,
    )


def _join(inp: _Inputs, chosen: _Clue, note: str, related: tuple[int, ...]) -> Match:
    """Join `chosen.case`, unless it has been closed too long: then a new, linked case."""
    view = inp.ctx.cases[chosen.case]
    if _closed_too_long(view, inp.reopen_days, inp.now):
        why = f"{chosen.why} names #{view.number}, closed more than {inp.reopen_days} days ago"
        return _new(inp, "new:closed-case", why + note, view.number, related)
    newcomer = inp.sender is None or inp.sender not in view.participants
    reopen = view.state == "closed"
    why = f"{chosen.why} -> #{view.number}"
    if newcomer:
        why += f" ({inp.sender or 'unknown sender'} joins as a new participant)"
    if reopen:
        why += " (reopens the closed case)"
    return Match(
        case=view.number,
        matched_by=chosen.rule,
        new_participant=newcomer,
        reopen=reopen,
        linked_case=None,
        token=inp.token,
        reason=why + note,
        related=related,
    )


def _decide(inp: _Inputs, claim: int | None, clues: list[_Clue]) -> Match:
    chosen = _choose(clues, claim)
    if chosen is None and claim is None:
        clues = _subject_clues(inp)  # no other rule spoke: the subject is the last resort
        chosen = clues[0] if clues else None
    note, related = _notes(inp, chosen, clues, claim), _related(chosen, clues)
    if chosen is not None:
        return _join(inp, chosen, note, related)
    if claim is not None:
        who = inp.sender or "an unknown sender"
        why = f"subject tag #{claim} from {who}, who is not a participant (M14)"
        return _new(inp, "new:stranger-tag", why + note, claim, related)
    return _new(inp, "new", "nothing links this mail to a case" + note, None, related)


def match(
    mail: Mail,
    ctx: ThreadContext,
    *,
    case_tag: str,
    support_address: str,
    secret: bytes,
    reopen_days: int,
    now: float,
    agents: frozenset[str],
) -> Match:
    """Decide which case `mail` belongs to. Pure: everything it needs is in the arguments."""
    sender = _sender(mail)
    token = find_reply_token(mail.recipients, support_address, secret, sender or "")
    inp = _Inputs(
        mail=mail,
        ctx=ctx,
        sender=sender,
        agents=agents,
        domain=_domain(support_address),
        secret=secret,
        token=token,
        reopen_days=reopen_days,
        now=now,
    )
    tag_votes, claim = _tag_clues(inp, subject_tag(mail.subject, case_tag))
    clues = [
        *_token_clues(inp),
        *tag_votes,
        *_own_id_clues(inp),
        *_reference_clues(inp),
        *_thread_index_clues(inp),
    ]
    return _decide(inp, claim, clues)


# -- forwarded customer mail --------------------------------------------------------------


def _address(name: str, addr: str) -> Address | None:
    """An `Address` in the form `mail.parse` gives, or None when `addr` is not one."""
    normal = normalize_addr(addr.strip().strip("<>"))
    if normal is None:
        return None
    return Address(name=" ".join(clean_line(decode_words(name)).split()), addr=normal)


def _attached_senders(raw: bytes) -> Iterator[Address]:
    """From addresses of message/rfc822 parts, outermost first.

    Only agent forwards come this way, so the full stdlib parser is affordable here.
    """
    try:
        message = BytesParser(policy=compat32).parsebytes(raw)
        parts = [p for p in message.walk() if p.get_content_type() == "message/rfc822"]
    except Exception:  # hostile MIME (deep nesting, broken boundaries): no sender
        return
    for part in parts:
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if not isinstance(inner, Message):
            continue
        try:
            pairs = getaddresses([str(inner.get("From", ""))])
        except Exception:  # header access on malformed mail can raise (see corpus notes)
            continue
        for name, addr in pairs:
            found = _address(name, addr)
            if found is not None:
                yield found


def _from_line(value: str) -> Address | None:
    """The mailbox in a quoted header value: `Name <a@b>`, `Name [mailto:a@b]`, `a@b`."""
    cleaned = _MAILTO.sub(" " * len("mailto:"), value)  # same length: offsets stay valid
    found = _ADDR_SPEC.search(cleaned)
    if found is None:
        return None
    return _address(cleaned[: found.start()].strip(" \t<[(\"'*"), found.group(0))


def _inline_senders(text: str) -> Iterator[Address]:
    """From/Da/Von/De lines of the quoted header blocks in a body, top block first."""
    parsed = EmailReplyParser(languages=list(_FORWARD_LANGUAGES)).read(text[:_FORWARD_SCAN])
    for reply in parsed.replies[1:]:
        yield from _from_lines((reply.headers or "").splitlines())
    # Clients mix languages in one block (Gmail in Italian: "Da:" then "Date:", "Subject:"),
    # which the reply parser does not always see as a header block: read the lines directly.
    yield from _from_lines(text[:_FORWARD_SCAN].splitlines()[1:])


def _from_lines(lines: Iterable[str]) -> Iterator[Address]:
    for line in lines:
        found = _FORWARD_FROM.match(line.lstrip("> \t"))
        address = _from_line(found.group("value")) if found else None
        if address is not None:
            yield address


def forwarded_sender(mail: Mail) -> Address | None:
    """The original sender of a customer mail that an agent forwarded in.

    An attached message (message/rfc822) is the most reliable witness; otherwise the first
    quoted header block of an inline forward ("From:", "Da:", "Von:", "De:", ...). The
    forwarder's own address is skipped: it shows up when they forward their own reply.
    """
    own = _sender(mail)
    for found in itertools.chain(_attached_senders(mail.raw), _inline_senders(mail.text)):
        if found.addr != own:
            return found
    return None
