"""`mailcare report` and the scheduled report mail, on the week of history of test_stats."""

from __future__ import annotations

import email
import email.policy
import json
import re
import subprocess
import types
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_stats import GIULIA, NOW, OFFICE, SINCE, WEEK, build_history, write_config

from mailcare.cli import main
from mailcare.config import Settings, from_mapping
from mailcare.report import (
    grouped_days,
    last_report_sent,
    render_html,
    report_due,
    send_report,
    summary_lines,
    svg,
    write_report,
)
from mailcare.stats import collect, summarize
from mailcare.store import Store

CHROMIUM = Path("/usr/bin/chromium")
DAY_SECONDS = 86400.0


def _history(folder: Path) -> Store:
    db = Store(folder / "mailcare.db")
    with db.batch():
        build_history(db)
    return db


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A history of its own, for the tests that write (the report mail, the command)."""
    db = _history(tmp_path)
    yield db
    db.close()


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Read-only tests share one summary and one page: drawing four charts takes a while."""
    db = _history(tmp_path_factory.mktemp("history"))
    try:
        return summarize(collect(db, SINCE, NOW), OFFICE, NOW, promise_hours=4.0)
    finally:
        db.close()


@pytest.fixture
def frozen_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mailcare.cli.time", types.SimpleNamespace(time=lambda: NOW))


def settings_for(tmp_path: Path, **report: str) -> Settings:
    return from_mapping(
        {
            "mailcare": {"state_dir": str(tmp_path), "secret": "s" * 32},
            "agents": [{"name": "Giulia Rossi", "address": GIULIA}],
            "report": report,
        },
        base=tmp_path,
    )


# -- the page ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(summary: dict[str, Any]) -> str:
    return render_html(summary, company="ExampleNet", names={GIULIA: "Giulia Rossi"})


def test_page_has_four_inline_charts_and_no_url(page: str) -> None:
    """RELIABILITY M05: nothing in the page fetches anything when it is opened."""
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 4
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"\b(src|srcset|action)=", page)
    assert "<link" not in page and "@import" not in page
    # SVG references stay inside the page.
    references = re.findall(r'href="([^"]*)"', page)
    assert references and all(ref.startswith("#") for ref in references)


def test_page_escapes_database_text(page: str) -> None:
    """RELIABILITY M04: a customer's subject is shown, never run."""
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page


def test_chart_ids_are_unique_on_the_page(page: str) -> None:
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert ids and len(ids) == len(set(ids))
    for ref in re.findall(r'href="#([^"]+)"', page) + re.findall(r"url\(#([^)]+)\)", page):
        assert ref in ids


def test_page_shows_the_summary_tables(page: str) -> None:
    assert "<th>mails in</th><td>9</td>" in page
    assert "<th>p50 / p90 / p95</th><td>1.25 h / 4.30 h / 4.90 h</td>" in page
    assert "<td>giulia.rossi@examplenet.it</td><td class=num>3</td>" in page
    # The owners chart uses the agents' names; the promise line is labelled.
    assert "Giulia Rossi" in page
    assert "promise 4 h" in page


def test_page_of_unusual_data(summary: dict[str, Any]) -> None:
    """Text from the database with `$` or markup neither breaks matplotlib's mathtext nor
    reaches the page as markup; 30 owners are drawn as 14 bars and "16 others"; 100 days
    are drawn by week."""
    summary = json.loads(json.dumps(summary))
    summary["owners"] = [
        {"owner": f"agent{n}@x", "open": n + 1, "new": 0, "median_first_response": None}
        for n in range(30)
    ]
    summary["owners"][29]["owner"] = "$x^2$ <b>boss</b>@example.com"
    summary["daily"] = _days(100)
    summary["daily"][0]["scope"]["<i>odd</i> $kind"] = 1
    page = render_html(summary, company="<Acme & Co>")
    assert page.count("<svg") == 4
    assert "<b>" not in page and "<i>" not in page
    assert "&lt;b&gt;boss&lt;/b&gt;" in page
    assert "&lt;Acme &amp; Co&gt; support report" in page
    charts = page.split("<h2>")[0]
    assert "16 others" in charts and "agent28@x" in charts and "agent0@x" not in charts
    assert "Mails per week" in page and "Scope decisions per week" in page


