"""Batched decode steps (engine/batch.py) and the worker's deadline-aware order (issue #7)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from engine_dtypes import DEVICE, DTYPES, fp32_only
from transformers import DynamicCache

from assistant.engine import batch
from assistant.engine.api import AudioChunk, AudioPart, Conversation, ResponseDone, Sampling
from assistant.engine.local import load_resident
from assistant.engine.stream import StreamJob
from assistant.engine.worker import ModelWorker

CLIPS = ["hello_en_us.wav", "weather_en_gb_f3.wav", "count_en_us_m3.wav", "describe_en_scotland.wav"]


@pytest.fixture(scope="module", params=DTYPES)
def resident(tiny_dir, request):
    return load_resident(str(tiny_dir), DEVICE, request.param, "sdpa")


def _job(resident, load_wav, clip: str, frames: int) -> StreamJob:
    conv = Conversation(
        sampling=Sampling(greedy=True, min_tokens=4, max_tokens=7, min_frames=frames, max_frames=frames)
    )
    conv.add_user([AudioPart(load_wav(clip), 16000)])
    return StreamJob(resident, conv)


def _outcome(job: StreamJob, events: list) -> tuple:
    done = events[-1]
    assert isinstance(done, ResponseDone) and done.status == "completed", done
    audio = b"".join(e.pcm16 for e in events if isinstance(e, AudioChunk))
    return job._tokens, torch.stack(job._vocoder.frames, -1), audio


def test_batched_decode_equals_each_response_alone(resident, load_wav, monkeypatch):
    """Four responses with different prompts and lengths (so caches differ in length and
    rows leave the batch at different steps) give, batched, what each gives alone: their
    first packets prefilled together (one audio-encoder call for clips of four lengths,
    the thinker, then the talker, then the first frames) and their decode steps batched."""
    frames = [6, 9, 12, 15]
    solo = []
    for clip, n in zip(CLIPS, frames, strict=True):
        job = _job(resident, load_wav, clip, n)
        events = []
        while not job.done:
            events += job.step()
        solo.append(_outcome(job, events))

    encode = resident.thinker.get_audio_features
    encoded = []  # clips per audio-encoder call
    monkeypatch.setattr(resident.thinker, "get_audio_features", lambda f, m: encoded.append(f.shape[0]) or encode(f, m))
    heads = []  # rows per thinker lm_head call
    hook = resident.thinker.lm_head.register_forward_hook(lambda mod, args, out: heads.append(out.shape[0]))
    jobs = [_job(resident, load_wav, clip, n) for clip, n in zip(CLIPS, frames, strict=True)]
    events = {job: [] for job in jobs}
    batched_rows, codec_batches = [], 0
    while not all(job.done for job in jobs):
        for phase in ("prefill", "thinker_forward", "talker_prefill", "frame", "codec", "advance"):
            group = [job for job in jobs if not job.done and job._phase == phase]
            if phase == "codec":  # chunk decodes batch when their chunks have one length (as `_group`)
                group = [job for job in group if job._vocoder.batch_key() == group[0]._vocoder.batch_key()]
            if not group:
                continue
            if len(group) > 1:
                batched_rows.append(len(group))
                codec_batches += phase == "codec"
                for job, evs in batch.step_jobs(group).items():
                    events[job] += evs
            else:
                for job in group:
                    events[job] += job.step()
    hook.remove()
    assert encoded == [4]
    assert heads[0] == 4  # the first tokens: one lm_head product for the four rows
    assert max(batched_rows) == 4 and 2 in batched_rows  # full batches, then rows leaving
    assert batched_rows[:3] == [4, 4, 4]  # the processors and audio encoder, the thinker's and the talker's prefill
    assert codec_batches >= 3  # chunk decodes batched too (the streaming Code2Wav)
    for job, (tokens, codes, audio) in zip(jobs, solo, strict=True):
        b_tokens, b_codes, b_audio = _outcome(job, events[job])
        assert b_tokens == tokens
        assert torch.equal(b_codes, codes), "batched codec frames differ from the solo run"
        # Code2Wav's convolutions over B rows round as over one, or an int16 step off.
        a, b = (np.frombuffer(x, dtype="<i2").astype(np.int32) for x in (b_audio, audio))
        assert a.shape == b.shape and np.abs(a - b).max() <= 1


def _turn(resident, conv: Conversation, cache) -> StreamJob:
    """A response to `conv`'s last user turn, run alone to its end; its answer joins `conv`."""
    job = StreamJob(resident, conv, cache=cache)
    events = []
    while not job.done:
        events += job.step()
    conv.turns.append(events[-1].turn)
    return job


