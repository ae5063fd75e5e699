"""Pruning of whole models: unstructured magnitude pruning of every untied ``nn.Linear`` (any family),
and structured pruning of attention heads and feed-forward neurons (every Transformer family), which
gives an ordinary, smaller model of the same family. ``prune``: a model directory in, a pruned
directory out, with a report of what it cost.

Methods (``method=``; ``"heads,neurons"`` runs both at the same sparsity):

- ``magnitude``: in every untied Linear (the modules :func:`~duplexlm.compress.plan_quantization`
  picks: tied LM heads, embeddings, norms and RNN cells are left alone), zero the fraction
  ``sparsity`` of the weights of smallest ``|w|``. Shapes do not change; :func:`keep_sparsity` keeps
  the zeros through a recovery fine-tune.
- ``heads``: remove ``round(sparsity * n_kv_head)`` key/value groups from every attention module (a
  group is one key/value head and the ``n_head / n_kv_head`` query heads that read it; one head in
  plain multi-head attention). Every layer loses as many, so the result is a normal config with
  smaller ``n_head`` (and ``n_kv_head``) and the same ``head_dim``. T5's relative position bias is a
  per-head table shared by the layers of a stack, so a T5 stack's self-attention layers keep the same
  heads (ranked by their summed scores) and the table keeps their columns; its cross-attention
  layers choose freely.
- ``neurons``: remove ``round(sparsity * d_ff)`` feed-forward neurons from every block (rows of
  ``up``/``gate``, columns of ``down``), so ``d_ff`` shrinks.

Rounding is half up; a structured method must leave at least one group / neuron.

Importance (``importance=``, structured methods only), the lowest-scored groups go:

- ``"weight"`` (default, no data): a group's output is ``W_o,g · softmax(·) · V_g``, and the softmax
  weights sum to one, so ``‖W_o,g‖ · ‖[W_v,g | b_v,g]‖`` bounds what it adds to the residual stream,
  whatever its queries and keys do; query/key weights only move attention between positions, so
  they are left out of the score (a head whose output columns are zero scores 0, as it should). A
  neuron's score is ``‖[up_i | b_i]‖ (· ‖[gate_i | b_i]‖ when gated) · ‖down[:, i]‖``, the same
  bound for the MLP.
- ``"taylor"`` (data): first-order Taylor, ``|Σ w · ∂L/∂w|`` over every parameter of the group (its
  query, key, value rows and biases, its output-projection columns, T5's position-bias column; a
  neuron's up/gate rows and down column), the loss's change to first order when the group is
  removed. ``calibration`` is a batch: the model's keyword inputs (``input_ids``,
  ``attention_mask``, ...) plus ``labels`` or ``loss`` (a callable ``loss(output, batch) → scalar``);
  without them a decoder LM predicts its next tokens and other heads their own argmax.

The model's config records a ``pruning`` entry (:func:`duplexlm.config.check_pruning`), written to
config.json by :func:`duplexlm.save_model` and read back by :func:`duplexlm.load`.

>>> import torch
>>> from duplexlm.config import DecoderConfig
>>> from duplexlm.models import build_model
>>> model = build_model(DecoderConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=2, n_head=4,
...                                   n_kv_head=2, d_ff=64)).eval()
>>> info = prune_model(model, "heads,neurons", 0.5)
>>> c = model.config
>>> (c.n_head, c.n_kv_head, c.head_dim, c.d_ff), info.reached
((2, 1, 8, 32), {'heads': 0.5, 'neurons': 0.5})
>>> model(torch.randint(0, 64, (1, 8))).logits.shape
torch.Size([1, 8, 64])
>>> m = build_model(DecoderConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=1, n_head=2))
>>> prune_model(m, "magnitude", 0.5).reached
{'magnitude': 0.5}
>>> keep_sparsity(m)  # the Linears it zeroed: their zeros now stay zero under training
4
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from ..config import PRUNING_IMPORTANCE, PRUNING_METHODS
from ..errors import ConfigError, ModelError
from ..models.layers import MLP, Attention, RelativePositionBias
from ..models.qlinear import QuantLinear
from ..units import format_bytes, format_count
from .quantization import (
    aligned,
    check_source,
    logit_gap,
    plan_quantization,
    sample_inputs,
    weight_bytes,
)

STRUCTURED = ("heads", "neurons")
TRANSFORMERS = ("decoder", "encoder", "seq2seq")


# ----------------------------------------------------------------------------------------------------
# Arguments


def parse_method(method: str | Sequence[str], flag: str = "method") -> tuple[str, ...]:
    """``"magnitude"``, ``"heads"``, ``"neurons"`` or ``"heads,neurons"`` (a string or a list) →
    the methods in the order they run; a :class:`ConfigError` naming ``flag`` otherwise.

    >>> parse_method("neurons, heads")
    ('heads', 'neurons')
    >>> parse_method("rows")
    Traceback (most recent call last):
    ...
    duplexlm.errors.ConfigError: method: expected 'magnitude', 'heads', 'neurons' or 'heads,neurons', found 'rows'
    """
    valid = "'magnitude', 'heads', 'neurons' or 'heads,neurons'"
    parts = [p.strip() for p in method.split(",")] if isinstance(method, str) else \
        list(method) if isinstance(method, (list, tuple)) else None
    if not parts or not all(isinstance(p, str) and p in PRUNING_METHODS for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(f"{flag}: expected {valid}, found {method!r}")
    if "magnitude" in parts and len(parts) > 1:
        raise ConfigError(f"{flag}: magnitude pruning runs alone, found {method!r}; prune heads/neurons first, then "
                          "magnitude-prune the smaller model in a second call")
    return tuple(m for m in PRUNING_METHODS if m in parts)


def check_sparsity(sparsity: Any, flag: str = "sparsity") -> float:
    """A number in [0, 1) → float; a :class:`ConfigError` naming ``flag`` otherwise."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ConfigError(f"{flag}: expected a fraction in [0, 1) of what to remove, found {sparsity!r}")
    return float(sparsity)


