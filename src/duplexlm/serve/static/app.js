// duplexlm's web page: chat (streamed), classify and attention maps over the server's /v1 routes.
// Model output only ever reaches the page through textContent / Text nodes, never as HTML.
"use strict";

(() => {
  const KEY_STORE = "duplexlm.apiKey";
  const $ = (id) => document.getElementById(id);

  const state = {
    model: null, // the /v1/models card
    conversation: [], // the chat's messages so far: {role, content}
    controller: null, // the AbortController of the chat stream in flight
    attn: null, // the last attention answer drawn
    attnBusy: false,
    loadTimer: null,
  };

  // ------------------------------------------------------------------------------------------------
  // Small helpers

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function getKey() {
    try {
      return sessionStorage.getItem(KEY_STORE) || "";
    } catch (e) {
      return "";
    }
  }

  function setKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORE, key);
      else sessionStorage.removeItem(KEY_STORE);
    } catch (e) {
      /* storage off: the key lasts until the page reloads */
    }
    $("settings-key").value = key;
  }

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const key = getKey();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text || "";
    s.classList.toggle("error", Boolean(isError));
  }

  function showError(id, text) {
    $(id).textContent = text || "";
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // The error message of a failed answer: the server's {"error": {"message"}} when it sent one.
  async function errorOf(res) {
    let message = `HTTP ${res.status}${res.statusText ? " " + res.statusText : ""}`;
    try {
      const text = await res.text();
      try {
        const body = JSON.parse(text);
        if (body && body.error && body.error.message) message = body.error.message;
        else if (body && typeof body.detail === "string") message = body.detail;
      } catch (e) {
        if (text) message += ": " + text.slice(0, 300);
      }
    } catch (e) {
      /* the body could not be read: keep the status line */
    }
    return new ApiError(res.status, message);
  }

  // POST a JSON body to a /v1 route; a failed answer throws ApiError (and a 401 asks for the key).
  async function post(path, body, signal) {
    let res;
    try {
      res = await fetch(path, { method: "POST", headers: headers(true), body: JSON.stringify(body), signal });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "cannot reach the server: " + e.message);
    }
    if (!res.ok) {
      const err = await errorOf(res);
      if (res.status === 401) askForKey(err.message);
      throw err;
    }
    return res;
  }

  // ------------------------------------------------------------------------------------------------
  // The model card and the API key

  async function loadModels() {
    clearTimeout(state.loadTimer);
    setStatus("Loading the model's description…");
    let res;
    try {
      res = await fetch("v1/models", { headers: headers(false) });
    } catch (e) {
      setStatus("Cannot reach the server (" + e.message + "); retrying…", true);
      state.loadTimer = setTimeout(loadModels, 3000);
      return;
    }
    if (!res.ok) {
      const err = await errorOf(res);
      if (res.status === 401) {
        hideModel();
        askForKey(err.message);
        setStatus("The server needs an API key.", true);
      } else if (res.status === 503 && res.headers.get("Retry-After")) {
        setStatus(err.message);
        state.loadTimer = setTimeout(loadModels, 1000);
      } else {
        setStatus(err.message, true);
      }
      return;
    }
    let card;
    try {
      const body = await res.json();
      card = body && Array.isArray(body.data) ? body.data[0] : null;
    } catch (e) {
      card = null;
    }
    if (!card) {
      setStatus("The server answered /v1/models without a model.", true);
      return;
    }
    $("key-prompt").hidden = true;
    setStatus("");
    showModel(card);
  }

  function askForKey(message) {
    const prompt = $("key-prompt");
    $("key-message").textContent = message || "";
    const wasHidden = prompt.hidden;
    prompt.hidden = false;
    if (wasHidden) $("key-input").focus();
  }

  function hideModel() {
    state.model = null;
    $("model-info").hidden = true;
    for (const id of ["chat-panel", "classify-panel", "attention-panel", "nothing-panel"]) $(id).hidden = true;
  }

  function showModel(card) {
    state.model = card;
    const caps = Array.isArray(card.capabilities) ? card.capabilities : [];
    $("model-info").hidden = false;
    $("model-id").textContent = card.id;
    $("model-family").textContent = card.family || "";
    $("model-context").textContent = card.max_context ? `context ${card.max_context} tokens` : "";
    if (card.max_tokens) {
      // the server's cap on one answer: the field cannot ask for more
      $("max-tokens").max = String(card.max_tokens);
      if (Number($("max-tokens").value) > card.max_tokens) $("max-tokens").value = String(card.max_tokens);
    }
    document.title = `${card.id} · duplexlm`;

    $("chat-panel").hidden = !caps.includes("chat");
    $("classify-panel").hidden = !caps.includes("classify");
    $("attention-panel").hidden = !caps.includes("attention");
    $("attn-target").hidden = card.family !== "seq2seq";

    const shown = ["chat", "classify", "attention"].filter((c) => caps.includes(c));
    $("nothing-panel").hidden = shown.length > 0;
    if (!shown.length) {
      $("nothing-text").textContent =
        `This model offers ${caps.join(", ") || "nothing"}; the page has panels for chat, classify and attention. ` +
        "Use the API for the rest.";
    }

    // a multi-task model: pick the task
    const tasks = card.tasks && typeof card.tasks === "object" ? Object.keys(card.tasks) : [];
    const select = $("classify-task");
    const current = select.value;
    select.replaceChildren();
    for (const name of tasks) {
      const spec = card.tasks[name] || {};
      const option = el("option", null, (name || "default") + (spec.kind ? ` (${spec.kind})` : ""));
      option.value = name;
      select.append(option);
    }
    if (tasks.includes(current)) select.value = current;
    $("classify-task-row").hidden = !(tasks.length > 1 || (tasks.length === 1 && tasks[0] !== ""));
  }

  // ------------------------------------------------------------------------------------------------
  // Chat

  function addMessage(role, text) {
    const box = el("div", "msg " + role);
    box.append(el("div", "who", role === "user" ? "You" : "Assistant"));
    const body = el("div", "text", text);
    body.dataset.role = role;
    box.append(body);
    $("chat-messages").append(box);
    scrollChat();
    return { box, body };
  }

  function scrollChat() {
    const list = $("chat-messages");
    list.scrollTop = list.scrollHeight;
  }

  function setChatBusy(busy) {
    $("chat-send").disabled = busy;
    $("chat-stop").disabled = !busy;
    $("chat-clear").disabled = busy;
  }

  function numberField(id, name, lo, hi, integer) {
    const raw = $(id).value.trim();
    const value = Number(raw);
    if (raw === "" || !Number.isFinite(value) || value < lo || (hi !== null && value > hi) ||
        (integer && !Number.isInteger(value))) {
      const range = hi === null ? `>= ${lo}` : `in [${lo}, ${hi}]`;
      throw new Error(`${name}: expected ${integer ? "an integer" : "a number"} ${range}, found ${raw || "nothing"}`);
    }
    return value;
  }

  // Read a server-sent-events body, calling onData(data) per event; onData returns true to stop.
  // Text is decoded as a stream (a character split across chunks waits for its other bytes) and a
  // line split across chunks waits in the buffer for its end. Aborting `signal` cancels the reader
  // at once and throws an AbortError: Stop does not wait on whatever the body is piped through.
  async function readEvents(res, onData, signal) {
    const reader = res.body.getReader();
    const onAbort = () => reader.cancel().catch(() => {});
    if (signal) signal.addEventListener("abort", onAbort, { once: true });
    const aborted = () => signal && signal.aborted;
    const decoder = new TextDecoder("utf-8");
    let buffer = "";
    let data = [];
    let stop = false;
    const line = (text) => {
      if (text.endsWith("\r")) text = text.slice(0, -1);
      if (text === "") {
        if (data.length) {
          const payload = data.join("\n");
          data = [];
          if (onData(payload)) stop = true;
        }
        return;
      }
      if (text.startsWith(":")) return; // a comment
      const colon = text.indexOf(":");
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") data.push(value);
    };
    try {
      if (aborted()) throw new DOMException("the stream was stopped", "AbortError");
      while (!stop) {
        const { done, value } = await reader.read();
        if (aborted()) throw new DOMException("the stream was stopped", "AbortError");
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let nl;
        while (!stop && (nl = buffer.indexOf("\n")) >= 0) {
          line(buffer.slice(0, nl));
          buffer = buffer.slice(nl + 1);
        }
      }
      if (!stop) {
        buffer += decoder.decode();
        if (buffer) line(buffer);
        line(""); // the last event, when the body ended without its blank line
      }
    } finally {
      if (signal) signal.removeEventListener("abort", onAbort);
      if (stop || aborted()) reader.cancel().catch(() => {});
      else reader.releaseLock();
    }
  }

  async function sendChat() {
    if (state.controller || !state.model) return;
    const input = $("chat-input");
    const text = input.value;
    if (!text.trim()) return;
    let maxTokens, temperature;
    try {
      maxTokens = numberField("max-tokens", "max tokens", 1, null, true);
      temperature = numberField("temperature", "temperature", 0, 2, false);
    } catch (e) {
      showError("chat-error", e.message);
      return;
    }
    showError("chat-error", "");
    input.value = "";

    const messages = state.conversation.concat([{ role: "user", content: text }]);
    const user = addMessage("user", text);
    const bot = addMessage("assistant", "");
    bot.box.classList.add("streaming");
    bot.body.dataset.done = "false";
    bot.body.dataset.pieces = "0";
    const textNode = document.createTextNode("");
    bot.body.append(textNode);

    const controller = new AbortController();
    state.controller = controller;
    setChatBusy(true);
    let answer = "";
    let pieces = 0;
    let finish = null;
    let sawDone = false;
    let failure = null;
    let stopped = false;
    try {
      const res = await post("v1/chat/completions", {
        model: state.model.id, messages, stream: true, max_tokens: maxTokens, temperature,
      }, controller.signal);
      await readEvents(res, (data) => {
        if (data === "[DONE]") {
          sawDone = true;
          return true;
        }
        let chunk;
        try {
          chunk = JSON.parse(data);
        } catch (e) {
          failure = "the server sent an event that is not JSON: " + data.slice(0, 200);
          return true;
        }
        if (chunk.error) {
          failure = chunk.error.message || JSON.stringify(chunk.error);
          return false; // [DONE] follows
        }
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) return false;
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          answer += piece;
          pieces += 1;
          textNode.appendData(piece);
          bot.body.dataset.pieces = String(pieces);
          scrollChat();
        }
        if (choice.finish_reason) finish = choice.finish_reason;
        return false;
      }, controller.signal);
      if (!failure && !sawDone && !finish) failure = "the stream ended before the answer did";
    } catch (e) {
      if (e.name === "AbortError") stopped = true;
      else failure = e.message;
    } finally {
      state.controller = null;
      setChatBusy(false);
    }

    bot.box.classList.remove("streaming");
    let note = "";
    if (failure) {
      bot.box.classList.add("failed");
      user.box.classList.add("failed");
      bot.body.dataset.error = failure;
      showError("chat-error", failure);
      note = "error";
    } else if (stopped) {
      bot.body.dataset.stopped = "true";
      note = "stopped";
    } else if (finish === "length") {
      note = "cut at max tokens";
    }
    if (finish) bot.body.dataset.finishReason = finish;
    if (note) bot.box.append(el("div", "note", note));
    // the conversation keeps the turns the user saw answered (a stopped answer as far as it went)
    if (!failure && (answer || !stopped)) {
      state.conversation = messages.concat([{ role: "assistant", content: answer }]);
    }
    bot.body.dataset.done = "true";
    scrollChat();
    input.focus();
  }

  function stopChat() {
    if (state.controller) state.controller.abort();
  }

  function clearChat() {
    if (state.controller) return;
    state.conversation = [];
    $("chat-messages").replaceChildren();
    showError("chat-error", "");
  }

  // ------------------------------------------------------------------------------------------------
  // Classify

  function percent(p) {
    return (100 * p).toFixed(1) + "%";
  }

  // entity types get distinct colours, in the order the page first meets them
  const PALETTE = ["#ffd8a8", "#b2f2bb", "#a5d8ff", "#fcc2d7", "#d0bfff", "#ffec99", "#99e9f2", "#ffc9c9",
    "#c0eb75", "#e599f7"];
  const typeColours = new Map();
  function entityColour(type) {
    if (!typeColours.has(type)) typeColours.set(type, PALETTE[typeColours.size % PALETTE.length]);
    return typeColours.get(type);
  }

  const CJK = /[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]/;

  async function classify() {
    if (!state.model) return;
    const text = $("classify-input").value;
    showError("classify-error", "");
    if (!text.trim()) {
      showError("classify-error", "Enter a text to classify.");
      return;
    }
    const body = { input: text };
    const taskRow = $("classify-task-row");
    if (!taskRow.hidden && $("classify-task").value) body.task = $("classify-task").value;
    const button = $("classify-btn");
    button.disabled = true;
    $("classify-result").setAttribute("aria-busy", "true");
    try {
      const res = await post("v1/classify", body);
      const out = await res.json();
      renderClassify(out, body.task || "");
    } catch (e) {
      showError("classify-error", e.message);
    } finally {
      button.disabled = false;
      $("classify-result").removeAttribute("aria-busy");
    }
  }

  function renderClassify(out, task) {
    const result = $("classify-result");
    result.replaceChildren();
    const item = out.data && out.data[0];
    if (!item) return;
    const kind = out.kind;
    $("classify-kind").textContent = kind ? `(${kind})` : "";
    const top = el("div", "top-label");
    const label = el("span");
    label.id = "classify-label";
    top.append(label);
    result.append(top);

    if (kind === "tag" || Array.isArray(item.words)) {
      const entities = Array.isArray(item.entities) ? item.entities : [];
      label.textContent = `${entities.length} ${entities.length === 1 ? "entity" : "entities"}`;
      result.append(renderTagged(item.words || [], item.tags || [], entities));
    } else if (Array.isArray(item.values)) {
      const names = (state.model.tasks && state.model.tasks[task] && state.model.tasks[task].labels) || [];
      label.textContent = item.values.map((v) => Number(v).toPrecision(4)).join(", ");
      const table = el("table", "values");
      table.id = "classify-values";
      item.values.forEach((v, i) => {
        const tr = el("tr");
        tr.append(el("td", null, names[i] || `value ${i}`), el("td", null, String(v)));
        table.append(tr);
      });
      result.append(table);
    } else {
      label.textContent = item.label;
      const score = el("span", null, percent(item.score));
      score.id = "classify-score";
      top.append(score);
      const bars = el("div", "bars");
      bars.id = "classify-bars";
      for (const [name, p] of Object.entries(item.probs || {})) {
        const topRow = name === item.label;
        const cls = topRow ? " bar-row-top" : "";
        const nameCell = el("div", "bar-label" + cls, name);
        const track = el("div", "bar-track" + cls);
        const fill = el("div", "bar-fill");
        fill.style.width = Math.max(0, Math.min(100, 100 * p)).toFixed(2) + "%";
        track.append(fill);
        track.dataset.label = name;
        track.setAttribute("role", "meter");
        track.setAttribute("aria-valuemin", "0");
        track.setAttribute("aria-valuemax", "1");
        track.setAttribute("aria-valuenow", String(p));
        track.setAttribute("aria-label", name);
        bars.append(nameCell, track, el("div", "bar-value" + cls, percent(p)));
      }
      result.append(bars);
    }
  }

  function renderTagged(words, tags, entities) {
    const wrap = el("div");
    const line = el("div", "tagged");
    line.id = "classify-tags";
    const joiner = CJK.test(words.join("")) ? "" : " ";
    const startAt = new Map(entities.map((e) => [e.start, e]));
    const types = new Set();
    let i = 0;
    while (i < words.length) {
      if (i > 0 && joiner) line.append(document.createTextNode(joiner));
      const ent = startAt.get(i);
      if (ent && ent.end > i) {
        const span = el("span", "entity");
        span.append(el("span", "ent-text", words.slice(i, ent.end).join(joiner)));
        span.dataset.type = ent.type;
        span.style.background = entityColour(ent.type);
        span.title = `${ent.type}: ${tags.slice(i, ent.end).join(" ")}`;
        span.append(el("span", "etype", ent.type));
        line.append(span);
        types.add(ent.type);
        i = ent.end;
      } else {
        const word = el("span", "word", words[i]);
        word.title = tags[i] || "O";
        line.append(word);
        i += 1;
      }
    }
    wrap.append(line);
    if (types.size) {
      const legend = el("div", "tag-legend");
      for (const t of types) {
        const chip = el("span", "entity", t);
        chip.style.background = entityColour(t);
        legend.append(chip);
      }
      wrap.append(legend);
    } else {
      wrap.append(el("p", "muted", "No entities found."));
    }
    return wrap;
  }

  // ------------------------------------------------------------------------------------------------
  // Attention

  const STOPS = [[255, 255, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];

  function colour(t) {
    const x = Math.max(0, Math.min(1, t)) * (STOPS.length - 1);
    const i = Math.min(STOPS.length - 2, Math.floor(x));
    const f = x - i;
    const a = STOPS[i];
    const b = STOPS[i + 1];
    return `rgb(${Math.round(a[0] + (b[0] - a[0]) * f)},${Math.round(a[1] + (b[1] - a[1]) * f)},` +
      `${Math.round(a[2] + (b[2] - a[2]) * f)})`;
  }

  // A token as a label: spaces made visible, control characters escaped, nothing empty.
  function tokenLabel(token) {
    const t = String(token);
    if (t === "") return "∅";
    if (!t.trim()) return "·".repeat(t.length);
    return t.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/\r/g, "\\r");
  }

  function fillSelect(select, values, selected) {
    select.replaceChildren();
    for (const [value, text] of values) {
      const option = el("option", null, text);
      option.value = value;
      select.append(option);
    }
    select.value = selected;
  }

  async function showAttention() {
    if (!state.model || state.attnBusy) return;
    const text = $("attn-input").value;
    showError("attn-error", "");
    if (!text.trim()) {
      showError("attn-error", "Enter a text.");
      return;
    }
    const body = { input: text, layer: Number($("attn-layer").value), head: null };
    if ($("attn-head").value !== "") body.head = Number($("attn-head").value);
    const target = $("attn-target");
    if (!target.hidden && target.value.trim()) body.target = target.value;
    state.attnBusy = true;
    $("attn-btn").disabled = true;
    try {
      const res = await post("v1/attention", body);
      const out = await res.json();
      const layers = [];
      for (let i = 0; i < out.n_layer; i++) layers.push([String(i), i === out.n_layer - 1 ? `${i} (last)` : String(i)]);
      fillSelect($("attn-layer"), layers, String(out.layer));
      const heads = [["", "mean"]];
      for (let i = 0; i < out.n_head; i++) heads.push([String(i), String(i)]);
      fillSelect($("attn-head"), heads, out.head === null || out.head === undefined ? "" : String(out.head));
      state.attn = out;
      drawAttention();
    } catch (e) {
      showError("attn-error", e.message);
    } finally {
      state.attnBusy = false;
      $("attn-btn").disabled = false;
    }
  }

  function drawAttention() {
    const out = state.attn;
    if (!out) return;
    const rows = out.tokens.length;
    const cols = out.key_tokens.length;
    const weights = out.weights;
    let max = 0;
    for (const row of weights) for (const w of row) if (w > max) max = w;
    const scale = $("attn-scale").value;
    const scaleMax = scale === "one" || max <= 0 ? 1 : max;
    const rowMax = weights.map((row) => Math.max(...row) || 1);

    const map = $("attn-map");
    map.hidden = false;
    const wrap = $("attn-wrap");
    const labelRoom = 110; // the row labels' column, about
    const room = Math.max(120, wrap.clientWidth - labelRoom - 4);
    // cells fill the panel's width, but no smaller than 12 px: a long text scrolls sideways
    const cell = Math.max(12, Math.min(34, Math.floor(room / Math.max(1, cols))));
    const font = Math.max(8, Math.min(14, cell - 4));

    // the column labels' height: the longest label's length, measured in the page's font
    const measure = document.createElement("canvas").getContext("2d");
    measure.font = `${font}px ${getComputedStyle(document.body).fontFamily}`;
    let longest = 0;
    for (const t of out.key_tokens) longest = Math.max(longest, measure.measureText(tokenLabel(t)).width);
    const colHeight = Math.ceil(Math.min(120, longest + 8));

    const colBox = $("attn-cols");
    const rowBox = $("attn-rows");
    colBox.replaceChildren();
    rowBox.replaceChildren();
    // column labels: horizontal text turned to read upwards (vertical writing modes lean on fonts'
    // vertical metrics, which some CJK fonts lack)
    const lineHeight = Math.round(font * 1.25);
    out.key_tokens.forEach((t, j) => {
      const label = el("div", "attn-col-label");
      label.style.width = cell + "px";
      label.style.height = colHeight + "px";
      label.title = String(t);
      label.dataset.index = String(j);
      const text = el("span", null, tokenLabel(t));
      text.style.fontSize = font + "px";
      text.style.lineHeight = lineHeight + "px";
      text.style.left = `calc(50% + ${lineHeight / 2}px)`;
      text.style.maxWidth = colHeight - 4 + "px";
      label.append(text);
      colBox.append(label);
    });
    out.tokens.forEach((t, i) => {
      const label = el("div", "attn-row-label", tokenLabel(t));
      label.style.height = cell + "px";
      label.style.lineHeight = cell + "px";
      label.style.fontSize = font + "px";
      label.title = String(t);
      label.dataset.index = String(i);
      rowBox.append(label);
    });

    const canvas = $("attn-canvas");
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = cols * cell + "px";
    canvas.style.height = rows * cell + "px";
    canvas.width = Math.round(cols * cell * dpr);
    canvas.height = Math.round(rows * cell * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cols * cell, rows * cell);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        ctx.fillStyle = colour(weights[i][j] / (scale === "row" ? rowMax[i] : scaleMax));
        ctx.fillRect(j * cell, i * cell, cell, cell);
      }
    }
    if (cell >= 10) {
      ctx.strokeStyle = "rgba(255,255,255,0.7)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let j = 1; j < cols; j++) {
        ctx.moveTo(j * cell + 0.5, 0);
        ctx.lineTo(j * cell + 0.5, rows * cell);
      }
      for (let i = 1; i < rows; i++) {
        ctx.moveTo(0, i * cell + 0.5);
        ctx.lineTo(cols * cell, i * cell + 0.5);
      }
      ctx.stroke();
    }
    canvas.dataset.cell = String(cell);
    canvas.dataset.rows = String(rows);
    canvas.dataset.cols = String(cols);
    canvas.setAttribute("aria-label", `attention map: ${rows} query tokens by ${cols} key tokens`);

    $("attn-legend").hidden = false;
    $("attn-legend-min").textContent = "0";
    $("attn-legend-max").textContent = scale === "row" ? "row maximum" : scaleMax === 1 ? "1" : scaleMax.toFixed(3);
    $("attn-caption").textContent = describeMap(out);
    map.dataset.version = String(Number(map.dataset.version || "0") + 1);
    map.dataset.ready = "true";
  }

  function describeMap(out) {
    const what = { self: "self-attention", cross: "cross-attention", pooling: "attention pooling" }[out.kind] || out.kind;
    const head = out.head === null || out.head === undefined ? `mean of ${out.n_head} heads` : `head ${out.head}`;
    return `${what}, layer ${out.layer} of 0–${out.n_layer - 1}, ${head}: rows are query tokens, columns key tokens. ` +
      "Hover a cell for its weight.";
  }

  function hoverCell(event) {
    const out = state.attn;
    const canvas = $("attn-canvas");
    if (!out) return;
    const cell = Number(canvas.dataset.cell);
    const rect = canvas.getBoundingClientRect();
    const j = Math.floor((event.clientX - rect.left - canvas.clientLeft) / cell);
    const i = Math.floor((event.clientY - rect.top - canvas.clientTop) / cell);
    if (i < 0 || j < 0 || i >= out.tokens.length || j >= out.key_tokens.length) {
      leaveMap();
      return;
    }
    const w = out.weights[i][j];
    const text = `${tokenLabel(out.tokens[i])} → ${tokenLabel(out.key_tokens[j])}: ${w.toFixed(4)}`;
    const tip = $("attn-tip");
    tip.textContent = text;
    tip.hidden = false;
    // beside the pointer, flipped to its other side near the window's edge
    const x = event.clientX + 14;
    const y = event.clientY + 14;
    const w0 = tip.offsetWidth;
    const h0 = tip.offsetHeight;
    tip.style.left = (x + w0 > window.innerWidth ? event.clientX - 10 - w0 : x) + "px";
    tip.style.top = (y + h0 > window.innerHeight ? event.clientY - 10 - h0 : y) + "px";
    const caption = $("attn-caption");
    caption.textContent = `query “${out.tokens[i]}” (row ${i}) → key “${out.key_tokens[j]}” (column ${j}): weight ${w.toFixed(4)}`;
    caption.dataset.row = String(i);
    caption.dataset.col = String(j);
    caption.dataset.weight = String(w);
    highlight(i, j);
  }

  function highlight(i, j) {
    for (const node of document.querySelectorAll(".attn-row-label.hot, .attn-col-label.hot")) node.classList.remove("hot");
    if (i === null) return;
    const row = $("attn-rows").children[i];
    const col = $("attn-cols").children[j];
    if (row) row.classList.add("hot");
    if (col) col.classList.add("hot");
  }

  function leaveMap() {
    $("attn-tip").hidden = true;
    highlight(null, null);
    if (state.attn) {
      const caption = $("attn-caption");
      caption.textContent = describeMap(state.attn);
      delete caption.dataset.row;
      delete caption.dataset.col;
      delete caption.dataset.weight;
    }
  }

  // ------------------------------------------------------------------------------------------------
  // Wiring

  function init() {
    $("settings-key").value = getKey();
    $("settings-form").addEventListener("submit", (e) => {
      e.preventDefault();
      setKey($("settings-key").value.trim());
      $("settings").open = false;
      loadModels();
    });
    $("settings-clear").addEventListener("click", () => {
      setKey("");
      loadModels();
    });
    $("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const key = $("key-input").value.trim();
      if (!key) return;
      setKey(key);
      $("key-input").value = "";
      $("key-message").textContent = "Checking the key…";
      loadModels();
    });

    $("chat-form").addEventListener("submit", (e) => {
      e.preventDefault();
      sendChat();
    });
    $("chat-input").addEventListener("keydown", (e) => {
      // Enter sends; Shift+Enter is a new line; Enter that ends an IME composition (Chinese input) does neither
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        sendChat();
      }
    });
    $("chat-stop").addEventListener("click", stopChat);
    $("chat-clear").addEventListener("click", clearChat);

    $("classify-btn").addEventListener("click", classify);
    $("classify-input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        classify();
      }
    });

    $("attn-btn").addEventListener("click", showAttention);
    $("attn-input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        showAttention();
      }
    });
    for (const id of ["attn-layer", "attn-head"]) {
      $(id).addEventListener("change", () => {
        if (state.attn) showAttention();
      });
    }
    $("attn-scale").addEventListener("change", drawAttention);
    const canvas = $("attn-canvas");
    canvas.addEventListener("mousemove", hoverCell);
    canvas.addEventListener("mouseleave", leaveMap);
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(drawAttention, 150);
    });

    loadModels();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
