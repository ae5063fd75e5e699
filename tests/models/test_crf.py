"""The linear-chain CRF: the partition function, the NLL and Viterbi against brute-force enumeration
of all K^T paths (right-padded rows of different lengths, and hole-y labels through ``compact``),
BIO constraints, fp32 under autocast, gradients and a toy training run, batch = rows one by one,
parity with pytorch-crf where it is installed, and the input errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from duplexlm.errors import ConfigError, ModelError
from duplexlm.models.crf import CRF, FORBIDDEN, allowed_starts, allowed_transitions, compact

NER = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def random_crf(K: int, seed: int = 0, scale: float = 1.0) -> CRF:
    """A CRF with transition scores large enough that they matter against the emissions."""
    crf = CRF(K).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in crf.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
    return crf


def right_padded(lengths: list[int], T: int | None = None) -> torch.Tensor:
    T = max(lengths) if T is None else T
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)


def path_score(crf: CRF, emissions: torch.Tensor, path: tuple[int, ...]) -> torch.Tensor:
    """The score of one path over one row's scored emissions (L, K), written out term by term."""
    s = crf.start_transitions[path[0]] + crf.end_transitions[path[-1]]
    for t, y in enumerate(path):
        s = s + emissions[t, y]
        if t > 0:
            s = s + crf.transitions[path[t - 1], y]
    return s


