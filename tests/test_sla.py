"""The SLA clock with an injected clock: reminders, escalation, reassignment, #wait.

The calendar is the default office (Monday-Friday 09:00-18:00, Europe/Rome, Italian
holidays) over the week of Monday 7 December 2026, whose Tuesday is a national holiday
(Immacolata Concezione).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime, timedelta
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from mailcare import sla
from mailcare.compose import Templates
from mailcare.config import HoursSection, Settings, from_mapping
from mailcare.hours import BusinessHours
from mailcare.pipeline import Engine
from mailcare.plan import ANY_OWNER, Env, Plan
from mailcare.resources import bundled_root
from mailcare.sla import CaseClock, SlaAction
from mailcare.store import Store

ROME = ZoneInfo("Europe/Rome")
OFFICE = BusinessHours(HoursSection())
TEMPLATES = Templates(bundled_root() / "templates", languages=("it", "en"), default_language="it")
SECRET = b"sla-test-secret"
LEAD = "capo@examplenet.it"
ANNA, BRUNO, CARLA, DARIO = (f"{n}@examplenet.it" for n in ("anna", "bruno", "carla", "dario"))
AGENTS: list[dict[str, Any]] = [
    {"name": "Anna Riva", "address": ANNA, "languages": ["it"]},
    {"name": "Bruno Sala", "address": BRUNO, "away": True},
    {"name": "Carla Neri", "address": CARLA, "languages": ["en"]},
    {"name": "Dario Fo", "address": DARIO, "away_from": "2026-12-01", "away_until": "2026-12-31"},
]


def rome(day: int, hour: int = 0, minute: int = 0, month: int = 12) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=ROME)


def at(day: int, hour: int = 0, minute: int = 0) -> float:
    return rome(day, hour, minute).timestamp()


def settings(agents: Sequence[Mapping[str, Any]] = AGENTS, **sla_keys: Any) -> Settings:
    return from_mapping({"agents": list(agents), "sla": {"lead_address": LEAD, **sla_keys}})


DEFAULT = settings()


def env(now: datetime, config: Settings = DEFAULT) -> Env:
    return Env(settings=config, secret=SECRET, templates=TEMPLATES, hours=OFFICE,
               now=now.timestamp())  # fmt: skip


def clock(created: datetime, **fields: Any) -> CaseClock:
    """A case opened by a customer mail at `created` and not yet answered."""
    stamp = created.timestamp()
    values: dict[str, Any] = {"state": "new", "last_customer_at": stamp, **fields}
    return CaseClock(number=1042, created_at=stamp, **values)


def row(case: CaseClock, owner: str | None = ANNA, **fields: Any) -> dict[str, Any]:
    return {
        "number": case.number, "owner": owner, "subject": "La fibra non funziona",
        "customer": "mario@example.com", "customer_name": "Mario Bianchi", "language": "it",
        "queue": "", "reminded_at": case.reminded_at, "escalated_at": case.escalated_at,
        **fields,
    }  # fmt: skip


def kinds(cases: Sequence[CaseClock], now: datetime, config: Settings = DEFAULT) -> list[str]:
    return [a.kind for a in sla.due(cases, now=now, hours=OFFICE, sla=config.sla)]


def tick(
    case: CaseClock, now: datetime, config: Settings = DEFAULT, owner: str | None = ANNA
) -> tuple[CaseClock, list[Plan]]:
    """One timer tick for one case: decide, plan, and write back what the plans record."""
    actions = sla.due([case], now=now, hours=OFFICE, sla=config.sla)
    plans = sla.plan_actions(
        actions, {case.number: row(case, owner)}, env(now, config),
        agents=config.agents, open_counts={},
    )  # fmt: skip
    for plan in plans:
        stamps = {k: v for k, v in plan.case_update.items() if k in ("reminded_at", "escalated_at")}
        case = replace(case, **stamps)
    return case, plans


def every(start: datetime, end: datetime, step: timedelta) -> Iterator[datetime]:
    while start < end:
        yield start
        start += step


def mail_text(plan: Plan) -> str:
    """The decoded body of the plan's only outgoing mail."""
    (out,) = plan.outgoing
    body = message_from_bytes(out.data).get_payload(decode=True)
    assert isinstance(body, bytes)
    return body.decode()


def mail_subject(plan: Plan) -> str:
    (out,) = plan.outgoing
    return str(make_header(decode_header(message_from_bytes(out.data)["Subject"])))


# -- when the clock fires ------------------------------------------------------------------


