"""Pruning: magnitude (any family) and heads / neurons (every Transformer family): the smaller config and
shapes, save → load identical, sparsity 0 changes nothing, removing a group whose output is zero
changes nothing (the slicing is right), magnitude sparsity per module and kept under AdamW, generation
after head pruning, Hugging Face export, ``prune`` end to end, and every bad input."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import duplexlm
from duplexlm.compress import (
    PruneReport,
    keep_sparsity,
    magnitude_modules,
    prune,
    prune_model,
    quantize_model,
    sample_inputs,
)
from duplexlm.config import DecoderConfig, EncoderConfig, RNNConfig, Seq2SeqConfig
from duplexlm.errors import ConfigError, ModelError, UnsupportedModelError
from duplexlm.infer.engine import Engine
from duplexlm.io import convert_to_hf, load_config_and_weights, load_weights, save_model
from duplexlm.models import build_model, count_parameters
from duplexlm.models.layers import MLP, Attention
from duplexlm.models.lora import LoRAConfig, apply_lora
from duplexlm.tokenizer import train_tokenizer

V = 64


def _llama(**kw: object) -> DecoderConfig:
    base: dict = dict(vocab_size=V, max_seq_len=32, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=96,
                      positions="rope", norm="rmsnorm", activation="silu", gated_mlp=True, qkv_bias=False,
                      out_bias=False, mlp_bias=False, norm_bias=False, tie_word_embeddings=False)
    base.update(kw)
    return DecoderConfig(**base)


CONFIGS: dict[str, Callable[[], object]] = {
    "gpt2": lambda: DecoderConfig(vocab_size=V, max_seq_len=32, d_model=64, n_layer=2, n_head=4, d_ff=96),
    "llama": _llama,  # grouped-query attention: 2 query heads per key/value head
    "bert": lambda: EncoderConfig(vocab_size=V, max_seq_len=32, d_model=64, n_layer=2, n_head=4, d_ff=96,
                                  head="classify", num_labels=3, dropout=0.0, attn_dropout=0.0),
    "bert-mlm": lambda: EncoderConfig(vocab_size=V, max_seq_len=32, d_model=64, n_layer=2, n_head=4, d_ff=96,
                                      head="mlm", dropout=0.0, attn_dropout=0.0),
    "t5": lambda: Seq2SeqConfig(vocab_size=V, d_model=64, head_dim=16, d_ff=96, n_layer=2, n_head=4, dropout=0.0),
    "t5-gated": lambda: Seq2SeqConfig(vocab_size=V, d_model=64, head_dim=16, d_ff=96, n_layer=2, n_decoder_layer=1,
                                      n_head=4, gated_mlp=True, activation="gelu_tanh", tie_word_embeddings=False,
                                      dropout=0.0),
    "rnn": lambda: RNNConfig(vocab_size=V, d_embed=16, d_hidden=32, num_labels=3),
}
TRANSFORMERS = [n for n in CONFIGS if n != "rnn"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(CONFIGS[name]()).eval()


def _inputs(model: nn.Module) -> dict[str, Tensor]:
    inputs, _ = sample_inputs(model)
    inputs["attention_mask"][1, -3:] = 0  # a padded row too
    return inputs


def _logits(model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _calibration(model: nn.Module) -> dict[str, Tensor]:
    batch = _inputs(model)
    if model.config.family == "seq2seq":
        batch["labels"] = batch["input_ids"]
    return batch


def _groups(config: object) -> int:
    return getattr(config, "n_kv_head", None) or config.n_head


# ----------------------------------------------------------------------------------------------------
# Structured pruning: shapes, config, round trip


@pytest.mark.parametrize("method", ["heads", "neurons", "heads,neurons"])
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_structured_pruning_gives_a_smaller_model_that_round_trips(name, method, tmp_path):
    model = _model(name)
    c0 = model.config
    inputs = _inputs(model)
    before = count_parameters(model)
    info = prune_model(model, method, 0.3)
    c = model.config
    groups = _groups(c0)
    removed = int(0.3 * groups + 0.5) if "heads" in method else 0  # 4 → 1 (of 4), llama 2 → 1 (of 2)
    rep = c0.n_head // groups
    assert c.n_head == (groups - removed) * rep and c.head_dim == c0.head_dim
    if c.family == "decoder":
        assert c.n_kv_head == groups - removed
    assert c.d_ff == (c0.d_ff - 29 if "neurons" in method else c0.d_ff)  # round(0.3 · 96) = 29
    assert count_parameters(model) < before and info.parameters_after == count_parameters(model)
    assert info.reached == {**({"heads": removed / groups} if "heads" in method else {}),
                            **({"neurons": 29 / 96} if "neurons" in method else {})}
    # every tensor has the shape a fresh model of the new config has: the config describes the weights
    fresh = build_model(c).state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in fresh.items()}
    for m in model.modules():
        if isinstance(m, Attention):
            assert (m.n_head, m.n_kv_head, m.proj.in_features) == (c.n_head, _groups(c), c.n_head * c.head_dim)
        if isinstance(m, MLP):
            assert m.up.out_features == m.down.in_features == c.d_ff
    assert c.pruning["method"] == method and c.pruning["sparsity"] == 0.3 and c.pruning["importance"] == "weight"
    logits = _logits(model, inputs)
    assert logits.shape == _logits(_model(name), inputs).shape and torch.isfinite(logits).all()

    save_model(model, tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["pruning"]["shapes"] == {k: list(v) for k, v in info.shapes.items()}
    if c.family == "encoder" and "heads" in method:
        assert saved["head_dim"] == 16  # 3 heads of 16 in a 64-wide model
    loaded, _ = duplexlm.load(tmp_path / "m")
    assert loaded.config == c
    torch.testing.assert_close(_logits(loaded, inputs), logits, rtol=0, atol=0)


@pytest.mark.parametrize("importance", ["weight", "taylor"])
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_sparsity_zero_changes_nothing(name, importance):
    model = _model(name)
    inputs = _inputs(model)
    want = _logits(model, inputs)
    calibration = _calibration(model) if importance == "taylor" else None
    info = prune_model(model, "heads,neurons", 0.0, importance=importance, calibration=calibration)
    assert info.parameters_after == info.parameters_before and info.reached == {"heads": 0.0, "neurons": 0.0}
    torch.testing.assert_close(_logits(model, inputs), want, rtol=0, atol=0)


def _zero_group(name: str, n_groups: int) -> int:
    """The key/value group zeroed in attention module ``name``: a different one per layer, except in a
    T5 stack's self-attention, whose layers share the position bias and so their heads."""
    layer = int(name.split("blocks.")[1].split(".")[0])
    if name.endswith(".attn") and name.startswith(("encoder.", "decoder.")):
        return 1 if name.startswith("encoder.") else 2
    return (layer + 1) % n_groups


