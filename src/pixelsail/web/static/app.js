// pixelsail demo page: pick/upload an image, draw visual prompts, ask, show the answer and masks.
"use strict";

const state = { config: null, sessionId: null, width: 0, height: 0, image: null, prompts: [], drag: null };
const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const res = await fetch(path, options);
  let body = null;
  try { body = await res.json(); } catch (_) { body = { error: `HTTP ${res.status}` }; }
  if (!res.ok) {
    const err = new Error(body.error || `HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return body;
}

// the server dropped this visitor's session (410: closed for newer visitors or expired; 404: unknown): the image
// must be loaded again before the next question
function sessionLost(e) {
  if (e.status !== 410 && e.status !== 404) return false;
  state.sessionId = null;
  $("submit").disabled = true;
  document.querySelectorAll("#samples button").forEach((b) => b.classList.remove("selected"));
  setStatus(e.message, true);
  return true;
}

function clearAnswer() {
  $("answer").textContent = "The answer and its masks appear here.";
  $("answer").classList.add("empty");
  $("overlay").hidden = true;
  $("overlay").removeAttribute("src");
  $("masks").replaceChildren();
  $("notes").replaceChildren();
}

function color(i) {
  const c = state.config.palette[i % state.config.palette.length];
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

// ---------------------------------------------------------------------------------------------- image + session
async function loadSession(response) {
  state.sessionId = response.session_id;
  state.width = response.width;
  state.height = response.height;
  state.prompts = [];
  const img = new Image();
  await new Promise((resolve, reject) => { img.onload = resolve; img.onerror = reject; img.src = response.image_url; });
  state.image = img;
  canvas.width = state.width;
  canvas.height = state.height;
  const tall = state.height > state.width;  // portrait images are fitted by height, the others by width
  canvas.classList.toggle("tall", tall);
  $("overlay").classList.toggle("tall", tall);
  $("no-image").hidden = true;
  $("submit").disabled = false;
  clearAnswer();
  redraw();
  setStatus(`Image ${state.width}×${state.height} loaded.`);
}

async function pickSample(id, button) {
  document.querySelectorAll("#samples button").forEach((b) => b.classList.remove("selected"));
  button.classList.add("selected");
  setStatus("Loading sample…");
  try {
    await loadSession(await api("/api/session", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ sample: id }),
    }));
  } catch (e) { setStatus(e.message, true); }
}

async function upload(file) {
  if (file.size > state.config.max_upload_bytes) {
    setStatus(`The file is ${file.size.toLocaleString()} bytes; the limit is ${state.config.max_upload_bytes.toLocaleString()}.`, true);
    return;
  }
  setStatus("Uploading…");
  document.querySelectorAll("#samples button").forEach((b) => b.classList.remove("selected"));
  try {
    await loadSession(await api("/api/session", {
      method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file,
    }));
  } catch (e) { setStatus(e.message, true); }
}

// ---------------------------------------------------------------------------------------------- prompts
function toImage(ev) {
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left) * (state.width / r.width), (ev.clientY - r.top) * (state.height / r.height)];
}

function tool() { return document.querySelector("input[name=tool]:checked").value; }

function drawPrompt(p, i) {
  ctx.strokeStyle = ctx.fillStyle = color(i);
  ctx.lineWidth = Math.max(1, Math.round(Math.min(state.width, state.height) / 128));
  let lx, ly;
  if (p.type === "point") {
    ctx.beginPath();
    ctx.arc(p.x, p.y, Math.max(2, ctx.lineWidth * 2), 0, 2 * Math.PI);
    ctx.fill();
    [lx, ly] = [p.x + 3, p.y - 3];
  } else if (p.type === "box") {
    const [x0, y0, x1, y1] = p.box;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    [lx, ly] = [x0 + 1, y0 - 2];
  } else {
    ctx.lineWidth = Math.max(3, Math.round(Math.min(state.width, state.height) / 64));
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    p.points.forEach(([x, y], j) => (j ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (p.points.length === 1) ctx.lineTo(p.points[0][0] + 0.1, p.points[0][1]);
    ctx.stroke();
    [lx, ly] = p.points[0];
  }
  ctx.font = `${Math.max(9, Math.round(state.height / 20))}px sans-serif`;
  ctx.fillText(`vp_${i}`, lx, Math.max(ly, 10));
}

function redraw() {
  if (!state.image) return;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(state.image, 0, 0);
  state.prompts.forEach(drawPrompt);
  if (state.drag && state.drag.type !== "point") drawPrompt(state.drag, state.prompts.length);
  const list = $("prompt-list");
  list.replaceChildren(...state.prompts.map((p, i) => {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = color(i);
    li.append(sw, `<vp_${i}> ${p.type}`);
    return li;
  }));
}

function clamp([x, y]) {
  return [Math.min(Math.max(x, 0), state.width - 0.01), Math.min(Math.max(y, 0), state.height - 0.01)];
}

canvas.addEventListener("pointerdown", (ev) => {
  if (!state.image) return;
  if (state.prompts.length >= state.config.num_vp_tokens) {
    setStatus(`At most ${state.config.num_vp_tokens} visual prompts.`, true);
    return;
  }
  canvas.setPointerCapture(ev.pointerId);
  const [x, y] = clamp(toImage(ev));
  const t = tool();
  if (t === "point") state.drag = { type: "point", x, y };
  else if (t === "box") state.drag = { type: "box", start: [x, y], box: [x, y, x, y] };
  else state.drag = { type: "scribble", points: [[x, y]] };
});

canvas.addEventListener("pointermove", (ev) => {
  if (!state.drag) return;
  const [x, y] = clamp(toImage(ev));
  if (state.drag.type === "box") {
    const [sx, sy] = state.drag.start;
    state.drag.box = [Math.min(sx, x), Math.min(sy, y), Math.max(sx, x), Math.max(sy, y)];
  } else if (state.drag.type === "scribble") {
    state.drag.points.push([x, y]);
  }
  redraw();
});

canvas.addEventListener("pointerup", () => {
  const d = state.drag;
  state.drag = null;
  if (!d) return;
  if (d.type === "box") {
    const [x0, y0, x1, y1] = d.box;
    if (x1 - x0 < 1 || y1 - y0 < 1) { setStatus("Drag to draw a box."); redraw(); return; }
    state.prompts.push({ type: "box", box: [x0, y0, x1, y1].map((v) => Math.round(v * 10) / 10) });
  } else if (d.type === "scribble") {
    state.prompts.push({ type: "scribble", points: d.points.map(([x, y]) => [Math.round(x), Math.round(y)]) });
  } else {
    state.prompts.push({ type: "point", x: Math.round(d.x * 10) / 10, y: Math.round(d.y * 10) / 10 });
  }
  redraw();
});

$("clear-prompts").addEventListener("click", () => { state.prompts = []; redraw(); });

// ---------------------------------------------------------------------------------------------- asking
const placeholders = { segment: "the red circle", ask: "What colour is <vp_0>?", describe: "(describes <vp_0>)" };
$("mode").addEventListener("change", () => {
  $("text").placeholder = placeholders[$("mode").value];
  $("text").disabled = $("mode").value === "describe";
});

$("new-chat").addEventListener("click", async () => {
  if (!state.sessionId) return;
  try {
    await api("/api/reset", { method: "POST", headers: { "Content-Type": "application/json" },
                              body: JSON.stringify({ session_id: state.sessionId }) });
    setStatus("New conversation.");
  } catch (e) { if (!sessionLost(e)) setStatus(e.message, true); }
});

function showResult(r) {
  $("answer").classList.remove("empty");
  $("answer").textContent = r.text.trim() ? r.text : "(the model gave an empty answer)";
  $("overlay").src = r.overlay;
  $("overlay").hidden = false;
  const masks = $("masks");
  masks.dataset.count = String(r.masks.length);
  masks.replaceChildren(...r.masks.map((m, i) => {
    const li = document.createElement("li");
    li.className = "mask";
    li.dataset.area = String(m.area);
    const what = m.empty ? "empty — nothing matched" : `${m.area} px, box [${m.box}]`;
    const sw = document.createElement("span");
    sw.className = "swatch";
    if (m.color) sw.style.background = `rgb(${m.color[0]}, ${m.color[1]}, ${m.color[2]})`;
    li.append(sw, `mask ${i}: ${what}, score ${m.score.toFixed(2)}`);
    return li;
  }));
  // what the answer alone does not say: empty masks, an image unlike the model's training images
  $("notes").replaceChildren(...(r.notes || []).map((text) => {
    const li = document.createElement("li");
    li.textContent = text;
    return li;
  }));
  const reuse = r.prefix_reused ? " (image prefix reused)" : "";
  setStatus(`Answered in ${r.total_seconds.toFixed(2)} s${reuse}.`);
}

$("ask-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!state.sessionId) { setStatus("Pick or upload an image first.", true); return; }
  const mode = $("mode").value;
  $("submit").disabled = true;
  setStatus("Thinking…");
  try {
    const body = { session_id: state.sessionId, mode, text: $("text").value, prompts: state.prompts,
                   remember: $("remember").checked };
    showResult(await api("/api/ask", { method: "POST", headers: { "Content-Type": "application/json" },
                                      body: JSON.stringify(body) }));
  } catch (e) {
    if (!sessionLost(e)) setStatus(e.message, true);
  } finally {
    $("submit").disabled = !state.sessionId;
  }
});

// ---------------------------------------------------------------------------------------------- start
$("upload").addEventListener("change", (ev) => { if (ev.target.files.length) upload(ev.target.files[0]); });

(async function start() {
  try {
    state.config = await api("/api/config");
  } catch (e) { setStatus(`Cannot reach the server: ${e.message}`, true); return; }
  // one fixed-size tile per sample at once, numbered until its thumbnail has arrived: the strip never sits empty
  $("samples").replaceChildren(...state.config.samples.map((s) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "sample";
    b.dataset.id = String(s.id);
    b.title = s.name;
    b.textContent = String(s.id + 1);
    const img = document.createElement("img");
    img.alt = s.name;
    img.onload = () => b.replaceChildren(img);
    img.src = s.url;
    b.addEventListener("click", () => pickSample(s.id, b));
    return b;
  }));
  if (!state.config.samples.length) $("samples").replaceChildren("no sample images: upload one");
  document.body.dataset.ready = "1";
})();
