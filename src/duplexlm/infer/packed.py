"""Linear layers whose weights are reordered once for oneDNN, for decoding on a CPU.

A decoding step multiplies a few rows (one per running sequence) by every weight matrix of the model.
On a CPU ``F.linear`` hands each product to MKL's GEMM, which at 2 to 64 rows runs at a fraction of
the speed it reaches at hundreds; oneDNN's inner product on a weight reordered once into its own
blocked layout does not. Measured on a 2-core AVX2 machine over the 25 matrices of a 13.8 M GPT-2
shape (6 × 384, vocabulary 8,000), milliseconds for all 25 (best of 5 interleaved rounds):

=====  ===================  ======================  ==================  ================
rows   F.linear, (out, in)  F.linear, column-major  split in two (bmm)  packed (oneDNN)
=====  ===================  ======================  ==================  ================
1      4.9                  4.1                     3.2                 3.6
4      10.2                 9.8                                         4.5
16     13.0                 12.1                                        7.0
64     25.0                 24.8                                        17.4
512    115                  111                                         104
=====  ===================  ======================  ==================  ================

One row is bound by reading the weight, and a single product reads it on one core: split in two
along the input (the column-major weight's two halves, a free view), one ``torch.bmm`` multiplies
both halves at once, a core each, and the two partial results are added.

:func:`pack_linears` turns a model's ``nn.Linear`` modules into :class:`PackedLinear` in place: the
same parameters (the same objects: tied weights stay tied, ``state_dict`` keys and values unchanged),
plus a packed copy of each weight, which is what costs memory (one more copy of the Linear weights).
:func:`pack_linears` also stores each weight column-major (the transpose of a contiguous (in, out)
matrix, as GPT-2's ``Conv1D`` keeps it: the same values), which the one-row product splits for free.
A :class:`PackedLinear` computes what ``nn.Linear`` does, up to rounding, and uses the packed copy
only where it pays and is safe:

- no gradient is being recorded (training goes through ``F.linear`` as before);
- the input has from 2 to :attr:`PackedLinear.max_rows` (256) rows: one row takes the split product
  above, and above a few hundred rows MKL catches up (it was ahead at 512 and 2,048 in other runs);
- the weight is on the CPU, in the input's dtype, and oneDNN could pack it (bf16 needs AVX-512 or
  AVX-NE-CONVERT; where it cannot, the layer falls back to ``F.linear``);
- neither CPU autocast nor ``torch.compile`` is at work (both expect ``F.linear``), and the weight is
  not an inference-mode tensor (which has no version counter to watch).

The packed copy follows the weight: an in-place update (an optimizer step, ``load_state_dict``) or a
new tensor in ``weight.data`` repacks it at the next call. (An in-place change made through
``weight.data``, which PyTorch's version counter does not see, is not noticed: change the parameter
itself, or call :func:`unpack_linears` first.) Copies and pickles of the module drop the
packed copy (oneDNN's opaque tensors have no storage to copy) and repack on their first call.

>>> lin = nn.Linear(4, 3)
>>> pack_linears(lin) == int(packing_available()), isinstance(lin, nn.Linear)
(True, True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_DTYPES = (torch.float32, torch.bfloat16)


def packing_available() -> bool:
    """Whether this PyTorch build has oneDNN's packed linear kernels (x86 and most ARM builds do)."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise"))


