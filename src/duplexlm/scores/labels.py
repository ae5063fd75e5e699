"""Evaluation metrics as pure NumPy functions: classification, entity spans, regression, language
modelling, and which direction of each one is better.

Every function returns plain Python numbers, lists and dicts, so a result goes straight into
``metrics.jsonl`` or a report. Nothing here imports torch or scikit-learn: the training loop hands
over label ids and predictions as lists or arrays, and the tests check each number against
scikit-learn, scipy and seqeval.

Distributed evaluation sums *counts*, never averages scores: each process builds its confusion
matrix (or entity counts), the matrices are summed (``all_reduce``), and the scores come from the
sum, which gives exactly what one process would have computed on all the predictions.

>>> m = classification_metrics([0, 1, 1, 2], [0, 1, 0, 2], ["neg", "pos", "mid"])
>>> m["accuracy"], round(m["macro_f1"], 4), m["confusion_matrix"]
(0.75, 0.7778, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
>>> is_better("macro_f1", 0.8, 0.75), is_better("loss", 2.1, 2.0)
(True, False)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, did_you_mean

# ----------------------------------------------------------------------------------------------------
# Small helpers


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den is 0 (scikit-learn's ``zero_division=0``)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _check_label_names(label_names: Sequence[str]) -> list[str]:
    names = list(label_names)
    if not names:
        raise ConfigError("label_names: expected at least one label name, found an empty list")
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ConfigError(f"label_names: expected strings, found {bad[0]!r} ({type(bad[0]).__name__})")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ConfigError(f"label_names: expected unique names, found {n!r} twice")
        seen.add(n)
    return names


def _class_ids(values: Sequence[int] | np.ndarray, what: str, num_labels: int) -> np.ndarray:
    """A 1-D int64 array of class ids in [0, num_labels); errors name the first bad position."""
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)  # np.asarray([]) is float64; an empty shard is allowed
    if arr.ndim != 1:
        raise DataError(f"{what}: expected a 1-D sequence of class ids, found shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{what}: expected integer class ids, found dtype {arr.dtype} "
                        f"(first value {arr.flat[0]!r})")
    arr = arr.astype(np.int64, copy=False)
    bad = np.flatnonzero((arr < 0) | (arr >= num_labels))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{what}[{i}] = {int(arr[i])}: expected a class id in 0..{num_labels - 1} "
                        f"({num_labels} labels)")
    return arr


def _prf(tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 from counts. F1 is 2·tp / (pred + true), which equals 2PR/(P+R)
    but needs no special case when P = R = 0."""
    return _safe_div(tp, pred), _safe_div(tp, true), _safe_div(2 * tp, pred + true)


def _averages(tp: np.ndarray, pred: np.ndarray, true: np.ndarray, prefix_micro: str) -> dict[str, float]:
    """Macro, weighted and micro precision/recall/F1 over the classes of ``tp``/``pred``/``true``."""
    p, r, f = _prf(tp, pred, true)
    out: dict[str, float] = {}
    n = len(tp)
    for name, values in (("precision", p), ("recall", r), ("f1", f)):
        out[f"macro_{name}"] = float(values.mean()) if n else 0.0
        weight = true.sum()
        out[f"weighted_{name}"] = float((values * true).sum() / weight) if weight else 0.0
    mp, mr, mf = _prf(tp.sum(), pred.sum(), true.sum())
    out[f"{prefix_micro}precision"] = float(mp)
    out[f"{prefix_micro}recall"] = float(mr)
    out[f"{prefix_micro}f1"] = float(mf)
    return out


# ----------------------------------------------------------------------------------------------------
# Classification


