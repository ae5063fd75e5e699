"""The decoder half of ``duplex demo``: does pretraining pay for generation too?

A small decoder is pretrained with causal LM on People's Daily and the training reviews (unlabelled
text; no sentence or review that the tasks hold out for validation or test), then instruction-tuned
on ``zh-tasks`` (sentiment 情感判断, English→Chinese 翻译, Simplified→Traditional 转繁体, named
entities 实体识别, in chat form with varied instructions). The same decoder is instruction-tuned from
scratch with the same steps. Both answer the held-out test conversations greedily; each task is
scored on the parsed answer (accuracy, chrF, BLEU, exact match, entity F1), and a few answers are
printed side by side.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import (
    held_out_task_sentences,
    pretrain_for,
    read_jsonl,
    rule,
    steps_for,
    tokenizer_and_shards,
    write_corpus,
)


@dataclass
class DecoderPlan:
    quick: bool
    pretrain_seconds: float
    sft_seconds: float
    vocab: int = 8000
    seq_len: int = 256
    layers: int = 4
    width: int = 128
    pretrain_lr: float = 2e-3
    sft_lr: float = 1e-3
    train_per_task: int = 1000
    eval_per_task: int = 100
    batch: int = 16
    max_new_tokens: int = 80

    @classmethod
    def make(cls, quick: bool, minutes: float) -> DecoderPlan:
        if quick:
            return cls(quick=True, pretrain_seconds=10, sft_seconds=4, vocab=2000, seq_len=192, layers=2,
                       width=64, train_per_task=60, eval_per_task=8, max_new_tokens=40)
        # an eighth of the budget pretrains and a sixteenth instruction-tunes each system (the same steps):
        # of the default 15 minutes 1.9 and 0.9, so that with the encoder half the whole demo stays
        # within 20 minutes on 2 cores
        return cls(quick=False, pretrain_seconds=minutes * 60 / 8, sft_seconds=minutes * 60 / 16)


def _corpus(out: Path, plan: DecoderPlan) -> tuple[list[str], Path]:
    from ..data.tasks import load_task_data

    held = held_out_task_sentences()
    reviews = load_task_data("classify", "reviews-zh", seed=1234).splits["train"]
    return write_corpus(out, reviews[: (1500 if plan.quick else None)], max_texts=1500 if plan.quick else None,
                        held_out=held, unit="lines")


def _tokenizer_and_shards(out: Path, plan: DecoderPlan, texts: list[str], corpus: Path) -> tuple[Path, Path]:
    # byte-level BPE: every character (Traditional ones too, and English words) is spelled, never [UNK];
    # it carries ChatML's turn tokens and template for the instruction tuning
    tok_dir, data, _ = tokenizer_and_shards(out, texts, corpus, name="byte-level BPE", kind="bpe",
                                            vocab_size=plan.vocab, num_sentinels=0)
    return tok_dir, data


def _decoder_args(plan: DecoderPlan) -> list[str]:
    return ["model.preset=gpt2-tiny", f"model.n_layer={plan.layers}", f"model.d_model={plan.width}",
            f"model.n_head={max(2, plan.width // 64)}", f"model.max_seq_len={plan.seq_len}"]


def _pretrain(out: Path, plan: DecoderPlan, data: Path) -> tuple[Path, dict[str, Any]]:
    args = ["objective=clm", f"data.path={data}", f"data.seq_len={plan.seq_len}", *_decoder_args(plan),
            "model.dropout=0.0", "batch_size=16", f"optim.lr={plan.pretrain_lr}", f"optim.min_lr={plan.pretrain_lr / 10}",
            "eval_batches=8", f"log_every={2 if plan.quick else 10}", f"progress={not plan.quick}"]
    run = pretrain_for(args, plan.pretrain_seconds, out / "pretrain")
    info = run.summary(val_bpb=run.result.get("val_bpb"))
    print(f"causal LM: {run.steps} steps, {run.tokens / 1e6:.1f}M tokens in {run.seconds:.0f}s "
          f"({info['tokens_per_s']:,} tokens/s); validation loss {run.result['val_loss']:.3f} nats, "
          f"{run.result.get('val_bpb', float('nan')):.3f} bits per byte")
    return run.model_dir, info


def _task_files(out: Path, plan: DecoderPlan) -> tuple[dict[str, Path], dict[str, int]]:
    from ..data.gen_tasks import write_chats, zh_tasks

    data = zh_tasks(seed=1234, train_per_task=plan.train_per_task, eval_per_task=plan.eval_per_task)
    files = {split: write_chats(out / "zh-tasks" / f"{split}.jsonl", examples)
             for split, examples in data.splits.items()}
    sizes = {split: len(v) for split, v in data.splits.items()}
    print(f"zh-tasks: {sizes['train']:,} training / {sizes['validation']:,} validation / {sizes['test']:,} test "
          f"conversations over 情感判断, 翻译, 转繁体, 实体识别")
    return files, sizes


def _sft(out: Path, plan: DecoderPlan, name: str, files: dict[str, Path], model_args: list[str],
         steps: int | None = None) -> dict[str, Any]:
    from ..train.config import load_train_config
    from ..train.loop import finetune

    run_dir = out / "runs" / name
    args = ["task=sft", f"data.train={files['train']}", f"data.validation={files['validation']}",
            f"data.test={files['test']}", f"data.seq_len={plan.seq_len}", "data.group_by_length=true",
            f"batch_size={plan.batch}", f"optim.lr={plan.sft_lr}", f"optim.min_lr={plan.sft_lr / 10}",
            "optim.weight_decay=0.01", f"generation.max_new_tokens={plan.max_new_tokens}", "generation.batch_size=32",
            "log_every=10", "progress=false", *model_args]
    if steps is None:  # the first system sets the steps from its time budget; the other takes the same
        steps = max(20, steps_for([*args, "generation.test=false"], plan.sft_seconds, run_dir))
    t0 = time.perf_counter()
    finetune(load_train_config(None, [
        *args, f"max_steps={steps}", f"eval_every={math.ceil(steps / 2)}", f"save_every={steps}",
        f"optim.warmup_steps={max(steps // 10, 5)}", f"out_dir={run_dir}"]), overwrite=True)
    test = json.loads((run_dir / "test_metrics.json").read_text(encoding="utf-8"))
    gens = read_jsonl(run_dir / "test_generations.jsonl")
    seconds = time.perf_counter() - t0
    print(f"{name:<28} {steps} steps ({seconds:.0f}s): test token accuracy {test['token_accuracy']:.3f}")
    return {"steps": steps, "seconds": round(seconds, 1), "test": test, "generations": gens, "run": str(run_dir)}


# (task, metric, label) rows of the results table
TABLE = (("情感判断", "accuracy", "情感判断 accuracy"), ("翻译", "chrf", "翻译 chrF"),
         ("翻译", "exact_match", "翻译 exact match"), ("转繁体", "chrf", "转繁体 chrF"),
         ("转繁体", "exact_match", "转繁体 exact match"), ("实体识别", "f1", "实体识别 entity F1"))


def run_decoder_half(out: Path, quick: bool, minutes: float) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    plan = DecoderPlan.make(quick, minutes)
    rule("D1. decoder tokenizer and token shards (People's Daily + training reviews)")
    texts, corpus = _corpus(out, plan)
    tok_dir, data = _tokenizer_and_shards(out, plan, texts, corpus)
    rule(f"D2. pretraining the decoder with causal LM ({plan.pretrain_seconds / 60:.1f} minutes)")
    pre_dir, pre = _pretrain(out, plan, data)
    rule("D3. instruction tuning on zh-tasks: pretrained vs from scratch (test answers, generated greedily)")
    files, _ = _task_files(out, plan)
    first = _sft(out, plan, "pretrained", files, [f"init_from={pre_dir}"])
    systems = {
        "pretrained + instruction-tuned": first,
        "same decoder from scratch": _sft(out, plan, "scratch", files, [f"tokenizer={tok_dir}", *_decoder_args(plan)],
                                          steps=first["steps"]),
    }
    names = list(systems)
    print(f"\n{'task / metric':<24}" + "".join(f"{n:>34}" for n in names))
    table = []
    for task, metric, label in TABLE:
        values = [systems[n]["test"].get(f"{task}_{metric}") for n in names]
        table.append({"task": task, "metric": metric, "label": label, "values": dict(zip(names, values))})
        print(f"{label:<24}" + "".join(f"{v:>34.3f}" if v is not None else f"{'-':>34}" for v in values))
    rule("D4. a few test answers side by side")
    by_task: dict[str, list[tuple[dict, dict]]] = {}
    for a, b in zip(systems[names[0]]["generations"], systems[names[1]]["generations"]):
        by_task.setdefault(a["task"], []).append((a, b))
    samples = []
    for task, pairs in by_task.items():
        a, b = pairs[0]
        samples.append({"task": task, "input": a["input"], "reference": a["reference"],
                        names[0]: a["prediction"], names[1]: b["prediction"]})
        print(f"[{task}] {a['input'][:70]!r}\n    reference : {a['reference']}\n    pretrained: {a['prediction']}\n"
              f"    scratch   : {b['prediction']}")
    return {"plan": {"quick": plan.quick, "decoder": f"{plan.layers}x{plan.width}", "vocab": plan.vocab,
                     "seq_len": plan.seq_len, "train_per_task": plan.train_per_task,
                     "eval_per_task": plan.eval_per_task},
            "pretraining": pre, "table": table, "samples": samples,
            "systems": {n: {"steps": s["steps"], "seconds": s["seconds"],
                            "token_accuracy": s["test"]["token_accuracy"]} for n, s in systems.items()}}


def report_lines(result: dict[str, Any]) -> list[str]:
    """The decoder half's section of report.md."""
    pre, names = result["pretraining"], list(result["systems"])
    p = result["plan"]
    lines = [
        "## Decoder half: instruction tuning on zh-tasks", "",
        f"Decoder {p['decoder']}, byte-level BPE vocabulary {p['vocab']:,}. Causal-LM pretraining: {pre['steps']} steps, "
        f"{pre['tokens'] / 1e6:.1f}M tokens in {pre['seconds']:.0f}s; validation loss {pre['val_loss']:.3f} nats. "
        f"Instruction tuning: {p['train_per_task']:,} conversations per task, the same steps for both; test: "
        f"{p['eval_per_task']} conversations per task, answered greedily.", "",
        "| task / metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
    ]
    for row in result["table"]:
        lines.append(f"| {row['label']} | " + " | ".join(
            f"{v:.3f}" if v is not None else "-" for v in row["values"].values()) + " |")
    lines += ["", "| task | input | reference | " + " | ".join(names) + " |", "|---" * (len(names) + 3) + "|"]
    for s in result["samples"]:
        cells = [s["task"], s["input"][:60].replace("\n", " ").replace("|", "/"), s["reference"],
                 *(s[n].replace("|", "/") for n in names)]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


__all__ = ["DecoderPlan", "report_lines", "run_decoder_half"]
