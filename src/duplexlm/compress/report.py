"""The compression report: one row per model directory — parameters, file size, CPU latency and
throughput, and quality on held-out data — and a table of each row against the first, so that a
quantised, distilled or pruned model is judged beside the model it was made from, on the same data
and the same machine.

What each number means:

- ``parameters``: every weight counted once (tied weights once), the integer weights of a quantised
  model included (they are buffers, not ``nn.Parameter``s, so :func:`~duplexlm.models.count_parameters`
  alone would miss them): a quantised copy has as many as its source; a pruned or distilled one fewer.
- ``file_bytes``: the bytes of the directory's weight files (``model.safetensors`` or its shards).
- ``latency_ms``: one forward over **one** sequence of ``seq_len`` token ids, in milliseconds: the
  median over ``rounds``, after a warm-up.
- ``throughput_seqs`` / ``throughput_tokens``: ``batch_size`` sequences of ``seq_len`` tokens in one
  forward: sequences (and tokens) per second, from the median time over ``rounds``.
- ``quality``: the headline scores of :func:`duplexlm.eval.evaluate.evaluate_model` on the given data
  (:func:`headline`): accuracy and macro-F1 for a classifier, entity F1 for a tagger, MSE for
  regression, perplexity (and bits per byte) for a language model, chrF/BLEU/... for generation.

Speed is measured under ``torch.inference_mode`` with ``time.perf_counter`` on fixed token ids (seed
0, drawn from the model's vocabulary without its special tokens; an encoder-decoder is also fed the
same ids shifted right as decoder input), with the thread count left as the caller set it. Several
models are timed side by side in alternating rounds (A B C, then C B A, ...) so that a burst of load
on a shared machine falls on all of them alike (:func:`measure_many`).

>>> import tempfile
>>> from duplexlm.config import DecoderConfig
>>> from duplexlm.io import save_model
>>> from duplexlm.models import build_model
>>> d = tempfile.mkdtemp() + "/gpt"
>>> save_model(build_model(DecoderConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=1, n_head=2)), d)
>>> row = measure(d, seq_len=8, batch_size=2, rounds=2)
>>> row.family, row.parameters, row.seq_len, row.latency_ms > 0
('decoder', 15328, 8, True)
"""

from __future__ import annotations

import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ModelDirectoryError
from ..fileutil import atomic_write, write_json
from ..units import format_bytes, format_count
from .quantization import quantization_spec, quantized_parameters, weight_bytes

REPORT_JSON = "compression_report.json"
REPORT_MD = "compression_report.md"
WARMUP = 2  # untimed calls per model and shape first: allocator, packed int8 weights, lazy inits

# The scores kept from evaluate_model's metrics, per task (its "task" entry).
HEADLINE: dict[str, tuple[str, ...]] = {
    "classify": ("accuracy", "macro_f1"),
    "tag": ("f1",),
    "regress": ("mse",),
    "lm": ("perplexity", "bits_per_byte"),
    "sft": ("accuracy", "f1", "chrf", "bleu", "rougeL", "exact_match", "char_accuracy"),
    "seq2seq": ("chrf", "bleu", "rougeL", "exact_match", "char_accuracy"),
}
# Scores already on a 0-100 scale (sacrebleu's): a change is their plain difference in points.
_SCALE_100 = {"chrf", "bleu", "rougeL", "rouge1", "rouge2"}


# ----------------------------------------------------------------------------------------------------
# One row


