"""Decide what one incoming mail means: a `Plan` of plain actions, no I/O.

Everything the decision needs arrives as values: the parsed `Mail`, the threading `Match`,
the `Facts` the store knew when the mail arrived, and an `Env` of configuration, templates,
business hours and the scope model. The store applies the plan in one transaction; the
outbox sends what it queued. Because nothing here touches a socket or the database, every
branch (who gets which mail, and why not) is a unit test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from . import bounces, commands, loops, owners, tokens
from .compose import Outgoing, Templates, build
from .config import AgentSection, Settings
from .hours import BusinessHours
from .identity import verify_agent
from .mail import Mail
from .threads import Match, forwarded_sender

DAY = 86400.0


class _AnyOwner:
    """Marker for `Plan.expect_owner`: the case update does not depend on its owner."""

    def __repr__(self) -> str:
        return "ANY"


ANY_OWNER: Any = _AnyOwner()


@dataclass(frozen=True)
class Event:
    case: int | None
    kind: str
    actor: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outbound:
    """A rendered mail to queue: bytes ready for SMTP, with its stable Message-ID."""

    case: int | None
    kind: str
    message_id: str
    envelope_from: str
    to: tuple[str, ...]
    automatic: bool
    data: bytes
    text: str
    shadow: bool = False


@dataclass(frozen=True)
class Facts:
    """What the store knew when the mail arrived (looked up after threading)."""

    duplicate: bool
    next_case_number: int
    case_row: Mapping[str, Any] | None
    customer_ids: tuple[str, ...]  # Message-IDs of the customer's mails in the case, oldest first
    open_counts: Mapping[str, int]
    last_assigned: str | None
    previous_owner: str | None
    sent_to_sender: Sequence[float]
    sent_for_case: Sequence[float]
    suppressed_until: float | None
    last_take: tuple[str, float] | None = None


@dataclass(frozen=True)
class Scoped:
    """The scope decision as the plan needs it (mirrors scope.Decision)."""

    kind: str
    category: str
    confidence: float
    reason: str
    queue: str


@dataclass(frozen=True)
class Env:
    settings: Settings
    secret: bytes
    templates: Templates
    hours: BusinessHours
    now: float
    scope: Any = None  # scope.ScopeModel; Any keeps scikit-learn out of this import
    folder: str = ""
    uidvalidity: int | None = None
    uid: int | None = None
    take_window: float = 600.0

    @property
    def shadow(self) -> bool:
        return self.settings.mailcare.mode == "shadow"

    @property
    def when(self) -> datetime:
        return datetime.fromtimestamp(self.now, ZoneInfo(self.settings.hours.timezone))


@dataclass
class Plan:
    """Everything one mail changes. `store.apply` writes it in one transaction."""

    case: int | None = None
    new_case: dict[str, Any] | None = None
    case_update: dict[str, Any] = field(default_factory=dict)
    expect_owner: Any = ANY_OWNER
    messages: list[dict[str, Any]] = field(default_factory=list)
    participants: list[tuple[int, str, str]] = field(default_factory=list)
    message_ids: list[tuple[int, str]] = field(default_factory=list)
    thread_keys: list[tuple[int, str]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    outgoing: list[Outbound] = field(default_factory=list)
    suppress: list[tuple[str, float, str]] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    corrections: list[tuple[str, str, str]] = field(default_factory=list)  # subject, body, cat
    actions: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    matched_by: str = ""
    new: bool = False

    def event(self, name: str, actor: str = "mailcare", **detail: Any) -> None:
        self.events.append(Event(self.case, name, actor, detail))

    def act(self, action: str, reason: str = "") -> None:
        self.actions.append(action)
        if reason:
            self.reasons.append(reason)

    def log_lines(self) -> list[str]:
        """One line per decision, journald-friendly: `case=1042 action=ack to=… reason=…`."""
        why = self._why()
        lines = [
            f"case={o.case} action={o.kind} to={','.join(o.to)} reason={why}" for o in self.outgoing
        ]
        lines += [
            f"case={self.case} action={e.kind} reason={e.detail.get('reason', '')}"
            for e in self.events
            if e.kind.startswith(("suppressed", "held", "agent_auth", "bounce", "own_", "dup"))
        ]
        return lines

    def _why(self) -> str:
        """Why this plan sends mail: the scope decision for a new case, else how the mail
        joined its case (the journal should answer "why did it send that?" on its own)."""
        if self.new_case is not None:
            kind, category = self.new_case.get("scope_kind"), self.new_case.get("scope_category")
            scope = f"{kind}/{category}" if category else str(kind)
            return f"new case, scope {scope}: {self.new_case.get('scope_reason', '')}"
        return f"joined by {self.matched_by}" if self.matched_by else "case update"


# -- entry point ---------------------------------------------------------------------------


def decide(mail: Mail, match: Match, facts: Facts, env: Env) -> Plan:
    """The whole decision for one mail."""
    plan = Plan(case=match.case, matched_by=match.matched_by)
    if facts.duplicate:
        plan.act("none", "duplicate Message-ID: already stored")
        return plan
    cfg = env.settings.mailcare
    verdict = loops.classify(
        mail,
        support_address=cfg.support_address,
        aliases=cfg.aliases,
        secret=env.secret,
        require_addressed=env.settings.limits.ack_only_when_addressed,
    )
    if verdict.kind == "own":
        return _own_mail(plan, mail, env, verdict.reason)
    if verdict.kind == "bounce" or mail.is_dsn:
        bounce = bounces.analyze(mail)
        if bounce is not None:
            return _bounce(plan, mail, bounce, facts, env)
    sender = mail.sender.addr if mail.sender else ""
    agent = env.settings.agent(sender) if sender else None
    if agent is not None:
        return _from_agent(plan, mail, match, facts, env, agent, verdict)
    if match.case is None:
        return _new_case(plan, mail, match, facts, env, verdict)
    return _customer_followup(plan, mail, match, facts, env, verdict)


# -- shared pieces -------------------------------------------------------------------------


def _inbound(plan: Plan, mail: Mail, env: Env, role: str, reason: str = "") -> None:
    """Record the incoming mail itself (raw bytes included) on the plan's case."""
    plan.messages.append(
        {
            "message_id": mail.message_id,
            "case_number": plan.case,
            "direction": "in",
            "role": role,
            "sender": mail.sender.addr if mail.sender else "",
            "recipients": _json_list(mail.recipients),
            "subject": mail.subject,
            "text": mail.text[:200_000],
            "matched_by": plan.matched_by,
            "reason": reason,
            "folder": env.folder or None,
            "uidvalidity": env.uidvalidity,
            "uid": env.uid,
            "raw_sha256": _sha(mail),
            "raw": mail.raw,
            "created_at": env.now,
        }
    )
    if plan.case is not None:
        for mid in (mail.message_id, *mail.in_reply_to, *mail.references):
            plan.message_ids.append((plan.case, mid))
        if mail.thread_index:
            from .threads import conversation_key

            key = conversation_key(mail.thread_index)
            if key:
                plan.thread_keys.append((plan.case, key))


