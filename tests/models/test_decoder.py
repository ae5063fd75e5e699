"""Our decoder on its own: causality, KV cache, attention paths, input checks."""

import pytest
import torch

from duplexlm.config import ConfigError, DecoderConfig
from duplexlm.models import build_model, count_parameters

GPT2 = dict(vocab_size=97, max_seq_len=64, d_model=32, n_layer=2, n_head=4)
LLAMA = dict(vocab_size=97, max_seq_len=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, positions="rope",
             norm="rmsnorm", activation="silu", gated_mlp=True, qkv_bias=False, out_bias=False,
             mlp_bias=False, tie_word_embeddings=False)
CONFIGS = {"gpt2": GPT2, "llama": LLAMA}


def _model(name, **kw):
    return build_model(DecoderConfig(**{**CONFIGS[name], **kw})).eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_causality(name):
    model = _model(name)
    ids = torch.randint(0, 97, (2, 12))
    changed = ids.clone()
    changed[:, 8] = (changed[:, 8] + 1) % 97
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert torch.equal(a[:, :8], b[:, :8])  # the past never sees the future
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@pytest.mark.parametrize("name", CONFIGS)
def test_kv_cache_matches_full_forward(name):
    model = _model(name)
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_kv_cache(batch_size=2, max_len=32)
        pieces = [model(ids[:, :6], kv_cache=cache).logits]  # prefill
        for t in range(6, 16):  # then one token at a time
            pieces.append(model(ids[:, t:t + 1], kv_cache=cache).logits)
    assert cache.pos == 16
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


def test_kv_cache_with_left_padding():
    model = _model("llama")
    ids = torch.randint(1, 97, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding, as batched generation uses
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=pos).logits
        cache = model.new_kv_cache(batch_size=2, max_len=10)
        a = model(ids[:, :7], attention_mask=mask[:, :7], position_ids=pos[:, :7], kv_cache=cache).logits
        b = [model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=pos[:, t:t + 1],
                   kv_cache=cache).logits for t in range(7, 10)]
    got = torch.cat([a, *b], dim=1)
    torch.testing.assert_close(got[mask.bool()], full[mask.bool()], atol=1e-5, rtol=0)
    # the padded row's real tokens match the same row run alone without padding
    with torch.no_grad():
        alone = model(ids[1:, 3:]).logits
    torch.testing.assert_close(full[1, 3:], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_eager_matches_sdpa_and_returns_weights(name):
    model = _model(name)
    ids = torch.randint(0, 97, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    with torch.no_grad():
        a = model(ids, attention_mask=mask)
        b = model(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    assert len(b.attentions) == 2 and b.attentions[0].shape == (2, 4, 9, 9)
    w = b.attentions[0]
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 9))
    assert torch.all(w.triu(1) == 0)  # causal
    assert torch.all(w[0, :, :, 6:] == 0)  # padding gets no weight
    assert len(b.hidden_states) == 3


def test_gqa_parameter_count():
    mha = _model("llama", n_kv_head=4)
    gqa = _model("llama", n_kv_head=1)
    per_layer_saving = 2 * 32 * (32 - 8)  # k and v projections shrink from 4 heads to 1
    assert count_parameters(mha) - count_parameters(gqa) == 2 * per_layer_saving


def test_tied_head_shares_embedding():
    model = _model("gpt2")
    assert model.lm_head.weight is model.embed.weight
    assert count_parameters(model) == sum(p.numel() for p in set(model.parameters()))


def test_classification_head_uses_last_real_token():
    model = _model("gpt2", head="classify", num_labels=3)
    ids = torch.randint(1, 97, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], dim=1).long()
    with torch.no_grad():
        a = model(ids).logits
        b = model(padded, attention_mask=mask).logits
    assert a.shape == (1, 3)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_loss_goes_down():
    torch.manual_seed(0)
    model = _model("llama").train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 97, (4, 17))
    losses = []
    for _ in range(30):
        logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_inputs():
    model = _model("gpt2")
    with pytest.raises(ValueError, match=r"input_ids: token ids must lie in \[0, 97\)"):
        model(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match="max_seq_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))
    cache = model.new_kv_cache(1, max_len=4)
    with pytest.raises(ValueError, match="max_len=4"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)


def test_config_errors():
    with pytest.raises(ConfigError, match="n_kv_head"):
        DecoderConfig(d_model=32, n_head=4, n_kv_head=3)
    with pytest.raises(ConfigError, match="norm"):
        DecoderConfig(norm="batchnorm")
    with pytest.raises(ConfigError, match="did you mean 'n_layer'"):
        DecoderConfig.from_dict({"n_layers": 3})


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_attention_functions_stay_causal_with_a_bias(impl):
    from duplexlm.models.layers import ATTENTION_FUNCTIONS, eager_attention

    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    bias = torch.randn(1, 2, 5, 5)
    out, _ = ATTENTION_FUNCTIONS[impl](q, k, v, bias=bias, is_causal=True)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    ref, _ = eager_attention(q, k, v, mask=causal, bias=bias)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    # one new query at the end of a longer key sequence sees every key
    out1, _ = ATTENTION_FUNCTIONS[impl](q[:, :, -1:], k, v, is_causal=True)
    torch.testing.assert_close(out1, eager_attention(q[:, :, -1:], k, v)[0],
                               atol=1e-6, rtol=0)
