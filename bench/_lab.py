"""What the speed benchmarks share: a private Dovecot loaded fast, an SMTP sink in a process
of its own, the daemon as a real `mailcare run` process, and the way figures are printed.

Everything runs on 127.0.0.1 and is thrown away at the end. The sink lives in its own
process so that its CPU time is not charged to the client under test (aiosmtpd costs about
as much per mail as the client does), and the daemon runs as a separate process exactly as
systemd starts it, so its peak RSS and CPU time can be read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # dovecot.py (the private Dovecot), spine.py

import dovecot as dovecot_lab  # noqa: E402
from imapclient import IMAPClient  # noqa: E402
from spine import with_settings  # noqa: E402

PASSWORD = "secret"
SUPPORT = "assistenza@examplenet.it"
KEYWORD = "$MailcareProcessed"
# Trained scope models, keyed by a hash of the examples and config: a second run skips the
# 10-20 s of training (the daemon does the same with its own state_dir/models).
MODEL_CACHE = Path(tempfile.gettempdir()) / "mailcare-bench-models"


# --------------------------------------------------------------------------- printing


def command(script: str, args: Sequence[str]) -> str:
    """The one line that reproduces a run."""
    return " ".join([".venv/bin/python", f"bench/{script}", *map(shlex.quote, args)])


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def percentile(values: Sequence[float], q: int) -> float:
    """The q-th percentile (inclusive method: p50 of two values is their mean)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def say(text: str = "") -> None:
    print(text, flush=True)


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Print what is being prepared and how long it took (setup, not a measurement)."""
    started = time.perf_counter()
    print(f"  {what} ...", end="", flush=True)
    yield
    print(f" {time.perf_counter() - started:.1f} s", flush=True)


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.02
) -> float:
    """Poll until `condition` holds; return the time.monotonic() when it was seen."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
    return time.monotonic()


# --------------------------------------------------------------------------- mail


def corpus_mail(count: int, seed: int = 1) -> list[bytes]:
    """`count` realistic support mails (bench/corpus.py), dated over the last two weeks."""
    from corpus import generate

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return list(generate(count, seed, now))


_HEADER = re.compile(
    rb"^(message-id|in-reply-to|from):[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
)
_ANGLE = re.compile(rb"<([^<>\s]+)>")


