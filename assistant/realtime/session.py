"""The Realtime session and turn state machine, sans-I/O.

One `RealtimeSession` per client connection, whatever the transport. It owns the engine
`Conversation`, the session config, the input audio buffer, the camera frames, the items
the client sees and the response lifecycle. It never awaits, sleeps or touches a socket:

    inputs                                   outputs (lists returned by every call)
    receive_text(json) / handle(event)  -->  Send(event dict)        write to the client
    append_audio(float pcm, rate)            StartResponse(...)      call engine.respond()
    take_vad_work() / on_vad(work, probs)    CancelResponse(id)      call response.cancel()
    on_engine_event(response_id, ev)         TruncateTurn(item, ms)  call engine.truncate()
    sent(tag)                                PlayAudio(...)          WebRTC: queue for playback
    output_audio_started/stopped(...)        ClearPlayback(...)      WebRTC: drop queued audio
    playback_truncated(item_id, played_ms)   ResponseMetrics(...)    record /metrics
    close()

Transports: on "websocket" response audio goes out as `response.output_audio.delta`
events and the client owns playback (it reports what it heard with
`conversation.item.truncate`); on "webrtc" audio goes out as `PlayAudio` commands, the
adapter owns playback and reports it back (`output_audio_started/stopped`,
`playback_truncated`).

The engine's `Conversation` must not be edited while a response for it runs (engine
api), so edits that arrive meanwhile (new user turns, deletes, truncations, voice or
instructions) are queued in order and applied when the response ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..audio import StreamResampler
from ..engine.api import (
    INPUT_SAMPLE_RATE,
    OUTPUT_SAMPLE_RATE,
    VOICES,
    AudioChunk,
    AudioPart,
    Conversation,
    ImagePart,
    Part,
    ResponseDone,
    Sampling,
    TextDelta,
    TextPart,
    Turn,
    VideoPart,
    new_id,
    now,
)
from ..settings import Settings
from . import events as ev
from .images import FrameSampler, decode_image
from .inputbuf import InputBuffer
from .items import item_json, parts_from_content
from .vad import WINDOW_SAMPLES, Endpointer, SpeechStarted, SpeechStopped, VadParams

log = logging.getLogger("assistant.realtime")

MIN_COMMIT_MS = 100  # OpenAI refuses to commit less than 100 ms of audio


# ---------------------------------------------------------------------------- outputs


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


Output = Send | StartResponse | CancelResponse | TruncateTurn | PlayAudio | ClearPlayback | ResponseMetrics


@dataclass(frozen=True)
class VadWork:
    """Whole 512-sample windows of 16 kHz audio for the VAD model (run it off the loop)."""

    epoch: int
    start_sample: int
    samples: np.ndarray


@dataclass
class _Response:
    id: str
    item_id: str
    audio: bool
    t_committed: float
    text: list[str] = field(default_factory=list)
    samples_sent: int = 0
    cancel_reason: str | None = None
    t_first_audio_sent: float | None = None
    t_first_audio_received: float | None = None  # the engine's first chunk reached the session
    latency: dict[str, Any] | None = None
    restore: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- session


class RealtimeSession:
    def __init__(
        self,
        settings: Settings,
        *,
        transport: str = "websocket",
        model: str = "",
        beta: bool = False,
        clock: Callable[[], float] = now,
    ) -> None:
        self.settings = settings
        self.id = new_id("sess")
        self.model = model
        self.webrtc = transport == "webrtc"
        self.clock = clock
        self.enc = ev.Encoder(beta)
        self.conversation = Conversation(
            voice=settings.voice,
            sampling=Sampling(
                min_tokens=settings.min_answer_tokens,
                max_tokens=settings.max_answer_tokens,
                max_frames=settings.max_answer_frames,
            ),
        )
        self.input_rate_hz = 24_000
        self.output_modalities: tuple[str, ...] = ("audio",)
        self.turn_detection: ev.TurnDetection | None = ev.TurnDetection(
            threshold=settings.vad_threshold,
            prefix_padding_ms=settings.vad_prefix_padding_ms,
            silence_duration_ms=settings.vad_silence_ms,
        )
        self._default_td = self.turn_detection
        self._resampler = StreamResampler(self.input_rate_hz, INPUT_SAMPLE_RATE)
        self._buf = InputBuffer(settings.max_input_audio_s * INPUT_SAMPLE_RATE)
        self._endpointer = Endpointer(self._vad_params())
        self._vad_pending: list[np.ndarray] = []
        self._vad_next = 0  # absolute 16 kHz sample of the first pending VAD sample
        self._vad_epoch = 0
        self._speech: tuple[str, int] | None = None  # (item_id, first sample) of the turn being spoken
        self._frames = FrameSampler(settings.image_fps, settings.max_turn_images)
        self._items: list[str] = []  # item ids in the order the client sees them
        self._roles: dict[str, str] = {}
        self._kinds: dict[str, str] = {}  # assistant item -> "audio" | "text"
        self._pending_turns: dict[str, Turn] = {}  # announced, waiting for the active response to end
        self._audio_sent_ms: dict[str, float] = {}
        self._active: _Response | None = None
        self._deferred: list[Callable[[], None]] = []
        self._auto_response: float | None = None  # t_committed of a VAD turn waiting for the active response
        self._t_last_commit: float | None = None
        self._guard_until = 0.0
        self._playing: str | None = None  # WebRTC: the response whose audio is playing
        self._done_latency: dict[str, tuple[str, dict[str, Any]]] = {}
        self._out: list[Output] = []

    # ------------------------------------------------------------------ plumbing

    def _send(self, type: str, tag: tuple[str, str] | None = None, **fields: Any) -> dict[str, Any]:
        event = self.enc.event(type, **fields)
        self._out.append(Send(event, tag))
        return event

    def _drain(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    def _error(self, err: ev.ProtocolError) -> None:
        self._out.append(Send(self.enc.error(err)))

    def _edit(self, fn: Callable[[], None]) -> None:
        """Run a Conversation edit now, or after the active response (engine contract)."""
        if self._active is None:
            fn()
        else:
            self._deferred.append(fn)

    def _vad_params(self) -> VadParams:
        td = self.turn_detection or self._default_td
        return VadParams(td.threshold, td.prefix_padding_ms, td.silence_duration_ms, self.settings.vad_min_speech_ms)

    # ------------------------------------------------------------------ entry points

    def start(self) -> list[Output]:
        self._send("session.created", session=self.session_json())
        return self._drain()

    def receive_text(self, text: str | bytes) -> list[Output]:
        """One client message, as received."""
        try:
            event = ev.parse(text, self._default_td)
        except ev.ProtocolError as err:
            self._error(err)
            return self._drain()
        return self.handle(event)

    def handle(self, event: ev.ClientEvent) -> list[Output]:
        handler = self._HANDLERS[type(event)]
        try:
            handler(self, event)
        except ev.ProtocolError as err:
            if err.event_id is None:
                err.event_id = event.event_id
            self._error(err)
        except Exception:
            # A bug must not end the session; the client learns only that it failed.
            log.exception("session %s: %s failed", self.id, event.type)
            self._error(
                ev.ProtocolError("server_error", "internal error", event_id=event.event_id, type="server_error")
            )
        return self._drain()

    def close(self) -> list[Output]:
        """The client is gone: cancel what runs."""
        if self._active is not None and self._active.cancel_reason is None:
            self._active.cancel_reason = "client_disconnected"
            self._out.append(CancelResponse(self._active.id))
        return self._drain()

    # ------------------------------------------------------------------ session config

    def session_json(self) -> dict[str, Any]:
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.conversation.instructions,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": self.input_rate_hz},
                    "turn_detection": self.turn_detection.to_json() if self.turn_detection else None,
                    "transcription": None,
                    "noise_reduction": None,
                },
                "output": {
                    "format": {"type": "audio/pcm", "rate": OUTPUT_SAMPLE_RATE},
                    "voice": self.conversation.voice,
                    "speed": 1.0,
                },
            },
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": self.settings.max_answer_tokens,
        }

    def _session_update(self, event: ev.SessionUpdate) -> None:
        patch = event.patch
        voice = None
        if patch.voice is not None:
            voice = next((v for v in VOICES if v.lower() == patch.voice.lower()), None)
            if voice is None:
                raise ev.ProtocolError(
                    "invalid_value",
                    f"unknown voice {patch.voice!r}; use one of {list(VOICES)}",
                    param="session.audio.output.voice",
                )
        if patch.beta_shape:
            self.enc.beta = True  # a beta-era client: answer with the beta event names
        if patch.input_rate_hz is not None and patch.input_rate_hz != self.input_rate_hz:
            self.input_rate_hz = patch.input_rate_hz
            self._resampler = StreamResampler(self.input_rate_hz, INPUT_SAMPLE_RATE)
        if "turn_detection" in patch.fields_set:
            self.turn_detection = patch.turn_detection
            self._endpointer.params = self._vad_params()
            self._reset_vad()
        if patch.output_modalities is not None:
            self.output_modalities = patch.output_modalities
        if voice is not None:
            self._edit(lambda: setattr(self.conversation, "voice", voice))
        if patch.instructions is not None:
            instructions = patch.instructions
            self._edit(lambda: setattr(self.conversation, "instructions", instructions))
        view = self.session_json()
        view["audio"]["output"]["voice"] = voice or view["audio"]["output"]["voice"]
        if patch.instructions is not None:
            view["instructions"] = patch.instructions
        self._send("session.updated", session=view)

    # ------------------------------------------------------------------ input audio

    def append_audio(self, pcm: np.ndarray, sample_rate_hz: int) -> list[Output]:
        """Microphone audio as float32 mono (WebRTC adapters call this directly)."""
        try:
            self._append(pcm, sample_rate_hz)
        except ev.ProtocolError as err:
            self._error(err)
        return self._drain()

    def _append(self, pcm: np.ndarray, rate_hz: int, event_id: str | None = None) -> None:
        if rate_hz != self._resampler.from_hz:
            self._resampler = StreamResampler(rate_hz, INPUT_SAMPLE_RATE)
        x = self._resampler.process(pcm)
        if not self._buf.fits(len(x)):
            raise ev.ProtocolError(
                "input_audio_buffer_full",
                f"more than {self.settings.max_input_audio_s} s of input audio buffered; commit or clear it",
                event_id=event_id,
            )
        self._buf.append(x)
        if self.turn_detection is not None:
            self._vad_pending.append(x)

    def _audio_append(self, event: ev.AudioAppend) -> None:
        from ..audio import pcm16_to_float

        self._append(pcm16_to_float(event.pcm16), self.input_rate_hz, event.event_id)

    def _audio_commit(self, event: ev.AudioCommit) -> None:
        if self._buf.duration_ms < MIN_COMMIT_MS:
            raise ev.ProtocolError(
                "input_audio_buffer_commit_empty",
                f"buffer too small: at least {MIN_COMMIT_MS} ms of audio is needed, got {self._buf.duration_ms:.0f} ms",
            )
        item_id = self._speech[0] if self._speech else new_id("item")
        # The resampler holds a few ms back (filter delay); a manual commit means "all I sent".
        self._buf.append(self._resampler.flush())
        self._resampler = StreamResampler(self._resampler.from_hz, INPUT_SAMPLE_RATE)
        audio = self._buf.take(self._buf.start, self._buf.end)
        self._reset_vad()
        self._commit(item_id, audio)

    def _audio_clear(self, event: ev.AudioClear) -> None:
        self._buf.clear()
        self._reset_vad()
        self._send("input_audio_buffer.cleared")

    def _reset_vad(self) -> None:
        """Forget VAD state and any VAD work in flight (its results come back stale)."""
        self._vad_epoch += 1
        self._vad_pending.clear()
        self._vad_next = self._buf.end
        self._endpointer.reset()
        self._endpointer.position = self._buf.end
        self._speech = None

    def _commit(self, item_id: str, audio: np.ndarray) -> None:
        t = self.clock()
        parts: list[Part] = self._visual_parts(t)
        parts.append(AudioPart(audio, INPUT_SAMPLE_RATE))
        previous = self._items[-1] if self._items else None
        self._send("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        self._add_turn(Turn("user", parts, id=item_id), previous)
        self._t_last_commit = t

    # ------------------------------------------------------------------ VAD

    @property
    def vad_enabled(self) -> bool:
        return self.turn_detection is not None

    def take_vad_work(self) -> VadWork | None:
        """The next whole windows to score, or None. Score them off the event loop, then
        call `on_vad(work, probabilities)`."""
        if not self._vad_pending:
            return None
        x = np.concatenate(self._vad_pending) if len(self._vad_pending) > 1 else self._vad_pending[0]
        n = len(x) // WINDOW_SAMPLES * WINDOW_SAMPLES
        self._vad_pending = [x[n:]] if n < len(x) else []
        if n == 0:
            return None
        work = VadWork(self._vad_epoch, self._vad_next, x[:n])
        self._vad_next += n
        return work

    def on_vad(self, work: VadWork, probs: np.ndarray) -> list[Output]:
        if work.epoch != self._vad_epoch or self.turn_detection is None:
            return self._drain()  # stale: the buffer was committed or cleared meanwhile
        try:
            for event in self._endpointer.feed(work.start_sample, probs):
                if isinstance(event, SpeechStarted):
                    self._speech_started(event)
                elif isinstance(event, SpeechStopped) and self._speech is not None:
                    self._speech_stopped(event)
            if self._speech is None:  # between turns keep only the prefix padding
                keep = self._endpointer.position - self.turn_detection.prefix_padding_ms * INPUT_SAMPLE_RATE // 1000
                self._buf.drop_before(keep)
        except ev.ProtocolError as err:
            self._error(err)
        return self._drain()

    def _speech_started(self, event: SpeechStarted) -> None:
        td = self.turn_detection
        assert td is not None
        if self.clock() < self._guard_until:
            # Echo guard: the assistant just started talking; its own voice may leak back
            # through the client's speaker before echo cancellation adapts (unmute, pipecat).
            self._endpointer.reset()
            return
        item_id = new_id("item")
        self._speech = (item_id, event.audio_start_ms * INPUT_SAMPLE_RATE // 1000)
        self._send("input_audio_buffer.speech_started", audio_start_ms=event.audio_start_ms, item_id=item_id)
        if td.interrupt_response:
            self._barge_in()

    def _barge_in(self) -> None:
        active = self._active
        if active is not None and active.cancel_reason is None:
            active.cancel_reason = "turn_detected"
            self._out.append(CancelResponse(active.id))
        if self.webrtc and self._playing is not None:
            item = active.item_id if active and active.id == self._playing else self._last_assistant()
            self._out.append(ClearPlayback(self._playing, item or ""))

    def _last_assistant(self) -> str | None:
        return next((i for i in reversed(self._items) if self._roles.get(i) == "assistant"), None)

    def _speech_stopped(self, event: SpeechStopped) -> None:
        td = self.turn_detection
        assert td is not None and self._speech is not None
        item_id, start = self._speech
        self._send("input_audio_buffer.speech_stopped", audio_end_ms=event.audio_end_ms, item_id=item_id)
        audio = self._buf.take(start, event.audio_end_ms * INPUT_SAMPLE_RATE // 1000)
        self._speech = None
        self._commit(item_id, audio)
        if td.create_response:
            if self._active is None:
                self._create_response(self._t_last_commit)
            else:
                self._auto_response = self._t_last_commit

    # ------------------------------------------------------------------ camera

    def _image_append(self, event: ev.ImageAppend) -> None:
        t = self.clock()
        if not self._frames.wants(t):
            return  # over the frame rate: dropped before decoding
        try:
            image = decode_image(event.image, max_pixels=self.settings.max_image_pixels)
        except ValueError as exc:
            raise ev.ProtocolError("invalid_image", str(exc), param="image") from None
        self._frames.add(t, image)

    def append_frame(self, rgb: np.ndarray) -> list[Output]:
        """A decoded camera frame (uint8 [H, W, 3]), e.g. from a WebRTC video track. Sampled
        like `input_image_buffer.append`: over the frame rate it is dropped."""
        t = self.clock()
        if self._frames.wants(t):
            self._frames.add(t, rgb)
        return self._drain()

    def wants_frame(self) -> bool:
        """Whether a frame arriving now would be kept (skip decoding it otherwise)."""
        return self._frames.wants(self.clock())

    def _visual_parts(self, t: float) -> list[Part]:
        frames = self._frames.take()
        if not frames:
            return []
        if len(frames) == 1:
            return [ImagePart(frames[0].image)]
        t0 = frames[0].t_s
        return [VideoPart([f.image for f in frames], [round(f.t_s - t0, 3) for f in frames])]

    # ------------------------------------------------------------------ items

    def _add_turn(self, turn: Turn, previous: str | None) -> None:
        if previous is None or previous not in self._items:
            self._items.append(turn.id)
        else:
            self._items.insert(self._items.index(previous) + 1, turn.id)
        self._roles[turn.id] = turn.role
        item = item_json(turn, output=self._kinds.get(turn.id, "audio"))
        self._send("conversation.item.added", previous_item_id=previous, item=item)
        self._send("conversation.item.done", item=item)
        self._pending_turns[turn.id] = turn
        self._edit(lambda: self._insert_turn(turn, previous))

    def _insert_turn(self, turn: Turn, previous: str | None) -> None:
        self._pending_turns.pop(turn.id, None)
        if turn.id not in self._items:
            return  # deleted before it was applied
        turns = self.conversation.turns
        index = next((i + 1 for i, t in enumerate(turns) if t.id == previous), len(turns))
        turns.insert(index, turn)
        self._enforce_max_items()

    def _enforce_max_items(self) -> None:
        """Policy: past `max_conversation_items`, the oldest items are deleted (and the
        client is told with conversation.item.deleted), as a sliding window."""
        turns = self.conversation.turns
        while len(turns) > self.settings.max_conversation_items:
            old = turns.pop(0)
            if old.id in self._items:
                self._items.remove(old.id)
            self._send("conversation.item.deleted", item_id=old.id)

    def _item_create(self, event: ev.ItemCreate) -> None:
        item = event.item
        assert item is not None
        item_id = item.id or new_id("item")
        if item_id in self._items:
            raise ev.ProtocolError("item_already_exists", f"item {item_id!r} already exists", param="item.id")
        previous = event.previous_item_id
        if previous not in (None, "root") and previous not in self._items:
            raise ev.ProtocolError("item_not_found", f"no item {previous!r}", param="previous_item_id")
        if item.role == "user":
            try:
                parts = parts_from_content(
                    item.content, input_rate_hz=self.input_rate_hz, max_image_pixels=self.settings.max_image_pixels
                )
            except ValueError as exc:
                raise ev.ProtocolError("invalid_image", str(exc), param="item.content") from None
            turn = Turn("user", parts, id=item_id)
        else:
            text = "".join(c.text for c in item.content)
            turn = Turn(item.role, [TextPart(text)], id=item_id, text=text if item.role == "assistant" else "")
            if item.role == "assistant":
                self._kinds[item_id] = "audio" if any(c.type == "output_audio" for c in item.content) else "text"
        if previous == "root":
            self._items.insert(0, item_id)
            self._roles[item_id] = turn.role
            payload = item_json(turn, output=self._kinds.get(item_id, "audio"))
            self._send("conversation.item.added", previous_item_id=None, item=payload)
            self._send("conversation.item.done", item=payload)
            self._pending_turns[item_id] = turn
            self._edit(lambda: self._insert_root(turn))
        else:
            self._add_turn(turn, previous or (self._items[-1] if self._items else None))

    def _insert_root(self, turn: Turn) -> None:
        self._pending_turns.pop(turn.id, None)
        if turn.id in self._items:
            self.conversation.turns.insert(0, turn)
            self._enforce_max_items()

    def _find(self, item_id: str) -> Turn | None:
        return self._pending_turns.get(item_id) or self.conversation.find(item_id)

    def _item_retrieve(self, event: ev.ItemRetrieve) -> None:
        active = self._active
        if active is not None and event.item_id == active.item_id:
            turn = Turn("assistant", [], id=active.item_id, text="".join(active.text))
            item = item_json(turn, status="in_progress", output="audio" if active.audio else "text")
        else:
            turn = self._find(event.item_id) if event.item_id in self._items else None
            if turn is None:
                raise ev.ProtocolError("item_not_found", f"no item {event.item_id!r}", param="item_id")
            item = item_json(
                turn, output=self._kinds.get(turn.id, "audio"), with_audio=True, input_rate_hz=self.input_rate_hz
            )
        self._send("conversation.item.retrieved", item=item)

    def _item_delete(self, event: ev.ItemDelete) -> None:
        item_id = event.item_id
        if item_id not in self._items:
            raise ev.ProtocolError("item_not_found", f"no item {item_id!r}", param="item_id")
        if self._active is not None and item_id == self._active.item_id:
            raise ev.ProtocolError(
                "invalid_value", "the item of the response in progress cannot be deleted", param="item_id"
            )
        self._items.remove(item_id)
        self._pending_turns.pop(item_id, None)
        self._edit(lambda: self.conversation.delete(item_id))
        self._send("conversation.item.deleted", item_id=item_id)

    def _item_truncate(self, event: ev.ItemTruncate) -> None:
        if event.content_index != 0:
            raise ev.ProtocolError(
                "invalid_value", "assistant items have one content part (index 0)", param="content_index"
            )
        self._truncate(event.item_id, event.audio_end_ms)

    def _truncate(self, item_id: str, audio_end_ms: int) -> None:
        if item_id not in self._items:
            raise ev.ProtocolError("item_not_found", f"no item {item_id!r}", param="item_id")
        if self._roles.get(item_id) != "assistant":
            raise ev.ProtocolError("invalid_value", "only assistant items can be truncated", param="item_id")
        # Clamp to the audio actually sent: a client may report playback past what it got
        # (openai-agents-python PR #4122 clamps the same way on its side).
        clamped = max(0, min(audio_end_ms, int(self._audio_sent_ms.get(item_id, 0.0))))
        self._edit(lambda: self._out.append(TruncateTurn(item_id, clamped)))
        self._send("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=clamped)

    # ------------------------------------------------------------------ responses

    def _response_create(self, event: ev.ResponseCreate) -> None:
        if self._active is not None:
            raise ev.ProtocolError(
                "conversation_already_has_active_response",
                f"response {self._active.id} is in progress; cancel it or wait for response.done",
            )
        t = self._t_last_commit if self._t_last_commit is not None else self.clock()
        self._create_response(t, event.output_modalities, event.instructions, event.max_output_tokens)

    def _create_response(
        self,
        t_committed: float | None,
        modalities: tuple[str, ...] | None = None,
        instructions: str | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self._t_last_commit = None
        audio = (modalities or self.output_modalities) == ("audio",)
        r = _Response(new_id("resp"), new_id("item"), audio, t_committed if t_committed is not None else self.clock())
        conv = self.conversation
        if instructions is not None:
            r.restore["instructions"] = conv.instructions
            conv.instructions = instructions
        if max_tokens is not None:
            r.restore["sampling"] = conv.sampling
            conv.sampling = replace(conv.sampling, max_tokens=min(max_tokens, conv.sampling.max_tokens))
        self._active = r
        self._items.append(r.item_id)
        self._roles[r.item_id] = "assistant"
        self._kinds[r.item_id] = "audio" if audio else "text"
        previous = self._items[-2] if len(self._items) > 1 else None
        mods = ["audio"] if audio else ["text"]
        self._send("response.created", response=self._response_json(r, "in_progress", []))
        item = {
            "id": r.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        self._send("response.output_item.added", response_id=r.id, output_index=0, item=item)
        self._send("conversation.item.added", previous_item_id=previous, item=item)
        part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        self._send("response.content_part.added", **self._where(r), part=part)
        self._out.append(StartResponse(r.id, conv, r.t_committed, audio))
        log.debug("session %s: response %s (%s)", self.id, r.id, mods)

    def _response_json(self, r: _Response, status: str, output: list, details: dict | None = None, usage=None):
        out = {
            "object": "realtime.response",
            "id": r.id,
            "status": status,
            "status_details": details,
            "output": output,
            "conversation_id": self.conversation.id,
            "output_modalities": ["audio"] if r.audio else ["text"],
            "audio": {
                "output": {
                    "format": {"type": "audio/pcm", "rate": OUTPUT_SAMPLE_RATE},
                    "voice": self.conversation.voice,
                }
            },
            "max_output_tokens": self.conversation.sampling.max_tokens,
        }
        if usage is not None:
            out["usage"] = usage
        return out

    @staticmethod
    def _where(r: _Response) -> dict[str, Any]:
        return {"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0}

    def _response_cancel(self, event: ev.ResponseCancel) -> None:
        active = self._active
        if active is None or (event.response_id and event.response_id != active.id):
            raise ev.ProtocolError(
                "response_cancel_not_active", "there is no such response in progress", param="response_id"
            )
        if active.cancel_reason is None:
            active.cancel_reason = "client_cancelled"
            self._out.append(CancelResponse(active.id))

    def _output_audio_clear(self, event: ev.OutputAudioClear) -> None:
        if not self.webrtc:
            raise ev.ProtocolError(
                "unsupported_feature",
                "output_audio_buffer.clear is for WebRTC; over websocket the client owns playback",
            )
        if self._playing is not None:
            self._out.append(ClearPlayback(self._playing, self._last_assistant() or ""))

    # ------------------------------------------------------------------ engine events

    def on_engine_event(self, response_id: str, event: Any) -> list[Output]:
        r = self._active
        if r is None or r.id != response_id:
            return self._drain()
        if isinstance(event, TextDelta):
            if r.cancel_reason is None:
                r.text.append(event.text)
                kind = "response.output_audio_transcript.delta" if r.audio else "response.output_text.delta"
                self._send(kind, **self._where(r), delta=event.text)
        elif isinstance(event, AudioChunk):
            if r.cancel_reason is None and r.audio:
                self._audio_out(r, event.pcm16)
        elif isinstance(event, ResponseDone):
            self._finish(r, event)
        return self._drain()

    def _audio_out(self, r: _Response, pcm16: bytes) -> None:
        first = r.samples_sent == 0
        if first:
            r.t_first_audio_received = self.clock()
        r.samples_sent += len(pcm16) // 2
        self._audio_sent_ms[r.item_id] = r.samples_sent * 1000.0 / OUTPUT_SAMPLE_RATE
        if self.webrtc:
            self._out.append(PlayAudio(r.id, r.item_id, pcm16))
        else:
            tag = ("first_audio", r.id) if first else None
            self._send("response.output_audio.delta", tag, **self._where(r), delta=ev.b64(pcm16))

    def _finish(self, r: _Response, done: ResponseDone) -> None:
        if done.turn is not None:
            done.turn.id = r.item_id  # the engine names its turn; the client knows ours
        text = "".join(r.text)
        if done.status == "failed" and done.error is not None:
            err = ev.ProtocolError(done.error.code, done.error.message, type="server_error")
            self._error(err)
        if r.audio:
            self._send("response.output_audio.done", **self._where(r))
            self._send("response.output_audio_transcript.done", **self._where(r), transcript=text)
            part = {"type": "audio", "transcript": text}
        else:
            self._send("response.output_text.done", **self._where(r), text=text)
            part = {"type": "text", "text": text}
        self._send("response.content_part.done", **self._where(r), part=part)
        status = {"completed": "completed", "cancelled": "cancelled"}.get(done.status, "failed")
        content = {"type": "output_audio", "transcript": text} if r.audio else {"type": "output_text", "text": text}
        item_status = "completed" if status == "completed" else "incomplete"
        item = {
            "id": r.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": item_status,
            "content": [content],
        }
        self._send("response.output_item.done", response_id=r.id, output_index=0, item=item)
        if done.turn is not None:
            self._send("conversation.item.done", item=item)
        else:  # failed before any turn existed: the announced item is gone
            self._items.remove(r.item_id)
            self._send("conversation.item.deleted", item_id=r.item_id)
        r.latency = self._latency(r, done)
        details = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": r.cancel_reason or "client_cancelled"}
        elif status == "failed":
            error = done.error
            details = {
                "type": "failed",
                "error": {
                    "type": "server_error",
                    "code": error.code if error else "engine_error",
                    "message": error.message if error else "",
                },
            }
        stats = done.stats
        usage = {
            "total_tokens": stats.prefill_tokens + stats.text_tokens,
            "input_tokens": stats.prefill_tokens,
            "output_tokens": stats.text_tokens,
        }
        self._done_latency[r.id] = (status, r.latency)
        event = self._send(
            "response.done", ("done", r.id), response=self._response_json(r, status, [item], details, usage)
        )
        event["latency"] = r.latency  # an extra key: stock clients ignore it (the SDK keeps unknown keys)
        self._end_response(r)

    def _latency(self, r: _Response, done: ResponseDone) -> dict[str, Any]:
        """The `latency` extra of response.done. `audio_ttfp_ms` runs from the commit or
        VAD endpoint to the first audio packet the transport actually sent; it is filled
        in by `sent()` (the writer serialises response.done after that packet)."""
        stats = done.stats
        lat = stats.to_dict()
        lat["engine_audio_ttfp_ms"] = lat.pop("audio_ttfp_ms")
        lat["audio_ttfp_ms"] = None
        lat["e2e_ms"] = None if stats.t_done is None else round((stats.t_done - r.t_committed) * 1000, 3)
        lat["t_committed_s"] = r.t_committed
        lat["t_engine_first_audio_s"] = stats.t_first_audio  # stamped by the engine's worker
        lat["t_first_audio_received_s"] = r.t_first_audio_received  # the chunk reached this session
        lat["t_first_audio_sent_s"] = None
        if r.t_first_audio_sent is not None:
            self._fill_ttfp(lat, r.t_committed, r.t_first_audio_sent)
        return lat

    @staticmethod
    def _fill_ttfp(lat: dict[str, Any], t_committed: float, t_sent: float) -> None:
        lat["t_first_audio_sent_s"] = t_sent
        lat["audio_ttfp_ms"] = round((t_sent - t_committed) * 1000, 3)

    def _end_response(self, r: _Response) -> None:
        conv = self.conversation
        if "instructions" in r.restore:
            conv.instructions = r.restore["instructions"]
        if "sampling" in r.restore:
            conv.sampling = r.restore["sampling"]
        self._active = None
        deferred, self._deferred = self._deferred, []
        for fn in deferred:
            fn()
        if self._auto_response is not None:
            t, self._auto_response = self._auto_response, None
            self._create_response(t)

    # ------------------------------------------------------------------ transport feedback

    def sent(self, tag: tuple[str, str]) -> list[Output]:
        """The transport wrote a tagged event (see `Send.tag`)."""
        kind, response_id = tag
        t = self.clock()
        if kind == "first_audio":
            self._first_audio_at(response_id, t)
        elif kind == "done":
            entry = self._done_latency.pop(response_id, None)
            if entry is not None:
                self._out.append(ResponseMetrics(*entry))
        return self._drain()

    def _first_audio_at(self, response_id: str, t: float) -> None:
        self._guard_until = t + self.settings.echo_guard_ms / 1000.0
        r = self._active
        if r is not None and r.id == response_id:
            r.t_first_audio_sent = t
        lat = self._done_latency.get(response_id, (None, None))[1]
        if lat is not None and lat["audio_ttfp_ms"] is None:
            self._fill_ttfp(lat, lat["t_committed_s"], t)

    def output_audio_started(self, response_id: str) -> list[Output]:
        """WebRTC: the first frame of this response's audio went out on the track."""
        self._playing = response_id
        self._first_audio_at(response_id, self.clock())
        self._send("output_audio_buffer.started", response_id=response_id)
        return self._drain()

    def output_audio_stopped(self, response_id: str) -> list[Output]:
        """WebRTC: this response's audio finished playing."""
        if self._playing == response_id:
            self._playing = None
        self._send("output_audio_buffer.stopped", response_id=response_id)
        return self._drain()

    def playback_truncated(self, item_id: str, played_ms: int) -> list[Output]:
        """WebRTC: after `ClearPlayback`, the adapter reports how much of the item was
        really played; the history keeps only that."""
        response_id = self._playing or (self._active.id if self._active else "")
        self._playing = None
        self._send("output_audio_buffer.cleared", response_id=response_id)
        if item_id:
            try:
                self._truncate(item_id, played_ms)
            except ev.ProtocolError as err:
                self._error(err)
        return self._drain()

    _HANDLERS: dict[type, Callable[[RealtimeSession, Any], None]] = {
        ev.SessionUpdate: _session_update,
        ev.AudioAppend: _audio_append,
        ev.AudioCommit: _audio_commit,
        ev.AudioClear: _audio_clear,
        ev.ImageAppend: _image_append,
        ev.ItemCreate: _item_create,
        ev.ItemRetrieve: _item_retrieve,
        ev.ItemDelete: _item_delete,
        ev.ItemTruncate: _item_truncate,
        ev.ResponseCreate: _response_create,
        ev.ResponseCancel: _response_cancel,
        ev.OutputAudioClear: _output_audio_clear,
    }
