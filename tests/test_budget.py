"""The caches' byte budget (engine/budget.py): the formula on plain configs, the ledger and
the conversation cache's eviction on plain tensors, then the tiny model under a budget of
a few MB with many conversations (engine), and the refusal through the real server."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from assistant.engine.api import AudioPart, ImagePart, ResponseDone, Sampling, TextPart
from assistant.engine.budget import (
    CPU_DEFAULT_BYTES,
    CUDA_RESERVE_MIN_BYTES,
    GB,
    Costs,
    KvShape,
    MemoryBudget,
    default_limit_bytes,
    kv_shape,
)
from assistant.engine.convcache import CachedPrefix, ConversationCache, TalkerPrefix

# ---------------------------------------------------------------------------- the formula


def text_config(layers, kv_heads, head_dim, hidden, heads):
    return SimpleNamespace(
        num_hidden_layers=layers,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=hidden,
        num_attention_heads=heads,
    )


def instruct_config():
    """The real Instruct checkpoint's text stacks (qwen3-omni-streaming.md's configuration table)."""
    return SimpleNamespace(
        thinker_config=SimpleNamespace(text_config=text_config(48, 4, 128, 2048, 32)),
        talker_config=SimpleNamespace(text_config=text_config(20, 2, 128, 1024, 16)),
    )


def test_bytes_per_token_of_the_real_checkpoint_in_bfloat16():
    costs = Costs.from_config(instruct_config(), dtype_bytes=2)
    assert costs.thinker.bytes_per_token == 2 * 48 * 4 * 128 * 2 == 98_304  # K and V, every layer
    assert costs.thinker_token_bytes == 98_304 + 2 * 2048 * 2  # + layer-0 input and accept_hidden_layer state
    assert costs.talker.bytes_per_token == 2 * 20 * 2 * 128 * 2 == 20_480
    # A 1000-token prompt (900 of them user positions), 256 text tokens, 600 frames (48 s of speech):
    # thinker 1256 tokens, talker 900 + 9 + 600 positions.
    assert costs.response_bytes(1000, 900, 256, 600) == 1256 * 106_496 + 1509 * 20_480
    assert costs.response_bytes(1000, -1, 256, 600) == 1256 * 106_496  # text only: no talker
    assert costs.floor_bytes(256, 600) == costs.response_bytes(512, 512, 256, 600)


def test_head_dim_falls_back_to_hidden_over_heads():
    cfg = text_config(2, 2, None, 64, 4)
    assert kv_shape(cfg, 4) == KvShape(layers=2, kv_heads=2, head_dim=16, dtype_bytes=4)


def test_default_budget():
    assert default_limit_bytes("cpu") == CPU_DEFAULT_BYTES
    h200 = 141 * GB
    assert default_limit_bytes("cuda", 75 * GB, h200) == 75 * GB - int(0.10 * h200)  # 10 % of the card
    assert default_limit_bytes("cuda", 10 * GB, 24 * GB) == 10 * GB - CUDA_RESERVE_MIN_BYTES  # at least 4 GiB
    assert default_limit_bytes("cuda", 1 * GB, 24 * GB) == 0


def test_the_setting_is_refused_where_it_cannot_apply():
    from assistant.engine import load_engine
    from assistant.engine.local import LocalEngine
    from assistant.settings import Settings

    with pytest.raises(ValueError, match="--kv-cache-gb"):
        load_engine(Settings(upstream_url="ws://127.0.0.1:9/v1/realtime", kv_cache_gb=1.0))
    with pytest.raises(ValueError, match="kv_cache_gb must be >= 0"):
        LocalEngine(Settings(kv_cache_gb=-1.0))


# ---------------------------------------------------------------------------- ledger and eviction (plain tensors)

SHAPE = KvShape(layers=2, kv_heads=1, head_dim=4, dtype_bytes=4)
COSTS = Costs(SHAPE, SHAPE, thinker_hidden=4)  # thinker token: 64 KV + 32 states = 96 bytes; talker: 64


def entry(n: int, users: int = 0) -> CachedPrefix:
    """A cached prefix of n thinker tokens whose first `users` are user positions."""

    def kv(length: int) -> DynamicCache:
        cache = DynamicCache()
        for layer in range(SHAPE.layers):
            cache.update(torch.randn(1, 1, length, 4), torch.randn(1, 1, length, 4), layer)
        return cache

    talker = TalkerPrefix(kv(users), torch.arange(n) < users) if users else None
    return CachedPrefix(list(range(n)), kv(n), torch.randn(1, n, 4), torch.randn(1, n, 4), talker=talker)


def storage_bytes(e: CachedPrefix) -> int:
    """What the entry's tensors really hold (views count their whole storage)."""
    tensors = [e.embed, e.hidden]
    for kv in [e.kv] + ([e.talker.kv] if e.talker else []):
        tensors += [t for layer in kv.layers for t in (layer.keys, layer.values)]
    return sum(t.untyped_storage().nbytes() for t in tensors)


