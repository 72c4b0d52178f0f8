"""Is a new case ours? Rules first, then a text model, with an abstain band.

A wrong "not ours" costs a customer while a wrong "ours" costs an agent a minute, so the
decision is lopsided on purpose: a rule hit is certain (admins write only rules they would
sign), the model must clear `threshold` to decide at all, the in-categories' probabilities
are summed before they are compared (five small "ours" beat one middling "not ours"), and
"not ours" or "route" must also beat "ours" by `margin`, in a mail of at least `min_words`.
Everything else is `unsure` and a person looks.

The model is trained in seconds by scikit-learn (`training.py`) from the JSONL examples in
`classifiers/`: word 1-2-grams and character 2-5-grams (so Italian inflections, English and
typos all land on shared features) feeding two linear SVMs, one per category and one per
kind, whose scores are calibrated into probabilities on cross-validated scores. Here it is
only applied, from plain arrays (`Tables`) with numpy; `scope_cache` keeps them on disk.
Only the bottom of the module (`load_examples`, `append_example`) touches files; the rest
works on plain strings.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import itertools
import json
import os
import re
import re._constants as re_constants
import re._parser as re_parser
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mailcare.config import ScopeCategory

# Bump when the features, the estimator or the decision inputs change: it is part of the
# cache key, so an upgraded daemon never loads a model an older one cached.
MODEL_VERSION = "2"

KINDS = ("in", "out", "route")
DEFAULT_THRESHOLD = 0.75
DEFAULT_MARGIN = 0.4
# "Can you help? It doesn't work any more" says nothing about whose problem it is, yet its
# phrasing can look like a foreign one. Below this many words nobody is sent away.
DEFAULT_MIN_WORDS = 12
_WORDS = re.compile(r"\w+")
# The model reads the subject and this much of the new text: people say what is wrong at
# the top, and what a long mail adds below (pasted logs, ping output, invoice lists) only
# costs time (it is most of the text of a long mail) and dilutes the words that matter.
# The rules read the whole text.
MODEL_TEXT_CHARS = 2000
# How many model terms a reason names; enough for an agent to see why, short for a log line.
REASON_TERMS = 3


@dataclass(frozen=True)
class Example:
    """One labelled mail: the unit of training, of corrections and of evaluation."""

    subject: str
    body: str
    category: str
    lang: str = ""

    @property
    def document(self) -> str:
        return document(self.subject, self.body[:MODEL_TEXT_CHARS])


@dataclass(frozen=True)
class Decision:
    """What scope says about a case, with enough reason for an agent to overrule it."""

    kind: str  # "in" | "out" | "route" | "unsure"
    category: str  # best category ("" when unsure with no leaning)
    confidence: float  # 0..1
    reason: str  # "rule: keyword 'stampante' (device)" / "model: p=0.93; terms: fibra, linea"
    queue: str  # for in: the category's queue (or the category name); else ""


def document(subject: str, text: str) -> str:
    """The string the model sees: the subject carries as much signal as a short body."""
    return f"{subject.strip()}\n{text.strip()}".strip()


# Combining marks left by NFKD decomposition (Latin accents and their extended blocks).
_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")


def fold(text: str) -> str:
    """Case- and accent-insensitive form: customers write `perche`, `perché` and `PERCHE'`."""
    if text.isascii():
        return text.lower()
    return _COMBINING.sub("", unicodedata.normalize("NFKD", text.casefold()))


_DIGITS = re.compile(r"\d+")


def normalize(text: str) -> str:
    """Model preprocessing: folded, and every number the same token.

    Customer codes, invoice numbers and dates say nothing about scope but would otherwise
    become thousands of one-off features.
    """
    return _DIGITS.sub("0", fold(text))


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class RuleHit:
    category: str
    what: str  # "keyword 'stampante'", "regex '...'", "sender 'x@y'"


def _phrase(keyword: str) -> str:
    """A whole-word, whole-phrase pattern: `pec` must not fire inside `specifico`; any spacing or
    punctuation may separate the words (`perche' addebito`)."""
    words = [re.escape(word) for word in fold(keyword).split()]
    return r"(?<!\w)" + r"\W+".join(words) + r"(?!\w)"


@functools.lru_cache(maxsize=256)
def _keyword_words(keywords: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each keyword with the folded words its phrase pattern matches literally."""
    return tuple((kw, tuple(fold(kw).split())) for kw in keywords if kw.strip())


