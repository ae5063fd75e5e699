"""``duplex eval``: score a fine-tuned model on a labelled split and write a report a person can read.

``out`` receives ``metrics.json`` (every score, per class or entity type too), ``predictions.jsonl``
(each example with its label and the prediction), ``report.md`` and, for classification, a
confusion-matrix PNG. The task follows from the model (:func:`duplexlm.infer.predict.task_of`); the
data is a built-in task name or a file, as for ``duplex finetune``.

>>> metrics = evaluate_model("runs/sentiment/model", "reviews-zh", out="runs/sentiment/eval")  # doctest: +SKIP
>>> metrics["accuracy"]  # doctest: +SKIP
0.83
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..fileutil import atomic_directory, check_output_dir, write_json


def evaluate_model(model_dir: str | Path, data: str, *, split: str = "test", out: str | Path | None = None,
                   text_field: str = "text", label_field: str = "label", batch_size: int = 32,
                   overwrite: bool = False, seed: int = 1234) -> dict[str, Any]:
    """Score the model in ``model_dir`` on ``split`` of ``data``; with ``out``, write the report there."""
    from ..data.tasks import load_task_data
    from ..infer.predict import classify, tag, task_of
    from ..io import load
    from .metrics import classification_metrics, entity_metrics, regression_metrics

    if out is not None:
        check_output_dir(out, "eval", overwrite=overwrite, flag="--out", inputs=[model_dir])
    model, tokenizer = load(model_dir)
    if tokenizer is None:
        raise DataError(f"--model: {model_dir} has no tokenizer.json; evaluate a directory written by "
                        "`duplex finetune`")
    task = task_of(model)
    loaded = load_task_data(task, data, text_field=text_field, label_field=label_field, seed=seed)
    part = split if split in loaded.splits else "train"  # a single file is its own split
    if split not in loaded.splits and len(loaded.splits) > 1:
        raise DataError(f"--split: {data} has splits {sorted(loaded.splits)}, found {split!r}")
    examples = loaded.splits[part]
    names = model.config.label_names
    if task != "regress":
        known = set(names)
        for e in examples:
            bad = [lab for lab in ([e.label] if task == "classify" else e.label) if lab not in known]
            if bad:
                raise DataError(f"{e.source}: label {bad[0]!r} is not one the model knows ({', '.join(names)})")
    rows: list[dict[str, Any]] = []
    if task == "tag":
        preds = tag(model, tokenizer, [list(e.text) for e in examples], batch_size=batch_size)
        metrics = entity_metrics([list(e.label) for e in examples], [p["tags"] for p in preds])
        for e, p in zip(examples, preds):
            rows.append({"source": e.source, "text": " ".join(e.text), "gold": list(e.label), "predicted": p["tags"],
                         "entities": p["entities"]})
    else:
        preds = classify(model, tokenizer, [e.text for e in examples], batch_size=batch_size)
        if task == "classify":
            index = {n: i for i, n in enumerate(names)}
            metrics = classification_metrics([index[e.label] for e in examples],
                                             [index[p["label"]] for p in preds], names)
        else:
            metrics = regression_metrics([list(e.label) for e in examples], [p["values"] for p in preds])
        for e, p in zip(examples, preds):
            rows.append({"source": e.source, "text": e.text, "gold": e.label, **p})
    metrics = {"task": task, "data": data, "split": part, "examples": len(examples), **metrics}
    if out is not None:
        _write_report(Path(out), metrics, rows, names, model_dir)
    return metrics


def _write_report(out: Path, metrics: dict[str, Any], rows: list[dict[str, Any]], names: list[str] | None,
                  model_dir: str | Path) -> None:
    with atomic_directory(out) as tmp:
        write_json(tmp / "metrics.json", metrics)
        (tmp / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                               encoding="utf-8")
        lines = [f"# Evaluation of `{model_dir}`", "",
                 f"{metrics['task']} on `{metrics['data']}` ({metrics['split']}, {metrics['examples']} examples)", ""]
        scalars = {k: v for k, v in metrics.items() if isinstance(v, float)}
        lines += ["| metric | value |", "|---|---|", *(f"| {k} | {v:.4f} |" for k, v in scalars.items()), ""]
        detail = metrics.get("per_class") or metrics.get("per_type")
        if detail:
            lines += ["| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
            lines += [f"| {k} | {d['precision']:.4f} | {d['recall']:.4f} | {d['f1']:.4f} | {d['support']} |"
                      for k, d in detail.items()]
            lines.append("")
        if metrics["task"] == "classify" and names:
            from .plots import plot_confusion_matrix

            plot_confusion_matrix(metrics["confusion_matrix"], names, tmp / "confusion_matrix.png")
            lines += ["![confusion matrix](confusion_matrix.png)", ""]
        lines += ["Every prediction is in `predictions.jsonl`.", ""]
        (tmp / "report.md").write_text("\n".join(lines), encoding="utf-8")


__all__ = ["evaluate_model"]
