"""Weight-only quantisation of one ``nn.Linear``, written from scratch: the integer formats, and
:class:`QuantLinear`, the module that replaces a Linear in place (as :class:`~duplexlm.models.lora.LoRALinear`
does) and computes with its integer weights.

Two methods, both symmetric (zero maps to zero, no zero points to store):

- ``int8``: one fp32 scale per output channel (row of the weight), ``scale = max|row| / 127``, values
  in [-127, 127]. The weight takes a quarter of its fp32 bytes.
- ``int4``: one fp32 scale per group of ``group_size`` input columns of each row, ``scale =
  max|group| / 7``, values in [-7, 7] stored as ``value + 8`` in a nibble, two per ``uint8`` (the
  even column in the low nibble). Small groups follow the weights' local range more closely, at
  4 bytes of scale per group. A row whose length is not a multiple of the group size ends in a
  shorter group; nothing is padded on disk beyond half a byte per odd row.

Read top to bottom: methods and their checks → int8 → int4 → the CPU int8 kernel → the module.

>>> w = torch.tensor([[0.4, -1.0, 0.25], [2.0, 0.0, -2.0]])
>>> q, s = quantize_int8(w)
>>> q.tolist(), [round(x, 5) for x in s.tolist()]
([[51, -127, 32], [127, 0, -127]], [0.00787, 0.01575])
>>> packed, s4 = quantize_int4(w, group_size=8)
>>> packed.dtype, tuple(packed.shape), unpack_int4(packed, 3).tolist()
(torch.uint8, (2, 2), [[3, -7, 2], [7, 0, -7]])
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, ModelError

METHODS: dict[str, int] = {"int8": 8, "int4": 4}  # method → bits per weight
DEFAULT_GROUP_SIZE = 128  # int4: GPTQ's and AWQ's usual choice
MIN_GROUP_SIZE = 8  # below this the 4-byte scales cost as much as the 4-bit values save
_QMAX = {"int8": 127, "int4": 7}


# ----------------------------------------------------------------------------------------------------
# Methods and their checks


def check_method(method: Any, flag: str = "method") -> str:
    """``method`` if it is one we implement, else a :class:`ConfigError` naming ``flag``.

    >>> check_method("int3", flag="--method")
    Traceback (most recent call last):
    ...
    duplexlm.errors.ConfigError: --method: expected one of 'int8', 'int4', found 'int3'
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"{flag}: expected one of {', '.join(map(repr, METHODS))}, found {method!r}")
    return method


def check_group_size(method: str, group_size: Any, flag: str = "group_size",
                     method_flag: str = "method") -> int | None:
    """The group size ``method`` uses: int4 takes ``group_size`` (default 128; an integer >= 8), int8
    takes none (its scales are per output channel, so a group size given with it is a mistake).

    >>> check_group_size("int4", None), check_group_size("int8", None)
    (128, None)
    >>> check_group_size("int4", 4, flag="--group-size")
    Traceback (most recent call last):
    ...
    duplexlm.errors.ConfigError: --group-size: expected an integer >= 8 (input columns per int4 scale), found 4
    """
    if method == "int8":
        if group_size is not None:
            raise ConfigError(f"{flag}: applies to {method_flag} int4 only; int8 keeps one scale per output "
                              f"channel; leave it out, found {group_size!r}")
        return None
    if group_size is None:
        return DEFAULT_GROUP_SIZE
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < MIN_GROUP_SIZE:
        raise ConfigError(f"{flag}: expected an integer >= {MIN_GROUP_SIZE} (input columns per int4 scale), "
                          f"found {group_size!r}")
    return group_size


