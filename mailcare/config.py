"""The `mailcare.toml` schema: every key an admin can tune, its default, and its check.

Loading goes through pydantic-settings with a TOML source, so a mistake names the key
(`imap.port: Input should be a valid integer`) and unknown keys are errors rather than
silently ignored typos. Secrets come, in order, from the environment
(`MAILCARE_IMAP__PASSWORD`), from `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`),
from a `*_file` key, or from the TOML itself.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

TLS = Literal["ssl", "starttls", "none"]
Auth = Literal["password", "xoauth2"]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the reason."""


class Section(BaseModel):
    """Base for every table: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MailcareSection(Section):
    support_address: str = "assistenza@examplenet.it"
    display_name: str = "Assistenza ExampleNet"
    company: str = "ExampleNet"
    case_tag: str = "EX"
    state_dir: Path = Path("state")
    templates_dir: Path = Path("templates")
    default_language: str = "it"
    languages: tuple[str, ...] = ("it", "en")
    mode: Literal["live", "shadow"] = "live"
    # Other addresses that are us (aliases, the VERP bounce domain owner...): mail from them
    # is never answered and never opens a case.
    aliases: tuple[str, ...] = ()
    # HMAC secret for reply tokens, Message-IDs and VERP; generated once in state_dir if empty.
    secret: SecretStr | None = None
    secret_file: Path | None = None
    # A reply to a case closed longer than this opens a new, linked case.
    reopen_days: int = Field(14, ge=0)
    # Addresses agents forward customer mail to, so it opens a case for the original sender.
    forward_addresses: tuple[str, ...] = ()
    # When set, agent mail must carry a topmost Authentication-Results from this authserv-id
    # showing DKIM/DMARC pass for the From domain.
    trusted_authserv_id: str = ""

    @field_validator("support_address")
    @classmethod
    def _address(cls, value: str) -> str:
        local, sep, domain = value.partition("@")
        if not sep or not local or not domain or "+" in local:
            raise ValueError("must be a plain address like support@example.com (no plus part)")
        return value.lower()

    @field_validator("case_tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        if not value.isalnum():
            raise ValueError("must be letters and digits only, like EX")
        return value.upper()

    @property
    def domain(self) -> str:
        return self.support_address.partition("@")[2]


class ServerSection(Section):
    """How to reach and log in to a mail server; shared by [imap] and [smtp]."""

    host: str = "127.0.0.1"
    tls: TLS = "ssl"
    tls_verify: bool = True
    auth: Auth = "password"
    username: str = ""
    password: SecretStr | None = None
    password_file: Path | None = None
    oauth2_token_command: str = ""
    timeout: float = Field(60.0, gt=0)


class ImapSection(ServerSection):
    port: int = Field(993, ge=1, le=65535)
    folder: str = "INBOX"
    idle: bool = True
    # RFC 2177: re-issue IDLE before the server's 30-minute autologout.
    idle_renew: float = Field(29 * 60, gt=0)
    poll_interval: float = Field(30.0, gt=0)
    batch_size: int = Field(200, ge=1)
    # After commit: add this keyword, or move to processed_folder when that is set.
    processed_keyword: str = "$MailcareProcessed"
    processed_folder: str = ""
    quarantine_folder: str = "mailcare/quarantine"
    reconnect_max: float = Field(300.0, gt=0)


class SmtpSection(ServerSection):
    port: int = Field(465, ge=1, le=65535)
    retry_base: float = Field(30.0, gt=0)
    retry_max: float = Field(3600.0, gt=0)
    # A temporary failure turns permanent after this long (RFC 5321 suggests days).
    give_up_after: float = Field(4 * 86400.0, gt=0)
    connections: int = Field(2, ge=1, le=20)


class LimitsSection(Section):
    """Loop and abuse protection; windows in seconds so tests can shrink them."""

    per_sender_max: int = Field(3, ge=0)
    per_sender_window: float = Field(3600.0, gt=0)
    per_case_max: int = Field(5, ge=0)
    per_case_window: float = Field(86400.0, gt=0)
    bounce_suppress_days: float = Field(30.0, ge=0)
    max_message_bytes: int = Field(25_000_000, ge=1024)
    max_mime_parts: int = Field(200, ge=1)
    max_header_bytes: int = Field(64_000, ge=1024)
    quarantine_after: int = Field(3, ge=1)
    # Bcc'd or list-expanded mail (support not in To/Cc) still opens a case but gets no ack.
    ack_only_when_addressed: bool = True
    # No automatic answer to mail dated longer ago than this: a stale ack helps nobody, and
    # a fresh state folder pointed at a full mailbox must not start an ack storm (C04).
    ack_max_age_hours: float = Field(72.0, gt=0)


class AgentSection(Section):
    name: str
    address: str
    queues: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    max_open: int | None = Field(None, ge=1)
    away: bool = False
    away_from: date | None = None
    away_until: date | None = None
    lead: bool = False

    @field_validator("address")
    @classmethod
    def _lower(cls, value: str) -> str:
        if "@" not in value:
            raise ValueError("must be an email address")
        return value.strip().lower()


class OwnersSection(Section):
    policy: Literal["round_robin", "least_open"] = "round_robin"
    sticky_days: int = Field(30, ge=0)
    other_agent_reply: Literal["hold", "transfer"] = "hold"


class HoursSection(Section):
    timezone: str = "Europe/Rome"
    days: tuple[int, ...] = (0, 1, 2, 3, 4)  # Monday=0
    start: str = "09:00"
    end: str = "18:00"
    holidays_country: str = "IT"
    extra_holidays: tuple[date, ...] = ()

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        hours, sep, minutes = value.partition(":")
        if not sep or not (hours.isdigit() and minutes.isdigit()):
            raise ValueError("must be HH:MM")
        if not (0 <= int(hours) <= 24 and 0 <= int(minutes) < 60):
            raise ValueError("must be a time of day, HH:MM")
        return value


class SlaSection(Section):
    """Working-hour durations, in hours."""

    first_response_hours: float = Field(4.0, gt=0)
    remind_after_hours: float = Field(3.0, gt=0)
    escalate_after_hours: float = Field(8.0, gt=0)
    escalate: Literal["lead", "reassign"] = "lead"
    lead_address: str = ""
    check_interval: float = Field(60.0, gt=0)


class ScopeText(Section):
    reason: str
    where: str
    tell: str = ""


class ScopeCategory(Section):
    kind: Literal["in", "out", "route"]
    queue: str = ""
    address: str = ""
    team: str = ""
    keywords: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()
    senders: tuple[str, ...] = ()
    text: dict[str, ScopeText] = Field(default_factory=dict)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"regex {pattern!r} does not compile: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> ScopeCategory:
        if self.kind == "route" and "@" not in self.address:
            raise ValueError("a route category needs address = the internal team's mailbox")
        if self.kind == "out" and not self.text:
            raise ValueError("an out category needs text.<lang> with reason and where")
        return self


class ScopeSection(Section):
    examples_dir: Path = Path("classifiers")
    threshold: float = Field(0.75, gt=0, lt=1)
    # "out" and "route" must also beat the summed "in" probability by this much (in wins doubt).
    margin: float = Field(0.4, ge=0, le=1)
    # Mails shorter than this many words (subject + new text) are never sent away by the model.
    min_words: int = Field(12, ge=0)
    categories: dict[str, ScopeCategory] = Field(default_factory=dict)


class MetricsSection(Section):
    listen: str = ""


class ReportSection(Section):
    to: str = ""
    every: Literal["", "daily", "weekly"] = ""


class LogSection(Section):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def _toml_file() -> Path | None:
    value = os.environ.get("MAILCARE_CONFIG_FILE")
    return Path(value) if value else None


class Settings(BaseSettings):
    """The whole configuration. Build it with `load()`, which adds file-relative paths."""

    model_config = SettingsConfigDict(
        env_prefix="MAILCARE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    mailcare: MailcareSection = MailcareSection()
    imap: ImapSection = ImapSection()
    smtp: SmtpSection = SmtpSection()
    limits: LimitsSection = LimitsSection()
    owners: OwnersSection = OwnersSection()
    agents: tuple[AgentSection, ...] = ()
    hours: HoursSection = HoursSection()
    sla: SlaSection = SlaSection()
    scope: ScopeSection = ScopeSection()
    metrics: MetricsSection = MetricsSection()
    report: ReportSection = ReportSection()
    log: LogSection = LogSection()
    # Where the file was read from; relative paths are resolved against its folder.
    config_dir: Path = Path(".")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @model_validator(mode="after")
    def _agents(self) -> Settings:
        seen: set[str] = set()
        queues = {c.queue or name for name, c in self.scope.categories.items()}
        for agent in self.agents:
            if agent.address in seen:
                raise ValueError(f"agents: {agent.address} is listed twice")
            seen.add(agent.address)
            unknown = [q for q in agent.queues if queues and q not in queues]
            if unknown:
                raise ValueError(
                    f"agents: {agent.name}: queues {unknown} name no scope category's queue "
                    f"(known: {', '.join(sorted(queues))})"
                )
        return self

    def agent(self, address: str) -> AgentSection | None:
        """The agent with this address (already lower-case), if any."""
        return next((a for a in self.agents if a.address == address.lower()), None)


def _format_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{key}: {message}")
    return "; ".join(lines)


def _read_secret(path: Path, key: str) -> SecretStr:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and not str(path).startswith(
        os.environ.get("CREDENTIALS_DIRECTORY", "\0")
    ):
        raise ConfigError(f"{key}: {path} is readable by others; chmod 600 it")
    return SecretStr(path.read_text(encoding="utf-8").strip())


def _credential(name: str) -> Path | None:
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return None
    path = Path(folder) / name
    return path if path.exists() else None


def _resolve_secrets(settings: Settings) -> Settings:
    """Fill imap/smtp passwords from files or systemd credentials when not given directly."""
    updates: dict[str, Any] = {}
    for section_name in ("imap", "smtp"):
        section = getattr(settings, section_name)
        if section.password is not None and not os.environ.get("CREDENTIALS_DIRECTORY"):
            continue
        credential = _credential(f"{section_name}-password")
        if section.password is not None and credential is None:
            continue
        source = credential or (
            _absolute(settings.config_dir, section.password_file) if section.password_file else None
        )
        if source is not None:
            secret = _read_secret(source, f"{section_name}.password_file")
            updates[section_name] = section.model_copy(update={"password": secret})
    return settings.model_copy(update=updates) if updates else settings


def _absolute(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def _resolve_paths(settings: Settings) -> Settings:
    base = settings.config_dir
    core = settings.mailcare.model_copy(
        update={"state_dir": _absolute(base, settings.mailcare.state_dir)}
    )
    scope = settings.scope.model_copy(
        update={"examples_dir": _absolute(base, settings.scope.examples_dir)}
    )
    return settings.model_copy(update={"mailcare": core, "scope": scope})


def load(path: Path | None) -> Settings:
    """Read, validate and complete the configuration; raise ConfigError naming the key.

    With no path the embedded defaults are used (the demo runs that way).
    """
    if path is not None:
        try:
            with path.open("rb") as handle:
                tomllib.load(handle)
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        os.environ["MAILCARE_CONFIG_FILE"] = str(path)
    else:
        os.environ.pop("MAILCARE_CONFIG_FILE", None)
    try:
        base = path.resolve().parent if path is not None else Path.cwd()
        settings = Settings(config_dir=base)
    except ValidationError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(where + _format_error(exc)) from exc
    finally:
        os.environ.pop("MAILCARE_CONFIG_FILE", None)
    return _resolve_secrets(_resolve_paths(settings))


def from_mapping(data: dict[str, Any], base: Path | None = None) -> Settings:
    """Build settings from a plain dict (tests, demo): same checks as a file."""
    try:
        settings = Settings.model_validate({**data, "config_dir": base or Path.cwd()})
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from exc
    return _resolve_secrets(_resolve_paths(settings))