class PackedLinear(nn.Linear):
    """``nn.Linear`` with a oneDNN-packed copy of its weight for small, gradient-free products (see the
    module's docstring). Made from an ``nn.Linear`` by :func:`pack_linears`, not built directly."""

    max_rows = 256  # rows above which MKL's GEMM on the plain weight is as fast (see the table above)

    _packed: Tensor | None
    _packed_key: tuple[Any, ...] | None

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight, self.bias
        n, k = x.numel(), x.shape[-1]
        if (n < k or n > self.max_rows * k or x.dtype != w.dtype or w.is_inference()
                or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad
                                                 or (b is not None and b.requires_grad)))
                or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling()):
            return F.linear(x, w, b)  # oneDNN's op has no autograd formula, and autocast would not cast it
        if n == k:  # one row: the column-major weight's two halves, a core each
            if k % 2 or w.stride() != (1, w.shape[0]) or w.device.type != "cpu" or torch.get_num_threads() < 2:
                return F.linear(x, w, b)
            y = torch.bmm(x.reshape(2, 1, k // 2), w.t().view(2, k // 2, w.shape[0])).sum(0)
            return (y if b is None else y.add_(b)).view(*x.shape[:-1], w.shape[0])
        key = _key(w)  # checked on every call: a decoding step makes few, and the weight may have been
        if key != self._packed_key:  # trained, loaded or replaced since
            self._packed, self._packed_key = _pack(w), key
        if self._packed is None:
            return F.linear(x, w, b)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, b, "none", [], "")

    def _apply(self, fn: Any, recurse: bool = True) -> PackedLinear:
        self._packed, self._packed_key = None, None  # .to(), .half(), ...: repacked (or not) at the next call
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_packed"], state["_packed_key"] = None, None  # opaque: repacked at the first call
        return state


def _key(weight: Tensor) -> tuple[Any, ...]:
    """What identifies the weight's current values: in-place changes bump its version, and a new tensor
    in ``weight.data`` has another address, shape or strides (a view may share the address)."""
    return weight._version, weight.data_ptr(), weight.shape, weight.stride()


def _pack(weight: Tensor) -> Tensor | None:
    """``weight`` reordered for oneDNN, or None where it cannot be (not on the CPU, another dtype)."""
    if weight.device.type != "cpu" or weight.dtype not in _DTYPES:
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
    except RuntimeError:  # e.g. bf16 on a CPU without AVX-512: the plain path serves
        return None


def pack_linears(model: nn.Module) -> int:
    """Turn every plain ``nn.Linear`` of ``model`` on the CPU into a :class:`PackedLinear`, in place,
    and pack its weight now (so a server's first request does not pay for it) → how many were packed.
    Does nothing where this PyTorch has no oneDNN; :func:`unpack_linears` undoes it."""
    if not packing_available():
        return 0
    packed = 0
    for module in model.modules():
        w = module.weight if type(module) is nn.Linear else None
        if w is None or w.device.type != "cpu" or w.is_inference():  # inference tensors have no version
            continue
        if w.dim() == 2 and w.stride() != (1, w.shape[0]):  # column-major, for one row at a time
            w.data = w.data.t().contiguous().t()
        module.__class__ = PackedLinear
        module._packed, module._packed_key = _pack(w), _key(w)
        packed += module._packed is not None
    return packed


@contextlib.contextmanager
def packed_for_decoding(model: nn.Module) -> Iterator[None]:
    """:func:`pack_linears` for the duration of a ``with`` block, then every module it packed back to a
    plain ``nn.Linear`` with its weight in its former layout (modules packed before stay packed): what a
    one-call generation on a model that is not a server's does."""
    plain = {m: m.weight.is_contiguous() for m in model.modules() if type(m) is nn.Linear}
    try:
        pack_linears(model)
        yield
    finally:
        for module, contiguous in plain.items():
            if type(module) is PackedLinear:
                del module._packed, module._packed_key
                module.__class__ = nn.Linear
            if contiguous and not module.weight.is_contiguous():
                module.weight.data = module.weight.data.contiguous()


def unpack_linears(model: nn.Module) -> int:
    """Turn every :class:`PackedLinear` of ``model`` back into a plain ``nn.Linear`` (freeing the packed
    copies) → how many."""
    n = 0
    for module in model.modules():
        if type(module) is PackedLinear:
            del module._packed, module._packed_key
            module.__class__ = nn.Linear
            n += 1
    return n
