"""T5 conversion: parity with transformers both ways, through memory and through a directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from duplexlm.config import Seq2SeqConfig
from duplexlm.convert.t5 import from_hf, to_hf
from duplexlm.errors import ModelError
from duplexlm.io import load, load_weights
from duplexlm.models.seq2seq import Seq2Seq

transformers = pytest.importorskip("transformers")

V = 99
TINY = dict(vocab_size=V, d_model=32, d_kv=8, num_heads=4, d_ff=37, num_layers=2, num_decoder_layers=2)
VARIANTS = {  # HF feed_forward_proj, tie_word_embeddings
    "v1.0-relu-tied": ("relu", True),
    "v1.1-gated-gelu-untied": ("gated-gelu", False),
}
ATOL = 1e-4


def hf_model(feed_forward_proj: str, tied: bool) -> transformers.T5ForConditionalGeneration:
    config = transformers.T5Config(**TINY, feed_forward_proj=feed_forward_proj, tie_word_embeddings=tied)
    model = transformers.T5ForConditionalGeneration(config)
    if not tied:  # transformers 5 ties in memory regardless; give v1.1 a head of its own
        model.lm_head.weight = torch.nn.Parameter(torch.randn(V, 32))
    return model.eval()


def inputs() -> dict[str, torch.Tensor]:
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, -3:] = 0
    dec_mask = torch.ones(2, 6, dtype=torch.long)
    dec_mask[0, -2:] = 0
    return {"input_ids": torch.randint(2, V, (2, 9)), "attention_mask": mask,
            "decoder_input_ids": torch.randint(2, V, (2, 6)), "decoder_attention_mask": dec_mask}


@torch.no_grad()
def hf_outputs(hf, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    enc = hf.encoder(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
    dec = hf.decoder(input_ids=x["decoder_input_ids"], attention_mask=x["decoder_attention_mask"],
                     encoder_hidden_states=enc, encoder_attention_mask=x["attention_mask"]).last_hidden_state
    out = {"encoder": enc, "decoder": dec}
    if isinstance(hf, transformers.T5ForConditionalGeneration):
        out["logits"] = hf(**x).logits
    return out


@torch.no_grad()
def our_outputs(model: Seq2Seq, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    o = model(**x)
    out = {"encoder": o.encoder_last_hidden_state, "decoder": o.last_hidden_state}
    if o.logits is not None:
        out["logits"] = o.logits
    return out


def max_diffs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max |a - b| per output, over real (non-padded) positions only."""
    assert a.keys() == b.keys()
    diffs = {}
    for name in a:
        mask = x["attention_mask"] if name == "encoder" else x["decoder_attention_mask"]
        keep = mask.bool()
        diffs[name] = (a[name][keep] - b[name][keep]).abs().max().item()
    return diffs


def assert_parity(a, b, x) -> None:
    diffs = max_diffs(a, b, x)
    assert all(d < ATOL for d in diffs.values()), diffs


def ours_from(hf) -> Seq2Seq:
    config, sd = from_hf(hf.config.to_dict(), hf.state_dict())
    model = Seq2Seq(config).eval()
    load_weights(model, sd)
    return model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_from_hf_parity(variant: str) -> None:
    proj, tied = VARIANTS[variant]
    hf = hf_model(proj, tied)
    model = ours_from(hf)
    assert model.config.tie_word_embeddings is tied
    assert model.config.gated_mlp is (proj == "gated-gelu")
    x = inputs()
    assert_parity(our_outputs(model, x), hf_outputs(hf, x), x)


def test_from_hf_t5model_has_no_head() -> None:
    config = transformers.T5Config(**TINY)
    hf = transformers.T5Model(config).eval()
    hf_config = {**config.to_dict(), "architectures": ["T5Model"]}
    ours, sd = from_hf(hf_config, hf.state_dict())
    assert ours.head == "none"
    model = Seq2Seq(ours).eval()
    load_weights(model, sd)
    x = inputs()
    assert_parity(our_outputs(model, x), hf_outputs(hf, x), x)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_from_hf_directory_via_load(variant: str, tmp_path: Path) -> None:
    """What transformers writes (v5: tie_word_embeddings true + scale_decoder_outputs) loads with duplexlm.load."""
    hf = hf_model(*VARIANTS[variant])
    hf.save_pretrained(tmp_path)
    model, tokenizer = load(tmp_path)
    assert tokenizer is None and isinstance(model, Seq2Seq)
    x = inputs()
    assert_parity(our_outputs(model, x), hf_outputs(hf, x), x)


def our_model(variant: str, head: str = "lm") -> Seq2Seq:
    proj, tied = VARIANTS[variant]
    config = Seq2SeqConfig(vocab_size=V, d_model=32, head_dim=8, n_head=4, d_ff=37, n_layer=2, n_decoder_layer=2,
                           activation="relu" if proj == "relu" else "gelu_tanh", gated_mlp=proj != "relu",
                           tie_word_embeddings=tied, head=head)
    return Seq2Seq(config).eval()


