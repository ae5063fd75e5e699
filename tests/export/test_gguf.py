"""`duplex export --format gguf`: GGUF files for llama.cpp. Without llama.cpp installed, a NumPy forward
pass that reads the file as llama.cpp's graphs do (its RoPE conventions per architecture, its tensor
names and layouts) must give our model's logits; with llama-cpp-python installed, llama.cpp itself
must give our greedy tokens (optional: it builds from source, about 20 minutes on 2 cores)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

import duplexlm
from duplexlm.errors import UnsupportedModelError
from duplexlm.export import export_model

from .conftest import HELD_OUT, LINES, PROMPTS

gguf = pytest.importorskip("gguf")


def read(path) -> tuple[dict, dict[str, np.ndarray]]:
    """The file's metadata (scalars and string lists) and its tensors, dequantised to float32."""
    reader = gguf.GGUFReader(str(path))
    meta = {}
    for name, field in reader.fields.items():
        if not field.types:
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            kind = field.types[-1]
            values = [field.parts[i] for i in field.data]
            meta[name] = ([bytes(v).decode("utf-8") for v in values] if kind == gguf.GGUFValueType.STRING
                          else [v.tolist()[0] for v in values])
        elif field.types[0] == gguf.GGUFValueType.STRING:
            meta[name] = bytes(field.parts[field.data[0]]).decode("utf-8")
        else:
            meta[name] = field.parts[field.data[0]].tolist()[0]
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(
        [int(d) for d in reversed(t.shape.tolist())]) for t in reader.tensors}
    return meta, tensors


