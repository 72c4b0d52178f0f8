"""SmtpSender against a real aiosmtpd sink with per-test faults (RELIABILITY §6, O01–O07)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailcare.config import SmtpSection
from mailcare.sandbox import DROP, LabAuth, LabSmtp, Received
from mailcare.smtp import SendResult, SmtpError, SmtpPermanent, SmtpSender, SmtpTemporary

MESSAGE = (
    b"From: Assistenza <support@lab.test>\r\n"
    b"To: customer@example.test\r\n"
    b"Subject: [EX#1] Re: help\r\n"
    b"Message-ID: <1.abc@lab.test>\r\n"
    b"\r\n"
    b"Hello,\r\n"
    b".a line starting with a dot\r\n"
    b"\r\n"
    b"-- \r\n"
    b"Assistenza\r\n"
)


def section(host: str, port: int, **extra: Any) -> SmtpSection:
    return SmtpSection(host=host, port=port, **{"tls": "none", "timeout": 5.0, **extra})


def sender_for(sink: LabSmtp, **extra: Any) -> SmtpSender:
    password = extra.pop("password", None)
    token_command = extra.pop("token_command", None)
    return SmtpSender(
        section(sink.host, sink.port, **extra), password=password, token_command=token_command
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_send_delivers_exact_bytes_and_envelope(lab_smtp: LabSmtp) -> None:
    sender = sender_for(lab_smtp)
    result = await sender.send("support@lab.test", ["customer@example.test"], MESSAGE)
    await sender.close()
    assert result == SendResult(accepted=("customer@example.test",), refused={})
    (got,) = lab_smtp.wait_for(1, 2)
    assert (got.mail_from, got.rcpt_tos) == ("support@lab.test", ("customer@example.test",))
    assert got.data == MESSAGE  # CRLF kept, dot-stuffing undone by the server, nothing re-encoded


async def test_null_sender_is_mail_from_empty(lab_smtp: LabSmtp) -> None:
    sender = sender_for(lab_smtp)
    await sender.send("", ["customer@example.test"], MESSAGE)
    await sender.close()
    assert lab_smtp.wait_for(1, 2)[0].mail_from == ""


async def test_connection_is_reused_between_sends(lab_smtp: LabSmtp) -> None:
    sender = sender_for(lab_smtp)
    await sender.send("support@lab.test", ["a@example.test"], MESSAGE)
    first = sender._client
    await sender.send("support@lab.test", ["b@example.test"], MESSAGE)
    assert sender._client is first
    await sender.close()
    assert len(lab_smtp.wait_for(2, 2)) == 2


async def test_o01_450_on_every_recipient_is_temporary(lab_smtp: LabSmtp) -> None:
    sender = sender_for(lab_smtp)
    with pytest.raises(SmtpTemporary) as error:
        await sender.send("support@lab.test", ["temp@example.test"], MESSAGE)
    assert error.value.code == 450
    assert "temp@example.test" in str(error.value)
    # the transaction was reset: the same connection sends the next mail
    await sender.send("support@lab.test", ["ok@example.test"], MESSAGE)
    await sender.close()
    assert [m.rcpt_tos for m in lab_smtp.received] == [("ok@example.test",)]


async def test_o01_451_on_data_is_temporary(lab_smtp: LabSmtp) -> None:
    lab_smtp.fault = lambda message: "451 4.3.0 Try again later"
    sender = sender_for(lab_smtp)
    with pytest.raises(SmtpTemporary) as error:
        await sender.send("support@lab.test", ["a@example.test"], MESSAGE)
    await sender.close()
    assert error.value.code == 451 and lab_smtp.received == []


async def test_o02_550_on_every_recipient_is_permanent(lab_smtp: LabSmtp) -> None:
    sender = sender_for(lab_smtp)
    with pytest.raises(SmtpPermanent) as error:
        await sender.send("support@lab.test", ["perm@example.test", "perm2@example.test"], MESSAGE)
    await sender.close()
    assert error.value.code == 550


async def test_o02_552_on_data_is_permanent(lab_smtp: LabSmtp) -> None:
    lab_smtp.fault = lambda message: "552 5.3.4 Message too big for system"
    sender = sender_for(lab_smtp)
    with pytest.raises(SmtpPermanent) as error:
        await sender.send("support@lab.test", ["a@example.test"], MESSAGE)
    await sender.close()
    assert error.value.code == 552


async def test_mixed_refusals_on_every_recipient_stay_temporary(lab_smtp: LabSmtp) -> None:
    """One 450 among 550s: the 450 one may still succeed later, so no permanent failure."""
    sender = sender_for(lab_smtp)
    with pytest.raises(SmtpTemporary):
        await sender.send("support@lab.test", ["perm@example.test", "temp@example.test"], MESSAGE)
    await sender.close()


async def test_o03_partial_refusal_is_returned_not_raised(lab_smtp: LabSmtp) -> None:
    sender = sender_for(lab_smtp)
    recipients = ["customer@example.test", "perm@example.test", "temp@example.test"]
    result = await sender.send("support@lab.test", recipients, MESSAGE)
    await sender.close()
    assert result.accepted == ("customer@example.test",)
    assert {address: code for address, (code, _) in result.refused.items()} == {
        "perm@example.test": 550,
        "temp@example.test": 450,
    }
    (got,) = lab_smtp.wait_for(1, 2)
    assert got.rcpt_tos == ("customer@example.test",)


async def test_o07_disconnect_after_data_is_temporary_then_reconnects(lab_smtp: LabSmtp) -> None:
    lab_smtp.fault = lambda message: DROP
    sender = sender_for(lab_smtp)
    with pytest.raises(SmtpTemporary):
        await sender.send("support@lab.test", ["a@example.test"], MESSAGE)
    assert len(lab_smtp.received) == 1  # the sink has it; the sender cannot know
    lab_smtp.fault = None
    await sender.send("support@lab.test", ["a@example.test"], MESSAGE)
    await sender.close()
    copies = lab_smtp.wait_for(2, 2)
    assert {m.data for m in copies} == {MESSAGE}  # a resend is the same message


async def test_o06_callback_runs_before_250(lab_smtp: LabSmtp) -> None:
    """The sink's hook runs between receiving the data and answering (the O06 lever)."""
    marks: list[float] = []

    def record(message: Received) -> None:
        marks.append(time.monotonic())

    lab_smtp.fault = record
    sender = sender_for(lab_smtp)
    await sender.send("support@lab.test", ["a@example.test"], MESSAGE)
    answered = time.monotonic()
    await sender.close()
    assert len(marks) == 1 and marks[0] <= answered


