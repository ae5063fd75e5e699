"""Label names travel with a classifier or tagger to and from Hugging Face as id2label/label2id."""

import pytest
import torch

import duplexlm
from duplexlm.config import DecoderConfig, EncoderConfig
from duplexlm.models import build_model

transformers = pytest.importorskip("transformers")

CASES = {
    "bert-classify": (EncoderConfig(vocab_size=60, max_seq_len=16, d_model=32, n_layer=1, n_head=2, head="classify",
                                    num_labels=2, label_names=["负面", "正面"]),
                      transformers.AutoModelForSequenceClassification),
    "bert-tag": (EncoderConfig(vocab_size=60, max_seq_len=16, d_model=32, n_layer=1, n_head=2, head="tag",
                               pooler=False, num_labels=3, label_names=["O", "B-PER", "I-PER"]),
                 transformers.AutoModelForTokenClassification),
    "gpt2-classify": (DecoderConfig(vocab_size=60, max_seq_len=16, d_model=32, n_layer=1, n_head=2, head="classify",
                                    num_labels=3, label_names=["a", "b", "c"], pad_token_id=0),
                      transformers.AutoModelForSequenceClassification),
    "llama-classify": (DecoderConfig(vocab_size=60, max_seq_len=16, d_model=32, n_layer=1, n_head=2, head="classify",
                                     positions="rope", norm="rmsnorm", activation="silu", gated_mlp=True,
                                     qkv_bias=False, out_bias=False, mlp_bias=False, norm_bias=False,
                                     tie_word_embeddings=False, num_labels=2, label_names=["neg", "pos"],
                                     pad_token_id=0),
                       transformers.AutoModelForSequenceClassification),
}


@pytest.mark.parametrize("name", list(CASES))
def test_label_names_round_trip_through_hugging_face(name, tmp_path):
    config, auto = CASES[name]
    model = build_model(config).eval()
    duplexlm.save_model(model, tmp_path / "ours")
    duplexlm.convert_to_hf(tmp_path / "ours", tmp_path / "hf")
    hf = auto.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.id2label == dict(enumerate(config.label_names))
    assert hf.config.label2id == {n: i for i, n in enumerate(config.label_names)}
    ids = torch.randint(1, 60, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    duplexlm.convert_from_hf(tmp_path / "hf", tmp_path / "back")
    back, _ = duplexlm.load(tmp_path / "back")
    assert back.config.label_names == config.label_names


def test_placeholder_labels_stay_unnamed(tmp_path):
    config = EncoderConfig(vocab_size=60, max_seq_len=16, d_model=32, n_layer=1, n_head=2, head="classify",
                           num_labels=2)
    duplexlm.save_model(build_model(config), tmp_path / "ours")
    duplexlm.convert_to_hf(tmp_path / "ours", tmp_path / "hf")
    duplexlm.convert_from_hf(tmp_path / "hf", tmp_path / "back")
    assert duplexlm.load(tmp_path / "back")[0].config.label_names is None
