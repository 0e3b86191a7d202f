// The transport: one WebRTC call to the server. It posts a complete SDP offer to
// v1/realtime/calls (OpenAI Realtime over WebRTC), opens the `oai-events` data channel, hands the
// assistant's audio track and every data-channel message to the page, and hangs up with a DELETE
// on the call's Location. It reads no event: what the messages mean is protocol.js's business.
// URLs are relative to the page, so a reverse proxy's path prefix (--root-path) needs nothing here.

import { iceServersFromServer } from "./deploy.js";
import { setState, showError } from "./status.js";

const ICE_GATHER_TIMEOUT_MS = 3000; // the server takes a complete offer (no trickle ICE)

const C = {
  pc: null,
  dc: null,
  callUrl: null, // the Location of our call: DELETE on it hangs up at once, freeing the server's slot
  open: false, // the data channel opened and the call was not closed since
};

// Whether a call is up: its event channel is open.
export function isOpen() {
  return C.open;
}

// The RTCPeerConnection of the current call, or null (for the tests and the console).
export function peer() {
  return C.pc;
}

// Writes one client event on the data channel; false when there is no open channel.
export function send(event) {
  if (!C.dc || C.dc.readyState !== "open") return false;
  C.dc.send(JSON.stringify(event));
  return true;
}

// Starts a call that sends `stream`'s tracks. Hooks: onOpen() once the event channel opens,
// onMessage(data) per data-channel message, onAudio(stream) for the assistant's track, and
// onEnded(state, {hangUp}) when the call dies on its own (ICE failed, the server closed it):
// the page tears down and calls closeCall. Throws with a `userMessage` when the server refuses.
export async function openCall(stream, { onOpen, onMessage, onAudio, onEnded }) {
  const pc = new RTCPeerConnection({ iceServers: await iceServersFromServer() });
  C.pc = pc;
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  pc.ontrack = (ev) => {
    if (ev.track.kind === "audio") onAudio(ev.streams[0] || new MediaStream([ev.track]));
  };
  pc.onconnectionstatechange = () => onConnectionState(pc, onEnded);
  const dc = pc.createDataChannel("oai-events");
  C.dc = dc;
  dc.onopen = () => {
    C.open = true;
    onOpen();
  };
  dc.onclose = () => {
    if (C.dc === dc && C.open) {
      showError("the server closed the session");
      onEnded("disconnected", { hangUp: false });
    }
  };
  dc.onmessage = (ev) => onMessage(ev.data);

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
  C.callUrl = location ? new URL(location, window.location.href).href : null;
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

function onConnectionState(pc, onEnded) {
  if (pc !== C.pc) return;
  const st = pc.connectionState;
  if (st === "connected") {
    setState(C.open ? "connected" : "connected (waiting for events)", C.open ? "connected" : "connecting");
  } else if (st === "failed") {
    showError("no media path to the server (ICE failed): a TURN server may be needed");
    onEnded("failed");
  } else if (st === "disconnected") {
    setState("connection interrupted…", "connecting");
  }
}

// Ends the call. With `hangUp` (the default) the server is told first; the promise settles once
// it has been (or could not be) told. Safe to call with no call up.
export function closeCall({ hangUp = true } = {}) {
  if (C.dc) C.dc.onclose = null;
  const pc = C.pc;
  let hungUp = Promise.resolve();
  if (pc && C.callUrl && hangUp) {
    // Hang up first, then close: closing first races the server's own cleanup, and the
    // DELETE would find no call. Either way the server's session slot is free at once.
    hungUp = fetch(C.callUrl, { method: "DELETE", keepalive: true })
      .catch(() => {})
      .finally(() => pc.close());
  } else if (pc) {
    pc.close();
  }
  Object.assign(C, { pc: null, dc: null, callUrl: null, open: false });
  return hungUp;
}
