"""Engine.transcribe on the tiny model: a text-only background job with Qwen's recognition
prompt, and the reuse of a committed turn's audio-encoder output from its conversation's
cache (the oracle: the same greedy transcript as encoding the clip again)."""

from __future__ import annotations

import pytest

from assistant import languages
from assistant.engine.api import AudioChunk, AudioPart, ResponseDone, Sampling, TextDelta, TextJob
from assistant.engine.local import LocalEngine
from assistant.settings import from_sources


@pytest.fixture(scope="module")
async def engine(tiny_dir):
    eng = LocalEngine(from_sources(env={}, model=str(tiny_dir), warmup=False))
    await eng.start()
    yield eng
    await eng.close()


async def run(response) -> tuple[str, ResponseDone]:
    events = [ev async for ev in response]
    assert not any(isinstance(e, AudioChunk) for e in events)  # text only: no talker
    return "".join(e.text for e in events if isinstance(e, TextDelta)), events[-1]


@pytest.mark.asyncio(loop_scope="module")
async def test_a_committed_turn_is_transcribed_from_its_cached_encoder_output(engine, load_wav):
    audio = AudioPart(load_wav("weather_en_gb_f3.wav"), 16_000)
    conv = engine.new_conversation()
    conv.sampling = Sampling(greedy=True, min_tokens=2, max_tokens=3, min_frames=2, max_frames=2)
    conv.add_user([audio])
    _ = [ev async for ev in engine.respond(conv)]  # the response caches the turn's prefill
    job = TextJob(audio, languages.recognition_prompt("en"), min_tokens=8, max_tokens=8)
    fresh_response = engine.transcribe(job)
    fresh, fresh_done = await run(fresh_response)
    job.conversation_id = conv.id
    reused_response = engine.transcribe(job)
    reused, reused_done = await run(reused_response)
    assert fresh_done.status == reused_done.status == "completed"
    assert getattr(fresh_response.job, "reused_audio_tokens", 0) == 0
    assert reused_response.job.reused_audio_tokens > 30  # ~3 s of speech, 12.5 tokens per second
    assert reused == fresh and len(fresh_done.turn.token_ids) == 8
    assert reused_done.stats.prefill_tokens == fresh_done.stats.prefill_tokens
    # Another clip is not in that conversation: encoded as usual.
    other = TextJob(
        AudioPart(load_wav("hello_en_us.wav"), 16_000), "Transcribe the audio into text.", conversation_id=conv.id
    )
    other_response = engine.transcribe(other)
    await run(other_response)
    assert getattr(other_response.job, "reused_audio_tokens", 0) == 0
    engine.forget(conv)
