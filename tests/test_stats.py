"""`mailcare stats`: a small but realistic week in a real store, checked number by number.

The office is the default one (Rome, Monday to Friday 09:00-18:00, Italian holidays); the
week of 16-22 November 2026 has no holiday, and "now" is Monday 23 November at 10:00.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from mailcare.cli import main
from mailcare.config import HoursSection
from mailcare.hours import BusinessHours
from mailcare.stats import (
    MAIL_SLOTS_SQL,
    CaseRow,
    Rows,
    WorkClock,
    collect,
    format_text,
    parse_since,
    summarize,
)
from mailcare.store import Store

ROME = ZoneInfo("Europe/Rome")
OFFICE = BusinessHours(HoursSection())
SCRIPT_SUBJECT = "<script>alert(1)</script> & co"


def at(day: int, hour: int, minute: int = 0, month: int = 11) -> float:
    """An instant in Rome, November 2026 unless told."""
    return datetime(2026, month, day, hour, minute, tzinfo=ROME).timestamp()


NOW = at(23, 10)
WEEK = 7 * 86400.0
SINCE = NOW - WEEK  # Monday 16 November, 10:00

GIULIA = "giulia.rossi@examplenet.it"
LUCA = "luca.neri@examplenet.it"


# -- a week of history, written with plain SQL -------------------------------------------------


def insert(store: Store, table: str, row: Mapping[str, Any]) -> None:
    columns = ", ".join(row)
    marks = ", ".join("?" * len(row))
    store.db.execute(f"INSERT INTO {table}({columns}) VALUES({marks})", list(row.values()))


def case(store: Store, number: int, created: float, **fields: Any) -> None:
    row = {
        "number": number,
        "subject": f"case {number}",
        "customer": f"customer{number}@example.com",
        "state": "open",
        "language": "it",
        "created_at": created,
        "last_customer_at": created,
        **fields,
    }
    insert(store, "cases", row)


_message_ids = iter(range(1, 10_000))


def mail(store: Store, number: int | None, direction: str, when: float, kind: str = "") -> None:
    insert(store, "messages", {
        "message_id": f"m{next(_message_ids)}@example.com",
        "case_number": number,
        "direction": direction,
        "role": "customer" if direction == "in" else "mailcare",
        "kind": kind,
        "created_at": when,
    })  # fmt: skip


def event(store: Store, number: int | None, when: float, name: str, /, **detail: Any) -> None:
    insert(store, "events", {
        "case_number": number, "at": when, "kind": name, "actor": "mailcare",
        "detail": json.dumps(detail),
    })  # fmt: skip


def outbox(store: Store, number: int | None, created: float, status: str) -> None:
    insert(store, "outbox", {
        "case_number": number, "kind": "ack", "message_id": f"o{next(_message_ids)}@x",
        "envelope_from": "assistenza@examplenet.it", "recipients": "[]", "data": b"",
        "status": status, "next_at": created, "created_at": created,
    })  # fmt: skip


def scoped(
    store: Store,
    number: int,
    created: float,
    kind: str,
    category: str,
    *,
    event_too: bool = True,
    **fields: Any,
) -> None:
    """A case opened by a customer's mail, with mailcare's scope decision as it made it."""
    case(store, number, created, scope_kind=kind, scope_category=category, **fields)
    mail(store, number, "in", created)
    if event_too:
        event(store, number, created, "scope", kind=kind, category=category, confidence=0.9)


def build_history(store: Store) -> None:
    """Ten cases around the week of 16 November; see the expectations in the tests."""
    # Before the period: still unanswered (Friday 13, 17:00), and one closed on Monday 16.
    scoped(store, 1000, at(13, 17), "in", "connettivita", owner=GIULIA)
    mail(store, 1000, "out", at(13, 17), "ack")
    scoped(
        store,
        1009,
        at(12, 10),
        "in",
        "connettivita",
        owner=LUCA,
        state="closed",
        first_response_at=at(12, 11),
        closed_at=at(16, 12),
    )
    # In the period.
    scoped(
        store,
        1001,
        at(16, 11),
        "in",
        "connettivita",
        owner=GIULIA,
        state="closed",
        first_response_at=at(16, 12, 30),
        closed_at=at(17, 11),
    )
    mail(store, 1001, "out", at(16, 11), "ack")
    mail(store, 1001, "out", at(16, 12, 30), "relay")
    scoped(
        store,
        1002,
        at(16, 17, 30),
        "in",
        "fatturazione",
        owner=LUCA,
        language="en",
        first_response_at=at(17, 9, 30),
    )
    mail(store, 1002, "out", at(16, 17, 30), "ack")
    mail(store, 1002, "out", at(17, 9, 30), "relay")
    scoped(store, 1008, at(17, 14), "route", "amministrazione", state="routed")
    mail(store, 1008, "out", at(17, 14), "route_customer")
    # Unsure at first, then corrected by Giulia: the row says "in", the decision "unsure".
    case(
        store,
        1003,
        at(18, 10),
        owner=GIULIA,
        state="waiting",
        scope_kind="in",
        scope_category="connettivita",
        first_response_at=at(18, 15, 30),
    )
    event(store, 1003, at(18, 10), "scope", kind="unsure", category="connettivita")
    event(store, 1003, at(18, 11), "scope_corrected", kind="in", category="connettivita")
    mail(store, 1003, "in", at(18, 10))
    mail(store, 1003, "out", at(18, 10), "ack")
    mail(store, 1003, "out", at(18, 15, 30), "relay")
    mail(store, 1003, "in", at(19, 9))
    # An out-of-office opened a case: counted as new and automatic, not as a decision.
    scoped(store, 1007, at(19, 11), "unsure", "", state="new", is_auto=1)
    scoped(store, 1004, at(20, 17), "out", "smartphone", owner=LUCA, state="redirected")
    mail(store, 1004, "out", at(20, 17), "redirect")
    # No scope event (older data): the case row's decision is used.
    scoped(
        store,
        1005,
        at(21, 10),
        "in",
        "connettivita",
        owner=GIULIA,
        event_too=False,
        first_response_at=at(23, 9, 30),
    )
    mail(store, 1005, "out", at(21, 10), "ack")
    mail(store, 1005, "out", at(23, 9, 30), "relay")
    scoped(
        store,
        1006,
        at(22, 20),
        "unsure",
        "",
        owner=LUCA,
        state="new",
        language="en",
        subject=SCRIPT_SUBJECT,
    )
    mail(store, 1006, "out", at(22, 20), "ack")
    _protection_history(store)


def _protection_history(store: Store) -> None:
    for when, reason in (
        (at(17, 8), "auto-submitted"),
        (at(19, 3), "auto-submitted"),
        (at(21, 4), "precedence"),
        (at(10, 4), "precedence"),
    ):
        event(store, None, when, "suppressed_autoreply", reason=reason, to="bot@example.com")
    event(store, 1000, at(10, 12), "scope_corrected", kind="out", category="smartphone")
    event(store, 1001, at(17, 12), "bounce", permanent=["x@example.com"], temporary=[])
    event(store, None, at(18, 2), "bounce_unverified", failed=["y@example.com"])
    event(store, 1002, at(19, 15), "agent_auth_failed", reason="dkim=fail")
    event(store, 1002, at(20, 9), "held_other_agent", owner=LUCA)
    event(store, 1005, at(21, 12), "held_other_agent", owner=GIULIA)
    store.db.execute("INSERT INTO suppressions VALUES('x@example.com', ?, 'bounce')", [NOW + 86400])
    store.db.execute("INSERT INTO suppressions VALUES('z@example.com', ?, 'bounce')", [NOW - 86400])
    outbox(store, 1006, at(22, 20), "pending")
    outbox(store, 1005, at(23, 9, 30), "pending")
    outbox(store, 1004, at(20, 17), "failed")
    outbox(store, 1000, at(13, 17), "failed")
    outbox(store, 1001, at(16, 11), "sent")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "mailcare.db")
    with db.batch():
        build_history(db)
    yield db
    db.close()


@pytest.fixture
def summary(store: Store) -> dict[str, Any]:
    return summarize(collect(store, SINCE, NOW), OFFICE, NOW, promise_hours=4.0)


# -- parse_since -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86400.0), ("7d", 604800.0), ("30d", 2592000.0), ("2w", 1209600.0),
     (" 7D ", 604800.0), ("1 h", 3600.0)],
)  # fmt: skip
def test_parse_since_accepts_hours_days_weeks(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "0d", "-1d", "1.5d", "7 days", "1y"])
def test_parse_since_names_the_bad_value(text: str) -> None:
    with pytest.raises(ValueError, match=f"{text!r} is not a period"):
        parse_since(text)


def test_parse_since_caps_the_period_at_ten_years() -> None:
    assert parse_since("3660d") == 3660 * 86400
    with pytest.raises(ValueError, match="'523w' is too long a period"):
        parse_since("523w")


# -- the summary, exactly --------------------------------------------------------------------


def test_volume(summary: dict[str, Any]) -> None:
    assert summary["volume"] == {
        "mails_in": 9,
        "mails_out": 11,
        "new_cases": 8,
        "automatic_cases": 1,
        "by_language": {"it": 6, "en": 2},
    }


def test_scope_counts_first_decisions_and_corrections(summary: dict[str, Any]) -> None:
    """Case 1003 was unsure before an agent corrected it: it counts as unsure, plus one
    correction; 1005 has no scope event and falls back to its row; the automatic 1007 is
    no decision at all; the correction before the period is not counted."""
    assert summary["scope"] == {
        "decided": 7,
        "by_kind": {"in": 3, "unsure": 2, "out": 1, "route": 1},
        "by_category": {"connettivita": 3, "amministrazione": 1, "fatturazione": 1,
                        "smartphone": 1},
        "unsure": 2,
        "unsure_share": 0.29,
        "corrections": 1,
        "corrections_by_kind": {"in": 1},
    }  # fmt: skip


def test_first_response_in_working_hours(summary: dict[str, Any]) -> None:
    """1001: 1.5 h; 1002: Monday 17:30 to Tuesday 09:30 is 0.5 + 0.5 = 1 h; 1003: 5.5 h;
    1005: Saturday 10:00 to Monday 09:30 is 0.5 h. Unanswered: 1000 since Friday 13 at
    17:00 (1 + 5 x 9 + 1 = 47 h) and 1006 since Sunday evening (1 h); the routed,
    redirected and automatic cases wait for nobody."""
    first = summary["first_response"]
    assert first == {
        "answered": 4,
        "p50": 1.25,
        "p90": 4.3,
        "p95": 4.9,
        "promise_hours": 4.0,
        "within_promise": 3,
        "unanswered_over_promise": 1,
        "unanswered": 2,
        "oldest_unanswered": [
            {"case": 1000, "owner": GIULIA, "age_hours": 47.0, "subject": "case 1000"},
            {"case": 1006, "owner": LUCA, "age_hours": 1.0, "subject": SCRIPT_SUBJECT},
        ],
        "histogram": {"bin_hours": 1.0, "counts": [1, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
                      "over": 0},
    }  # fmt: skip


def test_resolution_of_cases_closed_in_the_period(summary: dict[str, Any]) -> None:
    """1001: Monday 11:00 to Tuesday 11:00 is 7 + 2 = 9 h; 1009, opened before the period:
    Thursday 12 at 10:00 to Monday 16 at 12:00 is 8 + 9 + 3 = 20 h."""
    assert summary["resolution"] == {"closed": 2, "p50": 14.5, "p90": 18.9, "p95": 19.45}


def test_owners(summary: dict[str, Any]) -> None:
    assert summary["owners"] == [
        {"owner": GIULIA, "open": 3, "new": 3, "median_first_response": 1.5},
        {"owner": LUCA, "open": 2, "new": 3, "median_first_response": 1.0},
        {"owner": None, "open": 1, "new": 1, "median_first_response": None},
    ]


def test_protection_counters(summary: dict[str, Any]) -> None:
    assert summary["suppressed"] == {
        "total": 3,
        "by_reason": {"auto-submitted": 2, "precedence": 1},
        "addresses_now": 1,
    }
    assert summary["bounces"] == {"recorded": 1, "unverified": 1}
    assert summary["holds"] == {"agent_auth_failed": 1, "held_other_agent": 2}
    # Pending since Sunday 20:00: 14 real hours (the outbox does not keep office hours).
    assert summary["outbox"] == {"pending": 2, "oldest_pending_hours": 14.0, "failed": 1}


def test_daily_series(summary: dict[str, Any]) -> None:
    days = {
        d["day"]: (d["mails_in"], d["mails_out"], d["new_cases"], d["scope"])
        for d in summary["daily"]
    }
    assert days == {
        "2026-11-16": (2, 3, 2, {"in": 2}),
        "2026-11-17": (1, 2, 1, {"route": 1}),
        "2026-11-18": (1, 2, 1, {"unsure": 1}),
        "2026-11-19": (2, 0, 1, {}),
        "2026-11-20": (1, 1, 1, {"out": 1}),
        "2026-11-21": (1, 1, 1, {"in": 1}),
        "2026-11-22": (1, 1, 1, {"unsure": 1}),
        "2026-11-23": (0, 1, 0, {}),
    }
    assert sum(d["mails_in"] for d in summary["daily"]) == summary["volume"]["mails_in"]


def test_period(summary: dict[str, Any]) -> None:
    assert summary["period"] == {
        "since": SINCE, "until": NOW, "since_text": "2026-11-16 10:00",
        "until_text": "2026-11-23 10:00", "first_day": "2026-11-16", "last_day": "2026-11-23",
        "days": 7.0, "timezone": "Europe/Rome",
    }  # fmt: skip


def test_summary_without_promise_leaves_promise_fields_out(store: Store) -> None:
    summary = summarize(collect(store, SINCE, NOW), OFFICE, NOW)
    first = summary["first_response"]
    assert first["promise_hours"] is None
    assert "within_promise" not in first and "unanswered_over_promise" not in first
    assert "within the promise" not in format_text(summary)


def test_empty_store(tmp_path: Path) -> None:
    empty = Store(tmp_path / "empty.db")
    summary = summarize(collect(empty, SINCE, NOW), OFFICE, NOW, promise_hours=4.0)
    assert summary["volume"]["new_cases"] == 0
    assert summary["first_response"]["p50"] is None
    assert summary["scope"]["unsure_share"] is None
    assert summary["owners"] == []
    assert len(summary["daily"]) == 8
    assert "p50 / p90 / p95" in format_text(summary)


def test_summarize_on_literal_rows() -> None:
    """The pure layer alone: a Saturday mail answered on Monday at 10:00 took 1 hour."""
    row = CaseRow(7, "a@x", "open", "de", "in", "c", False, "s", at(21, 9), at(23, 10), None)
    rows = Rows(
        since=at(20, 0),
        new_cases=[row],
        unanswered=[],
        closed=[],
        open_by_owner={"a@x": 1},
        decisions={},
        corrections={},
        mail_slots=[("in", at(21, 9), 1)],
        events={},
        suppressed_reasons={},
        suppressed_addresses=0,
        outbox_pending=0,
        oldest_pending=None,
        outbox_failed=0,
    )
    summary = summarize(rows, OFFICE, at(23, 12), promise_hours=2.0)
    assert summary["first_response"]["p50"] == 1.0
    assert summary["first_response"]["answered"] == 1
    assert summary["first_response"]["within_promise"] == 1
    assert summary["first_response"]["histogram"]["bin_hours"] == 0.5
    assert summary["volume"]["by_language"] == {"de": 1}
    assert [d["mails_in"] for d in summary["daily"]] == [0, 1, 0, 0]


# -- the working-hours clock agrees with BusinessHours -------------------------------------------

_OFFICES = [
    OFFICE,
    BusinessHours(HoursSection(timezone="America/New_York", days=(0, 1, 2, 3, 4, 5),
                               start="08:30", end="24:00", holidays_country="US")),
    BusinessHours(HoursSection(timezone="Asia/Kathmandu", days=(6, 0, 1, 2, 3), start="00:00",
                               end="17:15", holidays_country="")),
]  # fmt: skip
_BASE = datetime(2026, 3, 1, tzinfo=UTC).timestamp()  # a month with DST changes


@settings(max_examples=60, deadline=None)
@given(
    office=st.sampled_from(_OFFICES),
    start=st.floats(0, 40 * 86400),
    length=st.floats(0, 20 * 86400),
)
def test_work_clock_matches_business_hours(
    office: BusinessHours, start: float, length: float
) -> None:
    a, b = _BASE + start, _BASE + start + length
    clock = WorkClock(office, a, b)
    expected = office.between(datetime.fromtimestamp(a, UTC), datetime.fromtimestamp(b, UTC))
    assert clock.between(a, b) == pytest.approx(expected, abs=1e-6)
    assert clock.day(a) == datetime.fromtimestamp(a, office.zone).date()


def test_work_clock_over_a_holiday_and_a_weekend() -> None:
    """Thursday 24 December 17:00 to Monday 28 December 10:00 in Rome: Christmas and Santo
    Stefano are closed and the 26th is a Saturday, so 1 + 1 working hours."""
    clock = WorkClock(OFFICE, at(24, 17, month=12), at(28, 10, month=12))
    assert clock.between(at(24, 17, month=12), at(28, 10, month=12)) == pytest.approx(2.0)
    assert clock.between(at(28, 10, month=12), at(24, 17, month=12)) == 0.0


# -- reading it ------------------------------------------------------------------------------------


def test_format_text_is_an_aligned_table(summary: dict[str, Any]) -> None:
    text = format_text(summary)
    lines = text.splitlines()
    assert lines[0] == "mailcare stats 2026-11-16 10:00 - 2026-11-23 10:00 (7 days, Europe/Rome)"
    values = {line.split("  ")[1].strip(): line for line in lines if line.startswith("  ")}
    assert values["mails in"].split()[-1] == "9"
    assert values["unsure"].endswith("2 of 7 (28.6%)")
    assert values["p50 / p90 / p95"].count(" h") == 3
    assert "1.25 h / 4.30 h / 4.90 h" in text
    assert "within the promise (4 h)" in text and "3 of 4 (75.0%)" in text
    assert f"47.00 h, {GIULIA}: case 1000" in text
    assert f"1.00 h, {LUCA}: {SCRIPT_SUBJECT}" in text
    assert "auto-submitted 2, precedence 1" in text
    # Every label/value row of the sections puts its value in the same column.
    rows = [line for line in lines[: lines.index("owners")] if line.startswith("  ")]
    column = values["mails in"].index("9")
    assert len(rows) == 27
    assert all(row[column - 1] == " " and row[column] != " " for row in rows)


def test_format_text_owner_table(summary: dict[str, Any]) -> None:
    lines = format_text(summary).splitlines()
    table = lines[lines.index("owners") + 1 :]
    assert table[0].split() == ["owner", "open", "new", "median", "1st", "response"]
    assert table[1].split() == [GIULIA, "3", "3", "1.50", "h"]
    assert table[3].split() == ["(unassigned)", "1", "1", "-"]
    assert len({len(line) for line in table[:3]}) == 1  # right-aligned to the same edge


# -- the command -----------------------------------------------------------------------------------


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "mailcare.toml"
    path.write_text(f'[mailcare]\nstate_dir = "{tmp_path}"\n{extra}', encoding="utf-8")
    return path


@pytest.fixture
def frozen_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands read the clock through `time.time()`; the history is fixed in 2026."""
    monkeypatch.setattr("mailcare.cli.time", types.SimpleNamespace(time=lambda: NOW))


