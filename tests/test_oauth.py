"""XOAUTH2 for IMAP and SMTP with the token from `oauth2_token_command`.

The servers really check the bearer token: pymap with the lab's token login (the XOAUTH2
SASL mechanism from pysasl) and aiosmtpd with `LabAuth`. The token command is a tiny script
that prints `{"access_token": ..., "expires_in": ...}` and counts its runs in a file, so the
tests can see when mailcare asks for a token and when it uses the cached one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from spine import acks_to, customer_mail, running_daemon, wait_until, write_config

from mailcare import config as config_mod
from mailcare.cli import main
from mailcare.config import ImapSection, SmtpSection
from mailcare.imap import ImapAuthError, ImapSource
from mailcare.oauth import TokenCommand, TokenError, token_source
from mailcare.sandbox import LabAuth, LabImap, LabSmtp
from mailcare.smtp import SmtpSender, SmtpTemporary

IMAP_USER = "support@lab.test"
SMTP_USER = "mailer@examplenet.it"

TOKEN_SCRIPT = """\
import json, pathlib, sys

counter = pathlib.Path(sys.argv[1])
runs = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(runs))
if sys.argv[2] == "fail":
    print("refresh token revoked", file=sys.stderr)
    sys.exit(3)
token = sys.argv[2].replace("{n}", str(runs))
if len(sys.argv) > 3:
    print(json.dumps({"access_token": token, "expires_in": int(sys.argv[3])}))
else:
    print(token)