def _check_importance(importance: Any, calibration: Any, flag: str = "importance") -> str:
    if importance not in PRUNING_IMPORTANCE:
        raise ConfigError(f"{flag}: expected one of {list(PRUNING_IMPORTANCE)}, found {importance!r}")
    if importance == "taylor" and not isinstance(calibration, dict):
        raise ConfigError("calibration: importance='taylor' needs a calibration batch, a dict with the model's "
                          f"inputs (input_ids, attention_mask, ...) and labels or a loss callable; found "
                          f"{type(calibration).__name__}")
    if importance == "weight" and calibration is not None:
        raise ConfigError("calibration: only importance='taylor' reads a calibration batch; the weight-based "
                          "score needs none")
    return importance


def _removed(sparsity: float, n: int) -> int:
    """round(sparsity · n), halves rounded up (Python's round would take 0.5 to 0)."""
    return math.floor(sparsity * n + 0.5 + 1e-9)


def _check_plain(model: nn.Module) -> None:
    from ..models.lora import LoRALinear  # the models package never imports this one: no cycle

    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            raise ModelError(f"{type(model).__name__} is quantised ({module.method}, e.g. {name}); prune the "
                             "full-precision model, then quantise the pruned one")
        if isinstance(module, LoRALinear):
            raise ModelError(f"{type(model).__name__} has LoRA modules ({name}); merge them into the weights first "
                             "(duplexlm.models.lora.merge_lora), then prune")


# ----------------------------------------------------------------------------------------------------
# Magnitude pruning


@torch.no_grad()
def _magnitude(model: nn.Module, sparsity: float) -> tuple[list[str], float]:
    """Zero the smallest ``sparsity`` of each untied Linear's weights → (names, zeros / weights)."""
    targets, _ = plan_quantization(model)
    if not targets:
        raise ModelError(f"{type(model).__name__} has no untied nn.Linear to prune")
    zeros = total = 0
    for linear in targets.values():
        w = linear.weight
        k = _removed(sparsity, w.numel())
        if k:
            idx = torch.topk(w.detach().abs().flatten(), k, largest=False).indices
            mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
            mask[idx] = True
            w.masked_fill_(mask.view(w.shape), 0.0)  # any layout (column-major weights too)
        zeros += int((w == 0).sum())
        total += w.numel()
    return list(targets), zeros / total