def storage_shapes(method: str, out_features: int, in_features: int,
                   group_size: int | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the stored integer weight and of its scales.

    >>> storage_shapes("int8", 6, 10, None), storage_shapes("int4", 6, 10, 8)
    (((6, 10), (6,)), ((6, 5), (6, 2)))
    """
    if method == "int8":
        return (out_features, in_features), (out_features,)
    assert group_size is not None
    return (out_features, -(-in_features // 2)), (out_features, -(-in_features // group_size))


def _as_float(weight: Tensor) -> Tensor:
    w = weight.detach().float()
    if w.dim() != 2:
        raise ModelError(f"expected a 2-D Linear weight (out, in), found shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ModelError("the weight holds NaN or infinite values; a scale cannot be chosen for them")
    return w


def _scales(amax: Tensor, qmax: int) -> Tensor:
    # an all-zero row or group keeps scale 1 (its values are 0 whatever the scale): no division by 0
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


# ----------------------------------------------------------------------------------------------------
# int8: one scale per output channel


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """weight (out, in) → int8 values (out, in) and fp32 scales (out,), ``weight ≈ q · scale[:, None]``;
    the rounding error is at most half a step, ``max|row| / 254``."""
    w = _as_float(weight)
    scales = _scales(w.abs().amax(dim=1), _QMAX["int8"])
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def dequantize_int8(q: Tensor, scales: Tensor) -> Tensor:
    """int8 (out, in) and scales (out,) → weight (out, in) in the scales' dtype."""
    return q.to(scales.dtype) * scales[:, None]


# ----------------------------------------------------------------------------------------------------
# int4: one scale per group of input columns, two values per byte


def pack_int4(q: Tensor) -> Tensor:
    """int values in [-8, 7], (out, in) → uint8 (out, ceil(in / 2)): ``value + 8`` in a nibble, the
    even column low. An odd row gets a padding nibble 8 (the value 0).

    >>> pack_int4(torch.tensor([[-7, 7, 1]])).tolist()  # nibbles 1, 15 | 9, 8 (padding)
    [[241, 137]]
    """
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    if u.shape[1] % 2:
        u = torch.cat([u, torch.full((u.shape[0], 1), 8, dtype=torch.uint8, device=u.device)], dim=1)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: Tensor, in_features: int) -> Tensor:
    """uint8 (out, ceil(in / 2)) → int8 values (out, in) in [-8, 7]; the inverse of :func:`pack_int4`."""
    both = torch.stack((packed & 0x0F, packed >> 4), dim=-1).view(packed.shape[0], -1)  # (out, 2·cols)
    return both[:, :in_features].to(torch.int8) - 8