def test_batched_first_packets_with_cached_prefixes_equal_each_alone(resident, load_wav):
    """Second turns, each reusing its conversation's cached thinker and talker KV (of
    different lengths, so the batch pads both caches and tails), prefilled as one batch
    give what each gives alone."""
    from assistant.engine.convcache import ConversationCache

    sampling = Sampling(greedy=True, min_tokens=3, max_tokens=5, min_frames=4, max_frames=4)
    outcomes, states = [], []
    for batched in (False, True):
        cache, jobs = ConversationCache(capacity=4), []
        for first, second in ((CLIPS[0], CLIPS[2]), (CLIPS[3], CLIPS[1])):
            conv = Conversation(sampling=sampling, id=f"c{first}")
            conv.add_user([AudioPart(load_wav(first), 16000)])
            _turn(resident, conv, cache)
            conv.add_user([AudioPart(load_wav(second), 16000)])
            jobs.append(StreamJob(resident, conv, cache=cache))
        events = {job: [] for job in jobs}
        for phase in ("prefill", "thinker_forward", "talker_prefill", "frame"):
            assert all(job._phase == phase for job in jobs)
            if batched:
                for job, evs in batch.step_jobs(jobs).items():
                    events[job] += evs
            else:
                for job in jobs:
                    events[job] += job.step()
            if phase == "talker_prefill":  # a tiny random model's greedy picks survive small errors: compare states
                states.append([(job._thinker_hidden, job._talker_last_hidden, _kv(job._talker_cache)) for job in jobs])
        assert all(0 < job.stats.prefill_tokens < job._prompt_ids.shape[1] for job in jobs)  # the cache was reused
        for job in jobs:
            while not job.done:
                events[job] += job.step()
        outcomes.append([_outcome(job, events[job]) for job in jobs])
    for (tokens, codes, audio), (b_tokens, b_codes, b_audio) in zip(*outcomes, strict=True):
        assert b_tokens == tokens and torch.equal(b_codes, codes) and b_audio == audio
    for solo, batched in zip(*states, strict=True):
        for a, b in zip(solo, batched, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_a_response_cancelled_between_its_prefill_steps_gives_the_prefix_back(resident, load_wav):
    """The prefill's first step checks the conversation's cached prefix out; cancelled
    before its thinker forward, the response checks it back in, cropped to what the two
    prompts share, and the next response reuses it."""
    from assistant.engine.convcache import ConversationCache

    sampling = Sampling(greedy=True, min_tokens=3, max_tokens=5, min_frames=4, max_frames=4)
    cache = ConversationCache(capacity=4)
    conv = Conversation(sampling=sampling)
    conv.add_user([AudioPart(load_wav(CLIPS[0]), 16000)])
    _turn(resident, conv, cache)
    conv.add_user([AudioPart(load_wav(CLIPS[1]), 16000)])
    job = StreamJob(resident, conv, cache=cache)
    assert job.step() == [] and job._phase == "thinker_forward"
    assert cache.peek(conv.id) is None  # checked out
    job.cancelled = True
    assert job.step()[-1].status == "cancelled"
    kept = cache.peek(conv.id)
    assert kept is not None and kept.ids == job._prompt_ids[0, : len(kept.ids)].tolist()
    again = _turn(resident, conv, cache)
    assert 0 < again.stats.prefill_tokens == job._prompt_ids.shape[1] - len(kept.ids)


def _kv(cache) -> torch.Tensor:
    return torch.cat([torch.cat([layer.keys, layer.values], -1) for layer in cache.layers], 1).clone()


def test_padded_cache_and_scatter():
    caches = []
    for n in (3, 5):
        c = DynamicCache()
        for layer in range(2):
            c.update(torch.full((1, 2, n, 4), float(n)), torch.full((1, 2, n, 4), -float(n)), layer)
        caches.append(c)
    padded, mask = batch.padded_cache(caches, None)
    assert padded.layers[0].keys.shape == (2, 2, 5, 4)
    assert mask.tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]  # left padding, +1 for the new position
    assert torch.equal(padded.layers[1].keys[0, :, 2:], caches[0].layers[1].keys[0])
    for layer in range(2):  # what a forward appends: one new position per row
        padded.update(
            torch.stack([torch.full((2, 1, 4), 7.0), torch.full((2, 1, 4), 8.0)]), torch.zeros(2, 2, 1, 4), layer
        )
    batch.scatter_new_kv(padded, caches)
    assert [c.get_seq_length() for c in caches] == [4, 6]
    assert caches[0].layers[1].keys[0, 0, -1, 0] == 7.0 and caches[1].layers[0].keys[0, 1, -1, 0] == 8.0


