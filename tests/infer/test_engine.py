"""The decoding engine: cached = uncached, parity with transformers' generate (greedy and T5 beam
search), batching (different lengths, joining mid-way, leaving, aborting), seeded sampling that does
not depend on the batch, filters on hand-made logits, stop tokens and strings, streaming that never
splits a character (Chinese, emoji), and named errors for bad parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from duplexlm import presets
from duplexlm.errors import ConfigError, DuplexError
from duplexlm.infer import Engine, SamplingParams, TextStream
from duplexlm.infer.sampling import (
    apply_repetition_penalty,
    filter_min_p,
    filter_top_k,
    filter_top_p,
    process_logits,
    sample_from_probs,
)
from duplexlm.infer.stream import IncrementalDetokenizer
from duplexlm.io import convert_to_hf, save_model
from duplexlm.models import build_model
from duplexlm.tokenizer import Tokenizer

RICH = "你好，世界！🙂👍 hello 中文 🎉"  # Chinese, emoji: characters spelt over several byte tokens


pytestmark = pytest.mark.usefixtures("one_thread")  # the fixtures: tests/infer/conftest.py


def _decoder(kind: str, vocab: int, **kw) -> nn.Module:
    base = {"gpt2": presets.gpt2_tiny, "llama": presets.llama_tiny, "qwen2": presets.qwen2_tiny}[kind]()
    small = dict(vocab_size=vocab, max_seq_len=64, d_model=32, n_layer=2, n_head=4, head_dim=None, d_ff=None)
    if kind != "gpt2":
        small.update(n_kv_head=2, d_ff=48)
    return build_model(base.replace(**{**small, **kw})).eval()


def _t5(vocab: int, **kw) -> nn.Module:
    cfg = presets.t5_tiny().replace(vocab_size=vocab, d_model=32, head_dim=8, d_ff=64, n_layer=2, n_head=4, **kw)
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def models(bpe: Tokenizer) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {k: _decoder(k, bpe.vocab_size) for k in ("gpt2", "llama", "qwen2")} | {"t5": _t5(bpe.vocab_size)}


def _prompts(vocab: int, lengths=(3, 9, 5, 14), seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(8, vocab, (n,), generator=g).tolist() for n in lengths]


@torch.no_grad()
def _naive(model: nn.Module, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens by re-running the whole sequence each step (no cache), and each step's logits."""
    if model.config.family == "seq2seq":
        src, dec = torch.tensor([prompt]), torch.tensor([[model.config.decoder_start_token_id]])
        step = lambda d: model(src, decoder_input_ids=d).logits[:, -1]  # noqa: E731
    else:
        dec = torch.tensor([prompt])
        step = lambda d: model(d).logits[:, -1]  # noqa: E731
    start, logits = dec.shape[1], []
    for _ in range(n):
        last = step(dec)
        logits.append(last[0])
        dec = torch.cat([dec, last.argmax(-1, keepdim=True)], dim=1)
    return dec[0, start:].tolist(), torch.stack(logits)


GREEDY = dict(temperature=0, ignore_eos=True)


# ----------------------------------------------------------------------------------------------------
# Exactness


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "t5"])
def test_cached_generation_equals_uncached_argmax(models, name: str) -> None:
    model = models[name]
    engine = Engine(model, max_batch_size=4)
    prompts = _prompts(model.config.vocab_size)
    outs = engine.generate(prompts, max_new_tokens=12, **GREEDY)
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == _naive(model, prompt, 12)[0]
        assert out.finish_reason == "length"


@pytest.mark.parametrize("name", ["gpt2", "llama", "t5"])
def test_cached_logits_equal_uncached(models, name: str) -> None:
    """The logits the engine samples from, step by step, against a full forward of the sequence."""
    model = models[name]
    prompt = _prompts(model.config.vocab_size, lengths=(7,))[0]
    tokens, full = _naive(model, prompt, 8)
    engine = Engine(model, max_batch_size=2)
    seen: list[torch.Tensor] = []
    choose = engine._choose
    engine._choose = lambda logits: (seen.append(logits[0].clone()), choose(logits))[1]
    assert engine.generate(prompt, max_new_tokens=8, **GREEDY).token_ids == tokens
    torch.testing.assert_close(torch.stack(seen), full, atol=1e-5, rtol=0)


