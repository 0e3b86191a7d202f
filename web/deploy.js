// Deployment concerns of the page: the secure-context check and the ICE servers the server
// hands out. Plain ES module; connection.js imports it. All URLs are relative to the page, so the
// page works unchanged under a reverse proxy's path prefix (assistant serve --root-path).

// Browsers expose getUserMedia only in a secure context (W3C Media Capture and Streams, 9.2;
// W3C Secure Contexts): https, or http on localhost/127.0.0.1. Say what to do instead of
// failing later with a bare "microphone unavailable".
export function insecureContextAdvice(loc = window.location) {
  if (window.isSecureContext) return null;
  const port = loc.port || (loc.protocol === "https:" ? "443" : "80");
  const path = loc.pathname + loc.search;
  const host = loc.hostname.includes(":") ? `[${loc.hostname}]` : loc.hostname;
  return {
    why: `This page was opened as ${loc.protocol}//${loc.host}${loc.pathname}, which is not a secure context, so the browser will not give it the microphone or camera. Do one of these:`,
    steps: [
      [
        "Use HTTPS: start the server with --ssl-self-signed (or --ssl-certfile and --ssl-keyfile), or put it behind an HTTPS reverse proxy, then open ",
        `https://${host}:${port}${path}`,
      ],
      ["On the server's own machine, open ", `http://localhost:${port}${path}`],
      [
        "From this machine, tunnel over SSH: ",
        `ssh -N -L ${port}:localhost:${port} ${host}`,
        `, then open http://localhost:${port}${path} here`,
      ],
    ],
  };
}

export function showInsecureContextAdvice() {
  const el = document.getElementById("insecure");
  const advice = insecureContextAdvice();
  if (!el || !advice) return;
  el.replaceChildren();
  const p = document.createElement("p");
  p.textContent = advice.why;
  const list = document.createElement("ol");
  for (const [text, code, after = ""] of advice.steps) {
    const li = document.createElement("li");
    const c = document.createElement("code");
    c.textContent = code;
    li.append(text, c, after);
    list.append(li);
  }
  el.append(p, list);
  el.hidden = false;
}

// The server's STUN/TURN list (its --ice-servers), the same one its own peer uses. An empty
// list means none: a LAN or localhost connection needs none, and contacting a public STUN
// server is not the page's to decide.
export async function iceServersFromServer() {
  let resp;
  try {
    resp = await fetch("v1/realtime/ice_servers", { cache: "no-store" });
  } catch (err) {
    throw Object.assign(err, { userMessage: "server unreachable" });
  }
  if (!resp.ok) {
    let detail = `HTTP ${resp.status}`;
    try {
      detail = (await resp.json()).error.message || detail;
    } catch {}
    throw Object.assign(new Error(detail), { userMessage: `cannot get the ICE server list: ${detail}` });
  }
  const body = await resp.json();
  return Array.isArray(body.ice_servers) ? body.ice_servers : [];
}

showInsecureContextAdvice();
