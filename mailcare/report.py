"""`mailcare report`: the stats of a period as one self-contained HTML page, and the mail that
carries it to the admin on the `[report] every` schedule.

The page must open anywhere, offline, in a mail client that blocks remote content, and must
not phone home when opened: so the style is inline, the four charts are inline SVG drawn by
matplotlib (Agg, no display needed), and the page holds no external URL at all. Everything
that came from the database (owners, categories, subjects, reasons) is escaped: a customer
chooses their own subject, and this page is read by the people with the most access.
"""

from __future__ import annotations

import html
import io
import itertools
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import tokens
from .compose import Outgoing, Templates, build
from .config import Settings
from .pipeline import load_secret
from .plan import Outbound, Plan
from .resources import templates_dir
from .stats import DAY, OWNER_COLUMNS, UNASSIGNED, owner_rows, sections, stats_for
from .store import Store

EVERY = {"daily": DAY, "weekly": 7 * DAY}
LAST_SENT_KEY = "report_last_sent"
# Scope kinds in a fixed order and colour, so the same kind looks the same every week.
SCOPE_COLOURS = {"in": "#2f7d4f", "route": "#3b6fb6", "out": "#c7772b", "unsure": "#9a9a9a"}
MAIL_COLOURS = {"in": "#3b6fb6", "out": "#2f7d4f"}
PROMISE_COLOUR = "#b83232"
# Bars per time chart before days are grouped into weeks, then into 30-day stretches.
MAX_BARS = 62
_GROUPS = ((1, "day"), (7, "week"), (30, "30 days"), (365, "year"))
# Owners beyond this many are summed into one bar, so the chart stays readable.
MAX_OWNER_BARS = 15

_SVG_ID = re.compile(r'\bid="([^"]+)"')
_SVG_PROLOG = re.compile(r"^.*?(?=<svg\b)", re.S)
_SVG_XMLNS = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1d1d1f; background: #f6f6f4; margin: 0; }
main { max-width: 980px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 8px; }
p.period { color: #555; margin: 0 0 16px; }
section.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr));
                 gap: 16px; }
figure { background: #fff; border: 1px solid #ddd; border-radius: 6px; margin: 0;
         padding: 12px; }
figure svg { width: 100%; height: auto; }
figcaption { font-weight: 600; margin-bottom: 6px; }
table { border-collapse: collapse; background: #fff; width: 100%; margin-bottom: 12px; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 4px 10px; text-align: left;
         vertical-align: top; }
