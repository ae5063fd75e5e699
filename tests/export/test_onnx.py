"""`duplex export --format onnx`: encoders with a task head, run by onnxruntime behind the model's
interface, so that classify, tag and eval score the export as they score the original."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch

import duplexlm
from duplexlm.errors import UnsupportedModelError
from duplexlm.export import export_model
from duplexlm.infer.predict import classify, tag

from .conftest import NEGATIVE, POSITIVE, tag_sentences

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_onnx_classifier_gives_the_original_logits_and_labels(trained_encoders, tmp_path):
    out = tmp_path / "onnx"
    result = export_model(trained_encoders["classify"], out, "onnx")
    assert result.manifest["architecture"] == "bert-classify" and (out / "model.onnx").is_file()
    original, tok = duplexlm.load(trained_encoders["classify"])
    exported, tok2 = duplexlm.load(out)
    assert type(exported).__name__ == "ONNXModule" and tok2.vocab_size == tok.vocab_size
    # batch and length unlike the example the export was traced with, with padding
    batch = tok(["这个酒店很干净，服务很好，房间很大很舒服", "rude staff", "早餐难吃"])
    with torch.no_grad():
        ref = original(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    got = exported(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(got, ref, atol=1e-4)
    texts = POSITIVE + NEGATIVE
    want = [p["label"] for p in classify(original, tok, texts)]
    assert want == ["positive"] * len(POSITIVE) + ["negative"] * len(NEGATIVE)  # it learnt its set
    assert [p["label"] for p in classify(exported, tok2, texts)] == want


def test_onnx_int8_classifier_keeps_its_answers(trained_encoders, tmp_path):
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    export_model(trained_encoders["classify"], fp32, "onnx")
    levels = logging.getLogger().level, logging.getLogger("torch.onnx").level
    export_model(trained_encoders["classify"], int8, "onnx", quantize="int8")
    assert (logging.getLogger().level, logging.getLogger("torch.onnx").level) == levels  # the quiet is undone
    assert (int8 / "model.onnx").stat().st_size < 0.6 * (fp32 / "model.onnx").stat().st_size
    model, tok = duplexlm.load(int8)
    labels = [p["label"] for p in classify(model, tok, POSITIVE + NEGATIVE)]
    assert labels == ["positive"] * len(POSITIVE) + ["negative"] * len(NEGATIVE)


def test_onnx_crf_tagger_tags_as_the_original(trained_encoders, tmp_path):
    out = tmp_path / "tag"
    export_model(trained_encoders["tag"], out, "onnx")
    manifest = json.loads((out / "duplex_export.json").read_text())
    assert manifest["architecture"] == "bert-tag-crf" and len(manifest["crf"]["transitions"]) == 3
    original, tok = duplexlm.load(trained_encoders["tag"])
    exported, _ = duplexlm.load(out)
    sentences = [chars for chars, _ in tag_sentences()] + [list("我们明天去北京和上海")]
    want = tag(original, tok, sentences)
    assert [r["tags"] for r in want[:-1]] == [tags for _, tags in tag_sentences()]  # it learnt its set
    assert tag(exported, tok, sentences) == want


def test_duplex_eval_scores_an_onnx_export_as_the_original(trained_encoders, tmp_path):
    data = tmp_path / "reviews.jsonl"
    rows = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "onnx"
    cli = [sys.executable, "-m", "duplexlm.cli"]
    done = subprocess.run([*cli, "export", "--format", "onnx", str(trained_encoders["classify"]), str(out),
                           "--quantize", "int8"], capture_output=True, text=True)
    assert done.returncode == 0 and "onnx export of an encoder (bert-classify, int8)" in done.stdout, done.stderr
    assert "torchvision" not in done.stderr

    def accuracy(model) -> str:
        run = subprocess.run([*cli, "eval", "--model", str(model), "--data", str(data), "--split", "all"],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return run.stdout.split("accuracy")[1].split(",")[0].strip()

    assert accuracy(out) == accuracy(trained_encoders["classify"]) == "1.0000"


def test_onnx_refuses_what_it_cannot_take(trained_models, tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"--format onnx: a decoder .* ct2 or gguf"):
        export_model(trained_models["llama"], tmp_path / "o", "onnx")
    with pytest.raises(UnsupportedModelError, match=r"--format onnx: a seq2seq .* ct2"):
        export_model(trained_models["t5"], tmp_path / "o", "onnx")
    assert not (tmp_path / "o").exists()
    with pytest.raises(duplexlm.errors.ModelDirectoryError, match=r"ct2 export .*CT2Model"):
        export_model(trained_models["gpt2"], tmp_path / "ct2", "ct2")
        duplexlm.load(tmp_path / "ct2")
