"""Agent commands: `#take`, `#close`, `#wait 01/12/2026`… at the top of an agent's reply.

Agents steer a case from their mail client, so commands must be unambiguous and must never
leak to the customer. Only the top of the agent's NEW text counts (quotes are already gone),
which is where Zendesk's Mail API looks too: a `#assign eve` inside quoted customer text or
further down the reply is just text (RELIABILITY S11). Whether the author may run commands
at all is decided elsewhere (identity.py); this module only reads them.

Layout of a reply::

    #assign mario          <- command block: command lines, blank lines allowed between
    #wait +3d
                           <- the first line that is not a command ends the block
    Gentile cliente, ...   <- body: relayed to the customer

`#note` is the exception: when it is the only command, the text below it is the note's
text and nothing is relayed, so an agent can write an internal note of any length. With
other commands, the note is the rest of its own line and the body is relayed as usual.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta

VALID: tuple[str, ...] = ("take", "assign", "close", "reopen", "note", "scope", "wait", "fwd")

_COMMAND_LINE = re.compile(r"#([A-Za-z][\w-]*)(?:\s+(.*))?")
_RELATIVE = re.compile(r"\+\s*([0-9]{1,4})\s*([dgw])", re.IGNORECASE)
_DAY_FIRST = re.compile(r"([0-9]{1,2})[/.]([0-9]{1,2})[/.]([0-9]{4})")
_ISO = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_CATEGORY = re.compile(r"[\w-]+")
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+")
# Waiting longer than this is a typo, not a plan.
MAX_WAIT_DAYS = 366


@dataclass(frozen=True)
class Command:
    """One valid command; `arg` is normalised (a `#wait` date becomes ISO)."""

    name: str
    arg: str
    line: str


@dataclass(frozen=True)
class Parsed:
    """Commands found, lines that looked like commands but are not, bad arguments, the body."""

    commands: tuple[Command, ...]
    unknown: tuple[str, ...]
    errors: tuple[str, ...]
    body: str


class ArgumentError(ValueError):
    """A valid command whose argument cannot be used; the message is shown to the agent."""


def _no_arg(arg: str, today: date) -> str:
    if arg:
        raise ArgumentError("takes no argument")
    return ""


def _optional(arg: str, today: date) -> str:
    return arg


def _required(arg: str, today: date) -> str:
    if not arg:
        raise ArgumentError("needs an argument")
    return arg


def _optional_address(arg: str, today: date) -> str:
    """`#fwd` alone means "open a case for the forwarded mail's sender"; an address overrides
    it when the forward lost the original sender."""
    if arg and not _ADDRESS.fullmatch(arg.strip("<>")):
        raise ArgumentError("expects nothing or one email address")
    return arg.strip("<>")


def _scope(arg: str, today: date) -> str:
    """`in [category]`, `out <category>` or `route <category>`."""
    words = arg.split()
    if not words or words[0].lower() not in ("in", "out", "route"):
        raise ArgumentError("expected in, out or route")
    kind, rest = words[0].lower(), words[1:]
    if len(rest) > 1 or (rest and not _CATEGORY.fullmatch(rest[0])):
        raise ArgumentError("expected one category name")
    if kind != "in" and not rest:
        raise ArgumentError(f"{kind} needs a category")
    return " ".join([kind, *rest])


def parse_date(text: str, today: date) -> date:
    """A `#wait` date: 2026-12-01, 01/12/2026, 1.12.2026, or +3d / +2w (+3g in Italian).

    Dates are day-first as written in Italy and most of Europe; a date that is not after
    today is refused, since waiting until the past would silently do nothing.
    """
    text = text.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        days = int(relative.group(1)) * (7 if relative.group(2).lower() == "w" else 1)
        return _future(today + timedelta(days=days), today)
    return _future(_calendar_date(text), today)


def _calendar_date(text: str) -> date:
    iso, day_first = _ISO.fullmatch(text), _DAY_FIRST.fullmatch(text)
    if iso:
        year, month, day = (int(part) for part in iso.groups())
    elif day_first:
        day, month, year = (int(part) for part in day_first.groups())
    else:
        raise ArgumentError("not a date (use 2026-12-01, 01/12/2026 or +3d)")
    try:
        return date(year, month, day)
    except ValueError as exc:
        raise ArgumentError("not a valid calendar date") from exc


def _future(value: date, today: date) -> date:
    if value <= today:
        raise ArgumentError("must be after today")
    if (value - today).days > MAX_WAIT_DAYS:
        raise ArgumentError(f"more than {MAX_WAIT_DAYS} days ahead")
    return value


def _wait(arg: str, today: date) -> str:
    return parse_date(arg, today).isoformat()


_CHECKS = {
    "take": _no_arg,
    "assign": _required,
    "close": _optional,
    "reopen": _optional,
    "note": _optional,
    "scope": _scope,
    "wait": _wait,
    "fwd": _optional_address,
}


def _split_block(lines: list[str]) -> tuple[list[re.Match[str]], list[str]]:
    """Command-shaped lines at the top (blanks dropped) and the rest of the text."""
    block: list[re.Match[str]] = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        match = _COMMAND_LINE.fullmatch(stripped)
        if match is None:
            return block, lines[index:]
        block.append(match)
    return block, []


def parse(new_text: str, *, today: date) -> Parsed:
    """Read the command block at the top of `new_text`; see the module docstring for layout.

    >>> parse("#wait +3d\\n\\nGrazie!", today=date(2026, 1, 1)).commands[0].arg
    '2026-01-04'
    """
    lines = new_text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    block, rest = _split_block(lines)
    body = "\n".join(rest).strip()
    commands: list[Command] = []
    unknown: list[str] = []
    errors: list[str] = []
    for match in block:
        line, name, arg = match.group(0), match.group(1).lower(), (match.group(2) or "").strip()
        if name not in _CHECKS:
            unknown.append(line)
            continue
        try:
            commands.append(Command(name, _CHECKS[name](arg, today), line))
        except ArgumentError as exc:
            errors.append(f"{line}: {exc}")
    commands, body, note_error = _note_takes_body(commands, body)
    errors.extend(note_error)
    return Parsed(tuple(commands), tuple(unknown), tuple(errors), body)


def _note_takes_body(commands: list[Command], body: str) -> tuple[list[Command], str, list[str]]:
    """A lone `#note` swallows the body: an internal note must never reach the customer.

    "Lone" counts valid commands only, so a mistyped second command (`#clsoe`) does not
    turn the note into text for the customer.
    """
    if len(commands) != 1 or commands[0].name != "note":
        return commands, body, []
    note = commands[0]
    text = "\n\n".join(part for part in (note.arg, body) if part)
    if not text:
        return [], "", [f"{note.line}: empty note"]
    return [Command("note", text, note.line)], "", []


_HELP = {
    "it": (
        "Comandi (in cima alla risposta, uno per riga, prima di ogni altro testo):",
        "#take - prendo io il caso",
        "#assign <nome o indirizzo> - assegna il caso a un collega",
        "#close [motivo] - chiude il caso",
        "#reopen [motivo] - riapre il caso",
        "#note [testo] - nota interna; da sola, anche il testo sotto diventa nota e il "
        "cliente non riceve nulla",
        "#scope in [categoria] | out <categoria> | route <categoria> - corregge l'ambito",
        "#wait <data> - in attesa fino a 2026-12-01, 01/12/2026, 1.12.2026 o +3g / +2w",
        "#fwd [indirizzo] - inoltro la mail di un cliente: apre un caso per il mittente "
        "originale (o per l'indirizzo indicato)",
    ),
    "en": (
        "Commands (at the top of your reply, one per line, before any other text):",
        "#take - take the case yourself",
        "#assign <name or address> - give the case to a colleague",
        "#close [reason] - close the case",
        "#reopen [reason] - reopen the case",
        "#note [text] - internal note; on its own, the text below becomes the note too and "
        "nothing is sent to the customer",
        "#scope in [category] | out <category> | route <category> - correct the scope",
        "#wait <date> - wait until 2026-12-01, 01/12/2026, 1.12.2026 or +3d / +2w",
        "#fwd [address] - this forwards a customer's mail: open a case for the original "
        "sender (or for the address given)",
    ),
}


def help_text(lang: str) -> str:
    """The command list for an agent, in Italian or English (English for other languages)."""
    return "\n".join(_HELP.get(lang, _HELP["en"])) + "\n"
