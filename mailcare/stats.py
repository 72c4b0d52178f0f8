"""`mailcare stats`: how the inbox did over a period, in numbers an admin can act on.

Three layers, so the arithmetic is testable on literal rows:

* `collect(store, since, now)` runs the queries and returns plain `Rows`;
* `summarize(rows, hours, now)` turns them into a JSON-ready dict (pure);
* `format_text(summary)` prints that dict as an aligned table.

Response and resolution times are counted in *working* hours, because that is what the
acknowledgement promised the customer ("within 4 working hours"): a mail answered on Monday
at 09:30 after arriving on Friday at 17:45 was answered in 45 minutes, not in 64 hours.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, NamedTuple

import numpy
from numpy.typing import ArrayLike

from .config import Settings
from .hours import BusinessHours
from .store import OPEN_STATES, Store

HOUR = 3600.0
DAY = 86400.0
# Mails are counted in SQL per quarter of an hour: every real UTC offset is a multiple of
# 15 minutes, so each slot falls inside one local day and the per-day totals stay exact.
SLOT = 900
# The oldest unanswered cases listed by name; the rest are only counted.
OLDEST_LISTED = 10
# First-response histogram: bins of a quarter of the promise, up to three times the promise.
HISTOGRAM_BINS = 12
UNASSIGNED = "(unassigned)"

_UNITS = {"h": HOUR, "d": DAY, "w": 7 * DAY}
_PERIOD = re.compile(r"(\d{1,6})\s*([hdw])")
# Longer looks back are no statistics of a support inbox, only a slow way to fail.
MAX_PERIOD = 3660 * DAY
_EVENT_KINDS = (
    "bounce",
    "bounce_unverified",
    "agent_auth_failed",
    "held_other_agent",
    "suppressed_autoreply",
)
# Answered from the index messages(created_at, direction) alone: the rows hold raw mails.
MAIL_SLOTS_SQL = (
    f"SELECT direction, CAST(created_at / {SLOT} AS INTEGER) AS slot, COUNT(*) "
    "FROM messages WHERE created_at >= ? GROUP BY direction, slot"
)
_CASE_COLUMNS = (
    "number, owner, state, language, scope_kind, scope_category, is_auto, subject, "
    "created_at, first_response_at, closed_at"
)


def parse_since(value: str) -> float:
    """A look-back period in seconds: a whole number and a unit, hours, days or weeks.

    >>> parse_since("24h"), parse_since("7d"), parse_since("2w")
    (86400.0, 604800.0, 1209600.0)
    """
    match = _PERIOD.fullmatch(value.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(
            f"{value!r} is not a period: use a number and h, d or w, like 24h, 7d, 30d or 2w"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_PERIOD:
        raise ValueError(f"{value!r} is too long a period: at most 3660d (about ten years)")
    return seconds


# -- rows ------------------------------------------------------------------------------------


class CaseRow(NamedTuple):
    """The columns of one case that the statistics read (a tuple: 200,000 of them are made
    straight from the cursor)."""

    number: int
    owner: str | None
    state: str
    language: str
    scope_kind: str
    scope_category: str
    is_auto: int
    subject: str
    created_at: float
    first_response_at: float | None
    closed_at: float | None


@dataclass(frozen=True)
class Rows:
    """What `collect` read: the period's cases and counters, as plain values."""

    since: float
    new_cases: Sequence[CaseRow]  # opened in the period
    unanswered: Sequence[CaseRow]  # open and never answered by a person, whatever their age
    closed: Sequence[tuple[float, float]]  # (created, closed) of cases closed in the period
    open_by_owner: Mapping[str | None, int]  # now, not only the period's
    # Scope as mailcare first decided it, per case (an agent's correction overwrites the
    # case row, and the unsure share must count what the model said).
    decisions: Mapping[int, tuple[str, str]]
    corrections: Mapping[str, int]  # corrected to kind -> count
    mail_slots: Sequence[tuple[str, float, int]]  # (direction, slot start, mails)
    events: Mapping[str, int]  # event kind -> count in the period
    suppressed_reasons: Mapping[str, int]
    suppressed_addresses: int  # addresses whose auto-replies are suppressed now
    outbox_pending: int
    oldest_pending: float | None
    outbox_failed: int  # failed permanently, queued in the period


