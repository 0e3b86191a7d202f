// Browser demo for the realtime server: WebRTC to /v1/realtime/calls, OpenAI Realtime events on the
// `oai-events` data channel, and a latency HUD. Plain ES module, no build step, nothing fetched from
// outside this server. Server text is only ever inserted with textContent.

import { iceServersFromServer } from "./deploy.js";
import { PageTools } from "./tools.js";

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
const AUDIBLE_RMS = 0.01; // about -40 dBFS: well above Opus-decoded digital silence, below any speech
const MONITOR_MS = 10; // how often the output analyser is polled for the first audible frame
const PTT_TAIL_MS = 120; // keep sending this long after release so the last syllable reaches the server
const PTT_MIN_HOLD_MS = 250; // shorter presses are treated as accidental taps
const ICE_GATHER_TIMEOUT_MS = 3000; // the server takes a complete offer (no trickle ICE)
const MAX_TURNS_SHOWN = 16;
const EVENT_LOG_LIMIT = 500;

const $ = (id) => document.getElementById(id);
import { applyPreset, mountPresets, presetAnswers, presetState } from "./presets.js";

const S = {
  health: null,
  pc: null,
  dc: null,
  callUrl: null, // the Location of our call: DELETE on it hangs up at once, freeing the server's slot
  micStream: null, // what getUserMedia gave (audio, and video when the camera is on)
  meterTrack: null, // a clone of the mic track that keeps the level meter live while PTT mutes sending
  audioCtx: null,
  micAnalyser: null,
  outAnalyser: null,
  monitor: 0,
  connecting: false,
  connected: false,
  mode: "vad",
  videoOn: false,
  responseActive: false,
  playing: false, // between output_audio_buffer.started and .stopped/.cleared
  ptt: { held: false, pressedAt: 0, tail: 0 },
  pendingEndOfSpeech: null, // {at, from} waiting for the next response
  lastUserImages: null, // camera frames the server attached to the latest user item
  turns: [],
  userItems: new Map(), // item_id -> transcript <li>
  assistantItems: new Map(),
  lastInstructions: "",
  eventLog: [], // received event types, for the tests and for debugging in the console
};

// ---------------------------------------------------------------------------- status and errors

function setState(text, state) {
  const el = $("conn-state");
  el.textContent = text;
  el.dataset.state = state;
}

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

function mediaErrorMessage(err, wantedCamera) {
  if (!navigator.mediaDevices) {
    return "microphone unavailable: this page must be opened over https or on localhost (an ssh tunnel works)";
  }
  const device = wantedCamera ? "microphone or camera" : "microphone";
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return `${device} denied: allow access in the browser's site settings and connect again`;
    case "NotFoundError":
    case "OverconstrainedError":
      return `no ${device} found`;
    case "NotReadableError":
      return `${device} is busy in another application`;
    default:
      return `${device} failed: ${err && err.message ? err.message : err}`;
  }
}

async function checkHealth() {
  const info = $("server-info");
  try {
    const resp = await fetch("health", { cache: "no-store" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    S.health = await resp.json();
  } catch (err) {
    S.health = null;
    info.textContent = "server unreachable";
    return null;
  }
  const h = S.health;
  // A local checkpoint directory shows as its last part (the whole path is in the tooltip).
  const model = typeof h.model === "string" && h.model.startsWith("/") ? h.model.split("/").filter(Boolean).pop() : h.model;
  const parts = [model, h.device, h.sessions !== undefined ? `${h.sessions} session(s)` : null];
  info.textContent = parts.filter((p) => p !== null && p !== undefined && p !== "").join(" · ");
  info.title = h.model || "";
  $("tiny-banner").hidden = !h.is_tiny;
  return h;
}

// ---------------------------------------------------------------------------- connection

async function connect() {
  if (S.connecting || S.connected) return;
  S.connecting = true;
  showError("");
  setState("connecting…", "connecting");
  $("connect").disabled = true;
  try {
    await checkHealth();
    S.videoOn = $("camera").checked;
    S.micStream = await openMedia(S.videoOn);
    setupAudioGraph();
    // Gate the mic before any RTP flows: until our session.update lands the server runs its
    // default (server VAD), and push-to-talk must not start a turn in that window.
    applyMicGate();
    await negotiate();
  } catch (err) {
    showError(err.userMessage || `connection failed: ${err.message || err}`);
    teardown("disconnected");
  } finally {
    S.connecting = false;
    $("connect").disabled = false;
    renderControls();
  }
}

async function openMedia(withCamera) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw Object.assign(new Error("no mediaDevices"), { userMessage: mediaErrorMessage(null, withCamera) });
  }
  const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  const video = withCamera ? { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 15 } } : false;
  try {
    return await navigator.mediaDevices.getUserMedia({ audio, video });
  } catch (err) {
    throw Object.assign(err, { userMessage: mediaErrorMessage(err, withCamera) });
  }
}

