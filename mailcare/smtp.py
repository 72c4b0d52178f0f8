"""One SMTP send, classified as delivered, temporary or permanent (RELIABILITY §6).

The outbox loop needs exactly two kinds of failure: `SmtpTemporary` (retry later with
backoff) and `SmtpPermanent` (record it on the case, never retry). Everything aiosmtplib
or the network can throw is sorted into one of them here:

- 4xx replies, refused connections, timeouts, a disconnect at any point (including after
  DATA, when the server may or may not have taken the mail: O07), TLS failures, a refused
  login or a failing token command: temporary. A wrong password or a missing STARTTLS is
  the server's or the admin's problem, not the message's, so it must not fail mail
  forever; the outbox gives up after `give_up_after` anyway.
- 5xx replies to MAIL FROM or DATA, or every recipient refused with 5xx: permanent.
- Some recipients refused (O03): not an error; `SendResult.refused` lists them with their
  codes and the others got the mail once.

`tls = "starttls"` means STARTTLS is required: a server that does not offer it gets no mail
in clear text (O05). The message bytes go out as given (CRLF line endings, no re-encoding);
aiosmtplib only dot-stuffs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib import (
    SMTPException,
    SMTPRecipientsRefused,
    SMTPResponseException,
)

from .config import SmtpSection

__all__ = ["SendResult", "SmtpError", "SmtpPermanent", "SmtpSender", "SmtpTemporary"]


class SmtpError(Exception):
    """A failed send. `code` is the SMTP reply code when the server gave one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"{self.code} {self.message}" if self.code else self.message


class SmtpTemporary(SmtpError):
    """Try again later: 4xx, network trouble, TLS or login problems."""


class SmtpPermanent(SmtpError):
    """Do not retry: the server refused this message or every recipient with 5xx."""


@dataclass(frozen=True)
class SendResult:
    accepted: tuple[str, ...]
    # Recipients the server refused while taking the message for the others: address ->
    # (code, reply text). aiosmtplib returns these instead of raising.
    refused: Mapping[str, tuple[int, str]] = field(default_factory=dict)


def _classify(exc: BaseException, where: str) -> SmtpError:
    """Sort an aiosmtplib/network exception into temporary or permanent."""
    if isinstance(exc, SMTPRecipientsRefused):
        codes = [refusal.code for refusal in exc.recipients]
        text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        kind = SmtpPermanent if all(500 <= code < 600 for code in codes) else SmtpTemporary
        return kind(f"{where}: every recipient refused: {text}", max(codes, default=None))
    permanent = (
        isinstance(exc, SMTPResponseException)
        and 500 <= exc.code < 600
        # a refused login is the admin's to fix, not a reason to fail the message forever
        and not isinstance(exc, aiosmtplib.SMTPAuthenticationError)
    )
    if permanent:
        assert isinstance(exc, SMTPResponseException)
        return SmtpPermanent(f"{where}: {exc.message}", exc.code)
    code = exc.code if isinstance(exc, SMTPResponseException) and exc.code > 0 else None
    reason = exc.message if isinstance(exc, SMTPResponseException) else str(exc)
    return SmtpTemporary(f"{where}: {reason or type(exc).__name__}", code)


def _needs_utf8(*values: str) -> bool:
    return any(not value.isascii() for value in values)


# Seconds after the server's last good answer in which a connection is used without the
# NOOP check (servers close idle sessions after minutes, RFC 5321 4.5.3.2.7: 5 at least).
FRESH = 2.0


