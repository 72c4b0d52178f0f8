"""`mailcare replay`: .eml, mbox and Maildir input; stable output with --fresh; real corpora.

The notmuch corpus check replays real mailing-list threads through the whole pipeline and
compares the cases with the threads notmuch 0.37 computed (no merges, no splits). The sweep
pushes every file of ../shared/corpus that could be mail through replay: nothing may raise.
"""

from __future__ import annotations

import json
import mailbox
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner
from spine import customer_mail, reply_to, write_config

from mailcare.cli import main

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
NOT_MAIL = {
    ".py",
    ".rb",
    ".t",
    ".sh",
    ".json",
    ".md",
    ".rst",
    ".pl",
    ".pm",
    ".txt~",
    ".c",
    ".h",
    ".el",
    ".gpg",
    ".asc",
    ".key",
    ".pem",
    ".cfg",
    ".in",
    ".js",
    ".css",
    ".html",
}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "mailcare.toml",
        imap_host="127.0.0.1",
        imap_port=1,
        user="u",
        password="p",
        smtp_host="127.0.0.1",
        smtp_port=1,
        state_dir=tmp_path / "state",
    )


def _replay(config: Path, *paths: Path, fresh: bool = True) -> list[dict[str, object]]:
    args = ["replay", *map(str, paths), "--config", str(config), "--json"]
    if fresh:
        args.append("--fresh")
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.strip()]


def _conversation(tmp_path: Path) -> list[bytes]:
    first = customer_mail(
        sender="anna@example.org", subject="Linea lenta", message_id="<a1@example.org>"
    )
    follow = customer_mail(
        sender="anna@example.org",
        subject="Re: Linea lenta",
        message_id="<a2@example.org>",
        In_Reply_To="<a1@example.org>",
        References="<a1@example.org>",
    )
    other = customer_mail(
        sender="bob@example.org", subject="Fattura doppia", message_id="<b1@example.org>"
    )
    return [first, follow, other]


def test_eml_files_and_fields(tmp_path: Path, config: Path) -> None:
    paths = []
    for index, raw in enumerate(_conversation(tmp_path)):
        path = tmp_path / f"{index}.eml"
        path.write_bytes(raw)
        paths.append(path)
    rows = _replay(config, *paths)
    assert [r["case"] for r in rows] == [1000, 1000, 1001]
    assert [r["new_case"] for r in rows] == [True, False, True]
    assert rows[1]["matched_by"] == "references"
    assert "ack" in rows[0]["actions"] and "ack" not in rows[1]["actions"]
    for row in rows:
        assert {"message_id", "case", "new_case", "matched_by", "actions", "reasons"} <= set(row)


def test_mbox_and_maildir_give_the_same_answer(tmp_path: Path, config: Path) -> None:
    raws = _conversation(tmp_path)
    box = mailbox.mbox(str(tmp_path / "in.mbox"))
    for raw in raws:
        box.add(raw)
    box.flush()
    maildir = tmp_path / "Maildir"
    md = mailbox.Maildir(str(maildir))
    for index, raw in enumerate(raws):
        key = md.add(raw)
        # keep delivery order in the file names, as MTAs do
        (maildir / "new" / key).rename(maildir / "new" / f"{index:03d}.{key}")
    shutil.rmtree(maildir / "tmp")  # a copied Maildir may lack tmp/
    from_mbox = _replay(config, tmp_path / "in.mbox")
    from_maildir = _replay(config, maildir)
    assert [r["case"] for r in from_mbox] == [r["case"] for r in from_maildir] == [1000, 1000, 1001]


def test_fresh_is_deterministic(tmp_path: Path, config: Path) -> None:
    paths = []
    for index, raw in enumerate(_conversation(tmp_path)):
        path = tmp_path / f"{index}.eml"
        path.write_bytes(raw)
        paths.append(path)
    assert _replay(config, *paths) == _replay(config, *paths)


def test_replay_sends_nothing_and_leaves_the_store_alone(tmp_path: Path, config: Path) -> None:
    path = tmp_path / "one.eml"
    path.write_bytes(customer_mail())
    _replay(config, path, fresh=False)
    assert not (tmp_path / "state" / "mailcare.db").exists()


def test_reply_to_our_ack_threads_by_token(tmp_path: Path, config: Path) -> None:
    """Our own outgoing mail is planned in replay too, so a reply to it can be replayed."""
    first = customer_mail(sender="anna@example.org", message_id="<t1@example.org>")
    (tmp_path / "1.eml").write_bytes(first)
    rows = _replay(config, tmp_path / "1.eml")
    assert rows[0]["case"] == 1000
    reply = reply_to(first, "anna@example.org", "ancora giù")
    (tmp_path / "2.eml").write_bytes(reply)
    rows = _replay(config, tmp_path / "1.eml", tmp_path / "2.eml")
    assert rows[1]["case"] == 1000


