"""Model configurations: one plain dataclass per family, JSON in and out.

Each config derives and checks its values in ``__post_init__`` (head size, key/value groups), so a
bad value fails where it is set, naming the field. Variants (norm, MLP, positions) are ``Literal``
strings resolved to modules in one place (``models/layers.py``); the config stays plain JSON.

>>> cfg = DecoderConfig(vocab_size=100, d_model=32, n_layer=2, n_head=4, n_kv_head=2)
>>> cfg.head_dim, cfg.n_kv_groups
(8, 2)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_type_hints

from .errors import ConfigError, did_you_mean

Family = Literal["encoder", "decoder", "seq2seq", "rnn"]
Norm = Literal["layernorm", "rmsnorm"]
Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
Positions = Literal["learned", "rope", "relative", "none"]
EncoderHead = Literal["none", "mlm", "classify", "tag", "rtd"]
DecoderHead = Literal["none", "lm", "classify"]
Seq2SeqHead = Literal["none", "lm"]
RNNHead = Literal["none", "classify", "tag", "lm"]

# What a pruned model's ``pruning`` entry may say (duplexlm.compress.pruning writes it): the methods,
# the importance scores of the structured ones, and the entry's keys.
# the named heads of a multi-task encoder (duplexlm.models.heads builds them)
TASK_HEAD_KINDS = ("classify", "tag")
TASK_HEAD_KEYS = ("head", "num_labels", "label_names", "crf")
TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def check_task_heads(tasks: Any, where: str) -> None:
    """The ``tasks`` field of a multi-task config: ``{name: {head, num_labels, label_names?, crf?}}``.

    >>> check_task_heads({"ner": {"head": "tag", "num_labels": 3, "label_names": ["O", "B-X"]}}, "EncoderConfig.tasks")
    Traceback (most recent call last):
    ...
    duplexlm.errors.ConfigError: EncoderConfig.tasks.ner.label_names: 2 names for num_labels=3
    """
    if not isinstance(tasks, Mapping) or not tasks:
        raise ConfigError(f"{where}: expected a mapping of task names to heads, found {tasks!r}")
    for name, spec in tasks.items():
        at = f"{where}.{name}"
        if not isinstance(name, str) or not TASK_NAME.match(name):
            raise ConfigError(f"{where}: task name {name!r} must be letters, digits, '_' or '-', starting with a "
                              "letter or '_'")
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{at}: expected a mapping with 'head' and 'num_labels', found {spec!r}")
        unknown = sorted(set(spec) - set(TASK_HEAD_KEYS))
        if unknown:
            raise ConfigError(f"{at}: unknown key {unknown[0]!r}; expected {', '.join(TASK_HEAD_KEYS)}")
        if spec.get("head") not in TASK_HEAD_KINDS:
            raise ConfigError(f"{at}.head: expected one of {', '.join(TASK_HEAD_KINDS)}, found {spec.get('head')!r}")
        n = spec.get("num_labels")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"{at}.num_labels: expected a positive integer, found {n!r}")
        names = spec.get("label_names")
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
                raise ConfigError(f"{at}.label_names: expected a list of strings, found {names!r}")
            if len(names) != n:
                raise ConfigError(f"{at}.label_names: {len(names)} names for num_labels={n}")
        if spec.get("crf") and spec["head"] != "tag":
            raise ConfigError(f"{at}.crf: a CRF scores tag sequences; it needs head='tag', found {spec['head']!r}")


PRUNING_METHODS = ("magnitude", "heads", "neurons")
PRUNING_IMPORTANCE = ("weight", "taylor")
_PRUNING_KEYS = ("method", "sparsity", "importance", "modules", "shapes", "previous")


def check_pruning(entry: Any, where: str = "pruning", nested: bool = False) -> dict[str, Any] | None:
    """Validate a config's ``pruning`` entry (None: the model was never pruned) and return it; a
    :class:`ConfigError` naming ``where`` and the field otherwise.

    The entry records the last pruning step: ``method`` (``"magnitude"``, or ``"heads"``,
    ``"neurons"``, ``"heads,neurons"``), ``sparsity`` in [0, 1), ``modules`` (the pruned module
    names; for magnitude, the Linears whose zeros :func:`duplexlm.compress.keep_sparsity` keeps),
    for structured methods ``importance`` and ``shapes`` ({field: [before, after]}), and ``previous``:
    the entries of earlier steps, oldest first.

    >>> check_pruning({"method": "magnitude", "sparsity": 0.5, "modules": ["blocks.0.mlp.up"]})["sparsity"]
    0.5
    >>> check_pruning({"method": "heads,rows", "sparsity": 0.3}, "config.json: pruning")
    Traceback (most recent call last):
    ...
    duplexlm.errors.ConfigError: config.json: pruning.method: expected 'magnitude', or any of 'heads', 'neurons' joined by commas, found 'heads,rows'
    """
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object (or null), found {type(entry).__name__}")
    for key in entry:
        if key not in _PRUNING_KEYS or (nested and key == "previous"):
            raise ConfigError(f"{where}: unknown key {key!r}; expected keys among {list(_PRUNING_KEYS)}"
                              f"{did_you_mean(str(key), _PRUNING_KEYS)}")
    method = entry.get("method")
    parts = method.split(",") if isinstance(method, str) else []
    structured = [m for m in PRUNING_METHODS if m != "magnitude"]
    if not (parts == ["magnitude"] or (parts and all(p in structured for p in parts) and len(set(parts)) == len(parts))):
        raise ConfigError(f"{where}.method: expected 'magnitude', or any of {', '.join(map(repr, structured))} "
                          f"joined by commas, found {method!r}")
    sparsity = entry.get("sparsity")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ConfigError(f"{where}.sparsity: expected a number in [0, 1), found {sparsity!r}")
    modules = entry.get("modules", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise ConfigError(f"{where}.modules: expected a list of module names, found {modules!r}")
    if parts == ["magnitude"]:
        if "importance" in entry or "shapes" in entry:
            extra = "importance" if "importance" in entry else "shapes"
            raise ConfigError(f"{where}.{extra}: a magnitude entry has none (it belongs to heads/neurons)")
    else:
        if entry.get("importance", "weight") not in PRUNING_IMPORTANCE:
            raise ConfigError(f"{where}.importance: expected one of {list(PRUNING_IMPORTANCE)}, "
                              f"found {entry.get('importance')!r}")
        shapes = entry.get("shapes", {})
        ok = isinstance(shapes, dict) and all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                                         for n in v) for v in shapes.values())
        if not ok:
            raise ConfigError(f"{where}.shapes: expected {{field: [before, after]}} of positive integers, "
                              f"found {shapes!r}")
    previous = entry.get("previous", [])
    if not isinstance(previous, list):
        raise ConfigError(f"{where}.previous: expected a list of earlier entries, found {previous!r}")
    for i, step in enumerate(previous):
        check_pruning(step, f"{where}.previous[{i}]", nested=True)
        if step is None:
            raise ConfigError(f"{where}.previous[{i}]: expected an object, found null")
    return entry


@dataclass
class BaseConfig:
    """Shared behaviour: validation of ``Literal`` fields, JSON round trip, unknown-key errors."""

    family: ClassVar[str] = ""
    # fields that set a tensor's shape: a config.json of ours must name them (no silent default)
    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = ()
    # how the weights were pruned (duplexlm.compress.pruning), None when they never were; keyword-only,
    # so it sits after every family's own fields; written to config.json only when set
    pruning: dict[str, Any] | None = field(default=None, kw_only=True)

    def _check_literals(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            allowed = get_args(hints[f.name])
            value = getattr(self, f.name)
            if allowed and all(isinstance(a, str) for a in allowed) and value not in allowed:
                raise ConfigError(
                    f"{type(self).__name__}.{f.name}: expected one of {list(allowed)}, found {value!r}"
                )

    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{type(self).__name__}.{name}: expected a positive integer, found {value!r}")

    def _check_label_names(self) -> None:
        names = getattr(self, "label_names", None)
        if names is None:
            return
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{type(self).__name__}.label_names: expected a list of strings, found {names!r}")
        if len(names) != self.num_labels:  # type: ignore[attr-defined]
            raise ConfigError(f"{type(self).__name__}.label_names: {len(names)} names for "
                              f"num_labels={self.num_labels}")  # type: ignore[attr-defined]

    def _check_crf(self) -> None:
        if getattr(self, "crf", False) and self.head != "tag":  # type: ignore[attr-defined]
            raise ConfigError(f"{type(self).__name__}.crf: a CRF scores tag sequences; it needs head='tag', "
                              f"found head={self.head!r}")  # type: ignore[attr-defined]

    def _probability(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"{type(self).__name__}.{name}: expected a probability in [0, 1), found {value!r}")

    def to_dict(self) -> dict[str, Any]:
        data = {"family": self.family, **dataclasses.asdict(self)}
        if data.get("pruning") is None:  # an unpruned model's config.json stays as it always was
            data.pop("pruning", None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config", require_shapes: bool = False) -> BaseConfig:
        """Build a config from a dict; unknown keys are an error that names the nearest valid ones.
        With ``require_shapes`` every field of ``SHAPE_FIELDS`` must be present."""
        data = {k: v for k, v in data.items() if k not in ("family", "duplexlm_version")}
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise ConfigError(f"{source}: unknown key {key!r} for {cls.__name__}{did_you_mean(key, names)}")
        if require_shapes:
            absent = [k for k in cls.SHAPE_FIELDS if k not in data]
            if absent:
                raise ConfigError(f"{source}: missing field{'s' if len(absent) > 1 else ''} "
                                  f"{', '.join(repr(k) for k in absent)} ({cls.family} config); expected every "
                                  f"field that sets a tensor's shape: {', '.join(cls.SHAPE_FIELDS)}")
        try:
            return cls(**data)
        except TypeError as e:  # a value of the wrong type (a string for a number, say)
            raise ConfigError(f"{source}: {cls.__name__}: {e}") from e

    def replace(self, **changes: Any) -> BaseConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class DecoderConfig(BaseConfig):
    """A causal decoder: GPT-2 (learned positions, LayerNorm, GELU MLP) or Llama/Qwen2 (RoPE, RMSNorm,
    SwiGLU, grouped-query attention), switched by fields, never by a model's name."""

    family: ClassVar[str] = "decoder"
    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = ("vocab_size", "max_seq_len", "d_model", "n_layer", "n_head",
                                               "n_kv_head", "head_dim", "d_ff", "positions", "gated_mlp", "head")
    vocab_size: int = 50257
    max_seq_len: int = 1024
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # None: as many as query heads (multi-head attention)
    head_dim: int | None = None  # None: d_model // n_head
    d_ff: int | None = None  # None: 4 * d_model
    positions: Positions = "learned"
    rope_theta: float = 10000.0
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    activation: Activation = "gelu_tanh"
    gated_mlp: bool = False  # True: SwiGLU/GeGLU, down(act(gate(x)) * up(x))
    qkv_bias: bool = True
    out_bias: bool = True  # bias of the attention output projection
    mlp_bias: bool = True
    norm_bias: bool = True  # LayerNorm only
    tie_word_embeddings: bool = True
    dropout: float = 0.0
    attn_dropout: float = 0.0
    head: DecoderHead = "lm"
    num_labels: int = 2
    label_names: list[str] | None = None  # classify: the name of each output (id2label in Hugging Face)
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self._check_literals()
        self.pruning = check_pruning(self.pruning, f"{type(self).__name__}.pruning")
        self._positive("vocab_size", "max_seq_len", "d_model", "n_layer", "n_head")
        self._check_label_names()
        self._check_crf()
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise ConfigError(
                    f"DecoderConfig.d_model: {self.d_model} is not divisible by n_head={self.n_head}; "
                    "set head_dim explicitly"
                )
            self.head_dim = self.d_model // self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self._positive("n_kv_head", "head_dim", "d_ff")
        if self.n_head % self.n_kv_head:
            raise ConfigError(
                f"DecoderConfig.n_kv_head: n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}"
            )
        if self.positions not in ("learned", "rope", "none"):
            raise ConfigError(f"DecoderConfig.positions: expected 'learned', 'rope' or 'none', found {self.positions!r}")
        if self.positions == "rope" and self.head_dim % 2:
            raise ConfigError(f"DecoderConfig.head_dim: rotary embeddings need an even head_dim, found {self.head_dim}")
        self._probability("dropout", "attn_dropout")

    @property
    def n_kv_groups(self) -> int:
        return self.n_head // self.n_kv_head