def _hf_dir(model: nn.Module, tmp: Path, tokenizer: Tokenizer | None = None) -> Path:
    save_model(model, tmp / "ours", tokenizer=tokenizer)
    convert_to_hf(tmp / "ours", tmp / "hf")
    return tmp / "hf"


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("penalty", [1.0, 1.5])
def test_greedy_equals_transformers(models, name: str, penalty: float, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model = models[name]
    hf = transformers.AutoModelForCausalLM.from_pretrained(_hf_dir(model, tmp_path)).eval()
    prompts = _prompts(model.config.vocab_size)
    outs = Engine(model, max_batch_size=4).generate(prompts, max_new_tokens=10, repetition_penalty=penalty, **GREEDY)
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                              pad_token_id=0, repetition_penalty=penalty)
        assert out.token_ids == ref[0, len(prompt):].tolist()


def test_t5_greedy_equals_transformers(models, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model = models["t5"]
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(_hf_dir(model, tmp_path)).eval()
    sources = _prompts(model.config.vocab_size)
    outs = Engine(model, max_batch_size=4).generate(sources, max_new_tokens=10, temperature=0)
    for src, out in zip(sources, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([src]), max_new_tokens=10, do_sample=False)[0, 1:].tolist()
        assert out.token_ids == _until_eos(ref, model.config.eos_token_id)


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[:ids.index(eos) + 1] if eos in ids else ids


def _t5_that_ends() -> nn.Module:
    """A tiny T5 whose end-of-sequence token is likely enough that beams finish at different lengths."""
    torch.manual_seed(0)
    model = _t5(50, tie_word_embeddings=False)
    with torch.no_grad():
        src = torch.randint(2, 50, (1, 9))
        h = model(src, decoder_input_ids=torch.randint(2, 50, (1, 10))).last_hidden_state[0].mean(0)
        scale = model.lm_head.weight[2:].norm(dim=1).mean()
        model.lm_head.weight[model.config.eos_token_id] = 0.9 * h / h.norm() * scale
    return model


@pytest.mark.parametrize("length_penalty, early_stopping", [(1.0, False), (0.5, True), (2.0, "never"), (-1.0, False)])
def test_t5_beam_search_equals_transformers(tmp_path: Path, length_penalty: float, early_stopping) -> None:
    transformers = pytest.importorskip("transformers")
    model = _t5_that_ends()
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(_hf_dir(model, tmp_path)).eval()
    sources = _prompts(50, lengths=(4, 9, 6, 12, 3, 7))
    params = SamplingParams(num_beams=3, max_new_tokens=12, length_penalty=length_penalty,
                            early_stopping=early_stopping)
    batched = Engine(model, max_batch_size=16).generate(sources, params)
    alone = [Engine(model, max_batch_size=3).generate(s, params) for s in sources]
    lengths = set()
    for src, b, a in zip(sources, batched, alone):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([src]), num_beams=3, max_new_tokens=12, do_sample=False,
                              length_penalty=length_penalty, early_stopping=early_stopping)[0, 1:].tolist()
        assert b.token_ids == a.token_ids == _until_eos(ref, 1)
        assert b.score == pytest.approx(a.score, rel=1e-5)
        lengths.add(len(b.token_ids))
    assert len(lengths) > 1  # the beams really finished at different lengths


