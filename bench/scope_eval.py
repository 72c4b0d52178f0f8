"""Scope figures on data the model has not seen: k-fold CV on the shipped examples and the
held-out file, with the config's rules, threshold and margin.

    .venv/bin/python bench/scope_eval.py            # text report
    .venv/bin/python bench/scope_eval.py --json     # machine-readable

Targets (from the product issue): wrong-redirect rate <= 1%, out-of-scope recall >= 85%,
unsure <= 15%, under 2 ms per mail.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailcare import config  # noqa: E402
from mailcare.evaluate import cross_validate, evaluate, format_report  # noqa: E402
from mailcare.scope import Example, ScopeModel, load_examples  # noqa: E402

TARGETS = {
    "wrong_redirect_rate": ("<=", 0.01),
    "out_of_scope_recall": (">=", 0.85),
    "unsure_rate": ("<=", 0.15),
    "ms_per_mail": ("<=", 2.0),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "mailcare.toml")
    parser.add_argument("--examples", type=Path, default=ROOT / "classifiers")
    parser.add_argument("--heldout", type=Path, default=ROOT / "classifiers/heldout/test.jsonl")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, help="override the config's threshold")
    parser.add_argument("--margin", type=float, help="override the config's margin")
    parser.add_argument("--no-rules", action="store_true", help="model only")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def single_mail_ms(model: ScopeModel, mails: list[Example], rounds: int = 3) -> float:
    """Latency of one `decide` call, best of a few rounds (the daemon decides one at a time)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for mail in mails:
            model.decide(subject=mail.subject, text=mail.body)
        best = min(best, (time.perf_counter() - started) / len(mails))
    return round(1000 * best, 3)


def verdicts(report: dict[str, Any]) -> dict[str, bool]:
    result = {}
    for key, (op, limit) in TARGETS.items():
        value = report.get(key)
        result[key] = value is not None and (value <= limit if op == "<=" else value >= limit)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    scope = config.load(args.config).scope
    threshold = args.threshold if args.threshold is not None else scope.threshold
    margin = args.margin if args.margin is not None else scope.margin
    categories = None if args.no_rules else dict(scope.categories)
    kinds = {name: c.kind for name, c in scope.categories.items()}
    common: dict[str, Any] = {
        "out_categories": {k for k, v in kinds.items() if v == "out"},
        "route_categories": {k for k, v in kinds.items() if v == "route"},
        "threshold": threshold,
        "margin": margin,
        "min_words": scope.min_words,
        "categories": categories,
    }
    examples = load_examples(args.examples)
    cv = cross_validate(examples, folds=args.folds, seed=args.seed, **common)
    heldout = load_examples(args.heldout)
    held = evaluate(examples, heldout, **common)
    model = ScopeModel.train(
        examples,
        categories,
        kinds=kinds,
        threshold=threshold,
        margin=margin,
        min_words=scope.min_words,
    )
    held["ms_per_mail"] = single_mail_ms(model, heldout)
    command = "bench/scope_eval.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return {"cross_validation": cv, "heldout": held, "command": command.strip()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    for name, title in (
        ("cross_validation", f"{args.folds}-fold stratified CV on the shipped examples"),
        ("heldout", "held-out file"),
    ):
        report = result[name]
        print(f"== {title}")
        print(format_report(report))
        marks = verdicts(report)
        print("targets: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in marks.items()))
        print()
    print(f"reproduce: .venv/bin/python {result['command']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
