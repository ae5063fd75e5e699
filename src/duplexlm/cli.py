"""duplex: build Transformer language models from scratch and run the whole loop.

    duplex presets                     list the model presets with their parameter counts
    duplex info PATH                   describe a model directory (ours or Hugging Face)
    duplex convert --to-hf SRC DST     duplexlm directory → Hugging Face directory
    duplex convert --from-hf SRC DST   Hugging Face directory → duplexlm directory
    duplex convert --to-peft --base BASE ADAPTER DST   a LoRA adapter → PEFT (for the Hugging Face form of BASE)
    duplex export CHECKPOINT OUT [--overwrite]   a training checkpoint (out_dir/checkpoints/step_N) → a model directory
    duplex export --format ct2|onnx|gguf MODEL OUT [--quantize int8]   a model or checkpoint → an engine's directory
    duplex quantize --model DIR --method int8|int4 --out DIR [--embeddings]   weight-only quantisation
    duplex prune --model DIR --sparsity S --method magnitude|heads|neurons --out DIR [--recover key=value ...]
                                                                pruning (heads/neurons: a smaller model), recovery
    duplex tokenizer train SOURCES --kind bpe|wordpiece --vocab-size N --out DIR
    duplex data prepare SOURCES --tokenizer DIR --out DIR     text → cleaned, deduplicated token shards
    duplex pretrain [CONFIG.yaml] [key=value ...] [--resume | --overwrite]  causal LM, masked LM or span
    duplex finetune [CONFIG.yaml] task=classify|regress|tag data.train=... [init_from=DIR] [method=lora]
    duplex finetune task=multi tasks.NAME.task=... tasks.NAME.train=... ...   several heads, one encoder
    duplex finetune task=sft|seq2seq|dpo|grpo data.train=zh-tasks|zh-prefs|arithmetic|FILE.jsonl ...
                                                                instruction tuning, seq2seq, DPO, GRPO
    duplex distill --teacher DIR --student DIR|PRESET|FILE --task classify|clm [key=value ...]   knowledge
                                                                distillation: the teacher's logits as a second target
    duplex eval --model DIR --data NAME_OR_FILE [--split S] [--out DIR]   task metrics, or perplexity and
                                                                bits per byte for a language model
    duplex classify --model DIR --text ... | --file F [--json]   labels with probabilities
    duplex tag --model DIR --text ...                             entities (BIO taggers)
    duplex attention --model DIR --text ... --out x.png [--layer L] [--head H]   attention heat map
    duplex generate --model DIR --prompt ... [--stream] [--temperature T --top-p P --seed S --stop STR]
    duplex chat --model DIR [--system TEXT]   multi-turn chat in the terminal, streamed
    duplex fill-mask --model DIR --text ...   the likeliest tokens for each [MASK]
    duplex embed --model DIR --text ... | --file F   mean-pooled, L2-normalised embeddings as JSON
    duplex serve --model DIR [--port 8000] [--api-key KEY]   OpenAI-compatible HTTP server and web page
    duplex demo [--quick] [--scale S] [--only encoder|decoder]     the main job: does pretraining pay?
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import ConfigError, DuplexError
from .units import format_count


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an exception so that every ``finally`` and atomic write cleans up as it
    does for Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _exit_status(result: dict) -> int:
    """0, or for a run stopped by a signal the shell's convention: 128 + its number (130 for Ctrl-C, 143
    for SIGTERM); the training commands return the signal as ``result["interrupted"]``."""
    return 128 + int(result["interrupted"]) if result.get("interrupted") else 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the flag (argparse prints the whole usage otherwise)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, found {value}")
        return value

    return parse


def _fraction(low_open: bool, high_open: bool) -> Callable[[str], float]:
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {lo}0, 1{hi}, found {text!r}") from None
        if not (value > 0 if low_open else value >= 0) or not (value < 1 if high_open else value <= 1):
            raise argparse.ArgumentTypeError(f"expected a number in {lo}0, 1{hi}, found {value}")
        return value

    return parse


def _param_count(name: str) -> int:
    from .models import build_model, count_parameters
    from .presets import get_preset

    with torch.device("meta"):  # count without allocating: the large presets need gigabytes
        return count_parameters(build_model(get_preset(name)))


def cmd_presets(args: argparse.Namespace) -> int:
    """List the model presets with their family, shape and parameter count."""
    from .presets import PRESETS

    print(f"{'preset':<20}{'family':<10}{'layers':>7}{'width':>7}{'heads':>7}{'params':>10}")
    for name, fn in PRESETS.items():
        c = fn()
        heads = getattr(c, "n_head", "-")
        width = getattr(c, "d_model", getattr(c, "d_hidden", "-"))
        print(f"{name:<20}{c.family:<10}{c.n_layer:>7}{width:>7}{heads!s:>7}{format_count(_param_count(name), digits=1):>10}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a model directory: family, config and parameter count."""
    from .compress import quant_modules, quantized_parameters
    from .io import load
    from .models import count_parameters

    model, tok = load(args.path)
    c = model.config
    quantized = quantized_parameters(model)  # integer weights are buffers, not parameters
    print(f"{args.path}: {c.family} ({type(model).__name__}), {format_count(count_parameters(model) + quantized, digits=1)} "
          f"parameters, tokenizer: {'yes, vocab ' + str(tok.vocab_size) if tok else 'none'}")
    if quantized:
        q = next(iter(quant_modules(model).values()))
        print(f"  quantised: {format_count(quantized, digits=1)} weights in {len(quant_modules(model))} Linears as int{q.bits}")
    for k, v in c.to_dict().items():
        print(f"  {k:<24}{v}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert between duplexlm and Hugging Face model directories (weights and tokenizer)."""
    from .io import convert_from_hf, convert_to_hf

    if args.to_peft:
        from .io import convert_adapter_to_peft

        if not args.base:
            raise ConfigError("--base: --to-peft needs the base model the adapter was trained on (init_from)")
        hf = convert_adapter_to_peft(args.base, args.src, args.dst, overwrite=args.overwrite)
        print(f"wrote {args.dst}: PEFT LoRA adapter for Hugging Face {hf['architectures'][0]} "
              f"(load it onto `duplex convert --to-hf {args.base}`)")
    elif args.to_hf:
        hf = convert_to_hf(args.src, args.dst, overwrite=args.overwrite)
        print(f"wrote {args.dst}: Hugging Face {hf['architectures'][0]} (model_type {hf['model_type']})")
    else:
        cfg = convert_from_hf(args.src, args.dst, overwrite=args.overwrite)
        print(f"wrote {args.dst}: duplexlm {cfg.family} (head {cfg.head})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a training checkpoint (out_dir/checkpoints/step_N) as a model directory, as the run's out_dir/model
    (config, weights with a LoRA run's adapters merged, tokenizer), after checking it against its manifest;
    with --format, a model directory or checkpoint as a directory an inference engine loads."""
    from .export import export_model
    from .io import export_checkpoint

    if args.format != "model":
        print(export_model(args.checkpoint, args.out, args.format, args.quantize, args.overwrite).summary())
        return 0
    if args.quantize:
        raise ConfigError("--quantize: only with --format ct2|onnx|gguf (for our own int8, see duplex quantize)")
    cfg = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: duplexlm {cfg.family} (head {getattr(cfg, 'head', 'none')}) from {args.checkpoint}")
    return 0


def _compression_report(models: list[tuple[str | Path, str]], out_dir: str | Path, args: argparse.Namespace,
                        data: str | None = None, split: str | None = None) -> None:
    """The report row of each model (parameters, file size, CPU latency and throughput, quality on the
    held-out ``data`` when given), measured side by side, printed and written to ``out_dir``."""
    if not getattr(args, "report", True):
        return
    from .compress import compare, measure_many, write_report

    data = data if data is not None else getattr(args, "data", None)
    split = split if split is not None else getattr(args, "split", None)
    print("measuring: " + ", ".join(name for _, name in models)
          + (f" on {data}" + (f" ({split})" if split else "") if data else " (no --data: size and speed only)"))
    rows = measure_many(models, data=data, split=split, device="cpu")
    for line in compare(rows):
        print(line)
    _, md = write_report(out_dir, rows, command=getattr(args, "argv", None))
    print(f"report: {md}")


def cmd_quantize(args: argparse.Namespace) -> int:
    """Quantise a model's Linear weights (int8 or int4, weight-only) into a new model directory, then
    compare it with the original (--data: quality on held-out data too)."""
    from .compress import quantize

    report = quantize(args.model, args.out, method=args.method, group_size=args.group_size,
                      overwrite=args.overwrite, embeddings=args.embeddings)
    print(report.summary())
    _compression_report([(args.model, "original"), (args.out, args.method)], args.out, args)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune a model: unstructured magnitude pruning, or structured pruning of attention heads and
    feed-forward neurons (a smaller model), optionally followed by a recovery fine-tune (--recover
    key=value ...: the settings of `duplex finetune`, init_from the pruned model); then compare."""
    from .compress import prune

    texts = _text_lines(args.calibration_file, "--calibration-file") if args.calibration_file else None
    if texts == []:
        raise ConfigError(f"--calibration-file: {args.calibration_file} holds no text; expected one text per line")
    if not args.recover:
        report = prune(args.model, args.out, args.method, args.sparsity, importance=args.importance,
                       overwrite=args.overwrite, texts=texts)
        print(report)
        _compression_report([(args.model, "original"), (args.out, "pruned")], args.out, args)
        return 0
    from .train.recover import prune_and_recover

    done = prune_and_recover(args.model, args.out, args.method, args.sparsity, args.recover, run_dir=args.run_dir,
                             importance=args.importance, overwrite=args.overwrite, texts=texts, on_pruned=print)
    if done.result.get("interrupted"):
        return _exit_status(done.result)
    print(f"recovered: step {done.result['step']}; model in {args.out} (run in {done.run_dir})")
    data, split = (args.data, args.split) if args.data is not None else done.config.held_out()
    _compression_report([(args.model, "original"), (done.pruned, "pruned"), (args.out, "pruned + recovery")],
                        args.out, args, data=data, split=split)
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    """Train a byte-level BPE (GPT-style) or WordPiece (BERT-style) tokenizer on a corpus, with the
    special tokens of every family; reports characters per token on held-out documents."""
    from .data import iter_documents
    from .data.clean import clean_text, nfkc_for
    from .fileutil import check_output_dir
    from .tokenizer import save_tokenizer, train_tokenizer

    check_output_dir(args.out, "tokenizer", overwrite=args.overwrite)  # before the work, not after
    held_out: list[str] = []

    def texts():
        docs = zip(range(args.max_docs or sys.maxsize), iter_documents(  # the first --max-docs documents
            args.sources, text_field=args.text_field, doc_format=args.doc_format, on_error=args.on_error))
        nfkc = nfkc_for(args.kind)  # byte-level BPE learns full-width ，and １ as they come
        for i, text in enumerate(t for _, doc in docs if (t := clean_text(doc.text, nfkc=nfkc))):
            if i % 50:
                yield text
            elif len(held_out) < 2000:  # every 50th text from the first is held out, as the demo's; 2,000 measured
                held_out.append(text)

    tok = train_tokenizer(texts(), args.kind, args.vocab_size, args.min_frequency, args.lowercase, args.num_sentinels,
                          not args.quiet, limit_alphabet=args.limit_alphabet, cjk_chars=args.cjk_chars,
                          flags=True)
    save_tokenizer(tok, args.out, overwrite=args.overwrite)
    cpt = tok.chars_per_token(held_out) if held_out else float("nan")
    print(f"wrote {args.out}: {args.kind}, vocabulary {tok.vocab_size}; {cpt:.2f} characters per token on "
          f"{len(held_out)} held-out documents")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Clean, de-duplicate, split and tokenize a corpus into memory-mapped token shards + meta.json."""
    from .data import prepare

    meta = prepare(args.sources, args.out, args.tokenizer, text_field=args.text_field, doc_format=args.doc_format,
                   val_fraction=args.val_fraction, seed=args.seed, near_dedup=args.near_dedup,
                   near_dedup_threshold=args.near_dedup_threshold, on_error=args.on_error, workers=args.workers,
                   word_boundaries=args.word_boundaries, progress=not args.quiet, overwrite=args.overwrite)
    sp, cl = meta["splits"], meta["cleaning"]
    skipped = sum(sum(s.get("skipped", {}).values()) for s in meta.get("sources", []))
    print(f"wrote {args.out}: train {sp['train']['tokens']:,} tokens / {sp['train']['documents']:,} documents, "
          f"val {sp['val']['tokens']:,} tokens / {sp['val']['documents']:,} documents; removed "
          f"{cl['exact_duplicates_removed']:,} exact and {cl['near_duplicates_removed']:,} near duplicates, "
          f"{cl['empty_removed']:,} empty; skipped {skipped:,} bad records")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain a model (clm: decoder, mlm or rtd: encoder, span: encoder-decoder) from a YAML config plus
    key=value overrides; --resume continues from the newest complete checkpoint."""
    from .train.loop import pretrain

    cfg = _train_config(args)
    if cfg.objective not in ("clm", "mlm", "span", "rtd"):
        raise ConfigError(f"objective: expected clm, mlm, span or rtd, found {cfg.objective!r} (tasks run with "
                          "`duplex finetune`)")
    result = pretrain(cfg, resume=args.resume, overwrite=args.overwrite)
    if result.get("interrupted"):
        return _exit_status(result)
    if "val_loss" in result and os.environ.get("RANK", "0") == "0":
        bpb = f", bits/byte {result['val_bpb']:.4f}" if "val_bpb" in result else ""
        print(f"done: step {result['step']}, val loss {result['val_loss']:.4f}, ppl {result['val_ppl']:.2f}{bpb}; "
              f"model in {cfg.out_dir}/model")
    return 0


def _shown_scores(result: dict) -> str:
    """The final validation, test and best scores a training command prints, as ``name value, ...``."""
    from .train.loop import SHOWN_METRICS

    return ", ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float)
                     and k.split("_", 1)[0] in ("val", "test", "best")
                     and k.split("_", 1)[1].split("_", 1)[-1] in SHOWN_METRICS)


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a model on a labelled task (classify, regress, tag, multi) or a generative one (sft:
    instruction tuning of a decoder on conversations; seq2seq: source → target pairs; dpo: preference pairs) from a YAML config
    plus key=value overrides: init_from=DIR (ours or Hugging Face) or model.preset + tokenizer=DIR,
    data.train=NAME_OR_FILE, method=full|freeze|lora; the best checkpoint on the validation metric is
    exported to out_dir/model."""
    from .train.loop import finetune

    cfg = _train_config(args, default_objective="classify")
    if cfg.objective not in ("classify", "regress", "tag", "multi", "sft", "seq2seq", "dpo", "grpo"):
        raise ConfigError(f"task: expected classify, regress, tag, multi, sft, seq2seq, dpo or grpo, found {cfg.objective!r} "
                          "(pretraining objectives run with `duplex pretrain`)")
    result = finetune(cfg, resume=args.resume, overwrite=args.overwrite)
    if result.get("interrupted"):
        return _exit_status(result)
    if os.environ.get("RANK", "0") == "0":
        scores = _shown_scores(result)
        print(f"done: step {result['step']}; {scores}; model in {cfg.out_dir}/model")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    """Knowledge distillation: train --student (a model directory, a preset or a file of model fields) on
    --task (classify: a labelled data.train; clm: data.path token shards) with the loss mixed with the
    --teacher's softened outputs (distill.temperature, distill.alpha; distill.hidden_weight matches hidden
    states); the best checkpoint is exported to out_dir/model, then teacher and student are compared."""
    from .train.distill import student_overrides
    from .train.loop import finetune, pretrain

    given = [*args.overrides, *([args.config] if args.config and "=" in args.config else [])]
    cfg = _train_config(args, base=student_overrides(args.student, args.teacher, args.task, given))
    result = (pretrain if args.task == "clm" else finetune)(cfg, resume=args.resume, overwrite=args.overwrite)
    if result.get("interrupted"):
        return _exit_status(result)
    if os.environ.get("RANK", "0") == "0":
        scores = _shown_scores(result)
        print(f"done: step {result['step']}; {scores}; student in {cfg.out_dir}/model")
        data, split = (args.data, args.split) if args.data is not None else cfg.held_out()
        _compression_report([(args.teacher, "teacher"), (Path(cfg.out_dir) / "model", "student")], cfg.out_dir,
                            args, data=data, split=split)
    return 0


def _distill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="the teacher's model directory (its tokenizer, its labels)")
    p.add_argument("--student", required=True,
                   help="a model directory to start from, a preset name (e.g. bert-tiny) or a YAML/JSON file of "
                        "model fields (d_model, n_layer, ...): trained from scratch with the teacher's tokenizer")
    p.add_argument("--task", required=True, choices=["classify", "clm"],
                   help="classify: a labelled task (data.train=reviews-zh or a file); clm: causal LM on data.path")
    _pretrain_args(p)
    _report_args(p)


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a model: a language model on text, token shards or a built-in corpus (perplexity and bits per
    byte; masked-token perplexity for an MLM encoder, span-corruption loss for T5), or a fine-tuned model
    on a labelled split (accuracy, per-class precision/recall/F1, confusion matrix; entity F1 for taggers;
    MSE/MAE/correlations for regressors); --out writes metrics.json, report.md (and predictions, plots)."""
    from .eval.evaluate import evaluate_model

    m = evaluate_model(args.model, args.data, split=args.split, out=args.out, text_field=args.text_field,
                       label_field=args.label_field, batch_size=args.batch_size, overwrite=args.overwrite,
                       context=args.context, stride=args.stride, max_tokens=args.max_tokens, seed=args.seed,
                       task=args.task, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                       limit=args.limit)
    if m["task"] in ("sft", "seq2seq"):
        scores = {k: v for k, v in m.items() if isinstance(v, float)}
        print(f"{m['task']} on {m['data']} ({m['split']}, {m['examples']} examples, generated): "
              + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()) + (f"; report in {args.out}" if args.out else ""))
        return 0
    if m["task"] == "lm":
        print(f"{m['objective']} on {m['data']} ({m['split']}, {m['tokens']} tokens): "
              + ", ".join(f"{k} {m[k]:.4f}" for k in ("loss", "perplexity", "bits_per_byte") if k in m)
              + (f"; report in {args.out}" if args.out else ""))
        return 0
    shown = ("accuracy", "macro_f1", "micro_f1", "precision", "recall", "f1", "mse", "mae", "pearson", "spearman")
    print(f"{m['task']} on {m['data']} ({m['split']}, {m['examples']} examples): "
          + ", ".join(f"{k} {m[k]:.4f}" for k in shown if k in m) + (f"; report in {args.out}" if args.out else ""))
    return 0