def test_beam_search_in_a_busy_batch_matches_alone() -> None:
    """Beam requests (3 rows each) beside greedy ones, joining at different steps, rows moving as others
    leave: the same results as alone."""
    model = _t5_that_ends()
    sources = _prompts(50, lengths=(4, 9, 6, 12), seed=3)
    beams = SamplingParams(num_beams=3, max_new_tokens=10)
    greedy = SamplingParams(max_new_tokens=4, temperature=0)
    engine = Engine(model, max_batch_size=8)
    first = engine._add(sources[0], greedy, None)
    b1 = engine._add(sources[1], beams, None)
    engine.step()
    b2 = engine._add(sources[2], beams, None)
    g2 = engine._add(sources[3], greedy, None)
    while engine.has_unfinished():
        engine.step()
    solo = Engine(model, max_batch_size=3)
    assert b1.output_ids == solo.generate(sources[1], beams).token_ids
    assert b2.output_ids == solo.generate(sources[2], beams).token_ids
    assert first.output_ids == solo.generate(sources[0], greedy).token_ids
    assert g2.output_ids == solo.generate(sources[3], greedy).token_ids


# ----------------------------------------------------------------------------------------------------
# Batching


@pytest.mark.parametrize("name", ["gpt2", "llama", "t5"])
def test_different_lengths_in_one_batch_equal_alone(models, name: str) -> None:
    model = models[name]
    prompts = _prompts(model.config.vocab_size, lengths=(2, 11, 5, 17, 1))
    together = Engine(model, max_batch_size=8).generate(prompts, max_new_tokens=9, **GREEDY)
    alone = Engine(model, max_batch_size=1)
    for p, t in zip(prompts, together):
        assert t.token_ids == alone.generate(p, max_new_tokens=9, **GREEDY).token_ids


@pytest.mark.parametrize("name", ["qwen2", "t5"])
def test_requests_join_and_leave_midway(models, name: str) -> None:
    """A long request runs; others join at later steps, finish early and leave (rows move down),
    more wait for a free row: everyone gets the tokens they get alone."""
    model = models[name]
    prompts = _prompts(model.config.vocab_size, lengths=(4, 13, 6, 2, 8), seed=2)
    budgets = [20, 3, 7, 5, 9]
    engine = Engine(model, max_batch_size=3)
    reqs = [engine._add(prompts[0], SamplingParams(max_new_tokens=budgets[0], **GREEDY), None)]
    for _ in range(4):
        engine.step()
    for p, n in zip(prompts[1:], budgets[1:]):
        reqs.append(engine._add(p, SamplingParams(max_new_tokens=n, **GREEDY), None))
        engine.step()
    assert engine.num_waiting > 0  # the batch is full: someone waits for a row
    while engine.has_unfinished():
        engine.step()
        assert engine.num_running <= 3
    for p, n, r in zip(prompts, budgets, reqs):
        assert r.output_ids == _naive(model, p, n)[0]


def test_abort_frees_the_row_and_spares_the_others(models) -> None:
    model = models["gpt2"]
    prompts = _prompts(model.config.vocab_size, lengths=(5, 8, 3))
    engine = Engine(model, max_batch_size=2)
    ids = [engine.add_request(p, SamplingParams(max_new_tokens=12, **GREEDY)) for p in prompts]
    outs = {i: [] for i in ids}
    for _ in range(3):
        for o in engine.step():
            outs[o.request_id].append(o)
    assert engine.abort(ids[0]) and not engine.abort("nobody")
    while engine.has_unfinished():
        for o in engine.step():
            outs[o.request_id].append(o)
    assert outs[ids[0]][-1].finish_reason == "abort" and len(outs[ids[0]]) == 4
    for rid, p in zip(ids[1:], prompts[1:]):
        got = [t for o in outs[rid] for t in o.token_ids]
        assert got == _naive(model, p, 12)[0]
        assert outs[rid][-1].finished and outs[rid][-1].completion_tokens == 12
    assert not engine.abort(ids[1])  # finished requests are gone


