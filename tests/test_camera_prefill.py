"""Incremental prefill of camera+microphone turns equals the offline path with the same window.

While the user speaks to the camera, `LocalEngine.prefill` is offered the turn so far
(frames at 2 fps from the turn's start, audio so far); it cuts it where both the audio
windows and the 2-frame grids are complete, and the partial job prefills the
interleaved layout up to the last audio token. At commit only the tail is prefilled.
Greedy text and codec frames must equal one full prefill of the committed turn.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_dtypes import DEVICE, DTYPES, assert_same_answer, fp32_only
from PIL import Image

from assistant.engine.api import INPUT_SAMPLE_RATE, AudioPart, Conversation, Sampling, TextPart, VideoPart
from assistant.engine.local import LocalEngine, load_resident
from assistant.engine.stream import StreamJob
from assistant.settings import from_sources

WINDOW_S = 2
SAMPLING = Sampling(greedy=True, min_tokens=4, max_tokens=6, min_frames=6, max_frames=6)


@pytest.fixture(scope="module", params=DTYPES)
def engine(tiny_dir, request):
    resident = load_resident(str(tiny_dir), DEVICE, request.param, "sdpa", audio_window_s=WINDOW_S)
    settings = from_sources(env={}, model=str(tiny_dir), warmup=False, audio_window_s=WINDOW_S)
    return LocalEngine(settings, resident)  # worker not started: the test runs its jobs itself


def camera(fixtures_dir, count: int) -> list[np.ndarray]:
    """`count` frames at 2 fps: the fixture's 6 camera-like frames, cycled."""
    paths = sorted((fixtures_dir / "frames").glob("*.png"))
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return [images[i % len(images)] for i in range(count)]


def run(job):
    events = []
    while not job.done:
        events += job.step()
    return events


def drain(engine) -> int:
    """Run the prefill jobs the engine queued (what its worker would do); tokens prefilled."""
    tokens = 0
    while not engine.worker.pending.empty():
        job, _ = engine.worker.pending.get_nowait()
        run(job)
        tokens += job.stats.prefill_tokens or 0
    return tokens


def answer(engine, conv, cache):
    job = StreamJob(engine.resident, conv, cache=cache)
    events = run(job)
    assert events[-1].status == "completed", events[-1]
    return job, torch.stack(job._vocoder.frames, -1)


def live_turn(frames, pcm, lag_s=0.0, end_s=None) -> list:
    """The turn as the session offers it at `end_s` (default: the commit): audio so far,
    and the frames of every 2 fps slot the camera has delivered (it may lag)."""
    end_s = len(pcm) / INPUT_SAMPLE_RATE if end_s is None else end_s
    seen = [i for i in range(len(frames)) if i / 2 + lag_s <= end_s or end_s * INPUT_SAMPLE_RATE >= len(pcm)]
    video = VideoPart([frames[i] for i in seen], [i / 2 for i in seen], interleave_audio=True)
    parts = [video] if seen else []
    return [*parts, AudioPart(pcm[: int(end_s * INPUT_SAMPLE_RATE)], INPUT_SAMPLE_RATE)]