@dataclass
class ModelRow:
    """One model's line of the report (see the module docstring for what each number means)."""

    name: str
    path: str
    family: str
    parameters: int
    file_bytes: int
    latency_ms: float
    throughput_seqs: float
    throughput_tokens: float
    quality: dict[str, float] = field(default_factory=dict)
    quantization: str | None = None  # "int8", "int4/g128"; None for full precision
    seq_len: int = 0  # tokens per sequence as timed (the model's max_seq_len caps the one asked for)
    batch_size: int = 0  # sequences per forward for the throughput
    rounds: int = 0
    device: str = "cpu"
    threads: int = 0  # torch.get_num_threads() while timing
    data: str | None = None  # what the quality was measured on: "data [split, N examples]"

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON-ready values.

        >>> ModelRow("a", "runs/a", "decoder", 10, 40, 1.5, 200.0, 12800.0, {"perplexity": 9.5}).to_dict()["quality"]
        {'perplexity': 9.5}
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelRow:
        """A row back from :meth:`to_dict` (or a report's JSON); unknown keys are an error naming them.

        >>> row = ModelRow("a", "runs/a", "decoder", 10, 40, 1.5, 200.0, 12800.0)
        >>> ModelRow.from_dict(row.to_dict()) == row
        True
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"row: unknown keys {unknown}; expected keys among {sorted(known)}")
        return cls(**{k: dict(v) if k == "quality" else v for k, v in data.items()})


def headline(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The headline scores of an :func:`~duplexlm.eval.evaluate.evaluate_model` result, chosen by its
    ``task`` (see :data:`HEADLINE`); a result without a known task keeps every top-level number.

    >>> headline({"task": "classify", "accuracy": 0.8, "macro_f1": 0.75, "micro_f1": 0.8, "support": 60})
    {'accuracy': 0.8, 'macro_f1': 0.75}
    >>> headline({"task": "lm", "loss": 2.3, "perplexity": 9.97, "bits_per_byte": 1.2})
    {'perplexity': 9.97, 'bits_per_byte': 1.2}
    """
    keys = HEADLINE.get(metrics.get("task"), tuple(metrics))  # type: ignore[arg-type]
    return {k: float(metrics[k]) for k in keys if k in metrics and _is_number(metrics[k])}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_quality(quality: Any) -> dict[str, float]:
    if not isinstance(quality, Mapping):
        raise ConfigError(f"quality: expected a mapping of metric names to numbers, found {type(quality).__name__}")
    for k, v in quality.items():
        if not isinstance(k, str) or not _is_number(v):
            raise ConfigError(f"quality[{k!r}]: expected a number under a metric name, found {v!r}")
    return {k: float(v) for k, v in quality.items()}


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}: expected an integer >= 1, found {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------
# Inputs and timing


def timing_inputs(model: nn.Module, batch_size: int, seq_len: int, tokenizer: Any = None,
                  seed: int = 0) -> dict[str, Tensor]:
    """Keyword inputs of ``batch_size`` × ``seq_len`` token ids for ``model`` (any family): seeded ids
    drawn from the vocabulary without the special ones (the tokenizer's, and the config's pad, bos,
    eos and decoder-start ids), an all-ones attention mask, and for an encoder-decoder the ids shifted
    right as decoder input (as :func:`~duplexlm.compress.sample_inputs` builds them). ``seq_len`` is
    capped at the model's ``max_seq_len``.

    >>> from duplexlm.config import Seq2SeqConfig
    >>> from duplexlm.models import build_model
    >>> t5 = build_model(Seq2SeqConfig(vocab_size=32, d_model=16, head_dim=8, d_ff=32, n_layer=1, n_head=2))
    >>> x = timing_inputs(t5, 2, 5)
    >>> sorted(x), tuple(x["input_ids"].shape), bool((x["input_ids"] > 1).all())
    (['attention_mask', 'decoder_input_ids', 'input_ids'], (2, 5), True)
    """
    c = model.config
    seq_len = min(seq_len, getattr(c, "max_seq_len", None) or seq_len)
    special = set(tokenizer.special_ids) if tokenizer is not None else set()
    special |= {getattr(c, k, None) for k in ("pad_token_id", "bos_token_id", "eos_token_id",
                                              "decoder_start_token_id")}
    allowed = torch.tensor([i for i in range(c.vocab_size) if i not in special] or list(range(c.vocab_size)))
    g = torch.Generator().manual_seed(seed)
    ids = allowed[torch.randint(len(allowed), (batch_size, seq_len), generator=g)]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if c.family == "seq2seq":
        inputs["decoder_input_ids"] = model.shift_right(ids)
    return inputs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
        torch.cuda.synchronize(device)


def _seconds(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _timed_rounds(work: dict[str, Callable[[], Any]], rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each entry, ``rounds`` times, the order reversed every round."""
    names = list(work)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            times[n].append(_seconds(work[n], device))
    return times


@dataclass
class _Subject:
    name: str
    path: Path
    model: nn.Module
    one: dict[str, Tensor]
    batch: dict[str, Tensor]


def _load(model_dir: str | Path, name: str | None, batch_size: int, seq_len: int,
          device: torch.device) -> tuple[_Subject, ModelRow]:
    from ..io import load
    from ..models import count_parameters

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ModelDirectoryError(f"model_dir: {path} is not a model directory; expected one with config.json "
                                  "and model.safetensors (ours or Hugging Face's)")
    model, tokenizer = load(path, device=device)
    batch = {k: v.to(device) for k, v in timing_inputs(model, batch_size, seq_len, tokenizer).items()}
    one = {k: v[:1] for k, v in batch.items()}
    spec = quantization_spec(model)
    quant = None if spec is None else spec["method"] + (f"/g{spec['group_size']}" if spec["group_size"] else "")
    row = ModelRow(name=name or path.name, path=str(path), family=model.config.family,
                   parameters=count_parameters(model) + quantized_parameters(model),  # integer weights are buffers
                   file_bytes=weight_bytes(path), latency_ms=math.nan, throughput_seqs=math.nan,
                   throughput_tokens=math.nan, quantization=quant, seq_len=int(batch["input_ids"].shape[1]),
                   batch_size=batch_size, device=str(device))
    return _Subject(row.name, path, model, one, batch), row


def _quality(model_dir: Path, data: str, split: str | None, device: torch.device,
             options: Mapping[str, Any] | None) -> tuple[dict[str, float], str]:
    from ..eval.evaluate import evaluate_model

    options = dict(options or {})
    for taken in ("split", "out", "device"):
        if taken in options:
            raise ConfigError(f"eval_options[{taken!r}]: set by measure itself; pass it as its own argument")
    metrics = evaluate_model(model_dir, data, split=split, device=str(device), **options)
    count = metrics.get("examples", metrics.get("tokens"))
    unit = "examples" if "examples" in metrics else "tokens"
    where = f"{data} [{metrics.get('split', split)}" + (f", {count} {unit}]" if count is not None else "]")
    return headline(metrics), where


# ----------------------------------------------------------------------------------------------------
# Measuring


def measure_many(dirs_and_names: Iterable[str | Path | tuple[str | Path, str | None]], *, data: str | None = None,
                 split: str | None = None, batch_size: int = 16, seq_len: int = 64, rounds: int = 5,
                 device: str = "cpu", eval_options: Mapping[str, Any] | None = None) -> list[ModelRow]:
    """Measure several model directories side by side → one :class:`ModelRow` each, in the order given.

    ``dirs_and_names``: directories, or ``(directory, name)`` pairs (a name defaults to the
    directory's). All models are loaded first, warmed up, then timed in ``rounds`` rounds whose order
    alternates (A B C, C B A, ...); each round times one forward over one sequence (latency) and one
    over ``batch_size`` sequences (throughput) per model. With ``data``, every model is then scored
    on ``split`` of it by :func:`~duplexlm.eval.evaluate.evaluate_model` (``eval_options``: its other
    keyword arguments, e.g. ``text_field``, ``max_tokens``), and the :func:`headline` scores kept.

    >>> rows = measure_many([("runs/gpt2", "fp32"), ("runs/gpt2-int8", "int8")], data="peoples-daily")  # doctest: +SKIP
    >>> print("\\n".join(compare(rows)))  # doctest: +SKIP
    """
    batch_size = _positive_int("batch_size", batch_size)
    seq_len = _positive_int("seq_len", seq_len)
    rounds = _positive_int("rounds", rounds)
    if data is not None and (not isinstance(data, (str, Path)) or not str(data).strip()):
        raise ConfigError(f"data: expected a data file or built-in dataset name, found {data!r}")
    dev = torch.device(device)
    entries = [e if isinstance(e, tuple) else (e, None) for e in dirs_and_names]
    if not entries:
        raise ConfigError("dirs_and_names: expected at least one model directory, found none")
    loaded = [_load(path, name, batch_size, seq_len, dev) for path, name in entries]
    names = [row.name for _, row in loaded]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"dirs_and_names: each model needs its own name; {repeated} appear more than once "
                          "(pass (directory, name) pairs)")
    work: dict[str, Callable[[], Any]] = {}
    for s, _ in loaded:
        work[f"{s.name}\0one"] = lambda s=s: s.model(**s.one)
        work[f"{s.name}\0batch"] = lambda s=s: s.model(**s.batch)
    with torch.inference_mode():
        for fn in work.values():
            for _ in range(WARMUP):
                fn()
        times = _timed_rounds(work, rounds, dev)
    threads = torch.get_num_threads()
    rows = []
    for s, row in loaded:
        batch_s = statistics.median(times[f"{s.name}\0batch"])
        row.latency_ms = 1000.0 * statistics.median(times[f"{s.name}\0one"])
        row.throughput_seqs = batch_size / batch_s
        row.throughput_tokens = batch_size * row.seq_len / batch_s
        row.rounds, row.threads = rounds, threads
        rows.append(row)
    del loaded, work  # free the timed copies before evaluation loads each model again
    if data is not None:
        for row in rows:
            row.quality, row.data = _quality(Path(row.path), str(data), split, dev, eval_options)
    return rows


def measure(model_dir: str | Path, *, name: str | None = None, data: str | None = None, split: str | None = None,
            batch_size: int = 16, seq_len: int = 64, rounds: int = 5, device: str = "cpu",
            quality: Mapping[str, float] | None = None,
            eval_options: Mapping[str, Any] | None = None) -> ModelRow:
    """Measure one model directory → a :class:`ModelRow` (see the module docstring for the numbers).

    Quality comes from ``data`` (scored by :func:`~duplexlm.eval.evaluate.evaluate_model` on ``split``)
    or is given as ``quality``, a mapping of metric names to numbers (e.g. ``headline(metrics)`` of an
    earlier evaluation); not both. To compare models, prefer :func:`measure_many`, which times them
    side by side.

    >>> measure("no/such/dir")
    Traceback (most recent call last):
    ...
    duplexlm.errors.ModelDirectoryError: model_dir: no/such/dir is not a model directory; ...
    """
    if quality is not None and data is not None:
        raise ConfigError("quality: given together with data; pass data to evaluate the model, or quality with "
                          "scores measured before, not both")
    checked = _check_quality(quality) if quality is not None else None
    row = measure_many([(model_dir, name)], data=data, split=split, batch_size=batch_size, seq_len=seq_len,
                       rounds=rounds, device=device, eval_options=eval_options)[0]
    if checked is not None:
        row.quality = checked
    return row


# ----------------------------------------------------------------------------------------------------
# Comparing


def quality_change(metric: str, new: float, old: float) -> tuple[float, str]:
    """How ``metric`` moved from ``old`` to ``new``: ``(points, "pt")`` for scores in [0, 1]
    (accuracy, F1, ...: the difference × 100) or already on a 0-100 scale (chrF, BLEU: the
    difference), and ``(percent, "%")`` for everything else (perplexity, bits per byte, MSE, ...:
    the relative change).

    >>> quality_change("accuracy", 0.75, 0.875)
    (-12.5, 'pt')
    >>> quality_change("perplexity", 25.0, 20.0)
    (25.0, '%')
    """
    from ..scores.labels import higher_is_better

    try:
        higher = higher_is_better(metric)
    except ConfigError:  # a name of the caller's own: a relative change says the most
        higher = False
    if metric in _SCALE_100:
        return new - old, "pt"
    if higher:
        return 100.0 * (new - old), "pt"
    return (100.0 * (new / old - 1.0) if old else math.nan), "%"


def ratios(row: ModelRow, base: ModelRow) -> dict[str, Any]:
    """``row`` against ``base``: ``size`` (file bytes, row / base), ``latency_speedup`` (base's latency
    / row's), ``throughput_speedup`` (row's sequences/s / base's) and, for every quality metric both
    have, ``quality[metric] = {"change": x, "unit": "pt" or "%"}`` (:func:`quality_change`).

    >>> a = ModelRow("fp32", "a", "encoder", 100, 4000, 10.0, 50.0, 3200.0, {"accuracy": 0.875})
    >>> b = ModelRow("int8", "b", "encoder", 100, 1000, 4.0, 150.0, 9600.0, {"accuracy": 0.75})
    >>> r = ratios(b, a)
    >>> r["size"], r["latency_speedup"], r["throughput_speedup"], r["quality"]
    (0.25, 2.5, 3.0, {'accuracy': {'change': -12.5, 'unit': 'pt'}})
    """
    def div(x: float, y: float) -> float:
        return x / y if y else math.nan

    changes = {}
    for k, new in row.quality.items():
        if k in base.quality:
            change, unit = quality_change(k, new, base.quality[k])
            changes[k] = {"change": change, "unit": unit}
    return {"size": div(row.file_bytes, base.file_bytes), "latency_speedup": div(base.latency_ms, row.latency_ms),
            "throughput_speedup": div(row.throughput_seqs, base.throughput_seqs), "quality": changes}


def _num(x: float) -> str:
    if not math.isfinite(x):
        return "—"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:,.2f}" if abs(x) >= 1 else f"{x:.3g}"


def _ratio(x: float) -> str:
    return f"{x:.2f}×" if math.isfinite(x) else "—"


def compare(rows: Sequence[ModelRow]) -> list[str]:
    """A markdown table, one line per row, with each row against the first: ``size`` (its file /
    the first's), ``latency`` and ``throughput`` speed-ups (× faster than the first), and each quality
    metric's change (Δ, in points for accuracy/F1-like scores and in % for perplexity-like ones).

    >>> a = ModelRow("fp32", "a", "encoder", 1_200_000, 4_800_000, 10.0, 50.0, 3200.0, {"accuracy": 0.85})
    >>> b = ModelRow("int8", "b", "encoder", 1_200_000, 1_200_000, 4.0, 150.0, 9600.0, {"accuracy": 0.80},
    ...              quantization="int8")
    >>> for line in compare([a, b]):
    ...     print(line)
    | model | family | parameters | file | latency (ms) | seq/s | tok/s | accuracy | size | latency speed-up | throughput speed-up | Δ accuracy |
    |---|---|---|---|---|---|---|---|---|---|---|---|
    | fp32 | encoder | 1.20M | 4.58 MiB | 10.00 | 50.00 | 3,200 | 0.8500 | — | — | — | — |
    | int8 | encoder, int8 | 1.20M | 1.14 MiB | 4.00 | 150.00 | 9,600 | 0.8000 | 0.25× | 2.50× | 3.00× | -5.0 pt |
    """
    if not rows:
        raise ConfigError("rows: expected at least one ModelRow, found none")
    metrics: list[str] = []
    for r in rows:
        metrics += [k for k in r.quality if k not in metrics]
    head = ["model", "family", "parameters", "file", "latency (ms)", "seq/s", "tok/s", *metrics, "size",
            "latency speed-up", "throughput speed-up", *(f"Δ {m}" for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = rows[0]
    for i, r in enumerate(rows):
        family = r.family + (f", {r.quantization}" if r.quantization else "")
        cells = [r.name, family, format_count(r.parameters), format_bytes(r.file_bytes), _num(r.latency_ms),
                 _num(r.throughput_seqs), _num(r.throughput_tokens)]
        cells += [f"{r.quality[m]:.4f}" if m in r.quality and abs(r.quality[m]) < 10 else
                  _num(r.quality[m]) if m in r.quality else "—" for m in metrics]
        if i == 0:
            cells += ["—"] * (3 + len(metrics))
        else:
            q = ratios(r, base)
            cells += [_ratio(q["size"]), _ratio(q["latency_speedup"]), _ratio(q["throughput_speedup"])]
            for m in metrics:
                d = q["quality"].get(m)
                cells.append("—" if d is None or not math.isfinite(d["change"])
                             else f"{d['change']:+.1f}{' pt' if d['unit'] == 'pt' else '%'}")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


# ----------------------------------------------------------------------------------------------------
# Writing


def _finite(x: Any) -> Any:
    """NaN and infinities as None: strict JSON has no spelling for them."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def write_report(out_dir: str | Path, rows: Sequence[ModelRow], *,
                 command: str | Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write ``compression_report.json`` (the command line, every row as a dict, and each row against
    the first) and ``compression_report.md`` (how it was measured, the :func:`compare` table, the
    command) into ``out_dir`` (made if missing), each atomically; returns the two paths. ``command``
    defaults to this process's command line.

    >>> import json, tempfile
    >>> row = ModelRow("fp32", "runs/a", "decoder", 10, 40, 1.5, 200.0, 12800.0, seq_len=64, batch_size=16)
    >>> js, md = write_report(tempfile.mkdtemp(), [row], command="duplex quantize ...")
    >>> json.loads(js.read_text())["command"], md.name
    ('duplex quantize ...', 'compression_report.md')
    """
    rows = list(rows)
    if not rows or not all(isinstance(r, ModelRow) for r in rows):
        raise ConfigError(f"rows: expected a non-empty list of ModelRow, found {rows!r:.80}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir: {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if command is None:
        command = shlex.join(sys.argv)
    elif not isinstance(command, str):
        command = shlex.join(str(c) for c in command)
    table = compare(rows)
    payload = {"command": command, "rows": [r.to_dict() for r in rows],
               "vs_first": [ratios(r, rows[0]) for r in rows]}
    first = rows[0]
    settings = {(r.device, r.threads, r.rounds, r.seq_len, r.batch_size) for r in rows}
    speed = (f"Speed on {first.device} with {first.threads} torch thread(s): latency is the median over "
             f"{first.rounds} rounds of one forward over 1 × {first.seq_len} tokens; throughput, of one forward "
             f"over {first.batch_size} × {first.seq_len} tokens; models measured together are timed in "
             "alternating order. " if len(settings) == 1 and first.rounds else
             "Speed settings differ between rows (see the JSON file). ")
    how = (speed + "Parameters include a quantised model's integer weights; file is the weight file's size; "
           "size and speed-ups are against the first row; Δ is in points (×100 for scores in [0, 1]) or in % "
           "(perplexity, MSE).")
    data = sorted({r.data for r in rows if r.data})
    lines = ["# Compression report", "", how, ""]
    if data:
        lines += [f"Quality on {', '.join(data)}.", ""]
    lines += [*table, "", f"Command: `{command}`", ""]
    json_path, md_path = out / REPORT_JSON, out / REPORT_MD
    write_json(json_path, _finite(payload))
    atomic_write(md_path, "\n".join(lines))
    return json_path, md_path


__all__ = ["HEADLINE", "REPORT_JSON", "REPORT_MD", "ModelRow", "compare", "headline", "measure", "measure_many",
           "quality_change", "ratios", "timing_inputs", "write_report"]
