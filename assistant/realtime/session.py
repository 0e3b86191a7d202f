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
    check_limits()  (periodically)           EndSession(reason)      close after the events before it
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
from typing import Any

import numpy as np

from ..audio import StreamResampler
from ..engine.api import (
    INPUT_SAMPLE_RATE,
    OUTPUT_SAMPLE_RATE,
    Conversation,
    Sampling,
    Turn,
    new_id,
    now,
)
from ..settings import Settings
from . import events as ev
from . import tools as tools_mod
from .camera import CameraTurn
from .commands import (
    CancelResponse,
    ClearPlayback,
    EndSession,
    Output,
    PlayAudio,
    PrefillTurn,
    ResponseMetrics,
    Send,
    StartResponse,
    TranscribeItem,
    TruncateTurn,
    VadWork,
)
from .images import FrameSampler
from .inputbuf import InputBuffer
from .session_input import MIN_COMMIT_MS, InputSide
from .session_items import ItemsSide
from .session_response import ResponseSide, _Response, resolve_voice
from .session_transcribe import TranscribeSide
from .vad import Endpointer, VadParams

__all__ = [
    "MIN_COMMIT_MS",
    "CancelResponse",
    "ClearPlayback",
    "Output",
    "PlayAudio",
    "PrefillTurn",
    "RealtimeSession",
    "ResponseMetrics",
    "Send",
    "StartResponse",
    "TranscribeItem",
    "TruncateTurn",
    "VadWork",
]

log = logging.getLogger("assistant.realtime")


# ---------------------------------------------------------------------------- session


