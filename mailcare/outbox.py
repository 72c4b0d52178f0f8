"""Drain the outbox table through SMTP: retries with backoff, permanent failures recorded.

Every row already holds the final bytes and a fixed Message-ID, so a resend after a crash
between the server's 250 and our commit is recognisable as the same mail (O06). A case's
mails leave in the order they were queued: `Store.due_outbox` holds back a case's later
rows while an earlier one waits for a retry.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import SmtpSection
from .smtp import SmtpPermanent, SmtpSender, SmtpTemporary
from .store import OutboxRow, Store

log = logging.getLogger("mailcare.outbox")


SUPPRESSING_KINDS = frozenset({"ack", "redirect", "route_customer"})


def retry_delay(section: SmtpSection, attempts: int) -> float:
    """Capped exponential backoff with jitter: 30 s, 60 s, 120 s … up to retry_max."""
    base = min(section.retry_max, section.retry_base * (2 ** max(0, attempts - 1)))
    return base * random.uniform(0.8, 1.2)


@dataclass
class OutboxStats:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class OutboxWorker:
    """Runs in its own thread with its own asyncio loop and its own store connection."""

    def __init__(
        self,
        store_factory: Callable[[], Store],
        section: SmtpSection,
        *,
        password: str | None,
        token_command: Callable[[], str] | None = None,
        on_sent: Callable[[OutboxRow, float], None] | None = None,
        clock: Callable[[], float] = time.time,
        suppress_days: float = 0.0,
    ) -> None:
        self._store_factory = store_factory
        self._suppress_days = suppress_days
        self.section = section
        self._password = password
        self._token_command = token_command
        self._on_sent = on_sent
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = OutboxStats()
        self._outage = False
        self._extra: list[SmtpSender] = []  # the connections beyond the first, while busy
        self._writes: list[tuple[Callable[..., object], tuple[object, ...]]] = []
        self._writing: asyncio.Future[None] | None = None  # see _write

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New rows were committed: send now rather than at the next tick."""
        self._wake.set()

    def stop(self, timeout: float = 20.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        store = self._store_factory()
        sender = SmtpSender(
            self.section, password=self._password, token_command=self._token_command
        )
        try:
            while not self._stop.is_set():
                sent_any = await self.drain_once(store, sender)
                if not sent_any:
                    await self._close_extra()
                    await asyncio.to_thread(self._wake.wait, 1.0)
                    self._wake.clear()
        finally:
            await self._close_extra()
            await sender.close()
            store.close()

    async def _close_extra(self) -> None:
        extra, self._extra = self._extra, []
        for client in extra:
            await client.close()

    async def drain_once(self, store: Store, sender: SmtpSender, limit: int = 200) -> bool:
        """Send every due row once; True when something was attempted. Every outcome is in
        the store when it returns."""
        rows = store.due_outbox(self._clock(), limit)
        if not rows:
            return False
        try:
            await self._send_rows(store, sender, rows)
        finally:
            await self._settle()
        return True

    async def _send_rows(self, store: Store, sender: SmtpSender, rows: list[OutboxRow]) -> None:
        parallel = max(1, self.section.connections)
        if parallel == 1 or len(rows) == 1:
            for row in rows:
                await self._send_one(store, sender, row)
                if self._stop.is_set():
                    break
            return
        # Rows from due_outbox are at most one per case, so sending them concurrently keeps
        # each case's order. Extra connections are opened lazily and kept while the outbox
        # has work (a backlog drains in many bursts); they close when it runs empty.
        wanted = min(parallel, len(rows)) - 1
        while len(self._extra) < wanted:
            self._extra.append(
                SmtpSender(self.section, password=self._password, token_command=self._token_command)
            )
        senders = [sender, *self._extra[:wanted]]
        queue: asyncio.Queue[OutboxRow] = asyncio.Queue()
        for row in rows:
            queue.put_nowait(row)

        async def work(client: SmtpSender) -> None:
            while not queue.empty() and not self._stop.is_set():
                await self._send_one(store, client, queue.get_nowait())

        await asyncio.gather(*(work(client) for client in senders))

    def _write(self, store: Store, write: Callable[..., object], *args: object) -> None:
        """Record an outcome in the store from a helper thread, in order, one write at a
        time on the one connection.

        SQLite releases the GIL while it commits, so the SMTP transactions go on meanwhile
        instead of waiting a quarter millisecond per mail, and outcomes that arrive while a
        commit is running are committed together next (group commit): each is written as
        soon as the store is free. `drain_once` returns only when all are written, before
        the next `due_outbox`, which must see them."""
        self._writes.append((write, args))
        if self._writing is None:
            self._writing = asyncio.ensure_future(self._flush(store))

    async def _flush(self, store: Store) -> None:
        while self._writes:
            group, self._writes = self._writes, []
            await asyncio.to_thread(_apply, store, group)
        self._writing = None  # left set after a failure: _settle raises it

    async def _settle(self) -> None:
        if self._writing is not None:
            await self._writing

    async def _send_one(self, store: Store, sender: SmtpSender, row: OutboxRow) -> None:
        now = self._clock()
        try:
            result = await sender.send(row.envelope_from, row.recipients, row.data)
        except SmtpTemporary as exc:
            self._temporary(store, row, now, str(exc))
            return
        except SmtpPermanent as exc:
            # A 5xx on an automatic answer means the address is dead: stop answering it for
            # a while, exactly as after a bounce (O02). A person's relay is only recorded.
            until = (
                now + self._suppress_days * 86400.0
                if row.kind in SUPPRESSING_KINDS and self._suppress_days
                else None
            )
            self._write(store, store.outbox_failed, row, now, str(exc), until)
            self.stats.failed += 1
            log.warning(
                "case=%s action=send_failed kind=%s to=%s reason=%s",
                row.case_number,
                row.kind,
                ",".join(row.recipients),
                exc,
            )
            return
        if self._outage:
            log.info("event=smtp_recovered")
            self._outage = False
        refused = {k: list(v) for k, v in result.refused.items()}
        self._write(store, store.outbox_sent, row, self._clock(), refused)
        self.stats.sent += 1
        self.stats.by_kind[row.kind] = self.stats.by_kind.get(row.kind, 0) + 1
        log.info(
            "case=%s action=sent kind=%s to=%s message_id=%s%s",
            row.case_number,
            row.kind,
            ",".join(result.accepted),
            row.message_id,
            f" refused={','.join(refused)}" if refused else "",
        )
        if self._on_sent is not None:
            self._on_sent(row, self._clock())

    def _temporary(self, store: Store, row: OutboxRow, now: float, error: str) -> None:
        if now - row.created_at > self.section.give_up_after:
            reason = f"gave up after {row.attempts + 1} attempts: {error}"
            self._write(store, store.outbox_failed, row, now, reason)
            self.stats.failed += 1
            return
        delay = retry_delay(self.section, row.attempts + 1)
        self._write(store, store.outbox_retry, row, now, now + delay, error)
        self.stats.retried += 1
        if not self._outage:
            log.warning(
                "event=smtp_temporary_failure case=%s error=%s retry_in=%.0fs",
                row.case_number,
                error,
                delay,
            )
            self._outage = True


def _apply(store: Store, group: list[tuple[Callable[..., object], tuple[object, ...]]]) -> None:
    """Outcomes recorded in one transaction (each write's own becomes a savepoint)."""
    with store.batch():
        for write, args in group:
            write(*args)