@dataclass(eq=False)
class FakeJob:
    """The fields the worker's scheduler reads, as plain data."""

    name: str
    t_submitted: float = 0.0
    slack_s: float | None = None  # None: first packet pending
    cancelled: bool = False
    audio: bool = True
    partial: bool = False  # an early prefill of a turn still being spoken
    _phase: str = "frame"
    done: bool = False
    conv_id: str = ""  # "" = a conversation of its own
    visual: bool = False

    @property
    def conv(self):
        return SimpleNamespace(id=self.conv_id or self.name)

    @property
    def stats(self):
        return SimpleNamespace(t_first_audio=None if self.slack_s is None else 0.0)

    @property
    def first_packet_pending(self) -> bool:
        return self.slack_s is None

    def playback_slack_s(self, t: float, frame_cost_s: float, codec_cost_s: float = 0.0) -> float:
        return self.slack_s


def test_scheduler_order(monkeypatch):
    import assistant.engine.worker as worker_mod

    monkeypatch.setattr(worker_mod, "now", lambda: 100.0)
    w = ModelWorker(4, guard_s=0.16, first_packet_target_s=0.32)  # the rule with a target of 2 x guard
    w.step_cost_s = dict.fromkeys(w.step_cost_s, 1.0)  # no step fits in anyone's slack here
    jobs = [
        FakeJob("ahead", slack_s=1.0),
        FakeJob("starving", slack_s=0.1),
        FakeJob("new_late", t_submitted=99.9),
        FakeJob("ahead_less", slack_s=0.5),
        FakeJob("new_early", t_submitted=99.8),
        FakeJob("late", slack_s=-0.2),
        FakeJob("cancelled", slack_s=3.0, cancelled=True),
        FakeJob("head_start", t_submitted=99.0, partial=True),
    ]
    order = []
    w._active = [(j, None) for j in jobs]
    while w._active:
        job, _ = w._pick()
        order.append(job.name)
        w._active = [e for e in w._active if e[0] is not job]
    # Cancels first, then whoever is about to underrun (least slack first), then first
    # packets in arrival order, then early prefill, before the responses that have audio ahead.
    assert order == ["cancelled", "late", "starving", "new_early", "new_late", "head_start", "ahead_less", "ahead"]
    # A first packet kept waiting past 2 x guard (0.32 s) ranks with the starving, by how overdue it is.
    w._active = [(j, None) for j in (FakeJob("late", slack_s=-0.2), FakeJob("overdue", t_submitted=99.4))]
    assert w._pick()[0].name == "overdue"  # 0.28 s overdue beats 0.2 s short


def test_first_packets_are_due_at_their_commit_by_default(monkeypatch):
    """The default target is 0: a first packet goes before every listener that still has
    audio at its commit, however little, and after those that were dry before it."""
    import assistant.engine.worker as worker_mod

    monkeypatch.setattr(worker_mod, "now", lambda: 100.0)
    w = ModelWorker(4, guard_s=0.16)
    assert w.first_packet_target_s == 0.0
    w.step_cost_s = dict.fromkeys(w.step_cost_s, 1.0)
    jobs = [
        FakeJob("starving", slack_s=0.01),
        FakeJob("new", t_submitted=99.8),
        FakeJob("dry_before_it", slack_s=-0.3),
        FakeJob("dry_after_it", slack_s=-0.1),
    ]
    assert order_of(w, jobs) == ["dry_before_it", "new", "dry_after_it", "starving"]


