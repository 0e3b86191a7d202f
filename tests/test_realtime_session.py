"""The session and turn state machine, driven with plain events (no I/O, no engine).

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
import pytest
from openai.types.realtime import realtime_server_event as rse
from PIL import Image

from assistant.engine.api import (
    AudioChunk,
    AudioPart,
    ImagePart,
    ResponseDone,
    ResponseStats,
    TextDelta,
    Turn,
    VideoPart,
)
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


# ---------------------------------------------------------------------------- session config


def test_session_created_then_updated_ga_shape():
    h = Harness()
    assert h.types() == ["session.created"]
    created = h.events[0]["session"]
    assert created["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert created["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    h.send(
        type="session.update",
        session={
            "type": "realtime",
            "instructions": "Be brief.",
            "output_modalities": ["text"],
            "audio": {
                "input": {
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 300, "create_response": False}
                },
                "output": {"voice": "chelsie"},
            },
        },
    )
    upd = h.last("session.updated")["session"]
    assert upd["instructions"] == "Be brief."
    assert upd["output_modalities"] == ["text"]
    assert upd["audio"]["output"]["voice"] == "Chelsie"
    td = upd["audio"]["input"]["turn_detection"]
    assert td["silence_duration_ms"] == 300 and td["create_response"] is False and td["threshold"] == 0.5
    assert h.session.conversation.instructions == "Be brief."


def test_session_update_16khz_and_null_turn_detection():
    h = Harness()
    h.take(
        h.session.receive_text(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}},
                    },
                }
            )
        )
    )
    assert h.session.input_rate_hz == 16000 and h.session.vad_enabled is False
    h.append(0.5, rate=16000)
    assert h.session.take_vad_work() is None  # manual turns: no VAD work at all


def test_beta_flat_session_shape_switches_to_beta_names():
    h = Harness()
    h.send(
        type="session.update",
        session={
            "modalities": ["text", "audio"],
            "voice": "Aiden",
            "input_audio_format": "pcm16",
            "turn_detection": None,
        },
    )
    assert h.session.enc.beta and h.session.conversation.voice == "Aiden" and not h.session.vad_enabled
    h.append(0.3)
    h.send(type="input_audio_buffer.commit")
    assert "conversation.item.created" in h.types()  # beta spelling of conversation.item.added
    h.send(type="response.create")
    rid = h.cmds(s.StartResponse)[-1].response_id
    h.engine(rid, TextDelta("Hi", 1), chunk(80))
    assert {"response.audio_transcript.delta", "response.audio.delta"} <= set(h.types())


def test_invalid_session_update_changes_nothing():
    h = Harness()
    h.send(type="session.update", event_id="e1", session={"type": "realtime", "audio": {"output": {"voice": "alloy"}}})
    err = h.last("error")["error"]
    assert err["code"] == "invalid_value" and err["event_id"] == "e1" and err["param"] == "session.audio.output.voice"
    h.send(
        type="session.update",
        session={"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}}},
    )
    assert h.last("error")["error"]["code"] == "unsupported_audio_format"
    assert h.session.input_rate_hz == 24000 and h.session.conversation.voice == "Ethan"


# ---------------------------------------------------------------------------- push-to-talk and responses


def test_push_to_talk_full_event_sequence():
    h = Harness()
    start = push_to_talk(h)
    assert start.audio and start.conversation is h.session.conversation
    user = h.session.conversation.turns[-1]
    assert user.role == "user" and isinstance(user.parts[0], AudioPart)
    assert abs(user.parts[0].duration_s - 0.5) < 0.02  # resampled 24 kHz -> 16 kHz, no audio lost
    n = len(h.events)
    h.clock.t += 0.2
    h.engine(start.response_id, TextDelta("Hel", 1), chunk(80), TextDelta("lo", 2), chunk(160))
    h.engine(start.response_id, done(text="Hello", frames=3, t_first_audio=100.15))
    assert h.types(n) == [
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    order = h.types()
    assert (
        order.index("input_audio_buffer.committed")
        < order.index("response.created")
        < order.index("response.output_item.added")
        < order.index("response.content_part.added")
    )
    final = h.last("response.done")
    assert final["response"]["status"] == "completed"
    assert final["response"]["output"][0]["content"][0]["transcript"] == "Hello"
    lat = final["latency"]
    assert lat["audio_ttfp_ms"] == pytest.approx(200.0)  # commit at t=100.0, first packet written at 100.2
    assert set(lat["stages_ms"]) >= {"queue", "preprocessing", "thinker_ttft", "talker_ttft", "codec"}
    item_id = final["response"]["output"][0]["id"]
    assert h.session.conversation.turns[-1].id == item_id  # the engine's turn carries the client's item id
    metrics = h.cmds(s.ResponseMetrics)
    assert metrics and metrics[-1].status == "completed"


def test_commit_too_small_and_active_response_errors():
    h = Harness()
    h.send(type="session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    h.append(0.05)
    h.send(type="input_audio_buffer.commit", event_id="c1")
    assert h.last("error")["error"]["code"] == "input_audio_buffer_commit_empty"
    h.send(type="response.create")
    h.send(type="response.create", event_id="r2")
    err = h.last("error")["error"]
    assert err["code"] == "conversation_already_has_active_response" and err["event_id"] == "r2"
    assert len(h.cmds(s.StartResponse)) == 1


def test_cancel_stops_deltas_and_reports_cancelled():
    h = Harness()
    start = push_to_talk(h)
    h.engine(start.response_id, chunk(80))
    h.send(type="response.cancel")
    assert h.cmds(s.CancelResponse)[-1].response_id == start.response_id
    n = len(h.events)
    h.engine(start.response_id, TextDelta("late", 3), chunk(80))
    assert h.types(n) == []  # nothing after the cancel reaches the client
    h.engine(start.response_id, done("cancelled", text="x", frames=1))
    final = h.last("response.done")["response"]
    assert final["status"] == "cancelled" and final["status_details"]["reason"] == "client_cancelled"
    h.send(type="response.cancel", event_id="c2")
    assert h.last("error")["error"]["code"] == "response_cancel_not_active"


def test_engine_failure_ends_only_that_response():
    h = Harness()
    start = push_to_talk(h)
    from assistant.engine.api import EngineError

    failed = ResponseDone("failed", None, ResponseStats(t_done=100.5), EngineError("out_of_memory", "CUDA OOM"))
    h.engine(start.response_id, failed)
    assert h.last("error")["error"]["code"] == "out_of_memory"
    assert h.last("response.done")["response"]["status"] == "failed"
    h.send(type="response.create")  # the session keeps working
    assert len(h.cmds(s.StartResponse)) == 2


def test_text_modality_response():
    h = Harness()
    h.send(
        type="conversation.item.create",
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    )
    h.send(
        type="response.create",
        response={"output_modalities": ["text"], "instructions": "Only text.", "max_output_tokens": 5},
    )
    start = h.cmds(s.StartResponse)[-1]
    assert not start.audio
    assert h.session.conversation.instructions == "Only text." and h.session.conversation.sampling.max_tokens == 5
    h.engine(start.response_id, TextDelta("ok", 1), done(text="ok"))
    assert "response.output_text.delta" in h.types() and h.last("response.output_text.done")["text"] == "ok"
    assert h.session.conversation.instructions == "" and h.session.conversation.sampling.max_tokens == 256


# ---------------------------------------------------------------------------- server VAD


def speech_between(first: int, last: int):
    return lambda w: 0.9 if first <= w <= last else 0.05


def test_server_vad_turn_creates_response():
    h = Harness()
    h.append(3.0)  # 3 s of audio = 93 windows at 16 kHz
    h.vad(speech_between(20, 50))  # speech from 640 ms to 1632 ms
    t = h.types()
    assert t[1:5] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
    ]
    started, stopped = h.last("input_audio_buffer.speech_started"), h.last("input_audio_buffer.speech_stopped")
    assert started["audio_start_ms"] == 640 - 300  # prefix padding included
    assert stopped["audio_end_ms"] >= 1632 + 500  # the silence wait included
    assert started["item_id"] == stopped["item_id"] == h.last("input_audio_buffer.committed")["item_id"]
    user = h.session.conversation.turns[-1]
    expected_s = (stopped["audio_end_ms"] - started["audio_start_ms"]) / 1000
    assert abs(user.parts[-1].duration_s - expected_s) < 0.01
    assert len(h.cmds(s.StartResponse)) == 1  # create_response defaults to true


def test_vad_keeps_only_prefix_between_turns():
    h = Harness()
    h.append(5.0)
    h.vad(lambda w: 0.0)
    assert h.session._buf.duration_ms <= 300 + 40  # silence trimmed to the prefix padding (chunk granularity)


def test_barge_in_cancels_and_truncate_is_clamped_and_deferred():
    h = Harness(echo_guard_ms=0)
    h.append(2.0)
    h.vad(speech_between(5, 20))
    start = h.cmds(s.StartResponse)[-1]
    h.engine(start.response_id, TextDelta("one", 1), chunk(80), TextDelta("two", 2), chunk(160))  # 240 ms sent
    h.append(1.0)
    h.vad(speech_between(70, 90))  # the user talks over the answer
    assert h.cmds(s.CancelResponse)[-1].response_id == start.response_id
    item_id = h.last("response.output_item.added")["item"]["id"]
    # The client heard more than it got (jitter buffer maths): clamp to 240 ms sent.
    h.send(type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=5000)
    assert h.last("conversation.item.truncated")["audio_end_ms"] == 240
    assert h.cmds(s.TruncateTurn) == []  # the response still runs: the edit waits
    h.engine(start.response_id, done("cancelled", text="one two three", frames=5))
    assert h.cmds(s.TruncateTurn) == [s.TruncateTurn(item_id, 240)]
    assert h.last("response.done")["response"]["status_details"]["reason"] == "turn_detected"


def test_interrupt_response_false_queues_the_next_turn():
    h = Harness()
    h.send(
        type="session.update",
        session={
            "type": "realtime",
            "audio": {"input": {"turn_detection": {"type": "server_vad", "interrupt_response": False}}},
        },
    )
    h.append(4.0)
    h.vad(speech_between(5, 20))
    first = h.cmds(s.StartResponse)[-1]
    turns_before = len(h.session.conversation.turns)
    h.append(2.0)
    h.vad(speech_between(130, 150))
    assert h.cmds(s.CancelResponse) == [] and len(h.cmds(s.StartResponse)) == 1
    assert len(h.session.conversation.turns) == turns_before  # the new user turn waits for the response
    h.engine(first.response_id, done(text="a", frames=1))
    assert len(h.cmds(s.StartResponse)) == 2
    roles = [t.role for t in h.session.conversation.turns]
    assert roles == ["user", "assistant", "user"]


def test_echo_guard_ignores_speech_right_after_first_audio():
    h = Harness(echo_guard_ms=500)
    h.append(2.0)
    h.vad(speech_between(5, 20))
    start = h.cmds(s.StartResponse)[-1]
    h.engine(start.response_id, chunk(80))  # first packet written at t=100.0: guard until 100.5
    h.append(0.5)
    n = len(h.events)
    h.vad(lambda w: 0.9)  # loud "speech" (the echo) during the guard
    assert "input_audio_buffer.speech_started" not in h.types(n) and h.cmds(s.CancelResponse) == []
    h.clock.t += 0.6
    h.append(0.2)
    h.vad(lambda w: 0.9)  # still talking after the guard: now it is a barge-in
    assert "input_audio_buffer.speech_started" in h.types(n) and h.cmds(s.CancelResponse)


def test_clear_discards_in_flight_vad_work():
    h = Harness()
    h.append(1.0)
    work = h.session.take_vad_work()
    h.send(type="input_audio_buffer.clear")
    assert h.last("input_audio_buffer.cleared")
    n = len(h.events)
    h.take(h.session.on_vad(work, np.full(len(work.samples) // WINDOW_SAMPLES, 0.9, np.float32)))
    assert h.types(n) == []


def test_input_buffer_limit():
    h = Harness(max_input_audio_s=1)
    h.send(type="session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    h.append(0.8)
    h.append(0.8)
    assert h.last("error")["error"]["code"] == "input_audio_buffer_full"
    assert h.session._buf.duration_ms == pytest.approx(800, abs=50)  # minus the resampler's delay


# ---------------------------------------------------------------------------- items


def test_item_create_retrieve_delete_and_ordering():
    h = Harness()
    text_item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]}
    h.send(type="conversation.item.create", item={**text_item, "id": "u1"})
    h.send(
        type="conversation.item.create",
        item={"type": "message", "role": "system", "content": [{"type": "input_text", "text": "sys"}]},
        previous_item_id="root",
    )
    h.send(
        type="conversation.item.create",
        item={"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
    )
    assert [t.role for t in h.session.conversation.turns] == ["system", "user", "assistant"]
    h.send(type="conversation.item.retrieve", item_id="u1")
    assert h.last("conversation.item.retrieved")["item"]["content"][0]["text"] == "first"
    h.send(type="conversation.item.create", item={**text_item, "id": "u1"})
    assert h.last("error")["error"]["code"] == "item_already_exists"
    h.send(type="conversation.item.delete", item_id="u1")
    assert h.last("conversation.item.deleted")["item_id"] == "u1"
    assert [t.role for t in h.session.conversation.turns] == ["system", "assistant"]
    h.send(type="conversation.item.retrieve", item_id="u1", event_id="q")
    assert h.last("error")["error"] == {
        "type": "invalid_request_error",
        "code": "item_not_found",
        "message": "no item 'u1'",
        "param": "item_id",
        "event_id": "q",
    }


def test_input_audio_item_and_retrieve_returns_audio():
    h = Harness()
    pcm = (np.ones(2400) * 1000).astype("<i2").tobytes()
    h.send(
        type="conversation.item.create",
        item={
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": base64.b64encode(pcm).decode()}],
        },
    )
    item_id = h.last("conversation.item.added")["item"]["id"]
    part = h.session.conversation.turns[-1].parts[0]
    assert isinstance(part, AudioPart) and part.sample_rate == 16000 and len(part.pcm) == 1600
    h.send(type="conversation.item.retrieve", item_id=item_id)
    audio = base64.b64decode(h.last("conversation.item.retrieved")["item"]["content"][0]["audio"])
    assert abs(len(audio) // 2 - 2400) <= 2


def test_max_conversation_items_drops_oldest():
    h = Harness(max_conversation_items=2)
    for i in range(3):
        h.send(
            type="conversation.item.create",
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": str(i)}]},
        )
    assert [t.text_content() for t in h.session.conversation.turns] == ["1", "2"]
    assert h.last("conversation.item.deleted")


def test_truncate_errors():
    h = Harness()
    h.send(
        type="conversation.item.create",
        item={"type": "message", "role": "user", "id": "u", "content": [{"type": "input_text", "text": "x"}]},
    )
    h.send(type="conversation.item.truncate", item_id="u", content_index=0, audio_end_ms=10)
    assert h.last("error")["error"]["code"] == "invalid_value"
    h.send(type="conversation.item.truncate", item_id="nope", content_index=0, audio_end_ms=10)
    assert h.last("error")["error"]["code"] == "item_not_found"


# ---------------------------------------------------------------------------- camera


def png(color, size=(32, 24)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_camera_frames_sampled_and_attached_as_video():
    """input_image_buffer.append between audio appends (a camera streamed over the
    websocket): frames over image_fps (2) are dropped before decoding, and the turn gets
    one kept frame per half second of its audio, in Qwen's interleaved camera layout."""
    h = Harness()
    h.send(type="session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    for i in range(16):  # 8 fps for 2 s, 125 ms of audio after each frame
        h.send(type="input_image_buffer.append", image=png((i * 10, 0, 0)))
        h.clock.t += 0.125
        h.append(0.125)
    h.send(type="input_audio_buffer.commit")
    video, audio = h.session.conversation.turns[-1].parts
    assert isinstance(video, VideoPart) and video.interleave_audio and isinstance(audio, AudioPart)
    assert video.timestamps_s == [0.0, 0.5, 1.0, 1.5]  # 2 s of audio: four half-seconds
    assert [f[0, 0, 0] for f in video.frames] == [0, 40, 80, 120]  # the 1st, 5th, 9th, 13th sent
    h.append(0.3)
    h.send(type="input_image_buffer.append", image=png((0, 255, 0)))
    h.send(type="input_audio_buffer.commit")
    parts = h.session.conversation.turns[-1].parts
    assert isinstance(parts[0], ImagePart) and parts[0].image[0, 0, 1] == 255  # one frame: an image


def test_bad_images_are_errors():
    h = Harness(max_image_pixels=1000)
    h.send(type="input_image_buffer.append", image=png((1, 2, 3), size=(100, 100)), event_id="big")
    err = h.last("error")["error"]
    assert err["code"] == "invalid_image" and err["event_id"] == "big"
    h.clock.t += 1
    h.send(type="input_image_buffer.append", image=base64.b64encode(b"not an image").decode())
    assert h.last("error")["error"]["code"] == "invalid_image"
    url = "data:image/png;base64," + png((1, 2, 3), size=(10, 10))
    h.send(
        type="conversation.item.create",
        item={"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": url}]},
    )
    assert isinstance(h.session.conversation.turns[-1].parts[0], ImagePart)


