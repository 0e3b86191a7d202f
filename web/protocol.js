// The OpenAI Realtime protocol as the page speaks it (GA event names, with the beta spellings the
// server may still send): every server event from the data channel is parsed, logged and handed to
// the module that shows it (transcript.js, latency.js, status.js); the client events the page
// sends (session.update, the barge-in pair) are built here. One table maps event to handler, so
// what the page does with an event is found in one place.

import { send } from "./connection.js";
import { endOfSpeech, responseCreated, responseDone, userImages } from "./latency.js";
import { applyPreset } from "./presets.js";
import { showError } from "./status.js";
import * as transcript from "./transcript.js";

const EVENT_LOG_LIMIT = 500;

const P = {
  responseActive: false, // between response.created and response.done
  playing: false, // between output_audio_buffer.started and .stopped/.cleared
  lastInstructions: "",
  eventLog: [], // received event types, for the tests and for debugging in the console
  observers: [], // called with every parsed event before its handler (page tools)
};

// ---------------------------------------------------------------------------- client events

// session.update from the page's controls. `instructions` is the trimmed text box; `fields` are
// extra session fields (the page tools'); presets.js has the last word.
export function sendSessionUpdate({ handsFree, voice, instructions, fields = {} }) {
  const session = {
    type: "realtime",
    audio: {
      input: {
        turn_detection: handsFree ? { type: "server_vad", create_response: true, interrupt_response: true } : null,
      },
      output: { voice },
    },
  };
  // An empty box keeps the server's default instructions, unless the user just cleared them.
  if (instructions || P.lastInstructions) session.instructions = instructions;
  P.lastInstructions = instructions;
  Object.assign(session, fields);
  send({ type: "session.update", session: applyPreset(session) });
}

// Push-to-talk barge-in: stop generation and drop the audio the server has queued for us.
export function interruptAssistant() {
  if (P.responseActive) send({ type: "response.cancel" });
  if (P.responseActive || P.playing) send({ type: "output_audio_buffer.clear" });
}

// ---------------------------------------------------------------------------- server events

// `fn(event)` sees every server event, before the page's own handler.
export function observeEvents(fn) {
  P.observers.push(fn);
}

export function onServerEvent(data) {
  let ev;
  try {
    ev = JSON.parse(data);
  } catch {
    return;
  }
  if (P.eventLog.length >= EVENT_LOG_LIMIT) P.eventLog.shift();
  P.eventLog.push({ type: ev.type, t: performance.now() });
  for (const fn of P.observers) fn(ev);
  const handler = HANDLERS[ev.type];
  if (handler) handler(ev);
}

const assistantDelta = (ev) => transcript.appendAssistant(ev.item_id, ev.delta);

const HANDLERS = {
  "input_audio_buffer.speech_started": (ev) => transcript.speechStarted(ev.item_id, ev.audio_start_ms),
  "input_audio_buffer.speech_stopped": (ev) => {
    endOfSpeech(performance.now(), "speech_stopped");
    transcript.speechStopped(ev.item_id, ev.audio_end_ms);
  },
  "input_audio_buffer.committed": (ev) => transcript.adoptPendingUser(ev.item_id),
  "conversation.item.input_audio_transcription.delta": (ev) => transcript.userTranscriptDelta(ev.item_id, ev.delta),
  "conversation.item.input_audio_transcription.completed": (ev) =>
    transcript.userTranscriptDone(ev.item_id, ev.transcript),
  "conversation.item.added": (ev) => onItemAdded(ev.item || {}),
  "conversation.item.created": (ev) => onItemAdded(ev.item || {}), // beta spelling
  "response.created": (ev) => {
    P.responseActive = true;
    responseCreated(ev.response || {});
  },
  "response.output_item.added": (ev) => {
    if (ev.item && ev.item.role === "assistant") transcript.assistantItem(ev.item.id);
  },
  "response.output_audio_transcript.delta": assistantDelta,
  "response.audio_transcript.delta": assistantDelta, // beta spelling
  "response.output_text.delta": assistantDelta,
  "response.text.delta": assistantDelta, // beta spelling
  "response.done": (ev) => {
    P.responseActive = false;
    const turn = responseDone(ev);
    const output = (ev.response || {}).output || [];
    if (turn && turn.status === "cancelled") transcript.markInterrupted(output.map((o) => o.id));
  },
  "output_audio_buffer.started": () => {
    P.playing = true;
  },
  "output_audio_buffer.stopped": () => {
    P.playing = false;
  },
  "output_audio_buffer.cleared": () => {
    P.playing = false;
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
  userImages(images);
  transcript.showFrames(item.id, images);
}

// ---------------------------------------------------------------------------- state for the page

// Forgets the response in flight (on disconnect).
export function resetProtocol() {
  P.responseActive = false;
  P.playing = false;
}

export function protocolState() {
  return { playing: P.playing, responseActive: P.responseActive };
}

// The types of the events received so far (the last EVENT_LOG_LIMIT).
export function eventTypes() {
  return P.eventLog.map((e) => e.type);
}
