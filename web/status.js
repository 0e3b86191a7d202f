// The page's header and error banner: the connection pill (#conn-state), the one error line
// (#error) and what /health says about the server (#server-info, #tiny-banner). Every other module
// reports to the user through these two functions, so there is one place a message can appear.

const $ = (id) => document.getElementById(id);

// `state` is the pill's data-state (disconnected, connecting, connected, failed): the CSS colours
// it and the tests wait on it.
export function setState(text, state) {
  const el = $("conn-state");
  el.textContent = text;
  el.dataset.state = state;
}

// An empty message hides the banner.
export function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

// Fills the header from /health (model, device, session count) and shows the tiny-model banner.
// Returns the health object, or null when the server cannot be reached.
export async function checkHealth() {
  const info = $("server-info");
  let h;
  try {
    const resp = await fetch("health", { cache: "no-store" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    h = await resp.json();
  } catch {
    info.textContent = "server unreachable";
    return null;
  }
  // A local checkpoint directory shows as its last part (the whole path is in the tooltip).
  const model = typeof h.model === "string" && h.model.startsWith("/") ? h.model.split("/").filter(Boolean).pop() : h.model;
  const parts = [model, h.device, h.sessions !== undefined ? `${h.sessions} session(s)` : null];
  info.textContent = parts.filter((p) => p !== null && p !== undefined && p !== "").join(" · ");
  info.title = h.model || "";
  $("tiny-banner").hidden = !h.is_tiny;
  return h;
}
