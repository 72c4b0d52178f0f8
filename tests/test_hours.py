"""Business hours, holidays and the SLA clock."""

from __future__ import annotations

import time as clock
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailcare.config import HoursSection, SlaSection
from mailcare.hours import BusinessHours

ROME = ZoneInfo("Europe/Rome")
OFFICE = BusinessHours(HoursSection())


def rome(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=ROME)


def office(**fields: Any) -> BusinessHours:
    return BusinessHours(HoursSection(**fields))


def test_default_hours_and_sla_windows() -> None:
    """Defaults: Monday-Friday 09:00-18:00 in Rome, Italian holidays, 4-hour first response."""
    section = HoursSection()
    assert (section.timezone, section.days, section.start, section.end) == (
        "Europe/Rome",
        (0, 1, 2, 3, 4),
        "09:00",
        "18:00",
    )
    assert section.holidays_country == "IT" and section.extra_holidays == ()
    sla = SlaSection()
    assert (sla.first_response_hours, sla.remind_after_hours, sla.escalate_after_hours) == (
        4.0,
        3.0,
        8.0,
    )
    start = rome(2026, 11, 24, 9)  # a Tuesday
    assert OFFICE.add(start, sla.first_response_hours) == rome(2026, 11, 24, 13)
    assert OFFICE.add(start, sla.escalate_after_hours) == rome(2026, 11, 24, 17)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (rome(2026, 11, 24, 10), True),
        (rome(2026, 11, 24, 9), True),
        (rome(2026, 11, 24, 8, 59), False),
        (rome(2026, 11, 24, 17, 59), True),
        (rome(2026, 11, 24, 18), False),
        (rome(2026, 11, 28, 11), False),  # Saturday
        (rome(2026, 12, 8, 11), False),  # Immaculate Conception, a Tuesday
        (rome(2026, 4, 6, 11), False),  # Easter Monday
        (datetime(2026, 11, 24, 8, 30, tzinfo=UTC), True),  # 09:30 in Rome
    ],
)
def test_is_open(when: datetime, expected: bool) -> None:
    assert OFFICE.is_open(when) is expected


def test_extra_holidays_and_regional_holidays() -> None:
    closed = office(extra_holidays=(date(2026, 11, 24),))
    assert not closed.is_open(rome(2026, 11, 24, 10))
    assert OFFICE.is_open(rome(2026, 6, 29, 10))  # Saints Peter and Paul: Rome only
    assert not office(holidays_country="IT-RM").is_open(rome(2026, 6, 29, 10))
    assert office(holidays_country="").is_open(rome(2026, 12, 8, 10))


def test_add_within_a_day_and_across_nights_and_weekends() -> None:
    assert OFFICE.add(rome(2026, 11, 24, 7), 4) == rome(2026, 11, 24, 13)
    assert OFFICE.add(rome(2026, 11, 24, 16), 2) == rome(2026, 11, 24, 18)
    assert OFFICE.add(rome(2026, 11, 24, 16), 3) == rome(2026, 11, 25, 10)
    assert OFFICE.add(rome(2026, 11, 27, 17), 4) == rome(2026, 11, 30, 12)  # Fri -> Mon
    assert OFFICE.add(rome(2026, 11, 28, 12), 1) == rome(2026, 11, 30, 10)  # from Saturday


def test_add_zero_hours_starts_the_clock_at_the_next_opening() -> None:
    assert OFFICE.add(rome(2026, 11, 24, 11), 0) == rome(2026, 11, 24, 11)
    assert OFFICE.add(rome(2026, 11, 24, 20), 0) == rome(2026, 11, 25, 9)


def test_add_skips_holidays() -> None:
    assert OFFICE.add(rome(2026, 12, 7, 17), 2) == rome(2026, 12, 9, 10)


def test_add_result_is_in_the_office_zone() -> None:
    due = OFFICE.add(datetime(2026, 11, 24, 8, 0, tzinfo=UTC), 1)
    assert due.tzinfo == ROME and due == rome(2026, 11, 24, 10)


