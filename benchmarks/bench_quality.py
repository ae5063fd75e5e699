"""Quality against the counting baselines, on the project's own splits (split seed 1234), in one run.

    python benchmarks/bench_quality.py --task ner --out runs/quality-ner            # all sentences, 3 seeds
    python benchmarks/bench_quality.py --task ner --labels 300 1000 3000 all --min-steps 600 --out runs/q-curve
    python benchmarks/bench_quality.py --task sentiment --out runs/quality-sentiment
    python benchmarks/bench_quality.py --task s2t --out runs/quality-s2t            # T5 from scratch, 3 seeds
    python benchmarks/bench_quality.py --task sft --out runs/quality-sft            # a decoder on zh-tasks
    python benchmarks/bench_quality.py --task sft --systems decoder-pretrained@800 --out runs/quality-sft
    python benchmarks/bench_quality.py --task ner --smoke --out /tmp/q             # tiny: checks it runs

Each system is trained with the recipe below through ``duplex finetune`` (the same command a user runs,
the README shows it), then scored on the test split by ``duplex eval`` (every test sentence whole, every
gold entity scored), so each number can be checked again from ``OUT/<labels>/<system>-s<seed>/model``.
The counting baseline of the task is computed in the same run on the same split: for ``ner`` a
longest-match dictionary of the entity strings in the training sentences used (each string's most
frequent type, 2+ characters; :class:`duplexlm.data.baselines.EntityDictionary`), for ``sentiment``
TF-IDF over character 1-3-grams with logistic regression, for ``s2t`` (Simplified → Traditional, chrF)
copying the input and a character map counted from the training pairs
(:class:`duplexlm.data.baselines.CharacterMap`); the sentences where the map and the first seed's model
disagree are written to ``OUT/disagreements.jsonl`` and counted in the table. ``sft`` instruction-tunes
a decoder on the four zh-tasks together (``--labels``: conversations per task, each task capped by its
pool; the test split is the built-in's, 200 per task, whatever the size) and scores each task's answers
(accuracy, chrF, entity F1, and the share in the task's format) beside the majority answer, copying
the input, the character map (转繁体) and a dictionary of the training answers' entities (实体识别).
``--systems decoder-pretrained@STEPS`` tunes from the decoder pretraining's checkpoint at STEPS (of its
2,400; every 400 kept) with the same recipe: what pretraining compute it takes to pay. Validation picks the checkpoint (the loop's
best on the validation metric); the test split only reports. ``--write`` puts the table in
docs/benchmarks.md with the machine and the wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from duplexlm.data.baselines import EntityDictionary
from duplexlm.data.tasks import load_task_data
from duplexlm.scores.labels import entity_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import machine, write_section

# The recipes: `duplex finetune` settings per system (the tokenizer and data are added per run). The
# README's "Quality" commands are these.
RECIPES: dict[str, dict[str, list[str]]] = {
    "ner": {
        "bilstm-crf": ["task=tag", "model.preset=lstm-base", "crf=true", "model.d_embed=128", "model.d_hidden=256",
                       "model.n_layer=1", "model.dropout=0.3", "data.seq_len=256", "data.group_by_length=true",
                       "batch_size=32", "optim.lr=3e-3", "optim.warmup_steps=50", "optim.weight_decay=0.0", "max_epochs=4"],
        "encoder-crf": ["task=tag", "model.preset=bert-tiny", "crf=true", "model.n_layer=4", "model.d_model=256",
                        "model.n_head=4", "model.max_seq_len=256", "model.dropout=0.1", "data.seq_len=256", "data.group_by_length=true",
                        "batch_size=32", "optim.lr=1e-3", "optim.warmup_steps=100", "max_epochs=8"],
    },
    "sentiment": {
        "encoder": ["task=classify", "model.preset=bert-tiny", "model.n_layer=4", "model.d_model=256", "model.n_head=4",
                    "model.dropout=0.1", "data.seq_len=128", "data.group_by_length=true", "batch_size=32",
                    "optim.lr=1e-3", "optim.warmup_steps=100", "max_epochs=3"],
        "bigru": ["task=classify", "model.preset=gru-base", "model.d_embed=128", "model.d_hidden=256", "model.n_layer=1",
                  "model.dropout=0.3", "data.seq_len=128", "data.group_by_length=true", "batch_size=32",
                  "optim.lr=2e-3", "optim.warmup_steps=50", "optim.weight_decay=0.0", "max_epochs=4"],
    },
    # T5 from scratch. Adafactor at 3e-2 (T5's optimizer, steps relative to each weight's scale): with
    # AdamW the unit-scale embeddings and the position biases move so slowly that after 1,200 steps the
    # model had not yet learnt to read its source (chrF < 5). Sinusoidal absolute positions on top of
    # T5's relative ones: cross-attention has no position bias, and without them the decoder found its
    # place in the source by content alone, jumping where a character repeats (val chrF 5.7 at step 500
    # and 83 at 2,000 without; 90 at 500, 98.3 at 1,500 and 99.3 at 2,000 with).
    "s2t": {
        "t5": ["task=seq2seq", "model.preset=t5-tiny", "model.d_model=256", "model.head_dim=64", "model.n_head=4",
               "model.d_ff=1024", "model.n_layer=2", "model.dropout=0.0", "model.absolute_positions=sinusoidal",
               "data.seq_len=136", "batch_size=32", "optim.name=adafactor", "optim.lr=3e-2", "optim.min_lr=3e-3",
               "optim.warmup_steps=50", "optim.weight_decay=0.0", "max_steps=1200", "generation.val_examples=100",
               "generation.max_new_tokens=160", "eval_metric=chrf", "generation.test=false"],
    },
}
# sft: a Llama-shaped decoder (RoPE, SwiGLU) of 4 x 256, one token per Chinese character. The same
# settings tune it from scratch and from a checkpoint of PRETRAIN_SFT (decoder-pretrained, whose shape
# comes with its weights).
SFT_MODEL = ["model.preset=llama-tiny", "model.d_model=256", "model.n_head=4", "model.n_kv_head=4", "model.d_ff=768",
             "model.n_layer=4", "model.max_seq_len=320"]
SFT_TRAIN = ["task=sft", "model.dropout=0.0", "data.seq_len=320", "data.packing=true", "batch_size=16", "optim.lr=1.5e-3",
             "optim.min_lr=1e-4", "optim.warmup_steps=100", "max_steps=2400", "generation.val_examples=80",
             "generation.max_new_tokens=80", "eval_metric=task_mean", "generation.test=false"]
RECIPES["sft"] = {"decoder-scratch": [*SFT_TRAIN[:1], *SFT_MODEL, *SFT_TRAIN[1:]],
                  "decoder-pretrained": SFT_TRAIN}  # + init_from=OUT/pretrain/model
# causal-LM pretraining of decoder-pretrained: People's Daily and the training reviews (no sentence a
# zh-task holds out), each text written twice on its line, so that the second half of a line can be
# predicted only by copying from the first: the decoder learns to copy out of its context (an
# induction circuit), which 转繁体 and 实体识别 need and which instruction tuning from scratch does not
# reach in its budget. Measured (docs/recipes.md): the circuit formed between 1,400 and 1,900 steps
# of 900 at 2e-3 then 1,000 at 1.5e-3; one run of 2,400 keeps the rate high until past that point.
# Instruction tuning completes what the pretraining lays down: from this run's checkpoints at 800, 1,200 and
# 1,600 steps, before its own loss fell, it learnt to copy all the same (one seed each, docs/benchmarks.md).
PRETRAIN_SFT = ["objective=clm", *SFT_MODEL, "model.dropout=0.0", "data.seq_len=320", "batch_size=16", "optim.lr=2e-3",
                "optim.min_lr=1e-3", "optim.warmup_steps=50", "max_steps=2400"]
BUILTIN = {"ner": "peoples-daily-ner", "sentiment": "reviews-zh", "s2t": "s2t", "sft": "zh-tasks"}
METRIC = {"ner": "f1", "sentiment": "accuracy", "s2t": "chrf", "sft": "chrf"}
# sft: the table's columns, (task, metric) of `duplex eval`'s metrics.json ({task}_{metric})
SFT_COLUMNS = (("情感判断", "accuracy"), ("转繁体", "chrf"), ("实体识别", "f1"), ("翻译", "chrf"))
SFT_SIZE = 8000  # conversations per task when --labels is all


def _cli(*args: str, log: Path, threads: int | None = None) -> None:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ duplex " + " ".join(args) + "\n")
        f.flush()
        res = subprocess.run([sys.executable, "-m", "duplexlm.cli", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        raise SystemExit(f"duplex {args[0]} failed (exit {res.returncode}); see {log}")


def _write_conll(path: Path, examples: list[Any]) -> None:
    path.write_text("".join("".join(f"{c} {t}\n" for c, t in zip(e.text, e.label)) + "\n" for e in examples),
                    encoding="utf-8")


def _write_csv(path: Path, examples: list[Any]) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["text", "label"])
    for e in examples:
        w.writerow([e.text, e.label])
    path.write_text(buf.getvalue(), encoding="utf-8")


def _prepare(task: str, out: Path, sizes: list[int | None], eval_per_task: int = 200
             ) -> tuple[dict[str, Any], dict[int | None, Any], Any, Any]:
    """The built-in task's splits as files (a training file per size, the first N of the seeded training
    split), and the text of the full training split for the tokenizer. ``s2t`` trains and scores on
    the built-in itself (its split is the loader's); its tokenizer text holds both scripts."""
    files = out / "data"
    files.mkdir(parents=True, exist_ok=True)
    if task == "sft":
        return _prepare_sft(files, sizes, eval_per_task)
    if task == "s2t":
        from duplexlm.data.gen_tasks import load_seq2seq_data

        pairs = load_seq2seq_data("s2t").splits
        (files / "train-text.txt").write_text("".join(f"{e.source_text}\n{e.target}\n" for e in pairs["train"]),
                                              encoding="utf-8")
        return pairs, {None: "s2t"}, "s2t", "s2t"
    data = load_task_data("tag" if task == "ner" else "classify", BUILTIN[task])
    splits = data.splits
    write = _write_conll if task == "ner" else _write_csv
    suffix = ".conll" if task == "ner" else ".csv"
    train_files = {}
    for n in sizes:
        path = files / f"train-{n or 'all'}{suffix}"
        write(path, splits["train"][:n] if n else splits["train"])
        train_files[n] = path
    val, test = files / f"validation{suffix}", files / f"test{suffix}"
    write(val, splits["validation"])
    write(test, splits["test"])
    corpus = files / "train-text.txt"
    corpus.write_text("".join(("".join(e.text) if task == "ner" else e.text) + "\n" for e in splits["train"]),
                      encoding="utf-8")
    return splits, train_files, val, test


def _prepare_sft(files: Path, sizes: list[int | None], eval_per_task: int
                 ) -> tuple[dict[str, Any], dict[int | None, Any], Any, Any]:
    """zh-tasks as JSONL: a training file per size (conversations per task), a validation file that
    takes the tasks in turn (so that the first N generated while training cover all four), the test
    split (200 per task, the same for every size: each split draws with its own RNG)."""
    from duplexlm.data.gen_tasks import ZH_TASKS, write_chats, zh_tasks

    train_files, splits = {}, {}
    for n in sizes:
        data = zh_tasks(seed=1234, train_per_task=n or SFT_SIZE, eval_per_task=eval_per_task)
        path = files / f"train-{n or 'all'}.jsonl"
        write_chats(path, data.splits["train"])
        train_files[n], splits[n] = path, data.splits["train"]
    by_task = {t: [e for e in data.splits["validation"] if e.task == t] for t in ZH_TASKS}
    validation = [e for group in zip(*by_task.values()) for e in group]
    val, test = files / "validation.jsonl", files / "test.jsonl"
    write_chats(val, validation)
    write_chats(test, data.splits["test"])
    (files / "train-text.txt").write_text(
        "".join(m["content"] + "\n" for e in splits[sizes[-1]] for m in e.messages), encoding="utf-8")
    return {"train": splits, "test": data.splits["test"]}, train_files, val, test


def _sft_baselines(train: list[Any], test: list[Any]) -> dict[str, dict[str, float]]:
    """The trivial systems' answers to the zh-tasks test conversations, scored per task as a model's
    are: the most frequent training answer of each task; the task's input copied; the character map
    counted from the training 转繁体 pairs; the longest-match dictionary of the entities the training
    实体识别 answers list. A system scores only the tasks it answers."""
    from collections import Counter

    from duplexlm.data.baselines import CharacterMap, EntityDictionary
    from duplexlm.data.gen_tasks import zh_task_input
    from duplexlm.scores.labels import extract_entities
    from duplexlm.scores.text import format_entities, parse_entities, score_generations

    answers: dict[str, Counter[str]] = {}
    for e in train:
        answers.setdefault(e.task, Counter())[e.target] += 1
    cmap = CharacterMap.from_pairs((zh_task_input(e), e.target) for e in train if e.task == "转繁体")
    entities = EntityDictionary.from_entities((typ, name) for e in train if e.task == "实体识别"
                                              for typ, name in parse_entities(e.target))

    def dictionary(text: str) -> str:
        chars = list(text)
        return format_entities((typ, "".join(chars[a:b])) for typ, a, b in extract_entities(entities.tag(chars)))

    systems = {"majority answer": lambda e: answers[e.task].most_common(1)[0][0],
               "copy the input": lambda e: zh_task_input(e) if e.task == "转繁体" else None,
               "character map": lambda e: cmap.convert(zh_task_input(e)) if e.task == "转繁体" else None,
               "dictionary": lambda e: dictionary(zh_task_input(e)) if e.task == "实体识别" else None}
    out: dict[str, dict[str, float]] = {}
    for name, answer in systems.items():
        scores: dict[str, float] = {}
        for task in answers:
            rows = [e for e in test if e.task == task]
            preds = [answer(e) for e in rows]
            if preds and None not in preds:
                scores.update({f"{task}_{k}": v for k, v in score_generations(task, preds, [e.target for e in rows]).items()})
        out[name] = scores
    return out


def _baselines(task: str, train: list[Any], test: list[Any], cmap: Any = None) -> dict[str, float]:
    """The counting baselines of ``task`` scored on ``test``: name → score (``cmap``: s2t's character map)."""
    if task == "s2t":
        from duplexlm.scores.text import chrf

        refs = [e.target for e in test]
        return {"copy the input": chrf([e.source_text for e in test], refs),
                "character map": chrf([cmap.convert(e.source_text) for e in test], refs)}
    return {"dictionary" if task == "ner" else "TF-IDF + LR": _baseline(task, train, test)}


def _disagreements(cmap: Any, generations: Path, out: Path) -> str:
    """Where the character map and the model answer differently: each sentence with both answers and
    the reference (``out``), and a line counting who is right."""
    rows = [json.loads(line) for line in generations.read_text(encoding="utf-8").splitlines()]
    differ = []
    for r in rows:
        mapped = cmap.convert(r["input"])
        if mapped != r["prediction"]:
            differ.append({"source": r["input"], "reference": r["reference"], "map": mapped, "model": r["prediction"],
                           "map_right": mapped == r["reference"], "model_right": r["prediction"] == r["reference"]})
    out.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in differ), encoding="utf-8")
    model_only = sum(d["model_right"] for d in differ)
    map_only = sum(d["map_right"] for d in differ)
    return (f"The map and the first seed's model answer {len(differ)} of {len(rows)} test sentences differently: "
            f"the model alone exact on {model_only}, the map alone on {map_only}, neither on "
            f"{len(differ) - model_only - map_only} (each in `disagreements.jsonl`).")


