"""Every field a client can set with `session.update` or `response.create`: honored, or
refused with an `error` naming it. Never accepted and ignored.

The paths are those of the openai SDK's models (GA `openai.types.realtime`
RealtimeSessionCreateRequest, RealtimeTranscriptionSessionCreateRequest and
RealtimeResponseCreateParams, plus the beta flat shapes in `openai.types.beta.realtime`,
which this server still accepts): `session.audio.input.turn_detection.threshold`. A list's
elements share the list's path (`session.tools.name`). tests/test_fields.py walks the
SDK's models recursively and fails on any field this table does not classify, so a field
added to a later SDK release cannot slip through.

- `honored`: the parser reads the field and the session applies it (an invalid *value*
  still gets its own error: `unsupported_audio_format`, `invalid_value`...). An honored
  object's own fields are classified one by one, unless it is `opaque` (its keys are the
  client's data, e.g. `response.metadata`).
- `refused`: any value other than null or one of the field's `neutral` values gets
  `error` code `unsupported_feature` with `param` the field's path. Neutral values ask for
  nothing beyond what the server does anyway (`truncation: "auto"`, `include: []`,
  `speed: 1.0`), so stock clients that send them keep working. Everything under a
  refused field is refused with it.
- A key that is in no table is answered `unknown_parameter`, as OpenAI's server does.

To implement a refused field, make its parser and session code, then flip its entry to
`honored(...)` (and classify its sub-fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Field:
    status: Literal["honored", "refused"]
    why: str  # honored: what it does here; refused: why not
    neutral: tuple[Any, ...] = ()
    opaque: bool = False


def honored(why: str, *, opaque: bool = False) -> Field:
    return Field("honored", why, opaque=opaque)


def refused(why: str, *neutral: Any) -> Field:
    return Field("refused", why, neutral)


# ---------------------------------------------------------------------------- shared parts


def _turn_detection(root: str, *, ga: bool = True) -> dict[str, Field]:
    td = f"{root}.turn_detection"
    entries = {
        td: honored("server VAD (Silero) endpointing; null = manual commits"),
        f"{td}.type": honored("server_vad, or semantic_vad mapped onto the VAD by eagerness"),
        f"{td}.threshold": honored("speech probability threshold"),
        f"{td}.prefix_padding_ms": honored("audio kept before the speech start"),
        f"{td}.silence_duration_ms": honored("silence that ends a turn"),
        f"{td}.create_response": honored("answer each VAD turn"),
        f"{td}.interrupt_response": honored("speech during an answer cancels it (barge-in)"),
        f"{td}.eagerness": honored("semantic_vad: picks the silence wait (low 1000, medium/auto 500, high 300 ms)"),
    }
    if ga:
        entries[f"{td}.idle_timeout_ms"] = refused("no input_audio_buffer.timeout_triggered on idle yet")
    return entries


def _audio_format(root: str, what: str) -> dict[str, Field]:
    return {
        root: honored(what),
        f"{root}.type": honored("audio/pcm only; audio/pcmu and audio/pcma get unsupported_audio_format"),
        f"{root}.rate": honored("PCM16 sample rate"),
    }


def _transcription(root: str, *, ga: bool = True) -> dict[str, Field]:
    """Input audio transcription (issue #15): Qwen3-Omni itself, the resident model, transcribes.
    The beta shape has model, language and prompt only."""
    entries = {
        root: honored("each committed audio item is transcribed by the resident model (input_audio_transcription.*)"),
        f"{root}.model": honored("echoed; whatever it names, the resident Qwen3-Omni transcribes (no second model)"),
        f"{root}.language": honored("Qwen's recognition prompt for this language (one of the 19 speech inputs)"),
        f"{root}.prompt": honored("a system message for the transcription job"),
    }
    if ga:
        entries[f"{root}.delay"] = refused("no delay control: a transcript starts after its item is committed")
        entries[f"{root}.keywords"] = refused("no keyword boosting")
        entries[f"{root}.languages"] = refused("one language per session: use language")
    return entries


NO_MCP = "function tools only: no MCP servers"
MCP_FIELDS = (
    "allowed_callers",
    "allowed_tools",
    "authorization",
    "connector_id",
    "defer_loading",
    "headers",
    "require_approval",
    "server_description",
    "server_label",
    "server_url",
    "tunnel_id",
)


def _tools(root: str) -> dict[str, Field]:
    """Function tools (issue #14, realtime/tools.py): declared, called under a grammar built from their schemas."""
    return {
        f"{root}.tools": honored("function tools; the model's calls come as function_call items"),
        f"{root}.tools.type": honored("'function' (other types get unsupported_feature)"),
        f"{root}.tools.name": honored("the function's name, unique among the tools"),
        f"{root}.tools.description": honored("rendered into the prompt through the chat template"),
        f"{root}.tools.parameters": honored("JSON Schema the call's arguments always match", opaque=True),
        **{f"{root}.tools.{k}": refused(NO_MCP) for k in MCP_FIELDS},
        f"{root}.tool_choice": honored("auto, none, required, or one named function"),
        f"{root}.tool_choice.type": honored("'function'"),
        f"{root}.tool_choice.name": honored("the function that must be called"),
        f"{root}.tool_choice.server_label": refused(NO_MCP),
        f"{root}.parallel_tool_calls": honored(
            "false: at most one call per response (the call grammar stops after one)"
        ),
    }


def _common_refusals(root: str) -> dict[str, Field]:
    """Fields that session and response objects share: the tools, and what this server does not do."""
    return {
        **_tools(root),
        f"{root}.prompt": refused("no stored prompt templates on this server"),
        f"{root}.reasoning": refused("no reasoning-effort control for Qwen3-Omni"),
    }


# ---------------------------------------------------------------------------- session.update

SESSION: dict[str, Field] = {
    "session.type": honored("'realtime'; 'transcription' sessions: see TRANSCRIPTION_SESSION"),
    # This server's extension (not in the SDK): answer each turn with its translation only.
    "session.interpreter": honored("interpreter mode: each user turn is answered by its translation"),
    "session.interpreter.target_language": honored("spoken: one of the 10 speech outputs; text: any text language"),
    "session.interpreter.source_language": honored("the speech's language, when known (19 speech inputs)"),
    "session.model": honored("must name the model this server loaded (it serves one)"),
    "session.instructions": honored("system prompt of later responses"),
    "session.output_modalities": honored('["audio"] (speech + transcript) or ["text"]'),
    "session.max_output_tokens": honored("text tokens per answer (the speech follows the text), capped by the server"),
    "session.audio": honored("input and output audio"),
    "session.audio.input": honored("microphone side"),
    **_audio_format("session.audio.input.format", "input PCM16 at 24 or 16 kHz"),
    **_turn_detection("session.audio.input"),
    **_transcription("session.audio.input.transcription"),
    "session.audio.input.noise_reduction": refused("no input noise reduction"),
    "session.audio.output": honored("speech side"),
    **_audio_format("session.audio.output.format", "output PCM16 at 24 kHz"),
    "session.audio.output.voice": honored("Qwen3-Omni speaker: Ethan, Chelsie or Aiden"),
    "session.audio.output.voice.id": honored("the speaker, as an object"),
    "session.audio.output.speed": refused("speech is spoken at its natural rate only", 1, 1.0),
    "session.include": refused("no input transcription logprobs", []),
    "session.tracing": refused("no OpenAI traces dashboard here"),
    "session.truncation": refused(
        "the context policy is fixed: the oldest exchanges are dropped until the prompt uses half of it", "auto"
    ),
    **_common_refusals("session"),
    # The beta flat shape (no `type`; OpenAI-Beta: realtime=v1 clients).
    "session.modalities": honored('beta spelling of output_modalities (["text", "audio"] = audio)'),
    "session.voice": honored("beta spelling of audio.output.voice"),
    "session.input_audio_format": honored("beta: pcm16 (24 kHz)"),
    "session.output_audio_format": honored("beta: pcm16 (24 kHz)"),
    **_turn_detection("session", ga=False),
    "session.max_response_output_tokens": honored("beta spelling of max_output_tokens"),
    **_transcription("session.input_audio_transcription", ga=False),
    "session.input_audio_noise_reduction": refused("no input noise reduction"),
    "session.speed": refused("speech is spoken at its natural rate only", 1, 1.0),
    "session.temperature": refused("sampling is set by the server's flags (GA removed this field)"),
    "session.client_secret": refused("client secrets are minted by POST /v1/realtime/client_secrets"),
}

# `session.type: "transcription"`: the whole session kind.
TRANSCRIPTION_SESSION: dict[str, Field] = {
    "session.type": honored("'transcription': VAD segments are transcribed, no responses are created"),
    "session.audio": honored("input audio"),
    "session.audio.input": honored("microphone side"),
    **_audio_format("session.audio.input.format", "input PCM16 at 24 or 16 kHz"),
    **_turn_detection("session.audio.input"),
    **_transcription("session.audio.input.transcription"),
    "session.audio.input.noise_reduction": refused("no input noise reduction"),
    "session.include": refused("no input transcription logprobs", []),
}

# Fields of this server's own, beyond the SDK's models (tests/test_fields.py knows them).
EXTENSIONS = frozenset(p for p in SESSION if p.startswith("session.interpreter"))

# ---------------------------------------------------------------------------- response.create

RESPONSE: dict[str, Field] = {
    "response.conversation": honored("'auto' only: out-of-band responses ('none') get unsupported_feature"),
    "response.input": refused("custom response input (out-of-band context) is not supported"),
    "response.instructions": honored("instructions for this response only"),
    "response.max_output_tokens": honored("text tokens of this answer, capped by the server"),
    "response.metadata": honored("echoed on this response's response.created and response.done", opaque=True),
    "response.output_modalities": honored('["audio"] or ["text"] for this response'),
    "response.audio": honored("output audio of this response"),
    "response.audio.output": honored("output audio of this response"),
    **_audio_format("response.audio.output.format", "output PCM16 at 24 kHz"),
    "response.audio.output.voice": honored("the speaker of this response only"),
    "response.audio.output.voice.id": honored("the speaker, as an object"),
    **_common_refusals("response"),
    # beta spellings
    "response.modalities": honored("beta spelling of output_modalities"),
    "response.voice": honored("beta spelling of audio.output.voice"),
    "response.output_audio_format": honored("beta: pcm16 (24 kHz)"),
    "response.max_response_output_tokens": honored("beta spelling of max_output_tokens"),
    "response.temperature": refused("sampling is set by the server's flags (GA removed this field)"),
}


# ---------------------------------------------------------------------------- the check


def violation(obj: Mapping[str, Any], table: Mapping[str, Field], root: str) -> tuple[str, str, str] | None:
    """(error code, message, field path) for the first key of `obj` (the object at
    `root`) that is unknown, or refused with a non-neutral value; None if every key is
    honored. Descends into honored objects. (event_fields.py turns it into a ProtocolError.)"""
    for key, value in obj.items():
        path = f"{root}.{key}"
        entry = table.get(path)
        if entry is None:
            return "unknown_parameter", f"Unknown parameter: '{path}'.", path
        if entry.status == "refused":
            if value is None or any(_same(value, n) for n in entry.neutral):
                continue
            return "unsupported_feature", f"'{path}' is not supported: {entry.why}", path
        if entry.opaque:
            continue
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, dict) and (found := violation(child, table, path)) is not None:
                return found
    return None


def refusal(table: Mapping[str, Field], path: str) -> Field | None:
    """The entry that refuses `path` (itself or an ancestor), or None."""
    while path:
        entry = table.get(path)
        if entry is not None and entry.status == "refused":
            return entry
        path = path.rpartition(".")[0]
    return None


def _same(value: Any, neutral: Any) -> bool:
    # JSON true is not 1: compare types too (bool is an int subclass).
    if isinstance(value, bool) != isinstance(neutral, bool):
        return False
    return value == neutral
