"""`mailcare demo`, the README's first command, run as a user runs it."""

from __future__ import annotations

import email
import email.policy
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mailcare(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailcare.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_answers_each_sample_as_the_product_promises(tmp_path: Path) -> None:
    """Dead fibre: acknowledged with owner and case; printer: redirected; "Informazioni":
    acknowledged and left to a person; newsletter: no answer; the owner's reply relayed;
    a follow-up goes to the owner only; the out-of-office is filed silently."""
    out = tmp_path / "demo-out"
    done = mailcare("demo", "--out", str(out), "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    text = done.stdout
    states = dict(re.findall(r"^  #(\d+) (\w+) ", text, re.MULTILINE))
    assert states == {
        "1000": "open",
        "1001": "redirected",
        "1002": "new",
        "1003": "new",
        "1004": "new",
    }
    steps = re.split(r"^\[\d\] ", text, flags=re.MULTILINE)[1:]
    assert len(steps) == 8
    fibre, printer, invoice, vague, newsletter, agent, followup, robot = steps
    assert (
        "scope: in connectivity" in fibre and 'sent to mario.rossi@libero.it: "[EX #1000]' in fibre
    )
    assert "scope: out device" in printer
    assert "scope: in billing" in invoice
    assert "scope: unsure" in vague and "sent to lucia.neri@tiscali.it" in vague
    assert "no automatic reply" in newsletter and "noreply@" not in newsletter.split("writes")[1]
    assert "sent to mario.rossi@libero.it" in agent
    assert "sent to giulia.rossi@examplenet.it" in followup
    assert "sent to" not in robot

    sent = [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in sorted((out / "sent").glob("*.eml"))
    ]
    ack = next(
        m for m in sent if m["To"] == "mario.rossi@libero.it" and "Nuova" not in m["Subject"]
    )
    body = ack.get_body(("plain",))
    assert body is not None
    assert "1000" in body.get_content() and ack["Auto-Submitted"] == "auto-replied"
    redirect = next(m for m in sent if m["To"] == "anna.verdi@gmail.com")
    assert "rispond" in redirect.get_body(("plain",)).get_content().lower()  # type: ignore[union-attr]
    assert (out / "report.html").stat().st_size > 0

    case = mailcare("case", "1001", "--config", str(out / "demo.toml"), cwd=tmp_path)
    assert case.returncode == 0, case.stderr
    assert "redirected" in case.stdout and "device" in case.stdout
