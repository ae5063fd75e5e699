"""Generative fine-tuning speed: ``duplex finetune task=sft`` (full and LoRA) and ``task=seq2seq``
against transformers (+ peft) on the same model, weights, data and batches, in one run.

1. SFT, decoder: a GPT-2-shaped decoder (4 x 256) instruction-tuned on real Chinese conversations
   (``zh_tasks``: sentiment, translation, Simplified → Traditional, NER, 200 of each), against
   ``GPT2LMHeadModel`` in a plain loop (forward, loss, backward, clip, AdamW) and in ``Trainer``.
2. SFT with LoRA (r=8 on the fused attention projection): ours (``method=lora``) against
   ``peft.get_peft_model`` on GPT-2's ``c_attn``.
3. seq2seq: a T5 (4 + 4 layers x 256) on real Simplified → Traditional pairs (``s2t``, first 2000),
   against ``T5ForConditionalGeneration``.

Our side is the loop's own ``setup`` + ``train_step``. Its model is written with ``save_model``,
converted with ``convert_to_hf`` and loaded by transformers: the same weights on both sides, checked
before timing (the loss of the first batch, computed by each side's own loss code, and the logits).
The transformers sides read the batches our sampler makes, step i of each side the same batch; our
sft labels are stored shifted (``labels[t]`` is the target of position ``t``), transformers shifts
inside its loss, so its labels are ours moved one place right. Timing as in ``bench_finetune.py``:
each side warmed up, then rounds in which the sides take turns step by step (A B, B A, ...); per
round, target tokens (the answers' tokens; the targets' tokens for seq2seq) and all tokens (every
non-padding token read: prompt and answers; source and target) per second, and the ratio of ours to
theirs in that round; the table gives the median over rounds with its min and max.

    python benchmarks/bench_sft.py                      # CPU-sized; writes docs/benchmarks.md
    python benchmarks/bench_sft.py --only lora --write ''
    python benchmarks/bench_sft.py --device cuda --precision bf16 --batch 32   # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import machine, write_section
from bench_finetune import SEED, hf_optimizer, rounds, trainer_round
from duplexlm.precision import autocast

IGNORE = -100
PARTS = ("sft", "lora", "seq2seq", "dpo")
DPO_BETA = 0.1  # sigmoid DPO, no NLL term, on both sides
DECODER = dict(n_layer=4, d_model=256, n_head=4, max_seq_len=256)  # GPT-2-shaped, CPU-sized
T5 = dict(n_layer=4, d_model=256, n_head=4, head_dim=64, d_ff=1024)  # 4 encoder + 4 decoder layers
LORA = dict(r=8, alpha=16.0)
VOCAB = 4000  # byte-level BPE, before the chat tokens sft adds
PAIRS = 2000  # s2t training pairs written for seq2seq


# ----------------------------------------------------------------------------------------------------
# The shared inputs: data files, tokenizers


def prepare(work: Path, parts: list[str]) -> dict[str, int]:
    """JSONL files of the conversations (sft, lora) and the pairs (seq2seq), a byte-level BPE tokenizer
    trained on each's text → how many of each were written."""
    from duplexlm.data.gen_tasks import load_seq2seq_data, zh_tasks
    from duplexlm.tokenizer import save_tokenizer, train_tokenizer

    written = {}
    if {"sft", "lora", "dpo"} & set(parts):
        chats = zh_tasks(train_per_task=200, eval_per_task=0).splits["train"]
        _write_jsonl(work / "sft-train.jsonl", [{"messages": list(ex.messages)} for ex in chats])
        save_tokenizer(train_tokenizer((m["content"] for ex in chats for m in ex.messages), "bpe",
                                       vocab_size=VOCAB, num_sentinels=0), work / "tok-sft")
        written["sft"] = len(chats)
    if "seq2seq" in parts:
        pairs = load_seq2seq_data("s2t").splits["train"][:PAIRS]
        _write_jsonl(work / "seq2seq-train.jsonl", [{"source": p.source_text, "target": p.target} for p in pairs])
        save_tokenizer(train_tokenizer((t for p in pairs for t in (p.source_text, p.target)), "bpe",
                                       vocab_size=VOCAB, num_sentinels=0), work / "tok-seq2seq")
        written["seq2seq"] = len(pairs)
    return written


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# ----------------------------------------------------------------------------------------------------
# The model on both sides


