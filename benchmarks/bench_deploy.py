"""Deployment paths on CPU, side by side, on models trained by the project's own commands.

Models (unless ``--decoder`` / ``--encoder`` name them), trained into ``--out`` through the CLI, every
command in ``OUT/commands.log``:

- two decoders, GPT-2 shape (``model.preset=gpt2-tiny``) and Llama shape (``model.preset=llama-tiny``:
  RoPE, RMSNorm, SwiGLU, grouped-query attention), 6 layers of width 384: a byte-level BPE of 8,000
  (``duplex tokenizer train``) and token shards (``duplex data prepare``) of People's Daily, the last 5%
  of its lines held out, then ``duplex pretrain objective=clm`` for ``--train-steps`` (300) steps of
  8 × 256 tokens each;
- a sentiment encoder, BERT shape 4×256 (``duplex finetune task=classify data.train=reviews-zh
  model.preset=bert-tiny ...``, the sentiment recipe of bench_quality.py) for ``--encoder-steps`` (400)
  steps of 32 reviews (pre-norm, mean pooling: the demo's), on a WordPiece of 8,000 trained on the training split's texts.

A model directory already trained here with the same settings (``OUT/*.train.json``) is reused.

Decoders: the first 32 tokens of held-out lines as prompts, 128 new tokens, greedy, end-of-text
ignored (every row runs the full length), batch 1 and 16. Sides: transformers' ``generate`` on the
Hugging Face form (``convert_to_hf``; the baseline), our ``Engine`` in fp32 (built once per batch size),
the one-call ``duplexlm.infer.generate``, our ``Engine`` on the weight-only int8 directory of ``duplex
quantize``, CTranslate2 (``export_model(..., "ct2")``) in fp32 and int8, ONNX Runtime on the decoder's
ONNX export with its KV cache (``ONNXDecoder``) in fp32 and int8, and, where llama-cpp-python is
installed (optional: it builds from source), llama.cpp on the GGUF export in f32 and Q8_0. Per side: tokens/s (new
tokens over wall time, prefill included), its ratio to transformers per round (median [min–max]),
seconds from the directory to ready, the weight files' size, the share of generated tokens equal to our
fp32 engine's position by position, and perplexity on held-out tokens (from the logits; CTranslate2:
``score_batch``'s log-probabilities).

Encoder: examples/s classifying the ``reviews-zh`` test texts in batches of 32 (``classify``) with the
torch model in fp32, our int8 (``duplex quantize``), ONNX Runtime fp32 and int8 (``export_model(...,
"onnx")``, loaded by ``duplexlm.load``); the ratio to torch fp32 (timed on the first ``--classify-texts``
test texts, 512) and the accuracy of each on every test text.

The machine is shared and noisy: the sides run in rounds, the order reversed every other round, and the
ratios are taken per round. Writes a section of docs/benchmarks.md and the rows to ``OUT/deploy.json``.

    python benchmarks/bench_deploy.py                 # train (tens of minutes on 2 cores), then measure
    python benchmarks/bench_deploy.py --rounds 7      # the models trained before are reused
    python benchmarks/bench_deploy.py --decoder runs/gpt2/model runs/llama/model --encoder runs/enc/model
    python benchmarks/bench_deploy.py --smoke --out /tmp/bench-deploy-smoke --write /tmp/bench-deploy-smoke.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import machine, write_section

HEADING = "### Deployment: exported engines on CPU"
HELD_OUT = 0.05  # the last share of People's Daily's lines: never seen by the tokenizer or the decoders
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt", ".gguf")
PPL_CONTEXT = 256  # tokens per perplexity window (at most the model's context)


@dataclass(frozen=True)
class Plan:
    """Shapes, budgets and sizes of one run (``FULL``, or ``SMOKE`` to check that the script runs)."""

    corpus_lines: int | None  # People's Daily lines read (None: all)
    vocab: int
    layers: int
    width: int
    heads: int
    kv_heads: int  # Llama shape: key/value heads
    d_ff: int  # Llama shape: SwiGLU width
    seq_len: int
    batch: int
    lr: float
    steps: int
    enc_vocab: int
    enc_layers: int
    enc_width: int
    enc_heads: int
    enc_seq_len: int
    enc_batch: int
    enc_lr: float
    enc_steps: int
    prompt_len: int
    new: int
    batches: tuple[int, ...]
    ppl_tokens: int
    classify_texts: int  # test texts classified in each timed round (accuracy: every test text)
    test_texts: int | None  # test texts scored (None: all)
    rounds: int


FULL = Plan(corpus_lines=None, vocab=8000, layers=6, width=384, heads=6, kv_heads=2, d_ff=1024, seq_len=256,
            batch=8, lr=1e-3, steps=300, enc_vocab=8000, enc_layers=4, enc_width=256, enc_heads=4, enc_seq_len=128,
            enc_batch=32, enc_lr=1e-3, enc_steps=600, prompt_len=32, new=128, batches=(1, 16), ppl_tokens=4096,
            classify_texts=512, test_texts=None, rounds=5)
SMOKE = Plan(corpus_lines=3000, vocab=1000, layers=2, width=64, heads=2, kv_heads=1, d_ff=176, seq_len=128,
             batch=8, lr=2e-3, steps=30, enc_vocab=5000, enc_layers=2, enc_width=64, enc_heads=2, enc_seq_len=64,
             enc_batch=16, enc_lr=1e-3, enc_steps=30, prompt_len=16, new=16, batches=(1, 4), ppl_tokens=512,
             classify_texts=64, test_texts=128, rounds=1)


# ----------------------------------------------------------------------------------------------------
# Training, through the CLI


def duplex(*args: str, log: Path, threads: int | None = None) -> float:
    """Run ``duplex ARGS`` (its output appended to ``log``) → seconds; exits on failure."""
    print("$ duplex " + " ".join(args), flush=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ duplex " + " ".join(args) + "\n")
        f.flush()
        res = subprocess.run([sys.executable, "-m", "duplexlm.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                             env=env)
    if res.returncode != 0:
        raise SystemExit(f"duplex {args[0]} failed (exit {res.returncode}); see {log}")
    return time.perf_counter() - t0


def reused(stamp: Path, key: dict[str, Any], needed: Path) -> dict[str, Any] | None:
    """What an earlier run recorded in ``stamp`` when it trained ``needed`` with the same ``key``."""
    if not (stamp.is_file() and needed.exists()):
        return None
    old = json.loads(stamp.read_text(encoding="utf-8"))
    return old if old.get("key") == key else None


def people_daily(limit: int | None) -> tuple[list[str], list[str]]:
    """People's Daily lines, cleaned and NFKC-normalised once here (as the demo's corpus is), so that the
    tokenizer, the shards and the held-out text all read the same characters: (training, held out), the
    held-out ones the last :data:`HELD_OUT` of them."""
    from duplexlm.data import iter_documents
    from duplexlm.data.clean import clean_text

    texts: list[str] = []
    for doc in iter_documents(["peoples-daily"]):
        if limit is not None and len(texts) >= limit:
            break
        if text := clean_text(doc.text):
            texts.append(text)
    cut = len(texts) - max(1, int(len(texts) * HELD_OUT))
    return texts[:cut], texts[cut:]


def decoder_args(shape: str, plan: Plan) -> list[str]:
    common = [f"model.n_layer={plan.layers}", f"model.d_model={plan.width}", f"model.n_head={plan.heads}",
              f"model.max_seq_len={plan.seq_len}", "model.dropout=0.0"]
    if shape == "llama":
        return ["model.preset=llama-tiny", *common, f"model.n_kv_head={plan.kv_heads}", f"model.d_ff={plan.d_ff}"]
    return ["model.preset=gpt2-tiny", *common]


def last_metric(run: Path, name: str) -> float | None:
    """The last value of ``name`` in a run's metrics.jsonl."""
    file = run / "metrics.jsonl"
    if not file.is_file():
        return None
    values = [row[name] for line in file.read_text(encoding="utf-8").splitlines()
              if line.strip() and name in (row := json.loads(line))]
    return values[-1] if values else None


