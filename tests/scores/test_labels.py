"""Our metrics against the libraries everyone trusts: scikit-learn for classification and regression,
scipy for correlations, seqeval for entity spans — on seeded random data and on the edge cases."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from duplexlm.errors import ConfigError, DataError
from duplexlm.scores import (
    METRICS_HIGHER_IS_BETTER,
    bits_per_byte,
    classification_metrics,
    confusion_counts,
    entity_counts,
    entity_metrics,
    extract_entities,
    higher_is_better,
    is_better,
    merge_confusion,
    merge_entity_counts,
    metrics_from_confusion,
    metrics_from_entity_counts,
    perplexity,
    regression_metrics,
)
from duplexlm.scores.labels import _rankdata

sklearn_metrics = pytest.importorskip("sklearn.metrics")
seqeval_metrics = pytest.importorskip("seqeval.metrics")
from seqeval.metrics.sequence_labeling import get_entities  # noqa: E402

# ----------------------------------------------------------------------------------------------------
# Classification


def _random_classification(seed: int) -> tuple[list[int], list[int], list[str]]:
    """Random labels with the cases that break naive code mixed in: a class never predicted, a class
    with no support, one class only, a constant predictor, skewed classes."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 7))
    n = int(rng.integers(1, 150))
    probs = rng.dirichlet(np.full(k, 0.7))  # skewed: some classes rare or absent
    y_true = rng.choice(k, size=n, p=probs)
    mode = seed % 4
    if mode == 0:  # a decent model: mostly right
        y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, k, n))
    elif mode == 1:  # never predicts the last class
        y_pred = rng.integers(0, max(k - 1, 1), n)
    elif mode == 2:  # a constant predictor
        y_pred = np.full(n, int(rng.integers(0, k)))
    else:
        y_pred = rng.integers(0, k, n)
    return y_true.tolist(), y_pred.tolist(), [f"c{i}" for i in range(k)]


def _assert_matches_sklearn(y_true: list[int], y_pred: list[int], names: list[str], m: dict) -> None:
    with warnings.catch_warnings():
        # sklearn warns that one label alone was seen, though labels= names them all
        warnings.filterwarnings("ignore", message="A single label was found")
        _compare_with_sklearn(y_true, y_pred, names, m)


def _compare_with_sklearn(y_true: list[int], y_pred: list[int], names: list[str], m: dict) -> None:
    labels = list(range(len(names)))
    assert m["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred), abs=1e-12)
    assert m["confusion_matrix"] == sklearn_metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, name in enumerate(names):
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p[i], r[i], f[i]), abs=1e-12)
        assert got["support"] == s[i]
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = sklearn_metrics.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0)
        assert (m[f"{avg}_precision"], m[f"{avg}_recall"], m[f"{avg}_f1"]) == pytest.approx((p, r, f), abs=1e-12)
    assert m["support"] == len(y_true)
    for key, value in m.items():  # never NaN, and plain Python types so it goes to JSON as is
        if isinstance(value, float):
            assert math.isfinite(value), key


@pytest.mark.parametrize("seed", range(40))
def test_classification_matches_sklearn(seed: int) -> None:
    y_true, y_pred, names = _random_classification(seed)
    _assert_matches_sklearn(y_true, y_pred, names, classification_metrics(y_true, y_pred, names))


@pytest.mark.parametrize(("y_true", "y_pred", "names"), [
    ([0, 1, 2, 2], [0, 1, 1, 1], ["a", "b", "c"]),  # class c never predicted
    ([0, 0, 0], [0, 1, 0], ["a", "b", "c"]),  # b has no support, c appears nowhere
    ([0, 0, 0], [0, 0, 0], ["only"]),  # a single class
    ([1], [0], ["正面", "负面"]),  # one example, wrong
])
def test_classification_edge_cases(y_true: list[int], y_pred: list[int], names: list[str]) -> None:
    m = classification_metrics(y_true, y_pred, names)
    _assert_matches_sklearn(y_true, y_pred, names, m)