# ---------------------------------------------------------------------------- WebRTC mode


def test_webrtc_audio_goes_to_playback_and_barge_in_truncates_at_played_position():
    h = Harness(transport="webrtc", echo_guard_ms=0)
    h.take(h.session.append_audio(np.zeros(48000, np.float32), 48000))  # 1 s at 48 kHz
    h.vad(speech_between(3, 10))
    start = h.cmds(s.StartResponse)[-1]
    h.engine(start.response_id, TextDelta("hi", 1), chunk(80), chunk(160))
    assert "response.output_audio.delta" not in h.types()  # audio rides the media track
    assert [len(p.pcm16) for p in h.cmds(s.PlayAudio)] == [3840, 7680]
    h.take(h.session.output_audio_started(start.response_id))
    assert h.last("output_audio_buffer.started")["response_id"] == start.response_id
    h.take(h.session.append_audio(np.zeros(48000, np.float32), 48000))
    h.vad(speech_between(40, 60))
    clear = h.cmds(s.ClearPlayback)[-1]
    assert clear.response_id == start.response_id and h.cmds(s.CancelResponse)
    h.take(h.session.playback_truncated(clear.item_id, 100))
    assert h.last("output_audio_buffer.cleared")["response_id"] == start.response_id
    assert h.last("conversation.item.truncated")["audio_end_ms"] == 100
    h.engine(start.response_id, done("cancelled", text="hi there", frames=3))
    assert h.cmds(s.TruncateTurn)[-1] == s.TruncateTurn(clear.item_id, 100)