def collect(store: Store, since: float, now: float) -> Rows:
    """Read everything the summary needs for the period `since`..`now` (queries only)."""
    pending, oldest = store.db.execute(
        "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE status = 'pending'"
    ).fetchone()
    return Rows(
        since=since,
        new_cases=_cases(store, "created_at >= ?", [since]),
        unanswered=_cases(
            store,
            f"state IN ({','.join('?' * len(OPEN_STATES))}) AND first_response_at IS NULL "
            "AND is_auto = 0",
            list(OPEN_STATES),
        ),
        closed=store.db.execute(
            "SELECT created_at, closed_at FROM cases WHERE closed_at >= ? AND is_auto = 0",
            [since],
        ).fetchall(),
        open_by_owner=_open_by_owner(store),
        decisions=_decisions(store, since),
        corrections=_grouped(
            store,
            "SELECT json_extract(detail, '$.kind'), COUNT(*) FROM events "
            "WHERE kind = 'scope_corrected' AND at >= ? GROUP BY 1",
            [since],
        ),
        mail_slots=_mail_slots(store, since),
        events=_grouped(
            store,
            f"SELECT kind, COUNT(*) FROM events WHERE kind IN "
            f"({','.join('?' * len(_EVENT_KINDS))}) AND at >= ? GROUP BY kind",
            [*_EVENT_KINDS, since],
        ),
        suppressed_reasons=_grouped(
            store,
            "SELECT json_extract(detail, '$.reason'), COUNT(*) FROM events "
            "WHERE kind = 'suppressed_autoreply' AND at >= ? GROUP BY 1",
            [since],
        ),
        suppressed_addresses=_count(
            store, "SELECT COUNT(*) FROM suppressions WHERE until > ?", [now]
        ),
        outbox_pending=int(pending),
        oldest_pending=float(oldest) if oldest is not None else None,
        outbox_failed=_count(
            store,
            "SELECT COUNT(*) FROM outbox WHERE status = 'failed' AND created_at >= ?",
            [since],
        ),
    )


def _cases(store: Store, where: str, args: list[Any]) -> list[CaseRow]:
    sql = f"SELECT {_CASE_COLUMNS} FROM cases WHERE {where} ORDER BY number"
    return list(map(CaseRow._make, store.db.execute(sql, args)))


def _open_by_owner(store: Store) -> dict[str | None, int]:
    marks = ",".join("?" * len(OPEN_STATES))
    return {
        owner: int(count)
        for owner, count in store.db.execute(
            f"SELECT owner, COUNT(*) FROM cases WHERE state IN ({marks}) GROUP BY owner",
            list(OPEN_STATES),
        )
    }


def _decisions(store: Store, since: float) -> dict[int, tuple[str, str]]:
    found: dict[int, tuple[str, str]] = {}
    for case, kind, category in store.db.execute(
        "SELECT case_number, json_extract(detail, '$.kind'), json_extract(detail, '$.category') "
        "FROM events WHERE kind = 'scope' AND at >= ? AND case_number IS NOT NULL ORDER BY id",
        [since],
    ):
        found.setdefault(int(case), (str(kind or ""), str(category or "")))
    return found


def _mail_slots(store: Store, since: float) -> list[tuple[str, float, int]]:
    return [
        (str(direction), float(slot) * SLOT, int(count))
        for direction, slot, count in store.db.execute(MAIL_SLOTS_SQL, [since])
    ]


def _grouped(store: Store, sql: str, args: list[Any]) -> dict[str, int]:
    return {str(key or ""): int(count) for key, count in store.db.execute(sql, args)}


def _count(store: Store, sql: str, args: list[Any]) -> int:
    return int(store.db.execute(sql, args).fetchone()[0])


# -- the working-hours clock -----------------------------------------------------------------