def test_classification_zero_division_is_zero() -> None:
    m = classification_metrics([0, 1, 2, 2], [0, 1, 1, 1], ["a", "b", "c"])
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    m = classification_metrics([0, 0], [0, 0], ["a", "b"])
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == 0.5 and m["weighted_f1"] == 1.0 and m["micro_f1"] == 1.0


def test_classification_accepts_numpy_arrays() -> None:
    m = classification_metrics(np.array([0, 1, 1], dtype=np.int32), np.array([0, 1, 0]), ["a", "b"])
    assert m["confusion_matrix"] == [[1, 0], [1, 1]]
    assert isinstance(m["accuracy"], float) and isinstance(m["per_class"]["a"]["support"], int)


@pytest.mark.parametrize("seed", range(10))
def test_merged_confusion_equals_one_shot(seed: int) -> None:
    """What a distributed evaluation does: each process counts its shard (some may be empty), the
    matrices are summed, the metrics come from the sum — identical to one pass over everything."""
    y_true, y_pred, names = _random_classification(seed)
    rng = np.random.default_rng(seed + 1000)
    cuts = sorted(rng.integers(0, len(y_true) + 1, size=int(rng.integers(1, 5))).tolist())
    bounds = [0, *cuts, len(y_true)]
    parts = [confusion_counts(y_true[a:b], y_pred[a:b], len(names)) for a, b in itertools.pairwise(bounds)]
    merged = merge_confusion(parts)
    assert metrics_from_confusion(merged, names) == classification_metrics(y_true, y_pred, names)
    # a float sum (an all_reduce on a float tensor) gives the same result
    assert metrics_from_confusion(merged.astype(np.float32), names) == classification_metrics(y_true, y_pred, names)


def test_confusion_of_nothing_is_zero() -> None:
    assert confusion_counts([], [], 3).tolist() == [[0] * 3] * 3


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda: classification_metrics([0, 3], [0, 1], ["a", "b"]), DataError, "y_true[1] = 3"),
    (lambda: classification_metrics([0, 1], [0, -1], ["a", "b"]), DataError, "y_pred[1] = -1"),
    (lambda: classification_metrics([0, 1], [0], ["a", "b"]), DataError, "same length"),
    (lambda: classification_metrics([0.0, 1.0], [0, 1], ["a", "b"]), DataError, "integer class ids"),
    (lambda: classification_metrics([], [], ["a", "b"]), DataError, "at least one example"),
    (lambda: classification_metrics([0], [0], ["a", "a"]), ConfigError, "'a' twice"),
    (lambda: classification_metrics([0], [0], []), ConfigError, "at least one label name"),
    (lambda: metrics_from_confusion([[1, 0], [0, 1]], ["a", "b", "c"]), DataError, "expected shape (3, 3)"),
    (lambda: metrics_from_confusion([[1, -1], [0, 1]], ["a", "b"]), DataError, ">= 0"),
    (lambda: metrics_from_confusion([[0.5, 0], [0, 1]], ["a", "b"]), DataError, "whole counts"),
    (lambda: merge_confusion([np.zeros((2, 2)), np.zeros((3, 3))]), DataError, "confusion matrix 1"),
    (lambda: merge_confusion([]), DataError, "at least one"),
    (lambda: confusion_counts([0], [0], 0), ConfigError, "num_labels"),
])
def test_classification_errors_name_the_problem(call, error, words: str) -> None:
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


# ----------------------------------------------------------------------------------------------------
# Entities


def _random_tags(rng: np.random.Generator, n: int, types: list[str], iobes: bool) -> list[str]:
    """Mostly well-formed BIO with malformed tags mixed in: I- without B-, I- of another type after
    B-, sequences starting with I-; with ``iobes`` also E- and S- tags in any order."""
    prefixes = ["B", "I"] + (["E", "S"] if iobes else [])
    tags: list[str] = []
    for _ in range(n):
        u = rng.random()
        if u < 0.4:
            tags.append("O")
        elif u < 0.65 and tags and tags[-1] != "O":  # continue the current entity, as a tagger would
            tags.append(("E" if iobes and rng.random() < 0.3 else "I") + tags[-1][1:])
        else:
            tags.append(f"{rng.choice(prefixes)}-{rng.choice(types)}")
    return tags


