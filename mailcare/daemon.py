"""`mailcare run`: the intake loop, the outbox thread, signals and systemd.

Shape of one iteration (after Mailman's runner): feed the watchdog, apply a pending reload,
make sure IMAP is connected, drain everything new in batches (each batch one SQLite
transaction, marked on the server only after COMMIT), then wait in IDLE or poll. An IMAP
outage is one log line when it starts and one when it ends, with capped backoff between.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import config as config_mod
from . import metrics, pipeline
from .config import Settings
from .imap import Backoff, Fetched, ImapAuthError, ImapError, ImapSource, ImapUnavailable
from .logs import setup_logging
from .mail import Mail
from .oauth import TokenCommand, token_source
from .outbox import OutboxWorker
from .store import Store, StoreError, instance_lock
from .systemd import Notifier

if TYPE_CHECKING:
    from .scope import Decision

log = logging.getLogger("mailcare")


class Stop(Exception):
    """Raised inside waits when a stop was requested."""


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
        once: bool = False,
        log_format: str | None = None,
    ) -> None:
        self.settings = settings
        self.log_format = log_format  # --log-format, which outranks [log] format
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.once = once
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.processed = 0
        self.ready = False
        self.outbox: OutboxWorker | None = None
        self.engine: pipeline.Engine | None = None
        self._source: ImapSource | None = None
        self._outage_since: float | None = None
        self._next_sla = 0.0
        self._imap_tokens: tuple[tuple[str, str], TokenCommand | None] | None = None
        self.on_batch: Callable[[list[pipeline.plan_mod.Plan]], None] | None = None
        self._parser: ParsePool | None = None

    # -- public ------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        self.stop_event.set()

    def request_reload(self, *_: object) -> None:
        self.reload_event.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._signal_stop)
        signal.signal(signal.SIGINT, self._signal_stop)
        signal.signal(signal.SIGHUP, self._signal_reload)

    def _signal_stop(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop()

    def _signal_reload(self, signum: int, frame: FrameType | None) -> None:
        self.request_reload()

    def run(self) -> int:
        """Run until stopped; exit code 0 on a clean stop."""
        cfg = self.settings.mailcare
        with instance_lock(cfg.state_dir):
            store = Store(pipeline.state_db(self.settings))
            problem = store.check()
            if problem != "ok":
                raise StoreError(f"{store.path}: integrity check failed: {problem}")
            self.engine = pipeline.Engine.load(self.settings, apart=True)
            for problem in self.engine.templates.check():
                log.error("event=template_problem error=%s", problem)
            # Before any thread or socket exists (see ParsePool).
            workers = ParsePool.size()
            self._parser = ParsePool(workers, self.engine) if workers else None
            if self.settings.metrics.listen:
                metrics.serve(self.settings.metrics.listen)
            self._start_outbox()
            try:
                self._loop(store)
            except sqlite3.OperationalError as exc:
                raise _database_failure(store, exc) from exc
            finally:
                self.notifier.stopping()
                if self._source is not None:
                    self._source.close()
                if self.outbox is not None:
                    self.outbox.stop()
                if self._parser is not None:
                    self._parser.close()
                store.close()
                log.info("event=stopped processed=%d", self.processed)
        return 0

    # -- outbox ------------------------------------------------------------------------

    def _start_outbox(self) -> None:
        if self.settings.mailcare.mode == "shadow":
            log.info("event=shadow_mode sending=off marking=off")
            return
        smtp = self.settings.smtp
        db = pipeline.state_db(self.settings)
        self.outbox = OutboxWorker(
            lambda: Store(db),
            smtp,
            password=smtp.password.get_secret_value() if smtp.password else None,
            token_command=token_source(smtp.auth, smtp.oauth2_token_command),
            on_sent=self._on_sent,
            clock=self.clock,
            suppress_days=self.settings.limits.bounce_suppress_days,
        )
        self.outbox.start()

    def _on_sent(self, row: object, at: float) -> None:
        kind = getattr(row, "kind", "")
        metrics.sent.labels(kind).inc()
        if kind == "ack":
            metrics.ack_latency.observe(max(0.0, at - getattr(row, "created_at", at)))

    # -- the loop ----------------------------------------------------------------------

    def _loop(self, store: Store) -> None:
        backoff = Backoff(cap=self.settings.imap.reconnect_max)
        while not self.stop_event.is_set():
            self.notifier.watchdog()
            if self.reload_event.is_set():
                self._reload()
            try:
                source = self._connected(store)
                backoff.reset()
                self._periodic(store)
                if self._drain(source, store):
                    continue
                if self.once:
                    return
                self._wait(source, store)
            except ImapAuthError as exc:
                self._outage("imap_auth_failed", exc)
                self._sleep(max(backoff.next_delay(), 30.0 if not self.once else 0.5))
            except (ImapUnavailable, ImapError, OSError) as exc:
                self._outage("imap_unavailable", exc)
                self._sleep(backoff.next_delay())
            if self.once and self._outage_since is not None:
                return

    def _connected(self, store: Store) -> ImapSource:
        if self._source is not None:
            return self._source
        imap = self.settings.imap
        source = ImapSource(
            imap,
            password=imap.password.get_secret_value() if imap.password else None,
            token_command=self._imap_token(),
            max_message_bytes=self.settings.limits.max_message_bytes,
            logger=log,
            readonly=self.settings.mailcare.mode == "shadow",
        )
        try:
            uidvalidity = source.connect()
        except BaseException:
            source.close()
            raise
        self._source = source
        self._sync_uidvalidity(store, uidvalidity)
        if self._outage_since is not None:
            log.info("event=imap_recovered after=%.0fs", self.clock() - self._outage_since)
            metrics.reconnects.inc()
            self._outage_since = None
            if self.ready:
                self.notifier.status(self._status(store))
        if not self.ready:
            self.ready = True
            self.notifier.ready(self._status(store))
            log.info("event=ready folder=%s uidvalidity=%d", imap.folder, uidvalidity)
        return source

    def _imap_token(self) -> TokenCommand | None:
        """One token cache for every IMAP connection: a reconnect reuses the token until it
        expires instead of running the helper (and its provider round trip) again."""
        imap = self.settings.imap
        key = (imap.auth, imap.oauth2_token_command)
        if self._imap_tokens is None or self._imap_tokens[0] != key:
            self._imap_tokens = (key, token_source(*key))
        return self._imap_tokens[1]

    def _sync_uidvalidity(self, store: Store, uidvalidity: int) -> None:
        folder = self.settings.imap.folder
        known = store.folder(folder)
        self._uidvalidity = uidvalidity
        if known is not None and known[0] != uidvalidity:
            # UIDs restart: rescan everything; Message-ID/content dedupe keeps it harmless (I01).
            log.warning(
                "event=uidvalidity_changed folder=%s old=%d new=%d", folder, known[0], uidvalidity
            )
        if known is None or known[0] != uidvalidity:
            with store.batch():
                store.set_folder(folder, uidvalidity, 0, self.clock())

    def _outage(self, event: str, exc: BaseException) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None
        if self._outage_since is None:
            self._outage_since = self.clock()
            log.error(
                "event=%s host=%s error=%s (retrying with backoff)",
                event,
                self.settings.imap.host,
                exc,
            )
            # `systemctl status` shows why the service is not ready (or not working).
            imap = self.settings.imap
            self.notifier.status(f"IMAP {imap.host}:{imap.port} unavailable, retrying: {exc}")

    def _sleep(self, seconds: float) -> None:
        """Sleep in short slices so the watchdog keeps being fed and stop is prompt."""
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.notifier.watchdog()
            self.stop_event.wait(min(left, 0.5))

    def _wait(self, source: ImapSource, store: Store) -> None:
        """IDLE in one-second slices (the session stays idling between them, so a slice
        costs nothing on the wire) so stop, reload and the watchdog stay prompt; return on
        news, or after poll_interval as a safety net against a lost notification. Without
        IDLE, poll."""
        if self.settings.imap.idle and "IDLE" in source.capabilities:
            deadline = time.monotonic() + self.settings.imap.poll_interval
            while time.monotonic() < deadline:
                if self.stop_event.is_set() or self.reload_event.is_set():
                    return
                self.notifier.watchdog()
                if source.wait(1.0):
                    return
                self._periodic(store)
            return
        self._sleep(self.settings.imap.poll_interval)
        if not self.stop_event.is_set():
            source.wait(0.0)

    # -- draining ----------------------------------------------------------------------

    def _drain(self, source: ImapSource, store: Store) -> bool:
        """Process everything after the stored progress mark; True when anything was done."""
        folder = self.settings.imap.folder
        known = store.folder(folder)
        last_uid = known[1] if known else 0
        uids = [uid for uid in source.uids_after(last_uid) if uid > last_uid]
        if not uids:
            return False
        size = self.settings.imap.batch_size
        batches = [uids[start : start + size] for start in range(0, len(uids), size)]
        ahead = self._read(source, batches[0])
        for index in range(len(batches)):
            if self.stop_event.is_set():
                break
            self.notifier.watchdog()
            fetched, parsed = ahead
            if index + 1 < len(batches):
                # Fetched now and parsed by the workers while this batch is applied.
                ahead = self._read(source, batches[index + 1])
            self._batch(source, store, fetched, parsed)
        self.notifier.status(self._status(store))
        return True

    def _read(self, source: ImapSource, uids: Sequence[int]) -> tuple[list[Fetched], Parsed]:
        """Fetch a batch and start parsing it; call the second value for the mails."""
        fetched = source.fetch(uids)
        if self._parser is None:
            return fetched, lambda: _parse_all(self.settings, fetched)
        assert self.engine is not None
        return fetched, self._parser.parse(self.settings, fetched, self.engine)

    def _batch(
        self, source: ImapSource, store: Store, fetched: list[Fetched], parsed: Parsed
    ) -> None:
        assert self.engine is not None
        folder = self.settings.imap.folder
        started = time.perf_counter()
        results = parsed()
        mails = [mail for mail, _ in results]
        engine = _with_foreseen(self.engine, results)
        plans: list[pipeline.plan_mod.Plan] = []
        done: list[int] = []
        quarantine: list[int] = []
        progress = None
        blocked = False
        now = self.clock()
        with store.batch():
            for item, mail in zip(fetched, mails, strict=True):
                ok = self._one(store, item, mail, now, plans, quarantine, engine)
                if ok:
                    done.append(item.uid)
                if not ok and item.uid not in quarantine:
                    blocked = True
                if not blocked:
                    progress = item.uid
            if progress is not None:
                store.set_folder(folder, self._uidvalidity, progress, now)
        self._after_commit(source, store, done, quarantine, plans)
        if fetched:
            metrics.processing_seconds.observe((time.perf_counter() - started) / len(fetched))

    def _one(
        self,
        store: Store,
        item: Fetched,
        mail: Mail,
        now: float,
        plans: list[pipeline.plan_mod.Plan],
        quarantine: list[int],
        engine: pipeline.Engine | None = None,
    ) -> bool:
        """Process one mail inside a savepoint; a failure rolls back only this mail."""
        engine = engine or self.engine
        assert engine is not None
        folder = self.settings.imap.folder
        if store.has_uid(folder, self._uidvalidity, item.uid):
            return True
        try:
            with store.db.atomic():
                plan = pipeline.process(
                    store,
                    engine,
                    mail,
                    now=now,
                    folder=folder,
                    uidvalidity=self._uidvalidity,
                    uid=item.uid,
                )
        except sqlite3.OperationalError:
            raise  # the database, not the mail (disk full, I/O): never a reason to quarantine
        except Exception as exc:  # one bad mail must never stop the loop
            attempts = store.record_failure(folder, self._uidvalidity, item.uid, repr(exc))
            log.exception(
                "event=process_failed uid=%d message_id=%s attempt=%d error=%r",
                item.uid,
                mail.message_id,
                attempts,
                exc,
            )
            metrics.processed.labels("failed").inc()
            if attempts >= self.settings.limits.quarantine_after:
                quarantine.append(item.uid)
            return False
        plans.append(plan)
        self.processed += 1
        return True

    def _after_commit(
        self,
        source: ImapSource,
        store: Store,
        done: list[int],
        quarantine: list[int],
        plans: list[pipeline.plan_mod.Plan],
    ) -> None:
        assert self.engine is not None
        for plan in plans:
            for line in plan.log_lines():
                log.info(line)
            pipeline.record_corrections(self.engine, plan)
            metrics.record_plan(
                plan.actions,
                [(e.kind, str(e.detail.get("reason", ""))) for e in plan.events],
                plan.new,
            )
        if self.outbox is not None and any(p.outgoing for p in plans):
            self.outbox.wake()
        if self.on_batch is not None:
            self.on_batch(plans)
        if self.settings.mailcare.mode == "shadow":
            return
        if done:
            source.mark_processed(done)
        if quarantine:
            source.quarantine(quarantine)
            with store.batch():
                for uid in quarantine:
                    store.set_quarantined(self.settings.imap.folder, self._uidvalidity, uid)
            log.error(
                "event=quarantined uids=%s folder=%s",
                quarantine,
                self.settings.imap.quarantine_folder,
            )

    def _periodic(self, store: Store) -> None:
        """SLA reminders and escalations every `sla.check_interval` seconds."""
        now = self.clock()
        if now < self._next_sla or self.engine is None:
            return
        self._next_sla = now + self.settings.sla.check_interval
        from .sla import run_sla

        try:
            plans = run_sla(store, self.engine, now)
        except Exception as exc:  # the SLA clock must never stop intake
            log.exception("event=sla_failed error=%r", exc)
            return
        for plan in plans:
            for line in plan.log_lines():
                log.info(line)
        queued = self._report(store, now)
        if (plans or queued) and self.outbox is not None:
            self.outbox.wake()

    def _report(self, store: Store, now: float) -> bool:
        """The scheduled report to the team lead (`[report] to`, `every`)."""
        report = self.settings.report
        if not report.to or not report.every:
            return False
        from .report import last_report_sent, report_due, send_report

        if not report_due(last_report_sent(store), report.every, now):
            return False
        try:
            return send_report(self.settings, store, now) is not None
        except Exception as exc:  # a failed report must never stop intake
            log.exception("event=report_failed error=%r", exc)
            return False

    def _status(self, store: Store) -> str:
        pending, oldest = store.outbox_depth(self.clock())
        metrics.outbox_depth.set(pending)
        metrics.outbox_oldest.set(oldest)
        return f"processed {self.processed} mails; outbox {pending} pending"

    # -- reload ------------------------------------------------------------------------

    def _reload(self) -> None:
        """SIGHUP: new config, templates and scope model, or keep the old ones."""
        self.reload_event.clear()
        if self.config_path is None:
            return
        try:
            settings = config_mod.load(self.config_path)
            engine = pipeline.Engine.load(settings, apart=True)
        except Exception as exc:  # a bad new config must not stop a running service
            log.error("event=reload_rejected error=%s", exc)
            return
        problem = _reload_problem(self.settings, settings, engine)
        if problem:
            log.error("event=reload_rejected error=%s", problem)
            return
        imap_changed = settings.imap != self.settings.imap
        smtp_changed = settings.smtp != self.settings.smtp
        mode_changed = settings.mailcare.mode != self.settings.mailcare.mode
        log_changed = settings.log != self.settings.log
        self.settings, self.engine = settings, engine
        if log_changed:
            setup_logging(self.log_format or settings.log.format, settings.log.level)
        if (imap_changed or mode_changed) and self._source is not None:
            self._source.close()
            self._source = None
        if smtp_changed or mode_changed:
            if self.outbox is not None:
                self.outbox.stop()
                self.outbox = None
            self._start_outbox()
        log.info("event=reloaded imap_reconnect=%s", imap_changed or mode_changed)


def _reload_problem(old: Settings, new: Settings, engine: pipeline.Engine) -> str:
    """Why a loaded configuration still cannot replace the running one ("" when it can).

    Templates compile lazily, so a broken one would otherwise surface only when a mail
    needs it, and fail that mail again and again until it is quarantined; checking also
    compiles every template into the engine's cache (at start too), so an edit on disk
    reaches the daemon through a reload, never half-way. The store is
    opened once at start: a new state_dir would split intake and outbox between two
    databases."""
    if new.mailcare.state_dir != old.mailcare.state_dir:
        return "mailcare.state_dir cannot change while running (restart instead)"
    problems = engine.templates.check()
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"templates: {problems[0]}{more}"
    return ""


def _database_failure(store: Store, exc: sqlite3.OperationalError) -> StoreError:
    """The database refused a write past the busy timeout (disk full, I/O error, a lock that
    never ends). The batch in hand was rolled back and nothing was marked on the server or
    queued for sending, so exiting loses nothing: systemd starts us again later (C02)."""
    event = "db_full" if "full" in str(exc) else "db_error"
    log.error(
        "event=%s path=%s error=%s (batch rolled back, nothing acknowledged; exiting)",
        event,
        store.path,
        exc,
    )
    return StoreError(
        f"{store.path}: {exc}; stopped without acknowledging or marking the mail in hand"
    )


def parse_fetched(settings: Settings, item: Fetched) -> Mail:
    """A fetched message as a Mail; one over the size limit from its header block alone,
    with a defect that says so (it still opens a case that tells the customer why)."""
    limits = settings.limits
    raw = item.raw
    if raw is not None:
        # parse() itself stops at max_mime_parts and at deep nesting, with a defect.
        return pipeline.parse(settings, raw)
    note = f"too large: {item.size} bytes (limit {limits.max_message_bytes}); headers only"
    mail = pipeline.parse(settings, item.headers + b"\r\n")
    return dataclasses.replace(mail, defects=(*mail.defects, note))


# Mails with, for those that look like they open a case, the scope decision made ahead.
Parsed = Callable[[], list[tuple[Mail, "Decision | None"]]]


def _parse_all(
    settings: Settings, items: Sequence[Fetched], foresee: bool = False
) -> list[tuple[Mail, Decision | None]]:
    mails = [parse_fetched(settings, item) for item in items]
    return [(mail, _foresee(settings, mail) if foresee else None) for mail in mails]


# A parse worker's copy of the daemon's Engine, as it was when the worker was forked.
_forked: pipeline.Engine | None = None


def _foresee(settings: Settings, mail: Mail) -> Decision | None:
    """In a parse worker: the scope decision for a mail that looks like it opens a case (no
    reply headers, no case tag, not from an agent), so the daemon finds it made. A guess
    that misses costs a worker's time only: the plan asks the model itself for any other."""
    model = _forked.scope if _forked is not None else None
    sender = mail.sender.addr if mail.sender else ""
    if model is None or not sender or mail.in_reply_to or mail.references:
        return None
    if f"[{settings.mailcare.case_tag} #" in mail.subject or settings.agent(sender):
        return None
    try:
        decision: Decision = model.decide(subject=mail.subject, text=mail.new_text, sender=sender)
    except Exception:  # the plan will ask again, and meet the problem itself
        return None
    return decision


