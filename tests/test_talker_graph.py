"""The talker's static-KV decode step (engine/talker_step.py) and its CUDA graph wrapper
(cudagraphs.py GraphedTalkerStep), off by default.

On CPU the static path runs eagerly, and through `CallReplay` (replay = call the captured
function again on the static buffers), against the stock dynamic-cache step: the same
logits, last hidden state and keys/values step after step, the same greedy answer through
the stream, and a buffer that follows the response it serves when responses interleave.
On CUDA (skipped without one, never run so far) the real graph must equal the static path
run eagerly bit for bit; how close that is to stock on a GPU is what scripts/gpu_check.sh
measures before the setting may default to on.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from engine_dtypes import DEVICE, DTYPES, assert_state_close, exact
from transformers import DynamicCache

from assistant.engine.api import Conversation, Sampling, TextPart
from assistant.engine.cudagraphs import CallReplay, GraphedTalkerStep
from assistant.engine.local import load_resident
from assistant.engine.stream import StreamConfig, StreamJob
from assistant.settings import from_sources

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module", params=DTYPES)
def res(tiny_dir, request):
    return load_resident(str(tiny_dir), DEVICE, request.param, "sdpa")


def prefix(res, n: int, seed: int) -> DynamicCache:
    """A talker KV of n positions, from stock's own prefill of random inputs."""
    g = torch.Generator().manual_seed(seed)
    D = res.tcfg.text_config.hidden_size
    cache = DynamicCache(config=res.talker.config.text_config)
    embeds = (torch.randn(1, n, D, generator=g) * 0.5).to(res.device, res.dtype)
    pos = torch.arange(n, device=res.device).view(1, 1, -1).expand(3, 1, -1)
    with torch.inference_mode():
        res.talker(inputs_embeds=embeds, position_ids=pos, cache=cache, use_cache=True)
    return cache


def stock_step(res, cache, embeds, position):
    out = res.talker(
        inputs_embeds=embeds, position_ids=position, cache=cache, use_cache=True, output_hidden_states=True,
        generation_step=0,  # only echoed back (as talker.py passes it)
    )  # fmt: skip
    return out.logits[:, -1], out.hidden_states[0][-1][:, -1:]


def step_inputs(res, n: int, step: int):
    g = torch.Generator().manual_seed(100 + step)
    D = res.tcfg.text_config.hidden_size
    embeds = (torch.randn(1, 1, D, generator=g) * 0.5).to(res.device, res.dtype)
    position = torch.full((3, 1, 1), n + 7, device=res.device)  # rope deltas: positions need not equal the index
    return embeds, position


def test_static_step_equals_stock_step_by_step(res):
    """Eager and through CallReplay, for 6 steps after a 20-position prefill."""
    for graph in (False, True):
        mine_cache, stock_cache = prefix(res, 20, 0), prefix(res, 20, 0)
        talker = GraphedTalkerStep(res.talker, max_len=64, backend=CallReplay())
        for step in range(6):
            n = stock_cache.get_seq_length()
            embeds, position = step_inputs(res, n, step)
            with torch.inference_mode():
                want = stock_step(res, stock_cache, embeds, position)
                got = talker.step(mine_cache, embeds, position, graph=graph)
            assert got is not None and got[0].shape == want[0].shape and got[1].shape == want[1].shape
            assert_state_close(got[0], want[0], res.dtype, f"logits, step {step}")
            assert_state_close(got[1], want[1], res.dtype, f"last hidden, step {step}")
            assert int(got[0].float().argmax()) == int(want[0].float().argmax()), f"greedy code-0, step {step}"
        assert mine_cache.get_seq_length() == stock_cache.get_seq_length() == 26
        for i, (a, b) in enumerate(zip(mine_cache.layers, stock_cache.layers, strict=True)):
            assert_state_close(a.keys, b.keys, res.dtype, f"keys layer {i}")
            assert_state_close(a.values, b.values, res.dtype, f"values layer {i}")
        assert talker.replays == (6 if graph else 0)


