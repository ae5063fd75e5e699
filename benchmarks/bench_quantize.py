"""Weight-only int8 on CPU: file size, speed and logit error of fp32, ours (``duplex quantize``'s
``QuantLinear``) and ``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)``,
on the same models and inputs, in one run.

Two models, built with our code and seeded: a GPT-2-shaped decoder (6 layers of width 384, 6 heads,
vocabulary 8000, tied head: the demo's shape) and a BERT-style classifier (4 × 256, vocabulary 8000,
2 labels). Per model and side:

- file size: ours and fp32 as ``save_model`` writes them (model.safetensors); torch.ao's as
  ``torch.save`` of its state dict (its packed weights have no safetensors form);
- speed: scoring (one forward over a batch of token ids: tokens/s; examples/s for the classifier)
  and, for the decoder, greedy decoding at batch 1 through our ``Engine`` (new tokens/s, prefill
  included). Every side is warmed up, then timed in rounds that alternate the order of the sides
  (A B C, C B A, ...) so bursts of load on a shared machine hit all of them; the table gives the
  median over rounds with its min and max, and the median per-round speed-up over fp32;
- error: max and mean |Δlogits| against fp32 on the scoring batch, and the largest |logit| for scale.

Ours keeps a tied LM head in fp32 (it is the embedding); ``{nn.Linear}`` makes torch.ao quantise it
too (its copy of the model unties it), so on the decoder torch.ao quantises ~3 M more weights than
ours; the table says how many weights each side holds as integers, and a fourth side runs torch.ao
on exactly our modules (by name), which compares the two implementations alone. The models are random-init
(``--model-dir`` adds a trained model directory, whose error figures mean more).

    python benchmarks/bench_quantize.py                     # CPU-sized, prints the section
    python benchmarks/bench_quantize.py --smoke             # tiny shapes, 2 rounds: checks it runs
    python benchmarks/bench_quantize.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import copy
import io
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import machine, write_section
from duplexlm.compress import quant_modules, quantize_model, quantized_parameters
from duplexlm.config import DecoderConfig, EncoderConfig
from duplexlm.infer import Engine, SamplingParams
from duplexlm.io import load, save_model
from duplexlm.models import build_model, count_parameters

SHAPES = {
    "full": {"decoder": dict(vocab_size=8000, max_seq_len=256, d_model=384, n_layer=6, n_head=6),
             "classifier": dict(vocab_size=8000, max_seq_len=256, d_model=256, n_layer=4, n_head=4)},
    "smoke": {"decoder": dict(vocab_size=500, max_seq_len=64, d_model=64, n_layer=2, n_head=2),
              "classifier": dict(vocab_size=500, max_seq_len=64, d_model=64, n_layer=2, n_head=2)},
}
SIDES = ("fp32", "ours int8", "torch.ao dynamic int8", "torch.ao, our modules only")


# ----------------------------------------------------------------------------------------------------
# The three sides of one model


def torch_ao(model: nn.Module, only: list[str] | None = None) -> nn.Module:
    """``quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)`` on a copy, as its docs show; with
    ``only``, those modules alone (by name, with its default dynamic qconfig)."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    spec: Any = {nn.Linear} if only is None else dict.fromkeys(only, default_dynamic_qconfig)
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)


def ao_quantized_parameters(model: nn.Module) -> int:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, DynamicLinear))


def sides_of(fp32: nn.Module, tmp: Path, name: str) -> dict[str, dict[str, Any]]:
    """Each side's model, file size and how many weights it holds as integers."""
    save_model(fp32, tmp / f"{name}-fp32")
    ours = copy.deepcopy(fp32)
    quantize_model(ours, "int8")
    save_model(ours, tmp / f"{name}-int8")
    ours, _ = load(tmp / f"{name}-int8")  # as a user gets it: from the directory
    assert quant_modules(ours)
    ao, ao_ours = torch_ao(fp32), torch_ao(fp32, only=list(quant_modules(ours)))

    def saved(m: nn.Module) -> int:
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        return buf.getbuffer().nbytes

    return {
        "fp32": {"model": fp32, "bytes": (tmp / f"{name}-fp32" / "model.safetensors").stat().st_size, "int": 0},
        "ours int8": {"model": ours, "bytes": (tmp / f"{name}-int8" / "model.safetensors").stat().st_size,
                      "int": quantized_parameters(ours)},
        "torch.ao dynamic int8": {"model": ao, "bytes": saved(ao), "int": ao_quantized_parameters(ao)},
        "torch.ao, our modules only": {"model": ao_ours, "bytes": saved(ao_ours),
                                       "int": ao_quantized_parameters(ao_ours)},
    }


# ----------------------------------------------------------------------------------------------------
# Timing


