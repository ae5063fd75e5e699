"""Greedy decoding speed of our engine against transformers' ``generate``, on the same weights.

A GPT-2-shaped decoder (13.8 M parameters: 6 layers of width 384, 6 heads, vocabulary 8000, the
demo's shape) is built once; transformers' GPT2LMHeadModel gets the same weights through our
converter. Both decode the same prompts greedily for the same number of new tokens (end-of-text
ignored, so every row runs the full length), at batch 1 and 16, in rounds that alternate the two
sides so both see the same machine noise. Reports decode tokens/s (new tokens over wall time, prefill
included) per side, the ratio per round, its median and range, and whether both produced the same
tokens. A third column is a ceiling: the matrix products of one decoding step alone (every Linear and
the head on the step's activations, nothing else: no attention, no norms, no Python), timed in the
same rounds, as tokens/s, with the fastest of the kernels: ``F.linear`` on the model's weights (MKL;
column-major, as the engine leaves them on a CPU), oneDNN on weights packed for it (what our engine
uses there for 2 rows or more), and at batch 1 each weight split in two halves multiplied at once by
``torch.bmm`` (what our engine uses there for one row). No implementation of this model in
fp32 with PyTorch's kernels decodes faster than that on the machine. Writes a section of
docs/benchmarks.md.

    python benchmarks/bench_generate.py                      # CPU, batch 1 and 16
    python benchmarks/bench_generate.py --threads 1 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import hf_gpt2, machine, write_section
from duplexlm.config import DecoderConfig
from duplexlm.infer import Engine, SamplingParams
from duplexlm.infer.packed import packing_available
from duplexlm.models import build_model, count_parameters
from duplexlm.precision import synchronize

SHAPE = dict(vocab_size=8000, max_seq_len=256, d_model=384, n_layer=6, n_head=6)


def matmul_step(model: torch.nn.Module, batch: int, device: torch.device, kind: str = "linear"):
    """The matrix products of one decoding step of ``batch`` rows, and nothing else: ``F.linear`` on
    the model's weights (MKL on a CPU, cuBLAS on a GPU), oneDNN on weights packed for it (``packed``),
    or, for one row, each column-major weight's two halves in one ``torch.bmm`` (``split``)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {n: torch.randn(batch, n, device=device) for n in {m.in_features for m in linears}}
    if kind == "packed":
        weights = [torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), None) for m in linears]

        def run() -> None:
            for m, w in zip(linears, weights):
                torch.ops.mkldnn._linear_pointwise(inputs[m.in_features], w, m.bias, "none", [], "")
    elif kind == "split":
        halves = [m.weight.detach().t().contiguous().view(2, m.in_features // 2, m.out_features) for m in linears]

        def run() -> None:
            for m, w in zip(linears, halves):
                y = torch.bmm(inputs[m.in_features].view(2, 1, -1), w).sum(0)
                if m.bias is not None:
                    y.add_(m.bias)
    else:
        def run() -> None:
            for m in linears:
                F.linear(inputs[m.in_features], m.weight, m.bias)

    return run


def bench(batches: list[int], prompt_len: int, new: int, rounds: int, device: torch.device) -> list[dict]:
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    ours = build_model(DecoderConfig(**SHAPE, dropout=0.0, attn_dropout=0.0)).to(device).eval()
    theirs = hf_gpt2(ours).to(device).eval()
    theirs.generation_config.eos_token_id = None  # run every row the full length, as ours does
    theirs.generation_config.pad_token_id = 0
    rows = []
    for B in batches:
        rows.append(bench_batch(ours, theirs, B, prompt_len, new, rounds, device))
        print(rows[-1], flush=True)
    return rows


def bench_batch(ours: torch.nn.Module, theirs: torch.nn.Module, B: int, prompt_len: int, new: int, rounds: int,
                device: torch.device) -> dict:
    ids = torch.randint(1, SHAPE["vocab_size"], (B, prompt_len), device=device)
    # the engine lives as long as a server's would: built (and its cache allocated) once
    engine = Engine(ours, max_batch_size=B, max_len=prompt_len + new)
    params = SamplingParams(max_new_tokens=new, temperature=0, ignore_eos=True)
    prompts = ids.tolist()
    steps = {"ceiling": matmul_step(ours, B, device)}
    if device.type == "cpu" and packing_available():
        steps["ceiling_packed"] = matmul_step(ours, B, device, "packed")
    if device.type == "cpu" and B == 1:
        steps["ceiling_split"] = matmul_step(ours, B, device, "split")

    def run_ours() -> list[list[int]]:
        return [c.token_ids for c in engine.generate(prompts, params)]

    def run_theirs() -> list[list[int]]:
        out = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                              do_sample=False)
        return out[:, prompt_len:].tolist()

    def ceiling(step):
        def run() -> None:
            for _ in range(new):
                step()
        return run

    sides = {"duplexlm": run_ours, "transformers": run_theirs, **{k: ceiling(v) for k, v in steps.items()}}
    tokens, times = {}, {k: [] for k in sides}
    with torch.no_grad():
        for name, fn in sides.items():  # warm-up; the two sides' tokens are compared
            tokens[name] = fn()
        for _ in range(rounds):
            for name, fn in sides.items():
                synchronize(device)
                t0 = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append(time.perf_counter() - t0)
    ratios = [h / o for o, h in zip(times["duplexlm"], times["transformers"])]
    return {
        "batch": B,
        "ours": B * new / statistics.median(times["duplexlm"]),
        "hf": B * new / statistics.median(times["transformers"]),
        # the fastest of the kernels: no fp32 implementation's products run faster here with PyTorch's kernels
        "ceiling": B * new / min(statistics.median(times[k]) for k in steps),
        "ratio": statistics.median(ratios), "lo": min(ratios), "hi": max(ratios),
        "same": tokens["duplexlm"] == tokens["transformers"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new", type=int, default=128, help="new tokens per row")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--write", default="docs/benchmarks.md", help="markdown file to update ('' to skip)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()[0]  # a shared machine: other work slows both sides, and the ratio less than either
    rows = bench(args.batches, args.prompt_len, args.new, args.rounds, device)
    import transformers

    params = count_parameters(build_model(DecoderConfig(**SHAPE))) / 1e6
    cmd = "python benchmarks/bench_generate.py " + " ".join(sys.argv[1:])
    heading = f"### Greedy decoding, GPT-2 shape {params:.1f} M on {device.type.upper()}"
    lines = [
        heading,
        "",
        f"Machine: {machine(device)}, transformers {transformers.__version__}, load average {load:.1f} at the "
        f"start. Our `Engine.generate` against "
        f"`GPT2LMHeadModel.generate(do_sample=False)` on the same weights (converted by `to_hf`); prompts of "
        f"{args.prompt_len} tokens, {args.new} new tokens per row (end-of-text ignored), prefill included; "
        f"median of {args.rounds} rounds alternating the two sides. On a CPU our engine multiplies 2 to 256 rows "
        f"with oneDNN on weights packed once, and one row by each column-major weight's two halves at once "
        f"(`torch.bmm`, a core each; `duplexlm.infer.packed`); transformers uses MKL on its `Conv1D` weights. Command: `{cmd.strip()}`.",
        "",
        "| batch | duplexlm tok/s | transformers tok/s | ours is faster by (median [min–max] per round) "
        "| same tokens | matmul-only ceiling tok/s (× transformers) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['ours']:,.0f} | {r['hf']:,.0f} | **{r['ratio']:.2f}x** "
                     f"[{r['lo']:.2f}–{r['hi']:.2f}] | {'yes' if r['same'] else 'no'} | "
                     f"{r['ceiling']:,.0f} ({r['ceiling'] / r['hf']:.2f}x) |")
    goals = {1: 3.0, 16: 2.0}  # issue 13's goals: 3x at batch 1, 2x at batch 16
    notes = []
    for r in rows:
        goal = goals.get(r["batch"])
        if goal is None:
            continue
        reach = r["ceiling"] / r["hf"]
        share = r["ours"] / r["ceiling"]
        verdict = (f"met ({r['ratio']:.2f}x)" if r["ratio"] >= goal else
                   f"not met: {r['ratio']:.2f}x; " + (f"even the matrix products alone would reach only {reach:.2f}x "
                                                      "here, so fp32 with these kernels cannot" if reach < goal else
                                                      f"the matrix products alone would allow {reach:.2f}x"))
        notes.append(f"batch {r['batch']}: goal {goal:g}x {verdict}; ours runs at {share:.0%} of the ceiling.")
    lines += ["", "Against the goals: " + " ".join(notes)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(Path(args.write), heading, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