class SmtpSender:
    """An SMTP client that keeps its connection between sends and reconnects when needed."""

    def __init__(
        self,
        section: SmtpSection,
        *,
        password: str | None,
        token_command: Callable[[], str] | None = None,
    ) -> None:
        self.section = section
        self._password = password
        self._token_command = token_command
        self._client: aiosmtplib.SMTP | None = None
        self._lock: asyncio.Lock | None = None
        self._answered_at = 0.0  # time.monotonic() of the server's last good answer

    @property
    def _where(self) -> str:
        return f"{self.section.host}:{self.section.port}"

    # -- connection ----------------------------------------------------------------------
    def _new_client(self) -> aiosmtplib.SMTP:
        section = self.section
        return aiosmtplib.SMTP(
            hostname=section.host,
            port=section.port,
            use_tls=section.tls == "ssl",
            # True = required: aiosmtplib raises when the server does not offer it.
            start_tls=section.tls == "starttls",
            validate_certs=section.tls_verify,
            timeout=section.timeout,
        )

    async def _connect(self) -> tuple[aiosmtplib.SMTP, str]:
        client = self._new_client()
        try:
            greeting = await client.connect()
            await client.ehlo()
            await self._login(client)
        except SmtpError:
            client.close()
            raise
        except (SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise _classify(exc, self._where) from exc
        self._client = client
        self._answered_at = time.monotonic()
        return client, f"{greeting.code} {greeting.message}"

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        section = self.section
        if not section.username:
            return
        if section.auth == "xoauth2":
            try:
                await client.auth_xoauth2(section.username, self._token())
            except aiosmtplib.SMTPAuthenticationError:
                # A revoked token stays cached until it expires: fetch a fresh one next time.
                invalidate = getattr(self._token_command, "invalidate", None)
                if callable(invalidate):
                    invalidate()
                raise
        elif self._password is not None:
            await client.login(section.username, self._password)
        else:
            raise SmtpTemporary(f"{self._where}: smtp.username is set but no password")

    def _token(self) -> str:
        if self._token_command is None:
            raise SmtpTemporary(f"{self._where}: auth = xoauth2 needs oauth2_token_command")
        try:
            return self._token_command()
        except Exception as exc:  # an external helper: any failure means "no token now"
            raise SmtpTemporary(f"{self._where}: token command: {exc}") from exc

    async def _ready_client(self) -> aiosmtplib.SMTP:
        """The open connection if it still answers NOOP, else a new one. Servers drop idle
        clients after a few minutes; finding out at NOOP costs a round trip, finding out
        in the middle of a transaction would cost a retry delay. A connection that
        answered within the last `FRESH` seconds is as alive as a NOOP would show, and
        skipping the NOOP there is a fifth of a busy outbox's time."""
        client = self._client
        if client is not None and client.is_connected:
            if time.monotonic() - self._answered_at < FRESH:
                return client
            try:
                await client.noop()
                return client
            except (SMTPException, OSError, TimeoutError):
                pass
        self._drop()
        return (await self._connect())[0]

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- public API ----------------------------------------------------------------------
    async def send(self, envelope_from: str, recipients: Sequence[str], data: bytes) -> SendResult:
        """One transaction; `envelope_from` "" is the null sender `MAIL FROM:<>`."""
        if not recipients:
            raise SmtpPermanent("no recipients")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            client = await self._ready_client()
            return await self._transaction(client, envelope_from, list(recipients), data)

    async def _transaction(
        self, client: aiosmtplib.SMTP, sender: str, recipients: list[str], data: bytes
    ) -> SendResult:
        options = self._mail_options(client, sender, recipients, data)
        try:
            refused, _ = await client.sendmail(sender, recipients, data, mail_options=options)
        except SMTPResponseException as exc:
            raise _classify(exc, self._where) from exc  # aiosmtplib sent RSET: keep it open
        except SMTPRecipientsRefused as exc:
            raise _classify(exc, self._where) from exc
        except (SMTPException, OSError, TimeoutError) as exc:
            # Disconnect or timeout, perhaps after DATA (O07): the state is unknown, so
            # start over on a fresh connection; the stable Message-ID makes a resend safe.
            self._drop()
            raise _classify(exc, self._where) from exc
        self._answered_at = time.monotonic()
        refusals = {address: (reply.code, reply.message) for address, reply in refused.items()}
        accepted = tuple(address for address in recipients if address not in refusals)
        return SendResult(accepted=accepted, refused=refusals)

    @staticmethod
    def _mail_options(
        client: aiosmtplib.SMTP, sender: str, recipients: list[str], data: bytes
    ) -> list[str]:
        options = []
        if _needs_utf8(sender, *recipients):
            options.append("SMTPUTF8")  # aiosmtplib refuses cleanly if not offered
        if not data.isascii() and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        return options

    async def greet(self) -> str:
        """Connect, EHLO and log in only (`mailcare check`); returns the server greeting."""
        self._drop()
        return (await self._connect())[1]

    async def close(self) -> None:
        """QUIT politely; never raises."""
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            if client.is_connected:
                await client.quit()
        client.close()
