// The latency display (#hud): one record per response (a "turn") and what the page draws from
// them: the server's first-packet time beside Qwen3-Omni's reference figures, the browser's own
// end-of-speech -> first-audible time, a bar chart per turn, the stage waterfall of the last turn
// and a table of recent turns. The server's figures come from response.done's `latency`; the
// browser's from endOfSpeech() and markAudible(). Server text is only inserted with textContent.

// Qwen3-Omni technical report (arXiv 2509.17765), Table 2: theoretical first-packet latency at
// concurrency 1, audio-only and with video input.
const REF_AUDIO_MS = 234;
const REF_VIDEO_MS = 547;
const STAGES = [
  ["queue", "queue"],
  ["preprocessing", "preprocessing"],
  ["thinker_ttft", "thinker first token"],
  ["talker_ttft", "talker first frame"],
  ["code_predictor", "code predictor"],
  ["codec", "codec"],
  ["send", "sent on the wire"], // engine's first audio -> first packet on the track (audio_ttfp - engine's)
];
const MAX_TURNS_SHOWN = 16;

const $ = (id) => document.getElementById(id);

const L = {
  turns: [],
  pendingEndOfSpeech: null, // {at, from} waiting for the next response
  lastUserImages: null, // camera frames the server attached to the latest user item
  cameraOn: false, // the guess for a turn whose user item listed no parts
};

// ---------------------------------------------------------------------------- turn records

// Whether the call sends the camera (set per connection).
export function setCameraOn(on) {
  L.cameraOn = on;
}

// The user's speech ended at page time `at` (performance.now()); `from` says who decided it.
export function endOfSpeech(at, from) {
  L.pendingEndOfSpeech = { at, from };
}

// The number of camera frames the server attached to the latest user item: whether the model saw
// video on this turn (the camera checkbox alone does not say).
export function userImages(count) {
  L.lastUserImages = count;
}

// Forgets what waits for the next response (on disconnect).
export function resetPending() {
  L.pendingEndOfSpeech = null;
  L.lastUserImages = null;
}

export function responseCreated(response) {
  const eos = L.pendingEndOfSpeech;
  L.pendingEndOfSpeech = null;
  const video = L.lastUserImages === null ? L.cameraOn : L.lastUserImages > 0;
  L.lastUserImages = null;
  L.turns.push({
    n: L.turns.length + 1,
    id: response.id,
    video,
    endOfSpeechAt: eos ? eos.at : null,
    endOfSpeechFrom: eos ? eos.from : null,
    audibleMs: null,
    ttfpMs: null,
    stages: null,
    status: "in_progress",
  });
  renderHud();
}

// Files response.done's latency under its turn; returns the turn (or null when none matches).
export function responseDone(ev) {
  const response = ev.response || {};
  const turn = L.turns.find((t) => t.id === response.id) || L.turns[L.turns.length - 1];
  if (!turn) return null;
  const latency = ev.latency || response.latency || {};
  turn.status = response.status || "completed";
  turn.ttfpMs = typeof latency.audio_ttfp_ms === "number" ? latency.audio_ttfp_ms : null;
  turn.stages = latency.stages_ms ? { ...latency.stages_ms } : null;
  if (turn.stages && typeof latency.engine_audio_ttfp_ms === "number" && turn.ttfpMs !== null) {
    turn.stages.send = Math.max(0, turn.ttfpMs - latency.engine_audio_ttfp_ms);
  }
  renderHud();
  return turn;
}

// The answer is audible at page time `now`: the first such moment after the end of speech counts.
export function markAudible(now) {
  const turn = L.turns[L.turns.length - 1];
  if (!turn || turn.audibleMs !== null || turn.endOfSpeechAt === null || turn.status === "cancelled") return;
  turn.audibleMs = now - turn.endOfSpeechAt;
  renderHud();
}

// Copies of the turn records (for the tests and the console).
export function turnsSnapshot() {
  return L.turns.map((t) => ({ ...t }));
}

// ---------------------------------------------------------------------------- drawing

function fmtMs(ms) {
  return typeof ms === "number" ? `${Math.round(ms)} ms` : "–";
}

export function renderHud() {
  const withTtfp = L.turns.filter((t) => t.ttfpMs !== null);
  const last = withTtfp[withTtfp.length - 1];
  $("hud-ttfp").textContent = last ? fmtMs(last.ttfpMs) : "–";
  $("hud-kind").textContent = last
    ? `${last.video ? "with video" : "audio only"} · reference ${last.video ? REF_VIDEO_MS : REF_AUDIO_MS} ms`
    : "";
  const heard = L.turns.filter((t) => t.audibleMs !== null);
  const lastHeard = heard[heard.length - 1];
  $("hud-e2e").textContent = lastHeard ? fmtMs(lastHeard.audibleMs) : "–";
  $("hud-e2e-from").textContent = lastHeard ? `from ${lastHeard.endOfSpeechFrom}` : "";
  $("hud-medians").textContent = medianLine(withTtfp);
  renderChart();
  renderWaterfall(last);
  renderTurnTable();
}