th { background: #efefec; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.figures th { width: 16em; background: #f6f6f3; font-weight: 600; }
"""


# -- charts ---------------------------------------------------------------------------------


def _label(text: str) -> str:
    """Text from the database as a matplotlib label: `$` would start mathtext."""
    return text.replace("$", r"\$")


def _figure() -> tuple[Figure, Axes]:
    figure = Figure(figsize=(7.2, 3.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.spines[["top", "right"]].set_visible(False)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    return figure, axes


def _no_data(axes: Axes) -> None:
    axes.text(
        0.5,
        0.5,
        "no data in this period",
        ha="center",
        va="center",
        transform=axes.transAxes,
        color="#777",
    )


def _day_ticks(axes: Axes, days: Sequence[str]) -> None:
    """At most about 15 date labels, whatever the length of the period; the year is left
    out while all the days share one."""
    step = max(1, -(-len(days) // 15))
    positions = list(range(0, len(days), step))
    one_year = len({day[:4] for day in days}) <= 1
    labels = [days[i][5:] if one_year else days[i] for i in positions]
    axes.set_xticks(positions, labels, rotation=45, ha="right")


def mails_chart(daily: Sequence[Mapping[str, Any]]) -> Figure:
    figure, axes = _figure()
    days = [d["day"] for d in daily]
    x = range(len(days))
    axes.bar(
        [i - 0.2 for i in x],
        [d["mails_in"] for d in daily],
        width=0.4,
        label="in",
        color=MAIL_COLOURS["in"],
    )
    axes.bar(
        [i + 0.2 for i in x],
        [d["mails_out"] for d in daily],
        width=0.4,
        label="out",
        color=MAIL_COLOURS["out"],
    )
    _day_ticks(axes, days)
    axes.set_ylabel("mails")
    axes.legend(frameon=False)
    return figure


def response_chart(first_response: Mapping[str, Any]) -> Figure:
    """Histogram of first-response times against the promise (the red line)."""
    figure, axes = _figure()
    histogram = first_response["histogram"]
    width, counts = histogram["bin_hours"], [*histogram["counts"], histogram["over"]]
    lefts = [i * width for i in range(len(counts))]
    colours = ["#3b6fb6"] * (len(counts) - 1) + ["#7a7a7a"]
    axes.bar(lefts, counts, width=width, align="edge", color=colours, edgecolor="white")
    promise = first_response.get("promise_hours")
    if promise is not None:
        axes.axvline(promise, color=PROMISE_COLOUR, linewidth=2)
        axes.text(
            promise,
            1.0,
            f" promise {promise:g} h",
            color=PROMISE_COLOUR,
            transform=axes.get_xaxis_transform(),
            va="top",
        )
    edges = [i * width for i in range(len(counts))]
    axes.set_xticks(edges[::2], [f"{e:g}" for e in edges[::2]])
    axes.set_xlabel(f"working hours to the first answer (last bar: {edges[-1]:g} h or more)")
    axes.set_ylabel("cases")
    if not sum(counts):
        _no_data(axes)
    return figure


def scope_chart(daily: Sequence[Mapping[str, Any]]) -> Figure:
    """New cases per day, stacked by the kind of scope decision."""
    figure, axes = _figure()
    days = [d["day"] for d in daily]
    kinds = list(SCOPE_COLOURS)
    kinds += sorted({k for d in daily for k in d["scope"]} - set(kinds))
    bottom = [0] * len(days)
    for kind in kinds:
        values = [d["scope"].get(kind, 0) for d in daily]
        if any(values):
            axes.bar(
                range(len(days)),
                values,
                bottom=bottom,
                label=_label(kind),
                color=SCOPE_COLOURS.get(kind, "#555555"),
            )
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    _day_ticks(axes, days)
    axes.set_ylabel("new cases")
    if any(bottom):
        axes.legend(frameon=False, ncols=len(kinds))
    else:
        _no_data(axes)
    return figure


def owners_chart(owners: Sequence[Mapping[str, Any]], names: Mapping[str, str]) -> Figure:
    """Open cases per owner now, the busiest at the top."""
    figure, axes = _figure()
    rows = [(names.get(o["owner"] or "", o["owner"] or UNASSIGNED), o["open"]) for o in owners]
    rows = sorted((r for r in rows if r[1]), key=lambda r: -r[1])
    if len(rows) > MAX_OWNER_BARS:
        rest = sum(count for _, count in rows[MAX_OWNER_BARS - 1 :])
        rows = [*rows[: MAX_OWNER_BARS - 1], (f"{len(rows) - MAX_OWNER_BARS + 1} others", rest)]
    rows.reverse()
    axes.barh(range(len(rows)), [count for _, count in rows], color="#3b6fb6")
    axes.set_yticks(range(len(rows)), [_label(name) for name, _ in rows])
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("open cases")
    if not rows:
        _no_data(axes)
    return figure


def grouped_days(daily: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The daily series, summed by week or by 30 days when a bar per day would be too many
    to read (and to draw: matplotlib spends milliseconds on every bar). Each group is
    labelled with its first day."""
    size, unit = next(((s, u) for s, u in _GROUPS if len(daily) <= s * MAX_BARS), _GROUPS[-1])
    if size == 1:
        return [dict(day) for day in daily], unit
    groups = []
    for start in range(0, len(daily), size):
        days = daily[start : start + size]
        scope: Counter[str] = Counter()
        for day in days:
            scope.update(day["scope"])
        groups.append({
            "day": days[0]["day"],
            **{key: sum(d[key] for d in days) for key in ("mails_in", "mails_out", "new_cases")},
            "scope": dict(scope),
        })  # fmt: skip
    return groups, unit


def svg(figure: Figure, prefix: str) -> str:
    """The figure as an inline `<svg>` element with no URL in it and ids unique to `prefix`.

    Text stays text (smaller, selectable); the XML prolog, DOCTYPE, metadata and namespace
    declarations go (HTML does not need them, and each holds an http URL); ids are prefixed
    so that the four charts on one page never answer each other's references."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
        figure.savefig(
            buffer,
            format="svg",
            metadata={"Creator": None, "Date": None, "Format": None, "Type": None},
        )
    text = _SVG_XMLNS.sub("", _SVG_PROLOG.sub("", buffer.getvalue(), count=1))
    for name in dict.fromkeys(_SVG_ID.findall(text)):
        text = (
            text.replace(f'id="{name}"', f'id="{prefix}-{name}"')
            .replace(f'href="#{name}"', f'href="#{prefix}-{name}"')
            .replace(f"url(#{name})", f"url(#{prefix}-{name})")
        )
    return text


# -- the page -----------------------------------------------------------------------------------


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def _summary_tables(summary: Mapping[str, Any]) -> str:
    parts = []
    for title, rows in sections(summary):
        cells = "".join(
            f"<tr><th>{_escape(label.strip())}</th><td>{_escape(value)}</td></tr>"
            for label, value in rows
        )
        parts.append(f'<h2>{_escape(title)}</h2>\n<table class="figures">{cells}</table>')
    head = "".join(f"<th>{_escape(name)}</th>" for name in OWNER_COLUMNS)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if i else ''}>{_escape(cell)}</td>" for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in owner_rows(summary)
    )
    parts.append(f"<h2>owners</h2>\n<table><tr>{head}</tr>{body}</table>")
    return "\n".join(parts)


def render_html(
    summary: Mapping[str, Any], *, company: str, names: Mapping[str, str] | None = None
) -> str:
    """The whole page. `names` maps owner addresses to the agents' names for the chart."""
    period = summary["period"]
    series, unit = grouped_days(summary["daily"])
    charts = [
        (f"Mails per {unit}", mails_chart(series)),
        (
            "First response (working hours) against the promise",
            response_chart(summary["first_response"]),
        ),
        (f"Scope decisions per {unit}", scope_chart(series)),
        ("Open cases per owner", owners_chart(summary["owners"], names or {})),
    ]
    figures = "\n".join(
        f"<figure><figcaption>{_escape(title)}</figcaption>{svg(figure, f'c{n}')}</figure>"
        for n, (title, figure) in zip(itertools.count(1), charts)
    )
    title = f"{company} support report"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{_escape(title)}</h1>\n"
        f'<p class="period">{_escape(period["since_text"])} to {_escape(period["until_text"])}'
        f" ({_escape(period['timezone'])})</p>\n"
        f'<section class="charts">\n{figures}\n</section>\n'
        f"{_summary_tables(summary)}\n</main>\n</body>\n</html>\n"
    )