def our_run(work: Path, args: argparse.Namespace, task: str, method: str, out: Path) -> Any:
    """``duplex finetune``'s run from scratch (a preset plus overrides, our tokenizer), built by the
    loop's own ``setup``; the optimizer as the transformers side's (``hf_optimizer``)."""
    from duplexlm.train import loop
    from duplexlm.train.config import load_train_config

    if task in ("sft", "dpo"):
        model = ["model.preset=gpt2-tiny", *(f"model.{k}={v}" for k, v in DECODER.items()), f"data.seq_len={args.seq}"]
    else:
        model = ["model.preset=t5-tiny", *(f"model.{k}={v}" for k, v in T5.items()), f"data.seq_len={args.s2s_seq}"]
    data, tok = work / f"{task}-train.jsonl", work / f"tok-{task}"
    if task == "dpo":  # the built-in preference pairs; TRL's DPOTrainer turns dropout off, so do we
        data, tok = "zh-prefs", work / "tok-sft"
        model += ["model.dropout=0.0", f"objective_args.beta={DPO_BETA}", "objective_args.dpo_loss=sigmoid"]
    cfg = load_train_config(None, [
        f"task={task}", f"data.train={data}", f"tokenizer={tok}", *model,
        f"out_dir={out}", f"method={method}", f"method_args.lora_r={LORA['r']}",
        f"method_args.lora_alpha={LORA['alpha']}", "method_args.lora_targets=attn.qkv", "method_args.lora_dropout=0",
        f"batch_size={args.batch}", f"optim.lr={args.lr}", "optim.min_lr=0", "optim.schedule=constant",
        "optim.warmup_steps=0", "optim.weight_decay=0.01", "optim.beta2=0.999", "optim.grad_clip=1.0",
        "max_steps=1000000", "progress=false", f"precision={args.precision}", f"device={args.device}", f"seed={SEED}",
    ])
    return loop.setup(cfg)


def export(run: Any, ours: Path, hf: Path) -> Path:
    """The run's model as it starts (the base weights; LoRA pairs left out) written with ``save_model``
    and converted with ``convert_to_hf`` → the Hugging Face directory."""
    from duplexlm.io import convert_to_hf, own_state_dict, save_model

    state = {k: v.detach().cpu() for k, v in own_state_dict(run.raw_model).items() if ".lora_" not in k}
    save_model(run.raw_model, ours, tokenizer=run.tokenizer, state_dict=state)
    convert_to_hf(ours, hf)
    return hf


def hf_model(path: Path, task: str, device: torch.device) -> Any:
    """GPT2LMHeadModel (SDPA attention) or T5ForConditionalGeneration (its own attention: transformers'
    T5 has no SDPA path) from the converted directory, fp32."""
    import transformers

    if task in ("sft", "dpo"):
        model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa",
                                                                  dtype=torch.float32)
    else:
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch.float32)
    return model.to(device).train()


def peft_model(model: Any) -> Any:
    """LoRA on GPT-2's fused ``c_attn`` (a Conv1D, hence ``fan_in_fan_out``): one pair over all of q, k
    and v, as ours on ``attn.qkv``."""
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True,
        task_type="CAUSAL_LM"))


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------------
# Batches: ours, counted as each side reads them; transformers' form of an sft batch


