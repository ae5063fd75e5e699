"""``duplex demo``: does pretraining pay? Measured on real Chinese data, in one run, for both directions.

- :mod:`.encoder`, the encoder half: masked-LM pretraining, sentiment on ``reviews-zh`` against the
  same encoder from scratch, a BiGRU and TF-IDF, the label-efficiency curve, the model zoo;
- :mod:`.decoder`, the decoder half: causal-LM pretraining, instruction tuning on ``zh-tasks``;
- :mod:`.common`, the steps both share: section headers, the corpus, the tokenizer and token
  shards, pretraining for a time budget.

``--minutes M`` (default 15) is the budget: the encoder's pretraining gets 32% of it, the decoder's
pretraining an eighth and each of its two instruction-tuning runs a sixteenth; the rest does not grow
with it. ``--quick`` runs both halves on small slices (the tests use it).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..fileutil import atomic_write, check_output_dir, read_json_object, write_json
from ..precision import describe_machine
from .common import start_clock
from .decoder import report_lines, run_decoder_half
from .encoder import run_encoder_half


def run_demo(quick: bool = False, out_dir: Path = Path("runs/demo"), minutes: float | None = None,
             only: str | None = None) -> int:
    """Both halves (``only``: ``"encoder"`` or ``"decoder"``): the encoder study, the model zoo and the
    round trip; then the decoder's instruction tuning on zh-tasks, added to report.md and metrics.json."""
    # the demo replaces its own earlier output, and refuses a directory holding anything else
    check_output_dir(out_dir, "demo", overwrite=True, flag="--out")
    out_dir.mkdir(parents=True, exist_ok=True)
    print("duplexlm demo — " + describe_machine())
    t0 = start_clock()
    if only != "decoder":
        run_encoder_half(out_dir, quick, minutes)
    if only != "encoder":
        decoder = run_decoder_half(out_dir / "decoder", quick, minutes or 15.0)
        report = out_dir / "report.md"
        head = report.read_text(encoding="utf-8") if report.is_file() and only != "decoder" else \
            "# `duplex demo`\n\n"
        atomic_write(report, head + "\n".join(report_lines(decoder)))
        metrics_file = out_dir / "metrics.json"
        metrics = read_json_object(metrics_file) if metrics_file.is_file() and only != "decoder" else {}
        write_json(metrics_file, {**metrics, "decoder": decoder})
    print(f"\nduplex demo finished in {(time.perf_counter() - t0) / 60:.1f} minutes; report: {out_dir / 'report.md'}")
    return 0


__all__ = ["run_demo"]