def _keyword_hits(keywords: tuple[str, ...], folded: str) -> list[str]:
    """Only keywords whose every word occurs in the text can match, and a substring test
    costs a fraction of a regex scan (the lookbehind defeats the engine's literal search),
    so the phrase patterns run only for those."""
    candidates = [kw for kw, words in _keyword_words(keywords) if all(w in folded for w in words)]
    return [kw for kw in candidates if re.search(_phrase(kw), folded)]


# The only characters that match an ASCII literal under re.IGNORECASE other than its own
# two cases (dotted and dotless i, long s, Kelvin sign). Text holding one is searched
# without the literal prefilter.
_NEEDLE_UNSAFE = ("\u0130", "\u0131", "\u017f", "\u212a")


@functools.lru_cache(maxsize=256)
def _needle(pattern: str) -> str:
    """The longest run of ASCII literals every match of `pattern` must contain, lower-cased
    ("" when none is known). An admin's regex searched case-insensitively over a long mail
    costs about a millisecond, while `needle in text` costs microseconds, so a mail without
    the needle skips the search. Only top-level literals count: they are in every match."""
    try:
        items = list(re_parser.parse(pattern, re.IGNORECASE))
    except Exception:  # anything unexpected: no prefilter, the regex decides alone
        return ""
    best = run = ""
    for op, arg in items:
        if op is re_constants.LITERAL and 32 <= arg < 127:
            run += chr(arg)
            best = max(best, run, key=len)
        else:
            run = ""
    return best.lower() if len(best) >= 3 else ""


def _sender_matches(rule: str, sender: str) -> bool:
    """`a@b.it` matches that address; `b.it` or `@b.it` match the domain and its subdomains."""
    rule = rule.strip().lower()
    if "@" in rule and not rule.startswith("@"):
        return sender == rule
    domain = rule.lstrip("@")
    sender_domain = sender.rpartition("@")[2]
    return bool(domain) and (sender_domain == domain or sender_domain.endswith("." + domain))


def _category_hits(
    name: str, category: ScopeCategory, folded: str, raw: str, sender: str
) -> list[RuleHit]:
    hits = [RuleHit(name, f"keyword '{kw}'") for kw in _keyword_hits(category.keywords, folded)]
    lowered = ""
    if category.regex and not any(c in raw or c in folded for c in _NEEDLE_UNSAFE):
        lowered = f"{raw.lower()}\n{folded}"
    hits += [
        RuleHit(name, f"regex '{rx}'")
        for rx in category.regex
        if (not lowered or _needle(rx) in lowered)
        and (re.search(rx, raw, re.IGNORECASE) or re.search(rx, folded, re.IGNORECASE))
    ]
    hits += [
        RuleHit(name, f"sender '{rule}'")
        for rule in category.senders
        if sender and _sender_matches(rule, sender)
    ]
    return hits


def rule_hits(
    categories: Mapping[str, ScopeCategory], *, subject: str, text: str, sender: str
) -> list[RuleHit]:
    """Every rule of every category that matches, in config order."""
    raw = document(subject, text)
    folded = fold(raw)
    address = sender.strip().lower()
    hits: list[RuleHit] = []
    for name, category in categories.items():
        hits += _category_hits(name, category, folded, raw, address)
    return hits


def rule_decision(
    categories: Mapping[str, ScopeCategory], *, subject: str, text: str, sender: str
) -> Decision | None:
    """The certain decision when the rules agree on one category; None otherwise.

    Rules of two categories firing together ("the printer works, the fibre does not") are
    not certain any more, so the model decides that mail.
    """
    hits = rule_hits(categories, subject=subject, text=text, sender=sender)
    names = {hit.category for hit in hits}
    if len(names) != 1:
        return None
    name = names.pop()
    kind = categories[name].kind
    return Decision(
        kind=kind,
        category=name,
        confidence=1.0,
        reason=f"rule: {hits[0].what} ({name})",
        queue=_queue(name, categories[name]) if kind == "in" else "",
    )