def train_decoders(out: Path, plan: Plan, log: Path, threads: int | None) -> list[dict[str, Any]]:
    """The tokenizer, the shards and the two decoders (each reused when trained here before with the
    same settings) → per decoder its name, model directory and how it was trained."""
    corpus_dir = out / "corpus"
    tok, data = corpus_dir / "tok", corpus_dir / "data"
    key = {"lines": plan.corpus_lines, "held_out": HELD_OUT, "vocab": plan.vocab}
    stamp = out / "corpus.train.json"
    info = reused(stamp, key, data / "meta.json")
    if info is None:
        train, held = people_daily(plan.corpus_lines)
        corpus_dir.mkdir(parents=True, exist_ok=True)
        text = corpus_dir / "train.txt"
        text.write_text("\n".join(train) + "\n", encoding="utf-8")
        (corpus_dir / "held-out.txt").write_text("\n".join(held) + "\n", encoding="utf-8")
        workers = ["--workers", "1"] if plan.corpus_lines else []
        seconds = duplex("tokenizer", "train", str(text), "--kind", "bpe", "--vocab-size", str(plan.vocab),
                         "--num-sentinels", "0", "--out", str(tok), "--quiet", "--overwrite", log=log)
        seconds += duplex("data", "prepare", str(text), "--tokenizer", str(tok), "--out", str(data),
                          "--val-fraction", "0.01", "--quiet", "--overwrite", *workers, log=log)
        meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
        info = {"key": key, "made": time.time(), "lines": len(train), "held_out_lines": len(held),
                "train_tokens": meta["splits"]["train"]["tokens"], "seconds": round(seconds, 1)}
        stamp.write_text(json.dumps(info), encoding="utf-8")
    decoders = []
    for shape in ("gpt2", "llama"):
        run = out / shape
        args = ["objective=clm", f"data.path={data}", f"data.seq_len={plan.seq_len}", *decoder_args(shape, plan),
                f"batch_size={plan.batch}", f"optim.lr={plan.lr:g}", f"optim.min_lr={plan.lr / 10:g}",
                f"optim.warmup_steps={max(1, plan.steps // 10)}", f"max_steps={plan.steps}",
                f"eval_every={plan.steps}", f"save_every={plan.steps}", "eval_batches=8",
                f"log_every={max(1, plan.steps // 10)}", "progress=false", f"out_dir={run}"]
        run_stamp = out / f"{shape}.train.json"
        done = reused(run_stamp, {"args": args, "data": info["made"]}, run / "model")
        if done is None:
            seconds = duplex("pretrain", *args, "--overwrite", log=log, threads=threads)
            done = {"key": {"args": args, "data": info["made"]}, "seconds": round(seconds, 1),
                    "val_loss": last_metric(run, "val_loss"), "tokens": last_metric(run, "tokens")}
            run_stamp.write_text(json.dumps(done), encoding="utf-8")
        decoders.append({"name": shape, "model": run / "model", "command": "duplex pretrain " + " ".join(
            a for a in args if not a.startswith(("data.path=", "out_dir="))), "seconds": done["seconds"],
            "val_loss": done["val_loss"], "tokens": done.get("tokens"), "steps": plan.steps, "corpus": info})
    return decoders