function setupAudioGraph() {
  S.audioCtx = new AudioContext();
  S.audioCtx.resume();
  const mic = S.micStream.getAudioTracks()[0];
  S.meterTrack = mic.clone();
  S.micAnalyser = analyserFor(new MediaStream([S.meterTrack]));
  const preview = $("preview");
  preview.hidden = !S.videoOn;
  preview.srcObject = S.videoOn ? S.micStream : null;
}

function analyserFor(stream) {
  const source = S.audioCtx.createMediaStreamSource(stream);
  const analyser = S.audioCtx.createAnalyser();
  analyser.fftSize = 512;
  source.connect(analyser);
  // A muted path to the destination keeps the node pulled in every browser; playback itself
  // goes through the <audio> element.
  const mute = S.audioCtx.createGain();
  mute.gain.value = 0;
  analyser.connect(mute).connect(S.audioCtx.destination);
  return analyser;
}

async function negotiate() {
  const pc = new RTCPeerConnection({ iceServers: await iceServersFromServer() });
  S.pc = pc;
  for (const track of S.micStream.getTracks()) pc.addTrack(track, S.micStream);
  pc.ontrack = (ev) => onRemoteTrack(ev);
  pc.onconnectionstatechange = () => onConnectionState(pc);
  const dc = pc.createDataChannel("oai-events");
  S.dc = dc;
  dc.onopen = onChannelOpen;
  dc.onclose = () => {
    if (S.dc === dc && S.connected) {
      showError("the server closed the session");
      teardown("disconnected", { hangUp: false });
    }
  };
  dc.onmessage = (ev) => onServerEvent(ev.data);

  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringDone(pc);
  let resp;
  try {
    resp = await fetch("v1/realtime/calls", {
      method: "POST",
      headers: { "Content-Type": "application/sdp" },
      body: pc.localDescription.sdp,
    });
  } catch (err) {
    throw Object.assign(err, { userMessage: "server unreachable" });
  }
  if (resp.status === 503) throw Object.assign(new Error("503"), { userMessage: "server busy: try again later" });
  if (resp.status !== 201 && resp.status !== 200) {
    throw Object.assign(new Error(`HTTP ${resp.status}`), { userMessage: await httpErrorMessage(resp) });
  }
  const location = resp.headers.get("Location");
  S.callUrl = location ? new URL(location, window.location.href).href : null;
  await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
}

async function httpErrorMessage(resp) {
  let detail = "";
  try {
    const text = await resp.text();
    try {
      const body = JSON.parse(text);
      detail = (body.error && body.error.message) || body.detail || text;
    } catch {
      detail = text;
    }
  } catch {
    detail = "";
  }
  if (resp.status === 401 || resp.status === 403) return `not allowed by the server (HTTP ${resp.status}) ${detail}`;
  return `server refused the call (HTTP ${resp.status}) ${String(detail).slice(0, 200)}`;
}

