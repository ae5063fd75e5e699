"""Throughput and latency of `duplex serve` under concurrent clients, against one client at a time.

A GPT-2-shaped decoder (13.8 M parameters: 6 layers of width 384, 6 heads, vocabulary 8000, the demo's
shape, random weights) with a byte-level BPE tokenizer trained on the built-in reviews is saved to a
temporary directory and served by a real `duplex serve` process on loopback. Clients stream
completions (``stream: true``) of ``--new`` tokens each (end-of-text ignored, so every request runs the
full length) from prompts of about 32 tokens; each of ``c`` concurrent clients sends ``--requests``
requests one after another. Per concurrency: generated tokens/s over the wall time, time to first
token (TTFT) and request latency at p50 and p95, and the throughput against one client at a time
(c = 1, measured in the same rounds). Rounds cycle through the concurrencies so every level sees the
same machine noise; the figures are medians over rounds. Writes a section of docs/benchmarks.md.

    python benchmarks/bench_serve.py                    # c = 1, 4, 16
    python benchmarks/bench_serve.py --rounds 3 --new 64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import machine, write_section
from duplexlm.config import DecoderConfig
from duplexlm.io import save_model
from duplexlm.models import build_model, count_parameters

SHAPE = dict(vocab_size=8000, max_seq_len=256, d_model=384, n_layer=6, n_head=6)


def build(path: Path) -> None:
    from duplexlm.data.corpus import iter_documents
    from duplexlm.tokenizer import train_tokenizer

    texts = [d.text for _, d in zip(range(4000), iter_documents(["reviews-zh"]))]
    tokenizer = train_tokenizer(texts, "bpe", vocab_size=SHAPE["vocab_size"], num_sentinels=0)
    torch.manual_seed(0)
    model = build_model(DecoderConfig(**{**SHAPE, "vocab_size": tokenizer.vocab_size}, dropout=0.0, attn_dropout=0.0,
                                      eos_token_id=tokenizer.eos_token_id))
    save_model(model, path, tokenizer=tokenizer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(model_dir: Path, max_batch: int, threads: int | None):
    port = free_port()
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from duplexlm.cli import main; sys.exit(main())",
                             "serve", "--model", str(model_dir), "--port", str(port), "--log-level", "warning",
                             "--max-batch-size", str(max_batch), "--max-queue", "256"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def one_request(http: httpx.AsyncClient, url: str, body: dict) -> tuple[float, float, int]:
    """(time to first token, latency, tokens) of one streamed completion."""
    start = time.perf_counter()
    first = None
    async with http.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():  # the clients share the server's cores: parse each event once
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if not event["choices"]:
                tokens = event["usage"]["completion_tokens"]
            elif first is None and event["choices"][0]["text"]:
                first = time.perf_counter() - start
    latency = time.perf_counter() - start
    return first if first is not None else latency, latency, tokens


async def level(url: str, name: str, clients: int, requests: int, new: int) -> dict:
    prompts = ["这家酒店的位置很好，房间也很干净，服务员非常热情，早餐的种类很多，下次还会再来。",
               "手机的屏幕很清晰，电池也耐用，但是拍照的效果一般，价格有点贵。"]
    limits = httpx.Limits(max_connections=clients + 4)
    results: list[tuple[float, float, int]] = []
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        async def client(c: int) -> None:
            for k in range(requests):
                body = {"model": name, "prompt": prompts[(c + k) % 2], "max_tokens": new, "temperature": 0,
                        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
                results.append(await one_request(http, url, body))

        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    lat = sorted(r[1] for r in results)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]

    return {"tok_s": sum(r[2] for r in results) / wall, "ttft50": pct(ttft, 0.5), "ttft95": pct(ttft, 0.95),
            "lat50": pct(lat, 0.5), "lat95": pct(lat, 0.95), "n": len(results)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=4, help="requests per client per round")
    p.add_argument("--new", type=int, default=64, help="tokens per request")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: torch's)")
    p.add_argument("--write", default="docs/benchmarks.md", help="markdown file to update ('' to skip)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "gpt2-13m"
        build(model_dir)
        n_params = count_parameters(build_model(DecoderConfig(**SHAPE)))
        per: dict[int, list[dict]] = {c: [] for c in args.clients}
        with server(model_dir, max(args.clients), args.threads) as url:
            asyncio.run(level(url, model_dir.name, 2, 1, 8))  # warm-up
            for r in range(args.rounds):
                for c in args.clients:
                    res = asyncio.run(level(url, model_dir.name, c, args.requests, args.new))
                    per[c].append(res)
                    print(f"round {r + 1} clients {c:>2}: {res['tok_s']:7.1f} tok/s  TTFT p50 {res['ttft50'] * 1e3:6.0f} ms "
                          f"p95 {res['ttft95'] * 1e3:6.0f} ms  latency p50 {res['lat50']:.2f} s p95 {res['lat95']:.2f} s",
                          flush=True)
    med = {c: {k: statistics.median(x[k] for x in per[c]) for k in per[c][0]} for c in args.clients}
    base = med[min(args.clients)]["tok_s"]
    threads = args.threads or torch.get_num_threads()
    cmd = "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:])
    heading = "### Server throughput, GPT-2 shape 13.8 M on CPU"
    lines = [
        heading, "",
        f"Machine: {machine(torch.device('cpu'))}; the server ran with {threads} torch threads and the clients "
        f"in the same machine. `duplex serve --max-batch-size {max(args.clients)}` on a {n_params / 1e6:.1f} M "
        f"parameter GPT-2-shaped decoder (random weights); each client streams {args.requests} completions of "
        f"{args.new} tokens one after another (prompts of about 32 tokens, end-of-text ignored); medians of "
        f"{args.rounds} rounds that cycle through the concurrencies. Command: `{cmd.strip()}`.", "",
        "| concurrent clients | requests | tokens/s | × one client | TTFT p50 | TTFT p95 | latency p50 | latency p95 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in args.clients:
        m = med[c]
        lines.append(f"| {c} | {int(m['n'])} | {m['tok_s']:,.0f} | **{m['tok_s'] / base:.2f}x** | "
                     f"{m['ttft50'] * 1e3:,.0f} ms | {m['ttft95'] * 1e3:,.0f} ms | {m['lat50']:.2f} s | {m['lat95']:.2f} s |")
    top = max(args.clients)
    ratio = med[top]["tok_s"] / base
    lines += ["", f"Against the goal (16 clients ≥ 6x the tokens/s of one): {top} clients give {ratio:.2f}x — "
                  f"{'met' if ratio >= 6 else 'not met'}.", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(Path(args.write), heading, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
