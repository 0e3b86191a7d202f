"""Task presets: one `session.update` that sets instructions, output modalities and options
for a task, the same in `assistant talk --preset` and on the page (web/presets.js mirrors
these). Every preset turns input transcription on, so the user's words show beside the
answer; the transcript runs as a background job and never delays the answer.

- assistant: a spoken voice assistant (the guidance of Qwen's recommended voice prompt);
- interpreter: each turn answered only by its translation into a target language, spoken
  for Qwen's 10 speech-output languages and written for the other text languages;
- transcriber: a transcription session: the server VAD cuts speech, each segment is
  transcribed, nothing is answered;
- camera: a spoken assistant for what the camera shows: describing it and troubleshooting.
"""

from __future__ import annotations

from typing import Any

from . import languages

NAMES = ("assistant", "interpreter", "transcriber", "camera")

ASSISTANT = (
    "You are a voice assistant. Reply briefly and naturally, in the user's language, in no more than 50 words. "
    "Say only the words to be heard: no lists, symbols or described actions. If unsure what the user means, "
    "ask a short question."
)
CAMERA = (
    "You are a voice assistant who sees through the user's camera. When asked, describe what the camera shows. "
    "When the user has a problem with something in view, such as a device, a cable, a screen or an error message, "
    "say what you see, then guide them to fix it one short step at a time, and ask them to show you the result. "
    "Reply briefly, with only the words to be heard."
)


def session(name: str, *, target_language: str | None = None) -> dict[str, Any]:
    """The `session` object of the preset's session.update. Raises ValueError for an
    unknown preset, or languages.UnsupportedLanguage for a bad target."""
    transcription = {"audio": {"input": {"transcription": {}}}}
    if name == "assistant":
        return {
            "type": "realtime",
            "instructions": ASSISTANT,
            "output_modalities": ["audio"],
            "interpreter": None,
            **transcription,
        }
    if name == "camera":
        return {
            "type": "realtime",
            "instructions": CAMERA,
            "output_modalities": ["audio"],
            "interpreter": None,
            **transcription,
        }
    if name == "transcriber":
        return {"type": "transcription", **transcription}
    if name == "interpreter":
        if not target_language:
            raise ValueError("the interpreter preset needs a target language")
        target = languages.text(target_language)
        spoken = target in languages.SPEECH_OUTPUT
        return {
            "type": "realtime",
            "instructions": "",
            "output_modalities": ["audio"] if spoken else ["text"],
            "interpreter": {"target_language": target},
            **transcription,
        }
    raise ValueError(f"unknown preset {name!r}; use one of {', '.join(NAMES)}")


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` over `base`, objects merged key by key (a preset over a client's own session)."""
    out = dict(base)
    for key, value in patch.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
