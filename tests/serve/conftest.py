"""A real `duplex serve` on loopback for the server's tests: tiny models saved to a directory, the
server started as its own process on a free port, and stopped at the end of the module."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from duplexlm.config import DecoderConfig, EncoderConfig
from duplexlm.io import save_model
from duplexlm.models import build_model
from duplexlm.tokenizer import train_tokenizer

LINES = ["我爱北京天安门", "北京欢迎你", "今天天气很好", "你好，世界", "hello world", "the cat sat on the mat",
         "表情 🙂 和 👍 都很好", "emoji 🎉 party", "这个酒店很干净", "服务太差了"] * 20
KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    name: str
    key: str | None
    log: Path
    engine: str = "model"  # what serves: our engine on the model directory, or "ct2" / "gguf" on its export
    path: Path | None = None  # the directory served

    def client(self, **kwargs):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=self.key or "unused", max_retries=0, timeout=60, **kwargs)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def run_server(model_dir: Path, log: Path, *extra: str, key: str | None = KEY, wait: bool = True) -> Iterator[Server]:
    port = free_port()
    args = [sys.executable, "-c", "import sys; from duplexlm.cli import main; sys.exit(main())", "serve",
            "--model", str(model_dir), "--port", str(port), "--log-level", "warning", *extra]
    if key:
        args += ["--api-key", key]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", proc, model_dir.name, key, log)
    try:
        if wait:
            wait_ready(server)
        yield server
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited ({server.proc.returncode}):\n{server.log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the server did not become ready in {timeout} s:\n{server.log.read_text()}")


@pytest.fixture(scope="package")
def tokenizer():
    return train_tokenizer(LINES, "bpe", vocab_size=300, num_sentinels=0)


@pytest.fixture(scope="package")
def decoder_dir(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(0)
    model = build_model(DecoderConfig(vocab_size=tokenizer.vocab_size, max_seq_len=1024, d_model=32, n_layer=2,
                                      n_head=2, eos_token_id=tokenizer.eos_token_id))
    path = tmp_path_factory.mktemp("serve") / "tiny-gpt"
    save_model(model, path, tokenizer=tokenizer)
    return path


@pytest.fixture(scope="package")
def classifier_dir(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(0)
    model = build_model(EncoderConfig(vocab_size=tokenizer.vocab_size, max_seq_len=64, d_model=32, n_layer=2,
                                      n_head=2, d_ff=64, head="classify", num_labels=2,
                                      label_names=["negative", "positive"]))
    path = tmp_path_factory.mktemp("serve") / "tiny-bert-cls"
    save_model(model, path, tokenizer=tokenizer)
    return path


ENGINE_PACKAGES = {"ct2": "ctranslate2", "gguf": "llama_cpp"}  # what serves an export, by its format


def export_for_serving(engine: str, decoder_dir: Path, root: Path) -> Path:
    """``decoder_dir`` itself for "model", else its export in ``engine``'s format (the test is skipped
    where the engine's package is not installed: llama-cpp-python is optional)."""
    if engine == "model":
        return decoder_dir
    pytest.importorskip(ENGINE_PACKAGES[engine], reason=f"the {engine} engine's package is not installed")
    from duplexlm.export import export_model

    served = root / decoder_dir.name
    export_model(decoder_dir, served, engine)
    return served


@pytest.fixture(scope="package", params=["model", "ct2", "gguf"])
def server(request, decoder_dir, tmp_path_factory) -> Iterator[Server]:
    """The decoder served from its model directory, from its CTranslate2 export and from its GGUF
    export (llama.cpp): the same tests hold for all."""
    served = export_for_serving(request.param, decoder_dir, tmp_path_factory.mktemp(request.param))
    with run_server(served, tmp_path_factory.mktemp("log") / "server.log") as s:
        s.engine, s.path = request.param, served
        yield s