@pytest.mark.parametrize(
    ("clip", "lag_s"),
    [("describe_en_scotland.wav", 0.0), ("long_10s_en_us.wav", 1.0)],  # ~3 s, and ~10 s with a camera 1 s late
)
def test_camera_turn_prefilled_while_spoken_equals_offline(engine, load_wav, fixtures_dir, clip, lag_s):
    pcm = load_wav(clip)
    duration_s = len(pcm) / INPUT_SAMPLE_RATE
    frames = camera(fixtures_dir, 2 * int(np.ceil(duration_s)))
    streamed, offline = Conversation(sampling=SAMPLING), Conversation(sampling=SAMPLING)
    for conv in (streamed, offline):
        conv.add_user([TextPart("Hello there.")])
        conv.add_assistant_text("Hi.")
    engine.conv_cache.forget(offline.id)  # the offline conversation never uses the cache

    offered = 0
    for step in range(1, int(duration_s / 0.5) + 1):  # the session offers the turn so far every 0.5 s
        engine.prefill(streamed, live_turn(frames, pcm, lag_s, step * 0.5))
        offered += drain(engine)
    cached = engine.conv_cache._entries.get(streamed.id)
    assert cached is not None and cached.window_aligned, "the camera turn's head was not prefilled"

    for conv in (streamed, offline):
        conv.add_user(live_turn(frames, pcm))
    job_s, codes_s = answer(engine, streamed, engine.conv_cache)
    job_o, codes_o = answer(engine, offline, None)
    assert_same_answer(job_s, codes_s, job_o, codes_o)
    after, total = job_s.stats.prefill_tokens, job_o.stats.prefill_tokens
    talker_after, talker_total = job_s.stats.talker_prefill_tokens, job_o.stats.talker_prefill_tokens
    print(
        f"{clip}: {duration_s:.1f} s camera turn ({len(frames)} frames, camera {lag_s:g} s late): "
        f"{offered} tokens prefilled while spoken, {after} after commit vs {total} offline; "
        f"talker {talker_after} vs {talker_total}"
    )
    # The talker's user part was prefilled with the thinker's: at commit, the tail and the 9-position prefix.
    assert talker_after <= after + 9 and talker_after < talker_total / 2
    # After the commit: at most one window of audio and its grids, plus the closing tokens.
    per_grid = job_o._t["video_grid_thw"][0, 1:].prod().item() // 4
    assert after <= WINDOW_S * (13 + per_grid) + 12
    assert after < total / 2


@fp32_only("engine")
def test_prefill_waits_for_the_grids_of_a_window(engine, load_wav, fixtures_dir):
    """With 2 s of audio but only one grid, nothing is final in the interleaved layout
    (grid 1 precedes the audio of second 1): the engine offers nothing."""
    conv = Conversation(sampling=SAMPLING)
    pcm = load_wav("describe_en_scotland.wav")[: 2 * INPUT_SAMPLE_RATE]
    frames = camera(fixtures_dir, 2)
    assert not engine.prefill(conv, [VideoPart(frames, [0.0, 0.5], interleave_audio=True), AudioPart(pcm)])
    assert engine.prefill(conv, [VideoPart(camera(fixtures_dir, 4), [0.0, 0.5, 1.0, 1.5], True), AudioPart(pcm)])
    job, _ = engine.worker.pending.get_nowait()
    assert [type(p) for p in job.conv.turns[-1].parts] == [VideoPart, AudioPart]
    assert len(job.conv.turns[-1].parts[0].frames) == 4 and len(job.conv.turns[-1].parts[1].pcm) == len(pcm)


