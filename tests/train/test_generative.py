"""Generative fine-tuning's pieces: answers-only labels, the chat template against transformers',
packing that leaves every conversation's loss as it was, vocabulary growth for added chat tokens."""

from __future__ import annotations

import pytest
import torch

from duplexlm.config import DecoderConfig
from duplexlm.data.examples import encode_chat
from duplexlm.models import build_model
from duplexlm.objectives import IGNORE_INDEX, LossOptions
from duplexlm.objectives.generative import packed_mask, sft_forward, sft_loss
from duplexlm.tokenizer import CHATML_TEMPLATE, Tokenizer, ensure_chat_tokens, train_tokenizer
from duplexlm.train.build import grow_vocab
from duplexlm.train.samplers import PackedSampler, pack

LINES = ["我爱北京天安门", "北京欢迎你", "今天天气很好", "你好，世界", "hello world", "the cat sat on the mat",
         "请把这句话翻译成英文", "正面", "负面", "这个酒店很干净"] * 20

CHATS = [
    [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好，世界"}],
    [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "今天天气怎么样？"},
     {"role": "assistant", "content": "今天天气很好"}, {"role": "user", "content": "北京呢？"},
     {"role": "assistant", "content": "北京欢迎你"}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello world"}],
    [{"role": "user", "content": "评价：这个酒店很干净"}, {"role": "assistant", "content": "正面"}],
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(LINES, "bpe", vocab_size=320, num_sentinels=0)


def test_labels_cover_exactly_the_answers_and_their_end_of_turn(tok):
    for messages in CHATS:
        ids, labels, cut = encode_chat(tok, messages, 256)
        assert not cut and len(ids) == len(labels) and labels[-1] == IGNORE_INDEX
        # shifted: labels[t] is ids[t + 1] wherever it is set
        assert all(y == ids[t + 1] for t, y in enumerate(labels) if y != IGNORE_INDEX)
        answered = tok.decode([y for y in labels if y != IGNORE_INDEX], skip_special_tokens=False)
        answers = "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
        assert answered == answers
        # nothing of the system or user turns, nor the template's "assistant\n" header, is a target
        scored = {t + 1 for t, y in enumerate(labels) if y != IGNORE_INDEX}
        header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
        for t in range(len(ids) - len(header) + 1):
            if ids[t:t + len(header)] == header:
                assert not scored & set(range(t, t + len(header)))


def test_a_cut_conversation_keeps_only_whole_positions(tok):
    messages = CHATS[1]
    full, _, _ = encode_chat(tok, messages, 256)
    ids, labels, cut = encode_chat(tok, messages, len(full) - 3)
    assert cut and ids == full[:len(full) - 3] and labels[-1] == IGNORE_INDEX


def test_ids_equal_transformers_apply_chat_template_on_the_converted_directory(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    from duplexlm.io import convert_to_hf, save_model

    model = build_model(DecoderConfig(vocab_size=tok.vocab_size, max_seq_len=64, d_model=16, n_layer=1, n_head=2))
    save_model(model, tmp_path / "ours", tokenizer=tok)
    convert_to_hf(tmp_path / "ours", tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for messages in CHATS:
        ids, _, _ = encode_chat(tok, messages, 256)
        theirs = hf.apply_chat_template(messages, tokenize=True)
        theirs = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
        assert list(theirs) == ids
        prompt = hf.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        assert prompt == tok.apply_chat_template(messages[:-1], add_generation_prompt=True)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_packing_leaves_every_conversations_loss_unchanged(tok, positions):
    torch.manual_seed(0)
    extra = {} if positions == "learned" else {"positions": "rope", "norm": "rmsnorm", "activation": "silu", "gated_mlp": True,
                                                    "qkv_bias": False, "mlp_bias": False, "out_bias": False}
    model = build_model(DecoderConfig(vocab_size=tok.vocab_size, max_seq_len=128, d_model=32, n_layer=2, n_head=2,
                                      **extra)).eval()
    encoded = [encode_chat(tok, m, 128)[:2] for m in CHATS]
    ids, labels = [e[0] for e in encoded], [e[1] for e in encoded]

    def nll(logits, y):
        return torch.nn.functional.cross_entropy(logits.float(), y, reduction="none")

    alone = []  # each conversation alone: the loss of each of its answer tokens
    for x, y in zip(ids, labels):
        y = torch.tensor(y)
        logits = model(torch.tensor([x])).logits[0]
        alone.append(nll(logits[y != IGNORE_INDEX], y[y != IGNORE_INDEX]).detach())
    sampler = PackedSampler(ids, labels, max_length=128, seed=0, pad_id=0)
    assert sum(len(p) for p in sampler.packs) == len(ids) and sampler.n < len(ids)  # some share a row
    batch = sampler.batch(0, sampler.n)
    with torch.no_grad():
        logits = sft_forward(model, batch).logits  # (N, V) at the answer tokens, row-major
    scored = batch["labels"] != IGNORE_INDEX
    packed = nll(logits, batch["labels"][scored])
    rows = [sampler.packs[sampler._order.index(g)] for g in range(sampler.n)]
    expected = torch.cat([alone[i] for pack_ids in rows for i in pack_ids])
    torch.testing.assert_close(packed, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("packed", [False, True])
def test_example_reduction_averages_each_conversations_own_mean(tok, packed):
    torch.manual_seed(0)
    model = build_model(DecoderConfig(vocab_size=tok.vocab_size, max_seq_len=128, d_model=32, n_layer=2,
                                      n_head=2)).eval()
    encoded = [encode_chat(tok, m, 128)[:2] for m in CHATS]
    ids, labels = [e[0] for e in encoded], [e[1] for e in encoded]
    alone = []
    with torch.no_grad():
        for x, y in zip(ids, labels):
            y = torch.tensor(y)
            logits = model(torch.tensor([x])).logits[0]
            alone.append(torch.nn.functional.cross_entropy(logits[y != IGNORE_INDEX], y[y != IGNORE_INDEX],
                                                           reduction="none"))
    if packed:
        sampler = PackedSampler(ids, labels, max_length=128, seed=0, pad_id=0)
        batch = sampler.batch(0, sampler.n)
        assert batch["input_ids"].shape[0] < len(ids)  # conversations share rows
    else:  # right-padded rows, one conversation each
        width = max(map(len, ids))
        batch = {"input_ids": torch.tensor([x + [0] * (width - len(x)) for x in ids]),
                 "labels": torch.tensor([y + [IGNORE_INDEX] * (width - len(y)) for y in labels]),
                 "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])}
    with torch.no_grad():
        per_example, n = sft_loss(model, batch, LossOptions(reduction="example"))
        per_token, m = sft_loss(model, batch, LossOptions())
    assert n == len(CHATS) and m == sum(len(a) for a in alone)
    torch.testing.assert_close(per_example, torch.stack([a.mean() for a in alone]).mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_token, torch.cat(alone).mean(), atol=1e-5, rtol=1e-5)
    # the short answers (正面: 2 tokens) weigh as much as the long ones, so the two means differ
    assert abs(per_example.item() - per_token.item()) > 1e-3


def test_pack_and_mask():
    lengths = [5, 9, 3, 7, 2, 8, 1]
    packs = pack(lengths, 10, seed=3)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in p) <= 10 for p in packs)
    assert pack(lengths, 10, seed=3) == packs
    assert len(packs) == 4  # 35 tokens need at least 4 rows of 10: best fit finds that
    m = packed_mask(torch.tensor([[1, 1, 2, 2, 0]]))[0, 0]
    assert m.tolist() == [[True, False, False, False, False], [True, True, False, False, False],
                          [False, False, True, False, False], [False, False, True, True, False],
                          [False, False, False, False, True]]
    with pytest.raises(ValueError, match="do not fit"):
        pack([11], 10, seed=0)


def test_chat_tokens_are_added_and_the_embedding_grows_keeping_what_it_knew(tok):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    # our trained tokenizers carry ChatML already; a foreign one without a template gets it
    assert ensure_chat_tokens(tok) == []
    backend = HFTokenizer(models.WordLevel({"[UNK]": 0, "你": 1, "好": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    foreign = Tokenizer(backend, {})
    added = ensure_chat_tokens(foreign)
    assert added == ["<|im_start|>", "<|im_end|>"] and foreign.vocab_size == 5
    assert foreign.config["chat_template"] == CHATML_TEMPLATE
    assert foreign.encode("<|im_start|>你好<|im_end|>", add_special_tokens=False) == [3, 1, 2, 4]
    for tied in (True, False):
        torch.manual_seed(0)
        model = build_model(DecoderConfig(vocab_size=3, max_seq_len=16, d_model=16, n_layer=1, n_head=2,
                                          tie_word_embeddings=tied)).eval()
        x = torch.tensor([[1, 2, 1]])
        before = model(x).logits
        grow_vocab(model, 5)
        after = model(x).logits
        assert model.config.vocab_size == 5 and after.shape[-1] == 5
        torch.testing.assert_close(after[..., :3], before, atol=1e-6, rtol=0)
        assert (model.lm_head.weight is model.embed.weight) == tied
        assert model(torch.tensor([[3, 1, 2, 4]])).logits.isfinite().all()
