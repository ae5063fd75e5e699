"""The training loop as a user runs it: loss goes down, exact resume after SIGKILL, Ctrl-C saves,
non-finite steps are skipped, checkpoints are complete or absent, DDP matches one process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import duplexlm
from duplexlm.config import ConfigError
from duplexlm.objectives import pretraining  # the module whose compute_loss the clm objective calls
from duplexlm.train.checkpoint import latest_checkpoint, list_checkpoints
from duplexlm.train.config import load_train_config
from duplexlm.train.loop import TrainingDiverged, pretrain

TINY = ["model.n_layer=2", "model.d_model=64", "model.n_head=4", "data.seq_len=32", "batch_size=4",
        "eval_batches=2", "log_every=1", "progress=false", "optim.warmup_steps=5", "optim.lr=3e-3",
        "precision=fp32"]


def _cfg(data: Path, out: Path, *extra: str):
    return load_train_config(None, [f"data.path={data}", f"out_dir={out}", *TINY, *extra])


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _cli(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "duplexlm.cli", "pretrain", f"data.path={data}", f"out_dir={out}", *TINY, *extra]


def test_clm_loss_goes_down_and_run_dir_is_complete(pd_data, tmp_path):
    out = tmp_path / "run"
    result = pretrain(_cfg(pd_data, out, "max_steps=40", "eval_every=20", "save_every=20"))
    losses = _losses(out)
    first = sum(losses[s] for s in range(1, 6)) / 5
    last = sum(losses[s] for s in range(36, 41)) / 5
    assert last < first - 0.4, (first, last)
    assert result["val_loss"] < first - 0.3
    assert result["val_bpb"] == pytest.approx(result["val_loss"] / 0.6931471805599453 / _bytes_per_token(pd_data))
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "model/config.json", "model/tokenizer.json"):
        assert (out / name).is_file(), name
    model, tok = duplexlm.load(out / "model")  # the final model is a normal model directory
    ids = torch.tensor([tok.encode("中国")])
    assert model(ids).logits.shape == (1, ids.shape[1], tok.vocab_size)


def _bytes_per_token(data: Path) -> float:
    val = json.loads((data / "meta.json").read_text())["splits"]["val"]
    return val["bytes"] / val["tokens"]


@pytest.mark.parametrize("objective,preset", [("mlm", "bert-tiny"), ("span", "t5-tiny"), ("rtd", "bert-tiny")])
def test_other_objectives_train(pd_data, tmp_path, objective, preset):
    out = tmp_path / objective
    cfg = load_train_config(None, [f"data.path={pd_data}", f"out_dir={out}", f"objective={objective}",
                                   f"model.preset={preset}", "model.n_layer=1", "model.d_model=64",
                                   "model.dropout=0.0", "data.seq_len=64", "batch_size=8", "eval_batches=2",
                                   "log_every=1", "progress=false", "optim.lr=3e-3", "optim.warmup_steps=5",
                                   "precision=fp32", "max_steps=50", "eval_every=50", "save_every=50"])
    result = pretrain(cfg)
    losses = _losses(out)
    assert sum(losses[s] for s in range(41, 51)) / 10 < sum(losses[s] for s in range(1, 11)) / 10 - 0.3
    assert result["val_loss"] < losses[1]


def test_resume_after_sigkill_matches_uninterrupted_run(pd_data, tmp_path):
    steps = ["max_steps=48", "save_every=4", "eval_every=16"]
    full = tmp_path / "full"
    subprocess.run(_cli(pd_data, full, *steps), check=True, capture_output=True)
    expected = _losses(full)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(pd_data, killed, *steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        ckpt = latest_checkpoint(killed / "checkpoints")
        if ckpt is not None and ckpt.name >= "step_00000008":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    ckpt = latest_checkpoint(killed / "checkpoints")
    assert ckpt is not None and ckpt.name < "step_00000048"  # killed mid-run
    res = subprocess.run(_cli(pd_data, killed, *steps, "--resume"), check=True, capture_output=True, text=True)
    assert f"resumed from {ckpt}" in res.stdout
    got = _losses(killed)
    assert sorted(got) == list(range(1, 49))
    assert got == expected  # bit-identical per-step losses


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(pd_data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cli(pd_data, out, "max_steps=100000", "save_every=100000", "eval_every=100000"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and
                                          len((out / "metrics.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output  # the shell's convention for a run stopped by Ctrl-C
    assert "continue with --resume" in output
    ckpt = latest_checkpoint(out / "checkpoints")
    assert ckpt is not None
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] >= 3 and state["step"] == max(_losses(out))


def test_nonfinite_steps_are_skipped_then_stop(pd_data, tmp_path, monkeypatch):
    real = pretraining.compute_loss
    calls = {"n": 0}

    def flaky(model, batch, objective):
        loss, n = real(model, batch, objective)
        calls["n"] += 1
        if model.training and calls["n"] in (3, 4):  # two bad steps
            loss = loss * float("nan")
        return loss, n

    monkeypatch.setattr(pretraining, "compute_loss", flaky)
    out = tmp_path / "run"
    result = pretrain(_cfg(pd_data, out, "max_steps=8", "eval_every=8", "save_every=8"))
    assert result["nonfinite"] == 2
    state = json.loads((latest_checkpoint(out / "checkpoints") / "trainer_state.json").read_text())
    assert state["opt_steps"] == 6  # the schedule did not advance on skipped steps

    def always_nan(model, batch, objective):
        loss, n = real(model, batch, objective)
        return loss * float("nan"), n

    monkeypatch.setattr(pretraining, "compute_loss", always_nan)
    with pytest.raises(TrainingDiverged, match="3 non-finite steps in a row"):
        pretrain(_cfg(pd_data, tmp_path / "run2", "max_steps=20", "max_nonfinite=3"))


def test_checkpoints_keep_last_and_ignore_incomplete(pd_data, tmp_path):
    out = tmp_path / "run"
    pretrain(_cfg(pd_data, out, "max_steps=10", "save_every=2", "keep_last=2", "eval_every=10"))
    names = [p.name for p in list_checkpoints(out / "checkpoints")]
    assert names == ["step_00000008", "step_00000010"]
    # a half-written checkpoint (no manifest) is ignored by --resume
    half = out / "checkpoints" / "step_00000012"
    shutil.copytree(out / "checkpoints" / "step_00000010", half)
    (half / "manifest.json").unlink()
    assert latest_checkpoint(out / "checkpoints").name == "step_00000010"
    # a corrupted file is detected
    with open(out / "checkpoints" / "step_00000010" / "model.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff\xff\xff")
    from duplexlm.train.checkpoint import load_checkpoint

    with pytest.raises(ValueError, match="incomplete or corrupt"):
        load_checkpoint(out / "checkpoints" / "step_00000010")


def test_config_errors_name_the_key(pd_data, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_train_config(None, ["bach_size=3"])
    with pytest.raises(ConfigError, match=r"did you mean 'optim\.warmup_steps'"):
        load_train_config(None, ["optim.warmup=3"])
    with pytest.raises(ConfigError, match=r"objective 'mlm' trains a model of family 'encoder'"):
        pretrain(_cfg(pd_data, tmp_path / "r", "objective=mlm", "max_steps=1"))
    with pytest.raises(ConfigError, match="did you mean 'n_layer'"):
        pretrain(_cfg(pd_data, tmp_path / "r", "model.n_layers=1", "max_steps=1"))


# objective → (extra settings, data fixture); dropout off: it draws per (seed, step, rank), so it differs
# between one process and two by design, while masks and spans are drawn per sample
SPLIT_CASES = {
    "clm": ([], "pd_data"),
    "mlm": (["objective=mlm", "model.preset=bert-tiny", "model.dropout=0.0", "model.attn_dropout=0.0"], "pd_data"),
    "mlm-whole-word": (["objective=mlm", "model.preset=bert-tiny", "model.dropout=0.0", "model.attn_dropout=0.0",
                        "objective_args.whole_word=true"], "pd_data_words"),
    "span": (["objective=span", "model.preset=t5-tiny", "model.dropout=0.0"], "pd_data"),
}


def _val_loss(out: Path) -> float:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in rows if "val_loss" in r][-1]


def _steps(out: Path) -> dict[int, dict]:
    """Each training step's metrics row (loss, grad_norm, ...)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_two_processes_match_one(request, tmp_path, case, mode):
    """The same global batch, read by one process or split over two ranks and two micro-batches, gives
    the same losses, gradients and weights up to float rounding: masks and spans are drawn per global
    sample. Not bit for bit: the two sum each gradient in a different order (micro-batches of 4 rows or
    2, then the all-reduce), which moves it by an ulp or so whatever the CPU and thread count."""
    extra, data_fixture = SPLIT_CASES[case]
    data = request.getfixturevalue(data_fixture)
    torchrun = Path(sys.executable).with_name("torchrun")
    # a gloo CPU comparison, also on a GPU machine (one GPU cannot host two ranks)
    common = ["max_steps=6", "eval_every=6", "save_every=6", "grad_accum=2", "device=cpu", *extra]
    one = tmp_path / "one"
    subprocess.run(_cli(data, one, *common, "batch_size=4"), check=True, capture_output=True)
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "duplexlm.cli", "pretrain",
           f"data.path={data}", f"out_dir={two}", *TINY, *common, "batch_size=2", f"fsdp={mode == 'fsdp'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    a, b = _steps(one), _steps(two)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    # Step 1 starts from the same weights, so only rounding differs: measured 3e-8 (loss) and 2e-7 (grad
    # norm) relative. A wrong split of the batch, masks drawn per rank or another seed is off by 8e-5 or
    # more in the loss; a missing gradient all-reduce or a gradient scaled by the rank count by 0.2 or
    # more in the grad norm.
    assert a[1]["loss"] == pytest.approx(b[1]["loss"], rel=1e-6, abs=0), (a[1], b[1])
    assert a[1]["grad_norm"] == pytest.approx(b[1]["grad_norm"], rel=1e-5, abs=0), (a[1], b[1])
    # Then the rounding grows, as between any two summation orders: Adam divides each gradient by its
    # own size, so an ulp in a gradient below eps (1e-8) moves its weight by up to lr·ulp/eps (3.5e-6
    # after step 1), and a ReLU input nudged across 0 changes a gradient outright. Largest drift measured
    # (t5-tiny's ReLU, AVX-512): loss 5e-6 and grad norm 3e-5 relative, single weights 3e-3 apart at step
    # 6. The tolerances leave 20x room; each mistake above is off by 0.2 or more in some step's grad norm.
    for step in a:
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], rel=1e-4), (step, a[step], b[step])
        assert a[step]["grad_norm"] == pytest.approx(b[step]["grad_norm"], rel=1e-3), (step, a[step], b[step])
    assert _val_loss(one) == pytest.approx(_val_loss(two), rel=1e-4)  # evaluation reads and masks the same samples
    assert len(list_checkpoints(two / "checkpoints")) == 1  # rank 0 alone wrote
    one_model, _ = duplexlm.load(one / "model")
    two_model, _ = duplexlm.load(two / "model")  # FSDP gathers the shards into one full model
    # weights: how far apart, against how far training moved them (from the initial weights both built)
    from duplexlm.models import build_model

    torch.manual_seed(load_train_config(one / "config.yaml", []).seed)
    start = dict(build_model(one_model.config).named_parameters())
    two_params = dict(two_model.named_parameters())
    for k, w in one_model.named_parameters():
        apart, moved = (w - two_params[k]).norm().item(), (w - start[k]).norm().item()
        # measured: at most 4e-3 of the move (one weight tensor of t5-tiny); a mistake: 0.06 to 0.9
        assert apart <= 2e-2 * moved, (k, apart, moved)