async def test_o04_connection_refused_is_temporary() -> None:
    sender = SmtpSender(section("127.0.0.1", closed_port()), password=None)
    with pytest.raises(SmtpTemporary) as error:
        await sender.send("support@lab.test", ["a@example.test"], MESSAGE)
    assert "127.0.0.1" in str(error.value)
    await sender.close()


async def test_sink_restart_between_sends_reconnects(fault_proxy: Callable[..., Any]) -> None:
    """A server that dropped the idle connection: NOOP finds out, a new one is made."""
    with LabSmtp() as sink:
        proxy = fault_proxy(sink.host, sink.port)
        sender = SmtpSender(section(proxy.host, proxy.port), password=None)
        await sender.send("support@lab.test", ["a@example.test"], MESSAGE)
        proxy.reset()
        await asyncio.sleep(0.3)  # let the reset reach the client's socket first
        await sender.send("support@lab.test", ["b@example.test"], MESSAGE)
        await sender.close()
        assert [m.rcpt_tos[0] for m in sink.wait_for(2, 2)] == ["a@example.test", "b@example.test"]


async def test_stalled_server_times_out_as_temporary(fault_proxy: Callable[..., Any]) -> None:
    with LabSmtp() as sink:
        proxy = fault_proxy(sink.host, sink.port)
        sender = SmtpSender(section(proxy.host, proxy.port, timeout=1.0), password=None)
        await sender.greet()
        proxy.stall()
        started = time.monotonic()
        with pytest.raises(SmtpTemporary):
            await sender.send("support@lab.test", ["a@example.test"], MESSAGE)
        assert time.monotonic() - started < 4
        await sender.close()
        assert sink.received == []