class WorkClock:
    """Working hours as a running total over a span of days, built from `BusinessHours`.

    `BusinessHours.between` walks the calendar on every call, tens of microseconds each and
    more for long spans; a summary of 200,000 cases needs several calls per case. The office
    is open in at most one stretch per local day, so the calendar is read once per day here
    (its opening instant and its working hours) and every later question is a lookup,
    answered for whole arrays of instants at once.
    """

    def __init__(self, hours: BusinessHours, first: float, last: float) -> None:
        zone = hours.zone
        day = datetime.fromtimestamp(first, zone).date() - timedelta(days=1)
        end = datetime.fromtimestamp(last, zone).date() + timedelta(days=1)
        self.days: list[date] = []
        midnights, opens, lengths = [], [], []
        while day <= end:
            midnight = datetime.combine(day, time(), tzinfo=zone)
            following = datetime.combine(day + timedelta(days=1), time(), tzinfo=zone)
            worked = hours.between(midnight, following) * HOUR
            self.days.append(day)
            midnights.append(midnight.timestamp())
            opens.append(hours.add(midnight, 0).timestamp() if worked else midnight.timestamp())
            lengths.append(worked)
            day += timedelta(days=1)
        self._midnights = numpy.array(midnights)
        self._opens = numpy.array(opens)
        self._lengths = numpy.array(lengths)
        self._before = numpy.concatenate(([0.0], numpy.cumsum(lengths)[:-1]))

    def day_indexes(self, moments: ArrayLike) -> numpy.ndarray:
        """For each instant, the index in `days` of its local date (clamped to the span)."""
        found = numpy.searchsorted(self._midnights, numpy.asarray(moments, dtype=float), "right")
        return numpy.clip(found - 1, 0, len(self.days) - 1)

    def _worked(self, moments: ArrayLike) -> numpy.ndarray:
        """Working seconds from the start of the clock to each instant."""
        at = numpy.asarray(moments, dtype=float)
        i = self.day_indexes(at)
        return self._before[i] + numpy.clip(at - self._opens[i], 0.0, self._lengths[i])

    def hours_between(self, spans: Sequence[tuple[float, float]]) -> list[float]:
        """Working hours of each (start, end), as `BusinessHours.between` counts them."""
        if not spans:
            return []
        starts, ends = numpy.array(spans, dtype=float).T
        hours = numpy.maximum(self._worked(ends) - self._worked(starts), 0.0) / HOUR
        return [float(value) for value in hours]

    def between(self, start: float, end: float) -> float:
        return self.hours_between([(start, end)])[0]

    def day(self, moment: float) -> date:
        """The office's local date of an instant inside the clock's span."""
        return self.days[int(self.day_indexes([moment])[0])]


# -- the summary (pure) ------------------------------------------------------------------------


def summarize(
    rows: Rows, hours: BusinessHours, now: float, *, promise_hours: float | None = None
) -> dict[str, Any]:
    """The period's figures as plain JSON-ready values. `promise_hours` is the first-response
    promise of the ack (`sla.first_response_hours`); with it the summary says how many
    answers kept it."""
    clock = WorkClock(hours, *_span(rows, now))
    people = [c for c in rows.new_cases if not c.is_auto]
    decided = [_decision(rows, c) for c in people]
    answered = {
        c.number: (c.created_at, at) for c in people if (at := c.first_response_at) is not None
    }
    waits = dict(zip(answered, clock.hours_between(list(answered.values())), strict=True))
    return {
        "period": _period(rows.since, now, clock, hours),
        "volume": _volume(rows),
        "scope": _scope(rows, decided),
        "first_response": _first_response(rows, clock, now, waits, promise_hours),
        "resolution": _resolution(rows, clock),
        "owners": _owners(rows, waits),
        "suppressed": {
            "total": sum(rows.suppressed_reasons.values()),
            "by_reason": _sorted_counts(rows.suppressed_reasons),
            "addresses_now": rows.suppressed_addresses,
        },
        "bounces": {
            "recorded": rows.events.get("bounce", 0),
            "unverified": rows.events.get("bounce_unverified", 0),
        },
        "holds": {
            "agent_auth_failed": rows.events.get("agent_auth_failed", 0),
            "held_other_agent": rows.events.get("held_other_agent", 0),
        },
        "outbox": {
            "pending": rows.outbox_pending,
            "oldest_pending_hours": _round((now - rows.oldest_pending) / HOUR)
            if rows.oldest_pending is not None
            else None,
            "failed": rows.outbox_failed,
        },
        "daily": _daily(rows, people, decided, clock, now),
    }