def test_nothing_at_night_at_the_weekend_or_on_a_holiday() -> None:
    """A case waiting since Monday 09:00 is overdue all night and on the holiday, yet the
    clock stays silent until the office opens again on Wednesday."""
    case = clock(rome(7, 9))
    assert kinds([case], rome(7, 12)) == ["remind"]  # due in office hours...
    assert kinds([case], rome(7, 23)) == []  # ...but not at night
    assert kinds([case], rome(8, 11)) == []  # Tuesday 8 December: Immacolata
    assert kinds([case], rome(9, 8, 59)) == []  # before opening
    assert kinds([case], rome(9, 9)) == ["escalate"]  # 9 working hours by Wednesday 09:00
    friday = clock(rome(11, 16))
    assert kinds([friday], rome(12, 11)) == []  # Saturday
    assert kinds([friday], rome(13, 11)) == []  # Sunday
    assert kinds([friday], rome(14, 9, 59)) == []  # 2 h on Friday + 59 min on Monday
    assert kinds([friday], rome(14, 10)) == ["remind"]


def test_reminder_exactly_once_then_escalation_over_a_working_week() -> None:
    """Ticking every five minutes through the week: one reminder after 3 working hours,
    one escalation after 8, nothing else (the holiday does not count)."""
    case = clock(rome(7, 15))
    fired: list[tuple[str, datetime]] = []
    for now in every(rome(7, 15), rome(14, 0), timedelta(minutes=5)):
        case, plans = tick(case, now)
        fired += [(out.kind, now) for plan in plans for out in plan.outgoing]
    assert fired == [
        ("reminder", rome(9, 9)),  # Mon 15-18 is 3 working hours, but 18:00 is closed
        ("escalation", rome(9, 14)),  # 3 h Monday + 5 h Wednesday
    ]


def test_reminder_fires_at_the_threshold_and_not_before() -> None:
    case = clock(rome(9, 9))
    assert kinds([case], rome(9, 11, 59)) == []
    case, plans = tick(case, rome(9, 12))
    assert [p.events[0].kind for p in plans] == ["sla_reminder"]
    assert case.reminded_at == at(9, 12)
    assert kinds([case], rome(9, 12, 1)) == []
    assert kinds([case], rome(9, 16, 59)) == []
    assert kinds([case], rome(9, 17)) == ["escalate"]


def test_escalation_alone_when_both_are_due_at_once() -> None:
    """After an outage the escalation stands in for the missed reminder: no reminder later."""
    case, plans = tick(clock(rome(9, 9)), rome(10, 9))
    assert [out.kind for out in plans[0].outgoing] == ["escalation"]
    assert case.reminded_at == case.escalated_at == at(10, 9)
    assert kinds([case], rome(10, 12)) == []


def test_states_that_are_not_ours_to_move() -> None:
    base = clock(rome(9, 9))
    now = rome(10, 12)
    assert kinds([replace(base, state="open")], now) == ["escalate"]
    for state in ("waiting", "closed", "redirected", "routed"):
        assert kinds([replace(base, state=state)], now) == [], state


def test_answered_case_gets_nothing() -> None:
    answered = clock(rome(9, 9), first_response_at=at(9, 10), last_agent_at=at(9, 10))
    assert not answered.waiting
    assert kinds([replace(answered, state="open")], rome(11, 17)) == []


def test_customer_follow_up_restarts_the_clock() -> None:
    """Answered on Monday, reminded and escalated in an earlier period: the customer's
    Wednesday mail starts a new period with its own reminder and escalation."""
    case = clock(
        rome(7, 9), state="open", first_response_at=at(7, 10), last_agent_at=at(7, 10),
        reminded_at=at(7, 9, 30), escalated_at=at(7, 9, 45),
    )  # fmt: skip
    follow_up = replace(case, last_customer_at=at(9, 10))
    assert follow_up.clock_start() == at(9, 10)
    assert kinds([follow_up], rome(9, 12, 59)) == []
    assert kinds([follow_up], rome(9, 13)) == ["remind"]
    assert kinds([replace(follow_up, reminded_at=at(9, 13))], rome(9, 17, 59)) == []
    assert kinds([replace(follow_up, reminded_at=at(9, 13))], rome(10, 9)) == ["escalate"]