def test_overriding_width_rederives_head_size(pd_data):
    from duplexlm.tokenizer import Tokenizer
    from duplexlm.train.build import model_config_for

    tok = Tokenizer.from_dir(pd_data)
    cfg = model_config_for(load_train_config(None, ["model.preset=gpt2-tiny", "model.d_model=768",
                                                    "model.n_head=12"]), tok.vocab_size, tok)
    assert (cfg.head_dim, cfg.n_kv_head, cfg.d_ff) == (64, 12, 3072)
    cfg = model_config_for(load_train_config(None, ["model.preset=llama-tiny", "model.d_model=256"]),
                           tok.vocab_size, tok)
    assert (cfg.head_dim, cfg.n_kv_head, cfg.d_ff) == (64, 2, 352)  # GQA and MLP width set by the preset stay


def test_tensorboard_logging(pd_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    pretrain(_cfg(pd_data, out, "max_steps=4", "eval_every=2", "save_every=4", "tensorboard=true"))
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"loss", "lr", "val_loss", "val_bpb"} <= set(tags)
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]


@pytest.mark.parametrize("objective", ["mlm", "rtd"])
def test_resume_is_exact_with_dropout_and_masking(pd_data, tmp_path, objective):
    """Dropout, MLM masks and RTD replacements draw random numbers: a resumed run must draw the same ones."""
    args = [f"objective={objective}", "model.preset=bert-tiny", "model.n_layer=1", "model.d_model=64", "model.dropout=0.1",
            "max_steps=8", "save_every=4", "keep_last=3", "eval_every=8"]
    full = tmp_path / "full"
    pretrain(_cfg(pd_data, full, *args))
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_00000008")
    shutil.rmtree(part / "model")
    with open(part / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # a line cut short by a kill must not break --resume
    pretrain(_cfg(pd_data, part, *args), resume=True)
    assert _losses(part) == _losses(full)


def test_stale_checkpoints_and_changed_config_are_refused(pd_data, tmp_path):
    out = tmp_path / "run"
    pretrain(_cfg(pd_data, out, "max_steps=2", "save_every=2", "eval_every=2"))
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        pretrain(_cfg(pd_data, out, "max_steps=2"))
    with pytest.raises(ConfigError, match=r"different config \(batch_size: 4 → 8"):
        pretrain(_cfg(pd_data, out, "max_steps=4", "batch_size=8"), resume=True)


def test_model_section_rules():
    cfg = load_train_config(None, ["objective=mlm", "model.family=encoder", "model.d_model=64", "model.n_head=4"])
    assert "preset" not in cfg.model
    with pytest.raises(ConfigError, match="init_from loads the model's own config"):
        load_train_config(None, ["init_from=some/dir", "model.preset=bert-tiny"])
    # other model keys are kept, and checked against the loaded config (test_init_from_model_overrides)
    assert load_train_config(None, ["init_from=some/dir", "model.dropout=0.2"]).model == {"dropout": 0.2}


def test_resume_falls_back_past_a_corrupt_checkpoint_and_init_from(pd_data, tmp_path, capsys):
    out = tmp_path / "run"
    pretrain(_cfg(pd_data, out, "max_steps=4", "save_every=2", "eval_every=4", "keep_last=3"))
    shutil.rmtree(out / "model")
    newest = out / "checkpoints" / "step_00000004"
    with open(newest / "optimizer.pt", "r+b") as f:
        f.seek(40)
        f.write(b"\x00\x01\x02\x03")
    result = pretrain(_cfg(pd_data, out, "max_steps=4", "save_every=2", "eval_every=4", "keep_last=3"), resume=True)
    assert "skipping" in capsys.readouterr().out and result["step"] == 4
    # continue pretraining a finished model on the same data (a new run)
    cont = load_train_config(None, [f"data.path={pd_data}", f"out_dir={tmp_path / 'more'}", f"init_from={out / 'model'}",
                                    "data.seq_len=32", "batch_size=4", "max_steps=2", "eval_every=2", "save_every=2",
                                    "progress=false", "precision=fp32"])
    assert pretrain(cont)["step"] == 2


def test_init_from_model_overrides(pd_data, tmp_path):
    """With init_from, the model section changes what keeps the weights' shapes (dropout here) and
    refuses what would not fit them, naming the field."""
    out = tmp_path / "run"
    pretrain(_cfg(pd_data, out, "max_steps=2", "save_every=2", "eval_every=2", "model.dropout=0.0"))
    base = [f"data.path={pd_data}", f"init_from={out / 'model'}", "data.seq_len=32", "batch_size=4",
            "max_steps=1", "eval_every=1", "save_every=1", "progress=false", "precision=fp32"]
    cfg = load_train_config(None, [*base, f"out_dir={tmp_path / 'a'}", "model.dropout=0.3"])
    pretrain(cfg)
    saved = json.loads((tmp_path / "a" / "model" / "config.json").read_text())
    assert saved["dropout"] == 0.3 and saved["d_model"] == json.loads((out / "model" / "config.json").read_text())["d_model"]
    with pytest.raises(ConfigError, match=r"model.n_layer=3: init_from=.* has n_layer=\d"):
        pretrain(load_train_config(None, [*base, f"out_dir={tmp_path / 'b'}", "model.n_layer=3"]))
    with pytest.raises(ConfigError, match=r"model\.dropuot: not a field of .*did you mean 'dropout'"):
        pretrain(load_train_config(None, [*base, f"out_dir={tmp_path / 'c'}", "model.dropuot=0.3"]))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_more_processes_than_gpus_is_a_named_error(monkeypatch):
    """torchrun --nproc-per-node 2 on a one-GPU machine: a ConfigError naming the fix, not CUDA's
    "invalid device ordinal" from deep inside the first collective."""
    from duplexlm.train.distributed import init_distributed

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"process 1 on this machine, but it has 1 GPU; use --nproc-per-node 1"):
        init_distributed("auto")


