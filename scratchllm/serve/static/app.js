// scratchllm playground: plain JavaScript, no build step, no network except this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, text: "", controller: null, tokens: [] };

// ------------------------------------------------------------------ talking to the server
function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value || localStorage.getItem("scratchllm-key") || "";
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(path, body) {
  const opts = body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data.error && data.error.message) || r.status + " " + r.statusText);
  return data;
}

function show(piece) { // make whitespace visible inside token boxes
  return piece.replace(/ /g, "\u2423").replace(/\n/g, "\\n").replace(/\t/g, "\\t") || "\u2205";
}
function pct(p) { return p >= 0.995 ? "100%" : p >= 0.001 ? (100 * p).toFixed(1) + "%" : p > 0 ? "<0.1%" : "0"; }
function probColour(p) { // red (unlikely) -> yellow -> green (likely), light enough for dark text
  const h = Math.round(120 * Math.pow(p, 0.5));
  return `hsl(${h} 75% 82%)`;
}
function esc(s) { const d = document.createElement("span"); d.textContent = s; return d.innerHTML; }
function setStatus(id, msg, isError) { const el = $(id); el.textContent = msg || "\u00a0"; el.style.color = isError ? "#b3261e" : ""; }

// ------------------------------------------------------------------ tabs (arrow keys move between them)
const tabs = [...document.querySelectorAll('[role="tab"]')];
const loaders = {};
function select(tab, focus) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  if (focus) tab.focus();
  const name = tab.id.slice(4);
  syncText(name);
  if (loaders[name]) loaders[name]();
}
tabs.forEach((t, i) => {
  t.addEventListener("click", () => select(t));
  t.addEventListener("keydown", (e) => {
    const d = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
    if (d) { e.preventDefault(); select(tabs[(i + d + tabs.length) % tabs.length], true); }
  });
});

// The current text (prompt + what was generated) follows you from view to view.
const textBoxes = { pipeline: "p-text", attention: "a-text", lens: "l-text", tokenizer: "t-text" };
function currentText() { return state.text || $("prompt").value; }
function syncText(name) {
  const box = textBoxes[name] && $(textBoxes[name]);
  if (box && box.dataset.synced !== currentText()) { box.value = currentText(); box.dataset.synced = box.value; }
}

// live numbers next to sliders
for (const input of document.querySelectorAll('input[type="range"]')) {
  const out = document.querySelector(`output[for="${input.id}"]`);
  const upd = () => { if (out && input.id !== "r-step") out.textContent = input.id === "p-top-k" && input.value === "0" ? "off" : input.value; };
  input.addEventListener("input", upd); upd();
}

// ------------------------------------------------------------------ 1. generate, streamed
const output = $("output"), alts = $("alts");

function samplingBody() {
  const body = {
    model: state.info.model,
    temperature: Number($("g-temperature").value),
    top_p: Number($("g-top-p").value),
    max_tokens: Math.max(1, Number($("g-max").value) || 1),
    stream: true,
    stream_options: { include_usage: true },
  };
  const k = Number($("g-top-k").value);
  if (k > 0) body.top_k = k;
  const stop = $("g-stop").value.replace(/\\n/g, "\n");
  if (stop) body.stop = [stop];
  if ($("g-seed").value !== "") body.seed = Number($("g-seed").value);
  return body;
}

function addToken(text, logprob, top) {
  const span = document.createElement("span");
  span.className = "tok";
  span.textContent = text;
  const p = Math.exp(logprob);
  span.style.background = probColour(p);
  span.tabIndex = 0;
  span.dataset.i = String(state.tokens.length);
  state.tokens.push({ text, p, top });
  output.appendChild(span);
}