def test_output_audio_buffer_clear_is_webrtc_only():
    h = Harness()
    h.send(type="output_audio_buffer.clear")
    assert h.last("error")["error"]["code"] == "unsupported_feature"


def test_close_cancels_active_response():
    h = Harness()
    start = push_to_talk(h)
    out = h.session.close()
    assert out == [s.CancelResponse(start.response_id)]


# ---------------------------------------------------------------------------- limits


def test_idle_timeout_and_max_duration_end_the_session():
    h = Harness(idle_timeout_s=10, max_session_s=60)
    h.clock.t += 9
    assert h.take(h.session.check_limits()) == []
    h.send(type="session.update", session={"type": "realtime", "instructions": "x"})  # activity
    h.clock.t += 9
    assert h.take(h.session.check_limits()) == []
    start = push_to_talk(h)  # a response in progress is not idleness
    h.clock.t += 30
    assert h.take(h.session.check_limits()) == []
    h.engine(start.response_id, done())
    h.clock.t += 10
    h.take(h.session.check_limits())
    assert h.last("error")["error"]["code"] == "idle_timeout"
    assert h.cmds(s.EndSession) == [s.EndSession("idle_timeout")]
    assert h.take(h.session.check_limits()) == []  # said once

    h = Harness(idle_timeout_s=10, max_session_s=60)
    for _ in range(7):  # busy, but past the maximum duration
        h.clock.t += 9
        h.append(0.1)
        h.take(h.session.check_limits())
    assert h.last("error")["error"]["code"] == "session_expired"
    assert h.cmds(s.EndSession) == [s.EndSession("session_expired")]


