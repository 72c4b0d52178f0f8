"""Is this mail a bounce, and for whom? (RELIABILITY B01-B03, B06.)

Two readings are combined. `flufl.bounce` knows the RFC 3464 DSN and a dozen MTAs'
plain-text formats (Exim's X-Failed-Recipients, qmail, Postfix, Exchange...); its sets are
bytes, so they are decoded here. Next to it the RFC 3464 structure is read directly:
every per-recipient block of a `message/delivery-status` part, `Action: failed` meaning
permanent and `Action: delayed` temporary, and the returned original's Message-ID from
the `text/rfc822-headers` or `message/rfc822` part, which is what links a bounce back to
the case it concerns.

What counts as a bounce: a `multipart/report; report-type=delivery-status` (unless every
recipient was delivered), or mail from the null sender, MAILER-DAEMON or postmaster in
which flufl finds failed recipients. Everything else is `None`, and the heuristic
detectors never run on ordinary mail: they are the slow part.

Whether the bounce is genuine (its VERP token or returned Message-ID was issued by us) is
the caller's check (`tokens.py`, B04); this module only reads what the bounce claims.
"""

from __future__ import annotations

import email
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message

from flufl.bounce import all_failures

from mailcare.mail import Mail, normalize_addr, read_header_block

DAEMON_LOCALS = frozenset({"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"})
MAX_PART_WALK = 200  # a DSN has three or four parts; anything bigger is not worth walking
_SUCCESS_ACTIONS = ("delivered", "relayed", "expanded")
_MESSAGE_ID_LINE = re.compile(
    r"^[ \t>]*message-id:[ \t]*<([^<>\s]+)>", re.IGNORECASE | re.MULTILINE
)


@dataclass(frozen=True)
class Bounce:
    permanent: frozenset[str]  # failed recipient addresses (lower-case str, not bytes)
    temporary: frozenset[str]  # delayed
    # Message-IDs of the returned original (text/rfc822-headers or message/rfc822 part).
    original_message_ids: tuple[str, ...]
    # Where the DSN was delivered (mail.recipients), so the caller can verify a VERP address.
    envelope_to: tuple[str, ...]
    standard: bool  # RFC 3464 multipart/report structure vs. heuristic (plain-text Exim/qmail)


@dataclass
class _Report:
    """What the RFC 3464 structure of one message says."""

    failed: set[str]
    delayed: set[str]
    succeeded: set[str]
    original_ids: list[str]
    has_status_part: bool


def analyze(mail: Mail) -> Bounce | None:
    """The bounce `mail` is, or None when it is not one.

    >>> from mailcare.mail import parse
    >>> analyze(parse(b"From: ann@example.org\\r\\nSubject: hi\\r\\n\\r\\nhello\\r\\n")) is None
    True
    """
    if not (mail.is_dsn or is_daemon_mail(mail)):
        return None
    # parse already met nesting the stdlib would recurse on: do not make it try again.
    hostile = any(defect.startswith("recursion:") for defect in mail.defects)
    message = None if hostile else _stdlib_message(mail.raw)
    report = _read_report(message) if message is not None else _empty_report()
    temporary, permanent = _flufl_failures(message)
    permanent |= report.failed
    temporary = (temporary | report.delayed) - permanent
    standard = mail.is_dsn and report.has_status_part
    if mail.is_dsn:
        if not (permanent or temporary) and report.succeeded:
            return None  # a success DSN ("Action: delivered") is a report, not a bounce
    elif not (permanent or temporary):
        return None  # the postmaster writing by hand, or a format nobody recognises
    ids = report.original_ids or _inline_original_ids(mail)
    return Bounce(
        permanent=frozenset(permanent),
        temporary=frozenset(temporary),
        original_message_ids=tuple(dict.fromkeys(ids)),
        envelope_to=mail.recipients,
        standard=standard,
    )


def is_daemon_mail(mail: Mail) -> bool:
    """Sent by the null sender, MAILER-DAEMON or postmaster: who MTAs send bounces as."""
    if mail.return_path == "":
        return True
    if mail.sender is not None and mail.sender.addr.partition("@")[0] in DAEMON_LOCALS:
        return True
    return any(local in value.lower() for value in mail.header("from") for local in DAEMON_LOCALS)