def test_a_nudge_on_an_unanswered_case_does_not_restart_the_clock() -> None:
    """ "Any news?" two hours in must not push the reminder back: with the first unanswered
    mail known (the store's query supplies it) the clock keeps running from there."""
    nudged = clock(rome(9, 9), last_customer_at=at(9, 11), first_unanswered_at=at(9, 9))
    assert kinds([nudged], rome(9, 12)) == ["remind"]
    unknown = replace(nudged, first_unanswered_at=None)  # fallback: the last customer mail
    assert kinds([unknown], rome(9, 12)) == []
    assert kinds([unknown], rome(9, 14)) == ["remind"]


def test_wait_suppresses_until_the_date_then_the_clock_starts_afresh() -> None:
    """`#wait 2026-12-14` stores local midnight; reminders pause until then and the next
    one comes `remind_after` working hours after the pause ends, not an instant escalation."""
    snoozed = clock(rome(7, 9), state="open", wait_until=at(14))
    assert kinds([snoozed], rome(9, 17)) == []
    assert kinds([snoozed], rome(11, 17, 59)) == []
    assert snoozed.clock_start() == at(14)
    assert kinds([snoozed], rome(14, 11, 59)) == []
    assert kinds([snoozed], rome(14, 12)) == ["remind"]
    expired = replace(snoozed, wait_until=at(7, 10))  # a pause that ended long ago
    assert kinds([expired], rome(7, 13)) == ["remind"]


def test_wait_suppresses_an_escalation_already_due() -> None:
    overdue = clock(rome(7, 9), reminded_at=at(7, 12))
    assert kinds([overdue], rome(9, 10)) == ["escalate"]
    assert kinds([replace(overdue, wait_until=at(10))], rome(9, 10)) == []


# -- what the plans say and send -----------------------------------------------------------


def test_reminder_mail_to_the_owner() -> None:
    _, (plan,) = tick(clock(rome(9, 9, 5)), rome(9, 12, 5))
    assert plan.case == 1042 and plan.case_update == {"reminded_at": at(9, 12, 5)}
    assert plan.expect_owner is ANY_OWNER
    (event,) = plan.events
    assert (event.kind, event.detail["to"], event.detail["owner"]) == ("sla_reminder", ANNA, ANNA)
    assert event.detail["waiting_hours"] == 3.0
    (out,) = plan.outgoing
    assert (out.kind, out.to, out.automatic) == ("reminder", (ANNA,), True)
    text = mail_text(plan)
    assert "aspetta una prima risposta da oggi alle 9:05" in text
    assert "La scadenza è oggi alle 13:05" in text
    assert "Mario Bianchi <mario@example.com>" in text
    assert mail_subject(plan) == "[EX #1042] In attesa di risposta: La fibra non funziona"
    assert [m["kind"] for m in plan.messages] == ["reminder"]


def test_reminder_dates_across_days_in_english() -> None:
    """An English-speaking owner reads English; days other than today are named."""
    _, (plan,) = tick(clock(rome(7, 16)), rome(9, 10), owner=CARLA)
    assert plan.outgoing[0].to == (CARLA,)
    text = mail_text(plan)
    assert "waiting for a first reply since Monday 7 December at 16:00" in text
    assert "It is due today at 11:00" in text


def test_reminder_for_an_unowned_case_goes_to_the_lead() -> None:
    _, (plan,) = tick(clock(rome(9, 9)), rome(9, 12), owner=None)
    assert plan.outgoing[0].to == (LEAD,)
    nobody = settings(lead_address="")
    case, (silent,) = tick(clock(rome(9, 9)), rome(9, 12), config=nobody, owner=None)
    assert silent.outgoing == [] and silent.events[0].detail["to"] is None
    assert case.reminded_at == at(9, 12)  # recorded, so it is not retried every minute


def test_escalation_to_the_lead() -> None:
    case = clock(rome(9, 9), reminded_at=at(9, 12))
    case, (plan,) = tick(case, rome(9, 17, 30))
    assert plan.case_update == {"escalated_at": at(9, 17, 30)}  # reminded_at kept
    assert "owner" not in plan.case_update and plan.expect_owner is ANY_OWNER
    (event,) = plan.events
    assert (event.kind, event.detail["mode"], event.detail["to"]) == ("sla_escalated", "lead", LEAD)
    assert event.detail["owner"] == ANNA
    (out,) = plan.outgoing
    assert (out.kind, out.to) == ("escalation", (LEAD,))
    text = mail_text(plan)
    assert "in ritardo di 4,5 ore lavorative" in text  # 8.5 h waited, 4 h promised
    assert "È assegnata a Anna Riva" in text
    assert kinds([case], rome(10, 17)) == []  # once per waiting period


