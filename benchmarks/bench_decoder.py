"""Forward+backward training throughput of our GPT-2-style decoder against transformers' GPT2LMHeadModel.

Same config, same weights, same batch, in one run, interleaved so both see the same machine noise;
fp32 and bf16 autocast. Reports tokens/s, MFU against this machine's measured matmul peak for the
dtype, and the ratio ours / transformers. Writes a section of docs/benchmarks.md.

    python benchmarks/bench_decoder.py                  # CPU-sized model
    python benchmarks/bench_decoder.py --size gpt2      # the real GPT-2 small (use on a GPU)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from duplexlm.config import DecoderConfig
from duplexlm.convert import to_hf
from duplexlm.models import build_model
from duplexlm.precision import autocast, cpu_bf16_is_fast, cpu_capability, matmul_peak, synchronize

SIZES = {
    # a CPU-sized GPT-2: 6 layers of width 384 over a 16k vocabulary
    "small-cpu": dict(vocab_size=16384, max_seq_len=256, d_model=384, n_layer=6, n_head=6),
    "gpt2": dict(vocab_size=50257, max_seq_len=1024, d_model=768, n_layer=12, n_head=12),
}


def _step(model: torch.nn.Module, ids: torch.Tensor, hf: bool, dtype: torch.dtype | None) -> None:
    with autocast(ids.device, dtype):
        logits = model(input_ids=ids[:, :-1]).logits if hf else model(ids[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    model.zero_grad(set_to_none=True)


def hf_gpt2(ours: torch.nn.Module) -> torch.nn.Module:
    """transformers' GPT2LMHeadModel with our decoder's config and weights (SDPA attention)."""
    import transformers

    transformers.logging.set_verbosity_error()
    hf_cfg, hf_sd = to_hf(ours.config, ours.state_dict())
    hf_cfg = {k: v for k, v in hf_cfg.items() if k not in ("model_type", "architectures")}
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_cfg, attn_implementation="sdpa"))
    theirs.load_state_dict(hf_sd, strict=False)  # the tied head is absent; transformers re-ties it
    return theirs


def bench(size: str, batch: int, seq: int, steps: int, device: torch.device) -> list[dict]:
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = DecoderConfig(**SIZES[size], dropout=0.0, attn_dropout=0.0)
    torch.manual_seed(0)
    ours = build_model(cfg).to(device).train()
    theirs = hf_gpt2(ours).to(device).train()
    flops_per_token = ours.num_flops_per_token(seq)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=device)
    dtypes: list[torch.dtype | None] = [None, torch.bfloat16]
    rows = []
    for dtype in dtypes:
        peak = matmul_peak(device, dtype, n=2048, reps=10)
        times: dict[str, list[float]] = {"duplexlm": [], "transformers": []}
        for model, hf in ((ours, False), (theirs, True)):
            _step(model, ids, hf, dtype)  # warm-up
        for _ in range(steps):  # interleave so both see the same noise
            for name, model, hf in (("duplexlm", ours, False), ("transformers", theirs, True)):
                synchronize(device)
                t0 = time.perf_counter()
                _step(model, ids, hf, dtype)
                synchronize(device)
                times[name].append(time.perf_counter() - t0)
        tok = batch * seq
        res = {k: tok / statistics.median(v) for k, v in times.items()}
        rows.append({
            "dtype": "bf16 autocast" if dtype else "fp32",
            "peak": peak,
            "ours": res["duplexlm"], "hf": res["transformers"],
            "mfu_ours": res["duplexlm"] * flops_per_token / peak,
            "mfu_hf": res["transformers"] * flops_per_token / peak,
            "ratio": res["duplexlm"] / res["transformers"],
        })
    return rows


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name()}, torch {torch.__version__}"
    return (f"CPU {platform.machine()}, capability {cpu_capability()}, native bf16 "
            f"{'yes' if cpu_bf16_is_fast() else 'no'}, {torch.get_num_threads()} threads, torch {torch.__version__}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="small-cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--write", default="docs/benchmarks.md", help="markdown file to update ('' to skip)")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = bench(args.size, args.batch, args.seq, args.steps, device)
    cmd = "python benchmarks/bench_decoder.py " + " ".join(sys.argv[1:])
    lines = [
        f"### Decoder training step, `{args.size}` on {device.type.upper()}",
        "",
        f"Machine: {machine(device)}. Batch {args.batch} × {args.seq} tokens, forward + backward, "
        f"median of {args.steps} interleaved steps. Command: `{cmd.strip()}`.",
        "",
        "| precision | matmul peak (TFLOP/s) | duplexlm tok/s | transformers tok/s | MFU duplexlm | MFU transformers | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['peak'] / 1e12:.2f} | {r['ours']:,.0f} | {r['hf']:,.0f} | "
                     f"{r['mfu_ours']:.1%} | {r['mfu_hf']:.1%} | **{r['ratio']:.2f}x** |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(Path(args.write), f"### Decoder training step, `{args.size}` on {device.type.upper()}", text)
    return 0


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace (or append) the section starting at ``heading`` in a markdown file, atomically."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    if heading in old:
        start = old.index(heading)
        nxt = old.find("\n### ", start + len(heading))
        old = old[:start] + (text.rstrip("\n") + "\n\n" + old[nxt + 1:] if nxt != -1 else text)
        new = old
    else:
        new = old.rstrip("\n") + "\n\n" + text
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