def train_encoder(out: Path, plan: Plan, log: Path, threads: int | None) -> dict[str, Any]:
    """The sentiment encoder (reused when trained here before with the same settings)."""
    from duplexlm.data.tasks import load_task_data

    enc = out / "encoder"
    tok, run = enc / "tok", enc / "run"
    args = ["task=classify", "data.train=reviews-zh", "model.preset=bert-tiny", f"model.n_layer={plan.enc_layers}",
            f"model.d_model={plan.enc_width}", f"model.n_head={plan.enc_heads}", "model.norm_position=pre",
            "model.pooling=mean", "model.dropout=0.1", "model.attn_dropout=0.0",
            f"data.seq_len={plan.enc_seq_len}", "data.group_by_length=true", f"batch_size={plan.enc_batch}",
            f"optim.lr={plan.enc_lr:g}", f"optim.warmup_steps={max(1, plan.enc_steps // 8)}",
            f"max_steps={plan.enc_steps}", f"eval_every={plan.enc_steps}", f"save_every={plan.enc_steps}",
            "progress=false"]
    key = {"args": args, "vocab": plan.enc_vocab}
    stamp = out / "encoder.train.json"
    done = reused(stamp, key, run / "model")
    if done is None:
        enc.mkdir(parents=True, exist_ok=True)
        text = enc / "train-text.txt"
        train = load_task_data("classify", "reviews-zh", seed=1234).splits["train"]
        text.write_text("".join(e.text + "\n" for e in train), encoding="utf-8")
        seconds = duplex("tokenizer", "train", str(text), "--kind", "wordpiece", "--vocab-size", str(plan.enc_vocab),
                         "--out", str(tok), "--quiet", "--overwrite", log=log)
        seconds += duplex("finetune", *args, f"tokenizer={tok}", f"out_dir={run}", "--overwrite", log=log,
                          threads=threads)
        done = {"key": key, "seconds": round(seconds, 1)}
        stamp.write_text(json.dumps(done), encoding="utf-8")
    return {"model": run / "model", "command": "duplex finetune " + " ".join(args), "seconds": done["seconds"]}


# ----------------------------------------------------------------------------------------------------
# Measuring


def weight_mib(path: Path) -> float:
    """MiB of a directory's weight files (not its tokenizer or config)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES) / 2**20


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "lo": min(values), "hi": max(values)}


def run_rounds(sides: dict[str, Callable[[], Any]], rounds: int) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """A warm-up call of each side (its result kept), then ``rounds`` timed calls of each, the order of the
    sides reversed every other round → (results, seconds per round)."""
    names = list(sides)
    results = {name: sides[name]() for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            _, seconds = timed(sides[name])
            times[name].append(seconds)
    return results, times


def held_out_ids(tok: Any, texts: list[str]) -> list[list[int]]:
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def perplexity_torch(model: torch.nn.Module, windows: list[list[int]], hf: bool = False) -> float:
    nll, count = 0.0, 0
    for i in range(0, len(windows), 4):
        ids = torch.tensor(windows[i:i + 4])
        logits = (model(input_ids=ids) if hf else model(ids)).logits.float()
        lp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        nll -= float(lp.sum())
        count += lp.numel()
    return math.exp(nll / count)


def perplexity_scored(model: Any, windows: list[list[int]]) -> float:
    """Perplexity from an engine's ``score`` (CTranslate2, ONNX Runtime, llama.cpp): each token's
    log-probability after the first."""
    scores = model.score(windows)
    for w, s in zip(windows, scores):
        if len(s) != len(w) - 1:
            raise SystemExit(f"{type(model).__name__} scored {len(s)} tokens of a window of {len(w)}; expected {len(w) - 1}")
    flat = [x for s in scores for x in s]
    return math.exp(-sum(flat) / len(flat))


def llama_version() -> str:
    if not llama_cpp_installed():
        return "(not installed here: no llama.cpp rows; pip install llama-cpp-python builds it, about 20 minutes)"
    import llama_cpp

    return llama_cpp.__version__


def llama_cpp_installed() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> float:
    """The share of positions where ``tokens`` hold the reference's token (a shorter row misses the rest)."""
    same = sum(a == b for row, ref in zip(tokens, reference) for a, b in zip(row, ref))
    return same / sum(len(ref) for ref in reference)