function showAlts(span) {
  const t = state.tokens[Number(span.dataset.i)];
  if (!t) return;
  document.querySelectorAll(".tok.sel").forEach((s) => s.classList.remove("sel"));
  span.classList.add("sel");
  const rows = t.top.map((a) => {
    const p = Math.exp(a.logprob);
    return `<tr class="${a.token === t.text ? "chosen" : ""}"><td>${esc(show(a.token))}</td><td class="p">${pct(p)}</td>` +
      `<td><span class="bar" style="width:${Math.round(60 * p)}px"></span></td></tr>`;
  }).join("");
  alts.innerHTML = `<div>chosen <b>${esc(show(t.text))}</b>: ${pct(t.p)}</div><table>${rows}</table>`;
  const r = span.getBoundingClientRect();
  alts.hidden = false;
  const left = Math.min(window.scrollX + r.left, window.scrollX + document.documentElement.clientWidth - alts.offsetWidth - 8);
  alts.style.left = Math.max(4, left) + "px";
  alts.style.top = window.scrollY + r.bottom + 6 + "px";
}
function hideAlts() { alts.hidden = true; }
output.addEventListener("mouseover", (e) => { if (e.target.classList.contains("tok")) showAlts(e.target); });
output.addEventListener("mouseleave", hideAlts);
output.addEventListener("focusin", (e) => { if (e.target.classList.contains("tok")) showAlts(e.target); });
output.addEventListener("focusout", hideAlts);
output.addEventListener("click", (e) => { if (e.target.classList.contains("tok")) showAlts(e.target); });

function chunkTokens(choice, chat) {
  // OpenAI's two logprobs shapes: chat (content: [{token, logprob, top_logprobs}]) and completions.
  const out = [];
  if (!choice.logprobs) return out;
  if (chat) {
    for (const c of choice.logprobs.content || []) out.push([c.token, c.logprob, c.top_logprobs || []]);
  } else {
    const lp = choice.logprobs;
    (lp.tokens || []).forEach((tok, i) => {
      const top = Object.entries((lp.top_logprobs || [])[i] || {}).map(([token, logprob]) => ({ token, logprob }));
      top.sort((a, b) => b.logprob - a.logprob);
      out.push([tok, lp.token_logprobs[i], top]);
    });
  }
  return out;
}

async function generate() {
  const chat = $("mode").value === "chat";
  const prompt = $("prompt").value;
  const body = samplingBody();
  if (chat) { body.messages = [{ role: "user", content: prompt }]; body.logprobs = true; body.top_logprobs = 10; }
  else { body.prompt = prompt; body.logprobs = 10; }
  state.tokens = [];
  output.innerHTML = chat ? "" : `<span class="prompt">${esc(prompt)}</span>`;
  hideAlts();
  state.controller = new AbortController();
  $("generate").disabled = true; $("stop").disabled = false;
  setStatus("speed", "waiting for the first token…");
  const t0 = performance.now();
  let first = null, n = 0, generated = "", finish = "";
  try {
    const r = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal,
    });
    if (!r.ok) { const d = await r.json().catch(() => ({})); throw new Error((d.error && d.error.message) || r.statusText); }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const msg = JSON.parse(data);
          if (msg.error) throw new Error(msg.error.message);
          const choice = (msg.choices || [])[0];
          if (!choice) continue;
          const toks = chunkTokens(choice, chat);
          for (const [tok, lp, top] of toks) { addToken(tok, lp, top); n += 1; }
          const text = chat ? (choice.delta && choice.delta.content) || "" : choice.text || "";
          if (!toks.length && text) output.appendChild(document.createTextNode(text));
          generated += text;
          if (choice.finish_reason) finish = choice.finish_reason;
          if (n && first === null) first = performance.now();
          const secs = (performance.now() - (first || t0)) / 1000;
          setStatus("speed", `${n} tokens · ${n > 1 && secs > 0 ? ((n - 1) / secs).toFixed(1) : "…"} tokens/s` +
            ` · first token after ${(((first || performance.now()) - t0) / 1000).toFixed(2)} s`);
        }
      }
    }
    setStatus("speed", $("speed").textContent + (finish ? ` · finished: ${finish}` : ""));
  } catch (err) {
    if (err.name === "AbortError") setStatus("speed", $("speed").textContent + " · stopped");
    else setStatus("speed", err.message, true);
  } finally {
    state.controller = null;
    $("generate").disabled = false; $("stop").disabled = true;
    state.text = chat ? generated || prompt : prompt + generated;
    output.dataset.done = "1";
  }
}
$("generate").addEventListener("click", () => { output.dataset.done = "0"; generate(); });
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("generate").click(); });
$("prompt").addEventListener("input", () => { state.text = ""; });