def _sha(mail: Mail) -> str:
    import hashlib

    return hashlib.sha256(mail.raw).hexdigest()


def _json_list(values: Sequence[str]) -> str:
    import json

    return json.dumps(list(values))


def _name_of(env: Env, address: str | None) -> str:
    agent = env.settings.agent(address) if address else None
    return agent.name if agent else ""


def _common(env: Env, case: int, row: Mapping[str, Any]) -> dict[str, Any]:
    cfg = env.settings.mailcare
    owner = row.get("owner")
    return {
        "company": cfg.company,
        "display_name": cfg.display_name,
        "support_address": cfg.support_address,
        "case_number": case,
        "case_tag": f"[{cfg.case_tag} #{case}]",
        "subject": row.get("subject") or "",
        "customer_name": row.get("customer_name") or "",
        "customer_address": row.get("customer") or "",
        "owner_name": _name_of(env, owner) or cfg.display_name,
        "owner_address": owner or "",
    }


ALERT_FIELDS = (
    "agent_name",
    "held_text",
    "claimed",
    "reason",
    "bounced_address",
    "bounce_status",
    "previous_owner",
)


def _alert(env: Env, case: int, row: Mapping[str, Any], event: str, **given: str) -> dict[str, Any]:
    """Values for the owner_alert template: one template, several events, every field set."""
    return {**_common(env, case, row), **dict.fromkeys(ALERT_FIELDS, ""), "event": event, **given}


def _tell(
    plan: Plan,
    env: Env,
    kind: str,
    case: int,
    to: str,
    row: Mapping[str, Any],
    values: Mapping[str, Any],
    source_id: str,
) -> None:
    """Mail to a colleague (owner, agent, team): in their language, replies come back to
    the case through their own signed reply address."""
    _send(
        plan,
        env,
        kind=kind,
        case=case,
        to=to,
        lang=_agent_lang(env, to, row),
        values=values,
        source_id=source_id,
        reply_to_addressee=to,
    )


