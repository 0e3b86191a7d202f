"""The upstream engine's protocol side, sans-I/O: engine turns -> OpenAI Realtime client
events, and one response's upstream server events -> engine events.

No sockets, no asyncio, no clock: callers pass times in. `upstream.py` does the I/O.

Dialects (realtime-landscape.md §3): a GA server names audio `response.output_audio.delta`
and transcripts `response.output_audio_transcript.delta`; a beta-era one says
`response.audio.delta` / `response.audio_transcript.delta`; vLLM-Omni's first realtime
handler sent `response.audio.delta` with the PCM under `audio` (not `delta`) and a
`sample_rate_hz`, and text as `transcription.delta` (vllm_omni/entrypoints/openai/
realtime_connection.py, 2025). Some servers emit *both* spellings of one delta so either
generation of client can parse them, so a response locks onto the first spelling it sees
for audio and for text and ignores the other: each sample is forwarded once.

Reasoning (a Thinking checkpoint upstream) becomes `ReasoningDelta`, never answer text nor
history, as the local engine makes it (reference variants §1). The Realtime protocol has no
reasoning event, so it is taken from what an upstream can send: `<think>` ... `</think>`
inside the text deltas (Qwen3-Omni-Thinking writes the tags as ordinary text, so a server
that does not parse reasoning passes them on; tags split across deltas are joined), a
`reasoning_content` or `reasoning` field beside a text delta's `delta` (vLLM's names for
separated reasoning in its OpenAI server), or OpenAI's `response.reasoning_text.delta`
event (its Responses API's name). Speech an upstream made of its reasoning cannot be
taken back; Thinking checkpoints do not speak.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio import StreamResampler, float_to_pcm16, pcm16_to_float, resample
from .api import (
    FRAME_MS,
    FRAME_SAMPLES,
    OUTPUT_SAMPLE_RATE,
    AudioChunk,
    AudioPart,
    EngineError,
    ImagePart,
    ReasoningDelta,
    ResponseStats,
    TextDelta,
    TextPart,
    Turn,
    VideoPart,
)

AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")
TEXT_DELTAS = (
    "response.output_audio_transcript.delta",
    "response.audio_transcript.delta",
    "response.output_text.delta",
    "response.text.delta",
    "transcription.delta",
)
REASONING_DELTAS = ("response.reasoning_text.delta",)
REASONING_FIELDS = ("reasoning_content", "reasoning")  # vLLM: `reasoning_content`, renamed `reasoning`
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

_event_ids = itertools.count(1)


def event(type: str, **fields: Any) -> dict[str, Any]:
    """A client event with our own event_id (upstream errors name it: see `Link.kinds`)."""
    return {"type": type, "event_id": f"fe_evt_{next(_event_ids):08d}", **fields}


def session_update(*, voice: str, instructions: str, input_rate_hz: int) -> dict[str, Any]:
    """GA session shape. Turn detection is off upstream: the front end's VAD decides turns
    and sends whole committed turns as items."""
    return event(
        "session.update",
        session={
            "type": "realtime",
            "instructions": instructions,
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": input_rate_hz}, "turn_detection": None},
                "output": {"format": {"type": "audio/pcm", "rate": OUTPUT_SAMPLE_RATE}, "voice": voice},
            },
        },
    )


def _png_data_url(image: np.ndarray) -> str:
    """PNG, not JPEG: lossless, so the upstream decodes exactly the frame we hold."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def turn_content(turn: Turn, input_rate_hz: int) -> list[dict[str, Any]]:
    """A turn's parts as GA item content. Audio goes at the upstream's input rate; at the
    rate we hold it (16 kHz) the PCM16 round trip is exact."""
    if turn.role == "assistant":
        return [{"type": "output_text", "text": turn.text_content()}]
    out: list[dict[str, Any]] = []
    for part in turn.parts:
        if isinstance(part, TextPart):
            out.append({"type": "input_text", "text": part.text})
        elif isinstance(part, AudioPart):
            pcm = resample(part.pcm, part.sample_rate, input_rate_hz)
            out.append({"type": "input_audio", "audio": base64.b64encode(float_to_pcm16(pcm)).decode("ascii")})
        elif isinstance(part, ImagePart):
            out.append({"type": "input_image", "image_url": _png_data_url(part.image)})
        elif isinstance(part, VideoPart):  # camera frames: one image each, as a client sends them
            out.extend({"type": "input_image", "image_url": _png_data_url(f)} for f in part.frames)
        else:
            raise TypeError(f"unknown part {type(part).__name__}")
    return out


