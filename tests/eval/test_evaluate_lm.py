"""`duplex eval` for language models: perplexity and bits per byte checked against transformers' GPT-2
and plain torch, sliding windows, token shards, the built-in held-out slice, masked LM and T5, the CLI."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from duplexlm.cli import main
from duplexlm.config import DecoderConfig, EncoderConfig, Seq2SeqConfig
from duplexlm.data import TokenShards, prepare
from duplexlm.errors import DuplexError
from duplexlm.eval.evaluate import evaluate_model
from duplexlm.eval.lm import clm_windows, decoded_bytes, load_lm_text
from duplexlm.io import convert_to_hf, save_model
from duplexlm.models import build_model
from duplexlm.tokenizer import save_tokenizer, train_tokenizer

from ..conftest import peoples_daily_lines

VOCAB = 400
CONTEXT = 32


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory):
    """A byte-level BPE tokenizer on People's Daily, a tiny GPT-2-style decoder (random weights, but
    sharp enough logits to tell windows apart) with its Hugging Face copy, and a small text file."""
    root = tmp_path_factory.mktemp("lm")
    lines = peoples_daily_lines(300)
    tok = train_tokenizer(lines, "bpe", vocab_size=VOCAB)
    save_tokenizer(tok, root / "tok")
    torch.manual_seed(0)
    model = build_model(DecoderConfig(vocab_size=VOCAB, max_seq_len=CONTEXT, d_model=32, n_layer=2, n_head=2,
                                      init_std=0.2))
    save_model(model, root / "dec", tokenizer=tok)
    convert_to_hf(root / "dec", root / "dec-hf")
    (root / "text.txt").write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    return root, tok, lines


@pytest.fixture(scope="module")
def hf(lm_dirs):
    """The decoder as transformers' own GPT2LMHeadModel, read from the directory convert_to_hf wrote."""
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(lm_dirs[0] / "dec-hf").eval()


def _stream(tok, docs):
    """What the evaluation scores, built by hand: a separator, then each document and a separator."""
    sep = tok.eos_token_id
    ids = [sep]
    for d in docs:
        ids += [*tok.encode(d, add_special_tokens=False), sep]
    return torch.tensor(ids)


