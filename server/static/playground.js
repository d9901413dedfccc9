// VSSM serve playground: plain JavaScript over the public HTTP API (docs/api.md); no build step.
//
// Image models (binary tokens, a square number of positions) draw on a pixel canvas; text models
// (byte-level, `text: true`) take and return text.  Everything the page knows about a model comes
// from its card (`GET /v1/models`); everything it does is a call a user could make with curl.

const $ = (selector, root = document) => root.querySelector(selector);
const KEY_STORE = "vssm-playground:api-key";
const HISTORY = "vssm-playground:session:"; // + session id: what this browser has seen of a session

// Pixel codes of an image view, and their colours: the prompt in blue, generated pixels in black
// and white (tests read them back from the canvas), positions not yet generated in grey.
const PENDING = 0, PROMPT_0 = 1, PROMPT_1 = 2, GEN_0 = 3, GEN_1 = 4;
const COLOURS = {
  [PENDING]: [58, 63, 75],
  [PROMPT_0]: [16, 35, 63],
  [PROMPT_1]: [127, 178, 255],
  [GEN_0]: [0, 0, 0],
  [GEN_1]: [255, 255, 255],
};
const EDIT_OFF = [[28, 31, 38], [75, 85, 99]]; // editor rows outside the prompt: [background, ink]

const ui = {
  models: [], // model cards
  card: null, // the selected one
  pixels: new Uint8Array(784), // the drawing
  side: 28,
  brush: 1, // 1: pen, 0: eraser
  digits: [],
  running: null, // AbortController of the Complete tab's request
  branches: [], // sessions shown in the Sessions tab
};

