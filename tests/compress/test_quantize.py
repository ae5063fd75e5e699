"""Weight-only quantisation: the integer formats, every family close to fp32, save → load identical,
the file's size, generation through the engine, ``duplex quantize`` end to end, and every bad input.

Tolerances are relative: ``‖Δ‖ / ‖fp32 logits‖`` over the sample batch. Why these bounds (measured
on these tiny random models over 3 seeds, each family; the bound is about 2-3x the worst seen):

- int8, dequantised on the fly: a weight moves at most half a step, ``max|row| / 254``; for Gaussian
  rows that is ~0.5% of the row's RMS per layer, and a few layers compound it to ≤ 1.1% → bound 3%.
- int8 through the CPU kernel: the activations are also rounded, per tensor to 7 bits, which about
  triples the error (≤ 3.6%) → bound 8%.
- int4, groups of 32: 15 levels per group, ~6% of the RMS per weight; ≤ 18.5% seen → bound 35%.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import duplexlm
from duplexlm.cli import main
from duplexlm.compress import (
    QuantEmbedding,
    QuantLinear,
    dequantize_int4,
    dequantize_model,
    int8_kernel_available,
    pack_int4,
    plan_quantization,
    quant_modules,
    quantization_spec,
    quantize,
    quantize_int4,
    quantize_int8,
    quantize_model,
    sample_inputs,
    set_fast_path,
    unpack_int4,
)
from duplexlm.config import DecoderConfig, EncoderConfig, RNNConfig, Seq2SeqConfig
from duplexlm.errors import ConfigError, ModelDirectoryError, ModelError, OutputError
from duplexlm.infer.engine import Engine, SamplingParams
from duplexlm.io import convert_to_hf, load_config_and_weights, save_model
from duplexlm.models import build_model
from duplexlm.models.lora import LoRAConfig, apply_lora
from duplexlm.tokenizer import train_tokenizer

V = 64
INT8_EXACT, INT8_KERNEL, INT4 = 0.03, 0.08, 0.35


def _llama(**kw: object) -> DecoderConfig:
    base: dict = dict(vocab_size=V, max_seq_len=32, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=96,
                      positions="rope", norm="rmsnorm", activation="silu", gated_mlp=True, qkv_bias=False,
                      out_bias=False, mlp_bias=False, norm_bias=False, tie_word_embeddings=False)
    base.update(kw)
    return DecoderConfig(**base)


CONFIGS: dict[str, Callable[[], object]] = {
    "gpt2": lambda: DecoderConfig(vocab_size=V, max_seq_len=32, d_model=64, n_layer=2, n_head=4, d_ff=96),
    "llama": _llama,
    "bert": lambda: EncoderConfig(vocab_size=V, max_seq_len=32, d_model=64, n_layer=2, n_head=4, d_ff=96,
                                  head="classify", num_labels=3),
    "bert-mlm": lambda: EncoderConfig(vocab_size=V, max_seq_len=32, d_model=64, n_layer=2, n_head=4, d_ff=96,
                                      head="mlm"),
    "t5": lambda: Seq2SeqConfig(vocab_size=V, d_model=64, head_dim=16, d_ff=96, n_layer=2, n_head=4),
    "rnn": lambda: RNNConfig(vocab_size=V, d_embed=16, d_hidden=32, num_labels=3),
}
TIED = {"gpt2": {"lm_head"}, "bert-mlm": {"mlm_head.decoder"}, "t5": {"lm_head"}}  # kept in fp32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models run fastest on one thread, and the machine is shared
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(CONFIGS[name]()).eval()


def _logits(model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------------------------------
# The integer formats


def test_int8_rounding_is_within_half_a_step():
    w = torch.randn(12, 40)
    q, scales = quantize_int8(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    assert ((q.float() * scales[:, None] - w).abs() <= scales[:, None] / 2 + 1e-7).all()
    q0, s0 = quantize_int8(torch.zeros(2, 3))  # an all-zero row: scale 1, no division by zero
    assert q0.abs().sum() == 0 and torch.equal(s0, torch.ones(2))


@pytest.mark.parametrize("in_features", [40, 41, 7])
def test_int4_groups_with_a_remainder_and_odd_rows(in_features):
    """group 16 on 40 columns: groups 16, 16, 8; 41 also needs a padding nibble; 7 < 16: one group."""
    w = torch.randn(5, in_features)
    packed, scales = quantize_int4(w, 16)
    n_groups = -(-in_features // 16)
    assert packed.shape == (5, -(-in_features // 2)) and scales.shape == (5, n_groups)
    for g in range(n_groups):  # each group's scale is its own max / 7, computed independently here
        cols = w[:, g * 16:(g + 1) * 16]
        torch.testing.assert_close(scales[:, g], cols.abs().amax(1) / 7)
    back = dequantize_int4(packed, scales, in_features, 16)
    per_col = scales.repeat_interleave(16, 1)[:, :in_features]
    assert ((back - w).abs() <= per_col / 2 + 1e-6).all()
    assert torch.equal(unpack_int4(pack_int4(torch.arange(-7, 8).repeat(3, 1)), 15), torch.arange(-7, 8).repeat(3, 1).to(torch.int8))


def test_quant_linear_kernel_dequant_and_gradients():
    lin = nn.Linear(48, 24)
    q = QuantLinear.from_linear(lin, "int8")
    assert q.bias is lin.bias and not q.bias.requires_grad  # the same Parameter, frozen
    x = torch.randn(3, 5, 48)
    exact = F.linear(x, q.dequantized_weight(), q.bias)
    with torch.no_grad():
        y = q(x)
    assert y.shape == (3, 5, 24)
    if int8_kernel_available():
        assert not torch.equal(y, exact)  # the kernel ran (activations rounded too) ...
    assert _rel(y, exact) < 0.03  # ... and stays close
    q.fast = False
    with torch.no_grad():
        torch.testing.assert_close(q(x), exact)
    q.fast = True
    xg = x.clone().requires_grad_(True)  # a gradient is wanted: the differentiable path, always
    q(xg).sum().backward()
    torch.testing.assert_close(xg.grad, q.dequantized_weight().sum(0).expand_as(x))
    assert q(torch.randn(0, 48)).shape == (0, 24)


def test_kernel_packs_again_after_weights_change():
    a, b = QuantLinear.from_linear(nn.Linear(32, 16), "int8"), QuantLinear.from_linear(nn.Linear(32, 16), "int8")
    x = torch.randn(4, 32)
    with torch.no_grad():
        ya, yb = a(x), b(x)
        a.load_state_dict(b.state_dict())
        torch.testing.assert_close(a(x), yb)  # not the packed weight of before
        a.scales.mul_(2)  # an in-place edit counts too
        torch.testing.assert_close(a(x), 2 * yb - b.bias, rtol=0.02, atol=0.02)
        c = copy.deepcopy(a)  # the packed engine object is not copied, but made again
        torch.testing.assert_close(c(x), a(x))
    assert not torch.equal(ya, yb)


# ----------------------------------------------------------------------------------------------------
# Every family


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_family_stays_close_to_fp32(name):
    model = _model(name)
    inputs, _ = sample_inputs(model)
    ref = _logits(model, inputs)
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}

    q8 = copy.deepcopy(model)
    names = quantize_model(q8, "int8")
    assert set(names) == linears - TIED.get(name, set())
    assert all(isinstance(q8.get_submodule(n), QuantLinear) for n in names)
    for head in TIED.get(name, ()):  # the tie survives: the head is the embedding, in fp32
        assert type(q8.get_submodule(head)) is nn.Linear and q8.get_submodule(head).weight is q8.embed.weight
    assert _rel(_logits(q8, inputs), ref) < INT8_KERNEL
    set_fast_path(q8, False)
    assert _rel(_logits(q8, inputs), ref) < INT8_EXACT

    q4 = copy.deepcopy(model)
    quantize_model(q4, "int4", group_size=32)
    assert _rel(_logits(q4, inputs), ref) < INT4

    back = dequantize_model(q8)  # plain Linears again, computing what the dequantised path computed
    assert not quant_modules(back) and _rel(_logits(back, inputs), ref) < INT8_EXACT


@pytest.mark.parametrize("name,method", [(n, m) for n in CONFIGS for m in ("int8", "int4")])
def test_save_load_round_trip_is_identical(tmp_path, name, method):
    model = _model(name)
    quantize_model(model, method, 32 if method == "int4" else None)
    inputs, _ = sample_inputs(model)
    save_model(model, tmp_path / "q")
    loaded, tok = duplexlm.load(tmp_path / "q")
    assert tok is None and set(quant_modules(loaded)) == set(quant_modules(model))
    assert torch.equal(_logits(loaded, inputs), _logits(model, inputs))
    spec = json.loads((tmp_path / "q" / "config.json").read_text())["quantization"]
    assert spec == quantization_spec(model) and spec["method"] == method
    stored = load_file(str(tmp_path / "q" / "model.safetensors"))
    first = spec["modules"][0]
    assert stored[f"{first}.qweight"].dtype == (torch.int8 if method == "int8" else torch.uint8)
    assert f"{first}.weight" not in stored


def test_int8_file_is_under_30_percent_when_linears_dominate(tmp_path):
    torch.manual_seed(0)
    model = build_model(DecoderConfig(vocab_size=32, max_seq_len=32, d_model=128, n_layer=4, n_head=4, d_ff=512))
    save_model(model, tmp_path / "fp32")
    fp32 = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    for method, group, bound in (("int8", None, 0.30), ("int4", 64, 0.20)):
        q = copy.deepcopy(model)
        quantize_model(q, method, group)
        save_model(q, tmp_path / method)
        size = (tmp_path / method / "model.safetensors").stat().st_size
        assert size <= bound * fp32, (method, size / fp32)


EMBEDDED = {"gpt2": {"pos_embed"}, "llama": {"embed"}, "bert": {"embed", "pos_embed", "type_embed"},
            "bert-mlm": {"pos_embed", "type_embed"}, "t5": set(), "rnn": {"embed"}}  # tied tables stay fp32


@pytest.mark.parametrize("name", list(CONFIGS))
def test_embedding_tables_as_int8(tmp_path, name):
    model = _model(name)
    inputs, _ = sample_inputs(model)
    ref = _logits(model, inputs)
    q = copy.deepcopy(model)
    names = quantize_model(q, "int8", embeddings=True)
    tables = {n for n, m in q.named_modules() if isinstance(m, QuantEmbedding)}
    assert tables == EMBEDDED[name] and tables <= set(names)
    for head in TIED.get(name, ()):  # a tied table is the head's weight: both stay fp32 and tied
        assert type(q.embed) is nn.Embedding and q.get_submodule(head).weight is q.embed.weight
    set_fast_path(q, False)
    assert _rel(_logits(q, inputs), ref) < INT8_EXACT  # one more half step per looked-up row
    save_model(q, tmp_path / "q")
    loaded, _ = duplexlm.load(tmp_path / "q")
    set_fast_path(loaded, False)
    assert torch.equal(_logits(loaded, inputs), _logits(q, inputs))
    spec = json.loads((tmp_path / "q" / "config.json").read_text())["quantization"]
    assert set(spec.get("embeddings", [])) == tables
    stored = load_file(str(tmp_path / "q" / "model.safetensors"))
    for t in tables:
        assert stored[f"{t}.qweight"].dtype == torch.int8 and f"{t}.weight" not in stored
    back = dequantize_model(loaded)
    assert not any(isinstance(m, QuantEmbedding) for m in back.modules())


def test_int8_embeddings_bring_a_small_classifier_under_30_percent(tmp_path):
    # vocabulary 5000 × 128 is a third of this classifier: with fp32 tables int8 cannot reach 30%
    torch.manual_seed(0)
    model = build_model(EncoderConfig(vocab_size=5000, max_seq_len=128, d_model=128, n_layer=4, n_head=4, d_ff=512,
                                      head="classify", num_labels=2))
    save_model(model, tmp_path / "fp32")
    sizes = {}
    for tables in (False, True):
        q = copy.deepcopy(model)
        quantize_model(q, "int8", embeddings=tables)
        save_model(q, tmp_path / str(tables))
        sizes[tables] = (tmp_path / str(tables) / "model.safetensors").stat().st_size
    fp32 = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    assert sizes[False] > 0.30 * fp32 >= sizes[True], {k: v / fp32 for k, v in sizes.items()}


def test_bf16_load_runs_the_dequantising_path(tmp_path):
    model = _model("llama")
    inputs, _ = sample_inputs(model)
    ref = _logits(model, inputs)
    quantize_model(model, "int8")
    save_model(model, tmp_path / "q")
    half, _ = duplexlm.load(tmp_path / "q", dtype=torch.bfloat16)
    assert half.blocks[0].attn.qkv.qweight.dtype == torch.int8  # integers are not cast
    assert _rel(_logits(half, inputs).float(), ref) < 0.1


# ----------------------------------------------------------------------------------------------------
# Generation through the engine


def _trained_decoder() -> tuple[nn.Module, list[int]]:
    """A tiny decoder that has learnt a cycle of 9 tokens: its greedy choices have wide margins, so
    that quantisation noise (unlike on a random model, whose logits are nearly flat) cannot flip them."""
    torch.manual_seed(0)
    model = build_model(DecoderConfig(vocab_size=32, max_seq_len=64, d_model=64, n_layer=2, n_head=4, d_ff=128,
                                      dropout=0.0))
    cycle = (torch.randperm(30)[:9] + 2).repeat(8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(80):
        batch = torch.stack([cycle[s:s + 24] for s in torch.randint(0, 9, (8,)).tolist()])
        loss = F.cross_entropy(model(batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), cycle.tolist()


def test_engine_generates_with_a_quantised_decoder(tmp_path):
    model, cycle = _trained_decoder()
    params = SamplingParams(max_new_tokens=16, temperature=0, ignore_eos=True)
    prompts = [cycle[:5], cycle[3:10]]

    def greedy(m: nn.Module) -> list[list[int]]:
        return [c.token_ids for c in Engine(m, max_batch_size=2).generate(prompts, params)]

    fp32 = greedy(copy.deepcopy(model))
    assert fp32[0] == cycle[5:21]  # it learnt the cycle: the margins are wide
    q8 = copy.deepcopy(model)
    quantize_model(q8, "int8")
    save_model(q8, tmp_path / "q8")
    assert greedy(duplexlm.load(tmp_path / "q8")[0]) == fp32  # through the CPU kernel, after a round trip
    q4 = copy.deepcopy(model)
    quantize_model(q4, "int4", group_size=32)
    same = sum(a == b for r4, r in zip(greedy(q4), fp32) for a, b in zip(r4, r))
    assert same >= 0.9 * sum(map(len, fp32))


def _trained_seq2seq() -> tuple[nn.Module, Callable[[int, int], list[int]]]:
    """A tiny T5 that has learnt to answer a source of one repeated token ``c`` (any length) with the
    chain ``σ(c), σ²(c), …`` of a fixed permutation ``σ`` of the ordinary tokens: the first answer goes
    through the encoder and cross-attention, the next ones through the decoder too. Trained, its greedy
    choices have wide margins (about 3 in logits here, 1.6 after int4) that quantisation noise cannot
    flip, while any mistake in the encoder, the cross-attention or the decoder's cache sends the chain
    elsewhere."""
    torch.manual_seed(0)
    model = build_model(Seq2SeqConfig(vocab_size=V, d_model=64, head_dim=16, d_ff=96, n_layer=2, n_head=4,
                                      dropout=0.0))
    succ = torch.arange(V)
    succ[2:] = torch.randperm(V - 2) + 2  # 0 (pad, decoder start) and 1 (eos) stay out of the chains

    def chain(c: int, n: int) -> list[int]:
        out = []
        for _ in range(n):
            c = int(succ[c])
            out.append(c)
        return out

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        c = torch.randint(2, V, (32,))
        source = c[:, None].repeat(1, int(torch.randint(2, 7, ())))
        target = torch.tensor([chain(int(x), 6) for x in c])
        loss = F.cross_entropy(model(source, decoder_input_ids=model.shift_right(target)).logits.flatten(0, 1),
                               target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), chain


@torch.no_grad()
def _greedy_seq2seq(model: nn.Module, source: list[int], n: int) -> list[int]:
    """Greedy decoding the plain way, for reference: one unpadded source, the whole target prefix
    through the model at every step (no cache, no engine)."""
    target = torch.tensor([[model.config.decoder_start_token_id]])
    for _ in range(n):
        logits = model(torch.tensor([source]), decoder_input_ids=target).logits[0, -1]
        target = torch.cat([target, logits.argmax().view(1, 1)], dim=1)
    return target[0, 1:].tolist()


def test_engine_runs_a_quantised_encoder_decoder(tmp_path):
    model, chain = _trained_seq2seq()
    # sources of different lengths, two at a time: the engine pads them and caches both sides
    prompts = [[c] * n for c, n in [(5, 3), (17, 6), (30, 2), (42, 5), (55, 4), (63, 6)]]
    want = [chain(p[0], 8) for p in prompts]
    assert [_greedy_seq2seq(model, p, 8) for p in prompts] == want  # fp32 learnt the chains
    params = SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)
    for method, group_size in (("int8", None), ("int4", 16)):
        q = copy.deepcopy(model)
        quantize_model(q, method, group_size)
        save_model(q, tmp_path / method)
        loaded, _ = duplexlm.load(tmp_path / method)
        assert len(quant_modules(loaded)) == len(quant_modules(q)) > 0  # quantised, and still after loading
        direct = [_greedy_seq2seq(loaded, p, 8) for p in prompts]
        # the quantised model decodes as fp32 does (int8 through the CPU kernel, int4 dequantised)
        assert direct == want, (method, direct)
        # and the engine (batched, padded, cached) gives what the plain greedy decode gives
        out = Engine(loaded, max_batch_size=2, max_len=16).generate(prompts, params)
        assert [c.token_ids for c in out] == direct, method
        assert all(c.finish_reason == "length" for c in out)


# ----------------------------------------------------------------------------------------------------
# duplex quantize


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2-style decoder with a Chinese BPE tokenizer, saved."""
    lines = ["我爱北京天安门", "北京欢迎你", "今天天气很好，我们一起去公园散步吧。", "北京是中华人民共和国的首都。",
             "这家餐厅的菜很好吃", "机器学习让计算机从数据中学习"] * 20
    tok = train_tokenizer(lines, "bpe", vocab_size=300, num_sentinels=0)
    torch.manual_seed(0)
    model = build_model(DecoderConfig(vocab_size=tok.vocab_size, max_seq_len=64, d_model=64, n_layer=2, n_head=4))
    out = tmp_path_factory.mktemp("src") / "gpt2"
    save_model(model, out, tokenizer=tok)
    return out


