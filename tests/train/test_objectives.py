"""Pretraining objectives: batch builders (clm, mlm, span) and the loss."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models as tk_models

from duplexlm.models import build_model
from duplexlm.models.seq2seq import shift_right
from duplexlm.objectives import (
    IGNORE_INDEX,
    ObjectiveTokens,
    chunk_length,
    clm_batch,
    compute_loss,
    make_batch,
    mlm_batch,
    random_spans_noise_mask,
    span_batch,
    span_lengths,
)
from duplexlm.objectives.pretraining import _random_segmentation
from duplexlm.presets import get_preset
from duplexlm.tokenizer import Tokenizer

V = 8000
SPECIALS = {0, 1, 2, 3, 4}  # pad, eos/sep, cls, unk, mask
MASK, CLS, SEP, EOS, PAD = 4, 2, 1, 1, 0
SENTINELS = list(range(V - 1, V - 101, -1))  # T5's layout: <extra_id_0> is the last id


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_chunk(B: int, L: int, seed: int = 0, high: int = V - 100, special_rate: float = 0.0) -> torch.Tensor:
    """Ordinary ids in [5, high), with a share of special ids sprinkled in."""
    g = gen(seed + 1000)
    chunk = torch.randint(5, high, (B, L), generator=g)
    if special_rate:
        where = torch.rand((B, L), generator=g) < special_rate
        chunk = torch.where(where, torch.randint(0, 4, (B, L), generator=g), chunk)
    return chunk


def mlm(chunk: torch.Tensor, seed: int = 0, **kw: object) -> dict[str, torch.Tensor]:
    return mlm_batch(chunk, mask_token_id=MASK, vocab_size=V, special_ids=SPECIALS, generator=gen(seed), **kw)


def span(chunk: torch.Tensor, seed: int = 0, **kw: object) -> dict[str, torch.Tensor]:
    return span_batch(chunk, sentinel_ids=SENTINELS, eos_token_id=EOS, pad_token_id=PAD, decoder_start_token_id=PAD,
                      generator=gen(seed), **kw)


# ----------------------------------------------------------------------------------------------------
# clm


def test_clm_shifts_by_one() -> None:
    chunk = random_chunk(3, 17)
    batch = clm_batch(chunk)
    assert batch["input_ids"].shape == batch["labels"].shape == (3, 16)
    torch.testing.assert_close(batch["input_ids"], chunk[:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(batch["labels"], chunk[:, 1:], rtol=0, atol=0)


@pytest.mark.parametrize("bad", [torch.arange(5), torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 4)])
def test_clm_rejects_bad_chunks(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="chunk"):
        clm_batch(bad)


# ----------------------------------------------------------------------------------------------------
# mlm


def test_mlm_statistics_and_labels() -> None:
    chunk = random_chunk(64, 512, special_rate=0.05)
    batch = mlm(chunk)
    ids, labels = batch["input_ids"], batch["labels"]
    special = torch.isin(chunk, torch.tensor(sorted(SPECIALS)))
    chosen = labels != IGNORE_INDEX

    assert not (chosen & special).any(), "a special token was chosen"
    torch.testing.assert_close(ids[special], chunk[special], rtol=0, atol=0)
    torch.testing.assert_close(labels[chosen], chunk[chosen], rtol=0, atol=0)
    torch.testing.assert_close(ids[~chosen], chunk[~chosen], rtol=0, atol=0)  # only chosen ones change

    frac = chosen.sum().item() / (~special).sum().item()
    assert abs(frac - 0.15) < 0.01, frac
    n = chosen.sum().item()
    masked = (ids[chosen] == MASK).sum().item() / n
    unchanged = (ids[chosen] == chunk[chosen]).sum().item() / n
    randomised = 1.0 - masked - unchanged
    assert abs(masked - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.02 and abs(randomised - 0.1) < 0.02, \
        (masked, unchanged, randomised)
    replaced = ids[chosen & (ids != MASK) & (ids != chunk)]
    assert not torch.isin(replaced, torch.tensor(sorted(SPECIALS))).any(), "a special id drawn as random token"
    assert int(replaced.min()) >= 0 and int(replaced.max()) < V


def test_mlm_is_deterministic_per_seed() -> None:
    chunk = random_chunk(8, 64)
    a, b, c = mlm(chunk, seed=1), mlm(chunk, seed=1), mlm(chunk, seed=2)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["labels"], c["labels"])


def test_mlm_special_ids_as_tensor() -> None:
    chunk = random_chunk(4, 32, special_rate=0.2)
    a = mlm(chunk, seed=3)
    b = mlm_batch(chunk, mask_token_id=MASK, vocab_size=V, special_ids=torch.tensor(sorted(SPECIALS)),
                  generator=gen(3))
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


@pytest.mark.parametrize("whole_word", [False, True])
def test_mlm_masks_at_least_one_per_row(whole_word: bool) -> None:
    chunk = random_chunk(300, 4)
    chunk[0] = torch.tensor([0, 1, 2, 3])  # nothing maskable: no label, no change
    starts = torch.ones_like(chunk, dtype=torch.bool) if whole_word else None
    batch = mlm(chunk, mask_prob=0.05, word_starts=starts)
    per_row = (batch["labels"] != IGNORE_INDEX).sum(dim=1)
    assert per_row[0] == 0 and torch.equal(batch["input_ids"][0], chunk[0])
    assert (per_row[1:] >= 1).all()


def test_mlm_whole_word_masks_all_or_none() -> None:
    B, L = 64, 512
    chunk = random_chunk(B, L, special_rate=0.03)
    starts = torch.rand((B, L), generator=gen(7)) < 0.4
    batch = mlm(chunk, word_starts=starts)
    chosen = batch["labels"] != IGNORE_INDEX
    special = torch.isin(chunk, torch.tensor(sorted(SPECIALS)))
    assert not (chosen & special).any()

    # Reference word numbering (loop, deliberately simple): a special token stands alone.
    for b in range(0, B, 7):
        words: dict[int, list[bool]] = {}
        w = 0
        for t in range(L):
            if t > 0 and (starts[b, t] or special[b, t] or special[b, t - 1]):
                w += 1
            if not special[b, t]:
                words.setdefault(w, []).append(bool(chosen[b, t]))
        for flags in words.values():
            assert all(flags) or not any(flags), flags

    frac = chosen.sum().item() / (~special).sum().item()
    assert abs(frac - 0.15) < 0.02, frac
    assert (chosen.sum(dim=1) >= 1).all()


def test_mlm_wraps_with_cls_and_sep() -> None:
    chunk = random_chunk(3, 10)
    batch = mlm(chunk, cls_token_id=CLS, sep_token_id=SEP)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == labels.shape == (3, 12)
    assert (ids[:, 0] == CLS).all() and (ids[:, -1] == SEP).all()
    assert (labels[:, [0, -1]] == IGNORE_INDEX).all()
    plain = mlm(chunk)  # the same draws: the wrapped middle equals the unwrapped batch
    assert torch.equal(ids[:, 1:-1], plain["input_ids"]) and torch.equal(labels[:, 1:-1], plain["labels"])


@pytest.mark.parametrize(("kw", "match"), [
    ({"mask_prob": 1.5}, "mask_prob"),
    ({"replace_prob": 0.8, "random_prob": 0.3}, "replace_prob"),
    ({"cls_token_id": CLS}, "cls_token_id"),
    ({"word_starts": torch.ones(2, 3, dtype=torch.bool)}, "word_starts"),
])
def test_mlm_rejects_bad_arguments(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mlm(random_chunk(2, 8), **kw)


# ----------------------------------------------------------------------------------------------------
# span corruption


def reconstruct(inputs: list[int], labels: list[int]) -> list[int]:
    """Undo span corruption: put each sentinel's tokens from the target back in its place."""
    sentinel_set = set(SENTINELS)
    assert inputs[-1] == EOS and labels[-1] == EOS
    fills: dict[int, list[int]] = {}
    current = None
    for tok in labels[:-1]:
        if tok in sentinel_set:
            current = tok
            fills[current] = []
        else:
            assert current is not None, "target does not start with a sentinel"
            fills[current].append(tok)
    out: list[int] = []
    for tok in inputs[:-1]:
        out.extend(fills.pop(tok) if tok in sentinel_set else [tok])
    assert not fills, "a sentinel of the target is missing from the input"
    return out


