"""Incremental prefill equals the offline path with the same audio-encoder window.

While the user speaks, complete 2 s encoder windows are prefilled into the
conversation's KV cache; at commit only the tail is left. Greedy output must be what
a single full prefill with the same window gives, and the tokens prefilled after the
commit must depend on the tail only, not on the utterance's length.
"""

from __future__ import annotations

import pytest
import torch
from engine_dtypes import DEVICE, DTYPES, assert_same_answer, fp32_only

from assistant.engine.api import INPUT_SAMPLE_RATE, AudioChunk, AudioPart, Conversation, Sampling, TextPart, Turn
from assistant.engine.convcache import ConversationCache
from assistant.engine.local import load_resident
from assistant.engine.stream import StreamJob

WINDOW_S = 2
SAMPLING = Sampling(greedy=True, min_tokens=4, max_tokens=6, min_frames=8, max_frames=8)


@pytest.fixture(scope="module", params=DTYPES)
def resident(tiny_dir, request):
    return load_resident(str(tiny_dir), DEVICE, request.param, "sdpa", audio_window_s=WINDOW_S)


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
    assert_same_answer(job_s, codes_s, job_o, codes_o, audio_s, audio_o, clip)
    # The first exchange's talker KV survived the partial prefills, which added the turn so far
    # to it: at commit the talker prefills the same tail as the thinker, plus its 9-position prefix.
    assert job_s.stats.talker_prefill_tokens < job_o.stats.talker_prefill_tokens
    assert job_s.stats.talker_prefill_tokens <= job_s.stats.prefill_tokens + 9
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


def test_server_prefills_while_the_user_speaks(tiny_dir, load_wav):
    """Through the real websocket server: audio appended before the commit is prefilled
    already, so the response's input_tokens (what it prefilled after the commit) cover
    the tail only, for a 10 s utterance as for a 2.8 s one."""
    import asyncio
    import base64
    import json

    import numpy as np
    import websockets

    from assistant.bench.server import InProcessServer
    from assistant.settings import from_sources

    settings = from_sources(
        env={}, model=str(tiny_dir), warmup=False, greedy=True, min_answer_tokens=2, max_answer_tokens=3,
        min_answer_frames=2, max_answer_frames=2, audio_window_s=WINDOW_S,
    )  # fmt: skip

    async def turn(url: str, pcm: np.ndarray) -> int:
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}}}}))  # fmt: skip
            pcm16 = (np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes()
            step = 3200 * 2  # 200 ms
            for i in range(0, len(pcm16), step):
                chunk = base64.b64encode(pcm16[i : i + step]).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                await asyncio.sleep(0.04)  # 5x real time: time for the worker to prefill as it goes
            await asyncio.sleep(0.5)
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            await ws.send(json.dumps({"type": "response.create"}))
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 120))
                assert event["type"] != "error", event
                if event["type"] == "response.done":
                    assert event["response"]["status"] == "completed", event
                    return event["response"]["usage"]["input_tokens"]

    with InProcessServer(settings) as server:
        long_tokens = asyncio.run(turn(server.url, load_wav("long_10s_en_us.wav")))
        short_tokens = asyncio.run(turn(server.url, load_wav("hello_en_us.wav")))
    print(f"tokens prefilled after commit: 10 s utterance {long_tokens}, 2.8 s utterance {short_tokens}")
    assert long_tokens <= 13 * WINDOW_S + 12 and short_tokens <= 13 * WINDOW_S + 12


@fp32_only("resident")
def test_a_commit_shorter_than_the_offers_keeps_its_whole_windows(resident, load_wav):
    """Offers run to the buffer's end; the VAD's commit may end earlier. The windows the
    commit still has whole are reused; only the rest is prefilled, with the same answer."""
    pcm = load_wav("long_10s_en_us.wav")
    committed = pcm[: int(4.5 * INPUT_SAMPLE_RATE)]  # 2 whole windows and a quarter of a third
    streamed, offline = Conversation(sampling=SAMPLING), Conversation(sampling=SAMPLING)
    cache = ConversationCache(4)
    speak_incrementally(resident, streamed, cache, pcm[: 6 * INPUT_SAMPLE_RATE])  # 3 windows prefilled
    for conv in (streamed, offline):
        conv.add_user([AudioPart(committed, INPUT_SAMPLE_RATE)])
    job_s, codes_s, audio_s = answer(resident, streamed, cache)
    job_o, codes_o, audio_o = answer(resident, offline, None)
    assert_same_answer(job_s, codes_s, job_o, codes_o, audio_s, audio_o)
    per_window = resident.audio_window_tokens
    span = job_o._prompt_ids[0].tolist().index(resident.audio_start_id) + 1  # first audio token
    reused = job_o.stats.prefill_tokens - job_s.stats.prefill_tokens
    assert reused == span + 2 * per_window  # everything before the span, and two whole windows
