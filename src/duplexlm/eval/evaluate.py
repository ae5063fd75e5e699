"""``duplex eval``: score a model and write a report a person can read.

A language model (a decoder or one-directional RNN with an ``lm`` head, an encoder with an ``mlm``
head, a T5) is scored on text, token shards or a built-in corpus: perplexity and bits per byte, or a
masked-token / span-corruption perplexity (:mod:`duplexlm.eval.lm`); ``out`` receives ``metrics.json``
and ``report.md``.

A fine-tuned model is scored on a labelled split: ``out`` receives ``metrics.json`` (every score,
per class or entity type too), ``predictions.jsonl`` (each example with its label and the
prediction), ``report.md`` and, for classification, a confusion-matrix PNG. The task follows from
the model (:func:`duplexlm.infer.predict.task_of`); the data is a built-in task name or a file, as
for ``duplex finetune``. A tagger reads every sentence whole, one longer than its context in
overlapping windows (:func:`duplexlm.infer.predict.tag`): every gold entity is scored.

>>> metrics = evaluate_model("runs/sentiment/model", "reviews-zh", out="runs/sentiment/eval")  # doctest: +SKIP
>>> metrics["accuracy"]  # doctest: +SKIP
0.83
>>> evaluate_model("runs/gpt/model", "peoples-daily")["bits_per_byte"]  # doctest: +SKIP
1.52
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..fileutil import atomic_directory, check_output_dir, write_json


def generative_kind(data: str) -> str | None:
    """``"sft"`` for conversations, ``"seq2seq"`` for pairs, ``None`` for anything else: a built-in's
    name, or a JSONL file judged by its first record's fields."""
    from ..data.gen_tasks import BUILTIN_SEQ2SEQ, BUILTIN_SFT

    if data in BUILTIN_SFT:
        return "sft"
    if data in BUILTIN_SEQ2SEQ:
        return "seq2seq"
    path = Path(data)
    if path.suffix.lower() not in (".jsonl", ".ndjson") or not path.is_file():
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return None
                if isinstance(first, dict) and ("messages" in first or "output" in first):
                    return "sft"
                if isinstance(first, dict) and "source" in first and "target" in first:
                    return "seq2seq"
                return None
    return None