// ----- the HTTP API ---------------------------------------------------------------------------------
class APIError extends Error {
  constructor(status, body, fallback) {
    const e = (body && body.error) || {};
    super(e.message || fallback || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || null;
    this.type = e.type || null;
    this.param = e.param || null;
  }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("#api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function failure(response) {
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch { /* not the envelope: a proxy's page, say */ }
  return new APIError(response.status, body, text.slice(0, 200) || response.statusText);
}

async function api(method, path, body, signal) {
  const response = await fetch(path, {
    method, headers: headers(), signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// POST with `stream: true`; yields each Server-Sent Event's JSON until `[DONE]`.  An error after the
// stream started arrives in band as an envelope and is thrown like any other.
async function* stream(path, body, signal) {
  const response = await fetch(path, {
    method: "POST", headers: headers(), signal, body: JSON.stringify({ ...body, stream: true }),
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue; // a keep-alive comment
      if (data === "[DONE]") return;
      const event = JSON.parse(data);
      if (event.error) throw new APIError(null, event); // in band: the response's status was already 200
      yield event;
    }
  }
  throw new Error("the stream ended before [DONE]");
}

// ----- errors ---------------------------------------------------------------------------------------
function showError(err) {
  if (err.name === "AbortError") return;
  const parts = [];
  if (err.status) parts.push(String(err.status));
  if (err.code) parts.push(err.code);
  let text = `${parts.length ? parts.join(" ") + ": " : ""}${err.message}`;
  if (err.param) text += ` (field: ${err.param})`;
  if (err.status === 401) {
    $("#key-label").classList.add("needed");
    text += " — this server needs an API key: enter it at the top right.";
  }
  $("#error-text").textContent = text;
  $("#error").hidden = false;
}

function clearError() {
  $("#error").hidden = true;
}

// ----- models -----------------------------------------------------------------------------------------
const isText = (card) => card.text;
// The side of a square binary image model (0: not one): from the card's modality when the server
// sends it, else from a square number of positions.
const sideOf = (card) => {
  if (card.text || card.vocab_size !== 2 || !card.max_position) return 0;
  const shape = card.modality && card.modality.kind === "image" ? card.modality.shape || [] : null;
  if (card.modality && !shape) return 0;
  if (shape && (shape.length !== 2 || shape[0] !== shape[1])) return 0; // the canvas draws squares
  const s = Math.round(Math.sqrt(card.max_position));
  return s * s === card.max_position ? s : 0;
};
const kind = (card) => (isText(card) ? "text" : sideOf(card) ? "image" : "tokens");
const autoregressive = (card) => card.family !== "vssm";
const latent = (card) => ["vssm", "tvae", "vrnn"].includes(card.family); // draws tokens given latents

async function loadModels() {
  clearError();
  const select = $("#model");
  try {
    const list = await api("GET", "/v1/models");
    $("#key-label").classList.remove("needed");
    ui.models = list.data.filter((m) => kind(m) !== "tokens"); // the page draws images and writes text
    const previous = new URLSearchParams(location.search).get("model") || (ui.card && ui.card.id);
    select.replaceChildren(...ui.models.map((m) => new Option(`${m.id}  (${m.family})`, m.id)));
    const preferred = ui.models.find((m) => m.id === previous) || ui.models.find((m) => kind(m) === "image") || ui.models[0];
    if (!preferred) throw new Error("this server serves no image or text model");
    select.value = preferred.id;
    selectModel(preferred.id);
    await resumeSessions();
  } catch (err) {
    select.replaceChildren(new Option("(no models)", ""));
    showError(err);
  }
}

function selectModel(id) {
  ui.card = ui.models.find((m) => m.id === id);
  const card = ui.card;
  const fields = [
    ["family", card.family],
    ["parameters", card.parameters.toLocaleString("en")],
    ["vocabulary", card.text ? `${card.vocab_size} (bytes: text in, text out)` : card.vocab_size],
    ["max position", card.max_position ?? "none"],
    ["state", `${formatBytes(card.state_bytes)} per session${card.family === "ar-transformer" ? " at position 0 (a KV cache: grows)" : ", at any position"}`],
    ["default block", card.default_block_size ?? "one parallel pass"],
    ...(latent(card) ? [["tokens given latents", (card.observation_temperature ?? 1) === 0 ? "most likely (observation temperature 0)" : `observation temperature ${card.observation_temperature ?? 1}`]] : []),
    ["fingerprint", card.fingerprint],
  ];
  $("#card").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
  $("#card-details").replaceChildren(...cardDetails(card));
  const image = kind(card) === "image";
  $("#image-prompt").hidden = !image;
  $("#text-prompt").hidden = image;
  ui.side = image ? sideOf(card) : 28;
  if (image && ui.pixels.length !== ui.side * ui.side) ui.pixels = new Uint8Array(ui.side * ui.side);
  if (image) {
    $("#draw").width = $("#draw").height = ui.side;
    $("#rows").max = ui.side;
    if (+$("#rows").value > ui.side) $("#rows").value = Math.floor(ui.side / 2);
    $("#digits").hidden = ui.side !== 28;
    drawEditor();
  }
  $("#session-step").value = image ? ui.side * 4 : 64;
  fillChunks(card);
  fillBlocks(card);
  fillObservation(card);
  fillRace();
  $("#generate").textContent = image ? "Complete the image" : "Generate";
  const url = new URL(location.href);
  url.searchParams.set("model", card.id);
  history.replaceState(null, "", url);
  renderIdle($("#output"), card);
}

// The model card's prose and figures (intended use, data, training, metrics, limitations), when sent.
function cardDetails(card) {
  const c = card.card;
  if (!c) return [];
  const out = [];
  if (c.summary) out.push(el("p", { class: "summary" }, c.summary));
  const more = [];
  if (c.intended_use) more.push(el("h4", {}, "Intended use"), el("p", {}, c.intended_use));
  if (c.data) more.push(el("h4", {}, "Data"), el("p", {}, c.data));
  const t = c.training || {};
  const training = [
    t.preset && `preset ${t.preset}`,
    t.steps && `${t.steps.toLocaleString("en")} steps`,
    t.seconds && `${(t.seconds / 60).toFixed(0)} min`,
    t.machine,
  ].filter(Boolean);
  if (training.length || t.note) more.push(el("h4", {}, "Training"), el("p", {}, [training.join(" · "), t.note].filter(Boolean).join(". ")));
  if (c.metrics && c.metrics.length) {
    more.push(el("h4", {}, "Measured"), el("ul", {}, ...c.metrics.map((m) =>
      el("li", { title: m.note || "" }, `${m.name}: ${Number(m.value.toPrecision(4))} ${m.unit}`))));
  }
  if (c.limitations && c.limitations.length) {
    more.push(el("h4", {}, "Limitations"), el("ul", {}, ...c.limitations.map((l) => el("li", {}, l))));
  }
  if (more.length) out.push(el("details", {}, el("summary", {}, "Model card"), ...more));
  return out;
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  return n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} kB` : `${(n / 1024 / 1024).toFixed(2)} MB`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  node.append(...children);
  return node;
}

// ----- the drawing ------------------------------------------------------------------------------------
function promptRows() {
  return kind(ui.card) === "image" ? +$("#rows").value : 0;
}

function drawEditor() {
  const canvas = $("#draw");
  const side = ui.side, rows = promptRows();
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(side, side);
  for (let i = 0; i < side * side; i++) {
    const inPrompt = Math.floor(i / side) < rows;
    const rgb = inPrompt ? COLOURS[ui.pixels[i] ? PROMPT_1 : PROMPT_0] : EDIT_OFF[ui.pixels[i]];
    image.data.set([...rgb, 255], i * 4);
  }
  ctx.putImageData(image, 0, 0);
  $("#rows-out").textContent = `${rows} of ${side} (${rows * side} tokens)`;
}

function cellAt(event) {
  const canvas = $("#draw"), rect = canvas.getBoundingClientRect();
  const x = Math.floor(((event.clientX - rect.left) / rect.width) * ui.side);
  const y = Math.floor(((event.clientY - rect.top) / rect.height) * ui.side);
  return [Math.min(Math.max(x, 0), ui.side - 1), Math.min(Math.max(y, 0), ui.side - 1)];
}

function stamp(x, y) {
  // a 2x2 brush: MNIST strokes are two to three pixels wide
  for (const [dx, dy] of [[0, 0], [1, 0], [0, 1], [1, 1]]) {
    const cx = x + dx, cy = y + dy;
    if (cx < ui.side && cy < ui.side) ui.pixels[cy * ui.side + cx] = ui.brush;
  }
}

function setupDrawing() {
  const canvas = $("#draw");
  let last = null;
  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    last = cellAt(e);
    stamp(...last);
    drawEditor();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const [x, y] = cellAt(e);
    const steps = Math.max(Math.abs(x - last[0]), Math.abs(y - last[1]), 1);
    for (let s = 1; s <= steps; s++) {
      stamp(Math.round(last[0] + ((x - last[0]) * s) / steps), Math.round(last[1] + ((y - last[1]) * s) / steps));
    }
    last = [x, y];
    drawEditor();
  });
  const end = () => { last = null; };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  const brush = (b) => {
    ui.brush = b;
    $("#pen").setAttribute("aria-pressed", String(b === 1));
    $("#eraser").setAttribute("aria-pressed", String(b === 0));
  };
  $("#pen").addEventListener("click", () => brush(1));
  $("#eraser").addEventListener("click", () => brush(0));
  $("#clear").addEventListener("click", () => { ui.pixels.fill(0); drawEditor(); });
  $("#rows").addEventListener("input", drawEditor);
}

async function loadDigits() {
  try {
    const response = await fetch("/static/digits.json");
    const data = await response.json();
    ui.digits = data.digits;
  } catch (err) {
    showError(err);
    return;
  }
  $("#digits").replaceChildren(...ui.digits.map((d) => {
    const canvas = el("canvas", { class: "pixels", width: 28, height: 28 });
    const ctx = canvas.getContext("2d"), image = ctx.createImageData(28, 28);
    [...d.pixels].forEach((p, i) => image.data.set(p === "1" ? [255, 255, 255, 255] : [16, 18, 24, 255], i * 4));
    ctx.putImageData(image, 0, 0);
    const button = el("button", { type: "button", title: `test digit ${d.label} (MNIST test image ${d.index})`, "data-digit": d.label }, canvas);
    button.addEventListener("click", () => {
      if (ui.side !== 28) return;
      ui.pixels = Uint8Array.from(d.pixels, (p) => +p);
      drawEditor();
    });
    return button;
  }));
}

// ----- settings ---------------------------------------------------------------------------------------
function fillChunks(card) {
  const select = $("#chunk");
  const side = sideOf(card);
  const choices = side
    ? [[side, `${side} (one row)`], [side * 4, `${side * 4} (four rows)`], [side * side, "everything at once"]]
    : [[1, "1"], [4, "4"], [16, "16"], [64, "64"], [4096, "everything at once"]];
  select.replaceChildren(...choices.map(([v, label]) => new Option(label, v)));
  select.value = side ? side : 16;
}

const ONE_PASS = 1000000; // a block size past every position: one parallel pass

function blockChoices(card) {
  const fromCurve = card.block_curve.map((p) => p.block_size);
  const limit = card.max_position || ONE_PASS;
  const base = fromCurve.length
    ? fromCurve
    : card.max_position === 784
      ? [1, 2, 4, 7, 14, 28, 56, 112, 196, 392, 784]
      : [1, 2, 4, 8, 16, 32, 64, 128, 256];
  const sizes = new Set(base.map((c) => Math.min(c, limit)));
  if (card.default_block_size) sizes.add(Math.min(card.default_block_size, limit));
  sizes.add(limit); // one parallel pass
  return [...sizes].sort((a, b) => a - b);
}

function fillBlocks(card) {
  const range = $("#block");
  ui.blocks = autoregressive(card) ? [] : blockChoices(card);
  range.disabled = autoregressive(card);
  if (autoregressive(card)) {
    range.max = 0;
    range.value = 0;
  } else {
    range.max = ui.blocks.length - 1;
    const wanted = card.default_block_size ? Math.min(card.default_block_size, card.max_position || ONE_PASS) : ui.blocks.at(-1);
    range.value = Math.max(0, ui.blocks.indexOf(wanted));
  }
  showBlock();
}

// The observation temperature (docs/api.md): the model's own setting unless the page names one.
function fillObservation(card) {
  const select = $("#observation");
  select.disabled = !latent(card);
  select.options[0].textContent = latent(card)
    ? `the model's (${card.observation_temperature ?? 1})`
    : "no latents (autoregressive)";
  if (!latent(card)) select.value = "";
}

function observation(card) {
  const v = $("#observation").value;
  return v === "" || !latent(card) ? null : +v;
}

function blockSize() {
  if (autoregressive(ui.card)) return null; // token by token whatever is asked
  return ui.blocks[+$("#block").value];
}

function blockLabel(card, c) {
  if (autoregressive(card)) return "token by token (autoregressive)";
  const onePass = card.max_position ? c >= card.max_position : c >= ONE_PASS;
  let label = onePass ? "one parallel pass" : `${c}${sideOf(card) && c % sideOf(card) === 0 ? ` (${c / sideOf(card)} row${c === sideOf(card) ? "" : "s"})` : ""}`;
  if (c === card.default_block_size || (onePass && card.default_block_size == null)) label += ", the model's default";
  return label;
}

function showBlock() {
  const card = ui.card;
  const c = blockSize();
  $("#block-out").textContent = blockLabel(card, c);
  drawCurve(card, c);
}

// The speed / quality curve the model card reports (measured with these weights by `vssm eval`):
// NLL per sequence against milliseconds per sequence (batch 1, log scale), one point per block size.
function drawCurve(card, selected) {
  const box = $("#curve");
  const points = card.block_curve;
  if (!points.length || (autoregressive(card) && points.length === 1)) { // a one-way sampler's only point
    box.replaceChildren(el("p", { class: "note" }, !autoregressive(card)
      ? "No measured speed / quality curve for this model (vssm eval --block-sizes writes one)."
      : card.family.startsWith("ar-")
        ? "An autoregressive model samples one token per step."
        : `A ${card.family.toUpperCase()} samples the same way at every block size.`));
    return;
  }
  const W = 340, H = 150, L = 44, R = 26, T = 14, B = 30;
  const xs = points.map((p) => Math.log10(p.ms_per_sequence_batch_1)), ys = points.map((p) => p.nats_per_sequence);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const px = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const py = (y) => T + ((y - y0) / (y1 - y0 || 1)) * (H - T - B); // lower NLL is higher up
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  add("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B });
  add("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B });
  add("text", { x: L, y: H - 6 }, `${Math.round(10 ** x0)} ms`);
  add("text", { x: W - R, y: H - 6, "text-anchor": "end" }, `${Math.round(10 ** x1)} ms per sequence`);
  add("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, y0.toFixed(0));
  add("text", { x: L - 4, y: H - B, "text-anchor": "end" }, y1.toFixed(0));
  add("text", { x: 2, y: (H - B) / 2 + 4 }, "NLL");
  add("polyline", { class: "path", points: points.map((p, i) => `${px(xs[i])},${py(ys[i])}`).join(" ") });
  const onePass = (c) => (card.max_position ? Math.min(c, card.max_position) : c);
  // every point; a label where it does not cover another (the selected point's always)
  const on = points.map((p) => onePass(p.block_size) === onePass(selected));
  const placed = [];
  const order = points.map((_, i) => i).sort((a, b) => on[b] - on[a]);
  for (const i of [...order].reverse()) {
    add("circle", { class: on[i] ? "pt on" : "pt", cx: px(xs[i]), cy: py(ys[i]), r: on[i] ? 5 : 3 });
  }
  for (const i of order) {
    const [x, y] = [px(xs[i]) + 5, py(ys[i]) - 5];
    if (placed.some(([u, v]) => Math.abs(u - x) < 20 && Math.abs(v - y) < 11)) continue;
    placed.push([x, y]);
    add("text", { class: on[i] ? "on" : "", x, y }, String(points[i].block_size));
  }
  const point = points.find((p) => onePass(p.block_size) === onePass(selected));
  const note = point
    ? `block ${point.block_size}: ${point.nats_per_sequence.toFixed(1)} nats per sequence (${point.bound === "iw" ? "upper bound" : "exact"}), `
      + `${point.ms_per_sequence_batch_1.toFixed(0)} ms per sequence alone, ${point.ms_per_sequence_batch_32.toFixed(1)} ms in a batch of 32`
    : "this block size was not measured";
  box.replaceChildren(svg, el("p", { class: "note" }, note));
}

function seed() {
  if ($("#seed-random").checked) $("#seed").value = Math.floor(Math.random() * 2 ** 31);
  return Math.max(0, Math.floor(+$("#seed").value || 0));
}

function temperature() {
  return +$("#temperature").value;
}

function stopSequences() {
  const raw = $("#stop").value;
  if (!raw) return undefined;
  return raw.replace(/\\n/g, "\n").replace(/\\t/g, "\t"); // typed escapes, as in a JSON string
}

// The request every tab sends for the current prompt and settings (the sessions tab reshapes it).
function request(card) {
  const body = { model: card.id, temperature: temperature(), seed: seed(), chunk_size: +$("#chunk").value };
  const c = blockSize();
  const onePassByDefault = card.default_block_size == null && c === (card.max_position || ONE_PASS);
  if (c != null && !autoregressive(card) && !onePassByDefault) body.block_size = c;
  const r = observation(card);
  if (r != null) body.observation_temperature = r;
  if (kind(card) === "image") {
    const side = sideOf(card), n = promptRows() * side;
    body.prompt = Array.from(ui.pixels.slice(0, n));
    body.max_tokens = side * side - n;
    body.chunk_size = Math.min(body.chunk_size, body.max_tokens);
  } else {
    body.prompt = $("#text").value;
    body.max_tokens = Math.max(1, +$("#max-tokens").value || 1);
    body.chunk_size = Math.min(body.chunk_size, body.max_tokens);
    const stop = stopSequences();
    if (stop) body.stop = stop;
  }
  return body;
}

// ----- views: one model's output, painted as chunks arrive ------------------------------------------------
function renderIdle(lane, card, title) {
  lane.dataset.state = "idle";
  lane.dataset.model = card.id;
  const heading = el("h3", {}, title || card.id, " ", el("small", {}, card.family));
  if (kind(card) === "image") {
    const side = sideOf(card);
    const canvas = el("canvas", { class: "pixels out", width: side, height: side });
    lane.replaceChildren(heading, canvas, legend(), el("div", { class: "stats" }));
    paint(canvas, new Uint8Array(side * side));
  } else {
    lane.replaceChildren(heading, el("pre", { class: "text" }), el("div", { class: "stats" }));
  }
}

function legend() {
  return el("div", { class: "legend" },
    el("span", {}, el("i", { class: "p" }), "prompt"),
    el("span", {}, el("i", { class: "g" }), "generated"),
    el("span", {}, el("i", { class: "u" }), "not yet"));
}

function paint(canvas, codes) {
  const ctx = canvas.getContext("2d"), image = ctx.createImageData(canvas.width, canvas.height);
  codes.forEach((code, i) => image.data.set([...COLOURS[code], 255], i * 4));
  ctx.putImageData(image, 0, 0);
}

function promptCodes(card, prompt) {
  const codes = new Uint8Array(card.max_position);
  prompt.forEach((t, i) => { codes[i] = t ? PROMPT_1 : PROMPT_0; });
  return codes;
}

function stats(lane, html) {
  $(".stats", lane).replaceChildren(...html);
}

const ms = (t) => `${t < 10 ? t.toFixed(1) : Math.round(t)} ms`;

// Stream one completion into a lane; resolves with its timings.
async function runCompletion(lane, card, body, signal) {
  renderIdle(lane, card, lane.dataset.title);
  lane.dataset.state = "running";
  const t0 = performance.now();
  let first = null, count = 0, reason = null;
  const image = kind(card) === "image";
  const canvas = $("canvas", lane), pre = $("pre", lane);
  const codes = image ? promptCodes(card, body.prompt) : null;
  let position = body.prompt.length;
  let generated = null;
  if (image) paint(canvas, codes);
  else {
    pre.replaceChildren(el("span", { class: "prompt" }, body.prompt), (generated = el("span", { class: "generated" })));
  }
  const show = (done) => {
    const total = performance.now() - t0;
    const parts = [
      "first chunk ", el("b", {}, first == null ? "…" : ms(first)),
      " · total ", el("b", {}, ms(total)),
      ` · ${count} tokens`,
    ];
    if (!image && count && total > 0) parts.push(" · ", el("b", {}, `${Math.round((count / total) * 1000)} tokens/s`));
    parts.push(` · seed ${body.seed}`);
    if (done && reason) parts.push(` · ${reason}`);
    stats(lane, parts);
  };
  try {
    for await (const event of stream("/v1/completions", body, signal)) {
      if (first == null) first = performance.now() - t0;
      const choice = event.choices[0];
      if (!choice) continue;
      if (image) {
        for (const t of choice.tokens) codes[position++] = t ? GEN_1 : GEN_0;
        paint(canvas, codes);
      } else {
        generated.append(choice.text);
      }
      count += choice.tokens.length;
      reason = choice.finish_reason || reason;
      show(false);
    }
    const total = performance.now() - t0;
    show(true);
    lane.dataset.state = "done";
    return { first, total, count };
  } catch (err) {
    lane.dataset.state = "error";
    stats(lane, [err.name === "AbortError" ? "stopped" : `error: ${err.code || err.status || ""} ${err.message}`]);
    throw err;
  }
}

async function generate() {
  clearError();
  const card = ui.card, body = request(card);
  ui.running = new AbortController();
  $("#generate").disabled = true;
  $("#cancel").disabled = false;
  try {
    await runCompletion($("#output"), card, body, ui.running.signal);
  } catch (err) {
    showError(err);
  } finally {
    ui.running = null;
    $("#generate").disabled = false;
    $("#cancel").disabled = true;
  }
}

// ----- race ------------------------------------------------------------------------------------------------
function fillRace() {
  const card = ui.card;
  const same = ui.models.filter((m) => kind(m) === kind(card) && m.max_position === card.max_position);
  const options = () => same.map((m) => new Option(`${m.id} (${m.family})`, m.id));
  $("#race-a").replaceChildren(...options());
  $("#race-b").replaceChildren(...options());
  $("#race-a").value = card.id;
  const other = same.find((m) => m.family === (autoregressive(card) ? "vssm" : "ar-ssm")) || same.find((m) => m.id !== card.id) || card;
  $("#race-b").value = other.id;
  for (const [lane, id] of [["#lane-a", card.id], ["#lane-b", other.id]]) {
    renderIdle($(lane), ui.models.find((m) => m.id === id));
  }
}

async function race() {
  clearError();
  const base = request(ui.card);
  const cards = [$("#race-a").value, $("#race-b").value].map((id) => ui.models.find((m) => m.id === id));
  const lanes = [$("#lane-a"), $("#lane-b")];
  $("#race").disabled = true;
  const run = (i) => {
    const body = { ...base, model: cards[i].id };
    if (autoregressive(cards[i])) delete body.block_size; // it would be ignored anyway
    if (!latent(cards[i])) delete body.observation_temperature; // likewise
    return runCompletion(lanes[i], cards[i], body);
  };
  lanes.forEach((lane, i) => renderIdle(lane, cards[i]));
  let runs;
  if ($("#race-mode").value === "concurrent") {
    runs = [run(0), run(1)];
  } else {
    const a = run(0);
    runs = [a, a.catch(() => null).then(() => run(1))];
  }
  const results = await Promise.allSettled(runs);
  $("#race").disabled = false;
  results.filter((r) => r.status === "rejected").forEach((r) => showError(r.reason));
  if (results.every((r) => r.status === "fulfilled")) {
    const [a, b] = results.map((r) => r.value.total);
    const winner = a <= b ? 0 : 1;
    const ratio = Math.max(a, b) / Math.max(Math.min(a, b), 1e-3);
    $("h3", lanes[winner]).append(el("span", { class: "badge" }, `${ratio.toFixed(1)}x faster`));
  }
}

// ----- sessions ----------------------------------------------------------------------------------------------
// A branch: one session shown with what this browser saw of it (prompt and generated tokens,
// remembered in localStorage so a reload can show them; another browser sees positions only).
function remember(branch) {
  const { id, model, tokens, promptLength, text } = branch;
  try {
    localStorage.setItem(HISTORY + id, JSON.stringify({ model, tokens, promptLength, text }));
  } catch { /* storage full or disabled: the session still works */ }
}

function recall(id) {
  try {
    return JSON.parse(localStorage.getItem(HISTORY + id) || "null");
  } catch {
    return null;
  }
}

function syncURL() {
  const url = new URL(location.href);
  if (ui.branches.length) url.searchParams.set("session", ui.branches.map((b) => b.id).join(","));
  else url.searchParams.delete("session");
  history.replaceState(null, "", url);
}

function addBranch(info, seen) {
  const card = ui.models.find((m) => m.id === info.model);
  const branch = {
    id: info.id, model: info.model, info, card,
    tokens: seen?.tokens ?? [], // image: token by position (-1: not seen here)
    promptLength: seen?.promptLength ?? 0,
    text: seen?.text ?? { prompt: "", generated: "", unknown: 0 },
    element: el("article", { class: "branch", "data-session": info.id }),
  };
  ui.branches.push(branch);
  $("#branches").append(branch.element);
  renderBranch(branch);
  remember(branch);
  syncURL();
  return branch;
}

function renderBranch(branch) {
  const { info, card } = branch;
  const letter = String.fromCharCode(65 + ui.branches.indexOf(branch));
  branch.element.dataset.position = info.position;
  const meta = [
    ["id", info.id],
    ["model", info.model],
    ["position", `${info.position}${card?.max_position ? ` of ${card.max_position}` : ""}`],
    ["state", formatBytes(info.state_bytes)],
    ["block size", card ? blockLabel(card, info.block_size ?? card.max_position ?? ONE_PASS) : info.block_size],
    ["seed", info.seed],
  ];
  const view = [];
  if (card && kind(card) === "image") {
    const canvas = el("canvas", { class: "pixels out", width: sideOf(card), height: sideOf(card) });
    const codes = new Uint8Array(card.max_position);
    branch.tokens.forEach((t, i) => {
      if (t >= 0) codes[i] = i < branch.promptLength ? (t ? PROMPT_1 : PROMPT_0) : t ? GEN_1 : GEN_0;
    });
    paint(canvas, codes);
    view.push(canvas);
  } else {
    const t = branch.text;
    view.push(el("pre", { class: "text" },
      t.unknown ? el("span", { class: "unknown" }, `[${t.unknown} tokens before this page]`) : "",
      el("span", { class: "prompt" }, t.prompt), el("span", { class: "generated" }, t.generated)));
  }
  const full = card?.max_position != null && info.position >= card.max_position;
  const buttons = el("div", { class: "buttons" },
    button("Continue", () => continueBranch(branch), full || !card, "continue"),
    button("Fork", () => forkBranch(branch), !card, "fork"),
    button("Delete", () => deleteBranch(branch), false, "delete"));
  branch.element.replaceChildren(
    el("h3", {}, `Branch ${letter}`, branch.note ? el("span", { class: "badge" }, branch.note) : ""),
    el("dl", { class: "meta" }, ...meta.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))])),
    ...view, buttons, el("div", { class: "stats" }, branch.stats || ""));
}

function button(label, onClick, disabled, name) {
  const b = el("button", { type: "button", disabled, "data-action": name }, label);
  b.addEventListener("click", async () => {
    clearError();
    b.disabled = true;
    try {
      await onClick();
    } catch (err) {
      showError(err);
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

async function startSession() {
  clearError();
  const card = ui.card, base = request(card);
  const body = { model: card.id, prompt: base.prompt, seed: base.seed };
  if (base.block_size != null) body.block_size = base.block_size;
  if (base.observation_temperature != null) body.observation_temperature = base.observation_temperature;
  const info = await api("POST", "/v1/sessions", body);
  const image = kind(card) === "image";
  for (const b of ui.branches) b.element.remove();
  ui.branches = [];
  const seen = image
    ? { tokens: [...base.prompt], promptLength: base.prompt.length }
    : { text: { prompt: base.prompt, generated: "", unknown: 0 } };
  addBranch(info, seen);
}

async function continueBranch(branch) {
  const { card } = branch;
  let n = Math.max(1, +$("#session-step").value || 1);
  if (card.max_position) n = Math.min(n, card.max_position - branch.info.position);
  const body = { max_tokens: n, temperature: temperature(), expected_position: branch.info.position };
  body.chunk_size = Math.min(+$("#chunk").value || n, n);
  const t0 = performance.now();
  let first = null;
  for await (const chunk of stream(`/v1/sessions/${branch.id}/generate`, body)) {
    if (first == null) first = performance.now() - t0;
    if (kind(card) === "image") {
      chunk.tokens.forEach((t, i) => { branch.tokens[chunk.start_position + i] = t; });
    } else {
      branch.text.generated += chunk.text;
    }
    branch.info = { ...branch.info, position: chunk.position };
    branch.stats = `first chunk ${ms(first)} · total ${ms(performance.now() - t0)} · ${chunk.position - body.expected_position} tokens`;
    renderBranch(branch);
  }
  branch.info = await api("GET", `/v1/sessions/${branch.id}`);
  remember(branch);
  renderBranch(branch);
}

async function forkBranch(branch) {
  // a new seed: the branch draws its own tokens from here (with the parent's it would repeat them)
  const body = { seed: Math.floor(Math.random() * 2 ** 31) };
  const t0 = performance.now();
  const info = await api("POST", `/v1/sessions/${branch.id}/fork`, body);
  const took = performance.now() - t0;
  const child = addBranch(info, { tokens: [...branch.tokens], promptLength: branch.promptLength, text: { ...branch.text } });
  child.stats = `forked at position ${info.position} in ${ms(took)}: one copy of a ${formatBytes(info.state_bytes)} state, new seed`;
  renderBranch(child);
}

async function deleteBranch(branch) {
  try {
    await api("DELETE", `/v1/sessions/${branch.id}`);
  } catch (err) {
    if (err.status !== 404) throw err; // already gone: drop it here too
  }
  localStorage.removeItem(HISTORY + branch.id);
  ui.branches = ui.branches.filter((b) => b !== branch);
  branch.element.remove();
  ui.branches.forEach(renderBranch);
  syncURL();
}

// The session ids in the address (`?session=sess_a,sess_b`): fetch them and show them again.
async function resumeSessions() {
  const ids = (new URLSearchParams(location.search).get("session") || "").split(",").filter(Boolean);
  if (!ids.length || ui.branches.length) return;
  for (const id of ids) {
    let info;
    try {
      info = await api("GET", `/v1/sessions/${encodeURIComponent(id)}`);
    } catch (err) {
      showError(err);
      continue;
    }
    const seen = recall(id);
    const card = ui.models.find((m) => m.id === info.model);
    let history = seen && seen.model === info.model ? seen : null;
    if (!history) {
      history = card && kind(card) === "image"
        ? { tokens: new Array(info.position).fill(-1), promptLength: 0 }
        : { text: { prompt: "", generated: "", unknown: info.position } };
    }
    const branch = addBranch(info, history);
    branch.note = "resumed";
    renderBranch(branch);
  }
  syncURL();
  if (ui.branches.length) {
    selectTab("sessions");
    const card = ui.branches[0].card;
    if (card && card.id !== ui.card.id) {
      $("#model").value = card.id;
      selectModel(card.id);
    }
  }
}

// ----- tabs and wiring ----------------------------------------------------------------------------------------
function selectTab(name) {
  for (const tab of ["complete", "race", "sessions"]) {
    $(`#tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    $(`#pane-${tab}`).hidden = tab !== name;
  }
}

function main() {
  const key = $("#api-key");
  key.value = localStorage.getItem(KEY_STORE) || "";
  key.addEventListener("change", () => {
    localStorage.setItem(KEY_STORE, key.value.trim());
    loadModels();
  });
  $("#error-close").addEventListener("click", clearError);
  $("#model").addEventListener("change", (e) => selectModel(e.target.value));
  $("#temperature").addEventListener("input", () => { $("#temperature-out").textContent = temperature().toFixed(2); });
  $("#block").addEventListener("input", showBlock);
  $("#seed").addEventListener("input", () => { $("#seed-random").checked = false; });
  $("#generate").addEventListener("click", generate);
  $("#cancel").addEventListener("click", () => ui.running && ui.running.abort());
  $("#race").addEventListener("click", race);
  $("#race-a").addEventListener("change", (e) => renderIdle($("#lane-a"), ui.models.find((m) => m.id === e.target.value)));
  $("#race-b").addEventListener("change", (e) => renderIdle($("#lane-b"), ui.models.find((m) => m.id === e.target.value)));
  $("#session-new").addEventListener("click", () => startSession().catch(showError));
  for (const tab of ["complete", "race", "sessions"]) $(`#tab-${tab}`).addEventListener("click", () => selectTab(tab));
  setupDrawing();
  loadDigits().then(() => {
    // start from a test digit, so a first click on Generate completes something recognisable
    if (ui.digits.length && !ui.pixels.some(Boolean) && ui.side === 28) {
      ui.pixels = Uint8Array.from(ui.digits[3].pixels, (p) => +p);
      if (ui.card && kind(ui.card) === "image") drawEditor();
    }
  });
  loadModels();
}

main();
