"""The lab servers behave like the real ones the daemon meets: real sockets, real protocol."""

from __future__ import annotations

import asyncio
import select
import threading
import time
from pathlib import Path

import aiosmtplib
import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from mailcare.sandbox import DROP, LabAuth, LabImap, LabSmtp, Received

USER = "support@lab.test"
MESSAGE = b"From: a@example.test\r\nSubject: hello\r\n\r\nfirst line\r\n.leading dot\r\n"


def login(lab: LabImap, user: str = USER, password: str = "secret") -> IMAPClient:
    client = IMAPClient(lab.host, lab.port, ssl=False, timeout=5)
    client.login(user, password)
    return client


# -- LabImap ---------------------------------------------------------------------------


def test_lab_imap_starts_fast_on_a_free_port_and_stops_cleanly() -> None:
    started = time.monotonic()
    lab = LabImap().start()
    assert time.monotonic() - started < 1.0
    assert lab.host == "127.0.0.1" and lab.port > 0
    other = LabImap().start()
    assert other.port != lab.port
    other.stop()
    lab.stop()
    with pytest.raises(ConnectionRefusedError):
        IMAPClient(lab.host, lab.port, ssl=False, timeout=2)
    lab.stop()  # idempotent


def test_lab_imap_users_and_passwords(lab_imap: LabImap) -> None:
    login(lab_imap).logout()
    login(lab_imap, "agent1@lab.test").logout()
    with pytest.raises(LoginError):
        login(lab_imap, USER, "wrong")
    with pytest.raises(LoginError):
        login(lab_imap, "nobody@lab.test", "secret")


def test_lab_imap_has_no_demo_data_and_offers_idle_move_uidplus(lab_imap: LabImap) -> None:
    client = login(lab_imap)
    assert client.select_folder("INBOX")[b"EXISTS"] == 0
    assert {b"IDLE", b"MOVE", b"UIDPLUS"} <= set(client.capabilities())
    assert lab_imap.messages(USER) == []
    client.logout()


def test_deliver_before_login_and_messages_keep_the_bytes(lab_imap: LabImap) -> None:
    lab_imap.deliver(USER, MESSAGE)
    lab_imap.deliver(USER, b"Subject: two\r\n\r\nsecond\r\n")
    assert lab_imap.messages(USER) == [MESSAGE, b"Subject: two\r\n\r\nsecond\r\n"]
    client = login(lab_imap)
    client.select_folder("INBOX")
    uids = client.search(["ALL"])
    assert len(uids) == 2
    assert client.fetch(uids[:1], ["BODY.PEEK[]"])[uids[0]][b"BODY[]"] == MESSAGE
    assert lab_imap.messages("agent1@lab.test") == []
    client.logout()


def test_deliver_to_another_folder_creates_it(lab_imap: LabImap) -> None:
    lab_imap.deliver(USER, MESSAGE, folder="Archive")
    assert lab_imap.folders(USER) == ["INBOX", "Archive"]
    assert lab_imap.messages(USER, "Archive") == [MESSAGE]
    with pytest.raises(KeyError):
        lab_imap.messages(USER, "Missing")
    with pytest.raises(KeyError):
        lab_imap.deliver("nobody@lab.test", MESSAGE)


def test_deliver_wakes_an_idle_client_at_once(lab_imap: LabImap) -> None:
    client = login(lab_imap)
    client.select_folder("INBOX")
    client.idle()
    sent_at = 0.0

    def later() -> None:
        nonlocal sent_at
        time.sleep(0.2)
        sent_at = time.monotonic()
        lab_imap.deliver(USER, MESSAGE)

    threading.Thread(target=later).start()
    # Wait on the socket and read with DONE, as mailcare.imap does: imapclient's
    # idle_check() reads non-blocking and breaks on a response split across segments.
    readable, _, _ = select.select([client.socket()], [], [], 5)
    latency = time.monotonic() - sent_at
    assert readable
    _, responses = client.idle_done()
    assert (1, b"EXISTS") in responses
    assert latency < 0.5
    client.logout()


def test_pymap_drops_custom_keywords(lab_imap: LabImap) -> None:
    """Documented in the module: the daemon must never depend on keywords."""
    lab_imap.deliver(USER, MESSAGE)
    client = login(lab_imap)
    client.select_folder("INBOX")
    uid = client.search(["ALL"])[0]
    client.add_flags([uid], [b"$MailcareProcessed", b"\\Flagged"])
    flags = client.get_flags([uid])[uid]
    assert b"\\Flagged" in flags and b"$MailcareProcessed" not in flags
    client.logout()


def test_disconnect_all_sends_bye_and_keeps_listening(lab_imap: LabImap) -> None:
    client = login(lab_imap)
    client.select_folder("INBOX")
    client.idle()
    assert lab_imap.disconnect_all() == 1
    responses = client.idle_check(timeout=5)
    assert responses and responses[0][0] == b"BYE"
    login(lab_imap).logout()


def test_stop_ends_sessions_with_bye(lab_imap: LabImap) -> None:
    client = login(lab_imap)
    client.select_folder("INBOX")
    client.idle()
    lab_imap.stop()
    assert client.idle_check(timeout=5)[0][0] == b"BYE"
    with pytest.raises(RuntimeError):
        lab_imap.deliver(USER, MESSAGE)


# -- LabSmtp ---------------------------------------------------------------------------


