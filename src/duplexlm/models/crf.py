"""A linear-chain conditional random field over BIO tags, written from scratch: the "CRF" of
BERT-CRF, as Chinese NER practice uses it.

A tagger's encoder gives emission scores (B, T, K); the CRF adds a learned score for every pair of
neighbouring tags, so that the whole sequence is scored at once:

    score(y) = start[y_0] + sum_t emit[t, y_t] + sum_t trans[y_{t-1}, y_t] + end[y_last]

Training minimises the negative log-likelihood ``log Z - score(gold)``, where the partition function
``log Z`` sums over all K^T paths by the forward algorithm; prediction is the Viterbi best path.

Read top to bottom: the BIO constraints → ``compact`` (which positions the chain runs over) →
the CRF (parameters, constraints, input checks, gold score, partition function, loss, Viterbi).

Which positions the chain runs over. Our tagger scores only the first sub-token of each word;
sub-tokens, [CLS], [SEP] and padding carry the label -100. The CRF must link *consecutive words*,
not consecutive sub-tokens, so the training loop calls :func:`compact` first: it gathers each row's
scored positions to the left, and the CRF sees right-padded rows. The CRF itself accepts only such
left-packed masks (a gap raises ``ModelError``), because a gap would silently mean something else.

Shapes: B batch, T time steps (T' after ``compact``), K tags.

>>> import torch
>>> labels = torch.tensor([[-100, 1, -100, 2, 0, -100]])  # [CLS] 北 ##京 很 好 [SEP]
>>> emissions = torch.randn(1, 6, 3)  # (B, T, K), from the encoder's tagging head
>>> crf = CRF(num_tags=3).constrain(["O", "B-LOC", "I-LOC"])
>>> em, tags, mask = compact(emissions, labels)  # (B, T', K), (B, T'), (B, T')
>>> tags.tolist(), mask.tolist()
([[1, 2, 0]], [[True, True, True]])
>>> loss = crf(em, tags, mask)  # negative log-likelihood, summed over the batch
>>> bool(loss > 0)
True
>>> len(crf.decode(em, mask)[0])  # one tag per scored position
3
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ModelError

Reduction = Literal["sum", "mean", "token_mean", "none"]
REDUCTIONS = ("sum", "mean", "token_mean", "none")

# The score of a forbidden transition: low enough that no path through it wins or carries weight
# (exp(-1e4) is 0 in fp32), yet finite, so logsumexp and its gradient never see inf - inf = nan.
FORBIDDEN = -1e4


# ----------------------------------------------------------------------------------------------------
# BIO constraints: I-X may only continue an entity of the same type X.


def _parse_bio(label_names: Sequence[str]) -> list[tuple[str, str]]:
    """Split each name into (prefix, type): 'O' -> ('O', ''), 'B-LOC' -> ('B', 'LOC')."""
    if isinstance(label_names, str) or len(label_names) == 0:
        raise ConfigError(f"label_names: expected a non-empty list of BIO tag names, found {label_names!r}")
    parsed: list[tuple[str, str]] = []
    for i, name in enumerate(label_names):
        if name == "O":
            parsed.append(("O", ""))
        elif isinstance(name, str) and name[:2] in ("B-", "I-") and len(name) > 2:
            parsed.append((name[0], name[2:]))
        else:
            raise ConfigError(
                f"label_names[{i}]: expected a BIO tag name 'O', 'B-<type>' or 'I-<type>', found {name!r}"
            )
    if len(set(label_names)) != len(label_names):
        seen = [n for i, n in enumerate(label_names) if n in label_names[:i]]
        raise ConfigError(f"label_names: expected each tag name once, found duplicates {sorted(set(seen))}")
    return parsed


def allowed_transitions(label_names: Sequence[str]) -> Tensor:
    """(K, K) bool: entry [i, j] says whether tag j may follow tag i under BIO.

    I-X may only follow B-X or I-X; every other move (to O, to any B-, I-X after its own type) is
    allowed. Where a tag may *start* a sequence is :func:`allowed_starts`.

    >>> allowed_transitions(["O", "B-LOC", "I-LOC"]).int().tolist()
    [[1, 1, 0], [1, 1, 1], [1, 1, 1]]
    """
    parsed = _parse_bio(label_names)
    allowed = torch.ones(len(parsed), len(parsed), dtype=torch.bool)
    for j, (prefix_j, type_j) in enumerate(parsed):
        if prefix_j == "I":
            allowed[:, j] = torch.tensor([p in ("B", "I") and t == type_j for p, t in parsed])
    return allowed


def allowed_starts(label_names: Sequence[str]) -> Tensor:
    """(K,) bool: whether a sequence may start with each tag (every tag but I-X).

    >>> allowed_starts(["O", "B-LOC", "I-LOC"]).tolist()
    [True, True, False]
    """
    return torch.tensor([prefix != "I" for prefix, _ in _parse_bio(label_names)])


# ----------------------------------------------------------------------------------------------------
# compact: run the chain over the scored positions only.


def compact(emissions: Tensor, labels: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor, Tensor]:
    """Gather each row's scored positions (``labels != ignore_index``) to the left, in order.

    Returns ``(emissions (B, T', K), tags (B, T'), mask (B, T'))`` with T' the largest number of
    scored positions in a row (at least 1). The chain then links consecutive *words*, skipping
    sub-tokens, special tokens and padding. The training loop calls this before the CRF; at
    prediction, where there are no labels, pass ``torch.where(first_subtoken, 0, -100)`` as labels,
    and the i-th decoded tag of a row belongs to that row's i-th scored position. Padded slots hold
    tag 0 and emissions 0 and are masked out; gradients flow back to the gathered positions only.

    >>> em = torch.arange(8.0).view(1, 4, 2)  # (B, T, K)
    >>> e, tags, mask = compact(em, torch.tensor([[-100, 1, -100, 0]]))
    >>> e.tolist(), tags.tolist(), mask.tolist()
    ([[[2.0, 3.0], [6.0, 7.0]]], [[1, 0]], [[True, True]])
    """
    if emissions.dim() != 3:
        raise ModelError(f"emissions: expected shape (batch, time, num_tags), found {tuple(emissions.shape)}")
    if labels.shape != emissions.shape[:2]:
        raise ModelError(
            f"labels: expected shape (batch, time) = {tuple(emissions.shape[:2])} to match the emissions, "
            f"found {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ModelError(f"labels: expected integer tag ids, found dtype {labels.dtype}")
    scored = labels != ignore_index  # (B, T)
    counts = scored.sum(dim=1)  # (B,)
    T_out = max(int(counts.max()), 1) if labels.numel() else 1
    # A stable sort of "unscored" puts the scored positions first, in their original order.
    order = torch.sort((~scored).to(torch.uint8), dim=1, stable=True).indices[:, :T_out]  # (B, T')
    mask = torch.arange(T_out, device=labels.device)[None, :] < counts[:, None]  # (B, T')
    if labels.shape[1] < T_out:  # T == 0: nothing to gather
        B, K = emissions.shape[0], emissions.shape[2]
        return emissions.new_zeros(B, T_out, K), labels.new_zeros(B, T_out), mask
    tags = torch.where(mask, labels.gather(1, order), 0)  # (B, T')
    gathered = emissions.gather(1, order[..., None].expand(-1, -1, emissions.shape[2]))  # (B, T', K)
    return gathered * mask[..., None], tags, mask


# ----------------------------------------------------------------------------------------------------
# The CRF


class CRF(nn.Module):
    """A linear-chain CRF with K tags.

    Parameters carry pytorch-crf's names, so checkpoints read (and load) naturally:
    ``transitions`` (K, K), the score of moving from tag i to tag j; ``start_transitions`` (K,) and
    ``end_transitions`` (K,), the scores of starting and ending on a tag. ``constrain(label_names)``
    fixes the BIO-forbidden ones at -1e4 (see :meth:`constrain`).

    ``forward`` returns the negative log-likelihood (pytorch-crf returns the log-likelihood: the
    opposite sign). Both ``forward`` and ``decode`` compute in fp32 (or fp64 for fp64 inputs), with
    autocast off, since logsumexp over long chains in bf16 loses the loss. Masks must be packed to
    the left (right padding only); for masks with holes call :func:`compact` first.

    >>> crf = CRF(num_tags=3)
    >>> crf.transitions.shape, crf.start_transitions.shape
    (torch.Size([3, 3]), torch.Size([3]))
    """

    # the allowed-move masks set by constrain(); None when unconstrained
    transitions_allowed: Tensor | None
    start_allowed: Tensor | None

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        if isinstance(num_tags, bool) or not isinstance(num_tags, int) or num_tags < 1:
            raise ConfigError(f"num_tags: expected a positive integer, found {num_tags!r}")
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))  # [from, to]
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        # Not persistent: the state dict keeps pytorch-crf's three keys. The forbidden entries are
        # stored as -1e4 in the parameters themselves, so a reloaded CRF still decodes valid BIO; the
        # model builder calls constrain() again from the config's label names to keep them fixed.
        self.register_buffer("transitions_allowed", None, persistent=False)
        self.register_buffer("start_allowed", None, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # pytorch-crf's initialisation: small, so the emissions decide at first
        nn.init.uniform_(self.transitions, -0.1, 0.1)
        nn.init.uniform_(self.start_transitions, -0.1, 0.1)
        nn.init.uniform_(self.end_transitions, -0.1, 0.1)
        self._apply_constraints()

    def extra_repr(self) -> str:
        constrained = ", constrained" if self.transitions_allowed is not None else ""
        return f"num_tags={self.num_tags}{constrained}"

    def constrain(self, label_names: Sequence[str]) -> CRF:
        """Forbid the moves BIO does not allow (I-X after anything but B-X / I-X, I-X at the start).

        Their scores are set to -1e4 and stay there: the forward pass reads them through a fixed
        mask, so they get no gradient, and neither the optimiser nor weight decay can revive them.
        Decoding then never yields an invalid BIO sequence (unless emissions differ by ~1e4).
        Returns the CRF itself.

        >>> crf = CRF(3).constrain(["O", "B-PER", "I-PER"])
        >>> crf.transitions[0, 2].item(), crf.start_transitions[2].item()
        (-10000.0, -10000.0)
        """
        if len(label_names) != self.num_tags:
            raise ConfigError(
                f"label_names: expected {self.num_tags} names (num_tags), found {len(label_names)}: "
                f"{list(label_names)[:10]}"
            )
        device = self.transitions.device
        self.transitions_allowed = allowed_transitions(label_names).to(device)
        self.start_allowed = allowed_starts(label_names).to(device)
        self._apply_constraints()
        return self

    @torch.no_grad()
    def _apply_constraints(self) -> None:
        if self.transitions_allowed is not None and self.start_allowed is not None:
            self.transitions.masked_fill_(~self.transitions_allowed, FORBIDDEN)
            self.start_transitions.masked_fill_(~self.start_allowed, FORBIDDEN)

    def _potentials(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """(start (K,), transitions (K, K), end (K,)) in ``dtype``, forbidden entries fixed."""
        start, trans, end = self.start_transitions, self.transitions, self.end_transitions
        if self.transitions_allowed is not None and self.start_allowed is not None:
            # where, not the parameter itself: a fixed value whatever the optimiser did to it
            trans = torch.where(self.transitions_allowed, trans, FORBIDDEN)
            start = torch.where(self.start_allowed, start, FORBIDDEN)
        return start.to(dtype), trans.to(dtype), end.to(dtype)

    # ------------------------------------------------------------------------------------------------
    # Input checks: raise ModelError naming the tensor, what was expected and what was found.

    def _check(self, emissions: Tensor, mask: Tensor | None, tags: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Validate the inputs; return (emissions in the compute dtype, mask as bool (B, T))."""
        if emissions.dim() != 3 or emissions.shape[2] != self.num_tags:
            raise ModelError(
                f"emissions: expected shape (batch, time, {self.num_tags}) for num_tags={self.num_tags}, "
                f"found {tuple(emissions.shape)}"
            )
        if not emissions.is_floating_point():
            raise ModelError(f"emissions: expected floating-point scores, found dtype {emissions.dtype}")
        B, T, _ = emissions.shape
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=emissions.device)
        elif mask.shape != (B, T):
            raise ModelError(
                f"mask: expected shape (batch, time) = {(B, T)} to match the emissions, found {tuple(mask.shape)}"
            )
        mask = mask if mask.dtype == torch.bool else mask != 0
        gaps = mask[:, 1:] & ~mask[:, :-1]  # (B, T-1): a scored position after an unscored one
        if bool(gaps.any()):
            b, t = gaps.nonzero()[0].tolist()
            raise ModelError(
                f"mask: expected each row's scored positions packed to the left (right padding only), found "
                f"a gap in row {b} before position {t + 1}; gather the scored positions with "
                f"duplexlm.models.crf.compact(emissions, labels) first"
            )
        if tags is not None:
            if tags.shape != (B, T):
                raise ModelError(
                    f"tags: expected shape (batch, time) = {(B, T)} to match the emissions, found {tuple(tags.shape)}"
                )
            if tags.is_floating_point() or tags.is_complex() or tags.dtype == torch.bool:
                raise ModelError(f"tags: expected integer tag ids, found dtype {tags.dtype}")
            outside = mask & ((tags < 0) | (tags >= self.num_tags))
            if bool(outside.any()):
                b, t = outside.nonzero()[0].tolist()
                raise ModelError(
                    f"tags: expected tag ids in [0, {self.num_tags}) at scored positions, found "
                    f"{int(tags[b, t])} at row {b}, position {t} (labels -100 belong to compact(), not here)"
                )
        # fp32 at least, even under autocast: logsumexp over a chain in bf16 loses the loss
        return emissions.to(torch.promote_types(emissions.dtype, torch.float32)), mask

    # ------------------------------------------------------------------------------------------------
    # Scores

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B,) the score of the given tag paths; 0 for a row with no scored position.

        >>> crf = CRF(2)
        >>> em = torch.zeros(1, 2, 2)
        >>> s = crf.score(em, torch.tensor([[0, 1]]))
        >>> torch.allclose(s, crf.start_transitions[0] + crf.transitions[0, 1] + crf.end_transitions[1])
        True
        """
        with torch.autocast(device_type=emissions.device.type, enabled=False):
            emissions, mask = self._check(emissions, mask, tags)
            return self._score(emissions, tags, mask)

    def _score(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        B, T, _ = emissions.shape
        if T == 0:
            return emissions.new_zeros(B)
        start, trans, end = self._potentials(emissions.dtype)
        tags = torch.where(mask, tags, 0).long()  # unscored slots may hold -100; any valid id will do
        maskf = mask.to(emissions.dtype)  # (B, T)
        lengths = mask.sum(dim=1)  # (B,)
        # No loop: every term of the gold path is a gather.
        emit = emissions.gather(2, tags[..., None]).squeeze(2)  # (B, T)
        moves = trans[tags[:, :-1], tags[:, 1:]]  # (B, T-1): from y_{t-1} to y_t
        last = tags.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)  # (B,)
        has_any = maskf[:, 0]  # left-packed: a row has a scored position iff its first one is
        return (
            start[tags[:, 0]] * has_any
            + (emit * maskf).sum(dim=1)
            + (moves * maskf[:, 1:]).sum(dim=1)
            + end[last] * has_any
        )

    def log_partition(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B,) log Z: the log-sum-exp of the scores of all paths; 0 for a row with no scored position.

        >>> crf = CRF(2)
        >>> _ = [nn.init.zeros_(p) for p in crf.parameters()]  # every path of 3 steps scores 0
        >>> round(crf.log_partition(torch.zeros(1, 3, 2)).item(), 4)  # log(2 ** 3)
        2.0794
        """
        with torch.autocast(device_type=emissions.device.type, enabled=False):
            emissions, mask = self._check(emissions, mask)
            return self._log_partition(emissions, mask)

    def _log_partition(self, emissions: Tensor, mask: Tensor) -> Tensor:
        B, T, _ = emissions.shape
        if T == 0:
            return emissions.new_zeros(B)
        start, trans, end = self._potentials(emissions.dtype)
        # The forward algorithm: alpha[b, j] = log of the summed scores of all paths ending in j.
        alpha = start[None, :] + emissions[:, 0]  # (B, K)
        for t in range(1, T):
            # (B, K_from, 1) + (1, K_from, K_to) + (B, 1, K_to), summed out over K_from
            nxt = torch.logsumexp(alpha[:, :, None] + trans[None] + emissions[:, t, None, :], dim=1)  # (B, K)
            alpha = torch.where(mask[:, t, None], nxt, alpha)  # padded steps carry alpha unchanged
        log_z = torch.logsumexp(alpha + end[None, :], dim=1)  # (B,)
        return torch.where(mask[:, 0], log_z, 0.0)

    # ------------------------------------------------------------------------------------------------
    # Loss

    def forward(
        self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None, reduction: Reduction = "sum"
    ) -> Tensor:
        """The negative log-likelihood of ``tags`` (B, T) given ``emissions`` (B, T, K).

        ``mask`` (B, T) bool marks the scored positions, packed to the left (None: all scored).
        ``reduction``: 'sum' over the batch (default), 'mean' over rows, 'token_mean' over scored
        positions, or 'none' for (B,). A row with no scored position contributes 0.

        >>> crf = CRF(3)
        >>> em, tags = torch.randn(2, 4, 3), torch.tensor([[0, 1, 2, 0], [1, 1, 0, 0]])
        >>> mask = torch.tensor([[True] * 4, [True, True, False, False]])
        >>> nll = crf(em, tags, mask, reduction="none")
        >>> nll.shape, bool((nll > 0).all()), torch.allclose(nll.sum(), crf(em, tags, mask))
        (torch.Size([2]), True, True)
        """
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction: expected one of {list(REDUCTIONS)}, found {reduction!r}")
        with torch.autocast(device_type=emissions.device.type, enabled=False):
            emissions, mask = self._check(emissions, mask, tags)
            nll = self._log_partition(emissions, mask) - self._score(emissions, tags, mask)  # (B,)
        if reduction == "none":
            return nll
        if reduction == "sum":
            return nll.sum()
        if reduction == "mean":
            return nll.sum() / max(nll.shape[0], 1)
        return nll.sum() / mask.sum().clamp(min=1)  # token_mean

    # ------------------------------------------------------------------------------------------------
    # Viterbi

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor | None = None) -> list[list[int]]:
        """The best tag path of each row: a list of ``mask[b].sum()`` tag ids per row.

        Vectorised over the batch and the tags; only time is a loop.

        >>> crf = CRF(3).constrain(["O", "B-LOC", "I-LOC"])
        >>> em = torch.tensor([[[0.0, 0.0, 5.0], [0.0, 0.0, 5.0]]])  # the emissions alone say I, I
        >>> crf.decode(em, torch.tensor([[True, True]]))  # but I-LOC cannot start a sequence
        [[1, 2]]
        """
        with torch.autocast(device_type=emissions.device.type, enabled=False):
            emissions, mask = self._check(emissions, mask)
            B, T, _ = emissions.shape
            if T == 0:
                return [[] for _ in range(B)]
            start, trans, end = self._potentials(emissions.dtype)
            score = start[None, :] + emissions[:, 0]  # (B, K): best score of a path ending in each tag
            history: list[Tensor] = []  # history[t-1][b, j]: the best tag before j at time t
            for t in range(1, T):
                nxt = score[:, :, None] + trans[None] + emissions[:, t, None, :]  # (B, K_from, K_to)
                best, back = nxt.max(dim=1)  # (B, K), (B, K)
                score = torch.where(mask[:, t, None], best, score)
                history.append(back)
            cur = (score + end[None, :]).argmax(dim=1)  # (B,): the last tag of each row's best path
            path = torch.empty(B, T, dtype=torch.long, device=emissions.device)
            path[:, T - 1] = cur
            # Walk back. Past a row's end (mask off) cur stays its last tag, so on reaching the
            # row's last scored position the walk starts from the right tag.
            for t in range(T - 1, 0, -1):
                prev = history[t - 1].gather(1, cur[:, None]).squeeze(1)  # (B,)
                cur = torch.where(mask[:, t], prev, cur)
                path[:, t - 1] = cur
            lengths = mask.sum(dim=1).tolist()
            return [row[:n] for row, n in zip(path.tolist(), lengths)]


def crf_for(config: Any) -> CRF:
    """The CRF of a tagger's config: ``num_labels`` tags, BIO-constrained when ``label_names`` are set."""
    crf = CRF(config.num_labels)
    return crf.constrain(config.label_names) if config.label_names else crf


__all__ = [
    "CRF",
    "FORBIDDEN",
    "REDUCTIONS",
    "allowed_starts",
    "allowed_transitions",
    "compact",
    "crf_for",
]