def shape_name(config: Any) -> str:
    kind = "GPT-2 shape" if config.positions == "learned" else ("Qwen2 shape" if config.qkv_bias else "Llama shape")
    return f"{kind} {config.n_layer}×{config.d_model}"


def bench_decoder(model_dir: Path, work: Path, plan: Plan, held: list[str], log: Path) -> dict[str, Any]:
    """Every decoding side of one decoder: its rows and what describes the model."""
    import transformers

    import duplexlm
    from duplexlm.export import export_model
    from duplexlm.export.ct2 import CT2Model
    from duplexlm.export.onnx import ONNXDecoder
    from duplexlm.infer import Engine, SamplingParams, generate
    from duplexlm.models import count_parameters

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # from_pretrained's bar on every load
    work.mkdir(parents=True, exist_ok=True)
    P, N, batches = plan.prompt_len, plan.new, plan.batches
    ref, tok = duplexlm.load(model_dir)
    cfg = ref.config
    if cfg.max_seq_len < P + N:
        raise SystemExit(f"{model_dir}: {P} + {N} tokens do not fit its context of {cfg.max_seq_len}")
    name = shape_name(cfg)
    params = count_parameters(ref) / 1e6
    print(f"\n== {name} ({params:.1f} M) from {model_dir}", flush=True)

    # the other forms of the same weights
    hf_dir, int8_dir, ct2_dir, ct2_int8_dir, onnx_dir, onnx_int8_dir, gguf_dir, gguf_q8_dir = (
        work / d for d in ("hf", "int8", "ct2", "ct2-int8", "onnx", "onnx-int8", "gguf", "gguf-q8_0"))
    llama = llama_cpp_installed()
    duplexlm.convert_to_hf(model_dir, hf_dir, overwrite=True)
    duplex("quantize", "--model", str(model_dir), "--method", "int8", "--out", str(int8_dir), "--no-report",
           "--overwrite", log=log)
    export_model(model_dir, ct2_dir, "ct2", overwrite=True)
    export_model(model_dir, ct2_int8_dir, "ct2", quantize="int8", overwrite=True)
    export_model(model_dir, onnx_dir, "onnx", overwrite=True)
    export_model(model_dir, onnx_int8_dir, "onnx", quantize="int8", overwrite=True)
    if llama:
        export_model(model_dir, gguf_dir, "gguf", overwrite=True)
        export_model(model_dir, gguf_q8_dir, "gguf", quantize="q8_0", overwrite=True)

    # held-out text: prompts (the first P tokens of held-out lines) and perplexity windows
    docs = held_out_ids(tok, held)
    eos = tok.eos_token_id
    stream = [i for d in docs for i in (*d, *([eos] if eos is not None else []))]
    ctx = min(PPL_CONTEXT, cfg.max_seq_len)
    windows = [stream[i:i + ctx] for i in range(0, len(stream) - ctx + 1, ctx)][:max(1, plan.ppl_tokens // ctx)]
    long_docs = [d[:P] for d in docs if len(d) >= P]
    starts = [stream[i:i + P] for i in range(0, len(stream) - P + 1, P)]
    prompts_all = (long_docs + starts)[:max(batches)]
    if len(prompts_all) < max(batches) or not windows:
        raise SystemExit(f"the held-out text ({len(stream):,} tokens) is too short for {max(batches)} prompts "
                         f"and a perplexity window of {ctx}")

    threads = torch.get_num_threads()
    rows: dict[str, dict[str, Any]] = {}
    engines: dict[str, dict[int, Any]] = {}

    def load_hf() -> Any:
        m = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).float().eval()
        m.generation_config.eos_token_id = None  # every row the full length, as the others
        m.generation_config.pad_token_id = 0
        return m

    def load_engine(path: Path, side: str) -> Any:
        m, _ = duplexlm.load(path)
        engines[side] = {batches[0]: Engine(m, max_batch_size=batches[0], max_len=P + N)}
        return m

    load_hf()  # a first load imports the model's classes; the second is timed
    hf, load_s = timed(load_hf)
    rows["transformers"] = {"load_s": load_s}
    _, load_s = timed(lambda: load_engine(model_dir, "engine"))
    rows["engine"] = {"load_s": load_s}
    call_model, load_s = timed(lambda: duplexlm.load(model_dir)[0])
    rows["generate"] = {"load_s": load_s}
    int8_model, load_s = timed(lambda: load_engine(int8_dir, "engine_int8"))
    rows["engine_int8"] = {"load_s": load_s}
    ct2, load_s = timed(lambda: CT2Model(ct2_dir, compute_type="float32", threads=threads))
    rows["ct2"] = {"load_s": load_s}
    ct2_int8, load_s = timed(lambda: CT2Model(ct2_int8_dir, compute_type="int8", threads=threads))
    rows["ct2_int8"] = {"load_s": load_s}
    onnx, load_s = timed(lambda: ONNXDecoder(onnx_dir, threads=threads))
    rows["onnx"] = {"load_s": load_s}
    onnx_int8, load_s = timed(lambda: ONNXDecoder(onnx_int8_dir, threads=threads))
    rows["onnx_int8"] = {"load_s": load_s}
    if llama:
        from duplexlm.export.llama_cpp import LlamaCppModel

        gguf, load_s = timed(lambda: LlamaCppModel(gguf_dir, P + N, threads))
        rows["gguf"] = {"load_s": load_s}
        gguf_q8, load_s = timed(lambda: LlamaCppModel(gguf_q8_dir, P + N, threads))
        rows["gguf_q8"] = {"load_s": load_s}
    for side in ("engine", "engine_int8"):
        model = engines[side][batches[0]].model
        for B in batches[1:]:
            engines[side][B] = Engine(model, max_batch_size=B, max_len=P + N)

    labels = {"transformers": "transformers `generate`", "engine": "duplexlm `Engine`",
              "generate": "duplexlm `generate()`", "engine_int8": "duplexlm `Engine`, `duplex quantize` int8",
              "ct2": "CTranslate2", "ct2_int8": "CTranslate2 int8", "onnx": "ONNX Runtime",
              "onnx_int8": "ONNX Runtime int8", "gguf": "llama.cpp", "gguf_q8": "llama.cpp Q8_0"}
    dirs = {"transformers": hf_dir, "engine": model_dir, "generate": model_dir, "engine_int8": int8_dir,
            "ct2": ct2_dir, "ct2_int8": ct2_int8_dir, "onnx": onnx_dir, "onnx_int8": onnx_int8_dir,
            "gguf": gguf_dir, "gguf_q8": gguf_q8_dir}
    weights = {"transformers": "fp32", "engine": "fp32", "generate": "fp32", "engine_int8": "int8 weights",
               "ct2": "fp32", "ct2_int8": "int8", "onnx": "fp32", "onnx_int8": "int8", "gguf": "f32",
               "gguf_q8": "Q8_0"}
    with torch.no_grad():
        fp32 = perplexity_torch(call_model, windows)
        ppl = {"transformers": perplexity_torch(hf, windows, hf=True), "engine": fp32, "generate": fp32,
               "engine_int8": perplexity_torch(int8_model, windows), "ct2": perplexity_scored(ct2, windows),
               "ct2_int8": perplexity_scored(ct2_int8, windows), "onnx": perplexity_scored(onnx, windows),
               "onnx_int8": perplexity_scored(onnx_int8, windows)}
        if llama:
            ppl.update({side: perplexity_scored(LlamaCppModel(path, ctx, threads, scoring=True), windows)
                        for side, path in (("gguf", gguf_dir), ("gguf_q8", gguf_q8_dir))})
        for side, row in rows.items():
            row.update(side=side, label=labels[side], weights=weights[side], mib=weight_mib(dirs[side]),
                       ppl=ppl[side], batches={})
        rows["engine_int8"]["ppl_change"] = ppl["engine_int8"] / fp32 - 1
        rows["ct2_int8"]["ppl_change"] = ppl["ct2_int8"] / ppl["ct2"] - 1
        rows["onnx_int8"]["ppl_change"] = ppl["onnx_int8"] / ppl["onnx"] - 1
        if llama:
            rows["gguf_q8"]["ppl_change"] = ppl["gguf_q8"] / ppl["gguf"] - 1
        params_greedy = SamplingParams(max_new_tokens=N, temperature=0, ignore_eos=True)
        for B in batches:
            prompts = prompts_all[:B]
            ids = torch.tensor(prompts)

            def engine_side(side: str, B: int = B, prompts: list[list[int]] = prompts) -> Callable[[], Any]:
                return lambda: [c.token_ids for c in engines[side][B].generate(prompts, params_greedy)]

            sides = {
                "transformers": lambda ids=ids: hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                                            max_new_tokens=N, min_new_tokens=N)[:, P:].tolist(),
                "engine": engine_side("engine"),
                "generate": lambda ids=ids: generate(call_model, ids, N, temperature=0)[:, P:].tolist(),
                "engine_int8": engine_side("engine_int8"),
                "ct2": lambda prompts=prompts: ct2.generate(prompts, max_new_tokens=N, ignore_eos=True),
                "ct2_int8": lambda prompts=prompts: ct2_int8.generate(prompts, max_new_tokens=N, ignore_eos=True),
                "onnx": lambda prompts=prompts: onnx.generate(prompts, max_new_tokens=N, ignore_eos=True),
                "onnx_int8": lambda prompts=prompts: onnx_int8.generate(prompts, max_new_tokens=N, ignore_eos=True),
            }
            if llama:
                sides.update(gguf=lambda prompts=prompts: gguf.generate(prompts, N, ignore_eos=True),
                             gguf_q8=lambda prompts=prompts: gguf_q8.generate(prompts, N, ignore_eos=True))
            tokens, times = run_rounds(sides, plan.rounds)
            for side, out in tokens.items():
                new = sum(len(r) for r in out)
                if new != B * N:
                    print(f"  note: {side} gave {new} new tokens at batch {B}, expected {B * N}", flush=True)
                ratios = [h / t for h, t in zip(times["transformers"], times[side])]
                rows[side]["batches"][B] = {"tok_s": B * N / statistics.median(times[side]), **spread(ratios),
                                            "same_tokens": agreement(out, tokens["engine"]), "new_tokens": new}
            print(f"  batch {B}: " + ", ".join(f"{s} {r['batches'][B]['tok_s']:,.0f} tok/s "
                                               f"({r['batches'][B]['median']:.2f}x)" for s, r in rows.items()),
                  flush=True)
    return {"model": name, "dir": str(model_dir), "params_m": params, "vocab": cfg.vocab_size,
            "config": {k: getattr(cfg, k) for k in ("n_layer", "d_model", "n_head", "n_kv_head", "d_ff", "positions",
                                                    "tie_word_embeddings", "max_seq_len")},
            "ppl_tokens": len(windows) * (ctx - 1), "ppl_context": ctx, "llama_cpp": llama,
            "rows": list(rows.values())}


