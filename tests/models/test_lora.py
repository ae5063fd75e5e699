"""LoRA: identity at init for every family, only adapters and the task head train, merge equals the
unmerged model, adapter files round-trip, per-part targeting of the fused qkv, clear errors, and PEFT
parity against transformers + peft on the directory that convert_to_hf writes."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from duplexlm.config import DecoderConfig, EncoderConfig, RNNConfig, Seq2SeqConfig
from duplexlm.convert.peft import export_peft
from duplexlm.errors import ConfigError, ModelError, OutputError, UnsupportedModelError
from duplexlm.io import convert_to_hf, save_model
from duplexlm.models import build_model
from duplexlm.models.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_adapter,
    lora_state_dict,
    merge_lora,
    save_adapter,
)

V = 64


def _llama(**kw: object) -> DecoderConfig:
    base: dict = dict(vocab_size=V, max_seq_len=32, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=48,
                      positions="rope", norm="rmsnorm", norm_eps=1e-6, activation="silu", gated_mlp=True,
                      qkv_bias=False, out_bias=False, mlp_bias=False, norm_bias=False,
                      tie_word_embeddings=False, dropout=0.0)
    base.update(kw)
    return DecoderConfig(**base)


CONFIGS: dict[str, Callable[[], object]] = {
    "gpt2": lambda: DecoderConfig(vocab_size=V, max_seq_len=32, d_model=32, n_layer=2, n_head=4, d_ff=48),
    "llama": _llama,
    "qwen2": lambda: _llama(qkv_bias=True, tie_word_embeddings=True),
    "bert": lambda: EncoderConfig(vocab_size=V, max_seq_len=32, d_model=32, n_layer=2, n_head=4, d_ff=48,
                                  head="classify", num_labels=3),
    "t5": lambda: Seq2SeqConfig(vocab_size=V, d_model=32, head_dim=8, d_ff=48, n_layer=2, n_head=4),
    "rnn": lambda: RNNConfig(vocab_size=V, d_embed=8, d_hidden=16, num_labels=3),
}
TARGETS = {  # every family with attention takes the common q, v; the RNN has only its pooling Linears
    "gpt2": ["q", "v", "mlp.up"], "llama": ["q", "v", "mlp.down"], "qwen2": ["q", "k", "v"],
    "bert": ["q", "v", "attn.proj"], "t5": ["q", "v"], "rnn": ["attention_pool.proj", "attention_pool.score"],
}


def _inputs(name: str) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, V, (3, 9), generator=g)
    if name == "t5":
        return {"input_ids": ids, "decoder_input_ids": torch.randint(1, V, (3, 5), generator=g)}
    return {"input_ids": ids}


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(CONFIGS[name]()).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # unit norms and zero biases would hide a mis-mapped tensor
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _logits(model: nn.Module, name: str) -> Tensor:
    return model(**_inputs(name)).logits


def _toy_loss(logits: Tensor) -> Tensor:
    """Push every prediction towards label 0: any head, any shape."""
    return (logits.logsumexp(-1) - logits[..., 0]).mean()


def _train(model: nn.Module, name: str, steps: int = 3, lr: float = 1e-2) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = _toy_loss(_logits(model, name))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", list(CONFIGS))
def test_identity_at_init_keeps_names_and_freezes_base(name):
    model = _build(name)
    base_keys = set(model.state_dict())
    with torch.no_grad():
        before = _logits(model, name)
    replaced = apply_lora(model, LoRAConfig(r=4, targets=TARGETS[name]))
    assert replaced and all(isinstance(model.get_submodule(n), LoRALinear) for n in replaced)
    with torch.no_grad():
        assert torch.equal(_logits(model, name), before)
    keys = set(model.state_dict())
    assert base_keys <= keys and all(".lora_" in k for k in keys - base_keys)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {"bert": "classifier.", "rnn": "classifier."}.get(name)
    assert all(".lora_" in n or (head and n.startswith(head)) for n in trainable)
    assert head is None or any(n.startswith(head) for n in trainable)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_merge_equals_unmerged(name):
    model = _build(name)
    apply_lora(model, LoRAConfig(r=4, alpha=8, targets=TARGETS[name]))
    with torch.no_grad():
        base = _logits(model, name)  # B starts at zero: the base model's logits
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape) * 0.1)
        unmerged = _logits(model, name)
        merged = _logits(merge_lora(model), name)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert not any(".lora_" in k for k in model.state_dict())
    assert (unmerged - base).abs().max() > 1e-4  # the update is large next to the tolerance below
    # fp32 rounding of a sum taken in two orders: x(W + BA)ᵀ against xWᵀ + xAᵀBᵀ. On AVX-512 kernels
    # T5's deeper stack reaches 1.4e-6 on logits of about 0.01-1, so the bound is 5e-6 (a wrong merge
    # moves them by the update's size, 3e-4 to 1e-2 here)
    torch.testing.assert_close(merged, unmerged, atol=5e-6, rtol=1e-5)


def test_qv_targets_change_only_q_and_v_rows():
    model = _build("llama")  # n_head 4, n_kv_head 2, head_dim 8: q rows 0:32, k 32:48, v 48:64
    before = [b.attn.qkv.weight.detach().clone() for b in model.blocks]
    apply_lora(model, LoRAConfig(r=2))  # the default targets: q and v
    qkv = model.blocks[0].attn.qkv
    assert qkv.parts == {"q": (0, 32), "v": (48, 16)}
    assert qkv.lora_B["q"].shape == (32, 2) and qkv.lora_B["v"].shape == (16, 2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.fill_(0.5)
    merge_lora(model)
    for block, old in zip(model.blocks, before):
        diff = (block.attn.qkv.weight - old).abs().amax(dim=1)
        assert diff[:32].min() > 0 and diff[48:].min() > 0
        assert torch.equal(diff[32:48], torch.zeros(16))


def test_t5_q_v_cover_self_and_cross_attention():
    model = _build("t5")
    replaced = apply_lora(model, LoRAConfig(r=2))
    assert "decoder.blocks.0.cross_attn.q" in replaced and "decoder.blocks.0.cross_attn.kv" in replaced
    assert set(model.decoder.blocks[0].cross_attn.kv.parts) == {"v"}
    assert set(model.decoder.blocks[0].cross_attn.q.parts) == {"all"}  # the q Linear is the whole q part
    assert set(model.encoder.blocks[1].attn.qkv.parts) == {"q", "v"}


def test_only_lora_and_head_train_and_loss_goes_down():
    model = _build("bert")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoRAConfig(r=4, targets=["q", "v"]))
    model.train()
    losses = _train(model, "bert", steps=25, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]
    after = model.state_dict()
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert changed == {"classifier.weight", "classifier.bias"}  # every base tensor kept, the head trained
    assert all(not torch.equal(p, torch.zeros_like(p)) for n, p in model.named_parameters() if ".lora_B." in n)


def test_lora_alone_lowers_an_lm_loss():
    model = _build("llama")
    apply_lora(model, LoRAConfig(r=4, targets=["q", "v", "mlp.up"]))
    losses = _train(model, "llama", steps=20, lr=1e-2)
    assert losses[-1] < 0.7 * losses[0]  # the base weights are frozen and there is no task head


def test_save_and_load_adapter_round_trip(tmp_path):
    model = _build("qwen2")
    base_state = copy.deepcopy(model.state_dict())
    apply_lora(model, LoRAConfig(r=3, alpha=6, targets=["q", "k", "v", "mlp.gate"]))
    _train(model, "qwen2")
    save_adapter(model, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 3 and saved["alpha"] == 6 and "blocks.0.attn.qkv:q" in saved["targets"]

    fresh = build_model(CONFIGS["qwen2"]()).eval()
    fresh.load_state_dict(base_state)
    load_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(_logits(fresh, "qwen2"), _logits(model, "qwen2"))
    a, b = lora_state_dict(model), lora_state_dict(fresh)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(OutputError):
        save_adapter(model, tmp_path / "adapter")  # an earlier output, no overwrite
    save_adapter(model, tmp_path / "adapter", overwrite=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputError):
        save_adapter(model, tmp_path / "mine", overwrite=True)
    with pytest.raises(ModelError, match="family"):
        load_adapter(_build("bert"), tmp_path / "adapter")
    export_peft(model, tmp_path / "peft", {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]})
    with pytest.raises(ModelError, match="PEFT adapter"):
        load_adapter(_build("qwen2"), tmp_path / "peft")


@pytest.mark.parametrize(("targets", "match"), [
    (["attn.qkvv"], r"blocks\.\*\.attn\.qkv"),
    (["attn.qkv", "q"], "both whole and by part"),
    (["lm_head"], "tied"),
    (["classifier"], "matches no nn.Linear"),
])
def test_bad_targets_raise(targets, match):
    model = _build("gpt2") if targets != ["classifier"] else _build("bert")
    with pytest.raises(ConfigError, match=match):
        apply_lora(model, LoRAConfig(targets=targets))
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # nothing half-applied


def test_rnn_has_no_attention_projections():
    with pytest.raises(ConfigError, match="no attention projections"):
        apply_lora(_build("rnn"), LoRAConfig())


def test_apply_twice_is_refused():
    model = _build("gpt2")
    apply_lora(model, LoRAConfig())
    with pytest.raises(ModelError, match="already has LoRA"):
        apply_lora(model, LoRAConfig())


@pytest.mark.parametrize(("field", "kw"), [
    ("r", {"r": 0}), ("r", {"r": 2.5}), ("alpha", {"alpha": 0}), ("dropout", {"dropout": 1.0}),
    ("targets", {"targets": []}), ("targets", {"targets": ["attn.qkv:o"]}), ("targets", {"targets": [3]}),
])
def test_config_errors_name_the_field(field, kw):
    with pytest.raises(ConfigError, match=f"LoRAConfig.{field}:"):
        LoRAConfig(**kw)


# ----------------------------------------------------------------------------------------------------
# PEFT parity: our LoRA model vs transformers + peft on convert_to_hf's output


PEFT_CASES = {  # case → (family, targets)
    "llama-qv": ("llama", ["q", "v"]),
    "llama-whole": ("llama", ["attn.qkv", "attn.proj", "mlp.gate", "mlp.up", "mlp.down"]),
    "qwen2-qkv": ("qwen2", ["q", "k", "v", "mlp.down"]),
    "gpt2-whole": ("gpt2", ["attn.qkv", "attn.proj", "mlp.up", "mlp.down"]),
    "bert-classify": ("bert", ["q", "v", "mlp.up"]),
    "t5-qv": ("t5", ["q", "v", "attn.proj"]),
}


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_export_matches_transformers_and_peft(case, tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    name, targets = PEFT_CASES[case]
    model = _build(name)
    save_model(model, tmp_path / "base")
    hf_config = convert_to_hf(tmp_path / "base", tmp_path / "base-hf")
    apply_lora(model, LoRAConfig(r=4, alpha=8, targets=targets))
    _train(model, name)
    with torch.no_grad():
        ours = _logits(model, name)
    export_peft(model, tmp_path / "peft", hf_config)

    hf = getattr(transformers, hf_config["architectures"][0]).from_pretrained(tmp_path / "base-hf").eval()
    with torch.no_grad():
        plain = hf(**_inputs(name)).logits
        peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
        theirs = peft_model(**_inputs(name)).logits
    assert (theirs - plain).abs().max() > 1e-3  # the adapter (and head) really loaded
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_gpt2_part_targets_cannot_be_peft(tmp_path):
    model = _build("gpt2")
    apply_lora(model, LoRAConfig(r=2))  # q, v rows of the fused c_attn
    with pytest.raises(UnsupportedModelError, match="c_attn"):
        export_peft(model, tmp_path / "peft", {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(UnsupportedModelError, match="model_type"):
        export_peft(model, tmp_path / "peft", {"model_type": "llama"})
    assert not (tmp_path / "peft").exists()


def test_convert_to_peft_from_the_command_line(tmp_path: Path, capsys):
    """`duplex convert --to-peft --base BASE ADAPTER DST`: a saved adapter (what fine-tuning with
    method=lora writes) becomes a PEFT adapter that peft loads onto the Hugging Face form of the base,
    giving our LoRA model's logits."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from duplexlm.cli import main

    model = _build("llama")
    save_model(model, tmp_path / "base")
    apply_lora(model, LoRAConfig(r=4, alpha=8, targets=["q", "v", "mlp.down"]))
    _train(model, "llama")
    save_adapter(model, tmp_path / "adapter")
    with torch.no_grad():
        ours = _logits(model, "llama")
    assert main(["convert", "--to-peft", "--base", str(tmp_path / "base"), str(tmp_path / "adapter"),
                 str(tmp_path / "peft")]) == 0
    assert "PEFT LoRA adapter" in capsys.readouterr().out
    assert main(["convert", "--to-hf", str(tmp_path / "base"), str(tmp_path / "base-hf")]) == 0
    hf_config = json.loads((tmp_path / "base-hf" / "config.json").read_text())
    hf = getattr(transformers, hf_config["architectures"][0]).from_pretrained(tmp_path / "base-hf").eval()
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()(**_inputs("llama")).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    # without --base: one line naming the flag, nothing written
    assert main(["convert", "--to-peft", str(tmp_path / "adapter"), str(tmp_path / "peft2")]) == 2
    assert "--base" in capsys.readouterr().err and not (tmp_path / "peft2").exists()