@dataclass
class EncoderConfig(BaseConfig):
    """A bidirectional BERT-style encoder (post- or pre-LayerNorm, learned positions, token types)."""

    family: ClassVar[str] = "encoder"
    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = ("vocab_size", "max_seq_len", "type_vocab_size", "d_model", "n_layer",
                                               "n_head", "d_ff", "head")
    vocab_size: int = 30522
    max_seq_len: int = 512
    type_vocab_size: int = 2
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    # None: d_model // n_head. A head-pruned encoder keeps its head size with fewer heads, so
    # n_head * head_dim < d_model; written to config.json only then (BERT cannot express it)
    head_dim: int | None = None
    d_ff: int | None = None
    activation: Activation = "gelu"
    norm_eps: float = 1e-12
    # "post": x = norm(x + f(x)), BERT's residual blocks (and Hugging Face's); "pre": x = x + f(norm(x))
    # with a final norm, which trains stably at a higher learning rate without warm-up tricks
    norm_position: Literal["post", "pre"] = "post"
    dropout: float = 0.1
    attn_dropout: float = 0.1
    pooler: bool = True  # dense + tanh on the first token, as BERT's next-sentence/classifier input
    # what the classifier reads (and pooled_output holds): "cls", the pooler on the first token (BERT);
    # "mean", the mean of the last hidden states over the non-padding tokens (no pooler needed)
    pooling: Literal["cls", "mean"] = "cls"
    head: EncoderHead = "none"
    num_labels: int = 2
    label_names: list[str] | None = None  # classify/tag: the name of each output (id2label in Hugging Face)
    crf: bool = False  # tag: a linear-chain CRF over the tag scores (BERT-CRF), Viterbi decoding
    classifier_dropout: float | None = None
    pad_token_id: int = 0
    init_std: float = 0.02
    # multi-task: named heads over the shared encoder, {name: {head: classify|tag, num_labels,
    # label_names, crf}}; the model's own head is then "none" (see duplexlm.models.heads)
    tasks: dict[str, dict[str, Any]] | None = None
    # head "rtd" (ELECTRA's replaced-token detection): blocks of the small masked-LM generator that
    # shares the embeddings and proposes the replacements; dropped when the encoder is fine-tuned
    generator_layers: int = 1

    def __post_init__(self) -> None:
        self._check_literals()
        self.pruning = check_pruning(self.pruning, f"{type(self).__name__}.pruning")
        self._positive("vocab_size", "max_seq_len", "type_vocab_size", "d_model", "n_layer", "n_head")
        self._check_label_names()
        self._check_crf()
        if self.head == "classify" and self.pooling == "cls" and not self.pooler:
            raise ConfigError("EncoderConfig.pooler: head='classify' with pooling='cls' reads the pooled first "
                              "token; set pooler=True, or pooling='mean' to classify the mean of the tokens")
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise ConfigError(f"EncoderConfig.d_model: {self.d_model} is not divisible by n_head={self.n_head}; "
                                  "set head_dim explicitly")
            self.head_dim = self.d_model // self.n_head
        self._positive("head_dim")
        if self.tasks is not None:
            check_task_heads(self.tasks, "EncoderConfig.tasks")
            if self.head != "none":
                raise ConfigError(f"EncoderConfig.head: a multi-task model (tasks set) has head='none' and its heads "
                                  f"in tasks, found head={self.head!r}")
            if self.pooling == "cls" and not self.pooler and any(t["head"] == "classify" for t in self.tasks.values()):
                raise ConfigError("EncoderConfig.pooler: a classify task with pooling='cls' reads the pooled first "
                                  "token; set pooler=True, or pooling='mean'")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self._positive("d_ff", "num_labels", "generator_layers")
        self._probability("dropout", "attn_dropout")

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if self.head_dim * self.n_head == self.d_model:  # the derived size: left out, as before it was a field
            data.pop("head_dim")
        return data

    def replace(self, **changes: Any) -> BaseConfig:
        """A copy with ``changes``; a derived head size is derived again (from a new d_model or n_head)
        unless ``head_dim`` is among the changes."""
        if "head_dim" not in changes and self.head_dim * self.n_head == self.d_model:
            changes["head_dim"] = None
        return dataclasses.replace(self, **changes)