def _send(
    plan: Plan,
    env: Env,
    *,
    kind: str,
    case: int,
    to: str,
    lang: str,
    values: Mapping[str, Any],
    source_id: str,
    automatic: bool = True,
    from_name: str = "",
    in_reply_to: str = "",
    references: Sequence[str] = (),
    reply_to_addressee: str | None = None,
    attachments: tuple[tuple[str, str, bytes], ...] = (),
    cc: tuple[str, ...] = (),
) -> None:
    """Render a template and queue it with a stable Message-ID and a VERP envelope."""
    cfg = env.settings.mailcare
    rendered = env.templates.render(kind, lang, values)
    message_id = tokens.message_id(
        env.secret, cfg.domain, case, kind.replace("_", "-"), f"{source_id}:{to}"
    )
    reply_to = tokens.reply_address(cfg.support_address, env.secret, case, reply_to_addressee or to)
    out = Outgoing(
        to=(to,),
        cc=cc,
        from_name=from_name or cfg.display_name,
        from_addr=cfg.support_address,
        subject=rendered.subject,
        text=rendered.text,
        message_id=message_id,
        reply_to=reply_to,
        in_reply_to=in_reply_to,
        references=tuple(references),
        automatic=automatic,
        loop_domain=cfg.domain,
        attachments=attachments,
        extra_headers=(("X-Mailcare-Case", str(case)),),
    )
    data = build(out, date=env.when)
    plan.outgoing.append(
        Outbound(
            case=case,
            kind=kind,
            message_id=message_id,
            envelope_from=tokens.verp_sender(cfg.support_address, env.secret, case, to),
            to=(to, *cc),
            automatic=automatic,
            data=data,
            text=rendered.text,
            shadow=env.shadow,
        )
    )
    plan.messages.append(
        {
            "message_id": message_id,
            "case_number": case,
            "direction": "out",
            "role": "agent" if not automatic and kind == "relay" else "mailcare",
            "kind": kind,
            "sender": cfg.support_address,
            "recipients": _json_list((to, *cc)),
            "subject": rendered.subject,
            "text": rendered.text,
            "matched_by": "",
            "reason": "",
            "raw_sha256": "",
            "raw": None,
            "created_at": env.now,
        }
    )
    plan.message_ids.append((case, message_id))
    plan.act(kind)


def _may_autoreply(
    plan: Plan, mail: Mail, facts: Facts, env: Env, verdict: loops.LoopVerdict, case: int | None
) -> bool:
    """RFC 3834 and our own limits: may an automatic mail go to this sender? Records why not."""
    lim = env.settings.limits
    reason = verdict.reason if not verdict.may_reply else ""
    if (
        not reason
        and mail.date is not None
        and mail.date.tzinfo is not None
        and (env.now - mail.date.timestamp() > lim.ack_max_age_hours * 3600)
    ):
        reason = "stale-mail"
    if not reason and facts.suppressed_until is not None:
        reason = "address-suppressed-after-bounce"
    if not reason and not loops.rate_ok(
        facts.sent_to_sender, env.now, max_count=lim.per_sender_max, window=lim.per_sender_window
    ):
        reason = "rate-limited:sender"
    if (
        not reason
        and case is not None
        and not loops.rate_ok(
            facts.sent_for_case, env.now, max_count=lim.per_case_max, window=lim.per_case_window
        )
    ):
        reason = "rate-limited:case"
    if reason:
        to = mail.sender.addr if mail.sender else ""
        plan.event("suppressed_autoreply", reason=reason, to=to)
        plan.reasons.append(f"no automatic reply: {reason}")
        return False
    return True


# -- own mail and bounces --------------------------------------------------------------------


def _own_mail(plan: Plan, mail: Mail, env: Env, reason: str) -> Plan:
    """Our own address or our own mail coming back: kept, never answered, no case (L07/L08)."""
    plan.case = None
    _inbound(plan, mail, env, "own", reason)
    plan.event("own_address_inbound", reason=reason, message_id=mail.message_id)
    plan.act("none", f"own mail: {reason}")
    return plan


def _bounce(plan: Plan, mail: Mail, bounce: bounces.Bounce, facts: Facts, env: Env) -> Plan:
    """A delivery report: tie it to the case only when our VERP token or Message-ID verifies."""
    cfg = env.settings.mailcare
    failed = bounce.permanent | bounce.temporary
    case = None
    for address in bounce.envelope_to:
        case = tokens.verify_verp(address, cfg.support_address, env.secret, failed)
        if case is not None:
            break
    if case is None:
        for mid in bounce.original_message_ids:
            own = tokens.read_own_message_id(env.secret, cfg.domain, mid)
            if own is not None:
                case = own.case
                break
    plan.case = case
    if case is None:
        _inbound(plan, mail, env, "bounce", "bounce_unverified")
        plan.event("bounce_unverified", failed=sorted(failed))
        plan.act("none", "bounce without a valid token: changes nothing")
        return plan
    plan.matched_by = "bounce"
    _inbound(plan, mail, env, "bounce")
    until = env.now + env.settings.limits.bounce_suppress_days * DAY
    for address in sorted(bounce.permanent):
        plan.suppress.append((address, until, f"bounce case={case}"))
    plan.event("bounce", permanent=sorted(bounce.permanent), temporary=sorted(bounce.temporary))
    row = facts.case_row or {}
    owner = row.get("owner")
    if owner and bounce.permanent:
        values = _alert(
            env,
            case,
            row,
            "bounce",
            bounced_address=", ".join(sorted(bounce.permanent)),
            bounce_status="permanent",
        )
        _send(
            plan,
            env,
            kind="owner_alert",
            case=case,
            to=owner,
            lang=_agent_lang(env, owner, row),
            values=values,
            source_id=mail.message_id,
        )
    plan.act("none", "bounce recorded")
    return plan