@pytest.mark.parametrize("L", [2, 7, 64, 257, 568])
def test_span_reconstructs_every_row(L: int) -> None:
    chunk = random_chunk(32, L)
    batch = span(chunk)
    sizes = span_lengths(L)
    assert batch["input_ids"].shape == (32, sizes.input_length)
    assert batch["labels"].shape == (32, sizes.target_length)
    for b in range(32):
        assert reconstruct(batch["input_ids"][b].tolist(), batch["labels"][b].tolist()) == chunk[b].tolist()
    # sentinels appear in order <extra_id_0>, <extra_id_1>, ... in both input and target
    used = batch["labels"][0][torch.isin(batch["labels"][0], torch.tensor(SENTINELS))].tolist()
    assert used == SENTINELS[: sizes.num_spans]


def test_span_fields_and_noise_fraction() -> None:
    L = 512
    batch = span(random_chunk(16, L))
    labels = batch["labels"]
    sizes = span_lengths(L)
    assert (sizes.num_noise, sizes.num_spans) == (77, 26)
    assert abs(sizes.num_noise / L - 0.15) < 0.01
    noise_tokens = (~torch.isin(labels, torch.tensor([*SENTINELS, EOS]))).sum(dim=1)
    assert (noise_tokens == sizes.num_noise).all()
    assert torch.equal(batch["decoder_input_ids"], shift_right(labels, PAD, PAD))
    assert (batch["attention_mask"] == 1).all() and (batch["decoder_attention_mask"] == 1).all()
    assert (labels != IGNORE_INDEX).all()


