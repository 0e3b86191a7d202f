// Browser demo for the realtime server: WebRTC to /v1/realtime/calls, OpenAI Realtime events on the
// `oai-events` data channel, and a latency HUD. Plain ES modules, no build step, nothing fetched from
// outside this server. This entry wires the modules together and owns the page's controls and the
// connect/disconnect sequence; each module's header says what it owns:
//   status.js      header pill, error banner, /health        deploy.js    secure context, ICE servers
//   media.js       mic, camera, playback, meters             connection.js  the WebRTC call
//   protocol.js    server events in, client events out       transcript.js  the transcript list
//   latency.js     turn records and the latency HUD          ptt.js       hands-free / push-to-talk
//   presets.js     task presets                              tools.js     tools that run in the page

import { closeCall, isOpen, openCall, peer, send } from "./connection.js";
import { markAudible, renderHud, resetPending, setCameraOn, turnsSnapshot } from "./latency.js";
import { closeMedia, levels, openMedia, playRemote, startMonitor } from "./media.js";
import { mountPresets, presetState } from "./presets.js";
import {
  eventTypes,
  observeEvents,
  onServerEvent,
  protocolState,
  resetProtocol,
  sendSessionUpdate,
} from "./protocol.js";
import { applyMicGate, bindPushToTalk, resetPushToTalk, setTurnMode, turnMode } from "./ptt.js";
import { checkHealth, setState, showError } from "./status.js";
import { PageTools } from "./tools.js";
import { addToolRow } from "./transcript.js";

const $ = (id) => document.getElementById(id);

let connecting = false;

// ---------------------------------------------------------------------------- connection sequence

async function connect() {
  if (connecting || isOpen()) return;
  connecting = true;
  showError("");
  setState("connecting…", "connecting");
  $("connect").disabled = true;
  try {
    await checkHealth();
    const withCamera = $("camera").checked;
    setCameraOn(withCamera);
    const stream = await openMedia(withCamera);
    // Gate the mic before any RTP flows: until our session.update lands the server runs its
    // default (server VAD), and push-to-talk must not start a turn in that window.
    applyMicGate();
    await openCall(stream, { onOpen: onChannelOpen, onMessage: onServerEvent, onAudio: playRemote, onEnded: teardown });
  } catch (err) {
    showError(err.userMessage || `connection failed: ${err.message || err}`);
    teardown("disconnected");
  } finally {
    connecting = false;
    $("connect").disabled = false;
    renderControls();
  }
}

function onChannelOpen() {
  setState("connected", "connected");
  startMonitor(markAudible);
  updateSession();
  applyMicGate();
  renderControls();
  checkHealth(); // the session count now includes ours
}

async function disconnect() {
  await teardown("disconnected");
  checkHealth();
}

// Ends the call and frees every device; `state` is the pill's state afterwards. The promise
// settles once the server has been told (see closeCall).
function teardown(state, { hangUp = true } = {}) {
  resetPushToTalk();
  const hungUp = closeCall({ hangUp });
  closeMedia();
  resetProtocol();
  resetPending();
  setState(state, state);
  renderControls();
  return hungUp;
}

// ---------------------------------------------------------------------------- controls

function updateSession() {
  sendSessionUpdate({
    handsFree: turnMode() === "vad",
    voice: $("voice").value,
    instructions: $("instructions").value.trim(),
    fields: pageTools.sessionFields(), // tools.js: the page's own tools, when switched on
  });
}

function renderControls() {
  const button = $("connect");
  const connected = isOpen();
  button.textContent = connected ? "Disconnect" : "Connect";
  button.classList.toggle("primary", !connected);
  $("camera").disabled = connected || connecting;
  const ptt = $("ptt");
  ptt.hidden = turnMode() !== "ptt";
  ptt.disabled = !connected;
}

function bindControls() {
  mountPresets({ anchor: $("mode"), instructions: $("instructions"), camera: $("camera"), onChange: updateSession });
  $("connect").addEventListener("click", () => (isOpen() ? disconnect() : connect()));
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      if (!radio.checked) return;
      setTurnMode(radio.value);
      updateSession();
      applyMicGate();
      renderControls();
    });
  }
  $("voice").addEventListener("change", updateSession);
  $("instructions").addEventListener("change", updateSession);
  bindPushToTalk();
  window.addEventListener("pagehide", () => teardown("disconnected"));
}

// A read-only window into the page state, for the browser tests and the console.
window.demo = Object.freeze({
  pc: peer,
  turns: turnsSnapshot,
  events: eventTypes,
  state: () => ({ connected: isOpen(), mode: turnMode(), ...protocolState() }),
  preset: presetState,
  levels,
});

const pageTools = new PageTools({
  send,
  addRow: addToolRow,
  onChange: updateSession,
  container: document.querySelector(".controls"),
});
observeEvents((ev) => pageTools.onEvent(ev)); // tools.js: runs the page's tools and answers their calls

bindControls();
renderControls();
renderHud();
checkHealth();