def brute_force(crf: CRF, emissions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(log Z, the score of every path (K^L,), the best path) over one row's emissions (L, K)."""
    L, K = emissions.shape
    if L == 0:
        return torch.zeros((), dtype=emissions.dtype), torch.zeros(1, dtype=emissions.dtype), []
    paths = list(itertools.product(range(K), repeat=L))
    scores = torch.stack([path_score(crf, emissions, p) for p in paths])
    return torch.logsumexp(scores, dim=0), scores, list(paths[int(scores.argmax())])


def is_valid_bio(tags: list[int], names: list[str]) -> bool:
    prev = "O"
    for tag in tags:
        name = names[tag]
        if name.startswith("I-") and prev[2:] != name[2:]:
            return False
        prev = name
    return True


# ----------------------------------------------------------------------------------------------------
# Against brute force


@pytest.mark.parametrize("K, lengths", [(2, [1]), (3, [4, 2, 3, 1]), (4, [3, 3]), (2, [5, 0, 2])])
def test_partition_nll_and_viterbi_match_brute_force(K: int, lengths: list[int]) -> None:
    crf = random_crf(K, seed=K)
    T = max(lengths)
    g = torch.Generator().manual_seed(1)
    emissions = torch.randn(len(lengths), T, K, generator=g, dtype=torch.float64)
    # padding positions hold garbage that must not count: -100 tags and large emissions
    mask = right_padded(lengths)
    tags = torch.randint(0, K, (len(lengths), T), generator=g)
    tags = torch.where(mask, tags, -100)
    emissions = torch.where(mask[..., None], emissions, 1e3)

    log_z = crf.log_partition(emissions, mask)
    nll = crf(emissions, tags, mask, reduction="none")
    best = crf.decode(emissions, mask)
    for b, L in enumerate(lengths):
        want_log_z, _, want_best = brute_force(crf, emissions[b, :L])
        torch.testing.assert_close(log_z[b], want_log_z)
        gold = tuple(tags[b, :L].tolist())
        want_nll = want_log_z - path_score(crf, emissions[b, :L], gold) if L else torch.zeros((), dtype=torch.float64)
        torch.testing.assert_close(nll[b], want_nll)
        assert best[b] == want_best
        assert len(best[b]) == L
    torch.testing.assert_close(crf(emissions, tags, mask), nll.sum())
    torch.testing.assert_close(crf(emissions, tags, mask, reduction="mean"), nll.sum() / len(lengths))
    torch.testing.assert_close(crf(emissions, tags, mask, reduction="token_mean"), nll.sum() / sum(lengths))


def test_likelihoods_sum_to_one() -> None:
    """exp(-NLL) over every possible tag sequence of a row is a distribution."""
    crf = random_crf(3, seed=5)
    emissions = torch.randn(1, 4, 3, dtype=torch.float64)
    paths = torch.tensor(list(itertools.product(range(3), repeat=4)))  # (81, 4)
    nll = crf(emissions.expand(len(paths), -1, -1), paths, reduction="none")
    torch.testing.assert_close(torch.exp(-nll).sum(), torch.tensor(1.0, dtype=torch.float64))


def test_holey_labels_through_compact_match_brute_force_over_scored_positions() -> None:
    """The chain links consecutive scored positions, skipping [CLS], sub-tokens, [SEP], padding."""
    K = 3
    crf = random_crf(K, seed=7)
    labels = torch.tensor(
        [
            [-100, 1, -100, -100, 2, 0, -100, -100],  # [CLS] w ##x ##y w w [SEP] pad
            [-100, 0, 1, -100, 2, 2, 1, -100],
            [-100, -100, -100, -100, -100, -100, -100, -100],  # no scored word at all
            [2, -100, -100, -100, -100, -100, -100, 0],
        ]
    )
    g = torch.Generator().manual_seed(3)
    emissions = torch.randn(4, 8, K, generator=g, dtype=torch.float64)
    em, tags, mask = compact(emissions, labels)
    assert em.shape == (4, 5, K) and tags.shape == mask.shape == (4, 5)
    assert mask.sum(dim=1).tolist() == [3, 5, 0, 2]
    assert tags.tolist()[0] == [1, 2, 0, 0, 0] and tags.tolist()[3] == [2, 0, 0, 0, 0]
    torch.testing.assert_close(em[0, :3], emissions[0, [1, 4, 5]])
    assert not em[0, 3:].any()  # padded slots are zero

    nll = crf(em, tags, mask, reduction="none")
    best = crf.decode(em, mask)
    for b in range(4):
        scored = (labels[b] != -100).nonzero().flatten()
        row = emissions[b, scored]  # (L, K): the scored positions only, in order
        want_log_z, _, want_best = brute_force(crf, row)
        gold = tuple(labels[b, scored].tolist())
        want = want_log_z - path_score(crf, row, gold) if gold else torch.zeros((), dtype=torch.float64)
        torch.testing.assert_close(nll[b], want)
        assert best[b] == want_best
    assert nll[2].item() == 0.0 and best[2] == []


def test_compact_gradients_reach_only_scored_positions() -> None:
    crf = random_crf(3).float()
    emissions = torch.randn(2, 6, 3, requires_grad=True)
    labels = torch.tensor([[-100, 0, -100, 1, -100, -100], [-100, 2, 2, 0, 1, -100]])
    crf(*compact(emissions, labels)).backward()
    scored = labels != -100
    assert emissions.grad is not None
    assert emissions.grad[scored].abs().sum(dim=-1).gt(0).all()
    assert not emissions.grad[~scored].any()


def test_compact_with_nothing_scored_and_empty_time() -> None:
    crf = CRF(2)
    for labels in (torch.full((2, 3), -100), torch.zeros(2, 0, dtype=torch.long)):
        em, tags, mask = compact(torch.randn(2, labels.shape[1], 2), labels)
        assert em.shape == (2, 1, 2) and not mask.any()
        assert crf(em, tags, mask).item() == 0.0
        assert crf.decode(em, mask) == [[], []]
    assert crf.decode(torch.randn(2, 0, 2)) == [[], []]
    assert crf(torch.randn(2, 0, 2), torch.zeros(2, 0, dtype=torch.long)).item() == 0.0


# ----------------------------------------------------------------------------------------------------
# Batches, dtypes, autocast


def test_batch_of_different_lengths_equals_rows_one_by_one() -> None:
    crf = random_crf(5, seed=2).float()
    lengths = [7, 1, 4, 6, 3]
    emissions = torch.randn(5, 7, 5)
    tags = torch.randint(0, 5, (5, 7))
    mask = right_padded(lengths)
    nll = crf(emissions, tags, mask, reduction="none")
    paths = crf.decode(emissions, mask)
    for b, L in enumerate(lengths):
        one = crf(emissions[b : b + 1, :L], tags[b : b + 1, :L], reduction="none")
        torch.testing.assert_close(nll[b : b + 1], one)
        assert paths[b] == crf.decode(emissions[b : b + 1, :L])[0]


def test_fp32_under_autocast_and_bf16_inputs() -> None:
    crf = random_crf(4).float()
    emissions = torch.randn(3, 9, 4).bfloat16()
    tags = torch.randint(0, 4, (3, 9))
    mask = right_padded([9, 5, 2])
    want = crf(emissions.float(), tags, mask, reduction="none")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = crf(emissions, tags, mask, reduction="none")
        log_z = crf.log_partition(emissions, mask)
        paths = crf.decode(emissions, mask)
    assert got.dtype == log_z.dtype == torch.float32
    torch.testing.assert_close(got, want)  # no bf16 rounding anywhere inside
    assert paths == crf.decode(emissions.float(), mask)
    # a bf16 CRF (model.to(bfloat16)) still computes in fp32
    assert crf.bfloat16()(emissions, tags, mask).dtype == torch.float32


# ----------------------------------------------------------------------------------------------------
# BIO constraints


def test_constraint_matrix_for_a_real_label_set() -> None:
    #        O  B-L I-L B-O I-O B-P I-P   (to)
    want = [
        [1, 1, 0, 1, 0, 1, 0],  # from O
        [1, 1, 1, 1, 0, 1, 0],  # from B-LOC
        [1, 1, 1, 1, 0, 1, 0],  # from I-LOC
        [1, 1, 0, 1, 1, 1, 0],  # from B-ORG
        [1, 1, 0, 1, 1, 1, 0],  # from I-ORG
        [1, 1, 0, 1, 0, 1, 1],  # from B-PER
        [1, 1, 0, 1, 0, 1, 1],  # from I-PER
    ]
    assert allowed_transitions(NER).int().tolist() == want
    assert allowed_starts(NER).int().tolist() == [1, 1, 0, 1, 0, 1, 0]

    crf = CRF(len(NER)).constrain(NER)
    allowed = torch.tensor(want, dtype=torch.bool)
    assert (crf.transitions[~allowed] == FORBIDDEN).all()
    assert (crf.transitions[allowed].abs() <= 0.1).all()  # the rest keep their initial values
    assert (crf.start_transitions[[2, 4, 6]] == FORBIDDEN).all()
    assert (crf.end_transitions.abs() <= 0.1).all()  # BIO may end on any tag
    assert "constrained" in repr(crf)


def test_decode_respects_constraints() -> None:
    K = len(NER)
    g = torch.Generator().manual_seed(0)
    emissions = torch.randn(64, 6, K, generator=g) * 3
    emissions[..., [2, 4, 6]] += 2.0  # the emissions favour I- tags, so unconstrained paths break BIO
    mask = right_padded(torch.randint(1, 7, (64,), generator=g).tolist(), T=6)

    free = CRF(K)
    assert not all(is_valid_bio(p, NER) for p in free.decode(emissions, mask))

    crf = CRF(K).constrain(NER)
    paths = crf.decode(emissions, mask)
    assert all(is_valid_bio(p, NER) for p in paths)
    # and the constrained Viterbi is the argmax over the valid paths
    for b in range(4):
        L = int(mask[b].sum())
        with torch.no_grad():
            _, scores, _ = brute_force(crf, emissions[b, :L])
        candidates = list(itertools.product(range(K), repeat=L))
        valid = [i for i, p in enumerate(candidates) if is_valid_bio(list(p), NER)]
        assert paths[b] == list(candidates[max(valid, key=lambda i: float(scores[i]))])


def test_forbidden_scores_stay_fixed_through_training() -> None:
    crf = CRF(len(NER)).constrain(NER)
    opt = torch.optim.AdamW(crf.parameters(), lr=0.5, weight_decay=0.1)
    emissions = torch.randn(4, 5, len(NER))
    tags = torch.randint(0, len(NER), (4, 5))  # invalid gold sequences push on forbidden moves
    for _ in range(3):
        opt.zero_grad()
        crf(emissions, tags).backward()
        allowed = crf.transitions_allowed
        assert allowed is not None and crf.transitions.grad is not None
        assert not crf.transitions.grad[~allowed].any()
        opt.step()
    # weight decay moved the stored value a little, but the CRF reads the fixed one
    start, trans, _ = crf._potentials(torch.float32)
    assert (trans[~allowed] == FORBIDDEN).all() and (start[[2, 4, 6]] == FORBIDDEN).all()


def test_constraints_survive_state_dict_round_trip() -> None:
    crf = CRF(len(NER)).constrain(NER)
    state = crf.state_dict()
    assert sorted(state) == ["end_transitions", "start_transitions", "transitions"]  # pytorch-crf's keys
    fresh = CRF(len(NER))
    fresh.load_state_dict(state)
    emissions = torch.randn(16, 5, len(NER))
    emissions[..., [2, 4, 6]] += 3.0
    assert all(is_valid_bio(p, NER) for p in fresh.decode(emissions))


# ----------------------------------------------------------------------------------------------------
# Gradients and a toy training run


def test_gradients_flow_and_training_learns_the_gold_tags() -> None:
    """Token ids -> emissions by an embedding, then the CRF: the loss falls and Viterbi returns
    the gold tags. Token 3 is tagged B-LOC, and the tokens after it I-LOC until a token 0: the
    tags of tokens 1 and 2 depend on the previous tag, which only the transitions can learn."""
    torch.manual_seed(0)
    names = ["O", "B-LOC", "I-LOC"]
    ids = torch.tensor([[3, 1, 2, 0, 1], [1, 2, 3, 2, 0], [3, 2, 2, 1, 0], [0, 1, 3, 1, 1]])
    gold = torch.tensor([[1, 2, 2, 0, 0], [0, 0, 1, 2, 0], [1, 2, 2, 2, 0], [0, 0, 1, 2, 2]])
    mask = right_padded([5, 5, 5, 4])
    embed = torch.nn.Embedding(4, 3)
    crf = CRF(3).constrain(names)
    params = [*embed.parameters(), *crf.parameters()]
    opt = torch.optim.Adam(params, lr=0.1)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = crf(embed(ids), gold, mask, reduction="mean")
        loss.backward()
        for p in params:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert all(b < a + 1e-6 for a, b in itertools.pairwise(losses[:11]))  # falls from the first steps
    want = [row[: int(n)] for row, n in zip(gold.tolist(), mask.sum(dim=1))]
    assert crf.decode(embed(ids), mask) == want


# ----------------------------------------------------------------------------------------------------
# Parity with pytorch-crf (optional; not a dependency)


def test_parity_with_pytorch_crf() -> None:
    torchcrf = pytest.importorskip("torchcrf")
    K, lengths = 5, [6, 3, 1, 5]
    theirs = torchcrf.CRF(K, batch_first=True)
    ours = CRF(K)
    ours.load_state_dict(theirs.state_dict())  # the same names and shapes
    emissions = torch.randn(len(lengths), 6, K)
    tags = torch.randint(0, K, (len(lengths), 6))
    mask = right_padded(lengths)
    for reduction in ("sum", "mean", "token_mean", "none"):
        torch.testing.assert_close(
            ours(emissions, tags, mask, reduction=reduction), -theirs(emissions, tags, mask, reduction=reduction)
        )
    assert ours.decode(emissions, mask) == theirs.decode(emissions, mask)


# ----------------------------------------------------------------------------------------------------
# Input errors: each names what was expected and what was found


def test_input_errors() -> None:
    crf = CRF(3)
    em, tags = torch.randn(2, 4, 3), torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ModelError, match=r"emissions: expected shape \(batch, time, 3\).*found \(2, 4, 5\)"):
        crf(torch.randn(2, 4, 5), tags)
    with pytest.raises(ModelError, match="emissions: expected floating-point"):
        crf.decode(torch.zeros(2, 4, 3, dtype=torch.long))
    with pytest.raises(ModelError, match=r"mask: expected shape .*found \(2, 3\)"):
        crf(em, tags, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ModelError, match=r"packed to the left.*row 1 before position 2.*compact"):
        crf(em, tags, torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]]).bool())
    with pytest.raises(ModelError, match=r"packed to the left.*row 0 before position 1"):
        crf.decode(em, torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]).bool())
    with pytest.raises(ModelError, match=r"tags: expected tag ids in \[0, 3\).*found -100 at row 0, position 3"):
        crf(em, torch.tensor([[0, 1, 2, -100], [0, 0, 0, 0]]))
    with pytest.raises(ModelError, match="tags: expected integer"):
        crf(em, tags.float())
    with pytest.raises(ConfigError, match=r"reduction: expected one of .*found 'avg'"):
        crf(em, tags, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="num_tags: expected a positive integer, found 0"):
        CRF(0)
    with pytest.raises(ConfigError, match=r"label_names: expected 3 names .*found 2"):
        crf.constrain(["O", "B-LOC"])
    with pytest.raises(ConfigError, match=r"label_names\[1\]: expected a BIO tag name .*found 'LOC'"):
        allowed_transitions(["O", "LOC", "I-LOC"])
    with pytest.raises(ConfigError, match=r"duplicates \['O'\]"):
        allowed_starts(["O", "B-X", "O"])
    with pytest.raises(ModelError, match=r"labels: expected shape \(batch, time\) = \(2, 4\).*found \(2, 3\)"):
        compact(em, torch.zeros(2, 3, dtype=torch.long))