def test_span_noise_mask_layout() -> None:
    sizes = span_lengths(400, noise_density=0.2, mean_span_length=4.0)
    noise, index = random_spans_noise_mask(200, sizes, gen(5))
    assert (noise.sum(dim=1) == sizes.num_noise).all()
    starts = noise.clone()
    starts[:, 1:] &= ~noise[:, :-1]
    assert (starts.sum(dim=1) == sizes.num_spans).all()
    assert (~noise[:, 0]).all() and noise[:, -1].all()  # kept span first, noise span last (as T5)
    assert torch.equal(index.max(dim=1).values, torch.full((200,), sizes.num_spans - 1))
    assert ((index == -1) == ~noise).all()


def test_random_segmentation_is_uniform() -> None:
    lengths = _random_segmentation(5, 2, 20000, gen(0), torch.device("cpu"))
    assert (lengths.sum(dim=1) == 5).all() and (lengths >= 1).all()
    counts = torch.bincount(lengths[:, 0], minlength=5)[1:].float() / 20000  # 4 splits, each 1/4
    assert (counts - 0.25).abs().max() < 0.02, counts


def test_span_is_deterministic_per_seed() -> None:
    chunk = random_chunk(4, 100)
    a, b, c = span(chunk, seed=1), span(chunk, seed=1), span(chunk, seed=2)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["input_ids"], c["input_ids"])


def test_span_needs_enough_sentinels() -> None:
    with pytest.raises(ValueError, match="sentinel_ids"):
        span_batch(random_chunk(2, 512), sentinel_ids=SENTINELS[:10], eos_token_id=EOS, pad_token_id=PAD,
                   decoder_start_token_id=PAD, generator=gen())


@pytest.mark.parametrize(("kw", "match"), [({"noise_density": 0.0}, "noise_density"),
                                           ({"mean_span_length": 0.5}, "mean_span_length"),
                                           ({"noise_density": 0.9, "mean_span_length": 1.0}, "kept tokens")])
