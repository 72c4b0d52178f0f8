"""The scope model on disk: a cache of trained `Tables` keyed by content, and training
apart from the daemon.

`scope` decides from plain arrays; this module finds them (or has them made) for a config.
The cache is `cache_dir/scope-<sha256>.npz`: arrays only, read without pickle, so a planted
file can at worst make a bad model, never run code. Training imports scikit-learn, so the
daemon has it done in a child process and reads the result like any cache hit.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from mailcare.config import ScopeSection
from mailcare.scope import (
    Example,
    Linear,
    ScopeModel,
    Tables,
    cache_key,
    kind_map_for,
    load_examples,
)

CACHE_PREFIX = "scope-"
CACHE_SUFFIX = ".npz"


def load_or_train(
    section: ScopeSection,
    cache_dir: Path,
    corrections: Path | None = None,
    *,
    apart: bool = False,
) -> ScopeModel:
    """The model for this config: from `cache_dir` when the content hash matches, else trained.

    `corrections` is the JSONL file owners' `#scope` corrections are appended to (in the
    writable state folder, since the examples folder may be read-only under systemd).
    The cache is `cache_dir/scope-<sha256>.npz`: arrays only, read without pickle, so a
    planted file can at worst make a bad model, never run code; a damaged one is replaced.
    With `apart`, training runs in a child process (the daemon's choice): scikit-learn and
    its ~100 MB never enter the long-running process.
    """
    examples = load_examples(section.examples_dir)
    if corrections is not None and corrections.is_file():
        examples += load_examples(corrections)
    categories = dict(section.categories)
    kinds = kind_map_for(examples, categories, None)
    key = cache_key(examples, categories)
    path = cache_dir / f"{CACHE_PREFIX}{key}{CACHE_SUFFIX}"
    tables = read_tables(path)
    origin = "cache"
    if tables is None:
        origin = "trained"
        tables = (
            _train_apart(path, examples, kinds) if apart else _train_here(path, examples, kinds)
        )
    model = ScopeModel(
        tables, kinds, categories, section.threshold, section.margin, section.min_words
    )
    model.examples, model.origin = len(examples), origin
    model.warm_up()
    return model


def _train_here(path: Path, examples: Sequence[Example], kinds: Mapping[str, str]) -> Tables:
    from mailcare.training import train

    tables = train(examples, kinds)
    write_tables(path, tables)
    return tables


def _train_apart(path: Path, examples: Sequence[Example], kinds: Mapping[str, str]) -> Tables:
    """Train in a fresh interpreter that writes the cache, then read it like any cache hit.
    A training error (too few examples...) comes back raised as it was."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as child:
        child.submit(_train_in_child, path, list(examples), dict(kinds)).result()
    tables = read_tables(path)
    if tables is None:
        raise ValueError(f"{path}: the trained model could not be read back")
    return tables


def _train_in_child(path: Path, examples: list[Example], kinds: dict[str, str]) -> None:
    """Runs in the child: the only place `_train_apart` imports scikit-learn."""
    from mailcare.training import train_into

    train_into(path, examples, kinds)


def _linear_arrays(prefix: str, linear: Linear) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_weights": linear.weights,
        f"{prefix}_intercept": linear.intercept,
        f"{prefix}_slope": linear.slope,
        f"{prefix}_offset": linear.offset,
    }


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=np.str_)


def write_tables(path: Path, tables: Tables) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a model; older
    cache files go once the new one is in place."""
    arrays = {
        "classes": _strings(tables.classes),
        "words": _strings(tables.words),
        "word_idf": tables.word_idf,
        "chars": _strings(tables.chars),
        "char_idf": tables.char_idf,
        "kind_classes": _strings(tables.kind_classes),
        **_linear_arrays("category", tables.by_category),
    }
    if tables.by_kind is not None:
        arrays.update(_linear_arrays("kind", tables.by_kind))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".scope-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, allow_pickle=False, **arrays)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    for old in path.parent.glob(f"{CACHE_PREFIX}*{CACHE_SUFFIX}"):
        if old != path:
            old.unlink(missing_ok=True)


def read_tables(path: Path) -> Tables | None:
    """The cached model, or None when there is none or it does not hold together."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            tables = _tables_from(dict(data.items()))
    except Exception:  # truncated, foreign or inconsistent: retrain rather than stop
        return None
    return tables if _consistent(tables) else None


def _tables_from(data: dict[str, np.ndarray]) -> Tables:
    def linear(prefix: str) -> Linear | None:
        if f"{prefix}_weights" not in data:
            return None
        return Linear(
            np.ascontiguousarray(data[f"{prefix}_weights"], dtype=float),
            data[f"{prefix}_intercept"].astype(float),
            data[f"{prefix}_slope"].astype(float),
            data[f"{prefix}_offset"].astype(float),
        )

    by_category = linear("category")
    if by_category is None:
        raise ValueError("no category weights")
    return Tables(
        classes=[str(c) for c in data["classes"].tolist()],
        words=[str(w) for w in data["words"].tolist()],
        word_idf=data["word_idf"].astype(float),
        chars=[str(c) for c in data["chars"].tolist()],
        char_idf=data["char_idf"].astype(float),
        by_category=by_category,
        by_kind=linear("kind"),
        kind_classes=[str(c) for c in data["kind_classes"].tolist()],
    )


def _consistent(tables: Tables) -> bool:
    features = len(tables.words) + len(tables.chars)
    shapes_ok = len(tables.word_idf) == len(tables.words) and len(tables.char_idf) == len(
        tables.chars
    )
    linears = [(tables.by_category, len(tables.classes))]
    if tables.by_kind is not None:
        linears.append((tables.by_kind, len(tables.kind_classes)))
    for linear, classes in linears:
        columns = 1 if classes == 2 else classes
        if linear.weights.shape != (features, columns) or len(linear.slope) != columns:
            return False
    return shapes_ok and len(tables.classes) >= 2