def test_reserve_release_and_admission():
    budget = MemoryBudget(1000, COSTS, floor_bytes=300)
    a, b = object(), object()
    assert budget.reserve(a, 600) and not budget.reserve(b, 500) and budget.reserve(b, 400)
    assert budget.snapshot()["live_bytes"] == 1000 == budget.peak_bytes
    assert budget.admit_session(open_sessions=1) is not None  # 1000 reserved: no room for a floor
    budget.release(a)
    assert budget.admit_session(open_sessions=1) is None  # max(400, 300) + 300 <= 1000
    assert budget.admit_session(open_sessions=3) is not None  # 3 floors + 1 > 1000
    budget.set_frames("c1", 5000)  # host memory: counted, not charged
    snap = budget.snapshot()
    assert snap["refused_sessions"] == 2 and snap["camera_frame_bytes"] == 5000 and snap["in_use_bytes"] == 400


def test_idle_conversations_are_evicted_oldest_first_and_counted_exactly():
    budget = MemoryBudget(3000, COSTS, floor_bytes=0)
    cache = ConversationCache(capacity=100, budget=budget)
    for i in range(4):
        cache.checkin(f"c{i}", entry(8, users=5))  # 8 x 96 + 5 x 64 = 1088 bytes each
    assert [cache.has(f"c{i}") for i in range(4)] == [False, False, True, True]  # two fit in 3000
    assert budget.cached_bytes == 2 * 1088 and budget.evictions == 2
    cache.checkout("c2")  # touched: c3 is now the least recently used idle one
    cache.checkin("c2", entry(8, users=5))
    assert cache.reserve("job", 1000)  # evicts c3 only
    assert not cache.has("c3") and cache.has("c2") and budget.in_use_bytes == 1000 + 1088
    assert not cache.reserve("job2", 2500)  # even with c2 evicted, 1000 + 2500 > 3000
    assert not cache.has("c2") and budget.snapshot()["live_bytes"] == 1000
    cache.release("job")
    assert budget.in_use_bytes == 0


def test_a_checked_out_cache_is_never_evicted():
    budget = MemoryBudget(1200, COSTS, floor_bytes=0)
    cache = ConversationCache(capacity=100, budget=budget)
    cache.checkin("live", entry(8, users=5))
    held = cache.checkout("live")  # a response is using it, and has reserved its bytes
    assert cache.reserve("live-job", 1088)
    cache.checkin("idle", entry(8, users=5))  # over the budget: the idle one goes, the held one cannot
    assert not cache.has("idle") and budget.evictions == 1
    assert not cache.reserve("other", 200)  # nothing idle is left to evict
    assert held.kv.get_seq_length() == 8 and budget.in_use_bytes == 1088


def test_a_cropped_entry_is_stored_compact():
    budget = MemoryBudget(10**6, COSTS, floor_bytes=0)
    cache = ConversationCache(capacity=4, budget=budget)
    e = entry(20, users=12)
    e.keep(10)  # views over the 20-token storage
    e.talker.keep(6)
    cache.checkin("c", e)
    kept = cache.checkout("c")
    assert storage_bytes(kept) == COSTS.prefix_bytes(10, int(kept.talker.user.sum())) == 10 * 96 + 6 * 64


# ---------------------------------------------------------------------------- the tiny model, few MB


def settings(tiny_dir, **extra):
    from assistant.settings import from_sources

    return from_sources(env={}, model=str(tiny_dir), device="cpu", dtype="float32", **extra)


