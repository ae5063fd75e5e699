"""`compile=true` on a CPU: the model compiles into one graph (no break at the input checks) and trains
as in eager mode, for an encoder fine-tuned with a head and a decoder pretrained."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from duplexlm.train.config import load_train_config
from duplexlm.train.loop import finetune, pretrain

from .test_finetune import SMALL, _review_csvs

# compiling takes 10-20 s a model on 2 cores; inductor writes C++ for the CPU and needs a compiler for it
_CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not _CXX, reason="torch.compile on a CPU needs a C++ compiler")]


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _twice(run, tmp_path: Path) -> tuple[list[float], list[float]]:
    """The same run in eager mode and compiled: the losses of each, and no graph break in the second."""
    torch._dynamo.reset()
    counters.clear()
    eager = run(tmp_path / "eager", "compile=false")
    assert not counters["stats"], "eager mode compiled something"
    run(tmp_path / "compiled", "compile=true")
    assert not counters["graph_break"], dict(counters["graph_break"])
    # (dropout off: compiled code draws its masks from another generator)
    # one graph for training; evaluation (no gradients, another batch shape) may add its own
    assert 1 <= counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])
    torch._dynamo.reset()
    compiled = _losses(tmp_path / "compiled")
    assert len(eager) == len(compiled)
    # the first step's loss is the same computation; later ones drift by rounding differences that
    # Adam's first, sign-like updates amplify (0.0006 by the fourth step of the encoder's run)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=5e-3)
    return eager, compiled


def test_an_encoder_fine_tunes_compiled_in_one_graph_as_in_eager_mode(pd_corpus, tmp_path):
    (tmp_path / "data").mkdir()
    files = _review_csvs(tmp_path / "data", {"train": (120, 0), "validation": (30, 200)})

    def run(out: Path, flag: str) -> list[float]:
        finetune(load_train_config(None, [
            "task=classify", f"data.train={files['train']}", f"data.validation={files['validation']}",
            f"tokenizer={pd_corpus / 'tok'}", f"out_dir={out}", "model.preset=bert-tiny", *SMALL,
            "data.group_by_length=true", "model.dropout=0.0", "max_steps=8", "eval_every=8", "save_every=8", "threads=1", flag]))
        return _losses(out)

    eager, _ = _twice(run, tmp_path)
    assert len(eager) == 8


def test_a_decoder_pretrains_compiled_in_one_graph_as_in_eager_mode(pd_data, tmp_path):
    def run(out: Path, flag: str) -> list[float]:
        pretrain(load_train_config(None, [
            f"data.path={pd_data}", f"out_dir={out}", "model.preset=llama-tiny", "model.n_layer=1",
            "model.d_model=32", "model.n_head=2", "model.n_kv_head=1", "model.d_ff=64", "data.seq_len=32",
            "batch_size=4", "max_steps=6", "eval_every=6", "save_every=6", "eval_batches=1", "log_every=1",
            "progress=false", "precision=fp32", "threads=1", flag]))
        return _losses(out)

    eager, _ = _twice(run, tmp_path)
    assert len(eager) == 6
