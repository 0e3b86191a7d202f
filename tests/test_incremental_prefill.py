"""Incremental prefill equals the offline path with the same audio-encoder window.

While the user speaks, complete 2 s encoder windows are prefilled into the
conversation's KV cache; at commit only the tail is left. Greedy output must be what
a single full prefill with the same window gives, and the tokens prefilled after the
commit must depend on the tail only, not on the utterance's length.
"""

from __future__ import annotations

import pytest
import torch

from assistant.engine.api import INPUT_SAMPLE_RATE, AudioChunk, AudioPart, Conversation, Sampling, TextPart, Turn
from assistant.engine.convcache import ConversationCache
from assistant.engine.local import load_resident
from assistant.engine.stream import StreamJob

WINDOW_S = 2
SAMPLING = Sampling(greedy=True, min_tokens=4, max_tokens=6, min_frames=8, max_frames=8)


@pytest.fixture(scope="module")
def resident(tiny_dir):
    return load_resident(str(tiny_dir), torch.device("cpu"), torch.float32, "sdpa", audio_window_s=WINDOW_S)


def run(job):
    events = []
    while not job.done:
        events += job.step()
    return events


def answer(resident, conv, cache):
    job = StreamJob(resident, conv, cache=cache)
    events = run(job)
    assert events[-1].status == "completed", events[-1]
    codes = torch.stack(job._vocoder.frames, -1)
    return job, codes, b"".join(e.pcm16 for e in events if isinstance(e, AudioChunk))


def speak_incrementally(resident, conv, cache, pcm, step_s=0.5):
    """What the server does while the user talks: offer the audio so far, every step_s."""
    window = WINDOW_S * INPUT_SAMPLE_RATE
    step = int(step_s * INPUT_SAMPLE_RATE)
    for end in range(step, len(pcm) + 1, step):
        whole = end // window * window
        if whole:
            turn = Turn("user", [AudioPart(pcm[:whole], INPUT_SAMPLE_RATE)])
            snapshot = Conversation(sampling=conv.sampling, turns=[*conv.turns, turn], id=conv.id)
            run(StreamJob(resident, snapshot, cache=cache, partial=True))


@pytest.mark.parametrize("clip", ["long_10s_en_us.wav", "hello_en_us.wav"])
def test_incremental_prefill_equals_offline_and_leaves_only_the_tail(resident, load_wav, clip):
    pcm = load_wav(clip)
    # A first exchange, so the prefix also holds an earlier turn.
    streamed, offline = Conversation(sampling=SAMPLING), Conversation(sampling=SAMPLING)
    for conv in (streamed, offline):
        conv.add_user([TextPart("Hello there.")])
    cache = ConversationCache(4)
    job, _, _ = answer(resident, streamed, cache)
    streamed.turns.append(_last_turn(job))
    job_o, _, _ = answer(resident, offline, None)
    offline.turns.append(_last_turn(job_o))

    speak_incrementally(resident, streamed, cache, pcm)
    for conv in (streamed, offline):
        conv.add_user([AudioPart(pcm, INPUT_SAMPLE_RATE)])
    job_s, codes_s, audio_s = answer(resident, streamed, cache)
    job_o, codes_o, audio_o = answer(resident, offline, None)
    assert job_s._tokens == job_o._tokens
    assert torch.equal(codes_s, codes_o) and audio_s == audio_o
    tail_s = len(pcm) / INPUT_SAMPLE_RATE % WINDOW_S
    print(
        f"{clip}: {len(pcm) / INPUT_SAMPLE_RATE:.1f} s utterance: prefilled after commit "
        f"{job_s.stats.prefill_tokens} tokens incrementally vs {job_o.stats.prefill_tokens} offline "
        f"(tail {tail_s:.2f} s)"
    )
    # After the commit: the last partial window's audio tokens plus the closing tokens.
    assert job_s.stats.prefill_tokens <= 13 * WINDOW_S + 10
    if len(pcm) >= 2 * WINDOW_S * INPUT_SAMPLE_RATE:
        assert job_s.stats.prefill_tokens < job_o.stats.prefill_tokens / 3


def _last_turn(job):
    """The assistant turn a finished job added (as the engine's response wrapper does)."""
    return Turn("assistant", [], id=job.item_id, token_ids=job._spoken_tokens(), frames=job._frames, text=job._text)