def _baseline(task: str, train: list[Any], test: list[Any]) -> float:
    if task == "ner":
        d = EntityDictionary.from_tagged((e.text, e.label) for e in train)
        return entity_metrics([list(e.label) for e in test], [d.tag(list(e.text)) for e in test])["f1"]
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    x = vec.fit_transform([e.text for e in train])
    clf = LogisticRegression(max_iter=2000, C=4.0).fit(x, [e.label for e in train])
    pred = clf.predict(vec.transform([e.text for e in test]))
    return float(sum(p == e.label for p, e in zip(pred, test)) / len(test))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=list(RECIPES), required=True)
    p.add_argument("--out", required=True, help="working directory: data files, runs, models, logs")
    p.add_argument("--labels", nargs="+", default=["all"], help="training sizes: numbers of examples, or all")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--systems", nargs="+", default=None, help="a subset of the task's recipes")
    p.add_argument("--epochs", type=float, default=None, help="epochs per run (default: the recipe's)")
    p.add_argument("--min-steps", type=int, default=0,
                   help="more epochs where a training set is small, so that each run takes at least this many "
                        "steps (the label curve: 300 sentences at 4 epochs are only 38 steps)")
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once, each with cores / jobs threads")
    p.add_argument("--retrain", action="store_true",
                   help="train every run again, even one OUT already holds with the same settings")
    p.add_argument("--smoke", action="store_true", help="tiny budgets: checks that the script runs")
    p.add_argument("--write", default="", help="markdown file to put the table in (e.g. docs/benchmarks.md)")
    args = p.parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    sizes = [None if s == "all" else int(s) for s in args.labels]
    systems = args.systems or list(RECIPES[args.task])
    for system in systems:
        base, _, steps = system.partition("@")
        if base not in RECIPES[args.task] or (steps and not (base == "decoder-pretrained" and steps.isdigit())):
            p.error(f"--systems {system}: expected one of {', '.join(RECIPES[args.task])}"
                    + (" or decoder-pretrained@STEPS (a checkpoint of its pretraining)" if args.task == "sft" else ""))
    if args.task == "s2t" and sizes != [None]:
        p.error("--task s2t trains on all its pairs: --labels all")
    generative = args.task in ("s2t", "sft")
    smoke: list[str] = []  # settings after the recipe's
    if args.smoke:
        sizes, args.seeds, args.epochs, args.eval_every = [None if args.task == "s2t" else 200], [1], 0.5, 10
        smoke = ["max_steps=20", "generation.val_examples=8"] if generative else []
    splits, train_files, val, test = _prepare(args.task, out, sizes, 10 if args.smoke else 200)
    log = out / "commands.log"
    tok = out / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        kind = (["--kind", "bpe", "--cjk-chars", "--num-sentinels", "0"] if generative
                else ["--kind", "wordpiece"])
        _cli("tokenizer", "train", str(out / "data" / "train-text.txt"), *kind, "--vocab-size", "8000",
             "--out", str(tok), "--quiet", log=log)
    metric = METRIC[args.task]
    notes: list[str] = []
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    rows: list[dict[str, Any]] = []
    if args.task == "sft":
        rows = _run_sft(args, out, sizes, systems, splits, train_files, val, test, tok, smoke, threads)
        total = (time.perf_counter() - start) / 60
        table = _sft_table(args, rows, total)
        print(table)
        (out / "quality.md").write_text(table, encoding="utf-8")
        if args.write:
            write_section(Path(args.write), table.splitlines()[0], table)
        return 0
    for n in sizes:
        train = splits["train"][:n] if n else splits["train"]
        cmap = None
        if args.task == "s2t":  # counted from the training pairs; the baseline and the disagreements use it
            from duplexlm.data.baselines import CharacterMap

            cmap = CharacterMap.from_pairs((e.source_text, e.target) for e in train)
        for name, score in _baselines(args.task, train, splits["test"], cmap).items():
            rows.append({"system": name, "labels": len(train), "scores": [score], "minutes": []})
            print(f"{len(train)} labels, {name}: {score:.4f}", flush=True)
        for system in systems:
            row = {"system": system, "labels": len(train), "scores": [], "minutes": [], "steps": []}
            def one(seed: int, n: int | None = n, system: str = system, train: list[Any] = train) -> tuple[float, float, int]:
                run = out / f"{n or 'all'}" / f"{system}-s{seed}"
                files = ([f"data.train={train_files[n]}"] if args.task == "s2t" else
                         [f"data.train={train_files[n]}", f"data.validation={val}", f"data.test={test}"])
                scores, minutes, steps = _train_and_score(
                    args, run, [*RECIPES[args.task][system], f"tokenizer={tok}", *files, f"seed={seed}",
                                *_epochs(args, system, len(train)), *smoke],
                    test, threads, ["--limit", "40"] if args.smoke and args.task == "s2t" else [])
                print(f"{len(train)} labels, {system} seed {seed}: {metric} {scores[metric]:.4f} in {minutes:.1f} min "
                      f"({steps} steps)", flush=True)
                return scores[metric], minutes, steps

            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                for score, minutes, steps in pool.map(one, args.seeds):
                    row["scores"].append(score)
                    row["minutes"].append(minutes)
                    row["steps"].append(steps)
            rows.append(row)
            if args.task == "s2t":
                first = out / "all" / f"{system}-s{args.seeds[0]}" / "eval" / "generations.jsonl"
                notes.append(_disagreements(cmap, first, out / "disagreements.jsonl"))
    total = (time.perf_counter() - start) / 60
    table = _table(args, rows, metric, total, notes)
    print(table)
    (out / "quality.md").write_text(table, encoding="utf-8")
    if args.write:
        write_section(Path(args.write), table.splitlines()[0], table)
    return 0