def magnitude_modules(model: nn.Module) -> list[str]:
    """The Linears that magnitude pruning zeroed, from the model's ``config.pruning`` entry (its last
    step and the earlier ones), in order; empty for a model that was never magnitude-pruned."""
    entry = getattr(getattr(model, "config", None), "pruning", None)
    if not entry:
        return []
    names: list[str] = []
    for step in [*entry.get("previous", []), entry]:
        if step.get("method") == "magnitude":
            names += [n for n in step.get("modules", []) if n not in names]
    return names


# parameter → its hook's handle, so that calling keep_sparsity again replaces rather than stacks
_HOOKS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _zero_where_pruned(ref: weakref.ref) -> Callable[[Tensor], Tensor]:
    def hook(grad: Tensor) -> Tensor:
        p = ref()
        # read at each step, on the parameter's own device: a model moved after the call still works
        return grad if p is None else grad.masked_fill(p.detach() == 0, 0)
    return hook


def keep_sparsity(model: nn.Module) -> int:
    """Register a gradient hook on the weight of every Linear that magnitude pruning zeroed (as the
    model's ``config.pruning`` lists them), zeroing the gradient wherever the weight is exactly 0.
    With AdamW a zero gradient on a zero weight with zero moments is a zero update, and decoupled
    weight decay scales 0 to 0, so the pruned weights stay zero through a recovery fine-tune.

    Returns how many tensors it hooked: 0 for a model that was never magnitude-pruned, so a training
    loop may call it on every model. Frozen weights (``requires_grad=False``) get no hook and are not
    counted; calling it again replaces the hooks rather than adding more. Call it once the parameters
    are final (after structured pruning, which makes new ones), before training. The hooks sit on the
    parameters themselves: they work under DDP, not under FSDP's flattened parameters, and a LoRA
    update (frozen base weights) is dense, so merging it fills the zeros.

    >>> from duplexlm.config import RNNConfig
    >>> from duplexlm.models import build_model
    >>> m = build_model(RNNConfig(vocab_size=20, d_embed=8, d_hidden=8, num_labels=2))
    >>> keep_sparsity(m)
    0
    >>> _ = prune_model(m, "magnitude", 0.3)
    >>> keep_sparsity(m), keep_sparsity(m)
    (3, 3)
    """
    count = 0
    for name in magnitude_modules(model):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ModelError(f"pruning.modules: {type(model).__name__} has no module {name!r}; the config's pruning "
                             "entry does not belong to this model") from None
        w = getattr(module, "weight", None)
        if not isinstance(w, nn.Parameter):
            raise ModelError(f"pruning.modules: {name!r} has no weight parameter to keep sparse (found "
                             f"{type(module).__name__})")
        old = _HOOKS.pop(w, None)
        if old is not None:
            old.remove()
        if not w.requires_grad:
            continue
        _HOOKS[w] = w.register_hook(_zero_where_pruned(weakref.ref(w)))
        count += 1
    return count


# ----------------------------------------------------------------------------------------------------
# Structured pruning: which modules, their importance, slicing them


@dataclass
class _Unit:
    """Attention modules that keep the same key/value groups (a T5 stack's self-attention, sharing a
    relative position bias), or one module alone."""

    names: list[str]
    modules: list[Attention]
    rel_bias: RelativePositionBias | None = None


def _attention_units(model: nn.Module) -> list[_Unit]:
    shared: dict[int, _Unit] = {}
    for name, module in model.named_modules():
        rel = getattr(module, "rel_bias", None)
        blocks = getattr(module, "blocks", None)
        if isinstance(rel, RelativePositionBias) and isinstance(blocks, nn.ModuleList):
            unit = _Unit([], [], rel)
            for i, block in enumerate(blocks):
                unit.names.append(f"{name}.blocks.{i}.attn")
                unit.modules.append(block.attn)
                shared[id(block.attn)] = unit
    units = list({id(u): u for u in shared.values()}.values())
    for name, module in model.named_modules():
        if isinstance(module, Attention) and id(module) not in shared:
            units.append(_Unit([name], [module]))
    return units


def _mlps(model: nn.Module) -> dict[str, MLP]:
    return {n: m for n, m in model.named_modules() if isinstance(m, MLP)}


def _parts(a: Attention, tensor: Callable[[nn.Linear], Tensor | None]) -> tuple[Tensor | None, ...]:
    """(q, k, v) rows of ``tensor(linear)`` for a fused ``qkv`` or cross-attention ``q``/``kv``."""
    q_size, kv_size = a.n_head * a.head_dim, a.n_kv_head * a.head_dim
    if a.cross:
        kv = tensor(a.kv)
        return (tensor(a.q), *((None, None) if kv is None else kv.split([kv_size, kv_size])))
    t = tensor(a.qkv)
    return (None, None, None) if t is None else tuple(t.split([q_size, kv_size, kv_size]))