def head_fields(raw: bytes) -> dict[str, str]:
    """Message-ID, In-Reply-To (without brackets) and From of a message's header block."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    found: dict[str, str] = {}
    for name, value in _HEADER.findall(head):
        key = name.decode().lower()
        if key in found:
            continue
        ids = _ANGLE.findall(value)
        if key == "from":
            found[key] = (ids[-1] if ids else value.strip()).decode("ascii", "replace").lower()
        else:
            found[key] = ids[0].decode("ascii", "replace") if ids else ""
    return found


# --------------------------------------------------------------------------- IMAP


class Mailbox:
    """A private Debian Dovecot on loopback (tests/dovecot.py) and one user's INBOX."""

    def __init__(self) -> None:
        reason = dovecot_lab.available()
        if reason is not None:
            raise SystemExit(f"bench needs Debian's Dovecot: {reason}")
        self.server = dovecot_lab.Dovecot.start()

    def close(self) -> None:
        self.server.stop()

    @property
    def port(self) -> int:
        return self.server.port

    def new_user(self) -> str:
        return self.server.fresh_user()

    def maildir(self, user: str) -> Path:
        """The user's Maildir, created as Dovecot would (mail_location = maildir:~/Maildir,
        home = lab/mail/<user>, owned by the mail uid: nobody when run as root)."""
        home = self.server.lab / "mail" / user
        maildir = home / "Maildir"
        owner = (self.server.lab / "mail").stat()
        for folder in (home, maildir, *(maildir / sub for sub in ("cur", "new", "tmp"))):
            folder.mkdir(exist_ok=True)
            os.chown(folder, owner.st_uid, owner.st_gid)
        return maildir

    def load(self, user: str, mails: Iterable[bytes]) -> int:
        """Write the mails straight into Maildir/new, as an MDA would, in order.

        One `doveadm save` per mail costs a process start (about 50 ms); a file costs
        microseconds. Dovecot indexes new/ at the next SELECT and gives UIDs in the order
        of the file names, which are numbered."""
        maildir = self.maildir(user)
        owner = (self.server.lab / "mail").stat()
        count = 0
        for count, raw in enumerate(mails, start=1):
            name = f"1700000000.M{count:08d}P{os.getpid()}.bench"
            temp = maildir / "tmp" / name
            temp.write_bytes(raw)
            os.chown(temp, owner.st_uid, owner.st_gid)
            temp.rename(maildir / "new" / name)
        return count

    def index(self, user: str) -> int:
        """SELECT once and read every flag, so Dovecot has indexed the mail (moving it from
        new/ to cur/) before anything is timed; returns the message count."""
        with self.client(user) as client:
            uids = client.search(["ALL"])
            if uids:
                client.fetch(uids, ["FLAGS", "RFC822.SIZE"])
            return len(uids)

    def deliver(self, user: str, raw: bytes) -> None:
        """Deliver as an LDA does (`doveadm save`): IDLE sessions hear of it at once."""
        self.server.deliver(user, raw)

    @contextlib.contextmanager
    def client(self, user: str, *, readonly: bool = True) -> Iterator[IMAPClient]:
        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=120)
        try:
            client.login(user, PASSWORD)
            client.select_folder("INBOX", readonly=readonly)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def processed(self, user: str) -> int:
        """How many messages carry the daemon's processed keyword."""
        with self.client(user) as client:
            return len(client.search(["KEYWORD", KEYWORD]))


# --------------------------------------------------------------------------- SMTP sink


@dataclass(frozen=True)
class Accepted:
    """One message the sink answered 250 to DATA."""

    at: float  # time.time() in the sink process when it accepted the message
    size: int
    message_id: str
    in_reply_to: str
    recipients: tuple[str, ...]


class Sink:
    """An aiosmtpd server in a child process (`python bench/_lab.py sink`); one line per
    accepted message comes back on a pipe and is collected by a reader thread."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, __file__, "sink"], stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert self._process.stdout is not None
        first = self._process.stdout.readline()
        if not first.startswith("port "):
            self._process.kill()
            raise RuntimeError(f"the SMTP sink did not start: {first!r}")
        self.host, self.port = "127.0.0.1", int(first.split()[1])
        self._received: list[Accepted] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            at, size, mid, irt, rcpts = line.rstrip("\n").split("\t")
            item = Accepted(float(at), int(size), mid, irt, tuple(rcpts.split(",")))
            with self._changed:
                self._received.append(item)
                self._changed.notify_all()

    @property
    def received(self) -> list[Accepted]:
        with self._changed:
            return list(self._received)

    def count(self) -> int:
        with self._changed:
            return len(self._received)

    def wait_for(self, count: int, timeout: float) -> float:
        """Block until `count` messages were accepted; time.time() of the last one."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._received) >= count, timeout):
                raise TimeoutError(f"sink got {len(self._received)} of {count} mails")
            return self._received[count - 1].at

    def cpu(self) -> float:
        """CPU seconds the sink process has used so far."""
        return _cpu(self._process.pid)

    def stop(self) -> None:
        self._process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(10)
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


