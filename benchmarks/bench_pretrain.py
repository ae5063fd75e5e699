"""Pretraining throughput and quality: ``duplex pretrain``'s loop against a plain transformers training
loop and transformers' ``Trainer``, on the same model size, data and batch, in one run.

1. tokens/s and MFU (model FLOPs over this machine's measured matmul peak for the dtype) over the
   same number of optimizer steps, each implementation in turn, repeated and interleaved;
2. validation bits per byte reached in a fixed wall-clock budget (ours vs the plain loop).

Needs token shards (``duplex data prepare``); by default builds them from People's Daily.

    python benchmarks/bench_pretrain.py                  # CPU-sized; writes docs/benchmarks.md
    python benchmarks/bench_pretrain.py --budget 120     # longer quality race
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import hf_gpt2, machine, write_section
from duplexlm.precision import autocast
from duplexlm.train import loop
from duplexlm.train.config import load_train_config


def ensure_data(root: Path) -> Path:
    data = root / "pd-bpe"
    if (data / "meta.json").is_file():
        return data
    from duplexlm.data import iter_documents, prepare
    from duplexlm.data.clean import clean_text
    from duplexlm.tokenizer import save_tokenizer, train_tokenizer

    texts = [t for t in (clean_text(d.text) for d in iter_documents(["peoples-daily"])) if t]
    save_tokenizer(train_tokenizer(texts, kind="bpe", vocab_size=8000), root / "tok", overwrite=True)
    prepare(["peoples-daily"], data, root / "tok", val_fraction=0.02, progress=False, overwrite=True)
    return data


def our_run(data: Path, args: argparse.Namespace, out: Path, extra: list[str] = ()) -> loop.Run:
    cfg = load_train_config(None, [
        f"data.path={data}", f"out_dir={out}", "model.preset=gpt2-tiny", f"model.d_model={args.width}",
        f"model.n_layer={args.layers}", f"model.n_head={args.width // 64}", "model.dropout=0.0",
        "model.attn_dropout=0.0", f"data.seq_len={args.seq}", f"batch_size={args.batch}", "progress=false",
        f"precision={args.precision}", "optim.warmup_steps=20", "optim.lr=1e-3", "optim.schedule=constant",
        "max_steps=100000", "eval_batches=8", *extra,
    ])
    return loop.setup(cfg)


def hf_model(run: loop.Run):
    return hf_gpt2(run.raw_model).to(run.info.device).train()


def hf_step(model, opt, ids: torch.Tensor, amp) -> float:
    with autocast(ids.device, amp):
        logits = model(input_ids=ids[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def throughput(data: Path, args: argparse.Namespace, tmp: Path) -> list[dict]:
    import transformers

    run = our_run(data, args, tmp / "ours")
    theirs = hf_model(run)
    opt = torch.optim.AdamW(loop.param_groups(theirs, 0.1), lr=1e-3, betas=(0.9, 0.95))
    tok_step = args.batch * args.seq
    times: dict[str, list[float]] = {"duplex pretrain": [], "plain transformers loop": [], "transformers Trainer": []}
    # one untimed step each: allocator, kernels and caches warm for both
    loop.train_step(run, 0)
    ids, _ = run.train.batch(0, args.batch)
    hf_step(theirs, opt, ids.to(run.info.device), run.amp_dtype)
    step = 1
    for rep in range(args.reps):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loop.train_step(run, step)
            step += 1
        times["duplex pretrain"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(args.steps):
            ids, _ = run.train.batch((rep * args.steps + i) * args.batch, args.batch)
            hf_step(theirs, opt, ids.to(run.info.device), run.amp_dtype)
        times["plain transformers loop"].append(time.perf_counter() - t0)
        times["transformers Trainer"].append(trainer_time(run, theirs, args, tmp / f"trainer{rep}"))
    del transformers
    peak = run.peak_flops
    rows = []
    for name, ts in times.items():
        tps = tok_step * args.steps / statistics.median(ts)
        rows.append({"name": name, "tps": tps, "mfu": tps * run.flops_per_token / peak})
    return rows


def trainer_time(run: loop.Run, model, args: argparse.Namespace, out: Path) -> float:
    """Wall time of Trainer.train() over args.steps steps, its own loop doing everything."""
    import transformers

    class Chunks(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return args.steps * args.batch

        def __getitem__(self, i: int) -> dict:
            ids, _ = run.train.batch(i, 1)
            return {"input_ids": ids[0, :-1], "labels": ids[0, :-1]}

    bf16 = run.amp_dtype == torch.bfloat16
    targs = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=1e-3,
        weight_decay=0.1, adam_beta2=0.95, max_grad_norm=1.0, lr_scheduler_type="constant", logging_steps=10**9,
        save_strategy="no", report_to=[], dataloader_num_workers=0, bf16=bf16,
        use_cpu=run.info.device.type == "cpu", disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=targs, train_dataset=Chunks())
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def quality_race(data: Path, args: argparse.Namespace, tmp: Path) -> list[dict]:
    """Train each for the same wall-clock budget from the same initial weights; then validation bpb."""
    results = []
    for name in ("duplex pretrain", "plain transformers loop"):
        torch.manual_seed(0)
        run = our_run(data, args, tmp / f"race-{name.split()[0]}")
        if name == "duplex pretrain":
            model_eval, t0, step = None, time.perf_counter(), 0
            while time.perf_counter() - t0 < args.budget:
                loop.train_step(run, step)
                step += 1
            val = loop.evaluate(run)
        else:
            theirs = hf_model(run)
            opt = torch.optim.AdamW(loop.param_groups(theirs, 0.1), lr=1e-3, betas=(0.9, 0.95))
            t0, step = time.perf_counter(), 0
            while time.perf_counter() - t0 < args.budget:
                ids, _ = run.train.batch(step * args.batch, args.batch)
                for g in opt.param_groups:  # the same warmup as ours, then constant
                    g["lr"] = 1e-3 * min(1.0, (step + 1) / 20)
                hf_step(theirs, opt, ids.to(run.info.device), run.amp_dtype)
                step += 1
            model_eval = theirs
            val = hf_evaluate(run, model_eval)
        results.append({"name": name, "steps": step, "val_loss": val["val_loss"], "val_bpb": val["val_bpb"]})
    return results


@torch.no_grad()
def hf_evaluate(run: loop.Run, model) -> dict:
    model.eval()
    total, n = 0.0, 0
    B = run.cfg.batch_size
    for i in range(min(run.cfg.eval_batches, run.val.n // B)):
        ids, _ = run.val.batch(i * B, B)
        ids = ids.to(run.info.device)
        with autocast(ids.device, run.amp_dtype):
            logits = model(input_ids=ids[:, :-1]).logits
        total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                 reduction="sum").item()
        n += ids[:, 1:].numel()
    loss = total / n
    return {"val_loss": loss, "val_bpb": loss / math.log(2) / run.bytes_per_token}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="shards directory (default: People's Daily, built once)")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--budget", type=float, default=60.0, help="seconds of training per side in the quality race")
    p.add_argument("--precision", default="auto")
    p.add_argument("--write", default="docs/benchmarks.md")
    args = p.parse_args()
    root = Path(args.data).parent if args.data else Path("runs/bench")
    root.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else ensure_data(root)
    with tempfile.TemporaryDirectory() as tmp:
        rows = throughput(data, args, Path(tmp))
        race = quality_race(data, args, Path(tmp))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cmd = "python benchmarks/bench_pretrain.py " + " ".join(sys.argv[1:])
    heading = f"### Pretraining loop, GPT-2 style {args.layers}×{args.width} on {device.type.upper()}"
    base = rows[1]["tps"]
    lines = [heading, "", f"Machine: {machine(device)}. People's Daily shards (BPE 8000), batch {args.batch} × "
             f"{args.seq} tokens, precision {args.precision}; median of {args.reps} interleaved rounds of "
             f"{args.steps} optimizer steps each. Command: `{cmd.strip()}`.", "",
             "| training loop | tokens/s | MFU | vs plain loop |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['tps']:,.0f} | {r['mfu']:.1%} | {r['tps'] / base:.2f}x |")
    lines += ["", f"Validation bits per byte after {args.budget:.0f} s of training from the same initial weights:",
              "", "| training loop | steps | val loss | val bits/byte |", "|---|---|---|---|"]
    for r in race:
        lines.append(f"| {r['name']} | {r['steps']} | {r['val_loss']:.4f} | {r['val_bpb']:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(Path(args.write), heading, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