def _span(rows: Rows, now: float) -> tuple[float, float]:
    """The earliest and latest instants any row mentions (the clock must cover them)."""
    moments = [rows.since, now]
    if rows.closed:
        moments += [min(c for c, _ in rows.closed), max(c for _, c in rows.closed)]
    for group in (rows.new_cases, rows.unanswered):
        if group:
            columns = numpy.array(  # a missing time becomes nan
                [(c.created_at, c.first_response_at, c.closed_at) for c in group], dtype=float
            )
            moments += [float(numpy.nanmin(columns)), float(numpy.nanmax(columns))]
    return min(moments), max(moments)


def _round(value: float) -> float:
    return round(float(value), 2)


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p90 and p95 (linear interpolation between the closest ranks), None when empty."""
    if not values:
        return {"p50": None, "p90": None, "p95": None}
    p50, p90, p95 = numpy.percentile(numpy.asarray(values, dtype=float), [50, 90, 95])
    return {"p50": _round(p50), "p90": _round(p90), "p95": _round(p95)}


def _median(values: Sequence[float]) -> float | None:
    return _round(numpy.median(numpy.asarray(values, dtype=float))) if values else None


def _sorted_counts(counts: Mapping[str, int] | Counter[str]) -> dict[str, int]:
    """Largest first, then by name, so text, JSON and charts list them alike."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _period(since: float, now: float, clock: WorkClock, hours: BusinessHours) -> dict[str, Any]:
    def local(moment: float) -> str:
        return datetime.fromtimestamp(moment, hours.zone).strftime("%Y-%m-%d %H:%M")

    return {
        "since": since,
        "until": now,
        "since_text": local(since),
        "until_text": local(now),
        "first_day": clock.day(since).isoformat(),
        "last_day": clock.day(now).isoformat(),
        "days": _round((now - since) / DAY),
        "timezone": str(hours.zone),
    }


def _volume(rows: Rows) -> dict[str, Any]:
    mails = Counter[str]()
    for direction, _slot, count in rows.mail_slots:
        mails[direction] += count
    return {
        "mails_in": mails["in"],
        "mails_out": mails["out"],
        "new_cases": len(rows.new_cases),
        "automatic_cases": sum(1 for c in rows.new_cases if c.is_auto),
        "by_language": _sorted_counts(Counter(c.language or "?" for c in rows.new_cases)),
    }


def _decision(rows: Rows, case: CaseRow) -> tuple[str, str]:
    return rows.decisions.get(case.number, (case.scope_kind, case.scope_category))