def _text_lines(file: str, flag: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped; a ``ConfigError`` naming ``flag`` otherwise."""
    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"{flag}: {path} is not a file")
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise ConfigError(f"{flag}: {path} is not UTF-8 text (byte {e.start})") from e


def _texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.text or [])
    if args.file:
        texts += _text_lines(args.file, "--file")
    if not texts:
        raise ConfigError("--text or --file: expected at least one text")
    return texts


def _loaded(model_dir: str):
    from .io import load

    model, tokenizer = load(model_dir)
    if tokenizer is None:
        raise ConfigError(f"--model: {model_dir} has no tokenizer.json")
    return model, tokenizer


def cmd_classify(args: argparse.Namespace) -> int:
    """Classify texts (--text, repeatable, or --file with one per line) with a fine-tuned classifier:
    the label and its probability (--json: every label's), batched."""
    import json

    from .infer.predict import classify

    texts = _texts(args)
    model, tokenizer = _loaded(args.model)
    for text, p in zip(texts, classify(model, tokenizer, texts, batch_size=args.batch_size, task=args.task)):
        if args.json:
            print(json.dumps({"text": text, **p}, ensure_ascii=False))
        elif "values" in p:
            print(f"{', '.join(f'{v:.4f}' for v in p['values'])}\t{text}")
        else:
            print(f"{p['label']}\t{p['score']:.3f}\t{text}")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    """Tag texts with a fine-tuned tagger (e.g. named entities): the entities found, or with --json
    every word's tag."""
    import json

    from .infer.predict import tag

    texts = _texts(args)
    model, tokenizer = _loaded(args.model)
    for text, p in zip(texts, tag(model, tokenizer, texts, batch_size=args.batch_size, task=args.task)):
        if args.json:
            print(json.dumps({"text": text, **p}, ensure_ascii=False))
        else:
            found = "  ".join(f"{e['text']}/{e['type']}" for e in p["entities"]) or "(no entities)"
            print(f"{text}\n  {found}")
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    """Draw a model's attention on one text as a heat map PNG: self-attention (encoder, decoder), the
    decoder's cross-attention over the text (T5; --target is the decoder's text) or the attention
    pooling weights (RNN); --head picks one head, else the mean over heads."""
    from .infer.attention import attention_maps, plot_attention

    model, tokenizer = _loaded(args.model)
    maps = attention_maps(model, tokenizer, args.text, target=args.target)
    out = plot_attention(maps, args.out, layer=args.layer, head=args.head)
    print(f"{out}  ({maps.family}, {maps.kind}, {maps.n_layer} layers x {maps.n_head} heads, "
          f"{len(maps.tokens)} x {len(maps.key_tokens)} tokens)")
    return 0


def _sampling(args: argparse.Namespace, stop: tuple[str, ...] = (), stop_token_ids: tuple[int, ...] = ()):
    from .infer.engine import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          seed=args.seed, stop=tuple(args.stop or ()) + stop, stop_token_ids=stop_token_ids,
                          num_beams=getattr(args, "num_beams", 1))


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate text: a decoder continues each --prompt, an encoder-decoder (T5) answers it. Greedy at
    --temperature 0, else sampled (--top-k, --top-p, --min-p, reproducible with --seed); --stream prints
    the text as it comes; --json prints token ids and the finish reason too."""
    import json

    from .infer.engine import Engine

    model, tokenizer = _loaded(args.model)
    params = _sampling(args)
    if args.stream and (len(args.prompt) > 1 or args.json or params.num_beams > 1):
        raise ConfigError("--stream: prints one --prompt's text as it comes; not with several prompts, "
                          "--json or --num-beams")
    engine = Engine(model, tokenizer, max_batch_size=len(args.prompt) * params.num_beams)
    if args.stream:
        for piece in engine.stream(args.prompt[0], params):
            print(piece, end="", flush=True)
        print()
        return 0
    for prompt, c in zip(args.prompt, engine.generate(args.prompt, params)):
        if args.json:
            print(json.dumps({"prompt": prompt, "text": c.text, "token_ids": c.token_ids,
                              "finish_reason": c.finish_reason}, ensure_ascii=False))
        else:
            print(c.text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Chat with a decoder in the terminal, one line per turn, the answer streamed: the model's chat
    template when its tokenizer has one, else plain "User:"/"Assistant:" turns. /reset forgets the
    conversation, /exit (or end of input) leaves; the oldest turns are dropped when the context fills."""
    from .infer.chat import chat_prompt
    from .infer.engine import Engine

    model, tokenizer = _loaded(args.model)
    if model.config.family != "decoder":
        raise ConfigError(f"--model: chat needs a decoder, found a {model.config.family}")
    engine = Engine(model, tokenizer, max_batch_size=1)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, str]] = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            history = []
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        while True:  # drop the oldest turns until the prompt leaves room for the answer
            prompt = chat_prompt(tokenizer, system + history)
            ids = tokenizer.encode(prompt.text)
            if len(ids) + args.max_new_tokens <= engine.runner.context or len(history) == 1:
                break
            history = history[2:] if len(history) > 2 else history[-1:]
        if len(ids) >= engine.runner.context:
            print(f"duplex chat: this message ({len(ids)} tokens) does not fit the model's context of "
                  f"{engine.runner.context}", file=sys.stderr)
            history.pop()
            continue
        params = _sampling(args, stop=prompt.stop, stop_token_ids=prompt.stop_token_ids)
        answer = []
        for piece in engine.stream(ids, params):
            answer.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        history.append({"role": "assistant", "content": "".join(answer).strip()})