class _Foreseen:
    """The scope model, answering from decisions the parse workers made ahead."""

    def __init__(self, model: Any, known: dict[tuple[str, str, str], Decision]) -> None:
        self.model = model
        self.known = known

    def decide(self, *, subject: str, text: str, sender: str = "") -> Decision:
        found = self.known.get((subject, text, sender))
        if found is not None:
            return found
        decision: Decision = self.model.decide(subject=subject, text=text, sender=sender)
        return decision


def _with_foreseen(
    engine: pipeline.Engine, results: list[tuple[Mail, Decision | None]]
) -> pipeline.Engine:
    known = {
        (mail.subject, mail.new_text, mail.sender.addr): decision
        for mail, decision in results
        if decision is not None and mail.sender is not None
    }
    if not known or engine.scope is None:
        return engine
    return dataclasses.replace(engine, scope=_Foreseen(engine.scope, known))


PR_SET_PDEATHSIG = 1  # prctl(2)


def _worker_start(engine: pipeline.Engine) -> None:
    """In each parse worker: keep the Engine it was forked with, die with the daemon (a
    SIGKILLed daemon must not leave workers holding its lock file), take SIGTERM and
    SIGHUP as any process does (the daemon's handlers came along with the fork), and leave
    Ctrl-C to the daemon."""
    global _forked
    _forked = engine
    with contextlib.suppress(Exception):  # not Linux: the pipes still end the worker
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _started(_: int) -> int:
    return os.getpid()


