"""Recurrent baselines: an RNN, GRU or LSTM over token embeddings, one- or two-directional, with a
pooled sequence vector and a classification, tagging or language-model head.

Read top to bottom: input checks → running the recurrence on packed sequences → attention pooling →
the model.

Shapes: B batch, T time steps, E d_embed, H d_hidden, D d_output (H, or 2H when bidirectional),
L n_layer, nd number of directions (1 or 2).

>>> import torch
>>> from duplexlm.config import RNNConfig
>>> model = RNNModel(RNNConfig(vocab_size=50, d_embed=8, d_hidden=16, num_labels=3)).eval()
>>> ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])  # right-padded with pad_token_id 0
>>> out = model(ids, attention_mask=(ids != 0).long(), output_attentions=True)
>>> tuple(out.last_hidden_state.shape), tuple(out.pooled_output.shape), tuple(out.logits.shape)
((2, 4, 32), (2, 32), (2, 3))
>>> out.attentions[0][1].tolist()[2:]  # no weight on the padding
[0.0, 0.0]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..config import ConfigError, RNNConfig
from .crf import crf_for
from .layers import Dropout
from .outputs import ModelOutput

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


# ----------------------------------------------------------------------------------------------------
# Input checks: raise ValueError naming the tensor, what was expected and what was found.


def check_inputs(input_ids: Tensor, attention_mask: Tensor | None, vocab_size: int) -> Tensor | None:
    """Validate ``input_ids`` (B, T) and ``attention_mask`` (B, T) of 1 = real token, 0 = padding.

    Returns the mask as booleans, or None when every position is real (then nothing needs packing).

    >>> check_inputs(torch.tensor([[1, 2]]), torch.tensor([[1, 0]]), vocab_size=5).tolist()
    [[True, False]]
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected shape (batch, time), found shape {tuple(input_ids.shape)}")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids: expected integer token ids, found dtype {input_ids.dtype}")
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids: expected at least one token per row, found shape {tuple(input_ids.shape)}")
    outside = (input_ids < 0) | (input_ids >= vocab_size)
    if bool(outside.any()):
        b, t = outside.nonzero()[0].tolist()
        raise ValueError(
            f"input_ids: token ids must lie in [0, {vocab_size}) (vocab_size), found {int(input_ids[b, t])} "
            f"at row {b}, position {t} ({int(outside.sum())} out of range in all)"
        )
    if attention_mask is None:
        return None
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask: expected the shape of input_ids {tuple(input_ids.shape)}, "
            f"found {tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype != torch.bool and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        found = sorted({float(v) for v in attention_mask.unique().tolist()} - {0.0, 1.0})
        raise ValueError(f"attention_mask: expected 0 (padding) or 1 (real token), found values {found[:5]}")
    mask = attention_mask.bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"attention_mask: every row needs at least one real token, found rows {empty[:10]} all padding"
        )
    return None if bool(mask.all()) else mask


# ----------------------------------------------------------------------------------------------------
# Attention pooling


