"""Knowledge distillation on the shared loop: the teacher's logits as a second target for classify
and clm, the loss going down and the student moving towards its teacher, exact resume, hidden-state
relations, ``duplex distill`` from the command line, and the mismatches it refuses."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

import duplexlm
from duplexlm.cli import main
from duplexlm.errors import ConfigError
from duplexlm.train.config import load_train_config
from duplexlm.train.distill import relation_loss, soft_loss
from duplexlm.train.loop import finetune, pretrain, setup, train_step

from .conftest import finetune_one_and_two_processes
from .test_finetune import SMALL, _cfg, _records, review_files  # noqa: F401 - the fixture

TEACHER = ["model.d_model=64", "model.n_layer=2", "model.n_head=4"]
STUDENT = ["model.d_model=32", "model.n_layer=1", "model.n_head=2"]


@pytest.fixture(scope="module")
def teacher(review_files, pd_corpus, tmp_path_factory):  # noqa: F811
    """A small classifier fine-tuned on the real reviews: the teacher."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    finetune(_cfg(review_files, pd_corpus / "tok", out, "max_steps=30", *TEACHER))
    return out / "model"


@pytest.fixture(scope="module")
def lm_teacher(pd_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_teacher") / "run"
    pretrain(load_train_config(None, [f"data.path={pd_data}", f"out_dir={out}", "model.preset=gpt2-tiny",
                                      "model.n_layer=2", "model.d_model=64", "model.n_head=4", "data.seq_len=32",
                                      "batch_size=8", "max_steps=60", "eval_every=30", "save_every=60",
                                      "log_every=5", "progress=false", "optim.warmup_steps=5", "optim.lr=3e-3",
                                      "precision=fp32"]))
    return out / "model"


@pytest.fixture(scope="module")
def opinionated(teacher, review_files, tmp_path_factory):  # noqa: F811
    """The teacher with its class scores scaled up: confident, input-dependent opinions for a student
    to copy (the fixture teacher, trained briefly, is near 50/50 on everything)."""
    model, tok = duplexlm.load(teacher)
    enc = tok(_texts(review_files["train"]), max_length=48)
    with torch.no_grad():
        model.classifier.weight.mul_(40.0)
        z = model.eval()(enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        model.classifier.bias[1] -= (z[:, 1] - z[:, 0]).median()  # half the reviews each way
    out = tmp_path_factory.mktemp("opinionated") / "model"
    duplexlm.io.save_model(model, out, tokenizer=tok)
    return out


def _texts(path) -> list[str]:
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def _kl_to(teacher_dir, student_dir, path) -> tuple[float, float]:
    """Over the reviews of ``path``: mean KL(teacher || student) of the class distributions, and how
    often the student picks the teacher's class."""
    t, tok = duplexlm.load(teacher_dir)
    s, _ = duplexlm.load(student_dir)
    enc = tok(_texts(path), max_length=48)
    with torch.no_grad():
        zt = t.eval()(enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        zs = s.eval()(enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    return float(soft_loss(zs, zt, temperature=1.0)), float((zs.argmax(-1) == zt.argmax(-1)).float().mean())


def test_soft_loss_matches_its_definition():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    for T in (1.0, 3.0):
        p = torch.softmax(t / T, -1)
        expected = (p * (p.log() - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
        torch.testing.assert_close(soft_loss(s, t, T), expected)
    # its gradient pushes the student's distribution towards the teacher's
    s.requires_grad_(True)
    soft_loss(s, t, 2.0).backward()
    moved = s.detach() - 0.5 * s.grad
    assert soft_loss(moved, t, 2.0) < soft_loss(s.detach(), t, 2.0)


def test_relations_are_width_free_and_ignore_padding():
    h = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6)
    mask[1, 4:] = 0
    # what sits on padded positions does not count
    noisy = h.clone()
    noisy[1, 4:] = torch.randn(2, 16) * 10
    student = torch.randn(2, 6, 8)
    torch.testing.assert_close(relation_loss(student, h, mask), relation_loss(student, noisy, mask))
    assert relation_loss(h * 1.0, h, mask).abs() < 1e-6


def test_classify_student_learns_from_its_teacher(opinionated, review_files, pd_corpus, tmp_path):  # noqa: F811
    out = tmp_path / "student"
    # one evaluation, at the end: the exported model is the last, not the best on the labels
    result = finetune(_cfg(review_files, pd_corpus / "tok", out, "max_steps=60", "eval_every=60", *STUDENT,
                           f"distill.teacher={opinionated}", "distill.alpha=1", "distill.temperature=2"))
    losses = [r["loss"] for r in _records(out) if "loss" in r]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])  # the soft loss goes down
    assert "test_accuracy" in result  # scored on the labels, as any classifier
    # the trained student is far closer to its teacher than the same student at step 0: it learned
    # the teacher's opinions (alpha=1: from the soft targets alone, the labels played no part)
    init = tmp_path / "init"
    finetune(_cfg(review_files, pd_corpus / "tok", init, "max_steps=1", "optim.lr=1e-9", "optim.min_lr=0",
                  *STUDENT))
    (kl0, agree0), (kl, agree) = _kl_to(opinionated, init / "model", review_files["train"]), \
        _kl_to(opinionated, out / "model", review_files["train"])
    assert kl < 0.5 * kl0 and agree > max(agree0, 0.85), (kl0, kl, agree0, agree)
    s, _ = duplexlm.load(out / "model")
    t, _ = duplexlm.load(opinionated)
    assert duplexlm.models.count_parameters(s) < duplexlm.models.count_parameters(t) / 2


def test_a_student_equal_to_its_teacher_has_nothing_to_learn(teacher, review_files, pd_corpus, tmp_path):  # noqa: F811
    # alpha=1: only the soft loss and the relations, which are 0 when the student is the teacher (no
    # dropout: the teacher runs in evaluation mode)
    cfg = load_train_config(None, [
        "task=classify", f"data.train={review_files['train']}", f"data.validation={review_files['validation']}",
        f"out_dir={tmp_path / 'same'}", f"init_from={teacher}", f"distill.teacher={teacher}", "distill.alpha=1",
        "distill.hidden_weight=1", "model.dropout=0", *[x for x in SMALL if not x.startswith("model.")]])
    run = setup(cfg)
    out = train_step(run, 0)
    assert out["loss"] < 1e-5, out
    # with the hard labels mixed in, the loss is (1 - alpha) times the plain cross-entropy
    cfg.distill.alpha = 0.25
    cfg.distill.hidden_weight = 0.0
    run = setup(cfg, overwrite=True)
    mixed = train_step(run, 0)["loss"]
    cfg.distill.teacher = ""
    cfg.distill.alpha, cfg.distill.temperature = 0.5, 2.0
    run = setup(cfg, overwrite=True)
    plain = train_step(run, 0)["loss"]
    assert mixed == pytest.approx(0.75 * plain, rel=1e-4)


def test_resume_of_a_distillation_repeats_it_exactly(teacher, review_files, pd_corpus, tmp_path):  # noqa: F811
    args = ["max_steps=20", "save_every=10", "eval_every=10", "model.dropout=0.1", *STUDENT,
            f"distill.teacher={teacher}", "distill.hidden_weight=0.5"]
    full = tmp_path / "full"
    finetune(_cfg(review_files, pd_corpus / "tok", full, *args))
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_00000020")
    shutil.rmtree(part / "model")
    finetune(_cfg(review_files, pd_corpus / "tok", part, *args), resume=True)
    losses = lambda out: [(r["step"], r.get("loss"), r.get("val_loss")) for r in _records(out)]  # noqa: E731
    assert losses(part) == losses(full)


def _lm_kl_to(teacher_dir, student_dir, data, seq_len: int = 32, rows: int = 32) -> tuple[float, float]:
    """Over held-out text (the validation split of ``data``, ``rows`` windows of ``seq_len`` tokens): the
    mean per-token KL(teacher || student) of the next-token distributions, and the student's own
    next-token cross-entropy."""
    from duplexlm.data.shards import TokenShards

    val = TokenShards(data, "val")
    ids = torch.from_numpy(val.get(0, rows * (seq_len + 1))).view(rows, seq_len + 1)
    t, _ = duplexlm.load(teacher_dir)
    s, _ = duplexlm.load(student_dir)
    with torch.no_grad():
        zt = t.eval()(ids[:, :-1]).logits.flatten(0, 1)
        zs = s.eval()(ids[:, :-1]).logits.flatten(0, 1)
    ce = torch.nn.functional.cross_entropy(zs.float(), ids[:, 1:].flatten())
    return float(soft_loss(zs, zt, temperature=1.0)), float(ce)


def test_clm_student_distils_from_a_decoder(lm_teacher, pd_data, tmp_path):
    base = [f"data.path={pd_data}", "model.preset=gpt2-tiny", "model.n_layer=1", "model.d_model=32",
            "model.n_head=2", "data.seq_len=32", "batch_size=8", "eval_every=20", "save_every=40", "log_every=5",
            "progress=false", "optim.warmup_steps=5", "optim.lr=3e-3", "precision=fp32", "max_steps=40"]
    out = tmp_path / "student"
    result = pretrain(load_train_config(None, [*base, f"out_dir={out}", f"distill.teacher={lm_teacher}",
                                               "distill.alpha=0.7"]))
    losses = [r["loss"] for r in _records(out) if "loss" in r]
    assert losses[-1] < losses[0]
    # its twin: the same student (same seed, so the same initial weights and batches), the same steps,
    # without the teacher. The distilled student ends much closer to its teacher on held-out text: the
    # teacher's soft targets, not the data alone, shaped it
    twin = tmp_path / "twin"
    pretrain(load_train_config(None, [*base, f"out_dir={twin}"]))
    kl, ce = _lm_kl_to(lm_teacher, out / "model", pd_data)
    kl_twin, _ = _lm_kl_to(lm_teacher, twin / "model", pd_data)
    assert kl < 0.7 * kl_twin, (kl, kl_twin)
    assert ce == pytest.approx(math.log(result["val_ppl"]), rel=0.2)  # measured on text like its own val


def test_duplex_distill_command(teacher, review_files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "cli"
    fields = tmp_path / "student.yaml"
    fields.write_text("preset: bert-tiny\nd_model: 32\nn_layer: 1\nn_head: 2\n", encoding="utf-8")
    code = main(["distill", "--teacher", str(teacher), "--student", str(fields), "--task", "classify",
                 f"data.train={review_files['train']}", f"data.validation={review_files['validation']}",
                 f"data.test={review_files['test']}", f"out_dir={out}", "max_steps=10", "eval_every=5",
                 "save_every=10", "progress=false", "data.seq_len=48", "precision=fp32"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "distill: teacher" in printed and "student in" in printed
    saved = json.loads((out / "model" / "config.json").read_text(encoding="utf-8"))
    assert saved["d_model"] == 32 and saved["head"] == "classify"


@pytest.mark.parametrize("extra, message", [
    (["distill.temperature=0"], "distill.temperature: expected a positive number"),
    (["distill.alpha=1.5"], "distill.alpha: expected a weight in [0, 1]"),
    (["distill.alpha=0.3"], "distill.alpha: distillation needs a teacher"),
])
def test_bad_distill_settings(extra, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_train_config(None, ["task=classify", "data.train=x.csv", *extra])


def test_a_tagging_run_cannot_distil(teacher):
    with pytest.raises(ConfigError, match="distillation trains task=classify or objective clm"):
        load_train_config(None, ["task=tag", "data.train=x.csv", f"distill.teacher={teacher}"])


def test_mismatched_teachers_are_refused(teacher, lm_teacher, review_files, pd_corpus, pd_data, tmp_path):  # noqa: F811
    # a language model cannot teach a classifier
    with pytest.raises(ConfigError, match=r"distill\.teacher: .* has no classification head"):
        setup(_cfg(review_files, pd_corpus / "tok", tmp_path / "a", "max_steps=2", *STUDENT,
                   f"distill.teacher={lm_teacher}"))
    # a student wider than its teacher's vocabulary
    with pytest.raises(ConfigError, match="student's vocabulary must be the teacher's"):
        setup(load_train_config(None, [f"data.path={pd_data}", "model.preset=gpt2-tiny", "model.n_layer=1",
                                       "model.d_model=32", "model.n_head=2", "model.vocab_size=1100",
                                       "data.seq_len=32", f"out_dir={tmp_path / 'b'}",
                                       f"distill.teacher={lm_teacher}"]))
    with pytest.raises(ConfigError, match="is not a directory"):
        setup(_cfg(review_files, pd_corpus / "tok", tmp_path / "c", "max_steps=2", *STUDENT,
                   f"distill.teacher={tmp_path / 'nowhere'}"))


@pytest.mark.slow
def test_two_processes_distil_as_one(teacher, review_files, pd_corpus, tmp_path):  # noqa: F811
    # the teacher's targets join each rank's own rows: 2 gloo processes of 4 rows == 1 process of 8 (the
    # relations term is a mean per example, so it does not depend on the split either)
    common = [f"data.train={review_files['train']}", f"data.validation={review_files['validation']}",
              f"tokenizer={pd_corpus / 'tok'}", "task=classify", "model.preset=bert-tiny", *SMALL, *STUDENT,
              "max_steps=4", "eval_every=4", "save_every=4", "grad_accum=2", "device=cpu", "model.dropout=0",
              "model.attn_dropout=0", f"distill.teacher={teacher}", "distill.hidden_weight=0.5"]
    one, two = finetune_one_and_two_processes(tmp_path, common, 8, 4)
    a = {r["step"]: r["loss"] for r in _records(one) if "loss" in r}
    b = {r["step"]: r["loss"] for r in _records(two) if "loss" in r}
    assert a.keys() == b.keys() == {1, 2, 3, 4}
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