def quantize_int4(weight: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """weight (out, in) → packed uint8 (out, ceil(in / 2)) and fp32 scales (out, ceil(in / group_size));
    the last group of a row is shorter when ``group_size`` does not divide ``in``."""
    w = _as_float(weight)
    out_features, in_features = w.shape
    n_groups = -(-in_features // group_size)
    padded = F.pad(w.abs(), (0, n_groups * group_size - in_features))  # zeros leave each max as it is
    scales = _scales(padded.view(out_features, n_groups, group_size).amax(dim=-1), _QMAX["int4"])
    per_column = scales.repeat_interleave(group_size, dim=1)[:, :in_features]
    q = torch.round(w / per_column).clamp_(-7, 7)
    return pack_int4(q), scales


def dequantize_int4(packed: Tensor, scales: Tensor, in_features: int, group_size: int) -> Tensor:
    """packed (out, ceil(in / 2)) and scales (out, groups) → weight (out, in) in the scales' dtype."""
    q = unpack_int4(packed, in_features).to(scales.dtype)
    out_features, n_groups = scales.shape
    if in_features == n_groups * group_size:  # whole groups: broadcast, no per-column copy of the scales
        return (q.view(out_features, n_groups, group_size) * scales[..., None]).view(out_features, in_features)
    return q * scales.repeat_interleave(group_size, dim=1)[:, :in_features]


# ----------------------------------------------------------------------------------------------------
# The CPU int8 kernel: fbgemm's dynamic quantised linear
#
# Measured on a busy 2-core AVX2 machine with torch 2.13 (one thread, 384 ↔ 1152/1536 matrices):
# ``quantized::linear_dynamic`` on a prepacked weight ran in 0.6-0.9x the time of fp32 ``F.linear``
# for 8-256 rows and about the same for one row; ``torch._int_mm`` on CPU took 50-100x longer than
# fp32, and the weight-only ``torch._weight_int8pack_mm`` and ``_weight_int4pack_mm_for_cpu`` 7-60x
# longer (no fast kernel for this CPU), so they are not used. On the GPT-2 shape 6 × 384 (vocabulary
# 8000, the tied head in fp32) a forward over 2 × 64 tokens took ~0.7x the time of fp32 and greedy
# decoding at batch 1 ~0.8x; on layers a few dozen wide the per-call overhead wins and int8 is slower. The kernel quantises each input tensor to
# uint8 on the fly with one scale for the whole tensor; fbgemm's AVX2 path adds pairs of
# uint8 × int8 products in 16 bits, so the activations keep 7 bits (``reduce_range``), as
# ``torch.ao.quantization.quantize_dynamic`` does, to stay clear of that sum's saturation.

_KERNEL_OK: dict[str, bool] = {}  # engine → whether prepacking worked there
_OPS: list[bool] = []  # whether this build has the two ops, looked up once
_OP: list[Any] = []


def _engine() -> str:
    return str(torch.backends.quantized.engine)


def int8_kernel_available() -> bool:
    """Whether this torch build has the dynamic int8 linear for the current quantised engine (and it
    has not failed here before)."""
    if not _OPS:
        ops = getattr(torch.ops, "quantized", None)
        _OPS.append(ops is not None and hasattr(ops, "linear_prepack") and hasattr(ops, "linear_dynamic"))
    engine = _engine()
    return _OPS[0] and engine in ("x86", "fbgemm", "onednn", "qnnpack") and _KERNEL_OK.get(engine, True)


def _linear_dynamic() -> Any:
    """``torch.ops.quantized.linear_dynamic``, looked up once (an op lookup costs microseconds a call)."""
    if not _OP:
        _OP.append(torch.ops.quantized.linear_dynamic)
    return _OP[0]


def _prepack_int8(q: Tensor, scales: Tensor, bias: Tensor | None) -> Any:
    """The engine's packed form of an int8 per-channel weight (a ``torch.ScriptObject``), or None when
    this build cannot make one."""
    zero_points = torch.zeros(q.shape[0], dtype=torch.long)
    try:
        with warnings.catch_warnings():  # torch announces the quantised tensor types' deprecation
            warnings.simplefilter("ignore")
            qw = torch._make_per_channel_quantized_tensor(q.cpu(), scales.detach().double().cpu(), zero_points, 0)
            return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float().cpu())
    except (RuntimeError, AttributeError, NotImplementedError):
        _KERNEL_OK[_engine()] = False
        return None


# ----------------------------------------------------------------------------------------------------
# The module


class QuantLinear(nn.Module):
    """A Linear whose weight is stored as integers: buffers ``qweight`` (int8 (out, in), or uint8
    (out, ceil(in / 2)) for int4) and ``scales`` (fp32 (out,), or (out, groups)), and the original
    ``bias`` Parameter, frozen.

    ``forward`` dequantises the weight on the fly and runs ``F.linear``: correct on every device and
    dtype, and differentiable with respect to the input. On a CPU, for int8 and fp32 inputs that need
    no gradient, it runs the fbgemm kernel instead (:func:`int8_kernel_available`): the activations
    are quantised per tensor to 7 bits on the fly and an integer matrix product does the work: faster
    than fp32 on layers a few hundred wide (see the measurements above). Set ``fast =
    False`` (or :func:`~duplexlm.compress.set_fast_path`) for the exact weight-only result. The packed
    weight is made on first use and kept beside ``qweight`` (about as many bytes again).

    >>> lin = nn.Linear(16, 4)
    >>> q = QuantLinear.from_linear(lin, "int4", group_size=8)
    >>> q
    QuantLinear(in_features=16, out_features=4, bias=True, method=int4, group_size=8)
    >>> sorted(q.state_dict())
    ['bias', 'qweight', 'scales']
    >>> x = torch.randn(2, 16)
    >>> bool((q(x) - lin(x)).abs().max() < 0.1)
    True
    """

    qweight: Tensor
    scales: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True, method: str = "int8",
                 group_size: int | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.method = check_method(method)
        self.group_size = check_group_size(self.method, group_size)
        self.bits = METHODS[self.method]
        self.in_features, self.out_features = in_features, out_features
        qshape, sshape = storage_shapes(self.method, out_features, in_features, self.group_size)
        qdtype = torch.int8 if self.method == "int8" else torch.uint8
        self.register_buffer("qweight", torch.zeros(qshape, dtype=qdtype, device=device))
        self.register_buffer("scales", torch.ones(sshape, dtype=dtype or torch.float32, device=device))
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(
                torch.zeros(out_features, dtype=dtype or torch.float32, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.fast = True
        self._packed: tuple[tuple[Any, ...], Any] | None = None  # (what it was made from, packed weight)

    @classmethod
    def from_linear(cls, linear: nn.Linear, method: str = "int8", group_size: int | None = None) -> QuantLinear:
        """Quantise ``linear``'s weight; the bias stays the same Parameter object, frozen."""
        method = check_method(method)
        group_size = check_group_size(method, group_size)
        w = linear.weight
        module = cls(linear.in_features, linear.out_features, bias=False, method=method, group_size=group_size,
                     device=w.device)
        q, scales = quantize_int8(w) if method == "int8" else quantize_int4(w, group_size)  # type: ignore[arg-type]
        module.qweight, module.scales = q, scales
        if linear.bias is not None:
            module.bias = linear.bias
            module.bias.requires_grad_(False)
        return module

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"method={self.method}{group}")

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """The weight the integers stand for, (out, in), in ``dtype`` (default: the scales')."""
        if self.method == "int8":
            w = dequantize_int8(self.qweight, self.scales)
        else:
            w = dequantize_int4(self.qweight, self.scales, self.in_features, self.group_size)  # type: ignore[arg-type]
        return w if dtype is None else w.to(dtype)

    def to_linear(self) -> nn.Linear:
        """A plain Linear holding the dequantised weight (in the scales' dtype) and the same bias."""
        w = self.dequantized_weight()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = nn.Parameter(w, requires_grad=False)
        linear.bias = self.bias
        return linear

    def _packed_weight(self) -> Any:
        """The kernel's packed weight, made on first use and again whenever ``qweight``, ``scales`` or
        ``bias`` changed (replaced, moved, loaded into or edited in place: a tensor's version counts
        every in-place write); None where the kernel cannot run. Called on every forward, so cheap."""
        qweight, scales, bias = self._buffers["qweight"], self._buffers["scales"], self._parameters["bias"]
        key = (id(qweight), qweight._version, id(scales), scales._version,  # type: ignore[union-attr]
               id(bias), -1 if bias is None else bias._version)
        if self._packed is None or self._packed[0] != key:
            ok = self.method == "int8" and self.qweight.device.type == "cpu" and int8_kernel_available()
            packed = _prepack_int8(self.qweight, self.scales, self.bias) if ok else None
            # fbgemm/x86 on AVX2 add pairs of products in 16 bits: 7-bit activations; qnnpack (ARM) need not
            self._packed = (key, None if packed is None else (packed, _engine() != "qnnpack"))
        return self._packed[1]

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) → (..., out)."""
        if (self.fast and self.method == "int8" and x.dtype == torch.float32 and x.device.type == "cpu" and x.numel()
                and not (torch.is_grad_enabled() and (x.requires_grad or (self.bias is not None
                                                                          and self.bias.requires_grad)))):
            packed = self._packed_weight()
            if packed is not None:
                return _linear_dynamic()(x, *packed)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in ("qweight", "scales"):
            t = state_dict.get(prefix + name)
            mine = getattr(self, name)
            if isinstance(t, Tensor) and (t.dtype.is_floating_point != mine.dtype.is_floating_point
                                          or (not t.dtype.is_floating_point and t.dtype != mine.dtype)):
                raise ModelError(f"{prefix}{name}: expected dtype {str(mine.dtype).removeprefix('torch.')} "
                                 f"for {self.method}, found {str(t.dtype).removeprefix('torch.')}")
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._packed = None

    def _apply(self, fn: Any, recurse: bool = True) -> QuantLinear:
        self._packed = None  # moved or cast: pack again from the new tensors
        return super()._apply(fn, recurse)  # type: ignore[return-value]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_packed"] = None  # an engine object: made again on first use, never copied or pickled
        return state


class QuantEmbedding(nn.Module):
    """An embedding table stored as int8 with one fp32 scale per row (per token): buffers ``qweight``
    (int8 (num, dim)) and ``scales`` (fp32 (num,)). A lookup gathers the rows' integers and scales —
    a quarter of the table's bytes are read, and only for the ids asked for — so it costs no more than
    the fp32 lookup. Untied tables only: a table that is also an LM head's weight stays in full
    precision (see :func:`duplexlm.compress.plan_quantization`).

    >>> emb = nn.Embedding(10, 6, padding_idx=0)
    >>> q = QuantEmbedding.from_embedding(emb)
    >>> q
    QuantEmbedding(10, 6, padding_idx=0, method=int8)
    >>> ids = torch.tensor([[1, 2, 0]])
    >>> bool((q(ids) - emb(ids)).abs().max() <= emb.weight.abs().max() / 127)
    True
    """

    qweight: Tensor
    scales: Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.method, self.bits = "int8", 8
        self.register_buffer("qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(num_embeddings, dtype=dtype or torch.float32, device=device))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> QuantEmbedding:
        w = embedding.weight
        module = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx, device=w.device)
        module.qweight, module.scales = quantize_int8(w)
        return module

    @property
    def weight(self) -> Tensor:
        """The table the integers stand for (for code that reads ``.weight``'s dtype or device)."""
        return dequantize_int8(self.qweight, self.scales)

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}, method={self.method}"

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.qweight).to(self.scales.dtype) * F.embedding(ids, self.scales[:, None])

    def to_embedding(self) -> nn.Embedding:
        """A plain Embedding holding the dequantised table."""
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx, device="meta")
        emb.weight = nn.Parameter(self.weight, requires_grad=False)
        return emb

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        t = state_dict.get(prefix + "qweight")
        if isinstance(t, Tensor) and t.dtype != torch.int8:
            raise ModelError(f"{prefix}qweight: expected dtype int8, found {str(t.dtype).removeprefix('torch.')}")
        super()._load_from_state_dict(state_dict, prefix, *args)


__all__ = ["DEFAULT_GROUP_SIZE", "METHODS", "MIN_GROUP_SIZE", "QuantEmbedding", "QuantLinear", "check_group_size", "check_method",
           "dequantize_int4", "dequantize_int8", "int8_kernel_available", "pack_int4", "quantize_int4",
           "quantize_int8", "storage_shapes", "unpack_int4"]
