"""The state database and the config under stress, through the whole daemon (RELIABILITY C).

A full disk, a lock held by someone else, a damaged file, a broken config and a migration
cut short: in each the daemon either carries on without losing or repeating work, or stops
with one clear line and leaves everything as it was (mail unmarked on the server, nothing
sent), so that systemd can start it again once the cause is gone.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from spine import (
    Rig,
    Watched,
    acks_to,
    customer_mail,
    running_daemon,
)
from sqlite_utils import Database

from mailcare.sandbox import LabImap, LabSmtp
from mailcare.store import Store, migrations


@pytest.fixture
def rig(tmp_path: Path, lab_imap: LabImap, lab_smtp: LabSmtp) -> Rig:
    return Rig(tmp_path, lab_imap, "support@lab.test", lab_smtp)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailcare.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- C02 disk full -------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs as the state folder (needs root and mount rights, as in CI)."""
    where = tmp_path / "state"
    where.mkdir()
    if os.getuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Take all the free space in `folder` but `leave` bytes."""
    stat = os.statvfs(folder)
    filler = folder / "filler"
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - leave))
    return filler


@pytest.mark.dovecot
def test_c02_disk_full(
    tmp_path: Path, small_disk: Path, dovecot: Any, dovecot_user: str, lab_smtp: LabSmtp
) -> None:
    rig = Rig(tmp_path, dovecot, dovecot_user, lab_smtp)
    config = rig.config()
    rig.deliver(customer_mail(sender="before@example.org"))
    with running_daemon(config) as daemon:
        rig.settle(daemon, 1)
    sent = len(lab_smtp.received)
    filler = fill(small_disk, leave=128 * 1024)
    rig.deliver(customer_mail(sender="c02@example.org", body="Foto allegata.\n" + "x" * 400_000))
    run = Watched(config)
    run.process.wait(30)  # it stops by itself
    assert run.stop() == 1
    assert "event=db_full" in run.output
    assert run.output.strip().splitlines()[-1].startswith("mailcare: ")  # one line, no traceback
    assert "Traceback" not in run.output
    assert len(lab_smtp.received) == sent  # no ack for a case that could not be stored
    assert dovecot.status(dovecot_user)["messages"] == 2  # still on the server …
    assert "MailcareProcessed" not in dovecot.flags(dovecot_user)[2]  # … and not marked
    assert rig.count("SELECT COUNT(*) FROM failures") == 0  # never counted as a poison mail
    assert Store(rig.state / "mailcare.db").check() == "ok"
    # Space again: the next start takes the mail as if nothing had happened.
    filler.unlink()
    with running_daemon(config) as daemon:
        rig.settle(daemon, 1)
    assert len(acks_to(lab_smtp.received, "c02@example.org")) == 1
    assert rig.count("SELECT COUNT(*) FROM cases") == 2


# -- C03 locked database ---------------------------------------------------------------------


def test_c03_database_locked_by_someone_else(rig: Rig) -> None:
    senders = [f"c03-{n}@example.org" for n in range(3)]
    with running_daemon(rig.config()) as daemon:
        other = sqlite3.connect(rig.state / "mailcare.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # e.g. an admin's sqlite3 shell, or a backup
        try:
            for sender in senders:
                rig.deliver(customer_mail(sender=sender))
            time.sleep(3)
            assert daemon.processed == 0 and rig.sink.received == []  # waiting, not failing
        finally:
            other.execute("COMMIT")
            other.close()
        rig.settle(daemon, 3)
    for sender in senders:
        assert rig.count("SELECT COUNT(*) FROM cases WHERE customer = ?", sender) == 1
        assert len(acks_to(rig.sink.received, sender)) == 1
    assert rig.count("SELECT COUNT(*) FROM failures") == 0


# -- C05 damaged database ---------------------------------------------------------------------


def test_c05_corrupted_database_is_never_recreated(rig: Rig) -> None:
    for n in range(20):
        rig.deliver(customer_mail(sender=f"c05-{n}@example.org", body="testo " * 500))
    config = rig.config()
    with running_daemon(config) as daemon:
        rig.settle(daemon, 20)
    path = rig.state / "mailcare.db"
    data = corrupt_middle(path)
    files = state_files(rig)
    sent = len(rig.sink.received)
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("mailcare: ")
    assert str(path) in result.stderr
    assert "integrity check failed" in result.stderr or "damaged" in result.stderr
    assert path.read_bytes() == data  # left exactly as found, for the admin
    assert state_files(rig) == files == ["mailcare.db", "mailcare.lock"]  # no new database
    assert len(rig.sink.received) == sent


def state_files(rig: Rig) -> list[str]:
    """The state folder's files, without SQLite's own -wal/-shm companions."""
    return sorted(p.name for p in rig.state.iterdir() if not p.name.endswith(("-wal", "-shm")))


def corrupt_middle(path: Path) -> bytes:
    """Overwrite three pages in the middle of the file with noise, at the first spot (from
    the middle outwards) where SQLite can tell: noise over free pages would be harmless."""
    checkpoint = sqlite3.connect(path)
    checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
    checkpoint.close()
    clean = path.read_bytes()
    pages = len(clean) // 4096
    noise = os.urandom(3 * 4096)
    for offset in range(pages // 2):
        for page in {pages // 2 - offset, pages // 2 + offset}:
            start = max(1, min(page, pages - 3)) * 4096
            data = clean[:start] + noise + clean[start + len(noise) :]
            path.write_bytes(data)
            if damaged(path):
                return data
    raise AssertionError("no page in the middle whose damage SQLite notices")


def damaged(path: Path) -> bool:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return bool(conn.execute("PRAGMA quick_check").fetchone()[0] != "ok")
    except sqlite3.DatabaseError:
        return True
    finally:
        conn.close()


# -- C06 config mistakes -----------------------------------------------------------------------


def test_c06_invalid_toml_names_file_line_and_column(rig: Rig) -> None:
    config = rig.config()
    lines = config.read_text().splitlines()
    broken = next(n for n, line in enumerate(lines) if line.startswith("port"))
    lines[broken] = "port = = 993"
    config.write_text("\n".join(lines) + "\n")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert str(config) in result.stderr
    assert f"line {broken + 1}" in result.stderr and "column" in result.stderr
    assert not rig.state.exists()  # nothing started


def test_c06_unknown_key_is_named(rig: Rig) -> None:
    config = rig.config(imap={"hots": "imap.example.org"})
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "imap.hots" in result.stderr and "unknown key" in result.stderr


# -- C07 interrupted migration ------------------------------------------------------------------

_KILL_INSIDE = """
import os, signal, sys
from sqlite_utils import Database
from mailcare.store import migrations
db = Database(sys.argv[1])
for migration in migrations.pending(db):
    if migration.name == sys.argv[2]:
        real = migration.fn
        def killed(db, real=real):
            real(db)
            os.kill(os.getpid(), signal.SIGKILL)  # the migration ran, its COMMIT did not
        migration.fn = killed
migrations.apply(db)
"""


def schema(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("name", [m.name for m in migrations.pending(Database(memory=True))])
def test_c07_migration_killed_halfway(tmp_path: Path, name: str) -> None:
    """SIGKILL inside each migration in turn: the schema is the old one, never half of the
    new one, and the next start completes it."""
    path = tmp_path / "mailcare.db"
    db = Database(path)
    db.enable_wal()
    migrations.apply(db, stop_before=name)
    db.close()
    before = schema(path)
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_INSIDE, str(path), name],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert killed.returncode == -9, killed.stderr
    assert schema(path) == before
    store = Store(path)
    try:
        assert store.check() == "ok"
        applied = [m.name for m in migrations.applied(store.db)]
        assert name in applied and migrations.pending(store.db) == []
    finally:
        store.close()