def test_zero_disables_the_limits():
    h = Harness(idle_timeout_s=0, max_session_s=0)
    h.clock.t += 1e6
    assert h.take(h.session.check_limits()) == []


def test_sampling_follows_settings():
    h = Harness(greedy=True, min_answer_frames=7, max_answer_frames=9, min_answer_tokens=2, max_answer_tokens=3)
    sampling = h.session.conversation.sampling
    assert (sampling.greedy, sampling.min_frames, sampling.max_frames) == (True, 7, 9)
    assert (sampling.min_tokens, sampling.max_tokens) == (2, 3)


def test_turn_being_spoken_is_offered_to_the_engine_for_early_prefill():
    """About once a second of speech the session hands the engine the turn so far
    (PrefillTurn), starting where the commit will take it from; the committed turn then
    holds the same audio, extended."""
    h = Harness()
    h.send(type="session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    for _ in range(25):  # 2.5 s in 100 ms appends
        h.append(0.1)
    offers = h.cmds(s.PrefillTurn)
    durations = [o.parts[0].duration_s for o in offers]  # the 24 -> 16 kHz resampler holds a few ms back
    assert len(durations) == 2 and 1.0 <= durations[0] < 1.15 and 2.0 <= durations[1] < 2.15, durations
    assert all(o.conversation is h.session.conversation for o in offers)
    h.send(type="input_audio_buffer.commit")
    committed = h.session.conversation.turns[-1].parts[-1].pcm
    assert np.array_equal(committed[: len(offers[-1].parts[0].pcm)], offers[-1].parts[0].pcm)
    assert len(h.cmds(s.PrefillTurn)) == 2  # nothing is offered between turns
