// Tools that run in this page: the model calls them over the data channel, the page runs them and
// sends the result back (function_call_output), then asks for the answer (response.create). Each call
// and its result is shown in the transcript. Server text is only ever inserted with textContent.

const GUIDE = [
  ["wifi drops disconnects", "Move the router off the floor and away from microwaves; use channel 1, 6 or 11."],
  ["no internet offline wan", "Restart the modem, then the router; the WAN light should turn on within 2 minutes."],
  ["slow speed lag", "Test on a cable first. If the cable is fast, the wifi band is crowded: switch to 5 GHz."],
  ["printer offline print", "Power-cycle the printer and add it again by its IP address."],
  ["bluetooth pair headphones", "Forget the device, hold its pairing button 5 s, and pair again."],
  ["password reset login", "Use 'Forgot password' on the sign-in page; the code expires after 10 minutes."],
];

const ZONES = ["local", "UTC", "Europe/London", "Europe/Berlin", "America/New_York", "Asia/Tokyo"];
const UNITS = { km: ["m", 1000], mi: ["m", 1609.344], m: ["m", 1], ft: ["m", 0.3048], kg: ["g", 1000], lb: ["g", 453.592], g: ["g", 1] };

export const TOOLS = [
  {
    type: "function",
    name: "local_time",
    description: "The current time, in the user's time zone or a named one",
    parameters: {
      type: "object",
      properties: { zone: { type: "string", enum: ZONES } },
      required: ["zone"],
      additionalProperties: false,
    },
  },
  {
    type: "function",
    name: "convert_units",
    description: "Convert a length or a weight between units (km, mi, m, ft, kg, lb, g), or °C and °F",
    parameters: {
      type: "object",
      properties: {
        value: { type: "number", minimum: -1000000, maximum: 1000000 },
        from: { type: "string", enum: [...Object.keys(UNITS), "C", "F"] },
        to: { type: "string", enum: [...Object.keys(UNITS), "C", "F"] },
      },
      required: ["value", "from", "to"],
      additionalProperties: false,
    },
  },
  {
    type: "function",
    name: "search_guide",
    description: "Search a short troubleshooting guide (wifi, internet, printer, bluetooth, passwords)",
    parameters: {
      type: "object",
      properties: { query: { type: "string", maxLength: 60 } },
      required: ["query"],
      additionalProperties: false,
    },
  },
];

function localTime({ zone }) {
  const opts = zone && zone !== "local" ? { timeZone: zone } : {};
  const fmt = new Intl.DateTimeFormat(undefined, { ...opts, dateStyle: "medium", timeStyle: "short" });
  return { zone: zone || "local", time: fmt.format(new Date()) };
}

function convertUnits({ value, from, to }) {
  if (from === to) return { value, unit: to };
  if ((from === "C" || from === "F") && (to === "C" || to === "F")) {
    const out = from === "C" ? (value * 9) / 5 + 32 : ((value - 32) * 5) / 9;
    return { value: Math.round(out * 100) / 100, unit: to };
  }
  const a = UNITS[from];
  const b = UNITS[to];
  if (!a || !b || a[0] !== b[0]) return { error: `cannot convert ${from} to ${to}` };
  return { value: Math.round(((value * a[1]) / b[1]) * 1000) / 1000, unit: to };
}

function searchGuide({ query }) {
  const words = String(query || "").toLowerCase().split(/\W+/).filter(Boolean);
  const hits = GUIDE.filter(([keys]) => words.some((w) => keys.split(" ").includes(w))).map(([, tip]) => tip);
  return { results: hits.length ? hits : ["Nothing in the guide; suggest contacting support."] };
}

const RUN = { local_time: localTime, convert_units: convertUnits, search_guide: searchGuide };

export function runTool(name, argumentsJson) {
  const fn = RUN[name];
  if (!fn) return { error: `unknown tool ${name}` };
  try {
    return fn(JSON.parse(argumentsJson));
  } catch (err) {
    return { error: `bad arguments: ${err.message}` };
  }
}

// The page's side of the loop. `send(event)` writes to the data channel, `addRow(role, text)` adds a
// transcript line, `onChange()` re-sends session.update when the user flips the switch.
export class PageTools {
  constructor({ send, addRow, onChange, container }) {
    this.send = send;
    this.addRow = addRow;
    this.pending = []; // call outputs to send once the response that made the calls is done
    this.wasOn = false;
    this.el = this.#controls(container, onChange);
  }

  #controls(container, onChange) {
    const box = document.createElement("fieldset");
    box.className = "row tools";
    box.innerHTML =
      '<legend>Page tools</legend><label><input type="checkbox" class="tools-on"> local time, units, guide</label>' +
      '<label>calls <select class="tools-choice"><option value="auto">when the model wants</option>' +
      '<option value="required">always (first reply)</option></select></label>';
    box.addEventListener("change", () => onChange());
    if (container) container.append(box);
    return box;
  }

  get on() {
    return this.el.querySelector(".tools-on").checked;
  }

  // Fields for session.update: the tools while the switch is on, an empty list once it goes off.
  sessionFields() {
    if (!this.on && !this.wasOn) return {};
    this.wasOn = this.on;
    if (!this.on) return { tools: [], tool_choice: "auto" };
    return { tools: TOOLS, tool_choice: this.el.querySelector(".tools-choice").value };
  }

  onEvent(ev) {
    const item = ev.item || {};
    if (ev.type === "response.output_item.done" && item.type === "function_call") {
      if (item.status !== "completed") {
        this.addRow("tool", `🔧 ${item.name}(${item.arguments}) cut off: not run`);
        return;
      }
      const result = runTool(item.name, item.arguments);
      this.addRow("tool", `🔧 ${item.name}(${item.arguments}) → ${JSON.stringify(result)}`);
      this.pending.push({ type: "function_call_output", call_id: item.call_id, output: JSON.stringify(result) });
    } else if (ev.type === "response.done" && this.pending.length) {
      const status = (ev.response || {}).status;
      const outputs = this.pending;
      this.pending = [];
      if (status !== "completed") return; // cut off or cancelled: no answer is asked for
      for (const item of outputs) this.send({ type: "conversation.item.create", item });
      // The answer with the results in context; "auto" so a "required" session does not call again.
      this.send({ type: "response.create", response: { tool_choice: "auto" } });
    }
  }
}