def test_empty_period_still_draws_every_chart(tmp_path: Path) -> None:
    empty = Store(tmp_path / "empty.db")
    summary = summarize(collect(empty, SINCE, NOW), OFFICE, NOW, promise_hours=4.0)
    page = render_html(summary, company="ExampleNet")
    assert page.count("<svg") == 4
    assert page.count("no data in this period") == 3  # the mails chart shows zero bars


def _days(count: int) -> list[dict[str, Any]]:
    start = date(2026, 1, 1)
    return [
        {"day": (start + timedelta(days=n)).isoformat(), "mails_in": 1, "mails_out": 2,
         "new_cases": 1, "scope": {"in": 1} if n % 2 else {"out": 1}}
        for n in range(count)
    ]  # fmt: skip


def test_long_periods_are_drawn_by_week_or_by_30_days() -> None:
    """One bar a day up to 62 days; then weeks; then 30-day stretches."""
    daily, unit = grouped_days(_days(62))
    assert (len(daily), unit) == (62, "day")
    weekly, unit = grouped_days(_days(100))
    assert (len(weekly), unit) == (15, "week")
    assert weekly[0] == {"day": "2026-01-01", "mails_in": 7, "mails_out": 14, "new_cases": 7,
                         "scope": {"out": 4, "in": 3}}  # fmt: skip
    assert weekly[-1]["day"] == "2026-04-09" and weekly[-1]["mails_in"] == 2
    assert sum(w["mails_out"] for w in weekly) == 200
    stretches, unit = grouped_days(_days(731))
    assert (len(stretches), unit) == (25, "30 days")


def test_svg_is_bare_and_prefixed() -> None:
    from matplotlib.figure import Figure

    figure = Figure()
    figure.add_subplot().plot([1, 2, 3])
    text = svg(figure, "zz")
    assert text.startswith("<svg") and text.rstrip().endswith("</svg>")
    assert "xmlns" not in text and "<metadata" not in text and "http" not in text
    assert all(name.startswith("zz-") for name in re.findall(r'\bid="([^"]+)"', text))


# -- the command -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("frozen_cli", "store")
def test_report_command_writes_the_page(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    result = CliRunner().invoke(
        main, ["report", "--config", str(config), "--out", str(out), "--since", "7d"]
    )
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out} (8 new cases, 9 mails in)\n"
    page = out.read_text(encoding="utf-8")
    assert page.count("<svg") == 4
    assert "http://" not in page and "https://" not in page
    assert "&lt;script&gt;" in page and "<script" not in page
    assert not list(out.parent.glob("*.partial"))