def cmd_fill_mask(args: argparse.Namespace) -> int:
    """Fill each mask token ([MASK]) of --text with a masked-LM encoder: the --top-k likeliest tokens
    with their probabilities (--json: one object per text)."""
    import json

    from .infer.fill_mask import fill_mask

    model, tokenizer = _loaded(args.model)
    mask = tokenizer.special_tokens.get("mask_token")
    filled_texts = [fill_mask(model, tokenizer, text, top_k=args.top_k) for text in args.text]  # all checked first
    for text, filled in zip(args.text, filled_texts):
        if args.json:
            print(json.dumps({"text": text, "masks": [[{"token": t, "score": round(p, 6)} for t, p in m]
                                                      for m in filled]}, ensure_ascii=False))
            continue
        print(text)
        for i, m in enumerate(filled):
            print(f"  {mask} {i + 1}: " + "  ".join(f"{t} {p:.3f}" for t, p in m))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed texts (--text, repeatable, or --file with one per line): each the mean of the model's last
    hidden states over its tokens, L2-normalised, printed as one JSON object."""
    import json

    from .infer.embed import embed

    texts = _texts(args)
    model, tokenizer = _loaded(args.model)
    vectors = embed(model, tokenizer, texts, batch_size=args.batch_size)
    print(json.dumps({"model": str(args.model), "dim": vectors.shape[1],
                      "data": [{"index": i, "text": t, "embedding": [round(x, 7) for x in v.tolist()]}
                               for i, (t, v) in enumerate(zip(texts, vectors))]}, ensure_ascii=False))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a model over HTTP: OpenAI-compatible /v1/models, /v1/completions, /v1/chat/completions
    (streaming), /v1/embeddings, plus /v1/classify, /v1/attention, /health, /metrics and a web page at /.
    Listens on loopback unless --host says otherwise; --api-key (or DUPLEX_API_KEY) guards every route
    but /health and the page."""
    import os

    from .serve import ServerSettings, serve

    key = args.api_key or os.environ.get("DUPLEX_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and key is None:
        print(f"warning: listening on {args.host} without an API key: anyone who can reach it can use the model "
              "(set --api-key or DUPLEX_API_KEY)", file=sys.stderr)
    settings = ServerSettings(
        model_dir=args.model, model_name=args.model_name, api_key=key, cors_origins=tuple(args.cors_origin or ()),
        max_batch_size=args.max_batch_size, max_queue=args.max_queue, max_tokens=args.max_tokens,
        max_prompt_tokens=args.max_prompt_tokens, max_n=args.max_n, max_body_bytes=args.max_body_bytes,
        request_timeout=args.timeout, device=args.device, compile=args.compile,
        packed_weights=not args.plain_weights)
    print(f"duplex serve: http://{args.host}:{args.port}/  (model {args.model}; loading…)", file=sys.stderr, flush=True)
    serve(settings, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _train_config(args: argparse.Namespace, default_objective: str | None = None, base: list[str] | None = None):
    """The run's config from CONFIG.yaml and the key=value overrides; ``base``: overrides the command
    sets itself, which the user's own come after (and so win over)."""
    from .train.config import load_train_config

    config = args.config
    overrides = list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)  # no file given, only overrides
        config = None
    return load_train_config(config, [*(base or []), *overrides], default_objective=default_objective)


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: does pretraining pay? On real Chinese data, in one run: the encoder half (masked-LM
    pretraining; sentiment on reviews-zh against the same encoder from scratch, a BiGRU and TF-IDF; NER
    with a CRF against a BiLSTM-CRF and the dictionary; the model zoo) and the decoder half (causal-LM
    pretraining; instruction tuning on zh-tasks against the same decoder from scratch)."""
    from .demo import run_demo

    return run_demo(quick=args.quick, out_dir=Path(args.out), scale=args.scale, only=args.only)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="duplex", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]] = {
        "presets": (cmd_presets, lambda p: None),
        "info": (cmd_info, lambda p: p.add_argument("path", help="model directory")),
        "convert": (cmd_convert, _convert_args),
        "export": (cmd_export, _export_args),
        "quantize": (cmd_quantize, _quantize_args),
        "prune": (cmd_prune, _prune_args),
        "pretrain": (cmd_pretrain, _pretrain_args),
        "finetune": (cmd_finetune, _pretrain_args),
        "distill": (cmd_distill, _distill_args),
        "eval": (cmd_eval, _eval_args),
        "classify": (cmd_classify, _predict_args),
        "tag": (cmd_tag, _predict_args),
        "attention": (cmd_attention, _attention_args),
        "generate": (cmd_generate, _generate_args),
        "chat": (cmd_chat, _chat_args),
        "fill-mask": (cmd_fill_mask, _fill_mask_args),
        "embed": (cmd_embed, _embed_args),
        "serve": (cmd_serve, _serve_args),
        "demo": (cmd_demo, _demo_args),
    }
    groups = {
        "tokenizer": {"train": (cmd_tokenizer_train, _tokenizer_train_args)},
        "data": {"prepare": (cmd_data_prepare, _data_prepare_args)},
    }
    for name, (fn, add_args) in commands.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").splitlines()[0], description=fn.__doc__)
        add_args(p)
        p.set_defaults(func=fn)
    for group, actions in groups.items():
        g = sub.add_parser(group, help=f"{group} commands: {', '.join(actions)}")
        gsub = g.add_subparsers(dest="action", required=True)
        for name, (fn, add_args) in actions.items():
            p = gsub.add_parser(name, help=(fn.__doc__ or "").splitlines()[0], description=fn.__doc__)
            add_args(p)
            p.set_defaults(func=fn)
    return parser


def _corpus_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", help="text/JSONL files, directories, globs, or built-in corpora "
                                               "(peoples-daily, reviews-zh)")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (dotted paths allowed)")
    p.add_argument("--doc-format", default="line", choices=["line", "blank", "file"],
                   help=".txt documents: one per line, separated by blank lines, or one per file")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="bad input (non-UTF-8, bad JSON, missing field): stop with an error, or skip and count")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _tokenizer_train_args(p: argparse.ArgumentParser) -> None:
    _corpus_args(p)
    p.add_argument("--kind", default="bpe", choices=["bpe", "wordpiece"])
    p.add_argument("--vocab-size", type=_int_at_least(1), default=8000)
    p.add_argument("--min-frequency", type=_int_at_least(1), default=2)
    p.add_argument("--lowercase", action="store_true")
    p.add_argument("--limit-alphabet", type=_int_at_least(1), help="wordpiece: only the N most frequent characters")
    p.add_argument("--cjk-chars", action="store_true",
                   help="bpe: one token per Chinese character, merges never cross one (wordpiece always splits them)")
    p.add_argument("--num-sentinels", type=_int_at_least(0), default=32, help="T5 sentinels <extra_id_N> (0: none)")
    p.add_argument("--max-docs", type=_int_at_least(0), default=0,
                   help="train on at most this many documents (0: all)")
    p.add_argument("--out", required=True, help="output directory (tokenizer.json + tokenizer_config.json)")
    _overwrite_arg(p)


def _data_prepare_args(p: argparse.ArgumentParser) -> None:
    _corpus_args(p)
    p.add_argument("--tokenizer", required=True, help="directory holding tokenizer.json")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    _overwrite_arg(p)
    p.add_argument("--val-fraction", type=_fraction(low_open=False, high_open=True), default=0.005)
    p.add_argument("--seed", type=_int_at_least(0), default=1234)
    p.add_argument("--near-dedup", action="store_true", help="also drop near duplicates (MinHash, Jaccard)")
    p.add_argument("--near-dedup-threshold", type=_fraction(low_open=True, high_open=False), default=0.8)
    p.add_argument("--workers", type=_int_at_least(1), default=None, help="tokenizer processes (default: up to 4)")
    p.add_argument("--word-boundaries", action="store_true",
                   help="also store word starts, for whole-word masking (Chinese: corpus segmentation or jieba)")


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None, help="YAML config (see examples/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-3 model.n_layer=2")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an out_dir that holds an earlier run (never one holding other files)")


def _convert_args(p: argparse.ArgumentParser) -> None:
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--to-hf", action="store_true", help="SRC is a duplexlm directory")
    way.add_argument("--from-hf", action="store_true", help="SRC is a Hugging Face directory")
    way.add_argument("--to-peft", action="store_true",
                     help="SRC is a LoRA adapter (a fine-tuning run's out_dir/adapter); writes it in PEFT's format "
                          "for the Hugging Face form of --base")
    p.add_argument("--base", default=None, help="with --to-peft: the base model directory the adapter was trained on")
    p.add_argument("src", help="source model directory")
    p.add_argument("dst", help="destination directory (new or empty; written atomically)")
    _overwrite_arg(p)


def _export_args(p: argparse.ArgumentParser) -> None:
    from .export import FORMATS

    p.add_argument("checkpoint", metavar="MODEL", help="a training checkpoint (out_dir/checkpoints/step_N); with "
                   "--format, a model directory too")
    p.add_argument("out", help="the directory to write (new or empty; written atomically)")
    p.add_argument("--format", default="model", choices=("model", *FORMATS),
                   help="model: a model directory of ours (default); ct2: CTranslate2 (decoders, T5); onnx: ONNX "
                   "Runtime (encoders with a classify or tag head, decoders with a KV cache); gguf: llama.cpp (decoders)")
    p.add_argument("--quantize", default=None, help="the engine's weight type: int8 (ct2, onnx), q8_0 or f16 "
                   "(gguf), other CTranslate2 types (default: float32)")
    _overwrite_arg(p)


def _quantize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the model directory to quantise (ours or Hugging Face)")
    p.add_argument("--method", required=True, metavar="{int8,int4}",
                   help="int8: one scale per output channel; int4: one scale per --group-size input columns")
    p.add_argument("--group-size", type=int, default=None,
                   help="int4 only: input columns per scale (default 128; a shorter last group where it does "
                        "not divide a layer's width)")
    p.add_argument("--embeddings", action="store_true",
                   help="also store the untied embedding tables as int8 (a scale per row): in a small model they "
                        "are a large share of the file (a table tied to the LM head stays full precision)")
    p.add_argument("--out", required=True, help="output model directory (new or empty; written atomically)")
    _report_args(p)
    _overwrite_arg(p)


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="held-out data to score before and after (a labelled file or built-in task such as reviews-zh; "
                        "for a language model text, token shards or peoples-daily), as `duplex eval --data` reads it")
    p.add_argument("--split", default=None, help="the split of --data to score (as `duplex eval --split`)")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="skip the comparison (parameters, file size, CPU latency and throughput, quality)")


def _prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the model directory to prune (ours or Hugging Face; not quantised)")
    p.add_argument("--sparsity", required=True, type=float,
                   help="the fraction removed: of each Linear's weights (magnitude), of each layer's key/value "
                        "head groups (heads) or feed-forward neurons (neurons); in [0, 1)")
    p.add_argument("--method", required=True, metavar="{magnitude,heads,neurons}",
                   help="magnitude: zero the smallest weights; heads / neurons (or both: heads,neurons): remove "
                        "them, making the model smaller")
    p.add_argument("--importance", default="weight", choices=["weight", "taylor"],
                   help="how heads and neurons are ranked: weight norms, or first-order Taylor |w·grad| on sample text")
    p.add_argument("--calibration-file", default=None,
                   help="texts (one per line) for --importance taylor and the logit comparison")
    p.add_argument("--out", required=True, help="output model directory (new or empty; written atomically)")
    p.add_argument("--recover", nargs="+", default=None, metavar="KEY=VALUE",
                   help="fine-tune the pruned model to recover: `duplex finetune` settings (task=classify "
                        "data.train=reviews-zh max_steps=300 ...); the recovered model is written to --out")
    p.add_argument("--run-dir", default=None, help="with --recover: the recovery run's directory (default OUT-recovery)")
    _report_args(p)
    _overwrite_arg(p)


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model directory written by `duplex pretrain` or `duplex finetune`")
    p.add_argument("--data", required=True,
                   help="a labelled file or built-in task (reviews-zh, peoples-daily-ner); for a language model a "
                        ".txt/.jsonl file, a `duplex data prepare` directory or a built-in corpus (peoples-daily); "
                        "for an instruction-tuned decoder or a seq2seq model conversations or pairs (zh-tasks, "
                        "cedict-en-zh, s2t, or a chat/Alpaca/source-target JSONL), answered by generation")
    p.add_argument("--split", default=None,
                   help="the split to score: test for tasks, val (held out) for token shards and built-in corpora "
                        "(default); a file is scored whole")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text")
    p.add_argument("--label-field", default="label")
    p.add_argument("--batch-size", type=_int_at_least(1), default=None,
                   help="examples per batch (default 32), or language-model windows (default 8)")
    p.add_argument("--context", type=_int_at_least(2), default=None,
                   help="language models: tokens per window (default: the model's max_seq_len, else 512)")
    p.add_argument("--stride", type=_int_at_least(1), default=None,
                   help="causal LMs: tokens between window starts (default context/2; = context: disjoint windows)")
    p.add_argument("--max-tokens", type=_int_at_least(0), default=0,
                   help="language models: score at most this many tokens (default 0: all)")
    p.add_argument("--seed", type=_int_at_least(0), default=1234,
                   help="built-in splits and MLM/T5 masks (1234: the split training uses, data.split_seed, and "
                        "`duplex data prepare`'s)")
    p.add_argument("--out", default=None, help="write metrics.json, report.md (predictions.jsonl, plots) here")
    p.add_argument("--task", help="a multi-task model's head to score (duplex info lists them)")
    p.add_argument("--max-new-tokens", type=_int_at_least(1), default=None,
                   help="generation: the longest answer (default: 64 tokens, for pairs twice the source plus 16)")
    p.add_argument("--num-beams", type=_int_at_least(1), default=1, help="generation: beam search width (1: greedy)")
    p.add_argument("--limit", type=_int_at_least(0), default=0, help="generation: score the first N examples (0: all)")
    _overwrite_arg(p)


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model directory written by `duplex finetune`")
    p.add_argument("--text", action="append", help="a text (repeat for several)")
    p.add_argument("--file", help="a UTF-8 file with one text per line")
    p.add_argument("--json", action="store_true", help="one JSON object per text, with every probability")
    p.add_argument("--batch-size", type=_int_at_least(1), default=32)
    p.add_argument("--task", help="a multi-task model's head to use (duplex info lists them)")


def _attention_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model directory with its tokenizer")
    p.add_argument("--text", required=True, help="the text to look at (T5: the source)")
    p.add_argument("--out", required=True, help="the PNG to write (atomically)")
    p.add_argument("--layer", type=int, default=-1, help="layer to draw; negative counts from the last (default -1)")
    p.add_argument("--head", type=int, default=None, help="head to draw (default: the mean over heads)")
    p.add_argument("--target", default=None,
                   help="T5 only: the decoder's text (default: the decoder start token alone)")


def _number_at_least(minimum: float, strict: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
        if not (value > minimum if strict else value >= minimum) or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a number {'>' if strict else '>='} {minimum:g}, found {text}")
        return value

    return parse


def _sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=_int_at_least(1), default=max_new_tokens)
    p.add_argument("--temperature", type=_number_at_least(0), default=0.8, help="0: greedy (default 0.8)")
    p.add_argument("--top-k", type=_int_at_least(0), default=0, help="keep the k likeliest tokens (0: all)")
    p.add_argument("--top-p", type=_fraction(low_open=True, high_open=False), default=0.95,
                   help="keep the smallest set of tokens whose probability reaches p (default 0.95)")
    p.add_argument("--min-p", type=_fraction(low_open=False, high_open=False), default=0.0,
                   help="drop tokens below min-p times the likeliest one's probability")
    p.add_argument("--repetition-penalty", type=_number_at_least(0, strict=True), default=1.0)
    p.add_argument("--seed", type=int, default=None, help="the same seed gives the same text")
    p.add_argument("--stop", action="append", help="stop before this text (repeat for several)")


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a decoder or encoder-decoder directory with its tokenizer")
    p.add_argument("--prompt", action="append", required=True, help="the text to continue (repeat for several)")
    p.add_argument("--stream", action="store_true", help="print the text as it is generated")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt (text, token ids, finish reason)")
    p.add_argument("--num-beams", type=_int_at_least(1), default=1, help="beam search with this many beams")
    _sampling_args(p, max_new_tokens=64)


def _chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a decoder directory with its tokenizer")
    p.add_argument("--system", default=None, help="a system message to start the conversation with")
    _sampling_args(p, max_new_tokens=256)


def _fill_mask_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a masked-LM encoder directory with its tokenizer")
    p.add_argument("--text", action="append", required=True, help="a text with [MASK] in it (repeat for several)")
    p.add_argument("--top-k", type=_int_at_least(1), default=5)
    p.add_argument("--json", action="store_true")


def _embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model directory with its tokenizer (any family)")
    p.add_argument("--text", action="append", help="a text (repeat for several)")
    p.add_argument("--file", help="a UTF-8 file with one text per line")
    p.add_argument("--batch-size", type=_int_at_least(1), default=32)


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model directory with its tokenizer (any family)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=_int_at_least(0), default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (also: DUPLEX_API_KEY)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the directory's name)")
    p.add_argument("--cors-origin", action="append", help="an origin allowed to call the API from a browser "
                                                          "(repeatable; no credentials)")
    p.add_argument("--max-batch-size", type=_int_at_least(1), default=16, help="sequences decoded together")
    p.add_argument("--max-queue", type=_int_at_least(0), default=64,
                   help="requests held beyond the running batch; more are refused with 429")
    p.add_argument("--max-tokens", type=_int_at_least(1), default=1024, help="the most tokens a request may ask for")
    p.add_argument("--max-prompt-tokens", type=_int_at_least(1), default=None,
                   help="the longest prompt accepted (default: what the context leaves room for)")
    p.add_argument("--max-n", type=_int_at_least(1), default=4, help="the most choices (n) per request")
    p.add_argument("--max-body-bytes", type=_int_at_least(1), default=1 << 20)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: as loaded)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoding step (GPUs)")
    p.add_argument("--plain-weights", action="store_true",
                   help="on a CPU, keep no oneDNN-packed copy of the Linear weights: less memory (one copy "
                        "of them instead of two), slower decoding of several rows at once")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def _overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier output of this command (never a directory holding other files)")


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="the same path on small slices, in about a minute (tests)")
    p.add_argument("--only", choices=["encoder", "decoder"], default=None,
                   help="run one half: the encoder (sentiment, NER, model zoo) or the decoder "
                        "(causal-LM pretraining, instruction tuning on zh-tasks)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every training run's steps by this (default 1); budgets are steps, not seconds, "
                        "so the same command gives the same numbers on a slow or a fast machine; the demo prints "
                        "its estimated time before it starts")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its model directories")


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    args.argv = ["duplex", *(sys.argv[1:] if argv is None else argv)]  # what reports record as the command
    name = "duplex " + args.command + (f" {args.action}" if getattr(args, "action", None) else "")
    start = time.perf_counter()
    # SIGTERM unwinds like Ctrl-C: temporary outputs are removed, worker processes stopped
    previous = signal.signal(signal.SIGTERM, _raise_terminated) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        code = args.func(args)
    except KeyboardInterrupt as e:
        if os.environ.get("DUPLEXLM_TRACEBACK"):
            raise
        terminated = isinstance(e, Terminated)
        print(f"\n{name}: {'terminated (SIGTERM)' if terminated else 'interrupted (Ctrl-C)'}; "
              "no partial output was kept", file=sys.stderr)
        code = 143 if terminated else 130
        from .tokenizer import NATIVE_WORK_ABANDONED

        if NATIVE_WORK_ABANDONED.is_set():
            # work abandoned in native code (the tokenizer trainer's threads) cannot be stopped, and
            # tearing the interpreter down around it aborts the process: all is cleaned up, so leave now
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except (DuplexError, OSError) as e:
        # A user's mistake (or the machine's: a full disk, a permission) gets one clear line; anything
        # else is a bug and keeps its traceback. DUPLEXLM_TRACEBACK=1 shows the full story.
        if os.environ.get("DUPLEXLM_TRACEBACK"):
            raise
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if args.command == "demo":
        print(f"done in {time.perf_counter() - start:.1f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