"""


class Helper:
    """The token command: `command(token)` prints `token` ("{n}" = the run number) as JSON
    with `expires_in`; `runs` counts how often it was started."""

    def __init__(self, folder: Path, name: str) -> None:
        self.script = folder / "token-helper.py"
        self.script.write_text(TOKEN_SCRIPT, encoding="utf-8")
        self.counter = folder / f"{name}.runs"

    def command(self, token: str, expires_in: int | None = 3600) -> str:
        tail = f" {expires_in}" if expires_in is not None else ""
        return f"{sys.executable} {self.script} {self.counter} {token}{tail}"

    @property
    def runs(self) -> int:
        return int(self.counter.read_text()) if self.counter.exists() else 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def token_imap() -> Iterator[LabImap]:
    """pymap that accepts XOAUTH2 for the support mailbox with the token "imap-ok" only."""
    with LabImap({IMAP_USER: "not-used"}, tokens={IMAP_USER: "imap-ok"}) as lab:
        yield lab


# -- the token command -------------------------------------------------------------------


def test_token_is_cached_until_shortly_before_it_expires(tmp_path: Path) -> None:
    helper = Helper(tmp_path, "unit")
    clock = FakeClock()
    tokens = TokenCommand(helper.command("tok-{n}", 3600), clock=clock)
    assert tokens() == "tok-1"
    clock.now += 3000
    assert tokens() == "tok-1"
    assert helper.runs == 1  # one run per token, not per connection
    clock.now += 600  # 3600 s later: inside the last minute, a fresh token is fetched
    assert tokens() == "tok-2"
    assert helper.runs == 2


def test_invalidate_fetches_a_fresh_token(tmp_path: Path) -> None:
    helper = Helper(tmp_path, "unit")
    tokens = TokenCommand(helper.command("tok-{n}"), clock=FakeClock())
    assert tokens() == "tok-1"
    tokens.invalidate()
    assert tokens() == "tok-2"


def test_bare_token_output_uses_the_default_lifetime(tmp_path: Path) -> None:
    helper = Helper(tmp_path, "unit")
    clock = FakeClock()
    tokens = TokenCommand(
        helper.command("bare-token", expires_in=None), default_ttl=300, clock=clock
    )
    assert tokens() == "bare-token"
    clock.now += 200
    assert tokens() == "bare-token" and helper.runs == 1
    clock.now += 100
    tokens()
    assert helper.runs == 2


def test_failing_command_names_its_exit_code_and_first_stderr_line(tmp_path: Path) -> None:
    helper = Helper(tmp_path, "unit")
    tokens = TokenCommand(helper.command("fail"))
    with pytest.raises(TokenError, match="exited 3: refresh token revoked"):
        tokens()
    with pytest.raises(TokenError, match="oauth2_token_command"):
        TokenCommand(str(tmp_path / "no-such-helper"))()


def test_token_source_only_for_xoauth2() -> None:
    assert token_source("password", "helper") is None
    assert token_source("xoauth2", "") is None
    assert isinstance(token_source("xoauth2", "helper"), TokenCommand)


# -- IMAP against pymap checking the bearer token ------------------------------------------


def imap_source(lab: LabImap, token: TokenCommand | None) -> ImapSource:
    section = ImapSection(
        host=lab.host, port=lab.port, tls="none", auth="xoauth2", username=IMAP_USER, timeout=5
    )
    return ImapSource(
        section,
        password=None,
        token_command=token,
        max_message_bytes=10**6,
        logger=logging.getLogger("test"),
    )


def test_imap_xoauth2_login_with_the_command_token(tmp_path: Path, token_imap: LabImap) -> None:
    helper = Helper(tmp_path, "imap")
    tokens = TokenCommand(helper.command("imap-ok"))
    for _ in range(2):  # a reconnect reuses the cached token
        source = imap_source(token_imap, tokens)
        try:
            assert source.connect() > 0
        finally:
            source.close()
    assert helper.runs == 1


def test_imap_refused_token_is_not_reused(tmp_path: Path) -> None:
    """The server refuses the first token: the next login runs the command again."""
    helper = Helper(tmp_path, "imap")
    tokens = TokenCommand(helper.command("imap-{n}"))
    with LabImap({IMAP_USER: "x"}, tokens={IMAP_USER: "imap-2"}) as lab:
        source = imap_source(lab, tokens)
        with pytest.raises(ImapAuthError):
            source.connect()
        source.close()
        source = imap_source(lab, tokens)
        try:
            assert source.connect() > 0
        finally:
            source.close()
    assert helper.runs == 2


# -- SMTP against aiosmtpd checking the bearer token ---------------------------------------


def smtp_sender(sink: LabSmtp, token: TokenCommand) -> SmtpSender:
    section = SmtpSection(
        host=sink.host, port=sink.port, tls="none", auth="xoauth2", username=SMTP_USER, timeout=5
    )
    return SmtpSender(section, password=None, token_command=token)


MESSAGE = b"From: a@examplenet.it\r\nTo: b@example.org\r\nSubject: t\r\n\r\nbody\r\n"


async def test_smtp_refused_token_is_not_reused(tmp_path: Path) -> None:
    """A revoked token is a temporary failure; the retry fetches a fresh one and delivers."""
    helper = Helper(tmp_path, "smtp")
    tokens = TokenCommand(helper.command("smtp-{n}"))
    auth = LabAuth(tokens={SMTP_USER: "smtp-2"})
    with LabSmtp(authenticator=auth) as sink:
        sender = smtp_sender(sink, tokens)
        with pytest.raises(SmtpTemporary):
            await sender.send("a@examplenet.it", ["b@example.org"], MESSAGE)
        await sender.send("a@examplenet.it", ["b@example.org"], MESSAGE)
        await sender.close()
        await asyncio.to_thread(sink.wait_for, 1, 5)
    assert helper.runs == 2
    assert auth.attempts == [("XOAUTH2", SMTP_USER)] * 2


# -- the daemon end to end -----------------------------------------------------------------


def xoauth2_config(
    tmp_path: Path, lab: LabImap, sink: LabSmtp, imap_command: str, smtp_command: str
) -> Path:
    """The lab config with both protocols on XOAUTH2 and no password anywhere."""
    path = write_config(
        tmp_path / "mailcare.toml",
        imap_host=lab.host,
        imap_port=lab.port,
        user=IMAP_USER,
        password="",
        smtp_host=sink.host,
        smtp_port=sink.port,
        state_dir=tmp_path / "state",
    )
    text = path.read_text(encoding="utf-8").replace('password = ""\n', "")
    text = text.replace(
        "idle = true\n", f'auth = "xoauth2"\noauth2_token_command = "{imap_command}"\nidle = true\n'
    )
    text = text.replace(
        "retry_base = 0.2\n",
        f'auth = "xoauth2"\nusername = "{SMTP_USER}"\n'
        f'oauth2_token_command = "{smtp_command}"\nretry_base = 0.2\n',
    )
    path.write_text(text, encoding="utf-8")
    settings = config_mod.load(path)
    assert settings.imap.auth == settings.smtp.auth == "xoauth2"
    assert settings.imap.password is None and settings.smtp.password is None
    return path


def test_daemon_runs_on_xoauth2_and_reconnects_with_the_cached_token(
    tmp_path: Path, token_imap: LabImap
) -> None:
    imap_helper, smtp_helper = Helper(tmp_path, "imap"), Helper(tmp_path, "smtp")
    auth = LabAuth(tokens={SMTP_USER: "smtp-ok"})
    with LabSmtp(authenticator=auth) as sink:
        config = xoauth2_config(
            tmp_path,
            token_imap,
            sink,
            imap_helper.command("imap-ok"),
            smtp_helper.command("smtp-ok"),
        )
        with running_daemon(config) as daemon:
            token_imap.deliver(IMAP_USER, customer_mail(sender="a@example.org"))
            wait_until(
                lambda: len(acks_to(sink.received, "a@example.org")) == 1,
                what="ack sent over XOAUTH2 SMTP",
            )
            assert token_imap.disconnect_all() >= 1  # the server restarts: mailcare logs in again
            token_imap.deliver(IMAP_USER, customer_mail(sender="b@example.org"))
            wait_until(lambda: daemon.processed == 2, what="second mail after the reconnect")
            wait_until(lambda: len(acks_to(sink.received, "b@example.org")) == 1)
    assert imap_helper.runs == 1  # two logins, one token
    assert smtp_helper.runs == 1
    assert auth.attempts and {mechanism for mechanism, _ in auth.attempts} == {"XOAUTH2"}


def test_check_logs_in_with_xoauth2(tmp_path: Path, token_imap: LabImap) -> None:
    helper = Helper(tmp_path, "check")
    with LabSmtp(authenticator=LabAuth(tokens={SMTP_USER: "smtp-ok"})) as sink:
        config = xoauth2_config(
            tmp_path, token_imap, sink, helper.command("imap-ok"), helper.command("smtp-ok")
        )
        result = CliRunner().invoke(main, ["check", "--config", str(config)])
        assert result.exit_code == 0, result.output
        bad = xoauth2_config(
            tmp_path, token_imap, sink, helper.command("stale"), helper.command("smtp-ok")
        )
        result = CliRunner().invoke(main, ["check", "--config", str(bad)])
    assert result.exit_code == 1  # the IMAP server refuses the token "stale", SMTP is fine
    problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1 and problems[0].startswith("problem: imap:"), problems