def test_cli_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "q8"
    assert main(["quantize", "--model", str(model_dir), "--method", "int8", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "max |Δlogits|" in text and "sample sentences through the tokenizer" in text
    assert "lm_head (weight tied to embed.weight)" in text
    assert (out / "tokenizer.json").is_file()
    assert main(["info", str(out)]) == 0 and "decoder" in capsys.readouterr().out
    assert main(["generate", "--model", str(out), "--prompt", "今天", "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0
    # --overwrite replaces an earlier output; int4 with a group size that leaves a remainder (64 = 48 + 16)
    assert main(["quantize", "--model", str(model_dir), "--method", "int4", "--group-size", "48", "--out", str(out),
                 "--overwrite"]) == 0
    assert "int4/g48" in capsys.readouterr().out
    assert duplexlm.load(out)[0].blocks[0].attn.qkv.group_size == 48


def test_the_function_returns_the_report(model_dir, tmp_path):
    report = quantize(model_dir, tmp_path / "q", method="int8")
    assert report.parameters > report.quantized_parameters > 0
    assert report.bytes_after < report.bytes_before and 0 < report.size_ratio < 1
    assert 0 < report.mean_abs_dlogits <= report.max_abs_dlogits < 0.05 * report.max_abs_logits
    assert report.kept == {"lm_head": "weight tied to embed.weight"}
    assert report.as_dict()["method"] == "int8" and len(report.table()) == 2


# ----------------------------------------------------------------------------------------------------
# Bad input: each error names the flag or file and says what was expected


@pytest.mark.parametrize("argv,needle", [
    (["--method", "int3"], "--method: expected one of 'int8', 'int4', found 'int3'"),
    (["--method", "int4", "--group-size", "4"], "--group-size: expected an integer >= 8"),
    (["--method", "int8", "--group-size", "64"], "--group-size: applies to --method int4 only"),
])
def test_cli_bad_flags(model_dir, tmp_path, capsys, argv, needle):
    assert main(["quantize", "--model", str(model_dir), "--out", str(tmp_path / "q"), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "q").exists()


def test_missing_model_directory(tmp_path, capsys):
    assert main(["quantize", "--model", str(tmp_path / "nope"), "--method", "int8", "--out", str(tmp_path / "q")]) == 2
    assert "--model: " in capsys.readouterr().err and not (tmp_path / "q").exists()
    with pytest.raises(ModelDirectoryError, match=r"^--model: .* expected one with config.json"):
        quantize(tmp_path, tmp_path / "q")


def test_output_directory_is_checked_before_any_work(model_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match=r"--out: .* holds files duplexlm did not write"):
        quantize(model_dir, mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(OutputError, match=r"--out: .* is \(or contains\) the input"):
        quantize(model_dir, model_dir, overwrite=True)
    quantize(model_dir, tmp_path / "q")
    with pytest.raises(OutputError, match=r"--out: .* pass --overwrite"):
        quantize(model_dir, tmp_path / "q")


def test_quantising_twice_is_refused(model_dir, tmp_path):
    quantize(model_dir, tmp_path / "q")
    with pytest.raises(ModelError, match=r"--model: .* is already quantised \(int8\)"):
        quantize(tmp_path / "q", tmp_path / "qq")
    model, _ = duplexlm.load(tmp_path / "q")
    with pytest.raises(ModelError, match=r"already quantised"):
        quantize_model(model, "int4")


def test_lora_model_and_bad_method_in_python():
    model = _model("gpt2")
    with pytest.raises(ConfigError, match=r"^method: expected one of"):
        quantize_model(model, "fp8")
    with pytest.raises(ConfigError, match=r"^group_size: expected an integer >= 8"):
        quantize_model(model, "int4", group_size=0)
    apply_lora(model, LoRAConfig(r=2))
    with pytest.raises(ModelError, match=r"LoRA modules .* merge them"):
        quantize_model(model, "int8")
    bad = _model("rnn")
    bad.classifier.weight.data[0, 0] = float("nan")
    with pytest.raises(ModelError, match=r"^classifier: the weight holds NaN"):
        quantize_model(bad, "int8")
    assert not quant_modules(bad)  # checked before any module was swapped
    assert plan_quantization(_model("gpt2"))[1] == {"lm_head": "weight tied to embed.weight"}


def test_full_precision_consumers_refuse_a_quantised_directory(model_dir, tmp_path):
    quantize(model_dir, tmp_path / "q")
    with pytest.raises(ModelError, match=r"src: .* holds a quantised model \(int8\).*dequantize_model"):
        convert_to_hf(tmp_path / "q", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(ModelError, match=r"holds a quantised model .* duplexlm.load"):
        load_config_and_weights(tmp_path / "q")  # as training's init_from reads it
    config, sd = load_config_and_weights(tmp_path / "q", allow_quantized=True)
    assert config.family == "decoder" and sd["blocks.0.attn.qkv.qweight"].dtype == torch.int8


def _edit(directory: Path, change: Callable[[dict], None]) -> None:
    file = directory / "config.json"
    data = json.loads(file.read_text())
    change(data["quantization"])
    file.write_text(json.dumps(data))


def test_corrupt_quantised_directories_name_the_file(model_dir, tmp_path):
    quantize(model_dir, tmp_path / "q")
    good = (tmp_path / "q" / "config.json").read_text()
    cases = [
        (lambda q: q.update(method="int3"), "quantization.method: expected one of 'int8', 'int4', found 'int3'"),
        (lambda q: q.update(bits=4), "quantization.bits: expected 8 for int8, found 4"),
        (lambda q: q.update(format="gptq"), "quantization.format: expected 'duplexlm-weight-only'"),
        (lambda q: q["modules"].append("lm_head"), "'lm_head', but its weight tied to embed.weight"),
        (lambda q: q["modules"].append("blocks.9.mlp.up"), "'blocks.9.mlp.up', but it is not an nn.Linear"),
        (lambda q: q.update(modules=[]), "quantization.modules: expected a non-empty list"),
    ]
    for change, needle in cases:
        _edit(tmp_path / "q", change)
        with pytest.raises(ModelError, match=r"config.json: ") as e:
            duplexlm.load(tmp_path / "q")
        assert needle in str(e.value)
        (tmp_path / "q" / "config.json").write_text(good)
    weights = tmp_path / "q" / "model.safetensors"
    sd = load_file(str(weights))
    sd["blocks.0.attn.qkv.qweight"] = sd["blocks.0.attn.qkv.qweight"].float()
    save_file(sd, str(weights))
    with pytest.raises(ModelError, match=r"blocks.0.attn.qkv.qweight: expected dtype int8 for int8, found float32"):
        duplexlm.load(tmp_path / "q")


def test_a_quantised_decoder_serves_its_greedy_answer(model_dir, tmp_path):
    """`duplex serve` on a quantised directory: the completion is the engine's greedy text on the same
    quantised model (the server builds its own engine over what `duplexlm.load` rebuilt)."""
    from .serving import assert_serves_its_greedy_answer

    out = tmp_path / "q8"
    assert main(["quantize", "--model", str(model_dir), "--method", "int8", "--out", str(out)]) == 0
    model, tok = duplexlm.load(out)
    assert_serves_its_greedy_answer(model, tok, out)
