"""ImapSource against real servers: the in-process pymap lab and Debian's Dovecot
(RELIABILITY §5, I01–I10). Faults come from the servers (`doveadm kick`, BYE on
shutdown) and from the TCP fault proxy, never from a mocked client."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from dovecot import Dovecot
from imapclient import IMAPClient

from mailcare.config import ImapSection
from mailcare.imap import (
    Backoff,
    Fetched,
    ImapAuthError,
    ImapError,
    ImapSource,
    ImapUnavailable,
)
from mailcare.sandbox import LabImap

LOG = logging.getLogger("test.imap")
LAB_USER = "support@lab.test"


def message(n: int, body: bytes = b"hello\r\n") -> bytes:
    return (
        f"From: customer{n}@example.test\r\nTo: support@lab.test\r\n"
        f"Subject: question {n}\r\nMessage-ID: <{n}@example.test>\r\n\r\n"
    ).encode() + body


@dataclass
class Server:
    """What a test needs from either server."""

    kind: str
    host: str
    port: int
    user: str
    password: str
    deliver: Callable[[bytes], None]
    kick: Callable[[], object]
    delimiter: str

    def client(self) -> IMAPClient:
        client = IMAPClient(self.host, self.port, ssl=False, timeout=5)
        client.login(self.user, self.password)
        return client

    def folder(self, name: str) -> str:
        return name.replace("/", self.delimiter)

    def peek(self, folder: str = "INBOX") -> dict[int, tuple[tuple[bytes, ...], bytes]]:
        """UID -> (flags, raw) as another client sees them, without changing anything."""
        client = self.client()
        try:
            client.select_folder(self.folder(folder), readonly=True)
            uids = client.search(["ALL"])
            found = client.fetch(uids, ["FLAGS", "BODY.PEEK[]"]) if uids else {}
            return {uid: (tuple(data[b"FLAGS"]), data[b"BODY[]"]) for uid, data in found.items()}
        finally:
            client.logout()


@pytest.fixture(params=["lab", pytest.param("dovecot", marks=pytest.mark.dovecot)])
def server(request: pytest.FixtureRequest) -> Server:
    if request.param == "lab":
        lab: LabImap = request.getfixturevalue("lab_imap")
        return Server(
            "lab",
            lab.host,
            lab.port,
            LAB_USER,
            "secret",
            deliver=lambda raw: lab.deliver(LAB_USER, raw),
            kick=lab.disconnect_all,
            delimiter="/",
        )
    dovecot: Dovecot = request.getfixturevalue("dovecot")
    user: str = request.getfixturevalue("dovecot_user")
    return Server(
        "dovecot",
        dovecot.host,
        dovecot.port,
        user,
        "secret",
        deliver=lambda raw: dovecot.deliver(user, raw),
        kick=lambda: dovecot.kick(user),
        delimiter=".",
    )


@pytest.fixture
def open_source() -> Iterator[Callable[..., ImapSource]]:
    """`open_source(host, port, user, **section_keys)` -> a connected ImapSource."""
    sources: list[ImapSource] = []

    def make(
        host: str,
        port: int,
        user: str,
        *,
        password: str | None = "secret",
        max_message_bytes: int = 25_000_000,
        connect: bool = True,
        token_command: Callable[[], str] | None = None,
        **keys: Any,
    ) -> ImapSource:
        section = ImapSection(
            host=host, port=port, username=user, **{"tls": "none", "timeout": 5.0, **keys}
        )
        source = ImapSource(
            section,
            password=password,
            token_command=token_command,
            max_message_bytes=max_message_bytes,
            logger=LOG,
        )
        sources.append(source)
        if connect:
            source.connect()
        return source

    yield make
    for source in sources:
        source.close()


def connected(open_source: Callable[..., ImapSource], server: Server, **keys: Any) -> ImapSource:
    return open_source(server.host, server.port, server.user, **keys)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def deliver_later(server: Server, raw: bytes, delay: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), server.deliver(raw)))
    thread.start()
    return thread


# -- connect, search, fetch ------------------------------------------------------------


def test_connect_returns_uidvalidity_and_capabilities(server: Server, open_source: Any) -> None:
    source = connected(open_source, server)
    client = server.client()
    expected = client.select_folder("INBOX", readonly=True)[b"UIDVALIDITY"]
    client.logout()
    assert source.connect() == expected  # a second connect on a new source is the same
    assert {"IDLE", "MOVE", "UIDPLUS"} <= source.capabilities


def test_uids_after_and_fetch_in_uid_order(server: Server, open_source: Any) -> None:
    source = connected(open_source, server)
    raws = [message(n) for n in range(3)]
    for raw in raws:
        server.deliver(raw)
    uids = source.uids_after(0)
    assert len(uids) == 3 and uids == sorted(uids)
    # "N:*" matches the last message even past the end: must not come back
    assert source.uids_after(uids[-1]) == []
    assert source.uids_after(uids[0]) == uids[1:]
    fetched = source.fetch(list(reversed(uids)))
    assert [item.uid for item in fetched] == uids
    assert [item.raw for item in fetched] == raws
    assert [item.size for item in fetched] == [len(raw) for raw in raws]
    assert source.fetch([]) == []


def test_i11_fetch_uses_peek_and_never_sets_seen(server: Server, open_source: Any) -> None:
    server.deliver(message(1))
    source = connected(open_source, server)
    source.fetch(source.uids_after(0))
    ((flags, _),) = server.peek().values()
    assert b"\\Seen" not in flags


def test_large_message_is_fetched_as_headers_only(server: Server, open_source: Any) -> None:
    small, large = message(1), message(2, b"x" * 5000 + b"\r\n")
    server.deliver(small)
    server.deliver(large)
    source = connected(open_source, server, max_message_bytes=2000)
    first, second = source.fetch(source.uids_after(0))
    assert first.raw == small
    assert second.raw is None and second.size == len(large)
    assert second.headers == large.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    ((flags, _), _) = server.peek().values()
    assert b"\\Seen" not in flags


def test_i09_message_expunged_by_another_client_before_fetch(
    server: Server, open_source: Any
) -> None:
    server.deliver(message(1))
    server.deliver(message(2))
    source = connected(open_source, server)
    uids = source.uids_after(0)
    other = server.client()
    other.select_folder("INBOX")
    other.delete_messages(uids[:1])
    other.expunge()
    other.logout()
    fetched = source.fetch(uids)  # no crash; the gone one may or may not still come back
    assert uids[1] in [item.uid for item in fetched]
    assert all(isinstance(item, Fetched) and item.raw for item in fetched)


# -- waiting ---------------------------------------------------------------------------


def test_wait_returns_promptly_on_delivery_with_idle(server: Server, open_source: Any) -> None:
    source = connected(open_source, server)
    assert source.uids_after(0) == []
    thread = deliver_later(server, message(1), 0.15)
    started = time.monotonic()
    assert source.wait(10) is True
    assert time.monotonic() - started < 3.0
    thread.join()
    assert len(source.uids_after(0)) == 1


def test_news_arriving_with_the_idle_continuation_is_not_missed(
    server: Server, fault_proxy: Any, open_source: Any
) -> None:
    """`+ idling` and `* 1 EXISTS` in one segment: imaplib buffers the EXISTS while reading
    the continuation, so the socket never turns readable for it; wait() must still see it
    at once rather than at the next poll."""
    proxy = fault_proxy(server.host, server.port)
    source = open_source(proxy.host, proxy.port, server.user)
    assert source.uids_after(0) == []
    proxy.coalesce()
    thread = deliver_later(server, message(1), 0.3)
    started = time.monotonic()
    assert source.wait(8) is True
    assert time.monotonic() - started < 3.0
    thread.join()
    assert len(source.uids_after(0)) == 1


def test_wait_without_news_returns_false_after_timeout(server: Server, open_source: Any) -> None:
    source = connected(open_source, server)
    started = time.monotonic()
    assert source.wait(0.4) is False
    assert 0.35 < time.monotonic() - started < 2.0
    assert source.uids_after(0) == []  # IDLE ended cleanly for the next command


def test_wait_polls_when_idle_is_off(server: Server, open_source: Any) -> None:
    source = connected(open_source, server, idle=False, poll_interval=0.2)
    started = time.monotonic()
    assert source.wait(30) is False
    assert time.monotonic() - started < 1.5  # poll_interval, not the 30 s asked
    server.deliver(message(1))
    assert source.wait(30) is True  # NOOP reported EXISTS
    assert len(source.uids_after(0)) == 1


def test_i05_idle_reissued_only_after_idle_renew(
    server: Server, fault_proxy: Any, open_source: Any
) -> None:
    def idle_commands(renew: float) -> int:
        proxy = fault_proxy(server.host, server.port)
        source = open_source(proxy.host, proxy.port, server.user, idle_renew=renew)
        for _ in range(4):
            source.wait(0.15)
        source.close()
        return proxy.upstream.upper().count(b" IDLE\r\n")

    assert idle_commands(renew=600) == 1  # short wait() slices keep one IDLE open
    assert 2 <= idle_commands(renew=0.2) <= 4


def test_i03_bye_during_idle_raises_fast_without_spinning(server: Server, open_source: Any) -> None:
    source = connected(open_source, server)
    source.wait(0.1)
    threading.Timer(0.15, server.kick).start()
    started, cpu = time.monotonic(), time.process_time()
    with pytest.raises(ImapUnavailable):
        source.wait(10)
    assert time.monotonic() - started < 3.0
    assert time.process_time() - cpu < 1.0  # no busy loop on idle_check() == []
    with pytest.raises(ImapUnavailable):
        source.uids_after(0)  # the source knows it is dead; the daemon reconnects
    source.close()


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_i03_eof_during_idle_without_bye(
    how: str, server: Server, fault_proxy: Any, open_source: Any
) -> None:
    proxy = fault_proxy(server.host, server.port)
    source = open_source(proxy.host, proxy.port, server.user)
    source.wait(0.1)
    cut = (lambda: proxy.cut(0)) if how == "fin" else proxy.reset
    threading.Timer(0.15, cut).start()
    if how == "fin":  # a cut only closes once the server sends something: make it speak
        deliver_later(server, message(1), 0.3)
    started, cpu = time.monotonic(), time.process_time()
    with pytest.raises(ImapUnavailable):
        source.wait(10)
    assert time.monotonic() - started < 4.0
    assert time.process_time() - cpu < 1.0
    source.close()


def test_i04_stalled_server_raises_within_the_timeout(
    server: Server, fault_proxy: Any, open_source: Any
) -> None:
    server.deliver(message(1))
    proxy = fault_proxy(server.host, server.port)
    source = open_source(proxy.host, proxy.port, server.user, timeout=0.5)
    proxy.stall()
    started = time.monotonic()
    with pytest.raises(ImapUnavailable, match=r"(?i)timeout|timed out"):
        source.uids_after(0)
    assert time.monotonic() - started < 2.0
    source.close()


def test_i04_stall_during_idle_is_caught_when_idle_ends(
    server: Server, fault_proxy: Any, open_source: Any
) -> None:
    proxy = fault_proxy(server.host, server.port)
    source = open_source(proxy.host, proxy.port, server.user, timeout=0.5)
    assert source.wait(0.1) is False  # IDLE established
    proxy.stall()
    assert source.wait(0.2) is False  # silence in IDLE is normal
    started = time.monotonic()
    with pytest.raises(ImapUnavailable):
        source.uids_after(0)  # DONE gets no answer
    assert time.monotonic() - started < 2.0
    source.close()


def test_i02_cut_mid_fetch_then_a_new_connection_gets_it_whole(
    server: Server, fault_proxy: Any, open_source: Any
) -> None:
    big = message(1, b"0123456789abcdef" * 190_000 + b"\r\n")  # about 3 MB
    server.deliver(big)
    proxy = fault_proxy(server.host, server.port)
    source = open_source(proxy.host, proxy.port, server.user)
    uids = source.uids_after(0)
    proxy.cut(after=200_000)
    with pytest.raises(ImapUnavailable):
        source.fetch(uids)
    source.close()
    again = connected(open_source, server)
    assert [item.raw for item in again.fetch(uids)] == [big]


# -- connect failures ------------------------------------------------------------------


def test_i07_wrong_or_missing_password_is_an_auth_error(server: Server, open_source: Any) -> None:
    with pytest.raises(ImapAuthError):
        connected(open_source, server, password="wrong")
    with pytest.raises(ImapAuthError, match="no password"):
        connected(open_source, server, password=None)


def test_xoauth2_login_with_the_token_command(open_source: Any) -> None:
    with LabImap({LAB_USER: "secret"}, tokens={LAB_USER: "bearer-1"}) as lab:
        lab.deliver(LAB_USER, message(1))
        source = open_source(
            lab.host, lab.port, LAB_USER, auth="xoauth2", password=None,
            token_command=lambda: "bearer-1",
        )  # fmt: skip
        assert len(source.uids_after(0)) == 1
        source.close()


def test_xoauth2_failures_are_auth_errors(server: Server, open_source: Any) -> None:
    class Token:
        invalidated = 0

        def __call__(self) -> str:
            return "expired-token"

        def invalidate(self) -> None:
            self.invalidated += 1

    token = Token()
    with pytest.raises(ImapAuthError):
        connected(open_source, server, auth="xoauth2", token_command=token)
    assert token.invalidated == 1  # a refused token is not reused

    def broken() -> str:
        raise OSError("helper not found")

    with pytest.raises(ImapAuthError, match="helper not found"):
        connected(open_source, server, auth="xoauth2", token_command=broken)
    with pytest.raises(ImapAuthError, match="oauth2_token_command"):
        connected(open_source, server, auth="xoauth2")


def test_i06_connection_refused_is_unavailable(open_source: Any) -> None:
    with pytest.raises(ImapUnavailable) as error:
        open_source("127.0.0.1", closed_port(), LAB_USER)
    assert error.value.port > 0 and isinstance(error.value, ImapError)


def test_o05_starttls_required_but_not_offered(server: Server, open_source: Any) -> None:
    with pytest.raises(ImapUnavailable, match="STARTTLS"):
        connected(open_source, server, tls="starttls")


def test_missing_watched_folder_is_an_imap_error(server: Server, open_source: Any) -> None:
    with pytest.raises(ImapError) as error:
        connected(open_source, server, folder="Nowhere")
    assert not isinstance(error.value, (ImapUnavailable, ImapAuthError))


@pytest.mark.dovecot
def test_i01_uidvalidity_change_is_visible_at_connect(
    dovecot: Dovecot, dovecot_user: str, open_source: Any
) -> None:
    dovecot.deliver(dovecot_user, message(1))
    before = open_source(dovecot.host, dovecot.port, dovecot_user).connect()
    dovecot.set_uidvalidity(dovecot_user, before + 12345)
    assert open_source(dovecot.host, dovecot.port, dovecot_user).connect() == before + 12345


# -- setting mail aside ----------------------------------------------------------------


def test_mark_processed_with_keyword(server: Server, open_source: Any) -> None:
    server.deliver(message(1))
    server.deliver(message(2))
    source = connected(open_source, server)
    uids = source.uids_after(0)
    source.mark_processed(uids[:1])
    flags = {uid: found[0] for uid, found in server.peek().items()}
    assert len(flags) == 2  # nothing moved or deleted
    if server.kind == "dovecot":
        assert b"$MailcareProcessed" in flags[uids[0]]
    assert b"$MailcareProcessed" not in flags[uids[1]]  # pymap drops keywords: no error either
    assert all(b"\\Seen" not in each for each in flags.values())


def test_mark_processed_moves_to_processed_folder(server: Server, open_source: Any) -> None:
    raws = [message(1), message(2)]
    for raw in raws:
        server.deliver(raw)
    source = connected(open_source, server, processed_folder="mailcare/processed")
    uids = source.uids_after(0)
    source.mark_processed(uids[:1])
    assert [raw for _, raw in server.peek("mailcare/processed").values()] == raws[:1]
    assert [raw for _, raw in server.peek().values()] == raws[1:]
    assert source.uids_after(uids[0]) == uids[1:]


def test_quarantine_creates_the_folder_and_moves_only_those(
    server: Server, open_source: Any
) -> None:
    raws = [message(n) for n in range(3)]
    for raw in raws:
        server.deliver(raw)
    source = connected(open_source, server)
    uids = source.uids_after(0)
    source.quarantine([uids[1]])
    assert [raw for _, raw in server.peek("mailcare/quarantine").values()] == [raws[1]]
    assert [raw for _, raw in server.peek().values()] == [raws[0], raws[2]]
    source.quarantine([])


def test_i08_quarantine_folder_deleted_then_recreated(server: Server, open_source: Any) -> None:
    for n in range(2):
        server.deliver(message(n))
    source = connected(open_source, server)
    first, second = source.uids_after(0)
    source.quarantine([first])
    other = server.client()
    other.delete_folder(server.folder("mailcare/quarantine"))
    other.logout()
    source.quarantine([second])
    assert [raw for _, raw in server.peek("mailcare/quarantine").values()] == [message(1)]


def test_i10_move_race_loser_does_not_fail(server: Server, open_source: Any) -> None:
    server.deliver(message(1))
    winner = connected(open_source, server, processed_folder="mailcare/processing")
    loser = connected(open_source, server, processed_folder="mailcare/processing")
    (uid,) = winner.uids_after(0)
    assert loser.uids_after(0) == [uid]
    winner.mark_processed([uid])
    loser.mark_processed([uid])  # NO [EXPUNGEISSUED] on Dovecot: logged, not raised
    assert len(server.peek("mailcare/processing")) == 1
    assert server.peek() == {}


def test_close_never_raises(server: Server, open_source: Any) -> None:
    source = connected(open_source, server)
    source.wait(0.1)  # leave it idling
    source.close()
    source.close()
    never_connected = open_source(server.host, server.port, server.user, connect=False)
    never_connected.close()


def test_noop_keeps_the_session(server: Server, open_source: Any) -> None:
    source = connected(open_source, server)
    source.wait(0.1)
    source.noop()
    server.deliver(message(1))
    assert len(source.uids_after(0)) == 1


# -- backoff ---------------------------------------------------------------------------


def test_backoff_grows_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(base=1.0, cap=20.0)
    delays = [backoff.next_delay() for _ in range(10)]
    for attempt, delay in enumerate(delays):
        ceiling = min(20.0, 2.0**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert delays[-1] >= 10.0
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 1.0


def test_backoff_spreads_delays() -> None:
    backoff = Backoff(base=8.0, cap=300.0)
    samples = set()
    for _ in range(20):
        backoff.reset()
        samples.add(round(backoff.next_delay(), 3))
    assert len(samples) > 5
