"""A training checkpoint (``out_dir/checkpoints/step_N``) as a model: ``duplexlm.load``, ``duplex eval``
and ``duplex export`` into a model directory; checkpoints written before they held their config and
tokenizer (found in the run directory); a run directory given where a model directory belongs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import duplexlm
from duplexlm.cli import main
from duplexlm.errors import DuplexError
from duplexlm.train.config import load_train_config
from duplexlm.train.loop import finetune

STEP_2 = Path("checkpoints") / "step_00000002"




def _same_weights(model: torch.nn.Module, file: Path) -> None:
    weights = load_file(str(file))
    own = model.state_dict()
    assert set(weights) <= set(own)
    for name, tensor in weights.items():
        torch.testing.assert_close(own[name], tensor, atol=0, rtol=0, msg=name)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_a_checkpoint_loads_evaluates_and_exports(mlm_run, pd_data, tmp_path, capsys):
    ckpt = mlm_run / STEP_2
    model, tok = duplexlm.load(ckpt)
    assert model.config.head == "mlm" and tok is not None and tok.vocab_size == model.config.vocab_size
    _same_weights(model, ckpt / "model.safetensors")

    assert main(["eval", "--model", str(ckpt), "--data", str(pd_data), "--max-tokens", "200"]) == 0
    assert "perplexity" in capsys.readouterr().out

    out = tmp_path / "exported"
    assert main(["export", str(ckpt), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    exported, tok2 = duplexlm.load(out)
    _same_weights(exported, ckpt / "model.safetensors")
    assert exported.config == model.config and tok2.vocab_size == tok.vocab_size
    assert not list(tmp_path.glob(".exported.tmp-*"))  # written atomically: no temporary left

    # the output-directory rules of every command
    assert main(["export", str(ckpt), str(out)]) == 2
    assert "--overwrite" in _one_line_error(capsys)
    assert main(["export", str(mlm_run / "checkpoints" / "step_00000004"), str(out), "--overwrite"]) == 0
    _same_weights(duplexlm.load(out)[0], mlm_run / "checkpoints" / "step_00000004" / "model.safetensors")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main(["export", str(ckpt), str(tmp_path / "mine"), "--overwrite"]) == 2
    assert "did not write" in _one_line_error(capsys)
    assert main(["export", str(ckpt), str(mlm_run / "checkpoints"), "--overwrite"]) == 2
    assert "input" in _one_line_error(capsys)
    # what is not a checkpoint is named as such
    assert main(["export", str(mlm_run / "model"), str(tmp_path / "x")]) == 2
    assert "not a training checkpoint" in _one_line_error(capsys)


def _as_written_before(ckpt: Path) -> None:
    """Make ``ckpt`` a checkpoint as written before checkpoints held config.json and the tokenizer."""
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (ckpt / name).unlink(missing_ok=True)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if (ckpt / k).is_file()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def test_an_older_checkpoint_finds_its_config_and_tokenizer_in_the_run(mlm_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(mlm_run, run)
    ckpt = run / STEP_2
    _as_written_before(ckpt)
    model, tok = duplexlm.load(ckpt)
    assert tok is not None and model.config == duplexlm.load(run / "model")[0].config
    _same_weights(model, ckpt / "model.safetensors")
    assert main(["export", str(ckpt), str(tmp_path / "exported")]) == 0
    _same_weights(duplexlm.load(tmp_path / "exported")[0], ckpt / "model.safetensors")
    # a run that never wrote its model: nothing to take the config from, and the error says so
    shutil.rmtree(run / "model")
    with pytest.raises(DuplexError, match=r"no config\.json.*run directory"):
        duplexlm.load(ckpt)
    # a damaged checkpoint is refused, not exported
    good = run / "checkpoints" / "step_00000004"
    with open(good / "model.safetensors", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert main(["export", str(good), str(tmp_path / "broken")]) == 2
    assert "corrupt" in _one_line_error(capsys) and not (tmp_path / "broken").exists()


def test_a_run_directory_names_its_model(mlm_run, pd_data, tmp_path, capsys):
    assert main(["eval", "--model", str(mlm_run), "--data", str(pd_data)]) == 2
    err = _one_line_error(capsys)
    assert "run directory" in err and str(mlm_run / "model") in err and "no config.json" not in err
    # a run that has not written its model yet points at its newest checkpoint
    run = tmp_path / "run"
    shutil.copytree(mlm_run, run, ignore=shutil.ignore_patterns("model"))
    with pytest.raises(DuplexError, match=r"run directory.*step_00000004"):
        duplexlm.load(run)


def test_a_lora_checkpoint_loads_merged(mlm_run, tmp_path):
    """A LoRA run's checkpoint holds the adapters beside the frozen weights: loaded, they are merged, as
    the run's exported model is."""
    texts = tmp_path / "train.jsonl"
    rows = [{"text": t, "label": str(i % 2)} for i, t in enumerate(["很好", "太差了", "不错", "失望", "满意", "糟糕"] * 8)]
    texts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "lora"
    finetune(load_train_config(None, [
        "task=classify", f"data.train={texts}", f"init_from={mlm_run / 'model'}", f"out_dir={out}", "method=lora",
        "data.seq_len=16", "batch_size=8", "max_steps=2", "save_every=2", "eval_every=2", "progress=false",
        "precision=fp32", "optim.lr=1e-2"]))
    checkpoint = load_file(str(out / STEP_2 / "model.safetensors"))
    assert any(".lora_A." in k for k in checkpoint)
    from_ckpt, _ = duplexlm.load(out / STEP_2)
    final, _ = duplexlm.load(out / "model")
    for name, tensor in final.state_dict().items():
        torch.testing.assert_close(from_ckpt.state_dict()[name], tensor, msg=name)
