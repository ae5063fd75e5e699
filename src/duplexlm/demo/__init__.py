"""``duplex demo``: does pretraining pay? Measured on real Chinese data, in one run, for both directions.

- :mod:`.encoder`, the encoder half: masked-LM pretraining, sentiment on ``reviews-zh`` against the
  same encoder from scratch, a BiGRU and TF-IDF, the label-efficiency curve, the model zoo;
- :mod:`.decoder`, the decoder half: causal-LM pretraining, instruction tuning on ``zh-tasks``;
- :mod:`.common`, the steps both share: section headers, the corpus, the tokenizer and token
  shards, pretraining for a time budget.

Budgets are steps, never seconds: the same command gives the same numbers (within seed noise) on a
slow or a busy machine. ``--scale S`` multiplies every training run's steps. Before it starts, the
demo prints how long it expects to take here: the last full run's minutes, scaled by a calibration
(:func:`.common.calibration_ms`) timed on this machine against the one that ran it. ``--quick`` runs
both halves on small slices (the tests use it).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import ConfigError
from ..fileutil import atomic_write, check_output_dir, read_json_object, write_json
from ..precision import describe_machine
from .common import calibration_ms, start_clock
from .decoder import report_lines, run_decoder_half
from .encoder import run_encoder_half

# The last full default run (`duplex demo`): its minutes per half, and the calibration on its machine
REFERENCE = {"machine": "2 cores, AVX-512 with native bf16", "calibration_ms": 133.0,
             "encoder": 9.3, "decoder": 5.6, "quick": 1.2}


def estimate_minutes(quick: bool, scale: float, only: str | None, ms: float) -> float:
    """The expected minutes of a run: the reference's, times this machine's calibration over the
    reference's (training steps scale with ``scale``; about a fifth of each half does not)."""
    if quick:
        minutes = REFERENCE["quick"]
    else:
        halves = [h for h in ("encoder", "decoder") if only in (None, h)]
        minutes = sum(REFERENCE[h] * (0.2 + 0.8 * scale) for h in halves)
    return minutes * ms / REFERENCE["calibration_ms"]


def run_demo(quick: bool = False, out_dir: Path = Path("runs/demo"), scale: float = 1.0,
             only: str | None = None) -> int:
    """Both halves (``only``: ``"encoder"`` or ``"decoder"``): the encoder study, the model zoo and the
    round trip; then the decoder's instruction tuning on zh-tasks, added to report.md and metrics.json."""
    if not scale > 0 or scale == float("inf"):
        raise ConfigError(f"--scale: expected a number above 0, found {scale}")
    # the demo replaces its own earlier output, and refuses a directory holding anything else
    check_output_dir(out_dir, "demo", overwrite=True, flag="--out")
    out_dir.mkdir(parents=True, exist_ok=True)
    print("duplexlm demo — " + describe_machine())
    ms = calibration_ms()
    print(f"estimated time: about {estimate_minutes(quick, scale, only, ms):.1f} minutes (the last full run took "
          f"{REFERENCE['encoder'] + REFERENCE['decoder']:.0f} on {REFERENCE['machine']}; a calibration step takes "
          f"{ms:.0f} ms here, {REFERENCE['calibration_ms']:.0f} ms there)")
    t0 = start_clock()
    if only != "decoder":
        run_encoder_half(out_dir, quick, scale)
    if only != "encoder":
        decoder = run_decoder_half(out_dir / "decoder", quick, scale)
        report = out_dir / "report.md"
        head = report.read_text(encoding="utf-8").rstrip("\n") + "\n\n" if report.is_file() and only != "decoder" \
            else "# `duplex demo`\n\n"
        atomic_write(report, head + "\n".join(report_lines(decoder)))
        metrics_file = out_dir / "metrics.json"
        metrics = read_json_object(metrics_file) if metrics_file.is_file() and only != "decoder" else {}
        write_json(metrics_file, {**metrics, "decoder": decoder})
    print(f"\nduplex demo finished in {(time.perf_counter() - t0) / 60:.1f} minutes; report: {out_dir / 'report.md'}")
    return 0


__all__ = ["REFERENCE", "estimate_minutes", "run_demo"]
