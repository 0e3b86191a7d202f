"""The session and turn state machine, driven with plain events (session_harness.py):
conversation items, camera frames, WebRTC mode (server-side playback), session limits and
what the session offers the engine. Configuration, responses and VAD: test_realtime_session.py.
"""

from __future__ import annotations

import base64

import numpy as np
from session_harness import Harness, chunk, done, png, push_to_talk, speech_between

from assistant.engine.api import AudioPart, ImagePart, TextDelta, VideoPart
from assistant.realtime import session as s

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
