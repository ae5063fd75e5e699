"""The recurrent baselines: shapes for every cell × direction × pooling, padding that never leaks,
causality, attention pooling, a NumPy oracle for the packed recurrence, a tiny training run, and
the input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from duplexlm import reference
from duplexlm.config import ConfigError, RNNConfig
from duplexlm.models import build_model
from duplexlm.models.rnn import RNNModel

CELLS = ["rnn", "gru", "lstm"]
POOLINGS = ["attention", "mean", "max", "last"]
V = 30  # vocabulary size of the tiny models; 0 is padding


def tiny(**overrides) -> RNNConfig:
    base = dict(vocab_size=V, d_embed=8, d_hidden=6, n_layer=2, dropout=0.0, num_labels=3)
    return RNNConfig(**{**base, **overrides})


def padded_batch(lengths: list[int], T: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) with random real tokens in [1, V) and the matching 0/1 mask."""
    T = max(lengths) if T is None else T
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (len(lengths), T), generator=g)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


# ----------------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_every_variant_builds_and_runs(cell, bidirectional, pooling):
    cfg = tiny(cell=cell, bidirectional=bidirectional, pooling=pooling)
    model = build_model(cfg)
    assert isinstance(model, RNNModel)
    ids, mask = padded_batch([5, 3, 1])
    out = model(ids, attention_mask=mask, output_attentions=True)
    D = cfg.d_output
    assert out.last_hidden_state.shape == (3, 5, D)
    assert out.pooled_output.shape == (3, D)
    assert out.logits.shape == (3, cfg.num_labels)
    assert torch.all(out.last_hidden_state[mask == 0] == 0)  # zeros at padding
    if pooling == "attention":
        assert len(out.attentions) == 1 and out.attentions[0].shape == (3, 5)
    else:
        assert out.attentions is None
    out.logits.sum().backward()  # gradients reach every parameter
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(("head", "shape"), [("classify", (2, 3)), ("tag", (2, 4, 3)), ("lm", (2, 4, V)),
                                             ("none", None)])
def test_heads(head, shape):
    model = RNNModel(tiny(head=head, bidirectional=head != "lm"))
    ids, mask = padded_batch([4, 2])
    out = model(ids, attention_mask=mask)
    assert (out.logits is None) if shape is None else (out.logits.shape == shape)


def test_lm_head_needs_one_direction():
    with pytest.raises(ConfigError, match="bidirectional"):
        tiny(head="lm", bidirectional=True)