def _agent_lang(env: Env, address: str, row: Mapping[str, Any]) -> str:
    agent = env.settings.agent(address)
    if agent and agent.languages:
        return agent.languages[0]
    return env.settings.mailcare.default_language


# -- customers -------------------------------------------------------------------------------


def _language(env: Env, mail: Mail) -> str:
    langs = env.settings.mailcare.languages
    return mail.language if mail.language in langs else env.settings.mailcare.default_language


def _scope(env: Env, mail: Mail) -> Scoped:
    if env.scope is None:
        return Scoped("unsure", "", 0.0, "no scope model loaded", "")
    decision = env.scope.decide(
        subject=mail.subject, text=mail.new_text, sender=mail.sender.addr if mail.sender else ""
    )
    return Scoped(
        decision.kind, decision.category, decision.confidence, decision.reason, decision.queue
    )


def _new_case(
    plan: Plan, mail: Mail, match: Match, facts: Facts, env: Env, verdict: loops.LoopVerdict
) -> Plan:
    """Open a case, pick its owner, and answer: ack, redirect or route (when allowed)."""
    number = facts.next_case_number
    plan.case, plan.new = number, True
    customer = mail.sender.addr if mail.sender else ""
    lang = _language(env, mail)
    scoped = (
        _scope(env, mail)
        if not verdict.automatic
        else Scoped("unsure", "", 0.0, f"automatic mail ({verdict.kind})", "")
    )
    choice = owners.choose(
        env.settings.agents,
        policy=env.settings.owners.policy,
        queue=scoped.queue,
        language=lang,
        open_counts=facts.open_counts,
        last_assigned=facts.last_assigned,
        previous_owner=facts.previous_owner,
        today=env.when.date(),
    )
    state = {"out": "redirected", "route": "routed"}.get(scoped.kind, "new")
    plan.new_case = {
        "number": number,
        "subject": mail.subject,
        "subject_key": mail.subject_key,
        "customer": customer,
        "customer_name": (mail.sender.name if mail.sender else "") or customer.split("@")[0],
        "owner": choice.agent,
        "state": state,
        "language": lang,
        "queue": scoped.queue,
        "scope_kind": scoped.kind,
        "scope_category": scoped.category,
        "scope_confidence": round(scoped.confidence, 4),
        "scope_reason": scoped.reason,
        "linked_case": match.linked_case,
        "claimed_case": match.linked_case if match.matched_by == "new:stranger-tag" else None,
        "is_auto": int(verdict.automatic),
        "created_at": env.now,
        "last_customer_at": env.now,
    }
    if choice.agent:
        plan.meta["rr_last"] = choice.agent
    _inbound(plan, mail, env, "auto" if verdict.automatic else "customer")
    _participants(plan, env, number, mail, customer)
    plan.event(
        "case_opened",
        matched_by=match.matched_by,
        reason=match.reason,
        linked_case=match.linked_case,
    )
    plan.event(
        "scope",
        kind=scoped.kind,
        category=scoped.category,
        confidence=round(scoped.confidence, 4),
        reason=scoped.reason,
    )
    plan.event("assigned", owner=choice.agent, reason=choice.reason)
    _answer_new(plan, mail, facts, env, verdict, scoped, plan.new_case)
    return plan


def _participants(plan: Plan, env: Env, case: int, mail: Mail, customer: str) -> None:
    """The customer and everyone they copied take part in the case (threading trusts them)."""
    cfg = env.settings.mailcare
    if customer:
        plan.participants.append((case, customer, "customer"))
    for address in (*mail.to, *mail.cc):
        if "@" in address.addr and not tokens.is_our_address(
            address.addr, cfg.support_address, cfg.aliases
        ):
            plan.participants.append((case, address.addr, "cc"))


def _answer_new(
    plan: Plan,
    mail: Mail,
    facts: Facts,
    env: Env,
    verdict: loops.LoopVerdict,
    scoped: Scoped,
    row: Mapping[str, Any],
) -> None:
    case, lang, customer = int(row["number"]), str(row["language"]), str(row["customer"])
    values = _common(env, case, row)
    refs = (*mail.references, mail.message_id)
    owner = row.get("owner")
    owner_name = _name_of(env, owner)
    if customer and _may_autoreply(plan, mail, facts, env, verdict, None):
        kind, extra = _customer_answer(env, scoped, lang)
        from_name = (
            f"{owner_name} ({env.settings.mailcare.display_name})"
            if owner_name and kind == "redirect"
            else ""
        )
        _send(
            plan,
            env,
            kind=kind,
            case=case,
            to=customer,
            lang=lang,
            values={**values, **extra},
            source_id=mail.message_id,
            in_reply_to=mail.message_id,
            references=refs,
            from_name=from_name,
        )
    if scoped.kind == "route":
        category = env.settings.scope.categories[scoped.category]
        _send(
            plan,
            env,
            kind="route_forward",
            case=case,
            to=category.address,
            lang=lang,
            values={
                **values,
                "customer_text": mail.new_text or mail.text,
                "team": category.team or category.address,
            },
            source_id=mail.message_id,
            reply_to_addressee=category.address,
        )
    if owner:
        _notify_owner(plan, mail, env, row, scoped)
    elif not owner:
        plan.event("unassigned", reason="no agent available")