def test_a_listener_that_stays_dry_takes_turns_with_first_packets(monkeypatch):
    """A dry listener's deadline is when it ran dry, or when it was last stepped if that is
    later: stepped after a commit, it waits for that commit's first packet. Without the
    second term one listener whose frames were slower than real time ran alone for 2.6 s
    while three first packets waited (4 users, tiny CPU model, issue #19)."""
    import assistant.engine.worker as worker_mod

    monkeypatch.setattr(worker_mod, "now", lambda: 100.0)
    w = ModelWorker(4, guard_s=0.16)
    w.step_cost_s = dict.fromkeys(w.step_cost_s, 1.0)
    dry, new = FakeJob("dry", slack_s=-0.3), FakeJob("new", t_submitted=99.8)
    assert order_of(w, [dry, new]) == ["dry", "new"]  # dry since 99.7, not stepped since
    dry.t_stepped = 99.9  # stepped after the commit, and still dry
    assert order_of(w, [dry, new]) == ["new", "dry"]


def test_speaking_responses_catch_up_before_a_decode_step(monkeypatch):
    """A response one step behind the chosen decode step (its chunk's decode, or its
    advance) takes its step first, so that the decode steps keep batching; a first packet
    never waits for that."""
    import assistant.engine.worker as worker_mod

    monkeypatch.setattr(worker_mod, "now", lambda: 100.0)
    w = ModelWorker(4, max_batch=8, guard_s=0.16)
    w.step_cost_s = dict.fromkeys(w.step_cost_s, 1.0)
    urgent = FakeJob("urgent", slack_s=-0.2, _phase="advance")
    decoding = FakeJob("decoding", slack_s=0.1, _phase="codec")
    w._active = [(urgent, None), (decoding, None)]
    assert w._pick()[0] is decoding  # then both advance as one batch
    urgent._phase, decoding._phase = "frame", "advance"
    assert w._pick()[0] is decoding
    assert [e[0].name for e in w._group(w._pick())] == ["decoding"]
    urgent._phase = "advance"
    assert [e[0].name for e in w._group(w._pick())] == ["urgent", "decoding"]
    new = FakeJob("new", t_submitted=99.5, _phase="frame")  # a first packet's first frame
    w._active = [(new, None), (FakeJob("behind", slack_s=0.1, _phase="advance"), None)]
    assert w._pick()[0] is new
    w.max_batch = 1  # nothing batches: no reason to reorder
    w._active = [(urgent, None), (decoding, None)]
    decoding._phase = "codec"
    assert w._pick()[0] is urgent


def test_commits_of_a_burst_catch_up_with_the_first(monkeypatch):
    """A commit that came while an earlier first packet was under way (within the
    estimated cost of one first packet: the five steps' costs) takes its steps before that
    one's next, phase by phase, the furthest behind first, until they batch; a later
    commit, or a camera turn, does not hold it back."""
    import assistant.engine.worker as worker_mod

    monkeypatch.setattr(worker_mod, "now", lambda: 100.0)
    w = ModelWorker(4, max_batch=8, guard_s=0.16)
    w.step_cost_s.update(
        {
            ("prefill", False): 0.01,
            ("thinker_forward", False): 0.01,
            ("talker_prefill", False): 0.01,
            ("frame", False): 0.01,
            ("codec", False): 0.01,
        }
    )  # a first packet: 50 ms
    first = FakeJob("first", t_submitted=99.90, _phase="frame")
    second = FakeJob("second", t_submitted=99.91, _phase="talker_prefill")
    third = FakeJob("third", t_submitted=99.94, _phase="prefill")
    later = FakeJob("later", t_submitted=99.96, _phase="prefill")
    camera = FakeJob("camera", t_submitted=99.91, _phase="prefill", visual=True)
    w._active = [(first, None), (second, None), (third, None)]
    assert w._pick()[0] is third  # furthest behind first
    third._phase = "thinker_forward"
    assert w._pick()[0] is third
    third._phase = "talker_prefill"
    assert [e[0].name for e in w._group(w._pick())] == ["second", "third"]
    second._phase = third._phase = "frame"
    assert [e[0].name for e in w._group(w._pick())] == ["first", "second", "third"]
    w._active = [(first, None), (later, None), (camera, None)]
    assert w._pick()[0] is first