@pytest.fixture(scope="module")
async def engine(tiny_dir):
    from assistant.engine.local import LocalEngine

    eng = LocalEngine(
        settings(tiny_dir, kv_cache_gb=0.0007, conversation_cache_size=64, warmup=False, audio_window_s=2)
    )
    await eng.start()
    yield eng
    await eng.close()


async def answer(engine, conv) -> ResponseDone:
    events = [ev async for ev in engine.respond(conv)]
    return events[-1]


@pytest.mark.asyncio(loop_scope="module")
async def test_many_conversations_under_a_small_budget(engine, load_wav):
    """700 kB holds the caches of ~5 short two-turn spoken conversations, or 4 live responses
    (~150 kB each) with a little room. 8 conversations talk, four at a time, two turns each,
    some with an early prefill and a still image. Every answer completes, the charged bytes
    never pass the budget, idle conversations are evicted oldest first, and what the cache
    counts is what its tensors hold."""
    budget = engine.budget
    assert budget.limit_bytes == 700_000
    clips = [load_wav(name) for name in ("hello_en_us.wav", "weather_en_gb_f3.wav", "count_en_us_m3.wav")]
    image = np.full((32, 32, 3), 100, np.uint8)
    convs = []
    for _ in range(8):
        conv = engine.new_conversation()
        conv.sampling = Sampling(greedy=True, min_tokens=3, max_tokens=6, min_frames=6, max_frames=6)
        convs.append(conv)

    async def talk(i: int) -> list[ResponseDone]:
        conv, done = convs[i], []
        for turn in range(2):
            audio = AudioPart(clips[(i + turn) % 3], 16000)
            if i % 4 == 1 and turn == 1:
                assert engine.prefill(conv, [audio])  # a head start on the turn being spoken
            conv.add_user([ImagePart(image), audio] if i % 4 == 3 and turn == 0 else [audio])
            done.append(await answer(engine, conv))
        return done

    results = []
    for group in range(2):
        results += await asyncio.gather(*(talk(4 * group + k) for k in range(4)))
    statuses = [d.status for pair in results for d in pair]
    assert statuses == ["completed"] * 16, [d.error for pair in results for d in pair if d.error]

    await asyncio.sleep(0.05)
    snap = budget.snapshot()
    assert snap["peak_bytes"] <= snap["budget_bytes"] and snap["live_bytes"] == 0
    assert snap["evictions"] > 0 and 0 < snap["cached_conversations"] < 8
    assert snap["camera_frame_bytes"] == 2 * image.nbytes
    cache = engine.conv_cache
    kept = [i for i, conv in enumerate(convs) if cache.has(conv.id)]
    assert kept and kept[-1] == 7 and 0 not in kept  # the least recently used went first
    counted = 0
    for i in kept:  # the config formula against the tensors themselves
        e = cache._entries[convs[i].id]
        assert storage_bytes(e) == cache._bytes[convs[i].id]
        counted += cache._bytes[convs[i].id]
    assert counted == snap["cached_bytes"] <= snap["budget_bytes"]
    for conv in convs:
        engine.forget(conv)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_reservation_covers_what_the_response_holds(engine, load_wav):
    conv = engine.new_conversation()
    conv.sampling = Sampling(greedy=True, min_tokens=6, max_tokens=6, min_frames=10, max_frames=10)
    conv.add_user([AudioPart(load_wav("hello_en_us.wav"), 16000)])
    response = engine.respond(conv)
    assert (await anext(aiter(response))) is not None
    peak = 0
    async for ev in response:
        job = response.job
        if not job.done and job._phase in ("frame", "advance"):
            kv = [job._thinker_cache, job._talker_cache]
            held = sum(
                t.untyped_storage().nbytes() for c in kv for layer in c.layers for t in (layer.keys, layer.values)
            )
            held += job._thinker_embed.untyped_storage().nbytes() + job._thinker_hidden.untyped_storage().nbytes()
            peak = max(peak, held)
        done = ev
    assert done.status == "completed" and peak > 0
    ids = job._prompt_ids
    users = int(job._user_mask(ids[0]).sum())
    reserved = engine.budget.costs.response_bytes(ids.shape[1], users, 6, 10)
    assert peak <= reserved
    engine.forget(conv)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_response_that_cannot_fit_fails_clearly_and_the_engine_goes_on(engine, load_wav):
    budget = engine.budget
    conv = engine.new_conversation()
    conv.sampling = Sampling(greedy=True, min_tokens=2, max_tokens=4, min_frames=4, max_frames=4)
    conv.add_user([AudioPart(load_wav("long_10s_en_us.wav"), 16000)])
    saved, refused = budget.limit_bytes, budget.refused_responses
    budget.limit_bytes = 50_000  # less than this prompt's KV
    try:
        done = await answer(engine, conv)
    finally:
        budget.limit_bytes = saved
    assert done.status == "failed" and done.error.code == "memory_budget_exceeded"
    assert "--kv-cache-gb" in done.error.message and budget.refused_responses == refused + 1
    assert budget.snapshot()["live_bytes"] == 0
    done = await answer(engine, conv)  # the same turn fits the budget again
    assert done.status == "completed"
    text = engine.new_conversation()
    text.sampling = conv.sampling
    text.add_user([TextPart("hi")])
    assert (await answer(engine, text)).status == "completed"
    engine.forget(conv)
    engine.forget(text)


