"""Real mail servers on 127.0.0.1 for `mailcare demo` and the fast test suite.

`LabImap` runs pymap's in-memory ("dict") backend and `LabSmtp` runs an aiosmtpd sink, each
in a background thread with its own event loop, so synchronous code (the IMAP side of the
daemon, a test) and asyncio code (the SMTP side) can both talk to them over real sockets.
Nothing is mocked: the daemon's protocol code meets the same bytes it meets in production.

What pymap 0.36 (dict backend) does and does not do, so the daemon never depends on it:
- offers IDLE, MOVE, UIDPLUS, MULTIAPPEND, LITERAL+, OBJECTID; no CONDSTORE/QRESYNC, no
  SPECIAL-USE, no QUOTA, no NAMESPACE;
- silently drops custom keywords (`STORE +FLAGS ($MailcareProcessed)` answers OK and the
  keyword is gone), so "processed" must be known from the store's `last_uid`, not from
  keywords; a processed folder works;
- UIDVALIDITY is random per folder and cannot be changed from outside (Dovecot's
  `doveadm mailbox update --uid-validity` covers that case);
- first UID in a folder is 101, not 1;
- the lab offers no TLS (LOGIN, AUTHENTICATE PLAIN, and XOAUTH2 when `tokens` are given,
  all in clear text on loopback only);
- IDLE updates may reach the client split across TCP segments (`* 1 FETCH ` then the
  rest), which breaks clients that read IDLE responses from a non-blocking socket.
Messages delivered with `LabImap.deliver` go through pymap's own append path, which wakes
every IDLE session on that folder at once: tests can measure push latency with it.

`LabSmtp` records every transaction and injects faults the way aiosmtplib's own test suite
does: recipients starting with `temp` get 450 on RCPT, `perm` get 550, and `fault` decides
the answer to DATA (a reply line, `DROP` to close the connection without any reply, or a
side effect such as killing a process before the 250).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hmac
import threading
import time
from argparse import Namespace
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from ssl import SSLContext
from types import TracebackType
from typing import Any, Final, NamedTuple, TypeVar

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from proxyprotocol.reader import ProxyProtocolReader
from pymap.backend.dict import Config as DictConfig
from pymap.backend.dict import Identity, Login
from pymap.backend.dict.filter import FilterSet
from pymap.backend.dict.mailbox import MailboxData, MailboxSet
from pymap.concurrent import Subsystem
from pymap.exceptions import InvalidAuth
from pymap.imap import IMAPServer
from pymap.parsing.message import AppendMessage
from pymap.parsing.specials import FetchRequirement
from pymap.user import Passwords, UserMetadata
from pysasl import SASLAuth
from pysasl.creds.external import ExternalCredentials, ExternalVerificationRequired
from pysasl.creds.server import ServerCredentials
from pysasl.hashing import Cleartext
from pysasl.mechanism.oauth import OAuth2Mechanism

__all__ = [
    "DROP",
    "LabAuth",
    "LabImap",
    "LabSmtp",
    "Received",
    "XOAuth2",
]

LOOPBACK: Final = "127.0.0.1"
DEFAULT_USERS: Final[Mapping[str, str]] = {"support@lab.test": "secret"}
_T = TypeVar("_T")


class _LoopThread:
    """An event loop running in a daemon thread, driven from synchronous code.

    Both servers keep their own loop so a test's (or the daemon's) loop never has to
    interleave with the server's: a blocked client can then never block the server.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self.loop.is_closed() and not self.loop.is_running():
            self.loop.close()


@functools.cache
def _sasl_mechanisms() -> SASLAuth:
    return SASLAuth.defaults()  # PLAIN and LOGIN


class _LabConfig(DictConfig):
    """pymap's dict config made fast for tests: no DNS lookup in the greeting
    (`socket.getfqdn()` can take seconds without a resolver) and the SASL mechanisms built
    once (pysasl scans every installed package's entry points each time, 40 ms per
    connection)."""

    @property
    def greeting(self) -> bytes:
        return b"Server ready imap.lab.test"

    @property
    def tls_auth(self) -> SASLAuth:
        return _sasl_mechanisms()

    @property
    def initial_auth(self) -> SASLAuth:
        return self.tls_auth  # the lab has no TLS: clear-text login from the start


class _XOAuth2LabConfig(_LabConfig):
    """The lab config that also offers AUTHENTICATE XOAUTH2 (pysasl parses it)."""

    @property
    def tls_auth(self) -> SASLAuth:
        return SASLAuth([*super().tls_auth.server_mechanisms, OAuth2Mechanism()])