def test_buffer_follows_the_response_it_serves(res):
    """Two responses interleaved, and a cache changed behind the buffer's back (a batched
    step appends to it, a truncation crops it): each step reloads what it must."""
    talker = GraphedTalkerStep(res.talker, max_len=64, backend=CallReplay())
    a, b = prefix(res, 12, 1), prefix(res, 17, 2)
    stock_a, stock_b = prefix(res, 12, 1), prefix(res, 17, 2)
    with torch.inference_mode():
        for step in range(4):
            for mine, stock in ((a, stock_a), (b, stock_b), (a, stock_a)):
                embeds, position = step_inputs(res, stock.get_seq_length(), step)
                want = stock_step(res, stock, embeds, position)
                got = talker.step(mine, embeds, position)
                assert_state_close(got[0], want[0], res.dtype, f"step {step}")
            if step == 1:  # a step that did not go through the buffer, then a crop
                for cache in (a, stock_a):
                    stock_step(res, cache, *step_inputs(res, cache.get_seq_length(), 99))
                for cache in (b, stock_b):
                    cache.crop(-3)


def test_too_long_a_context_goes_to_stock(res):
    talker = GraphedTalkerStep(res.talker, max_len=16, backend=CallReplay())
    cache = prefix(res, 16, 3)
    embeds, position = step_inputs(res, 16, 0)
    with torch.inference_mode():
        assert talker.step(cache, embeds, position) is None
    assert cache.get_seq_length() == 16 and talker.replays == 0


def run_job(res, seed=None):
    sampling = Sampling(greedy=seed is None, seed=seed, max_tokens=6, min_frames=9, max_frames=9)
    conv = Conversation(voice="Ethan", sampling=sampling)
    conv.add_user([TextPart("Hello there.")])
    job = StreamJob(res, conv, config=StreamConfig())
    events = []
    while not job.done:
        events += job.step()
    assert events[-1].status == "completed", events[-1]
    return job, torch.stack(job._vocoder.frames, -1).cpu()


def test_stream_through_the_talker_graph_equals_stock(res):
    """A whole response with the stream's talker steps from the static path (CallReplay):
    in float32 the same text and codec frames as stock. In bfloat16 the masked attention
    over the fixed buffer may round a few values differently from stock's (engine_dtypes.py),
    so there the first frame (one static step in) and the text are compared."""
    want_job, want = run_job(res)
    talker = GraphedTalkerStep(res.talker, max_len=256, backend=CallReplay())
    res.talker_graph = talker
    try:
        got_job, got = run_job(res)
    finally:
        res.talker_graph = None
    assert talker.replays == got_job.stats.frames  # every talker step after the prefill (one per frame)
    assert got_job._tokens == want_job._tokens
    if exact(res.dtype):
        assert torch.equal(got, want)
    else:
        assert torch.equal(got[:, :2], want[:, :2])


def test_capture_error_falls_back_to_stock_and_logs_once(res, caplog):
    class Failing(CallReplay):
        def capture(self, fn, pool):
            raise RuntimeError("operation not permitted when stream is capturing")

    talker = GraphedTalkerStep(res.talker, max_len=64, backend=Failing())
    cache = prefix(res, 8, 4)
    with caplog.at_level(logging.WARNING, logger="assistant.engine"), torch.inference_mode():
        for step in range(3):
            assert talker.step(cache, *step_inputs(res, 8, step)) is None
    assert "stream is capturing" in talker.fallback.error and cache.get_seq_length() == 8
    assert len([r for r in caplog.records if "CUDA graphs off for the talker step" in r.message]) == 1


def test_setting_is_off_by_default_and_the_cpu_ignores_it(tiny_dir):
    assert from_sources(env={}).talker_cuda_graph is False
    assert from_sources(env={"ASSISTANT_TALKER_CUDA_GRAPH": "1"}).talker_cuda_graph is True
    res = load_resident(str(tiny_dir), torch.device("cpu"), torch.float32, "sdpa", talker_cuda_graph=True)
    assert res.talker_graph is None


# ---------------------------------------------------------------- CUDA only (unmeasured so far)


@cuda
def test_cuda_talker_graph_equals_the_static_path_and_tracks_stock(tiny_dir):
    res = load_resident(str(tiny_dir), torch.device("cuda"), torch.bfloat16, "sdpa", talker_cuda_graph=True)
    assert res.talker_graph is not None
    graphed, eager = copy.deepcopy(prefix(res, 30, 5)), prefix(res, 30, 5)
    talker = res.talker_graph
    with torch.inference_mode():
        for step in range(8):
            inputs = step_inputs(res, 30 + step, step)
            got = talker.step(graphed, *inputs)
            want = talker.step(eager, *inputs, graph=False)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert talker.fallback.error is None and talker.replays == 8
    want_job, want = run_job(res)
    res.use_talker_graph(False)
    stock_job, stock = run_job(res)
    assert want_job._tokens == stock_job._tokens
    print(f"talker graph vs stock, greedy codes equal: {torch.equal(want, stock)}")