@dataclass
class Seq2SeqConfig(BaseConfig):
    """A T5-style encoder-decoder: relative position buckets, RMS norm, shared embeddings."""

    family: ClassVar[str] = "seq2seq"
    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = ("vocab_size", "d_model", "head_dim", "d_ff", "n_layer", "n_head",
                                               "relative_buckets", "gated_mlp")
    vocab_size: int = 32128
    d_model: int = 512
    head_dim: int = 64
    d_ff: int = 2048
    n_layer: int = 6  # encoder layers
    n_decoder_layer: int | None = None  # None: as many as the encoder
    n_head: int = 8
    relative_buckets: int = 32
    relative_max_distance: int = 128
    # "sinusoidal": also add the fixed sine/cosine positions of Vaswani et al. to each stack's input,
    # so that cross-attention can find the source position matching the target's (monotonic tasks)
    absolute_positions: Literal["none", "sinusoidal"] = "none"
    activation: Activation = "relu"
    gated_mlp: bool = False  # True: T5 v1.1 "gated-gelu"
    norm_eps: float = 1e-6
    dropout: float = 0.1
    tie_word_embeddings: bool = True  # T5 v1.0: tied head, logits scaled by d_model**-0.5
    head: Seq2SeqHead = "lm"
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    init_std: float = 1.0  # T5 scales its init per layer; see Seq2Seq._init_weights

    def __post_init__(self) -> None:
        self._check_literals()
        self.pruning = check_pruning(self.pruning, f"{type(self).__name__}.pruning")
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer
        self._positive("vocab_size", "d_model", "head_dim", "d_ff", "n_layer", "n_decoder_layer", "n_head",
                       "relative_buckets", "relative_max_distance")
        self._probability("dropout")


