"""`mailcare replay`: the real pipeline over files, against a scratch store, sending nothing.

Admins use it to see what mailcare would do before they switch it on; tests use it to check
threading on real corpora. Each message is processed "as of" its own Date header, so rate
limits and the stale-mail rule behave as they would have on arrival, and with `--fresh` the
same input always yields the same case numbers.
"""

from __future__ import annotations

import mailbox
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import pipeline
from .config import Settings
from .store import Store


def iter_sources(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    """(label, raw bytes) for every message in .eml files, mbox files and Maildir folders."""
    for path in paths:
        if path.is_dir():
            yield from _folder(path)
        elif _is_mbox(path):
            for index, message in enumerate(mailbox.mbox(str(path), create=False)):
                yield f"{path}#{index + 1}", message.as_bytes()
        else:
            yield str(path), path.read_bytes()


def _folder(path: Path) -> Iterator[tuple[str, bytes]]:
    """A Maildir (with Maildir++ subfolders; tmp/ is skipped and may be missing in a copy)
    or any folder of message files, in path order."""
    files = (p for p in path.rglob("*") if p.is_file())
    for file in sorted(f for f in files if "tmp" not in f.relative_to(path).parts[:-1]):
        if not file.name.startswith("."):
            yield str(file), file.read_bytes()


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(5) == b"From "


def replay_paths(settings: Settings, paths: list[Path], *, fresh: bool) -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="mailcare-replay-") as scratch:
        db_path = Path(scratch) / "replay.db"
        live = pipeline.state_db(settings)
        if not fresh and live.exists():
            pipeline.scratch_copy(live, db_path)
        shadow = pipeline.with_paths(settings, mode="shadow")
        engine = pipeline.Engine.load(shadow)
        if fresh and settings.mailcare.secret is None:
            # A fixed key keeps tokens and our Message-IDs stable from run to run.
            engine.secret = b"mailcare-replay"
        store = Store(db_path)
        try:
            clock = time.time() if not fresh else 0.0
            for label, raw in iter_sources(paths):
                yield _one(store, engine, label, raw, clock)
        finally:
            store.close()


def _one(
    store: Store, engine: pipeline.Engine, label: str, raw: bytes, clock: float
) -> dict[str, Any]:
    mail = pipeline.parse(engine.settings, raw)
    now = mail.date.timestamp() if mail.date is not None and mail.date.tzinfo else clock
    with store.batch():
        plan = pipeline.process(store, engine, mail, now=now or time.time())
    return {
        "source": label,
        "message_id": mail.message_id,
        "case": plan.case,
        "new_case": plan.new,
        "matched_by": plan.matched_by,
        "actions": list(dict.fromkeys(plan.actions)) or ["none"],
        "reasons": plan.reasons,
        "defects": list(mail.defects),
    }
