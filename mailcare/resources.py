"""Where the shipped templates, examples and sample config live.

A checkout (or `pip install -e .`) has them beside the package; a regular install puts
them under `<prefix>/share/mailcare`. A configured path wins when it exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .config import Settings


def bundled_root() -> Path:
    """The folder holding `templates/`, `classifiers/` and `mailcare.toml` as shipped."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "templates").is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "mailcare"


def templates_dir(settings: Settings) -> Path:
    configured = settings.mailcare.templates_dir
    if not configured.is_absolute():
        configured = settings.config_dir / configured
    return configured if configured.is_dir() else bundled_root() / "templates"


def sample_config() -> Path:
    return bundled_root() / "mailcare.toml"
