"""How good is the scope model? Figures an admin can trust before changing examples or config.

The numbers that matter are lopsided like the decision itself: `wrong_redirect_rate` (our
customers told "not ours" or sent to another team: the costly mistake), `out_of_scope_recall`
(foreign problems recognised, the work saved) and `unsure_rate` (mail a person must sort).
Everything works on any labelled JSONL; category names come from the data, and which of
them mean "not ours" comes from the config or from `out_categories`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from sklearn.model_selection import StratifiedKFold

from mailcare.config import ScopeCategory, Settings
from mailcare.scope import (
    DEFAULT_MARGIN,
    DEFAULT_MIN_WORDS,
    DEFAULT_THRESHOLD,
    Decision,
    Example,
    ScopeModel,
    cache_key,
    load_examples,
)
from mailcare.scope_cache import load_or_train

UNSURE = "unsure"
# Mistakes listed in a report: enough to see a pattern, short enough to read.
SHOWN_MISTAKES = 15


def kinds_for(
    labels: Collection[str],
    *,
    out_categories: Collection[str],
    in_categories: Collection[str] | None = None,
    route_categories: Collection[str] | None = None,
) -> dict[str, str]:
    """in/out/route per label; a label named nowhere counts as "in" (the cautious reading)."""
    routes = set(route_categories or ())
    outs = set(out_categories)
    clash = outs & routes | (outs | routes) & set(in_categories or ())
    if clash:
        raise ValueError(f"categories listed under two kinds: {', '.join(sorted(clash))}")
    kinds = {label: "in" for label in labels}
    kinds.update(dict.fromkeys(outs, "out"))
    kinds.update(dict.fromkeys(routes, "route"))
    return kinds


def decide_all(model: ScopeModel, test: Sequence[Example]) -> tuple[list[Decision], float]:
    """Decide each mail alone, as the daemon does, and the mean milliseconds per mail."""
    decisions = []
    model.warm_up()  # building the numpy predictor is start-up work, not per-mail work
    started = time.perf_counter()
    for example in test:
        decisions.append(model.decide(subject=example.subject, text=example.body))
    elapsed = time.perf_counter() - started
    return decisions, 1000.0 * elapsed / max(len(test), 1)


def evaluate(
    train: Sequence[Example],
    test: Sequence[Example],
    *,
    out_categories: Collection[str],
    in_categories: Collection[str] | None = None,
    route_categories: Collection[str] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    margin: float = DEFAULT_MARGIN,
    min_words: int = DEFAULT_MIN_WORDS,
    categories: Mapping[str, ScopeCategory] | None = None,
) -> dict[str, Any]:
    """Train on `train`, decide every mail of `test`, return the figures (see `score`).

    `categories` adds the config's rules, so the figures are those the daemon would reach.
    """
    labels = {example.category for example in [*train, *test]}
    kinds = kinds_for(
        labels,
        out_categories=out_categories,
        in_categories=in_categories,
        route_categories=route_categories,
    )
    model = ScopeModel.train(
        train, categories, kinds=kinds, threshold=threshold, margin=margin, min_words=min_words
    )
    decisions, ms = decide_all(model, test)
    report = score(test, decisions, kinds)
    report.update(
        train=len(train),
        ms_per_mail=round(ms, 3),
        threshold=threshold,
        margin=margin,
        min_words=min_words,
    )
    return report


def cross_validate(
    examples: Sequence[Example],
    *,
    out_categories: Collection[str],
    in_categories: Collection[str] | None = None,
    route_categories: Collection[str] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    margin: float = DEFAULT_MARGIN,
    min_words: int = DEFAULT_MIN_WORDS,
    categories: Mapping[str, ScopeCategory] | None = None,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Stratified k-fold: every example is judged once by a model that never saw it."""
    kinds = kinds_for(
        {e.category for e in examples},
        out_categories=out_categories,
        in_categories=in_categories,
        route_categories=route_categories,
    )
    labels = [example.category for example in examples]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    ordered: list[Example] = []
    decisions: list[Decision] = []
    total_ms = 0.0
    for train_index, test_index in splitter.split(labels, labels):
        train = [examples[i] for i in train_index]
        test = [examples[i] for i in test_index]
        model = ScopeModel.train(
            train, categories, kinds=kinds, threshold=threshold, margin=margin, min_words=min_words
        )
        fold_decisions, ms = decide_all(model, test)
        ordered += test
        decisions += fold_decisions
        total_ms += ms * len(test)
    report = score(ordered, decisions, kinds)
    report.update(
        folds=folds,
        ms_per_mail=round(total_ms / max(len(ordered), 1), 3),
        threshold=threshold,
        margin=margin,
    )
    return report


