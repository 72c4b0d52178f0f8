"""The SLA clock: remind the owner, then escalate, while a customer waits for us.

A case waits for us from the customer's first unanswered mail until an agent replies. When
that wait reaches `sla.remind_after_hours` working hours its owner gets one reminder; at
`sla.escalate_after_hours` the case is escalated once, either to the lead or by handing it
to the next available agent. "Once" means once per waiting period: an answer ends the
period, and the customer's next mail starts a new one with its own reminder and escalation.

Nothing fires while the office is closed, so nobody is nagged at night for a clock that
only counts working hours anyway, and `#wait <date>` pauses the clock until that date.
`due()` is pure (the caller passes `now`); `plan_actions()` turns its verdicts into plans
like any incoming mail's; `run_sla()` is the thin runner the daemon calls on a timer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Literal

from . import owners
from .config import AgentSection, Settings, SlaSection
from .hours import BusinessHours, _format_day
from .plan import Env, Plan, agent_language, common_values, name_of, send

if TYPE_CHECKING:
    from .pipeline import Engine
    from .store import Store

log = logging.getLogger("mailcare")

# States in which the next move is ours ("waiting" is waiting for the customer).
WAITING_STATES = ("new", "open")

Kind = Literal["remind", "escalate"]


def _epoch(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class CaseClock:
    """The columns of one case that the SLA clock reads, as stored (epoch seconds).

    `first_unanswered_at` is the customer's earliest mail since our last reply (or since
    the case was reopened) when the store can tell; without it the clock starts at the
    later of creation and the last customer mail.
    """

    number: int
    state: str
    created_at: float
    first_response_at: float | None = None
    last_customer_at: float | None = None
    last_agent_at: float | None = None
    wait_until: float | None = None
    reminded_at: float | None = None
    escalated_at: float | None = None
    first_unanswered_at: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CaseClock:
        """Build from a `cases` row (extra columns are ignored)."""
        return cls(
            number=int(row["number"]),
            state=str(row["state"]),
            created_at=float(row["created_at"]),
            first_response_at=_epoch(row.get("first_response_at")),
            last_customer_at=_epoch(row.get("last_customer_at")),
            last_agent_at=_epoch(row.get("last_agent_at")),
            wait_until=_epoch(row.get("wait_until")),
            reminded_at=_epoch(row.get("reminded_at")),
            escalated_at=_epoch(row.get("escalated_at")),
            first_unanswered_at=_epoch(row.get("first_unanswered_at")),
        )

    @property
    def customer_spoke_last(self) -> bool:
        if self.last_customer_at is None:
            return False
        return self.last_agent_at is None or self.last_customer_at > self.last_agent_at

    @property
    def waiting(self) -> bool:
        """Whether the next move is ours: never answered, or the customer wrote since."""
        if self.state not in WAITING_STATES:
            return False
        return self.first_response_at is None or self.customer_spoke_last

    def clock_start(self) -> float | None:
        """When the current waiting period began, or None when the case is not waiting.

        The end of a `#wait` that fell inside the period starts the clock afresh: the agent
        asked not to be chased until then, so the reminder comes `remind_after` hours later
        rather than an escalation on the morning the pause ends.
        """
        if not self.waiting:
            return None
        if self.first_unanswered_at is not None:
            start = max(self.created_at, self.first_unanswered_at)
        else:
            start = max(self.created_at, self.last_customer_at or self.created_at)
        if self.wait_until is not None:
            start = max(start, self.wait_until)
        return start


@dataclass(frozen=True)
class SlaAction:
    """One reminder or escalation that is due now, with the waiting period it belongs to."""

    case: int
    kind: Kind
    waiting_hours: float
    reason: str
    since: datetime  # start of the waiting period (UTC); makes the mail's Message-ID stable


def _done_since(stamp: float | None, start: float) -> bool:
    """A reminder or escalation recorded at or after `start` belongs to this period."""
    return stamp is not None and stamp >= start


def _check(
    case: CaseClock, now: datetime, hours: BusinessHours, sla: SlaSection
) -> SlaAction | None:
    """The action due for one case, if any. Escalation wins when both are due at once."""
    start = case.clock_start()
    if start is None or (case.wait_until is not None and case.wait_until > now.timestamp()):
        return None
    since = datetime.fromtimestamp(start, UTC)
    waited = hours.between(since, now)
    escalated = _done_since(case.escalated_at, start)
    if waited >= sla.escalate_after_hours and not escalated:
        reason = f"waiting {waited:.2f} working hours, escalate after {sla.escalate_after_hours:g}"
        return SlaAction(case.number, "escalate", waited, reason, since)
    if (
        waited >= sla.remind_after_hours
        and not escalated
        and not _done_since(case.reminded_at, start)
    ):
        reason = f"waiting {waited:.2f} working hours, remind after {sla.remind_after_hours:g}"
        return SlaAction(case.number, "remind", waited, reason, since)
    return None


def due(
    cases: Sequence[CaseClock], *, now: datetime, hours: BusinessHours, sla: SlaSection
) -> list[SlaAction]:
    """The reminders and escalations due at `now` (timezone-aware), in the order given.

    An empty list whenever the office is closed: the clock counts working hours only, and a
    reminder at 23:00 would reach nobody who can act on it.
    """
    if not hours.is_open(now):
        return []
    found = (_check(case, now, hours, sla) for case in cases)
    return [action for action in found if action is not None]


# -- planning ------------------------------------------------------------------------------


def lead_address(settings: Settings, today: date | None = None) -> str:
    """Who hears of escalations: `sla.lead_address`, else the first agent flagged `lead`
    (an available one first when `today` is given), else nobody ("")."""
    if settings.sla.lead_address:
        return settings.sla.lead_address.strip().lower()
    leads = [a for a in settings.agents if a.lead]
    present = [a for a in leads if today is None or owners.available(a, today)]
    chosen = present or leads
    return chosen[0].address if chosen else ""


_AT = {"it": "alle", "en": "at"}
_NEAR = {
    "it": {-1: "ieri", 0: "oggi", 1: "domani"},
    "en": {-1: "yesterday", 0: "today", 1: "tomorrow"},
}


def spoken_time(when: datetime, now: datetime, lang: str) -> str:
    """A moment as the template wants it, in `now`'s time zone: "oggi alle 13:12",
    "lunedì 23 novembre alle 9:12", "tomorrow at 9:00"; English for other languages."""
    lang = lang if lang in _AT else "en"
    when = when.astimezone(now.tzinfo)
    offset = (when.date() - now.date()).days
    day = _NEAR[lang].get(offset) or _format_day(when, lang, show_year=when.year != now.year)
    return f"{day} {_AT[lang]} {when.hour}:{when.minute:02d}"


def _source_id(action: SlaAction) -> str:
    """Stable per case, kind and waiting period: a repeated tick queues the same mail."""
    return f"sla:{action.case}:{action.kind}:{action.since.timestamp():.0f}"


def _remind(action: SlaAction, row: Mapping[str, Any], env: Env) -> Plan:
    """Remind the owner (or, for a case nobody owns, the lead) that a customer waits."""
    plan = Plan(case=action.case)
    owner = row.get("owner")
    to = str(owner) if owner else lead_address(env.settings, env.when.date())
    plan.case_update["reminded_at"] = env.now
    plan.event(
        "sla_reminder",
        to=to or None,
        owner=owner,
        reason=action.reason,
        waiting_hours=round(action.waiting_hours, 2),
        since=action.since.isoformat(),
    )
    if not to:
        plan.act("none", "reminder due, but the case has no owner and no lead is configured")
        return plan
    lang = agent_language(env, to, row)
    due_at = env.hours.add(action.since, env.settings.sla.first_response_hours)
    values = {
        **common_values(env, action.case, row),
        "waiting_since": spoken_time(action.since, env.when, lang),
        "due": spoken_time(due_at, env.when, lang),
    }
    send(
        plan,
        env,
        kind="reminder",
        case=action.case,
        to=to,
        lang=lang,
        values=values,
        source_id=_source_id(action),
    )
    return plan


@dataclass(frozen=True)
class _Target:
    """Where an escalation goes, and the new owner when the case changes hands."""

    to: str
    new_owner: str | None
    reason: str


def _target(
    row: Mapping[str, Any],
    env: Env,
    agents: Sequence[AgentSection],
    open_counts: Mapping[str, int],
    last_assigned: str | None,
) -> _Target:
    """The lead, or for "reassign" the next available agent other than the current owner
    (away agents and full agents are skipped by `owners.choose`); the lead again when
    nobody else can take the case."""
    lead = lead_address(env.settings, env.when.date())
    if env.settings.sla.escalate != "reassign":
        return _Target(lead, None, "escalate = lead")
    current = row.get("owner")
    choice = owners.choose(
        [a for a in agents if a.address != current],
        policy=env.settings.owners.policy,
        queue=str(row.get("queue") or ""),
        language=str(row.get("language") or env.settings.mailcare.default_language),
        open_counts=open_counts,
        last_assigned=last_assigned,
        previous_owner=None,
        today=env.when.date(),
    )
    if choice.agent is None:
        return _Target(lead, None, f"reassign failed ({choice.reason}); told the lead")
    return _Target(choice.agent, choice.agent, f"reassigned: {choice.reason}")


def _label(env: Env, address: str | None) -> str:
    return name_of(env, address) or address or env.settings.mailcare.display_name


def _escalate(action: SlaAction, row: Mapping[str, Any], env: Env, target: _Target) -> Plan:
    """Record the escalation, hand the case over when reassigning, and mail the target."""
    plan = Plan(case=action.case)
    previous = row.get("owner")
    plan.case_update["escalated_at"] = env.now
    if not _done_since(_epoch(row.get("reminded_at")), action.since.timestamp()):
        plan.case_update["reminded_at"] = env.now  # the escalation stands in for the reminder
    if target.new_owner is not None:
        plan.case_update["owner"] = target.new_owner
        plan.expect_owner = previous  # an agent's own #take or #assign meanwhile wins
        plan.meta["rr_last"] = target.new_owner
        plan.event("owner_changed", previous=previous, owner=target.new_owner, reason="sla")
    plan.event(
        "sla_escalated",
        mode=env.settings.sla.escalate,
        to=target.to or None,
        previous=previous,
        owner=target.new_owner or previous,
        reason=action.reason,
        target_reason=target.reason,
        waiting_hours=round(action.waiting_hours, 2),
        since=action.since.isoformat(),
    )
    if not target.to:
        plan.act("none", "escalation due, but no lead is configured (sla.lead_address)")
        return plan
    current = target.new_owner or previous
    overdue = max(action.waiting_hours - env.settings.sla.first_response_hours, 0.0)
    values = {
        **common_values(env, action.case, {**row, "owner": current}),
        "owner_name": _label(env, current),
        "previous_owner": _label(env, previous),
        "overdue_hours": round(overdue, 1),
    }
    lang = agent_language(env, target.to, row)
    send(
        plan,
        env,
        kind="escalation",
        case=action.case,
        to=target.to,
        lang=lang,
        values=values,
        source_id=_source_id(action),
    )
    return plan


def plan_actions(
    actions: Sequence[SlaAction],
    rows: Mapping[int, Mapping[str, Any]],
    env: Env,
    *,
    agents: Sequence[AgentSection],
    open_counts: Mapping[str, int],
    last_assigned: str | None = None,
) -> list[Plan]:
    """One plan per action. `rows` are the cases rows by number (owner, subject, customer,
    language, queue...). Reassignments in one tick count against each other, so two
    overdue cases do not land on the same agent because the counters were read once."""
    counts = dict(open_counts)
    plans: list[Plan] = []
    for action in actions:
        row = rows[action.case]
        if action.kind == "remind":
            plans.append(_remind(action, row, env))
            continue
        target = _target(row, env, agents, counts, last_assigned)
        if target.new_owner is not None:
            counts[target.new_owner] = counts.get(target.new_owner, 0) + 1
            last_assigned = target.new_owner
        plans.append(_escalate(action, row, env, target))
    return plans


# -- the runner ----------------------------------------------------------------------------

# Open cases whose next move is ours, with the customer's first mail since our last reply
# or since the case was last reopened (a reopened case's old mails were answered by closing).
_WAITING_SQL = """
SELECT c.number, c.state, c.owner, c.subject, c.customer, c.customer_name, c.language,
       c.queue, c.created_at, c.first_response_at, c.last_customer_at, c.last_agent_at,
       c.wait_until, c.reminded_at, c.escalated_at,
       (SELECT MIN(m.created_at) FROM messages m
         WHERE m.case_number = c.number AND m.direction = 'in' AND m.role = 'customer'
           AND m.created_at > COALESCE(c.last_agent_at, -1)
           AND m.created_at >= COALESCE(
               (SELECT MAX(e.at) FROM events e
                 WHERE e.case_number = c.number AND e.kind = 'reopened'), -1)
       ) AS first_unanswered_at
