"""The official openai client against a real `duplex serve` on loopback: every route it uses, streaming
and not, the answers' exactness, and errors mapped to the client's exceptions."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time

import httpx
import openai
import pytest
import torch

from duplexlm.config import DecoderConfig
from duplexlm.infer.chat import chat_prompt
from duplexlm.infer.embed import embed
from duplexlm.infer.engine import Engine, SamplingParams
from duplexlm.infer.predict import classify
from duplexlm.io import load, save_model
from duplexlm.models import build_model
from duplexlm.serve.app import BATCH_PEAK_HEADER

from .conftest import KEY, run_server

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def metric(server, name: str) -> float:
    """The value of one unlabelled (or fully labelled) sample in /metrics."""
    text = httpx.get(f"{server.url}/metrics", headers=server.headers(), timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def batch_steps(server) -> dict[str, float]:
    """Engine steps so far by the number of requests they decoded together (/metrics' histogram)."""
    one = metric(server, 'duplex_step_batch_size_bucket{le="1.0"}')
    total = metric(server, "duplex_step_batch_size_count")
    return {"one": one, "more than one": total - one}


def wait_idle(server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(server, "duplex_pending_requests") > 0:
        assert time.monotonic() < deadline, "the server still holds requests"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(server, decoder_dir):
    """What the server runs, without the server: our engine on the same weights, or for the CTranslate2
    export its engine (on this untrained model the two may differ in near ties; tests/export compares
    them on trained ones)."""
    model, tokenizer = load(decoder_dir)
    if server.engine == "ct2":
        from duplexlm.export.ct2 import CT2Engine

        return CT2Engine(server.path, tokenizer, max_batch_size=4), tokenizer
    if server.engine == "gguf":
        from duplexlm.export.llama_cpp import LlamaCppEngine

        return LlamaCppEngine(server.path, tokenizer), tokenizer
    return Engine(model, tokenizer, max_batch_size=4), tokenizer


# ----------------------------------------------------------------------------------------------------
# Models, completions, chat


def test_models_list_names_the_model_and_what_it_can_do(server):
    models = server.client().models.list().data
    assert [m.id for m in models] == [server.name]
    # an export generates; the attention map needs the torch model
    assert models[0].capabilities == ["completions", "chat"] + (["attention"] if server.engine == "model" else [])
    assert models[0].family == "decoder"


def test_completion_is_the_engines_greedy_text_and_counts_tokens(server, reference):
    engine, tokenizer = reference
    prompt = "我爱北京"
    r = server.client().completions.create(model=server.name, prompt=prompt, max_tokens=12, temperature=0)
    want = engine.generate(prompt, SamplingParams(max_new_tokens=12, temperature=0))
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == want.text
    assert r.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert r.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_text_equals_non_streamed_at_temperature_0(server):
    client = server.client()
    for prompt in ["你好，世界", "表情 🙂"]:
        whole = client.completions.create(model=server.name, prompt=prompt, max_tokens=40, temperature=0)
        chunks = list(client.completions.create(model=server.name, prompt=prompt, max_tokens=40, temperature=0,
                                                stream=True, stream_options={"include_usage": True}))
        # pieces split inside a character would each decode to U+FFFD: the join would differ
        assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert reasons[-1] == whole.choices[0].finish_reason and reasons[:-1] == [None] * (len(reasons) - 1)
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_streamed_equals_non_streamed_and_uses_the_chat_template(server, reference):
    engine, tokenizer = reference
    client = server.client()
    messages = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "今天天气怎么样？"}]
    whole = client.chat.completions.create(model=server.name, messages=messages, max_tokens=30, temperature=0)
    prompt = chat_prompt(tokenizer, messages)
    want = engine.generate(prompt.text, SamplingParams(max_new_tokens=30, temperature=0,
                                                       stop_token_ids=prompt.stop_token_ids))
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == want.text
    assert whole.usage.prompt_tokens == len(tokenizer.encode(prompt.text))
    chunks = list(client.chat.completions.create(model=server.name, messages=messages, max_tokens=30,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert [c.choices[0].finish_reason for c in chunks].count(None) == len(chunks) - 1


def test_the_same_answer_alone_and_inside_a_busy_batch(server):
    if server.engine != "model":
        pytest.skip(f"{server.engine} decodes static batches: a request that arrives while a batch runs waits for it")
    client = server.client()
    ask = {"model": server.name, "prompt": "北京欢迎你", "max_tokens": 24, "temperature": 0}
    wait_idle(server)
    alone = client.completions.with_raw_response.create(**ask)
    assert alone.headers[BATCH_PEAK_HEADER] == "1", (
        f"on an idle server the request should run alone, found a batch peak of {alone.headers[BATCH_PEAK_HEADER]}")
    steps_before = batch_steps(server)
    # the same greedy request again, while 12 sampled streams of other lengths run in the batch: each has
    # sent its first piece (so it is decoding) and has some 900 tokens to go when the request is sent
    noise = [{"model": server.name, "prompt": "hello " * (i + 1), "max_tokens": 900, "temperature": 1.0,
              "top_p": 0.9, "seed": i, "ignore_eos": True, "stream": True} for i in range(12)]
    readers = []  # each stream's line iterator, kept: dropping one half-read closes its connection
    with httpx.Client(timeout=60) as http, contextlib.ExitStack() as streams:
        for body in noise:
            r = streams.enter_context(http.stream("POST", f"{server.url}/v1/completions", json=body,
                                                  headers=server.headers()))
            assert r.status_code == 200
            readers.append(r.iter_lines())
            assert next(line for line in readers[-1] if line.startswith("data: {"))
        busy = client.completions.with_raw_response.create(**ask)
        readers.clear()
    assert busy.parse().choices[0].text == alone.parse().choices[0].text
    # the request really shared its decoding steps: the server's own count of the most requests decoded
    # together while it ran, and /metrics' count of steps that decoded more than one request
    peak = int(busy.headers[BATCH_PEAK_HEADER])
    assert peak > 1, f"the request under test ran alone (batch peak {peak}); expected it to share the batch"
    shared = batch_steps(server)
    assert shared["more than one"] - steps_before["more than one"] >= 24, (
        f"the request's 24 steps shared the batch, yet /metrics counted {steps_before} then {shared}")
    wait_idle(server)  # the hung-up streams are aborted


def test_seeded_sampling_is_reproducible_and_n_choices_differ(server):
    client = server.client()
    ask = {"model": server.name, "prompt": "今天", "max_tokens": 16, "temperature": 1.0, "seed": 7}
    if server.engine == "ct2":  # no per-call seed in CTranslate2: refused by name, unseeded choices differ
        with pytest.raises(openai.BadRequestError, match="seed: the CTranslate2 engine cannot"):
            client.completions.create(**ask)
        a = client.completions.create(**{**ask, "seed": None}, n=3)
        assert [c.index for c in a.choices] == [0, 1, 2] and len({c.text for c in a.choices}) > 1
        return
    a = client.completions.create(**ask, n=3)
    b = client.completions.create(**ask, n=3)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert len({c.text for c in a.choices}) > 1
    assert a.usage.prompt_tokens == b.usage.prompt_tokens  # counted once, not n times


def test_stop_strings_and_a_batch_of_prompts(server):
    client = server.client()
    # a random model's greedy text: find a prompt whose answer is real characters, not stray bytes
    for prompt in ["我爱北京", "今天天气", "你好", "hello", "北京欢迎你", "the cat"]:
        base = client.completions.create(model=server.name, prompt=prompt, max_tokens=20,
                                         temperature=0).choices[0].text
        if len(base) > 3 and "\ufffd" not in base:
            break
    else:
        pytest.skip("no prompt gave clean text")
    stop = base[1:3]
    cut = client.completions.create(model=server.name, prompt=prompt, max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].text == base[:base.index(stop)] and cut.choices[0].finish_reason == "stop"
    two = client.completions.create(model=server.name, prompt=[prompt, "hello"], max_tokens=5, temperature=0)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].text == client.completions.create(model=server.name, prompt=prompt, max_tokens=5,
                                                            temperature=0).choices[0].text


# ----------------------------------------------------------------------------------------------------
# Errors, mapped to the client's exceptions


def test_missing_or_wrong_key_is_401_and_health_needs_none(server):
    from openai import OpenAI

    for key in ("wrong", ""):
        client = OpenAI(base_url=f"{server.url}/v1", api_key=key or "x", max_retries=0,
                        default_headers={} if key else {"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as e:
            client.models.list()
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "model": server.name}
    assert httpx.get(f"{server.url}/metrics").status_code == 401


def test_bad_parameters_are_400_naming_the_parameter(server):
    client = server.client()
    cases = [
        ({"temperature": 3.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 5000}, "max_tokens"),  # over the server's cap of 1024
        ({"n": 9}, "n"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logprobs": 2}, "logprobs"),
        ({"extra_body": {"top_k": -1}}, "top_k"),
        ({"extra_body": {"min_p": 2}}, "min_p"),
        ({"extra_body": {"tempurature": 0.5}}, "tempurature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=server.name, prompt="你好", **{"max_tokens": 4, **kwargs})
        assert e.value.status_code == 400
        assert e.value.body["param"] == param, (kwargs, e.value.body)
        assert param in e.value.body["message"]
        assert e.value.body["type"] == "invalid_request_error"


def test_unknown_model_is_404_and_a_prompt_too_long_is_400(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4o", prompt="hi", max_tokens=2)
    assert e.value.code == "model_not_found" and "gpt-4o" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=server.name, prompt=[5] * 1024, max_tokens=2)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=server.name, input="你好")
    assert e.value.code == "unsupported_endpoint" and "/v1/embeddings" in e.value.message


def test_malformed_and_oversized_bodies(server):
    url, h = f"{server.url}/v1/completions", {**server.headers(), "Content-Type": "application/json"}
    r = httpx.post(url, content=b'{"model": "x", "prompt": ', headers=h)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(url, content=json.dumps({"prompt": "hi"}), headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.post(url, content=json.dumps({"model": server.name, "prompt": "x" * (1 << 21)}), headers=h)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    with pytest.raises(openai.APIStatusError) as e:
        server.client().completions.create(model=server.name, prompt="好" * (1 << 20), max_tokens=2)
    assert e.value.status_code == 413


POST_ROUTES = ("/v1/attention", "/v1/chat/completions", "/v1/classify", "/v1/completions", "/v1/embeddings")
ACCESS_LINE = re.compile(r'^INFO: +\S+ - "POST \S+ HTTP/1\.1" \d{3}')


def test_a_body_that_is_not_json_is_415_and_broken_json_400_on_every_post_route(server):
    doc = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    posted = tuple(sorted(path for path, item in doc["paths"].items() if "post" in item))
    assert posted == POST_ROUTES, f"expected the POST routes {POST_ROUTES}, found {posted}: test them all"
    log_start = len(server.log.read_bytes())
    valid = json.dumps({"model": server.name, "prompt": "hi", "max_tokens": 2}).encode()
    not_json = [("text/plain", b"hello"), ("text/plain; charset=utf-8", valid), ("text/plain", b""),
                ("application/x-www-form-urlencoded", b"model=x&prompt=hi"), ("multipart/form-data; boundary=b", b"--b--")]
    with httpx.Client(timeout=30, headers=server.headers()) as http:
        for path in posted:
            for content_type, body in not_json:
                r = http.post(f"{server.url}{path}", content=body, headers={"Content-Type": content_type})
                where = f"POST {path} with Content-Type {content_type!r}"
                assert r.status_code == 415, f"{where}: expected 415, found {r.status_code}: {r.text}"
                assert r.headers["content-type"] == "application/json", where
                error = r.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}, f"{where}: {r.text}"
                assert error["type"] == "invalid_request_error" and error["code"] == "unsupported_media_type"
                assert content_type.split(";")[0] in error["message"] and "application/json" in error["message"]
            # JSON that does not parse is a 400, with the JSON type or with no type at all (read as JSON)
            for headers in ({"Content-Type": "application/json"}, {}):
                r = http.post(f"{server.url}{path}", content=b"hello", headers=headers)
                assert ("content-type" in r.request.headers) == bool(headers)
                assert r.status_code == 400, f"POST {path} of 'hello' with {headers}: {r.status_code} {r.text}"
                error = r.json()["error"]
                assert "not valid JSON" in error["message"] and error["param"] is None, r.text
    # nothing in the server's log but access lines (at this log level, none): no traceback
    new = server.log.read_bytes()[log_start:].decode(errors="replace")
    stray = [line for line in new.splitlines() if not ACCESS_LINE.match(line)]
    assert stray == [], "the server logged more than access lines:\n" + "\n".join(stray[-40:])


def _raw_post(server, size: int, headers: dict[str, str], *, version: str = "1.1", chunked: bool = False,
              send_body: bool = True) -> tuple[int, dict[str, str], dict]:
    """POST ``size`` bytes to /v1/completions the way http.client or requests do: the whole request
    first, then the answer, read until the server closes (every call asks it to) → status, headers
    and the JSON body. A connection reset fails the test."""
    port = int(server.url.rsplit(":", 1)[1])
    lines = [f"POST /v1/completions HTTP/{version}", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
             "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}",
             *(f"{k}: {v}" for k, v in {**server.headers(), **headers}.items())]
    piece, sent, data = b"x" * (1 << 16), 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            while send_body and sent < size:
                n = min(len(piece), size - sent)
                sock.sendall(b"%x\r\n%s\r\n" % (n, piece[:n]) if chunked else piece[:n])
                sent += n
            if chunked and send_body:
                sock.sendall(b"0\r\n\r\n")
            while more := sock.recv(1 << 16):
                data += more
        except (ConnectionResetError, BrokenPipeError) as e:
            pytest.fail(f"{version} {headers} chunked={chunked}: the connection was reset ({e!r}) after {sent} of "
                        f"{size} body bytes and {len(data)} bytes of answer; expected the server's answer")
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), fields, json.loads(body)


def test_a_20_mb_body_gets_the_413_not_a_connection_reset(server):
    size = 20 << 20
    for kwargs in ({"headers": {"Connection": "close"}}, {"headers": {}, "version": "1.0"},
                   {"headers": {"Connection": "close"}, "chunked": True}):
        status, _, body = _raw_post(server, size, **kwargs)
        assert status == 413 and body["error"]["code"] == "request_too_large", (kwargs, status, body)
        assert f"found {size} bytes" in body["error"]["message"], body
    # refused before the body is read (a wrong key): the body is read all the same, then the 401
    status, _, body = _raw_post(server, 5 << 20, {"Connection": "close", "Authorization": "Bearer wrong"})
    assert status == 401 and body["error"]["code"] == "invalid_api_key", (status, body)
    # a client that waits to be asked for its body is answered at once, and told the connection closes
    status, fields, body = _raw_post(server, size, {"Expect": "100-continue"}, send_body=False)
    assert status == 413 and fields.get("connection") == "close", (status, fields, body)
    # httpx, keeping the connection open or not, and the official client
    content = json.dumps({"model": server.name, "prompt": "x" * size}).encode()
    for headers in ({}, {"Connection": "close"}):
        r = httpx.post(f"{server.url}/v1/completions", content=content, timeout=60,
                       headers={**server.headers(), "Content-Type": "application/json", **headers})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", (headers, r.text[:300])
    with pytest.raises(openai.APIStatusError) as e:
        server.client().completions.create(model=server.name, prompt="x" * size, max_tokens=2)
    assert e.value.status_code == 413 and e.value.code == "request_too_large"
    assert server.client().completions.create(model=server.name, prompt="hi", max_tokens=2).choices


def test_a_client_that_disconnects_mid_stream_frees_its_rows(server):
    aborted = metric(server, "duplex_aborted_requests_total")
    body = {"model": server.name, "prompt": "你好", "max_tokens": 1000, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{server.url}/v1/completions", json=body,
                                                       headers=server.headers()) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # one piece, then hang up
    wait_idle(server)
    assert metric(server, "duplex_aborted_requests_total") == aborted + 1
    # the batch is free: a new request runs at once
    assert server.client().completions.create(model=server.name, prompt="hi", max_tokens=3, temperature=0)


def test_metrics_count_requests_and_tokens(server):
    def count(status: str) -> float:
        return metric(server, f'duplex_requests_total{{endpoint="/v1/completions",status="{status}"}}')

    ok, bad, tokens = count("200"), count("400"), metric(server, "duplex_generated_tokens_total")
    client = server.client()
    r = client.completions.create(model=server.name, prompt="北京", max_tokens=9, temperature=0,
                                  extra_body={"ignore_eos": True})
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=server.name, prompt="北京", max_tokens=0)
    assert r.usage.completion_tokens == 9
    assert count("200") == ok + 1 and count("400") == bad + 1
    assert metric(server, "duplex_generated_tokens_total") == tokens + 9
    text = httpx.get(f"{server.url}/metrics", headers=server.headers()).text
    assert "# TYPE duplex_time_to_first_token_seconds histogram" in text
    assert 'duplex_request_latency_seconds_count{endpoint="/v1/completions"}' in text


def test_queue_full_is_429_and_timeouts_are_408(tokenizer, tmp_path):
    # a decoder wide enough that 1,000 tokens take seconds on any CPU (the 32-wide one of the other
    # tests writes them in under half a second on a fast machine, and its requests end before the timeout)
    torch.manual_seed(0)
    model = build_model(DecoderConfig(vocab_size=tokenizer.vocab_size, max_seq_len=1024, d_model=256, n_layer=8,
                                      n_head=4, eos_token_id=tokenizer.eos_token_id))
    save_model(model, tmp_path / "slow", tokenizer=tokenizer)
    with run_server(tmp_path / "slow", tmp_path / "log", "--max-batch-size", "1", "--max-queue", "1",
                    "--timeout", "0.5") as s:
        long = {"model": s.name, "prompt": "你好", "max_tokens": 1000, "temperature": 0, "ignore_eos": True}
        # 8 long requests at once against room for 2: the rest are refused at once, none is lost
        statuses: list[int] = []

        def ask() -> None:
            r = httpx.post(f"{s.url}/v1/completions", json=long, headers=s.headers(), timeout=30)
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "queue_full"

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(statuses) == 8 and set(statuses) <= {408, 429} and statuses.count(429) >= 4, statuses
        assert statuses.count(408) >= 1  # 1,000 tokens take seconds: longer than half a second
        # two streams fill the room; the client maps the next request's 429 to RateLimitError
        with httpx.Client(timeout=30) as http, \
                http.stream("POST", f"{s.url}/v1/completions", json={**long, "stream": True}, headers=s.headers()) as a, \
                http.stream("POST", f"{s.url}/v1/completions", json={**long, "stream": True}, headers=s.headers()) as b:
            with pytest.raises(openai.RateLimitError):
                s.client().completions.create(model=s.name, prompt="你好", max_tokens=4)
            for r in (a, b):  # each stream ends with the timeout as an error event, then [DONE]
                tail = [line for line in r.iter_lines() if line.startswith("data: ")]
                assert json.loads(tail[-2][6:])["error"]["code"] == "timeout" and tail[-1] == "data: [DONE]"
        wait_idle(s)
        assert s.client().completions.create(model=s.name, prompt="hi", max_tokens=2).choices


def test_a_model_that_fails_to_load_answers_503(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"family": "decoder"')
    with run_server(broken, tmp_path / "log", wait=False) as s:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"{s.url}/health", timeout=2)
                if r.json()["status"] == "failed":
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert r.status_code == 503 and "config.json" in r.json()["error"]
        with pytest.raises(openai.InternalServerError) as e:
            s.client().models.list()
        assert e.value.status_code == 503 and e.value.code == "model_not_ready"


def test_routes_answer_503_while_the_model_loads(decoder_dir, monkeypatch):
    """In-process: the loader waits on an event, so the loading window is as long as the test wants."""
    from fastapi.testclient import TestClient

    import duplexlm.io
    from duplexlm.serve import ServerSettings, create_app

    gate = threading.Event()
    real = duplexlm.io.load

    def slow_load(*args, **kwargs):
        gate.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(duplexlm.io, "load", slow_load)
    app = create_app(ServerSettings(model_dir=str(decoder_dir)))
    with TestClient(app) as http:
        r = http.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = http.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "hi"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "model_not_ready"
        gate.set()
        deadline = time.monotonic() + 30
        while http.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = http.post("/v1/completions", json={"model": decoder_dir.name, "prompt": "hi", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3


def test_cors_allows_only_the_listed_origins_without_credentials(decoder_dir):
    from fastapi.testclient import TestClient

    from duplexlm.serve import ServerSettings, create_app

    model, tokenizer = load(decoder_dir)
    app = create_app(ServerSettings(cors_origins=("http://ok.example",), api_key=KEY), model=model,
                     tokenizer=tokenizer)
    with TestClient(app) as http:
        pre = {"Origin": "http://ok.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type"}
        r = http.options("/v1/completions", headers=pre)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ok.example"
        assert "access-control-allow-credentials" not in r.headers
        r = http.options("/v1/completions", headers={**pre, "Origin": "http://evil.example"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


# ----------------------------------------------------------------------------------------------------
# Encoders: embeddings, classify, attention


@pytest.fixture(scope="module")
def encoder_server(classifier_dir, tmp_path_factory):
    with run_server(classifier_dir, tmp_path_factory.mktemp("log") / "enc.log") as s:
        yield s


def test_embeddings_equal_duplex_embed(encoder_server, classifier_dir):
    model, tokenizer = load(classifier_dir)
    texts = ["这个酒店很干净", "服务太差了", "hello world"]
    want = embed(model, tokenizer, texts)
    client = encoder_server.client()
    for fmt in ("float", "base64"):  # the client asks for base64 unless told, and decodes it
        r = client.embeddings.create(model=encoder_server.name, input=texts, encoding_format=fmt)
        got = torch.tensor([d.embedding for d in r.data]) if fmt == "float" else None
        if fmt == "base64":
            import base64

            import numpy as np

            got = torch.tensor(np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in r.data]))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    default = client.embeddings.create(model=encoder_server.name, input="你好")
    assert len(default.data[0].embedding) == model.config.d_model
    assert default.usage.prompt_tokens == len(tokenizer.encode("你好"))


def test_classify_equals_duplex_classify_and_chat_is_refused(encoder_server, classifier_dir):
    model, tokenizer = load(classifier_dir)
    texts = ["这个酒店很干净", "服务太差了"]
    want = classify(model, tokenizer, texts)
    r = httpx.post(f"{encoder_server.url}/v1/classify", json={"input": texts}, headers=encoder_server.headers())
    assert r.status_code == 200
    got = r.json()
    assert got["kind"] == "classify"
    assert [d["label"] for d in got["data"]] == [w["label"] for w in want]
    assert [d["score"] for d in got["data"]] == pytest.approx([w["score"] for w in want], abs=1e-6)
    models = encoder_server.client().models.list().data[0]
    assert models.capabilities == ["embeddings", "classify", "attention"]
    assert models.tasks == {"": {"kind": "classify", "labels": ["negative", "positive"]}}
    with pytest.raises(openai.BadRequestError) as e:
        encoder_server.client().chat.completions.create(model=encoder_server.name,
                                                        messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "unsupported_endpoint"


def test_attention_map_rows_sum_to_one(encoder_server):
    h = encoder_server.headers()
    r = httpx.post(f"{encoder_server.url}/v1/attention", json={"input": "我爱北京"}, headers=h).json()
    assert r["kind"] == "self" and r["n_layer"] == 2 and r["n_head"] == 2 and r["head"] is None
    assert len(r["weights"]) == len(r["tokens"]) == len(r["key_tokens"])
    assert all(abs(sum(row) - 1) < 1e-3 for row in r["weights"])
    one = httpx.post(f"{encoder_server.url}/v1/attention", json={"input": "我爱北京", "layer": 0, "head": 1},
                     headers=h).json()
    assert one["layer"] == 0 and one["head"] == 1
    bad = httpx.post(f"{encoder_server.url}/v1/attention", json={"input": "我爱北京", "layer": 5}, headers=h)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "layer"


@pytest.mark.parametrize("text", ["北\x85京", "北\u2028京", "北\u2029京", "北\r\n京\x0b\x1e"])
def test_an_event_stays_one_line_whatever_the_text(text):
    """A byte-level model may write NEL or a Unicode line separator: JSON leaves them raw, and httpx's
    line reader (str.splitlines' rules, as the openai client's) would cut the event there (seen in the
    load test against a CTranslate2 export: "Unterminated string")."""
    from httpx._decoders import LineDecoder

    from duplexlm.serve.app import sse_event

    event = sse_event({"choices": [{"delta": {"content": text}}]})
    decoder = LineDecoder()
    lines = [*decoder.decode(event), *decoder.flush()]
    data = [line for line in lines if line.startswith("data: ")]
    assert len(data) == 1 and json.loads(data[0][6:])["choices"][0]["delta"]["content"] == text
    assert "北" in data[0]  # Chinese stays readable