@pytest.mark.usefixtures("frozen_cli", "store")
def test_report_command_rejects_a_bad_period(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = CliRunner().invoke(main, ["report", "--config", str(config), "--since", "month"])
    assert result.exit_code == 2
    assert "'month' is not a period" in result.output


@pytest.mark.usefixtures("frozen_cli", "store")
def test_report_command_into_a_missing_folder_fails_in_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    out = tmp_path / "nowhere" / "report.html"
    result = CliRunner().invoke(main, ["report", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 1
    assert result.output == f"mailcare: {out}: cannot write the report: No such file or directory\n"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_page_renders_in_headless_chromium(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    write_report(settings_for(tmp_path), store, out, WEEK, NOW)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
         f"--screenshot={shot}", "--window-size=1100,2400", out.as_uri()],
        check=True, timeout=60, capture_output=True,
    )  # fmt: skip
    assert shot.stat().st_size > 10_000


# -- the schedule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "every", "now", "due"),
    [
        (None, "", 1e9, False),
        (1e9 - 10 * DAY_SECONDS, "", 1e9, False),
        (None, "daily", 1e9, True),
        (None, "weekly", 1e9, True),
        (1e9 - DAY_SECONDS + 1, "daily", 1e9, False),
        (1e9 - DAY_SECONDS, "daily", 1e9, True),
        (1e9 - 6 * DAY_SECONDS, "weekly", 1e9, False),
        (1e9 - 7 * DAY_SECONDS, "weekly", 1e9, True),
        (1e9 + 3600, "weekly", 1e9, True),  # sent "in the future": the clock was wrong
    ],
)
def test_report_due(last: float | None, every: str, now: float, due: bool) -> None:
    assert report_due(last, every, now) is due


def test_summary_lines_in_two_languages(summary: dict[str, Any]) -> None:
    assert summary_lines(summary, "en") == [
        "8 new cases, 2 closed",
        "9 mails in, 11 out",
        "first answer after 1.2 working hours (median), 4.3 for 90%",
        "2 cases still waiting for a first answer",
        "1 sent elsewhere, 1 passed to other teams, 2 unsure",
        "undelivered mails: 1",
    ]
    assert summary_lines(summary, "it")[2] == (
        "prima risposta dopo 1,2 ore lavorative (mediana), 4,3 per il 90%"
    )
    assert summary_lines(summary, "fr") == summary_lines(summary, "en")


def test_send_report_queues_one_mail_with_the_page(store: Store, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, to="boss@examplenet.it", every="weekly")
    assert report_due(last_report_sent(store), "weekly", NOW)
    message_id = send_report(settings, store, NOW)
    assert message_id is not None and message_id.startswith("mc.report.0.")
    rows = list(store.query("SELECT * FROM outbox WHERE kind = 'report'"))
    assert len(rows) == 1
    row = rows[0]
    assert (row["status"], row["to_addr"], row["automatic"], row["case_number"]) == (
        "pending", "boss@examplenet.it", 1, None)  # fmt: skip
    assert json.loads(row["recipients"]) == ["boss@examplenet.it"]
    message = email.message_from_bytes(row["data"], policy=email.policy.default)
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Message-ID"] == f"<{message_id}>"
    assert message["Subject"] == "Riepilogo assistenza ExampleNet: 2026-11-16 – 2026-11-23"
    body = message.get_body(("plain",))
    assert body is not None and "- 8 pratiche nuove, 2 chiuse" in body.get_content()
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "report.html"
    assert attachment.get_content_type() == "text/html"
    page = attachment.get_content()
    assert page.count("<svg") == 4 and "&lt;script&gt;" in page
    assert last_report_sent(store) == NOW
    assert not report_due(last_report_sent(store), "weekly", NOW + 3600)
    assert report_due(last_report_sent(store), "weekly", NOW + WEEK)
    events = list(store.query("SELECT kind, detail FROM events WHERE kind = 'report_queued'"))
    assert json.loads(events[0]["detail"])["message_id"] == message_id


def test_send_report_without_recipient_sends_nothing(store: Store, tmp_path: Path) -> None:
    assert send_report(settings_for(tmp_path, every="daily"), store, NOW) is None
    assert not list(store.query("SELECT 1 FROM outbox WHERE kind = 'report'"))
    assert last_report_sent(store) is None


def test_daily_report_in_shadow_mode(store: Store, tmp_path: Path) -> None:
    """A daily report covers one day; in shadow mode it is kept in the outbox, not sent,
    like every other mail."""
    settings = from_mapping(
        {"mailcare": {"state_dir": str(tmp_path), "secret": "s" * 32, "mode": "shadow"},
         "report": {"to": "boss@examplenet.it", "every": "daily"}},
        base=tmp_path,
    )  # fmt: skip
    send_report(settings, store, NOW)
    [row] = store.query("SELECT status, data FROM outbox WHERE kind = 'report'")
    assert row["status"] == "shadow"
    message = email.message_from_bytes(row["data"], policy=email.policy.default)
    assert message["Subject"].endswith(": 2026-11-22 – 2026-11-23")