def _by_group(values: Tensor, groups: int) -> Tensor:
    """Per-row (or per-column) values (groups · k,) → sums per group (groups,)."""
    return values.reshape(groups, -1).sum(1)


def _attention_weight_score(a: Attention) -> Tensor:
    """‖[W_v,g | b_v,g]‖ · ‖W_o[:, g's query heads]‖ per key/value group g (see the module docstring)."""
    v = _parts(a, lambda lin: lin.weight)[2]
    v_sq = v.float().pow(2).sum(1)
    bias_v = _parts(a, lambda lin: lin.bias)[2]
    if bias_v is not None:
        v_sq = v_sq + bias_v.float().pow(2)
    o_sq = a.proj.weight.float().pow(2).sum(0)  # per input column of the output projection
    return _by_group(v_sq, a.n_kv_head).sqrt() * _by_group(o_sq, a.n_kv_head).sqrt()


def _attention_taylor_score(a: Attention, grad: dict[int, Tensor]) -> Tensor:
    """Σ w · ∂L/∂w per key/value group (signed; summed over a unit, then |·|)."""
    def rows(lin: nn.Linear) -> Tensor:
        out = _wg(lin.weight, grad).sum(1)
        return out if lin.bias is None else out + _wg(lin.bias, grad)

    q, k, v = _parts(a, rows)
    g = a.n_kv_head
    return _by_group(q, g) + _by_group(k, g) + _by_group(v, g) + _by_group(_wg(a.proj.weight, grad).sum(0), g)


def _mlp_score(m: MLP, importance: str, grad: dict[int, Tensor]) -> Tensor:
    if importance == "taylor":
        score = _wg(m.down.weight, grad).sum(0)
        for lin in (m.up, m.gate):
            if lin is not None:
                score = score + _wg(lin.weight, grad).sum(1) + (0 if lin.bias is None else _wg(lin.bias, grad))
        return score

    def row_norm(lin: nn.Linear) -> Tensor:
        sq = lin.weight.float().pow(2).sum(1)
        return (sq if lin.bias is None else sq + lin.bias.float().pow(2)).sqrt()

    score = row_norm(m.up) * m.down.weight.float().pow(2).sum(0).sqrt()
    return score * row_norm(m.gate) if m.gate is not None else score


def _wg(p: Tensor, grad: dict[int, Tensor]) -> Tensor:
    g = grad.get(id(p))
    return torch.zeros_like(p, dtype=torch.float32) if g is None else p.detach().float() * g.float()


def _lowest(score: Tensor, remove: int) -> Tensor:
    """The indices to keep, in their order: all but the ``remove`` lowest scores (ties: the first go)."""
    order = torch.argsort(score.cpu(), stable=True)
    return order[remove:].sort().values