def _rate(part: int, whole: int) -> float | None:
    """A fraction 0..1, or None when nothing was there to count."""
    return round(part / whole, 4) if whole else None


def score(
    test: Sequence[Example], decisions: Sequence[Decision], kinds: Mapping[str, str]
) -> dict[str, Any]:
    """The figures for decided mail: kind-level rates, per-category figures, confusion."""
    truth = [kinds.get(example.category, "in") for example in test]
    said = [decision.kind for decision in decisions]
    pairs = list(zip(truth, said, strict=True))
    ins = truth.count("in")
    outs = truth.count("out")
    routes = truth.count("route")
    return {
        "test": len(test),
        "wrong_redirect_rate": _rate(
            sum(t == "in" and s in ("out", "route") for t, s in pairs), ins
        ),
        "out_of_scope_recall": _rate(sum(t == s == "out" for t, s in pairs), outs),
        "unsure_rate": _rate(said.count(UNSURE), len(test)),
        "route_recall": _rate(sum(t == s == "route" for t, s in pairs), routes),
        "in_recall": _rate(sum(t == s == "in" for t, s in pairs), ins),
        "wrong_out_rate": _rate(sum(t != "out" and s == "out" for t, s in pairs), ins + routes),
        "category_accuracy": _category_accuracy(test, decisions),
        "rule_decisions": sum(d.reason.startswith("rule:") for d in decisions),
        "support": {"in": ins, "out": outs, "route": routes},
        "kinds": dict(sorted(kinds.items())),
        "per_category": per_category(test, decisions),
        "confusion": confusion(test, decisions),
        "mistakes": mistakes(test, decisions, kinds),
    }


def predicted_label(decision: Decision) -> str:
    return UNSURE if decision.kind == UNSURE else decision.category


def _category_accuracy(test: Sequence[Example], decisions: Sequence[Decision]) -> float | None:
    """Among decided mail, the share filed under the right category (queue and redirect text)."""
    decided = [(e, d) for e, d in zip(test, decisions, strict=True) if d.kind != UNSURE]
    return _rate(sum(e.category == d.category for e, d in decided), len(decided))


def per_category(
    test: Sequence[Example], decisions: Sequence[Decision]
) -> dict[str, dict[str, float | int | None]]:
    """Precision and recall per category; an unsure answer is a miss, never a false alarm."""
    truth = [example.category for example in test]
    said = [predicted_label(decision) for decision in decisions]
    result: dict[str, dict[str, float | int | None]] = {}
    for label in sorted(set(truth) | (set(said) - {UNSURE})):
        hits = sum(t == s == label for t, s in zip(truth, said, strict=True))
        result[label] = {
            "precision": _rate(hits, said.count(label)),
            "recall": _rate(hits, truth.count(label)),
            "support": truth.count(label),
        }
    return result


def confusion(test: Sequence[Example], decisions: Sequence[Decision]) -> dict[str, dict[str, int]]:
    """true category -> {answered category or "unsure": count}."""
    counts: dict[str, Counter[str]] = {}
    for example, decision in zip(test, decisions, strict=True):
        counts.setdefault(example.category, Counter())[predicted_label(decision)] += 1
    return {label: dict(sorted(row.items())) for label, row in sorted(counts.items())}


def mistakes(
    test: Sequence[Example], decisions: Sequence[Decision], kinds: Mapping[str, str]
) -> list[dict[str, str]]:
    """Wrong kinds first (the costly ones), as short records an admin can turn into examples."""
    wrong = [
        (example, decision)
        for example, decision in zip(test, decisions, strict=True)
        if decision.kind not in (UNSURE, kinds.get(example.category, "in"))
    ]
    wrong.sort(key=lambda pair: kinds.get(pair[0].category, "in") != "in")
    return [
        {
            "subject": example.subject[:80],
            "text": example.body[:120],
            "category": example.category,
            "decided": f"{decision.kind}/{decision.category}",
            "reason": decision.reason,
        }
        for example, decision in wrong[:SHOWN_MISTAKES]
    ]


