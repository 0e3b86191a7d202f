"""The transports' VAD batcher (server/vadbatch.py) with the real Silero network."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from assistant.realtime.vad import SileroModel
from assistant.server.vadbatch import VadBatcher


def test_sessions_that_queue_together_are_scored_in_one_call(load_wav):
    """Four sessions' audio queued in the same loop turn goes through one batched call,
    and each session gets its own stream's probabilities; a session queuing alone later
    is scored alone and at once."""
    clips = [load_wav(n) for n in ("hello_en_us.wav", "count_en_us_m3.wav", "weather_en_gb_f3.wav")]
    clips.append(clips[0][: 512 * 10])

    async def main():
        pool = ThreadPoolExecutor(max_workers=1)
        vad = VadBatcher(pool, "test")
        try:
            models = [await vad.new_model() for _ in clips]
            got = await asyncio.gather(*(vad.probabilities(m, c) for m, c in zip(models, clips, strict=True)))
            assert (vad.calls, vad.rows) == (1, 4)
            later = await vad.probabilities(models[3], clips[3])
            assert (vad.calls, vad.rows) == (2, 5)
            return got, later
        finally:
            await vad.close()
            pool.shutdown()

    got, later = asyncio.run(main())
    for probs, clip in zip(got, clips, strict=True):
        np.testing.assert_allclose(probs, SileroModel().probabilities(clip), atol=1e-4)
    again = SileroModel()
    again.probabilities(clips[3])
    np.testing.assert_allclose(later, again.probabilities(clips[3]), atol=1e-4)  # the stream's state carried on


def test_a_failing_call_reaches_its_waiting_session_and_the_batcher_lives_on():
    async def main():
        pool = ThreadPoolExecutor(max_workers=1)
        vad = VadBatcher(pool, "test")
        try:
            model = await vad.new_model()
            with pytest.raises(TypeError):
                await vad.probabilities(model, None)  # not audio: the call fails, the waiter hears it
            assert len(await vad.probabilities(model, np.zeros(1024, np.float32))) == 2  # the batcher lives on
        finally:
            await vad.close()
            pool.shutdown()

    asyncio.run(main())
