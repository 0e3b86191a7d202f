// Turn-taking on the page: hands-free (the server's VAD ends turns) or push-to-talk, where the page
// ends them itself. Owns the mode, the microphone gate (the mic track sends only while the button or
// the space bar is held, plus a short tail), and what a press and a release send: a barge-in on
// press, input_audio_buffer.commit and response.create on release.

import { isOpen, send } from "./connection.js";
import { endOfSpeech } from "./latency.js";
import { micTrack } from "./media.js";
import { presetAnswers } from "./presets.js";
import { interruptAssistant } from "./protocol.js";
import { addUserSpeech } from "./transcript.js";

const PTT_TAIL_MS = 120; // keep sending this long after release so the last syllable reaches the server
const PTT_MIN_HOLD_MS = 250; // shorter presses are treated as accidental taps

const $ = (id) => document.getElementById(id);

const T = {
  mode: "vad", // "vad" (hands-free) or "ptt"
  held: false,
  pressedAt: 0,
  tail: 0, // the timer that ends a released turn, 0 when none runs
};

export function turnMode() {
  return T.mode;
}

// Switching mode releases a held button first (its turn is sent as on a release).
export function setTurnMode(mode) {
  T.mode = mode;
  if (T.held) pttUp();
}

export function applyMicGate() {
  const track = micTrack();
  if (!track) return;
  // In push-to-talk the mic only sends while held (plus a short tail): the assistant's own
  // voice never leaks into the next turn, and nothing is sent that the user did not mean to.
  track.enabled = T.mode === "vad" || T.held || T.tail !== 0;
  $("mic-state").textContent = track.enabled ? "sending" : "muted — hold to talk";
}

function pttDown() {
  if (!isOpen() || T.mode !== "ptt" || T.held) return;
  if (T.tail) {
    clearTimeout(T.tail);
    T.tail = 0;
  }
  interruptAssistant();
  send({ type: "input_audio_buffer.clear" });
  T.held = true;
  T.pressedAt = performance.now();
  $("ptt").setAttribute("aria-pressed", "true");
  applyMicGate();
}

function pttUp() {
  if (!T.held) return;
  T.held = false;
  $("ptt").setAttribute("aria-pressed", "false");
  const releasedAt = performance.now();
  const heldMs = releasedAt - T.pressedAt;
  if (heldMs < PTT_MIN_HOLD_MS) {
    send({ type: "input_audio_buffer.clear" });
    applyMicGate();
    return;
  }
  T.tail = setTimeout(() => {
    T.tail = 0;
    applyMicGate();
    endOfSpeech(releasedAt, "push-to-talk release");
    addUserSpeech(null, heldMs / 1000);
    send({ type: "input_audio_buffer.commit" });
    if (presetAnswers()) send({ type: "response.create" });
  }, PTT_TAIL_MS);
  applyMicGate();
}

// Drops a held press and its pending tail without sending anything (on disconnect).
export function resetPushToTalk() {
  clearTimeout(T.tail);
  T.tail = 0;
  T.held = false;
}

function isTextEntry(el) {
  return el && (el.tagName === "TEXTAREA" || el.tagName === "SELECT" || (el.tagName === "INPUT" && el.type === "text"));
}

function spaceIsPushToTalk(ev) {
  // Only while connected in push-to-talk: otherwise Space keeps its usual job (pressing the
  // focused button, e.g. Connect, for keyboard users). Held keys are released either way.
  return ev.code === "Space" && T.mode === "ptt" && (isOpen() || T.held) && !isTextEntry(ev.target);
}

// The #ptt button (pointer held), the space bar, and release when the window loses focus.
export function bindPushToTalk() {
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
}
