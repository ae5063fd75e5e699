"""The BERT-style encoder on its own: shapes, bidirectionality, eager vs SDPA, input errors."""

from __future__ import annotations

import pytest
import torch

from duplexlm.config import ConfigError, EncoderConfig
from duplexlm.models import build_model
from duplexlm.models.encoder import Encoder


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
