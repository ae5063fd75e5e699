"""The T5-style encoder-decoder: shapes, masking directions, cached decoding, init, errors."""

from __future__ import annotations

import pytest
import torch

from duplexlm.config import Seq2SeqConfig
from duplexlm.models import build_model
from duplexlm.models.layers import relative_position_bucket
from duplexlm.models.seq2seq import Seq2Seq, Seq2SeqCache, shift_right, sinusoidal_positions

V = 99


def tiny(**changes) -> Seq2SeqConfig:
    base = dict(vocab_size=V, d_model=32, head_dim=8, n_head=4, d_ff=37, n_layer=2, n_decoder_layer=2,
                relative_buckets=8, relative_max_distance=20, dropout=0.0)
    return Seq2SeqConfig(**{**base, **changes})


VARIANTS = {
    "v1.0": dict(activation="relu", gated_mlp=False, tie_word_embeddings=True),
    "v1.1": dict(activation="gelu_tanh", gated_mlp=True, tie_word_embeddings=False),
    "sinusoidal": dict(absolute_positions="sinusoidal"),
}


@pytest.fixture(params=sorted(VARIANTS))
def model(request) -> Seq2Seq:
    return Seq2Seq(tiny(**VARIANTS[request.param])).eval()


def batch(B: int = 2, S: int = 9, T: int = 7) -> dict[str, torch.Tensor]:
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, -3:] = 0  # the second source is padded at the end
    return {"input_ids": torch.randint(2, V, (B, S)), "attention_mask": mask,
            "decoder_input_ids": torch.randint(2, V, (B, T))}


def test_build_model_and_shapes(model: Seq2Seq) -> None:
    assert type(build_model(model.config)).__name__ == "Seq2Seq"
    b = batch()
    out = model(**b, output_hidden_states=True, output_attentions=True)
    assert out.logits.shape == (2, 7, V)
    assert out.last_hidden_state.shape == (2, 7, 32)
    assert out.encoder_last_hidden_state.shape == (2, 9, 32)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert out.attentions[0].shape == (2, 4, 7, 7)
    # The explicit-math path (taken for the attention weights) agrees with SDPA.
    plain = model(**b)
    torch.testing.assert_close(out.logits, plain.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.hidden_states[-1], plain.last_hidden_state)


def test_logits_at_the_targets_equal_the_full_logits(model: Seq2Seq) -> None:
    """Training asks for the logits at the targets' tokens only: the same rows as the full logits',
    row-major; a mask of another shape or type is refused by name."""
    b = batch()
    at = torch.ones(2, 7, dtype=torch.bool)
    at[0, 5:] = False
    at[1, :2] = False
    full = model(**b).logits
    some = model(**b, logits_at=at).logits
    assert some.shape == (int(at.sum()), V)
    torch.testing.assert_close(some, full[at])
    with pytest.raises(ValueError, match=r"logits_at: expected a boolean mask of shape \(2, 7\)"):
        model(**b, logits_at=at[:, :5])
    with pytest.raises(ValueError, match="logits_at"):
        model(**b, logits_at=at.long())


def test_head_none_gives_no_logits() -> None:
    model = Seq2Seq(tiny(head="none")).eval()
    out = model(**batch())
    assert out.logits is None and model.lm_head is None


def test_tied_head_is_scaled_embedding() -> None:
    model = Seq2Seq(tiny(**VARIANTS["v1.0"])).eval()
    assert model.lm_head.weight is model.embed.weight
    out = model(**batch())
    expected = (out.last_hidden_state * 32 ** -0.5) @ model.embed.weight.T
    torch.testing.assert_close(out.logits, expected)


def test_untied_head_is_not_scaled() -> None:
    model = Seq2Seq(tiny(**VARIANTS["v1.1"])).eval()
    assert model.lm_head.weight is not model.embed.weight
    out = model(**batch())
    torch.testing.assert_close(out.logits, out.last_hidden_state @ model.lm_head.weight.T)


def test_decoder_is_causal(model: Seq2Seq) -> None:
    b = batch()
    before = model(**b).logits
    b["decoder_input_ids"][:, 4] = (b["decoder_input_ids"][:, 4] + 1) % V
    after = model(**b).logits
    torch.testing.assert_close(after[:, :4], before[:, :4], atol=0, rtol=0)
    assert (after[:, 4:] - before[:, 4:]).abs().max() > 1e-3


def test_encoder_is_bidirectional(model: Seq2Seq) -> None:
    ids = torch.randint(2, V, (1, 9))
    before = model.encode(ids).last_hidden_state
    ids[0, -1] = (ids[0, -1] + 1) % V
    after = model.encode(ids).last_hidden_state
    assert (after[:, 0] - before[:, 0]).abs().max() > 1e-3  # the first token sees the last