// ------------------------------------------------------------------ 2. the sampling pipeline
let pipeTimer = null, pipeSeq = 0;
function pipelineSoon() { clearTimeout(pipeTimer); pipeTimer = setTimeout(pipeline, 40); }
async function pipeline() {
  const seq = ++pipeSeq;
  const body = {
    text: $("p-text").value,
    temperature: Number($("p-temperature").value),
    top_k: Number($("p-top-k").value) || null,
    top_p: Number($("p-top-p").value),
    seed: Number($("p-seed").value) || 0,
    show: 12,
  };
  let d;
  try { d = await api("/scratchllm/sampling", body); } catch (err) { $("pipeline").textContent = err.message; return; }
  if (seq !== pipeSeq) return; // a newer slider position already asked
  const el = $("pipeline");
  const stages = [...d.stages, { name: "sampled", p: d.candidates.map((c) => (c.id === d.sampled.id ? 1 : 0)), kept: 1 }];
  el.innerHTML = stages.map((s, si) => {
    const rows = d.candidates.map((c, i) => {
      const p = s.p[i];
      const cls = c.id === d.sampled.id && si === stages.length - 1 ? "bar-row sampled" : "bar-row";
      return `<div class="${cls}"><span class="lab">${esc(show(c.text))}</span><span class="track"><span class="fill" style="width:${(100 * p).toFixed(1)}%"></span></span><span class="num">${pct(p)}</span></div>`;
    }).join("");
    const kept = si === stages.length - 1 ? `drew <b>${esc(show(d.sampled.text))}</b> (p = ${pct(d.sampled.p)}, seed ${d.seed})`
      : `${s.kept.toLocaleString()} of ${d.vocab_size.toLocaleString()} tokens possible`;
    return `<div class="stage" data-stage="${si}"><h3>${si + 1}. ${esc(s.name)}</h3><div class="kept">${kept}</div>${rows}</div>`;
  }).join("");
}
for (const id of ["p-temperature", "p-top-k", "p-top-p", "p-seed", "p-text"]) $(id).addEventListener("input", pipelineSoon);
loaders.pipeline = pipeline;

