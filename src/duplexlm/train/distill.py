"""Knowledge distillation as one more target of the shared training loop: a teacher model's outputs
are computed for every training batch (``teacher_logits``, and ``teacher_hidden`` when hidden states
are matched) and the task's loss becomes

    loss = (1 - alpha) * hard + alpha * T² * KL(softmax(z_t / T) || softmax(z_s / T)) + w_h * relations

``hard`` is the objective's own loss on the labels (cross-entropy for ``classify``, next-token
cross-entropy for ``clm``), the KL is averaged over what the hard loss scores (examples, or labelled
tokens), and ``T²`` keeps the soft gradients' scale independent of the temperature (Hinton, Vinyals
and Dean, 2015). ``relations`` is optional hidden-state matching that needs no projection between
widths: the KL between the teacher's and the student's token-to-token attention-like distributions
``softmax(H Hᵀ / sqrt(d))`` over the last hidden states (the value-relation transfer of MiniLM,
Wang et al., 2020), so a student of any width can match a teacher of any other.

The teacher runs in evaluation mode without gradients and deterministically, so a batch stays a pure
function of (seed, step, rank) and a resumed run is the uninterrupted one. Evaluation batches carry
no teacher outputs: validation and test scores are the student's plain task loss and metrics.

>>> import torch
>>> s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
>>> soft_loss(s, s.clone(), temperature=2.0).item()  # a student equal to its teacher: nothing to learn
0.0
>>> round(soft_loss(torch.zeros(1, 2), torch.tensor([[4.0, 0.0]]), temperature=1.0).item(), 4)
0.6031
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from ..errors import ConfigError
from ..objectives import IGNORE_INDEX, LossOptions, ObjectiveSpec, Replay
from ..presets import PRESETS

TEACHER_KEYS = ("teacher_logits", "teacher_hidden")


def soft_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T² · KL(softmax(teacher/T) || softmax(student/T))`` averaged over the rows of (N, K) logits
    (fp32; an empty N gives 0)."""
    if student.shape != teacher.shape:
        raise ValueError(f"distillation: the student's logits are {tuple(student.shape)}, the teacher's "
                         f"{tuple(teacher.shape)}")
    if student.shape[0] == 0:
        return student.sum() * 0.0
    t = temperature
    log_s = F.log_softmax(student.float() / t, dim=-1)
    log_t = F.log_softmax(teacher.float() / t, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * (t * t)


def relation_loss(student: Tensor, teacher: Tensor, attention_mask: Tensor | None) -> Tensor:
    """KL between the teacher's and the student's token-to-token relations over (B, T, d) hidden states:
    per query token, ``softmax(h_i · h_j / sqrt(d))`` over the key tokens ``j`` (padding excluded),
    averaged over each example's real query tokens, then over the examples. Widths may differ: each
    side is scaled by its own ``d``.

    >>> h = torch.randn(2, 5, 8)
    >>> relation_loss(h, h.clone(), None).abs().item() < 1e-6
    True
    >>> relation_loss(torch.randn(2, 5, 4), h, torch.ones(2, 5)).item() > 0  # a narrower student
    True
    """
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(f"distillation: hidden states of {tuple(student.shape)} and {tuple(teacher.shape)} "
                         "cover different tokens")

    def log_relations(h: Tensor) -> Tensor:
        h = h.float()
        scores = h @ h.transpose(1, 2) / h.shape[-1] ** 0.5
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask.bool()[:, None, :], torch.finfo(scores.dtype).min)
        return F.log_softmax(scores, dim=-1)

    log_s, log_t = log_relations(student), log_relations(teacher)
    per_token = (log_t.exp() * (log_t - log_s)).sum(-1)  # (B, T)
    if attention_mask is None:
        return per_token.mean()
    # a mean per example, then over examples: what the loop weights micro-batches and ranks by, so the
    # term does not depend on how a batch is split (a mean over all tokens would weight long rows more
    # in one split than in another)
    real = attention_mask.to(per_token.dtype)
    per_example = (per_token * real).sum(-1) / real.sum(-1).clamp(min=1)
    return per_example.mean()