def _customer_answer(env: Env, scoped: Scoped, lang: str) -> tuple[str, dict[str, Any]]:
    cats = env.settings.scope.categories
    if scoped.kind == "out" and scoped.category in cats:
        texts = cats[scoped.category].text
        text = (
            texts.get(lang)
            or texts.get(env.settings.mailcare.default_language)
            or next(iter(texts.values()))
        )
        return "redirect", {
            "understood": "",
            "reason": text.reason,
            "where": text.where,
            "tell": text.tell,
            "category": scoped.category,
        }
    if scoped.kind == "route" and scoped.category in cats:
        category = cats[scoped.category]
        return "route_customer", {"team": category.team or category.address}
    promise = env.hours.promise(env.when, env.settings.sla.first_response_hours, lang)
    return "ack", {"promise": promise, "unsure": scoped.kind == "unsure"}


def _notify_owner(plan: Plan, mail: Mail, env: Env, row: Mapping[str, Any], scoped: Scoped) -> None:
    owner = str(row["owner"])
    case = int(row["number"])
    lang = _agent_lang(env, owner, row)
    values = {
        **_common(env, case, row),
        "scope_kind": scoped.kind,
        "scope_category": scoped.category,
        "scope_confidence": round(scoped.confidence, 2),
        "scope_reason": scoped.reason,
        "unsure": scoped.kind == "unsure",
        "customer_text": mail.new_text or mail.text,
        "commands_help": commands.help_text(lang),
    }
    _send(
        plan,
        env,
        kind="notify_owner",
        case=case,
        to=owner,
        lang=lang,
        values=values,
        source_id=mail.message_id,
        reply_to_addressee=owner,
    )


def _customer_followup(
    plan: Plan, mail: Mail, match: Match, facts: Facts, env: Env, verdict: loops.LoopVerdict
) -> Plan:
    """A reply in an existing case: no second ack; the owner (only) hears of it."""
    assert match.case is not None
    case = match.case
    row = dict(facts.case_row or {})
    sender = mail.sender.addr if mail.sender else ""
    if verdict.automatic:
        _inbound(plan, mail, env, "auto", verdict.reason)
        plan.event("auto_reply_attached", reason=verdict.reason)
        plan.act("none", f"automatic mail attached silently ({verdict.kind})")
        return plan
    _inbound(plan, mail, env, "customer")
    update: dict[str, Any] = {"last_customer_at": env.now}
    reopened = row.get("state") in ("closed", "redirected", "routed")
    if reopened:
        update.update(state="open", closed_at=None)
        plan.event("reopened", reason=f"customer replied to a {row.get('state')} case")
    elif row.get("state") == "waiting":
        update["state"] = "open"
    if match.new_participant and sender:
        plan.participants.append((case, sender, "cc"))
        plan.event("participant_added", address=sender, matched_by=match.matched_by)
    plan.case_update = update
    owner = row.get("owner")
    if owner:
        row["state"] = update.get("state", row.get("state"))
        values = {
            **_common(env, case, row),
            "customer_text": mail.new_text or mail.text,
            "new_participant": sender if match.new_participant else "",
            "reopened": reopened,
        }
        _tell(plan, env, "forward_owner", case, str(owner), row, values, mail.message_id)
    return plan


# -- agents ----------------------------------------------------------------------------------


def _from_agent(
    plan: Plan,
    mail: Mail,
    match: Match,
    facts: Facts,
    env: Env,
    agent: AgentSection,
    verdict: loops.LoopVerdict,
) -> Plan:
    if verdict.automatic:
        # An agent's out-of-office answering a notification (L13): never a command or relay.
        _inbound(plan, mail, env, "auto", verdict.reason)
        plan.event("agent_auto_reply_ignored", actor=agent.address, reason=verdict.reason)
        plan.act("none", "agent auto-reply ignored")
        return plan
    forwarded = _forward_request(mail, env, agent)
    if forwarded is not None and match.case is None:
        return _forwarded_case(plan, mail, match, facts, env, agent, forwarded)
    identity = verify_agent(
        mail,
        agents=env.settings.agents,
        token=match.token,
        case=match.case,
        trusted_authserv_id=env.settings.mailcare.trusted_authserv_id,
        secret=env.secret,
    )
    if identity.agent is None or match.case is None:
        return _hold_spoof(plan, mail, match, facts, env, identity.reason or "no_case")
    return _agent_reply(plan, mail, facts, env, agent)