def build_report(
    settings: Settings, store: Store, period: float, now: float
) -> tuple[dict[str, Any], str]:
    """The summary of the last `period` seconds and its HTML page."""
    summary = stats_for(settings, store, period, now)
    names = {agent.address: agent.name for agent in settings.agents}
    page = render_html(summary, company=settings.mailcare.company, names=names)
    return summary, page


def write_report(
    settings: Settings, store: Store, out: Path, period: float, now: float
) -> dict[str, Any]:
    """Write the page to `out` (whole or not at all) and return the summary.

    The file is opened before the work starts, so a folder that does not exist or cannot
    be written fails at once rather than after the charts are drawn."""
    partial = out.with_name(out.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        try:
            summary, page = build_report(settings, store, period, now)
            handle.write(page)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    partial.replace(out)
    return summary


# -- the scheduled mail ------------------------------------------------------------------------


def report_due(last_sent: float | None, every: str, now: float) -> bool:
    """Whether the scheduled report should go out now.

    Never when no schedule is set; at once when none was ever sent, or when the last one is
    dated after `now` (the clock was wrong then, and a report must not wait for it to catch
    up); otherwise once a full day or week has passed since the last one."""
    interval = EVERY.get(every)
    if interval is None:
        return False
    if last_sent is None or last_sent > now:
        return True
    return now - last_sent >= interval


def last_report_sent(store: Store) -> float | None:
    """When `send_report` last queued a report, from the store's meta table."""
    value = store.meta(LAST_SENT_KEY)
    return float(value) if value else None


def summary_lines(summary: Mapping[str, Any], lang: str) -> list[str]:
    """The few figures the mail body lists; the page itself is attached."""
    words = _WORDS.get(lang, _WORDS["en"])
    volume, first = summary["volume"], summary["first_response"]
    lines = [
        words["cases"].format(new=volume["new_cases"], closed=summary["resolution"]["closed"]),
        words["mails"].format(into=volume["mails_in"], out=volume["mails_out"]),
    ]
    if first["p50"] is not None:
        lines.append(
            words["response"].format(
                p50=_number(first["p50"], lang), p90=_number(first["p90"], lang)
            )
        )
    lines.append(words["waiting"].format(count=first["unanswered"]))
    kinds = summary["scope"]["by_kind"]
    lines.append(
        words["scope"].format(
            out=kinds.get("out", 0), route=kinds.get("route", 0), unsure=kinds.get("unsure", 0)
        )
    )
    if summary["outbox"]["failed"]:
        lines.append(words["failed"].format(count=summary["outbox"]["failed"]))
    return lines


def _number(value: float, lang: str) -> str:
    text = f"{value:.1f}"
    return text.replace(".", ",") if lang == "it" else text


_WORDS: Mapping[str, Mapping[str, str]] = {
    "en": {
        "cases": "{new} new cases, {closed} closed",
        "mails": "{into} mails in, {out} out",
        "response": "first answer after {p50} working hours (median), {p90} for 90%",
        "waiting": "{count} cases still waiting for a first answer",
        "scope": "{out} sent elsewhere, {route} passed to other teams, {unsure} unsure",
        "failed": "undelivered mails: {count}",
    },
    "it": {
        "cases": "{new} pratiche nuove, {closed} chiuse",
        "mails": "{into} mail ricevute, {out} inviate",
        "response": "prima risposta dopo {p50} ore lavorative (mediana), {p90} per il 90%",
        "waiting": "{count} pratiche ancora in attesa di una prima risposta",
        "scope": "{out} indirizzate altrove, {route} passate ad altri reparti, {unsure} incerte",
        "failed": "mail non consegnate: {count}",
    },
}


def _period_text(since: float, now: float, zone: ZoneInfo) -> str:
    first = datetime.fromtimestamp(since, zone).date()
    last = datetime.fromtimestamp(now, zone).date()
    if last > first and datetime.fromtimestamp(now, zone).time() == datetime.min.time():
        last -= timedelta(days=1)
    return first.isoformat() if first == last else f"{first.isoformat()} – {last.isoformat()}"


def send_report(settings: Settings, store: Store, now: float) -> str | None:
    """Build the report of the last day or week and queue it to `[report] to`.

    Returns the queued Message-ID, or None when no recipient is configured. The mail, the
    `report_queued` event and the time of sending (for `report_due`) are written in one
    transaction, so a crash never sends a report twice nor forgets one was sent. The
    envelope sender is the plain support address: the mail belongs to no case, so a bounce
    of it has nothing to be matched to and is only recorded."""
    cfg = settings.mailcare
    to = settings.report.to
    if not to:
        return None
    period = EVERY.get(settings.report.every, 7 * DAY)
    summary, page = build_report(settings, store, period, now)
    zone = ZoneInfo(settings.hours.timezone)
    templates = Templates(
        templates_dir(settings), languages=cfg.languages, default_language=cfg.default_language
    )
    rendered = templates.render(
        "report",
        cfg.default_language,
        {
            "company": cfg.company,
            "display_name": cfg.display_name,
            "support_address": cfg.support_address,
            "period": _period_text(now - period, now, zone),
            "summary_lines": summary_lines(summary, cfg.default_language),
        },
    )
    message_id = tokens.message_id(
        load_secret(settings), cfg.domain, 0, "report", f"{now - period:.0f}:{to}"
    )
    out = Outgoing(
        to=(to,),
        from_name=cfg.display_name,
        from_addr=cfg.support_address,
        subject=rendered.subject,
        text=rendered.text,
        message_id=message_id,
        automatic=True,
        loop_domain=cfg.domain,
        attachments=(("report.html", "text/html", page.encode()),),
    )
    data = build(out, date=datetime.fromtimestamp(now, zone))
    plan = Plan(meta={LAST_SENT_KEY: repr(now)})
    plan.outgoing.append(
        Outbound(
            case=None,
            kind="report",
            message_id=message_id,
            envelope_from=cfg.support_address,
            to=(to,),
            automatic=True,
            data=data,
            text=rendered.text,
            shadow=cfg.mode == "shadow",
        )
    )
    plan.event("report_queued", to=to, message_id=message_id, since=now - period)
    with store.batch():
        store.apply(plan, now=now)
    return message_id