@pytest.mark.usefixtures("frozen_cli")
def test_stats_command_json(store: Store, summary: dict[str, Any], tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = CliRunner().invoke(main, ["stats", "--config", str(config), "--since", "7d", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == json.loads(json.dumps(summary))


@pytest.mark.usefixtures("frozen_cli")
def test_stats_command_text(store: Store, summary: dict[str, Any], tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = CliRunner().invoke(main, ["stats", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output == format_text(summary)


@pytest.mark.usefixtures("frozen_cli")
def test_stats_command_rejects_a_bad_period(store: Store, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = CliRunner().invoke(main, ["stats", "--config", str(config), "--since", "7x"])
    assert result.exit_code == 2
    assert "'7x' is not a period" in result.output


@pytest.mark.usefixtures("frozen_cli")
def test_stats_command_longer_period(store: Store, tmp_path: Path) -> None:
    """Two weeks take in case 1000 and 1009 and the older suppression."""
    config = write_config(tmp_path)
    result = CliRunner().invoke(main, ["stats", "--config", str(config), "--since", "2w", "--json"])
    data = json.loads(result.output)
    assert data["volume"]["new_cases"] == 10
    assert data["suppressed"]["total"] == 4
    assert data["scope"]["corrections_by_kind"] == {"in": 1, "out": 1}
    assert len(data["daily"]) == 15


def test_stats_command_without_a_database(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = CliRunner().invoke(main, ["stats", "--config", str(config)])
    assert result.exit_code == 1
    assert "no database" in result.output
    assert "Traceback" not in result.output


def test_mail_counts_read_the_index_not_the_stored_mails(store: Store) -> None:
    """Each messages row carries the raw mail before created_at: a table scan would read
    every stored mail, so the per-day counts must come from the covering index."""
    plan = " ".join(
        str(r[-1]) for r in store.db.execute(f"EXPLAIN QUERY PLAN {MAIL_SLOTS_SQL}", [SINCE])
    )
    assert "USING COVERING INDEX messages_created" in plan


def test_half_open_period_boundaries(store: Store) -> None:
    """A case opened exactly at `since` belongs to the period (>=)."""
    summary = summarize(collect(store, at(16, 11), NOW), OFFICE, NOW)
    assert summary["volume"]["new_cases"] == 8
    later = summarize(collect(store, at(16, 11) + 1, NOW), OFFICE, NOW)
    assert later["volume"]["new_cases"] == 7


def test_numbers_do_not_depend_on_the_time_zone_of_the_machine(
    store: Store, summary: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setenv("TZ", "Pacific/Auckland")
    time.tzset()
    try:
        again = summarize(collect(store, SINCE, NOW), OFFICE, NOW, promise_hours=4.0)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert again == summary


def test_unanswered_subjects_are_one_printable_line() -> None:
    """A subject is the customer's text: no terminal escape or line break reaches the table."""
    row = CaseRow(
        8,
        None,
        "new",
        "it",
        "unsure",
        "",
        0,
        "Ciao\x1b[2J\r\nBcc: x\t" + "y" * 300,
        at(20, 9),
        None,
        None,
    )
    rows = Rows(at(20, 0), [row], [row], [], {None: 1}, {}, {}, [], {}, {}, 0, 0, None, 0)
    [item] = summarize(rows, OFFICE, at(23, 12))["first_response"]["oldest_unanswered"]
    assert item["subject"] == "Ciao [2J Bcc: x " + "y" * 84
    assert item["age_hours"] == 12.0  # Friday 09:00-18:00 and Monday 09:00-12:00


def test_period_days_cover_since_to_now() -> None:
    start = datetime(2026, 11, 16, 23, 30, tzinfo=ROME)
    rows = Rows(start.timestamp(), [], [], [], {}, {}, {}, [], {}, {}, 0, 0, None, 0)
    summary = summarize(rows, OFFICE, (start + timedelta(hours=1)).timestamp())
    assert [d["day"] for d in summary["daily"]] == ["2026-11-16", "2026-11-17"]