def test_no_mask_means_all_real():
    model = RNNModel(tiny()).eval()
    ids, _ = padded_batch([4, 4])
    a, b = model(ids), model(ids, attention_mask=torch.ones_like(ids))
    torch.testing.assert_close(a.pooled_output, b.pooled_output, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------
# Padding


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_invariance(cell, bidirectional, pooling):
    """A row's outputs do not change when the batch grows extra padding columns, nor when the row
    runs alone without any padding (the unpacked path)."""
    model = RNNModel(tiny(cell=cell, bidirectional=bidirectional, pooling=pooling)).eval()
    ids, mask = padded_batch([6, 3, 1])
    wide_ids = F.pad(ids, (0, 4))  # four more columns of padding (id 0)
    wide_mask = F.pad(mask, (0, 4))
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        wide = model(wide_ids, attention_mask=wide_mask)
        torch.testing.assert_close(wide.last_hidden_state[:, :6], out.last_hidden_state)
        assert torch.all(wide.last_hidden_state[:, 6:] == 0)
        torch.testing.assert_close(wide.pooled_output, out.pooled_output)
        torch.testing.assert_close(wide.logits, out.logits)
        for row, length in enumerate([6, 3, 1]):
            alone = model(ids[row:row + 1, :length])
            torch.testing.assert_close(alone.last_hidden_state[0], out.last_hidden_state[row, :length])
            torch.testing.assert_close(alone.pooled_output[0], out.pooled_output[row])


@pytest.mark.parametrize("pooling", POOLINGS)
def test_left_padding_equals_right_padding(pooling):
    model = RNNModel(tiny(pooling=pooling)).eval()
    ids, mask = padded_batch([5, 2])
    # Roll each row so its padding comes first: the real tokens keep their order.
    shifts = (mask == 0).sum(1).tolist()
    left_ids = torch.stack([r.roll(s) for r, s in zip(ids, shifts)])
    left_mask = torch.stack([r.roll(s) for r, s in zip(mask, shifts)])
    with torch.no_grad():
        right, left = model(ids, attention_mask=mask), model(left_ids, attention_mask=left_mask)
    torch.testing.assert_close(left.pooled_output, right.pooled_output)
    torch.testing.assert_close(left.last_hidden_state[left_mask.bool()], right.last_hidden_state[mask.bool()])
    assert torch.all(left.last_hidden_state[left_mask == 0] == 0)


@pytest.mark.parametrize("cell", CELLS)
def test_packed_bidirectional_matches_numpy(cell):
    """Each row against the NumPy recurrences on its real tokens only: forward over them, and backward
    from the row's own last real token."""
    model = RNNModel(tiny(cell=cell, n_layer=1)).double().eval()
    ids, mask = padded_batch([5, 3, 1])
    with torch.no_grad():
        h = model(ids, attention_mask=mask).last_hidden_state.numpy()  # (B, T, 2H)
    H = model.config.d_hidden

    def run(x: np.ndarray, suffix: str) -> np.ndarray:
        w = [getattr(model.rnn, f"{n}_l0{suffix}").detach().numpy()
             for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if cell == "lstm":
            return reference.lstm_forward(x, None, None, *w)[0]
        if cell == "gru":
            return reference.gru_forward(x, None, *w)[0]
        return reference.rnn_forward(x, None, *w)[0]

    for row, length in enumerate([5, 3, 1]):
        x = model.embed(ids[row:row + 1, :length]).detach().numpy()  # (1, length, E)
        forward = run(x, "")[0]
        backward = run(x[:, ::-1], "_reverse")[0, ::-1]
        np.testing.assert_allclose(h[row, :length, :H], forward, atol=1e-10, rtol=0)
        np.testing.assert_allclose(h[row, :length, H:], backward, atol=1e-10, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_last_pooling_takes_forward_last_and_backward_first(cell):
    model = RNNModel(tiny(cell=cell, pooling="last")).eval()
    ids, mask = padded_batch([5, 3, 1])
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
    H = model.config.d_hidden
    for row, length in enumerate([5, 3, 1]):
        h = out.last_hidden_state[row]
        torch.testing.assert_close(out.pooled_output[row], torch.cat([h[length - 1, :H], h[0, H:]]))


def test_mean_and_max_pooling_ignore_padding():
    ids, mask = padded_batch([4, 2])
    for pooling in ("mean", "max"):
        model = RNNModel(tiny(pooling=pooling)).eval()
        with torch.no_grad():
            out = model(ids, attention_mask=mask)
        real = out.last_hidden_state[1, :2]
        expected = real.mean(0) if pooling == "mean" else real.max(0).values
        torch.testing.assert_close(out.pooled_output[1], expected)


# ----------------------------------------------------------------------------------------------------
# Direction


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("n_layer", [1, 2])
def test_causality(cell, bidirectional, n_layer):
    """Position 0 sees the last token only when the model reads backwards too."""
    model = RNNModel(tiny(cell=cell, bidirectional=bidirectional, n_layer=n_layer)).eval()
    ids, _ = padded_batch([6, 6])
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] % (V - 1)) + 1  # another real token
    with torch.no_grad():
        a, b = model(ids).last_hidden_state, model(changed).last_hidden_state
    assert torch.equal(a[:, 0], b[:, 0]) != bidirectional
    if not bidirectional:
        assert torch.equal(a[:, :-1], b[:, :-1])  # nothing before the last position moves
    elif n_layer == 1:
        # One layer: the forward half is still causal. (With more, the second layer's forward
        # direction reads the first layer's backward outputs, which have seen the future.)
        H = model.config.d_hidden
        assert torch.equal(a[:, :-1, :H], b[:, :-1, :H])


# ----------------------------------------------------------------------------------------------------
# Attention pooling


def test_attention_weights_sum_to_one_and_skip_padding():
    model = RNNModel(tiny(pooling="attention"))
    ids, mask = padded_batch([5, 3, 1])
    (weights,) = model(ids, attention_mask=mask, output_attentions=True).attentions
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    assert torch.all(weights[mask == 0] == 0)
    assert torch.all(weights[mask == 1] > 0)
    assert model(ids, attention_mask=mask).attentions is None  # only on request


# ----------------------------------------------------------------------------------------------------
# Training


def test_tiny_classifier_learns_whether_token_5_appears():
    g = torch.Generator().manual_seed(0)
    N, T = 64, 8
    ids = torch.randint(6, V, (N, T), generator=g)  # no 5 anywhere yet
    lengths = torch.randint(2, T + 1, (N,), generator=g)
    labels = torch.arange(N) % 2
    for i in torch.nonzero(labels).flatten().tolist():  # put a 5 somewhere in the positive rows
        ids[i, torch.randint(0, int(lengths[i]), (1,), generator=g)] = 5
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids = ids * mask

    model = RNNModel(tiny(cell="lstm", n_layer=1, d_hidden=16, num_labels=2, pooling="attention"))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(50):
        loss = F.cross_entropy(model(ids, attention_mask=mask).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model(ids, attention_mask=mask).logits.argmax(-1) == labels).float().mean().item()
    assert losses[-1] < 0.5 * losses[0]
    assert accuracy > 0.9


# ----------------------------------------------------------------------------------------------------
# Errors


def test_input_errors_name_the_tensor():
    model = RNNModel(tiny())
    ids, mask = padded_batch([3, 2])
    with pytest.raises(ValueError, match=r"input_ids: token ids must lie in \[0, 30\).*found 30 at row 1"):
        model(torch.tensor([[1, 2, 3], [4, 30, 0]]))
    with pytest.raises(ValueError, match=r"input_ids: .*found -1"):
        model(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match=r"input_ids: expected shape \(batch, time\), found shape \(3,\)"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"input_ids: expected integer token ids, found dtype torch\.float32"):
        model(ids.float())
    with pytest.raises(ValueError, match="input_ids: expected at least one token"):
        model(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask: expected the shape of input_ids \(2, 3\), found \(2, 2\)"):
        model(ids, attention_mask=mask[:, :2])
    with pytest.raises(ValueError, match=r"attention_mask: every row needs at least one real token, found rows \[1\]"):
        model(ids, attention_mask=torch.tensor([[1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"attention_mask: expected 0 \(padding\) or 1 \(real token\), found values \[2.0\]"):
        model(ids, attention_mask=mask * 2)


def test_pad_token_outside_vocab_is_a_config_error():
    with pytest.raises(ConfigError, match="pad_token_id"):
        RNNModel(tiny(pad_token_id=V))


@pytest.mark.parametrize("head", ["classify", "lm"])
def test_heads_are_named_as_every_familys_and_old_directories_load(tmp_path, head):
    from safetensors.torch import load_file, save_file

    from duplexlm.io import load, save_model

    torch.manual_seed(0)
    model = build_model(RNNConfig(vocab_size=V, d_embed=8, d_hidden=8, num_labels=2, head=head,
                                  bidirectional=head != "lm")).eval()
    name = "classifier" if head == "classify" else "lm_head"
    assert isinstance(getattr(model, name), torch.nn.Linear) and not hasattr(model, "head")
    save_model(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    stored = load_file(str(weights))
    assert f"{name}.weight" in stored
    # a directory written when the RNN's head was called `head`
    save_file({k.replace(f"{name}.", "head."): v for k, v in stored.items()}, str(weights))
    old, _ = load(tmp_path / "m")
    ids = torch.randint(1, V, (2, 5))
    assert torch.equal(old.eval()(ids).logits, model(ids).logits)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(("bidirectional", "n_layer"), [(True, 2), (False, 2), (True, 1)])
def test_padded_rows_equal_packed_sequences_outputs_states_and_gradients(cell, bidirectional, n_layer):
    """The RNN runs padded rows direction by direction without packing (packing trains some 40x slower
    on a CPU): outputs, final states and every gradient equal torch's PackedSequence path."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    model = RNNModel(RNNConfig(cell=cell, vocab_size=V, d_embed=8, d_hidden=6, n_layer=n_layer,
                               bidirectional=bidirectional, dropout=0.0, head="tag", num_labels=3)).eval()
    lengths = torch.tensor([9, 4, 1, 9, 6])
    mask = torch.arange(9)[None] < lengths[:, None]
    x = torch.randn(5, 9, 8)
    ours, h_ours = model.run_rnn(x, mask)
    packed, state = model.rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    theirs, _ = pad_packed_sequence(packed, batch_first=True, total_length=9)
    h_theirs = state[0] if isinstance(state, tuple) else state
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(h_ours, h_theirs, atol=1e-6, rtol=0)
    grads = []
    for out in (ours, theirs):
        model.zero_grad()
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward(retain_graph=True)
        grads.append({n: p.grad.clone() for n, p in model.rnn.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=0, msg=name)
    assert not any(k.startswith("_templates") for k in model.state_dict())  # borrowed weights: no new state
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the recurrence stays fp32 on a CPU
        autocast_out, _ = model.run_rnn(x, mask)
    assert autocast_out.dtype == torch.float32
    torch.testing.assert_close(autocast_out, theirs, atol=1e-6, rtol=0)