# ---------------------------------------------------------------------------- the server


async def make_offer() -> str:
    """A real aiortc offer with the data channel (createOffer gathers no candidates: no network)."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.createDataChannel("oai-events")
        return (await pc.createOffer()).sdp
    finally:
        await pc.close()


def test_a_session_that_cannot_fit_is_refused_and_the_figures_are_exported(tiny_dir):
    """Room for one session's floor and a half: the second websocket session and a WebRTC
    call are refused (error + 1013, HTTP 503) with memory_budget_exceeded, the first session
    still answers, and the slot comes back when it leaves."""
    import json
    import urllib.request

    import httpx
    from transformers import AutoConfig
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from assistant.server.main import ServerThread

    floor = Costs.from_config(AutoConfig.from_pretrained(tiny_dir), 4).floor_bytes(8, 8)
    limit = floor * 3 // 2
    # A fixed session limit: the memory check alone decides here, not the measured load
    # (--max-sessions auto), which on a busy machine may admit only one session.
    s = settings(tiny_dir, port=0, kv_cache_gb=limit / GB, max_answer_tokens=8, max_answer_frames=8, max_sessions=8)
    with ServerThread(s) as server:
        url = server.url.replace("http://", "ws://") + "/v1/realtime"
        with connect(url, open_timeout=30) as first:
            assert json.loads(first.recv(30))["type"] == "session.created"
            with connect(url, open_timeout=30) as second:
                event = json.loads(second.recv(30))
                assert event["type"] == "error" and event["error"]["code"] == "memory_budget_exceeded"
                with pytest.raises(ConnectionClosed):
                    second.recv(30)
                assert second.close_code == 1013
            offer = asyncio.run(make_offer())
            r = httpx.post(
                server.url + "/v1/realtime/calls", content=offer, headers={"content-type": "application/sdp"}
            )
            assert r.status_code == 503 and r.json()["error"]["code"] == "memory_budget_exceeded"
            first.send(
                json.dumps(
                    {
                        "type": "conversation.item.create",
                        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                    }
                )
            )
            first.send(json.dumps({"type": "response.create"}))
            while (event := json.loads(first.recv(60)))["type"] != "response.done":
                pass
            assert event["response"]["status"] == "completed"
        with urllib.request.urlopen(server.url + "/health") as r:
            memory = json.load(r)["memory"]
        assert memory["budget_bytes"] == limit and memory["session_floor_bytes"] == floor
        assert memory["refused_sessions"] >= 1 and memory["peak_bytes"] <= limit
        with urllib.request.urlopen(server.url + "/metrics") as r:
            text = r.read().decode()
        assert f"assistant:kv_budget_bytes {float(limit)}" in text
        assert 'assistant:kv_refusals_total{what="session"}' in text and "assistant:kv_in_use_bytes" in text
        for _ in range(100):  # the slot comes back once the first session has left
            with connect(url, open_timeout=30) as again:
                if json.loads(again.recv(30))["type"] == "session.created":
                    break
        else:
            raise AssertionError("the budget's room did not come back")