def test_span_rejects_bad_settings(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        span(random_chunk(2, 20), **kw)


# ----------------------------------------------------------------------------------------------------
# chunk lengths, tokens, dispatch


def test_chunk_length() -> None:
    assert chunk_length("clm", 128) == 129
    bert = ObjectiveTokens(vocab_size=V, mask_token_id=MASK, cls_token_id=CLS, sep_token_id=SEP)
    assert chunk_length("mlm", 512, tokens=bert) == 510
    assert chunk_length("mlm", 512) == 512
    for seq in (16, 100, 512, 1024):
        L = chunk_length("span", seq)
        assert span_lengths(L).input_length <= seq < span_lengths(L + 1).input_length
    assert chunk_length("span", 512) == 568  # T5's compute_input_and_target_lengths gives the same
    with pytest.raises(ValueError, match="objective"):
        chunk_length("nsp", 128)  # type: ignore[arg-type]


def small_tokenizer() -> Tokenizer:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "</s>": 5, "a": 6, "b": 7,
             "<extra_id_1>": 8, "<extra_id_0>": 9, "<extra_id_10>": 10, "<extra_id_2>": 11}
    backend = HFTokenizer(tk_models.WordLevel(vocab, unk_token="[UNK]"))
    backend.add_special_tokens(["<extra_id_0>", "<extra_id_1>", "<extra_id_2>", "<extra_id_10>", "[MASK]"])
    config = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
              "mask_token": "[MASK]", "eos_token": "</s>"}
    return Tokenizer(backend, config)


def test_objective_tokens_fallback_scans_vocab() -> None:
    # A tokenizer object without sentinel_ids / special_ids: the ids come from the vocabulary.
    tok = small_tokenizer()
    bare = SimpleNamespace(backend=tok.backend, special_tokens=tok.special_tokens, vocab_size=tok.vocab_size,
                           mask_token_id=tok.mask_token_id)
    t = ObjectiveTokens.from_tokenizer(bare)
    assert t.sentinel_ids == (9, 8, 11, 10)  # ordered by N, not by id
    assert t.special_ids == frozenset({0, 1, 2, 3, 4, 5, 8, 9, 10, 11})
    assert (t.mask_token_id, t.eos_token_id, t.pad_token_id, t.cls_token_id, t.sep_token_id) == (4, 5, 0, 2, 3)
    assert t.vocab_size == 12 and t.decoder_start == 0


def test_objective_tokens_uses_tokenizer_properties() -> None:
    tok = small_tokenizer()
    t = ObjectiveTokens.from_tokenizer(tok)
    assert t.sentinel_ids == tuple(tok.sentinel_ids) == (9, 8, 11)  # the tokenizer's own: consecutive N only
    assert t.special_ids == frozenset(tok.special_ids)
    assert (t.mask_token_id, t.eos_token_id, t.cls_token_id, t.sep_token_id) == (4, 5, 2, 3)


def test_make_batch_dispatches() -> None:
    tokens = ObjectiveTokens(vocab_size=V, mask_token_id=MASK, special_ids=frozenset(SPECIALS),
                             sentinel_ids=tuple(SENTINELS), eos_token_id=EOS, pad_token_id=PAD,
                             cls_token_id=CLS, sep_token_id=SEP)
    chunk = random_chunk(2, 40)
    assert torch.equal(make_batch("clm", chunk, tokens=tokens, generator=gen())["labels"], chunk[:, 1:])
    wrapped = make_batch("mlm", chunk, tokens=tokens, generator=gen(3))
    assert wrapped["input_ids"].shape == (2, 42)
    assert torch.equal(wrapped["labels"][:, 1:-1], mlm(chunk, seed=3)["labels"])
    plain = make_batch("mlm", chunk, tokens=tokens, generator=gen(3), cls_token_id=None, sep_token_id=None)
    assert plain["input_ids"].shape == (2, 40)
    s = make_batch("span", chunk, tokens=dataclasses.asdict(tokens), generator=gen(4), noise_density=0.3)
    assert torch.equal(s["labels"], span(chunk, seed=4, noise_density=0.3)["labels"])
    with pytest.raises(ValueError, match="objective"):
        make_batch("nsp", chunk, tokens=tokens, generator=gen())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mask_token_id"):
        make_batch("mlm", chunk, tokens=ObjectiveTokens(vocab_size=V), generator=gen())
    with pytest.raises(ValueError, match="sentinel_ids"):
        make_batch("span", chunk, tokens=ObjectiveTokens(vocab_size=V, eos_token_id=EOS), generator=gen())


