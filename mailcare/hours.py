"""Business hours, holidays and the SLA clock.

An SLA of "4 working hours" means nothing at 17:30 on a Friday before a holiday unless the
clock knows the office's days, hours, time zone and holidays. This module is that clock:
pure arithmetic on timezone-aware datetimes (the caller passes `now`), national holidays
from the `holidays` package plus the admin's own closing days, computed once per year.

All arithmetic runs in UTC and only the office windows are built in local time, so a
daylight-saving change inside a window counts the hours that really passed.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

from mailcare.config import HoursSection

# No SLA spans more than this; a longer search means the calendar has no working time.
MAX_SEARCH_DAYS = 3 * 366

_DAYS = {
    "it": ("lunedì", "martedì", "mercoledì", "giovedì", "venerdì", "sabato", "domenica"),
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
}
_MONTHS = {
    "it": (
        "gennaio", "febbraio", "marzo", "aprile", "maggio", "giugno",
        "luglio", "agosto", "settembre", "ottobre", "novembre", "dicembre",
    ),
    "en": (
        "January", "February", "March", "April", "May", "June",
        "July", "August", "September", "October", "November", "December",
    ),
}  # fmt: skip


def _clock(value: str) -> tuple[int, int]:
    hours, _, minutes = value.partition(":")
    return int(hours), int(minutes)


def _require_aware(when: datetime) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("business hours need timezone-aware datetimes")


class BusinessHours:
    """The office calendar of one `[hours]` section."""

    def __init__(self, section: HoursSection) -> None:
        try:
            self.zone = ZoneInfo(section.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"hours.timezone: unknown time zone {section.timezone!r}") from exc
        self.days = frozenset(section.days)
        self.start = _clock(section.start)
        self.end = _clock(section.end)
        if not self.days or self.start >= self.end:
            raise ValueError("hours: the office is never open (check days, start and end)")
        self.extra = frozenset(section.extra_holidays)
        # "IT" for national holidays, "IT-RM" to add a region's or city's own.
        country, _, subdivision = section.holidays_country.partition("-")
        self.country, self.subdivision = country.strip(), subdivision.strip() or None
        self._holidays: dict[int, frozenset[date]] = {}
        self._national(())  # a bad country fails at start-up, not on the first mail

    def _national(self, years: int | tuple[int, ...]) -> set[date]:
        if not self.country:
            return set()
        try:
            found = holidays.country_holidays(self.country, subdiv=self.subdivision, years=years)
        except NotImplementedError as exc:
            raise ValueError(f"hours.holidays_country: {exc}") from exc
        return set(found)

    def holidays_of(self, year: int) -> frozenset[date]:
        """Closing days of one year: national (and regional) holidays plus extra ones.

        Cached per year: the SLA clock asks for the same few days on every new case."""
        cached = self._holidays.get(year)
        if cached is None:
            extra = {day for day in self.extra if day.year == year}
            cached = frozenset(self._national(year) | extra)
            self._holidays[year] = cached
        return cached

    def is_working_day(self, day: date) -> bool:
        return day.weekday() in self.days and day not in self.holidays_of(day.year)

    def _window(self, day: date) -> tuple[datetime, datetime] | None:
        """The office hours of a local date in UTC, or None when closed all day."""
        if not self.is_working_day(day):
            return None
        opens = datetime.combine(day, time(*self.start), tzinfo=self.zone)
        end_day = day + timedelta(days=self.end[0] // 24)
        closes = datetime.combine(end_day, time(self.end[0] % 24, self.end[1]), tzinfo=self.zone)
        return opens.astimezone(UTC), closes.astimezone(UTC)

    def is_open(self, when: datetime) -> bool:
        """Whether the office is open at this instant."""
        _require_aware(when)
        window = self._window(when.astimezone(self.zone).date())
        return window is not None and window[0] <= when < window[1]

    def add(self, start: datetime, hours: float) -> datetime:
        """The instant `hours` working hours after `start`, in the office time zone.

        Work that ends exactly at closing time is due at closing time, not next morning;
        zero hours from a closed office is the next opening, when the clock starts running.
        """
        _require_aware(start)
        if hours < 0:
            raise ValueError("hours must not be negative")
        remaining = timedelta(hours=hours)
        moment = start.astimezone(UTC)
        day = start.astimezone(self.zone).date() - timedelta(days=1)
        for _ in range(MAX_SEARCH_DAYS):
            window = self._window(day)
            day += timedelta(days=1)
            if window is None or window[1] <= moment:
                continue
            begin = max(moment, window[0])
            if remaining <= window[1] - begin:
                return (begin + remaining).astimezone(self.zone)
            remaining -= window[1] - begin
        raise ValueError(f"no working time within {MAX_SEARCH_DAYS} days")

    def between(self, start: datetime, end: datetime) -> float:
        """Working hours elapsed from `start` to `end` (0 when `end` is not after `start`)."""
        _require_aware(start)
        _require_aware(end)
        if end <= start:
            return 0.0
        first = start.astimezone(self.zone).date() - timedelta(days=1)
        last = end.astimezone(self.zone).date()
        start, end = start.astimezone(UTC), end.astimezone(UTC)  # real, not wall-clock, time
        total = timedelta()
        for offset in range((last - first).days + 1):
            window = self._window(first + timedelta(days=offset))
            if window is not None:
                overlap = min(end, window[1]) - max(start, window[0])
                total += max(overlap, timedelta())
        return total.total_seconds() / 3600

    def promise(self, start: datetime, hours: float, lang: str) -> str:
        """The promise in an ack: "entro 4 ore lavorative (entro martedì 24 novembre alle
        13:00)" or "within 4 working hours (by Tuesday 24 November, 13:00)"; English for a
        language we have no words for. The year is named only when it differs from start's."""
        lang = lang if lang in _DAYS else "en"
        due = self.add(start, hours)
        when = _format_day(due, lang, show_year=due.year != start.astimezone(self.zone).year)
        amount = _format_hours(hours, lang)
        if lang == "it":
            unit = "ora lavorativa" if hours == 1 else "ore lavorative"
            return f"entro {amount} {unit} (entro {when} alle {due:%H:%M})"
        unit = "working hour" if hours == 1 else "working hours"
        return f"within {amount} {unit} (by {when}, {due:%H:%M})"


def _format_hours(hours: float, lang: str) -> str:
    text = str(int(hours)) if float(hours).is_integer() else f"{hours:.2f}".rstrip("0")
    return text.replace(".", ",") if lang == "it" else text


def _format_day(when: datetime, lang: str, *, show_year: bool) -> str:
    text = f"{_DAYS[lang][when.weekday()]} {when.day} {_MONTHS[lang][when.month - 1]}"
    return f"{text} {when.year}" if show_year else text