@pytest.mark.parametrize("objective,preset", [("clm", "gpt2-tiny"), ("mlm", "bert-tiny"), ("rtd", "bert-tiny"),
                                              ("span", "t5-tiny")])
def test_the_logged_step_loss_is_the_objectives_loss_on_that_batch(pd_data, tmp_path, objective, preset):
    """The loss a step reports (and weights micro-batches and ranks by) is the objective's own mean:
    the count read off the batch before the forward pass agrees with the loss's."""
    from duplexlm.train.loop import cleanup, make_batch, setup, train_step

    no_dropout = ["model.dropout=0.0"] + (["model.attn_dropout=0.0"] if preset == "bert-tiny" else [])
    run = setup(_cfg(pd_data, tmp_path / "r", f"objective={objective}", f"model.preset={preset}", *no_dropout,
                     "grad_accum=2", "max_steps=2"))
    try:
        batches = [make_batch(run, run.train, m * 4, 4, (run.cfg.seed,)) for m in range(2)]
        with torch.no_grad():
            parts = [run.spec.loss(run.raw_model, b, run.loss_options) for b in batches]
        expected = sum(loss.item() * n for loss, n in parts) / sum(n for _, n in parts)
        assert train_step(run, 0)["loss"] == pytest.approx(expected, rel=1e-5)
    finally:
        cleanup(run.info)


