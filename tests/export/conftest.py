"""Trained tiny models of each exportable kind, saved as model directories, for the export tests: a
model that has learnt its text has wide margins between its greedy choices, so an engine that computes
the same function gives the same tokens, and one that does not is caught."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from duplexlm import presets
from duplexlm.io import save_model
from duplexlm.models import build_model
from duplexlm.tokenizer import Tokenizer, train_tokenizer

LINES = ["我爱北京天安门，天安门上太阳升。", "今天天气很好，我们去公园散步吧。", "the cat sat on the mat and looked at the dog.",
         "北京欢迎你，为你开天辟地。", "hello world, this is a small model.", "这个酒店很干净，服务也很好。"]
HELD_OUT = ["我爱北京天安门，天安门上太阳升。", "hello world, this is a small model."]
PROMPTS = ["我爱北京", "今天天气", "the cat sat", "hello world,", "这个酒店"]  # starts of LINES and others


def ours_greedy(path, prompts: list[list[int]], n: int, ignore_eos: bool = True) -> list[list[int]]:
    """Our engine's greedy continuations of ``prompts`` by the model directory ``path``: what each
    engine's export must give."""
    import duplexlm
    from duplexlm.infer.engine import Engine, SamplingParams

    model, tok = duplexlm.load(path)
    params = SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=ignore_eos)
    return [out.token_ids for out in Engine(model, tok, max_batch_size=4).generate(prompts, params)]


@pytest.fixture(scope="session")
def export_tokenizer() -> Tokenizer:
    return train_tokenizer(LINES * 10, "bpe", vocab_size=320, num_sentinels=0)


def train_decoder(preset: str, tok: Tokenizer, steps: int = 120) -> torch.nn.Module:
    """A tiny decoder of ``preset``'s shape that has learnt LINES by heart."""
    torch.manual_seed(0)
    gpt2 = preset.startswith("gpt2")
    cfg = dataclasses.replace(getattr(presets, preset)(), vocab_size=tok.vocab_size, d_model=64, n_layer=2,
                              n_head=4, d_ff=128, dropout=0.0, head_dim=None, n_kv_head=4 if gpt2 else 2)
    model = build_model(cfg)
    rows = [[*tok.encode(line, add_special_tokens=False), tok.eos_token_id] for line in LINES]
    width = max(map(len, rows))
    batch = torch.tensor([r + [tok.eos_token_id] * (width - len(r)) for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = F.cross_entropy(model(batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def train_t5(tok: Tokenizer, steps: int = 150) -> torch.nn.Module:
    """A tiny T5 that has learnt to answer each line with its reversal."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(presets.t5_tiny(), vocab_size=tok.vocab_size, d_model=64, head_dim=16, n_head=4,
                              d_ff=128, n_layer=2, dropout=0.0, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
    model = build_model(cfg)
    src = [[*tok.encode(line, add_special_tokens=False)[:12], tok.eos_token_id] for line in LINES]
    tgt = [[*s[:-1][::-1], tok.eos_token_id] for s in src]

    def pad(rows: list[list[int]]) -> torch.Tensor:
        width = max(map(len, rows))
        return torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])

    source, target = pad(src), pad(tgt)
    mask = (source != tok.pad_token_id).long()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        logits = model(source, attention_mask=mask, decoder_input_ids=model.shift_right(target)).logits
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=tok.pad_token_id)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def trained_models(export_tokenizer, tmp_path_factory) -> dict[str, Path]:
    """Model directories: gpt2, llama and qwen2 shapes, and a T5."""
    root = tmp_path_factory.mktemp("export-models")
    out = {}
    for name, preset in (("gpt2", "gpt2_tiny"), ("llama", "llama_tiny"), ("qwen2", "qwen2_tiny")):
        save_model(train_decoder(preset, export_tokenizer), root / name, export_tokenizer)
        out[name] = root / name
    save_model(train_t5(export_tokenizer), root / "t5", export_tokenizer)
    out["t5"] = root / "t5"
    return out


POSITIVE = ["这个酒店很干净", "服务很好", "房间很大很舒服", "早餐好吃", "位置方便交通好", "the room was clean", "great staff"]
NEGATIVE = ["服务太差了", "房间很脏", "早餐难吃", "隔音太差", "前台态度恶劣", "the room was dirty", "rude staff"]
PLACES = ["北京", "上海", "广州"]


def tag_sentences() -> list[tuple[list[str], list[str]]]:
    """Character-split sentences with their BIO tags: each place name is a LOC."""
    out = []
    for place in PLACES:
        for frame in ("我在{}工作", "{}欢迎你", "明天去{}开会"):
            left, right = frame.split("{}")
            chars = [*left, *place, *right]
            tags = ["O"] * len(left) + ["B-LOC"] + ["I-LOC"] * (len(place) - 1) + ["O"] * len(right)
            out.append((chars, tags))
    return out


@pytest.fixture(scope="session")
def trained_encoders(tmp_path_factory) -> dict[str, Path]:
    """Model directories: a classifier (positive / negative reviews) and a CRF tagger (place names), each
    trained until it gets its training set right."""
    from duplexlm.config import EncoderConfig

    root = tmp_path_factory.mktemp("export-encoders")
    tagged = tag_sentences()
    tok = train_tokenizer((POSITIVE + NEGATIVE + ["".join(c) for c, _ in tagged]) * 10, "wordpiece",
                          vocab_size=220)
    base = {"vocab_size": tok.vocab_size, "d_model": 64, "n_layer": 2, "n_head": 4, "d_ff": 128, "dropout": 0.0,
            "max_seq_len": 64}
    torch.manual_seed(0)
    clf = build_model(EncoderConfig(**base, head="classify", num_labels=2, label_names=["negative", "positive"]))
    batch = tok(POSITIVE + NEGATIVE)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.tensor([1] * len(POSITIVE) + [0] * len(NEGATIVE))
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-3)
    for _ in range(60):
        loss = F.cross_entropy(clf(ids, attention_mask=mask).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model(clf.eval(), root / "classify", tok)

    names = ["O", "B-LOC", "I-LOC"]
    tagger = build_model(EncoderConfig(**base, head="tag", num_labels=3, label_names=names, crf=True))
    enc = [tok.backend.encode(chars, is_pretokenized=True) for chars, _ in tagged]
    width = max(len(e.ids) for e in enc)
    ids = torch.tensor([e.ids + [tok.pad_token_id] * (width - len(e.ids)) for e in enc])
    mask = (ids != tok.pad_token_id).long()
    gold = torch.zeros_like(ids)
    for row, (e, (_, tags)) in enumerate(zip(enc, tagged)):
        for pos, word in enumerate(e.word_ids):
            if word is not None:
                gold[row, pos] = names.index(tags[word])
    opt = torch.optim.AdamW(tagger.parameters(), lr=1e-3)
    for _ in range(80):
        loss = F.cross_entropy(tagger(ids, attention_mask=mask).logits.flatten(0, 1), gold.flatten(),
                               reduction="none")[mask.flatten().bool()].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model(tagger.eval(), root / "tag", tok)
    return {"classify": root / "classify", "tag": root / "tag"}
