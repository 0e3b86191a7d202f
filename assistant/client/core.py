"""The client side of the OpenAI Realtime protocol, sans-I/O.

`ClientCore` builds the events a push-to-talk (or headless, or benchmark) client sends
and digests the server's events into effects (audio to play, transcript text, a per-turn
latency report). It never touches a socket, a device or a clock: callers pass times in
(seconds, any monotonic clock) and carry out the effects.

Turn timeline (all client-side times):
    speech_end    the user stopped speaking (key released, or the fixture's speech end)
    commit        manual turns: `input_audio_buffer.commit` sent; server VAD: the
                  server's `input_audio_buffer.committed` received
    first_delta   first `response.output_audio.delta` received
    first_audible first_delta + the leading silence inside the received audio
                  (pipecat's TTFA); live playback replaces it with the device's time
Voice-to-voice = first_audible - speech_end; with server VAD, `vad_wait` = commit -
speech_end is the silence the endpointer waited for (realtime-landscape.md §2, §8.6).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from .. import presets
from ..bench.metrics import first_audible_offset_ms, playout

OUTPUT_RATE_HZ = 24_000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------------------- effects


@dataclass
class PlayAudio:
    pcm16: bytes  # 24 kHz mono
    item_id: str


@dataclass
class StopPlayback:
    """Drop queued audio at once (barge-in)."""


@dataclass
class Transcript:
    role: str  # "assistant" or "user"
    text: str
    final: bool


@dataclass
class ServerError:
    code: str
    message: str


@dataclass
class TurnReport:
    turn: TurnMetrics


Effect = PlayAudio | StopPlayback | Transcript | ServerError | TurnReport


# ---------------------------------------------------------------------------- one turn


@dataclass
class TurnMetrics:
    index: int
    t_speech_end: float | None = None
    t_commit: float | None = None
    t_first_delta: float | None = None
    t_first_audible: float | None = None  # from the player, when one reports it
    t_done: float | None = None
    response_id: str | None = None
    item_id: str | None = None
    status: str | None = None
    transcript: str = ""
    audio: bytearray = field(default_factory=bytearray)
    arrivals: list[tuple[float, float]] = field(default_factory=list)  # (t, ms of audio)
    server: dict[str, Any] = field(default_factory=dict)  # response.done's `latency` extra
    cancelled_by_client: bool = False

    @property
    def audio_ms(self) -> float:
        return len(self.audio) / 2 * 1000 / OUTPUT_RATE_HZ

    def _ms(self, a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) * 1000, 3)

    @property
    def onset_found(self) -> bool:
        return first_audible_offset_ms(bytes(self.audio), OUTPUT_RATE_HZ) is not None

    def first_audible(self) -> float | None:
        """The first sample above -40 dBFS; when the whole answer is quieter (the tiny
        random-weight model's Code2Wav outputs near-silence) the first sample at all."""
        if self.t_first_audible is not None:
            return self.t_first_audible
        if self.t_first_delta is None:
            return None
        offset = first_audible_offset_ms(bytes(self.audio), OUTPUT_RATE_HZ)
        return self.t_first_delta + (offset or 0.0) / 1000

    def summary(self) -> dict[str, Any]:
        """Flat, stable keys (the benchmark's per-turn record uses them)."""
        stages = self.server.get("stages_ms") or {}
        gen_s = (self.arrivals[-1][0] - self.arrivals[0][0]) if len(self.arrivals) > 1 else None
        out = {
            "status": self.status,
            "vad_wait_ms": self._ms(self.t_speech_end, self.t_commit),
            "first_delta_ms": self._ms(self.t_commit, self.t_first_delta),
            "voice_to_voice_ms": self._ms(self.t_speech_end, self.first_audible()),
            "onset_found": self.onset_found,
            "audio_ttfp_ms": self.server.get("audio_ttfp_ms"),
            "engine_audio_ttfp_ms": self.server.get("engine_audio_ttfp_ms"),
            # Through a front end (upstream engine): the upstream's own first packet, and ours minus it.
            "upstream_ttfp_ms": self.server.get("upstream_ttfp_ms"),
            "frontend_added_ms": self.server.get("frontend_added_ms"),
            "upstream_request_ms": self.server.get("upstream_request_ms"),
            "audio_rtf": self.server.get("audio_rtf"),
            # Client view of generation speed: arrival span over the audio it carried
            # (the first chunk's own duration excluded from the span's audio).
            "client_rtf": round(gen_s * 1000 / (self.audio_ms - self.arrivals[0][1]), 4)
            if gen_s and self.audio_ms > self.arrivals[0][1]
            else None,
            "audio_ms": round(self.audio_ms, 1),
            "prefill_tokens": self.server.get("prefill_tokens"),
            "frames": self.server.get("frames"),
            "text_tokens": self.server.get("text_tokens"),
            **{f"stage_{k}_ms": v for k, v in stages.items()},
        }
        out["v2v_minus_vad_ms"] = (
            round(out["voice_to_voice_ms"] - out["vad_wait_ms"], 3)
            if out["voice_to_voice_ms"] is not None and out["vad_wait_ms"] is not None
            else None
        )
        t0 = self.arrivals[0][0] if self.arrivals else 0.0
        out.update(playout([((t - t0) * 1000, ms) for t, ms in self.arrivals]))
        return out


# ---------------------------------------------------------------------------- the core


class ClientCore:
    """Client protocol state. `manual=True` is push-to-talk (turn_detection null: the
    client commits and asks for the response); otherwise server VAD decides turns."""

    def __init__(
        self,
        *,
        input_rate_hz: int = 24_000,
        manual: bool = True,
        voice: str | None = None,
        instructions: str | None = None,
        vad: dict[str, Any] | None = None,
        preset: dict[str, Any] | None = None,
    ) -> None:
        self.input_rate_hz = input_rate_hz
        self.manual = manual
        self.voice, self.instructions, self.vad = voice, instructions, vad
        self.preset = preset  # a task preset's session fields (assistant/presets.py), under our own
        # A transcription session answers nothing: a turn is committed, not answered.
        self.answers = not preset or preset.get("type") != "transcription"
        self.session_id: str | None = None
        self.turns: list[TurnMetrics] = []
        self.active_response: str | None = None  # created and not yet done
        self._dropped: set[str] = set()  # responses we cancelled: their late deltas are not played
        self.errors: list[ServerError] = []

    # ------------------------------------------------------------------ outgoing

    def session_update(self) -> dict[str, Any]:
        turn_detection = None if self.manual else {"type": "server_vad", **(self.vad or {})}
        audio: dict[str, Any] = {
            "input": {"format": {"type": "audio/pcm", "rate": self.input_rate_hz}, "turn_detection": turn_detection},
            "output": {"format": {"type": "audio/pcm", "rate": OUTPUT_RATE_HZ}},
        }
        if self.voice:
            audio["output"]["voice"] = self.voice
        session: dict[str, Any] = {"type": "realtime", "output_modalities": ["audio"], "audio": audio}
        if self.preset:
            session = presets.merge(session, self.preset)
        if self.instructions is not None:
            session["instructions"] = self.instructions
        if session.get("type") == "transcription":  # its schema has no output side
            session.pop("output_modalities", None)
            session["audio"].pop("output", None)
        return {"type": "session.update", "session": session}

    def append_audio(self, pcm16: bytes) -> dict[str, Any]:
        return {"type": "input_audio_buffer.append", "audio": _b64(pcm16)}

    def append_image(self, jpeg: bytes) -> dict[str, Any]:
        # Alibaba Qwen-Omni-Realtime's camera event (our server's extension of the GA set).
        return {"type": "input_image_buffer.append", "image": _b64(jpeg)}

    @property
    def current(self) -> TurnMetrics | None:
        return self.turns[-1] if self.turns else None

    def start_turn(self) -> TurnMetrics:
        turn = TurnMetrics(index=len(self.turns) + 1)
        self.turns.append(turn)
        return turn

    def interrupt(self, played_ms: float | None) -> list[dict[str, Any]]:
        """Barge-in: the user starts talking while the assistant answers or still plays.
        Cancel the response if it is still generating, and tell the server how much of
        the answer was actually heard (`played_ms`; None = nothing is playing), so the
        history keeps only that. Returns the events to send (maybe none)."""
        out: list[dict[str, Any]] = []
        turn = self.current
        if self.active_response is not None:
            out.append({"type": "response.cancel", "response_id": self.active_response})
            self._dropped.add(self.active_response)
            if turn is not None:
                turn.cancelled_by_client = True
        if turn is not None and turn.item_id and played_ms is not None and played_ms < turn.audio_ms:
            end = max(0, int(played_ms))
            out.append(
                {"type": "conversation.item.truncate", "item_id": turn.item_id, "content_index": 0, "audio_end_ms": end}
            )
        return out

    def press(self, played_ms: float | None) -> list[dict[str, Any]]:
        """The talk key went down: interrupt if needed, and start a fresh input buffer."""
        out = self.interrupt(played_ms)
        if self.manual:
            out.append({"type": "input_audio_buffer.clear"})
        return out

    def release(self, t: float) -> list[dict[str, Any]]:
        """The talk key came up (manual turns): commit the audio and ask for an answer."""
        turn = self.start_turn()
        turn.t_speech_end = t
        turn.t_commit = t
        commit = [{"type": "input_audio_buffer.commit"}]
        return [*commit, {"type": "response.create"}] if self.answers else commit

    def speech_ended(self, t: float) -> TurnMetrics:
        """Server VAD turns: the user's speech ended at `t` (known to the caller, e.g. from
        a fixture); the commit time comes from the server."""
        turn = self.start_turn()
        turn.t_speech_end = t
        return turn

    # ------------------------------------------------------------------ incoming

    def receive(self, event: dict[str, Any], t: float) -> list[Effect]:
        kind = event.get("type", "")
        handler = getattr(self, "_on_" + kind.replace(".", "_"), None)
        if handler is None:
            return []
        return handler(event, t) or []

    def _on_session_created(self, ev, t):
        self.session_id = (ev.get("session") or {}).get("id")

    def _on_error(self, ev, t):
        err = ev.get("error") or {}
        e = ServerError(str(err.get("code") or err.get("type") or "error"), str(err.get("message") or ""))
        self.errors.append(e)
        return [e]

    def _on_input_audio_buffer_committed(self, ev, t):
        turn = self.current
        if not self.manual and (turn is None or turn.t_commit is not None):
            turn = self.start_turn()  # the server committed a turn we did not announce
        if turn is not None and turn.t_commit is None:
            turn.t_commit = t

    def _on_response_created(self, ev, t):
        rid = (ev.get("response") or {}).get("id")
        self.active_response = rid
        turn = self.current
        if turn is None or turn.response_id is not None:
            turn = self.start_turn()  # e.g. a response.create without a commit
        turn.response_id = rid

    def _turn_for(self, rid: str | None) -> TurnMetrics | None:
        return next((x for x in reversed(self.turns) if x.response_id == rid), None)

    def _on_response_output_item_added(self, ev, t):
        turn = self._turn_for(ev.get("response_id"))
        if turn is not None and turn.item_id is None:
            turn.item_id = (ev.get("item") or {}).get("id")

    def _on_response_output_audio_delta(self, ev, t):
        rid = ev.get("response_id")
        turn = self._turn_for(rid)
        if turn is None or rid in self._dropped:
            return None
        pcm = base64.b64decode(ev.get("delta") or "")
        if turn.t_first_delta is None:
            turn.t_first_delta = t
        turn.item_id = turn.item_id or ev.get("item_id")
        turn.audio += pcm
        turn.arrivals.append((t, len(pcm) / 2 * 1000 / OUTPUT_RATE_HZ))
        return [PlayAudio(pcm, turn.item_id or "")]

    _on_response_audio_delta = _on_response_output_audio_delta  # beta name

    def _on_response_output_audio_transcript_delta(self, ev, t):
        turn = self._turn_for(ev.get("response_id"))
        if turn is None or ev.get("response_id") in self._dropped:
            return None
        turn.transcript += ev.get("delta") or ""
        return [Transcript("assistant", ev.get("delta") or "", False)]

    _on_response_audio_transcript_delta = _on_response_output_audio_transcript_delta
    _on_response_output_text_delta = _on_response_output_audio_transcript_delta  # text-only answers (interpreter)
    _on_response_text_delta = _on_response_output_audio_transcript_delta

    def _on_conversation_item_input_audio_transcription_completed(self, ev, t):
        return [Transcript("user", ev.get("transcript") or "", True)]

    def _on_response_done(self, ev, t):
        resp = ev.get("response") or {}
        rid = resp.get("id")
        if rid == self.active_response:
            self.active_response = None
        turn = self._turn_for(rid)
        if turn is None:
            return None
        turn.t_done = t
        turn.status = resp.get("status")
        # Our server's extra: `latency` on the response (or, tolerated, on the event).
        turn.server = dict(ev.get("latency") or resp.get("latency") or {})
        return [Transcript("assistant", "", True), TurnReport(turn)]
