"""packaging/mailcare.service: what it promises, checked by systemd's own tools (D04, D05).

`systemd-analyze` runs without PID 1 (`--offline=true` for the security score), so these
tests work in a container; where the tool is missing they are skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailcare import config as config_mod

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "packaging" / "mailcare.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (systemd keys may repeat; an empty
    assignment resets the list, as systemd does)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        values = current.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return sections


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart pointing at the venv's `mailcare`: `verify` checks
    that the binary exists, and /usr/local/bin/mailcare does not here."""
    script = Path(sys.executable).parent / "mailcare"
    text = UNIT.read_text(encoding="utf-8")
    start = parse_unit(text)["Service"]["ExecStart"][0]
    binary = start.split()[0]
    copy = tmp_path / "mailcare.service"
    copy.write_text(text.replace(f"ExecStart={binary}", f"ExecStart={script}"), encoding="utf-8")
    return copy


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def test_notify_type_with_watchdog_and_bounded_restarts(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    """D01/D02/D04: readiness and watchdog come from the daemon; a crash loop ends in failed."""
    service, section = unit["Service"], unit["Unit"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]  # only the daemon itself may report
    watchdog = service["WatchdogSec"][0]
    assert re.fullmatch(r"\d+s?", watchdog) and int(watchdog.rstrip("s")) > 0
    assert service["Restart"] == ["on-failure"]  # also covers watchdog timeouts (SIGABRT)
    assert int(section["StartLimitBurst"][0]) >= 1
    assert int(section["StartLimitIntervalSec"][0].rstrip("s")) > 0
    assert "kill -HUP $MAINPID" in service["ExecReload"][0]  # reload is SIGHUP


def test_exec_start_runs_the_daemon_with_the_configuration_directory(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    service = unit["Service"]
    command = service["ExecStart"][0].split()
    assert command[1:3] == ["run", "--config"]
    assert command[3] == f"/etc/{service['ConfigurationDirectory'][0]}/mailcare.toml"
    assert service["StateDirectory"] == ["mailcare"]
    assert service["DynamicUser"] == ["yes"]
    assert service["UMask"] == ["0077"]


def test_the_dynamic_user_can_read_its_configuration_directory(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    """systemd chowns a StateDirectory to the dynamic user but leaves a
    ConfigurationDirectory owned by root (systemd.exec(5)): only the "other" bits let the
    service into /etc/mailcare, and the install line must make the config readable too."""
    service = unit["Service"]
    assert service["DynamicUser"] == ["yes"]
    mode = int(service["ConfigurationDirectoryMode"][0], 8)
    assert mode & 0o005 == 0o005
    assert int(service["StateDirectoryMode"][0], 8) & 0o077 == 0  # the database stays private
    text = UNIT.read_text(encoding="utf-8")
    install = re.search(r"install -m (\d+) mailcare\.toml /etc/mailcare/", text)
    assert install is not None and int(install.group(1), 8) & 0o004


def test_d06_credentials_are_the_ones_the_config_loader_reads(
    unit: dict[str, dict[str, list[str]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """D06: passwords arrive by LoadCredential= under the names config.py looks for."""
    names = {entry.partition(":")[0] for entry in unit["Service"]["LoadCredential"]}
    assert names == {"imap-password", "smtp-password"}
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name in names:
        # systemd makes these files readable by the service only; the content is the secret.
        (credentials / name).write_text(f"{name}-value\n", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    settings = config_mod.from_mapping({"mailcare": {"state_dir": str(tmp_path / "state")}})
    assert settings.imap.password is not None and settings.smtp.password is not None
    assert settings.imap.password.get_secret_value() == "imap-password-value"
    assert settings.smtp.password.get_secret_value() == "smtp-password-value"


@needs_analyze
def test_d04_verify_is_clean(tmp_path: Path) -> None:
    """D04 offline part: systemd-analyze verify has nothing to say about the unit."""
    assert ANALYZE is not None
    copy = unit_for_this_machine(tmp_path)
    done = subprocess.run(
        [ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # warnings (unknown keys…) exit 0 too


@needs_analyze
def test_d04_verify_would_notice_a_broken_unit(tmp_path: Path) -> None:
    """The verify test above can fail: an unknown key is reported on stderr."""
    assert ANALYZE is not None
    copy = unit_for_this_machine(tmp_path)
    copy.write_text(
        copy.read_text(encoding="utf-8").replace("[Service]\n", "[Service]\nWatchdogSeconds=60\n"),
        encoding="utf-8",
    )
    done = subprocess.run(
        [ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "WatchdogSeconds" in done.stderr


def security_exposure(unit_path: Path, threshold: int | None = None) -> tuple[float, int]:
    """(overall exposure 0.0-10.0, exit code) from `systemd-analyze security --offline`."""
    assert ANALYZE is not None
    args = [ANALYZE, "security", "--offline=true", "--no-pager"]
    if threshold is not None:
        args.append(f"--threshold={threshold}")
    done = subprocess.run(
        [*args, str(unit_path)], capture_output=True, text=True, timeout=60, check=False
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    return float(found.group(1)), done.returncode


@needs_analyze
def test_d05_hardening_exposure_at_most_2(tmp_path: Path) -> None:
    """D05: exposure <= 2.0. The threshold is on the 0-100 scale, so 20 means 2.0."""
    copy = unit_for_this_machine(tmp_path)
    exposure, code = security_exposure(copy, threshold=20)
    assert exposure <= 2.0
    assert code == 0


@needs_analyze
def test_d05_a_bare_unit_scores_unsafe(tmp_path: Path) -> None:
    """The score test can fail: the same ExecStart without hardening is far above 2.0."""
    bare = tmp_path / "bare.service"
    bare.write_text(
        f"[Service]\nExecStart={Path(sys.executable).parent / 'mailcare'} run\n", encoding="utf-8"
    )
    exposure, code = security_exposure(bare, threshold=20)
    assert exposure > 5.0
    assert code != 0
