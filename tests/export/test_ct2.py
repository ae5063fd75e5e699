"""`duplex export --format ct2`: CTranslate2 directories that decode as our engine does."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import duplexlm
from duplexlm.errors import ConfigError, UnsupportedModelError
from duplexlm.export import export_model, read_manifest
from duplexlm.infer.engine import Engine, SamplingParams

from .conftest import HELD_OUT, LINES, PROMPTS, ours_greedy

pytest.importorskip("ctranslate2")
from duplexlm.export.ct2 import CT2Model


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_ct2_decoder_greedy_tokens_equal_our_engine(arch, trained_models, export_tokenizer, tmp_path):
    out = tmp_path / "ct2"
    result = export_model(trained_models[arch], out, "ct2")
    assert result.manifest["architecture"] == arch and read_manifest(out)["format"] == "ct2"
    assert (out / "model.bin").is_file() and (out / "tokenizer.json").is_file()
    prompts = [export_tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    ours = ours_greedy(trained_models[arch], prompts, 16)
    theirs = CT2Model(out).generate(prompts, max_new_tokens=16, ignore_eos=True)
    assert theirs == ours
    # it learnt its text: the continuation of a line's start is the line
    line = export_tokenizer.encode(LINES[0], add_special_tokens=False)
    assert CT2Model(out).generate([line[:4]], max_new_tokens=len(line) - 4)[0] == line[4:]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_ct2_int8_keeps_perplexity_within_2_percent(arch, trained_models, export_tokenizer, tmp_path):
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    export_model(trained_models[arch], fp32, "ct2")
    export_model(trained_models[arch], int8, "ct2", quantize="int8")
    assert (int8 / "model.bin").stat().st_size < 0.6 * (fp32 / "model.bin").stat().st_size
    seqs = [export_tokenizer.encode(t, add_special_tokens=False) for t in HELD_OUT]
    model, _ = duplexlm.load(trained_models[arch])

    def ppl(logps: list[list[float]]) -> float:
        flat = [x for row in logps for x in row]
        return math.exp(-sum(flat) / len(flat))

    with torch.no_grad():
        ours = []
        for s in seqs:
            logp = model(torch.tensor([s])).logits[0, :-1].log_softmax(-1)
            ours.append(logp.gather(1, torch.tensor(s[1:])[:, None])[:, 0].tolist())
    ref = ppl(ours)
    assert ppl(CT2Model(fp32).score(seqs)) == pytest.approx(ref, rel=1e-3)
    assert ppl(CT2Model(int8, compute_type="int8").score(seqs)) == pytest.approx(ref, rel=0.02)


def test_ct2_t5_translates_as_our_engine(trained_models, export_tokenizer, tmp_path):
    out = tmp_path / "t5"
    assert export_model(trained_models["t5"], out, "ct2").manifest["loader"] == "Translator"
    eos = export_tokenizer.eos_token_id
    sources = [[*export_tokenizer.encode(line, add_special_tokens=False)[:12], eos] for line in LINES]
    ours = ours_greedy(trained_models["t5"], sources, 16, ignore_eos=False)
    theirs = CT2Model(out).generate(sources, max_new_tokens=16)
    assert theirs == [o[:-1] if o and o[-1] == eos else o for o in ours]
    assert theirs[0] == sources[0][:-1][::-1]  # it learnt the reversal


def test_cli_exports_and_refuses_bad_input(trained_models, tmp_path):
    out = tmp_path / "cli"

    def duplex(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "duplexlm.cli", "export", *args], capture_output=True,
                              text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})

    done = duplex("--format", "ct2", str(trained_models["llama"]), str(out), "--quantize", "int8")
    assert done.returncode == 0, done.stderr
    assert "ct2 export of a decoder (llama, int8)" in done.stdout and done.stderr == ""
    again = duplex("--format", "ct2", str(trained_models["llama"]), str(out))
    assert again.returncode != 0 and "--overwrite" in again.stderr
    bad = duplex("--format", "ct2", str(trained_models["llama"]), str(tmp_path / "q"), "--quantize", "int3")
    assert bad.returncode != 0 and "int8" in bad.stderr and not (tmp_path / "q").exists()


def test_refusals_name_the_format_and_what_would_work(trained_models, tmp_path, monkeypatch):
    from duplexlm.config import EncoderConfig, RNNConfig
    from duplexlm.io import save_model
    from duplexlm.models import build_model

    tok = duplexlm.load(trained_models["gpt2"])[1]
    save_model(build_model(EncoderConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=1, n_head=2, d_ff=64,
                                         head="classify", num_labels=2)), tmp_path / "enc", tok)
    save_model(build_model(RNNConfig(vocab_size=tok.vocab_size, head="classify", num_labels=2)), tmp_path / "rnn", tok)
    with pytest.raises(UnsupportedModelError, match=r"--format ct2: .*onnx"):
        export_model(tmp_path / "enc", tmp_path / "o1", "ct2")
    with pytest.raises(UnsupportedModelError, match="recurrent"):
        export_model(tmp_path / "rnn", tmp_path / "o2", "ct2")
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"--format ct2: needs ctranslate2.*pip install"):
        export_model(trained_models["gpt2"], tmp_path / "o3", "ct2")
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3"))


def test_ct2_engine_serves_requests_as_our_engine(trained_models, export_tokenizer, tmp_path):
    from duplexlm.export.ct2 import CT2Engine

    out = tmp_path / "ct2"
    export_model(trained_models["llama"], out, "ct2")
    engine = CT2Engine(out, export_tokenizer, max_batch_size=2)  # 5 prompts: three batches
    prompts = [export_tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    got = engine.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True))
    assert [c.token_ids for c in got] == ours_greedy(trained_models["llama"], prompts, 12)
    assert all(c.finish_reason == "length" for c in got)
    # a stop string cuts the text before it; the end token stops a line learnt to its end
    model, tok = duplexlm.load(trained_models["llama"])
    full = engine.generate("我爱北京", max_new_tokens=40, temperature=0)
    assert full.finish_reason == "stop" and full.text == Engine(model, tok).generate(
        "我爱北京", max_new_tokens=40, temperature=0).text
    cut = engine.generate("我爱北京", max_new_tokens=40, temperature=0, stop=["上"])
    assert cut.finish_reason == "stop" and cut.text == full.text.split("上")[0]
    # streamed pieces join to the text; an abort ends a request with reason "abort"
    assert "".join(engine.stream("今天天气", max_new_tokens=20, temperature=0)) == engine.generate(
        "今天天气", max_new_tokens=20, temperature=0).text
    rid = engine.add_request("hello world,", SamplingParams(max_new_tokens=500, temperature=0, ignore_eos=True))
    engine.abort(rid)
    ends = [o for _ in range(50) for o in engine.step() if o.request_id == rid and o.finished]
    assert ends and ends[0].finish_reason == "abort" and not engine.has_unfinished()
    beam = engine.generate("我爱北京", max_new_tokens=20, num_beams=2)
    assert beam.text == full.text and beam.score is not None
    with pytest.raises(ConfigError, match="min_p"):
        engine.add_request("我爱", SamplingParams(min_p=0.1))
    with pytest.raises(ConfigError, match="seed: the CTranslate2 engine cannot"):
        engine.add_request("我爱", SamplingParams(seed=3, temperature=0.7))


def test_ct2_engine_edge_cases(trained_models, export_tokenizer, tmp_path):
    """A T5 export through the engine; a one-token prompt batched with longer ones; a beam request
    queued behind a sampled one; a CTranslate2 call that fails ends its requests, not the engine."""
    from duplexlm.export.ct2 import CT2Engine

    t5 = tmp_path / "t5"
    export_model(trained_models["t5"], t5, "ct2")
    eos = export_tokenizer.eos_token_id
    sources = [[*export_tokenizer.encode(line, add_special_tokens=False)[:12], eos] for line in LINES[:3]]
    got = CT2Engine(t5, export_tokenizer).generate(sources, SamplingParams(max_new_tokens=16, temperature=0))
    assert [c.token_ids for c in got] == ours_greedy(trained_models["t5"], sources, 16, ignore_eos=False)

    out = tmp_path / "llama"
    export_model(trained_models["llama"], out, "ct2")
    engine = CT2Engine(out, export_tokenizer, max_batch_size=4)
    prompts = [export_tokenizer.encode("我", add_special_tokens=False)[:1],
               export_tokenizer.encode("今天天气很好", add_special_tokens=False)]
    greedy = SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)
    assert [c.token_ids for c in engine.generate(prompts, greedy)] == ours_greedy(trained_models["llama"], prompts, 8)
    assert [len(r) for r in CT2Model(out).generate(prompts, 8, ignore_eos=True)] == [8, 8]

    sampled, beam = SamplingParams(max_new_tokens=6), SamplingParams(max_new_tokens=6, num_beams=2)  # both at T=1
    _, b = engine.generate(["我爱北京", "我爱北京"], [sampled, beam])
    assert b.score is not None and b.text == engine.generate("我爱北京", beam).text  # decoded as a beam request

    def fail(*_, **__):
        raise RuntimeError("simulated CTranslate2 failure")

    real = engine.ct2.engine.generate_batch
    engine.ct2.engine = type("Broken", (), {"generate_batch": staticmethod(fail)})()
    broken = engine.generate("我爱北京", greedy)
    assert broken.finish_reason == "abort"
    engine.ct2.engine = type("Fixed", (), {"generate_batch": staticmethod(real)})()
    assert engine.generate("我爱北京", greedy).finish_reason == "length"  # the engine goes on
    with pytest.raises(ConfigError, match="stop_token_ids"):
        engine.add_request("我爱", SamplingParams(stop_token_ids=(10**6,)))
    engine.close()
