"""Preference tuning after instruction tuning, against the model it starts from, in one run.

    python benchmarks/bench_preference.py --init-from runs/q-sft/all/decoder-pretrained-s1/model --out runs/q-dpo
    python benchmarks/bench_preference.py --init-from DIR --out /tmp/qd --smoke     # tiny: checks it runs

The starting model is an instruction-tuned decoder (``bench_quality.py --task sft`` leaves one in
``OUT/all/decoder-pretrained-s<seed>/model``). Each system tunes it on the built-in ``zh-prefs`` with
``duplex finetune task=dpo`` and the recipe below; then:

- the preference accuracy (DPO's implicit reward: the chosen answer's log-ratio to the starting model
  grew more than the rejected one's) and the ranking accuracy (the tuned model finds the chosen answer
  more likely) on zh-prefs' test pairs, from the run's ``test_metrics.json``;
- every zh-task's score on zh-tasks' test split (the same 200 prompts a task as ``--task sft``'s
  table; 情感判断, 转繁体 and 实体识别 are zh-prefs' test prompts with their chosen answers), by
  ``duplex eval``.

The starting model is scored the same way in the same run (its ranking accuracy with
:func:`duplexlm.eval.preference.score_preferences`): the table shows what preference tuning changed.
Validation (zh-prefs' validation pairs) picks each run's checkpoint; the test splits only report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import machine, write_section
from bench_quality import _cli, _train_and_score

# DPO with RPO's NLL term (objective_args.sft_weight) from the instruction-tuned decoder: β = 0.5 keeps
# the policy near the model it starts from; the NLL term keeps the chosen answers likely. Measured on
# the copy-pretrained decoder of docs/recipes.md (seed 1): DPO alone at β = 0.1 lowered 实体识别's F1
# by 4.6 points and 转繁体's chrF by 2.5 (both answers of a pair grow less likely, and the greedy
# answers drift); see docs/recipes.md "Preference tuning".
RECIPES: dict[str, list[str]] = {
    "dpo": ["task=dpo", "data.train=zh-prefs", "data.seq_len=320", "batch_size=8", "optim.lr=2e-5", "optim.min_lr=2e-6",
            "optim.warmup_steps=20", "max_steps=200", "objective_args.beta=0.5", "objective_args.sft_weight=1.0",
            "model.dropout=0.0", "generation.test=false"],
}
COLUMNS = (("情感判断", "accuracy"), ("转繁体", "chrf"), ("实体识别", "f1"), ("翻译", "chrf"))


def _start_scores(init: Path, out: Path, smoke: bool) -> dict[str, float]:
    """The starting model: zh-tasks' test scores (``duplex eval``) and its ranking accuracy on zh-prefs' test."""
    from duplexlm.data.preference import zh_prefs
    from duplexlm.eval.preference import score_preferences
    from duplexlm.io import load

    done = out / "start" / "scores.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    done.parent.mkdir(parents=True, exist_ok=True)
    log = out / "start.log"
    _cli("eval", "--model", str(init), "--data", "zh-tasks", "--split", "test", "--out", str(out / "start" / "eval"),
         *(["--limit", "12"] if smoke else []), "--overwrite", log=log)
    scores = json.loads((out / "start" / "eval" / "metrics.json").read_text(encoding="utf-8"))
    model, tok = load(init)
    pairs = zh_prefs().splits["test"][: 12 if smoke else None]
    scores.update({f"test_{k}": v for k, v in score_preferences(model, tok, pairs).items()})
    done.write_text(json.dumps(scores, ensure_ascii=False), encoding="utf-8")
    return scores


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init-from", required=True, help="the instruction-tuned decoder to start from (a model directory)")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--retrain", action="store_true", help="train every run again, even one OUT already holds")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--write", default="", help="markdown file to put the table in (e.g. docs/benchmarks.md)")
    args = p.parse_args()
    start = time.perf_counter()
    out, init = Path(args.out), Path(args.init_from)
    smoke = ["max_steps=4", "data.seq_len=256"] if args.smoke else []
    if args.smoke:
        args.seeds, args.eval_every = [1], 2
    base = _start_scores(init, out, args.smoke)
    rows = [{"system": "start (instruction-tuned)", "scores": [base], "minutes": []}]
    for system, recipe in RECIPES.items():
        row: dict[str, Any] = {"system": system, "scores": [], "minutes": []}
        for seed in args.seeds:
            run = out / f"{system}-s{seed}"
            scores, minutes, _ = _train_and_score(args, run, [*recipe, f"init_from={init}", f"seed={seed}", *smoke],
                                                  "zh-tasks", None, ["--split", "test",
                                                                     *(["--limit", "12"] if args.smoke else [])])
            test = json.loads((run / "test_metrics.json").read_text(encoding="utf-8"))  # zh-prefs' test pairs
            scores.update({f"test_{k}": v for k, v in test.items() if isinstance(v, (int, float))})
            row["scores"].append(scores)
            row["minutes"].append(minutes)
            print(f"{system} seed {seed} ({minutes:.1f} min): preference accuracy {scores['test_preference_accuracy']:.3f}, "
                  + ", ".join(f"{t} {scores.get(f'{t}_{m}', float('nan')):.4f}" for t, m in COLUMNS), flush=True)
        rows.append(row)
    table = _table(args, rows, base, (time.perf_counter() - start) / 60)
    print(table)
    (out / "quality.md").write_text(table, encoding="utf-8")
    if args.write:
        write_section(Path(args.write), table.splitlines()[0], table)
    return 0


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "—"
    return fmt.format(statistics.mean(values)) + (f" [{fmt.format(min(values))}–{fmt.format(max(values))}]"
                                                   if len(values) > 1 else "")


def _table(args: argparse.Namespace, rows: list[dict[str, Any]], base: dict[str, float], total: float) -> str:
    cmd = "python benchmarks/bench_preference.py " + " ".join(sys.argv[1:])
    lines = ["### Quality: preference tuning (DPO) after instruction tuning (CPU)", "",
             f"Machine: {machine(torch.device('cpu'))}; {total:.1f} minutes in all. Start: `{args.init_from}`. "
             f"Preference and ranking accuracy on zh-prefs' test pairs; each zh-task on zh-tasks' test split (200 "
             f"prompts a task), answered greedily and scored by `duplex eval`; seeds {', '.join(map(str, args.seeds))}: "
             f"mean [min–max]; Δ: the largest drop of a zh-task score against the start (points: accuracy and F1 "
             f"× 100, chrF as it is). Command: `{cmd.strip()}`.", "",
             "| system | preference accuracy | ranking accuracy | " + " | ".join(
                 f"{t} {'chrF' if m == 'chrf' else m}" for t, m in COLUMNS) + " | largest drop | minutes per run |",
             "|---" * (len(COLUMNS) + 5) + "|"]
    for r in rows:
        pref = _cell([s["test_preference_accuracy"] for s in r["scores"] if "test_preference_accuracy" in s], "{:.3f}")
        rank = _cell([s["test_ranking_accuracy"] for s in r["scores"] if "test_ranking_accuracy" in s], "{:.3f}")
        cells = [_cell([s[f"{t}_{m}"] for s in r["scores"] if f"{t}_{m}" in s], "{:.2f}" if m == "chrf" else "{:.3f}")
                 for t, m in COLUMNS]
        scale = {"accuracy": 100, "f1": 100, "chrf": 1}
        drops = [max((base[f"{t}_{m}"] - s[f"{t}_{m}"]) * scale[m] for t, m in COLUMNS[:3]) for s in r["scores"]
                 ] if r["minutes"] else []
        drop = _cell(drops, "{:.1f}")
        mins = f"{statistics.mean(r['minutes']):.1f}" if r["minutes"] else "—"
        lines.append(f"| {r['system']} | {pref} | {rank} | " + " | ".join(cells) + f" | {drop} | {mins} |")
    recipe = "; ".join(f"{name}: `{' '.join(o)}`" for name, o in RECIPES.items())
    lines += ["", f"Recipes (`duplex finetune` settings, plus `init_from` and the seed): {recipe}. The largest drop "
                  "is over 情感判断, 转繁体 and 实体识别 (zh-prefs' tasks); 翻译 is not in zh-prefs.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
