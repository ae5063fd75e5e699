"""Parity of our decoder with transformers' GPT-2, Llama and Qwen2, both directions, fp32, padded batch."""

import json

import pytest
import torch

import duplexlm
from duplexlm.config import DecoderConfig
from duplexlm.convert import UnsupportedModelError
from duplexlm.models import build_model

transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _hf_configs():
    common = dict(vocab_size=99, pad_token_id=0)
    return {
        "gpt2": transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=37, **common),
        "llama": transformers.LlamaConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=64, rope_theta=500.0, **common),
        "llama-bias": transformers.LlamaConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                               num_attention_heads=4, num_key_value_heads=4,
                                               attention_bias=True, mlp_bias=True,
                                               tie_word_embeddings=True, max_position_embeddings=64, **common),
        "qwen2": transformers.Qwen2Config(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=1,
                                          max_position_embeddings=64, tie_word_embeddings=False, **common),
    }


def _perturb(model: torch.nn.Module) -> None:
    """Random init leaves norms at 1 and biases at 0, which would hide a mis-mapped norm or bias."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _batch():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 99, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask


def _compare(ours_out, hf_out, mask):
    m = mask.bool()
    h_ours = ours_out.last_hidden_state[m]
    h_hf = hf_out.hidden_states[-1][m]
    assert (h_ours - h_hf).abs().max().item() < TOL
    if ours_out.logits is not None and ours_out.logits.dim() == 3:
        assert (ours_out.logits[m] - hf_out.logits[m]).abs().max().item() < TOL
    return (ours_out.logits[m] - hf_out.logits[m]).abs().max().item()


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama-bias", "qwen2"])
def test_hf_to_ours(name, tmp_path):
    hf_cfg = _hf_configs()[name]
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    _perturb(hf)
    hf.save_pretrained(tmp_path / "hf")
    ours, _ = duplexlm.load(tmp_path / "hf")
    ids, mask = _batch()
    with torch.no_grad():
        hf_out = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        out = ours(ids, attention_mask=mask)
    _compare(out, hf_out, mask)


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama-bias", "qwen2"])
def test_ours_to_hf(name, tmp_path):
    # Build ours from the converted config so both sides describe the same architecture.
    from duplexlm.convert import from_hf

    hf_cfg = _hf_configs()[name]
    cfg_dict = hf_cfg.to_dict()
    cfg_dict["architectures"] = ["XForCausalLM" if name != "gpt2" else "GPT2LMHeadModel"]
    config = duplexlm.convert.adapter_for_hf(cfg_dict["model_type"]).config_from_hf(cfg_dict)
    del from_hf
    torch.manual_seed(0)
    ours = build_model(config).eval()
    _perturb(ours)
    duplexlm.save_model(ours, tmp_path / "ours")
    hf_config = duplexlm.convert_to_hf(tmp_path / "ours", tmp_path / "hf")
    expected_type = {"gpt2": "gpt2", "llama": "llama", "llama-bias": "llama", "qwen2": "qwen2"}[name]
    assert hf_config["model_type"] == expected_type
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids, mask = _batch()
    with torch.no_grad():
        hf_out = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        out = ours(ids, attention_mask=mask)
    _compare(out, hf_out, mask)
    # and back again: HF → duplexlm directory gives identical weights
    duplexlm.convert_from_hf(tmp_path / "hf", tmp_path / "back")
    back, _ = duplexlm.load(tmp_path / "back")
    for (k, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k


def test_hf_base_model_without_head(tmp_path):
    hf = transformers.GPT2Model(_hf_configs()["gpt2"]).eval()
    _perturb(hf)
    hf.save_pretrained(tmp_path / "hf")
    ours, _ = duplexlm.load(tmp_path / "hf")
    assert ours.config.head == "none"
    ids, mask = _batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        out = ours(ids, attention_mask=mask)
    assert out.logits is None
    assert (out.last_hidden_state - ref)[mask.bool()].abs().max() < TOL


def test_llama_sequence_classification(tmp_path):
    cfg = _hf_configs()["llama"]
    cfg.num_labels = 3
    hf = transformers.LlamaForSequenceClassification(cfg).eval()
    _perturb(hf)
    hf.save_pretrained(tmp_path / "hf")
    ours, _ = duplexlm.load(tmp_path / "hf")
    assert ours.config.head == "classify" and ours.config.num_labels == 3
    ids, mask = _batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        out = ours(ids, attention_mask=mask).logits
    assert out.shape == (3, 3)
    assert (out - ref).abs().max() < TOL


def test_unsupported_model_type(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "mamba", "vocab_size": 10}))
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedModelError, match="mamba"):
        duplexlm.load(d)


def test_unsupported_rope_scaling():
    cfg = _hf_configs()["llama"].to_dict()
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    with pytest.raises(ValueError, match="yarn"):
        duplexlm.convert.adapter_for_hf("llama").config_from_hf(cfg)


def test_gpt2_cannot_represent_rope():
    cfg = DecoderConfig(vocab_size=50, d_model=32, n_layer=1, n_head=4, positions="rope", norm="layernorm")
    with pytest.raises(ValueError, match="norm"):
        duplexlm.convert.to_hf(cfg, build_model(cfg).state_dict())


def test_corrupt_weights_named(tmp_path):
    ours = build_model(DecoderConfig(vocab_size=50, d_model=32, n_layer=1, n_head=4))
    duplexlm.save_model(ours, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        duplexlm.load(tmp_path / "m")