def bench_encoder(model_dir: Path, work: Path, plan: Plan, log: Path) -> dict[str, Any]:
    """Every classifying side of the encoder: its rows and what describes the model."""
    import duplexlm
    from duplexlm.data.tasks import load_task_data
    from duplexlm.export import export_model
    from duplexlm.infer.predict import classify
    from duplexlm.models import count_parameters

    work.mkdir(parents=True, exist_ok=True)
    test = load_task_data("classify", "reviews-zh", seed=1234).splits["test"][:plan.test_texts]
    texts, gold = [e.text for e in test], [e.label for e in test]
    timed_texts = texts[:plan.classify_texts]
    int8_dir, onnx_dir, onnx_int8_dir = (work / d for d in ("int8", "onnx", "onnx-int8"))
    duplex("quantize", "--model", str(model_dir), "--method", "int8", "--out", str(int8_dir), "--no-report",
           "--overwrite", log=log)
    export_model(model_dir, onnx_dir, "onnx", overwrite=True)
    export_model(model_dir, onnx_int8_dir, "onnx", quantize="int8", overwrite=True)
    sides = {"torch": (model_dir, "duplexlm (torch) fp32"), "int8": (int8_dir, "duplexlm, `duplex quantize` int8"),
             "onnx": (onnx_dir, "ONNX Runtime fp32"), "onnx_int8": (onnx_int8_dir, "ONNX Runtime int8")}
    models, rows = {}, {}
    for side, (path, label) in sides.items():
        (models[side], tok), load_s = timed(lambda path=path: duplexlm.load(path))
        rows[side] = {"side": side, "label": label, "load_s": load_s, "mib": weight_mib(path)}
    name = f"BERT shape {models['torch'].config.n_layer}×{models['torch'].config.d_model}"
    params = count_parameters(models["torch"]) / 1e6
    print(f"\n== {name} classifier ({params:.1f} M) from {model_dir}", flush=True)
    with torch.no_grad():
        for side, model in models.items():  # every test text, once: the accuracy (and a warm-up)
            preds = classify(model, tok, texts, batch_size=32)
            rows[side]["accuracy"] = sum(p["label"] == g for p, g in zip(preds, gold)) / len(gold)
        _, times = run_rounds({side: (lambda m=m: classify(m, tok, timed_texts, batch_size=32))
                               for side, m in models.items()}, plan.rounds)
    for side, row in rows.items():
        ratios = [t / s for t, s in zip(times["torch"], times[side])]
        row.update(examples_s=len(timed_texts) / statistics.median(times[side]), **spread(ratios),
                   accuracy_change=row["accuracy"] - rows["torch"]["accuracy"])
    print("  " + ", ".join(f"{s} {r['examples_s']:,.0f} examples/s ({r['median']:.2f}x), accuracy "
                           f"{r['accuracy']:.4f}" for s, r in rows.items()), flush=True)
    return {"model": name, "dir": str(model_dir), "params_m": params, "test_texts": len(texts),
            "timed_texts": len(timed_texts), "rows": list(rows.values())}