// ------------------------------------------------------------------ 3. attention
let attn = null, attnHead = 0, attnQuery = -1;
// white -> deep blue; sqrt so weak links still show. One lookup table: a 512-token map is 262k pixels.
const HEAT = (() => {
  const lut = new Uint8Array(256 * 3);
  for (let k = 0; k < 256; k++) {
    const t = Math.sqrt(k / 255);
    lut.set([Math.round(255 - 222 * t), Math.round(255 - 180 * t), Math.round(255 - 60 * t)], 3 * k);
  }
  return lut;
})();
function drawMap(canvas, w) { // w: T rows of bytes (weight x 255)
  const T = w.length, ctx = canvas.getContext("2d");
  const img = ctx.createImageData(T, T), px = img.data;
  for (let i = 0; i < T; i++) {
    // colour relative to the row's strongest link: a query spread over 256 keys still shows where it looks
    const row = w[i];
    let top = 0;
    for (let j = 0; j <= i; j++) if (row[j] > top) top = row[j];
    const scale = top > 0 ? 255 / top : 0;
    for (let j = 0; j < T; j++) {
      const k = 3 * (j <= i ? Math.round(row[j] * scale) : 0), o = 4 * (i * T + j);
      px[o] = HEAT[k]; px[o + 1] = HEAT[k + 1]; px[o + 2] = HEAT[k + 2]; px[o + 3] = 255;
    }
  }
  // paint at 1 pixel per weight, then scale up without smoothing (one drawImage)
  const off = document.createElement("canvas"); off.width = T; off.height = T;
  off.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
}
function drawAttention() {
  if (!attn) return;
  const w = attn.weights[attnHead];
  const canvas = $("a-map");
  drawMap(canvas, w);
  const T = w.length, cell = canvas.width / T;
  if (attnQuery >= 0) {
    const ctx = canvas.getContext("2d");
    ctx.strokeStyle = "#b3261e"; ctx.lineWidth = Math.max(1, cell / 4);
    ctx.strokeRect(0, attnQuery * cell, canvas.width, cell);
  }
  document.querySelectorAll("#a-gallery figure").forEach((f, h) => f.classList.toggle("sel", h === attnHead));
  lines();
}
function lines() { // the selected query's strongest keys, as a token-to-token list with bars
  const w = attn.weights[attnHead], q = attnQuery >= 0 ? attnQuery : w.length - 1;
  const order = Array.from(w[q], (v, j) => [v / 255, j]).filter(([, j]) => j <= q).sort((a, b) => b[0] - a[0]).slice(0, 8);
  $("a-lines").innerHTML = `<div><b>${esc(show(attn.tokens[q]))}</b> (position ${q}) attends to:</div>` + order.map(([v, j]) =>
    `<div class="bar-row"><span class="lab">${esc(show(attn.tokens[j]))}@${j}</span><span class="track"><span class="fill" style="width:${(100 * v).toFixed(1)}%"></span></span><span class="num">${pct(v)}</span></div>`).join("");
}
async function attention() {
  const layer = $("a-layer").value === "" ? null : Number($("a-layer").value);
  setStatus("a-status", "computing…");
  const t0 = performance.now();
  try { attn = await api("/scratchllm/attention", { text: $("a-text").value, layer }); }
  catch (err) { setStatus("a-status", err.message, true); return; }
  // [n_head, T, T] bytes (weight x 255) -> per head, per query row, Float32Array views
  const raw = atob(attn.weights_u8), T = attn.tokens.length, bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  attn.weights = [...Array(attn.n_head).keys()].map((h) => [...Array(T).keys()].map((i) => bytes.subarray((h * T + i) * T, (h * T + i + 1) * T)));
  attnHead = Math.min(attnHead, attn.n_head - 1); attnQuery = -1;
  $("a-head").innerHTML = [...Array(attn.n_head).keys()].map((h) => `<option value="${h}">${h}</option>`).join("");
  $("a-head").value = String(attnHead);
  $("a-layer").value = String(attn.layer);
  const gal = $("a-gallery"); gal.innerHTML = "";
  attn.weights.forEach((w, h) => {
    const f = document.createElement("figure");
    const c = document.createElement("canvas"); c.width = 88; c.height = 88;
    f.appendChild(c); f.insertAdjacentHTML("beforeend", `<figcaption>head ${h}</figcaption>`);
    f.tabIndex = 0; f.setAttribute("role", "button"); f.setAttribute("aria-label", `show head ${h}`);
    const pick = () => { attnHead = h; $("a-head").value = String(h); drawAttention(); };
    f.addEventListener("click", pick); f.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); } });
    gal.appendChild(f); drawMap(c, w);
  });
  drawAttention();
  setStatus("a-status", `layer ${attn.layer} of ${attn.n_layer}, ${attn.n_head} heads, ${attn.tokens.length} tokens · ${Math.round(performance.now() - t0)} ms`);
}
$("a-run").addEventListener("click", attention);
$("a-head").addEventListener("change", () => { attnHead = Number($("a-head").value); drawAttention(); });
$("a-layer").addEventListener("change", attention);
function mapCell(e) {
  const c = $("a-map"), r = c.getBoundingClientRect(), T = attn.tokens.length;
  return [Math.floor(((e.clientY - r.top) / r.height) * T), Math.floor(((e.clientX - r.left) / r.width) * T)];
}
$("a-map").addEventListener("mousemove", (e) => {
  if (!attn) return;
  const [i, j] = mapCell(e), T = attn.tokens.length;
  if (i < 0 || j < 0 || i >= T || j >= T) return;
  const v = j <= i ? attn.weights[attnHead][i][j] / 255 : 0;
  $("a-hover").textContent = `query ${i} ${show(attn.tokens[i])} → key ${j} ${show(attn.tokens[j])}: ${pct(v)}`;
});
$("a-map").addEventListener("click", (e) => { if (attn) { attnQuery = mapCell(e)[0]; drawAttention(); } });
$("a-map").addEventListener("keydown", (e) => { // up/down walk the queries
  if (!attn) return;
  const d = { ArrowDown: 1, ArrowUp: -1 }[e.key];
  if (d) { e.preventDefault(); attnQuery = Math.max(0, Math.min(attn.tokens.length - 1, (attnQuery < 0 ? attn.tokens.length - 1 : attnQuery) + d)); drawAttention(); }
});
loaders.attention = () => { if (!attn || attn.text !== $("a-text").value) attention().then(() => { if (attn) attn.text = $("a-text").value; }); };