def test_lead_falls_back_to_an_available_lead_agent() -> None:
    team = [
        {"name": "Ugo Away", "address": "ugo@examplenet.it", "lead": True, "away": True},
        {"name": "Vera Capo", "address": "vera@examplenet.it", "lead": True},
        *AGENTS,
    ]
    config = settings(team, lead_address="")
    assert sla.lead_address(config, date(2026, 12, 9)) == "vera@examplenet.it"
    _, (plan,) = tick(clock(rome(9, 9)), rome(9, 17), config=config)
    assert plan.outgoing[0].to == ("vera@examplenet.it",)


def test_reassign_picks_another_available_agent() -> None:
    """Anna's case goes to Carla: Bruno is flagged away and Dario is inside his away window."""
    config = settings(escalate="reassign")
    _, (plan,) = tick(clock(rome(9, 9)), rome(9, 17), config=config)
    assert plan.case_update["owner"] == CARLA
    assert plan.expect_owner == ANNA  # a concurrent #take or #assign wins
    assert plan.meta == {"rr_last": CARLA}
    assert [e.kind for e in plan.events] == ["owner_changed", "sla_escalated"]
    escalated = plan.events[1].detail
    assert (escalated["mode"], escalated["previous"], escalated["owner"]) == (
        "reassign", ANNA, CARLA
    )  # fmt: skip
    (out,) = plan.outgoing
    assert out.to == (CARLA,)
    assert "Anna Riva was handling it; it is now assigned to Carla Neri." in mail_text(plan)


def test_reassign_spreads_several_overdue_cases() -> None:
    """Counters move within one tick: least_open does not pile both cases on one agent."""
    team = [*AGENTS, {"name": "Elsa Moro", "address": "elsa@examplenet.it", "languages": ["en"]}]
    config = from_mapping(
        {"agents": team, "owners": {"policy": "least_open"},
         "sla": {"lead_address": LEAD, "escalate": "reassign"}}
    )  # fmt: skip
    first, second = clock(rome(9, 9)), replace(clock(rome(9, 9)), number=1043)
    actions = sla.due([first, second], now=rome(9, 17), hours=OFFICE, sla=config.sla)
    rows = {1042: row(first), 1043: {**row(second), "number": 1043}}
    plans = sla.plan_actions(actions, rows, env(rome(9, 17), config), agents=config.agents,
                             open_counts={CARLA: 0, "elsa@examplenet.it": 0})  # fmt: skip
    assert [p.case_update["owner"] for p in plans] == [CARLA, "elsa@examplenet.it"]


def test_reassign_falls_back_to_the_lead_when_nobody_is_available() -> None:
    alone = [a for a in AGENTS if a["address"] != CARLA]
    config = settings(alone, escalate="reassign")
    _, (plan,) = tick(clock(rome(9, 9)), rome(9, 17), config=config)
    assert "owner" not in plan.case_update and plan.expect_owner is ANY_OWNER
    assert plan.outgoing[0].to == (LEAD,)
    assert "told the lead" in plan.events[0].detail["target_reason"]


def test_message_ids_are_stable_within_a_waiting_period() -> None:
    """A tick repeated after a crash queues the same Message-ID, which the outbox dedups."""
    case = clock(rome(9, 9))
    _, (first,) = tick(case, rome(9, 12))
    _, (again,) = tick(case, rome(9, 12, 1))
    assert first.outgoing[0].message_id == again.outgoing[0].message_id
    later = replace(case, last_customer_at=at(10, 9), first_response_at=at(9, 15),
                    last_agent_at=at(9, 15), state="open")  # fmt: skip
    _, (next_period,) = tick(later, rome(10, 12))
    assert next_period.outgoing[0].message_id != first.outgoing[0].message_id


@pytest.mark.parametrize(
    ("when", "lang", "expected"),
    [
        (rome(9, 9, 5), "it", "oggi alle 9:05"),
        (rome(10, 14), "it", "domani alle 14:00"),
        (rome(8, 17), "en", "yesterday at 17:00"),
        (rome(23, 9, 12, month=11), "it", "lunedì 23 novembre alle 9:12"),
        (datetime(2027, 1, 4, 9, tzinfo=ROME), "en", "Monday 4 January 2027 at 9:00"),
        (rome(9, 13), "de", "today at 13:00"),
    ],
)
def test_spoken_time(when: datetime, lang: str, expected: str) -> None:
    assert sla.spoken_time(when, rome(9, 12), lang) == expected


