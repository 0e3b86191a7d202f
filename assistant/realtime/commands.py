"""What a `RealtimeSession` asks its transport to do (every call returns a list of these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.api import Conversation, Part, TextJob


@dataclass(frozen=True)
class Send:
    """Write `event` to the client. If `tag` is set, call `session.sent(tag)` right after
    the write (first audio packet and response.done are timed at the wire)."""

    event: dict[str, Any]
    tag: tuple[str, str] | None = None


@dataclass(frozen=True)
class StartResponse:
    response_id: str
    conversation: Conversation
    t_committed: float
    audio: bool


@dataclass(frozen=True)
class CancelResponse:
    response_id: str


@dataclass(frozen=True)
class TruncateTurn:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class PrefillTurn:
    """The user turn being spoken, so far: hand it to `Engine.prefill` (a head start on
    the response's prefill; the engine may ignore it)."""

    conversation: Conversation
    parts: list[Part]


@dataclass(frozen=True)
class TranscribeItem:
    """Run `Engine.transcribe(job)` and feed its events to `session.on_transcription_event(item_id, ...)`;
    cancel it with the session (it has no other cancellation: a transcript is short)."""

    item_id: str
    job: TextJob


@dataclass(frozen=True)
class PlayAudio:
    response_id: str
    item_id: str
    pcm16: bytes  # 24 kHz


@dataclass(frozen=True)
class ClearPlayback:
    response_id: str
    item_id: str


@dataclass(frozen=True)
class ResponseMetrics:
    status: str
    latency: dict[str, Any]


@dataclass(frozen=True)
class EndSession:
    """Close the connection after writing the events before this command (a session
    limit was reached; the client got an `error` saying which)."""

    reason: str


Output = (
    Send
    | StartResponse
    | CancelResponse
    | TruncateTurn
    | PrefillTurn
    | TranscribeItem
    | PlayAudio
    | ClearPlayback
    | ResponseMetrics
    | EndSession
)


@dataclass(frozen=True)
class VadWork:
    """Whole 512-sample windows of 16 kHz audio for the VAD model (run it off the loop)."""

    epoch: int
    start_sample: int
    samples: np.ndarray
