"""`duplex generate`, `duplex chat`, `duplex fill-mask` and `duplex embed`, run through ``cli.main``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from duplexlm import presets
from duplexlm.cli import main
from duplexlm.infer import Engine, SamplingParams
from duplexlm.infer.chat import chat_prompt
from duplexlm.infer.embed import embed
from duplexlm.io import load, save_model
from duplexlm.models import build_model
from duplexlm.tokenizer import Tokenizer, train_tokenizer

from .conftest import LINES
from .test_engine import RICH, _scripted

pytestmark = pytest.mark.usefixtures("one_thread")  # the fixtures: tests/infer/conftest.py


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, bpe: Tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    v = bpe.vocab_size
    wordpiece = train_tokenizer(LINES, "wordpiece", vocab_size=200, num_sentinels=0)
    models = {
        "scripted": (_scripted(bpe.encode(RICH), v, prompt_len=len(bpe.encode("提示"))), bpe),
        "gpt2": (build_model(presets.gpt2_tiny().replace(vocab_size=v, max_seq_len=128, d_model=32, n_layer=2,
                                                         n_head=4, head_dim=None, d_ff=None)), bpe),
        "t5": (build_model(presets.t5_tiny().replace(vocab_size=v, d_model=32, head_dim=8, d_ff=64, n_layer=2,
                                                     n_head=4)), bpe),
        "bert": (build_model(presets.bert_tiny().replace(vocab_size=wordpiece.vocab_size, max_seq_len=64,
                                                         d_model=32, n_layer=2, n_head=2, d_ff=None)), wordpiece),
    }
    out = {}
    for name, (model, tok) in models.items():
        save_model(model.eval(), root / name, tokenizer=tok)
        out[name] = root / name
    return out


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_prints_the_text_streamed_or_not(dirs, capsys) -> None:
    base = ["generate", "--model", dirs["scripted"], "--prompt", "提示", "--temperature", "0", "--max-new-tokens", "40"]
    code, out, _ = _run(capsys, *base)
    assert code == 0 and out == RICH + "\n"
    code, streamed, _ = _run(capsys, *base, "--stream")
    assert code == 0 and streamed == out
    code, out, _ = _run(capsys, *base, "--stop", "🙂", "--json")
    record = json.loads(out)
    assert record["text"] == RICH[:RICH.index("🙂")] and record["finish_reason"] == "stop"


def test_generate_with_t5_and_several_prompts(dirs, capsys, bpe: Tokenizer) -> None:
    code, out, _ = _run(capsys, "generate", "--model", dirs["t5"], "--prompt", "北京欢迎你", "--prompt", "hello",
                        "--temperature", "0", "--max-new-tokens", "6", "--json")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    model, tok = load(dirs["t5"])
    expected = Engine(model, tok, max_batch_size=2).generate(["北京欢迎你", "hello"], max_new_tokens=6, temperature=0)
    assert [r["token_ids"] for r in records] == [e.token_ids for e in expected]
    code, out, _ = _run(capsys, "generate", "--model", dirs["t5"], "--prompt", "hello", "--num-beams", "2",
                        "--max-new-tokens", "5")
    assert code == 0 and out.endswith("\n")


def test_seeded_generation_is_reproducible(dirs, capsys) -> None:
    argv = ["generate", "--model", dirs["gpt2"], "--prompt", "你好", "--seed", "7", "--max-new-tokens", "12",
            "--temperature", "1.0", "--json"]
    first = json.loads(_run(capsys, *argv)[1])
    again = json.loads(_run(capsys, *argv)[1])
    assert first["token_ids"] == again["token_ids"] and len(first["token_ids"]) >= 1


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], "argument --temperature: expected a number >= 0, found -1"),
    (["--top-p", "0"], "argument --top-p: expected a number in (0, 1], found 0.0"),
    (["--top-p", "1.5"], "argument --top-p"),
    (["--max-new-tokens", "0"], "argument --max-new-tokens: expected an integer >= 1, found 0"),
    (["--top-k", "-2"], "argument --top-k"),
])
def test_generate_bad_flags_are_named(dirs, capsys, flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(dirs["gpt2"]), "--prompt", "x", *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_generate_errors_are_one_line(dirs, capsys) -> None:
    code, _, err = _run(capsys, "generate", "--model", dirs["gpt2"], "--prompt", "a", "--prompt", "b", "--stream")
    assert code == 2 and err.startswith("duplex generate: error: --stream:") and err.count("\n") == 1
    code, _, err = _run(capsys, "generate", "--model", dirs["bert"], "--prompt", "a")
    assert code == 2 and "model: the engine generates with a decoder or an encoder-decoder" in err
    code, _, err = _run(capsys, "generate", "--model", dirs["gpt2"], "--prompt", "🙂🎉👍" * 40)
    assert code == 2 and "prompt:" in err and "context of 128" in err


def test_chat_keeps_the_conversation(dirs, capsys, monkeypatch, bpe: Tokenizer) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("你好\n\n北京欢迎你\n/exit\nnever read\n"))
    code, out, _ = _run(capsys, "chat", "--model", dirs["gpt2"], "--system", "简短回答", "--temperature", "0",
                        "--max-new-tokens", "8")
    assert code == 0
    # the same conversation through the library: the second turn sees the first answer
    model, tok = load(dirs["gpt2"])
    engine = Engine(model, tok, max_batch_size=1)
    messages = [{"role": "system", "content": "简短回答"}, {"role": "user", "content": "你好"}]
    answers = []
    for user in ("你好", "北京欢迎你"):
        if user != "你好":
            messages.append({"role": "user", "content": user})
        p = chat_prompt(tok, messages)
        assert p.templated and p.stop_token_ids == (tok.token_to_id("<|im_end|>"),)
        text = engine.generate(tok.encode(p.text), SamplingParams(max_new_tokens=8, temperature=0,
                                                                  stop_token_ids=p.stop_token_ids)).text
        answers.append(text)
        messages.append({"role": "assistant", "content": text.strip()})
    assert out == "".join(a + "\n" for a in answers)


def test_chat_fallback_without_a_template() -> None:
    class Plain:
        def __init__(self) -> None:
            self.config: dict = {}

        def token_to_id(self, token: str) -> None:
            return None

    p = chat_prompt(Plain(), [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert p.text == "System: Be brief.\nUser: hi\nAssistant:" and p.stop == ("\nUser:",) and not p.templated


def test_chat_needs_a_decoder(dirs, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    code, _, err = _run(capsys, "chat", "--model", dirs["t5"])
    assert code == 2 and "chat needs a decoder, found a seq2seq" in err


def test_fill_mask(dirs, capsys) -> None:
    code, out, _ = _run(capsys, "fill-mask", "--model", dirs["bert"], "--text", "北京[MASK]迎你", "--top-k", "3")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "北京[MASK]迎你" and lines[1].startswith("  [MASK] 1: ")
    assert len(lines[1].split("  ")) == 4  # the label, then three tokens with their probabilities
    code, out, _ = _run(capsys, "fill-mask", "--model", dirs["bert"], "--text", "[MASK]天天气[MASK]好", "--json")
    record = json.loads(out)
    assert len(record["masks"]) == 2 and all(len(m) == 5 for m in record["masks"])
    assert all(0 <= c["score"] <= 1 for m in record["masks"] for c in m)
    code, _, err = _run(capsys, "fill-mask", "--model", dirs["bert"], "--text", "no mask here")
    assert code == 2 and "no [MASK] in 'no mask here'" in err
    code, _, err = _run(capsys, "fill-mask", "--model", dirs["gpt2"], "--text", "[MASK]")
    assert code == 2 and "fill-mask needs an encoder with a masked-LM head" in err


@pytest.mark.parametrize("name", ["bert", "gpt2", "t5"])
def test_embed_prints_normalised_vectors(dirs, capsys, name: str, tmp_path: Path) -> None:
    texts = ["今天天气很好", "hello world", "北京"]
    file = tmp_path / "texts.txt"
    file.write_text("\n".join(texts[1:]) + "\n", encoding="utf-8")
    code, out, _ = _run(capsys, "embed", "--model", dirs[name], "--text", texts[0], "--file", file)
    assert code == 0
    record = json.loads(out)
    vectors = torch.tensor([d["embedding"] for d in record["data"]])
    assert [d["text"] for d in record["data"]] == texts and vectors.shape == (3, record["dim"])
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    model, tok = load(dirs[name])
    torch.testing.assert_close(vectors, embed(model, tok, texts), atol=1e-6, rtol=0)
    alone = embed(model, tok, texts[1:2])  # padding in a batch changes nothing
    torch.testing.assert_close(alone[0], vectors[1], atol=1e-5, rtol=0)
    code, _, err = _run(capsys, "embed", "--model", dirs[name])
    assert code == 2 and "--text or --file" in err