// ------------------------------------------------------------------ 4. logit lens
async function lens() {
  setStatus("l-status", "computing…");
  let d;
  try { d = await api("/scratchllm/logit-lens", { text: $("l-text").value, top: 3 }); }
  catch (err) { setStatus("l-status", err.message, true); return; }
  const head = `<tr><th class="layer">layer</th>${d.tokens.map((t, i) => `<th title="position ${i}">${esc(show(t))}</th>`).join("")}</tr>`;
  const rows = d.layers.slice().reverse().map((row) => {
    const name = row.layer === 0 ? "embed" : row.layer === d.n_layer ? `${row.layer} (out)` : String(row.layer);
    return `<tr><th class="layer">${name}</th>` + row.top.map((top, i) => {
      const best = top[0], hit = d.next_ids[i] !== null && best.id === d.next_ids[i];
      const tip = top.map((c) => `${show(c.text)} ${pct(c.p)}`).join("\n");
      return `<td class="${hit ? "hit" : ""}" style="background:${probColour(best.p)}" title="${esc(tip)}">${esc(show(best.text))}</td>`;
    }).join("") + "</tr>";
  }).join("");
  $("lens").innerHTML = head + rows;
  setStatus("l-status", `${d.layers.length} rows × ${d.tokens.length} positions · cell = top prediction for the next token, ` +
    "colour = its probability, outlined = it is the token that actually comes next");
  $("lens").dataset.text = $("l-text").value;
}
$("l-run").addEventListener("click", lens);
loaders.lens = () => { if ($("lens").dataset.text !== $("l-text").value) lens(); };

// ------------------------------------------------------------------ 5. tokenizer + merge replay
let tokd = null;
function replay() {
  const step = Number($("t-step").value);
  $("t-words").innerHTML = tokd.merges.map((w) => {
    const parts = w.steps[Math.min(step, w.steps.length - 1)];
    return `<div class="w">${parts.map((p) => `<span>${esc(show(p))}</span>`).join("")}</div>`;
  }).join("");
  document.querySelector('output[for="t-step"]').textContent = `${step} merges applied per word`;
}
async function tokenizer() {
  let d;
  try { d = await api("/scratchllm/tokenize", { text: $("t-text").value }); }
  catch (err) { setStatus("t-status", err.message, true); return; }
  tokd = d;
  $("t-tokens").innerHTML = d.tokens.map((t) =>
    `<span class="chip" style="background:hsl(${(t.id * 47) % 360} 70% 85%)">${esc(show(t.text))}<small>${t.id}</small></span>`).join("");
  setStatus("t-status", `${d.tokens.length} tokens from ${$("t-text").value.length} characters · ${d.kind} tokenizer, vocabulary of ${d.vocab_size.toLocaleString()}`);
  $("t-replay").hidden = !d.merges;
  if (d.merges) {
    const most = Math.max(0, ...d.merges.map((w) => w.steps.length - 1));
    $("t-step").max = String(most); $("t-step").value = "0";
    replay();
  }
  $("t-tokens").dataset.text = $("t-text").value;
}
$("t-run").addEventListener("click", tokenizer);
$("t-step").addEventListener("input", replay);
loaders.tokenizer = () => { if ($("t-tokens").dataset.text !== $("t-text").value) tokenizer(); };

