"""prepare() end to end: shards that decode back to the cleaned text, dtype, de-duplication, split,
parallel = serial, atomic output, streaming input, word boundaries; and the TokenShards reader."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from duplexlm.data import DataError, TokenShards, clean_text, encode, pipeline, prepare
from duplexlm.data.shards import ShardWriter
from duplexlm.errors import OutputError
from duplexlm.tokenizer import Tokenizer

from .conftest import CHINESE, ENGLISH

RAW = [
    "  The quick   brown fox\tjumps  ",
    "Ｆｕｌｌ－ｗｉｄｔｈ text and a zero\u200bwidth space",
    "\u200b\u200b",  # empty once cleaned
    "中文文档：迈向充满希望的新世纪",
    "The quick brown fox jumps",  # the first document again, once cleaned
    "a document that writes the separator <|endoftext|> inside itself",
]
# byte-level BPE learnt full-width characters as they come (`duplex tokenizer train` does not NFKC its
# text): the shards keep them so; a WordPiece tokenizer's documents are NFKC'd, as its training text was
KEPT = [clean_text(t, nfkc=False) for t in (*RAW[:2], RAW[3], RAW[5])]
assert KEPT[1].startswith("Ｆｕｌｌ－ｗｉｄｔｈ")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def documents(shards: TokenShards) -> list[np.ndarray]:
    ids = shards.get(0, len(shards))
    assert len(ids) == 0 or ids[-1] == shards.doc_sep_token_id
    cuts = np.flatnonzero(ids == shards.doc_sep_token_id)
    return np.split(ids, cuts + 1)[:-1]


def run(sources: list[Path | str], out: Path, tok: Path, **kw) -> dict:
    kw.setdefault("progress", False)
    kw.setdefault("workers", 1)
    return prepare([str(s) for s in sources], out, tok, **kw)


def test_round_trip_decodes_to_cleaned_documents(tmp_path: Path, bpe_dir: Path, bpe: Tokenizer) -> None:
    src = write_lines(tmp_path / "corpus.txt", RAW)
    meta = run([src], tmp_path / "out", bpe_dir, val_fraction=0.0)
    shards = TokenShards(tmp_path / "out", "train")
    docs = documents(shards)
    decoded = [bpe.decode(d[:-1].tolist(), skip_special_tokens=False) for d in docs]
    assert decoded == KEPT  # in order; the literal "<|endoftext|>" stays text, never a separator
    assert meta["format"] == "duplexlm-shards/1" and meta["dtype"] == "uint16" and shards.dtype == np.uint16
    assert meta["doc_sep_token_id"] == bpe.eos_token_id == shards.doc_sep_token_id
    train = meta["splits"]["train"]
    assert train["files"] == ["train_000.bin"] and train["word_starts"] is None
    assert train["tokens"] == len(shards) == sum(len(d) for d in docs)
    assert train["documents"] == 4 == shards.documents
    assert train["bytes"] == sum(len(t.encode()) + 1 for t in KEPT)
    assert train["characters"] == sum(len(t) + 1 for t in KEPT)
    assert shards.bytes_per_token == train["bytes"] / train["tokens"]
    assert meta["splits"]["val"] == {"files": [], "word_starts": None, "tokens": 0, "documents": 0,
                                     "bytes": 0, "characters": 0}
    assert meta["cleaning"] == {"empty_removed": 1, "exact_duplicates_removed": 1,
                                "near_duplicates_removed": 0, "near_dedup": False}
    assert meta["sources"] == [{"name": str(src), "path": str(src), "documents": 6, "skipped": {},
                                "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}]
    assert meta["tokenizer"] == {"vocab_size": bpe.vocab_size,
                                 "sha256": hashlib.sha256((bpe_dir / "tokenizer.json").read_bytes()).hexdigest()}
    assert (meta["seed"], meta["val_fraction"]) == (1234, 0.0) and meta["created"].endswith("+00:00")
    assert json.loads((tmp_path / "out" / "meta.json").read_text()) == meta
    out_files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out_files == ["meta.json", "tokenizer.json", "tokenizer_config.json", "train_000.bin"]
    assert Tokenizer.from_dir(tmp_path / "out").eos_token_id == bpe.eos_token_id


def test_wordpiece_shards_are_nfkc_normalised_as_its_training_text(tmp_path: Path, wordpiece_dir: Path) -> None:
    src = write_lines(tmp_path / "corpus.txt", [RAW[1]])
    run([src], tmp_path / "out", wordpiece_dir, val_fraction=0.0)
    wp = Tokenizer.from_dir(wordpiece_dir)
    (doc,) = documents(TokenShards(tmp_path / "out", "train"))
    assert doc[:-1].tolist() == wp.encode(clean_text(RAW[1]), add_special_tokens=False)  # "Full-width ..."


def test_tokenizer_padding_and_truncation_are_ignored(tmp_path: Path, bpe_dir: Path) -> None:
    """A tokenizer.json that pads and truncates every encoding (as all-MiniLM's does) still gives
    whole documents."""
    from tokenizers import Tokenizer as HFTokenizer

    backend = HFTokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    backend.enable_padding(length=64, pad_id=1, pad_token="<pad>")
    backend.enable_truncation(max_length=4)
    padded = tmp_path / "padded"
    padded.mkdir()
    backend.save(str(padded / "tokenizer.json"))
    (padded / "tokenizer_config.json").write_bytes((bpe_dir / "tokenizer_config.json").read_bytes())
    src = write_lines(tmp_path / "c.txt", ENGLISH)
    run([src], tmp_path / "plain", bpe_dir, val_fraction=0.0)
    run([src], tmp_path / "padded_out", padded, val_fraction=0.0)
    assert (tmp_path / "plain" / "train_000.bin").read_bytes() == (tmp_path / "padded_out" / "train_000.bin").read_bytes()


def test_shards_split_at_shard_tokens_and_read_across(tmp_path: Path, bpe_dir: Path) -> None:
    src = write_lines(tmp_path / "corpus.txt", ENGLISH + CHINESE)
    run([src], tmp_path / "one", bpe_dir, val_fraction=0.0)
    meta = run([src], tmp_path / "many", bpe_dir, val_fraction=0.0, shard_tokens=7)
    whole = TokenShards(tmp_path / "one", "train")
    split = TokenShards(tmp_path / "many", "train")
    files = meta["splits"]["train"]["files"]
    assert len(files) == -(-len(whole) // 7) and files[1] == "train_001.bin"
    assert all((tmp_path / "many" / f).stat().st_size == 14 for f in files[:-1])  # 7 uint16 each
    assert np.array_equal(split.get(0, len(split)), whole.get(0, len(whole)))
    for start, length in [(0, 1), (5, 9), (6, 1), (7, 0), (13, 15), (len(whole) - 3, 3)]:
        assert np.array_equal(split.get(start, length), whole.get(start, length))
    assert split.get(3, 10).dtype == np.int64
    with pytest.raises(IndexError, match="outside"):
        split.get(len(split) - 2, 3)


def test_uint32_for_large_vocabularies(tmp_path: Path, big_vocab_dir: Path) -> None:
    src = write_lines(tmp_path / "c.txt", ["w69999 w1 w65536", "w3"])
    meta = run([src], tmp_path / "out", big_vocab_dir, val_fraction=0.0)
    assert meta["dtype"] == "uint32" and meta["tokenizer"]["vocab_size"] == 70_002
    assert TokenShards(tmp_path / "out").get(0, 6).tolist() == [70_001, 3, 65_538, 0, 5, 0]
    assert (tmp_path / "out" / "train_000.bin").stat().st_size == 6 * 4


def test_separator_falls_back_to_sep_token(tmp_path: Path, wordpiece_dir: Path, bpe_dir: Path) -> None:
    src = write_lines(tmp_path / "c.txt", ENGLISH[:2])
    meta = run([src], tmp_path / "out", wordpiece_dir, val_fraction=0.0)
    assert meta["doc_sep_token_id"] == Tokenizer.from_dir(wordpiece_dir).backend.token_to_id("[SEP]")
    no_sep = tmp_path / "no_sep"
    no_sep.mkdir()
    (no_sep / "tokenizer.json").write_bytes((bpe_dir / "tokenizer.json").read_bytes())
    with pytest.raises(DataError, match=r"no_sep: the tokenizer has neither an eos_token nor a sep_token"):
        run([src], tmp_path / "out2", no_sep)
    assert not (tmp_path / "out2").exists()


def test_jsonl_dotted_field_and_skips_in_meta(tmp_path: Path, bpe_dir: Path, bpe: Tokenizer) -> None:
    src = tmp_path / "c.jsonl"
    src.write_bytes(b'{"meta": {"body": "first doc"}}\nnot json\n{"meta": {}}\n{"meta": {"body": 3}}\n'
                    b'{"meta": {"body": "bad \xff byte"}}\n{"meta": {"body": "second doc"}}\n')
    meta = run([src], tmp_path / "out", bpe_dir, text_field="meta.body", on_error="skip", val_fraction=0.0)
    assert meta["sources"][0]["skipped"] == {"invalid_json": 1, "missing_field": 1, "not_string": 1,
                                             "not_utf8": 1}
    assert meta["sources"][0]["documents"] == 2
    docs = documents(TokenShards(tmp_path / "out"))
    assert [bpe.decode(d[:-1].tolist()) for d in docs] == ["first doc", "second doc"]
    with pytest.raises(DataError, match=r"c\.jsonl:2: expected a JSON object, found invalid JSON"):
        run([src], tmp_path / "out", bpe_dir, text_field="meta.body", overwrite=True)


def test_exact_and_near_duplicates(tmp_path: Path, bpe_dir: Path) -> None:
    rng = np.random.default_rng(0)
    base = " ".join(rng.choice(ENGLISH[0].split() + ENGLISH[1].split(), 40))  # ~200 characters
    other = " ".join(rng.choice(ENGLISH[2].split() + ENGLISH[3].split(), 40))
    one_char = base[:100] + ("Z" if base[100] != "Z" else "Y") + base[101:]
    lines = [base, "  " + base.replace(" ", "   ") + " ", one_char, other, base]
    src = write_lines(tmp_path / "c.txt", lines)
    meta = run([src], tmp_path / "exact", bpe_dir, val_fraction=0.0)
    assert meta["cleaning"]["exact_duplicates_removed"] == 2 and meta["splits"]["train"]["documents"] == 3
    meta = run([src], tmp_path / "near", bpe_dir, val_fraction=0.0, near_dedup=True)
    assert meta["cleaning"] == {"empty_removed": 0, "exact_duplicates_removed": 2, "near_duplicates_removed": 1,
                                "near_dedup": True}
    assert meta["splits"]["train"]["documents"] == 2  # base and other
    meta = run([src], tmp_path / "strict", bpe_dir, val_fraction=0.0, near_dedup=True, near_dedup_threshold=1.0)
    assert meta["cleaning"]["near_duplicates_removed"] == 0


def _val_texts(out: Path, bpe: Tokenizer) -> list[str]:
    return [bpe.decode(d[:-1].tolist()) for d in documents(TokenShards(out, "val"))]


def test_split_is_seeded_and_val_never_empty(tmp_path: Path, bpe_dir: Path, bpe: Tokenizer) -> None:
    lines = [f"document number {i} of the corpus" for i in range(200)]
    src = write_lines(tmp_path / "c.txt", lines)
    a = run([src], tmp_path / "a", bpe_dir, val_fraction=0.1, seed=1)
    b = run([src], tmp_path / "b", bpe_dir, val_fraction=0.1, seed=1)
    c = run([src], tmp_path / "c", bpe_dir, val_fraction=0.1, seed=2)
    assert (tmp_path / "a" / "val_000.bin").read_bytes() == (tmp_path / "b" / "val_000.bin").read_bytes()
    assert a["splits"] == b["splits"]
    assert _val_texts(tmp_path / "a", bpe) != _val_texts(tmp_path / "c", bpe)
    assert 5 <= a["splits"]["val"]["documents"] <= 40 and 5 <= c["splits"]["val"]["documents"] <= 40
    assert set(_val_texts(tmp_path / "a", bpe)) <= set(lines)
    train = {bpe.decode(d[:-1].tolist()) for d in documents(TokenShards(tmp_path / "a", "train"))}
    assert not train & set(_val_texts(tmp_path / "a", bpe))
    # a tiny corpus and a tiny fraction: no document hashes under 0.001, yet val gets one
    small = write_lines(tmp_path / "small.txt", lines[:3])
    meta = run([small], tmp_path / "small", bpe_dir, val_fraction=0.001)
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == (2, 1)
    assert meta["splits"]["val"]["files"] == ["val_000.bin"]
    one = write_lines(tmp_path / "one.txt", lines[:1])
    meta = run([one], tmp_path / "one", bpe_dir, val_fraction=0.5)
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == (1, 0)


def test_parallel_output_is_byte_identical(tmp_path: Path, bpe_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "CHUNK_DOCS", 7)  # many chunks, interleaved between workers
    rng = np.random.default_rng(0)
    words = " ".join(ENGLISH).split() + list("中文字词")
    lines = [" ".join(rng.choice(words, int(rng.integers(3, 30)))) for _ in range(300)]
    lines += lines[:20]  # exact duplicates across chunks
    src = write_lines(tmp_path / "c.txt", lines)
    opts = {"val_fraction": 0.05, "near_dedup": True, "word_boundaries": True, "shard_tokens": 2000}
    one = run([src], tmp_path / "w1", bpe_dir, workers=1, **opts)
    two = run([src], tmp_path / "w2", bpe_dir, workers=2, **opts)
    for key in ("splits", "cleaning", "sources"):
        assert one[key] == two[key]
    names = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "w2").iterdir())
    assert len([n for n in names if n.endswith(".ws")]) >= 2
    for name in names:
        if name != "meta.json":
            assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def _listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_failure_leaves_no_output_and_keeps_the_old(tmp_path: Path, bpe_dir: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    good = write_lines(tmp_path / "good.txt", ENGLISH)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(("".join(f"line {i}\n" for i in range(3000)) + "late \xff\n").encode("latin-1"))
    with pytest.raises(DataError, match=r"bad\.txt:3001: expected UTF-8"):
        run([good, bad], root / "out", bpe_dir, shard_tokens=100)  # shards were being written
    assert list(root.iterdir()) == []  # neither the output nor a temporary directory
    run([good], root / "out", bpe_dir)
    before = _listing(root / "out")
    with pytest.raises(OutputError, match="already holds a token-shards directory; pass --overwrite"):
        run([good], root / "out", bpe_dir)
    with pytest.raises(DataError, match="3001"):
        run([good, bad], root / "out", bpe_dir, workers=2, overwrite=True)
    assert _listing(root / "out") == before
    assert [p.name for p in root.iterdir()] == ["out"]


def test_interrupt_leaves_no_output(tmp_path: Path, bpe_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_lines(tmp_path / "c.txt", [f"document {i}" for i in range(100)])
    calls = []

    def interrupted(self: ShardWriter, *args: object, **kw: object) -> None:
        calls.append(1)
        if len(calls) == 50:
            raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "add", interrupted)
    (tmp_path / "work").mkdir()
    with pytest.raises(KeyboardInterrupt):
        run([src], tmp_path / "work" / "out", bpe_dir, workers=2)
    assert list((tmp_path / "work").iterdir()) == []


def test_refuses_to_replace_an_unrelated_directory(tmp_path: Path, bpe_dir: Path) -> None:
    src = write_lines(tmp_path / "c.txt", ENGLISH)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=r"holds files duplexlm did not write \(thesis\.tex\)"):
            run([src], tmp_path / "home", bpe_dir, overwrite=overwrite)
    assert (tmp_path / "home" / "thesis.tex").read_text() == "precious"
    with pytest.raises(OutputError, match="is \\(or contains\\) the input"):
        run([src], bpe_dir, bpe_dir, overwrite=True)  # would replace the tokenizer it reads
    (tmp_path / "empty").mkdir()
    run([src], tmp_path / "empty", bpe_dir)  # an empty directory is fine
    with pytest.raises(DataError, match="no documents left to write"):
        run([write_lines(tmp_path / "blank.txt", ["\u200b"])], tmp_path / "none", bpe_dir)


def test_streams_from_a_pipe(tmp_path: Path, bpe_dir: Path, bpe: Tokenizer) -> None:
    """A generator writes 1 MB into a named pipe: prepare reads it as it comes, in one pass."""
    fifo = tmp_path / "stream.txt"
    os.mkfifo(fifo)
    lines = (f"streamed document {i} " + "x" * (i % 50) for i in range(20_000))

    def writer() -> None:
        with open(fifo, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(line + "\n")

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    meta = run([fifo], tmp_path / "out", bpe_dir, val_fraction=0.0)
    thread.join(timeout=30)
    assert meta["sources"][0]["documents"] == 20_000 == meta["splits"]["train"]["documents"]
    last = documents(TokenShards(tmp_path / "out"))[-1]
    assert bpe.decode(last[:-1].tolist()) == "streamed document 19999 " + "x" * 49


def test_progress_bar_goes_to_stderr(tmp_path: Path, bpe_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run([write_lines(tmp_path / "c.txt", ENGLISH)], tmp_path / "out", bpe_dir, progress=True)
    captured = capsys.readouterr()
    assert "prepare" in captured.err and captured.out == ""


@pytest.mark.parametrize(("kw", "message"), [
    ({"val_fraction": 1.0}, r"val_fraction: expected a fraction in \[0, 1\), found 1.0"),
    ({"workers": 0}, "workers: expected a positive integer, found 0"),
    ({"shard_tokens": 0}, "shard_tokens"),
    ({"near_dedup_threshold": 0.0}, "near_dedup_threshold"),
    ({"on_error": "warn"}, "on_error"),
])
def test_bad_arguments_name_the_parameter(tmp_path: Path, bpe_dir: Path, kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run(["reviews-zh"], tmp_path / "out", bpe_dir, **kw)


# ----------------------------------------------------------------------------------------------------
# Word boundaries

PD_FIRST = ["迈向", "充满", "希望", "的", "新", "世纪", "——", "一九九八年", "新年", "讲话", "(", "附", "图片",
            "1", "张", ")"]  # after NFKC: （ → (, １ → 1
PD_SECOND = ["中共中央", "总书记", "、", "国家", "主席", "江", "泽民"]


def _flags(words: list[str]) -> list[int]:
    return [int(i == 0) for w in words for i in range(len(w))]


@pytest.mark.slow  # 3 to 6 s: the whole of People's Daily (1.8 M characters)
def test_word_boundaries_from_peoples_daily(tmp_path: Path, char_dir: Path) -> None:
    started = time.perf_counter()
    meta = run(["peoples-daily"], tmp_path / "pd", char_dir, word_boundaries=True, val_fraction=0.0, workers=2)
    assert time.perf_counter() - started < 15
    shards = TokenShards(tmp_path / "pd", "train")
    assert meta["splits"]["train"]["word_starts"] == ["train_000.ws"] and meta["splits"]["train"]["documents"] > 18_000
    n1, n2 = len("".join(PD_FIRST)), len("".join(PD_SECOND))
    starts = shards.word_starts(0, n1 + 1 + n2 + 1)
    assert starts.dtype == np.bool_
    assert starts.astype(int).tolist() == [*_flags(PD_FIRST), 1, *_flags(PD_SECOND), 1]
    ids = shards.get(0, n1 + 1)
    tok = Tokenizer.from_dir(char_dir)
    assert tok.decode(ids[:-1].tolist()) == "".join(PD_FIRST) and ids[-1] == shards.doc_sep_token_id
    assert int(np.count_nonzero(shards.word_starts(0, len(shards)))) < 0.7 * len(shards)  # words, not characters


def test_word_boundaries_from_jieba_spaces_and_wordpiece(tmp_path: Path, bpe_dir: Path, bpe: Tokenizer,
                                                         wordpiece_dir: Path) -> None:
    pytest.importorskip("jieba")
    english = "whole word masking hides every piece of a word, at once"
    src = write_lines(tmp_path / "c.txt", ["我爱北京天安门", english])
    run([src], tmp_path / "bpe", bpe_dir, word_boundaries=True, val_fraction=0.0)
    shards = TokenShards(tmp_path / "bpe")
    ids, starts = shards.get(0, len(shards)), shards.word_starts(0, len(shards))
    cut = int(np.flatnonzero(ids == shards.doc_sep_token_id)[0]) + 1
    # Chinese: jieba's words 我|爱|北京|天安门, mapped onto byte-level pieces by their offsets
    enc = bpe.backend.encode("我爱北京天安门", add_special_tokens=False)
    expected = [int(s in (0, 1, 2, 4) and (k == 0 or enc.offsets[k - 1][0] != s))
                for k, (s, _) in enumerate(enc.offsets)]
    assert starts[:cut].astype(int).tolist() == [*expected, 1]
    # English: a token begins a word where it begins with the byte-level space (or the document)
    tokens = bpe.backend.encode(english, add_special_tokens=False).tokens
    assert starts[cut:].astype(int).tolist() == [int(k == 0 or t.startswith("Ġ")) for k, t in enumerate(tokens)] + [1]
    assert sum(starts[cut:]) == len(english.split()) + 1
    # WordPiece: ## pieces continue a word
    run([src], tmp_path / "wp", wordpiece_dir, word_boundaries=True, val_fraction=0.0)
    wp = TokenShards(tmp_path / "wp")
    wp_tokens = Tokenizer.from_dir(wordpiece_dir).backend.encode(english, add_special_tokens=False).tokens
    assert any(t.startswith("##") for t in wp_tokens)
    wp_starts = wp.word_starts(0, len(wp)).astype(int).tolist()
    assert wp_starts[-len(wp_tokens) - 1:] == [int(not t.startswith("##")) for t in wp_tokens] + [1]


# ----------------------------------------------------------------------------------------------------
# The reader


def test_token_shards_errors(tmp_path: Path, bpe_dir: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        TokenShards(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"plain: no meta\.json"):
        TokenShards(tmp_path / "plain")
    (tmp_path / "plain" / "meta.json").write_text('{"format": "something-else/2"}')
    with pytest.raises(DataError, match=r"meta\.json: expected format 'duplexlm-shards/1', found 'something-else/2'"):
        TokenShards(tmp_path / "plain")
    run([write_lines(tmp_path / "c.txt", ENGLISH)], tmp_path / "out", bpe_dir, val_fraction=0.0)
    with pytest.raises(DataError, match=r"no split 'test' \(splits: train, val\)"):
        TokenShards(tmp_path / "out", "test")
    shards = TokenShards(tmp_path / "out")
    assert shards.word_starts(0, 3) is None
    assert shards.vocab_size == Tokenizer.from_dir(bpe_dir).vocab_size
    state = pickle.dumps(shards.get(0, 2) is not None and shards)  # opened maps are not pickled
    copy = pickle.loads(state)
    assert np.array_equal(copy.get(0, len(copy)), shards.get(0, len(shards)))
    assert len(state) < 4096
    with open(tmp_path / "out" / "train_000.bin", "ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(DataError, match=r"train_000\.bin: \d+ bytes is not a whole number of uint16 tokens"):
        TokenShards(tmp_path / "out")


def test_word_start_flags_fallbacks(char_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = Tokenizer.from_dir(char_dir).backend  # one token per character

    def flags(text: str, words: list[str] | None = None) -> list[int]:
        return encode.word_start_flags(text, backend.encode(text, add_special_tokens=False), words).tolist()

    assert flags("迈向充满希望", ["迈向", "充满", "希望"]) == [1, 0, 1, 0, 1, 0]
    assert flags("迈向充满希望", ["迈", "向充", "满希望"]) == [1, 1, 0, 1, 0, 0]  # the given words win
    jieba = pytest.importorskip("jieba")
    by_jieba = _flags(jieba.lcut("迈向充满希望"))  # 迈向|充满希望
    assert flags("迈向充满希望", ["不在", "文中"]) == by_jieba  # words not in the text: jieba instead
    monkeypatch.setattr(encode, "_starts_from_jieba", lambda text: None)  # as if jieba were not installed
    assert flags("迈向充满希望") == [1, 1, 1, 1, 1, 1]  # one word per CJK character
    assert flags("ab cd") == [1, 0, 1, 0, 0]  # whitespace words; a space token leads the word after it