@dataclass
class RNNConfig(BaseConfig):
    """A recurrent baseline: RNN/GRU/LSTM, one- or two-directional, attention pooling."""

    family: ClassVar[str] = "rnn"
    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = ("cell", "vocab_size", "d_embed", "d_hidden", "n_layer",
                                               "bidirectional", "head")
    cell: Literal["rnn", "gru", "lstm"] = "lstm"
    vocab_size: int = 8000
    d_embed: int = 128
    d_hidden: int = 256
    n_layer: int = 1
    bidirectional: bool = True
    pooling: Literal["attention", "mean", "max", "last"] = "attention"
    dropout: float = 0.1
    head: RNNHead = "classify"
    num_labels: int = 2
    label_names: list[str] | None = None  # classify/tag: the name of each output
    crf: bool = False  # tag: a linear-chain CRF over the tag scores, Viterbi decoding
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        self._check_literals()
        self.pruning = check_pruning(self.pruning, f"{type(self).__name__}.pruning")
        self._positive("vocab_size", "d_embed", "d_hidden", "n_layer", "num_labels")
        self._check_label_names()
        self._check_crf()
        self._probability("dropout")
        if self.head == "lm" and self.bidirectional:
            raise ConfigError("RNNConfig.bidirectional: a language-model head needs a one-directional RNN")

    @property
    def d_output(self) -> int:
        return self.d_hidden * (2 if self.bidirectional else 1)


