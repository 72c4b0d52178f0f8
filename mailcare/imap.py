"""The IMAP side of the daemon: log in, watch one folder, fetch new mail, set it aside.

`ImapSource` is one connection to one folder and nothing more: it never reconnects by
itself, because the daemon owns the outage loop (one log line per outage, backoff, the
systemd status). Every failure surfaces as one of three exceptions: `ImapAuthError`
(credentials refused: retrying fast would only earn auth penalties), `ImapUnavailable` (the
connection is gone or unusable: reconnect with backoff) and `ImapError` (the server
refused a command, e.g. the folder does not exist).

What the daemon can rely on (RELIABILITY §5):
- the socket timeout is always `imap.timeout`, so a stalled server (NAT drop, I04) raises
  `ImapUnavailable` instead of hanging; during IDLE silence is normal, so a stall there is
  caught when IDLE ends (every `wait()` slice, or `idle_renew` at the latest);
- a BYE or EOF during IDLE (server restart, `doveadm kick`, I03) raises `ImapUnavailable`
  at once and never spins: IDLE waits on the socket and reads answers after DONE, instead
  of imapclient's `idle_check()`, which returns `[]` immediately forever after EOF and
  breaks on responses split across TCP segments;
- messages are read with `BODY.PEEK[]`, never setting `\\Seen` (people use the mailbox too);
- "N:*" in a UID search always matches the last message even when N is past the end, so
  `uids_after()` filters the answer;
- folder names in the configuration use "/" as hierarchy separator and are translated to
  the server's own (Dovecot's Maildir++ uses ".");
- nothing is ever expunged except the UIDs just copied elsewhere, and only with UIDPLUS.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import selectors
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import tenacity
from imapclient import DELETED, IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from .config import ImapSection

__all__ = [
    "Backoff",
    "Fetched",
    "ImapAuthError",
    "ImapError",
    "ImapSource",
    "ImapUnavailable",
]

# Untagged answers during IDLE that mean "the folder changed: look again".
_CHANGES: Final = frozenset({b"EXISTS", b"RECENT", b"EXPUNGE", b"FETCH"})


class ImapError(Exception):
    """The IMAP server refused something. `host`/`port` say which server."""

    def __init__(self, message: str, *, host: str = "", port: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.host = host
        self.port = port


class ImapAuthError(ImapError):
    """Login refused (wrong password, expired token, no credentials configured)."""


class ImapUnavailable(ImapError, ConnectionError):
    """The connection could not be made or is gone: reconnect with backoff."""


@dataclass(frozen=True)
class Fetched:
    """One fetched message. `raw` is None when `size` is over the limit; `headers` then
    holds the header block alone, so the mail can still open a case that says why."""

    uid: int
    size: int
    raw: bytes | None
    headers: bytes = b""


class Backoff:
    """Capped exponential backoff with "equal jitter": each delay is between half and all
    of `base * 2**n`, capped at `cap`, so retries never come in a tight burst and a crowd
    of clients does not reconnect in lockstep. tenacity's wait strategies do the maths."""

    def __init__(self, *, base: float = 1.0, cap: float = 300.0) -> None:
        half_base, half_cap = base / 2, cap / 2
        self._wait = tenacity.wait_exponential(
            multiplier=half_base, max=half_cap
        ) + tenacity.wait_random_exponential(multiplier=half_base, max=half_cap)
        self._state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})

    def next_delay(self) -> float:
        delay = float(self._wait(self._state))
        self._state.attempt_number += 1
        return delay

    def reset(self) -> None:
        self._state.attempt_number = 1


def _ssl_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _is_bye(response: tuple[Any, ...]) -> bool:
    return bool(response) and response[0] == b"BYE"


def _is_change(response: tuple[Any, ...]) -> bool:
    return len(response) > 1 and response[1] in _CHANGES


