"""The `duplex` command as a user runs it."""

import json
import subprocess
import sys

import pytest
import torch

import duplexlm
from duplexlm.cli import main
from duplexlm.config import DecoderConfig
from duplexlm.models import build_model


def test_presets_lists_real_sizes(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "gpt2 " in out and "124.4M" in out  # GPT-2 small's published count
    assert "bert-base" in out and "t5-small" in out and "lstm-tiny" in out


def test_convert_round_trip_via_cli(tmp_path, capsys):
    cfg = DecoderConfig(vocab_size=50, max_seq_len=32, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                        positions="rope", norm="rmsnorm", activation="silu", gated_mlp=True, qkv_bias=False,
                        out_bias=False, mlp_bias=False)
    model = build_model(cfg).eval()
    duplexlm.save_model(model, tmp_path / "ours")
    assert main(["convert", "--to-hf", str(tmp_path / "ours"), str(tmp_path / "hf")]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back, _ = duplexlm.load(tmp_path / "back")
    ids = torch.randint(0, 50, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, atol=0, rtol=0)
    assert main(["info", str(tmp_path / "back")]) == 0
    assert "decoder" in capsys.readouterr().out


def test_user_error_is_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "duplex info: error:" in err and "missing" in err and "Traceback" not in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "duplexlm.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for sub in ("presets", "convert", "demo", "info"):
        assert sub in out


@pytest.mark.slow
def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "characters/token on held-out text" in out
    assert out.count("[before]") == 6 and out.count("[after]") == 6  # samples and fill-mask, before and after
    assert "clm: 60 steps" in out and "mlm: 60 steps" in out
    assert "causal=True" in out and "bidirectional=True" in out
    assert "parity with transformers' BertModel" in out
    for d in ("gpt2-tiny/model", "bert-tiny/model", "data-bpe", "data-wordpiece", "llama-tiny-hf"):
        assert (tmp_path / d).is_dir(), d
    losses = [json.loads(line) for line in (tmp_path / "gpt2-tiny" / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in losses if "loss" in r]
    assert train[-1] < train[0] - 0.3  # the decoder learned something in 60 steps
