"""The admin's door: `mailcare run | demo | check | cases | case | replay | train | eval | …`.

Errors are one line without a traceback (a config mistake is the commonest way a service
fails), and every command has `--help`.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from . import config as config_mod
from .config import ConfigError, Settings
from .store import StoreError

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Path to mailcare.toml (default: $MAILCARE_CONFIG or ./mailcare.toml).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _config_path(path: Path | None) -> Path:
    import os

    if path is not None:
        return path
    env = os.environ.get("MAILCARE_CONFIG")
    return Path(env) if env else Path("mailcare.toml")


def _settings(path: Path | None) -> Settings:
    return config_mod.load(_config_path(path))


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"mailcare: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns the expected failures into one readable line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, StoreError) as exc:
            _fail(str(exc), 2 if isinstance(exc, ConfigError) else 1)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        return None


@click.group(cls=_Group)
@click.version_option(package_name="mailcare")
def main() -> None:
    """mailcare runs a support inbox: cases, scope, one owner per case, answers like a person."""


# -- running ---------------------------------------------------------------------------


@main.command()
@config_option
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text (journald-friendly, default) or JSON lines.",
)
@click.option("--once", is_flag=True, help="Process what is waiting, then exit.")
def run(config_path: Path | None, log_format: str | None, once: bool) -> None:
    """Run the daemon (under systemd: Type=notify)."""
    from .daemon import Daemon
    from .logs import setup_logging
    from .store import AlreadyRunning

    path = _config_path(config_path)
    settings = config_mod.load(path)
    setup_logging(log_format or settings.log.format, settings.log.level)
    daemon = Daemon(settings, config_path=path, once=once, log_format=log_format)
    daemon.install_signals()
    try:
        code = daemon.run()
    except AlreadyRunning as exc:
        _fail(str(exc))
        return
    sys.exit(code)


@main.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("demo-out"),
    help="Folder for the sent mails and the demo's state (default ./demo-out).",
)
@click.option("--quiet", is_flag=True, help="Only the timeline, no daemon log lines.")
def demo(out: Path, quiet: bool) -> None:
    """Run mailcare on built-in servers and sample mail, and print what it did."""
    from .demo import run_demo

    sys.exit(run_demo(out, quiet=quiet))


@main.command()
@config_option
@click.option("--offline", is_flag=True, help="Skip the IMAP and SMTP connection checks.")
def check(config_path: Path | None, offline: bool) -> None:
    """Validate the config, render every template, train the classifier, try IMAP and SMTP."""
    from .checks import run_checks

    problems = run_checks(_settings(config_path), offline=offline, echo=click.echo)
    if problems:
        for problem in problems:
            click.echo(f"problem: {problem}", err=True)
        sys.exit(1)
    click.echo("all checks passed")


# -- reading cases -----------------------------------------------------------------------


def _store(settings: Settings) -> Any:
    from .pipeline import state_db
    from .store import Store

    return Store(state_db(settings), create=False)


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M")


@main.command()
@config_option
@json_option
@click.option("--state", default=None, help="Only cases in this state (new, open, waiting…).")
@click.option("--limit", default=200, show_default=True)
def cases(config_path: Path | None, as_json: bool, state: str | None, limit: int) -> None:
    """List cases, newest first."""
    store = _store(_settings(config_path))
    rows = store.cases(state=state, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, default=str, indent=1))
        return
    click.echo(f"{'case':>6}  {'state':<10} {'scope':<22} {'owner':<26} {'opened':<16} subject")
    for row in rows:
        scope = f"{row['scope_kind']}/{row['scope_category']}".rstrip("/")
        click.echo(
            f"{row['number']:>6}  {row['state']:<10} {scope:<22} "
            f"{(row['owner'] or '-'):<26} {_when(row['created_at']):<16} "
            f"{row['subject'][:60]}"
        )


@main.command()
@click.argument("number", type=int)
@config_option
@json_option
def case(number: int, config_path: Path | None, as_json: bool) -> None:
    """Show one case: its messages (both directions, and how each joined) and its history."""
    store = _store(_settings(config_path))
    row = store.case(number)
    if row is None:
        _fail(f"no case {number}")
        return
    messages = store.case_messages(number)
    events = store.case_events(number)
    outbox = store.case_outbox(number)
    for event in events:
        event["detail"] = json.loads(event["detail"])
    if as_json:
        data = {
            "case": row,
            "messages": [_message_json(m) for m in messages],
            "events": events,
            "outbox": outbox,
        }
        click.echo(json.dumps(data, ensure_ascii=False, default=str, indent=1))
        return
    click.echo(f"case {number}: {row['subject']}")
    click.echo(f"  customer {row['customer']}  owner {row['owner'] or '-'}  state {row['state']}")
    click.echo(
        f"  scope {row['scope_kind']} {row['scope_category']} "
        f"({row['scope_confidence']:.2f}): {row['scope_reason']}"
    )
    click.echo("messages:")
    for m in messages:
        how = f"  joined by {m['matched_by']}" if m["matched_by"] else ""
        arrow = "<-" if m["direction"] == "in" else "->"
        who = m["sender"] if m["direction"] == "in" else ",".join(json.loads(m["recipients"]))
        click.echo(
            f"  {_when(m['created_at'])} {arrow} {m['role']:<9} {m['kind'] or '':<13} {who}{how}"
        )
    click.echo("history:")
    for e in events:
        detail = " ".join(f"{k}={v}" for k, v in e["detail"].items() if v not in (None, ""))
        click.echo(f"  {_when(e['at'])} {e['kind']:<22} {e['actor']:<24} {detail}")


def _message_json(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "message_id": m["message_id"],
        "direction": m["direction"],
        "role": m["role"],
        "kind": m["kind"],
        "sender": m["sender"],
        "recipients": json.loads(m["recipients"]),
        "subject": m["subject"],
        "matched_by": m["matched_by"],
        "reason": m["reason"],
        "created_at": m["created_at"],
        "text": m["text"],
    }


# -- replay ------------------------------------------------------------------------------


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@config_option
@json_option
@click.option("--fresh", is_flag=True, help="Start from an empty store (stable case numbers).")
def replay(paths: tuple[Path, ...], config_path: Path | None, as_json: bool, fresh: bool) -> None:
    """Run .eml files, mbox files or Maildir folders through the pipeline; send nothing."""
    from .replay import replay_paths

    settings = _settings(config_path)
    for result in replay_paths(settings, list(paths), fresh=fresh):
        if as_json:
            click.echo(json.dumps(result, ensure_ascii=False))
        else:
            case_text = f"case {result['case']}" if result["case"] else "no case"
            new = " (new)" if result["new_case"] else ""
            click.echo(
                f"{result['source']}: {case_text}{new} by {result['matched_by'] or '-'}; "
                f"actions {','.join(result['actions']) or 'none'}"
                + (f"; {'; '.join(result['reasons'])}" if result["reasons"] else "")
            )


# -- scope -------------------------------------------------------------------------------


@main.command()
@config_option
def train(config_path: Path | None) -> None:
    """Retrain the scope model from classifiers/ and print a summary."""
    from .evaluate import cli_train

    click.echo(cli_train(_settings(config_path)))


@main.command(name="eval")
@config_option
@click.option(
    "--train",
    "train_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Training JSONL (default: the configured examples).",
)
@click.option(
    "--test",
    "test_path",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="Labelled JSONL to evaluate on.",
)
@click.option(
    "--out-categories",
    default=None,
    help="Comma-separated categories that mean 'not ours' (default: from config).",
)
@json_option
def eval_command(
    config_path: Path | None,
    train_path: Path | None,
    test_path: Path,
    out_categories: str | None,
    as_json: bool,
) -> None:
    """Precision/recall, confusion matrix, wrong-redirect rate, out-of-scope recall, unsure."""
    from .evaluate import cli_eval, format_report

    path = _config_path(config_path)
    settings = config_mod.load(path if config_path or path.exists() else None)
    outs = set(out_categories.split(",")) if out_categories else None
    report = cli_eval(settings, train_path, test_path, outs)
    click.echo(json.dumps(report, indent=1) if as_json else format_report(report))


@main.command(name="scope")
@click.argument("number", type=int)
@click.argument("decision", nargs=-1, required=True)
@config_option
def scope_command(number: int, decision: tuple[str, ...], config_path: Path | None) -> None:
    """Correct a case's scope: `in [category]`, `out CATEGORY` or `route CATEGORY`."""
    _admin(config_path, number, "scope", " ".join(decision))