def counts(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(target tokens, all non-padding tokens: prompt and answers, or source and target) of a batch."""
    tokens = int(batch["attention_mask"].sum())
    if "decoder_attention_mask" in batch:
        tokens += int(batch["decoder_attention_mask"].sum())
    return int((batch["labels"] != IGNORE).sum()), tokens


def unshifted(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our sft batch for transformers: ``labels[t]`` is the target of position ``t`` in ours, of position
    ``t - 1`` in transformers' (its loss shifts them back), so the labels move one place right."""
    labels = batch["labels"]
    if not bool((labels[:, -1] == IGNORE).all()):  # the last position never has a target
        raise AssertionError("sft labels: the last position holds a target; are the labels shifted?")
    hf = torch.full_like(labels, IGNORE)
    hf[:, 1:] = labels[:, :-1]
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": hf}


class Counted:
    """A sampler whose batches are counted (``log``: targets, tokens per batch read); ``hf``: sft
    batches in transformers' form. Our run reads one too (``run.train``), so every side counts
    exactly the batches it trained on."""

    def __init__(self, sampler: Any, hf: bool = False) -> None:
        self.sampler, self.hf, self.log = sampler, hf, []

    def batch(self, start: int, count: int) -> dict[str, torch.Tensor]:
        batch = self.sampler.batch(start, count)
        self.log.append(counts(batch))
        return unshifted(batch) if self.hf else batch


# ----------------------------------------------------------------------------------------------------
# The sides


class Ours:
    """``duplex finetune``'s own step: ``train_step(run, i)`` (batch, loss, backward, clip, AdamW)."""

    def __init__(self, run: Any) -> None:
        run.train = self.counter = Counted(run.train)
        self.run, self.step_no, self.losses = run, 0, []

    def step(self) -> None:
        from duplexlm.train import loop

        self.losses.append(loop.train_step(self.run, self.step_no)["loss"])
        self.step_no += 1


class Theirs:
    """A plain transformers loop: the batch our ``train_step(run, i)`` reads (collated inside the timed
    step, as ours), forward with labels (its own loss), backward, clip, AdamW."""

    def __init__(self, model: Any, sampler: Counted, args: argparse.Namespace, amp: torch.dtype | None,
                 device: torch.device) -> None:
        self.model, self.counter, self.amp, self.device, self.B = model, sampler, amp, device, args.batch
        self.opt = hf_optimizer(model, args)
        self.step_no, self.losses = 0, []

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**{k: v.to(self.device) for k, v in batch.items()}).loss

    def step(self) -> None:
        batch = self.counter.batch(self.step_no * self.B, self.B)
        with autocast(self.device, self.amp):
            loss = self.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(loss.item())
        self.step_no += 1


def trl_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our DPO batch (the chosen rows, then the rejected ones) in the form TRL's ``compute_loss`` reads:
    ``completion_mask[t]`` marks the answer's tokens, where ours mark the position that predicts them."""
    completion = torch.zeros_like(batch["input_ids"])
    completion[:, 1:] = (batch["labels"][:, :-1] != IGNORE).long()
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "completion_mask": completion}