FROM cases c
WHERE c.state IN ({marks})
  AND (c.first_response_at IS NULL OR c.last_customer_at > COALESCE(c.last_agent_at, -1))
ORDER BY c.number
""".replace("{marks}", ", ".join("?" * len(WAITING_STATES)))


def run_sla(store: Store, engine: Engine, now: float) -> list[Plan]:
    """One tick of the SLA timer: find what is due, plan it, apply it in one transaction.

    Safe to repeat: a tick records `reminded_at`/`escalated_at`, so the next one at the
    same moment finds nothing, and the mails' Message-IDs are stable per waiting period.
    """
    env = Env(
        settings=engine.settings,
        secret=engine.secret,
        templates=engine.templates,
        hours=engine.hours,
        now=now,
    )
    if not engine.hours.is_open(env.when):
        return []  # skip the query: due() would find nothing anyway
    with store.batch():
        rows = {int(r["number"]): r for r in store.query(_WAITING_SQL, WAITING_STATES)}
        clocks = [CaseClock.from_row(r) for r in rows.values()]
        actions = due(clocks, now=env.when, hours=engine.hours, sla=engine.settings.sla)
        if not actions:
            return []
        reassigning = engine.settings.sla.escalate == "reassign"
        plans = plan_actions(
            actions,
            rows,
            env,
            agents=engine.settings.agents,
            open_counts=store.open_counts() if reassigning else {},
            last_assigned=store.meta("rr_last") or None,
        )
        for plan in plans:
            store.apply(plan, now=now)
    for plan in plans:
        for event in plan.events:
            if event.kind.startswith("sla_"):
                log.info(
                    "case=%s action=%s to=%s reason=%s",
                    plan.case,
                    event.kind,
                    event.detail.get("to"),
                    event.detail.get("reason"),
                )
    return plans