def confusion_counts(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                     num_labels: int) -> np.ndarray:
    """The ``num_labels × num_labels`` confusion matrix (int64; rows true, columns predicted).

    Empty inputs give a zero matrix, so a process that saw no examples can still take part in a sum.

    >>> confusion_counts([0, 1, 1], [0, 0, 1], 2).tolist()
    [[1, 0], [1, 1]]
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
        raise ConfigError(f"num_labels: expected a positive integer, found {num_labels!r}")
    k = int(num_labels)
    t = _class_ids(y_true, "y_true", k)
    p = _class_ids(y_pred, "y_pred", k)
    if t.shape != p.shape:
        raise DataError(f"y_true and y_pred: expected the same length, found {t.size} and {p.size}")
    # one bincount over the pair index is a single pass, fast even for millions of tokens
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def merge_confusion(matrices: Iterable[np.ndarray | Sequence[Sequence[int]]]) -> np.ndarray:
    """Sum confusion matrices from several processes or batches (all of one shape).

    >>> merge_confusion([[[1, 0], [0, 1]], [[0, 2], [1, 0]]]).tolist()
    [[1, 2], [1, 1]]
    """
    total: np.ndarray | None = None
    for i, m in enumerate(matrices):
        arr = np.asarray(m, dtype=np.int64)
        if total is None:
            total = arr.copy()
        elif arr.shape != total.shape:
            raise DataError(f"confusion matrix {i}: expected shape {total.shape} like the first, found {arr.shape}")
        else:
            total += arr
    if total is None:
        raise DataError("merge_confusion: expected at least one confusion matrix, found none")
    return total


def metrics_from_confusion(cm: np.ndarray | Sequence[Sequence[int]], label_names: Sequence[str]) -> dict[str, Any]:
    """Classification metrics from a confusion matrix (rows true, columns predicted).

    Returns ``accuracy``; ``macro_*``, ``micro_*`` and ``weighted_*`` precision, recall and F1
    (weighted by support); ``support`` (the number of examples); ``per_class``, a dict from label
    name to its ``precision``, ``recall``, ``f1`` and ``support``; ``confusion_matrix`` as a list of
    lists; and ``labels``. A class with no predictions gets precision 0, a class with no support
    recall 0, and F1 is 0 when both are 0 — scikit-learn's ``zero_division=0``, never NaN. Macro
    averages run over every named class, present or not (scikit-learn with ``labels=range(K)``).
    With one label per example, micro precision, recall and F1 all equal the accuracy.

    >>> m = metrics_from_confusion([[3, 1], [0, 0]], ["a", "b"])
    >>> m["accuracy"], m["per_class"]["b"]
    (0.75, {'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'support': 0})
    """
    names = _check_label_names(label_names)
    arr = np.asarray(cm)
    k = len(names)
    if arr.shape != (k, k):
        raise DataError(f"confusion matrix: expected shape ({k}, {k}) for {k} labels, found {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise DataError(f"confusion matrix: expected numeric counts, found dtype {arr.dtype}")
    # a matrix summed as floats (an all_reduce on a float tensor) is fine while its counts are whole
    if not np.issubdtype(arr.dtype, np.integer) and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
        raise DataError(f"confusion matrix: expected whole counts, found dtype {arr.dtype} with fractions")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise DataError("confusion matrix: expected counts >= 0, found a negative entry")
    total = int(arr.sum())
    if total == 0:
        raise DataError("confusion matrix: expected at least one example, found none (all counts are 0)")
    tp = np.diag(arr).astype(np.float64)
    pred = arr.sum(axis=0).astype(np.float64)
    true = arr.sum(axis=1).astype(np.float64)
    p, r, f = _prf(tp, pred, true)
    out: dict[str, Any] = {"accuracy": float(tp.sum() / total)}
    out.update(_averages(tp, pred, true, prefix_micro="micro_"))
    out["support"] = total
    out["per_class"] = {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                            "support": int(true[i])} for i, n in enumerate(names)}
    out["confusion_matrix"] = arr.tolist()
    out["labels"] = names
    return out


def classification_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                           label_names: list[str]) -> dict[str, Any]:
    """Accuracy, per-class and averaged precision/recall/F1 and the confusion matrix of class ids
    ``y_pred`` against ``y_true`` (each in ``0..len(label_names)-1``).

    The keys are those of :func:`metrics_from_confusion`; classes with no predictions or no support
    score 0, not NaN (scikit-learn's ``zero_division=0``).

    >>> m = classification_metrics([0, 0, 1], [0, 0, 0], ["正面", "负面"])
    >>> m["accuracy"], m["macro_f1"], m["per_class"]["负面"]["precision"]
    (0.6666666666666666, 0.4, 0.0)
    """
    names = _check_label_names(label_names)
    cm = confusion_counts(y_true, y_pred, len(names))
    if cm.sum() == 0:
        raise DataError("y_true: expected at least one example, found an empty sequence")
    return metrics_from_confusion(cm, names)


# ----------------------------------------------------------------------------------------------------
# Entity spans (BIO / IOBES tags)

_PREFIXES = ("B", "I", "E", "S")


def _split_tag(tag: Any, where: str) -> tuple[str, str]:
    """('B', 'PER') from 'B-PER'; ('O', '_') for 'O'; a bare 'B' has type '_' as in seqeval."""
    if not isinstance(tag, str):
        raise DataError(f"{where}: expected a tag string such as 'B-PER' or 'O', found {tag!r}")
    if tag == "O":
        return "O", "_"
    if tag in _PREFIXES:
        return tag, "_"
    if len(tag) > 2 and tag[0] in _PREFIXES and tag[1] == "-":
        return tag[0], tag[2:]
    raise DataError(f"{where}: expected 'O' or a tag such as 'B-PER' / 'I-PER' (prefix B, I, E or S, a "
                    f"hyphen, a type), found {tag!r}")


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    # conlleval's rules, as seqeval's default mode implements them: an entity ends before an O, a
    # new B or S, after an E or S, or where the type changes.
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_type != type_


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    # An entity starts at B or S, at an I or E that does not continue one (after O, E or S) — so a
    # stray I-X opens an entity of type X — and wherever the type changes.
    if tag in ("B", "S"):
        return True
    if tag in ("I", "E") and prev_tag in ("O", "E", "S"):
        return True
    return tag != "O" and prev_type != type_


def extract_entities(tags: Sequence[str], *, where: str = "tags") -> list[tuple[str, int, int]]:
    """Entities ``(type, start, end)`` in one tag sequence, ``end`` exclusive (``tags[start:end]`` is
    the span; seqeval's ``get_entities`` reports ``end - 1``).

    Spans follow conlleval and seqeval's default mode: an ``I-X`` that does not continue an ``X``
    entity (after ``O``, after another type, at the start) starts a new entity of type ``X``; a
    change of type ends an entity and starts another. ``E-``/``S-`` tags (IOBES) are read as seqeval
    reads them. Anything other than ``O`` and ``B``/``I``/``E``/``S`` (bare or ``-TYPE``) raises a
    :class:`DataError` naming the position.

    >>> extract_entities(["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG"])
    [('PER', 0, 2), ('LOC', 3, 5), ('LOC', 5, 6), ('ORG', 6, 7)]
    """
    entities: list[tuple[str, int, int]] = []
    prev_tag, prev_type, begin = "O", "_", 0
    n = len(tags)
    for i in range(n + 1):
        # a sentinel O after the last tag closes an entity still open
        tag, type_ = _split_tag(tags[i], f"{where}[{i}]") if i < n else ("O", "_")
        if _ends(prev_tag, tag, prev_type, type_):
            entities.append((prev_type, begin, i))
        if _starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return entities


EntityCounts = dict[str, tuple[int, int, int]]
"""Per entity type: (correct, predicted, true) counts."""


def entity_counts(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> EntityCounts:
    """Per entity type, the number of correct, predicted and true entities over all sentences; a
    predicted entity is correct when its type, start and end all match a true one. Counts from
    several processes add up with :func:`merge_entity_counts`.

    >>> entity_counts([["B-PER", "I-PER", "O"]], [["B-PER", "O", "B-LOC"]])
    {'LOC': (0, 1, 0), 'PER': (0, 1, 1)}
    """
    if len(true_tags) != len(pred_tags):
        raise DataError(f"true_tags and pred_tags: expected the same number of sentences, found "
                        f"{len(true_tags)} and {len(pred_tags)}")
    correct: dict[str, int] = {}
    predicted: dict[str, int] = {}
    true: dict[str, int] = {}
    for s, (t_seq, p_seq) in enumerate(zip(true_tags, pred_tags)):
        if isinstance(t_seq, str) or isinstance(p_seq, str):
            raise DataError(f"sentence {s}: expected a list of tags per sentence, found a string")
        if len(t_seq) != len(p_seq):
            raise DataError(f"sentence {s}: expected as many predicted tags as true tags, found "
                            f"{len(p_seq)} and {len(t_seq)}")
        # sentences are separate: an entity never runs from one into the next
        t_ents = set(extract_entities(t_seq, where=f"true_tags[{s}]"))
        p_ents = set(extract_entities(p_seq, where=f"pred_tags[{s}]"))
        for typ, _, _ in t_ents:
            true[typ] = true.get(typ, 0) + 1
        for typ, _, _ in p_ents:
            predicted[typ] = predicted.get(typ, 0) + 1
        for typ, _, _ in t_ents & p_ents:
            correct[typ] = correct.get(typ, 0) + 1
    types = sorted(set(true) | set(predicted))
    return {t: (correct.get(t, 0), predicted.get(t, 0), true.get(t, 0)) for t in types}


def merge_entity_counts(counts: Iterable[Mapping[str, Sequence[int]]]) -> EntityCounts:
    """Add up :func:`entity_counts` results (from several processes or batches).

    >>> merge_entity_counts([{"PER": (1, 2, 2)}, {"PER": (1, 1, 1), "LOC": (0, 1, 0)}])
    {'LOC': (0, 1, 0), 'PER': (2, 3, 3)}
    """
    total: dict[str, list[int]] = {}
    for part in counts:
        for typ, c in part.items():
            if len(c) != 3:
                raise DataError(f"entity counts for {typ!r}: expected (correct, predicted, true), found {c!r}")
            acc = total.setdefault(typ, [0, 0, 0])
            for j in range(3):
                acc[j] += int(c[j])
    return {t: (v[0], v[1], v[2]) for t, v in sorted(total.items())}


def metrics_from_entity_counts(counts: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """Entity-level scores from :func:`entity_counts`.

    ``precision``, ``recall`` and ``f1`` are micro averages over all entities (seqeval's default);
    ``macro_*`` and ``weighted_*`` average the per-type scores over the types seen in the truth or
    the predictions (weighted by true count); ``support``, ``predicted`` and ``correct`` are entity
    counts; ``per_type`` maps each type to its ``precision``, ``recall``, ``f1`` and ``support``.
    Undefined ratios are 0 (seqeval's ``zero_division`` default, without its warning); with no
    entity at all every score is 0 (seqeval's macro average would be NaN there).

    >>> m = metrics_from_entity_counts({"PER": (1, 2, 1)})
    >>> m["precision"], m["recall"], round(m["f1"], 4)
    (0.5, 1.0, 0.6667)
    """
    types = sorted(counts)
    arr = np.array([[int(x) for x in counts[t]] for t in types], dtype=np.float64).reshape(len(types), 3)
    if (arr < 0).any():
        raise DataError("entity counts: expected counts >= 0, found a negative one")
    tp, pred, true = arr[:, 0], arr[:, 1], arr[:, 2]
    if ((tp > pred) | (tp > true)).any():
        raise DataError("entity counts: expected correct <= predicted and correct <= true for every type")
    p, r, f = _prf(tp, pred, true)
    out: dict[str, Any] = _averages(tp, pred, true, prefix_micro="")
    out["support"] = int(true.sum())
    out["predicted"] = int(pred.sum())
    out["correct"] = int(tp.sum())
    out["per_type"] = {t: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                           "support": int(true[i])} for i, t in enumerate(types)}
    return out


def entity_metrics(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict[str, Any]:
    """Entity-level precision, recall and F1 of predicted tag sequences against true ones, one list
    of tags per sentence, spans read as in :func:`extract_entities` (seqeval's default mode).

    The keys are those of :func:`metrics_from_entity_counts`: ``f1`` equals
    ``seqeval.metrics.f1_score(true_tags, pred_tags)``.

    >>> m = entity_metrics([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "O"]])
    >>> m["precision"], m["recall"], round(m["f1"], 4), m["per_type"]["LOC"]["recall"]
    (1.0, 0.5, 0.6667, 0.0)
    """
    return metrics_from_entity_counts(entity_counts(true_tags, pred_tags))


# ----------------------------------------------------------------------------------------------------
# Regression


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the average of their ranks (scipy's ``method='average'``)."""
    order = np.argsort(x, kind="mergesort")
    inverse = np.empty(x.size, dtype=np.intp)
    inverse[order] = np.arange(x.size, dtype=np.intp)
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]  # the first element of each run of equal values
    dense = first.cumsum()[inverse]
    bounds = np.r_[np.flatnonzero(first), x.size]
    # a run occupying sorted positions [a, b) has ranks a+1..b, whose mean is (a + 1 + b) / 2
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    # NaN, not 0, for a constant (or too short) vector: the correlation is undefined there, as in
    # scipy, and a constant predictor must not look like an uncorrelated one to early stopping
    # (``is_better`` never prefers NaN).
    if x.size < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return math.nan
    if np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    xm = x - x.mean()
    ym = y - y.mean()
    # scale before squaring so large values cannot overflow (scipy does the same)
    xm /= np.abs(xm).max()
    ym /= np.abs(ym).max()
    r = float(np.dot(xm / np.linalg.norm(xm), ym / np.linalg.norm(ym)))
    return max(-1.0, min(1.0, r))


def _regression_one(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    err = p - t
    mse = float(np.mean(err * err))
    spearman = _pearson(_rankdata(t), _rankdata(p)) if np.all(np.isfinite(p)) else math.nan
    return {"mse": mse, "rmse": math.sqrt(mse) if mse == mse else math.nan, "mae": float(np.mean(np.abs(err))),
            "pearson": _pearson(t, p), "spearman": spearman}


def regression_metrics(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """MSE, RMSE, MAE, Pearson r and Spearman ρ of ``y_pred`` against ``y_true``.

    Both are 1-D (one target) or 2-D ``(examples, targets)``. For 2-D inputs the top-level values
    are the unweighted means over targets (so ``mse`` is the MSE over all values, as scikit-learn's
    default ``multioutput``, and ``rmse`` the mean per-target RMSE) and ``per_target`` lists each
    target's own dict. Spearman ρ is Pearson's r of the ranks, ties taking their average rank.

    A correlation is NaN where it is undefined: a constant ``y_true`` or ``y_pred`` (a model that
    predicts one value), fewer than two examples, or a non-finite prediction (which also makes the
    errors NaN). ``is_better`` never prefers a NaN. A non-finite ``y_true`` is a
    :class:`DataError`.

    >>> m = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 5.0])
    >>> m["mse"], m["mae"], round(m["pearson"], 4), m["spearman"]
    (0.375, 0.5, 0.9135, 1.0)
    >>> regression_metrics([1.0, 2.0], [3.0, 3.0])["pearson"]
    nan
    """
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise DataError(f"y_true and y_pred: expected the same shape, found {t.shape} and {p.shape}")
    if t.ndim not in (1, 2):
        raise DataError(f"y_true: expected shape (examples,) or (examples, targets), found {t.shape}")
    if t.shape[0] == 0 or t.size == 0:
        raise DataError(f"y_true: expected at least one example and one target, found shape {t.shape}")
    if not np.all(np.isfinite(t)):
        i = int(np.flatnonzero(~np.isfinite(t.reshape(-1)))[0])
        raise DataError(f"y_true: expected finite values, found {t.reshape(-1)[i]} at flat index {i}")
    if t.ndim == 1:
        return _regression_one(t, p)
    per = [_regression_one(t[:, j], p[:, j]) for j in range(t.shape[1])]
    out: dict[str, Any] = {k: float(np.mean([d[k] for d in per])) for k in per[0]}
    out["per_target"] = per
    return out


# ----------------------------------------------------------------------------------------------------
# Language modelling


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood per token, in nats); ``inf`` past float range.

    >>> round(perplexity(math.log(50.0)), 6)
    50.0
    """
    nll = float(mean_nll)
    if nll < 0:
        raise DataError(f"mean_nll: expected a mean negative log-likelihood >= 0 (nats), found {nll}")
    # math.exp raises OverflowError past ~709; a diverged run should report inf, not crash
    return math.exp(nll) if nll < 709.0 else math.inf


def bits_per_byte(mean_nll: float, bytes_per_token: float) -> float:
    """Bits per UTF-8 byte from the mean NLL per token (nats) and the mean bytes per token, which
    compares models whose tokenizers differ (a token of a big vocabulary covers more bytes).

    >>> bits_per_byte(math.log(2.0) * 3, 3.0)
    1.0
    """
    nll = float(mean_nll)
    bpt = float(bytes_per_token)
    if nll < 0:
        raise DataError(f"mean_nll: expected a mean negative log-likelihood >= 0 (nats), found {nll}")
    if not bpt > 0 or not math.isfinite(bpt):
        raise DataError(f"bytes_per_token: expected a positive number, found {bpt}")
    return nll / (math.log(2.0) * bpt)


# ----------------------------------------------------------------------------------------------------
# Which way is better

METRICS_HIGHER_IS_BETTER: dict[str, bool] = {
    # classification (and micro scores, which equal accuracy there)
    "accuracy": True,
    **{f"{avg}_{m}": True for avg in ("macro", "micro", "weighted") for m in ("precision", "recall", "f1")},
    # entities (micro precision/recall/F1 without a prefix, as seqeval names them)
    "precision": True,
    "recall": True,
    "f1": True,
    # regression
    "mse": False,
    "rmse": False,
    "mae": False,
    "pearson": True,
    "spearman": True,
    # generation (token accuracy under teacher forcing; scores of generated text, 0-100)
    "token_accuracy": True,
    "chrf": True,
    "bleu": True,
    "exact_match": True,
    "char_accuracy": True,
    "rouge1": True,
    "rouge2": True,
    "rougeL": True,
    "parsable": True,
    # several generative tasks: the mean over tasks of each one's headline score, 0-1 (text.headline_score)
    "task_mean": True,
    # preference tuning (dpo): pairs whose chosen answer gets the higher reward, and the rewards
    "preference_accuracy": True,
    "ranking_accuracy": True,
    # reinforcement learning (grpo): the mean reward of greedy answers
    "reward": True,
    "reward_margin": True,
    "chosen_reward": True,
    "rejected_reward": False,
    # language modelling and any training objective
    "loss": False,
    "nll": False,
    "perplexity": False,
    "bits_per_byte": False,
}

# The loop logs validation metrics with a prefix ("val_loss"); the direction is the bare name's.
_PREFIXES_ALLOWED = ("val_", "eval_", "test_", "train_")


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` is better; ``val_``, ``eval_``, ``test_`` and
    ``train_`` prefixes are allowed. An unknown name raises :class:`ConfigError` with the nearest
    known names.

    >>> higher_is_better("val_macro_f1"), higher_is_better("perplexity")
    (True, False)
    """
    if not isinstance(name, str):
        raise ConfigError(f"metric: expected a metric name, found {name!r}")
    bare = name
    for prefix in _PREFIXES_ALLOWED:
        if name.startswith(prefix) and name[len(prefix):] in METRICS_HIGHER_IS_BETTER:
            bare = name[len(prefix):]
            break
    if bare in METRICS_HIGHER_IS_BETTER:
        return METRICS_HIGHER_IS_BETTER[bare]
    known = sorted(METRICS_HIGHER_IS_BETTER)
    hint = did_you_mean(name, known)
    raise ConfigError(f"metric: unknown metric {name!r}{hint}; expected one of {', '.join(known)}, "
                      f"optionally prefixed by {', '.join(_PREFIXES_ALLOWED)}")


def is_better(name: str, new: float, old: float | None, *, min_delta: float = 0.0) -> bool:
    """Whether ``new`` improves on ``old`` for metric ``name`` by more than ``min_delta``.

    ``old=None`` (nothing yet) is beaten by any finite value. A NaN ``new`` is never better, and a
    NaN ``old`` is beaten by any finite ``new``, so one undefined correlation cannot block or win
    early stopping.

    >>> is_better("accuracy", 0.9, 0.8), is_better("mse", 0.5, 0.4), is_better("loss", 1.0, None)
    (True, False, True)
    >>> is_better("f1", 0.801, 0.8, min_delta=0.01), is_better("pearson", float("nan"), 0.1)
    (False, False)
    """
    higher = higher_is_better(name)
    if min_delta < 0:
        raise ConfigError(f"min_delta: expected a number >= 0, found {min_delta}")
    if new is None or math.isnan(new):
        return False
    if old is None or math.isnan(old):
        return True
    return new > old + min_delta if higher else new < old - min_delta


__all__ = [
    "METRICS_HIGHER_IS_BETTER",
    "EntityCounts",
    "bits_per_byte",
    "classification_metrics",
    "confusion_counts",
    "entity_counts",
    "entity_metrics",
    "extract_entities",
    "higher_is_better",
    "is_better",
    "merge_confusion",
    "merge_entity_counts",
    "metrics_from_confusion",
    "metrics_from_entity_counts",
    "perplexity",
    "regression_metrics",
]