# ----------------------------------------------------------------------------------------------------
# loss on tiny models of each family


FAMILIES = {"clm": "gpt2-tiny", "mlm": "bert-tiny", "span": "t5-tiny"}


def tiny_batch(objective: str, B: int = 4, L: int = 48) -> dict[str, torch.Tensor]:
    chunk = random_chunk(B, L, seed=11)
    if objective == "clm":
        return clm_batch(chunk)
    if objective == "mlm":
        return mlm(chunk, seed=11, cls_token_id=CLS, sep_token_id=SEP)
    return span(chunk, seed=11)


def tiny_model(objective: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset(FAMILIES[objective]), dropout=0.0)
    return build_model(config)


@pytest.mark.parametrize("objective", ["clm", "mlm", "span"])
def test_compute_loss_at_init(objective: str) -> None:
    model = tiny_model(objective).eval()
    batch = tiny_batch(objective)
    with torch.no_grad():
        loss, count = compute_loss(model, batch, objective)  # type: ignore[arg-type]
    assert count == int((batch["labels"] != IGNORE_INDEX).sum())
    assert count == {"clm": 4 * 47, "span": 4 * span_lengths(48).target_length}.get(objective, count)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(loss.item() - math.log(V)) < 0.15 * math.log(V), loss.item()


@pytest.mark.parametrize("objective", ["clm", "mlm", "span"])
def test_loss_goes_down_on_a_fixed_batch(objective: str) -> None:
    model = tiny_model(objective).train()
    batch = tiny_batch(objective)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, _ = compute_loss(model, batch, objective)  # type: ignore[arg-type]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_compute_loss_with_no_targets_is_zero() -> None:
    model = tiny_model("mlm")
    batch = {"input_ids": random_chunk(2, 8), "labels": torch.full((2, 8), IGNORE_INDEX)}
    loss, count = compute_loss(model, batch, "mlm")
    assert count == 0 and loss.item() == 0.0
    loss.backward()  # still attached to the graph


def test_compute_loss_errors() -> None:
    model = tiny_model("clm")
    with pytest.raises(KeyError, match="labels"):
        compute_loss(model, {"input_ids": random_chunk(1, 4)}, "clm")
    with pytest.raises(ValueError, match="logits"):
        compute_loss(model, {"input_ids": random_chunk(1, 4), "labels": random_chunk(1, 5)}, "clm")
    with pytest.raises(ValueError, match="objective"):
        compute_loss(model, tiny_batch("clm"), "sft")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------
# one generator per row: a row's result does not depend on the batch it is in


def gens(*seeds: int) -> list[torch.Generator]:
    return [gen(s) for s in seeds]


def row_batch(kind: str, chunk: torch.Tensor, generator: list[torch.Generator],
              starts: torch.Tensor | None) -> dict[str, torch.Tensor]:
    if kind == "span":
        return span_batch(chunk, sentinel_ids=SENTINELS, eos_token_id=EOS, pad_token_id=PAD,
                          decoder_start_token_id=PAD, generator=generator)
    return mlm_batch(chunk, mask_token_id=MASK, vocab_size=V, special_ids=SPECIALS, generator=generator,
                     word_starts=starts if kind == "mlm-whole-word" else None, mask_prob=0.05,
                     cls_token_id=CLS, sep_token_id=SEP)


