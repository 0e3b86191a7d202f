"""The conversation KV cache: later turns prefill only their new input, the output is
what a full prefill gives, and a barge-in truncation crops the cache consistently."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from engine_dtypes import DEVICE, DTYPES, assert_kv_close, assert_same_answer, assert_state_close, fp32_only

from assistant.engine import inputs as inputs_mod
from assistant.engine.api import AudioChunk, AudioPart, Conversation, ResponseDone, Sampling, TextPart, Turn
from assistant.engine.convcache import ConversationCache, common_prefix
from assistant.engine.local import load_resident
from assistant.engine.stream import StreamJob

SAMPLING = Sampling(greedy=True, min_tokens=5, max_tokens=8, min_frames=9, max_frames=9)
CLIPS = ["hello_en_us.wav", "weather_en_gb_f3.wav", "count_en_us_m3.wav"]


@pytest.fixture(scope="module", params=DTYPES)
def resident(tiny_dir, request):
    return load_resident(str(tiny_dir), DEVICE, request.param, "sdpa")


def respond(resident, conv, cache):
    job = StreamJob(resident, conv, cache=cache)
    events = []
    while not job.done:
        events += job.step()
    done = events[-1]
    assert isinstance(done, ResponseDone) and done.status == "completed", done
    conv.turns.append(done.turn)
    codes = torch.stack(job._vocoder.frames, -1)
    audio = b"".join(e.pcm16 for e in events if isinstance(e, AudioChunk))
    return job, codes, audio


def assert_same_talker_user_kv(cached_job, plain_job):
    """The talker KV the cached job keeps for the next turn (its user positions) equals
    the full prefill's. Stricter than comparing codes: a tiny random talker often picks
    the same codes from a context that is one position off."""
    kept = cached_job._talker_cache
    users = plain_job.stats.talker_prefill_tokens - 9  # the full talker prompt minus the assistant prefix
    assert kept.get_seq_length() == users
    assert_kv_close(kept, plain_job._talker_cache, users, cached_job.res.dtype, "talker user KV")


def same_history(cached, plain):
    """Both conversations continue from the cached one's answer, so that their next prompts are the
    same ids whatever the dtype (in float32 the answers are equal anyway)."""
    plain.turns[-1] = dataclasses.replace(cached.turns[-1])


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_cached_turns_equal_full_prefill_and_prefill_only_the_tail(resident, load_wav):
    cached, plain = Conversation(sampling=SAMPLING), Conversation(sampling=SAMPLING)
    cache = ConversationCache(capacity=4)
    prefill, talker = [], []
    for i, clip in enumerate(CLIPS):
        for conv in (cached, plain):
            conv.add_user([AudioPart(load_wav(clip), 16000)])
        job_c, codes_c, audio_c = respond(resident, cached, cache)
        job_p, codes_p, audio_p = respond(resident, plain, None)
        assert_same_answer(job_c, codes_c, job_p, codes_p, audio_c, audio_p, f"turn {i + 1}")
        assert_same_talker_user_kv(job_c, job_p)
        same_history(cached, plain)
        prompt = inputs_mod.prepare(resident.processor, cached).input_ids.shape[1]
        prefill.append((job_c.stats.prefill_tokens, job_p.stats.prefill_tokens, prompt))
        talker.append((job_c.stats.talker_prefill_tokens, job_p.stats.talker_prefill_tokens))
    # Turn 1 prefills everything; later turns only the new user turn and the answer's tail.
    assert prefill[0][0] == prefill[0][1]
    for cached_tokens, full_tokens, _ in prefill[1:]:
        assert cached_tokens < full_tokens / 2, prefill
    # The talker too: its prompt is every user turn plus 9 assistant positions, and the
    # earlier user turns come from the cache, so the codes above were made with reuse.
    assert talker[0][0] == talker[0][1]
    for i, (cached_tokens, full_tokens) in enumerate(talker[1:], start=1):
        assert cached_tokens == full_tokens - talker[i - 1][1] + 9, talker
    assert cache.hits == 2 and cache.misses == 1


@fp32_only("resident")
def test_truncation_crops_the_cache_consistently(resident, load_wav):
    cached, plain = Conversation(sampling=SAMPLING), Conversation(sampling=SAMPLING)
    cache = ConversationCache(capacity=4)
    for conv in (cached, plain):
        conv.add_user([AudioPart(load_wav(CLIPS[0]), 16000)])
    respond(resident, cached, cache)
    respond(resident, plain, None)
    same_history(cached, plain)
    for conv in (cached, plain):  # the listener heard 250 ms: 4 frames, so 4 text tokens
        turn = conv.turns[-1]
        heard = math.ceil(250 / 80)
        turn.token_ids, turn.frames = turn.token_ids[:heard], heard
        turn.text = resident.processor.tokenizer.decode(turn.token_ids)
        conv.add_user([TextPart("Go on.")])
    job_c, codes_c, _ = respond(resident, cached, cache)
    job_p, codes_p, _ = respond(resident, plain, None)
    assert_same_answer(job_c, codes_c, job_p, codes_p)
    assert job_c.stats.prefill_tokens < job_p.stats.prefill_tokens
    assert job_c.stats.talker_prefill_tokens < job_p.stats.talker_prefill_tokens
    assert_same_talker_user_kv(job_c, job_p)


@fp32_only("resident")
def test_talker_reuse_stops_where_a_role_changes(resident, load_wav):
    """A deleted answer leaves the cached ids and the new prompt sharing `<|im_start|>`
    but not the role after it: that position was assistant, now it starts a user turn,
    so the talker KV must not cover it (the thinker KV still may)."""
    cached, plain = Conversation(sampling=SAMPLING), Conversation(sampling=SAMPLING)
    cache = ConversationCache(capacity=4)
    for conv in (cached, plain):
        conv.add_user([AudioPart(load_wav(CLIPS[0]), 16000)])
    respond(resident, cached, cache)
    respond(resident, plain, None)
    for conv in (cached, plain):
        conv.delete(conv.turns[-1].id)
        conv.add_user([AudioPart(load_wav(CLIPS[1]), 16000)])
    job_c, codes_c, _ = respond(resident, cached, cache)
    job_p, codes_p, _ = respond(resident, plain, None)
    assert job_c.stats.prefill_tokens < job_p.stats.prefill_tokens  # the thinker reused through `<|im_start|>`
    assert_same_answer(job_c, codes_c, job_p, codes_p)
    assert_same_talker_user_kv(job_c, job_p)
    assert 9 < job_c.stats.talker_prefill_tokens < job_p.stats.talker_prefill_tokens


@fp32_only("resident")
def test_an_evicted_conversation_prefills_its_whole_talker_prompt(resident, load_wav):
    cache = ConversationCache(capacity=1)
    first, other, plain = (Conversation(sampling=SAMPLING) for _ in range(3))
    for conv in (first, other, plain):
        conv.add_user([AudioPart(load_wav(CLIPS[0]), 16000)])
    respond(resident, first, cache)
    respond(resident, other, cache)  # evicts `first`: capacity 1
    respond(resident, plain, None)
    for conv in (first, plain):
        conv.add_user([AudioPart(load_wav(CLIPS[1]), 16000)])
    job_c, codes_c, _ = respond(resident, first, cache)
    job_p, codes_p, _ = respond(resident, plain, None)
    assert job_c.stats.prefill_tokens == job_p.stats.prefill_tokens
    assert job_c.stats.talker_prefill_tokens == job_p.stats.talker_prefill_tokens
    assert_same_answer(job_c, codes_c, job_p, codes_p)


def test_eviction_is_least_recently_used():
    cache = ConversationCache(capacity=2)

    class Entry:
        pass

    for name in ("a", "b", "c"):
        cache.checkin(name, Entry())
    assert len(cache) == 2 and cache.checkout("a") is None
    assert cache.checkout("b") is not None and cache.checkout("c") is not None


@fp32_only("resident")
def test_earlier_clips_are_found_by_identity_not_featurised_again(resident, load_wav, monkeypatch):
    """Each turn re-renders the whole conversation; an earlier clip must cost neither
    feature extraction nor hashing of its samples again, and give the same features."""
    proc = resident.processor
    clip = load_wav(CLIPS[0])
    conv = Conversation(sampling=SAMPLING)
    conv.add_user([AudioPart(clip, 16000)])
    first = inputs_mod.prepare(proc, conv).tensors
    assert not clip.flags.writeable  # history is read-only, so its identity stands for its samples
    with pytest.raises(ValueError):
        clip[0] = 1.0
    calls = []
    real = inputs_mod._piece_features
    monkeypatch.setattr(inputs_mod, "_piece_features", lambda *a: calls.append(1) or real(*a))
    again = inputs_mod.prepare(proc, conv).tensors
    assert calls == []
    copy = Conversation(sampling=SAMPLING)
    copy.add_user([AudioPart(clip.copy(), 16000)])  # same samples, another array: the content-keyed path
    other = inputs_mod.prepare(proc, copy).tensors
    assert calls
    for key in ("input_ids", "input_features", "feature_attention_mask"):
        assert torch.equal(first[key], again[key]) and torch.equal(first[key], other[key])


@fp32_only("resident")
def test_media_replaced_by_other_media_of_the_same_length_is_not_reused(resident, load_wav):
    """Placeholder ids are the same for any clip of a given length: the cache must also
    compare content, or the old clip's keys and values would answer for the new one."""
    clip = load_wav(CLIPS[0])
    other = np.ascontiguousarray(clip[::-1])  # same length, other sound
    cached, plain = Conversation(sampling=SAMPLING), Conversation(sampling=SAMPLING)
    cache = ConversationCache(capacity=4)
    cached.add_user([AudioPart(clip, 16000)])
    respond(resident, cached, cache)
    # The client deletes the first item and creates another clip in its place.
    for conv in (cached, plain):
        if conv is plain:
            conv.turns = [Turn("user", [AudioPart(other, 16000)]), cached.turns[1]]
        else:
            conv.turns[0] = Turn("user", [AudioPart(other, 16000)], id=conv.turns[0].id)
        conv.add_user([TextPart("And now?")])
    job_c, codes_c, _ = respond(resident, cached, cache)
    job_p, codes_p, _ = respond(resident, plain, None)
    assert job_c.stats.prefill_tokens == job_p.stats.prefill_tokens  # nothing of the old clip reused
    assert_same_answer(job_c, codes_c, job_p, codes_p)
    # An unchanged media turn is still reused on the next turn.
    for conv in (cached, plain):
        conv.add_user([TextPart("Once more.")])
    job_c, _, _ = respond(resident, cached, cache)
    assert job_c.stats.prefill_tokens < job_p.stats.prefill_tokens / 2


