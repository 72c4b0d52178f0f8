"""Scale: the drain rate and the store's cost per mail with a year's history on disk.

    .venv/bin/python bench/scale.py [--mails 5000] [--messages 1000000] [--cases 200000]

A store is pre-filled with direct SQL in large transactions: `--cases` closed and open
cases with `--messages` messages between them (raw bytes kept small), their participants,
Message-IDs, events and sent outbox rows, under the schema and indexes of store.py. A
third of the customers are the senders of the mail about to arrive, so returning
customers meet their history. Then, for an empty store and for the pre-filled one:

  store cost  in this process, the same mails go through `pipeline.process` as the daemon
              runs it (a savepoint per mail, a transaction per batch of 200), with every
              Store call timed, and are rolled back afterwards;
  drain       `mailcare run` drains the mails from a private Dovecot, as in drain.py,
              with its peak RSS.

Targets: the drain rate with the history >= 90% of the empty-store rate; RSS under 200 MB.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _lab

from mailcare import config as config_mod
from mailcare import pipeline
from mailcare.store import Store

AGENTS = (
    "giulia.rossi@examplenet.it",
    "marco.bianchi@examplenet.it",
    "sara.conti@examplenet.it",
    "luca.ferrari@examplenet.it",
)
YEAR = 365 * 86400.0
CHUNK = 50_000  # rows per transaction while filling
# What `pipeline.process` and the daemon ask of the store for each mail.
TIMED = (
    "has_uid",
    "has_message",
    "resolve",
    "case",
    "first_customer_text",
    "customer_message_ids",
    "last_take",
    "next_case_number",
    "open_counts",
    "meta",
    "previous_owner",
    "automatic_sent",
    "suppressed_until",
    "apply",
)


# --------------------------------------------------------------------------- pre-fill


def _mid(prefix: str, number: int) -> str:
    return f"{hashlib.blake2b(f'{prefix}{number}'.encode(), digest_size=10).hexdigest()}@{prefix}"


class History:
    """Rows for `cases` cases and `messages` messages, generated case by case."""

    def __init__(self, cases: int, messages: int, customers: list[str], now: float) -> None:
        self.cases, self.messages, self.now = cases, messages, now
        self.random = random.Random(7)
        self.returning = customers
        self.uid = 0

    def customer(self, number: int) -> str:
        if self.returning and self.random.random() < 1 / 3:
            return self.random.choice(self.returning)
        return f"cliente{number * 7 % (self.cases * 3 // 4 + 1)}@example.it"

    def rows(self) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
        """One dict of table -> rows per case, oldest case first."""
        per_case = self.messages / self.cases
        made = 0
        for index in range(self.cases):
            number = 1000 + index
            count = round((index + 1) * per_case) - made
            made += count
            yield self.case(number, max(count, 1), self.now - YEAR * (1 - index / self.cases))

    def case(self, number: int, count: int, created: float) -> dict[str, list[tuple[Any, ...]]]:
        rnd = self.random
        customer = self.customer(number)
        owner = AGENTS[number % len(AGENTS)]
        state = "closed" if rnd.random() < 0.9995 else rnd.choice(("open", "waiting", "new"))
        trouble = rnd.choice(("lenta", "assente", "instabile"))
        subject = f"Problema linea n. {number % 9973}: {trouble}"
        out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        out["cases"].append(
            (
                number,
                subject,
                subject.lower(),
                customer,
                customer.split("@")[0].title(),
                owner,
                state,
                "it",
                "network",
                "in",
                "connectivity",
                0.93,
                "model: p=0.93",
                created,
                created + 600,
                created + 86400 if state == "closed" else None,
            )
        )
        out["participants"].append((number, customer, "customer", created))
        if number % 10 == 0:
            out["participants"].append((number, f"collega{number}@example.it", "cc", created))
        for k in range(count):
            inbound = k % 2 == 0
            mid = _mid("prefill.example", number * 1000 + k)
            raw = (
                f"From: {customer}\r\nMessage-ID: <{mid}>\r\nSubject: {subject}\r\n\r\n"
                f"Buongiorno, la linea {number} è ancora {subject[-8:]}.\r\n"
            ).encode()
            self.uid += inbound
            out["messages"].append(
                (
                    mid,
                    number,
                    "in" if inbound else "out",
                    "customer" if inbound else "mailcare",
                    "" if inbound else ("ack" if k == 1 else "relay"),
                    customer if inbound else "assistenza@examplenet.it",
                    json.dumps(["assistenza@examplenet.it" if inbound else customer]),
                    subject,
                    f"Buongiorno, da ieri la linea {number} è {subject[-8:]}. Grazie, {customer}",
                    "new" if k == 0 else "reply",
                    "",
                    "INBOX" if inbound else None,
                    1 if inbound else None,
                    self.uid if inbound else None,
                    hashlib.sha256(raw).hexdigest(),
                    raw,
                    created + 3600 * k,
                )
            )
            out["message_ids"].append((mid, number))
            out["events"].append(
                (
                    number,
                    created + 3600 * k,
                    "sent:ack" if k == 1 else "message",
                    "mailcare",
                    json.dumps({"message_id": mid}),
                )
            )
            if not inbound:
                out["outbox"].append(
                    (
                        number,
                        "ack" if k == 1 else "relay",
                        mid,
                        "assistenza@examplenet.it",
                        json.dumps([customer]),
                        customer,
                        int(k == 1),
                        raw,
                        "sent",
                        1,
                        created + 3600 * k,
                        created + 3600 * k,
                        created + 3600 * k + 1,
                    )
                )
        out["events"] += [
            (number, created, "case_opened", "mailcare", '{"matched_by": "new"}'),
            (number, created, "assigned", "mailcare", json.dumps({"owner": owner})),
        ]
        if number % 20 == 0:
            out["thread_keys"].append((_mid("thread", number), number))
        return out


INSERTS = {
    "cases": "INSERT INTO cases(number, subject, subject_key, customer, customer_name, owner, "
    "state, language, queue, scope_kind, scope_category, scope_confidence, "
    "scope_reason, created_at, first_response_at, closed_at) "
    "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "participants": "INSERT OR IGNORE INTO participants(case_number, address, role, added_at) "
    "VALUES(?,?,?,?)",
    "messages": "INSERT INTO messages(message_id, case_number, direction, role, kind, sender, "
    "recipients, subject, text, matched_by, reason, folder, uidvalidity, uid, "
    "raw_sha256, raw, created_at) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "message_ids": "INSERT OR IGNORE INTO message_ids(message_id, case_number) VALUES(?,?)",
    "thread_keys": "INSERT OR IGNORE INTO thread_keys(key, case_number) VALUES(?,?)",
    "events": "INSERT INTO events(case_number, at, kind, actor, detail) VALUES(?,?,?,?,?)",
    "outbox": "INSERT INTO outbox(case_number, kind, message_id, envelope_from, recipients, "
    "to_addr, automatic, data, status, attempts, next_at, created_at, sent_at) "
    "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
}


def prefill(path: Path, history: History) -> dict[str, int]:
    """Create the schema (store.py's migrations) and fill it; returns rows per table."""
    Store(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    pending: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)

    def flush() -> None:
        conn.execute("BEGIN")
        for table, rows in pending.items():
            conn.executemany(INSERTS[table], rows)
            counts[table] += len(rows)
        conn.execute("COMMIT")
        pending.clear()

    for index, tables in enumerate(history.rows(), start=1):
        for table, rows in tables.items():
            pending[table] += rows
        if index % (CHUNK // 5) == 0:
            flush()
    flush()
    conn.execute("INSERT INTO meta(key, value) VALUES('rr_last', ?)", [AGENTS[0]])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return dict(counts)


# --------------------------------------------------------------------------- store cost


def store_cost(db: Path, config: Path, mails: list[bytes]) -> tuple[float, dict[str, float]]:
    """Milliseconds of Store calls per mail while `pipeline.process` handles `mails` as the
    daemon does, and the split by call; everything is rolled back."""
    settings = config_mod.load(config)
    engine = pipeline.Engine.load(settings)
    parsed = [pipeline.parse(engine.settings, raw) for raw in mails]
    store = Store(db)
    spent: dict[str, float] = defaultdict(float)

    def timed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - started

        return call

    for name in TIMED:
        setattr(store, name, timed(name, getattr(store, name)))
    now = time.time()
    store.db.execute("BEGIN IMMEDIATE")
    try:
        for first in range(0, len(parsed), 200):
            with store.db.atomic():  # the daemon's batch: one transaction
                for uid, mail in enumerate(parsed[first : first + 200], start=first + 1):
                    if store.has_uid("INBOX", 2, uid):
                        continue
                    with store.db.atomic():
                        pipeline.process(
                            store, engine, mail, now=now, folder="INBOX", uidvalidity=2, uid=uid
                        )
    finally:
        store.db.conn.rollback()
        store.close()
    return 1000 * sum(spent.values()) / len(parsed), {
        name: 1000 * seconds / len(parsed) for name, seconds in spent.items()
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mails", type=int, default=5000, help="mails drained per run")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--cases", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    say = _lab.say
    say(
        f"scale: {args.mails} mails into an empty store and into one with "
        f"{args.messages} messages / {args.cases} cases"
    )
    with _lab.step(f"generating {args.mails} mails"):
        mails = _lab.corpus_mail(args.mails, args.seed)
    senders = sorted({_lab.head_fields(raw).get("from", "") for raw in mails} - {""})
    mailbox = _lab.Mailbox()
    sink = _lab.Sink()
    runs: dict[str, tuple[_lab.Drain, float, dict[str, float]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="mailcare-scale-") as top:
            for name in ("empty", "history"):
                folder = Path(top) / name
                user = mailbox.new_user()
                with _lab.step(f"{name}: loading and indexing the mailbox"):
                    mailbox.load(user, mails)
                    mailbox.index(user)
                config = _lab.write_config(
                    folder, imap_port=mailbox.port, user=user, smtp_port=sink.port
                )
                db = folder / "state" / "mailcare.db"
                if name == "history":
                    started = time.perf_counter()
                    history = History(args.cases, args.messages, senders, time.time())
                    with _lab.step("history: pre-filling the store"):
                        counts = prefill(db, history)
                    say(
                        f"  history: {counts} in {time.perf_counter() - started:.0f} s, "
                        f"{db.stat().st_size / 1e6:.0f} MB"
                    )
                else:
                    Store(db).close()
                with _lab.step(f"{name}: store cost of {min(len(mails), 1000)} mails"):
                    cost, split = store_cost(db, config, mails[:1000])
                with _lab.step(f"{name}: mailcare draining {len(mails)} mails"):
                    run = _lab.drain(mailbox, user, len(mails), folder, sink)
                runs[name] = (run, cost, split)
    finally:
        sink.stop()
        mailbox.close()
    empty, history_run = runs["empty"], runs["history"]
    ratio = history_run[0].rate / empty[0].rate
    say()
    say("store        drain mails/s   store ms/mail   peak RSS / PSS MB")
    for name, (run, cost, _) in runs.items():
        say(f"{name:12} {run.rate:13.0f}   {cost:13.2f}   {run.rss:6.0f} / {run.pss:.0f}")
    say(f"ratio        {ratio:13.2f}   history / empty")
    say("store calls  ms per mail, the five costliest with the history, empty -> history:")
    for name, ms in sorted(history_run[2].items(), key=lambda item: -item[1])[:5]:
        say(f"  {name:22} {empty[2].get(name, 0.0):6.3f} -> {ms:6.3f}")
    worst = max(run.rss for run, _, _ in runs.values())
    say(
        f"targets      history >= 90% of empty: {_lab.verdict(ratio >= 0.9)}; "
        f"RSS < 200 MB: {_lab.verdict(worst < 200)}"
    )
    rerun = [
        "--mails",
        str(args.mails),
        "--messages",
        str(args.messages),
        "--cases",
        str(args.cases),
    ]
    say(f"reproduce    {_lab.command('scale.py', rerun)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
