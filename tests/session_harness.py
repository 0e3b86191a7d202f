"""A `RealtimeSession` driven with plain events (no I/O, no engine), and the record of
what it produced: the harness of test_realtime_session*.py and the other session tests.

Engine events are the engine API's own dataclasses (TextDelta, AudioChunk, ResponseDone)
built by hand; VAD results are plain probability arrays. Every server event the session
emits is checked against the `openai` package's typed models (the spec's oracle).
"""

from __future__ import annotations

import base64
import io
import json
import typing

import numpy as np
from openai.types.realtime import realtime_server_event as rse
from PIL import Image

from assistant.engine.api import AudioChunk, ResponseDone, ResponseStats, Turn
from assistant.realtime import session as s
from assistant.realtime.events import BETA_NAMES
from assistant.realtime.vad import WINDOW_SAMPLES
from assistant.settings import Settings

_MODELS = {
    typing.get_args(c.model_fields["type"].annotation)[0]: c
    for c in typing.get_args(typing.get_args(rse.RealtimeServerEvent)[0])
}


_GA_NAMES = {beta: ga for ga, beta in BETA_NAMES.items()}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Harness:
    """A session plus the record of everything it produced."""

    def __init__(self, transport: str = "websocket", **settings) -> None:
        self.clock = Clock()
        self.session = s.RealtimeSession(Settings(**settings), transport=transport, model="tiny", clock=self.clock)
        self.events: list[dict] = []
        self.commands: list = []
        self.take(self.session.start())

    def take(self, outputs: list) -> list:
        for out in outputs:
            if isinstance(out, s.Send):
                self.validate(out.event)
                self.events.append(out.event)
                if out.tag is not None:  # the transport wrote it: report back, as adapters do
                    self.take(self.session.sent(out.tag))
            else:
                self.commands.append(out)
        return outputs

    @staticmethod
    def validate(event: dict) -> None:
        data = json.loads(json.dumps(event))
        if data["type"] not in _MODELS:  # a beta spelling: check the shape against the GA model
            data["type"] = _GA_NAMES.get(data["type"], data["type"])
        model = _MODELS.get(data["type"])
        assert model is not None, f"not a spec event: {event['type']}"
        fmt = data.get("session", {}).get("audio", {}).get("input", {}).get("format", {})
        if fmt.get("rate") == 16000:  # our declared extension; the SDK's model allows only 24000
            fmt["rate"] = 24000
        model.model_validate(data)  # strict: raises on a wrong shape

    def send(self, **event) -> list:
        return self.take(self.session.receive_text(json.dumps(event)))

    def types(self, since: int = 0) -> list[str]:
        return [e["type"] for e in self.events[since:]]

    def last(self, type: str) -> dict:
        return next(e for e in reversed(self.events) if e["type"] == type)

    def cmds(self, cls) -> list:
        return [c for c in self.commands if isinstance(c, cls)]

    def append(self, seconds: float, rate: int = 24000, amplitude: float = 0.1) -> None:
        pcm = (np.sin(np.arange(int(seconds * rate)) * 0.05) * amplitude * 32767).astype("<i2").tobytes()
        self.send(type="input_audio_buffer.append", audio=base64.b64encode(pcm).decode())

    def vad(self, probs_per_window) -> None:
        """Score all pending VAD work with the given per-window probability function."""
        while (work := self.session.take_vad_work()) is not None:
            first = work.start_sample // WINDOW_SAMPLES
            n = len(work.samples) // WINDOW_SAMPLES
            probs = np.array([probs_per_window(first + i) for i in range(n)], np.float32)
            self.take(self.session.on_vad(work, probs))

    def engine(self, response_id: str, *events) -> None:
        for e in events:
            if isinstance(e, ResponseDone) and e.turn is not None:  # the engine's contract: it adds its turn
                self.session.conversation.turns.append(e.turn)
            self.take(self.session.on_engine_event(response_id, e))


def done(status="completed", text="", frames=0, t_first_audio=None, turn=True):
    stats = ResponseStats(t_committed=100.0, t_started=100.01, t_first_audio=t_first_audio, t_done=101.0)
    t = (
        Turn("assistant", [], id="item_engine", text=text, frames=frames, token_ids=list(range(frames)))
        if turn
        else None
    )
    return ResponseDone(status, t, stats)


def chunk(ms: int) -> AudioChunk:
    return AudioChunk(b"\x01\x00" * (24 * ms), 0, ms // 80)


def push_to_talk(h: Harness, seconds: float = 0.5) -> s.StartResponse:
    h.send(type="session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    h.append(seconds)
    h.send(type="input_audio_buffer.commit")
    h.send(type="response.create")
    return h.cmds(s.StartResponse)[-1]


def speech_between(first: int, last: int):
    return lambda w: 0.9 if first <= w <= last else 0.05


def png(color, size=(32, 24)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()
