// The transcript list (#transcript): one <li> per user turn, assistant item and tool call, found
// again by the server's item ids as deltas arrive. protocol.js says what happened; this module
// decides how it reads. Server text is only ever inserted with textContent.

const $ = (id) => document.getElementById(id);

const userItems = new Map(); // item_id -> <li>; null is a push-to-talk turn whose id is not known yet
const assistantItems = new Map(); // item_id -> <li>

function transcriptList() {
  const list = $("transcript");
  const hint = list.querySelector(".hint");
  if (hint) hint.remove();
  return list;
}

function newItem(role, who) {
  const li = document.createElement("li");
  li.className = role;
  const name = document.createElement("span");
  name.className = "who";
  name.textContent = who;
  const text = document.createElement("span");
  text.className = "text";
  li.append(name, text);
  const list = transcriptList();
  list.append(li);
  list.scrollTop = list.scrollHeight;
  return li;
}

function setItemText(li, text) {
  li.querySelector(".text").textContent = text;
}

function userItem(id) {
  let li = userItems.get(id ?? null);
  if (!li) {
    li = newItem("user", "You");
    userItems.set(id ?? null, li);
  }
  return li;
}

// ---------------------------------------------------------------------------- the user's turns

// A turn the page itself ended (push-to-talk): its length, until the server's transcript arrives.
export function addUserSpeech(id, seconds) {
  setItemText(userItem(id), `🎤 speech (${seconds.toFixed(1)} s)`);
}

export function speechStarted(id, audioStartMs) {
  const li = userItem(id);
  li.dataset.startMs = audioStartMs ?? "";
  setItemText(li, "🎤 speaking…");
}

export function speechStopped(id, audioEndMs) {
  const li = userItem(id);
  const start = Number(li.dataset.startMs);
  if (!li.dataset.transcript && audioEndMs !== undefined && li.dataset.startMs !== "") {
    setItemText(li, `🎤 speech (${((audioEndMs - start) / 1000).toFixed(1)} s)`);
  }
}

// Push-to-talk adds its item before the id is known; the commit gives the id.
export function adoptPendingUser(id) {
  const pending = userItems.get(null);
  if (pending && id) {
    userItems.delete(null);
    userItems.set(id, pending);
  }
}

export function userTranscriptDelta(id, delta) {
  const li = userItem(id);
  li.dataset.transcript = (li.dataset.transcript || "") + (delta || "");
  setItemText(li, li.dataset.transcript);
}

export function userTranscriptDone(id, transcript) {
  const li = userItem(id);
  li.dataset.transcript = transcript || "";
  if (transcript) setItemText(li, transcript);
}

// A badge with the number of camera frames the server attached to the user's turn.
export function showFrames(id, images) {
  if (!images || !userItems.has(id)) return;
  const badge = document.createElement("span");
  badge.className = "frames";
  badge.textContent = `🎥 ${images} frame${images === 1 ? "" : "s"}`;
  userItems.get(id).append(badge);
}

// ---------------------------------------------------------------------------- the assistant's items

export function assistantItem(id) {
  let li = assistantItems.get(id);
  if (!li) {
    li = newItem("assistant", "Assistant");
    assistantItems.set(id, li);
  }
  return li;
}

export function appendAssistant(id, delta) {
  if (!delta) return;
  const li = assistantItem(id);
  li.querySelector(".text").textContent += delta;
  const list = $("transcript");
  list.scrollTop = list.scrollHeight;
}

// The items of a cancelled response (barge-in) are marked, so a cut-off answer reads as one.
export function markInterrupted(itemIds) {
  for (const id of itemIds) {
    const li = assistantItems.get(id);
    if (li) li.classList.add("interrupted");
  }
}

// A row for a page tool's call and its result (tools.js).
export function addToolRow(role, text) {
  setItemText(newItem(role, "Tool"), text);
}
