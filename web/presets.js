// Task presets for the page: one choice sets the instructions, the output and the options of the
// session, as `assistant talk --preset` does (assistant/presets.py holds the same presets). Every
// preset turns input transcription on, so the user's words show in the transcript beside the answer.
// "Custom" (the default) sends the page's own fields only.
//
// Hooks: app.js calls mountPresets() once, protocol.js applyPreset(session) on every session.update,
// ptt.js presetAnswers() before asking for a response (a transcriber answers nothing).

const ASSISTANT =
  "You are a voice assistant. Reply briefly and naturally, in the user's language, in no more than 50 words. " +
  "Say only the words to be heard: no lists, symbols or described actions. If unsure what the user means, " +
  "ask a short question.";
const CAMERA =
  "You are a voice assistant who sees through the user's camera. When asked, describe what the camera shows. " +
  "When the user has a problem with something in view, such as a device, a cable, a screen or an error message, " +
  "say what you see, then guide them to fix it one short step at a time, and ask them to show you the result. " +
  "Reply briefly, with only the words to be heard.";

// Qwen3-Omni speaks these 10 (README); other text languages get a written translation.
const SPOKEN = { de: "German", en: "English", es: "Spanish", fr: "French", it: "Italian", ja: "Japanese",
  ko: "Korean", pt: "Portuguese", ru: "Russian", zh: "Chinese" }; // prettier-ignore
const WRITTEN = { ar: "Arabic", cs: "Czech", el: "Greek", he: "Hebrew", hi: "Hindi", id: "Indonesian",
  nl: "Dutch", pl: "Polish", sv: "Swedish", sw: "Swahili", th: "Thai", tr: "Turkish", uk: "Ukrainian",
  ur: "Urdu", vi: "Vietnamese", yue: "Cantonese" }; // prettier-ignore

const PRESETS = {
  custom: { label: "Custom (your instructions)", instructions: null }, // the page as it was: no preset fields
  assistant: { label: "Assistant", instructions: ASSISTANT },
  interpreter: { label: "Interpreter", instructions: "" },
  transcriber: { label: "Transcriber (text only)", instructions: "" },
  camera: { label: "Camera help", instructions: CAMERA, camera: true },
};

const state = { preset: "custom", target: "en", used: false };

function option(value, text) {
  const el = document.createElement("option");
  el.value = value;
  el.textContent = text;
  return el;
}

function group(label, names) {
  const el = document.createElement("optgroup");
  el.label = label;
  for (const [code, name] of Object.entries(names)) el.append(option(code, `${name} (${code})`));
  return el;
}

// Adds the task and target-language pickers after `anchor`; `onChange` is called after a choice,
// with the preset's instructions already in `instructions` (a textarea the user may still edit).
export function mountPresets({ anchor, instructions, camera, onChange }) {
  const row = document.createElement("div");
  row.className = "row";
  const label = document.createElement("label");
  label.htmlFor = "preset";
  label.textContent = "Task";
  const select = document.createElement("select");
  select.id = "preset";
  for (const [value, p] of Object.entries(PRESETS)) select.append(option(value, p.label));
  const target = document.createElement("select");
  target.id = "target-language";
  target.setAttribute("aria-label", "Translate into");
  target.hidden = true;
  target.append(group("Spoken", SPOKEN), group("Written", WRITTEN));
  target.value = state.target;
  row.append(label, select, target);
  anchor.after(row);

  select.addEventListener("change", () => {
    state.preset = select.value;
    state.used = true;
    const p = PRESETS[state.preset];
    target.hidden = state.preset !== "interpreter";
    if (p.instructions !== null) instructions.value = p.instructions;
    if (p.camera && !camera.disabled) camera.checked = true;
    onChange();
  });
  target.addEventListener("change", () => {
    state.target = target.value;
    onChange();
  });
}

// The preset's fields on the page's session.update (mutates `session`).
export function applyPreset(session) {
  if (state.preset === "custom") {
    // Back from a preset: undo what it turned on, so "custom" is the page's plain conversation again.
    if (state.used) Object.assign(session, { type: "realtime", interpreter: null, output_modalities: ["audio"] });
    if (state.used) session.audio.input.transcription = null;
    return session;
  }
  session.audio.input.transcription = {};
  if (state.preset === "transcriber") {
    session.type = "transcription";
    delete session.audio.output;
    delete session.instructions;
    return session;
  }
  session.type = "realtime";
  if (state.preset === "interpreter") {
    session.interpreter = { target_language: state.target };
    session.output_modalities = state.target in SPOKEN ? ["audio"] : ["text"];
  } else {
    session.interpreter = null;
    session.output_modalities = ["audio"];
  }
  return session;
}

// Whether the session answers turns (push-to-talk asks for a response only then).
export function presetAnswers() {
  return state.preset !== "transcriber";
}

// For the tests and the console.
export function presetState() {
  return { ...state };
}
