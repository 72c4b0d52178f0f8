"""One message's way through the house: parse, thread, gather facts, plan, apply.

This is the seam between the pure core and the store. The daemon calls it for every
fetched mail inside a batch transaction; `mailcare replay` calls it against a scratch copy
of the store. Nothing here talks to IMAP or SMTP.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets as random_secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import mail as mail_mod
from . import plan as plan_mod
from . import threads
from .compose import Templates
from .config import Settings
from .hours import BusinessHours
from .resources import templates_dir
from .store import Store

DAY = 86400.0
log = logging.getLogger("mailcare")


@dataclass
class Engine:
    """The long-lived things a decision needs; rebuilt as a whole on SIGHUP."""

    settings: Settings
    secret: bytes
    templates: Templates
    hours: BusinessHours
    scope: Any = None

    @classmethod
    def load(cls, settings: Settings, *, train: bool = True, apart: bool = False) -> Engine:
        """Templates, hours, secret and the scope model; `apart` trains a missing model in a
        child process (the daemon's choice, see `scope_cache.load_or_train`)."""
        cfg = settings.mailcare
        templates = Templates(
            templates_dir(settings), languages=cfg.languages, default_language=cfg.default_language
        )
        model = None
        if train and settings.scope.categories:
            from .scope_cache import load_or_train

            model = load_or_train(
                settings.scope, model_dir(settings), corrections_file(settings), apart=apart
            )
        # The language model takes a second to load: now, not while the first mail waits.
        mail_mod.detect_language("warm up the language model", cfg.languages, cfg.default_language)
        return cls(settings, load_secret(settings), templates, BusinessHours(settings.hours), model)

    @property
    def agent_addresses(self) -> frozenset[str]:
        return frozenset(a.address for a in self.settings.agents)


def load_secret(settings: Settings) -> bytes:
    """The HMAC key for tokens: from config, a file, or generated once in state_dir."""
    cfg = settings.mailcare
    if cfg.secret is not None:
        return cfg.secret.get_secret_value().encode()
    path = cfg.secret_file or cfg.state_dir / "secret"
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = random_secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
    return value


def parse(settings: Settings, raw: bytes) -> mail_mod.Mail:
    """`mail.parse` with the configured languages and limits (also in parse workers,
    which have the settings but no Engine)."""
    cfg = settings.mailcare
    return mail_mod.parse(
        raw,
        languages=cfg.languages,
        default_language=cfg.default_language,
        max_header_bytes=settings.limits.max_header_bytes,
        max_parts=settings.limits.max_mime_parts,
    )


def process(
    store: Store,
    engine: Engine,
    mail: mail_mod.Mail,
    *,
    now: float,
    folder: str = "",
    uidvalidity: int | None = None,
    uid: int | None = None,
) -> plan_mod.Plan:
    """Decide and apply one mail. Call inside `store.batch()`."""
    cfg = engine.settings.mailcare
    env = plan_mod.Env(
        settings=engine.settings,
        secret=engine.secret,
        templates=engine.templates,
        hours=engine.hours,
        now=now,
        scope=engine.scope,
        folder=folder,
        uidvalidity=uidvalidity,
        uid=uid,
    )
    if store.has_message(mail.message_id):
        match = threads.Match(None, "duplicate", False, False, None, None, "already stored")
        return plan_mod.decide(mail, match, _duplicate_facts(), env)
    lookup = threads.lookup(
        mail, case_tag=cfg.case_tag, support_address=cfg.support_address, secret=engine.secret
    )
    context = store.resolve(lookup)
    match = threads.match(
        mail,
        context,
        case_tag=cfg.case_tag,
        support_address=cfg.support_address,
        secret=engine.secret,
        reopen_days=cfg.reopen_days,
        now=now,
        agents=engine.agent_addresses,
    )
    facts = gather(store, engine, mail, match, now)
    plan = plan_mod.decide(mail, match, facts, env)
    if plan.matched_by == "bounce" and plan.case is not None and plan.case != match.case:
        # A bounce names its case by VERP address or returned Message-ID, which only the
        # plan verifies: decide again knowing that case, so its owner can be told (B01).
        match = dataclasses.replace(match, case=plan.case)
        plan = plan_mod.decide(mail, match, gather(store, engine, mail, match, now), env)
    store.apply(plan, now=now)
    return plan


def _duplicate_facts() -> plan_mod.Facts:
    return plan_mod.Facts(
        duplicate=True,
        next_case_number=0,
        case_row=None,
        customer_ids=(),
        open_counts={},
        last_assigned=None,
        previous_owner=None,
        sent_to_sender=(),
        sent_for_case=(),
        suppressed_until=None,
    )


def gather(
    store: Store, engine: Engine, mail: mail_mod.Mail, match: threads.Match, now: float
) -> plan_mod.Facts:
    """Look up what the plan needs once the case is known."""
    settings = engine.settings
    sender = mail.sender.addr if mail.sender else ""
    limits = settings.limits
    row: dict[str, Any] | None = None
    customer_ids: tuple[str, ...] = ()
    last_take = None
    if match.case is not None:
        row = store.case(match.case)
        if row is not None:
            row["first_text"] = store.first_customer_text(match.case)
            customer_ids = store.customer_message_ids(match.case)
            last_take = store.last_take(match.case)
    new = match.case is None
    return plan_mod.Facts(
        duplicate=False,
        next_case_number=store.next_case_number() if new else 0,
        case_row=row,
        customer_ids=customer_ids,
        open_counts=store.open_counts() if new else {},
        last_assigned=(store.meta("rr_last") or None) if new else None,
        previous_owner=(
            store.previous_owner(sender, now - settings.owners.sticky_days * DAY)
            if new and sender
            else None
        ),
        sent_to_sender=store.automatic_sent(to_addr=sender, since=now - limits.per_sender_window)
        if sender
        else (),
        sent_for_case=store.automatic_sent(case=match.case, since=now - limits.per_case_window)
        if match.case is not None
        else (),
        suppressed_until=store.suppressed_until(sender, now) if sender else None,
        last_take=last_take,
    )


def record_corrections(engine: Engine, plan: plan_mod.Plan) -> None:
    """After commit: an owner's #scope correction becomes a training example."""
    if not plan.corrections:
        return
    from .scope import Example, append_example

    path = corrections_file(engine.settings)
    for subject, body, category in plan.corrections:
        try:
            append_example(path, Example(subject=subject, body=body, category=category))
        except OSError as exc:
            log.warning("event=correction_not_saved path=%s error=%s", path, exc)


def scratch_copy(source: Path, target: Path) -> None:
    """A consistent copy of a live database (SQLite backup API), for replay."""
    import sqlite3

    src = sqlite3.connect(str(source))
    dst = sqlite3.connect(str(target))
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def model_dir(settings: Settings) -> Path:
    return settings.mailcare.state_dir / "models"


def corrections_file(settings: Settings) -> Path:
    """Owners' #scope corrections: training examples kept in the (writable) state folder."""
    return settings.mailcare.state_dir / "corrections.jsonl"


def state_db(settings: Settings) -> Path:
    return settings.mailcare.state_dir / "mailcare.db"


def with_paths(settings: Settings, **updates: Any) -> Settings:
    """A copy of settings with [mailcare] keys replaced (demo and replay use it)."""
    core = settings.mailcare.model_copy(update=updates)
    return settings.model_copy(update={"mailcare": core})