class TheirsDPO(Theirs):
    """TRL's ``DPOTrainer`` (sigmoid loss, the same beta, the reference a second copy of the starting
    weights, as TRL loads it): its ``compute_loss`` on the batch our ``train_step(run, i)`` reads, in
    :class:`Theirs`' plain loop (backward, clip, AdamW)."""

    def __init__(self, model: Any, reference: Any, hf_dir: Path, sampler: Counted, args: argparse.Namespace,
                 amp: torch.dtype | None, device: torch.device, tmp: Path) -> None:
        from datasets import Dataset
        from transformers import AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        self.trainer = DPOTrainer(
            model=model, ref_model=reference,
            args=DPOConfig(output_dir=str(tmp / "trl"), beta=DPO_BETA, loss_type=["sigmoid"], report_to=[],
                           use_cpu=device.type == "cpu", bf16=False, fp16=False, max_length=None),
            train_dataset=Dataset.from_list([{"prompt": "你好", "chosen": "好", "rejected": "不"}]),
            processing_class=AutoTokenizer.from_pretrained(hf_dir))
        super().__init__(self.trainer.model.train(), sampler, args, amp, device)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.trainer.compute_loss(self.model, trl_batch({k: v.to(self.device) for k, v in batch.items()}))
        return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def dpo_parity(run: Any, theirs: TheirsDPO, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each side's DPO loss on one batch and the largest policy logit difference, at the start: the
    policy is its reference, so both losses are log 2 (the equality of the losses elsewhere is
    tests/train/test_dpo.py's; here the training losses along the steps are compared)."""
    device = run.info.device
    model = run.raw_model
    model.eval()
    theirs.model.eval()
    batch = {k: v.to(device) for k, v in batch.items()}
    ours = dict(batch)
    ours.update(run.reference.targets(ours))
    ours_loss, _ = run.spec.loss(model, ours, run.loss_options)
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    out = theirs.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    gap = (logits.float() - out.logits.float()).abs()[batch["attention_mask"].bool()].max()
    theirs_loss = theirs.loss(batch)
    model.train()
    theirs.model.train()
    return {"ours": float(ours_loss), "theirs": float(theirs_loss), "logits": float(gap)}


@torch.no_grad()
def parity(run: Any, theirs: Any, batch: dict[str, torch.Tensor], task: str) -> dict[str, float]:
    """Each side's own loss on one batch (eval mode: no dropout) and the largest logit difference on
    its real (non-padding) positions: the same weights, the same batch, the same loss."""
    device = run.info.device
    ours_model = run.raw_model
    ours_model.eval()
    theirs.eval()
    batch = {k: v.to(device) for k, v in batch.items()}
    ours_loss, _ = run.spec.loss(ours_model, batch, run.loss_options)
    # every position's logits (the loss computes them at the answers' or targets' tokens only)
    if task == "sft":
        ours_logits = ours_model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    else:
        ours_logits = ours_model(batch["input_ids"], attention_mask=batch["attention_mask"],
                                 decoder_input_ids=batch["decoder_input_ids"],
                                 decoder_attention_mask=batch["decoder_attention_mask"]).logits
    out = theirs(**(unshifted(batch) if task == "sft" else batch))
    real = (batch["attention_mask"] if task == "sft" else batch["decoder_attention_mask"]).bool()
    gap = (ours_logits.float() - out.logits.float()).abs()[real].max()
    ours_model.train()
    theirs.train()
    return {"ours": float(ours_loss), "theirs": float(out.loss), "logits": float(gap)}


# ----------------------------------------------------------------------------------------------------
# One comparison: ours against the transformers sides, warmed up, then timed in rounds


def compare(work: Path, args: argparse.Namespace, tmp: Path, part: str) -> dict[str, Any]:
    import transformers

    task, method = {"seq2seq": ("seq2seq", "full"), "lora": ("sft", "lora"), "dpo": ("dpo", "full")}.get(part, ("sft", "full"))
    run = our_run(work, args, task, method, tmp / f"ours-{part}")
    device, amp = run.info.device, run.amp_dtype
    hf_dir = export(run, tmp / f"{part}-ours", tmp / f"{part}-hf")
    theirs = hf_model(hf_dir, task, device)
    if part == "lora":
        theirs = peft_model(theirs)
    base = run.train
    if part == "dpo":
        dpo = TheirsDPO(theirs, hf_model(hf_dir, task, device).eval(), hf_dir, Counted(base), args, amp, device, tmp)
        check = dpo_parity(run, dpo, base.batch(0, args.batch))
    else:
        check = parity(run, theirs, base.batch(0, args.batch), task)
    if abs(check["ours"] - check["theirs"]) > 1e-4 * max(1.0, abs(check["ours"])):
        print(f"WARNING {part}: the first batch's loss differs: ours {check['ours']:.6f}, transformers' "
              f"{check['theirs']:.6f} (max |Δlogit| {check['logits']:.1e})", file=sys.stderr)
    ours_name = {"sft": "duplexlm sft (full)", "lora": "duplexlm sft (LoRA)", "seq2seq": "duplexlm seq2seq",
                 "dpo": "duplexlm dpo"}[part]
    theirs_name = {"sft": "plain transformers loop", "lora": "transformers + peft",
                   "seq2seq": "plain transformers loop", "dpo": "TRL DPOTrainer"}[part]
    trained = {ours_name: trainable(run.raw_model), theirs_name: trainable(theirs)}
    sides: dict[str, Any] = {ours_name: Ours(run), theirs_name: dpo if part == "dpo" else
                             Theirs(theirs, Counted(base, hf=task == "sft"), args, amp, device)}
    for s in sides.values():
        for _ in range(args.warmup):
            s.step()
    first = {name: len(s.counter.log) for name, s in sides.items()}
    whole: dict[str, Any] = {}
    segments: dict[str, list[list[tuple[int, int]]]] = {}
    if part == "sft" and args.trainer:
        counter = Counted(base, hf=True)
        go = trainer_round(copy.deepcopy(theirs), counter, args, amp, tmp, device)
        go()  # warm-up round: the Trainer's first call also pays for its imports
        trainer_segments: list[list[tuple[int, int]]] = []

        def trainer() -> None:  # one round, and the batches it read
            n0 = len(counter.log)
            go()
            trainer_segments.append(counter.log[n0:])

        whole["transformers Trainer"] = trainer
        segments["transformers Trainer"] = trainer_segments
    times = rounds(sides, args.rounds, args.steps, device, whole)
    for name, s in sides.items():  # each round: the steps it took, one batch each
        log = s.counter.log[first[name]:]
        segments[name] = [log[r * args.steps:(r + 1) * args.steps] for r in range(args.rounds)]
    rows = {name: rates(times[name], segments[name]) for name in times}
    for row in rows.values():
        row["ratios"] = [o / t for o, t in zip(rows[ours_name]["targets_per_s"], row["targets_per_s"])]
    log = sides[ours_name].counter.log
    drift = max(abs(a - b) for a, b in zip(sides[ours_name].losses, sides[theirs_name].losses))
    out = {"part": part, "rows": rows, "parity": check, "trainable": trained, "drift": drift,
           "steps_compared": len(sides[ours_name].losses), "vocab": run.raw_model.config.vocab_size,
           "targets_per_batch": statistics.mean(t for t, _ in log),
           "tokens_per_batch": statistics.mean(n for _, n in log),
           "width": run.cfg.data.seq_len, "examples": base.n, "device": device,
           "transformers": transformers.__version__}
    del sides, whole, theirs, run
    return out


def rates(times: list[float], segments: list[list[tuple[int, int]]]) -> dict[str, Any]:
    """Per round: target tokens/s and all tokens/s (the batches that round read over its time)."""
    return {"targets_per_s": [sum(t for t, _ in seg) / s for s, seg in zip(times, segments)],
            "tokens_per_s": [sum(n for _, n in seg) / s for s, seg in zip(times, segments)]}


# ----------------------------------------------------------------------------------------------------
# Report


def _spread(xs: list[float], fmt: str = ",.0f") -> str:
    return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}–{max(xs):{fmt}}]"