def test_prompt_near_the_context_stops_at_the_context(models) -> None:
    model = models["gpt2"]  # max_seq_len 64
    out = Engine(model, max_batch_size=1).generate(list(range(8, 68)), max_new_tokens=50, **GREEDY)
    assert len(out.token_ids) == 4 and out.finish_reason == "length"


# ----------------------------------------------------------------------------------------------------
# Sampling


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(models) -> None:
    model = models["llama"]
    prompt, others = _prompts(model.config.vocab_size, lengths=(6,))[0], _prompts(model.config.vocab_size, seed=5)
    params = SamplingParams(max_new_tokens=15, temperature=1.3, top_k=50, top_p=0.95, min_p=0.01, seed=1234,
                            ignore_eos=True)
    alone = Engine(model, max_batch_size=1).generate(prompt, params).token_ids
    busy = Engine(model, max_batch_size=8)
    company = [SamplingParams(max_new_tokens=n, temperature=t, seed=s, repetition_penalty=r, ignore_eos=True)
               for n, t, s, r in [(3, 0.7, 1, 1.0), (20, 0.0, 2, 1.2), (9, 2.0, 3, 1.0), (1, 1.0, 4, 1.0)]]
    results = busy.generate([others[0], others[1], prompt, others[2], others[3]],
                            [company[0], company[1], params, company[2], company[3]])
    assert results[2].token_ids == alone
    assert Engine(model, max_batch_size=1).generate(prompt, params).token_ids == alone
    other_seed = Engine(model, max_batch_size=1).generate(prompt, SamplingParams(**{**params.__dict__, "seed": 99}))
    assert other_seed.token_ids != alone