@pytest.mark.parametrize("kind", ["mlm", "mlm-whole-word", "span"])
def test_a_row_is_the_same_alone_or_in_a_batch(kind: str) -> None:
    B, L = 6, 40
    chunk = random_chunk(B, L, seed=5, special_rate=0.1)
    chunk[1] = torch.tensor([0, 1, 2, 3] * (L // 4))  # nothing maskable (mlm)
    starts = torch.rand((B, L), generator=gen(9)) < 0.4
    seeds = [101, 7, 55, 3, 80, 12]
    batch = row_batch(kind, chunk, gens(*seeds), starts)
    for i, s in enumerate(seeds):
        alone = row_batch(kind, chunk[i:i + 1], gens(s), starts[i:i + 1])
        assert batch.keys() == alone.keys()
        for key in batch:
            assert torch.equal(batch[key][i:i + 1], alone[key]), (kind, i, key)
    # split in two batches, the rows are the same again
    first, second = row_batch(kind, chunk[:2], gens(*seeds[:2]), starts[:2]), \
        row_batch(kind, chunk[2:], gens(*seeds[2:]), starts[2:])
    for key in batch:
        assert torch.equal(batch[key], torch.cat([first[key], second[key]])), (kind, key)
    # the rows do draw from their generators: other seeds, other corruption
    other = row_batch(kind, chunk, gens(*(s + 1 for s in seeds)), starts)
    assert not torch.equal(other["labels"], batch["labels"])


def test_per_row_generators_need_one_per_row() -> None:
    with pytest.raises(ValueError, match="one generator per row"):
        mlm_batch(random_chunk(3, 8), mask_token_id=MASK, vocab_size=V, special_ids=SPECIALS, generator=gens(1, 2))
    with pytest.raises(ValueError, match="one generator per row"):
        random_spans_noise_mask(2, span_lengths(20), gens(1))
    with pytest.raises(TypeError, match="generator"):
        span(random_chunk(2, 20), generator=None)  # type: ignore[arg-type]


class _FakeShards:
    """Token ids and word starts in memory, read as ``TokenShards`` reads them."""

    def __init__(self, n: int) -> None:
        g = gen(21)
        self.ids = torch.randint(5, V - 100, (n,), generator=g).numpy()
        self.ids[torch.rand(n, generator=g).numpy() < 0.05] = 1  # document separators
        self.starts = (torch.rand(n, generator=g) < 0.4).numpy()

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, offset: int, length: int):
        return self.ids[offset:offset + length]

    def word_starts(self, offset: int, length: int):
        return self.starts[offset:offset + length]


@pytest.mark.parametrize("objective,args", [("clm", []), ("mlm", []), ("mlm", ["objective_args.whole_word=true"]),
                                            ("span", [])])
def test_loop_batches_do_not_depend_on_the_split(objective: str, args: list[str]) -> None:
    from duplexlm.train import loop
    from duplexlm.train.config import load_train_config

    cfg = load_train_config(None, [f"objective={objective}", *args])
    tokens = ObjectiveTokens(vocab_size=V, mask_token_id=MASK, special_ids=frozenset(SPECIALS),
                             sentinel_ids=tuple(SENTINELS), eos_token_id=EOS, pad_token_id=PAD,
                             cls_token_id=CLS, sep_token_id=SEP)
    run = SimpleNamespace(cfg=cfg, tokens=tokens, info=SimpleNamespace(device=torch.device("cpu")))
    sampler = loop.ChunkSampler(_FakeShards(4000), chunk_length(objective, 32, tokens=tokens), seed=3)  # type: ignore[arg-type]
    whole = loop.make_batch(run, sampler, 0, 4, (cfg.seed,))  # type: ignore[arg-type]
    halves = [loop.make_batch(run, sampler, start, 2, (cfg.seed,)) for start in (0, 2)]  # type: ignore[arg-type]
    assert whole.keys() == halves[0].keys()
    for key in whole:
        assert torch.equal(whole[key], torch.cat([h[key] for h in halves])), key
    if objective != "clm":  # another stream (evaluation's) corrupts the same samples differently
        other = loop.make_batch(run, sampler, 0, 4, (cfg.seed, 999_983))  # type: ignore[arg-type]
        assert not torch.equal(other["labels"], whole["labels"])


def test_mlm_loss_on_masked_positions_equals_the_full_logits_loss():
    """compute_loss asks the encoder for logits at the masked positions only; the loss and its
    gradients are those of the full (B, T, V) logits."""
    import torch.nn.functional as F

    from duplexlm.config import EncoderConfig
    from duplexlm.models import build_model

    torch.manual_seed(0)
    model = build_model(EncoderConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=1, n_head=4, head="mlm",
                                      pooler=False, dropout=0.0, attn_dropout=0.0))
    ids = torch.randint(5, 64, (3, 12))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, ::3] = ids[:, ::3]
    batch = {"input_ids": ids, "labels": labels}
    loss, n = compute_loss(model, batch, "mlm")
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(ids).logits
    ref = F.cross_entropy(logits.reshape(-1, 64), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    ref.backward()
    assert n == 12
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)