# ----------------------------------------------------------------------------------------------------
# The report


def ratio_cell(r: dict[str, float], side: str, base: str) -> str:
    return "1.00x" if side == base else f"**{r['median']:.2f}x** [{r['lo']:.2f}–{r['hi']:.2f}]"


def decoder_table(d: dict[str, Any], batches: tuple[int, ...]) -> list[str]:
    head = "| side | weights | " + " | ".join(f"batch {B} tok/s | batch {B} × transformers" for B in batches)
    head += " | load (s) | weights (MiB) | same tokens as our fp32 engine | perplexity |"
    lines = [f"**{d['model']}**, {d['params_m']:.1f} M parameters, vocabulary {d['vocab']:,}; perplexity on "
             f"{d['ppl_tokens']:,} held-out tokens (windows of {d['ppl_context']}).", "", head,
             "|---" * (6 + 2 * len(batches)) + "|"]
    for r in d["rows"]:
        cells = [r["label"], r["weights"]]
        for B in batches:
            b = r["batches"][B]
            cells += [f"{b['tok_s']:,.0f}", ratio_cell(b, r["side"], "transformers")]
        same = " / ".join(f"{r['batches'][B]['same_tokens']:.0%}" for B in batches)
        ppl = f"{r['ppl']:.2f}" + (f" ({r['ppl_change']:+.2%})" if "ppl_change" in r else "")
        cells += [f"{r['load_s']:.2f}", f"{r['mib']:.1f}", same, ppl]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def encoder_table(e: dict[str, Any]) -> list[str]:
    lines = [f"**{e['model']} sentiment classifier**, {e['params_m']:.1f} M parameters; accuracy on the "
             f"{e['test_texts']:,} test texts of `reviews-zh` (split seed 1234), speed on the first "
             f"{e['timed_texts']:,} of them, batches of 32 (`classify`).", "",
             "| side | examples/s | × torch fp32 | load (s) | weights (MiB) | test accuracy |", "|---|---|---|---|---|---|"]
    for r in e["rows"]:
        acc = f"{r['accuracy']:.4f}" + (f" ({100 * r['accuracy_change']:+.2f} points)" if r["side"] != "torch" else "")
        lines.append(f"| {r['label']} | {r['examples_s']:,.0f} | {ratio_cell(r, r['side'], 'torch')} | "
                     f"{r['load_s']:.2f} | {r['mib']:.1f} | {acc} |")
    return [*lines, ""]


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def goals(decoders: list[dict[str, Any]], encoder: dict[str, Any] | None) -> str:
    notes = []
    for d in decoders:
        rows = {r["side"]: r for r in d["rows"]}
        parts = []
        int8 = [s for s in ("engine_int8", "ct2_int8", "onnx_int8", "gguf_q8") if s in rows]
        if 1 in rows["engine"]["batches"]:
            best = max(int8, key=lambda s: rows[s]["batches"][1]["median"])
            b = rows[best]["batches"][1]
            parts.append(f"fastest int8 path at batch 1 {rows[best]['label']} {b['median']:.2f}x transformers "
                         f"(goal 5x: {met(b['median'] >= 5)}; perplexity {rows[best]['ppl_change']:+.2%}, "
                         f"same tokens {b['same_tokens']:.0%})")
        for B, goal in ((1, 1.5), (16, 2.0)):
            if B in rows["engine"]["batches"]:
                x = rows["engine"]["batches"][B]["median"]
                parts.append(f"our engine fp32 at batch {B} {x:.2f}x (goal {goal:g}x: {met(x >= goal)})")
        changes = [f"{rows[s]['label']} {rows[s]['ppl_change']:+.2%}" for s in int8]
        ok = all(abs(rows[s]["ppl_change"]) <= 0.02 for s in int8)
        parts.append(f"int8 perplexity within 2%: {met(ok)} ({', '.join(changes)})")
        notes.append(f"{d['model']}: " + "; ".join(parts) + ".")
    if encoder is not None:
        rows = {r["side"]: r for r in encoder["rows"]}
        changes = [f"{rows[s]['label']} {100 * rows[s]['accuracy_change']:+.2f}" for s in ("int8", "onnx_int8")]
        ok = all(rows[s]["accuracy_change"] >= -0.01 for s in ("int8", "onnx_int8"))
        notes.append(f"Encoder: int8 accuracy within 1 point of fp32: {met(ok)} ({', '.join(changes)} points).")
    return "Against the goals: " + " ".join(notes)