async def send(
    sink: LabSmtp,
    sender: str,
    recipients: list[str],
    data: bytes = MESSAGE,
    **login: str,
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, start_tls=False, timeout=5)
    async with client:
        if login.get("password"):
            await client.login(login["user"], login["password"])
        if login.get("token"):
            await client.auth_xoauth2(login["user"], login["token"])
        return await client.sendmail(sender, recipients, data)


async def test_sink_records_envelope_and_exact_bytes(lab_smtp: LabSmtp) -> None:
    before = time.time()
    await send(lab_smtp, "from@lab.test", ["to@example.test", "cc@example.test"])
    (got,) = lab_smtp.wait_for(1, timeout=2)
    assert got == Received("from@lab.test", ("to@example.test", "cc@example.test"), MESSAGE, got.at)
    assert before <= got.at <= time.time()


async def test_sink_null_sender(lab_smtp: LabSmtp) -> None:
    await send(lab_smtp, "", ["to@example.test"])
    assert lab_smtp.wait_for(1, 2)[0].mail_from == ""


async def test_sink_recipient_prefixes_give_450_and_550(lab_smtp: LabSmtp) -> None:
    refused, _ = await send(lab_smtp, "a@lab.test", ["ok@x.test", "temp1@x.test", "perm@x.test"])
    assert {k: v.code for k, v in refused.items()} == {"temp1@x.test": 450, "perm@x.test": 550}
    assert lab_smtp.wait_for(1, 2)[0].rcpt_tos == ("ok@x.test",)
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await send(lab_smtp, "a@lab.test", ["perm2@x.test"])


async def test_sink_fault_reply_on_data_is_not_recorded(lab_smtp: LabSmtp) -> None:
    seen: list[Received] = []

    def fault(message: Received) -> str:
        seen.append(message)
        return "452 4.3.1 Insufficient system storage"

    lab_smtp.fault = fault
    with pytest.raises(aiosmtplib.SMTPDataError) as error:
        await send(lab_smtp, "a@lab.test", ["to@x.test"])
    assert error.value.code == 452
    assert len(seen) == 1 and lab_smtp.received == []
    lab_smtp.fault = lambda message: "552 5.3.4 Message too big"
    with pytest.raises(aiosmtplib.SMTPDataError) as error:
        await send(lab_smtp, "a@lab.test", ["to@x.test"])
    assert error.value.code == 552


async def test_sink_drop_keeps_the_message_and_never_answers(lab_smtp: LabSmtp) -> None:
    lab_smtp.fault = lambda message: DROP
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await send(lab_smtp, "a@lab.test", ["to@x.test"])
    assert [m.data for m in lab_smtp.received] == [MESSAGE]


async def test_sink_fault_callback_runs_before_the_250(lab_smtp: LabSmtp) -> None:
    order: list[str] = []

    def before_ok(message: Received) -> None:
        order.append("callback")

    lab_smtp.fault = before_ok
    await send(lab_smtp, "a@lab.test", ["to@x.test"])
    order.append("answered")
    assert order == ["callback", "answered"] and len(lab_smtp.received) == 1


def test_wait_for_times_out_with_a_count(lab_smtp: LabSmtp) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="got 0 message"):
        lab_smtp.wait_for(1, timeout=0.2)
    assert time.monotonic() - started < 1


async def test_sink_saves_eml_files(tmp_path: Path) -> None:
    with LabSmtp(save_dir=tmp_path / "sent") as sink:
        await send(sink, "a@lab.test", ["to@x.test"])
        await send(sink, "a@lab.test", ["to@x.test"], b"Subject: 2\r\n\r\nx\r\n")
        sink.wait_for(2, 2)
    files = sorted((tmp_path / "sent").iterdir())
    assert [f.name for f in files] == ["00001.eml", "00002.eml"]
    assert files[0].read_bytes() == MESSAGE


async def test_sink_auth_password_and_xoauth2() -> None:
    auth = LabAuth(passwords={"bot@lab.test": "pw"}, tokens={"bot@lab.test": "tok-1"})
    with LabSmtp(authenticator=auth) as sink:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await send(sink, "a@lab.test", ["to@x.test"])
        assert refused.value.code == 530
        await send(sink, "a@lab.test", ["to@x.test"], user="bot@lab.test", password="pw")
        await send(sink, "a@lab.test", ["to@x.test"], user="bot@lab.test", token="tok-1")
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await send(sink, "a@lab.test", ["to@x.test"], user="bot@lab.test", token="stale")
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await send(sink, "a@lab.test", ["to@x.test"], user="bot@lab.test", password="no")
        assert len(sink.received) == 2
    assert auth.attempts[:3] == [
        ("PLAIN", "bot@lab.test"),
        ("XOAUTH2", "bot@lab.test"),
        ("XOAUTH2", "bot@lab.test"),
    ]
    # aiosmtplib tries every password mechanism offered before giving up
    assert {mech for mech, _ in auth.attempts[3:]} == {"PLAIN", "LOGIN"}


def test_sink_is_thread_safe_under_parallel_senders(lab_smtp: LabSmtp) -> None:
    async def many() -> None:
        await asyncio.gather(*(send(lab_smtp, "a@lab.test", [f"r{i}@x.test"]) for i in range(20)))

    asyncio.run(many())
    got = lab_smtp.wait_for(20, 5)
    assert sorted(m.rcpt_tos[0] for m in got) == sorted(f"r{i}@x.test" for i in range(20))


def test_lab_smtp_stop_releases_the_port() -> None:
    sink = LabSmtp().start()
    port = sink.port
    sink.stop()
    with pytest.raises(OSError):
        asyncio.run(aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=2).connect())
