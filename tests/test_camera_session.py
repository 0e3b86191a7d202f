"""The session's camera turns, on plain data (no engine): one frame per half second of
the turn's audio, chosen by the audio position each frame arrived at, never changed once
chosen, and the same frames in every prefill offer and in the committed turn."""

from __future__ import annotations

import numpy as np
from session_harness import Harness, speech_between

from assistant.engine.api import AudioPart, ImagePart, VideoPart
from assistant.realtime import session as s
from assistant.realtime.camera import CameraTurn, turn_parts
from assistant.realtime.images import FrameSampler

RATE = 16_000  # appended at the input rate: no resampler delay, so positions are exact
CHUNK = 1600  # 100 ms


def frame(n: int) -> np.ndarray:
    """A tiny frame whose first pixel says which it is."""
    img = np.zeros((4, 6, 3), np.uint8)
    img[0, 0] = (n % 256, n // 256, 7)
    return img


def label(img: np.ndarray) -> int:
    return int(img[0, 0, 0]) + 256 * int(img[0, 0, 1])


def manual(**settings) -> Harness:
    h = Harness(image_fps=0, **settings)  # image_fps=0: every frame is kept, so choices are exact
    h.send(type="session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    return h


def audio(h: Harness, chunks: int = 1) -> None:
    h.take(h.session.append_audio(np.full(CHUNK * chunks, 0.01, np.float32), RATE))


def camera(h: Harness, n: int) -> None:
    h.take(h.session.append_frame(frame(n)))


def committed(h: Harness) -> list:
    h.send(type="input_audio_buffer.commit")
    return h.session.conversation.turns[-1].parts


def test_each_half_second_shows_the_latest_frame_at_its_start():
    """Frames arrive at 100 ms steps of audio with a jittery camera (gaps, bursts); the
    frame of half-second k is the latest that arrived at or before 8000 k samples."""
    h = manual()
    arrivals = []  # (audio position, label)
    pattern = [1, 0, 2, 1, 0, 0, 3, 1, 1, 0, 1, 2, 0, 1, 1, 1, 0, 0, 0, 1, 1, 2, 1, 0, 1, 1, 1, 0]
    n = 0
    for step, burst in enumerate(pattern):
        for _ in range(burst):
            n += 1
            camera(h, n)
            arrivals.append((step * CHUNK, n))
        audio(h)
    parts = committed(h)
    assert [type(p) for p in parts] == [VideoPart, AudioPart]
    video = parts[0]
    assert video.interleave_audio and video.timestamps_s == [k / 2 for k in range(len(video.frames))]
    samples = len(parts[1].pcm)
    assert samples == len(pattern) * CHUNK and len(video.frames) == -(-samples // 8000)
    expected = [max(lab for pos, lab in arrivals if pos <= 8000 * k) for k in range(len(video.frames))]
    assert [label(f) for f in video.frames] == expected


def test_choices_never_change_and_offers_carry_the_committed_frames():
    """Every offer's frames are the committed frames' head, as the same objects; frames
    that arrive later (a burst at the end) change nothing already chosen."""
    h = manual()
    n = 0
    for step in range(45):  # 4.5 s, a frame every 300 ms
        if step % 3 == 0:
            n += 1
            camera(h, n)
        audio(h)
    for _ in range(5):  # a burst after the last audio: no half-second starts after it
        n += 1
        camera(h, n)
    offers = [o.parts for o in h.cmds(s.PrefillTurn)]
    assert len(offers) == 4 and all([type(p) for p in o] == [VideoPart, AudioPart] for o in offers)
    parts = committed(h)
    final = parts[0].frames
    assert len(final) == 9 and label(final[-1]) == 14  # the burst came after 4.0 s: the 4.0 s frame stays
    for offer in offers:
        video, spoken = offer
        assert len(video.frames) == -(-len(spoken.pcm) // 8000)  # one per started half-second so far
        assert all(a is b for a, b in zip(video.frames, final, strict=False))
        assert video.timestamps_s == parts[0].timestamps_s[: len(video.frames)]
        assert np.array_equal(spoken.pcm, parts[1].pcm[: len(spoken.pcm)])


def test_video_covers_at_most_max_camera_turn_s_then_audio_only():
    h = manual(max_camera_turn_s=2)
    for step in range(50):  # 5 s of camera and microphone
        camera(h, step + 1)
        audio(h)
    video, spoken = committed(h)
    assert len(spoken.pcm) == 5 * RATE  # all the audio
    assert [label(f) for f in video.frames] == [1, 6, 11, 16]  # 2 s at 2 fps, then no more grids
    assert video.complete  # no frame will be added: the engine may prefill past the last grid


def test_a_video_is_complete_only_once_its_last_half_second_has_started():
    turn = CameraTurn(start=0, max_camera_turn_s=1)  # two half-seconds
    frames = FrameSampler(fps=0)
    frames.add(0.0, 0, frame(1))
    frames.add(0.0, 8000, frame(2))
    turn.advance(frames, 8000)  # the second half-second has not started yet
    video = turn_parts(turn, np.zeros(8000, np.float32))[0]
    assert isinstance(video, ImagePart) or not video.complete
    turn.advance(frames, 8001)
    video = turn_parts(turn, np.zeros(8001, np.float32))[0]
    assert [label(f) for f in video.frames] == [1, 2] and video.complete


def test_a_camera_that_starts_late_fills_the_early_half_seconds_with_its_first_frame():
    h = manual()
    audio(h, 12)  # 1.2 s before the camera's first frame
    for step in range(8):
        camera(h, 100 + step)
        audio(h, 1)
    video, spoken = committed(h)
    assert len(spoken.pcm) == 2 * RATE
    assert [label(f) for f in video.frames] == [100, 100, 100, 103]


def test_a_camera_that_starts_past_the_cap_gives_an_audio_only_turn():
    h = manual(max_camera_turn_s=1)
    audio(h, 15)
    camera(h, 1)
    audio(h, 5)
    assert [type(p) for p in committed(h)] == [AudioPart]


def test_one_still_image_then_speech_is_an_image_turn_and_no_camera_is_audio_only():
    h = manual()
    camera(h, 5)  # sent before the audio, nothing during it: a photo
    audio(h, 25)
    parts = committed(h)
    assert [type(p) for p in parts] == [ImagePart, AudioPart] and label(parts[0].image) == 5
    assert all([type(p) for p in o.parts] == [ImagePart, AudioPart] for o in h.cmds(s.PrefillTurn))
    # The photo went with that turn (as a message would): the next one is audio only,
    # as is every turn of a session that never sent a frame.
    audio(h, 3)
    assert [type(p) for p in committed(h)] == [AudioPart]
    h = manual()
    audio(h, 25)
    assert [type(p) for p in committed(h)] == [AudioPart]
    assert all([type(p) for p in o.parts] == [AudioPart] for o in h.cmds(s.PrefillTurn))


def test_vad_turn_starts_with_frames_held_from_before_the_speech():
    """Server VAD: the turn starts at audio_start (prefix padding included), found after
    the fact; the frames the sampler holds from before that fill its first half-seconds,
    and offers and the commit agree."""
    h = Harness(image_fps=0, vad_prefix_padding_ms=300)
    n = 0
    for step in range(40):  # 4 s; a frame every 200 ms
        if step % 2 == 0:
            n += 1
            camera(h, n)
        audio(h)
        h.vad(speech_between(16, 94))  # speech 0.512 s .. ~3 s (32 ms windows)
    start = 16 * 512 - 300 * 16  # audio_start with the padding: 3392 samples
    turn = h.session.conversation.turns[-1]
    video, spoken = turn.parts
    assert isinstance(video, VideoPart) and isinstance(spoken, AudioPart)
    arrivals = [(2 * i * CHUNK, i + 1) for i in range(20)]
    expected = [max(lab for pos, lab in arrivals if pos <= start + 8000 * k) for k in range(len(video.frames))]
    assert [label(f) for f in video.frames] == expected
    assert len(video.frames) == -(-len(spoken.pcm) // 8000)
    offers = [o.parts for o in h.cmds(s.PrefillTurn)]
    assert offers and all(isinstance(o[0], VideoPart) for o in offers)
    for offer in offers:
        assert all(a is b for a, b in zip(offer[0].frames, video.frames, strict=False))


def test_camera_turn_plain_data():
    """CameraTurn on its own: a choice stays once made, even if the sampler later drops the
    frame (history trimming) or newer frames arrive."""
    frames = FrameSampler(fps=0)
    frames.add(0.0, 0, frame(1))
    turn = CameraTurn(start=0, max_camera_turn_s=10)
    turn.advance(frames, 8001)  # points 0 and 8000 passed
    assert [label(f.image) for f in turn.frames(8001)] == [1, 1]
    frames.add(0.0, 8001, frame(2))
    frames.add(0.0, 8001 + 20 * RATE, frame(3))  # trims frame 1 from the history
    turn.advance(frames, 16001)
    assert [label(f.image) for f in turn.frames(16001)] == [1, 1, 2]
    parts = turn_parts(turn, np.zeros(16001, np.float32))
    assert isinstance(parts[0], VideoPart) and len(parts[0].frames) == 3


def test_oldest_camera_turns_lose_their_frames_past_the_budget():
    """Past `max_conversation_video_frames` the oldest camera turns keep only their audio,
    until half the budget is left; items and audio stay, and the newest turn keeps its video."""
    h = manual(max_conversation_video_frames=8)
    ids = []
    for turn in range(3):
        for step in range(20):  # 2 s of audio, a frame every 500 ms: 4 frames
            if step % 5 == 0:
                camera(h, 10 * turn + step)
            audio(h)
        parts = committed(h)
        assert [type(p) for p in parts] == [VideoPart, AudioPart] and len(parts[0].frames) == 4
        ids.append(h.session.conversation.turns[-1].id)
        kept = [[type(p) for p in t.parts] for t in h.session.conversation.turns]
        if turn < 2:  # 4, then 8 frames: within the budget
            assert all(k == [VideoPart, AudioPart] for k in kept)
    turns = h.session.conversation.turns
    assert [t.id for t in turns] == ids
    # 12 > 8: the two oldest lose their 4 frames each, leaving 4 (<= half the budget).
    assert [[type(p) for p in t.parts] for t in turns] == [[AudioPart], [AudioPart], [VideoPart, AudioPart]]
    assert all(len(t.parts[-1].pcm) == 20 * CHUNK for t in turns)
    assert not any(e["type"] == "conversation.item.deleted" for e in h.events)