def item_create(turn: Turn, upstream_id: str, previous_id: str | None, input_rate_hz: int) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "item": {
            "id": upstream_id,
            "type": "message",
            "role": turn.role,
            "content": turn_content(turn, input_rate_hz),
        }
    }
    if previous_id is not None:
        fields["previous_item_id"] = previous_id
    return event("conversation.item.create", **fields)


def response_create(*, audio: bool, max_output_tokens: int) -> dict[str, Any]:
    return event(
        "response.create",
        response={"output_modalities": ["audio" if audio else "text"], "max_output_tokens": max_output_tokens},
    )


def heard_deltas(audio_end_ms: int, frames: int) -> int:
    """Transcript deltas heard in `audio_end_ms`: Qwen3-Omni's talker reads one text token
    per 80 ms codec frame, and our own server sends one delta per token, so this is exact
    against it and an approximation for upstreams that group tokens."""
    return min(frames, math.ceil(max(0, audio_end_ms) / FRAME_MS))


# ---------------------------------------------------------------------------- one response


@dataclass
class ThinkSplitter:
    """Text deltas -> `(reasoning?, text)` pieces in order: `<think>` ... `</think>` spans
    are reasoning, the tags dropped (a stray tag too: a tag is never text). A delta that ends
    in what may be the start of a tag ("<", "</thi") keeps that tail until the next one
    shows what it is. After reasoning, the answer's leading newlines go, as the local engine
    strips the "</think>\\n\\n" Qwen3's template puts before the answer."""

    thinking: bool = False
    reasoned: bool = False
    _held: str = ""
    _strip: bool = False

    def feed(self, text: str) -> list[tuple[bool, str]]:
        text, self._held = self._held + text, ""
        out: list[tuple[bool, str]] = []
        while text:
            found = [(i, tag) for tag in (THINK_OPEN, THINK_CLOSE) if (i := text.find(tag)) >= 0]
            if not found:
                at = text.rfind("<")
                if at >= 0 and any(tag.startswith(text[at:]) for tag in (THINK_OPEN, THINK_CLOSE)):
                    text, self._held = text[:at], text[at:]
                self._emit(out, text)
                break
            i, tag = min(found)
            self._emit(out, text[:i])
            self.thinking = tag == THINK_OPEN
            if self.thinking:
                self.reasoned = True
            else:
                self._strip = self.reasoned
            text = text[i + len(tag) :]
        return out

    def flush(self) -> list[tuple[bool, str]]:
        """The response ended: a held tail that never became a tag is text."""
        out: list[tuple[bool, str]] = []
        held, self._held = self._held, ""
        self._emit(out, held)
        return out

    def _emit(self, out: list[tuple[bool, str]], text: str) -> None:
        if not self.thinking and self._strip:
            text = text.lstrip("\n")
            self._strip = not text
        if text:
            out.append((self.thinking, text))