function iceGatheringDone(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ICE_GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

function onRemoteTrack(ev) {
  if (ev.track.kind !== "audio") return;
  const stream = ev.streams[0] || new MediaStream([ev.track]);
  // Chromium only feeds a remote WebRTC stream into WebAudio while a media element plays it.
  const audio = $("remote-audio");
  audio.srcObject = stream;
  audio.play().catch(() => showError("the browser blocked audio playback: click the page once"));
  S.outAnalyser = analyserFor(stream);
}

function onConnectionState(pc) {
  if (pc !== S.pc) return;
  const st = pc.connectionState;
  if (st === "connected") {
    setState(S.connected ? "connected" : "connected (waiting for events)", S.connected ? "connected" : "connecting");
  } else if (st === "failed") {
    showError("no media path to the server (ICE failed): a TURN server may be needed");
    teardown("failed");
  } else if (st === "disconnected") {
    setState("connection interrupted…", "connecting");
  }
}

function onChannelOpen() {
  S.connected = true;
  setState("connected", "connected");
  S.monitor = setInterval(monitorTick, MONITOR_MS);
  sendSessionUpdate();
  applyMicGate();
  renderControls();
  checkHealth(); // the session count now includes ours
}

async function disconnect() {
  await teardown("disconnected");
  checkHealth();
}

function teardown(state, { hangUp = true } = {}) {
  clearInterval(S.monitor);
  clearTimeout(S.ptt.tail);
  if (S.dc) S.dc.onclose = null;
  const pc = S.pc;
  let hungUp = Promise.resolve();
  if (pc && S.callUrl && hangUp) {
    // Hang up first, then close: closing first races the server's own cleanup, and the
    // DELETE would find no call. Either way the server's session slot is free at once.
    hungUp = fetch(S.callUrl, { method: "DELETE", keepalive: true })
      .catch(() => {})
      .finally(() => pc.close());
  } else if (pc) {
    pc.close();
  }
  for (const t of S.micStream ? S.micStream.getTracks() : []) t.stop();
  if (S.meterTrack) S.meterTrack.stop();
  if (S.audioCtx) S.audioCtx.close();
  $("remote-audio").srcObject = null;
  $("preview").srcObject = null;
  $("preview").hidden = true;
  Object.assign(S, {
    pc: null,
    dc: null,
    callUrl: null,
    micStream: null,
    meterTrack: null,
    audioCtx: null,
    micAnalyser: null,
    outAnalyser: null,
    connected: false,
    responseActive: false,
    playing: false,
    pendingEndOfSpeech: null,
    lastUserImages: null,
  });
  S.ptt.held = false;
  setState(state, state);
  setMeter("mic-level", 0);
  setMeter("out-level", 0);
  $("mic-state").textContent = "off";
  $("out-state").textContent = "silent";
  renderControls();
  return hungUp;
}

// ---------------------------------------------------------------------------- client events

function send(event) {
  if (!S.dc || S.dc.readyState !== "open") return false;
  S.dc.send(JSON.stringify(event));
  return true;
}

function sendSessionUpdate() {
  const instructions = $("instructions").value.trim();
  const session = {
    type: "realtime",
    audio: {
      input: {
        turn_detection:
          S.mode === "vad" ? { type: "server_vad", create_response: true, interrupt_response: true } : null,
      },
      output: { voice: $("voice").value },
    },
  };
  // An empty box keeps the server's default instructions, unless the user just cleared them.
  if (instructions || S.lastInstructions) session.instructions = instructions;
  S.lastInstructions = instructions;
  Object.assign(session, pageTools.sessionFields()); // tools.js: the page's own tools, when switched on
  send({ type: "session.update", session: applyPreset(session) });
}

function interruptAssistant() {
  // Push-to-talk barge-in: stop generation and drop the audio the server has queued for us.
  if (S.responseActive) send({ type: "response.cancel" });
  if (S.responseActive || S.playing) send({ type: "output_audio_buffer.clear" });
}

// ---------------------------------------------------------------------------- push-to-talk

function applyMicGate() {
  const track = S.micStream && S.micStream.getAudioTracks()[0];
  if (!track) return;
  // In push-to-talk the mic only sends while held (plus a short tail): the assistant's own
  // voice never leaks into the next turn, and nothing is sent that the user did not mean to.
  track.enabled = S.mode === "vad" || S.ptt.held || S.ptt.tail !== 0;
  $("mic-state").textContent = track.enabled ? "sending" : "muted — hold to talk";
}

function pttDown() {
  if (!S.connected || S.mode !== "ptt" || S.ptt.held) return;
  if (S.ptt.tail) {
    clearTimeout(S.ptt.tail);
    S.ptt.tail = 0;
  }
  interruptAssistant();
  send({ type: "input_audio_buffer.clear" });
  S.ptt.held = true;
  S.ptt.pressedAt = performance.now();
  $("ptt").setAttribute("aria-pressed", "true");
  applyMicGate();
}

function pttUp() {
  if (!S.ptt.held) return;
  S.ptt.held = false;
  $("ptt").setAttribute("aria-pressed", "false");
  const releasedAt = performance.now();
  const heldMs = releasedAt - S.ptt.pressedAt;
  if (heldMs < PTT_MIN_HOLD_MS) {
    send({ type: "input_audio_buffer.clear" });
    applyMicGate();
    return;
  }
  S.ptt.tail = setTimeout(() => {
    S.ptt.tail = 0;
    applyMicGate();
    S.pendingEndOfSpeech = { at: releasedAt, from: "push-to-talk release" };
    addUserSpeech(null, heldMs / 1000);
    send({ type: "input_audio_buffer.commit" });
    if (presetAnswers()) send({ type: "response.create" });
  }, PTT_TAIL_MS);
  applyMicGate();
}

function isTextEntry(el) {
  return el && (el.tagName === "TEXTAREA" || el.tagName === "SELECT" || (el.tagName === "INPUT" && el.type === "text"));
}

function spaceIsPushToTalk(ev) {
  // Only while connected in push-to-talk: otherwise Space keeps its usual job (pressing the
  // focused button, e.g. Connect, for keyboard users). Held keys are released either way.
  return ev.code === "Space" && S.mode === "ptt" && (S.connected || S.ptt.held) && !isTextEntry(ev.target);
}

// ---------------------------------------------------------------------------- server events

function onServerEvent(data) {
  let ev;
  try {
    ev = JSON.parse(data);
  } catch {
    return;
  }
  if (S.eventLog.length >= EVENT_LOG_LIMIT) S.eventLog.shift();
  S.eventLog.push({ type: ev.type, t: performance.now() });
  pageTools.onEvent(ev); // tools.js: runs the page's tools and answers their calls
  const handler = HANDLERS[ev.type];
  if (handler) handler(ev);
}

const HANDLERS = {
  "input_audio_buffer.speech_started": (ev) => {
    const li = userItem(ev.item_id);
    li.dataset.startMs = ev.audio_start_ms ?? "";
    setItemText(li, "🎤 speaking…");
  },
  "input_audio_buffer.speech_stopped": (ev) => {
    S.pendingEndOfSpeech = { at: performance.now(), from: "speech_stopped" };
    const li = userItem(ev.item_id);
    const start = Number(li.dataset.startMs);
    if (!li.dataset.transcript && ev.audio_end_ms !== undefined && li.dataset.startMs !== "") {
      setItemText(li, `🎤 speech (${((ev.audio_end_ms - start) / 1000).toFixed(1)} s)`);
    }
  },
  "input_audio_buffer.committed": (ev) => {
    // Push-to-talk adds its item before the id is known; adopt the id now.
    const pending = S.userItems.get(null);
    if (pending && ev.item_id) {
      S.userItems.delete(null);
      S.userItems.set(ev.item_id, pending);
    }
  },
  "conversation.item.input_audio_transcription.delta": (ev) => {
    const li = userItem(ev.item_id);
    li.dataset.transcript = (li.dataset.transcript || "") + (ev.delta || "");
    setItemText(li, li.dataset.transcript);
  },
  "conversation.item.input_audio_transcription.completed": (ev) => {
    const li = userItem(ev.item_id);
    li.dataset.transcript = ev.transcript || "";
    if (ev.transcript) setItemText(li, ev.transcript);
  },
  "conversation.item.added": (ev) => onItemAdded(ev.item || {}),
  "conversation.item.created": (ev) => onItemAdded(ev.item || {}), // beta spelling
  "response.created": (ev) => onResponseCreated(ev.response || {}),
  "response.output_item.added": (ev) => {
    if (ev.item && ev.item.role === "assistant") assistantItem(ev.item.id);
  },
  "response.output_audio_transcript.delta": (ev) => appendAssistant(ev.item_id, ev.delta),
  "response.audio_transcript.delta": (ev) => appendAssistant(ev.item_id, ev.delta),
  "response.output_text.delta": (ev) => appendAssistant(ev.item_id, ev.delta),
  "response.text.delta": (ev) => appendAssistant(ev.item_id, ev.delta),
  "response.done": (ev) => onResponseDone(ev),
  "output_audio_buffer.started": () => {
    S.playing = true;
  },
  "output_audio_buffer.stopped": () => {
    S.playing = false;
  },
  "output_audio_buffer.cleared": () => {
    S.playing = false;
  },
  error: (ev) => {
    const e = ev.error || {};
    // A barge-in can cross the response's own end on the wire: nothing was left to cancel.
    if (e.code === "response_cancel_not_active") return;
    if (e.code === "session_limit_reached") showError("server busy: too many sessions, try again later");
    else showError(`server error: ${e.message || e.code || "unknown"}`);
  },
};

function onItemAdded(item) {
  if (item.role !== "user") return;
  // The server lists each camera frame it attached to the turn as an input_image part:
  // that, not the camera checkbox, says whether the model saw video on this turn.
  const images = (item.content || []).filter((c) => c.type === "input_image").length;
  S.lastUserImages = images;
  if (images && S.userItems.has(item.id)) {
    const li = S.userItems.get(item.id);
    const badge = document.createElement("span");
    badge.className = "frames";
    badge.textContent = `🎥 ${images} frame${images === 1 ? "" : "s"}`;
    li.append(badge);
  }
}

function onResponseCreated(response) {
  S.responseActive = true;
  const eos = S.pendingEndOfSpeech;
  S.pendingEndOfSpeech = null;
  const video = S.lastUserImages === null ? S.videoOn : S.lastUserImages > 0;
  S.lastUserImages = null;
  S.turns.push({
    n: S.turns.length + 1,
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

function onResponseDone(ev) {
  const response = ev.response || {};
  S.responseActive = false;
  const turn = S.turns.find((t) => t.id === response.id) || S.turns[S.turns.length - 1];
  if (!turn) return;
  const latency = ev.latency || response.latency || {};
  turn.status = response.status || "completed";
  turn.ttfpMs = typeof latency.audio_ttfp_ms === "number" ? latency.audio_ttfp_ms : null;
  turn.stages = latency.stages_ms ? { ...latency.stages_ms } : null;
  if (turn.stages && typeof latency.engine_audio_ttfp_ms === "number" && turn.ttfpMs !== null) {
    turn.stages.send = Math.max(0, turn.ttfpMs - latency.engine_audio_ttfp_ms);
  }
  for (const output of response.output || []) {
    const li = S.assistantItems.get(output.id);
    if (li && turn.status === "cancelled") li.classList.add("interrupted");
  }
  renderHud();
}

// ---------------------------------------------------------------------------- transcript

function transcriptList() {
  const list = $("transcript");
  const hint = list.querySelector(".hint");
  if (hint) hint.remove();
  return list;
}

function newItem(role) {
  const li = document.createElement("li");
  li.className = role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  const text = document.createElement("span");
  text.className = "text";
  li.append(who, text);
  const list = transcriptList();
  list.append(li);
  list.scrollTop = list.scrollHeight;
  return li;
}

function setItemText(li, text) {
  li.querySelector(".text").textContent = text;
}

function userItem(id) {
  let li = S.userItems.get(id ?? null);
  if (!li) {
    li = newItem("user");
    S.userItems.set(id ?? null, li);
  }
  return li;
}

function addUserSpeech(id, seconds) {
  setItemText(userItem(id), `🎤 speech (${seconds.toFixed(1)} s)`);
}

function assistantItem(id) {
  let li = S.assistantItems.get(id);
  if (!li) {
    li = newItem("assistant");
    S.assistantItems.set(id, li);
  }
  return li;
}

function appendAssistant(id, delta) {
  if (!delta) return;
  const li = assistantItem(id);
  li.querySelector(".text").textContent += delta;
  const list = $("transcript");
  list.scrollTop = list.scrollHeight;
}

// ---------------------------------------------------------------------------- levels and first audible output

function rms(analyser) {
  const buf = new Float32Array(analyser.fftSize);
  analyser.getFloatTimeDomainData(buf);
  let sum = 0;
  for (const v of buf) sum += v * v;
  return Math.sqrt(sum / buf.length);
}

let meterTicks = 0;

function monitorTick() {
  const out = S.outAnalyser ? rms(S.outAnalyser) : 0;
  if (out > AUDIBLE_RMS) markAudible();
  if (++meterTicks % 5) return; // meters at 20 Hz are enough for the eye
  const mic = S.micAnalyser ? rms(S.micAnalyser) : 0;
  setMeter("mic-level", mic);
  setMeter("out-level", out);
  $("out-state").textContent = out > AUDIBLE_RMS ? "speaking" : "silent";
  $("out-state").dataset.audible = out > AUDIBLE_RMS ? "1" : "0";
}

function markAudible() {
  const now = performance.now();
  const turn = S.turns[S.turns.length - 1];
  if (!turn || turn.audibleMs !== null || turn.endOfSpeechAt === null || turn.status === "cancelled") return;
  turn.audibleMs = now - turn.endOfSpeechAt;
  renderHud();
}

function setMeter(id, level) {
  // dBFS mapped onto the bar: -60 dB empty, 0 dB full.
  const db = level > 0 ? 20 * Math.log10(level) : -100;
  const pct = Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
  $(id).style.width = `${pct.toFixed(0)}%`;
}

// ---------------------------------------------------------------------------- latency HUD

function fmtMs(ms) {
  return typeof ms === "number" ? `${Math.round(ms)} ms` : "–";
}

function renderHud() {
  const withTtfp = S.turns.filter((t) => t.ttfpMs !== null);
  const last = withTtfp[withTtfp.length - 1];
  $("hud-ttfp").textContent = last ? fmtMs(last.ttfpMs) : "–";
  $("hud-kind").textContent = last
    ? `${last.video ? "with video" : "audio only"} · reference ${last.video ? REF_VIDEO_MS : REF_AUDIO_MS} ms`
    : "";
  const heard = S.turns.filter((t) => t.audibleMs !== null);
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
  const turns = S.turns.slice(-MAX_TURNS_SHOWN);
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
  for (const t of S.turns.slice(-8).reverse()) {
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

// ---------------------------------------------------------------------------- controls

function renderControls() {
  const button = $("connect");
  button.textContent = S.connected ? "Disconnect" : "Connect";
  button.classList.toggle("primary", !S.connected);
  $("camera").disabled = S.connected || S.connecting;
  const ptt = $("ptt");
  ptt.hidden = S.mode !== "ptt";
  ptt.disabled = !S.connected;
}

function bindControls() {
  mountPresets({ anchor: $("mode"), instructions: $("instructions"), camera: $("camera"), onChange: sendSessionUpdate });
  $("connect").addEventListener("click", () => (S.connected ? disconnect() : connect()));
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      if (!radio.checked) return;
      S.mode = radio.value;
      if (S.ptt.held) pttUp();
      sendSessionUpdate();
      applyMicGate();
      renderControls();
    });
  }
  $("voice").addEventListener("change", sendSessionUpdate);
  $("instructions").addEventListener("change", sendSessionUpdate);
  const ptt = $("ptt");
  ptt.addEventListener("pointerdown", (ev) => {
    ptt.setPointerCapture(ev.pointerId);
    pttDown();
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) ptt.addEventListener(type, pttUp);
  ptt.addEventListener("contextmenu", (ev) => ev.preventDefault());
  document.addEventListener("keydown", (ev) => {
    if (!spaceIsPushToTalk(ev)) return;
    ev.preventDefault();
    // Space would also "click" a focused button (Disconnect!) on release: take focus off it.
    if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
    if (!ev.repeat) pttDown();
  });
  document.addEventListener("keyup", (ev) => {
    if (!spaceIsPushToTalk(ev)) return;
    ev.preventDefault();
    pttUp();
  });
  window.addEventListener("blur", pttUp);
  window.addEventListener("pagehide", () => teardown("disconnected"));
}

// A read-only window into the page state, for the browser tests and the console.
window.demo = Object.freeze({
  pc: () => S.pc,
  turns: () => S.turns.map((t) => ({ ...t })),
  events: () => S.eventLog.map((e) => e.type),
  state: () => ({ connected: S.connected, mode: S.mode, playing: S.playing, responseActive: S.responseActive }),
  preset: presetState,
  levels: () => ({ mic: S.micAnalyser ? rms(S.micAnalyser) : 0, out: S.outAnalyser ? rms(S.outAnalyser) : 0 }),
});

const pageTools = new PageTools({
  send,
  addRow: (role, text) => {
    const li = newItem(role);
    li.querySelector(".who").textContent = "Tool";
    setItemText(li, text);
  },
  onChange: sendSessionUpdate,
  container: document.querySelector(".controls"),
});

bindControls();
renderControls();
renderHud();
checkHealth();