class ImapSource:
    """One logged-in connection to `section.folder`. Not thread-safe; one user at a time."""

    def __init__(
        self,
        section: ImapSection,
        *,
        password: str | None,
        token_command: Callable[[], str] | None = None,
        max_message_bytes: int,
        logger: logging.Logger,
        readonly: bool = False,
    ) -> None:
        self.section = section
        # EXAMINE instead of SELECT (shadow mode): the server changes nothing, not even
        # \Recent, and refuses any STORE or MOVE that would.
        self.readonly = readonly
        self._password = password
        self._token_command = token_command
        self.max_message_bytes = max_message_bytes
        self.log = logger
        self.capabilities: frozenset[str] = frozenset()
        self._client: IMAPClient | None = None
        self._dead = False
        self._idle_since: float | None = None
        self._delimiter = "/"
        self._keyword_warned = False

    # -- errors --------------------------------------------------------------------------
    def _unavailable(self, why: str) -> ImapUnavailable:
        self._dead = True
        return ImapUnavailable(why, host=self.section.host, port=self.section.port)

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn imaplib/imapclient/socket failures into the three mailcare exceptions."""
        if self._dead:
            raise ImapUnavailable(
                "connection already lost", host=self.section.host, port=self.section.port
            )
        try:
            yield
        except ImapError:
            raise
        except (imaplib.IMAP4.abort, OSError, EOFError) as exc:  # incl. timeouts, ssl errors
            raise self._unavailable(f"{action}: {type(exc).__name__}: {exc}") from exc
        except LoginError as exc:
            raise ImapAuthError(
                f"{action}: {exc}", host=self.section.host, port=self.section.port
            ) from exc
        except IMAPClientError as exc:
            raise ImapError(
                f"{action}: {exc}", host=self.section.host, port=self.section.port
            ) from exc

    @property
    def client(self) -> IMAPClient:
        if self._client is None:
            raise ImapUnavailable("not connected", host=self.section.host, port=self.section.port)
        return self._client

    # -- connect -------------------------------------------------------------------------
    def connect(self) -> int:
        """Connect, log in and SELECT the folder read-write; return its UIDVALIDITY."""
        section = self.section
        with self._guard(f"connect to {section.host}:{section.port}"):
            self._client = IMAPClient(
                section.host,
                port=section.port,
                ssl=section.tls == "ssl",
                ssl_context=_ssl_context(section.tls_verify) if section.tls == "ssl" else None,
                timeout=section.timeout,
            )
        with self._guard("STARTTLS"):
            self._starttls()
        with self._guard("login"):
            self._login()
        with self._guard("capabilities"):
            self.capabilities = frozenset(
                cap.decode("ascii", "replace").upper() for cap in self.client.capabilities()
            )
            self._delimiter = self._find_delimiter()
        with self._guard(f"select {section.folder}"):
            selected = self.client.select_folder(
                self._server_name(section.folder), readonly=self.readonly
            )
        return int(selected[b"UIDVALIDITY"])

    def _starttls(self) -> None:
        """Upgrade to TLS when `tls = "starttls"`; a server not offering it is an error,
        never a reason to continue in clear text (RELIABILITY O05)."""
        if self.section.tls != "starttls":
            return
        if not self.client.has_capability("STARTTLS"):
            raise self._unavailable("server does not offer STARTTLS (tls = starttls)")
        self.client.starttls(_ssl_context(self.section.tls_verify))

    def _login(self) -> None:
        section = self.section
        if section.auth == "xoauth2":
            token = self._token()
            try:
                self.client.oauth2_login(section.username, token)
            except LoginError:
                # The cached token may have been revoked: fetch a fresh one next time.
                invalidate = getattr(self._token_command, "invalidate", None)
                if callable(invalidate):
                    invalidate()
                raise
            return
        if self._password is None:
            raise ImapAuthError("no password configured", host=section.host, port=section.port)
        self.client.login(section.username, self._password)

    def _token(self) -> str:
        if self._token_command is None:
            raise ImapAuthError(
                "auth = xoauth2 needs oauth2_token_command",
                host=self.section.host,
                port=self.section.port,
            )
        try:
            return self._token_command()
        except Exception as exc:  # the token helper is external: any failure is an auth one
            raise ImapAuthError(
                f"token command: {exc}", host=self.section.host, port=self.section.port
            ) from exc

    def _find_delimiter(self) -> str:
        """The hierarchy separator (`LIST "" ""` answers with it, RFC 3501 6.3.8)."""
        listed = self.client.list_folders("", "")
        delimiter = listed[0][1] if listed else None
        if isinstance(delimiter, bytes):
            delimiter = delimiter.decode("ascii", "replace")
        return delimiter or "/"

    def _server_name(self, name: str) -> str:
        return name if self._delimiter == "/" else name.replace("/", self._delimiter)

    # -- reading -------------------------------------------------------------------------
    def uids_after(self, last_uid: int) -> list[int]:
        """UIDs above `last_uid`, ascending."""
        self._end_idle()
        with self._guard("UID SEARCH"):
            # Servers answer SEARCH from the session's view; NOOP first lets the session
            # learn of mail that arrived since the last command (seen with Dovecot and pymap).
            self.client.noop()
            found = self.client.search(["UID", f"{last_uid + 1}:*"])
        # "N:*" matches the highest UID even when N is above it (RFC 3501 6.4.8).
        return sorted(uid for uid in found if uid > last_uid)

    def fetch(self, uids: Sequence[int]) -> list[Fetched]:
        """Sizes first, then whole messages within the limit and headers of the others, in
        UID order. UIDs expunged meanwhile by another client are simply missing (I09)."""
        wanted = sorted(set(uids))
        if not wanted:
            return []
        self._end_idle()
        with self._guard("FETCH RFC822.SIZE"):
            sizes = {
                uid: int(data[b"RFC822.SIZE"])
                for uid, data in self.client.fetch(wanted, ["RFC822.SIZE"]).items()
                if b"RFC822.SIZE" in data
            }
        small = [uid for uid in wanted if uid in sizes and sizes[uid] <= self.max_message_bytes]
        large = [uid for uid in wanted if uid in sizes and sizes[uid] > self.max_message_bytes]
        bodies = self._fetch_part(small, "BODY.PEEK[]", b"BODY[]")
        heads = self._fetch_part(large, "BODY.PEEK[HEADER]", b"BODY[HEADER]")
        result = [Fetched(uid, sizes[uid], bodies[uid]) for uid in small if uid in bodies]
        result += [Fetched(uid, sizes[uid], None, heads[uid]) for uid in large if uid in heads]
        return sorted(result, key=lambda item: item.uid)

    def _fetch_part(self, uids: list[int], item: str, key: bytes) -> dict[int, bytes]:
        if not uids:
            return {}
        with self._guard(f"FETCH {item}"):
            answer = self.client.fetch(uids, [item])
        return {uid: bytes(data[key]) for uid, data in answer.items() if data.get(key) is not None}

    # -- waiting -------------------------------------------------------------------------
    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for news; True when the server reported a change.

        With IDLE the session stays idling between calls that report nothing, so short
        slices cost nothing on the wire; any other command ends IDLE first.
        """
        if self.section.idle and "IDLE" in self.capabilities:
            return self._wait_idle(timeout)
        return self._wait_poll(timeout)

    def _wait_poll(self, timeout: float) -> bool:
        time.sleep(max(0.0, min(timeout, self.section.poll_interval)))
        with self._guard("NOOP"):
            _, responses = self.client.noop()
        return any(_is_change(tuple(item)) for item in responses or [])

    def _wait_idle(self, timeout: float) -> bool:
        """Sleep on the socket, then end IDLE to read what came, in blocking mode.

        imapclient's `idle_check()` reads with a non-blocking socket: a response split
        across TCP segments raises "unterminated line" and desynchronises the session, and
        after EOF it returns `[]` at once forever (I03). Ending IDLE with DONE reads whole
        lines with the normal timeout, and EOF or BYE surfaces as an error right there.
        """
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self._start_idle()
            if not self._readable(left):
                return False
            responses = self._end_idle()
            if any(_is_change(tuple(item)) for item in responses):
                return True
            # only "* OK Still here" or the like: go back to IDLE for the time left
        return False

    def _readable(self, timeout: float) -> bool:
        """True when the server sent something (or closed) within `timeout` seconds."""
        sock = self.client.socket()
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # already decrypted, the kernel would not report it
        if self._buffered(sock):
            return True
        with self._guard("IDLE"), selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            return bool(selector.select(timeout))

    def _buffered(self, sock: socket.socket) -> bool:
        """True when imaplib has already read more than it handed out. A server that sends
        `* 5 EXISTS` right behind `+ idling` puts both in one segment; imaplib reads the
        segment into its buffer and returns the first line, so the socket never becomes
        readable for the second and the news would wait for the poll."""
        reader = getattr(self.client._imap, "file", None)
        peek = getattr(reader, "peek", None)
        if peek is None:
            return False
        previous = sock.gettimeout()
        sock.setblocking(False)  # peek reads the socket only when the buffer is empty
        try:
            return bool(peek(1))
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        finally:
            sock.settimeout(previous)

    def _start_idle(self) -> None:
        now = time.monotonic()
        if self._idle_since is not None and now - self._idle_since < self.section.idle_renew:
            return
        self._end_idle()  # RFC 2177: re-issue IDLE before the server's 30-minute logout
        with self._guard("IDLE"):
            self.client.idle()
        self._idle_since = now

    def _end_idle(self) -> list[tuple[Any, ...]]:
        """DONE; returns the untagged responses the server sent while idling."""
        if self._idle_since is None:
            return []
        self._idle_since = None
        with self._guard("IDLE DONE"):
            _, responses = self.client.idle_done()
        found = [tuple(item) for item in responses]
        if any(_is_bye(item) for item in found):
            raise self._unavailable(f"server said BYE during IDLE: {found}")
        return found

    # -- setting mail aside --------------------------------------------------------------
    def mark_processed(self, uids: Sequence[int]) -> None:
        """Move to `processed_folder` when set, else add `processed_keyword`."""
        if not uids:
            return
        self._end_idle()
        if self.section.processed_folder:
            self._move(uids, self.section.processed_folder)
            return
        with self._guard("STORE keyword"):
            try:
                self.client.add_flags(list(uids), [self.section.processed_keyword], silent=True)
            except imaplib.IMAP4.abort:
                raise  # the connection is gone, not the keyword refused
            except IMAPClientError as exc:
                self._warn_keyword(exc)

    def _warn_keyword(self, exc: Exception) -> None:
        """Keywords are a courtesy for people reading the mailbox; progress is tracked by
        UID in the store, so a server that refuses them costs nothing but this line."""
        if not self._keyword_warned:
            self._keyword_warned = True
            self.log.warning(
                "event=imap_keyword_refused keyword=%s error=%s",
                self.section.processed_keyword,
                exc,
            )

    def quarantine(self, uids: Sequence[int]) -> None:
        """Move messages the daemon cannot process to `quarantine_folder` (created)."""
        if not uids:
            return
        self._end_idle()
        self._move(uids, self.section.quarantine_folder)

    def _move(self, uids: Sequence[int], folder: str) -> None:
        target = self._server_name(folder)
        self._ensure_folder(target)
        try:
            self._move_once(uids, target)
        except ImapError as exc:
            if self._dead:
                raise
            if "TRYCREATE" in str(exc).upper():
                # Deleted between our check and the move (I08): recreate it, try once more.
                self._ensure_folder(target, known_missing=True)
                self._move_once(uids, target)
            elif not self._lost_race(exc, uids, folder):
                raise

    def _lost_race(self, exc: ImapError, uids: Sequence[int], folder: str) -> bool:
        """Another client moved or expunged these messages first (I10): nothing to do."""
        text = str(exc).upper()
        if "EXPUNGEISSUED" in text or "NO LONGER EXIST" in text:
            self.log.info(
                "event=imap_move_lost uids=%s folder=%s error=%s", list(uids), folder, exc
            )
            return True
        return False

    def _move_once(self, uids: Sequence[int], target: str) -> None:
        wanted = list(uids)
        with self._guard(f"move to {target}"):
            if "MOVE" in self.capabilities:
                self.client.move(wanted, target)
                return
            self.client.copy(wanted, target)
            self.client.add_flags(wanted, [DELETED], silent=True)
            if "UIDPLUS" in self.capabilities:
                # UID EXPUNGE touches only these UIDs; a plain EXPUNGE would also remove
                # whatever someone else flagged \\Deleted, so without UIDPLUS we leave them.
                self.client.uid_expunge(wanted)

    def _ensure_folder(self, target: str, *, known_missing: bool = False) -> None:
        with self._guard(f"create {target}"):
            if not known_missing and self.client.folder_exists(target):
                return
            try:
                self.client.create_folder(target)
            except imaplib.IMAP4.abort:
                raise
            except IMAPClientError:
                if not self.client.folder_exists(target):  # else: created by someone else
                    raise
            self.log.info("event=imap_folder_created folder=%s", target)

    # -- housekeeping --------------------------------------------------------------------
    def noop(self) -> None:
        self._end_idle()
        with self._guard("NOOP"):
            self.client.noop()

    def close(self) -> None:
        """End IDLE, LOG OUT and close; never raises (the connection may be long gone)."""
        client, self._client = self._client, None
        if client is None:
            return
        if not self._dead:
            with contextlib.suppress(Exception):
                if self._idle_since is not None:
                    client.idle_done()
                client.logout()
                return
        with contextlib.suppress(Exception):
            client.shutdown()