@pytest.mark.parametrize("importance", ["weight", "taylor"])
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_removing_heads_whose_output_is_zero_changes_nothing(name, importance):
    """Zero the output-projection columns of one key/value group per attention module (all its query
    heads under GQA): that group scores lowest, is removed, and the logits stay as they were, which
    holds only if q, k, v, the output projection (and T5's position bias) are sliced consistently."""
    model = _model(name)
    inputs = _inputs(model)
    zeroed: dict[str, int] = {}
    with torch.no_grad():
        for mod_name, a in model.named_modules():
            if isinstance(a, Attention):
                g = _zero_group(mod_name, a.n_kv_head)
                width = a.n_head // a.n_kv_head * a.head_dim
                a.proj.weight[:, g * width:(g + 1) * width] = 0
                zeroed[mod_name] = g
    want = _logits(model, inputs)
    calibration = _calibration(model) if importance == "taylor" else None
    groups = _groups(model.config)
    prune_model(model, "heads", 1 / groups, importance=importance, calibration=calibration)
    assert _groups(model.config) == groups - 1
    for mod_name in zeroed:  # no zero column left: the zeroed group is the one that went
        assert (model.get_submodule(mod_name).proj.weight.abs().sum(0) > 0).all()
    torch.testing.assert_close(_logits(model, inputs), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("importance", ["weight", "taylor"])
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_removing_neurons_whose_down_column_is_zero_changes_nothing(name, importance):
    model = _model(name)
    inputs = _inputs(model)
    with torch.no_grad():
        for i, m in enumerate(mlp for mlp in model.modules() if isinstance(mlp, MLP)):
            m.down.weight[:, (7 * i + 3) % m.down.in_features] = 0  # a different neuron in each block
    want = _logits(model, inputs)
    calibration = _calibration(model) if importance == "taylor" else None
    prune_model(model, "neurons", 1 / 96, importance=importance, calibration=calibration)
    assert model.config.d_ff == 95
    for m in model.modules():
        if isinstance(m, MLP):
            assert (m.down.weight.abs().sum(0) > 0).all()
    torch.testing.assert_close(_logits(model, inputs), want, rtol=0, atol=2e-5)


def test_weight_and_taylor_scores_can_disagree_and_both_run_with_a_loss_callable():
    model = _model("gpt2")
    batch = {"input_ids": torch.randint(0, V, (2, 12)),
             "loss": lambda out, b: out.logits.float().pow(2).mean()}
    info = prune_model(copy.deepcopy(model), "heads,neurons", 0.5, importance="taylor", calibration=batch)
    assert info.importance == "taylor" and info.reached == {"heads": 0.5, "neurons": 0.5}
    assert model.training is False  # the calibration pass leaves the mode as it was


def test_pruning_twice_keeps_the_earlier_steps_on_record(tmp_path):
    model = _model("llama")
    prune_model(model, "neurons", 0.25)
    prune_model(model, "magnitude", 0.5)
    entry = model.config.pruning
    assert entry["method"] == "magnitude" and [p["method"] for p in entry["previous"]] == ["neurons"]
    assert model.config.d_ff == 72
    save_model(model, tmp_path / "m")
    assert duplexlm.load(tmp_path / "m")[0].config.pruning == entry


# ----------------------------------------------------------------------------------------------------
# Magnitude pruning and keeping its zeros


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert-mlm", "t5", "rnn"])
def test_magnitude_reaches_the_sparsity_in_every_untied_linear(name, tmp_path):
    model = _model(name)
    embed_before = model.embed.weight.clone()
    info = prune_model(model, "magnitude", 0.4)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    tied = {"gpt2": {"lm_head"}, "bert-mlm": {"mlm_head.decoder"}, "t5": {"lm_head"}}.get(name, set())
    assert set(info.modules) == set(linears) - tied and model.config.pruning["modules"] == info.modules
    for n in info.modules:
        w = linears[n].weight
        assert int((w == 0).sum()) == int(0.4 * w.numel() + 0.5), n
    assert torch.equal(model.embed.weight, embed_before)  # embeddings (and a tied head) untouched
    assert 0.39 < info.reached["magnitude"] < 0.41 and info.parameters_after == info.parameters_before
    inputs = _inputs(model)
    save_model(model, tmp_path / "m")
    loaded, _ = duplexlm.load(tmp_path / "m")
    assert loaded.config.pruning == model.config.pruning
    torch.testing.assert_close(_logits(loaded, inputs), _logits(model, inputs), rtol=0, atol=0)


def test_magnitude_zeroes_the_smallest_weights():
    lin_model = _model("gpt2")
    w = lin_model.blocks[0].mlp.up.weight.detach().clone()
    prune_model(lin_model, "magnitude", 0.5)
    after = lin_model.blocks[0].mlp.up.weight
    threshold = w.abs().flatten().sort().values[w.numel() // 2 - 1]
    assert torch.equal(after == 0, w.abs() <= threshold)


def test_keep_sparsity_keeps_zeros_through_adamw_with_weight_decay(tmp_path):
    model = _model("llama")
    prune_model(model, "magnitude", 0.5)
    save_model(model, tmp_path / "m")
    model, _ = duplexlm.load(tmp_path / "m")  # what the loop sees: the entry read back from config.json
    names = magnitude_modules(model)
    assert keep_sparsity(model) == len(names) == 11  # 2 × (qkv, proj, gate, up, down) + untied lm_head
    assert keep_sparsity(model) == 11  # again: hooks replaced, not stacked
    zeros = {n: model.get_submodule(n).weight == 0 for n in names}
    before = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        ids = torch.randint(0, V, (2, 12))
        logits = model(ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n in names:
        w = model.get_submodule(n).weight
        assert torch.equal(w[zeros[n]], torch.zeros_like(w[zeros[n]])), n
        assert not torch.equal(w, before[n])  # the others trained

    # the init_from path (config and weights, then build_model) finds the entry too
    config, sd = load_config_and_weights(tmp_path / "m")
    fresh = build_model(config)
    load_weights(fresh, sd)
    assert keep_sparsity(fresh) == 11


def test_without_keep_sparsity_adamw_moves_the_zeros():
    model = _model("gpt2")
    prune_model(model, "magnitude", 0.5)
    w = model.blocks[0].mlp.up.weight
    zeros = w == 0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randint(0, V, (2, 8))).logits.sum().backward()
    opt.step()
    assert (w[zeros] != 0).any()


def test_keep_sparsity_on_unpruned_and_structured_models_hooks_nothing():
    assert keep_sparsity(_model("gpt2")) == 0
    model = _model("gpt2")
    prune_model(model, "heads", 0.25)
    assert keep_sparsity(model) == 0


# ----------------------------------------------------------------------------------------------------
# Generation and export after pruning


def _greedy_without_cache(model: nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            if model.config.family == "seq2seq":
                dec = torch.tensor([[model.config.decoder_start_token_id, *out]])
                logits = model(ids, decoder_input_ids=dec).logits
            else:
                logits = model(torch.cat([ids, torch.tensor([out], dtype=torch.long)], 1)).logits
            out.append(int(logits[0, -1].argmax()))
    return out


@pytest.mark.parametrize("name", ["llama", "gpt2", "t5"])
def test_generation_with_a_kv_cache_after_head_pruning(name, tmp_path):
    model = _model(name)
    prune_model(model, "heads,neurons", 0.5)
    save_model(model, tmp_path / "m")
    loaded, _ = duplexlm.load(tmp_path / "m")
    prompts = [[5, 6, 7, 8], [9, 10]]
    out = Engine(copy.deepcopy(loaded), max_batch_size=2, max_len=16).generate(
        prompts, max_new_tokens=6, temperature=0, ignore_eos=True)
    for prompt, completion in zip(prompts, out):
        assert completion.token_ids == _greedy_without_cache(loaded, prompt, 6)


@pytest.mark.parametrize("name", ["llama", "t5-gated"])
def test_a_pruned_llama_or_t5_exports_to_hugging_face_with_the_same_logits(name, tmp_path):
    import transformers

    model = _model(name)
    prune_model(model, "heads,neurons", 0.3)
    save_model(model, tmp_path / "ours")
    convert_to_hf(tmp_path / "ours", tmp_path / "hf")
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        if name == "llama":
            hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
            theirs, ours = hf(ids).logits, model(ids).logits
        else:
            hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
            dec = model.shift_right(ids)
            theirs, ours = hf(input_ids=ids, decoder_input_ids=dec).logits, model(ids, decoder_input_ids=dec).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_gpt2_and_bert_with_fewer_heads_than_the_width_do_not_export(name, tmp_path):
    model = _model(name)
    prune_model(model, "heads", 0.25)
    save_model(model, tmp_path / "ours")
    with pytest.raises(UnsupportedModelError, match="head_dim"):
        convert_to_hf(tmp_path / "ours", tmp_path / "hf")
    neurons = _model(name)  # neurons alone keep n_head · head_dim = d_model: exportable
    prune_model(neurons, "neurons", 0.25)
    save_model(neurons, tmp_path / "n")
    assert convert_to_hf(tmp_path / "n", tmp_path / "hf-n")["intermediate_size" if name == "bert" else "n_inner"] == 72


def test_encoder_head_dim_is_written_only_when_it_is_not_derived():
    c = EncoderConfig(vocab_size=V, d_model=64, n_head=4)
    assert c.head_dim == 16 and "head_dim" not in c.to_dict() and "pruning" not in c.to_dict()
    assert c.replace(n_head=8).head_dim == 8  # derived again, as when it was a property
    pruned = c.replace(n_head=3, head_dim=16)
    assert pruned.to_dict()["head_dim"] == 16 and pruned.replace(dropout=0.2).head_dim == 16
    with pytest.raises(ConfigError, match=r"EncoderConfig\.d_model: 64 is not divisible by n_head=3"):
        EncoderConfig(d_model=64, n_head=3)


# ----------------------------------------------------------------------------------------------------
# prune: a directory in, a directory out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    lines = ["我爱北京天安门", "北京欢迎你", "今天天气很好，我们一起去公园散步吧。", "北京是中华人民共和国的首都。",
             "这家餐厅的菜很好吃", "机器学习让计算机从数据中学习"] * 20
    tok = train_tokenizer(lines, "bpe", vocab_size=300, num_sentinels=0)
    torch.manual_seed(0)
    model = build_model(_llama(vocab_size=tok.vocab_size, max_seq_len=64))
    out = tmp_path_factory.mktemp("src") / "llama"
    save_model(model, out, tokenizer=tok)
    return out


@pytest.mark.parametrize("importance", ["weight", "taylor"])
def test_prune_writes_a_smaller_directory_and_reports_it(model_dir, tmp_path, importance):
    report = prune(model_dir, tmp_path / "out", "heads,neurons", 0.3, importance=importance)
    assert isinstance(report, PruneReport)
    assert report.parameters_after < report.parameters_before and report.bytes_after < report.bytes_before
    assert report.reached == {"heads": 0.5, "neurons": 29 / 96}
    assert report.shapes == {"n_head": (4, 2), "n_kv_head": (2, 1), "d_ff": (96, 67)}
    assert report.max_abs_dlogits > 0 and report.inputs.startswith("4 sample sentences")
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    lines = report.lines()
    assert lines[0].startswith(f"wrote {tmp_path / 'out'}: heads,neurons by {importance} importance; n_head 4 → 2")
    header, row = lines[1], lines[2]
    assert header.split()[:2] == ["method", "sparsity"] and row.split()[:2] == ["heads,neurons", "30%"]
    assert str(report) == report.summary()
    model, tok = duplexlm.load(tmp_path / "out")
    assert tok is not None and model.config.n_head == 2 and model.config.pruning["importance"] == importance


def test_prune_magnitude_keeps_the_file_size(model_dir, tmp_path):
    report = prune(model_dir, tmp_path / "out", "magnitude", 0.5)
    assert abs(report.bytes_after - report.bytes_before) < 4096 and report.parameters_after == report.parameters_before
    assert 0.49 < report.reached["magnitude"] < 0.51
    assert "stored densely" in report.lines()[0]


def test_prune_refuses_a_quantised_directory(model_dir, tmp_path):
    model, tok = duplexlm.load(model_dir)
    quantize_model(model, "int8")
    save_model(model, tmp_path / "q8", tokenizer=tok)
    with pytest.raises(ModelError, match=r"--model: .*q8 is quantised \(int8\).*prune the full-precision model"):
        prune(tmp_path / "q8", tmp_path / "out", "heads", 0.3)


def test_prune_names_its_flags(model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"--method: expected 'magnitude', 'heads', 'neurons' or 'heads,neurons'"):
        prune(model_dir, tmp_path / "o", "channels", 0.3)
    with pytest.raises(ConfigError, match=r"--sparsity: expected a fraction in \[0, 1\)"):
        prune(model_dir, tmp_path / "o", "heads", 1.0)
    with pytest.raises(ConfigError, match="--importance: expected one of"):
        prune(model_dir, tmp_path / "o", "heads", 0.3, importance="fisher")
    with pytest.raises(ConfigError, match=r"sparsity: 0\.8 of 2 key/value groups removes all 2"):
        prune(model_dir, tmp_path / "o", "heads", 0.8)


# ----------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, "0.3", True, None])
def test_sparsity_outside_zero_to_one_is_refused(sparsity):
    with pytest.raises(ConfigError, match=rf"sparsity: expected a fraction in \[0, 1\) .* found {sparsity!r}"):
        prune_model(_model("gpt2"), "heads", sparsity)


@pytest.mark.parametrize("method", ["rows", "", "heads,heads", ["heads", "cols"], 3])
def test_an_unknown_method_lists_the_valid_ones(method):
    with pytest.raises(ConfigError, match=r"method: expected 'magnitude', 'heads', 'neurons' or 'heads,neurons'"):
        prune_model(_model("gpt2"), method, 0.3)


def test_magnitude_does_not_combine():
    with pytest.raises(ConfigError, match="magnitude pruning runs alone"):
        prune_model(_model("gpt2"), "heads,magnitude", 0.3)


@pytest.mark.parametrize("method", ["heads", "neurons", "heads,neurons"])
def test_structured_pruning_of_an_rnn_is_refused(method):
    with pytest.raises(ConfigError, match="a rnn model has neither; structured pruning needs a Transformer"):
        prune_model(_model("rnn"), method, 0.3)


@pytest.mark.parametrize(("name", "method", "sparsity", "message"), [
    ("gpt2", "heads", 0.9, r"0.9 of 4 key/value groups removes all 4 .* below 0.875"),
    ("llama", "heads", 0.75, r"0.75 of 2 key/value groups removes all 2 .* below 0.75"),
    ("bert", "neurons", 0.999, r"0.999 of 96 feed-forward neurons removes all 96 .* below 0.995"),
])
def test_structured_sparsity_must_leave_one_group(name, method, sparsity, message):
    with pytest.raises(ConfigError, match=message):
        prune_model(_model(name), method, sparsity)


def test_importance_and_calibration_are_checked():
    with pytest.raises(ConfigError, match=r"importance: expected one of \['weight', 'taylor'\], found 'fisher'"):
        prune_model(_model("gpt2"), "heads", 0.3, importance="fisher")
    with pytest.raises(ConfigError, match="importance='taylor' needs a calibration batch"):
        prune_model(_model("gpt2"), "heads", 0.3, importance="taylor")
    with pytest.raises(ConfigError, match="only importance='taylor' reads a calibration batch"):
        prune_model(_model("gpt2"), "heads", 0.3, calibration={"input_ids": torch.zeros(1, 4, dtype=torch.long)})
    with pytest.raises(ConfigError, match="calibration: a seq2seq model needs 'labels'"):
        prune_model(_model("t5"), "heads", 0.3, importance="taylor", calibration={"input_ids": torch.ones(1, 4).long()})
    with pytest.raises(ConfigError, match=r"calibration\['labels'\]: expected shape \(2,\)"):
        prune_model(_model("bert"), "heads", 0.3, importance="taylor",
                    calibration={"input_ids": torch.ones(2, 4).long(), "labels": torch.ones(2, 4).long()})


def test_magnitude_takes_no_importance_or_calibration(model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"importance: magnitude pruning ranks weights by \|w\| alone"):
        prune_model(_model("gpt2"), "magnitude", 0.3, importance="taylor")
    with pytest.raises(ConfigError, match=r"calibration: magnitude pruning ranks weights by \|w\| alone"):
        prune_model(_model("gpt2"), "magnitude", 0.3, calibration={"input_ids": torch.ones(1, 4).long()})
    with pytest.raises(ConfigError, match=r"--importance: magnitude pruning ranks weights by \|w\| alone"):
        prune(model_dir, tmp_path / "o", "magnitude", 0.3, importance="taylor")


def test_quantised_and_lora_models_are_refused():
    q = _model("gpt2")
    quantize_model(q, "int8")
    with pytest.raises(ModelError, match=r"is quantised \(int8, e.g. blocks.0.attn.qkv\); prune the full-precision"):
        prune_model(q, "magnitude", 0.3)
    lora = _model("gpt2")
    apply_lora(lora, LoRAConfig(r=2, targets=["attn.qkv"]))
    with pytest.raises(ModelError, match=r"has LoRA modules .*merge them into the weights first"):
        prune_model(lora, "heads", 0.3)


@pytest.mark.parametrize(("entry", "message"), [
    ({"method": "rows", "sparsity": 0.3}, r"pruning.method: expected 'magnitude', or any of 'heads', 'neurons'"),
    ({"method": "magnitude", "sparsity": 2, "modules": []}, r"pruning.sparsity: expected a number in \[0, 1\), found 2"),
    ({"method": "magnitude", "sparsity": 0.3, "modules": "blocks"}, r"pruning.modules: expected a list"),
    ({"method": "heads", "sparsity": 0.3, "importance": "fisher"}, r"pruning.importance: expected one of"),
    ({"method": "heads", "sparsity": 0.3, "shapes": {"n_head": [4]}}, r"pruning.shapes: expected"),
    ({"method": "heads", "sparsity": 0.3, "modul": []}, r"pruning: unknown key 'modul'.*did you mean 'modules'"),
    ({"method": "heads", "sparsity": 0.3, "previous": [{"method": "x", "sparsity": 0}]},
     r"pruning.previous\[0\].method: expected"),
    ("heads", "pruning: expected an object"),
])
def test_a_malformed_pruning_entry_names_config_json_and_the_field(tmp_path, entry, message):
    save_model(_model("gpt2"), tmp_path / "m")
    cfg = tmp_path / "m" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "pruning": entry}))
    with pytest.raises(ModelError, match=rf"{cfg}: {message}"):
        duplexlm.load(tmp_path / "m")


def test_keep_sparsity_names_a_module_the_model_lacks():
    model = _model("gpt2")
    model.config = model.config.replace(pruning={"method": "magnitude", "sparsity": 0.5, "modules": ["blocks.9.mlp.up"]})
    with pytest.raises(ModelError, match=r"pruning\.modules: Decoder has no module 'blocks\.9\.mlp\.up'"):
        keep_sparsity(model)
