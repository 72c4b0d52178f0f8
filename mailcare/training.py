"""Fitting the scope model with scikit-learn, and handing the result over as plain arrays.

Training needs scikit-learn; deciding does not. `fit` learns TF-IDF features and two
calibrated linear SVMs, `tables` reads off what prediction uses (vocabularies, idf,
weights, sigmoids) as a `scope.Tables`. Only this module and `evaluate` import
scikit-learn, so a daemon that loads a cached model never does, and one that has to train
can do it in a child process (`train_into`, see `scope_cache`) and keep its own memory small.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import FeatureUnion
from sklearn.svm import LinearSVC

from mailcare.scope import (
    CHAR_GRAMS,
    TOKEN_PATTERN,
    WORD_GRAMS,
    Example,
    Linear,
    Tables,
    normalise,
    normalize,
)
from mailcare.scope_cache import write_tables


def build_features() -> FeatureUnion:
    """Word 1-2-grams for meaning, character 2-5-grams (within words) for inflections,
    compounds, typos and the other language."""
    words = TfidfVectorizer(
        preprocessor=normalize,
        analyzer="word",
        token_pattern=TOKEN_PATTERN,
        ngram_range=WORD_GRAMS,
        sublinear_tf=True,
    )
    chars = TfidfVectorizer(
        preprocessor=normalize,
        analyzer="char_wb",
        ngram_range=CHAR_GRAMS,
        sublinear_tf=True,
        min_df=2,
    )
    return FeatureUnion([("words", words), ("chars", chars)])


@dataclass
class Calibrated:
    """A linear SVM and, per score column, the sigmoid that turns scores into probabilities.

    The sigmoids are fitted on cross-validated SVM scores (Platt's method, one class against
    the rest, then normalised, as scikit-learn's CalibratedClassifierCV does), so the
    probabilities reflect mail the SVM had not seen.
    """

    svm: LinearSVC
    sigmoids: list[LogisticRegression]

    @property
    def classes(self) -> list[str]:
        return [str(label) for label in self.svm.classes_]

    def predict_proba(self, matrix: Any) -> np.ndarray:
        """Probabilities through scikit-learn itself (the reference for `scope.Linear`)."""
        scores = _scores_2d(self.svm.decision_function(matrix))
        columns = [s.predict_proba(scores[:, [k]])[:, 1] for k, s in enumerate(self.sigmoids)]
        return normalise(np.stack(columns, axis=1))


def _scores_2d(scores: np.ndarray) -> np.ndarray:
    """SVM scores as (n, k): a two-class SVM returns one column, flattened."""
    return scores.reshape(-1, 1) if scores.ndim == 1 else scores


# Platt scaling is unregularised in principle; a large C keeps it so and stays stable.
_SIGMOID_C = 1e4


def fit_calibrated(matrix: Any, labels: Sequence[str]) -> Calibrated:
    """Fit the SVM, and one sigmoid per score column on out-of-fold scores."""
    counts = Counter(labels)
    thin = sorted(label for label, n in counts.items() if n < 2)
    if thin:
        raise ValueError(f"categories with fewer than 2 examples: {', '.join(thin)}")
    folds = StratifiedKFold(n_splits=min(5, *counts.values()), shuffle=True, random_state=0)
    svm = LinearSVC(C=0.5, class_weight="balanced", random_state=0)
    held_out = cross_val_predict(svm, matrix, labels, cv=folds, method="decision_function")
    scores = _scores_2d(held_out)
    svm.fit(matrix, labels)
    classes = list(svm.classes_)
    positives = classes[1:] if scores.shape[1] == 1 else classes
    truth = np.asarray(labels)
    sigmoids = [
        LogisticRegression(C=_SIGMOID_C).fit(scores[:, [k]], (truth == label).astype(int))
        for k, label in enumerate(positives)
    ]
    return Calibrated(svm, sigmoids)


@dataclass
class Fitted:
    """The trained scikit-learn parts.

    Two classifiers share one feature space: one names the category, one judges only the
    kind (in/out/route). Their kind probabilities are averaged: the kind classifier sees
    every "ours" mail as one class, so it is steadier where a category is thin, and two
    different views rarely make the same confident mistake.
    """

    features: FeatureUnion
    by_category: Calibrated
    by_kind: Calibrated | None  # None when the data holds a single kind

    @property
    def classes(self) -> list[str]:
        return self.by_category.classes


def fit(examples: Sequence[Example], kinds: Mapping[str, str]) -> Fitted:
    """Fit features and both classifiers; every category needs two examples to calibrate."""
    if not examples:
        raise ValueError("no scope examples to train on")
    labels = [example.category for example in examples]
    if len(set(labels)) < 2:
        raise ValueError("scope needs examples of at least two categories")
    features = build_features()
    matrix = features.fit_transform([example.document for example in examples])
    by_category = fit_calibrated(matrix, labels)
    kind_labels = [kinds.get(label, "in") for label in labels]
    by_kind = fit_calibrated(matrix, kind_labels) if len(set(kind_labels)) > 1 else None
    return Fitted(features, by_category, by_kind)


def _linear(model: Calibrated) -> Linear:
    return Linear(
        np.ascontiguousarray(np.asarray(model.svm.coef_).T),
        np.asarray(model.svm.intercept_, dtype=float),
        np.array([float(s.coef_[0, 0]) for s in model.sigmoids]),
        np.array([float(s.intercept_[0]) for s in model.sigmoids]),
    )


def _terms(vectorizer: TfidfVectorizer) -> list[str]:
    """A vectorizer's vocabulary as a list indexed by column."""
    terms = [""] * len(vectorizer.vocabulary_)
    for term, column in vectorizer.vocabulary_.items():
        terms[int(column)] = str(term)
    return terms


def tables(fitted: Fitted) -> Tables:
    """What prediction needs from a fit, as plain arrays."""
    words = fitted.features.transformer_list[0][1]
    chars = fitted.features.transformer_list[1][1]
    return Tables(
        classes=fitted.classes,
        words=_terms(words),
        word_idf=np.asarray(words.idf_, dtype=float),
        chars=_terms(chars),
        char_idf=np.asarray(chars.idf_, dtype=float),
        by_category=_linear(fitted.by_category),
        by_kind=_linear(fitted.by_kind) if fitted.by_kind is not None else None,
        kind_classes=fitted.by_kind.classes if fitted.by_kind is not None else [],
    )


def train(examples: Sequence[Example], kinds: Mapping[str, str]) -> Tables:
    """Fit, and keep only what deciding needs (the scikit-learn objects are dropped)."""
    return tables(fit(examples, kinds))


def train_into(path: Path, examples: Sequence[Example], kinds: Mapping[str, str]) -> None:
    """Train and write the tables to `path`: what a child process runs for the daemon."""
    write_tables(path, train(examples, kinds))