class AttentionPooling(nn.Module):
    """Additive (Bahdanau-style) attention over time: one learned query scores each step,

        score_t = vᵀ tanh(W h_t + b),   weights = softmax over real steps,   pooled = Σ_t weights_t h_t

    Padding gets the most negative finite score, so its weight is exactly 0.

    >>> pool = AttentionPooling(4)
    >>> pooled, weights = pool(torch.randn(2, 3, 4), torch.tensor([[True, True, False]] * 2))
    >>> tuple(pooled.shape), weights[0, 2].item()
    ((2, 4), 0.0)
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1, bias=False)

    def forward(self, h: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """h (B, T, D), mask (B, T) True = real → pooled (B, D), weights (B, T)."""
        scores = self.score(torch.tanh(self.proj(h))).squeeze(-1)  # (B, T)
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        # Softmax in at least fp32 (half precision loses the small weights), float64 stays float64.
        weights = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(h.dtype)
        pooled = (weights.unsqueeze(1) @ h).squeeze(1)  # (B, 1, T) @ (B, T, D) → (B, D)
        return pooled, weights


# ----------------------------------------------------------------------------------------------------
# The model


class RNNModel(nn.Module):
    """Embedding → dropout → RNN/GRU/LSTM stack → pooling → head.

    With padding in ``attention_mask`` the recurrence runs on packed sequences: each row's state only
    ever sees its real tokens, and the backward direction starts from the row's own last real token.
    Padding may sit anywhere (right, the usual, or left): each row's real tokens are read in order as
    one sequence and the outputs put back in their places, with zeros at padded positions.

    Heads (``config.head``): 'classify' → logits (B, num_labels) from the pooled vector; 'tag' →
    logits (B, T, num_labels) per token; 'lm' → next-token logits (B, T, vocab_size), one-directional
    only; 'none' → no logits.

    >>> cfg = RNNConfig(cell="gru", vocab_size=20, d_embed=8, d_hidden=8, bidirectional=False,
    ...                 pooling="last", head="lm")
    >>> out = RNNModel(cfg)(torch.randint(1, 20, (2, 5)))
    >>> tuple(out.logits.shape), out.attentions is None
    ((2, 5, 20), True)
    """

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        if not 0 <= config.pad_token_id < config.vocab_size:
            raise ConfigError(
                f"RNNConfig.pad_token_id: expected an id in [0, {config.vocab_size}) (vocab_size), "
                f"found {config.pad_token_id}"
            )
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_embed, padding_idx=config.pad_token_id)
        self.dropout = Dropout(config.dropout)
        self._templates: dict[int, nn.RNNBase] = {}  # per input width, see _one_direction
        self.rnn = CELLS[config.cell](
            config.d_embed, config.d_hidden, num_layers=config.n_layer, batch_first=True,
            bidirectional=config.bidirectional,
            # PyTorch only drops out between layers (and warns when asked to with one layer).
            dropout=config.dropout if config.n_layer > 1 else 0.0,
        )
        D = config.d_output
        self.attention_pool = AttentionPooling(D) if config.pooling == "attention" else None
        # named as every family names its heads: `classifier` for a task (classify, tag), `lm_head` for the LM
        self.classifier = nn.Linear(D, config.num_labels) if config.head in ("classify", "tag") else None
        self.lm_head = nn.Linear(D, config.vocab_size) if config.head == "lm" else None
        self.crf = crf_for(config) if config.crf else None  # as the encoder's: see models/crf.py

    def upgrade_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Directories written before the heads were named alike hold ``head.*``: the same tensors under
        the name of the head this model has (``duplexlm.load`` calls it before checking the names)."""
        new = "classifier." if self.classifier is not None else "lm_head." if self.lm_head is not None else None
        if new is None:
            return state_dict
        return {(new + k[5:] if k.startswith("head.") else k): v for k, v in state_dict.items()}

    def run_rnn(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """x (B, T, E), mask (B, T) or None → outputs (B, T, D) zero at padding, final states (L·nd, B, H).

        The final states are, per layer and direction, the forward state after each row's last real
        token and the backward state after reading back to its first.
        """
        if mask is None:
            out, state = self.rnn(x)
            return out, state[0] if isinstance(state, tuple) else state  # an LSTM returns (h_n, c_n)
        # Move each row's real tokens to the front, keeping their order (identity for right padding),
        # so that every row is a prefix of real tokens followed by padding.
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # (B, T)
        x = x.gather(1, order.unsqueeze(-1).expand_as(x))
        lengths = mask.sum(dim=1)
        if x.is_cuda:  # cuDNN runs packed sequences fast, with its weights in one flat buffer
            packed, state = self.rnn(pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False))
            out, _ = pad_packed_sequence(packed, batch_first=True, total_length=x.shape[1])  # zeros past each length
            h_n = state[0] if isinstance(state, tuple) else state
        else:
            out, h_n = self._run_prefixes(x, lengths)
        # Put every output back at its token's original position (the inverse of the gather).
        return torch.zeros_like(out).scatter(1, order.unsqueeze(-1).expand_as(out), out), h_n

    def _run_prefixes(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The RNN over rows whose first ``lengths`` steps are real, layer by layer and direction by
        direction, each a plain (unpacked) call of the fused CPU/GPU kernel. A forward direction reads
        padding only after a row's real steps; a backward one reads each row's real steps reversed
        in place. On a CPU this trains some 20-40 times faster than a PackedSequence, whose
        backward pass runs step by step (CUDA keeps packing: cuDNN is fast at it); the outputs are the same (tested against packing)."""
        B, T, _ = x.shape
        steps = torch.arange(T, device=x.device)
        real = steps[None] < lengths[:, None]  # (B, T)
        # index that reverses each row's real prefix and leaves its padding where it is
        flip = torch.where(real, (lengths[:, None] - 1 - steps[None]).clamp(min=0), steps[None])
        rows, last = torch.arange(B, device=x.device), (lengths - 1).clamp(min=0)
        finals: list[Tensor] = []
        h = x
        for layer in range(self.rnn.num_layers):
            outs = []
            for reverse in (False, True)[: 2 if self.rnn.bidirectional else 1]:
                inp = h.gather(1, flip.unsqueeze(-1).expand_as(h)) if reverse else h
                out = self._one_direction(inp, layer, reverse)
                finals.append(out[rows, last])  # the state after the last step this direction read
                outs.append(out.gather(1, flip.unsqueeze(-1).expand_as(out)) if reverse else out)
            h = torch.cat(outs, dim=-1) * real.unsqueeze(-1).to(outs[0].dtype)
            if layer < self.rnn.num_layers - 1 and self.rnn.dropout > 0:
                h = nn.functional.dropout(h, self.rnn.dropout, self.training)  # as nn.LSTM between layers
        return h, torch.stack(finals)

    def _one_direction(self, x: Tensor, layer: int, reverse: bool) -> Tensor:
        """One layer and direction of ``self.rnn`` as a one-directional, one-layer call with its weights."""
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        names = ("weight_ih", "weight_hh", *(("bias_ih", "bias_hh") if self.rnn.bias else ()))
        template = self._templates.get(x.shape[-1])
        if template is None:  # a module to call with borrowed weights; never a submodule (no state of its own)
            kwargs = {"nonlinearity": self.rnn.nonlinearity} if isinstance(self.rnn, nn.RNN) else {}
            template = type(self.rnn)(x.shape[-1], self.rnn.hidden_size, batch_first=True, bias=self.rnn.bias,
                                      device="meta", **kwargs)
            self._templates[x.shape[-1]] = template
        weights = {f"{n}_l0": getattr(self.rnn, n + suffix) for n in names}
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # bf16 autocast sends the CPU kernel down a path some 10x slower than fp32 (measured on a
            # CPU with native bf16 matmuls): the recurrence runs in fp32, the layers around it do not
            with torch.autocast("cpu", enabled=False):
                out, _ = functional_call(template, weights, (x.float(),))
            return out
        out, _ = functional_call(template, weights, (x,))
        return out

    def pool(self, h: Tensor, h_n: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """h (B, T, D), h_n (L·nd, B, H), mask (B, T) or None → pooled (B, D), attention weights (B, T) or None."""
        kind = self.config.pooling
        if self.attention_pool is not None:  # built in __init__ exactly when kind == "attention"
            return self.attention_pool(h, mask)
        if kind == "last":
            # Last layer: the forward direction after the last real token, the backward one after the
            # first token (h_n holds layer 0 forward, layer 0 backward, layer 1 forward, ...).
            if self.config.bidirectional:
                return torch.cat([h_n[-2], h_n[-1]], dim=-1), None  # (B, 2H)
            return h_n[-1], None  # (B, H)
        m = torch.ones_like(h[..., 0]) if mask is None else mask.to(h.dtype)  # (B, T)
        if kind == "mean":
            return (h * m.unsqueeze(-1)).sum(dim=1) / m.sum(dim=1, keepdim=True), None
        if kind == "max":
            if mask is None:
                return h.max(dim=1).values, None
            # Padded outputs are 0, which could beat real negative values: push them out of reach.
            return h.masked_fill(~mask.unsqueeze(-1), torch.finfo(h.dtype).min).max(dim=1).values, None
        raise ValueError(f"RNNConfig.pooling: expected 'attention', 'mean', 'max' or 'last', found {kind!r}")

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                output_attentions: bool = False) -> ModelOutput:
        """input_ids (B, T), attention_mask (B, T) of 1 = real token, 0 = padding (None: all real).

        Returns ``last_hidden_state`` (B, T, D) with zeros at padding, ``pooled_output`` (B, D),
        ``logits`` per the head, and with ``output_attentions`` and attention pooling
        ``attentions=(weights (B, T),)``.
        """
        mask = check_inputs(input_ids, attention_mask, self.config.vocab_size)
        x = self.dropout(self.embed(input_ids))  # (B, T, E)
        h, h_n = self.run_rnn(x, mask)  # (B, T, D), (L·nd, B, H)
        pooled, weights = self.pool(h, h_n, mask)  # (B, D), (B, T) or None

        logits = None
        if self.classifier is not None:
            if self.config.head == "classify":
                logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
            else:
                logits = self.classifier(self.dropout(h))  # (B, T, num_labels)
        elif self.lm_head is not None:
            logits = self.lm_head(self.dropout(h))  # (B, T, vocab_size)
        attentions = (weights,) if output_attentions and weights is not None else None
        return ModelOutput(last_hidden_state=h, logits=logits, pooled_output=pooled, attentions=attentions)


__all__ = ["CELLS", "AttentionPooling", "RNNModel", "check_inputs"]