def _stdlib_message(raw: bytes) -> Message | None:
    """The full compat32 tree flufl.bounce works on; None when the stdlib cannot build it
    (a bounce nested a thousand levels deep is not one we need to read)."""
    try:
        return email.message_from_bytes(raw)
    except (RecursionError, Exception):
        return None


def _flufl_failures(message: Message | None) -> tuple[set[str], set[str]]:
    """(temporary, permanent) as lower-case strings; flufl's detectors raise on some
    malformed input, which then simply counts as "nothing found"."""
    if message is None:
        return set(), set()
    try:
        temporary, permanent = all_failures(message)
    except (RecursionError, Exception):
        return set(), set()
    return set(_addresses(temporary)), set(_addresses(permanent))


def _addresses(items: Iterable[bytes | str]) -> Iterator[str]:
    for item in items:
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        text = text.strip().strip("<>").strip()
        if "@" in text:
            yield normalize_addr(text) or text.lower()


def _empty_report() -> _Report:
    return _Report(set(), set(), set(), [], False)


def _read_report(message: Message) -> _Report:
    """Walk the parts (iteratively, capped) and read the RFC 3464 fields."""
    report = _empty_report()
    for part in _parts(message):
        content_type = part.get_content_type()
        if content_type == "message/delivery-status":
            report.has_status_part = True
            for block in _status_blocks(part):
                _read_recipient_block(block, report)
        elif content_type in ("text/rfc822-headers", "message/rfc822"):
            report.original_ids.extend(_original_ids(part))
    return report


def _parts(message: Message) -> Iterator[Message]:
    stack = [message]
    seen = 0
    while stack and seen < MAX_PART_WALK:
        part = stack.pop()
        seen += 1
        yield part
        payload = part.get_payload()
        if part.is_multipart() and part.get_content_type() != "message/rfc822":
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))


def _status_blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status part (compat32 parses them into a list of
    Messages; a part built as plain text is read with the header-block reader)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message)]
    if isinstance(payload, str):
        blocks = []
        for chunk in re.split(r"\r?\n[ \t]*\r?\n", payload):
            _pairs, _head, _spill = read_header_block(chunk.encode("utf-8", "surrogateescape"))
            block = Message()
            for name, value in _pairs:
                block[name] = value
            blocks.append(block)
        return blocks
    return []


def _read_recipient_block(block: Message, report: _Report) -> None:
    action = str(block.get("action", "")).strip().lower()
    if not action:
        return  # the per-message block (Reporting-MTA, Arrival-Date...)
    recipient = _recipient(block)
    if recipient is None:
        return
    if action.startswith(("failed", "error")):  # opensmtpd writes the non-standard "error"
        report.failed.add(recipient)
    elif action.startswith("delayed"):
        report.delayed.add(recipient)
    elif action.startswith(_SUCCESS_ACTIONS):
        report.succeeded.add(recipient)


def _recipient(block: Message) -> str | None:
    """Final-Recipient (mandatory), else Original-Recipient: `rfc822; addr`."""
    for field in ("final-recipient", "original-recipient", "x-actual-recipient"):
        value = str(block.get(field, "")).strip()
        if not value:
            continue
        _kind, _sep, address = value.rpartition(";")
        found = list(_addresses([address]))
        if found:
            return found[0]
    return None


def _original_ids(part: Message) -> list[str]:
    payload = part.get_payload()
    if isinstance(payload, list):  # message/rfc822: the returned mail, already parsed
        return [
            match.group(1)
            for inner in payload
            if isinstance(inner, Message)
            for match in [re.search(r"<([^<>\s]+)>", str(inner.get("message-id", "")))]
            if match
        ]
    if isinstance(payload, str):
        return _MESSAGE_ID_LINE.findall(payload)
    return []


def _inline_original_ids(mail: Mail) -> list[str]:
    """Message-IDs quoted in a plain-text bounce ("This is a copy of the message, including
    all the headers"): the bounce's own id lives in its header, not in its text."""
    return [found for found in _MESSAGE_ID_LINE.findall(mail.text) if found != mail.message_id]