def write_hf_dir(model: Seq2Seq, path: Path) -> dict:
    hf_config, hf_sd = to_hf(model.config, model.state_dict())
    (path / "config.json").write_text(json.dumps(hf_config))
    save_file(hf_sd, str(path / "model.safetensors"))  # refuses shared tensors
    return hf_config


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_to_hf_parity_through_directory(variant: str, tmp_path: Path) -> None:
    model = our_model(variant)
    write_hf_dir(model, tmp_path)
    hf, info = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    hf.eval()
    assert not info["unexpected_keys"] and not info["missing_keys"] and not info["mismatched_keys"], info
    tied = model.config.tie_word_embeddings
    assert (hf.lm_head.weight.data_ptr() == hf.shared.weight.data_ptr()) is tied
    x = inputs()
    assert_parity(our_outputs(model, x), hf_outputs(hf, x), x)


def test_to_hf_head_none_loads_as_t5model(tmp_path: Path) -> None:
    model = our_model("v1.1-gated-gelu-untied", head="none")
    hf_config = write_hf_dir(model, tmp_path)
    assert hf_config["architectures"] == ["T5Model"]
    hf, info = transformers.T5Model.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"], info
    x = inputs()
    assert_parity(our_outputs(model, x), hf_outputs(hf.eval(), x), x)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_round_trip_is_exact(variant: str, tmp_path: Path) -> None:
    model = our_model(variant)
    write_hf_dir(model, tmp_path)
    config, sd = from_hf(json.loads((tmp_path / "config.json").read_text()),
                         load_file(str(tmp_path / "model.safetensors")))
    assert config == model.config
    own = {k: v for k, v in model.state_dict().items() if not (k == "lm_head.weight" and config.tie_word_embeddings)}
    assert sd.keys() == own.keys()
    for k in own:
        assert torch.equal(sd[k], own[k]), k


def test_to_hf_tensors_are_independent() -> None:
    _, sd = to_hf(our_model("v1.0-relu-tied").config, our_model("v1.0-relu-tied").state_dict())
    assert "lm_head.weight" not in sd and "encoder.embed_tokens.weight" not in sd
    ptrs = [t.untyped_storage().data_ptr() for t in sd.values()]
    assert len(set(ptrs)) == len(ptrs)
    assert all(t.is_contiguous() for t in sd.values())


# ----------------------------------------------------------------------------------------------------
# Errors name the field or tensor


def hf_dict(**changes) -> dict:
    return {**transformers.T5Config(**TINY).to_dict(), "architectures": ["T5ForConditionalGeneration"], **changes}


@pytest.mark.parametrize(("changes", "match"), [
    ({"feed_forward_proj": "gated-tanh"}, "feed_forward_proj='gated-tanh'"),
    ({"feed_forward_proj": "softplus"}, "feed_forward_proj='softplus'"),
    ({"architectures": ["T5EncoderModel"]}, "architectures"),
    ({"model_type": "bart"}, "model_type='bart'"),
])
def test_unsupported_config_values(changes: dict, match: str) -> None:
    hf = hf_model("relu", True)
    with pytest.raises(ValueError, match=match):
        from_hf(hf_dict(**changes), hf.state_dict())


def test_bad_state_dicts() -> None:
    hf = hf_model("relu", True)
    sd = dict(hf.state_dict())
    with pytest.raises(ValueError, match="unexpected tensors"):
        from_hf(hf_dict(), {**sd, "encoder.block.9.layer.0.SelfAttention.q.weight": torch.zeros(1)})
    missing = {k: v for k, v in sd.items() if k != "decoder.final_layer_norm.weight"}
    with pytest.raises(ModelError, match=re.escape("missing tensor 'decoder.final_layer_norm.weight'")):
        from_hf(hf_dict(), missing)
    with pytest.raises(ValueError, match=re.escape("lm_head.weight differs from shared.weight")):
        from_hf(hf_dict(), {**sd, "lm_head.weight": torch.randn(V, 32)})
    with pytest.raises(ValueError, match=re.escape("'embed.weight' has shape")):
        from_hf(hf_dict(vocab_size=100), sd)


def test_gated_exact_gelu_cannot_be_written() -> None:
    model = Seq2Seq(Seq2SeqConfig(vocab_size=V, d_model=32, head_dim=8, n_head=4, d_ff=37, n_layer=1,
                                  activation="gelu", gated_mlp=True))
    with pytest.raises(ValueError, match="gated exact 'gelu'"):
        to_hf(model.config, model.state_dict())


def test_absolute_positions_cannot_be_written() -> None:
    model = Seq2Seq(Seq2SeqConfig(vocab_size=V, d_model=32, head_dim=8, n_head=4, d_ff=37, n_layer=1,
                                  absolute_positions="sinusoidal"))
    with pytest.raises(ValueError, match=r"absolute_positions='sinusoidal'.*relative positions only"):
        to_hf(model.config, model.state_dict())