def _forward_request(mail: Mail, env: Env, agent: AgentSection) -> Any:
    """An agent forwarding a customer's mail in (#fwd or a forward address) names its sender."""
    cfg = env.settings.mailcare
    to_forward = any(r in cfg.forward_addresses for r in mail.recipients)
    first = (mail.new_text or mail.text).lstrip().lower()
    if not (to_forward or first.startswith("#fwd")):
        return None
    fake = tokens.ReplyToken(case=0, addressee=agent.address, valid=True)
    identity = verify_agent(
        mail,
        agents=env.settings.agents,
        token=fake,
        case=0,
        trusted_authserv_id=cfg.trusted_authserv_id,
    )
    if identity.agent is None:
        return None
    return forwarded_sender(mail)


def _forwarded_case(
    plan: Plan, mail: Mail, match: Match, facts: Facts, env: Env, agent: AgentSection, original: Any
) -> Plan:
    """Open the case for the original sender, owned by the forwarding agent; no ack."""
    number = facts.next_case_number
    plan.case, plan.new = number, True
    plan.matched_by = "forward"
    lang = _language(env, mail)
    from .mail import strip_prefixes

    subject = strip_prefixes(mail.subject) or mail.subject
    plan.new_case = {
        "number": number,
        "subject": subject,
        "subject_key": mail.subject_key,
        "customer": original.addr,
        "customer_name": original.name or original.addr,
        "owner": agent.address,
        "state": "open",
        "language": lang,
        "queue": "",
        "scope_kind": "in",
        "scope_category": "",
        "scope_confidence": 1.0,
        "scope_reason": f"forwarded in by {agent.name}",
        "linked_case": None,
        "claimed_case": None,
        "is_auto": 0,
        "created_at": env.now,
        "last_customer_at": env.now,
    }
    _inbound(plan, mail, env, "agent")
    plan.participants += [(number, original.addr, "customer"), (number, agent.address, "agent")]
    plan.event(
        "case_opened",
        actor=agent.address,
        matched_by="forward",
        reason=f"forwarded by {agent.address} for {original.addr}",
    )
    plan.event("assigned", owner=agent.address, reason="forwarding agent owns the case")
    plan.act("none", "case opened from a forwarded mail")
    return plan


def _hold_spoof(plan: Plan, mail: Mail, match: Match, facts: Facts, env: Env, reason: str) -> Plan:
    """A mail claiming to be an agent that fails verification: held, logged, never relayed."""
    claimed = mail.sender.addr if mail.sender else ""
    _inbound(plan, mail, env, "held", reason)
    plan.event("agent_auth_failed", actor=claimed, reason=reason)
    plan.act("hold", f"agent identity not verified: {reason}")
    row = facts.case_row or {}
    owner = row.get("owner")
    if plan.case is not None and owner:
        values = _alert(env, plan.case, row, "spoof_held", claimed=claimed, reason=reason)
        _send(
            plan,
            env,
            kind="owner_alert",
            case=plan.case,
            to=str(owner),
            lang=_agent_lang(env, str(owner), row),
            values=values,
            source_id=mail.message_id,
        )
    return plan


def _agent_reply(plan: Plan, mail: Mail, facts: Facts, env: Env, agent: AgentSection) -> Plan:
    """A verified agent: run the commands on top, then relay the rest (owner only)."""
    assert plan.case is not None
    row = dict(facts.case_row or {})
    parsed = commands.parse(mail.new_text, today=env.when.date())
    _inbound(plan, mail, env, "agent")
    plan.participants.append((plan.case, agent.address, "agent"))
    results: list[str] = []
    errors = list(parsed.errors)
    for command in parsed.commands:
        plan.event("command", actor=agent.address, command=command.name, arg=command.arg)
        _run_command(plan, mail.message_id, facts, env, agent, command, row, results, errors)
    if parsed.unknown or errors or results:
        _command_reply(plan, mail, env, agent, row, results, errors, list(parsed.unknown))
    if parsed.body.strip():
        _relay_or_hold(plan, mail, facts, env, agent, row, parsed.body)
    elif not parsed.commands:
        plan.act("none", "agent mail without text or commands")
    return plan


def _run_command(
    plan: Plan,
    source_id: str,
    facts: Facts,
    env: Env,
    agent: AgentSection,
    command: commands.Command,
    row: dict[str, Any],
    results: list[str],
    errors: list[str],
) -> None:
    name = command.name
    owner = row.get("owner")
    may_manage = owner in (None, agent.address) or agent.lead
    if name == "take":
        _take(plan, source_id, facts, env, agent, row, results)
    elif name == "assign":
        target = _find_agent(env, command.arg)
        if target is None:
            errors.append(f"#assign {command.arg}: no such agent")
        elif not may_manage:
            errors.append(f"#assign: only {_name_of(env, owner)} or a lead may reassign")
        else:
            _set_owner(plan, env, row, target.address, agent.address, source_id)
            results.append(f"assigned to {target.name}")
    elif name in ("close", "reopen"):
        if not may_manage:
            errors.append(f"#{name}: the case belongs to {_name_of(env, owner)}")
            return
        state = "closed" if name == "close" else "open"
        update = {"state": state, "closed_at": env.now if name == "close" else None}
        plan.case_update.update(update)
        row.update(update)
        plan.event(f"case_{'closed' if name == 'close' else 'reopened'}", actor=agent.address)
        results.append(f"case {state}")
    elif name == "note":
        plan.event("note", actor=agent.address, text=command.arg)
        results.append("note recorded")
    elif name == "wait":
        plan.case_update["wait_until"] = _date_epoch(env, command.arg)
        plan.event("snoozed", actor=agent.address, until=command.arg)
        results.append(f"reminders paused until {command.arg}")
    elif name == "scope":
        _rescope(plan, source_id, facts, env, agent, row, command.arg, results, errors)