class RealtimeSession(InputSide, ItemsSide, ResponseSide, TranscribeSide):
    def __init__(
        self,
        settings: Settings,
        *,
        transport: str = "websocket",
        model: str = "",
        beta: bool = False,
        clock: Callable[[], float] = now,
        audio_output: bool = True,
    ) -> None:
        self.settings = settings
        self.audio_output = audio_output  # False: a thinker-only checkpoint (Thinking, Captioner), text only
        self.id = new_id("sess")
        self.model = model
        self.webrtc = transport == "webrtc"
        self.clock = clock
        self.enc = ev.Encoder(beta)
        self.conversation = Conversation(
            voice=settings.voice,
            sampling=Sampling(
                greedy=settings.greedy,
                min_tokens=settings.min_answer_tokens,
                max_tokens=settings.max_answer_tokens,
                min_frames=settings.min_answer_frames,
                max_frames=settings.max_answer_frames,
            ),
        )
        self.input_rate_hz = 24_000
        self.output_modalities: tuple[str, ...] = ("audio",) if audio_output else ("text",)
        # Session-level max_output_tokens: text tokens per answer, at most the server's cap.
        self.max_output_tokens: int = settings.max_answer_tokens
        self.turn_detection: ev.TurnDetection | None = ev.TurnDetection(
            threshold=settings.vad_threshold,
            prefix_padding_ms=settings.vad_prefix_padding_ms,
            silence_duration_ms=settings.vad_silence_ms,
        )
        self._default_td = self.turn_detection
        # Input transcription (session_transcribe.py); a "transcription" session only transcribes.
        self.session_type = "realtime"
        self.transcription: ev.Transcription | None = None
        self._transcripts: dict[str, tuple[int, list[str], bool]] = {}  # item -> (content index, text, done)
        self.interpreter: ev.Interpreter | None = None  # interpreter mode (session_transcribe.py)
        self._resampler = StreamResampler(self.input_rate_hz, INPUT_SAMPLE_RATE)
        self._buf = InputBuffer(settings.max_input_audio_s * INPUT_SAMPLE_RATE)
        self._endpointer = Endpointer(self._vad_params())
        self._vad_pending: list[np.ndarray] = []
        self._vad_next = 0  # absolute 16 kHz sample of the first pending VAD sample
        self._vad_epoch = 0
        self._speech: tuple[str, int] | None = None  # (item_id, first sample) of the turn being spoken
        self._prefill_offered = 0  # buffer end at the last PrefillTurn (one offer per second of speech)
        self._frames = FrameSampler(settings.image_fps)
        self._camera: CameraTurn | None = None  # frames chosen for the turn being spoken
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
        self._call_items: dict[str, dict[str, Any]] = {}  # function_call item id -> its item object
        self._call_ids: dict[str, str] = {}  # call_id -> function_call item id
        self._out: list[Output] = []
        self._t_created = self._t_activity = clock()
        self._ended = False

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
        self._t_activity = self.clock()
        try:
            event = ev.parse(text, self._default_td)
        except ev.ProtocolError as err:
            self._error(err)
            return self._drain()
        return self.handle(event)

    def handle(self, event: ev.ClientEvent) -> list[Output]:
        handler = getattr(self, self._HANDLERS[type(event)])
        try:
            handler(event)
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

    def check_limits(self) -> list[Output]:
        """Call periodically (the transport's watchdog). Past `max_session_s` since the
        start, or `idle_timeout_s` without a client event, input audio or a response in
        progress, the client gets an `error` (session_expired / idle_timeout) and the
        transport an `EndSession`. OpenAI ends sessions at their maximum duration the same
        way (an error event `session_expired`, then the close). 0 disables a limit."""
        t = self.clock()
        if self._ended:
            return self._drain()
        if self._active is not None:
            self._t_activity = t  # waiting for an answer is not idleness
        s = self.settings
        if s.max_session_s > 0 and t - self._t_created >= s.max_session_s:
            code, message = "session_expired", f"the session reached its maximum duration of {s.max_session_s} s"
        elif s.idle_timeout_s > 0 and t - self._t_activity >= s.idle_timeout_s:
            code, message = "idle_timeout", f"no client event or input audio for {s.idle_timeout_s} s"
        else:
            return self._drain()
        self._ended = True
        self._error(ev.ProtocolError(code, message))
        self._out.append(EndSession(code))
        return self._drain()

    @property
    def responding(self) -> bool:
        """A response is in progress (created, its response.done not yet produced)."""
        return self._active is not None

    def close(self) -> list[Output]:
        """The client is gone: cancel what runs."""
        if self._active is not None and self._active.cancel_reason is None:
            self._active.cancel_reason = "client_disconnected"
            self._out.append(CancelResponse(self._active.id))
        return self._drain()

    # ------------------------------------------------------------------ session config

    def configure(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """Apply a session object as a `session.update` before `start()` (a client secret's
        session, WebRTC's multipart `session` part). Returns the `error` body if it is
        refused (then nothing of it applies); its session.updated is not sent."""
        for out in self.receive_text(ev.dumps({"type": "session.update", "session": config})):
            if isinstance(out, Send) and out.event.get("type") == "error":
                return out.event["error"]
        return None

    def session_json(self) -> dict[str, Any]:
        transcription = self.transcription.to_json() if self.transcription else None
        if self.session_type == "transcription":  # openai RealtimeTranscriptionSessionCreateRequest
            return {
                "type": "transcription",
                "object": "realtime.transcription_session",
                "id": self.id,
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": self.input_rate_hz},
                        "transcription": transcription,
                        "noise_reduction": None,
                        "turn_detection": self.turn_detection.to_json() if self.turn_detection else None,
                    }
                },
                "include": [],
            }
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
                    "transcription": transcription,
                    "noise_reduction": None,
                },
                "output": {
                    "format": {"type": "audio/pcm", "rate": OUTPUT_SAMPLE_RATE},
                    "voice": self.conversation.voice,
                    "speed": 1.0,
                },
            },
            "interpreter": self.interpreter.to_json() if self.interpreter else None,  # this server's extension
            "tools": [tools_mod.tool_json(t) for t in self.conversation.tools],
            "tool_choice": tools_mod.choice_json(self.conversation.tool_choice),
            "parallel_tool_calls": self.conversation.tool_choice.parallel,
            "max_output_tokens": self.max_output_tokens,
            "tracing": None,
            "truncation": "auto",
        }

    def _tools_check(self, patch: ev.SessionPatch):
        """session.tools / tool_choice / parallel_tool_calls: checked together (a named choice must be declared)."""
        if not {"tools", "tool_choice", "parallel_tool_calls"} & patch.fields_set:
            return None
        conv = self.conversation
        tools = tools_mod.parse_tools(patch.tools, "session.tools") if "tools" in patch.fields_set else conv.tools
        choice = tools_mod.resolve_choice(
            conv.tool_choice,
            patch.tool_choice if "tool_choice" in patch.fields_set else None,
            patch.parallel_tool_calls,
            "session.tool_choice",
        )
        tools_mod.check_choice(tools, choice, "session.tool_choice")
        return tools, choice

    def _session_update(self, event: ev.SessionUpdate) -> None:
        patch = event.patch
        tools_set = self._tools_check(patch)  # before any change: a refused update changes nothing
        voice = None
        if patch.voice is not None:
            voice = resolve_voice(patch.voice, "session.audio.output.voice")
        if patch.model is not None and patch.model not in (self.model, self.model.rstrip("/").rsplit("/", 1)[-1]):
            raise ev.ProtocolError(
                "invalid_value",
                f"this server serves one model, {self.model!r}, not {patch.model!r}",
                param="session.model",
            )
        self._check_interpreter(
            patch.interpreter if "interpreter" in patch.fields_set else self.interpreter,
            patch.output_modalities or self.output_modalities,
        )
        if patch.max_output_tokens is not None:
            cap = self.settings.max_answer_tokens
            requested = patch.max_output_tokens
            self.max_output_tokens = cap if requested == "inf" else min(int(requested), cap)
        if "interpreter" in patch.fields_set:
            self.interpreter = patch.interpreter
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
            self._check_audio_output(patch.output_modalities, "session.output_modalities")
            self.output_modalities = patch.output_modalities
        if patch.session_type is not None:
            self.session_type = patch.session_type
            if patch.session_type == "transcription" and "transcription" not in patch.fields_set:
                self.transcription = self.transcription or ev.Transcription(self.model)
        if "transcription" in patch.fields_set:
            self.transcription = patch.transcription
        if voice is not None:
            self._edit(lambda: setattr(self.conversation, "voice", voice))
        if patch.instructions is not None:
            instructions = patch.instructions
            self._edit(lambda: setattr(self.conversation, "instructions", instructions))
        if tools_set is not None:
            conv = self.conversation
            self._edit(lambda: (setattr(conv, "tools", tools_set[0]), setattr(conv, "tool_choice", tools_set[1])))
        view = self.session_json()
        if tools_set is not None:
            view["tools"] = [tools_mod.tool_json(t) for t in tools_set[0]]
            view["tool_choice"] = tools_mod.choice_json(tools_set[1])
            view["parallel_tool_calls"] = tools_set[1].parallel
        if self.session_type == "realtime":
            view["audio"]["output"]["voice"] = voice or view["audio"]["output"]["voice"]
        if patch.instructions is not None and self.session_type == "realtime":
            view["instructions"] = patch.instructions
        self._send("session.updated", session=view)

    def _check_audio_output(self, modalities: tuple[str, ...], param: str) -> None:
        if "audio" in modalities and not self.audio_output:
            raise ev.ProtocolError(
                "invalid_value",
                f"the loaded checkpoint {self.model} is thinker-only (no talker): it cannot produce audio; "
                "use output_modalities ['text']",
                param=param,
            )

    # client event class -> handler method (the handlers live here and in the mixins)
    _HANDLERS: dict[type, str] = {
        ev.SessionUpdate: "_session_update",
        ev.AudioAppend: "_audio_append",
        ev.AudioCommit: "_audio_commit",
        ev.AudioClear: "_audio_clear",
        ev.ImageAppend: "_image_append",
        ev.ItemCreate: "_item_create",
        ev.ItemRetrieve: "_item_retrieve",
        ev.ItemDelete: "_item_delete",
        ev.ItemTruncate: "_item_truncate",
        ev.ResponseCreate: "_response_create",
        ev.ResponseCancel: "_response_cancel",
        ev.OutputAudioClear: "_output_audio_clear",
    }