def _queue(name: str, category: ScopeCategory | None) -> str:
    return (category.queue if category is not None else "") or name


# --------------------------------------------------------------------------- model


def normalise(p: np.ndarray) -> np.ndarray:
    """One-vs-rest probabilities to a distribution; one column means two classes."""
    if p.shape[1] == 1:
        return np.hstack([1.0 - p, p])
    total = p.sum(axis=1, keepdims=True)
    return np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / p.shape[1])


# The features `training.build_features` fits: word 1-2-grams for meaning, character
# 2-5-grams within words for inflections, compounds, typos and the other language.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
WORD_GRAMS = (1, 2)
CHAR_GRAMS = (2, 5)


# Prediction runs once per new case; scikit-learn's per-call input checks cost ~10 ms each
# on a small server, and importing it costs ~100 MB, so the fitted parameters (vocabulary,
# idf, weights, sigmoids) are applied with numpy. tests/test_scope.py checks the result
# equals scikit-learn's.


# A document as the union's sparse row: column indices and their tf-idf values.
Vector = tuple[np.ndarray, np.ndarray]


# Words whose n-gram columns a `_CharGrams` keeps: enough for the vocabulary of a support
# inbox (about 5 MB), small enough that odd tokens (hashes, log noise) cannot grow it.
WORD_CACHE = 1 << 14