def test_perplexity_in_one_window_equals_hf_gpt2(lm_dirs, hf, tmp_path):
    root, tok, _ = lm_dirs
    docs = ["今天天气很好。", "我们在北京开会。"]
    (tmp_path / "short.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    ids = _stream(tok, docs)
    assert len(ids) - 1 <= CONTEXT  # one window holds it all
    with torch.no_grad():
        hf_loss = hf(ids[None], labels=ids[None]).loss.item()  # mean over the len - 1 next tokens
    m = evaluate_model(root / "dec", str(tmp_path / "short.txt"), device="cpu")
    assert m["objective"] == "clm" and m["windows"] == 1 and m["tokens"] == len(ids) - 1
    assert m["loss"] == pytest.approx(hf_loss, rel=1e-5)
    assert m["perplexity"] == pytest.approx(math.exp(hf_loss), rel=1e-5)
    assert m["perplexity"] == pytest.approx(math.exp(m["total_nll"] / m["tokens"]), rel=1e-12)


def test_stride_equal_to_context_is_disjoint_windows(lm_dirs, hf):
    root, tok, lines = lm_dirs
    ids = _stream(tok, lines[:3])
    n = len(ids)
    assert n > 2 * CONTEXT + 1  # three windows at least
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, n - 1, CONTEXT):  # window k reads ids[kC:(k+1)C] and predicts ids[kC+1:(k+1)C+1]
            x = ids[start:start + CONTEXT]
            y = ids[start + 1:start + CONTEXT + 1]
            logits = hf(x[None]).logits[0, : len(y)]
            total += F.cross_entropy(logits, y, reduction="sum").item()
            count += len(y)
    m = evaluate_model(root / "dec", str(root / "text.txt"), stride=CONTEXT, device="cpu")
    assert m["tokens"] == count == n - 1
    assert m["windows"] == math.ceil((n - 1) / CONTEXT)
    assert m["total_nll"] == pytest.approx(total, rel=1e-5)
    assert m["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_stride_one_scores_each_token_with_its_full_context(lm_dirs, hf):
    """With stride 1 every token is predicted from the ``context`` tokens before it (or all of them, near
    the start): checked one token at a time with transformers' GPT-2."""
    root, tok, lines = lm_dirs
    ids = _stream(tok, lines[:3])[: CONTEXT + 9]  # a prefix of text.txt's stream, longer than the context
    with torch.no_grad():
        nlls = [F.cross_entropy(hf(ids[max(0, t - CONTEXT):t][None]).logits[0, -1], ids[t]).item()
                for t in range(1, len(ids))]
    m = evaluate_model(root / "dec", str(root / "text.txt"), stride=1, max_tokens=len(ids) - 1, device="cpu")
    assert m["tokens"] == len(nlls) and m["truncated"]
    assert m["total_nll"] == pytest.approx(sum(nlls), rel=1e-5)
    # the default stride, half the context, needs fewer windows
    half = evaluate_model(root / "dec", str(root / "text.txt"), max_tokens=len(ids) - 1, device="cpu")
    assert half["stride"] == CONTEXT // 2 and half["windows"] < m["windows"]


@pytest.mark.parametrize("n,context,stride", [(10, 4, 4), (10, 4, 1), (100, 16, 5), (17, 16, 16), (2, 8, 3)])
def test_windows_score_every_token_once_with_enough_context(n, context, stride):
    seen = []
    for begin, end, first in clm_windows(n, context, stride):
        assert end - 1 - begin <= context  # the model reads at most `context` tokens
        assert first >= begin + 1  # a scored token has at least one token before it in the window
        if begin > 0:
            assert first - begin >= context - stride + 1
        seen += range(first, end)
    assert seen == list(range(1, n))


def test_bits_per_byte_counts_utf8_bytes_of_chinese(lm_dirs, tmp_path):
    root = lm_dirs[0]
    docs = ["中华人民共和国", "新年好。祝你快乐"]  # 3 bytes per character
    (tmp_path / "zh.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    m = evaluate_model(root / "dec", str(tmp_path / "zh.txt"), device="cpu")
    nbytes = sum(3 * len(d) + 1 for d in docs)  # + 1 per document separator
    assert m["bytes"] == nbytes == sum(len(d.encode("utf-8")) + 1 for d in docs)
    assert m["tokens"] > len(docs) and m["bytes_per_token"] == nbytes / m["tokens"]
    assert m["bits_per_byte"] == pytest.approx(m["total_nll"] / (math.log(2) * nbytes), rel=1e-12)
    assert m["bits_per_byte"] == pytest.approx(m["loss"] * m["tokens"] / math.log(2) / nbytes, rel=1e-12)
    # the text is cleaned as `duplex data prepare` cleans it for this tokenizer: a byte-level BPE's text
    # is not NFKC'd, so the full-width comma stays 3 bytes (NFKC would make it ',', 1 byte), and the bytes
    # counted are those of the cleaned text
    (tmp_path / "wide.txt").write_text("新年好，祝你快乐\n", encoding="utf-8")
    assert evaluate_model(root / "dec", str(tmp_path / "wide.txt"), device="cpu")["bytes"] == 8 * 3 + 1


def test_jsonl_text_field(lm_dirs, tmp_path):
    root, _, lines = lm_dirs
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"body": t}, ensure_ascii=False) + "\n" for t in lines[:3]),
                                      encoding="utf-8")
    m = evaluate_model(root / "dec", str(tmp_path / "d.jsonl"), text_field="body", device="cpu")
    assert m == evaluate_model(root / "dec", str(root / "text.txt"), device="cpu") | {"data": str(tmp_path / "d.jsonl")}


