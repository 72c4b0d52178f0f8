"""Agent commands at the top of a reply (RELIABILITY S11, S13)."""

from __future__ import annotations

from datetime import date

import pytest

from mailcare import commands
from mailcare.commands import Command, Parsed

TODAY = date(2026, 11, 24)


def parse(text: str) -> Parsed:
    return commands.parse(text, today=TODAY)


def test_valid_names() -> None:
    assert commands.VALID == ("take", "assign", "close", "reopen", "note", "scope", "wait", "fwd")


def test_plain_reply_has_no_commands() -> None:
    assert parse("  Gentile cliente,\nabbiamo risolto.\n") == Parsed(
        (), (), (), "Gentile cliente,\nabbiamo risolto."
    )


def test_command_block_then_body() -> None:
    parsed = parse("#take\n\n#wait +3d\n\nGentile cliente,\n\n#close is not a command here\n")
    assert parsed.commands == (
        Command("take", "", "#take"),
        Command("wait", "2026-11-27", "#wait +3d"),
    )
    assert parsed.body == "Gentile cliente,\n\n#close is not a command here"
    assert parsed.unknown == () and parsed.errors == ()


def test_s11_commands_below_text_are_ignored() -> None:
    parsed = parse("Ciao,\n#close\n#assign eve\n")
    assert parsed.commands == ()
    assert parsed.body == "Ciao,\n#close\n#assign eve"


def test_s11_quoted_command_is_not_a_command() -> None:
    """Quotes are removed before parsing; one that survived starts with '>' and is text."""
    parsed = parse("> #assign eve\n")
    assert parsed.commands == () and parsed.body == "> #assign eve"


def test_s13_take_assign_close_are_read_for_the_permission_check() -> None:
    parsed = parse("#assign mario@examplenet.it\n#close risolto al telefono\n")
    assert [(c.name, c.arg) for c in parsed.commands] == [
        ("assign", "mario@examplenet.it"),
        ("close", "risolto al telefono"),
    ]
    assert parsed.body == ""


def test_names_are_case_insensitive_and_lines_may_be_indented() -> None:
    parsed = parse("  #CLOSE\r\n#Take\r\nok")
    assert [c.name for c in parsed.commands] == ["close", "take"]
    assert parsed.commands[0].line == "#CLOSE"
    assert parsed.body == "ok"


def test_unknown_commands_stay_in_the_block_and_are_not_relayed() -> None:
    parsed = parse("#clsoe\n#take\nGrazie")
    assert parsed.unknown == ("#clsoe",)
    assert parsed.commands == (Command("take", "", "#take"),)
    assert parsed.body == "Grazie"


def test_hash_without_a_word_is_body_text() -> None:
    parsed = parse("#1 priorità: la fattura\n#take")
    assert parsed.commands == () and parsed.unknown == ()
    assert parsed.body.startswith("#1 priorità")


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("#take mario", "#take mario: takes no argument"),
        ("#assign", "#assign: needs an argument"),
        ("#scope sideways", "#scope sideways: expected in, out or route"),
        ("#scope", "#scope: expected in, out or route"),
        ("#scope out", "#scope out: out needs a category"),
        ("#scope route a b", "#scope route a b: expected one category name"),
        ("#wait tomorrowish", "#wait tomorrowish: not a date (use 2026-12-01, 01/12/2026 or +3d)"),
        ("#wait 31/02/2027", "#wait 31/02/2027: not a valid calendar date"),
        ("#wait 2026-11-24", "#wait 2026-11-24: must be after today"),
        ("#wait +0d", "#wait +0d: must be after today"),
        ("#wait +9999d", "#wait +9999d: more than 366 days ahead"),
        ("#wait", "#wait: not a date (use 2026-12-01, 01/12/2026 or +3d)"),
        ("#fwd mario", "#fwd mario: expects nothing or one email address"),
    ],
)
def test_bad_arguments_are_errors(line: str, error: str) -> None:
    parsed = parse(line + "\nTesto")
    assert parsed.errors == (error,)
    assert parsed.commands == ()
    assert parsed.body == "Testo"


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("2026-12-01", "2026-12-01"),
        ("01/12/2026", "2026-12-01"),
        ("1.12.2026", "2026-12-01"),
        ("+3d", "2026-11-27"),
        ("+3g", "2026-11-27"),
        ("+2w", "2026-12-08"),
        ("+ 1 D", "2026-11-25"),
    ],
)
def test_wait_date_forms(arg: str, expected: str) -> None:
    assert parse(f"#wait {arg}").commands == (Command("wait", expected, f"#wait {arg}"),)


def test_wait_default_limit_is_a_year() -> None:
    assert commands.MAX_WAIT_DAYS == 366
    assert commands.parse_date("+366d", TODAY) == date(2027, 11, 25)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("in", "in"),
        ("IN billing", "in billing"),
        ("out device", "out device"),
        ("route sales", "route sales"),
    ],
)
def test_scope_forms(arg: str, expected: str) -> None:
    assert parse(f"#scope {arg}").commands[0].arg == expected


def test_fwd_takes_an_optional_address() -> None:
    assert parse("#fwd <cliente@example.com>").commands[0].arg == "cliente@example.com"
    forwarded = parse("#fwd\n\n---------- Forwarded message ---------\nDa: cliente@example.com")
    assert forwarded.commands == (Command("fwd", "", "#fwd"),)
    assert forwarded.body.startswith("---------- Forwarded message")


def test_lone_note_takes_the_body_and_nothing_is_relayed() -> None:
    parsed = parse("#note chiamato il cliente\n\nDice che il router\nlampeggia rosso.")
    assert parsed.commands == (
        Command(
            "note",
            "chiamato il cliente\n\nDice che il router\nlampeggia rosso.",
            "#note chiamato il cliente",
        ),
    )
    assert parsed.body == ""


def test_note_with_other_commands_keeps_its_line_and_body_is_relayed() -> None:
    parsed = parse("#note richiamare lunedì\n#wait +3d\nGentile cliente, attendiamo.")
    assert parsed.commands[0] == Command("note", "richiamare lunedì", "#note richiamare lunedì")
    assert parsed.body == "Gentile cliente, attendiamo."


def test_lone_note_with_a_typo_command_still_keeps_the_body_internal() -> None:
    parsed = parse("#note\n#clsoe\nsolo per noi")
    assert parsed.commands == (Command("note", "solo per noi", "#note"),)
    assert parsed.unknown == ("#clsoe",)
    assert parsed.body == ""


def test_empty_note_is_an_error() -> None:
    parsed = parse("#note\n\n")
    assert parsed.commands == () and parsed.errors == ("#note: empty note",)


def test_empty_text() -> None:
    assert parse("") == Parsed((), (), (), "")


@pytest.mark.parametrize("lang", ["it", "en"])
def test_help_text_lists_every_command(lang: str) -> None:
    text = commands.help_text(lang)
    for name in commands.VALID:
        assert f"#{name}" in text
    assert len(text.strip().splitlines()) == len(commands.VALID) + 1


def test_help_text_languages() -> None:
    assert "prendo io il caso" in commands.help_text("it")
    assert "take the case yourself" in commands.help_text("en")
    assert commands.help_text("de") == commands.help_text("en")