@torch.no_grad()
def _slice_linear(lin: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> None:
    w = lin.weight.detach()
    if rows is not None:
        w = w.index_select(0, rows.to(w.device))
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    lin.weight = nn.Parameter(w.contiguous(), requires_grad=lin.weight.requires_grad)
    if lin.bias is not None and rows is not None:
        lin.bias = nn.Parameter(lin.bias.detach().index_select(0, rows.to(w.device)).contiguous(),
                                requires_grad=lin.bias.requires_grad)
    lin.out_features, lin.in_features = w.shape


def _slice_attention(a: Attention, groups: Tensor) -> None:
    """Keep the key/value ``groups`` (sorted indices) and the query heads that read them."""
    hs, rep, nh, nkv = a.head_dim, a.n_head // a.n_kv_head, a.n_head, a.n_kv_head
    span = torch.arange(hs)
    q_heads = (groups[:, None] * rep + torch.arange(rep)).flatten()
    q_idx = (q_heads[:, None] * hs + span).flatten()  # rows of q = columns of proj
    kv_idx = (groups[:, None] * hs + span).flatten()  # rows within k (and within v)
    if a.cross:
        _slice_linear(a.q, rows=q_idx)
        _slice_linear(a.kv, rows=torch.cat([kv_idx, nkv * hs + kv_idx]))
    else:
        _slice_linear(a.qkv, rows=torch.cat([q_idx, nh * hs + kv_idx, (nh + nkv) * hs + kv_idx]))
    _slice_linear(a.proj, cols=q_idx)
    a.n_head, a.n_kv_head = len(q_heads), len(groups)


@torch.no_grad()
def _slice_rel_bias(rel: RelativePositionBias, heads: Tensor) -> None:
    emb = rel.embedding
    emb.weight = nn.Parameter(emb.weight.detach().index_select(1, heads.to(emb.weight.device)).contiguous(),
                              requires_grad=emb.weight.requires_grad)
    emb.embedding_dim = len(heads)


def _slice_mlp(m: MLP, keep: Tensor) -> None:
    for lin in (m.up, m.gate):
        if lin is not None:
            _slice_linear(lin, rows=keep)
    _slice_linear(m.down, cols=keep)


# ----------------------------------------------------------------------------------------------------
# Taylor importance: one forward and backward on the calibration batch


def _calibration_loss(model: nn.Module, calibration: dict[str, Any]) -> Tensor:
    """The loss whose gradient scores the groups (see the module docstring)."""
    c = model.config
    batch = {k: v for k, v in calibration.items() if k not in ("labels", "loss")}
    labels, loss_fn = calibration.get("labels"), calibration.get("loss")
    if loss_fn is not None and not callable(loss_fn):
        raise ConfigError(f"calibration['loss']: expected a callable loss(output, batch), found {type(loss_fn).__name__}")
    if "input_ids" not in batch:
        raise ConfigError(f"calibration: expected the model's inputs with 'input_ids', found keys {sorted(calibration)}")
    if c.family == "seq2seq" and "decoder_input_ids" not in batch:
        if labels is None:
            raise ConfigError("calibration: a seq2seq model needs 'labels' (or 'decoder_input_ids') for its decoder")
        batch["decoder_input_ids"] = model.shift_right(labels)
    try:
        out = model(**batch)
    except TypeError as e:
        raise ConfigError(f"calibration: the batch's keys {sorted(batch)} are not this model's inputs: {e}") from e
    if loss_fn is not None:
        return loss_fn(out, calibration)
    logits = out.logits
    if logits is None or getattr(c, "head", None) == "rtd":
        raise ConfigError(f"calibration: no loss can be derived for this {c.family} (head "
                          f"{getattr(c, 'head', None)!r}); pass calibration['loss'], a callable loss(output, batch)")
    lm = c.family == "decoder" and c.head == "lm"
    mask = batch.get("decoder_attention_mask" if c.family == "seq2seq" else "attention_mask")
    if labels is None:
        labels = batch["input_ids"] if lm else logits.detach().argmax(-1)  # next tokens, or its own answers
        if mask is not None and tuple(mask.shape) == tuple(labels.shape):
            labels = labels.masked_fill(mask == 0, -100)
    if lm:
        logits, labels = logits[:, :-1], labels[:, 1:]
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ConfigError(f"calibration['labels']: expected shape {tuple(logits.shape[:-1])} for logits "
                          f"{tuple(logits.shape)}, found {tuple(labels.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(), ignore_index=-100)


def _taylor_grads(model: nn.Module, calibration: dict[str, Any], params: list[Tensor]) -> dict[int, Tensor]:
    """∂L/∂p for ``params`` on the calibration batch (eval mode: no dropout); nothing else changes."""
    was_training = model.training
    flags = [p.requires_grad for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            loss = _calibration_loss(model, calibration)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ConfigError(f"calibration['loss']: expected a scalar tensor, found {loss!r}")
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was_training)
    return {id(p): g for p, g in zip(params, grads) if g is not None}


# ----------------------------------------------------------------------------------------------------
# The whole model


@dataclass
class PruneInfo:
    """What :func:`prune_model` did: the method, the parameters before and after, the fraction reached
    per method (weights zeroed; groups or neurons removed) and the config fields that changed."""

    method: str
    sparsity: float
    importance: str | None
    modules: list[str]
    parameters_before: int
    parameters_after: int
    reached: dict[str, float]
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)


def prune_model(model: nn.Module, method: str | Sequence[str], sparsity: float, *, importance: str = "weight",
                calibration: dict[str, Any] | None = None) -> PruneInfo:
    """Prune ``model`` in place and record it in ``model.config.pruning`` (see the module docstring).

    ``magnitude`` zeroes weights (shapes stay); ``heads`` and ``neurons`` slice every attention
    module and MLP and replace ``model.config`` by the smaller config, so :func:`duplexlm.save_model`
    and :func:`duplexlm.load` round-trip the pruned model. Parameters are new tensors afterwards:
    build the optimizer after pruning.

    >>> from duplexlm.config import EncoderConfig
    >>> from duplexlm.models import build_model
    >>> m = build_model(EncoderConfig(vocab_size=64, d_model=32, n_layer=1, n_head=4, d_ff=64))
    >>> info = prune_model(m, "heads", 0.25)
    >>> m.config.n_head, m.config.head_dim, info.shapes
    (3, 8, {'n_head': (4, 3)})
    >>> prune_model(m, "heads", 0.9)
    Traceback (most recent call last):
    ...
    duplexlm.errors.ConfigError: sparsity: 0.9 of 3 key/value groups removes all 3 (rounding half up); at least one must remain: expected a sparsity below 0.833
    """
    from ..models import count_parameters

    methods = parse_method(method)
    sparsity = check_sparsity(sparsity)
    structured = methods != ("magnitude",)
    if structured:
        importance = _check_importance(importance, calibration)
    elif importance != "weight" or calibration is not None:
        raise ConfigError(f"{'importance' if importance != 'weight' else 'calibration'}: magnitude pruning ranks "
                          "weights by |w| alone; importance and calibration are for the heads and neurons methods")
    config = getattr(model, "config", None)
    if config is None:
        raise ModelError(f"{type(model).__name__} has no config: expected a duplexlm model (build_model, load)")
    _check_plain(model)
    before = count_parameters(model)
    if not structured:
        names, reached = _magnitude(model, sparsity)
        entry: dict[str, Any] = {"method": "magnitude", "sparsity": sparsity, "modules": names}
        info = PruneInfo("magnitude", sparsity, None, names, before, before, {"magnitude": reached})
    else:
        if config.family not in TRANSFORMERS:
            raise ConfigError(f"method: {','.join(methods)} prunes attention heads and feed-forward neurons, and "
                              f"a {config.family} model has neither; structured pruning needs a Transformer "
                              f"({', '.join(TRANSFORMERS)}); use method='magnitude' for an {config.family} model")
        changes, names, reached, shapes = _structured(model, methods, sparsity, importance, calibration)
        entry = {"method": ",".join(methods), "sparsity": sparsity, "importance": importance, "modules": names,
                 "shapes": {k: list(v) for k, v in shapes.items()}}
        config = config.replace(**changes)
        info = PruneInfo(",".join(methods), sparsity, importance, names, before, count_parameters(model), reached,
                         shapes)
    old = config.pruning
    if old:  # the earlier steps stay on record (keep_sparsity reads every magnitude step)
        entry["previous"] = [*old.get("previous", []), {k: v for k, v in old.items() if k != "previous"}]
    model.config = config.replace(pruning=entry)
    return info


def _structured(model: nn.Module, methods: tuple[str, ...], sparsity: float, importance: str,
                calibration: dict[str, Any] | None) -> tuple[dict[str, Any], list[str], dict[str, float],
                                                            dict[str, tuple[int, int]]]:
    """Score everything first (Taylor: one gradient for both methods, on the unpruned model), then
    slice → (config changes, pruned module names, fractions reached, {field: (before, after)})."""
    c = model.config
    units = _attention_units(model) if "heads" in methods else []
    mlps = _mlps(model) if "neurons" in methods else {}
    n_groups = {m.n_kv_head for u in units for m in u.modules}
    n_heads = {(m.n_head, m.head_dim) for u in units for m in u.modules}
    widths = {m.up.out_features for m in mlps.values()}
    if len(n_groups) > 1 or len(n_heads) > 1 or len(widths) > 1:
        raise ModelError(f"{type(model).__name__}: its layers differ in heads {sorted(n_heads)} / key-value heads "
                         f"{sorted(n_groups)} / MLP widths {sorted(widths)}; structured pruning keeps one config "
                         "for all layers and expects them equal")
    plan: dict[str, tuple[int, int]] = {}  # method → (removed, of how many)
    for what, sizes, noun in (("heads", n_groups, "key/value groups"), ("neurons", widths, "feed-forward neurons")):
        if what in methods:
            n = sizes.pop()
            k = _removed(sparsity, n)
            if k >= n:
                raise ConfigError(f"sparsity: {sparsity:g} of {n} {noun} removes all {k} (rounding half up); at least "
                                  f"one must remain: expected a sparsity below {(n - 0.5) / n:.3g}")
            plan[what] = (k, n)

    grad: dict[int, Tensor] = {}
    if importance == "taylor":
        params: list[Tensor] = []
        for u in units:
            for a in u.modules:
                params += [p for p in a.parameters()]
            if u.rel_bias is not None:
                params.append(u.rel_bias.embedding.weight)
        for m in mlps.values():
            params += list(m.parameters())
        grad = _taylor_grads(model, calibration or {}, list({id(p): p for p in params}.values()))

    keep_groups: list[Tensor] = []
    for u in units:
        if importance == "taylor":
            total = sum(_attention_taylor_score(a, grad) for a in u.modules)
            if u.rel_bias is not None:  # the shared table's column per head (n_kv_head == n_head in T5)
                col = _wg(u.rel_bias.embedding.weight, grad).sum(0)
                total = total + _by_group(col, u.modules[0].n_kv_head)
            score = total.abs()
        else:
            score = sum(_attention_weight_score(a) for a in u.modules)
        keep_groups.append(_lowest(score, plan["heads"][0]))
    keep_neurons = {name: _lowest(_mlp_score(m, importance, grad).abs() if importance == "taylor"
                                  else _mlp_score(m, importance, grad), plan["neurons"][0]) for name, m in mlps.items()}

    changes: dict[str, Any] = {}
    shapes: dict[str, tuple[int, int]] = {}
    names: list[str] = []
    reached: dict[str, float] = {}
    if units:
        (nh, hs), = n_heads
        for u, keep in zip(units, keep_groups):
            rep = u.modules[0].n_head // u.modules[0].n_kv_head
            for a in u.modules:
                _slice_attention(a, keep)
            if u.rel_bias is not None:
                _slice_rel_bias(u.rel_bias, (keep[:, None] * rep + torch.arange(rep)).flatten())
            names += u.names
        k, n = plan["heads"]
        new_nh = nh // n * (n - k)
        changes["n_head"], shapes["n_head"] = new_nh, (nh, new_nh)
        if c.family == "decoder":
            changes["n_kv_head"], shapes["n_kv_head"] = n - k, (n, n - k)
        if c.family == "encoder":
            changes["head_dim"] = hs  # fewer heads of the same size: d_model no longer n_head · head_dim
        reached["heads"] = k / n
    if mlps:
        for name, m in mlps.items():
            _slice_mlp(m, keep_neurons[name])
            names.append(name)
        k, n = plan["neurons"]
        changes["d_ff"], shapes["d_ff"] = n - k, (n, n - k)
        reached["neurons"] = k / n
    return changes, names, reached, shapes


# ----------------------------------------------------------------------------------------------------
# A model directory in, a pruned one out


@dataclass
class PruneReport:
    """What :func:`prune` did: the method, the parameters and weight-file sizes before and after, the
    fraction reached, and how far the pruned model's logits moved on the sample inputs (before any
    recovery fine-tuning)."""

    out: str
    method: str
    sparsity: float
    importance: str | None
    parameters_before: int
    parameters_after: int
    bytes_before: int  # the source directory's weight files
    bytes_after: int  # the output's model.safetensors
    reached: dict[str, float]  # magnitude: weights zeroed; heads: key/value groups removed; neurons: neurons removed
    shapes: dict[str, tuple[int, int]]
    modules: list[str]
    max_abs_dlogits: float
    mean_abs_dlogits: float
    max_abs_logits: float  # of the original model: the scale the differences compare with
    inputs: str

    @property
    def size_ratio(self) -> float:
        return self.bytes_after / self.bytes_before if self.bytes_before else math.nan

    def table(self) -> list[str]:
        """A header and one row, aligned."""
        cells = {
            "method": self.method,
            "sparsity": f"{self.sparsity:.0%}",
            "reached": ", ".join(f"{k} {v:.1%}" for k, v in self.reached.items()),
            "parameters": f"{format_count(self.parameters_before)} → {format_count(self.parameters_after)}",
            "size before": format_bytes(self.bytes_before),
            "size after": format_bytes(self.bytes_after),
            "after/before": f"{self.size_ratio:.1%}",
            "max |Δlogits|": f"{self.max_abs_dlogits:.3g}",
            "mean |Δlogits|": f"{self.mean_abs_dlogits:.3g}",
            "max |logits|": f"{self.max_abs_logits:.3g}",
        }
        return aligned(cells)

    def lines(self) -> list[str]:
        """The command's output: where it wrote, the table, and what the numbers mean."""
        if self.method == "magnitude":
            what = (f"magnitude, {len(self.modules)} Linears; the zeros are stored densely, so the file keeps "
                    "its size (sparse kernels or compression turn them into savings)")
        else:
            changed = ", ".join(f"{k} {a} → {b}" for k, (a, b) in self.shapes.items())
            what = f"{self.method} by {self.importance} importance; {changed}"
        return [f"wrote {self.out}: {what}", *self.table(),
                f"Δlogits: original vs pruned on {self.inputs}, before any recovery fine-tuning"]

    def summary(self) -> str:
        return "\n".join(self.lines())

    __str__ = summary

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"size_ratio": self.size_ratio}