def test_actions_carry_the_waiting_period() -> None:
    (action,) = sla.due([clock(rome(9, 9))], now=rome(9, 12), hours=OFFICE, sla=DEFAULT.sla)
    assert action == SlaAction(1042, "remind", 3.0, action.reason, rome(9, 9))
    assert "remind after 3" in action.reason


# -- the runner against a real store -------------------------------------------------------


def _insert_case(store: Store) -> None:
    """Case 1042 opened Wednesday 09:00; the customer nudged at 10:30 with no answer yet."""
    store.db.execute(
        "INSERT INTO cases(number, subject, customer, customer_name, owner, state, language, "
        "created_at, last_customer_at) VALUES(1042, 'La fibra non funziona', "
        "'mario@example.com', 'Mario Bianchi', ?, 'new', 'it', ?, ?)",
        [ANNA, at(9, 9), at(9, 10, 30)],
    )
    for number, when in ((1, at(9, 9)), (2, at(9, 10, 30))):
        store.db.execute(
            "INSERT INTO messages(message_id, case_number, direction, role, created_at) "
            "VALUES(?, 1042, 'in', 'customer', ?)",
            [f"m{number}@example.com", when],
        )


def _counts(store: Store) -> tuple[list[str], list[tuple[str, str]]]:
    events = [r["kind"] for r in store.query("SELECT kind FROM events ORDER BY id")]
    outbox = [
        (r["kind"], json.loads(r["recipients"])[0])
        for r in store.query("SELECT kind, recipients FROM outbox ORDER BY id")
    ]
    return events, outbox


def test_run_sla_against_a_real_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "mailcare.db")
    engine = Engine(DEFAULT, SECRET, TEMPLATES, OFFICE)
    _insert_case(store)
    assert sla.run_sla(store, engine, at(9, 11, 59)) == []
    # The clock runs from the first unanswered mail (09:00), not from the 10:30 nudge.
    (plan,) = sla.run_sla(store, engine, at(9, 12))
    assert plan.case == 1042
    assert _counts(store) == (["sla_reminder"], [("reminder", ANNA)])
    assert sla.run_sla(store, engine, at(9, 12)) == []  # idempotent
    assert sla.run_sla(store, engine, at(9, 23)) == []  # night
    (plan,) = sla.run_sla(store, engine, at(9, 17))
    assert _counts(store) == (
        ["sla_reminder", "sla_escalated"],
        [("reminder", ANNA), ("escalation", LEAD)],
    )
    assert sla.run_sla(store, engine, at(9, 17)) == []
    assert sla.run_sla(store, engine, at(10, 17)) == []  # once per waiting period
    case = store.case(1042)
    assert case is not None
    assert (case["reminded_at"], case["escalated_at"], case["owner"]) == (
        at(9, 12),
        at(9, 17),
        ANNA,
    )
    (detail,) = [json.loads(r["detail"]) for r in store.case_events(1042) if r["kind"] ==
                 "sla_escalated"]  # fmt: skip
    assert detail["to"] == LEAD and detail["waiting_hours"] == 8.0
    store.close()


def test_run_sla_reassigns_and_a_reopened_case_counts_from_reopening(tmp_path: Path) -> None:
    """A closed case reopened by the customer on Thursday waits from Thursday, not from
    its creation; the escalation hands it from Anna to Carla in the database."""
    store = Store(tmp_path / "mailcare.db")
    engine = Engine(settings(escalate="reassign"), SECRET, TEMPLATES, OFFICE)
    _insert_case(store)
    store.db.execute("UPDATE cases SET state = 'open', last_customer_at = ? WHERE number = 1042",
                     [at(10, 9)])  # fmt: skip
    store.db.execute(
        "INSERT INTO messages(message_id, case_number, direction, role, created_at) "
        "VALUES('m3@example.com', 1042, 'in', 'customer', ?)",
        [at(10, 9)],
    )
    store.db.execute(
        "INSERT INTO events(case_number, at, kind) VALUES(1042, ?, 'reopened')", [at(10, 9)]
    )
    assert sla.run_sla(store, engine, at(10, 11, 59)) == []
    (plan,) = sla.run_sla(store, engine, at(10, 17))
    assert plan.case_update["owner"] == CARLA
    case = store.case(1042)
    assert case is not None and case["owner"] == CARLA
    assert store.meta("rr_last") == CARLA
    events, outbox = _counts(store)
    assert events[-2:] == ["owner_changed", "sla_escalated"]
    assert outbox == [("escalation", CARLA)]
    store.close()