def test_rtd_batch_masks_every_chosen_position_and_rows_are_independent():
    from duplexlm.objectives import rtd_batch

    kw = dict(mask_token_id=4, vocab_size=100, special_ids={0, 1, 2, 3, 4}, cls_token_id=2, sep_token_id=3,
              mask_prob=0.3)
    chunk = torch.randint(5, 100, (3, 20), generator=torch.Generator().manual_seed(0))
    gens = lambda *s: [torch.Generator().manual_seed(x) for x in s]  # noqa: E731
    both = rtd_batch(chunk, generator=gens(1, 2, 3), **kw)
    alone = rtd_batch(chunk[2:], generator=gens(3), **kw)
    chosen = both["labels"] != IGNORE_INDEX
    assert torch.equal(chosen, both["input_ids"] == 4)  # every chosen position is [MASK], no other
    assert both["replace_u"].shape == (3, 22) and 0 <= float(both["replace_u"].min()) < 1
    for key in ("input_ids", "labels", "replace_u"):
        assert torch.equal(both[key][2:], alone[key]), key


def _rtd_model(**kw):
    from duplexlm.config import EncoderConfig

    torch.manual_seed(0)
    return build_model(EncoderConfig(vocab_size=50, max_seq_len=16, d_model=32, n_layer=2, n_head=4, head="rtd",
                                     pooler=False, dropout=0.0, attn_dropout=0.0, **kw))


def test_rtd_generator_samples_by_inverse_cdf():
    """The replacement at a position is the first id whose cumulative generator probability exceeds
    u: with all mass on two ids, u below their split gives the first, above it the second, and an id
    without mass is never drawn (u = 0 included)."""
    model = _rtd_model()
    head = model.generator["head"]
    with torch.no_grad():  # the generator's logits: ln 3 for id 7, 0 for id 9, -inf elsewhere → p = 0.75, 0.25
        head.dense.weight.zero_()
        head.decoder.bias.fill_(-1e9)
        head.decoder.bias[7], head.decoder.bias[9] = math.log(3.0), 0.0
        model.embed.weight.zero_()  # the tied decoder's weights: the logits are the bias alone
    ids = torch.full((1, 6), 4)
    at = torch.tensor([[False, True, True, True, True, False]])
    u = torch.tensor([[0.5, 0.0, 0.74, 0.76, 0.999, 0.5]])
    out = model(ids, replace_at=at, replace_u=u)
    assert out.aux["sampled"].tolist() == [7, 7, 9, 9]
    assert out.logits.shape == (1, 6) and out.aux["generator_logits"].shape == (4, 50)
    mlm = build_model(dataclasses.replace(model.config, head="mlm"))
    with pytest.raises(ValueError, match="replace_at: replaced-token detection needs head='rtd'"):
        mlm(ids, replace_at=at, replace_u=u)


def test_rtd_loss_learns_and_fine_tuning_drops_the_generator(tmp_path):
    from duplexlm.io import save_model
    from duplexlm.objectives import rtd_batch, rtd_loss

    model = _rtd_model(norm_position="pre")
    batch = rtd_batch(torch.randint(5, 50, (8, 14), generator=torch.Generator().manual_seed(1)),
                      generator=[torch.Generator().manual_seed(s) for s in range(8)], mask_token_id=4,
                      vocab_size=50, special_ids={0, 1, 2, 3, 4}, cls_token_id=2, sep_token_id=3, mask_prob=0.3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, n = rtd_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert n == 8 * 16 and losses[-1] < losses[0] / 2
    save_model(model, tmp_path / "rtd")
    from duplexlm.io import load_config_and_weights

    config, sd = load_config_and_weights(tmp_path / "rtd")
    assert config.head == "rtd" and any(k.startswith("generator.") for k in sd)
    from duplexlm.errors import UnsupportedModelError
    from duplexlm.io import convert_to_hf

    with pytest.raises(UnsupportedModelError):
        convert_to_hf(tmp_path / "rtd", tmp_path / "hf")
