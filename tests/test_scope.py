"""Scope: rules, the abstain band, in-wins, the shipped examples, the cache and evaluation."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mailcare import config, training
from mailcare.config import ConfigError, ScopeCategory
from mailcare.evaluate import cli_eval, cli_train, evaluate, format_report, kinds_for
from mailcare.scope import (
    MODEL_TEXT_CHARS,
    Decision,
    Example,
    ScopeModel,
    append_example,
    cache_key,
    document,
    fold,
    kind_map_for,
    load_examples,
    rule_decision,
)
from mailcare.scope_cache import load_or_train

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIERS = ROOT / "classifiers"
HELDOUT = CLASSIFIERS / "heldout" / "test.jsonl"
EXAMPLE_TOML = ROOT / "mailcare.toml"
EMPTY: tuple[np.ndarray, np.ndarray] = (np.zeros(0, dtype=np.intp), np.zeros(0))


@pytest.fixture(scope="module")
def scope_section() -> config.ScopeSection:
    return config.load(EXAMPLE_TOML).scope


@pytest.fixture(scope="module")
def model(scope_section: config.ScopeSection) -> ScopeModel:
    """The shipped model, trained once for the whole file (a few seconds)."""
    return ScopeModel.train(
        load_examples(CLASSIFIERS),
        dict(scope_section.categories),
        threshold=scope_section.threshold,
        margin=scope_section.margin,
    )


@pytest.fixture(scope="module")
def heldout() -> dict[str, Example]:
    return {example.subject: example for example in load_examples(HELDOUT)}


def out_category(**rules: object) -> ScopeCategory:
    text = {"it": {"reason": "non nostro", "where": "altrove"}}
    return ScopeCategory.model_validate({"kind": "out", "text": text, **rules})


def in_category(**rules: object) -> ScopeCategory:
    return ScopeCategory.model_validate({"kind": "in", **rules})


# --------------------------------------------------------------------------- rules


def test_keyword_rule_wins_and_is_explained() -> None:
    categories = {"connectivity": in_category(), "device": out_category(keywords=("stampante",))}
    decision = rule_decision(
        categories, subject="Aiuto", text="La STAMPANTE è ferma da ieri", sender="a@b.it"
    )
    assert decision == Decision("out", "device", 1.0, "rule: keyword 'stampante' (device)", "")


def test_rule_wins_over_the_model(model: ScopeModel) -> None:
    """A confident model answer does not overrule a certain rule."""
    categories = {**model.categories, "hosting": in_category(keywords=("fibra spenta",))}
    ruled = ScopeModel(model.tables, model.kinds, categories, model.threshold, model.margin)
    decision = ruled.decide(subject="fibra spenta", text="La spia della fibra è rossa da ieri.")
    assert (decision.kind, decision.category) == ("in", "hosting")
    assert decision.reason == "rule: keyword 'fibra spenta' (hosting)"


def test_keywords_ignore_case_and_accents_but_need_whole_words() -> None:
    categories = {"billing": in_category(keywords=("perché addebito",), queue="money")}
    hit = rule_decision(categories, subject="", text="PERCHE'  ADDEBITO doppio?", sender="")
    assert hit is not None and hit.queue == "money"
    assert rule_decision(categories, subject="", text="perchéaddebito", sender="") is None
    pec = {"hosting": in_category(keywords=("pec",))}
    assert rule_decision(pec, subject="", text="un caso specifico", sender="") is None


def test_regex_and_sender_rules() -> None:
    categories = {
        "hosting": in_category(regex=(r"@pec\.examplenet\.it\b",)),
        "sales": ScopeCategory(kind="route", address="sales@x.it", senders=("partner.it",)),
        "vip": in_category(senders=("boss@firm.it",)),
    }
    hit = rule_decision(categories, subject="", text="scrivo da a@pec.examplenet.it", sender="")
    assert hit is not None and hit.category == "hosting" and "regex" in hit.reason
    sub = rule_decision(categories, subject="x", text="y", sender="Anna@Mail.Partner.IT")
    assert sub is not None and (sub.kind, sub.category) == ("route", "sales")
    assert rule_decision(categories, subject="x", text="y", sender="notpartner.it@x.com") is None
    assert rule_decision(categories, subject="x", text="y", sender="other@firm.it") is None


def test_rules_of_two_categories_are_not_certain() -> None:
    categories = {
        "device": out_category(keywords=("stampante",)),
        "router": in_category(keywords=("ExampleBox",)),
    }
    text = "La stampante di rete non si collega più all'ExampleBox"
    assert rule_decision(categories, subject="", text=text, sender="") is None


def test_config_rejects_a_regex_that_does_not_compile() -> None:
    with pytest.raises(ConfigError, match=r"regex '\(' does not compile"):
        config.from_mapping({"scope": {"categories": {"x": {"kind": "in", "regex": ["("]}}}})


# --------------------------------------------------------------------------- decision band


def test_unsure_band(model: ScopeModel) -> None:
    proba = np.full(len(model.classes), 1 / len(model.classes))
    leaning = model.decide_proba(proba, {"in": 0.5, "out": 0.45, "route": 0.05}, EMPTY)
    assert leaning.kind == "unsure" and leaning.queue == ""
    assert leaning.reason.startswith("model: unsure (in 0.50, out 0.45, route 0.05)")
    assert model.decide_proba(proba, {"in": 0.97, "out": 0.02, "route": 0.01}, EMPTY).kind == "in"


def test_in_wins_over_out(model: ScopeModel) -> None:
    """Out needs the threshold AND a margin over in; the in-categories are summed."""
    proba = np.array([0.09 if model.kinds[c] == "in" else 0.0 for c in model.classes])
    proba[model.classes.index("device")] = 0.4  # the single strongest category is "not ours"
    summed = model.decide_proba(proba, {"in": 0.6, "out": 0.4, "route": 0.0}, EMPTY)
    assert summed.kind == "in" and summed.category != "device"
    close = {"in": 0.3, "out": 0.68, "route": 0.02}  # out clears 0.6 but beats in by < margin
    assert model.decide_proba(proba, close, EMPTY).kind == "unsure"
    clear = {"in": 0.1, "out": 0.9, "route": 0.0}
    assert model.decide_proba(proba, clear, EMPTY) == Decision(
        "out", "device", 0.9, "model: p=0.90; device 0.40", ""
    )


def test_a_short_mail_is_never_sent_away(model: ScopeModel) -> None:
    proba = np.array([1.0 if c == "device" else 0.0 for c in model.classes])
    groups = {"in": 0.02, "out": 0.98, "route": 0.0}
    short = model.decide_proba(proba, groups, EMPTY, words=model.min_words - 1)
    assert short.kind == "unsure" and short.category == "device"
    assert short.reason.endswith(f"too short to send away ({model.min_words - 1} words)")
    assert model.decide_proba(proba, groups, EMPTY, words=model.min_words).kind == "out"
    vague = model.decide(subject="Help", text="It stopped working, can you help?")
    assert vague.kind in ("in", "unsure")


def test_empty_mail_is_unsure_without_leaning(model: ScopeModel) -> None:
    assert model.decide(subject=" ", text="\n") == Decision(
        "unsure", "", 0.0, "model: empty mail", ""
    )


# --------------------------------------------------------------------------- shipped model


@pytest.mark.parametrize(
    ("subject", "kind", "category"),
    [
        ("Stampante offline", "out", "device"),
        ("Printer not printing", "out", "device"),
        ("Fibra KO", "in", "connectivity"),
        ("Broadband unusable in the evenings", "in", "connectivity"),
        ("Power cut in the whole block", "out", "building"),
        ("Offerta fibra casa nuova", "route", "sales"),
        ("Problema", "unsure", "connectivity"),  # "I have a problem, can you help?"
    ],
)
def test_heldout_mails_get_sensible_decisions(
    model: ScopeModel, heldout: dict[str, Example], subject: str, kind: str, category: str
) -> None:
    mail = heldout[subject]
    decision = model.decide(subject=mail.subject, text=mail.body)
    assert (decision.kind, decision.category) == (kind, category), decision.reason


def test_model_reason_names_probability_and_terms(model: ScopeModel) -> None:
    text = "Da stamattina la fibra non va: la spia della fibra sul modem è rossa e non navigo."
    decision = model.decide(subject="Fibra KO", text=text)
    assert decision.kind == "in" and decision.queue == "network"
    assert decision.reason.startswith(f"model: p={decision.confidence:.2f}; connectivity ")
    terms = decision.reason.partition("terms: ")[2].split(", ")
    assert len(terms) == 3 and all(term in fold(text) for term in terms)


def test_numpy_prediction_equals_scikit_learn(scope_section: config.ScopeSection) -> None:
    examples = load_examples(CLASSIFIERS)
    kinds = kind_map_for(examples, dict(scope_section.categories), None)
    fitted = training.fit(examples, kinds)
    model = ScopeModel(training.tables(fitted), kinds, dict(scope_section.categories))
    docs = [document(e.subject, e.body) for e in load_examples(HELDOUT)[:40]]
    matrix = fitted.features.transform(docs)
    reference = fitted.by_category.predict_proba(matrix)
    assert np.abs(model.predict_proba(docs) - reference).max() < 1e-9
    by_kind = fitted.by_kind
    assert by_kind is not None
    kinds = by_kind.predict_proba(matrix)
    for doc, row in zip(docs, kinds, strict=True):
        direct = dict(zip(by_kind.classes, row, strict=True))
        proba, groups = model.probabilities(doc)
        category_sum = proba[[model.kinds[c] == "in" for c in model.classes]].sum()
        assert groups["in"] == pytest.approx((category_sum + direct["in"]) / 2, abs=1e-9)


def test_shipped_examples_and_config_are_complete(scope_section: config.ScopeSection) -> None:
    examples = load_examples(CLASSIFIERS)
    assert len(examples) >= 600
    assert {e.category for e in examples} == set(scope_section.categories)
    italian = sum(e.lang == "it" for e in examples) / len(examples)
    assert 0.55 <= italian <= 0.75
    for name, category in scope_section.categories.items():
        if category.kind == "out":
            assert {"it", "en"} <= category.text.keys(), name
            assert all(t.reason and t.where and t.tell for t in category.text.values()), name
    assert scope_section.categories["sales"].address == "commerciale@examplenet.it"
    held = {e.document for e in load_examples(HELDOUT)}
    assert not held & {e.document for e in examples}, "held-out mail leaked into training"


# --------------------------------------------------------------------------- examples files


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"subject": "s", "body": "b"}', "missing 'category'"),
        ('{"subject": 3, "body": "b", "category": "x"}', "'subject' must be a string"),
        ('{"subject": " ", "body": "", "category": "x"}', "needs 'subject' and 'body'"),
    ],
)
def test_a_bad_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    good = '{"subject": "ok", "body": "ok", "category": "x"}'
    path = write_lines(tmp_path / "cases.jsonl", [good, "", line])
    with pytest.raises(ValueError, match=rf"cases\.jsonl:3: {message}"):
        load_examples(path)


def test_folder_loads_top_level_files_and_accepts_text(tmp_path: Path) -> None:
    write_lines(tmp_path / "a.jsonl", ['{"text": "solo testo", "category": "x", "lang": "it"}'])
    write_lines(tmp_path / "b.jsonl", ['{"subject": "s", "body": "b", "category": "y"}'])
    (tmp_path / "heldout").mkdir()
    write_lines(tmp_path / "heldout" / "t.jsonl", ['{"text": "t", "category": "z"}'])
    (tmp_path / "notes.txt").write_text("not examples")
    assert load_examples(tmp_path) == [
        Example("", "solo testo", "x", "it"),
        Example("s", "b", "y", ""),
    ]


def test_append_example_keeps_jsonl_valid(tmp_path: Path) -> None:
    path = tmp_path / "classifiers" / "corrections.jsonl"
    append_example(path, Example("Stampante", "Non stampa più", "device", "it"))
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"text": "senza a capo", "category": "x"}')  # an admin's hand edit
    append_example(path, Example("Fibra", "Linea morta «urgente»", "connectivity"))
    loaded = load_examples(path)
    assert [e.category for e in loaded] == ["device", "x", "connectivity"]
    assert "«urgente»" in path.read_text(encoding="utf-8")
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0])["lang"] == "it"


def test_fold_is_case_and_accent_insensitive() -> None:
    assert fold("PERCHÉ Città") == fold("perche citta") == "perche citta"


# --------------------------------------------------------------------------- cache

BAKERY = {
    "cakes": ["torta al cioccolato", "chocolate cake order", "torta di compleanno", "cake"],
    "bread": ["pane integrale", "sourdough loaf", "baguette fresca", "pane"],
    "plumbing": ["il lavandino perde", "leaking pipe", "tubo rotto in cucina", "drain"],
}


def bakery_examples(rounds: int = 2) -> list[Example]:
    """A tiny labelled set that has nothing to do with ExampleNet."""
    return [
        Example(f"{text} {n}", f"{text}, richiesta numero {n}", label)
        for n in range(rounds)
        for label, texts in BAKERY.items()
        for text in texts
    ]


def bakery_section(folder: Path) -> config.ScopeSection:
    plumbing = {"kind": "out", "text": {"it": {"reason": "r", "where": "w"}}}
    settings = config.from_mapping(
        {
            "scope": {
                "examples_dir": str(folder),
                "threshold": 0.5,
                "categories": {
                    "cakes": {"kind": "in"},
                    "bread": {"kind": "in"},
                    "plumbing": plumbing,
                },
            }
        }
    )
    return settings.scope


def test_cache_is_reused_by_content_hash(tmp_path: Path) -> None:
    examples_dir, state = tmp_path / "classifiers", tmp_path / "state"
    examples_dir.mkdir()
    path = examples_dir / "all.jsonl"
    write_lines(path, [json.dumps(e.__dict__) for e in bakery_examples()])
    section = bakery_section(examples_dir)

    first = load_or_train(section, state)
    cached = list(state.glob("scope-*.npz"))
    assert first.origin == "trained" and len(cached) == 1
    key = cache_key(load_examples(examples_dir), dict(section.categories))
    assert cached[0].name == f"scope-{key}.npz"

    second = load_or_train(section.model_copy(update={"threshold": 0.7}), state)
    assert second.origin == "cache" and second.threshold == 0.7
    query = {"subject": "torta", "text": "vorrei una torta al cioccolato"}
    assert second.decide(**query).category == first.decide(**query).category == "cakes"

    append_example(path, Example("pane", "pane di segale", "bread"))
    third = load_or_train(section, state)
    assert third.origin == "trained"
    assert list(state.glob("scope-*.npz")) != cached and len(list(state.glob("*.npz"))) == 1


def test_damaged_cache_is_retrained(tmp_path: Path) -> None:
    examples_dir, state = tmp_path / "classifiers", tmp_path / "state"
    examples_dir.mkdir()
    write_lines(examples_dir / "a.jsonl", [json.dumps(e.__dict__) for e in bakery_examples()])
    section = bakery_section(examples_dir)
    load_or_train(section, state)
    (cached,) = state.glob("scope-*.npz")
    cached.write_bytes(b"not a model")
    assert load_or_train(section, state).origin == "trained"
    assert load_or_train(section, state).origin == "cache"


def test_cache_holds_arrays_only(tmp_path: Path) -> None:
    """The cache is read with allow_pickle=False: an object array (which would need
    pickle, and could run code) makes it unreadable, so the model is trained again."""
    examples_dir, state = tmp_path / "classifiers", tmp_path / "state"
    examples_dir.mkdir()
    write_lines(examples_dir / "a.jsonl", [json.dumps(e.__dict__) for e in bakery_examples()])
    section = bakery_section(examples_dir)
    load_or_train(section, state)
    (cached,) = state.glob("scope-*.npz")
    with np.load(cached, allow_pickle=False) as data:
        arrays = dict(data.items())
    assert all(array.dtype != object for array in arrays.values())
    arrays["classes"] = np.array(["bread", "cakes", "plumbing"], dtype=object)
    with cached.open("wb") as out:
        np.savez(out, **arrays)
    assert load_or_train(section, state).origin == "trained"


def test_training_apart_keeps_scikit_learn_out_of_the_process(tmp_path: Path) -> None:
    """What the daemon does: train in a child, load the arrays; a fresh interpreter that
    trains apart and decides has never imported scikit-learn."""
    examples_dir, state = tmp_path / "classifiers", tmp_path / "state"
    examples_dir.mkdir()
    write_lines(examples_dir / "a.jsonl", [json.dumps(e.__dict__) for e in bakery_examples()])
    section = bakery_section(examples_dir).model_dump_json()
    script = f"""