def test_filters_on_hand_made_logits() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    kept = lambda x: (~x.isinf()).int().tolist()  # noqa: E731
    assert kept(filter_top_k(logits, 2)) == [[1, 1, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert kept(filter_top_k(logits, torch.tensor([1, 0]))) == [[1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]  # 0: off
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert kept(filter_top_p(probs.log(), 0.7)) == [[1, 1, 0, 0]]
    assert kept(filter_top_p(probs.log(), 0.8)) == [[1, 1, 0, 0]]  # 0.5 + 0.3 reaches 0.8 exactly
    assert kept(filter_top_p(probs.log(), 0.81)) == [[1, 1, 1, 0]]
    assert kept(filter_top_p(probs.log(), 0.1)) == [[1, 0, 0, 0]]  # the best token always stays
    assert kept(filter_top_p(probs.log(), 1.0)) == [[1, 1, 1, 1]]
    assert kept(filter_min_p(probs.log(), 0.3)) == [[1, 1, 1, 0]]  # 0.15 >= 0.3 * 0.5; 0.05 is not
    assert kept(filter_min_p(probs.log(), 1.0)) == [[1, 0, 0, 0]]
    two = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]).log()
    assert kept(filter_top_p(two, torch.tensor([0.7, 1.0]))) == [[1, 1, 0, 0], [1, 1, 1, 1]]
    seen = torch.tensor([[True, False, True]])
    assert apply_repetition_penalty(torch.tensor([[2.0, 2.0, -2.0]]), seen, 2.0).tolist() == [[1.0, 2.0, -4.0]]
    # temperature divides before the filters (transformers' order)
    assert process_logits(torch.tensor([[2.0, 0.0]]), temperature=2.0).tolist() == [[1.0, 0.0]]


def test_inverse_cdf_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    draws = sample_from_probs(probs.expand(20000, 4), u)
    freq = torch.bincount(draws, minlength=4).float() / 20000
    assert freq[1] == 0  # a token of probability 0 is never drawn
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    assert sample_from_probs(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([0.0])).tolist() == [2]


# ----------------------------------------------------------------------------------------------------
# Stopping and streaming


def _scripted(tokens: list[int], vocab: int, prompt_len: int) -> nn.Module:
    """A real GPT-2-style decoder whose greedy continuation of any prompt of ``prompt_len`` tokens is
    ``tokens``: the blocks add nothing, the input is its position alone (a one-hot learned position
    embedding), and the untied head maps position p to the token scripted for it."""
    n = prompt_len + len(tokens) + 1
    model = build_model(presets.gpt2_tiny().replace(vocab_size=vocab, max_seq_len=n, d_model=n, n_layer=1, n_head=1, n_kv_head=None,
                                                    head_dim=None, d_ff=None, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.pos_embed.weight.copy_(torch.eye(n) * 10)
        model.norm.weight.fill_(1.0)
        for i, t in enumerate(tokens):
            model.lm_head.weight[t, prompt_len - 1 + i] = 10.0
    return model


def _stream(engine: Engine, prompt: list[int], **kw) -> list[str]:
    return list(engine.stream(prompt, temperature=0, **kw))


def test_streaming_never_splits_a_character(bpe: Tokenizer) -> None:
    script = bpe.encode(RICH)
    pieces_per_char = [len(bpe.encode(c)) for c in "🙂👍🎉界"]
    assert max(pieces_per_char) > 1  # the test means something: characters span several tokens
    model = _scripted(script, bpe.vocab_size, prompt_len=3)
    engine = Engine(model, bpe, max_batch_size=2)
    pieces = _stream(engine, [8, 9, 10], max_new_tokens=len(script))
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == RICH == bpe.decode(script)
    assert len(pieces) < len(script)  # some tokens completed no character, and emitted nothing
    done = engine.generate([8, 9, 10], max_new_tokens=len(script), temperature=0)
    assert done.text == RICH and done.token_ids == script


@pytest.mark.parametrize("stop", ["世界", "🙂👍", "lo 中", "！🙂"])
def test_stop_strings_across_pieces(bpe: Tokenizer, stop: str) -> None:
    script = bpe.encode(RICH)
    engine = Engine(_scripted(script, bpe.vocab_size, prompt_len=2), bpe, max_batch_size=2)
    pieces = _stream(engine, [8, 9], max_new_tokens=len(script), stop=[stop, "never there"])
    expected = RICH[:RICH.index(stop)]
    assert "".join(pieces) == expected
    done = engine.generate([8, 9], max_new_tokens=len(script), temperature=0, stop=[stop])
    assert done.text == expected and done.finish_reason == "stop"
    assert len(done.token_ids) < len(script)  # generation ended at the stop string


def test_stop_token_ids_and_eos(bpe: Tokenizer) -> None:
    script = [*bpe.encode("hello world"), bpe.eos_token_id, *bpe.encode(" more")]
    model = _scripted(script, bpe.vocab_size, prompt_len=2)
    engine = Engine(model, bpe, max_batch_size=2)
    out = engine.generate([8, 9], max_new_tokens=20, temperature=0)
    assert out.finish_reason == "stop" and out.token_ids[-1] == bpe.eos_token_id
    assert out.text == "hello world"
    stop_at = script[2]
    out = engine.generate([8, 9], max_new_tokens=20, temperature=0, stop_token_ids=[stop_at])
    assert out.token_ids == script[:3] and out.text == bpe.decode(script[:2])  # the stop token's text is not shown
    out = engine.generate([8, 9], max_new_tokens=len(script), temperature=0, ignore_eos=True)
    assert out.token_ids == script and out.finish_reason == "length"


def test_text_stream_and_detokenizer_units(bpe: Tokenizer) -> None:
    ids = bpe.encode(RICH)
    detok = IncrementalDetokenizer(bpe)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == RICH and all("\ufffd" not in p for p in pieces)
    # a truly broken byte sequence still comes out at the end, as decoding all of it does
    partial = bpe.encode("🙂")[:-1]
    detok = IncrementalDetokenizer(bpe)
    assert "".join(detok.push(i) for i in partial) == ""
    assert detok.flush() == bpe.decode(partial)
    # held-back text that turns out not to be a stop string is released at the end
    s = TextStream(bpe, stop=["世界和平"])
    text = "".join(s.push(i)[0] for i in bpe.encode("你好，世界")) + s.finish()
    assert text == "你好，世界" and not s.stopped


def test_text_prompts_and_one_or_many(models, bpe: Tokenizer) -> None:
    engine = Engine(models["gpt2"], bpe, max_batch_size=4)
    one = engine.generate("北京欢迎你", max_new_tokens=5, **GREEDY)
    many = engine.generate(["北京欢迎你", "hello"], max_new_tokens=5, **GREEDY)
    assert one.token_ids == many[0].token_ids and one.prompt_ids == bpe.encode("北京欢迎你")
    assert one.text == bpe.decode(one.token_ids)
    assert "".join(engine.stream("北京欢迎你", max_new_tokens=5, **GREEDY)) == one.text


# ----------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(min_p=1.5), "min_p"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(num_beams=0), "num_beams"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(stop=[""]), "stop"),
    (dict(stop_token_ids=[-1]), "stop_token_ids"),
    (dict(seed="abc"), "seed"),
    (dict(num_beams=2, stop=["x"]), "stop"),
    (dict(temprature=0.5), r"temprature: not a sampling parameter \(did you mean 'temperature'\?\)"),
])
def test_bad_sampling_params_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}") as e:
        SamplingParams.from_kwargs(**kwargs)
    assert isinstance(e.value, ValueError) and isinstance(e.value, DuplexError)