class _SinkHandler:
    """aiosmtpd's DATA hook: accept everything, report it on stdout."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or b""
        fields = head_fields(data)
        line = "\t".join(
            [
                f"{time.time():.6f}",
                str(len(data)),
                fields.get("message-id", ""),
                fields.get("in-reply-to", ""),
                ",".join(envelope.rcpt_tos),
            ]
        )
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        return "250 2.0.0 Queued (bench)"


def sink_main() -> None:
    """The sink process: a plain aiosmtpd server (no auth, no TLS) on a free port."""
    import logging

    from aiosmtpd.smtp import SMTP

    logging.getLogger("mail.log").setLevel(logging.ERROR)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        handler = _SinkHandler()
        server = await loop.create_server(
            lambda: SMTP(handler, decode_data=False, enable_SMTPUTF8=True, hostname="sink.bench"),
            "127.0.0.1",
            0,
        )
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(serve())


# --------------------------------------------------------------------------- the daemon


def write_config(
    folder: Path, *, imap_port: int, user: str, smtp_port: int, **tables: dict[str, Any]
) -> Path:
    """The shipped reference config (mailcare.toml, four agents, the ExampleNet scope
    rules) pointed at the lab servers. Every generated mail is young enough to be
    acknowledged, so each one takes the full path (the reference keeps 72 hours)."""
    state = folder / "state"
    (state).mkdir(parents=True, exist_ok=True)
    MODEL_CACHE.mkdir(exist_ok=True)
    with contextlib.suppress(FileExistsError):
        (state / "models").symlink_to(MODEL_CACHE, target_is_directory=True)
    settings: dict[str, dict[str, Any]] = {
        "mailcare": {"state_dir": str(state), "templates_dir": str(ROOT / "templates")},
        "imap": {
            "host": "127.0.0.1",
            "port": imap_port,
            "tls": "none",
            "username": user,
            "password": PASSWORD,
        },
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "tls": "none", "username": ""},
        "limits": {"ack_max_age_hours": 24 * 15},
        "metrics": {"listen": ""},
        "report": {"to": "", "every": ""},
    }
    reference = (ROOT / "mailcare.toml").read_text(encoding="utf-8")
    settings["scope"] = {"examples_dir": str(ROOT / "classifiers")}
    for table, values in tables.items():
        settings.setdefault(table, {}).update(values)
    path = folder / "mailcare.toml"
    path.write_text(with_settings(reference, **settings) + "\n", encoding="utf-8")
    return path


def _kib(pid: int, name: str, field: str) -> int:
    """A `field: N kB` line of /proc/<pid>/<name>; 0 once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _cpu(pid: int, stat: str = "stat") -> float:
    """User + system CPU seconds of a live process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/{stat}").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu(pid: int, tid: int) -> float:
    """User + system CPU seconds of one thread (0 once it is gone)."""
    return _cpu(pid, f"task/{tid}/stat")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in task.read_text().split()]
    return found


class Daemon:
    """`mailcare run --config …` as its own process, its log in a file."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.parent / "mailcare.log"
        self.db = config.parent / "state" / "mailcare.db"
        self._handle = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailcare.cli", "run", "--config", str(config)],
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.peak_rss = self.peak_pss = 0  # KiB
        self.cpu = 0.0

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Wait for the `event=ready` line; time.monotonic() when it was seen."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"mailcare exited early:\n{self.tail()}")
            return b"event=ready" in self.log.read_bytes()

        return wait_until(ready, timeout, "mailcare to log event=ready", poll=0.005)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def sample_memory(self) -> None:
        """Note the daemon's peak RSS (the kernel's VmHWM) and the largest PSS of the
        daemon and its parse workers together. PSS counts a page shared by n processes as
        1/n in each, so the forked workers add what they use of their own, not the models
        they share with the daemon (their RSS would count those again)."""
        self.peak_rss = max(self.peak_rss, _kib(self.process.pid, "status", "VmHWM"))
        pids = [self.process.pid, *_children(self.process.pid)]
        self.peak_pss = max(self.peak_pss, sum(_kib(pid, "smaps_rollup", "Pss") for pid in pids))
        self.cpu = max(self.cpu, sum(_cpu(pid) for pid in pids))

    def peak_rss_mb(self) -> tuple[float, float]:
        """(peak RSS of the daemon, peak PSS of the daemon and its workers) in MB."""
        self.sample_memory()
        return self.peak_rss / 1024, self.peak_pss / 1024

    def cpu_parts(self) -> dict[str, float]:
        """CPU seconds so far of the daemon's main thread (intake), its other threads (the
        outbox and its commit helpers) and its parse workers."""
        pid = self.process.pid
        main = _thread_cpu(pid, pid)
        return {
            "intake thread": main,
            "outbox threads": _cpu(pid) - main,
            "parse workers": sum(_cpu(child) for child in _children(pid)),
        }

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the daemon and its workers, as last sampled."""
        self.sample_memory()
        return self.cpu

    def stop(self) -> None:
        if self.process.poll() is None:
            self.sample_memory()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._handle.close()

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Read the daemon's database on a connection of our own (read-only)."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []  # not created yet
        finally:
            conn.close()

    def last_uid(self) -> int:
        rows = self.query("SELECT last_uid FROM folders WHERE name = 'INBOX'")
        return int(rows[0][0]) if rows else 0

    def pending(self) -> int:
        rows = self.query("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")
        return int(rows[0][0]) if rows else 0


@dataclass
class Drain:
    """One timed backlog drain by the daemon."""

    mails: int
    seconds: float  # from event=ready to the last mail marked on the server
    sent_seconds: float  # from event=ready until the outbox was empty
    cpu: float  # daemon CPU seconds over the whole run (start-up included)
    rss: float  # peak RSS of the daemon process, MB
    pss: float  # peak PSS of the daemon and its parse workers together, MB
    cases: int
    queued: int
    # CPU seconds from event=ready until the outbox was empty, by part (and the SMTP sink)
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return rate(self.mails, self.seconds)


def drain(
    mailbox: Mailbox, user: str, count: int, folder: Path, sink: Sink, **tables: dict[str, Any]
) -> Drain:
    """Start the daemon on a loaded mailbox and time it until every mail is processed
    (stored, planned, queued, committed) and marked on the server."""
    config = write_config(folder, imap_port=mailbox.port, user=user, smtp_port=sink.port, **tables)
    daemon = Daemon(config)
    try:
        started = daemon.wait_ready()
        before = {**daemon.cpu_parts(), "SMTP sink": sink.cpu()}
        with mailbox.client(user) as watcher:
            highest = max(watcher.search(["ALL"]))

            def marked() -> bool:
                daemon.sample_memory()
                if daemon.last_uid() < highest:
                    return False
                watcher.noop()
                return len(watcher.search(["KEYWORD", KEYWORD])) >= count

            done = wait_until(marked, 3600, "every mail processed and marked", poll=0.05)
        sent = wait_until(lambda: daemon.pending() == 0, 3600, "the outbox to empty", poll=0.1)
        after = {**daemon.cpu_parts(), "SMTP sink": sink.cpu()}
        cases = int(daemon.query("SELECT COUNT(*) FROM cases")[0][0])
        queued = int(daemon.query("SELECT COUNT(*) FROM outbox")[0][0])
        cpu = daemon.cpu_seconds()
    except BaseException:
        print(daemon.tail(), file=sys.stderr)
        raise
    finally:
        daemon.stop()
    main, total = daemon.peak_rss_mb()
    parts = {name: after[name] - before[name] for name in after}
    return Drain(count, done - started, sent - started, cpu, main, total, cases, queued, parts)


def fetch_floor(mailbox: Mailbox, user: str, chunk: int = 500) -> tuple[int, int, float]:
    """The floor: imapclient fetching every message with BODY.PEEK[] and doing nothing
    else. Returns (messages, bytes, seconds), login excluded."""
    with mailbox.client(user) as client:
        started = time.perf_counter()
        uids = client.search(["ALL"])
        count = size = 0
        for first in range(0, len(uids), chunk):
            answer = client.fetch(uids[first : first + chunk], ["BODY.PEEK[]"])
            count += len(answer)
            size += sum(len(data[b"BODY[]"]) for data in answer.values())
        return count, size, time.perf_counter() - started


if __name__ == "__main__":
    if sys.argv[1:] == ["sink"]:
        sink_main()
    else:
        raise SystemExit("usage: python bench/_lab.py sink   (started by the bench scripts)")