class _TokenLogin(Login):
    """pymap's dict login that also accepts bearer tokens, as Gmail or Microsoft 365 do.

    pysasl hands XOAUTH2 over as `ExternalCredentials`, whose `verify` raises with the token
    so the server can check it however it likes; the lab checks it against its own table
    where a provider would ask its token service.
    """

    def __init__(self, config: _LabConfig, tokens: Mapping[str, str]) -> None:
        super().__init__(config)
        self._bearer = dict(tokens)

    async def authenticate(self, credentials: ServerCredentials) -> Identity:
        if not isinstance(credentials, ExternalCredentials):
            return await super().authenticate(credentials)
        try:
            credentials.verify(None)
        except ExternalVerificationRequired as pending:
            user, token = credentials.authzid, pending.token or ""
            expected = self._bearer.get(user)
            if expected is not None and hmac.compare_digest(expected, token):
                return Identity(user, self, None, frozenset())
        raise InvalidAuth()


def _pymap_args() -> Namespace:
    """The attributes pymap's config reads from its command line, set for the lab: no demo
    data, no TLS, no PROXY protocol, no inherited sockets."""
    return Namespace(
        debug=False,
        passlib_cfg=None,
        proxy_protocol=None,
        inherited_sockets=None,
        demo_data=False,
        demo_user="",
        demo_password="",
    )