def _scope(rows: Rows, decided: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Decisions on mail from people (automatic mail is always "unsure" and says nothing
    about the model), as first made, and the agents' corrections."""
    kinds = Counter(kind or "?" for kind, _ in decided)
    unsure = kinds.get("unsure", 0)
    return {
        "decided": len(decided),
        "by_kind": _sorted_counts(kinds),
        "by_category": _sorted_counts(Counter(cat for _, cat in decided if cat)),
        "unsure": unsure,
        "unsure_share": _round(unsure / len(decided)) if decided else None,
        "corrections": sum(rows.corrections.values()),
        "corrections_by_kind": _sorted_counts(rows.corrections),
    }


def _first_response(
    rows: Rows,
    clock: WorkClock,
    now: float,
    waits: Mapping[int, float],
    promise: float | None,
) -> dict[str, Any]:
    """Cases opened in the period and answered by a person, plus every case still waiting
    for its first answer (those are the ones to look at today, whenever they came in)."""
    values = list(waits.values())
    waiting = rows.unanswered
    ages = sorted(
        zip(
            clock.hours_between([(c.created_at, now) for c in waiting]),
            waiting,
            strict=True,
        ),
        key=lambda item: (-item[0], item[1].number),
    )
    result: dict[str, Any] = {
        "answered": len(values),
        **_percentiles(values),
        "promise_hours": promise,
    }
    if promise is not None:
        result["within_promise"] = sum(1 for v in values if v <= promise)
        result["unanswered_over_promise"] = sum(1 for age, _ in ages if age > promise)
    result["unanswered"] = len(ages)
    result["oldest_unanswered"] = [
        {"case": c.number, "owner": c.owner, "age_hours": _round(age), "subject": _plain(c.subject)}
        for age, c in ages[:OLDEST_LISTED]
    ]
    result["histogram"] = _histogram(values, promise)
    return result


def _plain(text: str, limit: int = 100) -> str:
    """A customer's subject as one printable line: no terminal escapes, no line breaks."""
    printable = "".join(char if char.isprintable() else " " for char in text)
    return " ".join(printable.split())[:limit]


def _histogram(values: Sequence[float], promise: float | None) -> dict[str, Any]:
    """Counts in equal bins up to three times the promise, and how many came later."""
    width = (promise or 4.0) / 4
    counts = [0] * HISTOGRAM_BINS
    over = 0
    for value in values:
        index = int(value // width)
        if index < HISTOGRAM_BINS:
            counts[index] += 1
        else:
            over += 1
    return {"bin_hours": width, "counts": counts, "over": over}


def _resolution(rows: Rows, clock: WorkClock) -> dict[str, Any]:
    values = clock.hours_between(rows.closed)
    return {"closed": len(values), **_percentiles(values)}


def _owners(rows: Rows, waits: Mapping[int, float]) -> list[dict[str, Any]]:
    new: Counter[str | None] = Counter(c.owner for c in rows.new_cases if not c.is_auto)
    answered: dict[str | None, list[float]] = defaultdict(list)
    for case in rows.new_cases:
        if case.number in waits:
            answered[case.owner].append(waits[case.number])
    owners = set(new) | set(rows.open_by_owner)
    table = [
        {
            "owner": owner,
            "open": rows.open_by_owner.get(owner, 0),
            "new": new.get(owner, 0),
            "median_first_response": _median(answered.get(owner, [])),
        }
        for owner in owners
    ]
    return sorted(table, key=lambda r: (-r["open"], -r["new"], r["owner"] or "\uffff"))


def _daily(
    rows: Rows,
    people: Sequence[CaseRow],
    decided: Sequence[tuple[str, str]],
    clock: WorkClock,
    now: float,
) -> list[dict[str, Any]]:
    """One entry per local day of the period: mails in and out, new cases, scope by kind."""
    first, last = (int(i) for i in clock.day_indexes([rows.since, now]))
    mails: Counter[tuple[int, str]] = Counter()
    slots = clock.day_indexes([slot for _, slot, _ in rows.mail_slots]).tolist()
    for day, (direction, _, count) in zip(slots, rows.mail_slots, strict=True):
        mails[day, direction] += count
    new = Counter(clock.day_indexes([c.created_at for c in rows.new_cases]).tolist())
    scope = Counter(
        zip(
            clock.day_indexes([c.created_at for c in people]).tolist(),
            (kind or "?" for kind, _ in decided),
            strict=True,
        )
    )
    kinds = sorted({kind for _, kind in scope})
    return [
        {
            "day": clock.days[day].isoformat(),
            "mails_in": mails[day, "in"],
            "mails_out": mails[day, "out"],
            "new_cases": new[day],
            "scope": {kind: scope[day, kind] for kind in kinds if scope[day, kind]},
        }
        for day in range(first, last + 1)
    ]


# -- reading it ----------------------------------------------------------------------------------


def _hours_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} h"


def _share(part: int, whole: int) -> str:
    return f"{part} of {whole} ({100 * part / whole:.1f}%)" if whole else f"{part}"


def _counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counts.items()) or "-"


