"""How much speech the model worker can sustain, measured (issue #19). Pure bookkeeping, no I/O.

Load is in units of the worker's time: a speaking response whose decode steps take 20 ms
per 80 ms codec frame has a real-time factor of 0.25 and puts a load of 0.25 on the
worker; the sum over the responses speaking at once is the live load, and a load of 1
leaves no time at all (every listener then drifts towards an underrun). Decode steps of
several responses run as one batched forward (batch.py), so a response's share of a step
is the step's time over its rows, and the load of N responses speaking at once is the
cost of one frame at batch size N over the frame's duration: `LoadModel.load(N)`.

The costs come from the worker's own steps: the engine's warm-up runs one answer alone
and then several at once, and every decode step afterwards refines the moving average of
its (phase, batch size). Admission (`--max-sessions auto`, server/app.py) admits a new
session while `projected(sessions + 1)` stays under `--load-threshold` (0.8 by default,
as LiveKit Agents' workers stop taking jobs at 0.75): each session counts as speaking,
since any session may start a turn at any time, and the live load counts too when it is
higher (long prefills, camera turns). What is left above the threshold keeps first
packets and prefills on time (the scheduler lends them the listeners' slack).

Load alone does not bound a burst: N users who stop talking at once get their first
packets from one batched prefill and first frame (worker.py), and on the tiny CPU model
that batch of 4 took 2-3x one user's time while the load was still 0.3. So the warm-up
also times the first packets of one answer and of several submitted at once, and
admission keeps the projected first packet of every admitted session committing at once
within `--first-packet-burst-ratio` of one user's (`first_packet_ratio`).
"""

from __future__ import annotations

from dataclasses import dataclass

FRAME_S = 0.08  # one codec frame: 12.5 Hz (Qwen3-Omni's tokenizer), 1920 samples at 24 kHz
DECODE_PHASES = ("frame", "advance")  # a codec frame is one "frame" step and one "advance" step
EMA = 0.2  # weight of a new step time in the moving averages
MAX_SESSIONS_SEARCHED = 256


@dataclass(frozen=True)
class LoadReport:
    load: float  # live: sum of the speaking responses' real-time factors
    speaking: int  # responses past their first packet
    projected: float  # load with one more session, as admission computes it
    capacity_sessions: int  # the most sessions within both bounds (load and burst first packet)
    threshold: float
    measured: bool  # False until a decode step has been timed (no warm-up yet)
    first_packet_ratio: float = 1.0  # with one more session: all of them committing at once vs one alone
    max_first_packet_ratio: float = 0.0  # the bound on it (0: none)

    def has_room(self) -> bool:
        """One more session stays within the load threshold and the burst first-packet bound."""
        burst_ok = self.max_first_packet_ratio <= 0 or self.first_packet_ratio <= self.max_first_packet_ratio
        return self.projected < self.threshold and burst_ok

    def as_dict(self) -> dict:
        return {
            "load": round(self.load, 3),
            "speaking": self.speaking,
            "projected_load": round(self.projected, 3),
            "capacity_sessions": self.capacity_sessions,
            "load_threshold": self.threshold,
            "load_measured": self.measured,
            "projected_first_packet_ratio": round(self.first_packet_ratio, 3),
            "first_packet_burst_ratio": self.max_first_packet_ratio,
        }