async def test_o05_starttls_required_but_not_offered_sends_nothing(lab_smtp: LabSmtp) -> None:
    sender = sender_for(lab_smtp, tls="starttls")
    with pytest.raises(SmtpTemporary) as error:
        await sender.send("support@lab.test", ["a@example.test"], MESSAGE)
    await sender.close()
    assert "STARTTLS" in str(error.value)
    assert lab_smtp.received == []


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ssl.SSLContext]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed: cannot make a test certificate")
    folder: Path = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-keyout", str(folder / "key.pem"),
         "-out", str(folder / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    yield context


async def test_o05_starttls_with_untrusted_certificate_sends_nothing(
    self_signed: ssl.SSLContext,
) -> None:
    with LabSmtp(starttls=self_signed) as sink:
        sender = sender_for(sink, tls="starttls", tls_verify=True)
        with pytest.raises(SmtpTemporary) as error:
            await sender.send("support@lab.test", ["a@example.test"], MESSAGE)
        await sender.close()
        assert "certificate" in str(error.value).lower()
        assert sink.received == []


async def test_starttls_upgrade_then_send(self_signed: ssl.SSLContext) -> None:
    with LabSmtp(starttls=self_signed) as sink:
        sender = sender_for(sink, tls="starttls", tls_verify=False)
        await sender.send("support@lab.test", ["a@example.test"], MESSAGE)
        await sender.close()
        assert sink.wait_for(1, 2)[0].data == MESSAGE


async def test_password_login() -> None:
    with LabSmtp(authenticator=LabAuth(passwords={"bot@lab.test": "pw"})) as sink:
        sender = sender_for(sink, username="bot@lab.test", password="pw")
        await sender.send("support@lab.test", ["a@example.test"], MESSAGE)
        await sender.close()
        wrong = sender_for(sink, username="bot@lab.test", password="nope")
        with pytest.raises(SmtpTemporary) as error:
            await wrong.send("support@lab.test", ["a@example.test"], MESSAGE)
        assert error.value.code == 535
        assert len(sink.received) == 1


async def test_xoauth2_token_from_command() -> None:
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        return "good-token"

    auth = LabAuth(tokens={"bot@lab.test": "good-token"})
    with LabSmtp(authenticator=auth) as sink:
        sender = sender_for(sink, username="bot@lab.test", auth="xoauth2", token_command=token)
        await sender.send("support@lab.test", ["a@example.test"], MESSAGE)
        await sender.close()
        assert sink.wait_for(1, 2) and calls == [1]
        assert auth.attempts == [("XOAUTH2", "bot@lab.test")]


async def test_xoauth2_bad_or_failing_token_is_temporary() -> None:
    def broken() -> str:
        raise RuntimeError("helper exited 1")

    with LabSmtp(authenticator=LabAuth(tokens={"bot@lab.test": "good"})) as sink:
        stale = sender_for(sink, username="bot@lab.test", auth="xoauth2", token_command=lambda: "x")
        with pytest.raises(SmtpTemporary):
            await stale.send("support@lab.test", ["a@example.test"], MESSAGE)
        failing = sender_for(sink, username="bot@lab.test", auth="xoauth2", token_command=broken)
        with pytest.raises(SmtpTemporary, match="helper exited 1"):
            await failing.send("support@lab.test", ["a@example.test"], MESSAGE)
        assert sink.received == []


async def test_greet_returns_the_banner_and_close_never_raises(lab_smtp: LabSmtp) -> None:
    sender = sender_for(lab_smtp)
    banner = await sender.greet()
    assert banner.startswith("220 ") and "sink.lab.test" in banner
    lab_smtp.stop()
    await sender.close()
    await sender.close()


async def test_utf8_recipient_uses_smtputf8(lab_smtp: LabSmtp) -> None:
    sender = sender_for(lab_smtp)
    await sender.send("support@lab.test", ["josé@example.test"], MESSAGE)
    await sender.close()
    assert lab_smtp.wait_for(1, 2)[0].rcpt_tos == ("josé@example.test",)


async def test_no_recipients_is_permanent(lab_smtp: LabSmtp) -> None:
    with pytest.raises(SmtpPermanent):
        await sender_for(lab_smtp).send("support@lab.test", [], MESSAGE)


def test_errors_share_one_base_with_code() -> None:
    temporary, permanent = SmtpTemporary("busy", 451), SmtpPermanent("no such user", 550)
    assert isinstance(temporary, SmtpError) and isinstance(permanent, SmtpError)
    assert (str(temporary), permanent.code, permanent.message) == ("451 busy", 550, "no such user")
    assert str(SmtpTemporary("connection refused")) == "connection refused"
