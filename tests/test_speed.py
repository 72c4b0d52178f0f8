"""The shortcuts taken for speed give exactly what the plain code gave.

Each shortcut is checked against a reference written the slow, obvious way: the scope
model's n-gram counting against scikit-learn's analyzers, the rule prefilters against
plain regex searches, the loose index scan against GROUP BY, the outbox's pending index
against the full query, the short Base32 against the full one, and the daemon's parse
workers against parsing in the daemon.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from spine import config_text, customer_mail, reply_to

from mailcare import config as config_mod
from mailcare import daemon as daemon_mod
from mailcare import scope, tokens, training
from mailcare.config import ScopeCategory
from mailcare.imap import Fetched
from mailcare.store import OPEN_STATES, Store

ROOT = Path(__file__).resolve().parents[1]

# Hostile text for tokenisers and case folding: every kind of Unicode space, the letters
# that match ASCII under re.IGNORECASE without lower-casing to it, ligatures, digits.
PIECES = [
    *"abcdeèéìòù ÀÉ\t\n\r\x0b\x0c\x1c\x1d\xa0\u2003\u2028İıſﬅK0123456789.,'-_@/",
    "stampante ",
    "la stampante  non\nstampa",
    "webmail.examplenet.it",
    "WEBMAİL.examplenet.it",
    "webmaıl.examplenet.it",
    "Vorrei un preventivo",
    "PRICE  LIST",
    "ExampleBox",
    "examplebox",
    "bolletta dell'acqua",
    "fibra",
    "wi-fi ",
    "aaaaaa ",
]


def hostile_docs(count: int, seed: int = 5) -> list[str]:
    rnd = random.Random(seed)
    docs = ["", " ", "a", "ab cd", "  multiple   spaces\n\nand\tTabs  "]
    docs += ["".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 60))) for _ in range(count)]
    return docs


def training_docs() -> list[str]:
    examples = scope.load_examples(ROOT / "classifiers")
    return [example.document for example in examples]


# -- scope: n-gram counting ---------------------------------------------------------------


@pytest.fixture(scope="module")
def features() -> object:
    union = training.build_features()
    union.fit(training_docs())
    return union


def test_fast_counts_equal_the_analyzers_counts_in_order(features: object) -> None:
    """Same columns, same counts, same order (the order feeds a float dot product)."""
    docs = training_docs()[:150] + hostile_docs(800)
    for _, vectorizer in features.transformer_list:  # type: ignore[attr-defined]
        vocabulary = {str(k): int(v) for k, v in vectorizer.vocabulary_.items()}
        make = scope.char_counter if vectorizer.analyzer == "char_wb" else scope.word_counter
        count = make(vocabulary)
        analyze = vectorizer.build_analyzer()
        for doc in docs:
            expected = {
                vocabulary[token]: times
                for token, times in Counter(analyze(doc)).items()
                if token in vocabulary
            }
            got = count(scope.normalize(doc))
            assert list(got.items()) == list(expected.items()), repr(doc)


def test_training_fits_the_features_the_counters_assume(features: object) -> None:
    words, chars = (v for _, v in features.transformer_list)  # type: ignore[attr-defined]
    assert (words.analyzer, tuple(words.ngram_range)) == ("word", scope.WORD_GRAMS)
    assert words.token_pattern == scope.TOKEN_PATTERN and words.tokenizer is None
    assert (chars.analyzer, tuple(chars.ngram_range)) == ("char_wb", scope.CHAR_GRAMS)
    assert words.preprocessor is chars.preprocessor is scope.normalize
    assert words.stop_words is None and words.sublinear_tf and chars.sublinear_tf


# -- scope: rule prefilters ---------------------------------------------------------------


def reference_hits(
    categories: dict[str, ScopeCategory], subject: str, text: str, sender: str
) -> list[tuple[str, str]]:
    """The rules without prefilters: one regex search per keyword and per regex."""
    raw = scope.document(subject, text)
    folded = scope.fold(raw)
    hits = []
    for name, category in categories.items():
        for kw in category.keywords:
            if kw.strip() and re.search(scope._phrase(kw), folded):
                hits.append((name, f"keyword '{kw}'"))
        for rx in category.regex:
            if re.search(rx, raw, re.IGNORECASE) or re.search(rx, folded, re.IGNORECASE):
                hits.append((name, f"regex '{rx}'"))
        for rule in category.senders:
            if sender and scope._sender_matches(rule, sender.strip().lower()):
                hits.append((name, f"sender '{rule}'"))
    return hits


def test_rule_prefilters_change_no_hit() -> None:
    categories = dict(config_mod.load(ROOT / "mailcare.toml").scope.categories)
    categories["extra"] = ScopeCategory(
        kind="in",
        keywords=("ſtop", "K-box", "İstanbul"),
        regex=(r"(?i)web\s*mail", r"ab|cd", r"x?ampleb", r"\bstampa\b"),
    )
    docs = training_docs()[:100] + hostile_docs(1500)
    for doc in docs:
        got = scope.rule_hits(categories, subject="", text=doc, sender="x@pec.examplenet.it")
        assert [(h.category, h.what) for h in got] == reference_hits(
            categories, "", doc, "x@pec.examplenet.it"
        ), repr(doc)


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        (r"\bwebmail\.examplenet\.it\b", "webmail.examplenet.it"),
        (r"\b(vorrei|chiedo) (un |il )?preventivo\b", "preventivo"),
        (r"Price List", "price list"),
        (r"ab|cd", ""),  # a top-level branch: no literal is certain
        (r"abcd?", "abc"),  # an optional letter is not part of it
        (r"ab", ""),  # too short to be worth it
        (r"(?x) a b c d", "abcd"),
        (r"caffè", "caff"),  # non-ASCII letters end the run: their case folding is subtler
        (r"è.è", ""),
        (r"[", ""),  # does not compile: no prefilter
    ],
)
def test_needle_is_a_literal_every_match_contains(pattern: str, needle: str) -> None:
    assert scope._needle(pattern) == needle


# -- tokens ---------------------------------------------------------------------------------


def test_short_base32_mac_is_the_prefix_of_the_full_one() -> None:
    rnd = random.Random(3)
    for _ in range(3000):
        secret = rnd.randbytes(rnd.randint(1, 40))
        message = "".join(chr(rnd.randrange(32, 0x2000)) for _ in range(rnd.randint(0, 30)))
        length = rnd.randint(0, 56)
        digest = hmac.new(secret, message.encode(), hashlib.sha256).digest()
        full = base64.b32encode(digest).decode().lower()[:length]
        assert tokens._mac(secret, message, length) == full


# -- store ----------------------------------------------------------------------------------


def _counted(store: Store) -> dict[str, int]:
    marks = ",".join("?" * len(OPEN_STATES))
    return dict(
        store.db.execute(
            f"SELECT owner, COUNT(*) FROM cases WHERE state IN ({marks}) "
            "AND owner IS NOT NULL GROUP BY owner",
            list(OPEN_STATES),
        ).fetchall()
    )


def test_open_counts_equal_a_group_by(tmp_path: Path) -> None:
    """The trigger-kept counts agree with counting, through inserts, reassignments, state
    changes (one column, both, neither) and deletes."""
    store = Store(tmp_path / "mailcare.db")
    rnd = random.Random(2)
    owners = [None, "", "a@x.it", "b@x.it", "z@x.it"]
    states = ["new", "open", "waiting", "closed", "redirected", "routed"]
    with store.batch():
        for number in range(1000, 3000):
            store.db.execute(
                "INSERT INTO cases(number, owner, state, created_at) VALUES(?, ?, ?, 0)",
                [number, rnd.choice(owners), rnd.choice(states)],
            )
    assert store.open_counts() == _counted(store)
    for _ in range(5):
        with store.batch():
            for _ in range(400):
                number = rnd.randrange(1000, 3000)
                change = rnd.choice(["owner", "state", "both", "same", "delete"])
                if change == "delete":
                    store.db.execute("DELETE FROM cases WHERE number = ?", [number])
                elif change == "same":
                    store.db.execute("UPDATE cases SET state = state WHERE number = ?", [number])
                else:
                    store.db.execute(
                        "UPDATE cases SET owner = ?, state = ? WHERE number = ?",
                        [
                            rnd.choice(owners) if change != "state" else "a@x.it",
                            rnd.choice(states) if change != "owner" else "open",
                            number,
                        ],
                    )
        assert store.open_counts() == {k: v for k, v in _counted(store).items() if v}
    store.close()


def test_owner_load_is_filled_from_existing_cases(tmp_path: Path) -> None:
    """A database from before the counts existed gets them from its cases on upgrade."""
    path = tmp_path / "mailcare.db"
    store = Store(path)
    with store.batch():
        for number, (owner, state) in enumerate(
            [("a@x.it", "open"), ("a@x.it", "closed"), ("b@x.it", "waiting"), (None, "new")]
        ):
            store.db.execute(
                "INSERT INTO cases(number, owner, state, created_at) VALUES(?, ?, ?, 0)",
                [number + 1, owner, state],
            )
        store.db.execute("DROP TABLE owner_load")
        for name in ("insert", "delete", "leave", "join"):
            store.db.execute(f"DROP TRIGGER owner_load_{name}")
        store.db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm004_owner_load'")
    store.close()
    store = Store(path)
    assert store.open_counts() == {"a@x.it": 1, "b@x.it": 1}
    store.close()


def test_due_outbox_equals_the_full_query(tmp_path: Path) -> None:
    """Oldest first, one per case, rows waiting for a retry skipped, sent ones ignored."""
    store = Store(tmp_path / "mailcare.db")
    rnd = random.Random(4)
    with store.batch():
        for index in range(3000):
            store.db.execute(
                "INSERT INTO outbox(case_number, kind, message_id, envelope_from, recipients, "
                "data, status, next_at, created_at) VALUES(?, 'ack', ?, '', '[]', x'00', ?, ?, 0)",
                [
                    rnd.choice([None, *range(200)]),
                    f"m{index}",
                    rnd.choice(["pending", "pending", "sent", "failed"]),
                    rnd.choice([0.0, 0.0, 50.0]),
                ],
            )
    full = (
        "SELECT o.id FROM outbox o WHERE o.status = 'pending' AND o.next_at <= ? AND NOT EXISTS ("
        "  SELECT 1 FROM outbox e WHERE e.status = 'pending' AND e.id < o.id "
        "  AND e.case_number IS o.case_number AND o.case_number IS NOT NULL) "
        "ORDER BY o.id LIMIT ?"
    )
    for now, limit in ((10.0, 100), (100.0, 100), (100.0, 5000)):
        expected = [row[0] for row in store.db.execute(full, [now, limit])]
        assert [row.id for row in store.due_outbox(now, limit)] == expected
    store.close()


# -- the daemon's parse workers -----------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    kind: str
    text: str


class EchoScope:
    """A stand-in scope model: its decision says what it was asked."""

    def decide(self, *, subject: str, text: str, sender: str = "") -> Verdict:
        return Verdict("in", f"{subject}|{len(text)}|{sender}")


def fetched_mail() -> list[Fetched]:
    first = customer_mail(sender="a@example.org", subject="Fibra lenta", message_id="<a@x>")
    mails = [
        first,
        reply_to(first, "a@example.org", "Ancora lenta."),
        customer_mail(sender="giulia@examplenet.it", subject="nota interna"),
        customer_mail(sender="b@example.org", subject="[EX #1042] aggiornamento"),
        b"not a mail at all",
        *(customer_mail(sender=f"c{n}@example.org", subject=f"Guasto {n}") for n in range(12)),
    ]
    items = [Fetched(uid, len(raw), raw) for uid, raw in enumerate(mails, start=1)]
    items.append(Fetched(99, 30_000_000, None, b"From: big@example.org\r\nSubject: Foto\r\n"))
    return items


def test_parse_workers_give_what_the_daemon_would_parse(tmp_path: Path) -> None:
    text = config_text("127.0.0.1", 1, "u", "p", "127.0.0.1", 2, tmp_path / "state")
    path = tmp_path / "mailcare.toml"
    path.write_text(text, encoding="utf-8")
    settings = config_mod.load(path)
    from mailcare import pipeline

    engine = pipeline.Engine.load(settings, train=False)
    engine.scope = EchoScope()
    items = fetched_mail()
    pool = daemon_mod.ParsePool(1, engine)
    try:
        results = pool.parse(settings, items, engine)()
        stale = pool.parse(settings, items, pipeline.Engine.load(settings, train=False))()
    finally:
        pool.close()
    local = [daemon_mod.parse_fetched(settings, item) for item in items]
    assert [mail for mail, _ in results] == local
    assert local[-1].defects[-1].startswith("too large")
    foreseen = {mail.sender.addr: verdict for mail, verdict in results if verdict is not None}
    # Only mails that look like a new case from a customer (not the reply, the agent's
    # note, the tagged mail or the one without a sender), with the model's own answer.
    customers = ["a@example.org", "big@example.org", *(f"c{n}@example.org" for n in range(12))]
    assert sorted(foreseen) == sorted(customers)
    assert foreseen["a@example.org"] == Verdict(
        "in", f"Fibra lenta|{len(local[0].new_text)}|a@example.org"
    )
    assert all(verdict is None for _, verdict in stale)  # another engine: nothing foreseen


def test_foreseen_decisions_are_used_and_others_asked(tmp_path: Path) -> None:
    made = daemon_mod._Foreseen(EchoScope(), {("s", "t", "a@x"): Verdict("out", "made")})
    assert made.decide(subject="s", text="t", sender="a@x") == Verdict("out", "made")
    assert made.decide(subject="s", text="u", sender="a@x") == Verdict("in", "s|1|a@x")


def test_a_broken_pool_falls_back_to_parsing_in_the_daemon(tmp_path: Path) -> None:
    text = config_text("127.0.0.1", 1, "u", "p", "127.0.0.1", 2, tmp_path / "state")
    path = tmp_path / "mailcare.toml"
    path.write_text(text, encoding="utf-8")
    settings = config_mod.load(path)
    from mailcare import pipeline

    engine = pipeline.Engine.load(settings, train=False)
    items = fetched_mail()
    pool = daemon_mod.ParsePool(1, engine)
    try:
        executor = pool._executor
        assert executor is not None
        for process in list(executor._processes.values()):  # type: ignore[attr-defined]
            process.kill()
            process.join()
        results = pool.parse(settings, items, engine)()
    finally:
        pool.close()
    assert [mail for mail, _ in results] == [
        daemon_mod.parse_fetched(settings, item) for item in items
    ]
    assert pool._executor is None


def test_outbox_pending_index_exists(tmp_path: Path) -> None:
    Store(tmp_path / "mailcare.db").close()
    conn = sqlite3.connect(tmp_path / "mailcare.db")
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'outbox_pending'").fetchone()
    conn.close()
    assert sql is not None and "status = 'pending'" in json.dumps(sql[0])