def order_of(w: ModelWorker, jobs: list) -> list[str]:
    w._active = [(j, None) for j in jobs]
    order = []
    while w._active:
        job, _ = w._pick()
        order.append(job.name)
        w._active = [e for e in w._active if e[0] is not job]
    return order


def test_short_steps_borrow_slack_that_listeners_can_spare(monkeypatch):
    """A step whose estimated cost fits in every listener's slack (less STEAL_MARGIN_S)
    goes before the responses that are short of their guard: a new first packet first,
    then early prefill. One that does not fit waits as before."""
    import assistant.engine.worker as worker_mod

    monkeypatch.setattr(worker_mod, "now", lambda: 100.0)
    w = ModelWorker(4, guard_s=0.16, first_packet_target_s=0.32)  # listeners short of their guard go first
    w.step_cost_s.update({("prefill", False): 0.02, ("prefill", True): 0.05, ("early_forward", False): 0.03})
    urgent = FakeJob("urgent", slack_s=0.12)  # under the guard; spare = 0.12 - 0.03 = 0.09
    new = FakeJob("new", t_submitted=99.9, _phase="prefill")
    camera = FakeJob("camera", t_submitted=99.95, _phase="prefill", visual=True)
    head = FakeJob("head", t_submitted=99.0, partial=True, _phase="early_forward")
    assert order_of(w, [urgent, head, camera, new]) == ["new", "camera", "head", "urgent"]
    urgent.slack_s = 0.07  # spare 0.04: the audio-only prefill fits, the camera one does not,
    # and the head start, which would fit, leaves that slack to the new response waiting
    assert order_of(w, [urgent, head, camera, new]) == ["new", "urgent", "camera", "head"]


def test_started_early_prefill_goes_before_its_conversations_response(monkeypatch):
    """Between its steps an early prefill holds its conversation's cached prefix: once
    the response is queued it finishes first. Unstarted ones wait as any head start."""
    import assistant.engine.worker as worker_mod

    monkeypatch.setattr(worker_mod, "now", lambda: 100.0)
    w = ModelWorker(4, guard_s=0.16)
    late = FakeJob("late", slack_s=-0.2)
    response = FakeJob("response", t_submitted=99.9, conv_id="a")
    started = FakeJob("started", t_submitted=99.0, partial=True, _phase="early_forward", conv_id="a")
    other = FakeJob("other", t_submitted=98.0, partial=True, _phase="early_encode", conv_id="b")
    w._active = [(j, None) for j in (late, response, other, started)]
    order = []
    while w._active:
        job, _ = w._pick()
        order.append(job.name)
        w._active = [e for e in w._active if e[0] is not job]
    assert order == ["started", "late", "response", "other"]
    # A newer offer for the same conversation waits for it as well.
    newer = FakeJob("newer", t_submitted=99.95, partial=True, _phase="prefill", conv_id="a")
    assert order_of(w, [late, newer, started]) == ["started", "late", "newer"]
    # Also when the response's own first step would fit in everyone's slack.
    assert order_of(w, [FakeJob("new", t_submitted=99.9, conv_id="a", _phase="prefill"), started]) == ["started", "new"]


def test_first_packets_step_alone_but_join_a_streams_batch():
    w = ModelWorker(4, max_batch=8)
    new, a, b = FakeJob("new"), FakeJob("a", slack_s=0.3), FakeJob("b", slack_s=0.5)
    talker = FakeJob("talker", slack_s=0.2, _phase="talker_prefill")
    w._active = [(j, None) for j in (a, new, talker, b)]
    entry = {e[0].name: e for e in w._active}
    assert [e[0].name for e in w._group(entry["new"])] == ["new"]  # its first frame waits for no other row
    assert [e[0].name for e in w._group(entry["a"])] == ["a", "new", "b"]  # a stream carries it along
    assert [e[0].name for e in w._group(entry["talker"])] == ["talker"]  # not a decode step