import sys
from pathlib import Path
from mailcare.config import ScopeSection
from mailcare.scope_cache import load_or_train
section = ScopeSection.model_validate_json({section!r})
model = load_or_train(section, Path({str(state)!r}), apart=True)
decision = model.decide(subject="torta", text="vorrei una torta al cioccolato")
print(model.origin, decision.category, "sklearn" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["trained", "cakes", "False"]


def test_training_apart_reports_bad_examples(tmp_path: Path) -> None:
    examples_dir, state = tmp_path / "classifiers", tmp_path / "state"
    examples_dir.mkdir()
    lone = [e for e in bakery_examples() if e.category != "bread"][:-1]
    lone.append(Example("pane", "pane di segale", "bread"))
    write_lines(examples_dir / "a.jsonl", [json.dumps(e.__dict__) for e in lone])
    with pytest.raises(ValueError, match="fewer than 2 examples: bread"):
        load_or_train(bakery_section(examples_dir), state, apart=True)


# --------------------------------------------------------------------------- evaluation


def test_evaluate_on_a_foreign_dataset() -> None:
    train, test = bakery_examples(3), bakery_examples(1)
    report = evaluate(train, test, out_categories={"plumbing"}, threshold=0.5, margin=0.2)
    assert report["kinds"] == {"bread": "in", "cakes": "in", "plumbing": "out"}
    assert set(report["per_category"]) == {"bread", "cakes", "plumbing"}
    for key in ("wrong_redirect_rate", "out_of_scope_recall", "unsure_rate"):
        assert 0.0 <= report[key] <= 1.0
    assert report["ms_per_mail"] > 0
    assert sum(sum(row.values()) for row in report["confusion"].values()) == len(test)
    assert report["support"] == {"in": 8, "out": 4, "route": 0}
    json.dumps(report)  # the CLI prints it with --json
    text = format_report(report)
    assert "wrong redirect rate" in text and "plumbing" in text


def test_kinds_for_rejects_a_category_listed_twice() -> None:
    assert kinds_for({"a", "b"}, out_categories={"b"}) == {"a": "in", "b": "out"}
    with pytest.raises(ValueError, match="two kinds: b"):
        kinds_for({"a", "b"}, out_categories={"b"}, route_categories={"b"})


def test_cli_train_and_eval(tmp_path: Path) -> None:
    examples_dir = tmp_path / "classifiers"
    examples_dir.mkdir()
    write_lines(examples_dir / "a.jsonl", [json.dumps(e.__dict__) for e in bakery_examples(3)])
    test_file = write_lines(
        tmp_path / "test.jsonl", [json.dumps(e.__dict__) for e in bakery_examples(1)]
    )
    settings = config.from_mapping(
        {
            "mailcare": {"state_dir": str(tmp_path / "state")},
            "scope": {"examples_dir": str(examples_dir)},
        }
    )
    summary = cli_train(settings)
    assert summary.startswith("scope model trained") and "36 examples" in summary
    assert cli_train(settings).startswith("scope model loaded from cache")
    report = cli_eval(settings, None, test_file, {"plumbing"})
    assert report["kinds"]["plumbing"] == "out" and report["rules"] is False
    assert report["test"] == 12


def test_scope_core_stays_pure() -> None:
    """scope.py may read its examples and cache, but never talks to the network or the DB."""
    tree = ast.parse((ROOT / "mailcare" / "scope.py").read_text(encoding="utf-8"))
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    roots = {name.split(".")[0] for name in imported}
    assert not roots & {"sqlite_utils", "imapclient", "aiosmtplib", "asyncio", "socket", "time"}


def test_model_reads_the_top_of_a_long_mail_rules_read_all(model: ScopeModel) -> None:
    """A pasted log under the complaint changes neither the decision nor its reason; a
    rule's keyword far down still counts."""
    text = "Da stamattina la fibra non va: la spia della fibra sul modem è rossa e non navigo."
    top = text + "\n" + "ping 192.0.2.1: timeout\n" * ((MODEL_TEXT_CHARS - len(text)) // 24)
    log = top + "traceroute hop 7 * * * stampante lavatrice frigorifero\n" * 300
    head = log[:MODEL_TEXT_CHARS]
    assert model.decide(subject="Fibra KO", text=log) == model.decide(subject="Fibra KO", text=head)
    assert model.decide(subject="Fibra KO", text=log).kind == "in"
    categories = {"device": out_category(keywords=("stampante",))}
    hit = rule_decision(categories, subject="", text=top + "\nla stampante", sender="")
    assert hit is not None and hit.category == "device"
