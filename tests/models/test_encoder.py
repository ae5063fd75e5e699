"""The BERT-style encoder on its own: shapes, bidirectionality, eager vs SDPA, pooling, input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from duplexlm.config import ConfigError, EncoderConfig, config_from_dict, load_config
from duplexlm.io import load, save_model
from duplexlm.models import build_model
from duplexlm.models.encoder import Encoder, mean_pool


def tiny(**changes: object) -> EncoderConfig:
    base = dict(vocab_size=99, max_seq_len=64, d_model=32, n_layer=2, n_head=4, d_ff=37,
                dropout=0.0, attn_dropout=0.0)
    return EncoderConfig(**{**base, **changes})


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 99, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    types = torch.zeros(2, 9, dtype=torch.long)
    types[:, 5:] = 1
    return ids, mask, types


@pytest.mark.parametrize(("head", "shape"), [("none", None), ("mlm", (2, 9, 99)), ("classify", (2, 3)),
                                             ("tag", (2, 9, 3))])
def test_heads_shapes(head: str, shape: tuple[int, ...] | None) -> None:
    model = build_model(tiny(head=head, num_labels=3)).eval()
    assert isinstance(model, Encoder)
    ids, mask, types = batch()
    out = model(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 9, 32)
    assert out.pooled_output is not None and out.pooled_output.shape == (2, 32)
    assert out.hidden_states is not None and len(out.hidden_states) == 3
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert (out.logits is None) if shape is None else (out.logits.shape == shape)


def test_mlm_decoder_is_tied_and_init() -> None:
    model = Encoder(tiny(head="mlm", pad_token_id=0))
    assert model.mlm_head is not None
    assert model.mlm_head.decoder.weight is model.embed.weight
    assert torch.all(model.embed.weight[0] == 0)
    assert torch.all(model.mlm_head.decoder.bias == 0)
    assert torch.all(model.blocks[0].norm_1.weight == 1)
    # a state dict without the tied key still loads strictly
    sd = {k: v for k, v in model.state_dict().items() if k != "mlm_head.decoder.weight"}
    Encoder(tiny(head="mlm")).load_state_dict(sd, strict=True)


def test_bidirectional() -> None:
    model = Encoder(tiny()).eval()
    ids = torch.randint(1, 99, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] % 98) + 1 if ids[0, -1] != 98 else 1
    with torch.no_grad():
        a = model(ids).last_hidden_state
        b = model(changed).last_hidden_state
    assert not torch.allclose(a[:, 0], b[:, 0])


def test_padding_does_not_leak() -> None:
    """Tokens behind padding do not change the outputs at real positions."""
    model = Encoder(tiny()).eval()
    ids, mask, _ = batch()
    other = ids.clone()
    other[1, 6:] = 7
    with torch.no_grad():
        a = model(ids, attention_mask=mask).last_hidden_state
        b = model(other, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a[1, :6], b[1, :6], atol=1e-6, rtol=0)


def test_eager_matches_sdpa_and_returns_attentions() -> None:
    model = Encoder(tiny()).eval()
    ids, mask, types = batch()
    with torch.no_grad():
        sdpa = model(ids, attention_mask=mask, token_type_ids=types)
        eager = model(ids, attention_mask=mask, token_type_ids=types, output_attentions=True)
    assert sdpa.attentions is None
    diff = (sdpa.last_hidden_state - eager.last_hidden_state).abs().max().item()
    assert diff < 1e-5, diff
    assert eager.attentions is not None and len(eager.attentions) == 2
    for w in eager.attentions:
        assert w.shape == (2, 4, 9, 9)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 9))
        assert torch.all(w[1, :, :, 6:] == 0)  # no weight on padding


def test_classify_needs_pooler() -> None:
    with pytest.raises(ConfigError, match="pooler"):
        Encoder(tiny(head="classify", pooler=False))


def test_cls_pooling_without_pooler_fails_in_the_config() -> None:
    with pytest.raises(ConfigError, match=r"EncoderConfig.pooler: head='classify' with pooling='cls'"):
        tiny(head="classify", pooling="cls", pooler=False)
    with pytest.raises(ConfigError, match=r"EncoderConfig.pooling: expected one of \['cls', 'mean'\], found 'max'"):
        tiny(pooling="max")
    assert EncoderConfig().pooling == "cls"  # BERT's default


def test_mean_pooling_needs_no_pooler() -> None:
    model = Encoder(tiny(head="classify", pooling="mean", pooler=False, num_labels=3)).eval()
    assert model.pooler is None and not any(k.startswith("pooler.") for k in model.state_dict())
    ids, mask, types = batch()
    with torch.no_grad():
        out = model(ids, attention_mask=mask, token_type_ids=types)
    assert out.logits is not None and out.logits.shape == (2, 3)
    # the pooled vector is the mean of the real tokens' last hidden states, and the classifier reads it
    h, real = out.last_hidden_state, mask.bool()
    expected = torch.stack([h[i][real[i]].mean(0) for i in range(2)])
    torch.testing.assert_close(out.pooled_output, expected)
    assert model.classifier is not None
    torch.testing.assert_close(out.logits, model.classifier(expected))


def test_mean_pooling_ignores_padding() -> None:
    """A padded row pools (and classifies) as the same row alone, whatever the padding holds."""
    torch.manual_seed(0)
    model = Encoder(tiny(head="classify", pooling="mean", pooler=False, num_labels=3)).eval()
    ids, mask, types = batch()  # row 1: six real tokens, three padding
    ids[1, 6:] = torch.tensor([5, 6, 7])  # not even the pad id: only the mask says it is padding
    with torch.no_grad():
        padded = model(ids, attention_mask=mask, token_type_ids=types)
        alone = model(ids[1:, :6], attention_mask=mask[1:, :6], token_type_ids=types[1:, :6])
        no_mask = model(ids[1:, :6], token_type_ids=types[1:, :6])
    torch.testing.assert_close(padded.pooled_output[1:], alone.pooled_output, atol=1e-6, rtol=0)
    torch.testing.assert_close(padded.logits[1:], alone.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(alone.pooled_output, no_mask.pooled_output, atol=1e-6, rtol=0)
    # counting the padding in would move the mean: the test can tell the two apart
    assert not torch.allclose(padded.pooled_output[1], padded.last_hidden_state[1].mean(0), atol=1e-4)


def test_mean_pooling_of_a_row_without_real_tokens_is_zero() -> None:
    model = Encoder(tiny(pooling="mean")).eval()
    ids, mask, _ = batch()
    mask[0] = 0
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
    assert torch.isfinite(out.pooled_output).all() and torch.all(out.pooled_output[0] == 0)


def test_cls_pooling_is_the_pooler_on_the_first_token() -> None:
    model = Encoder(tiny(head="classify", num_labels=3)).eval()
    ids, mask, types = batch()
    with torch.no_grad():
        out = model(ids, attention_mask=mask, token_type_ids=types)
        assert model.pooler is not None
        torch.testing.assert_close(out.pooled_output, torch.tanh(model.pooler(out.last_hidden_state[:, 0])))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classifier_gradients_reach_the_encoder(pooling: str) -> None:
    torch.manual_seed(0)
    model = Encoder(tiny(head="classify", pooling=pooling, pooler=pooling == "cls", num_labels=3))
    ids, mask, types = batch()
    out = model(ids, attention_mask=mask, token_type_ids=types)
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2])).backward()
    for name in ("embed.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.down.weight", "classifier.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    # mean pooling: every real token of a row gets a gradient, padding none (its rows of the output
    # are read by nothing)
    if pooling == "mean":
        h = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        h.retain_grad()
        model.classifier(mean_pool(h, mask)).sum().backward()
        assert h.grad is not None
        assert torch.all(h.grad[1, 6:] == 0) and torch.all(h.grad[1, :6].abs().sum(-1) > 0)


def test_pooling_round_trips_through_a_model_directory(tmp_path: Path) -> None:
    config = tiny(head="classify", pooling="mean", pooler=False, num_labels=2, label_names=["neg", "pos"])
    model = Encoder(config).eval()
    save_model(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["pooling"] == "mean"
    assert load_config(tmp_path / "m" / "config.json") == config
    loaded, _ = load(tmp_path / "m")
    assert isinstance(loaded, Encoder) and loaded.config == config
    ids, mask, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)


def test_config_without_pooling_loads_as_cls() -> None:
    """A config.json written before the field existed still loads: pooling is no shape field."""
    old = {k: v for k, v in tiny(head="classify").to_dict().items() if k != "pooling"}
    assert "pooling" not in EncoderConfig.SHAPE_FIELDS
    config = config_from_dict(old, require_shapes=True)
    assert isinstance(config, EncoderConfig) and config.pooling == "cls" and config.pooler


def test_bad_inputs_name_the_tensor() -> None:
    model = Encoder(tiny()).eval()
    with pytest.raises(ValueError, match=r"input_ids: values must lie in \[0, 99\).*max 99"):
        model(torch.tensor([[1, 2, 99]]))
    with pytest.raises(ValueError, match="input_ids: 65 positions exceed max_seq_len=64"):
        model(torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="token_type_ids: values must lie in"):
        model(torch.ones(1, 4, dtype=torch.long), token_type_ids=torch.full((1, 4), 2))
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \(1, 4\)"):
        model(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5))
    with pytest.raises(ValueError, match="input_ids: expected shape"):
        model(torch.ones(4, dtype=torch.long))


def _pre_ln(**kw) -> EncoderConfig:
    return EncoderConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=2, n_head=4, dropout=0.0,
                         attn_dropout=0.0, norm_position="pre", **kw)


def test_pre_norm_block_is_the_pre_norm_formula() -> None:
    torch.manual_seed(0)
    model = Encoder(_pre_ln(head="none", pooler=False)).eval()
    ids = torch.randint(1, 64, (2, 7))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        x = model.embed_norm(model.embed(ids) + model.type_embed(torch.zeros_like(ids)) + model.pos_embed.weight[:7])
        for block in model.blocks:
            x = x + block.attn(block.norm_1(x), mask=None, impl="eager")[0]
            x = x + block.mlp(block.norm_2(x))
        expected = model.final_norm(x)
    torch.testing.assert_close(out.last_hidden_state, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    assert Encoder(EncoderConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=1, n_head=4)).final_norm is None


def test_pre_norm_round_trips_and_has_no_hf_counterpart(tmp_path: Path) -> None:
    from duplexlm.errors import UnsupportedModelError
    from duplexlm.io import convert_to_hf

    torch.manual_seed(0)
    model = Encoder(_pre_ln(head="mlm", pooler=False)).eval()
    save_model(model, tmp_path / "m")
    back, _ = load(tmp_path / "m")
    ids = torch.randint(1, 64, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)
    assert back.config.norm_position == "pre"
    with pytest.raises(UnsupportedModelError, match="norm_position='pre' has no Hugging Face BERT counterpart"):
        convert_to_hf(tmp_path / "m", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(ConfigError, match="norm_position"):
        EncoderConfig(norm_position="middle")


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_logits_at_masked_positions_equal_the_full_logits(norm_position: str) -> None:
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=2, n_head=4, head="mlm", pooler=False,
                        norm_position=norm_position)
    model = Encoder(cfg).eval()
    ids = torch.randint(1, 64, (3, 10))
    attention_mask = torch.ones(3, 10, dtype=torch.long)
    attention_mask[1, 6:] = 0
    at = torch.rand(3, 10) < 0.3
    at[0, 0] = True
    with torch.no_grad():
        full = model(ids, attention_mask=attention_mask).logits
        some = model(ids, attention_mask=attention_mask, logits_at=at).logits
    assert some.shape == (int(at.sum()), 64)
    torch.testing.assert_close(some, full[at], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"logits_at: expected shape \(3, 10\)"):
        model(ids, logits_at=at[:, :5])


def test_flops_per_token_count_the_heads_where_they_run() -> None:
    cfg = EncoderConfig(vocab_size=1000, max_seq_len=64, d_model=32, n_layer=2, n_head=4, head="mlm", pooler=False)
    model = Encoder(cfg)
    blocks = 6 * 2 * (sum(p.numel() for p in model.blocks[0].parameters() if p.dim() == 2) + 2 * 32 * 64)
    head = 6 * (32 * 32 + 1000 * 32)
    assert model.num_flops_per_token(64) == pytest.approx(blocks + head)
    assert model.num_flops_per_token(64, head_fraction=0.25) == pytest.approx(blocks + head / 4)
    rtd = Encoder(EncoderConfig(vocab_size=1000, max_seq_len=64, d_model=32, n_layer=2, n_head=4, head="rtd",
                                pooler=False, generator_layers=1))
    assert rtd.num_flops_per_token(64, 0.25) > blocks * 1.4  # the generator's block and head cost too
