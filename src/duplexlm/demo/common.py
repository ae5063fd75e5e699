"""The steps both halves of ``duplex demo`` share: the section headers and their clock, the
unlabelled corpus, the tokenizer and token shards, pretraining for a number of steps, and the
calibration that estimates the run's minutes on this machine.

Neither half is imported here; each half imports what it needs from this module.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fileutil import atomic_write

_START = [time.perf_counter()]  # when this demo began: every section header shows the time since


def start_clock() -> float:
    """Start the clock that :func:`rule` reports against; return its start."""
    _START[0] = time.perf_counter()
    return _START[0]


def rule(title: str) -> None:
    """Print a section header with the minutes and seconds since :func:`start_clock`."""
    m, sec = divmod(int(time.perf_counter() - _START[0]), 60)
    print(f"\n== {title} == [{m}:{sec:02d}]")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line (a run's ``metrics.jsonl``, ``test_generations.jsonl``)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_corpus(out: Path, reviews: Iterable[Any], *, max_docs: int | None = None, max_texts: int | None = None,
                 held_out: set[str] | None = None, unit: str = "paragraphs") -> tuple[list[str], Path]:
    """Unlabelled text as ``out/corpus.txt`` (written atomically), one text a line: People's Daily
    (the first ``max_docs`` documents, or until ``max_texts`` texts are kept), then ``reviews`` (the
    training split's only, so fine-tuning's held-out sets stay unseen). A People's Daily text in
    ``held_out`` (compared with its whitespace removed) is left out and counted."""
    from ..data import iter_documents
    from ..data.clean import clean_text

    texts: list[str] = []
    skipped = 0
    for i, doc in enumerate(iter_documents(["peoples-daily"])):
        if max_docs is not None and i >= max_docs:
            break
        text = clean_text(doc.text)
        if not text:
            continue
        if held_out is not None and "".join(text.split()) in held_out:
            skipped += 1
            continue
        texts.append(text)
        if max_texts is not None and len(texts) >= max_texts:
            break
    n_pd = len(texts)
    texts += [t for e in reviews if (t := clean_text(e.text))]
    corpus = out / "corpus.txt"
    atomic_write(corpus, "\n".join(texts) + "\n")
    left_out = f" ({skipped:,} held-out task sentences left out)" if held_out is not None else ""
    print(f"{n_pd:,} People's Daily {unit}{left_out} + {len(texts) - n_pd:,} training reviews, "
          f"{sum(map(len, texts)):,} characters")
    return texts, corpus


def held_out_task_sentences() -> set[str]:
    """People's Daily sentences of the NER split's validation and test parts (whitespace removed):
    zh-tasks asks about them (转繁体, 实体识别), so pretraining must not read them (``write_corpus``'s
    ``held_out``)."""
    from ..data.clean import clean_text
    from ..data.tasks import load_task_data

    ner = load_task_data("tag", "peoples-daily-ner", seed=1234)
    # compared as the corpus reader cleans them (NFKC: full-width digits become ASCII), spaces removed
    return {"".join(clean_text("".join(e.text)).split()) for split in ("validation", "test")
            for e in ner.splits.get(split, [])}


def tokenizer_and_shards(out: Path, texts: list[str], corpus: Path, *, name: str, measured_on: str = "",
                         **tokenizer_args: Any) -> tuple[Path, Path, dict[str, Any]]:
    """Train a tokenizer on all but every 50th text (``tokenizer_args``: ``kind``, ``vocab_size``...),
    save it as ``out/tok`` and turn ``corpus`` into token shards ``out/data`` (1% validation, seed 1234).
    Prints the vocabulary (``name``), characters per token on every 50th text (``measured_on`` words
    it) and the shards' sizes. Returns the tokenizer directory, the shards directory and their meta."""
    from ..data import prepare
    from ..tokenizer import save_tokenizer, train_tokenizer

    t0 = time.perf_counter()
    held_out = texts[::50]
    tok = train_tokenizer([t for i, t in enumerate(texts) if i % 50], **tokenizer_args)
    tok_dir = save_tokenizer(tok, out / "tok", overwrite=True)
    meta = prepare([str(corpus)], out / "data", tok_dir, val_fraction=0.01, seed=1234, progress=False,
                   overwrite=True)
    sp = meta["splits"]
    print(f"{name} vocabulary {tok.vocab_size:,}: {tok.chars_per_token(held_out):.2f} characters per token"
          f"{measured_on}; shards train {sp['train']['tokens']:,} / val {sp['val']['tokens']:,} tokens "
          f"({time.perf_counter() - t0:.0f}s)")
    return tok_dir, out / "data", meta


@dataclass
class Pretraining:
    """One pretraining run in a time budget: where its model is, what it did and logged."""

    model_dir: Path
    steps: int
    seconds: float
    tokens: int
    result: dict[str, Any]
    rows: list[dict[str, Any]]  # the run's metrics.jsonl

    def summary(self, **extra: Any) -> dict[str, Any]:
        """Steps, seconds, tokens, validation loss, ``extra`` and tokens per second."""
        return {"steps": self.steps, "seconds": round(self.seconds, 1), "tokens": self.tokens,
                "val_loss": self.result["val_loss"], **extra, "tokens_per_s": round(self.tokens / self.seconds)}


def pretrain_steps(args: list[str], steps: int, run_dir: Path,
                   before: Callable[[list[str]], None] | None = None) -> Pretraining:
    """Pretrain with the overrides ``args`` for ``steps`` optimizer steps into ``run_dir``: warm-up is a
    tenth of them (at most 50), four validation passes, one save at the end. ``before`` sees the final
    overrides just before training starts."""
    from ..train.config import load_train_config
    from ..train.loop import pretrain

    args = [*args, f"optim.warmup_steps={min(50, max(steps // 10, 1))}"]
    if before is not None:
        before(args)
    t0 = time.perf_counter()
    result = pretrain(load_train_config(None, [*args, f"out_dir={run_dir}", f"max_steps={steps}",
                                               f"eval_every={max(steps // 4, 1)}", f"save_every={steps}"]),
                      overwrite=True)
    elapsed = time.perf_counter() - t0
    rows = read_jsonl(run_dir / "metrics.jsonl")
    tokens = max(r.get("tokens", 0) for r in rows)
    return Pretraining(run_dir / "model", steps, elapsed, tokens, result, rows)


def calibration_ms() -> float:
    """Milliseconds a fixed piece of work takes here: forward and backward of a 4 x 128 BERT-style
    encoder on 32 x 128 random tokens, in the precision training picks (``auto``); the median of 5
    after 2 warm-ups. The demo scales the last full run's minutes by it to estimate its own."""
    import statistics

    import torch

    from ..models import build_model
    from ..precision import autocast, resolve_autocast_dtype
    from ..presets import get_preset

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(get_preset("bert-tiny"), n_layer=4, n_head=4, max_seq_len=128))
    ids = torch.randint(1, 8000, (32, 128))
    dtype = resolve_autocast_dtype("auto", "cpu")
    times = []
    for i in range(7):
        t0 = time.perf_counter()
        with autocast("cpu", dtype):
            out = model(ids).last_hidden_state
        out.float().square().mean().backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


__all__ = ["Pretraining", "calibration_ms", "held_out_task_sentences", "pretrain_steps", "read_jsonl", "rule",
           "start_clock", "tokenizer_and_shards", "write_corpus"]
