"""Quality against the counting baselines, on the project's own splits (split seed 1234), in one run.

    python benchmarks/bench_quality.py --task ner --out runs/quality-ner            # all sentences, 3 seeds
    python benchmarks/bench_quality.py --task ner --labels 300 1000 3000 all --seeds 1 --out runs/q-curve
    python benchmarks/bench_quality.py --task sentiment --out runs/quality-sentiment
    python benchmarks/bench_quality.py --task s2t --out runs/quality-s2t            # T5 from scratch, 3 seeds
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
disagree are written to ``OUT/disagreements.jsonl`` and counted in the table. Validation picks the checkpoint (the loop's
best on the validation metric); the test split only reports. ``--write`` puts the table in
docs/benchmarks.md with the machine and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
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
BUILTIN = {"ner": "peoples-daily-ner", "sentiment": "reviews-zh", "s2t": "s2t"}
METRIC = {"ner": "f1", "sentiment": "accuracy", "s2t": "chrf"}


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


def _prepare(task: str, out: Path, sizes: list[int | None]) -> tuple[dict[str, Any], dict[int | None, Any], Any, Any]:
    """The built-in task's splits as files (a training file per size, the first N of the seeded training
    split), and the text of the full training split for the tokenizer. ``s2t`` trains and scores on
    the built-in itself (its split is the loader's); its tokenizer text holds both scripts."""
    files = out / "data"
    files.mkdir(parents=True, exist_ok=True)
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
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once, each with cores / jobs threads")
    p.add_argument("--smoke", action="store_true", help="tiny budgets: checks that the script runs")
    p.add_argument("--write", default="", help="markdown file to put the table in (e.g. docs/benchmarks.md)")
    args = p.parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    sizes = [None if s == "all" else int(s) for s in args.labels]
    systems = args.systems or list(RECIPES[args.task])
    if args.task == "s2t" and sizes != [None]:
        p.error("--task s2t trains on all its pairs: --labels all")
    smoke: list[str] = []  # settings after the recipe's
    if args.smoke:
        sizes, args.seeds, args.epochs, args.eval_every = [None if args.task == "s2t" else 200], [1], 0.5, 10
        smoke = ["max_steps=20", "generation.val_examples=8"] if args.task == "s2t" else []
    splits, train_files, val, test = _prepare(args.task, out, sizes)
    log = out / "commands.log"
    tok = out / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        kind = (["--kind", "bpe", "--cjk-chars", "--num-sentinels", "0"] if args.task == "s2t"
                else ["--kind", "wordpiece"])
        _cli("tokenizer", "train", str(out / "data" / "train-text.txt"), *kind, "--vocab-size", "8000",
             "--out", str(tok), "--quiet", log=log)
    metric = METRIC[args.task]
    notes: list[str] = []
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    rows: list[dict[str, Any]] = []
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
                run.parent.mkdir(parents=True, exist_ok=True)
                log_one = run.parent / f"{system}-s{seed}.log"
                t0 = time.perf_counter()
                files = ([f"data.train={train_files[n]}"] if args.task == "s2t" else
                         [f"data.train={train_files[n]}", f"data.validation={val}", f"data.test={test}"])
                _cli("finetune", *RECIPES[args.task][system], f"tokenizer={tok}", *files, f"seed={seed}", f"out_dir={run}",
                     *([f"max_epochs={args.epochs}"] if args.epochs and args.task != "s2t" else []), *smoke, f"eval_every={args.eval_every}",
                     f"save_every={args.eval_every}", "progress=false", "--overwrite", log=log_one, threads=threads)
                minutes = (time.perf_counter() - t0) / 60
                _cli("eval", "--model", str(run / "model"), "--data", str(test), "--out", str(run / "eval"),
                     *(["--limit", "40"] if args.smoke and args.task == "s2t" else []), "--overwrite", log=log_one,
                     threads=threads)
                score = json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))[metric]
                steps = max(json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines())
                print(f"{len(train)} labels, {system} seed {seed}: {metric} {score:.4f} in {minutes:.1f} min "
                      f"({steps} steps)", flush=True)
                return score, minutes, steps

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


def _table(args: argparse.Namespace, rows: list[dict[str, Any]], metric: str, total: float, notes: list[str]) -> str:
    cmd = "python benchmarks/bench_quality.py " + " ".join(sys.argv[1:])
    title = {"ner": "NER on `peoples-daily-ner`", "sentiment": "sentiment on `reviews-zh`",
             "s2t": "Simplified → Traditional on `s2t`"}[args.task]
    lines = [f"### Quality: {title} (CPU)", "",
             f"Machine: {machine(torch.device('cpu'))}; {args.jobs} run(s) at a time; {total:.1f} minutes in all. Test split of the built-in "
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