@fp32_only("engine")
def test_session_offers_and_commit_reuse_the_camera_prefill(engine, load_wav, fixtures_dir):
    """The session core drives the real engine: a still-image turn, then a camera turn
    (camera 1 s late, frames at 4 fps by the session clock, sampled to 2 fps) in 100 ms
    chunks. Its PrefillTurn offers go to `engine.prefill`; after the commit only the tail
    is prefilled, and the answer equals one offline prefill of the same conversation."""
    import json

    from assistant.realtime.commands import PrefillTurn
    from assistant.realtime.session import RealtimeSession

    t = [0.0]
    settings = from_sources(
        env={}, model="tiny", warmup=False, audio_window_s=WINDOW_S, greedy=True, min_answer_tokens=4,
        max_answer_tokens=6, min_answer_frames=6, max_answer_frames=6,
    )  # fmt: skip
    session = RealtimeSession(settings, clock=lambda: t[0])
    session.receive_text(
        '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": null}}}}'
    )
    frames = camera(fixtures_dir, 64)
    offered = 0

    def feed(outputs):
        nonlocal offered
        for out in outputs:
            if isinstance(out, PrefillTurn):
                engine.prefill(out.conversation, out.parts)
                offered += drain(engine)

    # Turn 1: a photo, then speech: an image turn (the engine prefills it whole at the commit).
    feed(session.append_frame(frames[5]))
    feed(session.append_audio(load_wav("hello_en_us.wav"), INPUT_SAMPLE_RATE))
    feed(session.receive_text('{"type": "input_audio_buffer.commit"}'))
    assert [type(p).__name__ for p in session.conversation.turns[-1].parts] == ["ImagePart", "AudioPart"]
    feed(session.receive_text(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi."}]}})))  # fmt: skip
    assert session.conversation.turns[-1].role == "assistant"
    # Turn 2: speech with the camera joining 1 s in.
    pcm = load_wav("long_10s_en_us.wav")
    chunk = INPUT_SAMPLE_RATE // 10
    for i in range(0, len(pcm), chunk):
        if i >= INPUT_SAMPLE_RATE and (i // chunk) % 2 == 0:
            feed(session.append_frame(frames[i // chunk % len(frames)]))
        feed(session.append_audio(pcm[i : i + chunk], INPUT_SAMPLE_RATE))
        t[0] += 0.1
    feed(session.receive_text('{"type": "input_audio_buffer.commit"}'))
    video, spoken = session.conversation.turns[-1].parts
    assert isinstance(video, VideoPart) and video.interleave_audio and len(spoken.pcm) == len(pcm)
    assert len(video.frames) == -(-len(pcm) // (INPUT_SAMPLE_RATE // 2))
    assert offered > 0

    conv = session.conversation
    offline = Conversation(conv.voice, conv.instructions, conv.sampling, list(conv.turns))
    engine.conv_cache.forget(offline.id)
    job_s, codes_s = answer(engine, session.conversation, engine.conv_cache)
    job_o, codes_o = answer(engine, offline, None)
    assert_same_answer(job_s, codes_s, job_o, codes_o)
    after, total = job_s.stats.prefill_tokens, job_o.stats.prefill_tokens
    print(f"session camera turn: {offered} tokens prefilled while spoken, {after} after commit vs {total} offline")
    per_grid = job_o._t["video_grid_thw"][0, 1:].prod().item() // 4
    assert after <= WINDOW_S * (13 + per_grid) + 12
    assert after < total / 4


def _camera_turn(frames: list[np.ndarray], pcm: np.ndarray) -> list:
    return [
        VideoPart(frames, [i / 2 for i in range(len(frames))], interleave_audio=True),
        AudioPart(pcm, INPUT_SAMPLE_RATE),
    ]


@fp32_only("engine")
def test_earlier_videos_are_gridded_without_pixels_and_equal_the_full_path(engine, fixtures_dir, load_wav):
    """Turns after the first prepare earlier camera turns' grids only (no resize and patch
    work); the answer equals a cache-less full prefill, and when the cache stops before an
    earlier video (its frames were replaced) the pixels are made after all."""
    from assistant.engine import inputs as inputs_mod
    from assistant.engine.convcache import ConversationCache

    pcm = load_wav("hello_en_us.wav")
    frames = camera(fixtures_dir, 6)
    cached, plain = Conversation(sampling=SAMPLING), Conversation(sampling=SAMPLING)
    cache = ConversationCache(4)
    for turn in range(3):
        for conv in (cached, plain):
            conv.add_user(_camera_turn(frames[turn:] + frames[:turn], pcm))
        if turn == 2:  # the client replaced the first turn's video with other frames of the same size
            for conv in (cached, plain):
                parts = conv.turns[0].parts
                parts[0] = VideoPart(list(reversed(parts[0].frames)), parts[0].timestamps_s, interleave_audio=True)
        dry = inputs_mod.prepare(engine.resident.processor, cached, pixels_from_turn=len(cached.turns) - 1).tensors
        full = inputs_mod.prepare(engine.resident.processor, cached).tensors
        assert torch.equal(dry["input_ids"], full["input_ids"]) and torch.equal(
            dry["video_grid_thw"], full["video_grid_thw"]
        )
        if turn:
            offset = int(dry["video_pixel_offset"][0])
            assert offset > 0 and torch.equal(dry["pixel_values_videos"], full["pixel_values_videos"][offset:])
        job_c, codes_c = answer(engine, cached, cache)
        job_p, codes_p = answer(engine, plain, None)
        assert_same_answer(job_c, codes_c, job_p, codes_p, what=f"turn {turn + 1}")
        if turn == 1:
            assert job_c.stats.prefill_tokens < 0.6 * job_p.stats.prefill_tokens  # only the new turn (the cache)
        if turn == 2:  # reuse stopped before turn 1's video: it was encoded again, from real pixels
            assert job_c.stats.prefill_tokens == job_p.stats.prefill_tokens


@pytest.mark.parametrize("complete", [True, False])
@fp32_only("engine")
def test_capped_camera_turn_is_prefilled_past_its_last_grid_once_complete(engine, load_wav, fixtures_dir, complete):
    """A 10 s turn whose video stopped at the cap (2 s, 4 frames): once the session marks
    the video complete, early prefill goes on through the audio after its last grid."""
    pcm = load_wav("long_10s_en_us.wav")
    frames = camera(fixtures_dir, 4)

    def turn(end_s: float) -> list:
        n = min(4, 2 * int(np.ceil(end_s)))
        video = VideoPart(frames[:n], [i / 2 for i in range(n)], interleave_audio=True, complete=complete and n == 4)
        return [video, AudioPart(pcm[: int(end_s * INPUT_SAMPLE_RATE)], INPUT_SAMPLE_RATE)]

    streamed, offline = Conversation(sampling=SAMPLING), Conversation(sampling=SAMPLING)
    engine.conv_cache.forget(offline.id)
    for step in range(1, 21):  # offers every 0.5 s
        engine.prefill(streamed, turn(step * 0.5))
        drain(engine)
    for conv in (streamed, offline):
        conv.add_user(turn(len(pcm) / INPUT_SAMPLE_RATE))
    job_s, codes_s = answer(engine, streamed, engine.conv_cache)
    job_o, codes_o = answer(engine, offline, None)
    assert_same_answer(job_s, codes_s, job_o, codes_o)
    if complete:
        assert job_s.stats.prefill_tokens <= 2 * 13 + 12  # at most one window of audio and the closing tokens
    else:
        assert job_s.stats.prefill_tokens > 8 * 12  # stuck after the 2 s the grids cover: 8 s of audio left


@fp32_only("engine")
def test_grids_the_cache_holds_are_not_patched_again(engine, load_wav, fixtures_dir):
    # Offers and the commit re-render the camera turn so far; the grids its cached prefix
    # holds get their tokens but no pixels, and the rows that are computed are exactly the
    # full video's rows after them (what resident.media_after slices for the encoder).
    from assistant.engine import inputs

    processor = engine.resident.processor
    conv = Conversation(sampling=SAMPLING)
    conv.add_user(live_turn(camera(fixtures_dir, 8), load_wav("describe_en_scotland.wav")))
    full = inputs.prepare(processor, conv).tensors
    t, h, w = full["video_grid_thw"][0].tolist()
    assert t == 4 and "video_pixel_offset" not in full
    for k in range(t + 1):
        part = inputs.prepare(processor, conv, cached_video_tokens=k * h * w // 4 + 3).tensors  # +3: not a grid
        assert torch.equal(part["input_ids"], full["input_ids"])
        assert torch.equal(part["video_grid_thw"], full["video_grid_thw"])
        assert int(part.get("video_pixel_offset", torch.zeros(1))[0]) == k * h * w
        assert torch.equal(part["pixel_values_videos"], full["pixel_values_videos"][k * h * w :])


@fp32_only("engine")
def test_a_turn_that_lost_its_frames_is_prefilled_again_from_there(engine, fixtures_dir, load_wav):
    """The session drops the oldest camera turns' frames past its budget (session.py,
    `_enforce_video_frames`) by replacing the turn with its audio alone. The cache is reused
    up to that turn, later videos get their pixels back, and the answer equals a full prefill."""
    from assistant.engine.api import Turn
    from assistant.engine.convcache import ConversationCache

    pcm = load_wav("hello_en_us.wav")
    frames = camera(fixtures_dir, 6)
    cached, plain = Conversation(sampling=SAMPLING), Conversation(sampling=SAMPLING)
    cache = ConversationCache(4)
    for turn in range(4):
        if turn == 3:  # turns: user, assistant, user, ... : the second user turn loses its frames
            for conv in (cached, plain):
                old = conv.turns[2]
                conv.turns[2] = Turn("user", [p for p in old.parts if isinstance(p, AudioPart)], id=old.id)
        for conv in (cached, plain):
            conv.add_user(_camera_turn(frames[turn:] + frames[:turn], pcm))
        job_c, codes_c = answer(engine, cached, cache)
        job_p, codes_p = answer(engine, plain, None)
        assert_same_answer(job_c, codes_c, job_p, codes_p, what=f"turn {turn + 1}")
    # The first exchange came from the cache; everything from the changed turn on was prefilled.
    assert 0.3 * job_p.stats.prefill_tokens < job_c.stats.prefill_tokens < job_p.stats.prefill_tokens
