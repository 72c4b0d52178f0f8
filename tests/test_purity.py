"""The pure core stays pure: no module of it imports a socket, SQLite, asyncio, the mail
protocol libraries, the clock or child processes. Checked on the source, so a stray import
fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = (
    "mail",
    "loops",
    "threads",
    "scope",
    "owners",
    "commands",
    "plan",
    "compose",
    "tokens",
    "bounces",
    "hours",
    "identity",
    "sla",
)
FORBIDDEN = {
    "sqlite3",
    "sqlite_utils",
    "imapclient",
    "imaplib",
    "aiosmtplib",
    "smtplib",
    "asyncio",
    "socket",
    "time",
    "multiprocessing",
    "concurrent",
    "subprocess",
}
PACKAGE = Path(__file__).resolve().parents[1] / "mailcare"


def _imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level
            and node.module in ("store", "imap", "smtp", "daemon", "outbox")
        ):
            found.add(f".{node.module}")
    return found


@pytest.mark.parametrize("module", CORE)
def test_core_module_has_no_io_imports(module: str) -> None:
    bad = _imports(module) & (FORBIDDEN | {".imap", ".smtp", ".daemon", ".outbox"})
    if module == "sla":
        # sla.run_sla is the thin runner the daemon calls; the store is imported only for
        # type checking, never at run time.
        bad -= {".store"}
    assert not bad, f"mailcare/{module}.py imports {sorted(bad)}"