// ------------------------------------------------------------------ 6. embeddings atlas
const atlas = { final: null, early: null, picked: null };
function drawAtlas(canvas, d) {
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  const xs = d.xy.map((p) => p[0]), ys = d.xy.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  d.px = d.xy.map(([x, y]) => [20 + ((x - x0) / (x1 - x0 || 1)) * (W - 40), H - 20 - ((y - y0) / (y1 - y0 || 1)) * (H - 40)]);
  ctx.clearRect(0, 0, W, H);
  ctx.fillStyle = "rgba(43,89,195,.35)";
  for (const [x, y] of d.px) ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
  ctx.font = "11px ui-monospace, monospace"; ctx.fillStyle = "#333";
  const label = d.tokens.length <= 400;
  if (label) d.px.forEach(([x, y], i) => ctx.fillText(show(d.tokens[i]), x + 3, y - 3));
  const mark = (id, colour) => {
    if (id === null || id >= d.px.length) return;
    const [x, y] = d.px[id];
    ctx.strokeStyle = colour; ctx.lineWidth = 2; ctx.beginPath(); ctx.arc(x, y, 7, 0, 2 * Math.PI); ctx.stroke();
    ctx.fillStyle = colour; ctx.font = "bold 13px ui-monospace, monospace"; ctx.fillText(show(d.tokens[id]), x + 8, y + 4);
  };
  if (atlas.neighbours) for (const n of atlas.neighbours) mark(n.id, "#1b7a3a");
  mark(atlas.picked, "#b3261e");
}
function redrawAtlas() {
  if (atlas.final) drawAtlas($("e-map"), atlas.final);
  if (atlas.early) drawAtlas($("e-early"), atlas.early);
}
async function pick(id) {
  atlas.picked = id;
  try {
    const d = await api("/scratchllm/neighbours", { token_id: id, k: 10 });
    atlas.neighbours = d.neighbours;
    $("e-neighbours").innerHTML = d.neighbours.map((n) => `<li>${esc(show(n.text))} <small>(id ${n.id}, cosine ${n.cosine.toFixed(3)})</small></li>`).join("");
    setStatus("e-status", `token ${id}: ${show(d.text)}`);
  } catch (err) { setStatus("e-status", err.message, true); }
  redrawAtlas();
}
$("e-search").addEventListener("change", () => {
  const q = $("e-search").value, d = atlas.final;
  if (!d || !q) return;
  let id = d.tokens.indexOf(q);
  if (id < 0) id = d.tokens.findIndex((t) => t.trim() === q.trim());
  if (id < 0) id = d.tokens.findIndex((t) => t.includes(q));
  if (id < 0) setStatus("e-status", `no token ${q} among the ${d.tokens.length} shown`, true); else pick(id);
});
$("e-map").addEventListener("click", (e) => {
  const d = atlas.final, c = $("e-map"), r = c.getBoundingClientRect();
  if (!d) return;
  const x = ((e.clientX - r.left) / r.width) * c.width, y = ((e.clientY - r.top) / r.height) * c.height;
  let best = 0, bd = Infinity;
  d.px.forEach(([px, py], i) => { const dd = (px - x) ** 2 + (py - y) ** 2; if (dd < bd) { bd = dd; best = i; } });
  pick(best);
});
loaders.embeddings = async () => {
  if (atlas.final) return;
  try {
    atlas.final = await api("/scratchllm/embeddings");
    const ev = atlas.final.explained_variance.map((v) => pct(v)).join(" + ");
    $("e-cap").textContent = `served model: ${atlas.final.tokens.length} tokens, PCA explains ${ev} of the variance`;
    const cps = state.info.checkpoints;
    if (cps.length >= 2) {
      atlas.early = await api("/scratchllm/embeddings?step=" + cps[0]);
      $("e-early-fig").hidden = false;
      $("e-early-cap").textContent = `checkpoint step ${cps[0]} (early)`;
    }
    redrawAtlas();
    setStatus("e-status", "click a point or search for a token");
  } catch (err) { setStatus("e-status", err.message, true); }
};

