"""The CUDA paths: every family on the GPU matches the CPU in fp32, trains under bf16 autocast, and
decodes with the KV cache. Skipped where there is no GPU (CI); run on a GPU machine."""

import pytest
import torch
import torch.nn.functional as F

from duplexlm.models import build_model
from duplexlm.precision import autocast, resolve_autocast_dtype
from duplexlm.presets import get_preset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FAMILIES = ["gpt2-tiny", "llama-tiny", "qwen2-tiny", "bert-tiny", "t5-tiny", "lstm-tiny"]


def _forward(model, ids, mask):
    if model.config.family == "seq2seq":
        return model(ids, attention_mask=mask, decoder_input_ids=ids[:, :8])
    return model(ids, attention_mask=mask)


@pytest.fixture(autouse=True)
def _exact_fp32():
    # TF32 would make GPU fp32 differ from the CPU by ~1e-3; parity wants true fp32.
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("name", FAMILIES)
def test_gpu_matches_cpu_fp32(name):
    torch.manual_seed(0)
    model = build_model(get_preset(name)).eval()
    ids = torch.randint(1, model.config.vocab_size, (3, 24))
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    with torch.no_grad():
        cpu = _forward(model, ids, mask)
        gpu = _forward(model.cuda(), ids.cuda(), mask.cuda())
    keep = mask.bool() if cpu.last_hidden_state.shape[1] == ids.shape[1] else slice(None)
    diff = (cpu.last_hidden_state[keep] - gpu.last_hidden_state.cpu()[keep]).abs().max().item()
    assert diff < 1e-4, diff


@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_autocast_training_on_gpu(name):
    torch.manual_seed(0)
    cfg = get_preset(name)
    model = build_model(cfg).cuda().train()
    dtype = resolve_autocast_dtype("auto", "cuda")
    assert dtype in (torch.bfloat16, torch.float16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(1, cfg.vocab_size, (4, 32), device="cuda")
    losses = []
    for _ in range(15):
        with autocast("cuda", dtype):
            out = _forward(model, ids, None)
            h = out.logits if out.logits is not None and out.logits.dim() == 3 else None
            if h is not None and h.shape[-1] == cfg.vocab_size:
                target = ids[:, 1:h.shape[1] + 1] if cfg.family == "decoder" else ids[:, : h.shape[1]]
                h = h[:, : target.shape[1]]
                loss = F.cross_entropy(h.float().reshape(-1, h.shape[-1]), target.reshape(-1))
            else:  # a head without vocabulary logits: pull the hidden states toward zero
                loss = out.last_hidden_state.float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_kv_cache_on_gpu(name):
    torch.manual_seed(0)
    model = build_model(get_preset(name)).cuda().eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 20), device="cuda")
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_kv_cache(2, 32)
        pieces = [model(ids[:, :5], kv_cache=cache).logits, model(ids[:, 5:12], kv_cache=cache).logits]
        pieces += [model(ids[:, t:t + 1], kv_cache=cache).logits for t in range(12, 20)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-4, rtol=0)


def test_flash_attention_path_matches_eager():
    from duplexlm.models.layers import eager_attention, sdpa_attention

    q, k, v = torch.randn(3, 2, 8, 256, 64, device="cuda").unbind(0)
    ref, _ = eager_attention(q, k, v, is_causal=True)
    out, _ = sdpa_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=True)
    assert (out.float() - ref).abs().max().item() < 3e-2
