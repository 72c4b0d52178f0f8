"""Outbox throughput against a bare aiosmtplib client, same SMTP server, same run.

    .venv/bin/python bench/outbox.py [--mails 2000] [--rounds 3] [--connections 1 10]

The mails are the real thing: realistic support mail (bench/corpus.py) goes through
mailcare's pipeline into a scratch store until the outbox holds `--mails` rows
(acknowledgements, the owners' notifications and forwards, 1-6 KB each, a case's rows in
the order its plans queued them). An aiosmtpd sink runs in its own process on 127.0.0.1.
For each connection count:

  floor    a bare aiosmtplib client sends the same bytes to the same recipients over that
           many connections (one SMTP transaction per mail, nothing else);
  outbox   mailcare's OutboxWorker (its own thread, store connection and event loop, as
           in the daemon) sends them from a fresh copy of the store and records each as
           sent. Timed from start until every row is marked sent.

The two alternate `--rounds` times and the medians are compared. The sink's arrival order
is then checked: a case's mails must arrive in queue order.
Targets: outbox >= 80% of the floor at each connection count, no case reordered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import _lab
import aiosmtplib

from mailcare import config as config_mod
from mailcare import pipeline
from mailcare.config import SmtpSection
from mailcare.outbox import OutboxWorker
from mailcare.store import Store


@dataclass(frozen=True)
class Row:
    case: int | None
    message_id: str
    sender: str
    recipients: tuple[str, ...]
    data: bytes


def queue_real(folder: Path, wanted: int, seed: int) -> tuple[Path, list[Row]]:
    """Run corpus mail through the pipeline (no scope model: every new case is "unsure",
    so it gets an acknowledgement and its owner a notification) until the outbox holds
    `wanted` rows; returns the store's path and the rows in queue order."""
    config = _lab.write_config(folder, imap_port=143, user="bench", smtp_port=25)
    settings = config_mod.load(config)
    engine = pipeline.Engine.load(settings, train=False)
    db = pipeline.state_db(settings)
    store = Store(db)
    seen = 0
    try:
        while store.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] < wanted:
            mails = _lab.corpus_mail(seen + 200, seed)[seen:]
            seen += len(mails)
            with store.batch():
                for raw in mails:
                    mail = pipeline.parse(engine.settings, raw)
                    pipeline.process(store, engine, mail, now=time.time())
        store.db.execute(
            "DELETE FROM outbox WHERE id > (SELECT id FROM outbox ORDER BY id LIMIT 1 OFFSET ?)",
            [wanted - 1],
        )
        rows = [
            Row(case, mid, sender, tuple(json.loads(to)), bytes(data))
            for case, mid, sender, to, data in store.db.execute(
                "SELECT case_number, message_id, envelope_from, recipients, data FROM outbox "
                "ORDER BY id"
            )
        ]
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
    return db, rows


async def bare(sink: _lab.Sink, rows: list[Row], connections: int) -> float:
    """Seconds for a bare aiosmtplib client to send every row over `connections`."""
    queue: asyncio.Queue[Row] = asyncio.Queue()
    for row in rows:
        queue.put_nowait(row)

    async def work() -> None:
        client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, start_tls=False)
        await client.connect()
        while not queue.empty():
            row = queue.get_nowait()
            await client.sendmail(row.sender, list(row.recipients), row.data)
        await client.quit()

    before = sink.count()
    started = time.perf_counter()
    await asyncio.gather(*(work() for _ in range(connections)))
    sink.wait_for(before + len(rows), 60)
    return time.perf_counter() - started


def outbox(sink: _lab.Sink, template: Path, count: int, connections: int) -> float:
    """Seconds for mailcare's OutboxWorker to send and record every queued row, working
    on a fresh copy of the queued store."""
    db = template.with_name(f"outbox-{connections}.db")
    shutil.copyfile(template, db)
    section = SmtpSection(
        host=sink.host, port=sink.port, tls="none", connections=connections, timeout=30
    )
    worker = OutboxWorker(lambda: Store(db), section, password=None)
    before = sink.count()
    started = time.perf_counter()
    worker.start()
    try:
        _lab.wait_until(lambda: pending(db) == 0, 600, "the outbox to empty", poll=0.02)
        elapsed = time.perf_counter() - started
    finally:
        worker.stop()
    if sink.count() - before != count:
        raise SystemExit(f"sink got {sink.count() - before} mails for {count} rows")
    return elapsed


def pending(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        # status = 'pending' is answered from an index; another test would read every row
        # (and its bytes), a load that would slow the worker being measured.
        return int(
            conn.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
        )
    finally:
        conn.close()


def reordered(received: list[_lab.Accepted], rows: list[Row]) -> int:
    """Cases whose mails reached the sink in another order than they were queued."""
    position = {row.message_id: index for index, row in enumerate(rows)}
    arrivals: dict[int | None, list[int]] = defaultdict(list)
    for item in received:
        index = position[item.message_id]
        arrivals[rows[index].case].append(index)
    return sum(1 for case, order in arrivals.items() if case is not None and order != sorted(order))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mails", type=int, default=2000, help="outbox rows per measurement")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each (median)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    say = _lab.say
    say(f"outbox: {args.mails} mails, connections {args.connections}")
    results = []
    sink = _lab.Sink()
    try:
        with tempfile.TemporaryDirectory(prefix="mailcare-outbox-") as folder:
            with _lab.step(f"queueing {args.mails} mails through the pipeline"):
                template, rows = queue_real(Path(folder), args.mails, args.seed)
            for connections in args.connections:
                floors: list[float] = []
                theirs: list[float] = []
                wrong = 0
                for _ in range(args.rounds):  # alternated, so a busy moment hits both
                    floors.append(_lab.rate(len(rows), asyncio.run(bare(sink, rows, connections))))
                    start = sink.count()
                    seconds = outbox(sink, template, len(rows), connections)
                    theirs.append(_lab.rate(len(rows), seconds))
                    wrong += reordered(sink.received[start:], rows)
                median = statistics.median
                results.append((connections, median(floors), median(theirs), wrong))
    finally:
        sink.stop()
    size = sum(len(row.data) for row in rows) / len(rows) / 1024
    cases = len({row.case for row in rows})
    say()
    say(
        f"mails        {len(rows)} per run, {size:.1f} KiB average, {cases} cases; "
        f"median of {args.rounds} runs each"
    )
    ok = True
    for connections, floor, ours, wrong in results:
        ratio = ours / floor
        ok = ok and ratio >= 0.8 and not wrong
        say(
            f"{connections:2d} conn      floor {floor:6.0f} mails/s   outbox {ours:6.0f} mails/s   "
            f"ratio {ratio:.2f}   cases reordered {wrong}"
        )
    say(f"target       outbox >= 80% of the bare client, no case reordered: {_lab.verdict(ok)}")
    rerun = ["--mails", str(args.mails), "--rounds", str(args.rounds), "--connections"]
    rerun += map(str, args.connections)
    say(f"reproduce    {_lab.command('outbox.py', rerun)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
