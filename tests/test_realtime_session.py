"""The session and turn state machine, driven with plain events (session_harness.py):
session configuration, push-to-talk and responses, server VAD and barge-in. Items, camera
frames, WebRTC mode and limits: test_realtime_session_items.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from session_harness import Harness, chunk, done, push_to_talk, speech_between

from assistant.engine.api import AudioPart, ResponseDone, ResponseStats, TextDelta
from assistant.realtime import session as s
from assistant.realtime.vad import WINDOW_SAMPLES

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
