"""Raw bytes in, a frozen `Mail` value out: everything later steps decide on.

CONTRACT (implementation pending): see the docstrings of `Mail` and `parse`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox. `addr` is `local@domain` with the domain lower-cased and IDNA-decoded
    to its ASCII (punycode) form; the local part is kept as written except that the whole
    address is lower-cased when it is pure ASCII (agents and customers are matched on it)."""

    name: str
    addr: str

    @property
    def domain(self) -> str:
        return self.addr.rpartition("@")[2]


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class Mail:
    """A parsed message. Every string is free of CR, LF and NUL; nothing here raises."""

    raw: bytes = field(repr=False)
    # Without angle brackets. A mail without one gets "synthetic.<sha256 of raw>@mailcare.invalid".
    message_id: str
    synthetic_id: bool
    # The single From mailbox; None when From is missing or has no parseable address.
    sender: Address | None
    # True only when From holds exactly one mailbox and parsing it found no defect
    # (S07/S08/S09: a defective From can never be an agent).
    sender_clean: bool
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    # Every recipient address we can see: To, Cc, Delivered-To, X-Original-To, Envelope-To,
    # Resent-To/Cc. Plus-addresses keep their plus part here.
    recipients: tuple[str, ...]
    # Topmost Return-Path value without brackets; "" for the null sender <>; None if absent.
    return_path: str | None
    subject: str                 # RFC 2047-decoded, whitespace-collapsed, at most 998 chars
    subject_key: str             # reply/forward prefixes and case tags removed, casefolded
    date: datetime | None
    in_reply_to: tuple[str, ...]  # Message-IDs without brackets
    references: tuple[str, ...]
    thread_index: str | None      # Outlook Thread-Index, base64 as sent
    thread_topic: str | None
    # Lower-cased header name -> every value in order (decoded, CR/LF stripped, capped).
    headers: Mapping[str, tuple[str, ...]]
    text: str                     # the plain-text body (HTML converted to text when needed)
    new_text: str                 # `text` without quoted history and signature
    language: str                 # ISO 639-1 code, e.g. "it", "en"
    attachments: tuple[Attachment, ...]
    is_dsn: bool                  # multipart/report; report-type=delivery-status
    defects: tuple[str, ...]      # human-readable problems found while parsing
    size: int

    def header(self, name: str) -> tuple[str, ...]:
        """Every value of a header, in order (empty when absent)."""
        return self.headers.get(name.lower(), ())


def parse(raw: bytes, *, languages: tuple[str, ...] = ("it", "en"), default_language: str = "it",
          max_header_bytes: int = 64_000) -> Mail:
    """Parse a message; never raises. Problems become `defects`."""
    raise NotImplementedError
