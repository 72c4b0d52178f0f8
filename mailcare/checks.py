"""`mailcare check`: everything that would stop the daemon, found before a restart.

Each problem is one line naming what is wrong; the exit code is non-zero when any exists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .compose import Templates
from .config import Settings
from .oauth import TokenError, token_source
from .resources import templates_dir


def run_checks(settings: Settings, *, offline: bool, echo: Callable[[str], None]) -> list[str]:
    problems: list[str] = []
    echo("config: ok")
    problems += _templates(settings, echo)
    problems += _classifier(settings, echo)
    if not offline:
        problems += _imap(settings, echo)
        problems += _smtp(settings, echo)
    return problems


def _templates(settings: Settings, echo: Callable[[str], None]) -> list[str]:
    cfg = settings.mailcare
    folder = templates_dir(settings)
    templates = Templates(folder, languages=cfg.languages, default_language=cfg.default_language)
    found = [f"templates: {p}" for p in templates.check()]
    if not found:
        echo(
            f"templates: {len(templates.kinds())} kinds x {len(cfg.languages)} languages "
            f"render ({folder})"
        )
    return found


def _classifier(settings: Settings, echo: Callable[[str], None]) -> list[str]:
    if not settings.scope.categories:
        echo("scope: no categories configured; every new case goes to a person")
        return []
    try:
        from .pipeline import corrections_file, model_dir
        from .scope_cache import load_or_train

        model = load_or_train(settings.scope, model_dir(settings), corrections_file(settings))
    except (OSError, ValueError) as exc:
        return [f"scope: {exc}"]
    echo(f"scope: model ready ({getattr(model, 'summary', lambda: 'trained')()})")
    return []


def _imap(settings: Settings, echo: Callable[[str], None]) -> list[str]:
    from .imap import ImapError, ImapSource

    imap = settings.imap
    try:
        source = ImapSource(
            imap,
            password=imap.password.get_secret_value() if imap.password else None,
            token_command=token_source(imap.auth, imap.oauth2_token_command),
            max_message_bytes=settings.limits.max_message_bytes,
            logger=logging.getLogger("mailcare.check"),
        )
        try:
            uidvalidity = source.connect()
        finally:
            source.close()
    except (ImapError, OSError, TokenError) as exc:
        return [f"imap: {imap.host}:{imap.port}: {exc}"]
    echo(f"imap: logged in to {imap.host}:{imap.port}, {imap.folder} uidvalidity {uidvalidity}")
    return []


def _smtp(settings: Settings, echo: Callable[[str], None]) -> list[str]:
    from .smtp import SmtpError, SmtpSender

    smtp = settings.smtp

    async def greet() -> str:
        sender = SmtpSender(
            smtp,
            password=smtp.password.get_secret_value() if smtp.password else None,
            token_command=token_source(smtp.auth, smtp.oauth2_token_command),
        )
        try:
            return await sender.greet()
        finally:
            await sender.close()

    try:
        banner = asyncio.run(greet())
    except (SmtpError, OSError, TokenError) as exc:
        return [f"smtp: {smtp.host}:{smtp.port}: {exc}"]
    echo(f"smtp: {smtp.host}:{smtp.port} answered: {banner}")
    return []