class LoadModel:
    """Moving averages of decode step times by (phase, rows), and the load they imply."""

    def __init__(self, max_batch: int = 8) -> None:
        self.max_batch = max(1, max_batch)
        self.cost_s: dict[tuple[str, int], float] = {}
        self.codec_frame_s = 0.0  # one response's Code2Wav time per frame (its "codec" steps, per frame decoded)
        self.first_packet_s: dict[int, float] = {}  # answers submitted at once -> the slowest one's first packet
        self.calibrated = False  # set by the engine's warm-up measurement (engine/local.py)

    def observe(self, phase: str, rows: int, seconds: float) -> None:
        """A decode step of `rows` responses took `seconds`."""
        if phase not in DECODE_PHASES or rows < 1:
            return
        key = (phase, rows)
        old = self.cost_s.get(key)
        self.cost_s[key] = seconds if old is None else old + EMA * (seconds - old)

    def observe_codec(self, frames: int, seconds: float) -> None:
        """A "codec" step decoded `frames` frames in `seconds`, of one response's chunk or of
        several batched (worker.py); its cost grows with the responses speaking."""
        per_frame = seconds / max(1, frames)
        self.codec_frame_s = (
            per_frame if not self.codec_frame_s else self.codec_frame_s + EMA * (per_frame - self.codec_frame_s)
        )

    def observe_first_packets(self, rows: int, seconds: float) -> None:
        """`rows` answers submitted at once all had their first packets within `seconds`."""
        if rows < 1:
            return
        old = self.first_packet_s.get(rows)
        self.first_packet_s[rows] = seconds if old is None else old + EMA * (seconds - old)

    def first_packet_ratio(self, rows: int) -> float:
        """The first packet of `rows` answers submitted at once over one answer's alone,
        along the measured sizes as `step_s` (1.0 until one answer alone was timed). Past
        max_batch the first packets take several batches."""
        one = self.first_packet_s.get(1)
        if not one or rows <= 1:
            return 1.0
        if rows > self.max_batch:
            return rows / self.max_batch * self.first_packet_ratio(self.max_batch)
        return _along(sorted(self.first_packet_s.items()), rows) / one

    @property
    def measured(self) -> bool:
        """Calibrated at warm-up, with both decode phases timed. Live steps alone do not
        count: a server without warm-up has seen one batch size at most, by chance."""
        return self.calibrated and all(any(p == phase for p, _ in self.cost_s) for phase in DECODE_PHASES)

    def step_s(self, phase: str, rows: int) -> float:
        """Estimated time of one `phase` step of `rows` responses: measured, else linear
        between the nearest measured batch sizes, else extrapolated along the last two
        (never cheaper than the largest measured), or proportional when only one size is
        known (no batching gain assumed). Past max_batch, the rows take several steps."""
        if rows > self.max_batch:
            return rows / self.max_batch * self.step_s(phase, self.max_batch)
        return _along(sorted((b, s) for (p, b), s in self.cost_s.items() if p == phase), rows)

    def load(self, speaking: int) -> float:
        """The load of `speaking` responses speaking at once: one frame's steps over its duration."""
        if speaking <= 0:
            return 0.0
        decode = sum(self.step_s(phase, speaking) for phase in DECODE_PHASES)
        return (decode + speaking * self.codec_frame_s) / FRAME_S

    def capacity(self, threshold: float, max_first_packet_ratio: float = 0.0) -> int:
        """The most responses speaking at once whose load stays under `threshold` and, with
        a bound, whose first packets when all commit at once stay within
        `max_first_packet_ratio` of one alone."""
        if not self.measured:
            return 0
        n = 0
        while n < MAX_SESSIONS_SEARCHED and self.load(n + 1) < threshold:
            if max_first_packet_ratio > 0 and self.first_packet_ratio(n + 1) > max_first_packet_ratio:
                break
            n += 1
        return n

    def report(
        self, sessions: int, live: float, speaking: int, threshold: float, max_first_packet_ratio: float = 0.0
    ) -> LoadReport:
        """Admission's view with `sessions` admitted: a new one is projected at the load of
        sessions + 1 speaking at once, or the live load plus one more response's share,
        whichever is higher; and at the first packet of sessions + 1 committing at once."""
        n = sessions + 1
        share = self.load(n) / n
        projected = max(self.load(n), live + share)
        capacity = self.capacity(threshold, max_first_packet_ratio)
        return LoadReport(
            live,
            speaking,
            projected,
            capacity,
            threshold,
            self.measured,
            self.first_packet_ratio(n),
            max_first_packet_ratio,
        )


def _along(known: list[tuple[int, float]], rows: int) -> float:
    """A cost at `rows` from costs measured at other sizes (sorted (size, seconds)): the
    measured one, else linear between the nearest measured sizes, else extrapolated along
    the last two (never cheaper than the largest measured), or proportional when only one
    size is known (no batching gain assumed); 0.0 when nothing is known."""
    if not known:
        return 0.0
    for b, s in known:
        if b == rows:
            return s
    below = [(b, s) for b, s in known if b < rows]
    above = [(b, s) for b, s in known if b > rows]
    if below and above:
        (b0, s0), (b1, s1) = below[-1], above[0]
        return s0 + (s1 - s0) * (rows - b0) / (b1 - b0)
    if len(known) == 1:
        b0, s0 = known[0]
        return s0 * rows / b0
    if above:  # below every measured size: along the first two, not below zero
        (b0, s0), (b1, s1) = known[0], known[1]
        return max(0.0, s0 - (s1 - s0) / (b1 - b0) * (b0 - rows))
    (b0, s0), (b1, s1) = known[-2], known[-1]
    return s1 + max(0.0, (s1 - s0) / (b1 - b0)) * (rows - b1)
