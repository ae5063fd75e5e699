"""The server's web page in headless Chromium: the chat panel streams the model's real answer (and
grows, stops, parses a stream cut anywhere and shows errors), the classify panel shows the server's
label (and a tagger's entities, a regressor's values), the attention panel draws one label per token
and names the hovered cell, and a missing API key brings up the key field instead of breaking the
page. The panel tests save a screenshot (chat.png, classify.png, tagger.png, attention.png, key.png)
under their tmp_path."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import KEY, run_server

sync_api = pytest.importorskip("playwright.sync_api", reason="the web-page tests need playwright")

CHROMIUM = "/usr/bin/chromium"
if not (Path(CHROMIUM).exists() and shutil.which(CHROMIUM)):
    pytest.skip(f"the web-page tests need Debian's Chromium at {CHROMIUM}", allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def open_page(browser):
    """open_page(url, key=None, init_script=None): a fresh page on ``url`` (the key, if given, already
    in sessionStorage; the script run before the page's own); at the end, no script error may have
    happened on any page opened."""
    contexts, errors = [], []

    def opener(url: str, key: str | None = None, init_script: str | None = None):
        context = browser.new_context(viewport={"width": 1100, "height": 900}, device_scale_factor=1)
        contexts.append(context)
        if key:
            context.add_init_script(f"sessionStorage.setItem('duplexlm.apiKey', {json.dumps(key)});")
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        return page

    yield opener
    for c in contexts:
        c.close()
    assert not errors, f"script errors on the page: {errors}"


def post(server, path: str, body: dict) -> dict:
    r = httpx.post(f"{server.url}{path}", json=body, headers=server.headers(), timeout=60)
    r.raise_for_status()
    return r.json()


def test_chat_streams_the_models_answer(server, open_page, tmp_path):
    page = open_page(server.url, KEY)
    page.wait_for_selector("#chat-panel:not([hidden])")
    assert page.text_content("#model-id") == server.name
    assert page.text_content("#model-family") == "decoder"
    assert page.is_hidden("#classify-panel")
    assert page.is_hidden("#key-prompt")
    page.fill("#max-tokens", "12")
    page.fill("#temperature", "0")

    messages = []
    for turn, text in enumerate(["你好，世界", "<b>北京</b> & 天安门"]):
        page.fill("#chat-input", text)
        page.press("#chat-input", "Enter")
        page.locator('[data-role="assistant"][data-done="true"]').nth(turn).wait_for()
        answer = page.locator('[data-role="assistant"]').nth(turn)
        assert answer.get_attribute("data-error") is None, answer.get_attribute("data-error")
        shown = answer.text_content()

        messages.append({"role": "user", "content": text})
        expected = post(server, "/v1/chat/completions", {"model": server.name, "messages": messages,
                                                          "max_tokens": 12, "temperature": 0})
        assert shown == expected["choices"][0]["message"]["content"]
        assert answer.get_attribute("data-finish-reason") == expected["choices"][0]["finish_reason"]
        if expected["usage"]["completion_tokens"] >= 4 and len(shown) >= 4:
            assert int(answer.get_attribute("data-pieces")) >= 2  # it grew piece by piece
        messages.append({"role": "assistant", "content": shown})

    # the user's text is shown as text, never as markup
    user = page.locator('[data-role="user"]').nth(1)
    assert user.text_content() == "<b>北京</b> & 天安门"
    assert user.locator("b").count() == 0
    assert page.text_content("#chat-error") == ""
    page.locator("#chat-panel").screenshot(path=tmp_path / "chat.png")


# Installed before the page's script: chat streams reach the page re-cut into 5-byte chunks, one
# every DELAY_MS milliseconds (or so), so lines and UTF-8 characters are split across reads and the
# answer lasts long enough to watch it grow and to stop it.
RECUT_STREAM = """
(() => {
  const fetch0 = window.fetch;
  window.fetch = async (...args) => {
    const res = await fetch0(...args);
    if (!String(args[0]).includes("chat/completions") || !res.ok) return res;
    const recut = res.body.pipeThrough(new TransformStream({
      async transform(chunk, out) {
        for (let i = 0; i < chunk.length; i += 5) {
          await new Promise((done) => setTimeout(done, DELAY_MS));
          out.enqueue(chunk.slice(i, i + 5));
        }
      },
    }));
    return new Response(recut, {status: res.status, headers: res.headers});
  };
})();
"""


def test_chat_grows_piece_by_piece_and_stops(server, open_page):
    # slow pieces and a long answer, so the stream is still running when Stop is clicked on a busy machine
    page = open_page(server.url, KEY, init_script=RECUT_STREAM.replace("DELAY_MS", "25"))
    page.wait_for_selector("#chat-panel:not([hidden])")
    page.fill("#max-tokens", "400")
    page.fill("#temperature", "0")
    text = "今天天气很好"
    page.fill("#chat-input", text)
    page.click("#chat-send")
    answer = page.locator('[data-role="assistant"]')
    # the answer shows while the stream goes on
    page.wait_for_function("""() => {
        const a = document.querySelector('[data-role="assistant"]');
        return a && Number(a.dataset.pieces) >= 3 && a.dataset.done === "false";
    }""")
    assert page.is_enabled("#chat-stop") and page.is_disabled("#chat-send")
    page.click("#chat-stop")
    page.locator('[data-role="assistant"][data-done="true"]').wait_for()
    assert answer.get_attribute("data-stopped") == "true"
    assert answer.get_attribute("data-error") is None
    assert page.text_content("#chat-error") == ""
    assert page.is_enabled("#chat-send") and page.is_disabled("#chat-stop")
    # what it showed before the stop is the start of the model's answer, cut anywhere
    full = post(server, "/v1/chat/completions", {"model": server.name, "max_tokens": 400, "temperature": 0,
                                                 "messages": [{"role": "user", "content": text}]})
    shown = answer.text_content()
    assert shown
    assert full["choices"][0]["message"]["content"].startswith(shown)


def sse(*events: dict | str) -> str:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e, ensure_ascii=False)}\n\n" for e in events)


def delta(content: str | None = None, finish: str | None = None, role: bool = False) -> dict:
    d = {"role": "assistant"} if role else {}
    if content is not None:
        d["content"] = content
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


@pytest.mark.parametrize("error", [False, True], ids=["answer", "error-event"])
def test_chat_parses_a_stream_cut_anywhere(server, open_page, error):
    """A canned stream (Chinese, an emoji, a split across every 5 bytes): the page shows exactly its
    text; an error event mid-stream shows its message and keeps the text that came before."""
    pieces = ["你好", "，", "世界", " 🙂", "\n第二行 <i>x</i> & y"]
    events = [delta("", role=True), *(delta(p) for p in pieces)]
    if error:
        events.append({"error": {"message": "the request took longer than the server's timeout of 1 s",
                                 "type": "timeout", "param": None, "code": "timeout"}})
    else:
        events.append(delta(None, "stop"))
    body = sse(*events, "[DONE]")
    page = open_page(server.url, KEY, init_script=RECUT_STREAM.replace("DELAY_MS", "0"))
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream; charset=utf-8"}, body=body.encode()))
    page.wait_for_selector("#chat-panel:not([hidden])")
    page.fill("#chat-input", "你好")
    page.press("#chat-input", "Enter")
    page.locator('[data-role="assistant"][data-done="true"]').wait_for()
    answer = page.locator('[data-role="assistant"]')
    assert answer.text_content() == "".join(pieces)
    assert answer.get_attribute("data-pieces") == str(len(pieces))
    assert answer.locator("i").count() == 0
    if error:
        assert "timeout of 1 s" in page.text_content("#chat-error")
        assert "timeout of 1 s" in answer.get_attribute("data-error")
    else:
        assert page.text_content("#chat-error") == ""
        assert answer.get_attribute("data-finish-reason") == "stop"


def test_chat_shows_the_servers_error(server, open_page):
    page = open_page(server.url, KEY)
    page.wait_for_selector("#chat-panel:not([hidden])")
    page.fill("#max-tokens", "100000")  # above the server's cap: a 400 with a message
    page.fill("#chat-input", "你好")
    page.click("#chat-send")
    page.locator('[data-role="assistant"][data-done="true"]').wait_for()
    error = page.text_content("#chat-error")
    assert "max_tokens" in error, error
    assert page.is_enabled("#chat-send")


def test_classify_shows_the_servers_label(classifier_dir, open_page, tmp_path):
    with run_server(classifier_dir, tmp_path / "server.log") as server:
        page = open_page(server.url, KEY)
        page.wait_for_selector("#classify-panel:not([hidden])")
        assert page.is_hidden("#chat-panel")
        assert page.is_visible("#attention-panel")  # an encoder shows its attention too
        text = "这个酒店很干净，服务也好"
        page.fill("#classify-input", text)
        page.click("#classify-btn")
        page.wait_for_selector("#classify-label")
        expected = post(server, "/v1/classify", {"input": text})["data"][0]
        assert page.text_content("#classify-label") == expected["label"]
        assert page.text_content("#classify-score") == f"{100 * expected['score']:.1f}%"
        labels = page.locator("#classify-bars [data-label]")
        assert [labels.nth(i).get_attribute("data-label") for i in range(labels.count())] == list(expected["probs"])
        page.locator("#classify-panel").screenshot(path=tmp_path / "classify.png")


def test_attention_heatmap_has_a_label_per_token(server, open_page, tmp_path):
    page = open_page(server.url, KEY)
    if server.engine != "model":  # an export offers no attention maps: the page does not show the panel
        page.wait_for_selector("#model-id:not(:empty)")
        assert page.locator("#attention-panel").get_attribute("hidden") is not None
        return
    page.wait_for_selector("#attention-panel:not([hidden])")
    text = "我爱北京天安门 hello world"
    page.fill("#attn-input", text)
    page.click("#attn-btn")
    page.wait_for_selector('#attn-map[data-ready="true"]')
    expected = post(server, "/v1/attention", {"input": text, "layer": -1, "head": None})
    assert page.locator(".attn-row-label").count() == len(expected["tokens"])
    assert page.locator(".attn-col-label").count() == len(expected["key_tokens"])
    assert page.locator(".attn-row-label").first.get_attribute("title") == expected["tokens"][0]
    # the selectors hold every layer, and the mean plus every head
    assert page.locator("#attn-layer option").count() == expected["n_layer"]
    assert page.locator("#attn-head option").count() == expected["n_head"] + 1
    assert page.input_value("#attn-layer") == str(expected["layer"])

    # hovering a cell names its query token, key token and weight
    canvas = page.locator("#attn-canvas")
    cell = int(canvas.get_attribute("data-cell"))
    i, j = len(expected["tokens"]) - 1, 1
    canvas.hover(position={"x": j * cell + cell / 2, "y": i * cell + cell / 2})
    caption = page.locator("#attn-caption")
    assert caption.get_attribute("data-row") == str(i) and caption.get_attribute("data-col") == str(j)
    assert float(caption.get_attribute("data-weight")) == pytest.approx(expected["weights"][i][j])
    assert page.is_visible("#attn-tip")
    page.locator("#attention-panel").screenshot(path=tmp_path / "attention.png")

    # picking a head asks again and redraws (waiting on the caption itself: a redraw for another
    # reason, such as the window settling after the screenshot, also bumps the map's version)
    version = int(page.get_attribute("#attn-map", "data-version"))
    page.select_option("#attn-head", "0")
    page.wait_for_function("() => document.getElementById('attn-caption').textContent.includes('head 0')")
    assert int(page.get_attribute("#attn-map", "data-version")) > version


def test_missing_key_brings_up_the_key_field(server, open_page, tmp_path):
    page = open_page(server.url)
    page.wait_for_selector("#key-prompt:not([hidden])")
    assert "API key" in page.text_content("#key-message")
    assert page.is_hidden("#chat-panel")
    page.fill("#key-input", "not-the-key")
    page.click("#key-save")
    page.wait_for_function("() => document.getElementById('key-message').textContent.includes('wrong API key')")
    assert page.is_hidden("#chat-panel")
    page.screenshot(path=tmp_path / "key.png")
    page.fill("#key-input", KEY)
    page.click("#key-save")
    page.wait_for_selector("#chat-panel:not([hidden])")
    assert page.is_hidden("#key-prompt")
    assert page.text_content("#model-id") == server.name
    assert page.evaluate("sessionStorage.getItem('duplexlm.apiKey')") == KEY
    assert page.input_value("#settings-key") == KEY


def test_classify_draws_taggers_and_regressors(server, open_page, tmp_path):
    """A multi-task model (canned answers for /v1/models and /v1/classify): the task selector sends
    its task; a tagger's entities are highlighted with their types, a regressor's values listed."""
    card = {"id": "tiny-multi", "object": "model", "family": "encoder", "capabilities": ["classify"],
            "max_context": 64, "tasks": {"ner": {"kind": "tag", "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]},
                                         "mood": {"kind": "regress", "labels": ["valence", "arousal"]}}}
    answers = {
        "ner": {"words": list("张三在北京工作"), "tags": ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O"],
                "entities": [{"type": "PER", "text": "张三", "start": 0, "end": 2},
                             {"type": "LOC", "text": "北京", "start": 3, "end": 5}]},
        "mood": {"values": [0.731, -1.25]},
    }
    asked = []

    def classify(route):
        body = json.loads(route.request.post_data)
        asked.append(body)
        kind = card["tasks"][body["task"]]["kind"]
        data = [{"index": 0, "input": body["input"], **answers[body["task"]]}]
        route.fulfill(json={"object": "list", "model": "tiny-multi", "task": body["task"], "kind": kind, "data": data})

    page = open_page(server.url, KEY)
    page.route("**/v1/models", lambda route: route.fulfill(json={"object": "list", "data": [card]}))
    page.route("**/v1/classify", classify)
    page.reload()
    page.wait_for_selector("#classify-panel:not([hidden])")
    assert page.is_hidden("#chat-panel") and page.is_hidden("#attention-panel")
    assert page.locator("#classify-task option").count() == 2

    page.select_option("#classify-task", "ner")
    page.fill("#classify-input", "张三在北京工作")
    page.click("#classify-btn")
    page.wait_for_selector("#classify-tags")
    assert asked[-1] == {"input": "张三在北京工作", "task": "ner"}
    entities = page.locator("#classify-tags .entity")
    assert [entities.nth(i).get_attribute("data-type") for i in range(entities.count())] == ["PER", "LOC"]
    assert page.locator("#classify-tags .ent-text").all_text_contents() == ["张三", "北京"]
    assert page.text_content("#classify-label") == "2 entities"
    page.locator("#classify-panel").screenshot(path=tmp_path / "tagger.png")

    page.select_option("#classify-task", "mood")
    page.click("#classify-btn")
    page.wait_for_selector("#classify-values")
    assert asked[-1]["task"] == "mood"
    assert page.locator("#classify-values tr").all_inner_texts() == ["valence\t0.731", "arousal\t-1.25"]