class ParsePool:
    """Parses fetched mail in worker processes, so a backlog keeps both cores busy: the
    workers parse the next batch while the daemon applies this one in SQLite.

    Parsing is a third of a mail's CPU time and pure (bytes in, a `Mail` out), so it is
    the part that moves. The workers are forked once, at start, before the daemon opens a
    socket or starts a thread: they share the loaded models page for page, and hold no
    connection of the daemon's. A batch of a few mails is parsed in the daemon itself,
    where it costs less than the round trip to a worker (one new mail while idling is the
    case the acknowledgement latency depends on). If a worker dies, the daemon logs it once
    and parses in-process from then on: the batch in hand is parsed again, nothing is lost.
    """

    SMALL = 8  # batches of fewer mails are parsed in the daemon

    def __init__(self, workers: int, engine: pipeline.Engine) -> None:
        self.workers = workers
        self.engine = engine  # the workers' copy; after a reload they decide no scope
        self._executor: ProcessPoolExecutor | None = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_worker_start,
            initargs=(engine,),  # inherited through the fork, not pickled
        )
        # With "fork" every worker starts at the first submit: make that now.
        list(self._executor.map(_started, range(workers)))

    @staticmethod
    def size() -> int:
        """One worker per core beyond the daemon's own, at most four; none on one core."""
        return max(0, min(4, (os.cpu_count() or 1) - 1))

    def parse(self, settings: Settings, items: list[Fetched], engine: pipeline.Engine) -> Parsed:
        """Start parsing `items`; the returned function waits for the mails, in order."""
        executor = self._executor
        if executor is None or len(items) < self.SMALL:
            return lambda: _parse_all(settings, items)
        foresee = engine is self.engine and engine.scope is not None
        step = -(-len(items) // self.workers)
        futures: list[Future[list[tuple[Mail, Decision | None]]]] = []
        try:
            for start in range(0, len(items), step):
                chunk = items[start : start + step]
                futures.append(executor.submit(_parse_all, settings, chunk, foresee))
        except (BrokenProcessPool, RuntimeError) as exc:
            self._broken(exc)
            return lambda: _parse_all(settings, items)

        def result() -> list[tuple[Mail, Decision | None]]:
            try:
                return [mail for future in futures for mail in future.result()]
            except BrokenProcessPool as exc:
                self._broken(exc)
                return _parse_all(settings, items)

        return result

    def _broken(self, exc: BaseException) -> None:
        log.error("event=parse_workers_lost error=%s (parsing in the daemon from now on)", exc)
        self.close()

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