function median(values) {
  const v = [...values].sort((a, b) => a - b);
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

function medianLine(turns) {
  const parts = [];
  for (const [video, label, ref] of [
    [false, "audio-only", REF_AUDIO_MS],
    [true, "with video", REF_VIDEO_MS],
  ]) {
    const ms = turns.filter((t) => t.video === video).map((t) => t.ttfpMs);
    if (ms.length) parts.push(`${label}: median ${fmtMs(median(ms))} over ${ms.length} (ref ${ref} ms)`);
  }
  return parts.length ? `First packet ${parts.join(" · ")}` : "";
}

const SVG_NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function renderChart() {
  const chart = $("hud-chart");
  chart.replaceChildren();
  const turns = L.turns.slice(-MAX_TURNS_SHOWN);
  const [x0, x1, y0, y1] = [36, 314, 8, 118]; // plot area inside the 320x140 view box
  const top = niceCeil(Math.max(REF_VIDEO_MS * 1.2, ...turns.map((t) => t.ttfpMs || 0)) * 1.05);
  const y = (ms) => y1 - (Math.min(ms, top) / top) * (y1 - y0);
  chart.append(svg("line", { x1: x0, y1: y1, x2: x1, y2: y1, class: "axis" }));
  for (const tick of [0, top / 2, top]) {
    chart.append(svg("text", { x: x0 - 4, y: y(tick) + 3, class: "tick", "text-anchor": "end" }, Math.round(tick)));
  }
  const slot = (x1 - x0) / MAX_TURNS_SHOWN;
  turns.forEach((t, i) => {
    const x = x0 + i * slot + slot * 0.15;
    if (t.ttfpMs === null) {
      chart.append(svg("text", { x: x + slot * 0.35, y: y1 - 3, class: "tick", "text-anchor": "middle" }, "·"));
      return;
    }
    const bar = svg("rect", {
      x,
      y: y(t.ttfpMs),
      width: slot * 0.7,
      height: Math.max(1, y1 - y(t.ttfpMs)),
      class: t.video ? "bar video" : "bar audio",
    });
    bar.append(svg("title", {}, `turn ${t.n}: ${Math.round(t.ttfpMs)} ms${t.video ? " (video)" : ""}`));
    chart.append(bar);
  });
  for (const [ms, cls] of [
    [REF_AUDIO_MS, "ref audio"],
    [REF_VIDEO_MS, "ref video"],
  ]) {
    chart.append(svg("line", { x1: x0, y1: y(ms), x2: x1, y2: y(ms), class: cls }));
    chart.append(svg("text", { x: x1, y: y(ms) - 2, class: "tick", "text-anchor": "end" }, `${ms}`));
  }
  chart.append(svg("text", { x: x0, y: 134, class: "tick" }, "turns →  (ms)"));
}

function niceCeil(v) {
  const step = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= v) return m * step;
  return 10 * step;
}

function renderWaterfall(turn) {
  const box = $("hud-waterfall");
  box.replaceChildren();
  const stages = turn && turn.stages;
  if (!stages) {
    const p = document.createElement("p");
    p.className = "muted small";
    p.textContent = "no turn yet";
    box.append(p);
    return;
  }
  const rows = STAGES.filter(([key]) => typeof stages[key] === "number" && !(key === "queue" && stages[key] < 0.5));
  const total = rows.reduce((sum, [key]) => sum + stages[key], 0) || 1;
  let start = 0;
  for (const [key, label] of rows) {
    const ms = stages[key];
    const row = document.createElement("div");
    row.className = "wf-row";
    row.dataset.stage = key;
    const name = document.createElement("span");
    name.className = "wf-label";
    name.textContent = label;
    const track = document.createElement("span");
    track.className = "wf-track";
    const bar = document.createElement("span");
    bar.className = `wf-bar ${key}`;
    bar.style.left = `${((start / total) * 100).toFixed(2)}%`;
    bar.style.width = `${Math.max(0.5, (ms / total) * 100).toFixed(2)}%`;
    track.append(bar);
    const value = document.createElement("span");
    value.className = "wf-value";
    value.textContent = fmtMs(ms);
    row.append(name, track, value);
    box.append(row);
    start += ms;
  }
}

function renderTurnTable() {
  const body = $("hud-turns");
  body.replaceChildren();
  for (const t of L.turns.slice(-8).reverse()) {
    const tr = document.createElement("tr");
    const status = t.status === "cancelled" ? " (interrupted)" : "";
    for (const text of [t.n, (t.video ? "audio+video" : "audio") + status, fmtMs(t.ttfpMs), fmtMs(t.audibleMs)]) {
      const td = document.createElement("td");
      td.textContent = String(text);
      tr.append(td);
    }
    body.append(tr);
  }
}
