"""Bad input over the whole command line, one table: every row is a command a user might type with
one mistake in it. Each must exit non-zero with one line on stderr that names the file, line, key or
flag, print no traceback, and leave the file tree exactly as it was — no output directory, no
temporary, and the user's own files untouched. The fine-tuning, serving and compression commands
add their rows here."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from duplexlm.cli import main
from duplexlm.config import DecoderConfig
from duplexlm.data import prepare
from duplexlm.fileutil import read_json_object, write_json
from duplexlm.io import convert_to_hf, save_model
from duplexlm.models import build_model
from duplexlm.tokenizer import save_tokenizer, train_tokenizer

from .conftest import peoples_daily_lines


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Good inputs that the rows corrupt one way each: a corpus, a tokenizer, shards, model dirs."""
    root = tmp_path_factory.mktemp("inputs")
    lines = peoples_daily_lines(300)
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = train_tokenizer(lines, kind="bpe", vocab_size=600)
    save_tokenizer(tok, root / "tok")
    prepare([str(root / "corpus.txt")], root / "data", root / "tok", val_fraction=0.05, seed=1, workers=1,
            progress=False)
    cfg = DecoderConfig(vocab_size=tok.vocab_size, max_seq_len=32, d_model=32, n_layer=2, n_head=2)
    save_model(build_model(cfg), root / "gpt2", tokenizer=tok)
    convert_to_hf(root / "gpt2", root / "gpt2-hf")
    return root