def test_bf16_bounds_tell_rounding_from_a_wrong_prefix(resident, load_wav):
    """The bounds that stand in for token equality in bfloat16 (engine_dtypes.py) pass the same
    prompt's KV from a cached prefix, and fail it shifted by one position or from another clip."""
    if resident.dtype != torch.bfloat16:
        pytest.skip("the bf16 bounds")
    cache = ConversationCache(capacity=4)
    cached, plain, other = (Conversation(sampling=SAMPLING) for _ in range(3))
    for conv, clip in ((cached, CLIPS[0]), (plain, CLIPS[0]), (other, CLIPS[2])):
        conv.add_user([AudioPart(load_wav(clip), 16000)])
    respond(resident, cached, cache)
    respond(resident, plain, None)
    same_history(cached, plain)
    for conv in (cached, plain):
        conv.add_user([AudioPart(load_wav(CLIPS[1]), 16000)])
    job_c, codes_c, _ = respond(resident, cached, cache)
    job_p, codes_p, _ = respond(resident, plain, None)
    assert_same_answer(job_c, codes_c, job_p, codes_p)  # rounding only
    n = job_p._prompt_ids.shape[1]
    shifted = [layer.keys[..., 1 : n + 1, :] for layer in job_c._thinker_cache.layers]
    with pytest.raises(AssertionError):
        for mine, full in zip(shifted, job_p._thinker_cache.layers, strict=True):
            assert_state_close(mine, full.keys[..., :n, :], torch.bfloat16, "shifted keys")
    job_o, _, _ = respond(resident, other, None)
    m = min(n, job_o._prompt_ids.shape[1])
    with pytest.raises(AssertionError):
        assert_kv_close(job_o._thinker_cache, job_p._thinker_cache, m, torch.bfloat16, "another clip")