READ_BACK: list[Path] = []  # the runs of this invocation read from an earlier one's bench.json


def _epochs(args: argparse.Namespace, system: str, n: int) -> list[str]:
    """The ``max_epochs`` override of one run: ``--epochs`` or the recipe's, raised so that ``n``
    examples give at least ``--min-steps`` steps."""
    if args.task == "s2t":
        return []
    recipe = RECIPES[args.task][system]
    epochs = args.epochs or next((float(o.split("=")[1]) for o in recipe if o.startswith("max_epochs=")), None)
    batch = next((int(o.split("=")[1]) for o in recipe if o.startswith("batch_size=")), 32)
    if epochs is None or not (args.epochs or args.min_steps):
        return []
    if args.min_steps:
        epochs = max(epochs, math.ceil(args.min_steps * batch / n * 10) / 10)
    return [f"max_epochs={epochs:g}"]


def _minutes_in_all(total: float) -> str:
    """The wall time of this invocation, and what it leaves out when runs were read back."""
    if not READ_BACK:
        return f"{total:.1f} minutes in all"
    return (f"{total:.1f} minutes in all for this invocation, which read {len(READ_BACK)} finished run(s) back from "
            "earlier ones (their training minutes are in their rows, not in this total)")


def _effective(settings: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` settings as the config reads them: a later one overrides an earlier (a recipe's
    setting moved into the recipe, or given again after it, is the same run)."""
    return dict(s.split("=", 1) for s in settings)


def _train_and_score(args: argparse.Namespace, run: Path, settings: list[str], test: Path, threads: int | None,
                     eval_extra: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, Any], float, int]:
    """``duplex finetune SETTINGS out_dir=RUN``, then ``duplex eval`` of its model on TEST: (the eval's
    metrics.json, minutes of fine-tuning, steps). What a run measured is kept in RUN/bench.json; a later
    invocation with the same OUT and the same effective settings reads it back instead of training again (unless
    ``--retrain``), so that seeds can be added to a table one session at a time."""
    record = run / "bench.json"
    finetune = [*settings, f"out_dir={run}", f"eval_every={args.eval_every}", f"save_every={args.eval_every}",
                "progress=false"]
    if record.is_file() and not args.retrain:
        kept = json.loads(record.read_text(encoding="utf-8"))
        if _effective(kept.get("finetune", [])) == _effective(finetune) and kept.get("eval") == list(eval_extra) and kept.get("test", str(test)) == str(test):
            print(f"{run}: finished before with the same settings, read from {record.name}", flush=True)
            READ_BACK.append(run)
            return kept["scores"], kept["minutes"], kept["steps"]
    run.parent.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)  # this script's own files in the run directory, which finetune
    shutil.rmtree(run / "eval", ignore_errors=True)  # --overwrite leaves alone as a user's
    log = run.parent / f"{run.name}.log"
    t0 = time.perf_counter()
    _cli("finetune", *finetune, "--overwrite", log=log, threads=threads)
    minutes = (time.perf_counter() - t0) / 60
    _cli("eval", "--model", str(run / "model"), "--data", str(test), "--out", str(run / "eval"), *eval_extra,
         "--overwrite", log=log, threads=threads)
    scores = json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))
    steps = max(json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"finetune": finetune, "eval": list(eval_extra), "test": str(test), "scores": scores,
                               "minutes": minutes, "steps": steps}, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, record)
    return scores, minutes, steps


def _run_sft(args: argparse.Namespace, out: Path, sizes: list[int | None], systems: list[str], splits: dict[str, Any],
             train_files: dict[int | None, Path], val: Path, test: Path, tok: Path, smoke: list[str],
             threads: int | None) -> list[dict[str, Any]]:
    """The baselines' and each system's per-task scores (``{task}_{metric}``) for every size."""
    rows: list[dict[str, Any]] = []
    for n in sizes:
        train = splits["train"][n]
        per_task = len(train) // 4
        for name, scores in _sft_baselines(train, splits["test"]).items():
            rows.append({"system": name, "labels": per_task, "scores": [scores], "minutes": [], "steps": []})
            print(f"{per_task} per task, {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()
                                                                 if not k.endswith(("bleu", "format"))), flush=True)
        for system in systems:
            init = []
            if system.startswith("decoder-pretrained"):
                init = [f"init_from={_pretrained_start(system, _pretrain_decoder(out, tok, smoke))}"]
            row: dict[str, Any] = {"system": system, "labels": per_task, "scores": [], "minutes": [], "steps": []}
            for seed in args.seeds:
                run = out / f"{n or 'all'}" / f"{system}-s{seed}"
                scores, minutes, steps = _train_and_score(
                    args, run, [*RECIPES["sft"][system.split("@")[0]], *init, f"tokenizer={tok}", f"data.train={train_files[n]}",
                                f"data.validation={val}", f"data.test={test}", f"seed={seed}", *smoke], test, threads)
                row["scores"].append(scores)
                row["minutes"].append(minutes)
                row["steps"].append(steps)
                print(f"{per_task} per task, {system} seed {seed} ({minutes:.1f} min, {steps} steps): "
                      + ", ".join(f"{t} {m} {scores.get(f'{t}_{m}', float('nan')):.4f}" for t, m in SFT_COLUMNS),
                      flush=True)
            rows.append(row)
    return rows


def _pretrained_start(system: str, model: Path) -> Path:
    """The start of ``decoder-pretrained`` (the pretraining's model) or of ``decoder-pretrained@STEPS`` (its
    checkpoint at STEPS, a model directory too)."""
    if "@" not in system:
        return model
    step = int(system.split("@")[1])
    ckpt = model.parent / "checkpoints" / f"step_{step:08d}"
    if not (ckpt / "config.json").is_file():
        kept = sorted(int(c.name[5:]) for c in (model.parent / "checkpoints").glob("step_*") if c.is_dir())
        raise SystemExit(f"{system}: the decoder pretraining in {model.parent} kept no checkpoint at step {step} "
                         f"(kept: {', '.join(map(str, kept)) or 'none'}; it saves every 400 steps)")
    return ckpt


def _pretrain_decoder(out: Path, tok: Path, smoke: list[str]) -> Path:
    """decoder-pretrained's checkpoint (made once, kept in OUT/pretrain): the corpus written by the
    demo's ``write_corpus`` (People's Daily less the held-out task sentences, and the training reviews),
    each text twice on its line, turned into shards with the sft tokenizer, then PRETRAIN_SFT."""
    from duplexlm.data.tasks import load_task_data
    from duplexlm.demo.common import held_out_task_sentences, write_corpus

    root = out / "pretrain"
    model = root / "run" / "model"
    if (model / "config.json").is_file():
        return model
    root.mkdir(parents=True, exist_ok=True)
    reviews = load_task_data("classify", "reviews-zh", seed=1234).splits["train"]
    texts, _ = write_corpus(root, reviews[:500] if smoke else reviews, max_texts=500 if smoke else None,
                            held_out=held_out_task_sentences(), unit="paragraphs")
    twice = root / "corpus-twice.txt"
    twice.write_text("".join(f"{t} {t}\n" for t in texts), encoding="utf-8")
    log = root / "pretrain.log"
    _cli("data", "prepare", str(twice), "--tokenizer", str(tok), "--out", str(root / "data"), "--quiet", "--overwrite",
         log=log)
    t0 = time.perf_counter()
    _cli("pretrain", *PRETRAIN_SFT, f"data.path={root / 'data'}", f"tokenizer={tok}", f"out_dir={root / 'run'}",
         "eval_every=400", "save_every=400", "keep_last=6", "log_every=50", "progress=false",
         *(["max_steps=20", "eval_every=10", "save_every=20", "log_every=5"] if smoke else []), "--overwrite", log=log)
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    summary = {"tokens": max(r.get("tokens", 0) for r in rows), "steps": max(r["step"] for r in rows),
               "minutes": round((time.perf_counter() - t0) / 60, 1),
               "val_loss": [r["val_loss"] for r in rows if "val_loss" in r][-1]}
    (root / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    print(f"decoder pretraining: {summary['tokens']:,} tokens, {summary['steps']} steps in {summary['minutes']} minutes",
          flush=True)
    return model


def _sft_table(args: argparse.Namespace, rows: list[dict[str, Any]], total: float) -> str:
    """Per task: the score (mean [min–max] over seeds) and the answers out of format (of 200)."""
    cmd = "python benchmarks/bench_quality.py " + " ".join(sys.argv[1:])
    lines = ["### Quality: instruction tuning a decoder on `zh-tasks` (CPU)", "",
             f"Machine: {machine(torch.device('cpu'))}; {_minutes_in_all(total)}. The built-in's test split ("
             f"{10 if args.smoke else 200} conversations per task), answered greedily and scored by `duplex eval`; seeds "
             f"{', '.join(map(str, args.seeds))}: mean [min–max]. Format: the test answers not written in their "
             f"task's format (`answer_in_format`), per task in the columns' order, the most over the seeds. "
             f"Command: `{cmd.strip()}`.", "",
             "| per task | system | " + " | ".join(f"{t} {'chrF' if m == 'chrf' else m}" for t, m in SFT_COLUMNS)
             + " | out of format | minutes per run | steps |", "|---" * (len(SFT_COLUMNS) + 5) + "|"]
    for r in rows:
        cells = []
        for t, m in SFT_COLUMNS:
            vals = [sc[f"{t}_{m}"] for sc in r["scores"] if f"{t}_{m}" in sc]
            fmt = "{:.2f}" if m == "chrf" else "{:.3f}"
            cells.append("—" if not vals else fmt.format(statistics.mean(vals)) + (
                f" [{fmt.format(min(vals))}–{fmt.format(max(vals))}]" if len(vals) > 1 else ""))
        n = 10 if args.smoke else 200
        wrong = [f"{max(round((1 - sc[f'{t}_format']) * n) for sc in r['scores'])}" if f"{t}_format" in r["scores"][0]
                 else "—" for t, _ in SFT_COLUMNS]
        mins = f"{statistics.mean(r['minutes']):.1f}" if r["minutes"] else "—"
        steps = f"{statistics.mean(r['steps']):.0f}" if r["steps"] else "—"
        lines.append(f"| {r['labels']:,} | {r['system']} | " + " | ".join(cells) + f" | {' / '.join(wrong)} | {mins} | {steps} |")
    recipe = "; ".join(f"{name}: `{' '.join(o)}`" for name, o in RECIPES["sft"].items())
    pre = Path(args.out) / "pretrain" / "summary.json"
    if pre.is_file():
        info = json.loads(pre.read_text(encoding="utf-8"))
        lines += ["", f"decoder-pretrained's pretraining (not in its minutes): {info['tokens']:,} tokens, {info['steps']} "
                      f"steps, {info['minutes']} minutes, validation loss {info['val_loss']:.3f}; `duplex pretrain "
                      f"{' '.join(PRETRAIN_SFT)}` on People's Daily and the training reviews, each text twice on its line."]
        points = sorted({int(r["system"].split("@")[1]) for r in rows if "@" in r["system"]})
        if points:
            logged = [json.loads(line) for line in (pre.parent / "run" / "metrics.jsonl").read_text().splitlines()]
            at = {r["step"]: r for r in logged if "val_loss" in r}
            lines[-1] += " decoder-pretrained@STEPS starts from that run's checkpoint at STEPS: " + "; ".join(
                f"{s} steps, {s * info['tokens'] // info['steps']:,} tokens, validation loss {at[s]['val_loss']:.3f}"
                for s in points) + " (the learning rate still on its way from 2e-3 to 1e-3)."
    lines += ["", f"Recipes (`duplex finetune` settings, plus the tokenizer and data files): {recipe}.", ""]
    return "\n".join(lines)


