"""The `duplex` command as a user runs it."""

import csv
import json
import subprocess
import sys

import pytest
import torch

import duplexlm
from duplexlm.cli import main
from duplexlm.config import DecoderConfig
from duplexlm.data.baselines import majority_rate
from duplexlm.models import build_model


def test_presets_lists_real_sizes(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "gpt2 " in out and "124.4M" in out  # GPT-2 small's published count
    assert "bert-base" in out and "t5-small" in out and "lstm-tiny" in out


def test_convert_round_trip_via_cli(tmp_path, capsys):
    cfg = DecoderConfig(vocab_size=50, max_seq_len=32, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                        positions="rope", norm="rmsnorm", activation="silu", gated_mlp=True, qkv_bias=False,
                        out_bias=False, mlp_bias=False)
    model = build_model(cfg).eval()
    duplexlm.save_model(model, tmp_path / "ours")
    assert main(["convert", "--to-hf", str(tmp_path / "ours"), str(tmp_path / "hf")]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back, _ = duplexlm.load(tmp_path / "back")
    ids = torch.randint(0, 50, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, atol=0, rtol=0)
    assert main(["info", str(tmp_path / "back")]) == 0
    assert "decoder" in capsys.readouterr().out


def test_user_error_is_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "duplex info: error:" in err and "missing" in err and "Traceback" not in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "duplexlm.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for sub in ("presets", "convert", "demo", "info"):
        assert sub in out


DEMO_MARGIN = 0.03


@pytest.mark.slow
def test_demo_quick(tmp_path, capsys):
    """The README's main job on small slices: every stage runs, every trained system learns, and the
    run writes what the report promises."""
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "estimated time: about" in out
    assert "characters per token on held-out text" in out
    assert out.count("[before]") == 3 and out.count("[after]") == 3  # fill-mask before and after pretraining
    assert "unigram baseline" in out and "masked LM:" in out
    for system in ("pretrained", "scratch", "bigru", "TF-IDF char 1-3 + LR", "ner-bilstm", "dictionary"):
        assert system in out
    assert "causal=True" in out and "bidirectional=True" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["plan"]["seed"] == 1 and metrics["plan"]["scale"] == 1.0
    assert set(metrics["systems"]) == {"pretrained + fine-tuned", "same encoder from scratch",
                                       "BiGRU + attention pooling", "TF-IDF char 1-3 + LR"}
    # every trained system learned: its test accuracy beats always answering the majority label of the
    # test reviews they are all scored on (0.52), by about one standard error of 300 reviews (0.029).
    # A system that learned nothing answers one label throughout: 0.48 or 0.52.
    (test_csv,) = (tmp_path / "labels").glob("test-*.csv")
    with open(test_csv, encoding="utf-8", newline="") as f:
        majority = majority_rate(row["label"] for row in csv.DictReader(f))
    for name, row in metrics["systems"].items():
        assert 0.0 <= row["macro_f1"] <= 1.0
        assert row["accuracy"] > majority + DEMO_MARGIN, f"{name}: accuracy {row['accuracy']:.3f}, majority {majority:.3f}"
    assert metrics["systems"]["TF-IDF char 1-3 + LR"]["accuracy"] > 0.7  # real signal in real reviews
    # NER: every tagger found entities (one that learned nothing tags everything O: F1 0); the
    # dictionary of 1,000 training sentences reaches about 0.6 on the same 300 test sentences
    assert set(metrics["ner"]) == {"pretrained + CRF", "same encoder from scratch + CRF", "BiLSTM + CRF",
                                   "dictionary (longest match)"}
    for name, row in metrics["ner"].items():
        assert row["f1"] > 0.2, f"{name}: entity F1 {row['f1']:.3f}"
    assert metrics["ner"]["dictionary (longest match)"]["f1"] > 0.5
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    for png in ("pretraining.png", "finetuning.png", "finetuning-ner.png", "confusion-pretrained.png",
                "attention.png"):
        assert png in report and (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    model, _ = duplexlm.load(tmp_path / "encoder-finetuned")
    assert model.config.head == "classify" and set(model.config.label_names) == {"negative", "positive"}
    tagger, _ = duplexlm.load(tmp_path / "ner-finetuned")
    assert tagger.config.head == "tag" and "B-PER" in tagger.config.label_names
    pre = [json.loads(line) for line in (tmp_path / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in pre if "loss" in r]
    assert len(train) >= 10 and sum(train[-3:]) < sum(train[:3])  # the encoder learned something while pretraining
    # the decoder half: causal-LM pretraining, instruction tuning on 情感判断, both systems scored beside
    # the majority answer. On these slices (a 2 x 64 decoder, 300 steps) both learn the answer's form
    # (正面 or 负面 and nothing else; an untrained decoder writes neither), not yet which one is right
    assert "D3. instruction tuning on zh-tasks' 情感判断" in out and "causal LM:" in out
    assert "not in this budget: 翻译, 转繁体, 实体识别" in out
    dec = metrics["decoder"]
    assert set(dec["systems"]) == {"pretrained + instruction-tuned", "same decoder from scratch"}
    for name, s in dec["systems"].items():
        assert s["format"] >= 0.9 and 0.0 <= s["accuracy"] <= 1.0, (name, s)
    assert dec["majority"]["answer"] in ("正面", "负面")
    assert {s["reference"] for s in dec["samples"]} == {"正面", "负面"}
    assert "## Decoder half" in report and "majority answer" in report
    gens = (tmp_path / "decoder" / "runs" / "pretrained" / "test_generations.jsonl").read_text(encoding="utf-8")
    assert len(gens.splitlines()) >= 30
    # running it again replaces its own output; a directory holding anything else is refused
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    assert main(["demo", "--quick", "--scale", "0", "--out", str(tmp_path / "new")]) == 2
    assert "--scale: expected a number above 0, found 0.0" in capsys.readouterr().err