def _random_corpus(seed: int, iobes: bool = False) -> tuple[list[list[str]], list[list[str]]]:
    rng = np.random.default_rng(seed)
    types = ["PER", "LOC", "ORG", "时间"][: int(rng.integers(1, 5))]
    true, pred = [], []
    for _ in range(int(rng.integers(1, 25))):
        n = int(rng.integers(0, 15))
        t = _random_tags(rng, n, types, iobes)
        # predictions: the truth with some tags replaced, so that many entities match and some do not
        p = [x if rng.random() < 0.8 else _random_tags(rng, 1, types, iobes)[0] for x in t]
        true.append(t)
        pred.append(p)
    return true, pred


def _seqeval_report(true: list[list[str]], pred: list[list[str]]) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns where a score is undefined (we give 0)
        return seqeval_metrics.classification_report(true, pred, output_dict=True, zero_division=0)


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize("iobes", [False, True], ids=["bio", "iobes"])
def test_entities_match_seqeval(seed: int, iobes: bool) -> None:
    true, pred = _random_corpus(seed, iobes)
    for seq in true + pred:
        ours = extract_entities(seq)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = get_entities(seq)
        assert ours == [(t, s, e + 1) for t, s, e in theirs], seq  # seqeval's end is inclusive

    m = entity_metrics(true, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["f1"] == pytest.approx(seqeval_metrics.f1_score(true, pred), abs=1e-12)
        assert m["precision"] == pytest.approx(seqeval_metrics.precision_score(true, pred), abs=1e-12)
        assert m["recall"] == pytest.approx(seqeval_metrics.recall_score(true, pred), abs=1e-12)
    report = _seqeval_report(true, pred)
    types = [k for k in report if not k.endswith(" avg")]
    assert sorted(m["per_type"]) == sorted(types)
    for typ in types:
        got, want = m["per_type"][typ], report[typ]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx(
            (want["precision"], want["recall"], want["f1-score"]), abs=1e-12)
        assert got["support"] == want["support"]
    if types:  # with no entity at all seqeval's macro average is NaN; ours is 0 (tested below)
        for avg in ("micro", "macro", "weighted"):
            want = report[f"{avg} avg"]
            prefix = "" if avg == "micro" else f"{avg}_"
            assert (m[f"{prefix}precision"], m[f"{prefix}recall"], m[f"{prefix}f1"]) == pytest.approx(
                (want["precision"], want["recall"], want["f1-score"]), abs=1e-12)
    assert m["support"] == sum(len(extract_entities(t)) for t in true)


@pytest.mark.parametrize(("tags", "entities"), [
    (["I-PER", "I-PER", "O"], [("PER", 0, 2)]),  # I- without B- starts an entity
    (["O", "I-LOC"], [("LOC", 1, 2)]),
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),  # a change of type splits
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 1), ("PER", 1, 3)]),
    (["B-PER", "O", "I-PER"], [("PER", 0, 1), ("PER", 2, 3)]),
    (["S-LOC", "I-LOC", "E-LOC"], [("LOC", 0, 1), ("LOC", 1, 3)]),
    (["B", "I", "O", "I"], [("_", 0, 2), ("_", 3, 4)]),  # bare tags: one untyped kind, as in seqeval
    ([], []),
    (["O", "O"], []),
])
def test_extract_entities_rules(tags: list[str], entities: list[tuple[str, int, int]]) -> None:
    assert extract_entities(tags) == entities