class LabImap:
    """An IMAP server (pymap, in memory) on a free loopback port, with IDLE.

    >>> with LabImap({"support@lab.test": "secret"}) as lab:  # doctest: +SKIP
    ...     lab.deliver("support@lab.test", b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
    ...     IMAPClient(lab.host, lab.port, ssl=False).login("support@lab.test", "secret")
    """

    def __init__(
        self, users: Mapping[str, str] = DEFAULT_USERS, tokens: Mapping[str, str] | None = None
    ) -> None:
        self.users: dict[str, str] = dict(users)
        # user -> the one bearer token accepted for XOAUTH2; XOAUTH2 is offered only if set.
        self.tokens: dict[str, str] = dict(tokens or {})
        self.host: str = LOOPBACK
        self.port: int = 0
        self._runner: _LoopThread | None = None
        self._server: asyncio.Server | None = None
        self._config: _LabConfig | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._helpers: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> LabImap:
        if self._runner is not None:
            raise RuntimeError("LabImap is already running")
        runner = _LoopThread("lab-imap")
        runner.start()
        self._runner = runner
        try:
            runner.run(self._serve())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listener, end every session with a BYE, and stop the thread."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if runner.loop.is_running():
            with contextlib.suppress(TimeoutError, RuntimeError):
                runner.run(self._shutdown())
        runner.stop()

    def __enter__(self) -> LabImap:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- test and demo helpers ---------------------------------------------------------
    def deliver(self, user: str, raw: bytes, folder: str = "INBOX") -> None:
        """Append a message as an MTA would: \\Recent, no flags, IDLE sessions notified."""
        self._call(self._deliver(user, raw, folder))

    def messages(self, user: str, folder: str = "INBOX") -> list[bytes]:
        """The raw messages in a folder in UID order (for assertions; nothing is removed)."""
        return self._call(self._messages(user, folder))

    def folders(self, user: str) -> list[str]:
        """Every folder of a user, INBOX first."""
        return self._call(self._folders(user))

    def disconnect_all(self) -> int:
        """End every open session with `* BYE` (a server restart as clients see it) and
        return how many there were; the listener stays open for reconnects."""
        return self._call(self._disconnect_all())

    # -- inside the server loop --------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._runner is None:
            coro.close()
            raise RuntimeError("LabImap is not running")
        return self._runner.run(self._helper(coro))

    async def _helper(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run a helper call, shielded from `stop()`'s sweep of leftover server tasks."""
        task = asyncio.current_task()
        assert task is not None
        self._helpers.add(task)
        try:
            return await coro
        finally:
            self._helpers.discard(task)

    async def _serve(self) -> None:
        config_class = _XOAuth2LabConfig if self.tokens else _LabConfig
        config = config_class(
            _pymap_args(),
            host=LOOPBACK,
            port=0,
            tls_enabled=False,
            hash_context=Cleartext(),
            cpu_subsystem=Subsystem.for_asyncio(),
            invalid_user_sleep=0.05,
            reject_dnsbl=False,
            demo_data=False,
            demo_user="",
            demo_password="",
        )
        config.apply_context()
        login = _TokenLogin(config, self.tokens) if self.tokens else Login(config)
        for name, password in self.users.items():
            await self._add_user(config, login, name, password)
        imap_server = IMAPServer(login, config)

        async def tracked(reader: Any, writer: Any, sock_info: Any) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                await imap_server(reader, writer, sock_info)
            finally:
                self._connections.discard(task)

        callback = ProxyProtocolReader(config.proxy_protocol).get_callback(tracked)
        self._server = await asyncio.start_server(callback, host=LOOPBACK, port=0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._config = config

    @staticmethod
    async def _add_user(config: _LabConfig, login: Login, name: str, password: str) -> None:
        hashed = await Passwords(config).hash_password(password)
        await Identity(name, login, None, frozenset()).set(
            UserMetadata(config, name, password=hashed)
        )
        # Creating the folder set now (pymap would on first login) lets mail be delivered
        # before the user ever connects, as with a real mailbox.
        config.set_cache[name] = (MailboxSet(), FilterSet())

    def _mailbox_set(self, user: str) -> MailboxSet:
        assert self._config is not None
        try:
            return self._config.set_cache[user][0]
        except KeyError:
            raise KeyError(f"no such lab user: {user}") from None

    async def _mailbox(self, user: str, folder: str, *, create: bool) -> MailboxData:
        mailboxes = self._mailbox_set(user)
        try:
            return await mailboxes.get_mailbox(folder)
        except KeyError:
            if not create:
                raise KeyError(f"{user} has no folder {folder!r}") from None
        await mailboxes.add_mailbox(folder)
        return await mailboxes.get_mailbox(folder)

    async def _deliver(self, user: str, raw: bytes, folder: str) -> None:
        mailbox = await self._mailbox(user, folder, create=True)
        await mailbox.append(AppendMessage(raw, datetime.now(UTC)), recent=True)

    async def _messages(self, user: str, folder: str) -> list[bytes]:
        mailbox = await self._mailbox(user, folder, create=False)
        found = [message async for message in mailbox.messages()]
        found.sort(key=lambda message: message.uid)
        loaded = []
        for message in found:
            loaded_message = await message.load_content(FetchRequirement.CONTENT)
            loaded.append(bytes(loaded_message.content))
        return loaded

    async def _folders(self, user: str) -> list[str]:
        tree = await self._mailbox_set(user).list_mailboxes()
        names = [entry.name for entry in tree.list()]
        return sorted(names, key=lambda name: (name != "INBOX", name))

    async def _disconnect_all(self) -> int:
        sessions = list(self._connections)
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)
        return len(sessions)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._disconnect_all()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # Whatever pymap still runs (IDLE readers, half-open handshakes) ends here, so the
        # loop closes without "Task was destroyed but it is pending".
        keep = {asyncio.current_task(), *self._helpers}
        others = [task for task in asyncio.all_tasks() if task not in keep]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


# ---------------------------------------------------------------------------------------
# SMTP sink


@dataclass(frozen=True)
class Received:
    """One DATA transaction the sink took in (accepted, or stored before a dropped reply)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    at: float  # time.time() when the final dot arrived


#: `fault` return value: keep the message, then close the connection without answering,
#: the "accepted but never acknowledged" case (RELIABILITY O07).
DROP: Final = "drop"

#: `fault(received) -> None | "4xx/5xx reply line" | DROP`; None answers 250.
Fault = Callable[[Received], str | None]


class XOAuth2(NamedTuple):
    """What an XOAUTH2 client sent: the user and the bearer token."""

    user: str
    token: str


class LabAuth:
    """An aiosmtpd authenticator for the sink: PLAIN/LOGIN passwords and XOAUTH2 tokens.

    Pass it as `LabSmtp(authenticator=LabAuth(...))`; the sink then refuses MAIL FROM
    before a successful AUTH (offered in clear text, loopback only) with PLAIN, LOGIN and
    XOAUTH2.
    """

    def __init__(
        self,
        passwords: Mapping[str, str] | None = None,
        tokens: Mapping[str, str] | None = None,
    ) -> None:
        self.passwords = dict(passwords or {})
        self.tokens = dict(tokens or {})
        self.attempts: list[tuple[str, str]] = []  # (mechanism, user), for assertions

    def __call__(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if isinstance(auth_data, XOAuth2):
            user, ok = auth_data.user, self.tokens.get(auth_data.user) == auth_data.token
        elif isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            ok = user in self.passwords and self.passwords[user] == password
        else:
            user, ok = "", False
        self.attempts.append((mechanism, user))
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)


def _parse_xoauth2(blob: bytes) -> XOAuth2 | None:
    """`user=U^Aauth=Bearer T^A^A` -> XOAuth2(U, T); None when malformed."""
    fields = dict(
        part.split("=", 1) for part in blob.decode("utf-8", "replace").split("\x01") if "=" in part
    )
    scheme, _, token = fields.get("auth", "").partition(" ")
    if "user" not in fields or scheme.lower() != "bearer" or not token:
        return None
    return XOAuth2(fields["user"], token)


class _SinkHandler:
    """aiosmtpd hooks (the method names are aiosmtpd's): fault injection on RCPT by address
    prefix, on DATA by `sink.fault`, and the XOAUTH2 mechanism aiosmtpd lacks."""

    def __init__(self, sink: LabSmtp) -> None:
        self._sink = sink

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # Enforced here rather than with aiosmtpd's auth_required, which warns on every
        # connection when TLS is not required too (the lab runs on loopback, in clear).
        if self._sink.authenticator is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        local = address.partition("@")[0].lower()
        if local.startswith("temp"):
            return "450 4.2.0 Mailbox temporarily unavailable (lab)"
        if local.startswith("perm"):
            return "550 5.1.1 No such user here (lab)"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = Received(
            mail_from=(envelope.mail_from or "").strip("<>"),
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape"),
            at=time.time(),
        )
        fault = self._sink.fault
        answer = fault(message) if fault is not None else None
        if answer is None or answer == DROP:
            self._sink._record(message)
        if answer == DROP:
            assert server.transport is not None
            server.transport.close()
            return "250 2.0.0 never sent: the connection is already closed"
        return answer or "250 2.0.0 Queued (lab)"

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """RFC-less but common XOAUTH2 (Gmail, Microsoft): one base64 initial response."""
        if len(args) > 1:
            try:
                blob: bytes | Any = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                blob = b""
        else:
            blob = await server.challenge_auth("")
        parsed = _parse_xoauth2(blob) if isinstance(blob, bytes) else None
        authenticator = self._sink.authenticator
        if parsed is None or authenticator is None:
            return AuthResult(success=False, handled=False)
        assert server.session is not None and server.envelope is not None
        return authenticator(server, server.session, server.envelope, "XOAUTH2", parsed)


class _FreePortController(Controller):
    """aiosmtpd's Controller, bound to port 0: the kernel picks a free port, no races
    between parallel test runs."""

    async def _bind(self) -> asyncio.AbstractServer:
        server = await self.loop.create_server(
            self._factory_invoker, host=self.hostname, port=0, ssl=self.ssl_context
        )
        self.port = server.sockets[0].getsockname()[1]
        return server

    def _create_server(self) -> Coroutine[Any, Any, asyncio.AbstractServer]:
        return self._bind()


class LabSmtp:
    """An SMTP sink on a free loopback port that records every message.

    `starttls` (an SSLContext with a certificate loaded) makes the sink offer STARTTLS.
    """

    def __init__(
        self,
        *,
        save_dir: Path | None = None,
        authenticator: Callable[..., AuthResult] | None = None,
        starttls: SSLContext | None = None,
    ) -> None:
        self.host: str = LOOPBACK
        self.port: int = 0
        self.save_dir = save_dir
        self.authenticator = authenticator
        self.fault: Fault | None = None
        self._starttls = starttls
        self._received: list[Received] = []
        self._saved = 0
        self._changed = threading.Condition()
        self._controller: _FreePortController | None = None

    @property
    def received(self) -> list[Received]:
        """A snapshot of every recorded message, oldest first."""
        with self._changed:
            return list(self._received)

    def start(self) -> LabSmtp:
        if self._controller is not None:
            raise RuntimeError("LabSmtp is already running")
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        controller = _FreePortController(
            _SinkHandler(self),
            hostname=LOOPBACK,
            server_hostname="sink.lab.test",
            ready_timeout=5.0,
            **self._smtp_options(),
        )
        controller.start()
        self._controller = controller
        self.port = controller.port
        return self

    def _smtp_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"decode_data": False}
        if self._starttls is not None:
            options["tls_context"] = self._starttls
        if self.authenticator is not None:
            options.update(authenticator=self.authenticator, auth_require_tls=False)
        else:
            options["auth_exclude_mechanism"] = ["XOAUTH2"]
        return options

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> LabSmtp:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        """Block until at least `count` messages arrived; TimeoutError names how many did."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._received) >= count, timeout):
                raise TimeoutError(
                    f"sink got {len(self._received)} message(s), expected {count} "
                    f"within {timeout:g} s"
                )
            return list(self._received)

    def clear(self) -> None:
        """Forget what was received (between phases of one test)."""
        with self._changed:
            self._received.clear()

    def _record(self, message: Received) -> None:
        with self._changed:
            self._received.append(message)
            self._saved += 1
            number = self._saved
            self._changed.notify_all()
        if self.save_dir is not None:
            (self.save_dir / f"{number:05d}.eml").write_bytes(message.data)
