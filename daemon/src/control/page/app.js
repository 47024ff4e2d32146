// detingestd's live page: run state and control, the latest frame, rates, queues and losses.
// Updates arrive as server-sent events from GET /events (read with fetch, so the bearer token
// can go in a header), at most twice a second; the page reconnects when the daemon restarts.
"use strict";

const $ = (id) => document.getElementById(id);
const WINDOW_S = 300;
const history = [];          // {t, recorded, raw, written, loss}: one per event
let runId = null;            // started_ns of the run the history's counters belong to
let shownIndex = 0;          // preview index on the canvas
let image = null;            // {values, nx, ny, binning, index, frame, stream}
let contrastSet = false;

const token = $("token");
token.value = sessionStorage.getItem("detingest-token") || "";
token.addEventListener("change", () => sessionStorage.setItem("detingest-token", token.value.trim()));

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const t = token.value.trim();
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}

function say(text, good) {
  const m = $("message");
  m.textContent = text;
  m.className = "message " + (good ? "good" : "bad");
}

// ---- the event stream --------------------------------------------------------------------
async function follow() {
  let delay = 1000;
  for (;;) {
    let why = "reconnecting…";
    try {
      const r = await fetch("/events", { headers: headers(), cache: "no-store" });
      if (r.status === 401) { why = "token needed"; say("the daemon asks for a token (enter it below)", false); }
      else if (!r.ok) { why = "HTTP " + r.status; }
      else {
        link(true, "live");
        if (/token/.test($("message").textContent)) say("", true);
        delay = 1000;
        const reader = r.body.getReader();
        const text = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += text.decode(value, { stream: true });
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
            if (data) update(JSON.parse(data));
          }
        }
      }
    } catch (e) { /* the daemon is away: retry below */ }
    link(false, why);
    await new Promise((ok) => setTimeout(ok, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

function link(up, text) {
  const l = $("link");
  l.className = "link " + (up ? "up" : "down");
  l.textContent = text;
}

// ---- one update ----------------------------------------------------------------------------
function update(ev) {
  const s = ev.status;
  $("state").textContent = s.state;
  $("stream").textContent = s.stream || "";
  const c = s.counters;
  $("frames").textContent = c.recorded + (s.frames_expected ? " / " + s.frames_expected : "");
  $("elapsed").textContent = s.elapsed_s.toFixed(1) + " s";
  $("lost").textContent = c.lost + " / " + c.dropped;
  $("end").textContent = s.end_reason ? s.end_reason + (s.error ? ": " + s.error : "") : "—";
  $("master").textContent = s.master || "—";
  prefill(s.stream);
  record(ev.now_ms / 1000, s);
  queues(s.gauges);
  sources(s.sources || []);
  modules(ev.modules_missing || []);
  if (ev.preview_index && ev.preview_index !== shownIndex) preview();
  events((s.sources || []).find((x) => x.events));
  quality(ev.quality, ev.now_ms / 1000);
  plots();
}

// ---- data quality: per-frame statistics, spots, the radial profile ---------------------------
const qualityHistory = { stats: [], spots: [], statsIndex: 0, reportIndex: 0 };
function quality(q, t) {
  $("quality-panel").hidden = !q || (!q.stats && !q.report);
  if (!q) return;
  if (q.stats && q.stats_index !== qualityHistory.statsIndex) {
    qualityHistory.statsIndex = q.stats_index;
    qualityHistory.stats.push([t, q.stats]);
  }
  if (q.report && q.report_index !== qualityHistory.reportIndex) {
    qualityHistory.reportIndex = q.report_index;
    qualityHistory.spots.push([t, q.report.spot_count]);
  }
  for (const k of ["stats", "spots"]) {
    const h = qualityHistory[k];
    while (h.length && h[0][0] < t - WINDOW_S) h.shift();
  }
  const s = q.stats, r = q.report;
  $("quality-caption").textContent =
    (s ? `index ${q.stats_index}: sum ${s.sum}, max ${s.max}, ${s.above_threshold} above threshold, ${s.saturated} saturated, ${s.masked} masked` : "") +
    (r ? ` · index ${q.report_index}: ${r.spot_count} spots (${r.analysis_ms.toFixed(1)} ms)` : "");
  const st = qualityHistory.stats;
  plot("plot-stats", [st.map(([t, v]) => [t, v.max]), st.map(([t, v]) => [t, v.above_threshold]),
    st.map(([t, v]) => [t, v.saturated])], ["#1f5fbf", "#1a7f37", "#c62828"]);
  plot("plot-spots", [qualityHistory.spots], ["#1f5fbf"]);
  const p = r && r.profile;
  $("profile-caption").textContent = p ? `centre (${p.centre[0]}, ${p.centre[1]}), ring ${p.bin_width.toFixed(2)} px` : "(no beam centre)";
  bars("plot-profile", p ? p.mean.map((m) => (m === null ? 0 : m)) : []);
}

// ---- an event run: events/s and histograms instead of an image -----------------------------
function events(src) {
  $("events-panel").hidden = !src;
  $("image-panel").hidden = !!src;
  if (!src) return;
  const e = src.events;
  $("events-caption").textContent =
    `${e.events} events, ${e.pulses} pulses, ${e.messages_lost} messages lost, ${e.malformed} malformed`;
  const h = src.event_histograms;
  if (!h) return;
  $("tof-range").textContent = `0 – ${(h.tof_max_ns / 1e6).toFixed(1)} (${h.binned} binned)`;
  bars("hist-tof", h.tof);
  $("pixel-range").textContent = h.pixel_range ? `${h.pixel_range[0]} – ${h.pixel_range[1]}` : "(no range configured)";
  bars("hist-pixels", h.pixels);
}

function bars(id, counts) {
  const cv = $(id);
  const w = (cv.width = cv.clientWidth || 480), h = (cv.height = 110);
  const ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  if (!counts || !counts.length) return;
  const top = Math.max(1, ...counts);
  ctx.fillStyle = "#1f5fbf";
  const bw = w / counts.length;
  counts.forEach((n, i) => {
    const bh = (n / top) * (h - 16);
    ctx.fillRect(i * bw, h - bh, Math.max(1, bw - 1), bh);
  });
  ctx.fillStyle = "#667085"; ctx.font = "11px system-ui";
  ctx.fillText(String(Number(top.toPrecision(4))), 4, 12);
}

function prefill(stream) {
  if (!stream) return;
  const [bt, src] = stream.split("/");
  const f = $("start-form");
  if (!f.beamtime.value) f.beamtime.value = bt;
  if (!f.source.value) f.source.value = src;
}

function record(t, s) {
  if (s.started_ns !== runId) { history.length = 0; runId = s.started_ns; }
  const c = s.counters;
  const ev = (s.sources || []).find((x) => x.events);
  history.push({ t, recorded: c.recorded, raw: c.bytes_raw, written: c.bytes_compressed, loss: c.lost + c.dropped,
    events: ev ? ev.events.events : 0 });
  while (history.length && history[0].t < t - WINDOW_S) history.shift();
}

function rates(key, scale) {
  const out = [];
  for (let i = 1; i < history.length; i++) {
    const a = history[i - 1], b = history[i];
    const dt = b.t - a.t;
    if (dt > 0) out.push([b.t, Math.max(0, (b[key] - a[key]) / dt / scale)]);
  }
  return out;
}

function queues(g) {
  const q = $("queues");
  if (!g) { q.textContent = "no run in progress"; return; }
  const rows = [["source", g.source_queue, g.queue_capacity], ["compress", g.compress_queue, g.queue_capacity],
    ["write", g.write_queue, g.queue_capacity], ["notify", g.notify_queue, null]];
  q.innerHTML = "";
  for (const [name, n, cap] of rows) {
    // Built element by element: the page's CSP allows no inline style attributes.
    const row = document.createElement("div");
    row.className = "queue";
    const label = document.createElement("span");
    label.textContent = name;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.style.width = (cap ? Math.min(100, (100 * n) / cap) : 0) + "%";
    bar.appendChild(fill);
    const value = document.createElement("span");
    value.textContent = n + (cap ? " / " + cap : "");
    row.append(label, bar, value);
    q.appendChild(row);
  }
  const free = document.createElement("div");
  free.className = "caption";
  free.textContent = `free buffers: input ${g.free_input_buffers}, output ${g.free_output_buffers}`;
  q.appendChild(free);
}

function sources(list) {
  const body = $("sources").tBodies[0];
  body.innerHTML = "";
  for (const s of list) {
    const tr = body.insertRow();
    const lost = s.packets ? s.packets.packets_lost : "—";
    for (const v of [s.name, s.sent, s.dropped, s.torn, s.malformed, lost]) tr.insertCell().textContent = v;
  }
}

function modules(missing) {
  const m = $("modules");
  m.innerHTML = "";
  missing.forEach((n, i) => {
    const span = document.createElement("span");
    span.textContent = `${i}: ${n}`;
    if (n > 0) span.className = "bad";
    m.appendChild(span);
  });
  if (!missing.length) m.textContent = "—";
}

// ---- the preview ---------------------------------------------------------------------------
const TYPES = { u8: Uint8Array, u16: Uint16Array, u32: Uint32Array, i32: Int32Array, f32: Float32Array };
let fetching = false;

async function preview() {
  if (fetching) return;
  fetching = true;
  try {
    const r = await fetch("/preview", { headers: headers(), cache: "no-store" });
    if (r.status !== 200) return;
    const [ny, nx] = r.headers.get("X-Shape").split(",").map(Number);
    const Type = TYPES[r.headers.get("X-Dtype")];
    const values = new Type(await r.arrayBuffer());
    image = { values, nx, ny, binning: Number(r.headers.get("X-Binning")), index: Number(r.headers.get("X-Index")),
      frame: r.headers.get("X-Frame-Number"), stream: r.headers.get("X-Stream") };
    shownIndex = image.index;
    if (!contrastSet) autoContrast();
    draw();
  } finally { fetching = false; }
}

function autoContrast() {
  if (!image) return;
  const step = Math.max(1, Math.floor(image.values.length / 100000));
  const sample = [];
  for (let i = 0; i < image.values.length; i += step) sample.push(image.values[i]);
  sample.sort((a, b) => a - b);
  $("vmin").value = sample[Math.floor(sample.length * 0.01)];
  $("vmax").value = Math.max(sample[Math.floor(sample.length * 0.995)], Number($("vmin").value) + 1);
  contrastSet = true;
}

function draw() {
  if (!image) return;
  const cv = $("image");
  cv.width = image.nx; cv.height = image.ny;
  const ctx = cv.getContext("2d");
  const out = ctx.createImageData(image.nx, image.ny);
  const lo = Number($("vmin").value), hi = Math.max(Number($("vmax").value), lo + 1e-9);
  const log = $("log").checked;
  const f = log ? (v) => Math.log1p(Math.max(0, v - lo)) / Math.log1p(hi - lo) : (v) => (v - lo) / (hi - lo);
  const px = out.data, vals = image.values;
  for (let i = 0; i < vals.length; i++) {
    const g = Math.max(0, Math.min(255, Math.round(255 * f(vals[i]))));
    px[4 * i] = px[4 * i + 1] = px[4 * i + 2] = g;
    px[4 * i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  $("caption").textContent = `${image.stream} · index ${image.index} · frame ${image.frame}` + (image.binning > 1 ? ` · binned ${image.binning}×${image.binning} (max)` : "");
}

$("image").addEventListener("mousemove", (e) => {
  if (!image) return;
  const cv = e.target, r = cv.getBoundingClientRect();
  const x = Math.floor(((e.clientX - r.left) / r.width) * image.nx);
  const y = Math.floor(((e.clientY - r.top) / r.height) * image.ny);
  if (x < 0 || y < 0 || x >= image.nx || y >= image.ny) return;
  const b = image.binning;
  $("pixel").textContent = `x ${x * b} y ${y * b}: ${image.values[y * image.nx + x]}`;
});
for (const id of ["vmin", "vmax", "log"]) $(id).addEventListener("input", () => { contrastSet = true; draw(); });
$("auto").addEventListener("click", () => { autoContrast(); draw(); });

// ---- plots ---------------------------------------------------------------------------------
function plot(id, series, colors) {
  const cv = $(id);
  const w = (cv.width = cv.clientWidth || 480), h = (cv.height = 110);
  const ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  const now = history.length ? history[history.length - 1].t : 0;
  // The x axis spans what is known, from 30 s up to the 5 minutes kept.
  const span = Math.min(WINDOW_S, Math.max(30, history.length ? now - history[0].t : 0));
  let top = 0;
  for (const s of series) for (const [, v] of s) top = Math.max(top, v);
  top = top > 0 ? top * 1.1 : 1;
  ctx.fillStyle = "#667085"; ctx.font = "11px system-ui";
  ctx.fillText(top.toPrecision(3), 4, 12);
  ctx.fillText("-" + Math.round(span) + " s", 4, h - 4);
  series.forEach((s, k) => {
    ctx.strokeStyle = colors[k]; ctx.lineWidth = 1.5; ctx.beginPath();
    s.forEach(([t, v], i) => {
      const x = w - ((now - t) / span) * w, y = h - 4 - (v / top) * (h - 18);
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
  });
}

function plots() {
  plot("plot-rate", [rates("recorded", 1)], ["#1f5fbf"]);
  plot("plot-bytes", [rates("raw", 1e9), rates("written", 1e9)], ["#1f5fbf", "#1a7f37"]);
  plot("plot-loss", [rates("loss", 1)], ["#c62828"]);
  if (!$("events-panel").hidden) plot("plot-events", [rates("events", 1)], ["#1a7f37"]);
}

// ---- run control ---------------------------------------------------------------------------
async function post(path, body) {
  const r = await fetch(path, { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: body ? JSON.stringify(body) : "{}" });
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`${r.status}: ${answer.error || r.statusText}`);
  return answer;
}

$("start-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  const request = { beamtime: f.beamtime.value, source: f.source.value, stream: f.stream.value, frames: Number(f.frames.value || 0) };
  try {
    // Any field of POST /run/start (docs/RUNNING.md): frames_per_file, chunking, detector, next_stream, ...
    if (f.extra.value.trim()) Object.assign(request, JSON.parse(f.extra.value));
    if (f.user.value.trim()) request.user = JSON.parse(f.user.value);
  } catch (err) { say("not JSON: " + err.message, false); return; }
  try { const s = await post("/run/start", request); say("started " + s.stream, true); }
  catch (err) { say("start refused: " + err.message, false); }
});

$("stop").addEventListener("click", async () => {
  try { const s = await post("/run/stop"); say(`stopped ${s.stream}: ${s.frames_recorded} frames`, true); }
  catch (err) { say("stop refused: " + err.message, false); }
});

follow();
