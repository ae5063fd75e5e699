"""The decoder half of ``duplex demo``: does pretraining pay for generation too?

A small decoder is pretrained with causal LM on People's Daily and the training reviews (unlabelled
text; no sentence or review that the tasks hold out for validation or test), then instruction-tuned
to answer ``情感判断`` of ``zh-tasks`` (is this review 正面 or 负面? asked in varied chat forms). The same
decoder is instruction-tuned from scratch with the same steps. Both answer the held-out test
conversations greedily, scored on the parsed answer beside the majority answer, and a few answers are
printed beside the references.

The other zh-tasks (翻译, 转繁体, 实体识别) are not learnt in this budget by a decoder of this size: the
demo says so, and points to the recipe that learns all four (``bench_quality.py --task sft``, about
20 minutes a run after 33 minutes of pretraining; figures in docs/benchmarks.md).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import (
    held_out_task_sentences,
    pretrain_steps,
    read_jsonl,
    rule,
    tokenizer_and_shards,
    write_corpus,
)

TASK = "情感判断"
NOT_IN_BUDGET = ("翻译", "转繁体", "实体识别")


@dataclass
class DecoderPlan:
    quick: bool
    scale: float = 1.0
    vocab: int = 8000
    seq_len: int = 256
    layers: int = 4
    width: int = 128
    pretrain_lr: float = 2e-3
    sft_lr: float = 2e-3
    pretrain_steps: int = 300  # batches of 16 x 256 tokens: 1.2 M tokens
    sft_steps: int = 1200  # at 300 both systems still answered 负面 throughout (the majority, 0.540)
    train_conversations: int = 3000
    eval_conversations: int = 200
    batch: int = 16
    max_new_tokens: int = 16

    @classmethod
    def make(cls, quick: bool, scale: float = 1.0) -> DecoderPlan:
        if quick:
            return cls(quick=True, scale=scale, vocab=2000, layers=2, width=64, pretrain_steps=20,
                       sft_steps=300, train_conversations=1000, eval_conversations=40)
        return cls(quick=False, scale=scale)

    def steps(self, n: int) -> int:
        return max(10, math.ceil(n * self.scale))


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
    run = pretrain_steps(args, plan.steps(plan.pretrain_steps), out / "pretrain")
    info = run.summary(val_bpb=run.result.get("val_bpb"))
    print(f"causal LM: {run.steps} steps, {run.tokens / 1e6:.1f}M tokens in {run.seconds:.0f}s "
          f"({info['tokens_per_s']:,} tokens/s); validation loss {run.result['val_loss']:.3f} nats, "
          f"{run.result.get('val_bpb', float('nan')):.3f} bits per byte")
    return run.model_dir, info


def _task_files(out: Path, plan: DecoderPlan) -> tuple[dict[str, Path], dict[str, list[Any]]]:
    from ..data.gen_tasks import write_chats, zh_tasks

    data = zh_tasks(seed=1234, train_per_task=plan.train_conversations, eval_per_task=plan.eval_conversations)
    splits = {split: [e for e in examples if e.task == TASK] for split, examples in data.splits.items()}
    files = {split: write_chats(out / "zh-tasks" / f"{split}.jsonl", examples) for split, examples in splits.items()}
    print(f"zh-tasks, {TASK}: {len(splits['train']):,} training / {len(splits['validation']):,} validation / "
          f"{len(splits['test']):,} test conversations")
    return files, splits


def _sft(out: Path, plan: DecoderPlan, name: str, files: dict[str, Path], model_args: list[str]) -> dict[str, Any]:
    import json

    from ..train.config import load_train_config
    from ..train.loop import finetune

    run_dir = out / "runs" / name
    steps = plan.steps(plan.sft_steps)
    t0 = time.perf_counter()
    finetune(load_train_config(None, [
        "task=sft", f"data.train={files['train']}", f"data.validation={files['validation']}",
        f"data.test={files['test']}", f"data.seq_len={plan.seq_len}", "data.group_by_length=true",
        f"batch_size={plan.batch}", f"optim.lr={plan.sft_lr}", f"optim.min_lr={plan.sft_lr / 10}",
        "optim.weight_decay=0.01", f"generation.max_new_tokens={plan.max_new_tokens}", "generation.batch_size=32",
        # the checkpoint kept is the one that answers the validation conversations best (not the lowest loss)
        f"generation.val_examples={plan.eval_conversations}", "eval_metric=task_mean",
        "log_every=10", "progress=false", *model_args, f"max_steps={steps}", f"eval_every={math.ceil(steps / 4)}",
        f"save_every={steps}", f"optim.warmup_steps={max(steps // 20, 5)}", f"out_dir={run_dir}"]), overwrite=True)
    test = json.loads((run_dir / "test_metrics.json").read_text(encoding="utf-8"))
    gens = read_jsonl(run_dir / "test_generations.jsonl")
    seconds = time.perf_counter() - t0
    acc, fmt = test["accuracy"], test["format"]  # one task: its scores are not prefixed with its name
    print(f"{name:<12} {steps} steps ({seconds:.0f}s): {TASK} test accuracy {acc:.3f}, "
          f"{fmt:.0%} of the answers in the task's format")
    return {"steps": steps, "seconds": round(seconds, 1), "accuracy": acc, "format": fmt, "generations": gens,
            "run": str(run_dir)}


def _majority(splits: dict[str, list[Any]]) -> dict[str, Any]:
    """Always the training conversations' most frequent answer, scored on the test conversations."""
    from ..scores.text import score_generations

    answer = Counter(e.target for e in splits["train"]).most_common(1)[0][0]
    test = splits["test"]
    scores = score_generations(TASK, [answer] * len(test), [e.target for e in test])
    return {"answer": answer, "accuracy": scores["accuracy"], "format": scores["format"]}


