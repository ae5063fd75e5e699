"""`duplex export --format onnx`: encoders with a task head, run by onnxruntime behind the model's
interface, so that classify, tag and eval score the export as they score the original; decoders with a
KV cache, which decode as our engine does."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import subprocess
import sys

import pytest
import torch

import duplexlm
from duplexlm.errors import UnsupportedModelError
from duplexlm.export import export_model
from duplexlm.infer.predict import classify, tag

from .conftest import HELD_OUT, LINES, NEGATIVE, POSITIVE, PROMPTS, ours_greedy, tag_sentences

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from duplexlm.export.onnx import ONNXDecoder


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
    from duplexlm.io import save_model
    from duplexlm.models import build_model

    model, tok = duplexlm.load(trained_models["llama"])
    save_model(build_model(dataclasses.replace(model.config, head="classify", num_labels=2)), tmp_path / "cls", tok)
    with pytest.raises(UnsupportedModelError, match=r"--format onnx: a decoder with head 'classify' .* LM head"):
        export_model(tmp_path / "cls", tmp_path / "o", "onnx")
    with pytest.raises(UnsupportedModelError, match=r"--format onnx: a seq2seq .* ct2"):
        export_model(trained_models["t5"], tmp_path / "o", "onnx")
    assert not (tmp_path / "o").exists()
    with pytest.raises(duplexlm.errors.ModelDirectoryError, match=r"ct2 export .*CT2Model"):
        export_model(trained_models["gpt2"], tmp_path / "ct2", "ct2")
        duplexlm.load(tmp_path / "ct2")
    with pytest.raises(UnsupportedModelError, match="not an ONNX export of a decoder"):
        ONNXDecoder(tmp_path / "ct2")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_onnx_decoder_greedy_tokens_equal_our_engine(arch, trained_models, export_tokenizer, tmp_path):
    out = tmp_path / "onnx"
    result = export_model(trained_models[arch], out, "onnx")
    assert result.manifest["architecture"] == f"{arch}-kv-cache" and (out / "model.onnx").is_file()
    with pytest.raises(duplexlm.errors.ModelDirectoryError, match="ONNXDecoder"):
        duplexlm.load(out)
    prompts = [export_tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    assert len(set(map(len, prompts))) > 1  # one call, rows padded on the left
    decoder = ONNXDecoder(out)
    assert decoder.generate(prompts, max_new_tokens=16, ignore_eos=True) == ours_greedy(trained_models[arch], prompts, 16)
    # it learnt its text: a line's start continues as the line, and stops at the end token
    line = export_tokenizer.encode(LINES[0], add_special_tokens=False)
    assert decoder.generate([line[:4]], max_new_tokens=len(line) + 8)[0] == line[4:]
    # a prompt alone gives what it gives beside the others
    assert decoder.generate(prompts[2:3], 16, ignore_eos=True) == decoder.generate(prompts, 16, ignore_eos=True)[2:3]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_onnx_decoder_scores_as_the_original_and_int8_keeps_perplexity(arch, trained_models, export_tokenizer,
                                                                       tmp_path):
    import onnx

    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    export_model(trained_models[arch], fp32, "onnx")
    export_model(trained_models[arch], int8, "onnx", quantize="int8")
    model, _ = duplexlm.load(trained_models[arch])
    # every Linear became an integer product, the vocabulary head too (GPT-2's, tied to the embedding, is
    # written apart from it for the quantiser)
    ops = [n.op_type for n in onnx.load(str(int8 / "model.onnx")).graph.node]
    assert ops.count("MatMulInteger") == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert (int8 / "model.onnx").stat().st_size < 0.6 * (fp32 / "model.onnx").stat().st_size
    seqs = [export_tokenizer.encode(t, add_special_tokens=False) for t in [*HELD_OUT, "北京", "天安门上太阳升"]]
    with torch.no_grad():
        ours = [model(torch.tensor([s])).logits[0, :-1].log_softmax(-1).gather(1, torch.tensor(s[1:])[:, None])[:, 0]
                for s in seqs]
    got = ONNXDecoder(fp32).score(seqs)
    assert [len(g) for g in got] == [len(s) - 1 for s in seqs]
    assert all(torch.allclose(torch.tensor(g), o, atol=1e-4) for g, o in zip(got, ours))

    def ppl(logps) -> float:
        flat = [float(x) for row in logps for x in row]
        return math.exp(-sum(flat) / len(flat))

    assert ppl(ONNXDecoder(int8).score(seqs)) == pytest.approx(ppl(ours), rel=0.02)


def test_onnx_decoder_samples_from_a_seed_and_checks_its_input(trained_models, export_tokenizer, tmp_path):
    out = tmp_path / "onnx"
    export_model(trained_models["gpt2"], out, "onnx")
    decoder = ONNXDecoder(out)
    prompts = [export_tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    a = decoder.generate(prompts, 12, temperature=1.5, seed=3, ignore_eos=True)
    assert a == decoder.generate(prompts, 12, temperature=1.5, seed=3, ignore_eos=True)
    assert a != decoder.generate(prompts, 12, temperature=1.5, seed=4, ignore_eos=True)
    greedy = decoder.generate(prompts, 12, ignore_eos=True)
    assert decoder.generate(prompts, 12, temperature=1.5, top_k=1, seed=5, ignore_eos=True) == greedy
    assert decoder.generate(prompts, 12, temperature=0.7, top_p=1e-9, seed=5, ignore_eos=True) == greedy
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 320\)"):
        decoder.generate([[5, 320]], 4)
    with pytest.raises(ValueError, match="max_seq_len"):
        decoder.generate([[5]], decoder.config.max_seq_len + 1)
    with pytest.raises(ValueError, match="non-empty"):
        decoder.generate([[]], 4)
