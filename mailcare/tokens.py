"""Signed identifiers: reply addresses, Message-IDs and VERP envelope senders.

Everything mailcare sends carries a value only we can make, so that what comes back can be
tied to its case without trusting anything the sender wrote:

* a reply address `assistenza+<case>.<mac>@domain` per case *and per addressee*, so a token
  forwarded to someone else does not verify for them (RELIABILITY S05/S06);
* a Message-ID `mc.<kind>.<case>.<mac16>@domain`, so our own mail coming back is recognised
  (L08) and a re-plan of the same input yields the same id (the outbox stays idempotent);
* a VERP envelope sender `assistenza+b<case>.<mac>@domain`, so a bounce names its case and a
  forged DSN changes nothing (B04).

All MACs are HMAC-SHA256 with the installation secret, written as lower-case base32 (case-
insensitive mail systems cannot corrupt it) and compared in constant time. No I/O here: the
store or daemon loads the secret and passes it in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

REPLY_MAC_LENGTH = 12
VERP_MAC_LENGTH = 12
# A Message-ID MAC is two halves: a key digest (makes ids unique per input) and a check
# over that digest (lets us verify an id without knowing the key it was made from).
_MSGID_HALF = 8

# Case numbers are bounded so a hostile address cannot make int() work hard.
_CASE = r"[0-9]{1,18}"
# Accept any plausible MAC length when reading, so a forged or truncated token is reported
# as *invalid* (a security event) instead of being silently ignored as "no token".
_MAC = r"[a-z0-9]{1,64}"
_REPLY_PLUS = re.compile(rf"({_CASE})\.({_MAC})")
_VERP_PLUS = re.compile(rf"b({_CASE})\.({_MAC})")
_KIND = re.compile(r"[a-z0-9-]{1,32}")
_OWN_ID = re.compile(rf"mc\.([a-z0-9-]{{1,32}})\.({_CASE})\.([a-z2-7]{{{2 * _MSGID_HALF}}})")


@dataclass(frozen=True)
class ReplyToken:
    """A reply token found in a recipient address.

    `valid` is True only when the MAC verifies for `addressee` (the mail's sender). `mac` is
    kept (outside equality) so identity checks can tell a token forwarded from another agent
    from a forged one; it is empty when the token was built by hand.
    """

    case: int
    addressee: str
    valid: bool
    mac: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class OwnMessage:
    """A Message-ID that we issued: the case it belongs to and what kind of mail it was."""

    case: int
    kind: str


def _mac(secret: bytes, message: str, length: int) -> str:
    digest = hmac.new(secret, message.encode("utf-8"), hashlib.sha256).digest()
    # Base32 turns each 5 bytes into 8 characters on their own, so encoding only the bytes
    # the first `length` characters come from gives the same prefix at a third of the cost.
    return base64.b32encode(digest[: -(-length // 8) * 5]).decode("ascii").lower()[:length]


def _same(expected: str, given: str) -> bool:
    """Constant-time comparison that tolerates any characters in the untrusted value."""
    return hmac.compare_digest(
        expected.encode("utf-8"), given.lower().encode("utf-8", "surrogateescape")
    )


def domain_key(domain: str) -> str:
    """Lower-case ASCII (IDNA) form of a domain, trailing dot removed, for comparisons."""
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def normalize_address(address: str) -> str:
    """`local@domain` as we compare it: brackets and spaces removed, lower-cased, IDNA domain."""
    address = address.strip().strip("<>").strip()
    local, sep, domain = address.rpartition("@")
    if not sep:
        return address.lower()
    return f"{local.lower()}@{domain_key(domain)}"


def _split(address: str) -> tuple[str, str]:
    local, _, domain = normalize_address(address).rpartition("@")
    return local, domain


def plus_part(address: str, support_address: str) -> str | None:
    """The part after `+` when `address` is a plus-address of our support address.

    >>> plus_part("assistenza+12.abc@examplenet.it", "assistenza@examplenet.it")
    '12.abc'
    """
    local, domain = _split(address)
    our_local, our_domain = _split(support_address)
    if domain != our_domain or not domain:
        return None
    base, plus, rest = local.partition("+")
    if not plus or base != our_local:
        return None
    return rest


def is_our_address(address: str, support_address: str, aliases: Iterable[str] = ()) -> bool:
    """True for the support address itself, any of its plus-addresses, or a configured alias."""
    normal = normalize_address(address)
    if normal == normalize_address(support_address):
        return True
    if plus_part(normal, support_address) is not None:
        return True
    return any(normal == normalize_address(alias) for alias in aliases)


def _with_plus(support_address: str, plus: str) -> str:
    local, _, domain = support_address.strip().lower().rpartition("@")
    return f"{local}+{plus}@{domain}"


def reply_address(support_address: str, secret: bytes, case: int, addressee: str) -> str:
    """The Reply-To for mail about `case` sent to `addressee`.

    Each addressee gets a different token, so a reply proves which notification it answers.

    >>> reply_address("assistenza@examplenet.it", b"k", 7, "c@x.it")[:13]
    'assistenza+7.'
    """
    mac = _mac(secret, f"reply:{case}:{normalize_address(addressee)}", REPLY_MAC_LENGTH)
    return _with_plus(support_address, f"{case}.{mac}")


def read_reply_token(address: str, support_address: str) -> tuple[int, str] | None:
    """`(case, mac)` from a reply address at our domain, not verified; None when not one."""
    plus = plus_part(address, support_address)
    match = _REPLY_PLUS.fullmatch(plus) if plus is not None else None
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


def verify_reply_token(secret: bytes, case: int, mac: str, addressee: str) -> bool:
    """Whether `mac` is the reply token we issued to `addressee` for `case` (constant time)."""
    expected = _mac(secret, f"reply:{case}:{normalize_address(addressee)}", REPLY_MAC_LENGTH)
    return _same(expected, mac)


def find_reply_token(
    recipients: Iterable[str], support_address: str, secret: bytes, sender: str
) -> ReplyToken | None:
    """The reply token among the recipients, checked against the mail's sender.

    A token that verifies for this sender is preferred (a reply-all may carry the customer's
    and the agent's token side by side); otherwise the first token-shaped address is returned
    with `valid=False`, so the caller can log a forged or forwarded token (S04-S06).
    """
    first: ReplyToken | None = None
    for address in recipients:
        parsed = read_reply_token(address, support_address)
        if parsed is None:
            continue
        case, mac = parsed
        if verify_reply_token(secret, case, mac, sender):
            return ReplyToken(case=case, addressee=sender, valid=True, mac=mac)
        if first is None:
            first = ReplyToken(case=case, addressee=sender, valid=False, mac=mac)
    return first


def message_id(secret: bytes, domain: str, case: int, kind: str, key: str) -> str:
    """A stable Message-ID (no brackets) for mail we send about `case`.

    `key` identifies the input that caused the mail (e.g. source Message-ID + recipient), so
    planning the same input twice yields the same id and the outbox row deduplicates. The
    16-character MAC is a digest of the key followed by a check over (kind, case, digest):
    the key cannot be recovered from a returned id, yet the id still verifies.

    >>> message_id(b"k", "examplenet.it", 3, "ack", "m@x")[:9]
    'mc.ack.3.'
    """
    if not _KIND.fullmatch(kind):
        raise ValueError(f"message kind must be 1-32 of a-z, 0-9, '-': {kind!r}")
    digest = _mac(secret, f"msgid-key:{kind}:{case}:{key}", _MSGID_HALF)
    check = _mac(secret, f"msgid:{kind}:{case}:{digest}", _MSGID_HALF)
    return f"mc.{kind}.{case}.{digest}{check}@{domain_key(domain)}"


def read_own_message_id(secret: bytes, domain: str, message_id: str) -> OwnMessage | None:
    """The case and kind of a Message-ID we issued, when its MAC verifies; else None."""
    local, _, id_domain = message_id.strip().strip("<>").lower().rpartition("@")
    if domain_key(id_domain) != domain_key(domain):
        return None
    match = _OWN_ID.fullmatch(local)
    if match is None:
        return None
    kind, case_text, mac = match.groups()
    digest, check = mac[:_MSGID_HALF], mac[_MSGID_HALF:]
    case = int(case_text)
    if not _same(_mac(secret, f"msgid:{kind}:{case}:{digest}", _MSGID_HALF), check):
        return None
    return OwnMessage(case=case, kind=kind)


def verp_sender(support_address: str, secret: bytes, case: int, recipient: str) -> str:
    """The envelope sender for mail about `case` to `recipient`.

    Never the plain support address: a bounce then names its case and recipient, and a bounce
    that cannot name them (a forgery) verifies for nothing.
    """
    mac = _mac(secret, f"bounce:{case}:{normalize_address(recipient)}", VERP_MAC_LENGTH)
    return _with_plus(support_address, f"b{case}.{mac}")


def read_verp(address: str, support_address: str) -> tuple[int, str] | None:
    """`(case, mac)` from a VERP address at our domain, not verified; None when not one."""
    plus = plus_part(address, support_address)
    match = _VERP_PLUS.fullmatch(plus) if plus is not None else None
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


def verify_verp(
    address: str, support_address: str, secret: bytes, failed_recipients: Iterable[str]
) -> int | None:
    """The case of a bounce whose VERP address verifies for one of its failed recipients.

    A DSN naming a recipient we never wrote to about that case verifies for nothing (B04).
    """
    parsed = read_verp(address, support_address)
    if parsed is None:
        return None
    case, mac = parsed
    for recipient in failed_recipients:
        expected = _mac(secret, f"bounce:{case}:{normalize_address(recipient)}", VERP_MAC_LENGTH)
        if _same(expected, mac):
            return case
    return None
