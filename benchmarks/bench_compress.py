"""Compression on real data, end to end through the ``duplex`` commands (issue 15): int8 quantisation,
knowledge distillation and structured pruning of a sentiment classifier trained from scratch on
``reviews-zh``, plus int8 perplexity on a small GPT-2-shaped decoder pretrained on People's Daily.

Targets, each judged in the run's table:

(a) int8 (``duplex quantize --method int8``) keeps test accuracy within 1 point and perplexity within
    2% while its weight file is at most 30% of fp32's and CPU inference is at least 1.5x faster than
    fp32; ``torch.ao.quantization.quantize_dynamic`` (every ``nn.Linear``, qint8) of the same model is
    measured beside it: accuracy, perplexity, size, and speed timed in the same alternating rounds;
(b) a student with at most a quarter of the teacher's parameters, trained by ``duplex distill``,
    keeps at least 95% of the teacher's accuracy; the same student trained by plain ``duplex
    finetune`` with the same steps is the control, so the table shows what distillation adds;
(c) ``duplex prune --method heads,neurons --sparsity 0.3 --recover ...`` keeps accuracy within 1 point.

Stages, each printed with its elapsed time; every model comes from a ``duplex`` command, printed as
run (paths relative to ``--out``) and run in this process through ``duplexlm.cli.main``:

1. data: a corpus of 4,000 People's Daily paragraphs plus the training split's reviews (as ``duplex
   demo`` builds its tokenizer corpus: never the validation or test reviews), ``duplex tokenizer train
   --kind wordpiece --vocab-size 5000`` on it (WordPiece keeps every character seen: 4,900 symbols
   here, so no [UNK]), and ``duplex data prepare peoples-daily`` (token shards for the decoder);
   about 15 s;
2. teacher: ``duplex finetune task=classify data.train=reviews-zh`` from scratch, a pre-LN BERT-style
   encoder 4 x 256 (4 heads, d_ff 1024, vocabulary 5,000: 4.5 M parameters), sequences of 128 tokens,
   batch 32, one epoch (434 steps at ~0.6 s), three validation passes, the best kept; about 5 minutes;
3. (a) ``duplex quantize`` of the teacher (its report: accuracy on the test split, size, speed), then in
   this process torch.ao's copy: accuracy on the same test split, weight bytes (``torch.save`` of its
   state dict) and speed: fp32, ours and torch.ao scoring 16 x 128 tokens and 1 x 128 tokens, warmed up,
   then timed in 7 rounds whose order alternates (the helpers of ``bench_quantize.py``); about 1 minute;
4. (a) ``duplex pretrain`` of a GPT-2-shaped decoder (4 x 256, context 128) on the People's Daily
   shards, 300 steps of 16 x 128 tokens (~0.65 s each), ``duplex quantize --data SHARDS --split val``
   (perplexity before and after), torch.ao's perplexity on the same windows; about 4 minutes;
5. (b) ``duplex distill`` of a student of at most a quarter of the teacher's parameters (the widest
   of a few 2-layer shapes that fits: 2 x 128, d_ff 512, ~24%), temperature 2, alpha 0.6, 1.5 epochs
   (652 steps at ~0.25 s with the teacher's forward); the control ``duplex finetune`` of the same
   student with the same settings (~0.13 s a step) and ``duplex eval`` of it; about 5 minutes;
6. (c) ``duplex prune`` of the teacher, 30% of heads and neurons (4 → 3 heads, d_ff 1024 → 717), 250
   recovery steps at lr 2e-4 (~0.45 s each); about 2.5 minutes.

    HF_HUB_OFFLINE=1 python benchmarks/bench_compress.py --smoke    # tiny shapes, few steps: runs end to end
    HF_HUB_OFFLINE=1 python benchmarks/bench_compress.py --out runs/bench-compress --write docs/benchmarks.md

The full run takes about 20 minutes on 2 CPU cores (at most ~25); ``--out`` keeps every run directory (default: a
temporary directory, removed at the end), with ``results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import machine, write_section
from bench_quantize import ao_quantized_parameters, rates, rounds, torch_ao

HEADING = "### Compression: int8, distillation and pruning on `reviews-zh` (CPU)"


@dataclass
class Plan:
    """Shapes and budgets of one mode (``full`` or ``smoke``)."""

    pd_docs: int  # People's Daily paragraphs in the tokenizer corpus
    review_docs: int | None  # training reviews in the tokenizer corpus (None: all)
    decoder_docs: int | None  # People's Daily paragraphs in the decoder's shards (None: the built-in, all)
    vocab: int
    seq_len: int
    batch: int
    teacher: dict[str, int]
    teacher_epochs: float | None  # None: teacher_steps
    teacher_steps: int | None
    teacher_lr: float
    evals: int  # validation passes per fine-tuning run
    students: list[dict[str, int]]  # candidate student shapes, widest first: the first within max_ratio
    student_epochs: float | None
    student_steps: int | None
    student_lr: float
    decoder: dict[str, int]
    decoder_seq: int
    decoder_batch: int
    decoder_steps: int
    recover_steps: int
    time_batch: int
    time_seq: int
    rounds: int
    temperature: float = 2.0
    alpha: float = 0.6
    sparsity: float = 0.3
    max_ratio: float = 0.25


PLANS = {
    "full": Plan(pd_docs=4000, review_docs=None, decoder_docs=None, vocab=5000, seq_len=128, batch=32,
                 teacher=dict(d_model=256, n_layer=4, n_head=4, d_ff=1024), teacher_epochs=1.0, teacher_steps=None,
                 teacher_lr=8e-4, evals=3,
                 students=[dict(d_model=128, n_layer=2, n_head=2, d_ff=512), dict(d_model=128, n_layer=2, n_head=2, d_ff=384),
                           dict(d_model=128, n_layer=2, n_head=2, d_ff=256), dict(d_model=96, n_layer=2, n_head=2, d_ff=384),
                           dict(d_model=64, n_layer=2, n_head=2, d_ff=256)],
                 student_epochs=1.5, student_steps=None, student_lr=1e-3,
                 decoder=dict(d_model=256, n_layer=4, n_head=4), decoder_seq=128, decoder_batch=16, decoder_steps=300,
                 recover_steps=250, time_batch=16, time_seq=128, rounds=7),
    "smoke": Plan(pd_docs=300, review_docs=500, decoder_docs=400, vocab=3000, seq_len=32, batch=8,
                  teacher=dict(d_model=32, n_layer=1, n_head=2, d_ff=64), teacher_epochs=None, teacher_steps=6,
                  teacher_lr=1e-3, evals=1, students=[dict(d_model=16, n_layer=1, n_head=2, d_ff=32)],
                  student_epochs=None, student_steps=6, student_lr=1e-3,
                  decoder=dict(d_model=32, n_layer=1, n_head=2), decoder_seq=32, decoder_batch=4, decoder_steps=5,
                  recover_steps=4, time_batch=4, time_seq=32, rounds=2),
}


# ----------------------------------------------------------------------------------------------------
# Running the commands


class Bench:
    """The run's working directory, its commands (as run) and its stages' times."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.commands: list[dict[str, Any]] = []
        self.stages: list[tuple[str, float]] = []
        self.start = time.perf_counter()
        self.current = ""

    def duplex(self, *argv: Any) -> None:
        """Run ``duplex ARGV`` through ``duplexlm.cli.main`` in the working directory (printed first)."""
        from duplexlm.cli import main as duplex_main

        args = [str(a) for a in argv]
        line = shlex.join(["duplex", *args])
        print(f"\n$ {line}", flush=True)
        t0 = time.perf_counter()
        saved = sys.argv
        sys.argv = ["duplex", *args]  # what write_report records as the command
        try:
            code = duplex_main(args)
        finally:
            sys.argv = saved
        seconds = time.perf_counter() - t0
        self.commands.append({"stage": self.current, "command": line, "seconds": round(seconds, 1)})
        if code != 0:
            raise SystemExit(f"bench_compress: `{line}` exited with status {code}")
        print(f"({seconds:.0f}s)", flush=True)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.current = name
        print(f"\n===== {name} =====", flush=True)
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        self.stages.append((name, seconds))
        print(f"===== {name}: {seconds:.0f}s (elapsed {time.perf_counter() - self.start:.0f}s) =====", flush=True)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def report_rows(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The rows of a command's compression_report.json, by name."""
    return {r["name"]: r for r in read_json(Path(out_dir) / "compression_report.json")["rows"]}


def last_step(run_dir: str | Path) -> int:
    """The last optimizer step a run logged (early stopping may end it before its budget)."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return max(int(r.get("step", 0)) for r in rows)


def steps_for(epochs: float | None, steps: int | None, n_train: int, batch: int) -> int:
    """The steps a run makes: ``max_steps``, or what ``max_epochs`` makes of it (as the loop does)."""
    return steps if epochs is None else max(1, math.ceil(epochs * n_train / batch))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------
# Stage 1: data


def corpus(plan: Plan) -> dict[str, Any]:
    """The tokenizer's corpus as ``duplex demo`` builds it: People's Daily paragraphs plus the training
    split's reviews (never validation or test), one per line in corpus.txt; and, in smoke mode, a small
    People's Daily file for the decoder's shards."""
    from duplexlm.data import iter_documents
    from duplexlm.data.clean import clean_text
    from duplexlm.data.tasks import load_task_data

    reviews = load_task_data("classify", "reviews-zh")
    keep = max(plan.pd_docs, plan.decoder_docs or 0)
    paragraphs = []
    for i, doc in enumerate(iter_documents(["peoples-daily"])):
        if i >= keep:
            break
        if text := clean_text(doc.text):
            paragraphs.append(text)
    texts = paragraphs[: plan.pd_docs]
    train = reviews.splits["train"][: plan.review_docs]
    texts += [t for e in train if (t := clean_text(e.text))]
    Path("corpus.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    if plan.decoder_docs is not None:
        Path("pd-small.txt").write_text("\n".join(paragraphs[: plan.decoder_docs]) + "\n", encoding="utf-8")
    sizes = {k: len(v) for k, v in reviews.splits.items()}
    print(f"corpus.txt: {min(plan.pd_docs, len(paragraphs)):,} People's Daily paragraphs + {len(train):,} training "
          f"reviews; reviews-zh splits {sizes}")
    return {"splits": sizes, "corpus_docs": len(texts)}


# ----------------------------------------------------------------------------------------------------
# Shared settings of the classifier runs


def encoder_args(shape: dict[str, int], seq_len: int) -> list[str]:
    """A pre-LN BERT-style classifier of ``shape`` (the demo's recipe: mean pooling, dropout 0.1)."""
    return ["model.preset=bert-tiny", *(f"model.{k}={v}" for k, v in shape.items()), f"model.max_seq_len={seq_len}",
            "model.norm_position=pre", "model.pooling=mean", "model.dropout=0.1", "model.attn_dropout=0.0"]


def student_fields(shape: dict[str, int], seq_len: int) -> dict[str, Any]:
    return dict(preset="bert-tiny", **shape, max_seq_len=seq_len, norm_position="pre", pooling="mean",
                dropout=0.1, attn_dropout=0.0)


def classify_args(plan: Plan, epochs: float | None, steps: int | None, lr: float, n_train: int) -> list[str]:
    """The settings of a classifier run (``duplex finetune task=classify``, ``duplex distill --task classify``):
    data, budget, evaluation, optimiser."""
    total = steps_for(epochs, steps, n_train, plan.batch)
    budget = f"max_steps={steps}" if epochs is None else f"max_epochs={epochs:g}"
    return ["data.train=reviews-zh", f"data.seq_len={plan.seq_len}", "data.group_by_length=true",
            f"batch_size={plan.batch}", budget, f"eval_every={math.ceil(total / plan.evals)}", "patience=2",
            f"save_every={total}", f"optim.lr={lr:g}", f"optim.min_lr={lr / 10:g}",
            f"optim.warmup_steps={max(total // 10, 1)}", "optim.weight_decay=0.01", "precision=auto",
            f"log_every={max(total // 10, 1)}", "progress=false"]


def count_params(shape: dict[str, int], vocab: int, seq_len: int, labels: int) -> int:
    from duplexlm.config import EncoderConfig
    from duplexlm.models import build_model, count_parameters

    cfg = EncoderConfig(vocab_size=vocab, max_seq_len=seq_len, **shape, head="classify", num_labels=labels,
                        norm_position="pre", pooling="mean", pooler=False)
    return count_parameters(build_model(cfg))


# ----------------------------------------------------------------------------------------------------
# Stage 3: int8 of the teacher, beside torch.ao


def test_accuracy(model: torch.nn.Module, tokenizer: Any) -> float:
    """Accuracy on reviews-zh's test split, predicted as ``duplex eval`` predicts (evaluate_model: the
    same split seed, ``classify`` in batches of 32)."""
    from duplexlm.data.tasks import load_task_data
    from duplexlm.infer.predict import classify

    examples = load_task_data("classify", "reviews-zh").splits["test"]
    preds = classify(model, tokenizer, [e.text for e in examples], batch_size=32)
    return sum(p["label"] == e.label for p, e in zip(preds, examples)) / len(examples)


def state_bytes(model: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def speed(models: dict[str, torch.nn.Module], tokenizer: Any, plan: Plan) -> dict[str, Any]:
    """Throughput (time_batch x time_seq tokens) and latency (1 x time_seq) of each side, warmed up, then
    timed in rounds whose order alternates (A B C, C B A, ...)."""
    from duplexlm.compress.report import timing_inputs

    first = next(iter(models.values()))
    batch = timing_inputs(first, plan.time_batch, plan.time_seq, tokenizer)
    one = {k: v[:1] for k, v in batch.items()}
    out = {}
    with torch.inference_mode():
        for label, inputs, units in (("batch", batch, plan.time_batch), ("one", one, 1)):
            work = {n: (lambda m=m, x=inputs: m(**x)) for n, m in models.items()}
            for fn in work.values():
                fn()
                fn()
            out[label] = rates(rounds(work, plan.rounds), units)
    out["shape"] = {"batch": [plan.time_batch, int(batch["input_ids"].shape[1])], "one": [1, int(one["input_ids"].shape[1])]}
    return out


def int8_classifier(bench: Bench, plan: Plan) -> dict[str, Any]:
    from duplexlm.compress import quant_modules, quantized_parameters
    from duplexlm.compress.quantization import weight_bytes
    from duplexlm.io import load
    from duplexlm.models import count_parameters

    bench.duplex("quantize", "--model", "teacher/model", "--method", "int8", "--embeddings", "--out", "teacher-int8",
                 "--data", "reviews-zh", "--split", "test")
    rows = report_rows("teacher-int8")
    fp32, tok = load("teacher/model")
    ours, _ = load("teacher-int8")
    fp32.eval()
    ours.eval()
    ao = torch_ao(fp32)
    print("torch.ao dynamic int8 of the same model: accuracy on the test split ...", flush=True)
    acc = {"fp32": test_accuracy(fp32, tok), "ours int8": rows["int8"]["quality"]["accuracy"],
           "torch.ao dynamic int8": test_accuracy(ao, tok)}
    trained = read_json("teacher/test_metrics.json")["accuracy"]
    if abs(trained - rows["original"]["quality"]["accuracy"]) > 1e-9:
        print(f"warning: the report's test accuracy ({rows['original']['quality']['accuracy']:.4f}) differs from the "
              f"one `duplex finetune` wrote ({trained:.4f}): not the same test split?")
    if abs(acc["fp32"] - rows["original"]["quality"]["accuracy"]) > 1e-9:
        print(f"warning: fp32 accuracy predicted here ({acc['fp32']:.4f}) differs from the report's "
              f"({rows['original']['quality']['accuracy']:.4f})")
    params = count_parameters(fp32)
    sides = {
        "fp32": {"bytes": weight_bytes("teacher/model"), "int": 0},
        "ours int8": {"bytes": weight_bytes("teacher-int8"), "int": quantized_parameters(ours)},
        "torch.ao dynamic int8": {"bytes": state_bytes(ao), "int": ao_quantized_parameters(ao)},
    }
    print("speed, side by side ...", flush=True)
    timed = speed({"fp32": fp32, "ours int8": ours, "torch.ao dynamic int8": ao}, tok, plan)
    for name, s in sides.items():
        s["accuracy"] = acc[name]
        s["size"] = s["bytes"] / sides["fp32"]["bytes"]
        s["throughput"] = timed["batch"][name]
        s["latency"] = timed["one"][name]
    # with fp32 embedding tables (what torch.ao and `duplex quantize` without --embeddings keep): int8
    # Linear weights in one byte each, everything else in four — the smallest such file
    q = sum(m.in_features * m.out_features for m in quant_modules(ours).values())
    floor = (4 * (params - q) + q) / (4 * params)
    result = {"sides": sides, "params": params, "floor": floor, "shape": timed["shape"],
              "report": rows, "threads": torch.get_num_threads()}
    for name, s in sides.items():
        print(f"{name:<24} accuracy {s['accuracy']:.4f}  file {s['bytes'] / 2**20:.2f} MiB ({s['size']:.1%})  "
              f"throughput {s['throughput']['rate']:.1f} seq/s ({s['throughput']['speedup']:.2f}x)  "
              f"latency {1000 / s['latency']['rate']:.1f} ms ({s['latency']['speedup']:.2f}x)")
    return result


# ----------------------------------------------------------------------------------------------------
# Stage 4: int8 perplexity of a decoder


def int8_decoder(bench: Bench, plan: Plan) -> dict[str, Any]:
    from duplexlm.compress.report import headline
    from duplexlm.eval.lm import evaluate_lm, lm_objective
    from duplexlm.io import load

    steps = plan.decoder_steps
    bench.duplex("pretrain", "objective=clm", "data.path=pd-shards", f"data.seq_len={plan.decoder_seq}",
                 "model.preset=gpt2-tiny", *(f"model.{k}={v}" for k, v in plan.decoder.items()),
                 f"model.max_seq_len={plan.decoder_seq}", f"batch_size={plan.decoder_batch}", f"max_steps={steps}",
                 f"eval_every={max(steps // 4, 1)}", "eval_batches=8", f"save_every={steps}", "optim.lr=1e-3",
                 "optim.min_lr=1e-4", f"optim.warmup_steps={max(steps // 10, 1)}", "precision=auto",
                 f"log_every={max(steps // 10, 1)}", "progress=false", "out_dir=decoder")
    bench.duplex("quantize", "--model", "decoder/model", "--method", "int8", "--out", "decoder-int8",
                 "--data", "pd-shards", "--split", "val")
    rows = report_rows("decoder-int8")
    fp32, tok = load("decoder/model")
    fp32.eval()
    print("torch.ao dynamic int8 of the same decoder: perplexity on the same windows ...", flush=True)
    metrics = evaluate_lm(torch_ao(fp32), tok, "pd-shards", objective=lm_objective(fp32), split="val",
                          batch_size=8, model_dir="decoder/model")  # evaluate_model's defaults
    ppl = {"fp32": rows["original"]["quality"]["perplexity"], "ours int8": rows["int8"]["quality"]["perplexity"],
           "torch.ao dynamic int8": headline(metrics)["perplexity"]}
    print("perplexity: " + ", ".join(f"{k} {v:.3f}" for k, v in ppl.items()))
    return {"perplexity": ppl, "data": rows["original"]["data"], "report": rows,
            "params": rows["original"]["parameters"], "steps": steps}


# ----------------------------------------------------------------------------------------------------
# Stage 5: distillation


def distillation(bench: Bench, plan: Plan, n_train: int, teacher_params: int, vocab: int, labels: int) -> dict[str, Any]:
    sizes = [(s, count_params(s, vocab, plan.seq_len, labels)) for s in plan.students]
    shape = next((s for s, n in sizes if n <= plan.max_ratio * teacher_params), sizes[-1][0])
    print("student candidates: " + ", ".join(f"{s['n_layer']}x{s['d_model']} d_ff {s['d_ff']}: {n:,} "
                                              f"({n / teacher_params:.1%})" for s, n in sizes)
          + f"; chosen {shape['n_layer']}x{shape['d_model']} d_ff {shape['d_ff']}")
    Path("student.yaml").write_text(yaml.safe_dump(student_fields(shape, plan.seq_len), sort_keys=False),
                                    encoding="utf-8")
    train = classify_args(plan, plan.student_epochs, plan.student_steps, plan.student_lr, n_train)
    bench.duplex("distill", "--teacher", "teacher/model", "--student", "student.yaml", "--task", "classify", *train,
                 f"distill.temperature={plan.temperature:g}", f"distill.alpha={plan.alpha:g}",
                 "out_dir=student-distilled")
    bench.duplex("finetune", "task=classify", *train, "tokenizer=tok", *encoder_args(shape, plan.seq_len), "out_dir=student-plain")
    bench.duplex("eval", "--model", "student-plain/model", "--data", "reviews-zh", "--out", "student-plain/eval")
    rows = report_rows("student-distilled")
    plain = read_json("student-plain/eval/metrics.json")
    runs = {"distilled": read_json("student-distilled/test_metrics.json"), "plain": read_json("student-plain/test_metrics.json")}
    out = {"shape": shape, "candidates": [[s, n] for s, n in sizes], "report": rows,
           "teacher": {"params": rows["teacher"]["parameters"], "accuracy": rows["teacher"]["quality"]["accuracy"]},
           "distilled": {"params": rows["student"]["parameters"], "accuracy": rows["student"]["quality"]["accuracy"]},
           "plain": {"params": rows["student"]["parameters"], "accuracy": plain["accuracy"]},
           "steps": {"distilled": last_step("student-distilled"), "plain": last_step("student-plain")},
           "test_metrics": {k: v.get("accuracy") for k, v in runs.items()}}
    t = out["teacher"]["accuracy"]
    for k in ("distilled", "plain"):
        out[k]["of_teacher"] = out[k]["accuracy"] / t if t else math.nan
    out["ratio"] = out["distilled"]["params"] / out["teacher"]["params"]
    print(f"student {out['ratio']:.1%} of the teacher's parameters; accuracy distilled {out['distilled']['accuracy']:.4f} "
          f"({out['distilled']['of_teacher']:.1%} of the teacher's {t:.4f}), plain {out['plain']['accuracy']:.4f} "
          f"({out['plain']['of_teacher']:.1%})")
    return out


# ----------------------------------------------------------------------------------------------------
# Stage 6: pruning with recovery


def pruning(bench: Bench, plan: Plan) -> dict[str, Any]:
    steps = plan.recover_steps
    lr = 2e-4
    bench.duplex("prune", "--model", "teacher/model", "--sparsity", f"{plan.sparsity:g}", "--method", "heads,neurons",
                 "--out", "teacher-pruned", "--recover", "task=classify", "data.train=reviews-zh",
                 f"data.seq_len={plan.seq_len}", "data.group_by_length=true", f"batch_size={plan.batch}",
                 f"max_steps={steps}", f"eval_every={max(steps // 2, 1)}", "patience=2", f"save_every={steps}",
                 f"optim.lr={lr:g}", f"optim.min_lr={lr / 10:g}", f"optim.warmup_steps={max(steps // 10, 1)}",
                 "optim.weight_decay=0.01", "precision=auto", f"log_every={max(steps // 10, 1)}", "progress=false")
    rows = report_rows("teacher-pruned")
    before, pruned, recovered = rows["original"], rows["pruned"], rows["pruned + recovery"]
    t_cfg, p_cfg = read_json("teacher/model/config.json"), read_json("teacher-pruned/config.json")
    out = {"report": rows, "steps": last_step("teacher-pruned-recovery/train"), "lr": lr,
           "shape": {k: (t_cfg.get(k), p_cfg.get(k)) for k in ("n_head", "d_ff", "intermediate_size",
                                                                "num_attention_heads") if k in t_cfg or k in p_cfg},
           "accuracy": {"original": before["quality"]["accuracy"], "pruned": pruned["quality"]["accuracy"],
                        "recovered": recovered["quality"]["accuracy"]},
           "params": {"original": before["parameters"], "pruned": pruned["parameters"],
                      "recovered": recovered["parameters"]}}
    print("accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in out["accuracy"].items())
          + f"; parameters {out['params']['recovered'] / out['params']['original']:.1%} of the original")
    return out


# ----------------------------------------------------------------------------------------------------
# Report


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    q, d, s, p = res["int8"], res["decoder"], res["distill"], res["prune"]
    ours, fp = q["sides"]["ours int8"], q["sides"]["fp32"]
    dacc = 100 * (ours["accuracy"] - fp["accuracy"])
    ppl0, ppl1 = d["perplexity"]["fp32"], d["perplexity"]["ours int8"]
    dppl = 100 * (ppl1 / ppl0 - 1)
    thr, lat = ours["throughput"]["speedup"], ours["latency"]["speedup"]
    b, o = q["shape"]["batch"], q["shape"]["one"]
    pacc = 100 * (p["accuracy"]["recovered"] - p["accuracy"]["original"])
    return [
        ("(a) int8: test accuracy", f"{fp['accuracy']:.4f} → {ours['accuracy']:.4f} ({dacc:+.2f} pt)",
         "drop ≤ 1 pt", dacc >= -1.0),
        ("(a) int8: perplexity (decoder)", f"{ppl0:.3f} → {ppl1:.3f} ({dppl:+.2f}%)", "rise ≤ 2%", dppl <= 2.0),
        ("(a) int8: weight file", f"{ours['size']:.1%} of fp32 ({fp['bytes'] / 2**20:.2f} → {ours['bytes'] / 2**20:.2f} MiB; "
         f"embedding tables int8 too; with them fp32 it could not go below {q['floor']:.1%})", "≤ 30%",
         ours["size"] <= 0.30),
        ("(a) int8: CPU speed", f"{thr:.2f}× throughput ({b[0]} × {b[1]} tokens), {lat:.2f}× latency ({o[0]} × {o[1]})",
         "≥ 1.5× (throughput)", thr >= 1.5),
        ("(b) student size", f"{s['ratio']:.1%} of the teacher's parameters ({s['distilled']['params']:,} / "
         f"{s['teacher']['params']:,})", "≤ 25%", s["ratio"] <= 0.25),
        ("(b) distilled student's accuracy", f"{s['distilled']['of_teacher']:.1%} of the teacher's "
         f"({s['distilled']['accuracy']:.4f} / {s['teacher']['accuracy']:.4f}; without distillation "
         f"{s['plain']['of_teacher']:.1%})", "≥ 95%", s["distilled"]["of_teacher"] >= 0.95),
        ("(c) pruned 30% heads + neurons, recovered", f"{p['accuracy']['original']:.4f} → {p['accuracy']['recovered']:.4f} "
         f"({pacc:+.2f} pt)", "drop ≤ 1 pt", pacc >= -1.0),
    ]


def _rate(r: dict[str, Any], base: bool, fmt: str = "{:,.1f}") -> str:
    cell = f"{fmt.format(r['rate'])} [{fmt.format(r['lo'])}–{fmt.format(r['hi'])}]"
    return cell + ("" if base else f", **{r['speedup']:.2f}x**")


def _latency(r: dict[str, Any], base: bool) -> str:
    """A batch-1 rate (sequences/s) as milliseconds per forward: median [min–max]."""
    cell = f"{1000 / r['rate']:,.1f} [{1000 / r['hi']:,.1f}–{1000 / r['lo']:,.1f}]"
    return cell + ("" if base else f", **{r['speedup']:.2f}x**")


def _report_md(path: Path) -> list[str]:
    """A command's compression_report.md without its title."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("# ")]
    while lines and not lines[0].strip():
        lines.pop(0)
    return lines


def report(res: dict[str, Any], bench: Bench, plan: Plan, args: argparse.Namespace) -> str:
    q, d, s, p = res["int8"], res["decoder"], res["distill"], res["prune"]
    cmd = shlex.join(["python", "benchmarks/bench_compress.py", *sys.argv[1:]])
    total = time.perf_counter() - bench.start
    t = plan.teacher
    lines = [HEADING, "",
             f"Machine: {machine(torch.device('cpu'))}, quantised engine {torch.backends.quantized.engine}; "
             f"{total / 60:.1f} minutes in all. Command: `{cmd}`. Every model is made by the `duplex` commands "
             "listed below, run in this order in one working directory. Accuracy is on the "
             f"{res['data']['splits']['test']:,} test reviews of `reviews-zh` (de-duplicated, seeded 80/10/10), "
             f"perplexity on the validation split of the People's Daily shards ({d['data']}). Teacher: a pre-LN "
             f"BERT-style classifier {t['n_layer']} × {t['d_model']} ({t['n_head']} heads, d_ff {t['d_ff']}, "
             f"{q['params']:,} parameters, WordPiece {res['vocab']:,}) trained from scratch for "
             f"{res['teacher']['steps']} steps of {plan.batch}.", "",
             "| target | figure | goal | met |", "|---|---|---|---|"]
    for name, fig, goal, met in targets(res):
        lines.append(f"| {name} | {fig} | {goal} | {'**yes**' if met else '**no**'} |")
    b, o = q["shape"]["batch"], q["shape"]["one"]
    lines += ["", f"**(a) int8 on CPU**, the teacher: ours (`duplex quantize --method int8 --embeddings`: per-channel int8 "
              "Linear weights, per-row int8 embedding tables, norms and biases fp32) and `torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, "
              "dtype=torch.qint8)` of the same fp32 model (its file: `torch.save` of its state dict). Speed: one "
              f"forward over {b[0]} × {b[1]} token ids (throughput) and over {o[0]} × {o[1]} (latency), "
              f"{plan.rounds} rounds after a warm-up, the order of the sides alternating; median [min–max], and "
              f"the median per-round speed-up over fp32; {q['threads']} threads.", "",
              "| side | int8 weights | file (MiB) | vs fp32 | test accuracy | Δ | sequences/s (throughput) | "
              "latency (ms) | perplexity (decoder) | Δ |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, side in q["sides"].items():
        base = name == "fp32"
        ppl = d["perplexity"][name]
        dppl = "—" if base else f"{100 * (ppl / d['perplexity']['fp32'] - 1):+.2f}%"
        dacc = "—" if base else f"{100 * (side['accuracy'] - q['sides']['fp32']['accuracy']):+.2f} pt"
        lines.append(f"| {name} | {side['int'] / 1e6:.2f} M | {side['bytes'] / 2**20:.2f} | "
                     f"{'—' if base else format(side['size'], '.1%')} | {side['accuracy']:.4f} | {dacc} | "
                     f"{_rate(side['throughput'], base)} | {_latency(side['latency'], base)} | {ppl:.3f} | {dppl} |")
    lines += ["", f"Why `--embeddings`: with the embedding tables, norms and biases kept in fp32 and every Linear "
              f"weight in one byte, this teacher's file cannot go below {q['floor']:.1%} of fp32's. Decoder: GPT-2 shape "
              f"{plan.decoder['n_layer']} × {plan.decoder['d_model']}, context {plan.decoder_seq}, "
              f"{d['params']:,} parameters, {d['steps']} steps of {plan.decoder_batch} × {plan.decoder_seq} tokens.",
              "", f"**(b) distillation**: the student ({s['shape']['n_layer']} × {s['shape']['d_model']}, "
              f"{s['shape']['n_head']} heads, d_ff {s['shape']['d_ff']}, the teacher's tokenizer) trained "
              f"{s['steps']['distilled']} steps with `duplex distill` (temperature {plan.temperature:g}, alpha {plan.alpha:g}) "
              f"and, as the control, with `duplex finetune` and the same settings ({s['steps']['plain']} steps).", "",
              "| model | parameters | of the teacher's | test accuracy | of the teacher's |", "|---|---|---|---|---|",
              f"| teacher | {s['teacher']['params']:,} | — | {s['teacher']['accuracy']:.4f} | — |"]
    for k, label in (("distilled", "student, distilled"), ("plain", "student, no distillation")):
        lines.append(f"| {label} | {s[k]['params']:,} | {s[k]['params'] / s['teacher']['params']:.1%} | "
                     f"{s[k]['accuracy']:.4f} | {s[k]['of_teacher']:.1%} |")
    shape = "; ".join(f"{k} {a} → {b_}" for k, (a, b_) in p["shape"].items())
    lines += ["", f"**(c) pruning**: `duplex prune --method heads,neurons --sparsity {plan.sparsity:g}` ({shape}; "
              f"heads and neurons ranked by weight norms), then {p['steps']} recovery steps at lr {p['lr']:g}.", "",
              "| model | parameters | test accuracy | Δ |", "|---|---|---|---|"]
    for k, label in (("original", "teacher"), ("pruned", "pruned"), ("recovered", "pruned + recovery")):
        dacc = "—" if k == "original" else f"{100 * (p['accuracy'][k] - p['accuracy']['original']):+.2f} pt"
        lines.append(f"| {label} | {p['params'][k]:,} | {p['accuracy'][k]:.4f} | {dacc} |")
    lines += ["", "Stages: " + "; ".join(f"{name} {sec / 60:.1f} min" for name, sec in bench.stages) + ".", "",
              "Commands, as run:", "", "```bash"]
    lines += [c["command"] for c in bench.commands]
    lines += ["```", ""]
    for out_dir, what in (("teacher-int8", "`duplex quantize` (teacher)"), ("decoder-int8", "`duplex quantize` (decoder)"),
                          ("student-distilled", "`duplex distill`"), ("teacher-pruned", "`duplex prune --recover`")):
        lines += [f"The report {what} wrote (`{out_dir}/compression_report.md`):", ""]
        lines += _report_md(Path(out_dir) / "compression_report.md")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------------


def run(plan: Plan, bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    from duplexlm.io import load
    from duplexlm.models import count_parameters

    res: dict[str, Any] = {}
    with bench.stage("1. data: tokenizer corpus, WordPiece, People's Daily shards"):
        res["data"] = corpus(plan)
        # WordPiece keeps every character seen: the vocabulary must hold them (4,900 on the full corpus)
        bench.duplex("tokenizer", "train", "corpus.txt", "--kind", "wordpiece", "--vocab-size", plan.vocab,
                     "--out", "tok", "--quiet")
        bench.duplex("data", "prepare", "peoples-daily" if plan.decoder_docs is None else "pd-small.txt",
                     "--tokenizer", "tok", "--out", "pd-shards", "--val-fraction", "0.02" if plan.decoder_docs is None
                     else "0.1", "--quiet")
    n_train = res["data"]["splits"]["train"]
    with bench.stage("2. teacher: from scratch on reviews-zh"):
        bench.duplex("finetune", "task=classify", *classify_args(plan, plan.teacher_epochs, plan.teacher_steps, plan.teacher_lr, n_train),
                     "tokenizer=tok", *encoder_args(plan.teacher, plan.seq_len), "out_dir=teacher")
        teacher, _ = load("teacher/model")
        res["teacher"] = {"params": count_parameters(teacher), "accuracy": read_json("teacher/test_metrics.json")["accuracy"],
                          "steps": last_step("teacher")}
        res["vocab"] = teacher.config.vocab_size
        labels = teacher.config.num_labels
        print(f"teacher: {res['teacher']['params']:,} parameters, vocabulary {res['vocab']:,}, "
              f"test accuracy {res['teacher']['accuracy']:.4f}")
        del teacher
    with bench.stage("3. (a) int8 of the teacher, beside torch.ao"):
        res["int8"] = int8_classifier(bench, plan)
    with bench.stage("4. (a) int8 perplexity of a decoder"):
        res["decoder"] = int8_decoder(bench, plan)
    with bench.stage("5. (b) distillation and its control"):
        res["distill"] = distillation(bench, plan, n_train, res["int8"]["params"], res["vocab"], labels)
    with bench.stage("6. (c) pruning with recovery"):
        res["prune"] = pruning(bench, plan)
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes and a few steps: checks that it runs end to end")
    p.add_argument("--out", default=None, help="working directory, kept (new or empty; default: a temporary one)")
    p.add_argument("--write", default="", help="markdown file to update (default '': print only)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--teacher-epochs", type=float, default=None, help="override the teacher's epochs (full: 1)")
    args = p.parse_args()
    plan = PLANS["smoke" if args.smoke else "full"]
    if args.teacher_epochs is not None:
        plan.teacher_epochs, plan.teacher_steps = args.teacher_epochs, None
    if args.threads:
        torch.set_num_threads(args.threads)
    write = Path(args.write).resolve() if args.write else None
    with contextlib.ExitStack() as stack:
        if args.out:
            work = Path(args.out).resolve()
            if work.exists() and any(work.iterdir()):
                raise SystemExit(f"bench_compress: --out {args.out} is not empty; give a new or empty directory")
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-compress-")))
        cwd = Path.cwd()
        os.chdir(work)
        stack.callback(os.chdir, cwd)
        print(f"working directory: {work}")
        bench = Bench(work)
        res = run(plan, bench, args)
        text = report(res, bench, plan, args)
        res["targets"] = [dict(zip(("target", "figure", "goal", "met"), row)) for row in targets(res)]
        res["commands"], res["stages"] = bench.commands, bench.stages
        Path("results.json").write_text(json.dumps(res, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    print("\n" + text)
    if write is not None:
        write_section(write, HEADING, text)
        print(f"wrote the section to {write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
