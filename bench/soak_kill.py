"""Crash soak (RELIABILITY C01): deliver mail, start `mailcare run`, SIGKILL it, repeat.

    .venv/bin/python bench/soak_kill.py [--kills 200] [--mails-per-round 20] [--seed 1]

A private Dovecot (tests/dovecot.py) and the aiosmtpd sink (mailcare.sandbox.LabSmtp) run on
127.0.0.1. Each round delivers a random mix of mail (new customers, replies to earlier acks,
out-of-office answers, bounces of our acks, agent commands), starts the daemon as its own
process and kills it with SIGKILL after 0-3 s, wherever it is: importing, in the middle of
a batch, between an SMTP 250 and the commit. A last run drains everything and is stopped
with SIGTERM. Then the invariants are checked and printed:

- every delivered mail is stored exactly once, and still on the server;
- every case has its ack (sent), or a recorded reason why not;
- no case got two different acks; the same ack twice (same Message-ID, sent but not recorded
  before the kill) is allowed and counted;
- `PRAGMA integrity_check` is ok; no outbox row is left pending;
- no case ever had two owners (one `assigned` event, notifications to the owner only).

The exit code is 1 when any invariant fails. Timings vary from run to run, so a failure may
not repeat exactly; the seed fixes the mail and the kill times.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import dovecot as dovecot_lab  # noqa: E402
from spine import AGENTS, customer_mail, header, reply_to, with_settings  # noqa: E402
from spine import config_text as lab_config  # noqa: E402

from mailcare.sandbox import LabSmtp, Received  # noqa: E402

CUSTOMERS = [f"cliente{n}@example.org" for n in range(300)]
MIX = (("new", 50), ("reply", 20), ("oof", 10), ("bounce", 8), ("agent", 12))
ACK_KINDS = ("ack", "redirect", "route_customer")


@dataclass
class Soak:
    """The lab, the mail delivered so far, and the daemon runs."""

    args: argparse.Namespace
    lab: dovecot_lab.Dovecot
    sink: LabSmtp
    work: Path
    rng: random.Random
    user: str = ""
    delivered: list[str] = field(default_factory=list)  # Message-IDs, without brackets
    kinds: Counter[str] = field(default_factory=Counter)
    killed: int = 0
    final_code: int | None = None
    # What the sink received so far, by kind (ack, notify_owner...), read once per message.
    sent: defaultdict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    indexed: int = 0

    @property
    def config(self) -> Path:
        return self.work / "mailcare.toml"

    @property
    def db(self) -> Path:
        return self.work / "state" / "mailcare.db"


# -- the mail ---------------------------------------------------------------------------


def field_of(data: bytes, name: str) -> str:
    """A header of a mail we sent (plain ASCII, one line): faster than the email package,
    which matters when thousands of sent mails are looked at every round."""
    found = re.search(
        rb"^" + name.encode() + rb":[ \t]*(.*?)\r?$",
        data.split(b"\r\n\r\n", 1)[0],
        re.IGNORECASE | re.MULTILINE,
    )
    return found.group(1).decode("ascii", "replace").strip() if found else ""


def sent_of(soak: Soak, kind: str) -> list[Received]:
    """Mail the daemon sent so far whose Message-ID says it is of this kind."""
    received = soak.sink.received
    for message in received[soak.indexed :]:
        mid = field_of(message.data, "Message-ID")
        if mid.startswith("<mc."):
            soak.sent[mid.split(".")[1].replace("-", "_")].append(message)
    soak.indexed = len(received)
    return soak.sent[kind]


def new_mail(soak: Soak) -> bytes:
    sender = soak.rng.choice(CUSTOMERS)
    topic = soak.rng.choice(["Fibra lenta", "Modem spento", "Fattura doppia", "Linea muta"])
    return customer_mail(sender=sender, subject=f"{topic} {soak.rng.randrange(10**6)}")


def reply_mail(soak: Soak, ack: Received) -> bytes:
    return reply_to(ack.data, f"Cliente <{ack.rcpt_tos[0]}>", "Aggiungo: il problema continua.")


def oof_mail(soak: Soak, ack: Received) -> bytes:
    return reply_to(
        ack.data,
        f"Cliente <{ack.rcpt_tos[0]}>",
        "Sono in ferie fino a lunedì.",
        prefix="Risposta automatica: ",
        Auto_Submitted="auto-replied",
    )


def bounce_mail(soak: Soak, ack: Received) -> bytes:
    """An RFC 3464 report of our ack to its VERP envelope sender, as Postfix writes it."""
    head = ack.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    boundary = f"soak-{soak.rng.randrange(10**9)}"
    text = (
        f"Return-Path: <>\nDelivered-To: {ack.mail_from}\n"
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\n"
        f"To: {ack.mail_from}\nSubject: Undelivered Mail Returned to Sender\n"
        f"Date: {format_datetime(time_now())}\nMessage-ID: {make_msgid(domain='mx.example')}\n"
        "MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; "
        f'boundary="{boundary}"\n\n--{boundary}\nContent-Type: text/plain\n\nUndeliverable.\n'
        f"\n--{boundary}\nContent-Type: message/delivery-status\n\n"
        f"Reporting-MTA: dns; mx.example.org\n\nFinal-Recipient: rfc822; {ack.rcpt_tos[0]}\n"
        f"Action: failed\nStatus: 5.1.1\n\n--{boundary}\nContent-Type: text/rfc822-headers\n\n"
        f"{head}\n\n--{boundary}--\n"
    )
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def agent_mail(soak: Soak, notice: Received) -> bytes:
    """The owner answers the notification: a command, or words for the customer."""
    address = notice.rcpt_tos[0]
    name = next(n for n, a in AGENTS if a == address)
    body = soak.rng.choice(
        [
            "#note richiamato il cliente",
            "#take",
            "#close",
            "Buongiorno, abbiamo riavviato la porta: ora dovrebbe andare.",
        ]
    )
    return reply_to(notice.data, f"{name} <{address}>", body)


def time_now() -> Any:
    from datetime import datetime

    return datetime.now().astimezone()


def one_mail(soak: Soak) -> tuple[str, bytes]:
    """A mail of a random kind; a kind that needs earlier mail of ours falls back to new."""
    kind = soak.rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
    acks = sent_of(soak, "ack") if kind in ("reply", "oof", "bounce") else []
    notices = sent_of(soak, "notify_owner") if kind == "agent" else []
    if kind in ("reply", "oof", "bounce") and acks:
        build = {"reply": reply_mail, "oof": oof_mail, "bounce": bounce_mail}[kind]
        return kind, build(soak, soak.rng.choice(acks))
    if kind == "agent" and notices:
        return kind, agent_mail(soak, soak.rng.choice(notices))
    return "new", new_mail(soak)


def deliver_round(soak: Soak) -> None:
    for _ in range(soak.args.mails_per_round):
        kind, raw = one_mail(soak)
        soak.lab.deliver(soak.user, raw)
        soak.delivered.append(header(raw, "Message-ID").strip("<>"))
        soak.kinds[kind] += 1


# -- the daemon -------------------------------------------------------------------------


def start(soak: Soak) -> subprocess.Popen[bytes]:
    log = (soak.work / "daemon.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "mailcare.cli", "run", "--config", str(soak.config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def kill_round(soak: Soak) -> None:
    process = start(soak)
    time.sleep(soak.rng.uniform(0.0, 3.0))
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    soak.killed += 1


def drain(soak: Soak, timeout: float = 600.0) -> None:
    """A last run until every delivered mail is stored and the outbox is empty; SIGTERM."""
    process = start(soak)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        if process.poll() is not None:
            break
        stored, pending = progress(soak)
        if stored >= len(set(soak.delivered)) and pending == 0:
            break
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    soak.final_code = process.wait(60)


def progress(soak: Soak) -> tuple[int, int]:
    if not soak.db.exists():
        return 0, 0
    rows = query(
        soak,
        "SELECT (SELECT COUNT(*) FROM messages WHERE direction = 'in'), "
        "(SELECT COUNT(*) FROM outbox WHERE status = 'pending')",
    )
    return int(rows[0][0]), int(rows[0][1])


def query(soak: Soak, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{soak.db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# -- the checks -------------------------------------------------------------------------


def check(soak: Soak) -> tuple[list[tuple[str, Any]], list[str]]:
    """The figures to print, and the violated invariants."""
    figures: list[tuple[str, Any]] = []
    problems: list[str] = []
    _check_stored(soak, figures, problems)
    _check_acks(soak, figures, problems)
    _check_owners(soak, figures, problems)
    integrity = query(soak, "PRAGMA integrity_check")[0][0]
    pending = query(soak, "SELECT COUNT(*) FROM outbox WHERE status = 'pending'")[0][0]
    figures += [
        ("integrity_check", integrity),
        ("pending outbox rows", pending),
        ("daemon runs killed", soak.killed),
        ("final run exit code", soak.final_code),
    ]
    if integrity != "ok":
        problems.append(f"integrity_check: {integrity}")
    if pending:
        problems.append(f"{pending} outbox rows still pending")
    if soak.final_code != 0:
        problems.append(f"the final run exited with {soak.final_code}")
    return figures, problems


def _check_stored(soak: Soak, figures: list[tuple[str, Any]], problems: list[str]) -> None:
    stored = Counter(
        r[0] for r in query(soak, "SELECT message_id FROM messages WHERE direction = 'in'")
    )
    delivered = Counter(soak.delivered)
    missing = [mid for mid in delivered if stored[mid] == 0]
    twice = [mid for mid, n in stored.items() if n > 1]
    on_server = soak.lab.status(soak.user)["messages"]
    mix = _counts(soak.kinds)
    figures += [
        ("delivered mails", f"{len(soak.delivered)} ({mix})"),
        ("stored exactly once", sum(1 for mid in delivered if stored[mid] == 1)),
        ("missing / stored twice", f"{len(missing)} / {len(twice)}"),
        ("still on the IMAP server", on_server),
    ]
    if missing:
        problems.append(f"{len(missing)} delivered mails not stored, e.g. {missing[:3]}")
    if twice or len(delivered) != len(soak.delivered):
        problems.append(
            f"stored twice: {twice[:3]}; delivered ids repeated: "
            f"{len(soak.delivered) - len(delivered)}"
        )
    if on_server != len(soak.delivered):
        problems.append(f"{on_server} mails on the server, {len(soak.delivered)} delivered")


def _check_acks(soak: Soak, figures: list[tuple[str, Any]], problems: list[str]) -> None:
    cases = [r[0] for r in query(soak, "SELECT number FROM cases")]
    marks = ",".join("?" * len(ACK_KINDS))
    sent_rows = query(
        soak,
        f"SELECT case_number, message_id FROM outbox WHERE kind IN ({marks}) AND status = 'sent'",
        *ACK_KINDS,
    )
    acked = {case for case, _ in sent_rows}
    reasons = {
        case: json.loads(detail).get("reason", "")
        for case, detail in query(
            soak, "SELECT case_number, detail FROM events WHERE kind = 'suppressed_autoreply'"
        )
    }
    why = Counter(reason.partition(":")[0] for case, reason in reasons.items() if case not in acked)
    neither = [case for case in cases if case not in acked and case not in reasons]
    copies: Counter[str] = Counter()
    ids_per_case: defaultdict[str, set[str]] = defaultdict(set)
    for kind in ACK_KINDS:
        for received in sent_of(soak, kind):
            mid = field_of(received.data, "Message-ID")
            copies[mid] += 1
            ids_per_case[field_of(received.data, "X-Mailcare-Case")].add(mid)
    two_acks = sorted(case for case, ids in ids_per_case.items() if len(ids) > 1)
    unseen = [mid for _, mid in sent_rows if f"<{mid}>" not in copies]
    figures += [
        ("cases", len(cases)),
        ("  with their ack sent", len(acked)),
        ("  with a recorded reason instead", f"{sum(why.values())} ({_counts(why)})"),
        ("  with neither", len(neither)),
        ("acks at the sink", f"{sum(copies.values())} copies of {len(copies)} Message-IDs"),
        ("  resent with the same Message-ID", sum(n - 1 for n in copies.values())),
        ("cases with two different acks", len(two_acks)),
    ]
    if neither:
        problems.append(f"{len(neither)} cases without ack or reason, e.g. {neither[:5]}")
    if two_acks:
        problems.append(f"cases with two different acks: {two_acks[:5]}")
    if unseen:
        problems.append(f"{len(unseen)} acks recorded as sent never reached the sink")


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {n}" for key, n in counter.most_common())


def _check_owners(soak: Soak, figures: list[tuple[str, Any]], problems: list[str]) -> None:
    owners = dict(query(soak, "SELECT number, owner FROM cases"))
    assigned = Counter(
        r[0] for r in query(soak, "SELECT case_number FROM events WHERE kind = 'assigned'")
    )
    notified: defaultdict[int, set[str]] = defaultdict(set)
    for received in sent_of(soak, "notify_owner"):
        notified[int(field_of(received.data, "X-Mailcare-Case"))].update(received.rcpt_tos)
    bad = sorted(
        {case for case, n in assigned.items() if n > 1}
        | {case for case, who in notified.items() if who != {owners.get(case)}}
    )
    figures.append(("cases with more than one owner", len(bad)))
    if bad:
        problems.append(f"cases with more than one owner: {bad[:5]}")


# -- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200, help="rounds ending in SIGKILL")
    parser.add_argument("--mails-per-round", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="figures as one JSON object")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    reason = dovecot_lab.available()
    if reason is not None:
        print(f"soak_kill: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mailcare-soak-") as folder, LabSmtp() as sink:
        lab = dovecot_lab.Dovecot.start()
        try:
            soak = Soak(args, lab, sink, Path(folder), random.Random(args.seed))
            soak.user = lab.fresh_user()
            text = lab_config(
                imap_host="127.0.0.1",
                imap_port=lab.port,
                user=soak.user,
                password="secret",
                smtp_host=sink.host,
                smtp_port=sink.port,
                state_dir=soak.work / "state",
            )
            soak.config.write_text(with_settings(text, imap={"batch_size": 10}))
            for _ in range(args.kills):
                deliver_round(soak)
                kill_round(soak)
            drain(soak)
            figures, problems = check(soak)
        finally:
            lab.stop()
    report(args, figures, problems, time.monotonic() - started)
    return 1 if problems else 0


def report(
    args: argparse.Namespace, figures: list[tuple[str, Any]], problems: list[str], took: float
) -> None:
    command = (
        f"python bench/soak_kill.py --kills {args.kills} --mails-per-round "
        f"{args.mails_per_round} --seed {args.seed}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "figures": dict(figures),
                    "problems": problems,
                    "seconds": round(took),
                    "command": shlex.split(command),
                },
                default=str,
            )
        )
        return
    print(
        f"soak_kill: {args.kills} SIGKILLs, {args.mails_per_round} mails per round, "
        f"seed {args.seed}, {took:.0f} s"
    )
    width = max(len(name) for name, _ in figures)
    for name, value in figures:
        print(f"  {name:<{width}}  {value}")
    for problem in problems:
        print(f"VIOLATION: {problem}")
    print(f"reproduce: {command}")
    print("RESULT: " + ("FAILED" if problems else "ok"))


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