def rounds(work: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """Seconds per call for each side, ``reps`` rounds, the order of the sides reversed every round."""
    names = list(work)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            work[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def rates(times: dict[str, list[float]], units: int) -> dict[str, dict[str, Any]]:
    """Per side: units/s over the rounds (median, min, max) and the median per-round speed-up over fp32."""
    base = times["fp32"]
    return {n: {"rate": units / statistics.median(ts), "lo": units / max(ts), "hi": units / min(ts),
                "speedup": statistics.median(b / t for b, t in zip(base, ts))} for n, ts in times.items()}


@torch.no_grad()
def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids, attention_mask=torch.ones_like(ids)).logits.float()


def bench_model(name: str, fp32: nn.Module, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    fp32.eval()
    sides = sides_of(fp32, tmp, name)
    c = fp32.config
    g = torch.Generator().manual_seed(0)
    seq = min(args.seq, c.max_seq_len)
    ids = torch.randint(1, c.vocab_size, (args.batch, seq), generator=g)
    ref = logits_of(fp32, ids)
    for s in sides.values():
        d = (logits_of(s["model"], ids) - ref).abs()
        s["max_d"], s["mean_d"] = float(d.max()), float(d.mean())

    def score(m: nn.Module) -> Callable[[], Any]:
        return lambda: logits_of(m, ids)

    work = {n: score(s["model"]) for n, s in sides.items()}
    for f in work.values():  # warm-up: allocator, our packed weights
        f()
    units = ids.numel() if c.family == "decoder" else ids.shape[0]
    result = {"name": name, "params": count_parameters(fp32), "sides": sides, "max_logit": float(ref.abs().max()),
              "score": rates(rounds(work, args.rounds), units), "score_unit": "tok/s" if c.family == "decoder"
              else "examples/s", "decode": None}
    if c.family == "decoder" and c.head == "lm":
        params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0, ignore_eos=True)
        prompt = torch.randint(1, c.vocab_size, (16,), generator=g).tolist()
        engines = {n: Engine(s["model"], max_batch_size=1, max_len=min(c.max_seq_len, 16 + args.new_tokens + 1))
                   for n, s in sides.items()}
        decode = {n: (lambda e=e: e.generate(prompt, params)) for n, e in engines.items()}
        for f in decode.values():
            f()
        result["decode"] = rates(rounds(decode, args.rounds), args.new_tokens)
    return result


# ----------------------------------------------------------------------------------------------------
# Report


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f}"


def _rate(r: dict[str, Any], base: bool) -> tuple[str, str]:
    cell = f"{r['rate']:,.0f} [{r['lo']:,.0f}–{r['hi']:,.0f}]"
    return cell, "—" if base else f"**{r['speedup']:.2f}x**"


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> tuple[str, str]:
    heading = "### Quantisation, weight-only int8 on CPU"
    cmd = shlex.join(["python", "benchmarks/bench_quantize.py", *sys.argv[1:]])
    lines = [heading, "",
             f"Machine: {machine(torch.device('cpu'))}, quantised engine {torch.backends.quantized.engine}. Sides: fp32; "
             "ours (`quantize_model(model, 'int8')`, saved and loaded back; per-channel int8 weights, the CPU "
             "int8 kernel with activations quantised per tensor on the fly; a tied head stays fp32); "
             "`torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)` (per-tensor int8 "
             "weights, the same kernel, every Linear including a tied head), and the same on our modules only. Random-init models, random token "
             f"ids; scoring: one forward over {args.batch} × {args.seq} tokens; decoding: greedy, batch 1, 16-token "
             f"prompt, {args.new_tokens} new tokens through our `Engine`, prefill included. {args.rounds} rounds after "
             "a warm-up, the order of the sides reversed every round; median [min–max] over rounds, and the "
             f"median per-round speed-up over fp32. Command: `{cmd}`.", "",
             "| model | side | int weights | file (MiB) | scoring [min–max] | vs fp32 | decoding tok/s [min–max] "
             "| vs fp32 | max \\|Δlogits\\| | mean \\|Δlogits\\| |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for n in SIDES:
            s = res["sides"][n]
            score, score_x = _rate(res["score"][n], n == "fp32")
            dec, dec_x = _rate(res["decode"][n], n == "fp32") if res["decode"] else ("—", "—")
            err = ("—", "—") if n == "fp32" else (f"{s['max_d']:.3g}", f"{s['mean_d']:.3g}")
            lines.append(f"| {res['name']} ({res['params'] / 1e6:.1f} M, max \\|logit\\| {res['max_logit']:.2g}) | "
                         f"{n} | {s['int'] / 1e6:.2f} M | {_mib(s['bytes'])} | {score} {res['score_unit']} | "
                         f"{score_x} | {dec} | {dec_x} | {err[0]} | {err[1]} |")
    return heading, "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes and 2 rounds: checks that it runs")
    p.add_argument("--batch", type=int, default=None, help="scoring batch (default 4; smoke 2)")
    p.add_argument("--seq", type=int, default=None, help="scoring tokens per row (default 128; smoke 16)")
    p.add_argument("--new-tokens", type=int, default=None, help="decoded tokens (default 32; smoke 4)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; smoke 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--model-dir", default=None, help="also a trained model directory (ours, full precision)")
    p.add_argument("--write", default="", help="markdown file to update (default '': print only)")
    args = p.parse_args()
    smoke = args.smoke
    for key, full, tiny in (("batch", 4, 2), ("seq", 128, 16), ("new_tokens", 32, 4), ("rounds", 7, 2)):
        if getattr(args, key) is None:
            setattr(args, key, tiny if smoke else full)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = SHAPES["smoke" if smoke else "full"]
    torch.manual_seed(0)
    models = {f"GPT-2 shape {shapes['decoder']['n_layer']}×{shapes['decoder']['d_model']}":
              build_model(DecoderConfig(**shapes["decoder"])),
              f"BERT-style classifier {shapes['classifier']['n_layer']}×{shapes['classifier']['d_model']}":
              build_model(EncoderConfig(**shapes["classifier"], head="classify", num_labels=2))}
    if args.model_dir:
        models[f"trained: {args.model_dir}"] = load(args.model_dir)[0]
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_model(name, m, args, Path(tmp)) for name, m in models.items()]
    heading, text = report(results, args)
    print(text)
    if args.write:
        write_section(Path(args.write), heading, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