def test_encoder_padding_is_ignored(model: Seq2Seq) -> None:
    b = batch()
    out = model(**b)
    b["input_ids"][1, -3:] = 7  # change only the padded source tokens
    again = model(**b)
    torch.testing.assert_close(again.logits, out.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(again.encoder_last_hidden_state[1, :-3], out.encoder_last_hidden_state[1, :-3],
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunks", [[1] * 7, [3, 1, 1, 2]])
def test_cached_decoding_matches_full_forward(model: Seq2Seq, chunks: list[int]) -> None:
    b = batch()
    dec_mask = torch.ones(2, 7, dtype=torch.long)
    dec_mask[0, -2:] = 0
    full = model(**b, decoder_attention_mask=dec_mask)
    enc = model.encode(b["input_ids"], b["attention_mask"]).last_hidden_state
    cache = model.new_cache(batch_size=2, max_len=8)
    logits, start = [], 0
    for n in chunks:
        step = model(attention_mask=b["attention_mask"], encoder_outputs=enc if start == 0 else None,
                     decoder_input_ids=b["decoder_input_ids"][:, start:start + n],
                     decoder_attention_mask=dec_mask[:, :start + n], kv_cache=cache)
        logits.append(step.logits)
        start += n
    assert cache.pos == 7
    torch.testing.assert_close(torch.cat(logits, dim=1), full.logits, atol=1e-5, rtol=1e-5)


def test_cache_keeps_encoder_mask_and_needs_no_source_later(model: Seq2Seq) -> None:
    b = batch()
    full = model(**b).logits
    cache = model.new_cache(batch_size=2, max_len=7)
    first = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                  decoder_input_ids=b["decoder_input_ids"][:, :1], kv_cache=cache)
    rest = [model(decoder_input_ids=b["decoder_input_ids"][:, t:t + 1], kv_cache=cache).logits
            for t in range(1, 7)]
    torch.testing.assert_close(torch.cat([first.logits, *rest], dim=1), full, atol=1e-5, rtol=1e-5)
    cache.reset()
    assert cache.pos == 0 and not cache.has_cross and cache.encoder_mask is None


def test_cache_errors(model: Seq2Seq) -> None:
    b = batch()
    with pytest.raises(ValueError, match="kv_cache: built for batch size 3"):
        model(**b, kv_cache=model.new_cache(batch_size=3, max_len=8))
    with pytest.raises(ValueError, match="max_len=4"):
        model(**b, kv_cache=model.new_cache(batch_size=2, max_len=4))
    assert isinstance(model.new_cache(1, 4), Seq2SeqCache)


def test_missing_inputs_raise(model: Seq2Seq) -> None:
    b = batch()
    with pytest.raises(ValueError, match="decoder_input_ids: required"):
        model(input_ids=b["input_ids"])
    with pytest.raises(ValueError, match="input_ids: required"):
        model(decoder_input_ids=b["decoder_input_ids"])
    with pytest.raises(ValueError, match=r"decoder_input_ids: token ids must lie in \[0, 99\)"):
        model(input_ids=b["input_ids"], decoder_input_ids=torch.tensor([[1, 99]]))
    with pytest.raises(ValueError, match="input_ids: expected shape"):
        model.encode(torch.tensor([1, 2, 3]))


def test_shift_right() -> None:
    labels = torch.tensor([[5, 6, 1, -100], [7, 1, -100, -100]])
    assert shift_right(labels).tolist() == [[0, 5, 6, 1], [0, 7, 1, 0]]
    assert shift_right(labels, decoder_start_token_id=3, pad_token_id=2).tolist() == [[3, 5, 6, 1], [3, 7, 1, 2]]
    model = Seq2Seq(tiny(decoder_start_token_id=4, pad_token_id=9))
    assert model.shift_right(labels)[:, 0].tolist() == [4, 4]
    assert model.shift_right(labels)[1, -1].item() == 9


def test_relative_position_bucket_hand_table() -> None:
    # 8 buckets, max distance 20. Bidirectional: 4 per direction, exact for |d| < 2, then log-spaced
    # 2 + floor(log(d/2) / log(10) * 2), capped at 3; keys after the query add 4.
    offsets = torch.tensor([-25, -20, -7, -6, -3, -2, -1, 0, 1, 2, 5, 7, 30])
    bi = relative_position_bucket(offsets, bidirectional=True, num_buckets=8, max_distance=20)
    assert bi.tolist() == [3, 3, 3, 2, 2, 2, 1, 0, 5, 6, 6, 7, 7]
    # Unidirectional: 8 buckets for looking back, exact for d < 4, then 4 + floor(log(d/4)/log(5) * 4);
    # every key after the query falls in bucket 0.
    uni = relative_position_bucket(offsets, bidirectional=False, num_buckets=8, max_distance=20)
    assert uni.tolist() == [7, 7, 5, 5, 3, 2, 1, 0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("buckets", "max_distance"), [(32, 128), (8, 20), (16, 50)])
def test_relative_position_bucket_matches_transformers(bidirectional: bool, buckets: int, max_distance: int) -> None:
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    offsets = torch.arange(-300, 301)[None, :]
    ours = relative_position_bucket(offsets, bidirectional, buckets, max_distance)
    theirs = t5.T5Attention._relative_position_bucket(offsets, bidirectional=bidirectional,
                                                       num_buckets=buckets, max_distance=max_distance)
    assert torch.equal(ours, theirs)


def test_t5_init_scales() -> None:
    c = Seq2SeqConfig(vocab_size=512, d_model=64, head_dim=16, n_head=4, d_ff=256, n_layer=1,
                      gated_mlp=True, activation="gelu_tanh", tie_word_embeddings=False)
    model = Seq2Seq(c)
    block = model.decoder.blocks[0]
    q_size = 4 * 16
    expected = {
        "embed": (model.embed.weight, 1.0),
        "lm_head": (model.lm_head.weight, 1.0),
        "q": (block.attn.qkv.weight[:q_size], (64 * 16) ** -0.5),
        "kv": (block.attn.qkv.weight[q_size:], 64 ** -0.5),
        "cross q": (block.cross_attn.q.weight, (64 * 16) ** -0.5),
        "cross kv": (block.cross_attn.kv.weight, 64 ** -0.5),
        "o": (block.attn.proj.weight, q_size ** -0.5),
        "gate": (block.mlp.gate.weight, 64 ** -0.5),
        "up": (block.mlp.up.weight, 64 ** -0.5),
        "down": (block.mlp.down.weight, 256 ** -0.5),
        "rel_bias": (model.decoder.rel_bias.embedding.weight, 64 ** -0.5),
    }
    for name, (w, std) in expected.items():
        assert abs(w.std().item() / std - 1) < 0.25, name
    assert torch.equal(block.norm_1.weight, torch.ones(64))


def test_training_step_reaches_every_parameter() -> None:
    model = Seq2Seq(tiny(**VARIANTS["v1.1"], dropout=0.1)).train()
    b = batch()
    labels = torch.randint(2, V, (2, 7))
    logits = model(b["input_ids"], b["attention_mask"], decoder_input_ids=model.shift_right(labels)).logits
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Dropout is active in training mode and off in eval mode.
    assert not torch.equal(model(**b).logits, model(**b).logits)
    model.eval()
    torch.testing.assert_close(model(**b).logits, model(**b).logits, atol=0, rtol=0)


def test_sinusoidal_positions_table() -> None:
    pe = sinusoidal_positions(torch.arange(50), 16)
    assert pe.shape == (50, 16)
    assert torch.equal(pe[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    assert torch.allclose(pe[:, :8] ** 2 + pe[:, 8:] ** 2, torch.ones(50, 8), atol=1e-6)
    assert torch.allclose(pe[7, 0], torch.sin(torch.tensor(7.0)))  # the fastest wave: wavelength 2π
    assert sinusoidal_positions(torch.arange(3)[None].repeat(2, 1), 15).shape == (2, 3, 15)  # odd: zero-padded


def test_absolute_positions_tell_repeats_apart() -> None:
    """A source of one repeated token: with relative positions only, every encoder position is alike
    but for the ends; with sinusoidal ones, each is its own."""
    src = torch.full((1, 12), 7)
    for positions, distinct in (("none", False), ("sinusoidal", True)):
        torch.manual_seed(0)
        model = Seq2Seq(tiny(absolute_positions=positions, relative_max_distance=4, relative_buckets=4)).eval()
        h = model.encode(src).last_hidden_state[0]
        middle = h[5:7]  # far from both ends, beyond the relative buckets' reach
        assert torch.allclose(middle[0], middle[1], atol=1e-5) != distinct


def test_engine_decodes_a_sinusoidal_model_as_the_plain_loop() -> None:
    """The engine's rows each have their own decoder positions: the absolute signal must follow them."""
    from duplexlm.infer.engine import Engine, SamplingParams

    torch.manual_seed(0)
    model = Seq2Seq(tiny(absolute_positions="sinusoidal")).eval()
    sources = [[5, 9, 13, 1], [7, 7, 7, 7, 7, 7, 21, 1], [30, 1]]
    params = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True)
    got = [o.token_ids for o in Engine(model, max_batch_size=2).generate(sources, params)]
    with torch.no_grad():
        for source, answer in zip(sources, got):
            target = torch.tensor([[model.config.decoder_start_token_id]])
            for _ in range(6):
                nxt = model(torch.tensor([source]), decoder_input_ids=target).logits[0, -1].argmax()
                target = torch.cat([target, nxt.view(1, 1)], dim=1)
            assert answer == target[0, 1:].tolist()
