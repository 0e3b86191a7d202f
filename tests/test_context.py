"""Conversations longer than the context: the documented trim policy (engine/context.py)."""

from __future__ import annotations

import pytest
import torch

from assistant.engine import inputs as inputs_mod
from assistant.engine.api import Conversation, ResponseDone, Sampling, TextPart
from assistant.engine.convcache import ConversationCache
from assistant.engine.local import load_resident
from assistant.engine.stream import StreamConfig, StreamJob

SAMPLING = Sampling(greedy=True, min_tokens=3, max_tokens=4, min_frames=2, max_frames=2)
LINE = "Tell me about the weather in the mountains today and tomorrow, please."


@pytest.fixture(scope="module")
def resident(tiny_dir):
    return load_resident(str(tiny_dir), torch.device("cpu"), torch.float32, "sdpa")


def respond(resident, conv, cache, context_tokens):
    job = StreamJob(resident, conv, cache=cache, config=StreamConfig(context_tokens=context_tokens))
    events = []
    while not job.done:
        events += job.step()
    done = events[-1]
    assert isinstance(done, ResponseDone)
    if done.status == "completed":
        conv.turns.append(done.turn)
    return job, done


def test_over_the_context_drops_oldest_exchanges_to_half_then_appends(resident):
    conv = Conversation(instructions="You are brief.", sampling=SAMPLING)
    cache = ConversationCache(4)
    one_turn = inputs_mod.prepare(resident.processor, _with_user(conv, LINE)).input_ids.shape[1]
    context = 4 * one_turn  # room for about three exchanges (answers are short)
    trims, start = [], None
    for i in range(8):
        conv.add_user([TextPart(f"{i}: {LINE}")])
        job, done = respond(resident, conv, cache, context)
        assert done.status == "completed", done.error
        prompt = job._prompt_ids.shape[1]
        assert prompt + SAMPLING.max_tokens <= context
        left_out = done.stats.context_trimmed_turns
        assert len(job.conv.turns) + left_out == len(conv.turns) - 1  # the prompt's turns; the answer came after
        trimmed_now = cache.starts.get(conv.id) != start
        start = cache.starts.get(conv.id)
        trims.append(trimmed_now)
        if trimmed_now:
            # Trimmed to at most half the budget, starting at a user turn; instructions kept.
            assert prompt <= (context - SAMPLING.max_tokens) // 2
            assert job.conv.turns[0].role == "user" and job.conv.instructions == "You are brief."
            assert start == job.conv.turns[0].id == conv.turns[left_out].id
        elif start is not None:
            # After a trim, turns append to the same start and reuse the cache.
            assert done.stats.prefill_tokens < one_turn
    assert any(trims), "the conversation never reached the context limit"
    first = trims.index(True)
    assert not trims[first + 1]  # the next turn fits again without a new trim


def test_latest_turn_alone_over_the_context_fails_with_its_own_code(resident):
    conv = Conversation(sampling=SAMPLING)
    conv.add_user([TextPart(LINE * 4)])
    _, done = respond(resident, conv, ConversationCache(4), context_tokens=40)
    assert done.status == "failed" and done.error.code == "context_length_exceeded"
    assert "context" in done.error.message


def _with_user(conv: Conversation, text: str) -> Conversation:
    c = Conversation(instructions=conv.instructions, sampling=conv.sampling)
    c.add_user([TextPart(text)])
    return c