def _date_epoch(env: Env, value: str) -> float | None:
    from datetime import date, time

    try:
        day = date.fromisoformat(value)
    except ValueError:
        return None
    tz = ZoneInfo(env.settings.hours.timezone)
    return datetime.combine(day, time(0, 0), tz).timestamp()


def _find_agent(env: Env, text: str) -> AgentSection | None:
    wanted = text.strip().lower()
    for agent in env.settings.agents:
        if wanted in (agent.address, agent.name.lower(), agent.name.split()[0].lower()):
            return agent
    return None


def _set_owner(
    plan: Plan, env: Env, row: dict[str, Any], new_owner: str, actor: str, source_id: str
) -> None:
    previous = row.get("owner")
    plan.case_update["owner"] = new_owner
    plan.expect_owner = previous
    row["owner"] = new_owner
    plan.event("owner_changed", actor=actor, previous=previous, owner=new_owner)
    if new_owner != actor and plan.case is not None:
        values = _alert(
            env,
            plan.case,
            row,
            "transfer",
            previous_owner=_name_of(env, previous) or (previous or ""),
            agent_name=_name_of(env, actor),
        )
        _tell(plan, env, "owner_alert", plan.case, new_owner, row, values, source_id)


def _take(
    plan: Plan,
    source_id: str,
    facts: Facts,
    env: Env,
    agent: AgentSection,
    row: dict[str, Any],
    results: list[str],
) -> None:
    """#take moves ownership, except right after another agent's #take (S12 race)."""
    owner = row.get("owner")
    if owner == agent.address:
        results.append("the case is already yours")
        return
    recent = facts.last_take
    if recent and recent[0] != agent.address and env.now - recent[1] < env.take_window:
        plan.event("take_refused", actor=agent.address, owner=owner)
        assert plan.case is not None
        _tell(
            plan,
            env,
            "take_conflict",
            plan.case,
            agent.address,
            row,
            _common(env, plan.case, row),
            source_id,
        )
        return
    _set_owner(plan, env, row, agent.address, agent.address, source_id)
    plan.event("take", actor=agent.address, previous=owner)
    results.append("the case is now yours")


def _rescope(
    plan: Plan,
    source_id: str,
    facts: Facts,
    env: Env,
    agent: AgentSection,
    row: dict[str, Any],
    arg: str,
    results: list[str],
    errors: list[str],
) -> None:
    kind, _, category = arg.strip().partition(" ")
    category = category.strip()
    cats = env.settings.scope.categories
    if kind not in ("in", "out", "route") or (kind != "in" and category not in cats):
        errors.append(f"#scope {arg}: expected in [category], out <category> or route <category>")
        return
    queue = cats[category].queue or category if category in cats else ""
    update = {
        "scope_kind": kind,
        "scope_category": category,
        "scope_confidence": 1.0,
        "scope_reason": f"set by {agent.name}",
        "queue": queue,
    }
    plan.case_update.update(update)
    row.update(update)
    plan.event("scope_corrected", actor=agent.address, kind=kind, category=category)
    if category:
        plan.corrections.append((str(row.get("subject", "")), _customer_text(facts), category))
    results.append(f"scope set to {kind} {category}".strip())
    assert plan.case is not None
    customer = str(row.get("customer") or "")
    if kind in ("out", "route") and customer:
        scoped = Scoped(kind, category, 1.0, "set by agent", queue)
        answer_kind, extra = _customer_answer(env, scoped, str(row.get("language") or "it"))
        values = {**_common(env, plan.case, row), **extra}
        _send(
            plan,
            env,
            kind=answer_kind,
            case=plan.case,
            to=customer,
            lang=str(row.get("language") or env.settings.mailcare.default_language),
            values=values,
            source_id=source_id,
            in_reply_to=facts.customer_ids[-1] if facts.customer_ids else "",
            references=facts.customer_ids[-10:],
            from_name=f"{agent.name} ({env.settings.mailcare.display_name})",
        )
        if kind == "route":
            target = cats[category]
            _send(
                plan,
                env,
                kind="route_forward",
                case=plan.case,
                to=target.address,
                lang=str(row.get("language") or "it"),
                values={
                    **values,
                    "customer_text": _customer_text(facts),
                    "team": target.team or target.address,
                },
                source_id=source_id,
                reply_to_addressee=target.address,
            )
        plan.case_update["state"] = "redirected" if kind == "out" else "routed"


