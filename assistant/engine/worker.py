"""The one owner of the model: a worker thread fed through a bounded queue.

`ModelWorker` runs `StreamJob.step()` for every active response, one step at a time,
so responses interleave at step granularity and a cancel takes effect within one step.
Events cross to the asyncio side with `loop.call_soon_threadsafe`; nothing here ever
blocks the event loop that paces media.

Scheduling: one rule, earliest deadline first with step costs (issues #7, #19). Every job
has a deadline:
- a response waiting for its first packet: its commit plus `first_packet_target_s`
  (0 by default: the user is waiting in silence from the commit on, so a first packet goes
  before every listener that still has audio then, and after those already dry before it;
  a target of 2 x guard_s, the first default, let first packets wait 320 ms behind
  listeners in their chunk ramp, and 4 users' first packets were 4-8x one user's);
- a speaking response: when its listener runs dry (first audio + audio emitted so far,
  played in real time, less the work left before its next chunk can go out: frames still
  to compute for the chunk x the measured cost of a frame); `slack` = that deadline - now;
- a job with no listener, +inf: an early prefill (a head start on a turn still being
  spoken), a text-only answer after its first token, and any job whose `background`
  attribute is true (one-shot requests such as chat completions and transcriptions set
  it). Background work ranks below every first packet and every response short of its
  guard, and it never borrows slack while a first packet waits;
- a cancelled response, and an early prefill between its steps that another job of its
  conversation waits for (it holds the conversation's cached prefix, and the other needs
  what it computes): -inf. Both steps are short and free what others wait for.
A speaking response whose slack is at least `guard_s` has nothing due yet (another step
only adds to its buffer): it is *released*, to compete by its deadline, only once its
slack falls under the guard. Unreleased jobs run only when nothing released is left.
Step costs let a step jump the order when it cannot make anyone late: the spare is the
least slack of the speaking responses less STEAL_MARGIN_S, and a first packet's step, or a
background step (when no first packet waits), whose estimated cost (a moving average per
phase and kind of turn, STEP_COST_S) fits in the spare goes first. So the rank of a job is
(borrows, released, deadline): `rank` in `_pick`.

Past capacity (issue #19; the load admission keeps out, server/app.py, can still be
outgrown by long answers or a burst):
- a new turn's first packet is bounded: once its target passes it outranks every listener
  that ran dry after that, so it waits at most its target plus one round of steps of the
  listeners that were already dry (tests/test_batching.py simulates it);
- underruns are shared: a dry listener's deadline is when it ran dry, or when it was last
  stepped if that is later, so the one that has waited longest is stepped next, round
  after round, and the shortfall spreads evenly over the listeners and the first packets
  instead of piling on one. Without the second term a listener that stayed dry (its
  frames slower than real time, or a big chunk of its ramp still filling) kept the
  deadline it ran dry at: at 4 users on the tiny CPU model one such response ran 40
  frames alone for 2.6 s while three first packets that came after it waited;
- below capacity nobody underruns while the total real-time factor stays below 1.
Slack counts whole chunks because audio leaves in chunks (the ramp 1, 2, 4, ... frames):
frames computed but not yet emitted are not audible yet. With the streaming Code2Wav (the
default) a chunk goes out short of its size once its listener's lead falls under the
guard plus a frame and a decode (`flush_lead_s`, talker.py `_lead_short`), so the work
before a listener's next audio is one frame at most. Early prefill runs in steps of a
few tens of ms (prefill.py), so a commit arriving meanwhile waits for one of them at most.

Catching up (`_catch_up`): before a decode step, the speaking responses one step behind it
take theirs, so that the decode steps keep batching (a chunk's Code2Wav decode, the "codec"
step, comes due for each response at its own frame and would otherwise split the batch).
Likewise a commit that came while an earlier first packet was under way (within the
estimated cost of one) takes its steps before that one's next, until it has caught up,
so that the burst's first packets go on as one batch (`_first_packets_together`).

Batching: when the chosen response is at a decode step (code predictor or talker and
thinker advance), every other response at the same step joins it, up to `max_batch`,
and they run as one batched forward (batch.py). A response before its first packet
batches only with other first packets at its step: commits that arrive together are
prefilled as one thinker forward, then one talker prefill, then their first frames
together (`_group`). Chunk decodes ("codec" steps) of one length batch as well, with the
streaming Code2Wav (batch.py `_codec`): their cost is mostly per call. Responses at other
steps keep going one at a time, and phases line up within a frame or two.

Bounds and drop policies:
- `pending` (requests not yet started): `maxsize` from settings.engine_queue_size; when
  full, `respond()` fails fast with `EngineError("overloaded")` instead of queueing.
- each response's event queue: unbounded in type but bounded in practice by the
  response's own limits (max_tokens text, reasoning or tool-call deltas, at most 2 call
  events per call, max_frames audio chunks, and 1 done); its consumer is the session
  or request that asked for it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable

from . import batch
from .api import Conversation, EngineError, Event, ResponseDone, ResponseStats, now
from .capacity import FRAME_S, LoadModel
from .stream import StreamJob

log = logging.getLogger("assistant.engine")

Sink = Callable[[list[Event]], None]

# Starting estimates of the steps that may borrow a listener's slack (a new response's
# steps before its first packet, early prefill), by (phase, camera/image turn); refined
# by a moving average as they run. Tiny CPU model figures; on a GPU they shrink within
# a few steps.
STEP_COST_S = {
    ("prefill", False): 0.01,
    ("prefill", True): 0.03,
    ("thinker_forward", False): 0.01,
    ("thinker_forward", True): 0.02,
    ("early_encode", False): 0.005,
    ("early_encode", True): 0.03,
    ("early_forward", False): 0.015,
    ("early_forward", True): 0.03,
    ("talker_prefill", False): 0.01,
    ("talker_prefill", True): 0.015,
    ("frame", False): 0.03,
    ("frame", True): 0.03,
    ("codec", False): 0.01,
    ("codec", True): 0.01,
}
# A first packet's steps in order (the chunk ramp's first chunk is one frame by default;
# a longer one repeats frame and advance before its decode).
FIRST_PACKET_STEPS = ("prefill", "thinker_forward", "talker_prefill", "frame", "codec")
FIRST_PACKET_ORDER = {"prefill": 0, "thinker_forward": 1, "talker_prefill": 2, "frame": 3, "advance": 3, "codec": 4}
STEAL_MARGIN_S = 0.03  # slack every listener keeps after a borrowed step, for estimate errors


class LocalResponse:
    """The asyncio face of one StreamJob."""

    def __init__(self, job: StreamJob | None, conversation: Conversation, worker: ModelWorker | None) -> None:
        self.job = job
        self.id = job.item_id if job else "resp_failed"
        self._conversation = conversation
        self._worker = worker
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._finished = False

    def deliver(self, events: list[Event]) -> None:
        """Called from the worker thread."""
        self._loop.call_soon_threadsafe(self._put_all, events)

    def _put_all(self, events: list[Event]) -> None:
        for ev in events:
            self._events.put_nowait(ev)

    def fail_now(self, error: EngineError) -> None:
        self._put_all([ResponseDone("failed", None, ResponseStats(t_done=now()), error)])

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancelled = True
            if self._worker is not None:
                self._worker.wake()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while not self._finished:
            ev = await self._events.get()
            if isinstance(ev, ResponseDone):
                self._finished = True
                if ev.turn is not None:
                    # History is edited on the event loop thread only.
                    self._conversation.turns.append(ev.turn)
            yield ev


class ModelWorker:
    def __init__(
        self, maxsize: int, *, max_batch: int = 1, guard_s: float = 0.16, first_packet_target_s: float = 0.0
    ) -> None:
        self.max_batch = max(1, max_batch)
        self.guard_s = guard_s
        self.first_packet_target_s = first_packet_target_s  # a first packet's deadline after its commit
        self.pending: queue.Queue[tuple[StreamJob, Sink]] = queue.Queue(maxsize=maxsize)
        self._active: list[tuple[StreamJob, Sink]] = []
        self._calls: deque[Callable[[], None]] = deque()  # thread-safe append/popleft; tiny housekeeping only
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-worker", daemon=True)
        self.steps = 0
        self.frame_cost_s = 0.05  # moving average of one frame's decode time (updated as steps run)
        self.codec_cost_s = 0.01  # moving average of one chunk's Code2Wav decode (a "codec" step)
        self.step_cost_s = dict(STEP_COST_S)  # moving averages, see STEP_COST_S
        self.batched_steps = 0  # steps that ran several responses as one batch
        self.batched_rows = 0  # responses stepped in those
        self.load_model = LoadModel(self.max_batch)  # decode step times by batch size (capacity.py)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    def wake(self) -> None:
        self._wake.set()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the worker thread before its next step (state it alone owns)."""
        self._calls.append(fn)
        self._wake.set()

    def submit(self, job: StreamJob, sink: Sink) -> bool:
        try:
            self.pending.put_nowait((job, sink))
        except queue.Full:
            return False
        self._wake.set()
        return True

    @property
    def load(self) -> int:
        return len(self._active) + self.pending.qsize()

    def _admit(self) -> None:
        while True:
            try:
                self._active.append(self.pending.get_nowait())
            except queue.Empty:
                break
        self._drop_superseded_prefills()

    def _drop_superseded_prefills(self) -> None:
        """An early prefill (a head start on a turn still being spoken) that has not run
        yet is useless once a newer offer or the response itself exists for the same
        conversation: either covers what it would have done. Dropped unrun (they have no
        listener), so a burst of offers under load costs one prefill, not all of them."""
        latest: dict[str, StreamJob] = {}
        for job, _ in self._active:  # admission order: later entries are newer
            if not job.done and job._phase == "prefill":
                latest[job.conv.id] = job
        self._active = [
            entry
            for entry in self._active
            if not (entry[0].partial and entry[0]._phase == "prefill" and latest[entry[0].conv.id] is not entry[0])
        ]

    def _run(self) -> None:
        while not self._stop.is_set():
            while self._calls:
                self._calls.popleft()()
            self._admit()
            if not self._active:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            group = self._group(self._pick())
            t_step = now()
            lead = group[0][0]
            phase = lead._phase
            decode = phase in ("frame", "advance")
            costed = (lead._phase, lead.visual) if lead.partial or lead.first_packet_pending else None
            flush_lead_s = self.guard_s + self.frame_cost_s + self.codec_cost_s  # talker.py `_lead_short`
            for job, _ in group:
                job.flush_lead_s = flush_lead_s
            try:
                if len(group) == 1:
                    results = {group[0][0]: group[0][0].step()}
                else:
                    results = batch.step_jobs([job for job, _ in group])
                    self.batched_steps += 1
                    self.batched_rows += len(group)
            except Exception as exc:  # a bug in one response must not kill the worker
                log.exception("step of %s crashed", [job.item_id for job, _ in group])
                err = EngineError("engine_error", f"{type(exc).__name__}: {exc}"[:500])
                results = {job: job._finish("failed", err) for job, _ in group if not job.done}
            self.steps += 1
            t_done = now()
            dt = t_done - t_step
            for job, _ in group:
                job.t_stepped = t_done
            if decode:  # a frame is one "frame" step and one "advance" step
                self.frame_cost_s += 0.2 * (2.0 * dt - self.frame_cost_s)
                self.load_model.observe(phase, len(group), dt)
            elif phase == "codec":  # chunks of one or several responses: their audio's share of the load too
                self.codec_cost_s += 0.2 * (dt - self.codec_cost_s)
                frames = sum(getattr(e, "frames", 0) for job, _ in group for e in results.get(job) or [])
                self.load_model.observe_codec(max(1, frames), dt)
            if decode or phase == "codec":
                for job, _ in group:  # each row's share of the step: its real-time factor (live_load)
                    job.decode_s = getattr(job, "decode_s", 0.0) + dt / len(group)
            if costed in self.step_cost_s and len(group) == 1:
                self.step_cost_s[costed] += 0.3 * (dt - self.step_cost_s[costed])
            for job, sink in group:
                if results.get(job):
                    sink(results[job])
            self._active = [entry for entry in self._active if not entry[0].done]

    def live_load(self) -> tuple[float, int]:
        """(the sum of the speaking responses' real-time factors, how many speak): each one's
        decode time so far over the audio it has made (capacity.py). Read from the event
        loop: a snapshot of the list, whose jobs only grow their counters."""
        speaking = [
            job
            for job, _ in list(self._active)
            if job.audio and not job.done and not job.partial and getattr(job, "_frames", 0) > 0
        ]
        return sum(getattr(job, "decode_s", 0.0) / (job._frames * FRAME_S) for job in speaking), len(speaking)

    def _group(self, entry: tuple[StreamJob, Sink]) -> list[tuple[StreamJob, Sink]]:
        """The chosen job plus those that step with it as one batched forward (batch.py).
        A stream at a decode step carries every other response at the same step. A first
        packet carries only other first packets at its step (issue #19: commits that came
        together prefill together, thinker then talker then the first frames): a batched
        step finishes when its slowest row does, and a stream's chunk decode added 15-25 ms
        to first packets at 4 users. No gathering window: a first packet takes the ones
        already queued and never waits for company; under a burst they queue during the
        step before, which is the window. Camera and image turns prefill alone (their
        vision features are per prompt), as does a turn whose conversation's early
        prefill is still between steps (it waits for that one)."""
        job = entry[0]
        if self.max_batch == 1 or job.cancelled or job.partial or getattr(job, "background", False):
            return [entry]
        prefill = job._phase in ("prefill", "thinker_forward", "talker_prefill")
        codec = job._phase == "codec"
        key = _codec_key(job) if codec else None  # streaming decodes of one chunk length batch
        if not prefill and job._phase not in ("frame", "advance") and key is None:
            return [entry]
        if prefill and (not job.first_packet_pending or job.visual):
            return [entry]
        held = {other.conv.id for other, _ in self._active if other.partial and other._phase != "prefill"}
        same = [
            e
            for e in self._active
            if e is not entry
            and e[0]._phase == job._phase
            and not (e[0].cancelled or e[0].done or e[0].partial or getattr(e[0], "background", False))
            and (not job.first_packet_pending or e[0].first_packet_pending)
            and not (prefill and (e[0].visual or e[0].conv.id in held))
            and not (codec and _codec_key(e[0]) != key)
        ]
        return [entry, *same[: self.max_batch - 1]]

    def _spare_s(self, t: float) -> float:
        """How long a step may take with every listener still ahead of its deadline by
        STEAL_MARGIN_S: the least slack of the speaking responses, less that margin."""
        slacks = [
            job.playback_slack_s(t, self.frame_cost_s, self.codec_cost_s)
            for job, _ in self._active
            if job.audio and not (job.cancelled or job.done) and job.stats.t_first_audio is not None
        ]
        return min(slacks, default=float("inf")) - STEAL_MARGIN_S

    def _pick(self) -> tuple[StreamJob, Sink]:
        """The next job to step: the least `_rank` (see the module docstring)."""
        t = now()
        spare = self._spare_s(t)
        # An early prefill between its steps holds its conversation's cached prefix (checked
        # out), and any other job of that conversation, its response or a newer offer, would
        # find the cache empty and prefill the whole conversation again: the holder goes first.
        holders = {job.conv.id: job for job, _ in self._active if job.partial and job._phase != "prefill"}
        waited_on = {
            job.conv.id for job, _ in self._active if job.conv.id in holders and holders[job.conv.id] is not job
        }
        first_waiting = any(self._first_packet(job) for job, _ in self._active)

        def rank(entry: tuple[StreamJob, Sink]) -> tuple[int, int, float]:
            job = entry[0]
            if job.cancelled or (job.partial and job.conv.id in waited_on and holders[job.conv.id] is job):
                return (0, 0, float("-inf"))
            deadline, released = self._deadline(job, t)
            cost = self.step_cost_s.get((job._phase, job.visual), self.frame_cost_s)
            borrows = deadline == float("inf") and not first_waiting if not self._first_packet(job) else True
            if borrows and cost <= spare and self._listener_slack(job, t) is None:
                return (0, 1, deadline)
            return (1, 0 if released else 1, deadline)

        best = min(self._active, key=rank)
        return self._catch_up(best, rank)

    # A decode step's phase -> the phase just before it in a speaking response's cycle
    # (frame -> [codec ->] advance -> frame).
    BEHIND = {"advance": "codec", "frame": "advance"}

    def _catch_up(self, best: tuple[StreamJob, Sink], rank) -> tuple[StreamJob, Sink]:
        """Keep the speaking responses in step, so that their decode steps batch: before a
        decode step at phase P, the responses one step behind it (at BEHIND[P]) take theirs.
        Without this a response whose chunk's decode ("codec") came due in a batched frame
        step fell out of the batch, and under load EDF kept stepping the others (shorter of
        audio) while it waited: on the tiny CPU model the four users of a staggered run
        spent most steps in groups of one or two instead of four, and all of them ran dry.
        The wait this adds to the chosen step is one short step (a chunk's decode or an
        advance, 10-25 ms on the tiny CPU model); a first packet never waits for it."""
        job = best[0]
        if self._first_packet(job) and self.max_batch > 1:
            return self._first_packets_together(best, rank)
        behind = self.BEHIND.get(job._phase)
        if behind is None or self.max_batch == 1 or job.partial or job.cancelled:
            return best
        if getattr(job, "background", False):
            return best
        lagging = [
            e
            for e in self._active
            if e[0]._phase == behind
            and not (e[0].cancelled or e[0].done or e[0].partial or getattr(e[0], "background", False))
            and not e[0].first_packet_pending
        ]
        return min(lagging, key=rank) if lagging else best

    def _first_packets_together(self, best: tuple[StreamJob, Sink], rank) -> tuple[StreamJob, Sink]:
        """Commits that arrived together go through their first packet together. A commit
        that came while an earlier one's first packet was under way, within the estimated
        cost of a whole first packet after it (it would have joined that batch had it
        come a little earlier), takes its own steps first, phase by phase, until it has
        caught up; from there they run as one batch (`_group`). In a burst of 4 on the
        tiny CPU model, a commit that missed the first batch waited for that batch's
        whole first packet and then went through its own: 45-48 ms of queue, twice the
        others' first packet. Catching up holds the earlier ones back by the newcomer's
        steps alone (its prefill, and its talker prefill and frame when they are ahead of
        it), and the window bounds how many newcomers may do so; an arrival that is
        merely close (a staggered user) is outside it."""
        job = best[0]
        order = FIRST_PACKET_ORDER.get(job._phase)
        if order is None or job.visual:
            return best
        window = sum(self.step_cost_s.get((phase, False), 0.0) for phase in FIRST_PACKET_STEPS)
        behind = [
            e
            for e in self._active
            if e[0] is not job
            and self._first_packet(e[0])
            and FIRST_PACKET_ORDER.get(e[0]._phase, order) < order
            and not (e[0].cancelled or e[0].visual)
            and 0.0 <= e[0].t_submitted - job.t_submitted <= window
        ]
        return min(behind, key=lambda e: (FIRST_PACKET_ORDER[e[0]._phase], rank(e))) if behind else best

    def _first_packet(self, job: StreamJob) -> bool:
        """A response with a listener waiting for its first packet."""
        return job.first_packet_pending and not job.partial and not getattr(job, "background", False)

    def _listener_slack(self, job: StreamJob, t: float) -> float | None:
        """Seconds before a speaking response's listener runs dry; None for any other job."""
        if job.partial or getattr(job, "background", False) or not job.audio or job.first_packet_pending:
            return None
        return job.playback_slack_s(t, self.frame_cost_s, self.codec_cost_s)

    def _deadline(self, job: StreamJob, t: float) -> tuple[float, bool]:
        """(deadline, released): see the module docstring."""
        if self._first_packet(job):
            return job.t_submitted + self.first_packet_target_s, True
        slack = self._listener_slack(job, t)
        if slack is None:
            return float("inf"), True  # no listener: background
        deadline = t + slack
        if slack < 0:  # dry: it ran dry at t + slack, but it took its turn since then (see the docstring)
            deadline = max(deadline, getattr(job, "t_stepped", deadline))
        return deadline, slack < self.guard_s


def _codec_key(job) -> tuple[int, bool] | None:
    """What a response's chunk decode must share with others' to run as one batch (code2wav.py
    `batch_key`); None: it decodes alone (the windowed decode)."""
    vocoder = getattr(job, "_vocoder", None)
    return vocoder.batch_key() if vocoder is not None else None