def _tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its content (directories as 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Custom:  # a pickled object that weights_only=True must refuse
    pass


@dataclass
class Case:
    id: str
    argv: Callable[[Path, Path], list[str]]  # (inputs, work dir) -> argv
    match: str  # regex the one stderr line must match
    setup: Callable[[Path, Path], None] | None = None  # makes the broken input in the work dir


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _user_dir(i: Path, w: Path) -> None:
    (w / "mine").mkdir()
    (w / "mine" / "notes.txt").write_text("precious")


def _drop_field(i: Path, w: Path) -> None:
    d = _copy(i / "gpt2", w / "m")
    cfg = read_json_object(d / "config.json")
    del cfg["d_model"]
    write_json(d / "config.json", cfg)


def _extra_tensor(i: Path, w: Path) -> None:
    d = _copy(i / "gpt2", w / "m")
    sd = load_file(d / "model.safetensors")
    sd["blocks.2.attn.qkv.weight"] = torch.zeros(96, 32)
    save_file(sd, d / "model.safetensors")


def _hf_extra_layer(i: Path, w: Path) -> None:
    d = _copy(i / "gpt2-hf", w / "hf")
    sd = load_file(d / "model.safetensors")
    layer1 = {k: v for k, v in sd.items() if ".h.1." in k}  # transformer.h.1.*
    assert layer1
    sd.update({k.replace(".h.1.", ".h.2."): v.clone() for k, v in layer1.items()})
    save_file(sd, d / "model.safetensors")


def _hf_missing_field(i: Path, w: Path) -> None:
    d = _copy(i / "gpt2-hf", w / "hf")
    cfg = read_json_object(d / "config.json")
    del cfg["n_embd"]
    write_json(d / "config.json", cfg)


def _hf_pickle(i: Path, w: Path) -> None:
    d = _copy(i / "gpt2-hf", w / "hf")
    sd = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    torch.save({**sd, "extra": Custom()}, d / "pytorch_model.bin")


def _bad_json(i: Path, w: Path) -> None:
    d = _copy(i / "gpt2", w / "m")
    (d / "config.json").write_text('{"family": "decoder",\n  "d_model": 32,,\n}')


def _bad_yaml(i: Path, w: Path) -> None:
    (w / "cfg.yaml").write_text("objective: clm\nmodel:\n  preset: gpt2-tiny\n   n_layer: 2\n")


def _non_utf8(i: Path, w: Path) -> None:
    (w / "bad.txt").write_bytes("第一行\n第二行\n".encode() + b"\xff\xfe broken\n")


def _run_dir_with_user_file(i: Path, w: Path) -> None:
    (w / "run").mkdir()
    (w / "run" / "thesis.tex").write_text("precious")


def _pretrain(*extra: str) -> Callable[[Path, Path], list[str]]:
    def argv(i: Path, w: Path) -> list[str]:
        return ["pretrain", f"data.path={i / 'data'}", f"out_dir={w / 'run'}", "model.n_layer=1",
                "model.d_model=32", "model.n_head=2", "data.seq_len=32", "batch_size=2", "max_steps=2",
                "progress=false", *extra]
    return argv


def _review_csvs(i: Path, w: Path) -> None:
    rows = "text,label\n" + "".join(f"第{n}条评论很好,正面\n第{n}条评论很差,负面\n" for n in range(20))
    (w / "train.csv").write_text(rows, encoding="utf-8")
    (w / "dev.csv").write_text("text,label\n还行吧,正面\n一般般,中性\n", encoding="utf-8")


def _finetune(*extra: str) -> Callable[[Path, Path], list[str]]:
    def argv(i: Path, w: Path) -> list[str]:
        return ["finetune", "task=classify", f"data.train={w / 'train.csv'}", f"tokenizer={i / 'tok'}",
                f"out_dir={w / 'run'}", "model.preset=bert-tiny", "model.n_layer=1", "model.d_model=32",
                "model.n_head=2", "data.seq_len=32", "batch_size=4", "max_steps=2", "progress=false", *extra]
    return argv


CASES = [
    # --- fine-tuning: the task, its data and its settings, all before the run directory exists
    Case("finetune-unknown-task", _finetune("task=translate"), r"task: expected one of \[.*'classify'", _review_csvs),
    Case("finetune-pretraining-objective", _finetune("task=mlm"), r"task: expected classify, regress, tag, multi, sft, seq2seq, dpo or grpo",
         _review_csvs),
    Case("pretrain-a-task", _pretrain("objective=classify"), r"objective: expected clm, mlm, span or rtd, found 'classify'"),
    Case("finetune-no-tokenizer", lambda i, w: [a for a in _finetune()(i, w) if not a.startswith("tokenizer=")],
         r"tokenizer: fine-tuning from scratch", _review_csvs),
    Case("finetune-missing-file", lambda i, w: [*_finetune()(i, w), f"data.train={w / 'nope.csv'}"], r"nope\.csv",
         _review_csvs),
    Case("finetune-unknown-label", _finetune("data.validation=dev.csv"), r"dev\.csv:3: .*中性", _review_csvs),
    Case("finetune-missing-field", _finetune("data.label_field=sentiment"), r"train\.csv:2: .*sentiment",
         _review_csvs),
    Case("finetune-unknown-metric", _finetune("eval_metric=acc"), r"unknown metric 'acc'.*did you mean 'accuracy'",
         _review_csvs),
    Case("finetune-bad-freeze", _finetune("method=freeze", "method_args.freeze=top"),
         r"method_args\.freeze: expected 'embeddings', 'layers:N' or 'all-but-head', found 'top'", _review_csvs),
    Case("finetune-lora-bad-target", _finetune("method=lora", "method_args.lora_targets=attn.nothing"),
         r"attn\.nothing", _review_csvs),
    Case("finetune-tag-on-decoder", _finetune("task=tag", "model.preset=gpt2-tiny"),
         r"objective 'tag' trains a model of family 'encoder' or 'rnn'", _review_csvs),
    # --- output directories: never a user's files, never the current directory or an input
    Case("convert-into-user-dir", lambda i, w: ["convert", "--to-hf", str(i / "gpt2"), str(w / "mine")],
         r"dst: .*mine holds files duplexlm did not write \(notes\.txt\)", _user_dir),
    Case("convert-overwrite-user-dir",
         lambda i, w: ["convert", "--to-hf", str(i / "gpt2"), str(w / "mine"), "--overwrite"],
         r"holds files duplexlm did not write \(notes\.txt\)", _user_dir),
    Case("convert-into-cwd", lambda i, w: ["convert", "--to-hf", str(i / "gpt2"), "."],
         r"dst: \. is the current directory"),
    Case("convert-into-parent", lambda i, w: ["convert", "--to-hf", str(i / "gpt2"), ".."],
         r"dst: \.\. is the current directory or one above it"),
    Case("convert-onto-its-input", lambda i, w: ["convert", "--from-hf", str(w / "hf"), str(w / "hf"), "--overwrite"],
         r"dst: .*hf is \(or contains\) the input", lambda i, w: _copy(i / "gpt2-hf", w / "hf") and None),
    Case("convert-earlier-output-without-overwrite",
         lambda i, w: ["convert", "--to-hf", str(i / "gpt2"), str(w / "m")],
         r"already holds a model directory; pass --overwrite", lambda i, w: _copy(i / "gpt2", w / "m") and None),
    Case("convert-onto-a-file", lambda i, w: ["convert", "--to-hf", str(i / "gpt2"), str(w / "f")],
         r"exists and is not a directory", lambda i, w: (w / "f").write_text("x") and None),
    Case("tokenizer-into-user-dir",
         lambda i, w: ["tokenizer", "train", str(i / "corpus.txt"), "--out", str(w / "mine"), "--quiet"],
         r"--out: .*holds files duplexlm did not write", _user_dir),
    Case("tokenizer-empty-out", lambda i, w: ["tokenizer", "train", str(i / "corpus.txt"), "--out", "", "--quiet"],
         r"--out: expected a directory path, found an empty one"),
    Case("prepare-onto-tokenizer",
         lambda i, w: ["data", "prepare", str(i / "corpus.txt"), "--tokenizer", str(w / "tok"), "--out",
                       str(w / "tok"), "--overwrite", "--quiet"],
         r"is \(or contains\) the input", lambda i, w: _copy(i / "tok", w / "tok") and None),
    Case("prepare-into-cwd",
         lambda i, w: ["data", "prepare", str(i / "corpus.txt"), "--tokenizer", str(i / "tok"), "--out", ".",
                       "--quiet"], r"out_dir: \. is the current directory"),
    Case("pretrain-into-user-dir", _pretrain(), r"out_dir: .*run holds files duplexlm did not write \(thesis\.tex\)",
         _run_dir_with_user_file),
    Case("pretrain-overwrite-user-dir", _pretrain(), r"holds files duplexlm did not write",
         _run_dir_with_user_file),
    Case("pretrain-empty-out-dir", lambda i, w: [*_pretrain()(i, w), "out_dir="], r"out_dir: expected a directory"),
    Case("pretrain-out-dir-cwd", lambda i, w: [*_pretrain()(i, w), "out_dir=."], r"out_dir: \. is the current"),
    Case("pretrain-resume-and-overwrite", lambda i, w: [*_pretrain()(i, w), "--resume", "--overwrite"],
         r"--resume and --overwrite: pick one"),
    # --- flags: a bad count or fraction names the flag
    Case("max-docs-negative",
         lambda i, w: ["tokenizer", "train", str(i / "corpus.txt"), "--out", str(w / "t"), "--max-docs", "-1"],
         r"argument --max-docs: expected an integer >= 0, found -1"),
    Case("vocab-size-zero",
         lambda i, w: ["tokenizer", "train", str(i / "corpus.txt"), "--out", str(w / "t"), "--vocab-size", "0"],
         r"argument --vocab-size: expected an integer >= 1, found 0"),
    Case("vocab-size-text",
         lambda i, w: ["tokenizer", "train", str(i / "corpus.txt"), "--out", str(w / "t"), "--vocab-size", "big"],
         r"argument --vocab-size: expected an integer, found 'big'"),
    Case("val-fraction-above-one",
         lambda i, w: ["data", "prepare", str(i / "corpus.txt"), "--tokenizer", str(i / "tok"), "--out",
                       str(w / "d"), "--val-fraction", "1.5"], r"argument --val-fraction: expected a number in \[0, 1\)"),
    Case("workers-zero",
         lambda i, w: ["data", "prepare", str(i / "corpus.txt"), "--tokenizer", str(i / "tok"), "--out",
                       str(w / "d"), "--workers", "0"], r"argument --workers: expected an integer >= 1, found 0"),
    # --- data: the file and line
    Case("prepare-non-utf8",
         lambda i, w: ["data", "prepare", str(w / "bad.txt"), "--tokenizer", str(i / "tok"), "--out", str(w / "d"),
                       "--quiet"], r"bad\.txt:3: expected UTF-8", _non_utf8),
    Case("prepare-missing-source",
         lambda i, w: ["data", "prepare", str(w / "nope.txt"), "--tokenizer", str(i / "tok"), "--out", str(w / "d"),
                       "--quiet"], r"nope\.txt: no such file or directory"),
    Case("prepare-tokenizer-missing",
         lambda i, w: ["data", "prepare", str(i / "corpus.txt"), "--tokenizer", str(w), "--out", str(w / "d"),
                       "--quiet"], r"no tokenizer\.json"),
    # --- model directories: every field and tensor accounted for
    Case("config-missing-field", lambda i, w: ["convert", "--to-hf", str(w / "m"), str(w / "out")],
         r"m/config\.json: missing field 'd_model'", _drop_field),
    Case("config-invalid-json", lambda i, w: ["convert", "--to-hf", str(w / "m"), str(w / "out")],
         r"m/config\.json: not valid JSON \(line 2, column", _bad_json),
    Case("unexpected-tensor", lambda i, w: ["convert", "--to-hf", str(w / "m"), str(w / "out")],
         r"weights do not match the config: unexpected tensors \['blocks\.2\.attn\.qkv\.weight'\]", _extra_tensor),
    Case("hf-extra-layer", lambda i, w: ["convert", "--from-hf", str(w / "hf"), str(w / "out")],
         r"hf: unexpected tensors for GPT-2, which config\.json does not describe: \['h\.2\.", _hf_extra_layer),
    Case("hf-missing-field", lambda i, w: ["convert", "--from-hf", str(w / "hf"), str(w / "out")],
         r"hf/config\.json: missing field 'n_embd'", _hf_missing_field),
    Case("hf-pickle", lambda i, w: ["convert", "--from-hf", str(w / "hf"), str(w / "out")],
         r"pytorch_model\.bin: refused to load: .*weights_only=True.*convert it once to safetensors", _hf_pickle),
    Case("info-missing", lambda i, w: ["info", str(w / "missing")], r"missing: not a directory"),
    # --- training configs: checked before the run directory exists
    Case("yaml-syntax", lambda i, w: ["pretrain", str(w / "cfg.yaml"), f"out_dir={w / 'run'}"],
         r"cfg\.yaml:4:\d+: not valid YAML", _bad_yaml),
    Case("yaml-missing", lambda i, w: ["pretrain", str(w / "none.yaml")], r"none\.yaml: config file not found"),
    Case("unknown-key", _pretrain("bach_size=4"), r"unknown config key 'bach_size'; did you mean 'batch_size'"),
    Case("override-not-yaml", _pretrain("optim.lr=[1"), r"override 'optim\.lr=\[1': the value is not a valid YAML"),
    Case("negative-lr", _pretrain("optim.lr=-1"), r"optim\.lr"),
    Case("negative-steps", _pretrain("max_steps=-1"), r"max_steps: expected a positive integer, found -1"),
    Case("mask-prob-above-one", _pretrain("objective=mlm", "model.preset=bert-tiny", "objective_args.mask_prob=1.5"),
         r"objective_args\.mask_prob: expected a probability in \(0, 1\], found 1\.5"),
    Case("noise-density-above-one",
         _pretrain("objective=span", "model.preset=t5-tiny", "objective_args.noise_density=1.2"),
         r"objective_args\.noise_density: expected a fraction in \(0, 1\), found 1\.2"),
    Case("seq-len-above-context", _pretrain("data.seq_len=512", "model.max_seq_len=256"),
         r"data\.seq_len=512 is longer than the model's context \(model\.max_seq_len=256\)"),
    Case("whole-word-without-boundaries",
         _pretrain("objective=mlm", "model.preset=bert-tiny", "objective_args.whole_word=true"),
         r"objective_args\.whole_word: .* was prepared without word boundaries; .*--word-boundaries"),
    Case("whole-word-with-clm", _pretrain("objective_args.whole_word=true"),
         r"objective_args\.whole_word: applies to objectives 'mlm' and 'rtd' only"),
    Case("wrong-family", _pretrain("objective=mlm"), r"objective 'mlm' trains a model of family 'encoder'"),
    Case("bad-device", _pretrain("device=gpu"), r"device: expected auto, cpu, cuda or cuda:N, found 'gpu'"),
    Case("data-path-missing", lambda i, w: [*_pretrain()(i, w), f"data.path={w / 'nodata'}"], r"nodata"),
    Case("init-from-shorter-context", lambda i, w: [*_pretrain()(i, w)[:3], "data.seq_len=64", f"init_from={i / 'gpt2'}",
                                                   "max_steps=1", "progress=false"],
         r"data\.seq_len=64 is longer than the model's context \(.*gpt2's max_seq_len=32\)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case: Case, inputs: Path, tmp_path: Path, capsys,
                                                  monkeypatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    if case.setup is not None:
        case.setup(inputs, work)
    if case.id == "pretrain-overwrite-user-dir":
        argv = [*case.argv(inputs, work), "--overwrite"]
    else:
        argv = case.argv(inputs, work)
    before, inputs_before = _tree(work), _tree(inputs)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert re.search(case.match, lines[0]), lines[0]
    assert lines[0].startswith("duplex"), lines[0]
    assert _tree(work) == before  # no output, no temporary, the user's files as they were
    assert _tree(inputs) == inputs_before


def test_overwrite_replaces_only_an_earlier_output(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    assert main(["convert", "--to-hf", str(inputs / "gpt2"), str(out)]) == 0
    first = _tree(out)
    assert main(["convert", "--to-hf", str(inputs / "gpt2"), str(out)]) == 2  # not without --overwrite
    assert _tree(out) == first
    assert main(["convert", "--to-hf", str(inputs / "gpt2"), str(out), "--overwrite"]) == 0
    assert _tree(out) == first
    (out / "notes.txt").write_text("mine")
    assert main(["convert", "--to-hf", str(inputs / "gpt2"), str(out), "--overwrite"]) == 2
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()


def test_pretrain_overwrite_starts_over_and_resume_continues(inputs: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = _pretrain("max_steps=2", "save_every=1", "eval_every=2")(inputs, tmp_path)
    assert main(argv) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]
    assert main(argv) == 2  # an earlier run: --resume or --overwrite
    assert main([*argv, "save_every=2", "--overwrite"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]  # the old run is gone


def _duplex() -> list[str]:
    return [sys.executable, "-m", "duplexlm.cli"]


INTERRUPTIBLE = {
    # the tokenizer trainer runs in native code that never checks for signals: the command must
    # still answer at once
    "tokenizer-train": lambda inputs, out: ["tokenizer", "train", "peoples-daily", "reviews-zh", "--vocab-size",
                                            "30000", "--out", str(out), "--quiet"],
    "data-prepare": lambda inputs, out: ["data", "prepare", "peoples-daily", "--tokenizer", str(inputs / "tok"),
                                         "--out", str(out), "--workers", "2", "--near-dedup", "--quiet"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(INTERRUPTIBLE))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_command_stops_and_leaves_nothing(command: str, sig: int, inputs: Path, tmp_path: Path) -> None:
    """A signal to the whole process group (a terminal's Ctrl-C, `timeout`, a job runner) while the
    command works (prepare: two tokenizer workers): the conventional exit code within seconds, one
    line, no traceback, no output, no temporary, no process left behind."""
    proc = subprocess.Popen(
        [*_duplex(), *INTERRUPTIBLE[command](inputs, tmp_path / "out")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
        # a shell's background job (`pytest ... &`) ignores SIGINT and its children inherit that; a
        # terminal's command does not: give the command the terminal's default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while command == "data-prepare" and not list(tmp_path.glob(".out.tmp-*")) and time.monotonic() < deadline \
            and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(3.0 if command == "tokenizer-train" else 1.0)  # well into the work
    assert proc.poll() is None, "the command finished before it could be interrupted"
    os.killpg(proc.pid, sig)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 128 + sig, err
    assert took < 10, f"took {took:.1f}s to stop"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert ("interrupted (Ctrl-C)" if sig == signal.SIGINT else "terminated (SIGTERM)") in lines[0]
    assert list(tmp_path.iterdir()) == []  # neither the output nor a hidden temporary
    ps = subprocess.run(["ps", "-o", "pid=", "-g", str(proc.pid)], capture_output=True, text=True)
    assert ps.stdout.strip() == "", f"processes left in the group: {ps.stdout}"


@pytest.mark.slow
def test_sigterm_during_pretrain_saves_and_exits_143(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = _pretrain("max_steps=100000", "save_every=100000", "eval_every=100000", "log_every=1")(inputs, tmp_path)
    proc = subprocess.Popen([*_duplex(), *argv[0:1], *[a.replace(str(tmp_path / "run"), str(out)) for a in argv[1:]]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and metrics.read_text().count("\n") >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout[-2000:] + err[-2000:]
    assert "Traceback" not in err
    assert "continue with --resume" in stdout
    assert len(list((out / "checkpoints").iterdir())) == 1