def sections(summary: Mapping[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The summary as titled (label, value) lines: the text table and the HTML report both
    print exactly these, so the two never disagree."""
    volume, scope = summary["volume"], summary["scope"]
    return [
        (
            "volume",
            [
                ("mails in", str(volume["mails_in"])),
                ("mails out", str(volume["mails_out"])),
                ("new cases", str(volume["new_cases"])),
                ("opened by automatic mail", str(volume["automatic_cases"])),
                ("new cases by language", _counts_text(volume["by_language"])),
            ],
        ),
        ("scope (as first decided)", _scope_lines(scope)),
        ("first response (working hours)", _first_response_lines(summary["first_response"])),
        ("resolution (working hours)", _percentile_lines(summary["resolution"], "closed")),
        ("protection", _protection_lines(summary)),
    ]


def _scope_lines(scope: Mapping[str, Any]) -> list[tuple[str, str]]:
    corrected = str(scope["corrections"])
    if scope["corrections"]:
        corrected += f" ({_counts_text(scope['corrections_by_kind'])})"
    return [
        ("decided", str(scope["decided"])),
        ("by kind", _counts_text(scope["by_kind"])),
        ("unsure", _share(scope["unsure"], scope["decided"])),
        ("by category", _counts_text(scope["by_category"])),
        ("corrected by agents", corrected),
    ]


def _percentile_lines(block: Mapping[str, Any], count_key: str) -> list[tuple[str, str]]:
    return [
        (count_key, str(block[count_key])),
        ("p50 / p90 / p95", " / ".join(_hours_text(block[p]) for p in ("p50", "p90", "p95"))),
    ]


def _first_response_lines(block: Mapping[str, Any]) -> list[tuple[str, str]]:
    lines = _percentile_lines(block, "answered")
    promise = block.get("promise_hours")
    if promise is not None:
        lines.append(
            (
                f"within the promise ({promise:g} h)",
                _share(block["within_promise"], block["answered"]),
            )
        )
    waiting = str(block["unanswered"])
    if promise is not None:
        waiting += f" ({block['unanswered_over_promise']} past the promise)"
    lines.append(("still unanswered", waiting))
    for item in block["oldest_unanswered"]:
        lines.append(
            (
                f"  case {item['case']}",
                f"{item['age_hours']:.2f} h, {item['owner'] or UNASSIGNED}: {item['subject']}",
            )
        )
    return lines


def _protection_lines(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    suppressed, bounces = summary["suppressed"], summary["bounces"]
    holds, outbox = summary["holds"], summary["outbox"]
    pending = str(outbox["pending"])
    if outbox["oldest_pending_hours"] is not None:
        pending += f" (oldest {outbox['oldest_pending_hours']:.2f} h)"
    return [
        ("auto-replies suppressed", str(suppressed["total"])),
        ("  by reason", _counts_text(suppressed["by_reason"])),
        ("addresses suppressed now", str(suppressed["addresses_now"])),
        ("bounces recorded", str(bounces["recorded"])),
        ("bounces not verified", str(bounces["unverified"])),
        ("agent mail failing auth", str(holds["agent_auth_failed"])),
        ("held: another agent's reply", str(holds["held_other_agent"])),
        ("outbox pending", pending),
        ("outbox failed", str(outbox["failed"])),
    ]


OWNER_COLUMNS = ("owner", "open", "new", "median 1st response")


def owner_rows(summary: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """The per-owner table as text cells, in the order of OWNER_COLUMNS."""
    return [
        (
            r["owner"] or UNASSIGNED,
            str(r["open"]),
            str(r["new"]),
            _hours_text(r["median_first_response"]),
        )
        for r in summary["owners"]
    ]


def format_text(summary: Mapping[str, Any]) -> str:
    """An aligned, readable table for the terminal."""
    period = summary["period"]
    lines = [
        f"mailcare stats {period['since_text']} - {period['until_text']} "
        f"({period['days']:g} days, {period['timezone']})"
    ]
    width = max(len(label) for _, rows in sections(summary) for label, _ in rows) + 2
    for title, rows in sections(summary):
        lines += ["", title]
        lines += [f"  {label:<{width}}{value}" for label, value in rows]
    lines += ["", "owners", *_table(OWNER_COLUMNS, owner_rows(summary))]
    return "\n".join(lines) + "\n"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Left-aligned first column, right-aligned numbers."""
    body = [list(header), *(list(r) for r in rows)]
    widths = [max(len(row[i]) for row in body) for i in range(len(header))]
    return [
        "  "
        + "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()
        for row in body
    ]


def stats_for(settings: Settings, store: Store, period: float, now: float) -> dict[str, Any]:
    """Collect and summarize the last `period` seconds with the configured office hours."""
    hours = BusinessHours(settings.hours)
    rows = collect(store, now - period, now)
    return summarize(rows, hours, now, promise_hours=settings.sla.first_response_hours)