def test_token_shards_score_as_their_text(lm_dirs, tmp_path):
    """A shards split scores exactly as the same documents given as text; bytes come from meta.json,
    or, where --max-tokens cuts the stream, from decoding the scored ids."""
    root, tok, lines = lm_dirs
    (tmp_path / "corpus.txt").write_text("\n".join(lines[:60]) + "\n", encoding="utf-8")
    prepare([str(tmp_path / "corpus.txt")], tmp_path / "data", root / "tok", val_fraction=0.1, seed=1, workers=1,
            progress=False)
    val = TokenShards(tmp_path / "data", "val")
    ids = val.get(0, len(val))
    sep = val.doc_sep_token_id
    docs = [tok.decode(d.tolist()) for d in np.split(ids, np.flatnonzero(ids == sep) + 1) if len(d)]
    (tmp_path / "val.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    m = evaluate_model(root / "dec", str(tmp_path / "data"), device="cpu")
    text = evaluate_model(root / "dec", str(tmp_path / "val.txt"), device="cpu")
    assert m["split"] == "val" and m["documents"] == val.documents == len(docs)
    for key in ("tokens", "bytes", "windows", "total_nll", "perplexity", "bits_per_byte"):
        assert m[key] == text[key], key
    assert m["bytes"] == val.meta["splits"]["val"]["bytes"]
    assert decoded_bytes(ids, sep, tok) == m["bytes"]
    cut = evaluate_model(root / "dec", str(tmp_path / "data"), max_tokens=len(ids) - 1, device="cpu")
    assert cut["truncated"] and cut["bytes"] == m["bytes"] - 1  # the last separator is not scored
    train = evaluate_model(root / "dec", str(tmp_path / "data"), split="train", max_tokens=50, device="cpu")
    assert train["split"] == "train" and train["tokens"] == 50


def test_shards_of_another_tokenizer_are_refused(lm_dirs, tmp_path):
    root, _, lines = lm_dirs
    other = train_tokenizer(lines[:100], "bpe", vocab_size=350)
    save_tokenizer(other, tmp_path / "tok")
    (tmp_path / "c.txt").write_text("\n".join(lines[:20]) + "\n", encoding="utf-8")
    prepare([str(tmp_path / "c.txt")], tmp_path / "data", tmp_path / "tok", val_fraction=0.2, workers=1,
            progress=False)
    with pytest.raises(DuplexError, match=r"data/tokenizer.json: the shards were made with another tokenizer"):
        evaluate_model(root / "dec", str(tmp_path / "data"), device="cpu")


@pytest.mark.slow
def test_builtin_val_is_prepares_held_out_split(lm_dirs, tmp_path):
    """``peoples-daily``'s val split is exactly what `duplex data prepare` with its defaults holds out."""
    root, tok, _ = lm_dirs
    prepare(["peoples-daily"], tmp_path / "pd", root / "tok", workers=1, progress=False)
    val = TokenShards(tmp_path / "pd", "val")
    text = load_lm_text("peoples-daily", tok)
    assert text.split == "val" and text.documents == val.documents
    np.testing.assert_array_equal(text.ids, val.get(0, len(val)))
    assert text.nbytes == val.meta["splits"]["val"]["bytes"]


def test_masked_lm_reports_masked_token_perplexity(lm_dirs, tmp_path):
    root, tok, _ = lm_dirs
    torch.manual_seed(0)
    save_model(build_model(EncoderConfig(vocab_size=VOCAB, max_seq_len=CONTEXT, d_model=32, n_layer=1, n_head=2,
                                         head="mlm")), tmp_path / "enc", tokenizer=tok)
    m = evaluate_model(tmp_path / "enc", str(root / "text.txt"), device="cpu")
    assert m["objective"] == "mlm" and "bits_per_byte" not in m
    assert 0.1 < m["target_tokens"] / m["tokens"] < 0.2  # about 15 % masked
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    assert evaluate_model(tmp_path / "enc", str(root / "text.txt"), device="cpu") == m  # seeded: reproducible
    assert evaluate_model(tmp_path / "enc", str(root / "text.txt"), seed=7, device="cpu")["loss"] != m["loss"]
    with pytest.raises(DuplexError, match="--stride: applies to causal LMs"):
        evaluate_model(tmp_path / "enc", str(root / "text.txt"), stride=4, device="cpu")


def test_t5_reports_span_corruption_loss(lm_dirs, tmp_path):
    root, tok, _ = lm_dirs
    torch.manual_seed(0)
    save_model(build_model(Seq2SeqConfig(vocab_size=VOCAB, d_model=32, head_dim=16, d_ff=64, n_layer=1, n_head=2)),
               tmp_path / "t5", tokenizer=tok)
    m = evaluate_model(tmp_path / "t5", str(root / "text.txt"), context=CONTEXT, device="cpu")
    assert m["objective"] == "span" and m["context"] == CONTEXT and math.isfinite(m["loss"])
    assert m["target_tokens"] > 0.15 * m["tokens"]  # noise tokens, plus a sentinel per span and an eos per row


def test_cli_writes_metrics_and_report(lm_dirs, tmp_path, capsys):
    root, _, _ = lm_dirs
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(root / "dec"), "--data", str(root / "text.txt"), "--stride", "16",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["stride"] == 16 and metrics["objective"] == "clm"
    assert f"perplexity {metrics['perplexity']:.4f}" in printed and "bits_per_byte" in printed
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| perplexity |" in report and "| bits_per_byte |" in report and "sliding by 16" in report


@pytest.mark.parametrize("case", ["empty", "missing", "classifier"])
def test_bad_input_is_one_line_naming_the_file(lm_dirs, tmp_path, capsys, case):
    root, tok, _ = lm_dirs
    model = root / "dec"
    data = tmp_path / "data.txt"
    if case == "empty":
        data.write_text("\n\n", encoding="utf-8")
    elif case == "classifier":
        data.write_text("你好\n", encoding="utf-8")
        model = tmp_path / "clf"
        save_model(build_model(DecoderConfig(vocab_size=VOCAB, max_seq_len=CONTEXT, d_model=32, n_layer=1,
                                             n_head=2, head="classify", label_names=["neg", "pos"])),
                   model, tokenizer=tok)
    assert main(["eval", "--model", str(model), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and str(data) in err
    assert err.startswith("duplex eval: error:")