// ------------------------------------------------------------------ 7. training
function drawCurves(d) {
  const c = $("r-chart"), ctx = c.getContext("2d"), W = c.width, H = c.height, pad = 40;
  ctx.clearRect(0, 0, W, H);
  const all = [...d.train, ...d.val];
  if (!all.length) { ctx.fillText("no metrics recorded", 20, 30); return; }
  const sx = Math.max(...all.map((p) => p[0])) || 1, ys = all.map((p) => p[1]);
  const y0 = Math.min(...ys), y1 = Math.max(...ys);
  const X = (s) => pad + (s / sx) * (W - pad - 10), Y = (v) => H - pad + 10 - ((v - y0) / (y1 - y0 || 1)) * (H - pad - 10);
  ctx.strokeStyle = "#999"; ctx.beginPath(); ctx.moveTo(pad, 5); ctx.lineTo(pad, H - pad + 10); ctx.lineTo(W - 5, H - pad + 10); ctx.stroke();
  ctx.fillStyle = "#555"; ctx.font = "11px system-ui";
  ctx.fillText(y1.toFixed(2), 2, 14); ctx.fillText(y0.toFixed(2), 2, H - pad + 10); ctx.fillText(`step ${sx}`, W - 60, H - 12);
  for (const [pts, colour, name, k] of [[d.train, "#2b59c3", "train loss", 0], [d.val, "#d9822b", "val loss", 1]]) {
    if (!pts.length) continue;
    ctx.strokeStyle = colour; ctx.lineWidth = 1.5; ctx.beginPath();
    pts.forEach(([s, v], i) => (i ? ctx.lineTo(X(s), Y(v)) : ctx.moveTo(X(s), Y(v))));
    ctx.stroke(); ctx.fillStyle = colour; ctx.fillText(name, W - 90, 16 + 14 * k);
  }
  ctx.strokeStyle = "rgba(0,0,0,.25)";
  for (const s of d.checkpoints) { ctx.beginPath(); ctx.moveTo(X(s), 5); ctx.lineTo(X(s), H - pad + 10); ctx.stroke(); }
}
let conts = [];
function scrub() {
  const i = Number($("r-step").value);
  document.querySelectorAll("#r-list li").forEach((li, k) => li.classList.toggle("sel", k === i));
  document.querySelector('output[for="r-step"]').textContent = conts[i] ? `step ${conts[i].step}` : "";
}
$("r-step").addEventListener("input", scrub);
$("r-run").addEventListener("click", async () => {
  setStatus("r-status", "loading each checkpoint…");
  try {
    const d = await api("/scratchllm/checkpoints/continue", { prompt: $("r-prompt").value, max_tokens: 24 });
    conts = d.continuations;
    $("r-list").innerHTML = conts.map((c) => `<li><b>step ${c.step}</b>: ${esc($("r-prompt").value)}<u>${esc(c.text)}</u></li>`).join("");
    $("r-step").max = String(conts.length - 1); $("r-step").value = String(conts.length - 1); scrub();
    setStatus("r-status", `${conts.length} checkpoints, greedy (temperature 0): only the weights differ`);
  } catch (err) { setStatus("r-status", err.message, true); }
});
loaders.training = async () => {
  try {
    const d = await api("/scratchllm/training");
    if (!d.run) { setStatus("r-status", "this model is not a training run (no metrics.jsonl): nothing to plot"); return; }
    drawCurves(d);
    setStatus("r-status", `${d.train.length} train points, ${d.val.length} evaluations, ${d.checkpoints.length} checkpoints kept`);
    $("r-scrub").hidden = d.checkpoints.length < 1;
  } catch (err) { setStatus("r-status", err.message, true); }
};

// ------------------------------------------------------------------ start
async function start() {
  const key = localStorage.getItem("scratchllm-key");
  if (key) $("api-key").value = key;
  $("api-key").addEventListener("change", () => { localStorage.setItem("scratchllm-key", $("api-key").value); start(); });
  try { state.info = await api("/scratchllm/info"); }
  catch (err) {
    $("model-card").textContent = err.message;
    if (/API key/.test(err.message)) $("key-box").hidden = false;
    return;
  }
  const m = state.info.meta;
  $("model-card").textContent = `${state.info.model}: ${m.architecture}, ${(m.parameters / 1e6).toFixed(2)}M parameters, ` +
    `${m.n_layer} layers × ${state.info.n_head} heads, context ${m.context_length}, ${m.tokenizer} tokenizer (${m.vocab_size.toLocaleString()})` +
    (m.checkpoint_step !== null && m.checkpoint_step !== undefined ? `, step ${m.checkpoint_step}` : "");
  $("a-layer").innerHTML = [...Array(m.n_layer).keys()].map((l) => `<option value="${l}">${l}</option>`).join("");
  $("a-layer").value = String(m.n_layer - 1);
  if (!state.info.has_attention) { $("tab-attention").disabled = true; $("tab-lens").disabled = true; }
  document.body.dataset.ready = "1";
}
select(tabs[0]);
start();