def test_dst_day_counts_real_hours() -> None:
    """On 29 March 2026 Rome skips 02:00-03:00: a round-the-clock day is 23 hours long."""
    always = office(days=(0, 1, 2, 3, 4, 5, 6), start="00:00", end="24:00", holidays_country="")
    start = rome(2026, 3, 28, 12)
    due = always.add(start, 24)
    assert due == rome(2026, 3, 29, 13)
    # Same-zone subtraction is wall-clock time (25 h); in UTC it is the 24 h that passed.
    assert due.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=24)
    assert always.between(rome(2026, 3, 29), rome(2026, 3, 30)) == 23
    assert always.between(rome(2026, 10, 25), rome(2026, 10, 26)) == 25


def test_between() -> None:
    assert OFFICE.between(rome(2026, 11, 27, 17), rome(2026, 11, 30, 10)) == 2
    assert OFFICE.between(rome(2026, 11, 24, 7), rome(2026, 11, 24, 20)) == 9
    assert OFFICE.between(rome(2026, 11, 24, 12), rome(2026, 11, 24, 12, 30)) == 0.5
    assert OFFICE.between(rome(2026, 11, 24, 12), rome(2026, 11, 24, 11)) == 0
    assert OFFICE.between(rome(2026, 12, 7, 17), rome(2026, 12, 9, 10)) == 2
    assert OFFICE.between(rome(2026, 11, 28, 9), rome(2026, 11, 29, 20)) == 0


@settings(max_examples=60, deadline=None)
@given(
    start=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31)),
    minutes=st.integers(min_value=0, max_value=60 * 60),
)
def test_between_undoes_add(start: datetime, minutes: int) -> None:
    begin = start.replace(tzinfo=ROME)
    due = OFFICE.add(begin, minutes / 60)
    assert OFFICE.between(begin, due) == pytest.approx(minutes / 60)
    assert due >= begin


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        OFFICE.is_open(datetime(2026, 11, 24, 10))
    with pytest.raises(ValueError, match="timezone-aware"):
        OFFICE.add(datetime(2026, 11, 24, 10), 1)


def test_negative_hours_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        OFFICE.add(rome(2026, 11, 24, 10), -1)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"holidays_country": "XX"}, "holidays_country"),
        ({"holidays_country": "IT-ZZ"}, "holidays_country"),
        ({"days": ()}, "never open"),
        ({"start": "18:00", "end": "09:00"}, "never open"),
    ],
)
def test_bad_calendars_fail_at_start(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        office(**fields)


def test_promise_texts() -> None:
    start = rome(2026, 11, 24, 9)
    assert OFFICE.promise(start, 4, "it") == (
        "entro 4 ore lavorative (entro martedì 24 novembre alle 13:00)"
    )
    assert OFFICE.promise(start, 4, "en") == (
        "within 4 working hours (by Tuesday 24 November, 13:00)"
    )
    assert OFFICE.promise(start, 1, "it") == (
        "entro 1 ora lavorativa (entro martedì 24 novembre alle 10:00)"
    )
    assert OFFICE.promise(start, 1.5, "en") == (
        "within 1.5 working hours (by Tuesday 24 November, 10:30)"
    )
    assert OFFICE.promise(start, 1.5, "it").startswith("entro 1,5 ore lavorative")
    assert OFFICE.promise(start, 4, "de") == OFFICE.promise(start, 4, "en")


def test_promise_names_the_year_when_it_changes() -> None:
    text = OFFICE.promise(rome(2026, 12, 31, 17), 4, "it")
    assert text == "entro 4 ore lavorative (entro lunedì 4 gennaio 2027 alle 12:00)"


def test_fast_enough_per_new_case() -> None:
    start = rome(2026, 1, 1)
    began = clock.perf_counter()
    for step in range(2000):
        OFFICE.add(start + timedelta(hours=step * 7), 8)
    assert clock.perf_counter() - began < 2.0