def rope(x: np.ndarray, base: float, neox: bool) -> np.ndarray:
    """x (T, heads, d) rotated as llama.cpp does: adjacent pairs (2i, 2i+1) in its normal mode (llama),
    halves (i, i + d/2) in NeoX mode (qwen2)."""
    T, _, d = x.shape
    theta = base ** (-np.arange(0, d, 2) / d)  # (d/2,)
    ang = np.arange(T)[:, None] * theta[None]  # (T, d/2)
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    a, b = (x[..., : d // 2], x[..., d // 2:]) if neox else (x[..., 0::2], x[..., 1::2])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    return np.concatenate([ra, rb], -1) if neox else np.stack([ra, rb], -1).reshape(x.shape)


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Causal attention, q (T, H, d), k and v (T, Hkv, d) → (T, H * d)."""
    T, H, d = q.shape
    rep = H // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    scores = np.einsum("thd,shd->hts", q, k) / math.sqrt(d)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", w, v).reshape(T, H * d)


def forward(meta: dict, w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Logits (T, V) of llama.cpp's graph for the file's architecture."""
    arch = meta["general.architecture"]
    n_layer, n_head = meta[f"{arch}.block_count"], meta[f"{arch}.attention.head_count"]
    x = w["token_embd.weight"][ids]
    if arch == "gpt2":
        eps = meta["gpt2.attention.layer_norm_epsilon"]

        def norm(h, name):
            mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
            return (h - mu) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

        def lin(h, name):
            return h @ w[name + ".weight"].T + w[name + ".bias"]

        x = x + w["position_embd.weight"][: len(ids)]
        for i in range(n_layer):
            qkv = lin(norm(x, f"blk.{i}.attn_norm"), f"blk.{i}.attn_qkv")
            q, k, v = (a.reshape(len(ids), n_head, -1) for a in np.split(qkv, 3, axis=-1))
            x = x + lin(attend(q, k, v), f"blk.{i}.attn_output")
            h = lin(norm(x, f"blk.{i}.ffn_norm"), f"blk.{i}.ffn_up")
            h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
            x = x + lin(h, f"blk.{i}.ffn_down")
        return norm(x, "output_norm") @ w["output.weight"].T
    eps, base = meta[f"{arch}.attention.layer_norm_rms_epsilon"], meta[f"{arch}.rope.freq_base"]
    n_kv = meta[f"{arch}.attention.head_count_kv"]

    def rms(h, name):
        return h / np.sqrt((h * h).mean(-1, keepdims=True) + eps) * w[name]

    def lin(h, name):
        return h @ w[name + ".weight"].T + w.get(name + ".bias", 0.0)

    for i in range(n_layer):
        h = rms(x, f"blk.{i}.attn_norm.weight")
        q = lin(h, f"blk.{i}.attn_q").reshape(len(ids), n_head, -1)
        k = lin(h, f"blk.{i}.attn_k").reshape(len(ids), n_kv, -1)
        v = lin(h, f"blk.{i}.attn_v").reshape(len(ids), n_kv, -1)
        q, k = rope(q, base, neox=arch == "qwen2"), rope(k, base, neox=arch == "qwen2")
        x = x + lin(attend(q, k, v), f"blk.{i}.attn_output")
        h = rms(x, f"blk.{i}.ffn_norm.weight")
        g = lin(h, f"blk.{i}.ffn_gate")
        x = x + lin(g / (1 + np.exp(-g)) * lin(h, f"blk.{i}.ffn_up"), f"blk.{i}.ffn_down")
    return rms(x, "output_norm.weight") @ w["output.weight"].T


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_gguf_read_as_llama_cpp_does_gives_our_logits(arch, trained_models, export_tokenizer, tmp_path):
    out = tmp_path / "gguf"
    result = export_model(trained_models[arch], out, "gguf")
    assert result.manifest["gguf_architecture"] == arch and (out / "model.gguf").is_file()
    meta, w = read(out / "model.gguf")
    assert meta["general.architecture"] == arch
    model, tok = duplexlm.load(trained_models[arch])
    # the tokenizer: our vocabulary in id order, its merges, end token and chat template
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.tokens"][: tok.vocab_size] == [tok.id_to_token(i) for i in range(tok.vocab_size)]
    assert meta["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert len(meta["tokenizer.ggml.merges"]) > 0 and "im_start" in meta["tokenizer.chat_template"]
    for text in LINES[:3]:
        ids = tok.encode(text, add_special_tokens=False)
        with torch.no_grad():
            ours = model(torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(forward(meta, w, ids), ours, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gguf_q8_0_keeps_perplexity_within_2_percent(arch, trained_models, export_tokenizer, tmp_path):
    f32, q8 = tmp_path / "f32", tmp_path / "q8"
    export_model(trained_models[arch], f32, "gguf")
    result = export_model(trained_models[arch], q8, "gguf", quantize="q8_0")
    assert result.manifest["tensor_types"]["Q8_0"] > 0
    assert (q8 / "model.gguf").stat().st_size < 0.6 * (f32 / "model.gguf").stat().st_size

    def ppl(path) -> float:
        meta, w = read(path / "model.gguf")
        nll, n = 0.0, 0
        for text in HELD_OUT:
            ids = export_tokenizer.encode(text, add_special_tokens=False)
            logits = forward(meta, w, ids)[:-1]
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            nll -= logp[np.arange(len(ids) - 1), ids[1:]].sum()
            n += len(ids) - 1
        return math.exp(nll / n)

    assert ppl(q8) == pytest.approx(ppl(f32), rel=0.02)


def test_gguf_refuses_what_llama_cpp_cannot_take(trained_models, tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"--format gguf: a seq2seq .* ct2"):
        export_model(trained_models["t5"], tmp_path / "o", "gguf")
    assert not (tmp_path / "o").exists()


def test_llama_cpp_gives_our_greedy_tokens(trained_models, export_tokenizer, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is optional: pip install llama-cpp-python "
                                    "(it builds llama.cpp from source, about 20 minutes on 2 cores)")
    for arch in ("gpt2", "llama", "qwen2"):
        out = tmp_path / arch
        export_model(trained_models[arch], out, "gguf")
        llm = llama_cpp.Llama(str(out / "model.gguf"), n_ctx=128, logits_all=False, verbose=False)
        model, tok = duplexlm.load(trained_models[arch])
        for text in ("我爱北京", "the cat sat"):
            ids = tok.encode(text, add_special_tokens=False)
            assert llm.tokenize(text.encode("utf-8"), add_bos=False) == ids  # its tokenizer is ours
            theirs = []
            for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
                theirs.append(token)
                if len(theirs) == 12:
                    break
            ours = []
            x = torch.tensor([ids])
            with torch.no_grad():
                for _ in range(12):
                    nxt = int(model(x).logits[0, -1].argmax())
                    ours.append(nxt)
                    x = torch.cat([x, torch.tensor([[nxt]])], 1)
            assert theirs == ours, (arch, text)


def test_llama_cpp_q8_0_keeps_perplexity_within_2_percent(trained_models, export_tokenizer, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is optional: pip install llama-cpp-python "
                                    "(it builds llama.cpp from source, about 20 minutes on 2 cores)")
    model, tok = duplexlm.load(trained_models["llama"])
    seqs = [tok.encode(text, add_special_tokens=False) for text in HELD_OUT]

    def ppl(path) -> float:
        llm = llama_cpp.Llama(str(path / "model.gguf"), n_ctx=128, logits_all=True, verbose=False)
        nll, n = 0.0, 0
        for ids in seqs:
            llm.reset()
            llm.eval(ids)
            logp = torch.from_numpy(llm.scores[:len(ids) - 1].copy()).log_softmax(-1)
            nll -= float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum())
            n += len(ids) - 1
        return math.exp(nll / n)

    with torch.no_grad():
        ours = math.exp(-sum(float(model(torch.tensor([s])).logits[0, :-1].log_softmax(-1)
                                   .gather(1, torch.tensor(s[1:])[:, None]).sum()) for s in seqs)
                        / sum(len(s) - 1 for s in seqs))
    export_model(trained_models["llama"], tmp_path / "f32", "gguf")
    export_model(trained_models["llama"], tmp_path / "q8", "gguf", quantize="q8_0")
    assert ppl(tmp_path / "f32") == pytest.approx(ours, rel=1e-3)
    assert ppl(tmp_path / "q8") == pytest.approx(ours, rel=0.02)


def test_llama_cpp_engine_serves_requests_as_our_engine(trained_models, export_tokenizer, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is optional: pip install llama-cpp-python")
    from duplexlm.errors import ConfigError
    from duplexlm.export.llama_cpp import LlamaCppEngine, LlamaCppModel
    from duplexlm.infer.engine import Engine, SamplingParams

    out = tmp_path / "gguf"
    export_model(trained_models["llama"], out, "gguf")
    model, tok = duplexlm.load(trained_models["llama"])
    ours = Engine(model, tok, max_batch_size=4)
    engine = LlamaCppEngine(out, export_tokenizer)
    prompts = [export_tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    greedy = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)
    got = engine.generate(prompts, greedy)  # one request after another
    assert [c.token_ids for c in got] == [c.token_ids for c in ours.generate(prompts, greedy)]
    assert all(c.finish_reason == "length" for c in got)
    assert LlamaCppModel(out).generate(prompts, 12, ignore_eos=True) == [c.token_ids for c in got]
    # the end token stops a line learnt to its end; a stop string cuts the text before it
    full = engine.generate("我爱北京", max_new_tokens=40, temperature=0)
    assert full.finish_reason == "stop" and full.text == ours.generate("我爱北京", max_new_tokens=40, temperature=0).text
    cut = engine.generate("我爱北京", max_new_tokens=40, temperature=0, stop=["上"])
    assert cut.finish_reason == "stop" and cut.text == full.text.split("上")[0]
    assert "".join(engine.stream("今天天气", max_new_tokens=20, temperature=0)) == engine.generate(
        "今天天气", max_new_tokens=20, temperature=0).text
    # a seed makes one request's sampling reproducible, in llama.cpp's own sampler
    sampled = SamplingParams(max_new_tokens=16, temperature=1.5, seed=7, ignore_eos=True)
    a = engine.generate("hello", sampled).token_ids
    assert a == engine.generate("hello", sampled).token_ids
    assert a != engine.generate("hello", SamplingParams(max_new_tokens=16, temperature=1.5, seed=8,
                                                        ignore_eos=True)).token_ids
    # an abort ends a request at once, and the engine goes on
    rid = engine.add_request("hello world,", SamplingParams(max_new_tokens=100, temperature=0, ignore_eos=True))
    engine.abort(rid)
    ends = [o for _ in range(50) for o in engine.step() if o.request_id == rid and o.finished]
    assert ends and ends[0].finish_reason == "abort" and not engine.has_unfinished()
    with pytest.raises(ConfigError, match=r"num_beams: the llama\.cpp engine offers no beam search"):
        engine.add_request("我爱", SamplingParams(num_beams=2))
    with pytest.raises(ConfigError, match="stop_token_ids"):
        engine.add_request("我爱", SamplingParams(stop_token_ids=(10**6,)))
    with pytest.raises(ConfigError, match="scoring=True"):
        LlamaCppModel(out).score([prompts[0]])
    engine.close()


def test_a_gguf_export_without_llama_cpp_says_how_to_get_it(trained_models, tmp_path, monkeypatch):
    from duplexlm.errors import ConfigError
    from duplexlm.export.llama_cpp import LlamaCppModel

    export_model(trained_models["gpt2"], tmp_path / "gguf", "gguf")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"llama-cpp-python is not installed; install with: pip install "
                                          r"llama-cpp-python \(it builds llama.cpp from source"):
        LlamaCppModel(tmp_path / "gguf")
    with pytest.raises(UnsupportedModelError, match="not a GGUF export"):
        LlamaCppModel(trained_models["gpt2"])
