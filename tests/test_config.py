"""The TOML schema: errors name the key, secrets come from env, files or systemd credentials."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailcare import config
from mailcare.resources import sample_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailcare.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_example_loads_and_is_complete() -> None:
    settings = config.load(sample_config())
    assert settings.mailcare.support_address == "assistenza@examplenet.it"
    assert settings.mailcare.case_tag == "EX"
    assert len(settings.agents) >= 3
    kinds = {c.kind for c in settings.scope.categories.values()}
    assert kinds == {"in", "out", "route"}
    for name in ("connectivity", "voip", "hosting", "router", "billing", "account"):
        assert settings.scope.categories[name].kind == "in"
    for name in ("device", "software", "other_provider", "building"):
        category = settings.scope.categories[name]
        assert category.kind == "out"
        assert {"it", "en"} <= set(category.text)
    assert settings.scope.categories["sales"].kind == "route"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, '[imap]\nhots = "x"\n')
    with pytest.raises(config.ConfigError, match=r"imap\.hots: unknown key"):
        config.load(path)


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, '[imap]\nport = "nine"\n')
    with pytest.raises(config.ConfigError, match=r"imap\.port"):
        config.load(path)


def test_bad_toml_gives_line_and_column(tmp_path: Path) -> None:
    """C06: the TOML error carries its position."""
    path = _write(tmp_path, "[mailcare]\nsupport_address = \n")
    with pytest.raises(config.ConfigError, match=r"line 2"):
        config.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(tmp_path / "nope.toml")


def test_support_address_must_be_plain(tmp_path: Path) -> None:
    path = _write(tmp_path, '[mailcare]\nsupport_address = "help+x@example.com"\n')
    with pytest.raises(config.ConfigError, match=r"mailcare\.support_address"):
        config.load(path)


def test_route_needs_an_address(tmp_path: Path) -> None:
    path = _write(tmp_path, '[scope.categories.sales]\nkind = "route"\n')
    with pytest.raises(config.ConfigError, match=r"scope\.categories\.sales"):
        config.load(path)


def test_duplicate_agent(tmp_path: Path) -> None:
    text = (
        '[[agents]]\nname = "A"\naddress = "a@x.it"\n[[agents]]\nname = "B"\naddress = "A@x.it"\n'
    )
    with pytest.raises(config.ConfigError, match="listed twice"):
        config.load(_write(tmp_path, text))


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    path = _write(tmp_path, '[mailcare]\nstate_dir = "var/state"\n')
    settings = config.load(path)
    assert settings.mailcare.state_dir == (tmp_path / "var" / "state").resolve()


def test_password_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILCARE_IMAP__PASSWORD", "from-env")
    settings = config.load(_write(tmp_path, '[imap]\nusername = "u"\n'))
    assert settings.imap.password is not None
    assert settings.imap.password.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)  # D06: never printed


def test_password_file_must_be_private(tmp_path: Path) -> None:
    secret = tmp_path / "imap-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    path = _write(tmp_path, '[imap]\npassword_file = "imap-password"\n')
    with pytest.raises(config.ConfigError, match="readable by others"):
        config.load(path)
    secret.chmod(0o600)
    settings = config.load(path)
    assert settings.imap.password is not None
    assert settings.imap.password.get_secret_value() == "s3cret"


def test_systemd_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "smtp-password").write_text("from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = config.load(_write(tmp_path, "[smtp]\nport = 587\n"))
    assert settings.smtp.password is not None
    assert settings.smtp.password.get_secret_value() == "from-credential"


def test_defaults_without_a_file() -> None:
    settings = config.load(None)
    assert settings.imap.idle_renew < 30 * 60  # RFC 2177
    assert settings.imap.timeout > 0  # a stall must never hang (I04)
    assert settings.mailcare.mode == "live"
    assert not os.environ.get("MAILCARE_CONFIG_FILE")


def test_cli_reports_config_errors_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mailcare.cli import main

    path = _write(tmp_path, "[imap]\nport = 0\n")
    result = CliRunner().invoke(main, ["cases", "--config", str(path)])
    assert result.exit_code == 2
    assert "imap.port" in result.output
    assert "Traceback" not in result.output