def test_chunk_decodes_of_one_length_step_as_one_batch():
    """ "codec" steps batch when their streaming decoders share a batch_key (chunk length,
    started); a windowed decoder (key None) decodes alone."""
    w = ModelWorker(4, max_batch=8)
    jobs = {name: FakeJob(name, slack_s=0.3, _phase="codec") for name in ("a", "b", "c", "windowed")}
    for name, key in (("a", (2, True)), ("b", (2, True)), ("c", (1, True)), ("windowed", None)):
        jobs[name]._vocoder = SimpleNamespace(batch_key=lambda key=key: key)
    w._active = [(j, None) for j in jobs.values()]
    entry = {e[0].name: e for e in w._active}
    assert [e[0].name for e in w._group(entry["a"])] == ["a", "b"]
    assert [e[0].name for e in w._group(entry["c"])] == ["c"]
    assert [e[0].name for e in w._group(entry["windowed"])] == ["windowed"]


def test_first_packets_that_arrive_together_step_as_one_batch():
    """Issue #19: commits queued together prefill together (thinker, then talker, then the
    first frames), but never with a stream's decode step, a camera turn, or a turn whose
    conversation's early prefill is still between steps."""
    w = ModelWorker(4, max_batch=8)
    a, b = FakeJob("a", _phase="prefill"), FakeJob("b", _phase="prefill")
    camera = FakeJob("camera", _phase="prefill", visual=True)
    waits = FakeJob("waits", _phase="prefill", conv_id="x")
    holder = FakeJob("holder", partial=True, _phase="early_forward", conv_id="x")
    stream = FakeJob("stream", slack_s=0.3)
    first_frame, talker = FakeJob("first_frame"), FakeJob("talker", _phase="talker_prefill")
    w._active = [(j, None) for j in (a, stream, camera, waits, holder, b, first_frame, talker)]
    entry = {e[0].name: e for e in w._active}
    assert [e[0].name for e in w._group(entry["a"])] == ["a", "b"]
    assert [e[0].name for e in w._group(entry["camera"])] == ["camera"]
    assert [e[0].name for e in w._group(entry["first_frame"])] == ["first_frame"]  # the stream is not a first packet
    first_frame2 = FakeJob("first_frame2")
    w._active.append((first_frame2, None))
    assert [e[0].name for e in w._group(entry["first_frame"])] == ["first_frame", "first_frame2"]
    assert [e[0].name for e in w._group(entry["talker"])] == ["talker"]
    w.max_batch = 1
    assert [e[0].name for e in w._group(entry["a"])] == ["a"]


@fp32_only("resident")
def test_playback_slack_counts_whole_chunks(resident, load_wav):
    job = _job(resident, load_wav, CLIPS[0], 30)
    while job.stats.t_first_audio is None:
        job.step()
    t = job.stats.t_first_audio
    emitted_s = job.stats.audio_samples / 24000  # the 1-frame chunk (80 ms less the look-ahead)
    # The next chunk is 2 frames: none computed yet, so 2 frames of work stand before it.
    assert job._vocoder.next_chunk_size() == 2 and job._frames - job._vocoder.decoded_frames == 0
    assert job.playback_slack_s(t, 0.01) == pytest.approx(emitted_s - 0.02)
    assert job.playback_slack_s(t + 0.5, 0.01) == pytest.approx(emitted_s - 0.5 - 0.02)


@fp32_only("resident")
def test_superseded_early_prefills_are_dropped_unrun(resident, load_wav):
    """Offers pile up under load: only the newest unrun offer per conversation survives,
    and none once the response itself is queued."""
    w = ModelWorker(8)
    a1, a2 = (_job(resident, load_wav, CLIPS[0], 3) for _ in range(2))
    for job in (a1, a2):
        job.partial = True
    a2.conv.id = a1.conv.id
    b = _job(resident, load_wav, CLIPS[1], 3)
    b.partial = True
    w._active = [(a1, None), (b, None), (a2, None)]
    w._drop_superseded_prefills()
    assert [e[0] for e in w._active] == [b, a2]
    response = _job(resident, load_wav, CLIPS[1], 3)
    response.conv.id = b.conv.id
    w._active.append((response, None))
    w._drop_superseded_prefills()
    assert [e[0] for e in w._active] == [a2, response]