def test_threads_sets_torchs_threads_for_every_step_and_restores_them(pd_data, tmp_path, monkeypatch):
    from duplexlm.train import loop

    before = torch.get_num_threads()
    want = 1 if before > 1 else 2  # a count other than the default, so the setting shows
    seen: list[int] = []
    step = loop.train_step

    def counting_step(run, i):
        seen.append(torch.get_num_threads())
        return step(run, i)

    monkeypatch.setattr(loop, "train_step", counting_step)
    pretrain(_cfg(pd_data, tmp_path / "run", f"threads={want}", "max_steps=3", "eval_every=3", "save_every=3"))
    assert seen == [want] * 3
    assert torch.get_num_threads() == before  # the caller's count again once the run is over
    saved = (tmp_path / "run" / "config.yaml").read_text(encoding="utf-8")
    assert f"threads: {want}" in saved


@pytest.mark.parametrize("value", ["0", "-2", "abc", "1.5", "true"])
def test_a_bad_threads_value_is_a_one_line_error_naming_it(value, tmp_path, capsys):
    from duplexlm.cli import main

    with pytest.raises(ConfigError, match=r"^threads: expected"):
        load_train_config(None, [f"threads={value}"])
    assert main(["pretrain", f"out_dir={tmp_path / 'run'}", f"threads={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("duplex pretrain: error: threads: expected") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_threads_under_torchrun_on_cpu_is_per_process(monkeypatch):
    """Each rank gets ``threads``; by default the cores are shared among the machine's processes."""
    import torch.distributed as dist

    from duplexlm.train.distributed import cleanup, init_distributed

    for name, value in (("RANK", "1"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: None)  # no group: the settings alone
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    before = torch.get_num_threads()
    info = init_distributed("cpu")
    assert torch.get_num_threads() == 4 and info.rank == 1
    cleanup(info)
    assert torch.get_num_threads() == before
    info = init_distributed("cpu", threads=3)
    assert torch.get_num_threads() == 3
    cleanup(info)
    assert torch.get_num_threads() == before


def test_adafactor_trains_a_t5_and_resumes_exactly(pd_data, tmp_path):
    """optim.name=adafactor (T5's optimizer, steps relative to each weight's RMS) lowers span
    corruption's loss, and its factored state survives a checkpoint: the resumed run's losses equal
    the uninterrupted run's."""
    args = ["objective=span", "model.preset=t5-tiny", "model.dropout=0.0", "max_steps=30", "save_every=15",
            "eval_every=30", "optim.lr=3e-2", "optim.warmup_steps=0"]
    full = tmp_path / "full"
    pretrain(_cfg(pd_data, full, *args, "optim.name=adafactor"))
    losses = _losses(full)
    assert sum(list(losses.values())[-5:]) / 5 < losses[1] - 1.0
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_00000030")
    shutil.rmtree(part / "model")
    pretrain(_cfg(pd_data, part, *args, "optim.name=adafactor"), resume=True)
    assert _losses(part) == losses
    with pytest.raises(ConfigError, match=r"optim.name: expected one of \['adamw', 'adafactor'\], found 'sgd'"):
        pretrain(_cfg(pd_data, tmp_path / "x", *args, "optim.name=sgd"))