@dataclass(frozen=True)
class Distiller:
    """A loaded teacher and how its outputs are mixed into the student's loss."""

    teacher: nn.Module
    temperature: float
    alpha: float
    hidden_weight: float

    @torch.no_grad()
    def targets(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The teacher's outputs for a batch: ``teacher_logits`` (and ``teacher_hidden``)."""
        out = self.teacher(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        found = {"teacher_logits": out.logits.detach()}
        if self.hidden_weight > 0:
            found["teacher_hidden"] = out.last_hidden_state.detach()
        return found

    def wrap(self, spec: ObjectiveSpec) -> ObjectiveSpec:
        """``spec`` with its loss mixed with the teacher's targets (when the batch carries them)."""
        return replace(spec, loss=self._loss(spec))

    def _loss(self, spec: ObjectiveSpec) -> Callable[[nn.Module, Mapping[str, Tensor], LossOptions], tuple[Tensor, int]]:
        base = spec.loss

        def loss(model: nn.Module, batch: Mapping[str, Tensor], options: LossOptions) -> tuple[Tensor, int]:
            if "teacher_logits" not in batch:  # evaluation: the student's own task loss
                return base(model, batch, options)
            out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
            hard, n = base(Replay(out), batch, options)
            student, teacher = out.logits, batch["teacher_logits"]
            if student.dim() == 3:  # token logits: the positions the hard loss scores
                scored = batch["labels"] != IGNORE_INDEX
                student, teacher = student[scored], teacher[scored]
            total = (1.0 - self.alpha) * hard + self.alpha * soft_loss(student, teacher, self.temperature)
            if self.hidden_weight > 0:
                total = total + self.hidden_weight * relation_loss(
                    out.last_hidden_state, batch["teacher_hidden"], batch.get("attention_mask"))
            return total, n

        return loss


def load_distiller(cfg: Any, spec: ObjectiveSpec, student: nn.Module, tokenizer: Any, label_names: list[str] | None,
                   device: torch.device) -> Distiller:
    """Load ``cfg.distill.teacher`` and check it can teach ``student`` on ``spec``'s task: the same
    tokenizer (the logits compare token by token), the same vocabulary size for clm, the same labels
    for classify. Every mismatch is a ``ConfigError`` naming ``distill.teacher``."""
    from ..io import load

    d = cfg.distill
    where = f"distill.teacher: {d.teacher}"
    if not Path(d.teacher).is_dir():
        raise ConfigError(f"{where} is not a directory (expected a model directory)")
    teacher, teacher_tok = load(d.teacher)
    tc, sc = teacher.config, student.config
    if tc.family not in spec.families:
        raise ConfigError(f"{where} holds a {tc.family}; {spec.name} distils from a {' or '.join(spec.families)}")
    if teacher_tok is not None and tokenizer is not None \
            and teacher_tok.backend.get_vocab() != tokenizer.backend.get_vocab():
        raise ConfigError(f"{where} was trained with another tokenizer than the student's; distillation compares "
                          "their outputs token by token (train the student with the teacher's tokenizer)")
    if spec.name == "clm":
        if getattr(tc, "head", "lm") != "lm":
            raise ConfigError(f"{where} has a {tc.head!r} head; clm distillation needs its language-model head")
        if sc.vocab_size != tc.vocab_size:
            raise ConfigError(f"{where} scores {tc.vocab_size} tokens and the student {sc.vocab_size}; the "
                              "student's vocabulary must be the teacher's (same vocab_size)")
    else:
        if getattr(tc, "head", None) != "classify":
            raise ConfigError(f"{where} has no classification head (head={getattr(tc, 'head', None)!r}); "
                              "fine-tune it with task=classify first")
        if tc.num_labels != sc.num_labels:
            raise ConfigError(f"{where} has {tc.num_labels} labels and the task {sc.num_labels}")
        names = getattr(tc, "label_names", None)
        if names and label_names and list(names) != list(label_names):
            raise ConfigError(f"{where} names its labels {list(names)}, the task {list(label_names)} (same order "
                              "needed: the logits are compared class by class)")
    teacher.requires_grad_(False)
    return Distiller(teacher=teacher.to(device).eval(), temperature=d.temperature, alpha=d.alpha,
                     hidden_weight=d.hidden_weight)


def student_overrides(student: str, teacher: str, task: str, overrides: list[str]) -> list[str]:
    """``--student``: a model directory (init_from), a preset name, or a YAML/JSON file of model fields
    (the model section) → the overrides of the distillation run's config; the teacher's tokenizer unless
    one is named in ``overrides``."""
    given = {o.split("=", 1)[0].strip() for o in overrides if "=" in o}
    path = Path(student)
    out: list[str] = []
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"--student: {path} is a directory without config.json (expected a model directory)")
        out.append(f"init_from={path}")
    elif student in PRESETS:
        out.append(f"model.preset={student}")
    elif path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
            fields = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
            raise ConfigError(f"--student: {path} is not a JSON/YAML mapping of model fields ({e})") from e
        if not isinstance(fields, dict):
            raise ConfigError(f"--student: {path} must hold a mapping of model fields (preset, d_model, n_layer, ...), "
                              f"found {type(fields).__name__}")
        fields = fields.get("model", fields)  # a train config's model section, or the fields alone
        out += [f"model.{k}={json.dumps(v, ensure_ascii=False)}" for k, v in fields.items()]
    else:
        raise ConfigError(f"--student: expected a model directory, a preset ({', '.join(PRESETS)}) or a YAML/JSON file "
                          f"of model fields, found {student!r}")
    if task == "classify" and not path.is_dir() and "tokenizer" not in given:
        out.append(f"tokenizer={teacher}")  # the logits are compared token by token: the teacher's tokenizer
    return [*out, f"distill.teacher={teacher}", f"task={task}" if task != "clm" else "objective=clm"]


__all__ = ["TEACHER_KEYS", "Distiller", "load_distiller", "relation_loss", "soft_loss", "student_overrides"]
