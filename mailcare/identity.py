"""Is this mail really from that agent? Only then may it steer a case.

"From: agent@…" proves nothing: anyone can write it (RELIABILITY S01-S10). An agent's mail
counts as the agent's only when all of these hold, checked in this order so the reason
names the first thing missing:

1. the From header is clean (one mailbox, no parse defects) and its address is a
   configured agent's (domains compared after lower-casing and IDNA, so a look-alike
   Cyrillic domain never matches); Reply-To and Sender are never looked at (S07-S10);
2. when `trusted_authserv_id` is set, the TOPMOST Authentication-Results header was
   written by our own server and shows dmarc=pass, or dkim=pass for a domain aligned with
   From; anything below it may be forged by the sender (S01-S03);
3. the mail carries a reply token we issued to this agent for this case (S04-S06).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

import authres

from mailcare import tokens
from mailcare.config import AgentSection
from mailcare.mail import Mail


@dataclass(frozen=True)
class Identity:
    """The verified agent (or None), the agent the From claims, and why it failed ("" if not).

    Reasons: "from_defective", "not_agent", "no_authres", "authres_malformed",
    "authres_untrusted", "dmarc_fail", "dkim_fail", "no_token", "token_invalid",
    "token_other_agent", "token_other_case".
    """

    agent: str | None
    claimed: str | None
    reason: str


def agent_key(address: str) -> str:
    """An address as agents are matched: lower-cased, IDNA domain, nothing else forgiven.

    Unlike reply tokens, a trailing dot or stray brackets are not tidied away here: an agent's
    real client never writes them, so such a From is treated as somebody else.
    """
    local, sep, domain = address.rpartition("@")
    if not sep:
        return address.lower()
    try:
        ascii_domain = domain.lower().encode("idna").decode("ascii")
    except UnicodeError:
        ascii_domain = domain.lower()
    return f"{local.lower()}@{ascii_domain}"


def find_agent(address: str, agents: Sequence[AgentSection]) -> AgentSection | None:
    """The configured agent with exactly this address (see `agent_key`)."""
    key = agent_key(address)
    return next((a for a in agents if agent_key(a.address) == key), None)


def reply_to_agent(mail: Mail, agents: Sequence[AgentSection]) -> str | None:
    """An agent named in Reply-To of a mail that is not From that agent, else None.

    Reply-To never grants identity, but this is how a spoofer tries to divert an agent's
    answer, so the caller logs `event=reply_to_agent_mismatch` (S09).
    """
    sender = agent_key(mail.sender.addr) if mail.sender is not None else None
    for address in mail.reply_to:
        agent = find_agent(address.addr, agents)
        if agent is not None and agent_key(agent.address) != sender:
            return agent.address
    return None


def _aligned(domain: str, from_domain: str) -> bool:
    """DKIM signer and From share a domain, or the signer is a parent of the From domain.

    This is the part of DMARC relaxed alignment that needs no public-suffix list; a signer
    that is a sibling subdomain is refused, and so is a one-label parent ("com"), which errs
    on the safe side.
    """
    domain, from_domain = domain.lower().rstrip("."), from_domain.lower()
    if not domain:
        return False
    return from_domain == domain or ("." in domain and from_domain.endswith("." + domain))


def _property(result: authres.core.AuthenticationResult, kind: str, name: str) -> str | None:
    for prop in result.properties:
        if prop.type == kind and prop.name == name:
            return str(prop.value)
    return None


def _dkim_domain(result: authres.core.AuthenticationResult) -> str:
    signer = _property(result, "header", "d")
    if signer is None:
        signer = (_property(result, "header", "i") or "").rpartition("@")[2]
    return signer


def _judge_results(results: Sequence[authres.core.AuthenticationResult], from_domain: str) -> str:
    """The failure reason, or "" when the results prove the From domain."""
    dmarc = [r for r in results if r.method.lower() == "dmarc"]
    for result in dmarc:
        stated = _property(result, "header", "from")
        if str(result.result).lower() != "pass" or (stated and stated.lower() != from_domain):
            return "dmarc_fail"
    if dmarc:
        return ""
    return "" if any(_aligned_dkim_pass(r, from_domain) for r in results) else "dkim_fail"


def _aligned_dkim_pass(result: authres.core.AuthenticationResult, from_domain: str) -> bool:
    passed = result.method.lower() == "dkim" and str(result.result).lower() == "pass"
    return passed and _aligned(_dkim_domain(result), from_domain)


# Only the header block matters; a hostile mail cannot make us read more than this.
_HEADER_LIMIT = 256_000


def foreign_hop_above(raw: bytes, trusted_authserv_id: str) -> bool:
    """Whether a Received header that does not name our server sits above the first
    Authentication-Results: then that A-R travelled with the message, it was not written
    on arrival here (S03 b). Our own hops name our server, which the authserv-id names.

    Without raw bytes there is no order to check and the answer is False.
    """
    if not raw:
        return False
    parsed = BytesHeaderParser(policy=compat32).parsebytes(raw[:_HEADER_LIMIT])
    ours = trusted_authserv_id.lower()
    for name, value in parsed.items():
        if name.lower() == "authentication-results":
            return False
        if name.lower() == "received" and ours not in str(value).lower():
            return True
    return False


def check_authres(mail: Mail, trusted_authserv_id: str, from_domain: str) -> str:
    """The failure reason, or "" when the topmost A-R is ours and proves `from_domain`.

    Only the first header counts: our MTA adds its own on top, and anything below it came
    with the message (S03). An explicit dmarc verdict decides; without one an aligned DKIM
    pass is enough. A dmarc result naming another header.from is a fail.
    """
    headers = mail.header("authentication-results")
    if not headers:
        return "no_authres"
    if foreign_hop_above(mail.raw, trusted_authserv_id):
        return "authres_untrusted"
    try:
        parsed = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + headers[0])
    except Exception:  # any failure of the third-party parser must fail closed
        return "authres_malformed"
    if str(parsed.authserv_id).lower() != trusted_authserv_id.lower():
        return "authres_untrusted"
    return _judge_results(parsed.results, tokens.domain_key(from_domain))


def _check_token(
    token: tokens.ReplyToken | None,
    agent: AgentSection,
    case: int | None,
    agents: Sequence[AgentSection],
    secret: bytes | None,
) -> str:
    if token is None:
        return "no_token"
    if agent_key(token.addressee) != agent_key(agent.address):
        return "token_other_agent"
    if not token.valid:
        return _invalid_reason(token, agent, agents, secret)
    if case is not None and token.case != case:
        return "token_other_case"
    return ""


def _invalid_reason(
    token: tokens.ReplyToken,
    agent: AgentSection,
    agents: Sequence[AgentSection],
    secret: bytes | None,
) -> str:
    """Tell a colleague's forwarded token (S05: "token_other_agent") from a forgery."""
    if secret is not None and token.mac:
        for other in agents:
            if other.address != agent.address and tokens.verify_reply_token(
                secret, token.case, token.mac, other.address
            ):
                return "token_other_agent"
    return "token_invalid"


def verify_agent(
    mail: Mail,
    *,
    agents: Sequence[AgentSection],
    token: tokens.ReplyToken | None,
    case: int | None,
    trusted_authserv_id: str,
    secret: bytes | None = None,
) -> Identity:
    """Decide whether `mail` is from a configured agent; see the module docstring.

    `token` is what `tokens.find_reply_token` found for the mail's sender; `case` is the case
    the mail was threaded to (None: whatever case the token names). With `secret`, an
    invalid token is checked against the other agents so the reason can say it was
    forwarded rather than forged.
    """
    agent = find_agent(mail.sender.addr, agents) if mail.sender is not None else None
    claimed = agent.address if agent is not None else None
    if mail.sender is None or not mail.sender_clean:
        return Identity(None, claimed, "from_defective")
    if agent is None:
        return Identity(None, None, "not_agent")
    reason = ""
    if trusted_authserv_id:
        reason = check_authres(mail, trusted_authserv_id, mail.sender.domain)
    reason = reason or _check_token(token, agent, case, agents, secret)
    return Identity(None if reason else agent.address, claimed, reason)