def evaluate_generation(model: Any, tokenizer: Any, data: str, kind: str, *, model_dir: str | Path, split: str = "test",
                        out: str | Path | None = None, seed: int = 1234, batch_size: int = 16,
                        max_new_tokens: int | None = None, num_beams: int = 1, limit: int = 0) -> dict[str, Any]:
    """Answer every example of ``split`` by generation and score the text per task
    (:func:`duplexlm.eval.generate.score_examples`); with ``out``: ``metrics.json``,
    ``generations.jsonl`` (input, reference, prediction per example) and ``report.md``."""
    from ..data.gen_tasks import load_seq2seq_data, load_sft_data
    from .generate import ANSWER_TOKENS, score_examples

    family = model.config.family
    want = "decoder" if kind == "sft" else "seq2seq"
    if family != want or getattr(model.config, "head", "lm") != "lm":
        raise ConfigError(f"--model: {data} is {'conversations' if kind == 'sft' else 'source → target pairs'}, "
                          f"answered by a {want} with an LM head; {model_dir} is a {family}")
    loaded = load_sft_data(data, seed=seed) if kind == "sft" else load_seq2seq_data(data, seed=seed)
    part = split if split in loaded.splits else "train"
    if split not in loaded.splits and len(loaded.splits) > 1:
        raise DataError(f"--split: {data} has splits {sorted(loaded.splits)}, found {split!r}")
    examples = loaded.splits[part]
    if limit:
        examples = examples[:limit]
    scores, records = score_examples(model, tokenizer, examples, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, num_beams=num_beams)
    metrics: dict[str, Any] = {"task": kind, "data": data, "split": part, "examples": len(examples), **scores}
    if out is not None:
        lines = [f"# Evaluation of `{model_dir}`", "",
                 f"Generation on `{data}` ({part}: {len(examples)} examples; greedy"
                 + (f", {num_beams} beams" if num_beams > 1 else "") + (f", at most {max_new_tokens} new tokens)" if max_new_tokens else
                    f", at most {ANSWER_TOKENS} new tokens an answer, twice the source's tokens plus 16 a pair)"), "",
                 "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in scores.items()]
        lines += ["", "## Examples", ""]
        for r in records[:10]:
            lines += [f"- **{r['task'] or 'input'}**: {r['input']}", f"  - reference: {r['reference']}",
                      f"  - prediction: {r['prediction']}"]
        with atomic_directory(Path(out)) as tmp:
            write_json(tmp / "metrics.json", metrics)
            (tmp / "generations.jsonl").write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
            (tmp / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return metrics


def evaluate_model(model_dir: str | Path, data: str, *, split: str | None = None, out: str | Path | None = None,
                   text_field: str = "text", label_field: str = "label", batch_size: int | None = None,
                   overwrite: bool = False, seed: int = 1234, context: int | None = None,
                   stride: int | None = None, max_tokens: int = 0, device: str | None = None,
                   task: str | None = None, max_new_tokens: int | None = None, num_beams: int = 1,
                   limit: int = 0) -> dict[str, Any]:
    """Score the model in ``model_dir`` on ``split`` of ``data``; with ``out``, write the report there.

    ``split`` defaults to ``test`` for a labelled task and ``val`` for language modelling, ``batch_size``
    to 32 examples and 8 windows (a window's logits are context × vocabulary floats); ``context``,
    ``stride`` and ``max_tokens`` apply to language models only (:func:`duplexlm.eval.lm.evaluate_lm`).
    ``device`` defaults to CUDA when there is one. ``task``: which head of a multi-task model scores.
    Conversations (``zh-tasks``, a chat/Alpaca JSONL) and source → target pairs (``cedict-en-zh``,
    ``s2t``, a JSONL with ``source``/``target``) are answered by generation and the text is scored
    (:func:`evaluate_generation`; ``max_new_tokens``, ``num_beams``, ``limit`` apply there).
    """
    import torch

    from ..data.tasks import load_task_data
    from ..infer.predict import classify, tag, task_of
    from ..io import load
    from ..scores.labels import classification_metrics, entity_metrics, regression_metrics
    from .lm import evaluate_lm, is_shards_dir, lm_objective, write_lm_report

    if out is not None:
        check_output_dir(out, "eval", overwrite=overwrite, flag="--out", inputs=[model_dir])
    model, tokenizer = load(model_dir, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if tokenizer is None:
        raise DataError(f"--model: {model_dir} has no tokenizer.json; evaluate a directory written by "
                        "`duplex pretrain` or `duplex finetune`")
    kind = generative_kind(data)
    if kind is not None:
        return evaluate_generation(model, tokenizer, data, kind, model_dir=model_dir, split=split or "test", out=out,
                                   seed=seed, batch_size=batch_size or 16, max_new_tokens=max_new_tokens,
                                   num_beams=num_beams, limit=limit)
    objective = lm_objective(model)
    if objective is not None:
        metrics = evaluate_lm(model, tokenizer, data, objective=objective, split=split, text_field=text_field,
                              context=context, stride=stride, max_tokens=max_tokens, batch_size=batch_size or 8,
                              seed=seed, model_dir=model_dir)
        if out is not None:
            write_lm_report(out, metrics, model_dir)
        return metrics
    c = model.config
    if getattr(c, "head", "none") not in ("classify", "tag") and not getattr(c, "tasks", None):
        raise ConfigError(f"--model: {model_dir} ({c.family}, head={getattr(c, 'head', 'none')!r}) has nothing "
                          "to score; expected a language-model head (decoder lm, encoder mlm, T5 lm) or a task "
                          "head (classify, tag)")
    head = task
    task = task_of(model, head)
    if is_shards_dir(data) or (task != "tag" and Path(data).suffix.lower() == ".txt"):
        raise DataError(f"--data: {data} is {'token shards' if is_shards_dir(data) else 'a text file'}, data for a "
                        f"language model, but {model_dir} is a {task} model; give it a labelled "
                        ".csv/.tsv/.jsonl/.parquet file or a built-in task")
    split = split or "test"
    batch_size = batch_size or 32
    loaded = load_task_data(task, data, text_field=text_field, label_field=label_field, seed=seed)
    part = split if split in loaded.splits else "train"  # a single file is its own split
    if split not in loaded.splits and len(loaded.splits) > 1:
        raise DataError(f"--split: {data} has splits {sorted(loaded.splits)}, found {split!r}")
    examples = loaded.splits[part]
    names = model.config.tasks[head].get("label_names") if head else model.config.label_names
    if task != "regress":
        known = set(names)
        for e in examples:
            bad = [lab for lab in ([e.label] if task == "classify" else e.label) if lab not in known]
            if bad:
                raise DataError(f"{e.source}: label {bad[0]!r} is not one the model knows ({', '.join(names)})")
    rows: list[dict[str, Any]] = []
    if task == "tag":
        preds = tag(model, tokenizer, [list(e.text) for e in examples], batch_size=batch_size, task=head)
        metrics = entity_metrics([list(e.label) for e in examples], [p["tags"] for p in preds])
        for e, p in zip(examples, preds):
            rows.append({"source": e.source, "text": " ".join(e.text), "gold": list(e.label), "predicted": p["tags"],
                         "entities": p["entities"]})
    else:
        preds = classify(model, tokenizer, [e.text for e in examples], batch_size=batch_size, task=head)
        if task == "classify":
            index = {n: i for i, n in enumerate(names)}
            metrics = classification_metrics([index[e.label] for e in examples],
                                             [index[p["label"]] for p in preds], names)
        else:
            metrics = regression_metrics([list(e.label) for e in examples], [p["values"] for p in preds])
        for e, p in zip(examples, preds):
            rows.append({"source": e.source, "text": e.text, "gold": e.label, **p})
    metrics = {"task": task, **({"head": head} if head else {}), "data": data, "split": part,
               "examples": len(examples), **metrics}
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
            from ..plots import plot_confusion_matrix

            plot_confusion_matrix(metrics["confusion_matrix"], names, tmp / "confusion_matrix.png")
            lines += ["![confusion matrix](confusion_matrix.png)", ""]
        lines += ["Every prediction is in `predictions.jsonl`.", ""]
        (tmp / "report.md").write_text("\n".join(lines), encoding="utf-8")


__all__ = ["evaluate_model"]
