"""SQLite through sqlite-utils: the schema, its migrations, and every query the daemon needs.

The store is the source of truth for "was this mail handled?". A plan is applied in the
caller's transaction (`Store.batch()`), and only after COMMIT does the IMAP side mark the
message on the server, so a crash anywhere repeats at most the last step. The unique keys
(Message-ID, folder+uidvalidity+uid, outbox Message-ID) make that repeat harmless.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from .plan import ANY_OWNER, Plan
from .threads import CaseView, Lookup, ThreadContext

FIRST_CASE_NUMBER = 1000
OPEN_STATES = ("new", "open", "waiting")

migrations = Migrations("mailcare")


class StoreError(Exception):
    """The database cannot be used; the message says why and what to do."""


class AlreadyRunning(StoreError):
    """Another mailcare process holds the state folder."""


@migrations()
def m001_initial(db: Database) -> None:
    """The tables of DESIGN.md: cases, messages, events, outbox, folders, and indexes."""
    db.execute(
        """
        CREATE TABLE cases (
            number INTEGER PRIMARY KEY,
            subject TEXT NOT NULL DEFAULT '',
            subject_key TEXT NOT NULL DEFAULT '',
            customer TEXT NOT NULL DEFAULT '',
            customer_name TEXT NOT NULL DEFAULT '',
            owner TEXT,
            state TEXT NOT NULL DEFAULT 'new',
            language TEXT NOT NULL DEFAULT '',
            queue TEXT NOT NULL DEFAULT '',
            scope_kind TEXT NOT NULL DEFAULT '',
            scope_category TEXT NOT NULL DEFAULT '',
            scope_confidence REAL NOT NULL DEFAULT 0,
            scope_reason TEXT NOT NULL DEFAULT '',
            linked_case INTEGER,
            claimed_case INTEGER,
            is_auto INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            first_response_at REAL,
            last_customer_at REAL,
            last_agent_at REAL,
            closed_at REAL,
            wait_until REAL,
            reminded_at REAL,
            escalated_at REAL
        )"""
    )
    db.execute("CREATE INDEX cases_customer ON cases(customer, created_at)")
    db.execute("CREATE INDEX cases_owner_state ON cases(owner, state)")
    db.execute("CREATE INDEX cases_subject ON cases(subject_key)")
    db.execute(
        """
        CREATE TABLE participants (
            case_number INTEGER NOT NULL,
            address TEXT NOT NULL,
            role TEXT NOT NULL,
            added_at REAL NOT NULL,
            PRIMARY KEY (case_number, address)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX participants_address ON participants(address)")
    db.execute(
        """
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            message_id TEXT NOT NULL UNIQUE,
            case_number INTEGER,
            direction TEXT NOT NULL,
            role TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT '',
            sender TEXT NOT NULL DEFAULT '',
            recipients TEXT NOT NULL DEFAULT '[]',
            subject TEXT NOT NULL DEFAULT '',
            text TEXT NOT NULL DEFAULT '',
            matched_by TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL DEFAULT '',
            folder TEXT,
            uidvalidity INTEGER,
            uid INTEGER,
            raw_sha256 TEXT NOT NULL DEFAULT '',
            raw BLOB,
            created_at REAL NOT NULL
        )"""
    )
    db.execute(
        "CREATE UNIQUE INDEX messages_uid ON messages(folder, uidvalidity, uid) "
        "WHERE folder IS NOT NULL"
    )
    db.execute("CREATE INDEX messages_case ON messages(case_number, id)")
    db.execute("CREATE INDEX messages_sha ON messages(raw_sha256)")
    db.execute(
        """
        CREATE TABLE message_ids (
            message_id TEXT PRIMARY KEY,
            case_number INTEGER NOT NULL
        ) WITHOUT ROWID"""
    )
    db.execute(
        """
        CREATE TABLE thread_keys (
            key TEXT PRIMARY KEY,
            case_number INTEGER NOT NULL
        ) WITHOUT ROWID"""
    )
    db.execute(
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            case_number INTEGER,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            actor TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    db.execute("CREATE INDEX events_case ON events(case_number, id)")
    db.execute("CREATE INDEX events_kind ON events(kind, at)")
    db.execute(
        """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            case_number INTEGER,
            kind TEXT NOT NULL,
            message_id TEXT NOT NULL UNIQUE,
            envelope_from TEXT NOT NULL,
            recipients TEXT NOT NULL,
            to_addr TEXT NOT NULL DEFAULT '',
            automatic INTEGER NOT NULL DEFAULT 0,
            data BLOB NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL,
            created_at REAL NOT NULL,
            sent_at REAL,
            last_error TEXT NOT NULL DEFAULT '',
            refused TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    db.execute("CREATE INDEX outbox_due ON outbox(status, next_at)")
    db.execute("CREATE INDEX outbox_to ON outbox(to_addr, automatic, created_at)")
    db.execute("CREATE INDEX outbox_case ON outbox(case_number, automatic, created_at)")
    db.execute(
        """
        CREATE TABLE folders (
            name TEXT PRIMARY KEY,
            uidvalidity INTEGER NOT NULL,
            last_uid INTEGER NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute(
        """
        CREATE TABLE failures (
            folder TEXT NOT NULL,
            uidvalidity INTEGER NOT NULL,
            uid INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            last_error TEXT NOT NULL,
            quarantined INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (folder, uidvalidity, uid)
        )"""
    )
    db.execute(
        """
        CREATE TABLE suppressions (
            address TEXT PRIMARY KEY,
            until REAL NOT NULL,
            reason TEXT NOT NULL
        )"""
    )
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


@migrations()
def m002_messages_created(db: Database) -> None:
    """Mails per day (`mailcare stats`, the report) are counted from this index alone: in a
    row, the raw bytes come before created_at, so a table scan would read every stored mail."""
    db.execute("CREATE INDEX messages_created ON messages(created_at, direction)")


@migrations()
def m003_outbox_pending(db: Database) -> None:
    """The outbox's next rows are read in queue order from this index of pending rows only,
    so a backlog of thousands costs a few index steps per row, not a scan and a sort of
    every pending row each time (70 ms per 200 rows with 20,000 pending)."""
    db.execute("CREATE INDEX outbox_pending ON outbox(id) WHERE status = 'pending'")


@migrations()
def m004_owner_load(db: Database) -> None:
    """Open cases per owner, kept by triggers as cases open, move and close.

    Owner choice reads it for every new case; counting each owner's open cases instead
    costs time in proportion to them, which is what grows during a backlog. The triggers
    run inside the statement that changes the case, so the count can never disagree with
    the cases table."""
    states = ", ".join(f"'{state}'" for state in OPEN_STATES)
    db.execute("CREATE TABLE owner_load (owner TEXT PRIMARY KEY, open INTEGER NOT NULL)")
    db.execute(
        "INSERT INTO owner_load(owner, open) SELECT owner, COUNT(*) FROM cases "
        f"WHERE owner IS NOT NULL AND state IN ({states}) GROUP BY owner"
    )
    add = (
        "INSERT INTO owner_load(owner, open) VALUES (NEW.owner, 1) "
        "ON CONFLICT(owner) DO UPDATE SET open = open + 1;"
    )
    remove = "UPDATE owner_load SET open = open - 1 WHERE owner = OLD.owner;"
    new_open = f"NEW.owner IS NOT NULL AND NEW.state IN ({states})"
    old_open = f"OLD.owner IS NOT NULL AND OLD.state IN ({states})"
    db.execute(
        f"CREATE TRIGGER owner_load_insert AFTER INSERT ON cases WHEN {new_open} BEGIN {add} END"
    )
    db.execute(
        f"CREATE TRIGGER owner_load_delete AFTER DELETE ON cases WHEN {old_open} BEGIN {remove} END"
    )
    db.execute(
        "CREATE TRIGGER owner_load_leave AFTER UPDATE OF owner, state ON cases "
        f"WHEN {old_open} AND NOT ({new_open} AND NEW.owner = OLD.owner) BEGIN {remove} END"
    )
    db.execute(
        "CREATE TRIGGER owner_load_join AFTER UPDATE OF owner, state ON cases "
        f"WHEN {new_open} AND NOT ({old_open} AND NEW.owner = OLD.owner) BEGIN {add} END"
    )


@dataclass(frozen=True)
class OutboxRow:
    id: int
    case_number: int | None
    kind: str
    message_id: str
    envelope_from: str
    recipients: tuple[str, ...]
    data: bytes
    attempts: int
    created_at: float


class Store:
    """One connection to the state database. Use one Store per thread."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        if not path.exists() and not create:
            raise StoreError(f"{path}: no database (run `mailcare run` once to create it)")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                str(path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self.db = Database(conn)
            self.db.enable_wal()
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=OFF")
            migrations.apply(self.db)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{path}: {exc} (the database is damaged; restore it from a "
                "backup or move it aside; mailcare never recreates it silently)"
            ) from exc

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        self.db.close()

    def check(self) -> str:
        """`PRAGMA quick_check`: "ok" or the first problem, on one line (it goes into the
        one-line error `mailcare run` stops with). A page too damaged to check makes SQLite
        raise instead of answering; that is a problem to report too (C05)."""
        try:
            row = self.db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return " ".join(str(row[0]).split())

    @contextmanager
    def batch(self) -> Iterator[Store]:
        """One transaction: every plan applied inside commits together or not at all.

        The outermost one is BEGIN IMMEDIATE: a deferred transaction that reads first cannot
        take the write lock once another connection (the outbox thread) has committed since
        its read, and SQLite then fails at once with "database is locked" instead of waiting
        out the busy timeout. Nested calls become savepoints.
        """
        if self.db.conn.in_transaction:
            with self.db.atomic():
                yield self
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.conn.in_transaction:
                self.db.conn.rollback()
            raise

    def meta(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return str(row[0]) if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )

    # -- IMAP progress -----------------------------------------------------------------

    def folder(self, name: str) -> tuple[int, int] | None:
        """(uidvalidity, last_uid) for a folder, or None the first time."""
        row = self.db.execute(
            "SELECT uidvalidity, last_uid FROM folders WHERE name = ?", [name]
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def set_folder(self, name: str, uidvalidity: int, last_uid: int, now: float) -> None:
        self.db.execute(
            "INSERT INTO folders(name, uidvalidity, last_uid, updated_at) VALUES(?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET uidvalidity = excluded.uidvalidity, "
            "last_uid = MAX(CASE WHEN folders.uidvalidity = excluded.uidvalidity "
            "THEN folders.last_uid ELSE 0 END, excluded.last_uid), "
            "updated_at = excluded.updated_at",
            [name, uidvalidity, last_uid, now],
        )

    def has_uid(self, folder: str, uidvalidity: int, uid: int) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM messages WHERE folder = ? AND uidvalidity = ? AND uid = ?",
            [folder, uidvalidity, uid],
        ).fetchone()
        return row is not None

    def has_message(self, message_id: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM messages WHERE message_id = ?", [message_id]
        ).fetchone()
        return row is not None

    def record_failure(self, folder: str, uidvalidity: int, uid: int, error: str) -> int:
        """Count one more failed attempt at a message; return the count so far."""
        self.db.execute(
            "INSERT INTO failures(folder, uidvalidity, uid, attempts, last_error) "
            "VALUES(?, ?, ?, 1, ?) ON CONFLICT(folder, uidvalidity, uid) DO UPDATE SET "
            "attempts = attempts + 1, last_error = excluded.last_error",
            [folder, uidvalidity, uid, error[:2000]],
        )
        row = self.db.execute(
            "SELECT attempts FROM failures WHERE folder = ? AND uidvalidity = ? AND uid = ?",
            [folder, uidvalidity, uid],
        ).fetchone()
        return int(row[0])

    def set_quarantined(self, folder: str, uidvalidity: int, uid: int) -> None:
        self.db.execute(
            "UPDATE failures SET quarantined = 1 WHERE folder = ? AND uidvalidity = ? AND uid = ?",
            [folder, uidvalidity, uid],
        )

    # -- what the pure core needs --------------------------------------------------------

    def next_case_number(self) -> int:
        row = self.db.execute("SELECT MAX(number) FROM cases").fetchone()
        return max(FIRST_CASE_NUMBER, int(row[0] or 0) + 1)

    def case_view(self, number: int) -> CaseView | None:
        row = self.db.execute(
            "SELECT number, state, customer, owner, subject_key, closed_at FROM cases "
            "WHERE number = ?",
            [number],
        ).fetchone()
        if row is None:
            return None
        people = self.db.execute(
            "SELECT address FROM participants WHERE case_number = ?", [number]
        ).fetchall()
        return CaseView(
            number=int(row[0]),
            state=str(row[1]),
            customer=str(row[2]),
            owner=row[3],
            participants=frozenset(str(p[0]) for p in people),
            subject_key=str(row[4]),
            closed_at=row[5],
        )

    def resolve(self, lookup: Lookup) -> ThreadContext:
        """Answer a threading `Lookup`: which cases own these ids, tags, tokens and keys."""
        known: dict[str, int] = {}
        ids = list(dict.fromkeys(lookup.message_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for mid, case in self.db.execute(
                f"SELECT message_id, case_number FROM message_ids WHERE message_id IN ({marks})",
                chunk,
            ):
                known[str(mid)] = int(case)
        wanted: set[int] = set(known.values())
        wanted.update(lookup.token_cases)
        wanted.update(lookup.own_cases)
        if lookup.tag_case is not None:
            wanted.add(lookup.tag_case)
        thread_case = None
        if lookup.thread_index:
            row = self.db.execute(
                "SELECT case_number FROM thread_keys WHERE key = ?", [lookup.thread_index]
            ).fetchone()
            thread_case = int(row[0]) if row else None
            if thread_case is not None:
                wanted.add(thread_case)
        subject_cases: tuple[int, ...] = ()
        if lookup.sender and lookup.subject_key:
            subject_cases = tuple(
                int(r[0])
                for r in self.db.execute(
                    "SELECT c.number FROM cases c JOIN participants p "
                    "ON p.case_number = c.number WHERE p.address = ? AND c.subject_key = ? "
                    "ORDER BY c.number DESC LIMIT 5",
                    [lookup.sender, lookup.subject_key],
                )
            )
            wanted.update(subject_cases)
        cases = {n: v for n in wanted if (v := self.case_view(n)) is not None}
        return ThreadContext(
            known_ids=known,
            cases=cases,
            thread_index_case=thread_case,
            subject_cases=subject_cases,
        )

    def first_customer_text(self, number: int) -> str:
        row = self.db.execute(
            "SELECT text FROM messages WHERE case_number = ? AND direction = 'in' "
            "AND role = 'customer' ORDER BY id LIMIT 1",
            [number],
        ).fetchone()
        return str(row[0]) if row else ""

    def customer_message_ids(self, number: int) -> tuple[str, ...]:
        """Message-IDs of the customer's own mails in a case, oldest first (for threading
        our relays to what the customer's client knows)."""
        return tuple(
            str(r[0])
            for r in self.db.execute(
                "SELECT message_id FROM messages WHERE case_number = ? AND direction = 'in' "
                "AND role = 'customer' ORDER BY id",
                [number],
            )
        )

    def last_take(self, number: int) -> tuple[str, float] | None:
        row = self.db.execute(
            "SELECT actor, at FROM events WHERE case_number = ? AND kind = 'take' "
            "ORDER BY id DESC LIMIT 1",
            [number],
        ).fetchone()
        return (str(row[0]), float(row[1])) if row else None

    def open_counts(self) -> dict[str, int]:
        """Open cases per owner (owners with none are left out), from `owner_load`."""
        return {
            str(owner): int(count)
            for owner, count in self.db.execute("SELECT owner, open FROM owner_load WHERE open > 0")
        }

    def previous_owner(self, customer: str, since: float) -> str | None:
        row = self.db.execute(
            "SELECT owner FROM cases WHERE customer = ? AND created_at >= ? "
            "AND owner IS NOT NULL ORDER BY number DESC LIMIT 1",
            [customer, since],
        ).fetchone()
        return str(row[0]) if row else None

    def automatic_sent(
        self, *, to_addr: str | None = None, case: int | None = None, since: float
    ) -> list[float]:
        """Times of automatic mails queued to an address or for a case since `since`."""
        if to_addr is not None:
            sql = (
                "SELECT created_at FROM outbox WHERE to_addr = ? AND automatic = 1 "
                "AND created_at >= ?"
            )
            args: list[Any] = [to_addr, since]
        else:
            sql = (
                "SELECT created_at FROM outbox WHERE case_number = ? AND automatic = 1 "
                "AND created_at >= ?"
            )
            args = [case, since]
        return [float(r[0]) for r in self.db.execute(sql, args)]

    def suppressed_until(self, address: str, now: float) -> float | None:
        row = self.db.execute(
            "SELECT until FROM suppressions WHERE address = ? AND until > ?", [address, now]
        ).fetchone()
        return float(row[0]) if row else None

    # -- applying a plan -----------------------------------------------------------------

    def apply(self, plan: Plan, *, now: float) -> None:
        """Write everything a plan decided. Call inside `batch()`."""
        if plan.new_case is not None:
            self._insert_case(plan.new_case)
        if plan.case_update and plan.case is not None:
            self._update_case(plan.case, plan.case_update, plan.expect_owner)
        for message in plan.messages:
            self._insert_message(message)
        for case, address, role in plan.participants:
            self.db.execute(
                "INSERT OR IGNORE INTO participants(case_number, address, role, added_at) "
                "VALUES(?, ?, ?, ?)",
                [case, address, role, now],
            )
        for case, mid in plan.message_ids:
            self.db.execute(
                "INSERT OR IGNORE INTO message_ids(message_id, case_number) VALUES(?, ?)",
                [mid, case],
            )
        for case, key in plan.thread_keys:
            self.db.execute(
                "INSERT OR IGNORE INTO thread_keys(key, case_number) VALUES(?, ?)", [key, case]
            )
        for event in plan.events:
            self.db.execute(
                "INSERT INTO events(case_number, at, kind, actor, detail) VALUES(?, ?, ?, ?, ?)",
                [
                    event.case,
                    now,
                    event.kind,
                    event.actor,
                    json.dumps(event.detail, ensure_ascii=False),
                ],
            )
        for out in plan.outgoing:
            self._queue(out, now)
        for address, until, reason in plan.suppress:
            self.db.execute(
                "INSERT INTO suppressions(address, until, reason) VALUES(?, ?, ?) "
                "ON CONFLICT(address) DO UPDATE SET until = MAX(until, excluded.until), "
                "reason = excluded.reason",
                [address, until, reason],
            )
        for key, value in plan.meta.items():
            self.set_meta(key, value)

    def _update_case(self, number: int, update: Mapping[str, Any], expect_owner: object) -> None:
        """Conditional when the plan changes ownership: a concurrent change makes it a no-op."""
        sets = ", ".join(f"{column} = ?" for column in update)
        args = [*update.values(), number]
        sql = f"UPDATE cases SET {sets} WHERE number = ?"
        if expect_owner is not ANY_OWNER:
            sql += " AND owner IS ?"
            args.append(expect_owner)
        self.db.execute(sql, args)

    def _insert_case(self, row: Mapping[str, Any]) -> None:
        """A plain INSERT: sqlite-utils' `table().insert` first looks the table up in
        sqlite_master, twice, for every case opened."""
        columns = ", ".join(row)
        marks = ", ".join("?" * len(row))
        self.db.execute(f"INSERT INTO cases({columns}) VALUES({marks})", list(row.values()))

    def _insert_message(self, message: Mapping[str, Any]) -> None:
        columns = ", ".join(message)
        marks = ", ".join("?" * len(message))
        self.db.execute(
            f"INSERT OR IGNORE INTO messages({columns}) VALUES({marks})", list(message.values())
        )

    def _queue(self, out: Any, now: float) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO outbox(case_number, kind, message_id, envelope_from, "
            "recipients, to_addr, automatic, data, status, next_at, created_at) "
            "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                out.case,
                out.kind,
                out.message_id,
                out.envelope_from,
                json.dumps(list(out.to)),
                out.to[0] if out.to else "",
                int(out.automatic),
                out.data,
                "shadow" if out.shadow else "pending",
                now,
                now,
            ],
        )

    # -- the outbox ----------------------------------------------------------------------

    def due_outbox(self, now: float, limit: int = 100) -> list[OutboxRow]:
        """Pending rows whose time has come, oldest first, at most one per case so a case's
        mails are never reordered (a later one waits while an earlier one retries)."""
        rows = self.db.execute(
            "SELECT o.id, o.case_number, o.kind, o.message_id, o.envelope_from, o.recipients, "
            "o.data, o.attempts, o.created_at FROM outbox o INDEXED BY outbox_pending "
            "WHERE o.status = 'pending' AND o.next_at <= ? AND NOT EXISTS ("
            "  SELECT 1 FROM outbox e WHERE e.status = 'pending' AND e.id < o.id "
            "  AND e.case_number IS o.case_number AND o.case_number IS NOT NULL) "
            "ORDER BY o.id LIMIT ?",
            [now, limit],
        ).fetchall()
        return [
            OutboxRow(
                int(r[0]),
                r[1],
                str(r[2]),
                str(r[3]),
                str(r[4]),
                tuple(json.loads(r[5])),
                bytes(r[6]),
                int(r[7]),
                float(r[8]),
            )
            for r in rows
        ]

    def outbox_depth(self, now: float) -> tuple[int, float]:
        """(pending rows, age in seconds of the oldest) for metrics and STATUS=."""
        row = self.db.execute(
            "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE status = 'pending'"
        ).fetchone()
        return int(row[0]), (now - float(row[1])) if row[1] is not None else 0.0

    def outbox_sent(self, row: OutboxRow, now: float, refused: Mapping[str, Any]) -> None:
        with self.batch():
            self.db.execute(
                "UPDATE outbox SET status = 'sent', sent_at = ?, attempts = attempts + 1, "
                "refused = ? WHERE id = ?",
                [now, json.dumps(refused), row.id],
            )
            if row.case_number is not None:
                self._sent_event(row, now, refused)

    def _sent_event(self, row: OutboxRow, now: float, refused: Mapping[str, Any]) -> None:
        detail: dict[str, Any] = {"message_id": row.message_id, "to": list(row.recipients)}
        if refused:
            detail["refused"] = refused
        self.db.execute(
            "INSERT INTO events(case_number, at, kind, actor, detail) VALUES(?, ?, ?, ?, ?)",
            [row.case_number, now, f"sent:{row.kind}", "mailcare", json.dumps(detail)],
        )

    def outbox_retry(self, row: OutboxRow, now: float, next_at: float, error: str) -> None:
        self.db.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ? WHERE id = ?",
            [next_at, error[:500], row.id],
        )

    def outbox_failed(
        self, row: OutboxRow, now: float, error: str, suppress_until: float | None = None
    ) -> None:
        """A permanent failure: recorded on the case; with `suppress_until`, automatic mail
        to those addresses stops until then, as after a bounce (O02)."""
        with self.batch():
            for address in row.recipients if suppress_until is not None else ():
                self.db.execute(
                    "INSERT INTO suppressions(address, until, reason) VALUES(?, ?, ?) "
                    "ON CONFLICT(address) DO UPDATE SET until = MAX(until, excluded.until), "
                    "reason = excluded.reason",
                    [address, suppress_until, f"smtp 5xx case={row.case_number}"],
                )
            self.db.execute(
                "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ? "
                "WHERE id = ?",
                [error[:500], row.id],
            )
            self.db.execute(
                "INSERT INTO events(case_number, at, kind, actor, detail) VALUES(?, ?, ?, ?, ?)",
                [
                    row.case_number,
                    now,
                    f"send_failed:{row.kind}",
                    "mailcare",
                    json.dumps(
                        {
                            "message_id": row.message_id,
                            "to": list(row.recipients),
                            "error": error[:500],
                        }
                    ),
                ],
            )

    # -- reading for people --------------------------------------------------------------

    def cases(self, *, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        sql = "SELECT * FROM cases"
        args: list[Any] = []
        if state:
            sql += " WHERE state = ?"
            args.append(state)
        sql += " ORDER BY number DESC LIMIT ?"
        args.append(limit)
        return [dict(r) for r in self.db.query(sql, args)]

    def case(self, number: int) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM cases WHERE number = ?", [number]))
        return dict(rows[0]) if rows else None

    def case_messages(self, number: int) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self.db.query(
                "SELECT id, message_id, direction, role, kind, sender, recipients, subject, "
                "text, matched_by, reason, created_at FROM messages WHERE case_number = ? "
                "ORDER BY id",
                [number],
            )
        ]

    def case_events(self, number: int) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self.db.query(
                "SELECT at, kind, actor, detail FROM events WHERE case_number = ? ORDER BY id",
                [number],
            )
        ]

    def case_outbox(self, number: int) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self.db.query(
                "SELECT kind, message_id, recipients, status, attempts, created_at, sent_at, "
                "last_error FROM outbox WHERE case_number = ? ORDER BY id",
                [number],
            )
        ]

    def message_raw(self, message_id: str) -> bytes | None:
        row = self.db.execute(
            "SELECT raw FROM messages WHERE message_id = ?", [message_id]
        ).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def query(self, sql: str, args: Sequence[Any] = ()) -> Iterable[dict[str, Any]]:
        return self.db.query(sql, list(args))


@contextmanager
def instance_lock(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the state folder: a second daemon on it refuses to start.

    RELIABILITY I10: two daemons on one mailbox would both answer the same mail.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "mailcare.lock"
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise AlreadyRunning(f"another instance holds {path}") from exc
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(handle)
