"""The training loop on a GPU: bf16 autocast, torch.compile, resume. Skipped without CUDA (CI)."""

import json

import pytest
import torch

import duplexlm
from duplexlm.train.config import load_train_config
from duplexlm.train.loop import pretrain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cfg(data, out, *extra):
    return load_train_config(None, [
        f"data.path={data}", f"out_dir={out}", "model.n_layer=2", "model.d_model=128", "model.n_head=4",
        "data.seq_len=64", "batch_size=16", "eval_batches=2", "log_every=1", "progress=false",
        "optim.warmup_steps=5", "optim.lr=3e-3", "device=cuda", *extra])


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.parametrize("compile_", [False, True])
def test_pretrain_on_gpu_bf16(pd_data, tmp_path, compile_):
    out = tmp_path / "run"
    result = pretrain(_cfg(pd_data, out, "max_steps=40", "eval_every=40", "save_every=40",
                           f"compile={compile_}"))
    losses = _losses(out)
    assert sum(losses[s] for s in range(36, 41)) < sum(losses[s] for s in range(1, 6)) - 2.0
    assert result["nonfinite"] == 0
    cfg = (out / "config.yaml").read_text()
    assert "precision: auto" in cfg
    model, tok = duplexlm.load(out / "model")
    assert model(torch.tensor([tok.encode("中国")])).logits.isfinite().all()


@pytest.mark.parametrize("objective,preset", [("mlm", "bert-tiny"), ("span", "t5-tiny")])
def test_other_objectives_on_gpu(pd_data, tmp_path, objective, preset):
    out = tmp_path / objective
    result = pretrain(_cfg(pd_data, out, f"objective={objective}", f"model.preset={preset}", "model.dropout=0.0",
                           "max_steps=30", "eval_every=30", "save_every=30"))
    assert result["nonfinite"] == 0 and result["val_loss"] < 8.0


def test_resume_on_gpu_matches(pd_data, tmp_path):
    full = tmp_path / "full"
    pretrain(_cfg(pd_data, full, "max_steps=12", "save_every=6", "eval_every=12", "precision=fp32"))
    part = tmp_path / "part"
    pretrain(_cfg(pd_data, part, "max_steps=6", "save_every=6", "eval_every=6", "precision=fp32"))
    pretrain(_cfg(pd_data, part, "max_steps=12", "save_every=6", "eval_every=12", "precision=fp32"), resume=True)
    a, b = _losses(full), _losses(part)
    for step in range(1, 13):
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])


def test_fp16_uses_a_grad_scaler(pd_data, tmp_path):
    out = tmp_path / "fp16"
    result = pretrain(_cfg(pd_data, out, "precision=fp16", "max_steps=30", "eval_every=30", "save_every=30"))
    losses = _losses(out)
    assert result["nonfinite"] == 0  # overflows are the scaler's business, not divergence
    assert sum(losses[s] for s in range(26, 31)) < sum(losses[s] for s in range(1, 6)) - 1.0
