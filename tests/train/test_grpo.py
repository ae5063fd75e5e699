"""`duplex finetune task=grpo`: groups sampled through the decoding engine, rewards from rules or a
user's function, advantages within each group, the clipped policy gradient moving the policy towards
the better completions, exact resume, 2 processes equal to 1, and bad rewards named."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import duplexlm
from duplexlm.data.prompts import arithmetic, load_prompt_data
from duplexlm.errors import ConfigError, DataError
from duplexlm.objectives.generative import sft_forward, token_logps
from duplexlm.objectives.rl import grpo_loss, grpo_token_losses
from duplexlm.scores.rewards import RewardError, make_reward, task_reward
from duplexlm.train.config import load_train_config
from duplexlm.train.loop import finetune, make_batch, setup, train_step

from .conftest import finetune_one_and_two_processes

SMALL = ["model.preset=llama-tiny", "model.n_layer=2", "model.d_model=48", "model.n_head=2", "model.n_kv_head=2",
         "data.seq_len=64", "batch_size=4", "eval_every=5", "save_every=5", "log_every=1", "progress=false",
         "optim.warmup_steps=0", "optim.lr=3e-3", "precision=fp32", "generation.max_new_tokens=8",
         "generation.val_examples=12", "objective_args.group_size=4", "model.dropout=0.0"]
DIGITS = "def digits(prompts, completions, **kwargs):\n    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("grpo")
    (root / "reward.py").write_text(DIGITS + "def boom(prompts, completions, **kwargs):\n    raise ValueError('no')\n"
                                    "def text(prompts, completions, **kwargs):\n    return ['1' for _ in completions]\n"
                                    "def short(prompts, completions, **kwargs):\n    return [1.0]\n", encoding="utf-8")
    rows = [{"prompt": e.prompt[-1]["content"], "answer": e.answer, "task": e.task}
            for e in arithmetic(train=60, evaluation=12).splits["train"]]
    (root / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:48]), encoding="utf-8")
    (root / "val.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[48:]), encoding="utf-8")
    return {"train": root / "train.jsonl", "validation": root / "val.jsonl", "reward": root / "reward.py"}


def _cfg(files, tok: Path, out: Path, *extra: str):
    return load_train_config(None, ["task=grpo", f"data.train={files['train']}", f"data.validation={files['validation']}",
                                    f"tokenizer={tok}", f"out_dir={out}", f"objective_args.reward={files['reward']}:digits",
                                    *SMALL, *extra])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_loss_is_the_clipped_policy_gradient_with_a_k3_kl():
    lp = torch.tensor([-1.0, -1.0, -2.0])
    old = torch.tensor([-1.5, -0.5, -2.0])  # ratios e^0.5, e^-0.5, 1
    adv = torch.tensor([1.0, -1.0, 1.0])
    ref = torch.tensor([-1.0, -2.0, -1.0])
    got = grpo_token_losses(lp, old, adv, ref, clip_eps=0.2, kl_coef=0.1)
    k3 = lambda d: math.exp(d) - d - 1  # noqa: E731
    want = [-1.2 + 0.1 * k3(0.0),  # ratio 1.65 clipped to 1.2 for a positive advantage
            0.8 + 0.1 * k3(-1.0),  # ratio 0.61 clipped to 0.8 for a negative one: -min(-0.61, -0.8)
            -1.0 + 0.1 * k3(1.0)]
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-6, rtol=0)


def test_one_step_raises_the_better_completions_and_lowers_the_worse(files, pd_corpus, tmp_path):
    run = setup(_cfg(files, pd_corpus / "tok", tmp_path / "a", "max_steps=1", "objective_args.kl_coef=0"))
    batch = make_batch(run, run.train, 0, 4, (1,))
    assert batch["input_ids"].shape[0] == 16 and batch["advantages"].shape == (16,)
    # advantages are normalised within each group of 4 completions of one prompt
    for group in batch["advantages"].view(4, 4):
        assert abs(float(group.sum())) < 1e-3
    # a random model earns the digits' reward too rarely to show both signs: set them, half and half
    batch["advantages"] = torch.tensor([1.0, -1.0] * 8)
    model = run.raw_model

    def row_logps() -> torch.Tensor:
        with torch.no_grad():
            lp = token_logps(sft_forward(model, batch).logits, batch)
        scored = batch["labels"] != -100
        return torch.zeros(16).index_add(0, scored.nonzero()[:, 0], lp)

    before = row_logps()
    loss, n = grpo_loss(model, batch, run.loss_options)
    assert n == 16
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
    change = row_logps() - before
    a = batch["advantages"]
    assert change[a > 0].mean() > 0 > change[a < 0].mean()


@pytest.mark.parametrize("kind", ["grpo", "dapo", "dr_grpo"])
def test_a_step_split_into_micro_batches_equals_the_whole_for_each_loss_type(files, pd_corpus, tmp_path, kind,
                                                                              monkeypatch):
    # the same 4 prompts' groups, in one batch of 4 or two of 2: the loss the step logs is the loss type's
    # (ratio 1, no KL: minus the advantages, averaged its way) and so is the gradient's norm
    import duplexlm.train.loop as loop

    made = loop.make_batch

    def varied(run, sampler, start, n, seeds):  # completions of 5-8 tokens (a random model runs to the limit)
        batch = made(run, sampler, start, n, seeds)
        rows = batch["labels"].shape[0]
        for i in range(rows):
            cols = (batch["labels"][i] != -100).nonzero()[:, 0]
            batch["labels"][i, cols[len(cols) - (start * 4 + i) % 4:]] = -100
        batch["advantages"] = torch.arange(start * 4, start * 4 + rows, dtype=torch.float32) / 8 - 1
        seen.append(batch)
        return batch

    seen: list[dict[str, torch.Tensor]] = []

    monkeypatch.setattr(loop, "make_batch", varied)
    runs = [setup(_cfg(files, pd_corpus / "tok", tmp_path / f"{b}", "max_steps=1", f"objective_args.loss_type={kind}",
                       "objective_args.kl_coef=0", f"batch_size={b}", f"grad_accum={4 // b}", "device=cpu"))
            for b in (4, 2)]
    seen.clear()  # setup made batches of its own
    logs = [train_step(run, 0) for run in runs]
    whole = seen[0]
    assert [len(b["labels"]) for b in seen] == [16, 8, 8]
    split_lengths = torch.cat([(b["labels"] != -100).sum(1) for b in seen[1:]])
    assert split_lengths.tolist() == (whole["labels"] != -100).sum(1).tolist()  # the same completions either way
    scored = whole["labels"] != -100
    adv = whole["advantages"][:, None].expand_as(scored)[scored]
    lengths = scored.sum(1)
    per_row = torch.zeros(16).index_add(0, scored.nonzero()[:, 0], -adv)
    want = {"grpo": (per_row / lengths).mean(), "dapo": -adv.mean(), "dr_grpo": -adv.sum() / (16 * 8)}[kind]
    assert logs[0]["loss"] == pytest.approx(float(want), abs=1e-5)
    assert logs[1]["loss"] == pytest.approx(float(want), abs=1e-5)
    assert logs[0]["grad_norm"] == pytest.approx(logs[1]["grad_norm"], rel=1e-4)  # the same gradient


def test_advantages_unscaled_are_the_rewards_above_their_group_mean(files, pd_corpus, tmp_path):
    # "none" (Dr. GRPO) keeps a group's spread; "group" divides it out: the same samples (same seeds) both ways
    a = {}
    for scale in ("group", "none"):
        run = setup(_cfg(files, pd_corpus / "tok", tmp_path / scale, "max_steps=1", "objective_args.kl_coef=0",
                         f"objective_args.scale_rewards={scale}"))
        a[scale] = make_batch(run, run.train, 0, 4, (1,))["advantages"].view(4, 4)
    spread = a["none"].std(dim=1)
    assert float(spread.max()) > 0 and float(a["none"].abs().max()) <= 1.0  # rewards in [0, 1]
    assert torch.allclose(a["none"].sum(1), torch.zeros(4), atol=1e-6)
    assert torch.allclose(a["group"] * (spread[:, None] + 1e-4), a["none"], atol=1e-6)
    with pytest.raises(ConfigError, match="scale_rewards"):
        _cfg(files, pd_corpus / "tok", tmp_path / "x", "objective_args.scale_rewards=batch")


def test_grpo_trains_logs_rewards_and_scores_the_test_split(files, pd_corpus, tmp_path):
    out = tmp_path / "run"
    result = finetune(_cfg(files, pd_corpus / "tok", out, "max_steps=10", f"data.test={files['validation']}"))
    rows = [r for r in _records(out) if "reward" in r]
    assert len(rows) == 10 and all({"kl", "reward_std", "completion_tokens", "zero_std_groups"} <= r.keys() for r in rows)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[-1]["kl"] > 0  # the policy leaves its reference
    assert [r["val_reward"] for r in _records(out) if "val_reward" in r] and "test_reward" in result
    assert (out / "reward.png").is_file() and (out / "loss.png").is_file()
    gens = [json.loads(line) for line in (out / "test_generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(gens) == 12 and all(0 <= g["reward"] <= 1 for g in gens)
    assert duplexlm.load(out / "model")[0].config.head == "lm"


def test_a_log_line_averages_the_rewards_of_its_steps(files, pd_corpus, tmp_path):
    each, pairs = tmp_path / "each", tmp_path / "pairs"
    finetune(_cfg(files, pd_corpus / "tok", each, "max_steps=4"))
    finetune(_cfg(files, pd_corpus / "tok", pairs, "max_steps=4", "log_every=2"))  # the same samples, seed for seed
    one = [r for r in _records(each) if "reward" in r]
    two = [r for r in _records(pairs) if "reward" in r]
    assert [r["step"] for r in two] == [2, 4]
    for k in ("reward", "reward_std", "completion_tokens", "kl"):
        assert [r[k] for r in two] == pytest.approx([(one[0][k] + one[1][k]) / 2, (one[2][k] + one[3][k]) / 2])


def test_grpo_resumes_exactly_with_several_steps_per_sample(files, pd_corpus, tmp_path):
    # two micro-batches a step, each step's samples used for two steps: both micro-batches are kept
    args = ["max_steps=8", "objective_args.grpo_iterations=2", "save_every=4", "eval_every=4", "grad_accum=2",
            "batch_size=2"]
    full = tmp_path / "full"
    finetune(_cfg(files, pd_corpus / "tok", full, *args))
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_00000008")
    shutil.rmtree(part / "model")
    finetune(_cfg(files, pd_corpus / "tok", part, *args), resume=True)
    rows = lambda out: [(r["step"], r.get("loss"), r.get("reward"), r.get("val_reward")) for r in _records(out)]  # noqa: E731
    assert rows(part) == rows(full)
    steps = [r for r in _records(full) if "reward" in r]
    # one batch of samples, two steps: the same rewards and KL logged, over both micro-batches
    assert steps[0]["reward"] == steps[1]["reward"] and steps[2]["reward"] == steps[3]["reward"]
    assert steps[1]["loss"] != steps[0]["loss"]  # the second step sees the first step's update (ratio ≠ 1)


@pytest.mark.slow
def test_two_processes_tune_as_one(files, pd_corpus, tmp_path):
    common = [f"data.train={files['train']}", f"data.validation={files['validation']}", f"tokenizer={pd_corpus / 'tok'}",
              "task=grpo", f"objective_args.reward={files['reward']}:digits", *SMALL, "max_steps=3", "eval_every=3",
              "save_every=3", "grad_accum=2", "device=cpu", "generation.val_examples=4"]
    one, two = finetune_one_and_two_processes(tmp_path, common, 4, 2)
    a = {r["step"]: (r["loss"], r["reward"]) for r in _records(one) if "loss" in r}
    b = {r["step"]: (r["loss"], r["reward"]) for r in _records(two) if "loss" in r}
    assert a.keys() == b.keys() == {1, 2, 3}
    for step in a:
        assert abs(a[step][0] - b[step][0]) < 1e-5 and abs(a[step][1] - b[step][1]) < 1e-6, (step, a[step], b[step])


# ----------------------------------------------------------------------------------------------------
# Rewards and data


def test_rewards():
    assert task_reward("情感判断", "负面", "负面") == 1.0 and task_reward("情感判断", "正面", "负面") == 0.0
    assert task_reward("算术", " 82", "82") == 1.0 and task_reward("算术", "82。", "82") == 0.0
    assert task_reward("转繁体", "發展", "發展") == pytest.approx(1.0)
    assert task_reward("实体识别", "人名：无；地名：无；机构名：无", "人名：无；地名：无；机构名：无") == 1.0
    assert task_reward("实体识别", "", "人名：无；地名：无；机构名：无") == 0.0  # out of format: nothing
    logits = torch.randn(3, 5)
    batch = {"labels": torch.tensor([[1, 4, -100]])}
    torch.testing.assert_close(token_logps(logits[None], batch, temperature=0.5),
                               torch.log_softmax(logits[:2] * 2, -1)[[0, 1], [1, 4]])
    r = make_reward("regex:\\d+")
    assert r(prompts=["", ""], completions=["42", "四十二"], references=[None, None], tasks=[None, None]) == [1.0, 0.0]
    with pytest.raises(RewardError, match="completion 0 has no reference"):
        make_reward("exact")(prompts=[""], completions=["1"], references=[None], tasks=[None])
    with pytest.raises(ConfigError, match="expected exact, chrf, task"):
        make_reward("bleu")


def test_bad_reward_functions_are_named(files, pd_corpus, tmp_path):
    where = f"{files['reward']}"
    for name, message in (("boom", "raised ValueError: no"), ("text", "completion 0: expected a finite number, found '1'"),
                          ("short", "expected a list of 4 numbers")):
        with pytest.raises(RewardError, match=f"reward function {where}:{name}.*{message}"):
            setup(_cfg(files, pd_corpus / "tok", tmp_path / name, f"objective_args.reward={where}:{name}"))
        assert not (tmp_path / name).exists()  # nothing written
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        setup(_cfg(files, pd_corpus / "tok", tmp_path / "x", f"objective_args.reward={where}:nope"))


def test_bad_settings_and_prompts_are_refused(files, pd_corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"objective_args\.group_size: expected an integer >= 2"):
        _cfg(files, pd_corpus / "tok", tmp_path / "a", "objective_args.group_size=1")
    with pytest.raises(ConfigError, match=r"objective_args\.loss_type"):
        _cfg(files, pd_corpus / "tok", tmp_path / "a", "objective_args.loss_type=bnpo")
    with pytest.raises(ConfigError, match="fsdp: task=grpo samples"):
        _cfg(files, pd_corpus / "tok", tmp_path / "a", "fsdp=true")
    with pytest.raises(ConfigError, match="give a multiple of grpo_iterations"):
        _cfg(files, pd_corpus / "tok", tmp_path / "a", "objective_args.grpo_iterations=3", "save_every=5")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1="}\n{"answer": "2"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=f"{bad}:2: expected a field 'prompt'"):
        load_prompt_data(str(bad))
    data = load_prompt_data("arithmetic")
    train = {e.prompt[-1]["content"].split("：")[-1] for e in data.splits["train"]}
    assert not train & {e.prompt[-1]["content"].split("：")[-1] for e in data.splits["test"]}  # no test question trained


def test_unseen_zh_task_prompts_are_none_of_the_instruction_tuning_ones():
    from duplexlm.data.gen_tasks import zh_task_input, zh_tasks

    tuned = zh_tasks().splits
    data = load_prompt_data("zh-tasks-unseen")
    train = data.splits["train"]
    counts = {t: sum(e.task == t for e in train) for t in ("情感判断", "翻译", "转繁体", "实体识别")}
    assert counts == {"情感判断": 2000, "翻译": 2000, "转繁体": 2000, "实体识别": 2000}
    sources = {e.source for e in train}
    assert len(sources) == len(train) and not sources & {e.source for e in tuned["train"]}
    inputs = {(e.task, zh_task_input(e.as_chat())) for e in train}
    assert not inputs & {(e.task, zh_task_input(e)) for part in tuned.values() for e in part}  # nor evaluated on
    assert [e.source for e in data.splits["test"]] == [e.source for e in tuned["test"]]  # scored as zh-tasks
    assert [e.source for e in load_prompt_data("zh-tasks-unseen").splits["train"]] == [e.source for e in train]


def test_eval_on_start_scores_the_start_and_keeps_it_when_no_step_beats_it(files, pd_corpus, tmp_path):
    from safetensors.torch import load_file

    start = tmp_path / "start"
    finetune(_cfg(files, pd_corpus / "tok", start, "max_steps=2"))
    shape = ("model.preset", "model.n_layer", "model.d_model", "model.n_head", "model.n_kv_head")

    def tuned(out: Path, *extra: str) -> dict[str, torch.Tensor]:
        # a learning rate too small to change a greedy answer: no later validation beats the start's
        settings = [s for s in SMALL if not s.startswith(shape)]
        finetune(load_train_config(None, [
            "task=grpo", f"data.train={files['train']}", f"data.validation={files['validation']}",
            f"out_dir={out}", f"objective_args.reward={files['reward']}:digits", *settings,
            f"init_from={start / 'model'}", "max_steps=5", "optim.lr=1e-12", "optim.min_lr=1e-13", *extra]))
        return load_file(str(out / "model" / "model.safetensors"))

    first = load_file(str(start / "model" / "model.safetensors"))
    kept = tuned(tmp_path / "run", "eval_on_start=true")
    vals = [r for r in _records(tmp_path / "run") if "val_reward" in r]
    assert [r["step"] for r in vals] == [0, 5] and vals[0]["val_reward"] == vals[1]["val_reward"]
    assert first.keys() == kept.keys() and all(torch.equal(first[k], kept[k]) for k in first)  # the start, kept
    moved = tuned(tmp_path / "without")
    assert [r["step"] for r in _records(tmp_path / "without") if "val_reward" in r] == [5]
    assert not all(torch.equal(first[k], moved[k]) for k in first)  # step 5's weights, a hair from the start
