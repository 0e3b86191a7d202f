"""The typed client events of the OpenAI Realtime codec (events.py), and the error that
parsing raises: a `ProtocolError` becomes an `error` event and the session keeps working.
Plain data; events.py's `parse` builds these from JSON text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

MAX_EVENT_BYTES = 15 * 1024 * 1024  # OpenAI: "the maximum size of an event is 15 MiB"
INPUT_RATES_HZ = (24_000, 16_000)
OUTPUT_RATE_HZ = 24_000


class ProtocolError(Exception):
    """A client error that becomes an `error` event; the session keeps working."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.event_id, self.type = code, message, param, event_id, type


# ---------------------------------------------------------------------------- client events


@dataclass(frozen=True)
class TurnDetection:
    """`server_vad` parameters (`semantic_vad` is mapped onto them, see `_turn_detection`)."""

    type: str = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.type == "semantic_vad":
            out: dict[str, Any] = {"type": "semantic_vad", "eagerness": self.eagerness or "auto"}
        else:
            out = {
                "type": "server_vad",
                "threshold": self.threshold,
                "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms,
            }
        return {**out, "create_response": self.create_response, "interrupt_response": self.interrupt_response}


@dataclass(frozen=True)
class Transcription:
    """`audio.input.transcription`: transcribe each committed user audio item with the
    resident model (`model` is echoed; the server has one model). `language` is a checked
    speech-input code (languages.py) or None (the language spoken)."""

    model: str = ""
    language: str | None = None
    prompt: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "language": self.language, "prompt": self.prompt}


@dataclass(frozen=True)
class Interpreter:
    """`session.interpreter` (this server's extension): every user audio turn is answered
    only by its translation into `target_language`, spoken (a speech-output language) or
    written (a text language), by Qwen's translation prompt after the turn's audio.
    `source_language`: a speech-input code, or None for whatever is spoken."""

    target_language: str
    source_language: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"target_language": self.target_language, "source_language": self.source_language}


@dataclass(frozen=True)
class SessionPatch:
    """The fields a `session.update` sets; `fields_set` says which were present
    (`turn_detection=None` in it means manual turns)."""

    fields_set: frozenset[str] = frozenset()
    input_rate_hz: int | None = None
    turn_detection: TurnDetection | None = None
    voice: str | None = None
    instructions: str | None = None
    output_modalities: tuple[str, ...] | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    model: str | None = None
    beta_shape: bool = False
    transcription: Transcription | None = None  # in fields_set with None: transcription off
    session_type: str | None = None  # "realtime" | "transcription"
    interpreter: Interpreter | None = None  # in fields_set with None: interpreter off
    # tool calling: the raw JSON, checked against the session's tools in realtime/tools.py
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None  # False: at most one call per response


@dataclass(frozen=True)
class ContentIn:
    type: Literal["input_text", "input_audio", "input_image", "output_text", "output_audio"]
    text: str = ""
    audio: bytes = b""  # PCM16 at the session's input rate
    image: bytes = b""  # encoded JPEG/PNG


@dataclass(frozen=True)
class ItemIn:
    role: Literal["user", "assistant", "system", "tool"]
    content: tuple[ContentIn, ...]
    id: str | None = None
    type: Literal["message", "function_call", "function_call_output"] = "message"
    call_id: str | None = None  # function_call and function_call_output
    name: str | None = None  # function_call
    arguments: str | None = None  # function_call
    output: str | None = None  # function_call_output


@dataclass(frozen=True)
class ClientEvent:
    type: str
    event_id: str | None = None


@dataclass(frozen=True)
class SessionUpdate(ClientEvent):
    patch: SessionPatch = field(default_factory=SessionPatch)


@dataclass(frozen=True)
class AudioAppend(ClientEvent):
    pcm16: bytes = b""


@dataclass(frozen=True)
class AudioCommit(ClientEvent):
    pass


@dataclass(frozen=True)
class AudioClear(ClientEvent):
    pass


@dataclass(frozen=True)
class ImageAppend(ClientEvent):
    image: bytes = b""


@dataclass(frozen=True)
class ItemCreate(ClientEvent):
    item: ItemIn | None = None
    previous_item_id: str | None = None


@dataclass(frozen=True)
class ItemRetrieve(ClientEvent):
    item_id: str = ""


@dataclass(frozen=True)
class ItemDelete(ClientEvent):
    item_id: str = ""


@dataclass(frozen=True)
class ItemTruncate(ClientEvent):
    item_id: str = ""
    content_index: int = 0
    audio_end_ms: int = 0


@dataclass(frozen=True)
class ResponseCreate(ClientEvent):
    output_modalities: tuple[str, ...] | None = None
    instructions: str | None = None
    max_output_tokens: int | Literal["inf"] | None = None  # None: the session's
    voice: str | None = None
    metadata: dict[str, str] | None = None
    tools: Any = None  # raw JSON; None: the session's (realtime/tools.py)
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None  # None: the session's


@dataclass(frozen=True)
class ResponseCancel(ClientEvent):
    response_id: str | None = None


@dataclass(frozen=True)
class OutputAudioClear(ClientEvent):
    pass