@pytest.mark.skipif(not (CORPUS / "notmuch").exists(), reason="../shared/corpus/notmuch absent")
@pytest.mark.parametrize("corpus", ["lkml", "default"])
def test_notmuch_threads_are_reproduced(tmp_path: Path, config: Path, corpus: str) -> None:
    expected = json.loads((CORPUS / "notmuch" / "expected_threads.notmuch-0.37.json").read_text())[
        "corpora"
    ][corpus]
    rows = _replay(config, CORPUS / "notmuch" / "test" / "corpora" / corpus)
    case_of = {r["message_id"]: r["case"] for r in rows if r["matched_by"] != "duplicate"}
    members: dict[object, set[str]] = defaultdict(set)
    for mid, case in case_of.items():
        members[case].add(mid)
    for thread in expected:
        ids = {m["message_id"] for m in thread["messages"]}
        cases = {case_of[mid] for mid in ids if mid in case_of}
        assert len(cases) == 1, f"thread split over cases {cases}: {sorted(ids)[:3]}"
        case = cases.pop()
        assert members[case] <= ids, f"case {case} merges another thread"


def _could_be_mail(path: Path) -> bool:
    if path.suffix.lower() in NOT_MAIL or path.name.upper().startswith(
        ("LICENSE", "COPYING", "README", "MANIFEST")
    ):
        return False
    return path.is_file() and path.stat().st_size < 3_000_000


@pytest.mark.skipif(not CORPUS.exists(), reason="../shared/corpus absent")
def test_corpus_sweep_through_replay(tmp_path: Path, config: Path) -> None:
    """Issue 6: every corpus file goes through replay without an unhandled exception."""
    files = sorted(p for p in CORPUS.rglob("*") if _could_be_mail(p))
    assert len(files) > 300
    for start in range(0, len(files), 400):
        chunk = files[start : start + 400]
        rows = _replay(config, *chunk)
        assert len(rows) >= len(chunk)  # an mbox file holds several messages


def test_agent_forward_opens_a_case_for_the_original_sender(tmp_path: Path, config: Path) -> None:
    """An agent forwards a customer's mail in with #fwd: the case is the customer's."""
    body = (
        "#fwd\nMi ha scritto direttamente, la giro all'assistenza.\n\n"
        "---------- Forwarded message ---------\n"
        "Da: Mario Rossi <mario.rossi@libero.it>\n"
        "Date: lun 23 nov 2026 alle ore 09:12\n"
        "Subject: Linea assente\n"
        "To: Giulia <giulia@examplenet.it>\n\n"
        "Buongiorno, da stamattina la linea non va.\n"
    )
    raw = customer_mail(sender="giulia@examplenet.it", subject="Fwd: Linea assente", body=body)
    path = tmp_path / "fwd.eml"
    path.write_bytes(raw)
    rows = _replay(config, path)
    assert rows[0]["new_case"] is True
    assert rows[0]["matched_by"] == "forward"
    assert "ack" not in rows[0]["actions"]


def test_s14_customer_control_headers_are_ignored_and_replays_run_once(
    tmp_path: Path, config: Path
) -> None:
    """S14: X-Mailcare-* headers from outside steer nothing; the same mail twice counts once."""
    from mailcare import tokens

    first = customer_mail(sender="anna@example.org", message_id="<s14a@example.org>")
    forged = customer_mail(
        sender="eve@example.org",
        subject="Re: something",
        message_id="<s14b@example.org>",
        X_Mailcare_Case="1000",
        X_Mailcare_Owner="giulia@examplenet.it",
        X_Mailcare_Command="close",
    )
    to_giulia = tokens.reply_address(
        "assistenza@examplenet.it", b"test-secret-0123456789", 1000, "giulia@examplenet.it"
    )
    note = customer_mail(
        sender="giulia@examplenet.it",
        subject="Re: [EX #1000]",
        body="#note chiamata la cliente",
        message_id="<s14c@examplenet.it>",
        To=to_giulia,
    )
    paths = []
    for index, raw in enumerate((first, forged, note, note)):
        path = tmp_path / f"{index}.eml"
        path.write_bytes(raw)
        paths.append(path)
    rows = _replay(config, *paths)
    assert rows[1]["case"] == 1001 and rows[1]["new_case"]  # not pulled into case 1000
    assert rows[2]["case"] == 1000 and rows[2]["matched_by"] == "token"
    assert rows[3]["matched_by"] == "duplicate" and rows[3]["actions"] == ["none"]
