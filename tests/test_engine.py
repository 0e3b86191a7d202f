"""The engine's async interface on the tiny model: streaming, cancel, truncate, errors."""

from __future__ import annotations

import asyncio

import pytest

from assistant.engine import inputs as inputs_mod
from assistant.engine.api import (
    FRAME_SAMPLES,
    AudioChunk,
    AudioPart,
    ResponseDone,
    Sampling,
    TextDelta,
    TextPart,
)
from assistant.engine.local import LocalEngine
from assistant.settings import from_sources


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
async def engine(tiny_dir, request):
    """The server's engine as `--dtype` builds it (bfloat16: the checkpoint's and CUDA's dtype)."""
    eng = LocalEngine(from_sources(env={}, model=str(tiny_dir), warmup=True, dtype=request.param))
    await eng.start()
    assert str(eng.resident.dtype) == f"torch.{request.param}" and eng.info.dtype == request.param
    yield eng
    await eng.close()


def spoken_conv(engine, load_wav, **sampling):
    conv = engine.new_conversation()
    conv.sampling = Sampling(greedy=True, **sampling)
    conv.add_user([AudioPart(load_wav("hello_en_us.wav"), 16000)])
    return conv


@pytest.mark.asyncio(loop_scope="module")
async def test_respond_streams_text_audio_and_stats(engine, load_wav):
    conv = spoken_conv(engine, load_wav, min_tokens=6, max_tokens=10, min_frames=12, max_frames=12)
    events = [ev async for ev in engine.respond(conv, t_committed=None)]
    done = events[-1]
    assert isinstance(done, ResponseDone) and done.status == "completed"
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    # The first chunk is a single frame, long before the answer ends; then the ramp 1, 2, 4, ... at
    # most (a chunk goes out short of it when the lead runs short: on a slow machine, every frame).
    ramp = (1, 2, 4, 8, 16)
    assert chunks[0].frames == 1
    assert all(c.frames <= ramp[min(i, len(ramp) - 1)] for i, c in enumerate(chunks[:-1]))
    assert sum(c.samples for c in chunks) == 12 * FRAME_SAMPLES - 555
    assert events.index(chunks[0]) < len(events) // 2
    assert any(isinstance(e, TextDelta) for e in events)
    s = done.stats
    for stamp in ("t_started", "t_preprocessed", "t_thinker_first_token", "t_talker_first_frame"):
        assert getattr(s, stamp) is not None, stamp
    assert s.t_started <= s.t_preprocessed <= s.t_thinker_first_token <= s.t_talker_first_frame
    assert s.t_talker_first_frame <= s.t_code_predictor_first_frame <= s.t_first_audio <= s.t_done
    assert s.frames == 12 and len(s.frame_ms) >= 11 and s.prefill_tokens > 20
    assert conv.turns[-1].role == "assistant" and conv.turns[-1].frames == 12


@pytest.mark.asyncio(loop_scope="module")
async def test_cancel_stops_within_one_step_and_history_keeps_only_what_was_heard(engine, load_wav):
    conv = spoken_conv(engine, load_wav, min_tokens=40, max_tokens=60, min_frames=60, max_frames=60)
    response = engine.respond(conv)
    received, after_cancel = [], []
    steps_at_cancel = None
    async for ev in response:
        if steps_at_cancel is None:
            received.append(ev)
            if sum(isinstance(e, AudioChunk) for e in received) == 3:  # 1 + 2 + 4 = 7 frames delivered
                steps_at_cancel = engine.worker.steps
                response.cancel()
        else:
            after_cancel.append(ev)
    done = after_cancel[-1]
    assert isinstance(done, ResponseDone) and done.status == "cancelled"
    # At most the step already running when cancel() was called may still deliver.
    assert engine.worker.steps - steps_at_cancel <= 2
    assert sum(isinstance(e, AudioChunk) for e in after_cancel) <= 1
    assert done.stats.frames < 20
    delivered_ms = sum(e.samples for e in received if isinstance(e, AudioChunk)) * 1000 // 24000
    turn = engine.truncate(conv, done.turn.id, delivered_ms)
    assert turn.frames == -(-delivered_ms // 80) and len(turn.token_ids) <= turn.frames
    # The next turn's prompt holds only the heard text.
    conv.add_user([TextPart("Go on.")])
    prompt = engine.resident.processor.tokenizer.decode(
        inputs_mod.prepare(engine.resident.processor, conv).input_ids[0]
    )
    assert turn.text in prompt
    dropped = done.turn  # same object, now truncated
    assert dropped.token_ids == turn.token_ids


@pytest.mark.asyncio(loop_scope="module")
async def test_concurrent_responses_interleave(engine, load_wav):
    convs = [spoken_conv(engine, load_wav, min_tokens=4, max_tokens=6, min_frames=8, max_frames=8) for _ in range(3)]

    async def run(conv):
        return [ev async for ev in engine.respond(conv)]

    results = await asyncio.gather(*(run(c) for c in convs))
    for events in results:
        assert events[-1].status == "completed" and events[-1].stats.frames == 8
    # Greedy and independent: the same input gives the same codes in every conversation.
    pcm = [b"".join(e.pcm16 for e in r if isinstance(e, AudioChunk)) for r in results]
    assert pcm[0] == pcm[1] == pcm[2]


@pytest.mark.asyncio(loop_scope="module")
async def test_errors_arrive_as_events(engine):
    conv = engine.new_conversation(voice="Nobody")
    conv.add_user([TextPart("Hi")])
    events = [ev async for ev in engine.respond(conv)]
    assert len(events) == 1 and events[0].status == "failed"
    assert events[0].error.code == "invalid_input" and "voice" in events[0].error.message
    # The worker keeps serving.
    conv.voice = "Ethan"
    conv.sampling = Sampling(greedy=True, max_tokens=3, max_frames=2)
    assert [ev async for ev in engine.respond(conv)][-1].status == "completed"


@pytest.mark.asyncio(loop_scope="module")
async def test_text_only_response(engine):
    conv = engine.new_conversation()
    conv.sampling = Sampling(greedy=True, min_tokens=5, max_tokens=5)
    conv.add_user([TextPart("Say something.")])
    events = [ev async for ev in engine.respond(conv, audio=False)]
    assert not any(isinstance(e, AudioChunk) for e in events)
    assert events[-1].status == "completed" and events[-1].stats.text_tokens == 5