def report(args: argparse.Namespace, plan: Plan, trained: dict[str, Any], decoders: list[dict[str, Any]],
           encoder: dict[str, Any] | None, load: float, minutes: float) -> str:
    import ctranslate2
    import onnxruntime
    import transformers

    cmd = ("python benchmarks/bench_deploy.py " + " ".join(sys.argv[1:])).strip()
    lines = [HEADING, "",
             f"Machine: {machine(torch.device('cpu'))}, transformers {transformers.__version__}, CTranslate2 "
             f"{ctranslate2.__version__}, onnxruntime {onnxruntime.__version__}; load average {load:.1f} at the start, "
             f"{minutes:.1f} minutes in all. Command: `{cmd}`.", ""]
    dec = trained.get("decoders")
    if dec:
        c = dec[0]["corpus"]
        lines.append(
            f"Trained here with the CLI (commands in `{args.out}/commands.log`): a byte-level BPE of {plan.vocab:,} "
            f"(`duplex tokenizer train`) and shards (`duplex data prepare`, {c['train_tokens']:,} training tokens) of "
            f"{c['lines']:,} People's Daily lines, its last {c['held_out_lines']:,} held out (the prompts and the "
            f"perplexity text); then " + "; ".join(
                f"`{d['command']}` ({d['steps']} steps, {(d['tokens'] or 0) / 1e6:.2f} M tokens, "
                f"{d['seconds'] / 60:.1f} min, validation loss "
                f"{d['val_loss'] if d['val_loss'] is None else round(d['val_loss'], 3)})" for d in dec) + ".")
    else:
        lines.append("Decoders given with `--decoder`; prompts and perplexity from the last 5% of People's Daily's "
                     "lines (held out only if the decoders were trained without them).")
    enc = trained.get("encoder")
    if enc:
        lines.append(f"The encoder: a WordPiece of {plan.enc_vocab:,} on the training split's texts, then "
                     f"`{enc['command']}` ({enc['seconds'] / 60:.1f} min).")
    lines += ["",
              f"Decoders: prompts of {plan.prompt_len} tokens (held-out lines), {plan.new} new tokens per row, greedy, "
              "end-of-text ignored, prefill included (tok/s = new tokens over wall time); transformers' "
              "`generate(do_sample=False)` on the `convert_to_hf` form is the baseline; our `Engine` is built once "
              "per batch size, `generate()` is the one-call API (it packs the weights on each call); int8: our "
              "weight-only int8 (`duplex quantize --method int8`) through the same engine, and CTranslate2's own "
              "(`export_model(..., 'ct2', quantize='int8')`, compute type int8); ONNX Runtime: the decoder's ONNX export "
              "with its KV cache (`export_model(..., 'onnx')`, run by `duplexlm.export.onnx.ONNXDecoder`), int8 its "
              "dynamic quantisation; llama.cpp: the GGUF export (f32, Q8_0) run by llama-cpp-python "
              f"{llama_version()}, one prompt after another (its high-level API decodes one sequence per call). "
              f"{plan.rounds} round(s) after a warm-up, "
              "the order of the sides reversed every other round; × transformers: its time over the side's per round, "
              "median [min–max]. Load: seconds from the directory to ready (an engine side includes building the "
              "engine; transformers loaded a second time, its imports done). Same tokens: the share of new tokens equal "
              "to our fp32 engine's, position by position, at each batch size. Perplexity from the logits (CTranslate2: "
              "`score_batch`; llama.cpp: its logits of each window), the int8 change against the same engine's fp32.", ""]
    for d in decoders:
        lines += decoder_table(d, plan.batches)
    if encoder is not None:
        lines += encoder_table(encoder)
    lines += [goals(decoders, encoder), ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoder", nargs="+", default=None, help="decoder model directories (default: train two)")
    p.add_argument("--encoder", default=None, help="a classifier encoder's model directory (default: train one)")
    p.add_argument("--no-encoder", action="store_true", help="decoders only")
    p.add_argument("--out", default="runs/bench-deploy", help="training runs, exports, commands.log, deploy.json")
    p.add_argument("--train-steps", type=int, default=None, help="pretraining steps per decoder (default 300)")
    p.add_argument("--encoder-steps", type=int, default=None, help="fine-tuning steps of the encoder (default 600)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="decoding batch sizes (default 1 16)")
    p.add_argument("--prompt-len", type=int, default=None)
    p.add_argument("--new", type=int, default=None, help="new tokens per row (default 128)")
    p.add_argument("--ppl-tokens", type=int, default=None, help="held-out tokens scored for perplexity (default 4096)")
    p.add_argument("--classify-texts", type=int, default=None, help="test texts per timed round (default 512)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads, also the engines' and training's")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, a few dozen steps, 1 round: checks it runs")
    p.add_argument("--write", default="docs/benchmarks.md", help="markdown file to update ('' to skip)")
    args = p.parse_args()
    start = time.perf_counter()
    load = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = SMOKE if args.smoke else FULL
    overrides = {"steps": args.train_steps, "enc_steps": args.encoder_steps, "prompt_len": args.prompt_len,
                 "new": args.new, "ppl_tokens": args.ppl_tokens, "classify_texts": args.classify_texts,
                 "rounds": args.rounds, "batches": tuple(args.batches) if args.batches else None}
    plan = replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    trained: dict[str, Any] = {}
    if args.decoder:
        decoder_dirs = [Path(d) for d in args.decoder]
    else:
        trained["decoders"] = train_decoders(out, plan, log, args.threads)
        decoder_dirs = [d["model"] for d in trained["decoders"]]
    encoder_dir = None
    if args.encoder:
        encoder_dir = Path(args.encoder)
    elif not args.no_encoder:
        trained["encoder"] = train_encoder(out, plan, log, args.threads)
        encoder_dir = trained["encoder"]["model"]

    _, held = people_daily(plan.corpus_lines)
    decoders = [bench_decoder(d, out / "deploy" / f"decoder{i}-{d.parent.name}", plan, held, log)
                for i, d in enumerate(decoder_dirs)]
    encoder = bench_encoder(encoder_dir, out / "deploy" / "encoder", plan, log) if encoder_dir else None

    minutes = (time.perf_counter() - start) / 60
    text = report(args, plan, trained, decoders, encoder, load, minutes)
    print("\n" + text)
    result = {"command": "python benchmarks/bench_deploy.py " + " ".join(sys.argv[1:]),
              "machine": machine(torch.device("cpu")), "load_average": load, "minutes": minutes,
              "plan": asdict(plan), "trained": trained, "decoders": decoders, "encoder": encoder}
    (out / "deploy.json").write_text(json.dumps(result, indent=1, default=str, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    if args.write:
        write_section(Path(args.write), HEADING, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