def prune(model_dir: str | Path, out: str | Path, method: str | Sequence[str] = "heads,neurons",
          sparsity: float = 0.3, *, importance: str = "weight", overwrite: bool = False,
          texts: list[str] | None = None) -> PruneReport:
    """Read ``model_dir`` (ours or Hugging Face; not a quantised one), prune it (:func:`prune_model`),
    write ``out`` atomically (config.json with the ``pruning`` entry, model.safetensors, the tokenizer
    files) and return a :class:`PruneReport`. ``importance='taylor'`` scores on the sample inputs
    (``texts`` through the directory's tokenizer, else random ids). Errors name the command's flags:
    ``--model``, ``--method``, ``--sparsity``, ``--importance``, ``--out``.

    >>> report = prune("runs/llama", "runs/llama-pruned", "heads,neurons", 0.3)  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    """
    from ..io import load, save_model

    methods = parse_method(method, flag="--method")
    sparsity = check_sparsity(sparsity, flag="--sparsity")
    if importance not in PRUNING_IMPORTANCE:
        raise ConfigError(f"--importance: expected one of {list(PRUNING_IMPORTANCE)}, found {importance!r}")
    if methods == ("magnitude",) and importance != "weight":
        raise ConfigError("--importance: magnitude pruning ranks weights by |w| alone; --importance is for the heads "
                          "and neurons methods")
    model_dir = check_source(model_dir, out, overwrite, "is quantised ({found}); its integer weights cannot be "
                             "pruned and re-quantised exactly; prune the full-precision model, then quantise the "
                             "pruned one")
    reference, tokenizer = load(model_dir)
    if methods != ("magnitude",) and reference.config.family not in TRANSFORMERS:
        raise ConfigError(f"--method: {','.join(methods)} needs a Transformer; {model_dir} holds an "
                          f"{reference.config.family} model; use --method magnitude")
    inputs, what = sample_inputs(reference, tokenizer, texts)
    calibration = None
    if importance == "taylor":
        calibration = dict(inputs)
        if reference.config.family == "seq2seq":  # the decoder reconstructs the source: a loss from the text alone
            calibration["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    pruned = copy.deepcopy(reference)
    info = prune_model(pruned, methods, sparsity, importance=importance, calibration=calibration)
    max_d, mean_d, scale = logit_gap(reference, pruned, inputs)
    save_model(pruned, out, tokenizer=tokenizer, overwrite=True)  # checked above with the caller's flag
    return PruneReport(
        out=str(out), method=info.method, sparsity=sparsity, importance=info.importance,
        parameters_before=info.parameters_before, parameters_after=info.parameters_after,
        bytes_before=weight_bytes(model_dir), bytes_after=weight_bytes(out), reached=info.reached,
        shapes=info.shapes, modules=info.modules, max_abs_dlogits=max_d, mean_abs_dlogits=mean_d,
        max_abs_logits=scale, inputs=what)


__all__ = ["STRUCTURED", "PruneInfo", "PruneReport", "check_sparsity", "keep_sparsity", "magnitude_modules",
           "parse_method", "prune", "prune_model"]