@fp32_only("resident")
def test_jobs_without_a_listener_are_background(resident, load_wav):
    """A Chat Completions response (`listener=False`) and a transcription (`background`)
    carry the flag the scheduler ranks by; a live response does not."""
    conv = Conversation()
    conv.add_user([AudioPart(load_wav(CLIPS[0]), 16000)])
    assert StreamJob(resident, conv, listener=False).background
    assert StreamJob(resident, conv, audio=False, background=True).background
    assert not StreamJob(resident, conv).background


def test_jobs_without_a_listener_rank_as_background(monkeypatch):
    """The one rule's hook for one-shot jobs (chat completions, transcriptions): a job whose
    `background` attribute is true has no deadline: it goes after every first packet and
    every response short of its guard, before responses with audio to spare, and borrows
    slack only when no first packet waits."""
    import assistant.engine.worker as worker_mod

    monkeypatch.setattr(worker_mod, "now", lambda: 100.0)
    w = ModelWorker(4, guard_s=0.16, first_packet_target_s=0.32)
    w.step_cost_s = dict.fromkeys(w.step_cost_s, 1.0)
    chat = FakeJob("chat", t_submitted=90.0, _phase="prefill")
    chat.background = True
    jobs = [FakeJob("ahead", slack_s=0.5), chat, FakeJob("new", t_submitted=99.9), FakeJob("short", slack_s=0.1)]
    assert order_of(w, jobs) == ["short", "new", "chat", "ahead"]
    w.step_cost_s = dict.fromkeys(w.step_cost_s, 0.01)  # everything fits in the spare (0.5 - 0.03)
    assert order_of(w, [FakeJob("ahead", slack_s=0.5), chat, FakeJob("new", t_submitted=99.9)]) == [
        "new",
        "chat",
        "ahead",
    ]


def test_past_capacity_first_packets_stay_bounded_and_underruns_are_shared(monkeypatch):
    """Issue #19's policy under overload, simulated with plain data: four listeners whose
    frames cost 1.5x what real time allows (each step 30 ms of work for 80 ms of audio),
    and a new turn committed mid-way. The new first packet goes out within its target
    plus one round of the listeners' steps (those that ran dry before its
    deadline), and the listeners share the shortfall: the one that ran dry first is
    stepped next, so nobody's stall is more than a frame or two above anybody else's."""
    import assistant.engine.worker as worker_mod

    clock = {"t": 0.0}
    monkeypatch.setattr(worker_mod, "now", lambda: clock["t"])
    w = ModelWorker(4, guard_s=0.16)
    step_s, frame_s = 0.03, 0.08
    w.step_cost_s = dict.fromkeys(w.step_cost_s, step_s)
    w.frame_cost_s = step_s
    ends, stalls = {}, {}
    listeners = [FakeJob(f"l{i}", slack_s=0.0) for i in range(4)]
    for job in listeners:
        ends[job], stalls[job] = 0.2, 0.0
    new = FakeJob("new", t_submitted=3.0, _phase="prefill")
    w._active = [(job, None) for job in listeners]
    served_new = None
    while clock["t"] < 6.0:
        if served_new is None and clock["t"] >= new.t_submitted and all(e[0] is not new for e in w._active):
            w._active.append((new, None))
        for job, _ in w._active:
            if job.slack_s is not None:
                job.slack_s = ends[job] - clock["t"]
        job, _ = w._pick()
        clock["t"] += step_s
        job.t_stepped = clock["t"]  # as the worker marks every job it stepped
        if job is new:
            served_new = clock["t"]
            w._active.remove((new, None))
            continue
        if ends[job] < clock["t"]:  # it ran dry before this frame arrived
            stalls[job] += clock["t"] - ends[job]
            ends[job] = clock["t"]
        ends[job] += frame_s
    bound = w.first_packet_target_s + len(listeners) * step_s
    assert served_new is not None and w.first_packet_target_s < served_new - new.t_submitted <= bound
    spread = [stalls[job] for job in listeners]
    assert min(spread) > 0.5  # overloaded indeed: everyone stalled
    assert max(spread) - min(spread) <= 2 * frame_s, spread