CONFIG_CLASSES: dict[str, type[BaseConfig]] = {
    "encoder": EncoderConfig,
    "decoder": DecoderConfig,
    "seq2seq": Seq2SeqConfig,
    "rnn": RNNConfig,
}

AnyConfig = EncoderConfig | DecoderConfig | Seq2SeqConfig | RNNConfig


def config_from_dict(data: dict[str, Any], source: str = "config", require_shapes: bool = False) -> AnyConfig:
    """Rebuild a config written by :meth:`BaseConfig.to_dict`; ``family`` picks the class.
    ``require_shapes``: the fields that set tensor shapes must be present (a config.json of ours)."""
    family = data.get("family")
    if family not in CONFIG_CLASSES:
        found = "no 'family' field" if family is None else f"family {family!r}"
        raise ConfigError(f"{source}: field 'family' must be one of {sorted(CONFIG_CLASSES)}, found {found}")
    return CONFIG_CLASSES[family].from_dict(data, source=source,  # type: ignore[return-value]
                                            require_shapes=require_shapes)


def load_config(path: str | Path) -> AnyConfig:
    """Read a model directory's ``config.json`` (ours): every shape field must be there."""
    from .fileutil import read_json_object

    return config_from_dict(read_json_object(Path(path)), source=str(path), require_shapes=True)


__all__ = [
    "CONFIG_CLASSES",
    "PRUNING_IMPORTANCE",
    "PRUNING_METHODS",
    "AnyConfig",
    "BaseConfig",
    "ConfigError",
    "DecoderConfig",
    "EncoderConfig",
    "RNNConfig",
    "Seq2SeqConfig",
    "check_pruning",
    "config_from_dict",
    "field",
    "load_config",
]