class UpstreamStats(ResponseStats):
    """ResponseStats plus the upstream's own figures, merged into the `latency` extra."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extra: dict[str, Any] = {}

    def to_dict(self) -> dict:
        return {**super().to_dict(), **self.extra}


@dataclass
class ResponseMapper:
    """Feed it the upstream's events for one response (`feed`); it returns the engine
    events to hand on and keeps what `ResponseDone` needs."""

    audio: bool
    stats: UpstreamStats
    out_rate_hz: int = OUTPUT_SAMPLE_RATE
    created: bool = False
    finished: bool = False
    status: str = "completed"  # upstream's final status, mapped: completed | cancelled | failed
    error: EngineError | None = None
    response_id: str | None = None
    item_id: str | None = None
    deltas: list[str] = field(default_factory=list)  # the answer's text, as it came (reasoning left out)
    reasoning: list[str] = field(default_factory=list)
    # Text and reasoning delta events taken, and those that carried reasoning: the token counts' stand-ins.
    text_events: int = 0
    reasoning_events: int = 0
    _think: ThinkSplitter = field(default_factory=ThinkSplitter)
    _audio_kind: str | None = None
    _text_kind: str | None = None
    _resampler: StreamResampler | None = None

    def feed(self, ev: dict[str, Any], t: float) -> list[TextDelta | ReasoningDelta | AudioChunk]:
        kind = ev.get("type", "")
        if kind in AUDIO_DELTAS:
            return self._audio(ev, kind, t)
        if kind in REASONING_DELTAS:
            return self._count(self._text([(True, ev.get("delta") or "")]))
        if kind in TEXT_DELTAS:
            if self._text_kind is None:
                self._text_kind = kind
            if kind != self._text_kind:
                return []
            reasoning = next((ev[f] for f in REASONING_FIELDS if isinstance(ev.get(f), str) and ev[f]), "")
            text = ev.get("delta") or ""
            if not (text or reasoning):
                return []
            return self._count(self._text([(True, reasoning), *self._think.feed(text)]))
        if kind == "response.created":
            self.created = True
            self.response_id = (ev.get("response") or {}).get("id")
        elif kind == "response.output_item.added":
            item = ev.get("item") or {}
            if item.get("type", "message") == "message" and self.item_id is None:
                self.item_id = item.get("id")
        elif kind == "response.done":
            return self._done(ev.get("response") or {}, ev.get("latency"), t)
        return []

    def _text(self, pieces: list[tuple[bool, str]]) -> list[TextDelta | ReasoningDelta]:
        """(reasoning?, text) pieces -> engine deltas (upstream token ids are not on the wire: -1)."""
        out: list[TextDelta | ReasoningDelta] = []
        for reasoning, text in pieces:
            if text:
                (self.reasoning if reasoning else self.deltas).append(text)
                out.append(ReasoningDelta(text, -1) if reasoning else TextDelta(text, -1))
        return out

    def _count(self, out: list[TextDelta | ReasoningDelta]) -> list[TextDelta | ReasoningDelta]:
        self.text_events += 1
        self.reasoning_events += any(isinstance(d, ReasoningDelta) for d in out)
        return out

    def _audio(self, ev: dict[str, Any], kind: str, t: float) -> list[AudioChunk]:
        if self._audio_kind is None:
            self._audio_kind = kind
        if kind != self._audio_kind:
            return []
        payload = ev.get("delta") or ev.get("audio") or ""
        pcm16 = base64.b64decode(payload) if payload else b""
        rate = int(ev.get("sample_rate_hz") or self.out_rate_hz)
        if rate != OUTPUT_SAMPLE_RATE:
            if self._resampler is None:
                self._resampler = StreamResampler(rate, OUTPUT_SAMPLE_RATE)
            pcm16 = float_to_pcm16(self._resampler.process(pcm16_to_float(pcm16)))
        return self._chunk(pcm16, t)

    def _chunk(self, pcm16: bytes, t: float) -> list[AudioChunk]:
        if not pcm16:
            return []
        if self.stats.t_first_audio is None:
            self.stats.t_first_audio = t  # measured here, at the front end
            self.stats.t_talker_first_frame = t  # so audio_rtf is the front end's view: first audio -> done
        before = self.stats.audio_samples
        self.stats.audio_samples += len(pcm16) // 2
        first = before // FRAME_SAMPLES
        return [AudioChunk(pcm16, first, self.stats.audio_samples // FRAME_SAMPLES - first)]

    def _done(
        self, response: dict[str, Any], latency: dict[str, Any] | None, t: float
    ) -> list[TextDelta | ReasoningDelta | AudioChunk]:
        tail: list[TextDelta | ReasoningDelta | AudioChunk] = [*self._text(self._think.flush())]
        if self._resampler is not None:
            tail += self._chunk(float_to_pcm16(self._resampler.flush()), t)
        self.finished = True
        status = response.get("status") or "completed"
        if status == "cancelled":
            self.status = "cancelled"
        elif status == "failed":
            self.status = "failed"
            err = ((response.get("status_details") or {}).get("error")) or {}
            self.error = EngineError("upstream_error", f"upstream response failed: {err.get('message') or err}")
        else:  # completed, or incomplete (max_output_tokens reached): an answer either way
            self.status = "completed"
        if self.item_id is None:
            outputs = response.get("output") or []
            self.item_id = next((o.get("id") for o in outputs if o.get("type", "message") == "message"), None)
        usage = response.get("usage") or {}
        s = self.stats
        s.t_done = t
        s.prefill_tokens = int(usage.get("input_tokens") or 0)
        s.text_tokens = self.text_events
        s.reasoning_tokens = self.reasoning_events
        s.frames = math.ceil(s.audio_samples / FRAME_SAMPLES)
        if latency:
            s.extra["upstream_ttfp_ms"] = latency.get("audio_ttfp_ms")
            s.extra["upstream_engine_ttfp_ms"] = latency.get("engine_audio_ttfp_ms")
            s.extra["upstream_stages_ms"] = latency.get("stages_ms")
            s.extra["upstream_audio_rtf"] = latency.get("audio_rtf")
        return tail

    def text(self) -> str:
        return "".join(self.deltas)