def test_entities_never_cross_sentences() -> None:
    # the PER at the end of sentence 0 and the stray I-PER opening sentence 1 are two entities
    m = entity_metrics([["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["I-PER", "O"]])
    assert (m["support"], m["correct"], m["f1"]) == (2, 2, 1.0)


def test_entities_with_nothing_to_find_score_zero() -> None:
    m = entity_metrics([["O", "O"]], [["O", "O"]])
    assert {k: m[k] for k in ("precision", "recall", "f1", "macro_f1", "weighted_f1")} == dict.fromkeys(
        ("precision", "recall", "f1", "macro_f1", "weighted_f1"), 0.0)
    assert m["per_type"] == {}


@pytest.mark.parametrize("seed", range(10))
def test_merged_entity_counts_equal_one_shot(seed: int) -> None:
    true, pred = _random_corpus(seed)
    half = len(true) // 2
    merged = merge_entity_counts([entity_counts(true[:half], pred[:half]), entity_counts(true[half:], pred[half:])])
    assert merged == entity_counts(true, pred)
    assert metrics_from_entity_counts(merged) == entity_metrics(true, pred)


@pytest.mark.parametrize(("true", "pred", "words"), [
    ([["B-PER"]], [["B-PER"], ["O"]], "same number of sentences"),
    ([["B-PER", "O"]], [["B-PER"]], "sentence 0"),
    ([["B-PER", "PER"]], [["B-PER", "O"]], "true_tags[0][1]"),
    ([["O"]], [["b-per"]], "pred_tags[0][0]"),
    ([["O"]], [["B-"]], "'B-'"),
    (["B-PER O"], ["B-PER O"], "a string"),
])
def test_entity_errors_name_the_position(true, pred, words: str) -> None:
    with pytest.raises(DataError) as info:
        entity_metrics(true, pred)
    assert words in str(info.value)


# ----------------------------------------------------------------------------------------------------
# Regression


def test_rankdata_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 5, size=int(rng.integers(1, 30))).astype(float)  # many ties
        np.testing.assert_array_equal(_rankdata(x), stats.rankdata(x))


@pytest.mark.parametrize("seed", range(20))
def test_regression_matches_sklearn_and_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 200))
    y_true = rng.normal(size=n) * 3 + 1
    if seed % 3 == 0:  # ties: scores on a 0..5 grid, as in STS-B
        y_true = np.round(rng.uniform(0, 5, size=n))
    y_pred = y_true + rng.normal(scale=float(rng.uniform(0.1, 3)), size=n)
    if seed % 3 == 1:
        y_pred = np.round(y_pred)
    m = regression_metrics(y_true.tolist(), y_pred.tolist())
    mse = sklearn_metrics.mean_squared_error(y_true, y_pred)
    assert m["mse"] == pytest.approx(mse, rel=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(mse), rel=1e-12)
    assert m["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(y_true, y_pred), rel=1e-12)
    assert m["pearson"] == pytest.approx(stats.pearsonr(y_true, y_pred).statistic, abs=1e-12)
    assert m["spearman"] == pytest.approx(stats.spearmanr(y_true, y_pred).statistic, abs=1e-12)


def test_regression_two_targets() -> None:
    rng = np.random.default_rng(7)
    y_true = rng.normal(size=(50, 3))
    y_pred = y_true + rng.normal(size=(50, 3))
    m = regression_metrics(y_true, y_pred)
    assert m["mse"] == pytest.approx(sklearn_metrics.mean_squared_error(y_true, y_pred), rel=1e-12)
    assert m["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(y_true, y_pred), rel=1e-12)
    per_mse = sklearn_metrics.mean_squared_error(y_true, y_pred, multioutput="raw_values")
    assert m["rmse"] == pytest.approx(float(np.mean(np.sqrt(per_mse))), rel=1e-12)
    assert len(m["per_target"]) == 3
    for j, target in enumerate(m["per_target"]):
        assert target["mse"] == pytest.approx(per_mse[j], rel=1e-12)
        assert target["pearson"] == pytest.approx(stats.pearsonr(y_true[:, j], y_pred[:, j]).statistic, abs=1e-12)
        assert target["spearman"] == pytest.approx(stats.spearmanr(y_true[:, j], y_pred[:, j]).statistic, abs=1e-12)
    assert m["pearson"] == pytest.approx(np.mean([t["pearson"] for t in m["per_target"]]), abs=1e-15)


def test_regression_constant_vector_has_nan_correlation() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and says nothing: NaN is the documented answer
        m = regression_metrics([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
        assert math.isnan(m["pearson"]) and math.isnan(m["spearman"])
        assert m["mse"] == pytest.approx(2 / 3)
        assert math.isnan(regression_metrics([1.0], [1.0])["pearson"])
        m = regression_metrics([[1.0, 1.0], [2.0, 1.0]], [[1.0, 0.0], [2.0, 3.0]])
        assert m["per_target"][0]["pearson"] == pytest.approx(1.0) and math.isnan(m["per_target"][1]["pearson"])
        assert math.isnan(m["pearson"])  # the mean over targets is undefined too
        m = regression_metrics([1.0, 2.0, 3.0], [1.0, float("nan"), 3.0])  # a diverged model
        assert all(math.isnan(m[k]) for k in ("mse", "rmse", "mae", "pearson", "spearman"))


@pytest.mark.parametrize(("y_true", "y_pred", "words"), [
    ([1.0, 2.0], [1.0], "same shape"),
    ([], [], "at least one example"),
    ([1.0, float("inf")], [1.0, 2.0], "finite"),
    ([[[1.0]]], [[[1.0]]], "(examples, targets)"),
])
def test_regression_errors(y_true, y_pred, words: str) -> None:
    with pytest.raises(DataError) as info:
        regression_metrics(y_true, y_pred)
    assert words in str(info.value)


# ----------------------------------------------------------------------------------------------------
# Language modelling


def test_perplexity_and_bits_per_byte() -> None:
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(1234.5)) == pytest.approx(1234.5)
    assert perplexity(1e6) == math.inf
    assert bits_per_byte(math.log(2.0), 1.0) == pytest.approx(1.0)
    assert bits_per_byte(math.log(256.0), 4.0) == pytest.approx(2.0)  # 8 bits per token over 4 bytes
    with pytest.raises(DataError, match="mean_nll"):
        perplexity(-0.1)
    with pytest.raises(DataError, match="bytes_per_token"):
        bits_per_byte(1.0, 0.0)


# ----------------------------------------------------------------------------------------------------
# The registry


def test_registry_covers_every_score_the_functions_return() -> None:
    results = [
        classification_metrics([0, 1, 1], [0, 1, 0], ["a", "b"]),
        entity_metrics([["B-PER"]], [["B-PER"]]),
        regression_metrics([1.0, 2.0, 3.0], [1.0, 2.5, 2.0]),
    ]
    counts = {"support", "predicted", "correct"}  # sizes, not scores
    for result in results:
        for key, value in result.items():
            if isinstance(value, float):
                assert key in METRICS_HIGHER_IS_BETTER, key
            elif isinstance(value, int):
                assert key in counts, key
    for name in ("accuracy", "macro_f1", "micro_f1", "f1", "pearson", "spearman"):
        assert METRICS_HIGHER_IS_BETTER[name] is True
    for name in ("mse", "mae", "rmse", "loss", "perplexity", "bits_per_byte"):
        assert METRICS_HIGHER_IS_BETTER[name] is False


def test_is_better() -> None:
    assert is_better("accuracy", 0.8, 0.7) and not is_better("accuracy", 0.7, 0.8)
    assert is_better("loss", 1.0, 1.5) and not is_better("loss", 1.5, 1.0)
    assert not is_better("macro_f1", 0.5, 0.5)  # a tie does not reset patience
    assert is_better("val_loss", 1.0, None) and is_better("eval_accuracy", 0.1, None)
    assert higher_is_better("val_macro_f1") and not higher_is_better("test_perplexity")
    assert not is_better("f1", 0.805, 0.8, min_delta=0.01) and is_better("f1", 0.82, 0.8, min_delta=0.01)
    assert not is_better("mse", 0.995, 1.0, min_delta=0.01) and is_better("mse", 0.98, 1.0, min_delta=0.01)
    nan = float("nan")
    assert not is_better("pearson", nan, 0.1) and not is_better("pearson", nan, None)
    assert is_better("pearson", 0.1, nan)


@pytest.mark.parametrize(("name", "hint"), [
    ("acuracy", "did you mean 'accuracy'"),
    ("macro-f1", "did you mean 'macro_f1'"),
    ("val_perplexty", "did you mean"),
    ("meteor", "expected one of"),
])
def test_unknown_metric_is_a_config_error(name: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        is_better(name, 1.0, 0.0)
    assert name in str(info.value) and hint in str(info.value)