def _table(args: argparse.Namespace, rows: list[dict[str, Any]], metric: str, total: float, notes: list[str]) -> str:
    cmd = "python benchmarks/bench_quality.py " + " ".join(sys.argv[1:])
    title = {"ner": "NER on `peoples-daily-ner`", "sentiment": "sentiment on `reviews-zh`",
             "s2t": "Simplified → Traditional on `s2t`", "sft": ""}[args.task]
    lines = [f"### Quality: {title} (CPU)", "",
             f"Machine: {machine(torch.device('cpu'))}; {args.jobs} run(s) at a time; {_minutes_in_all(total)}. Test split of the built-in "
             f"(split seed 1234), scored by `duplex eval`; validation picks each run's checkpoint. Seeds "
             f"{', '.join(map(str, args.seeds))}: mean [min–max]. Command: `{cmd.strip()}`.", "",
             f"| labels | system | test {metric} | minutes per run | steps |", "|---|---|---|---|---|"]
    for r in rows:
        s = r["scores"]
        score = f"{statistics.mean(s):.4f}" + (f" [{min(s):.4f}–{max(s):.4f}]" if len(s) > 1 else "")
        mins = f"{statistics.mean(r['minutes']):.1f}" if r["minutes"] else "—"
        steps = f"{statistics.mean(r['steps']):.0f}" if r.get("steps") else "—"
        lines.append(f"| {r['labels']:,} | {r['system']} | {score} | {mins} | {steps} |")
    recipe = "; ".join(f"{name}: `{' '.join(o)}`" for name, o in RECIPES[args.task].items())
    lines += ["", *(f"{n}\n" for n in notes),
              f"Recipes (`duplex finetune` settings, plus the tokenizer and data files): {recipe}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
