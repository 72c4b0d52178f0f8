"""The admin's CLI over a real daemon run: cases, case, agents, assign/close/reopen, scope,
and the Prometheus metrics endpoint."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

from click.testing import CliRunner
from spine import acks_to, customer_mail, running_daemon, wait_until, write_config

from mailcare.cli import main
from mailcare.sandbox import LabImap, LabSmtp

USER = "support@lab.test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_admin_commands_and_metrics(tmp_path: Path, lab_imap: LabImap, lab_smtp: LabSmtp) -> None:
    port = _free_port()
    config = write_config(
        tmp_path / "mailcare.toml",
        imap_host=lab_imap.host,
        imap_port=lab_imap.port,
        user=USER,
        password="secret",
        smtp_host=lab_smtp.host,
        smtp_port=lab_smtp.port,
        state_dir=tmp_path / "state",
        extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n',
    )
    with running_daemon(config) as daemon:
        lab_imap.deliver(USER, customer_mail(sender="anna@example.org", subject="Fibra giù"))
        wait_until(lambda: len(lab_smtp.received) >= 2)
        wait_until(lambda: acks_to(lab_smtp.received, "anna@example.org") != [])
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = metrics.decode()
        assert 'mailcare_messages_processed_total{outcome="new_case"} 1.0' in text
        wait_until(
            lambda: (
                'mailcare_mails_sent_total{kind="ack"} 1.0'
                in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                .read()
                .decode()
            )
        )
        for name in (
            "mailcare_outbox_pending",
            "mailcare_ack_latency_seconds_bucket",
            "mailcare_processing_seconds_bucket",
            "mailcare_imap_reconnects_total",
            "mailcare_autoreplies_suppressed_total",
        ):
            assert name in text or name.rsplit("_", 1)[0] in text

        listing = json.loads(_cli("cases", "--config", str(config), "--json"))
        assert [row["number"] for row in listing] == [1000]
        owner = listing[0]["owner"]
        other = (
            "marco@examplenet.it" if owner == "giulia@examplenet.it" else ("giulia@examplenet.it")
        )

        agents = json.loads(_cli("agents", "--config", str(config), "--json"))
        assert {a["address"]: a["open"] for a in agents}[owner] == 1

        out = _cli(
            "assign",
            "1000",
            "Marco Bianchi" if other.startswith("marco") else "Giulia",
            "--config",
            str(config),
        )
        assert "assigned" in out
        # the running daemon sends the new owner their notice
        wait_until(
            lambda: any(other in r.rcpt_tos for r in lab_smtp.received),
            what="transfer notice to the new owner",
        )
        assert "closed" in _cli("close", "1000", "--config", str(config))
        assert "open" in _cli("reopen", "1000", "--config", str(config))
        assert "scope set" in _cli("scope", "1000", "in", "connectivity", "--config", str(config))
        assert daemon.processed == 1

    shown = json.loads(_cli("case", "1000", "--config", str(config), "--json"))
    assert shown["case"]["owner"] == other
    assert shown["case"]["state"] == "open"
    kinds = [e["kind"] for e in shown["events"]]
    for kind in ("owner_changed", "case_closed", "case_reopened", "scope_corrected"):
        assert kind in kinds
    human = _cli("case", "1000", "--config", str(config))
    assert "joined by new" in human and "history:" in human
    corrections = (tmp_path / "state" / "corrections.jsonl").read_text(encoding="utf-8")
    assert json.loads(corrections.splitlines()[-1])["category"] == "connectivity"