# --------------------------------------------------------------------------- report


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_report(report: Mapping[str, Any]) -> str:
    """A plain-text report for `mailcare eval` and the bench."""
    support = report.get("support", {})
    lines = [
        f"mails: {report.get('test')} (in {support.get('in')}, out {support.get('out')}, "
        f"route {support.get('route')}); threshold {report.get('threshold')}, "
        f"margin {report.get('margin')}",
        f"wrong redirect rate   {_pct(report.get('wrong_redirect_rate'))}  (in answered out/route)",
        f"out-of-scope recall   {_pct(report.get('out_of_scope_recall'))}  (out answered out)",
        f"unsure rate           {_pct(report.get('unsure_rate'))}",
        f"route recall          {_pct(report.get('route_recall'))}",
        f"category accuracy     {_pct(report.get('category_accuracy'))}  (of decided mail)",
        f"rule decisions        {report.get('rule_decisions')}",
        f"ms per mail           {report.get('ms_per_mail')}",
        "",
        f"{'category':<18}{'kind':<7}{'precision':>10}{'recall':>9}{'support':>9}",
    ]
    kinds = report.get("kinds", {})
    for label, row in report.get("per_category", {}).items():
        lines.append(
            f"{label:<18}{kinds.get(label, '?'):<7}{_pct(row['precision']):>10}"
            f"{_pct(row['recall']):>9}{row['support']:>9}"
        )
    lines += ["", "confusion (true -> answered):"]
    for label, row in report.get("confusion", {}).items():
        lines.append(f"  {label:<16} " + ", ".join(f"{k} {v}" for k, v in row.items()))
    if report.get("mistakes"):
        lines += ["", "wrong kinds:"]
        for item in report["mistakes"]:
            lines.append(
                f"  [{item['category']} -> {item['decided']}] {item['subject']!r}: {item['reason']}"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI glue


def cli_train(settings: Settings) -> str:
    """`mailcare train`: train (or reuse the cache) and say what the daemon will use."""
    from .pipeline import corrections_file, model_dir

    section = settings.scope
    started = time.perf_counter()
    model = load_or_train(section, model_dir(settings), corrections_file(settings))
    seconds = time.perf_counter() - started
    examples = load_examples(section.examples_dir)
    key = cache_key(examples, dict(section.categories))
    source = "loaded from cache" if model.origin == "cache" else "trained"
    counts = Counter(example.category for example in examples)
    per = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
    return (
        f"scope model {source} in {seconds:.1f} s: {model.examples} examples from "
        f"{section.examples_dir} ({per}); cache {model_dir(settings) / f'scope-{key[:12]}….npz'}"
    )


def config_kinds(
    settings: Settings, labels: Collection[str], out_categories: Collection[str] | None
) -> dict[str, str]:
    """Kinds from [scope] categories, overridden by `--out-categories`; the rest are "in"."""
    configured: dict[str, str] = {n: c.kind for n, c in settings.scope.categories.items()}
    kinds = {label: configured.get(label, "in") for label in labels}
    for name in out_categories or ():
        kinds[name] = "out"
    return kinds


def cli_eval(
    settings: Settings,
    train_path: Path | None,
    test_path: Path,
    out_categories: Collection[str] | None,
) -> dict[str, Any]:
    """`mailcare eval`: train on the examples (or `train_path`), score `test_path`.

    The config's rules take part only when the data's categories are the configured ones;
    on a foreign dataset they would only add noise.
    """
    section = settings.scope
    train = load_examples(train_path or section.examples_dir)
    test = load_examples(test_path)
    labels = {e.category for e in [*train, *test]}
    kinds = config_kinds(settings, labels, out_categories)
    configured = dict(section.categories)
    use_rules = bool(configured) and {e.category for e in train} <= configured.keys()
    report = evaluate(
        train,
        test,
        out_categories={k for k, v in kinds.items() if v == "out"},
        route_categories={k for k, v in kinds.items() if v == "route"},
        threshold=section.threshold,
        margin=section.margin,
        min_words=section.min_words,
        categories=configured if use_rules else None,
    )
    report["rules"] = use_rules
    return report