# -- ownership ---------------------------------------------------------------------------


@main.command()
@config_option
@json_option
def agents(config_path: Path | None, as_json: bool) -> None:
    """Agents with their open cases and availability."""
    from .owners import available

    settings = _settings(config_path)
    counts = _store(settings).open_counts()
    today = datetime.now().date()
    rows = [
        {
            "name": a.name,
            "address": a.address,
            "open": counts.get(a.address, 0),
            "available": available(a, today),
            "queues": list(a.queues),
            "languages": list(a.languages),
            "lead": a.lead,
        }
        for a in settings.agents
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        status = "available" if r["available"] else "away"
        click.echo(
            f"{r['name']:<20} {r['address']:<30} open {r['open']:>3}  {status:<9} "
            f"queues {','.join(r['queues']) or 'all'}"
        )


@main.command()
@click.argument("number", type=int)
@click.argument("agent")
@config_option
def assign(number: int, agent: str, config_path: Path | None) -> None:
    """Give case NUMBER to AGENT (name or address); the new owner is told."""
    _admin(config_path, number, "assign", agent)


@main.command(name="close")
@click.argument("number", type=int)
@config_option
def close_command(number: int, config_path: Path | None) -> None:
    """Close a case."""
    _admin(config_path, number, "close", "")


@main.command()
@click.argument("number", type=int)
@config_option
def reopen(number: int, config_path: Path | None) -> None:
    """Reopen a case."""
    _admin(config_path, number, "reopen", "")


def _admin(config_path: Path | None, number: int, action: str, arg: str) -> None:
    from .admin import apply_admin

    settings = _settings(config_path)
    message = apply_admin(settings, number, action, arg, now=time.time())
    click.echo(message)


# -- reporting ---------------------------------------------------------------------------


def _period(ctx: click.Context, param: click.Parameter, value: str) -> float:
    from .stats import parse_since

    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


@main.command()
@config_option
@json_option
@click.option(
    "--since",
    "period",
    default="7d",
    show_default=True,
    callback=_period,
    help="How far back to look: 24h, 7d, 2w, 30d…",
)
def stats(config_path: Path | None, as_json: bool, period: float) -> None:
    """Volumes, scope decisions, response times (working hours), owners' load, holds."""
    from .stats import format_text, stats_for

    settings = _settings(config_path)
    summary = stats_for(settings, _store(settings), period, time.time())
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False, indent=1))
        return
    click.echo(format_text(summary), nl=False)


@main.command()
@config_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="The HTML file to write.",
)
@click.option(
    "--since",
    "period",
    default="30d",
    show_default=True,
    callback=_period,
    help="How far back to look: 24h, 7d, 2w, 30d…",
)
def report(config_path: Path | None, out: Path, period: float) -> None:
    """Write the stats with charts as one self-contained HTML page."""
    from .report import write_report

    settings = _settings(config_path)
    try:
        summary = write_report(settings, _store(settings), out, period, time.time())
    except OSError as exc:
        _fail(f"{out}: cannot write the report: {exc.strerror or exc}")
        return
    click.echo(
        f"wrote {out} ({summary['volume']['new_cases']} new cases, "
        f"{summary['volume']['mails_in']} mails in)"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