TITLES = {
    "sft": "SFT, decoder {d[n_layer]}×{d[d_model]}, full",
    "lora": "SFT, decoder {d[n_layer]}×{d[d_model]}, LoRA r={r} on the attention's fused qkv",
    "seq2seq": "seq2seq, T5 {t[n_layer]}+{t[n_layer]} layers × {t[d_model]}, full",
    "dpo": "DPO, decoder {d[n_layer]}×{d[d_model]}, full, the reference a frozen copy",
}


def report(args: argparse.Namespace, results: list[dict[str, Any]], sizes: dict[str, int]) -> tuple[str, str]:
    device = results[0]["device"]
    dpo_only = [r["part"] for r in results] == ["dpo"]
    heading = (f"### Preference tuning (DPO) against TRL on {device.type.upper()}" if dpo_only else
               f"### Generative fine-tuning (sft, LoRA, seq2seq) on {device.type.upper()}")
    cmd = shlex.join(["python", "benchmarks/bench_sft.py", *sys.argv[1:]])
    versions = f"transformers {results[0]['transformers']}"
    if any(r["part"] == "lora" for r in results):
        import peft

        versions += f", peft {peft.__version__}"
    lines = [heading, "",
             f"Machine: {machine(device)}, {versions}. Command: `{cmd}`.", "",
             f"Our side is `duplex finetune`'s loop (`setup` + `train_step`), built from scratch by config; its "
             f"model written with `save_model`, converted with `convert_to_hf` and loaded by transformers, so both "
             f"sides start from the same weights, and the transformers sides are fed the batches our sampler "
             f"makes (step i of each side the same batch). AdamW lr {args.lr}, betas (0.9, 0.999), weight decay "
             f"0.01 (not on norms, biases, embeddings), gradient clipping 1.0, precision {args.precision}, "
             f"batch {args.batch}, padded to the longest in the batch. {args.rounds} rounds of {args.steps} "
             f"optimizer steps per side after {args.warmup} warm-up steps, the sides taking turns step by step; "
             f"median over rounds [min–max]. Target tokens: the tokens the loss is on (the assistant's answers; "
             f"the targets); all tokens: every non-padding token read (prompt and answers; source and target). "
             f"The ratio is, per round, our target tokens/s ÷ theirs (> 1: ours faster; on the same batches, "
             f"their time ÷ ours).", ""]
    for r in results:
        if r["part"] == "dpo":
            data = (f"the built-in `zh-prefs` pairs ({r['examples']} train; each step the batch's chosen answers "
                    f"and then its rejected ones, {args.batch} pairs), with the byte-level BPE {VOCAB} of the sft "
                    f"part (vocabulary {r['vocab']}); at most {r['width']} tokens each")
        elif r["part"] in ("sft", "lora"):
            data = (f"{sizes['sft']} `zh_tasks` conversations (200 per task, of which a seeded tenth is "
                    f"held out by `setup`: {r['examples']} train), byte-level BPE {VOCAB} trained on their text, "
                    f"vocabulary {r['vocab']} (ChatML's turn tokens among them); at most {r['width']} tokens each")
        else:
            data = (f"the first {sizes['seq2seq']} `s2t` training pairs (a tenth held out: {r['examples']} train), "
                    f"byte-level BPE {VOCAB} trained on them (vocabulary {r['vocab']}); source and target at most "
                    f"{r['width']} tokens each")
        p = r["parity"]
        lines.append(f"- **{TITLES[r['part']].format(d=DECODER, t=T5, r=LORA['r'])}**: {data}; per batch "
                     f"{r['targets_per_batch']:,.0f} target tokens of {r['tokens_per_batch']:,.0f}. First batch, "
                     f"eval mode: our loss {p['ours']:.6f}, {'TRL' + chr(39) + 's' if r['part'] == 'dpo' else 'transformers' + chr(39)} "
                     f"{p['theirs']:.6f} "
                     f"(Δ {abs(p['ours'] - p['theirs']):.1e}), max |Δlogit| {p['logits']:.1e}; training loss "
                     f"along the {r['steps_compared']} steps each side took: max |Δ| {r['drift']:.1e}. Trainable "
                     "parameters: " + ", ".join(f"{n} {c:,}" for n, c in r["trainable"].items()) + ".")
    lines += ["", "| side | target tokens/s [min–max] | all tokens/s [min–max] | ratio to ours (median [min–max] "
                  "per round) |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| *{TITLES[r['part']].format(d=DECODER, t=T5, r=LORA['r'])}* | | | |")
        first = next(iter(r["rows"]))
        for name, row in r["rows"].items():
            vs = "—" if name == first else (f"**{statistics.median(row['ratios']):.2f}x** "
                                            f"[{min(row['ratios']):.2f}–{max(row['ratios']):.2f}]")
            lines.append(f"| {name} | {_spread(row['targets_per_s'])} | {_spread(row['tokens_per_s'])} | {vs} |")
    notes = []
    if any(r["part"] == "sft" for r in results) and args.trainer:
        notes.append("The Trainer's round is one `Trainer.train()` call over as many steps of our batches (each "
                     "dataset item one whole batch, labels in transformers' form), its own set-up (optimizer, "
                     "accelerate) included, as a user runs it; its rounds read other batches than the stepping "
                     "sides' (hence the ratio of tokens/s).")
    if any(r["part"] == "lora" for r in results):
        notes.append("LoRA: ours on `attn.qkv` (`method_args.lora_targets=attn.qkv`: one pair over all of q, k, v), "
                     "peft on GPT-2's `c_attn` (the same fused projection): the same shapes, r, alpha and trainable "
                     "parameters; their A matrices start from different random draws (B starts at zero on both). "
                     "Our default targets (`q,v`: a pair on the q rows and one on the v rows of the fused "
                     "projection) have no peft equivalent on GPT-2, whose `c_attn` fuses q, k, v.")
    if any(r["part"] == "seq2seq" for r in results):
        notes.append("T5 keeps its dropout (0.1) on both sides, so their training losses differ by the dropout "
                     "masks; transformers' T5 runs its own attention (it has no SDPA path).")
    if any(r["part"] == "dpo" for r in results):
        notes.append(f"DPO: sigmoid loss, beta {DPO_BETA}, no NLL term, dropout off on both sides (TRL's default). "
                     "TRL's side is `DPOTrainer.compute_loss` on our batch (its concatenated forward of the policy "
                     "and, under no_grad, of the reference model it holds) in the same plain loop as the other "
                     "parts, so the comparison is of the DPO computation, not of accelerate's or the Trainer's "
                     "outer loop; ours is `train_step` (the reference's log-probabilities, then the policy's "
                     "forward and backward). Ours projects onto the vocabulary at the answers' tokens only (`logits_at`), "
                     "TRL (with its defaults) at every position.")
    if notes:
        lines += ["", *notes]
    return heading, "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=PARTS, default=None,
                   help="run one comparison only (the section written then holds it alone)")
    p.add_argument("--batch", type=int, default=8, help="conversations or pairs per step")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per side per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--seq", type=int, default=256, help="sft: longest conversation, in tokens")
    p.add_argument("--s2s-seq", type=int, default=128, help="seq2seq: longest source and target, in tokens")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--no-trainer", dest="trainer", action="store_false", help="leave out transformers' Trainer")
    p.add_argument("--write", default="docs/benchmarks.md", help="markdown file to update ('' to skip)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # no "Loading weights" bar per model
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")  # Trainer's deprecations
    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        work = tmp / "work"
        work.mkdir()
        parts = [args.only] if args.only else list(PARTS)
        sizes = prepare(work, parts)
        for part in parts:
            results.append(compare(work, args, tmp, part))
    heading, text = report(args, results, sizes)
    print(text)
    if args.write:
        write_section(Path(args.write), heading, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