def run_decoder_half(out: Path, quick: bool, scale: float = 1.0) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    plan = DecoderPlan.make(quick, scale)
    rule("D1. decoder tokenizer and token shards (People's Daily + training reviews)")
    texts, corpus = _corpus(out, plan)
    tok_dir, data = _tokenizer_and_shards(out, plan, texts, corpus)
    rule(f"D2. pretraining the decoder with causal LM ({plan.steps(plan.pretrain_steps)} steps)")
    pre_dir, pre = _pretrain(out, plan, data)
    rule(f"D3. instruction tuning on zh-tasks' {TASK}: pretrained vs from scratch (test answers, generated greedily)")
    files, splits = _task_files(out, plan)
    systems = {
        "pretrained + instruction-tuned": _sft(out, plan, "pretrained", files, [f"init_from={pre_dir}"]),
        "same decoder from scratch": _sft(out, plan, "scratch", files, [f"tokenizer={tok_dir}", *_decoder_args(plan)]),
    }
    majority = _majority(splits)
    print(f"{'majority answer':<12} always {majority['answer']!r}: {TASK} test accuracy {majority['accuracy']:.3f}")
    print(f"not in this budget: {', '.join(NOT_IN_BUDGET)}. Learning them took a 4x256 decoder pretrained for "
          "33 minutes and 2,400 steps of instruction tuning on all four tasks, about an hour on 2 cores: "
          "python benchmarks/bench_quality.py --task sft (docs/benchmarks.md, 'Quality: instruction tuning a decoder')")
    rule("D4. a few test answers beside the references")
    names = list(systems)
    samples = []
    pairs = list(zip(systems[names[0]]["generations"], systems[names[1]]["generations"]))
    for label in sorted({a["reference"] for a, _ in pairs}):
        for a, b in [p for p in pairs if p[0]["reference"] == label][:2]:
            samples.append({"task": a["task"], "input": a["input"], "reference": a["reference"],
                            names[0]: a["prediction"], names[1]: b["prediction"]})
            print(f"{a['input'][:70]!r}\n    reference : {a['reference']}\n    pretrained: {a['prediction']}\n"
                  f"    scratch   : {b['prediction']}")
    return {"plan": {"quick": plan.quick, "scale": plan.scale, "decoder": f"{plan.layers}x{plan.width}",
                     "vocab": plan.vocab, "seq_len": plan.seq_len, "task": TASK,
                     "train_conversations": len(splits["train"]), "test_conversations": len(splits["test"]),
                     "seed": 1},
            "pretraining": pre, "majority": majority, "samples": samples, "not_in_budget": list(NOT_IN_BUDGET),
            "systems": {n: {k: v for k, v in s.items() if k != "generations"} for n, s in systems.items()}}


def report_lines(result: dict[str, Any]) -> list[str]:
    """The decoder half's section of report.md."""
    pre, names, p, maj = result["pretraining"], list(result["systems"]), result["plan"], result["majority"]
    lines = [
        f"## Decoder half: instruction tuning on zh-tasks' {p['task']}", "",
        f"Decoder {p['decoder']}, byte-level BPE vocabulary {p['vocab']:,}. Causal-LM pretraining: {pre['steps']} steps, "
        f"{pre['tokens'] / 1e6:.1f}M tokens in {pre['seconds']:.0f}s; validation loss {pre['val_loss']:.3f} nats. "
        f"Instruction tuning: {p['train_conversations']:,} conversations, the same steps for both; test: "
        f"{p['test_conversations']} held-out conversations, answered greedily. Seed 1, once.", "",
        f"| system | steps | {p['task']} accuracy | answers in format |", "|---|---|---|---|",
        *(f"| {n} | {s['steps']} | {s['accuracy']:.3f} | {s['format']:.0%} |" for n, s in result["systems"].items()),
        f"| majority answer (always {maj['answer']}) | — | {maj['accuracy']:.3f} | {maj['format']:.0%} |", "",
        f"Not in this budget: {', '.join(result['not_in_budget'])}. The recipe that learns all four zh-tasks is "
        "`python benchmarks/bench_quality.py --task sft` (docs/benchmarks.md).", "",
        "| input | reference | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|",
    ]
    for s in result["samples"]:
        cells = [s["input"][:60].replace("\n", " ").replace("|", "/"), s["reference"],
                 *(s[n].replace("|", "/") for n in names)]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


__all__ = ["DecoderPlan", "report_lines", "run_decoder_half"]