def _customer_text(facts: Facts) -> str:
    return str((facts.case_row or {}).get("first_text", ""))


def _command_reply(
    plan: Plan,
    mail: Mail,
    env: Env,
    agent: AgentSection,
    row: Mapping[str, Any],
    results: list[str],
    errors: list[str],
    unknown: list[str],
) -> None:
    assert plan.case is not None
    if not (errors or unknown):
        return
    lang = _agent_lang(env, agent.address, row)
    values = {
        **_common(env, plan.case, row),
        "results": results,
        "errors": errors,
        "unknown": unknown,
        "commands_help": commands.help_text(lang),
    }
    _send(
        plan,
        env,
        kind="command_reply",
        case=plan.case,
        to=agent.address,
        lang=lang,
        values=values,
        source_id=mail.message_id,
        reply_to_addressee=agent.address,
    )


def _relay_or_hold(
    plan: Plan,
    mail: Mail,
    facts: Facts,
    env: Env,
    agent: AgentSection,
    row: dict[str, Any],
    body: str,
) -> None:
    """Only the owner's words reach the customer (or, by policy, the replier takes over)."""
    assert plan.case is not None
    owner = row.get("owner")
    if owner != agent.address:
        if env.settings.owners.other_agent_reply == "transfer" or owner is None:
            _set_owner(plan, env, row, agent.address, agent.address, mail.message_id)
        else:
            _hold_other_agent(plan, mail, env, agent, row, body)
            return
    _relay(plan, mail, facts, env, agent, row, body)


def _hold_other_agent(
    plan: Plan, mail: Mail, env: Env, agent: AgentSection, row: Mapping[str, Any], body: str
) -> None:
    assert plan.case is not None
    owner = str(row.get("owner"))
    plan.event("held_other_agent", actor=agent.address, owner=owner)
    plan.act("hold", f"{agent.address} does not own the case")
    base = _common(env, plan.case, row)
    _tell(
        plan,
        env,
        "not_owner",
        plan.case,
        agent.address,
        row,
        {**base, "held_text": body},
        mail.message_id,
    )
    alert = _alert(env, plan.case, row, "other_agent_reply", agent_name=agent.name, held_text=body)
    _tell(plan, env, "owner_alert", plan.case, owner, row, alert, mail.message_id)


def _relay(
    plan: Plan,
    mail: Mail,
    facts: Facts,
    env: Env,
    agent: AgentSection,
    row: dict[str, Any],
    body: str,
) -> None:
    """Send the agent's words to the customer from `Agent (display_name) <support>`."""
    assert plan.case is not None
    from .mail import attachments_payloads

    customer = str(row.get("customer") or "")
    if not customer:
        plan.act("hold", "case has no customer address")
        return
    lang = str(row.get("language") or env.settings.mailcare.default_language)
    ids = facts.customer_ids
    values = {**_common(env, plan.case, row), "body": body, "agent_name": agent.name}
    _send(
        plan,
        env,
        kind="relay",
        case=plan.case,
        to=customer,
        lang=lang,
        values=values,
        source_id=mail.message_id,
        automatic=False,
        from_name=f"{agent.name} ({env.settings.mailcare.display_name})",
        in_reply_to=ids[-1] if ids else "",
        references=ids[-10:],
        attachments=tuple(attachments_payloads(mail.raw)),
    )
    update: dict[str, Any] = {"state": "waiting", "last_agent_at": env.now}
    if not row.get("first_response_at"):
        update["first_response_at"] = env.now
    plan.case_update.update(update)
    plan.event("relayed", actor=agent.address, to=customer)


# -- admin commands from the CLI -------------------------------------------------------------


def admin_command(
    row: Mapping[str, Any], action: str, arg: str, facts: Facts, env: Env, actor: str = "admin"
) -> tuple[Plan, list[str]]:
    """`mailcare assign|close|reopen|scope N …`: the same rules as an agent's commands, run by
    an administrator (who may manage any case). Returns the plan and what it did or why not."""
    number = int(row["number"])
    plan = Plan(case=number)
    admin = AgentSection(name=actor, address=f"{actor}@localhost", lead=True)
    results: list[str] = []
    errors: list[str] = []
    command = commands.Command(name=action, arg=arg, line=f"#{action} {arg}".strip())
    plan.event("admin_command", actor=actor, command=action, arg=arg)
    source = f"admin:{action}:{arg}:{env.now}"
    _run_command(plan, source, facts, env, admin, command, dict(row), results, errors)
    return plan, results + [f"error: {e}" for e in errors]


# -- helpers shared with the other planners (sla.py) -------------------------------------------

# Public names for the pieces every plan that mails someone needs: the common template
# values, rendering and queueing a mail, and who an agent is and which language they read.
send = _send
common_values = _common
agent_language = _agent_lang
name_of = _name_of
