"""GRPO's sampling throughput: groups of completions through our engine, as ``task=grpo`` samples them,
against transformers' ``generate`` for the same groups, in one run.

    python benchmarks/bench_rollouts.py --model runs/q-sft/all/decoder-pretrained-s1/model
    python benchmarks/bench_rollouts.py --model DIR --prompts 4 --group 8 --new 64 --rounds 5 --write docs/benchmarks.md

The model: an instruction-tuned decoder (``bench_quality.py --task sft`` leaves one). The prompts: the
first ``--prompts`` of a zh-task's training prompts (``--task``, 实体识别 by default: the answers of
every length), in the chat template, each sampled ``--group`` times at temperature 1 (no top-k, no
top-p) for at most ``--new`` tokens, ending at the end-of-turn token. Sides:

- ours as ``task=grpo`` samples (:class:`duplexlm.train.rollouts.RolloutSampler`): an
  :class:`~duplexlm.infer.engine.Engine` built for the call over the training model, every completion
  with its own seed, rows leaving the batch as they end;
- transformers' ``generate(do_sample=True, num_return_sequences=G, top_k=0)`` on the Hugging Face form
  of the same weights (``convert_to_hf``), the prompts padded on the left; a row that has ended is
  padded until the longest is done.

Throughput: completion tokens (up to and with the end token) over wall time, the sides alternating in
rounds (the order reversed every other round); the ratio per round, median [min–max]. The two samplers
draw different random numbers, so the completions (and their lengths) differ; the mean length of
each is in the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import machine, write_section

HEADING = "### GRPO sampling: our engine against transformers' generate (CPU)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an instruction-tuned decoder (a model directory)")
    p.add_argument("--task", default="实体识别", help="the zh-task whose training prompts are sampled")
    p.add_argument("--prompts", type=int, default=4, help="prompts per call (the GRPO recipe's batch_size)")
    p.add_argument("--group", type=int, default=8, help="completions per prompt")
    p.add_argument("--new", type=int, default=64, help="at most this many new tokens per completion")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--write", default="", help="markdown file to put the table in (e.g. docs/benchmarks.md)")
    args = p.parse_args()
    import transformers

    import duplexlm
    from duplexlm.data.prompts import load_prompt_data
    from duplexlm.train.rollouts import RolloutSampler

    transformers.logging.set_verbosity_error()
    start = time.perf_counter()
    model, tok = duplexlm.load(args.model)
    model.train()  # as the training loop holds it (the recipe's dropout is 0)
    examples = [e for e in load_prompt_data("zh-tasks").splits["train"] if e.task == args.task][: args.prompts]
    if len(examples) < args.prompts:
        raise SystemExit(f"--task {args.task}: {len(examples)} training prompts, fewer than --prompts {args.prompts}")
    sampler = RolloutSampler(examples, tok, seed=1, group_size=args.group, max_new_tokens=args.new, temperature=1.0,
                             reward=None, max_prompt_len=model.config.max_seq_len - args.new, shuffle=False)
    sampler.attach(model)
    with tempfile.TemporaryDirectory(prefix="duplex-rollouts-") as tmp:
        duplexlm.convert_to_hf(args.model, tmp, overwrite=True)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp).float().eval()
    ends = sorted(set(sampler.prompts[0].stop_token_ids) | ({tok.eos_token_id} if tok.eos_token_id is not None else set()))
    width = max(len(i) for i in sampler.ids)
    pad = tok.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(i)) + list(i) for i in sampler.ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in sampler.ids])
    calls = {"n": 0}

    def ours() -> int:
        calls["n"] += 1  # a new global sample index each call: new seeds, as the next training step
        done = sampler._sample(list(range(args.prompts)), [calls["n"] * args.prompts + i for i in range(args.prompts)])
        return sum(len(c.token_ids) for c in done)

    def theirs() -> int:
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              num_return_sequences=args.group, max_new_tokens=args.new, eos_token_id=ends,
                              pad_token_id=pad)[:, width:]
        total = 0
        for row in out.tolist():
            n = next((i + 1 for i, t in enumerate(row) if t in ends), len(row))
            total += n
        return total

    sides = {"ours": ours, "transformers": theirs}
    for fn in sides.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {s: [] for s in sides}
    tokens: dict[str, list[int]] = {s: [] for s in sides}
    for r in range(args.rounds):
        for name in (list(sides) if r % 2 == 0 else list(reversed(sides))):
            t0 = time.perf_counter()
            n = sides[name]()
            times[name].append(time.perf_counter() - t0)
            tokens[name].append(n)
    rate = {s: [n / t for n, t in zip(tokens[s], times[s])] for s in sides}
    ratios = [a / b for a, b in zip(rate["ours"], rate["transformers"])]
    rows = args.prompts * args.group
    minutes = (time.perf_counter() - start) / 60
    cmd = ("python benchmarks/bench_rollouts.py " + " ".join(sys.argv[1:])).strip()
    lines = [HEADING, "",
             f"Machine: {machine(torch.device('cpu'))}, transformers {transformers.__version__}; {minutes:.1f} minutes "
             f"in all. Model: `{args.model}`. {args.prompts} {args.task} training prompts x {args.group} completions "
             f"({rows} rows a call), temperature 1, at most {args.new} new tokens, ending at the end-of-turn token; "
             f"{args.rounds} rounds after a warm-up, alternating. Command: `{cmd}`.", "",
             "| side | completion tokens/s | x transformers | mean completion length |", "|---|---|---|---|",
             f"| ours (`RolloutSampler`, the `Engine`) | {statistics.median(rate['ours']):,.0f} | "
             f"**{statistics.median(ratios):.2f}x** [{min(ratios):.2f}–{max(ratios):.2f}] | "
             f"{statistics.mean(tokens['ours']) / rows:.1f} |",
             f"| transformers `generate` | {statistics.median(rate['transformers']):,.0f} | 1.00x | "
             f"{statistics.mean(tokens['transformers']) / rows:.1f} |", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(Path(args.write), HEADING, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