class _CharGrams:
    """Column counts of a fitted `char_wb` vectorizer, equal to counting its analyzer's output.

    scikit-learn makes every n-gram of every word occurrence a new string, about fifteen
    per word, which was most of a new case's CPU time. An n-gram never crosses a word, so
    the columns of one word's n-grams are found once (mails repeat their words, and share
    most of them) and each occurrence only adds its count."""

    def __init__(self, vocabulary: dict[str, int], ngram_range: tuple[int, int]) -> None:
        self.vocabulary = vocabulary
        self.low, self.high = ngram_range
        self.columns = functools.lru_cache(maxsize=WORD_CACHE)(self._columns)

    def _columns(self, word: str) -> tuple[int, ...]:
        """The vocabulary columns of ` word `'s n-grams, repeats included, in the analyzer's
        order (by length, then offset; a word no longer than n gives one n-gram, the last)."""
        padded = f" {word} "
        found: list[int] = []
        for n in range(self.low, self.high + 1):
            last = max(len(padded) - n, 0)
            for start in range(last + 1):
                column = self.vocabulary.get(padded[start : start + n])
                if column is not None:
                    found.append(column)
            if last == 0:
                break
        return tuple(found)

    def __call__(self, normalized: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        for word, times in Counter(normalized.split()).items():
            for column in self.columns(word):
                counts[column] = counts.get(column, 0) + times
        return counts


class _WordGrams:
    """Column counts of a fitted `word` vectorizer with 1- or 1-2-grams: bigrams are
    counted as pairs and joined into strings once per distinct pair."""

    def __init__(self, vocabulary: dict[str, int], token_pattern: str, bigrams: bool) -> None:
        self.vocabulary = vocabulary
        self.tokens = re.compile(token_pattern).findall
        self.bigrams = bigrams

    def __call__(self, normalized: str) -> dict[int, int]:
        tokens: list[str] = self.tokens(normalized)
        counts: dict[int, int] = {}
        for token, times in Counter(tokens).items():
            if (column := self.vocabulary.get(token)) is not None:
                counts[column] = times
        if self.bigrams:
            for (first, second), times in Counter(itertools.pairwise(tokens)).items():
                if (column := self.vocabulary.get(f"{first} {second}")) is not None:
                    counts[column] = times
        return counts


@dataclass
class _Block:
    """One TF-IDF block of the feature union: its counter and the columns it owns."""

    count: Callable[[str], dict[int, int]]
    idf: np.ndarray
    offset: int

    def encode(self, normalized: str) -> Vector:
        counts = self.count(normalized)
        if not counts:
            return np.zeros(0, dtype=np.intp), np.zeros(0)
        index = np.fromiter(counts, dtype=np.intp, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=float, count=len(counts))
        values = (1.0 + np.log(tf)) * self.idf[index]  # sublinear tf
        return index + self.offset, values / np.linalg.norm(values)


@dataclass
class Linear:
    """SVM weights (features x k, for row lookups) and each column's sigmoid."""

    weights: np.ndarray
    intercept: np.ndarray
    slope: np.ndarray
    offset: np.ndarray

    def proba(self, index: np.ndarray, values: np.ndarray) -> np.ndarray:
        scores = values @ self.weights[index] + self.intercept
        p = 1.0 / (1.0 + np.exp(-(self.slope * scores + self.offset)))
        return np.asarray(normalise(p.reshape(1, -1))[0])


@dataclass
class Tables:
    """A trained model as plain arrays: everything prediction needs and all the cache holds.

    `training.tables` makes one from a scikit-learn fit; deciding needs only numpy."""

    classes: list[str]
    words: list[str]  # word n-gram terms, by column
    word_idf: np.ndarray
    chars: list[str]  # character n-gram terms, by column after the words
    char_idf: np.ndarray
    by_category: Linear
    by_kind: Linear | None  # None when the data holds a single kind
    kind_classes: list[str]


def word_counter(vocabulary: dict[str, int]) -> Callable[[str], dict[int, int]]:
    """Column counts for the word block `training.build_features` fits."""
    return _WordGrams(vocabulary, TOKEN_PATTERN, WORD_GRAMS[1] == 2)


def char_counter(vocabulary: dict[str, int]) -> Callable[[str], dict[int, int]]:
    """Column counts for the character block `training.build_features` fits."""
    return _CharGrams(vocabulary, CHAR_GRAMS)


class _Predictor:
    """Counting and lookup structures built once per loaded model."""

    def __init__(self, tables: Tables) -> None:
        words = {term: column for column, term in enumerate(tables.words)}
        chars = {term: column for column, term in enumerate(tables.chars)}
        self.blocks = [
            _Block(word_counter(words), tables.word_idf, 0),
            _Block(char_counter(chars), tables.char_idf, len(tables.words)),
        ]
        self.by_category = tables.by_category
        self.by_kind = tables.by_kind
        self.kind_classes = tables.kind_classes
        self.words = tables.words

    def encode(self, doc: str) -> Vector:
        normalized = normalize(doc)  # once for both blocks
        parts = [block.encode(normalized) for block in self.blocks]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@dataclass
class ScopeModel:
    """A trained model plus the config that turns its probabilities into decisions."""

    tables: Tables
    kinds: dict[str, str]
    categories: dict[str, ScopeCategory] = field(default_factory=dict)
    threshold: float = DEFAULT_THRESHOLD
    margin: float = DEFAULT_MARGIN
    min_words: int = DEFAULT_MIN_WORDS
    examples: int = 0
    origin: str = "trained"  # or "cache": which path load_or_train took
    _predictor: _Predictor | None = field(default=None, init=False, repr=False)

    @classmethod
    def train(
        cls,
        examples: Sequence[Example],
        categories: Mapping[str, ScopeCategory] | None,
        *,
        kinds: Mapping[str, str] | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        margin: float = DEFAULT_MARGIN,
        min_words: int = DEFAULT_MIN_WORDS,
    ) -> ScopeModel:
        """Fit on the examples; `kinds` names in/out/route when there are no categories.

        Without categories or kinds every label counts as "in", the safe reading.
        """
        from mailcare.training import train  # scikit-learn is imported only to train

        known = dict(categories or {})
        kind_map = kind_map_for(examples, known, kinds)
        tables = train(examples, kind_map)
        return cls(tables, kind_map, known, threshold, margin, min_words, len(examples))

    @property
    def classes(self) -> list[str]:
        return self.tables.classes

    @property
    def predictor(self) -> _Predictor:
        if self._predictor is None:
            self._predictor = _Predictor(self.tables)
        return self._predictor

    def warm_up(self) -> None:
        """Build the lookup structures now (the daemon does this at start, not on a mail)."""
        _ = self.predictor

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Per-category probabilities, columns in `classes` order."""
        return np.array([self.probabilities(text)[0] for text in texts])

    def probabilities(self, doc: str) -> tuple[np.ndarray, dict[str, float]]:
        """Category probabilities and the {in, out, route} probabilities for one document."""
        return self._probabilities(self.predictor.encode(doc))

    def _probabilities(self, vector: Vector) -> tuple[np.ndarray, dict[str, float]]:
        """The kind probabilities average the category model's sums per kind with the kind
        model's own answer."""
        predictor = self.predictor
        proba = predictor.by_category.proba(*vector)
        groups = {kind: float(proba[self._kind_mask(kind)].sum()) for kind in KINDS}
        if predictor.by_kind is not None:
            kind_proba = predictor.by_kind.proba(*vector)
            direct = dict(zip(predictor.kind_classes, kind_proba, strict=True))
            groups = {k: (groups[k] + float(direct.get(k, 0.0))) / 2 for k in KINDS}
        return proba, groups

    def _kind_mask(self, kind: str) -> np.ndarray:
        return np.array([self.kinds.get(label, "in") == kind for label in self.classes])

    def decide(self, *, subject: str, text: str, sender: str = "") -> Decision:
        """Rules first, then the model with the threshold, the margin and in-wins."""
        ruled = rule_decision(self.categories, subject=subject, text=text, sender=sender)
        if ruled is not None:
            return ruled
        doc = document(subject, text[:MODEL_TEXT_CHARS])
        if not fold(doc).strip():
            return Decision("unsure", "", 0.0, "model: empty mail", "")
        vector = self.predictor.encode(doc)
        proba, groups = self._probabilities(vector)
        return self.decide_proba(proba, groups, vector, words=len(_WORDS.findall(doc)))

    def decide_proba(
        self,
        proba: np.ndarray,
        groups: Mapping[str, float],
        vector: Vector,
        *,
        words: int = DEFAULT_MIN_WORDS,
    ) -> Decision:
        """The decision for one mail's probabilities and length; `vector` feeds the reason."""
        kind = self._kind(groups, words >= self.min_words)
        category, p_category = self._best(proba, None if kind == "unsure" else kind)
        terms = self._terms(vector, category) if category else []
        reason = _model_reason(kind, groups, category, p_category, terms)
        if kind == "unsure" and words < self.min_words and self._kind(groups, True) != "unsure":
            reason += f"; too short to send away ({words} words)"
        if kind == "unsure":
            return Decision("unsure", category, round(max(groups.values()), 4), reason, "")
        queue = _queue(category, self.categories.get(category)) if kind == "in" else ""
        return Decision(kind, category, round(groups[kind], 4), reason, queue)

    def _kind(self, groups: Mapping[str, float], long_enough: bool) -> str:
        """In wins ties and doubt: out/route need the threshold, a margin over in, and a mail
        long enough to say what it is about."""
        if groups["in"] >= self.threshold:
            return "in"
        if not long_enough:
            return "unsure"
        for kind in ("out", "route"):
            p = groups[kind]
            if p >= self.threshold and p - groups["in"] >= self.margin:
                return kind
        return "unsure"

    def _best(self, proba: np.ndarray, kind: str | None) -> tuple[str, float]:
        pairs = [
            (float(p), label)
            for label, p in zip(self.classes, proba, strict=True)
            if kind is None or self.kinds.get(label, "in") == kind
        ]
        if not pairs:
            return "", 0.0
        p, label = max(pairs)
        return label, p

    def terms(self, doc: str, category: str, limit: int = REASON_TERMS) -> list[str]:
        """The words in `doc` that pushed hardest toward `category` (reasons, not n-grams)."""
        return self._terms(self.predictor.encode(doc), category, limit)

    def _terms(self, vector: Vector, category: str, limit: int = REASON_TERMS) -> list[str]:
        if category not in self.classes:
            return []
        predictor = self.predictor
        index, values = vector
        words = index < len(predictor.words)  # the word block comes first in the union
        index, values = index[words], values[words]
        scores = values * self._weights(category)[index]
        order = np.argsort(-scores)[:limit]
        return [predictor.words[index[i]] for i in order if scores[i] > 0]

    def _weights(self, category: str) -> np.ndarray:
        """The SVM weights toward a category (a two-class SVM has one column, for classes[1])."""
        weights = self.predictor.by_category.weights
        position = self.classes.index(category)
        if weights.shape[1] == 1:
            return weights[:, 0] if position == 1 else -weights[:, 0]
        return weights[:, position]


def _model_reason(
    kind: str, groups: Mapping[str, float], category: str, p: float, terms: Sequence[str]
) -> str:
    if kind == "unsure":
        shares = ", ".join(f"{k} {groups[k]:.2f}" for k in KINDS if groups[k] >= 0.005)
        parts = [f"model: unsure ({shares})"]
        if category:
            parts.append(f"leaning {category} {p:.2f}")
    else:
        parts = [f"model: p={groups[kind]:.2f}", f"{category} {p:.2f}"]
    if terms:
        parts.append("terms: " + ", ".join(terms))
    return "; ".join(parts)


def kind_map_for(
    examples: Sequence[Example],
    categories: Mapping[str, ScopeCategory],
    kinds: Mapping[str, str] | None,
) -> dict[str, str]:
    """in/out/route for every label: config first, then `kinds`, and "in" for the rest."""
    mapping: dict[str, str] = {name: category.kind for name, category in categories.items()}
    mapping.update(kinds or {})
    labels = sorted({example.category for example in examples})
    if categories:
        unknown = [label for label in labels if label not in categories]
        if unknown:
            raise ValueError(f"examples use categories missing from [scope]: {', '.join(unknown)}")
    bad = sorted(name for name, kind in mapping.items() if kind not in KINDS)
    if bad:
        raise ValueError(f"unknown kind for {', '.join(bad)}: use in, out or route")
    return {label: mapping.get(label, "in") for label in labels} | mapping


# --------------------------------------------------------------------------- examples


def parse_example(line: str, where: str) -> Example:
    """One JSONL line: `subject`/`body` (or `text`), `category`, optional `lang`."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object")
    for key in ("subject", "body", "text", "category", "lang"):
        if key in data and not isinstance(data[key], str):
            raise ValueError(f"{where}: '{key}' must be a string")
    category = str(data.get("category", "")).strip()
    if not category:
        raise ValueError(f"{where}: missing 'category'")
    body = str(data.get("body", data.get("text", "")))
    subject = str(data.get("subject", ""))
    if not (subject.strip() or body.strip()):
        raise ValueError(f"{where}: needs 'subject' and 'body' (or 'text')")
    return Example(subject, body, category, str(data.get("lang", "")))


def parse_examples(lines: Iterable[str], source: str) -> list[Example]:
    """Parse JSONL text; blank lines are allowed, a bad line names `source:line`."""
    return [
        parse_example(line, f"{source}:{number}")
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]


def example_line(example: Example) -> str:
    """The JSONL form of an example (UTF-8 kept readable for admins)."""
    data = {"subject": example.subject, "body": example.body, "category": example.category}
    if example.lang:
        data["lang"] = example.lang
    return json.dumps(data, ensure_ascii=False)


def cache_key(examples: Sequence[Example], categories: Mapping[str, ScopeCategory]) -> str:
    """sha256 over examples, category config and code versions: a new value retrains."""
    digest = hashlib.sha256()
    trainer = importlib.metadata.version("scikit-learn")
    digest.update(f"mailcare-scope {MODEL_VERSION} scikit-learn {trainer}\n".encode())
    config = {name: category.model_dump(mode="json") for name, category in categories.items()}
    digest.update(json.dumps(config, sort_keys=True).encode())
    for example in examples:
        digest.update(example_line(example).encode() + b"\n")
    return digest.hexdigest()


# =========================================================================== file I/O
# Everything below reads or writes files; the daemon calls it at start and on SIGHUP.


def load_examples(folder_or_file: Path) -> list[Example]:
    """Examples from one JSONL file, or from every top-level *.jsonl of a folder.

    Subfolders (like `heldout/`) are not read, so test data never leaks into training.
    """
    paths = sorted(folder_or_file.glob("*.jsonl")) if folder_or_file.is_dir() else [folder_or_file]
    examples: list[Example] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read ({exc})") from exc
        examples += parse_examples(text.splitlines(), str(path))
    return examples


def append_example(path: Path, example: Example) -> None:
    """Add one example (an owner's `#scope` correction) so the next training learns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    needs_newline = path.exists() and path.stat().st_size > 0 and not _ends_with_newline(path)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(("\n" if needs_newline else "") + example_line(example) + "\n")


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"
