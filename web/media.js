// The page's media: the microphone (and camera) from getUserMedia, the camera preview, playback of
// the assistant's track, and the WebAudio graph that measures both. The level meters and the
// browser-side "first audible frame" of each answer come from here; the latency display only
// receives the moment (onAudible). Owned here so that one module opens and closes every device.

import { showError } from "./status.js";

const AUDIBLE_RMS = 0.01; // about -40 dBFS: well above Opus-decoded digital silence, below any speech
const MONITOR_MS = 10; // how often the output analyser is polled for the first audible frame

const $ = (id) => document.getElementById(id);

const M = {
  stream: null, // what getUserMedia gave (audio, and video when the camera is on)
  meterTrack: null, // a clone of the mic track that keeps the level meter live while push-to-talk mutes sending
  audioCtx: null,
  micAnalyser: null,
  outAnalyser: null,
  monitor: 0,
  ticks: 0,
};

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

// Opens the microphone (and the camera) and the audio graph; shows the preview. Throws with a
// `userMessage` the page can show as is. Returns the stream whose tracks the call sends.
export async function openMedia(withCamera) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw Object.assign(new Error("no mediaDevices"), { userMessage: mediaErrorMessage(null, withCamera) });
  }
  const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  const video = withCamera ? { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 15 } } : false;
  try {
    M.stream = await navigator.mediaDevices.getUserMedia({ audio, video });
  } catch (err) {
    throw Object.assign(err, { userMessage: mediaErrorMessage(err, withCamera) });
  }
  M.audioCtx = new AudioContext();
  M.audioCtx.resume();
  M.meterTrack = M.stream.getAudioTracks()[0].clone();
  M.micAnalyser = analyserFor(new MediaStream([M.meterTrack]));
  const preview = $("preview");
  preview.hidden = !withCamera;
  preview.srcObject = withCamera ? M.stream : null;
  return M.stream;
}

// The track push-to-talk gates (enabled = sending), or null before the microphone is open.
export function micTrack() {
  return (M.stream && M.stream.getAudioTracks()[0]) || null;
}

function analyserFor(stream) {
  const source = M.audioCtx.createMediaStreamSource(stream);
  const analyser = M.audioCtx.createAnalyser();
  analyser.fftSize = 512;
  source.connect(analyser);
  // A muted path to the destination keeps the node pulled in every browser; playback itself
  // goes through the <audio> element.
  const mute = M.audioCtx.createGain();
  mute.gain.value = 0;
  analyser.connect(mute).connect(M.audioCtx.destination);
  return analyser;
}

// The assistant's audio track: played by #remote-audio, measured by the output analyser.
export function playRemote(stream) {
  // Chromium only feeds a remote WebRTC stream into WebAudio while a media element plays it.
  const audio = $("remote-audio");
  audio.srcObject = stream;
  audio.play().catch(() => showError("the browser blocked audio playback: click the page once"));
  M.outAnalyser = analyserFor(stream);
}

function rms(analyser) {
  const buf = new Float32Array(analyser.fftSize);
  analyser.getFloatTimeDomainData(buf);
  let sum = 0;
  for (const v of buf) sum += v * v;
  return Math.sqrt(sum / buf.length);
}

// Current RMS of the microphone and of the assistant's output (for the tests and the console).
export function levels() {
  return { mic: M.micAnalyser ? rms(M.micAnalyser) : 0, out: M.outAnalyser ? rms(M.outAnalyser) : 0 };
}

// Polls the output every MONITOR_MS; `onAudible(now)` is called on every tick the output is
// above AUDIBLE_RMS (the latency display keeps the first one per turn).
export function startMonitor(onAudible) {
  clearInterval(M.monitor);
  M.monitor = setInterval(() => monitorTick(onAudible), MONITOR_MS);
}

function monitorTick(onAudible) {
  const out = M.outAnalyser ? rms(M.outAnalyser) : 0;
  if (out > AUDIBLE_RMS) onAudible(performance.now());
  if (++M.ticks % 5) return; // meters at 20 Hz are enough for the eye
  const mic = M.micAnalyser ? rms(M.micAnalyser) : 0;
  setMeter("mic-level", mic);
  setMeter("out-level", out);
  $("out-state").textContent = out > AUDIBLE_RMS ? "speaking" : "silent";
  $("out-state").dataset.audible = out > AUDIBLE_RMS ? "1" : "0";
}

function setMeter(id, level) {
  // dBFS mapped onto the bar: -60 dB empty, 0 dB full.
  const db = level > 0 ? 20 * Math.log10(level) : -100;
  const pct = Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
  $(id).style.width = `${pct.toFixed(0)}%`;
}

// Stops every device and the graph, and returns the meters to rest.
export function closeMedia() {
  clearInterval(M.monitor);
  for (const t of M.stream ? M.stream.getTracks() : []) t.stop();
  if (M.meterTrack) M.meterTrack.stop();
  if (M.audioCtx) M.audioCtx.close();
  $("remote-audio").srcObject = null;
  $("preview").srcObject = null;
  $("preview").hidden = true;
  Object.assign(M, { stream: null, meterTrack: null, audioCtx: null, micAnalyser: null, outAnalyser: null });
  M.monitor = 0;
  setMeter("mic-level", 0);
  setMeter("out-level", 0);
  $("mic-state").textContent = "off";
  $("out-state").textContent = "silent";
}