def test_bad_requests_name_the_problem(models, bpe: Tokenizer) -> None:
    model = models["gpt2"]  # context 64
    engine = Engine(model, max_batch_size=2)
    with pytest.raises(ConfigError, match=r"^prompt: 64 tokens leave no room .* at most 63"):
        engine.add_request(list(range(8, 72)))
    with pytest.raises(ConfigError, match=r"^prompt: expected at least one token"):
        engine.add_request([])
    with pytest.raises(ConfigError, match=r"^prompt: token ids must lie in \[0, "):
        engine.add_request([1, 10_000])
    with pytest.raises(ConfigError, match=r"^prompt: a text prompt needs .* tokenizer"):
        engine.add_request("hello")
    with pytest.raises(ConfigError, match=r"^stop: stop strings need .* tokenizer"):
        engine.add_request([1, 2], SamplingParams(stop=["x"]))
    with pytest.raises(ConfigError, match=r"^num_beams: 3 beams need as many rows"):
        engine.add_request([1, 2], SamplingParams(num_beams=3))
    rid = engine.add_request([1, 2], request_id="a")
    with pytest.raises(ConfigError, match=r"^request_id: 'a' is already"):
        engine.add_request([1, 2], request_id="a")
    assert rid == "a"
    t5 = Engine(models["t5"], max_batch_size=1, max_source_len=8)
    with pytest.raises(ConfigError, match=r"^prompt: 9 source tokens, .* max_source_len=8"):
        t5.add_request(list(range(8, 17)))
    encoder = build_model(presets.bert_tiny().replace(vocab_size=50, d_model=16, n_layer=1, n_head=2,
                                                      max_seq_len=16, d_ff=None))
    with pytest.raises(ConfigError, match=r"^model: the engine generates with a decoder or an encoder-decoder"):
        Engine(encoder)
    with pytest.raises(ConfigError, match=r"^max_len: expected an integer in \[2, 64\]"):
        Engine(model, max_len=100)
    with pytest.raises(ConfigError, match=r"^params: expected one SamplingParams per prompt"):
        engine.generate([[1], [2]], [SamplingParams()])


def test_one_cache_api(models) -> None:
    from duplexlm.models.decoder import Decoder

    assert Decoder.new_kv_cache is Decoder.new_cache  # the older name still works
    assert models["gpt2"].new_cache(2, 8).k.shape[1] == 2
    assert models["t5"].new_cache(2, 8).batch_size == 2
    assert models["t5"].new_kv_cache(2, 8, max_source_len=5).cross_k.shape[3] == 5
