"""Sampling functions (mock logits) and the cached decoding loop against a naive one."""

import pytest
import torch

from duplexlm.config import DecoderConfig
from duplexlm.infer import generate, sample_next
from duplexlm.models import build_model


def test_greedy_and_top_k_one():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, temperature=1.0, top_k=1, generator=g).tolist() == [1, 0]


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, top_p=0.7, generator=g) for _ in range(2000)])
    assert set(draws.flatten().tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.7; 2 and 3 never drawn
    frac0 = (draws == 0).float().mean().item()
    assert abs(frac0 - 0.5 / 0.8) < 0.05


def test_temperature_sharpens():
    logits = torch.tensor([[1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    hot = torch.stack([sample_next(logits, 5.0, generator=g) for _ in range(2000)]).float().mean()
    cold = torch.stack([sample_next(logits, 0.2, generator=g) for _ in range(2000)]).float().mean()
    assert cold < hot  # colder sampling picks token 0 more often


def test_sampling_is_reproducible_with_a_generator():
    logits = torch.randn(4, 50)
    a = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(7))
    b = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, -1.0)


def test_generate_greedy_matches_naive_loop():
    torch.manual_seed(0)
    model = build_model(DecoderConfig(vocab_size=40, max_seq_len=32, d_model=32, n_layer=2, n_head=4)).eval()
    prompt = torch.randint(0, 40, (2, 5))
    out = generate(model, prompt, max_new_tokens=8, temperature=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)


def test_generate_stops_at_eos_and_context():
    torch.manual_seed(0)
    model = build_model(DecoderConfig(vocab_size=40, max_seq_len=12, d_model=32, n_layer=1, n_head=4)).eval()
    prompt = torch.randint(0, 40, (1, 5))
    first = generate(model, prompt, max_new_tokens=1, temperature=0)[0, -1].item()
    out = generate(model, prompt, max_new_tokens=5, temperature=0, eos_token_id=first)
    assert out.shape[1] == 6  # stopped right after emitting eos
    assert generate(model, prompt, max_new_tokens=50, temperature=0).shape[1] == 12  # context limit


def test_generate_keeps_the_training_mode_and_layout():
    model = build_model(DecoderConfig(vocab_size=40, max_seq_len=16, d_model=16, n_layer=1, n_head=2)).train()
    strides = {n: p.stride() for n, p in model.named_parameters()}
    generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=3, temperature=0.7,
             generator=torch.Generator().manual_seed(0))
    assert model.training
    assert {n: p.stride() for n, p in model.named_parameters()} == strides
    assert {type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.Linear)} == {"Linear"}


def test_generate_decodes_with_packed_weights_and_gives_the_plain_tokens():
    """generate() packs the weights (the engine's CPU speed) and gives what the plain layout gives; a
    model in eval mode stays packed for the next call, as one packed before (a server's) does."""
    from duplexlm.infer.engine import Engine
    from duplexlm.infer.packed import PackedLinear, pack_linears

    torch.manual_seed(0)
    model = build_model(DecoderConfig(vocab_size=50, max_seq_len=32, d_model=32, n_layer=2, n_head=2)).eval()
    prompts = torch.randint(0, 50, (4, 5))
    plain = Engine(model, max_batch_size=4, cpu_layout=False).generate(
        prompts.tolist(), max_new_tokens=8, temperature=0, ignore_eos=True)
    out = generate(model, prompts, max_new_tokens=8, temperature=0)
    assert out[:, 5:].tolist() == [c.token_ids for c in plain]
    # a model in eval mode keeps the engine's layout, so the next call decodes at once, and gives the same
    assert all(type(m) is PackedLinear for m in model.modules() if isinstance(m, torch.nn.Linear))
    packed = {id(m._packed) for m in model.modules() if isinstance(m, PackedLinear)}
    assert generate(model, prompts, max_new_tokens=8, temperature=0).tolist() == out.tolist()
    assert {id(m._packed) for m in model.modules() if isinstance(m, PackedLinear)} == packed  # not packed again
    pack_linears(model)
    generate(model, prompts, max_new_tokens=2, temperature=0)
    assert all(type(m) is PackedLinear for m in model.modules() if isinstance(m, torch.nn.Linear))
