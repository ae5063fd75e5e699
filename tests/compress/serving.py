"""What the compression tests share: a compressed directory served by `duplex serve`'s app answers
a completion with the engine's greedy text on the same loaded model."""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn

from duplexlm.infer.engine import Engine, SamplingParams
from duplexlm.tokenizer import Tokenizer


def assert_serves_its_greedy_answer(model: nn.Module, tok: Tokenizer, model_dir: Path, prompt: str = "我爱",
                                    max_tokens: int = 6) -> None:
    from fastapi.testclient import TestClient

    from duplexlm.serve import ServerSettings, create_app

    want = Engine(model, tok, max_batch_size=1).generate(prompt, SamplingParams(max_new_tokens=max_tokens,
                                                                                temperature=0))
    with TestClient(create_app(ServerSettings(model_dir=str(model_dir)))) as http:
        deadline = time.monotonic() + 30
        while http.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = http.post("/v1/completions", json={"model": model_dir.name, "prompt": prompt, "max_tokens": max_tokens,
                                                "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == want.text
