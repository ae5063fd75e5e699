"""Linear layers with oneDNN-packed weights: what nn.Linear computes, training unchanged, repacked when
the weight changes, copies and state dicts unaffected."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from duplexlm.config import DecoderConfig
from duplexlm.infer import Engine, SamplingParams
from duplexlm.infer.packed import PackedLinear, pack_linears, packing_available, unpack_linears
from duplexlm.models import build_model

pytestmark = pytest.mark.skipif(not packing_available(), reason="this PyTorch build has no oneDNN")


def _packed(lin: nn.Linear) -> nn.Linear:
    assert pack_linears(lin) == 1
    assert type(lin) is PackedLinear and lin._packed is not None
    return lin


@pytest.mark.parametrize("width", [48, 47])  # odd: one row cannot be split in two
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1,), (1, 1), (16,), (3, 5), (300,)])
def test_packed_linear_computes_what_linear_does(shape, bias, width):
    torch.manual_seed(0)
    plain = nn.Linear(width, 40, bias=bias)
    packed = _packed(copy.deepcopy(plain))
    x = torch.randn(*shape, width)
    with torch.no_grad():
        want, got = plain(x), packed(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_one_row_is_split_in_two_only_with_two_threads_or_more(monkeypatch):
    lin = _packed(nn.Linear(8, 4))
    calls = []
    real = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(a[0].shape) or real(*a))
    x = torch.randn(1, 8)
    with torch.no_grad():
        want = F.linear(x, lin.weight, lin.bias)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
        torch.testing.assert_close(lin(x), want)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
        torch.testing.assert_close(lin(x), want)
    assert calls == [(2, 1, 4)]


def test_the_packed_kernel_is_the_one_used_for_few_rows(monkeypatch):
    """2 to 256 rows without gradients go to oneDNN; one row (split in two), many rows, and anything
    recording gradients do not."""
    lin = _packed(nn.Linear(8, 4))
    calls = []
    real = torch.ops.mkldnn._linear_pointwise

    class Spy:
        def __getattr__(self, name):
            return getattr(torch.ops.mkldnn, name)

        def _linear_pointwise(self, *args):
            calls.append(args[0].shape[0])
            return real(*args)

    monkeypatch.setattr(torch.ops, "mkldnn", Spy(), raising=False)
    with torch.no_grad():
        lin(torch.randn(4, 8))
        lin(torch.randn(2, 1, 8))
        lin(torch.randn(1, 8))
        lin(torch.randn(PackedLinear.max_rows + 1, 8))
    lin(torch.randn(4, 8))  # weight.requires_grad: autograd needs F.linear
    assert calls == [4, 2]


def test_training_goes_through_and_the_packed_copy_follows_the_weight():
    torch.manual_seed(0)
    plain = nn.Linear(16, 8)
    packed = _packed(copy.deepcopy(plain))
    x, target = torch.randn(4, 16), torch.randn(4, 8)
    for lin in (plain, packed):
        opt = torch.optim.SGD(lin.parameters(), lr=0.5)
        nn.functional.mse_loss(lin(x), target).backward()
        opt.step()
    torch.testing.assert_close(packed.weight.grad, plain.weight.grad)
    with torch.no_grad():  # the optimizer changed the weight in place: the packed copy must not be stale
        torch.testing.assert_close(packed(x), plain(x), atol=1e-5, rtol=1e-5)
        packed.load_state_dict({"weight": torch.zeros(8, 16), "bias": torch.ones(8)})
        assert torch.equal(packed(x), torch.ones(4, 8))
        packed.weight.data = torch.full((8, 16), 2.0)  # a new tensor, not an in-place change
        torch.testing.assert_close(packed(x), (x.sum(-1, keepdim=True) * 2 + 1).expand(4, 8))


def test_a_trainable_bias_under_a_frozen_weight_still_gets_its_gradient():
    torch.manual_seed(0)
    plain = nn.Linear(16, 8)
    packed = _packed(copy.deepcopy(plain))
    x = torch.randn(4, 16)
    for lin in (plain, packed):
        lin.weight.requires_grad_(False)
        lin(x).square().sum().backward()
    assert packed.bias.grad is not None
    torch.testing.assert_close(packed.bias.grad, plain.bias.grad)


def test_what_the_packed_kernel_cannot_serve_falls_back_to_linear():
    """Autocast (its dtype rules), another dtype after .double() (the packed copy is dropped), and
    weights made in inference mode (no version counter to watch: left unpacked)."""
    torch.manual_seed(0)
    plain = nn.Linear(16, 8)
    packed = _packed(copy.deepcopy(plain))
    x = torch.randn(4, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = plain(x), packed(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)
    packed.double()
    assert packed._packed is None
    with torch.no_grad():
        torch.testing.assert_close(packed(x.double()), plain.double()(x.double()))
    with torch.inference_mode():
        frozen = nn.Linear(16, 8)
    assert pack_linears(frozen) == 0 and type(frozen) is nn.Linear
    with torch.inference_mode():
        frozen(x)


def test_copies_pickles_and_state_dicts_are_those_of_the_plain_model():
    torch.manual_seed(0)
    model = build_model(DecoderConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=2, n_head=2))
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    n = pack_linears(model)
    assert n == sum(type(m) is PackedLinear for m in model.modules()) > 0
    w = model.blocks[0].attn.qkv.weight  # stored column-major for one-row products, the same values
    assert w.stride() == (1, w.shape[0]) and torch.equal(w, keys["blocks.0.attn.qkv.weight"])
    assert model.lm_head.weight is model.embed.weight  # tied weights stay tied
    assert set(model.state_dict()) == set(keys)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in keys.items())
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        want = model(ids).logits
        for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            torch.testing.assert_close(other(ids).logits, want)
        buf = io.BytesIO()
        torch.save(model, buf)
        torch.testing.assert_close(torch.load(io.BytesIO(buf.getvalue()), weights_only=False)(ids).logits, want)
    assert unpack_linears(model) == n
    assert not any(type(m) is PackedLinear for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, want, atol=1e-5, rtol=1e-5)


def test_the_engine_packs_and_decodes_as_the_plain_model():
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=96, max_seq_len=64, d_model=48, n_layer=2, n_head=4, dropout=0.0)
    model = build_model(config)
    plain = copy.deepcopy(model)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    params = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)
    got = [c.token_ids for c in Engine(model, max_batch_size=3).generate(prompts, params)]
    packed = [m for m in model.modules() if type(m) is PackedLinear]
    assert len(packed) == 2 * 2 + 2 * 2 + 1 and all(m._packed is not None for m in packed)
    want = [c.token_ids for c in Engine(plain, max_batch_size=3, cpu_layout=False).generate(prompts, params)]
    assert not any(type(m) is PackedLinear for m in plain.modules())
    assert got == want


@pytest.mark.parametrize("packed", [True, False])
def test_the_server_packs_unless_told_to_keep_plain_weights(packed, tmp_path):
    from duplexlm.cli import _build_parser
    from duplexlm.serve import ServerSettings, create_app
    from duplexlm.tokenizer import train_tokenizer

    args = _build_parser().parse_args(["serve", "--model", str(tmp_path)] + ([] if packed else ["--plain-weights"]))
    assert args.plain_weights is not packed
    tok = train_tokenizer(["北京欢迎你 hello world"] * 4, kind="bpe", vocab_size=300, min_frequency=1)
    model = build_model(DecoderConfig(vocab_size=tok.vocab_size, max_seq_len=16, d_model=32, n_layer=1, n_head=2))
    create_app(ServerSettings(packed_weights=not args.plain_weights), model=model, tokenizer=tok)
    assert any(type(m) is PackedLinear for m in model.modules()) is packed
