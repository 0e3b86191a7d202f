"""Per-turn latency metrics and their summaries. Pure functions, no I/O.

Names follow vLLM-Omni's vocabulary so figures compare with `vllm bench serve --omni`
(realtime-landscape.md §2, §8.6): `audio_ttfp_ms` (server: commit -> first audio packet),
`audio_rtf` (generation time / audio duration), underruns = gaps longer than 100 ms
(vLLM-Omni's AUDIO_CONTINUITY_DEFAULT_THRESHOLD_S). Voice-to-voice runs from the end of
speech in the input to the first *audible* output sample (pipecat's TTFA: first packet plus
its leading silence), with the VAD's silence wait reported separately.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

# Qwen3-Omni technical report, Table 2 (qwen3-omni-streaming.md §4): theoretical first
# packet at concurrency 1, audio / video input.
TARGET_AUDIO_MS = 234.0
TARGET_VIDEO_MS = 547.0
UNDERRUN_GAP_MS = 100.0
# -40 dBFS: quieter than this counts as silence when looking for the first audible sample.
AUDIBLE_THRESHOLD = 0.01
PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); None for no values."""
    clean = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return None
    return round(float(np.percentile(clean, q)), 3)


def first_audible_offset_ms(pcm16: bytes, sample_rate_hz: int, threshold: float = AUDIBLE_THRESHOLD) -> float | None:
    """Milliseconds into `pcm16` of the first sample louder than `threshold` (None if none)."""
    samples = np.frombuffer(pcm16, dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold * 32768)
    return None if loud.size == 0 else float(loud[0]) * 1000.0 / sample_rate_hz


def playout(arrivals: Iterable[tuple[float, float]], jitter_ms: float = 0.0, gap_ms: float = UNDERRUN_GAP_MS) -> dict:
    """Play chunks as they arrive and count underruns.

    `arrivals`: (arrival time in ms, chunk duration in ms), in arrival order. Playback
    starts `jitter_ms` after the first arrival; each chunk plays right after the previous
    one, or when it arrives if the player ran dry. A wait longer than `gap_ms` is an
    underrun (shorter ones are counted in `stall_ms` only).
    """
    cursor = None
    underruns, stall_ms, worst_ms = 0, 0.0, 0.0
    for t_ms, dur_ms in arrivals:
        if cursor is None:
            cursor = t_ms + jitter_ms
        elif t_ms > cursor:
            gap = t_ms - cursor
            stall_ms += gap
            worst_ms = max(worst_ms, gap)
            underruns += gap > gap_ms
            cursor = t_ms
        cursor += dur_ms
    return {"underruns": underruns, "stall_ms": round(stall_ms, 3), "worst_gap_ms": round(worst_ms, 3)}


def summarize(records: Sequence[dict], keys: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """{key: {n, p50, p90, p99, mean}} over the records that have the key."""
    out = {}
    for key in keys:
        values = [r[key] for r in records if r.get(key) is not None]
        row: dict[str, float | None] = {"n": len(values)}
        for q in PERCENTILES:
            row[f"p{q}"] = percentile(values, q)
        row["mean"] = round(float(np.mean(values)), 3) if values else None
        out[key] = row
    return out


def group(records: Sequence[dict], *fields: str) -> dict[tuple, list[dict]]:
    """Records grouped by the values of `fields`, groups in sorted order."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r.get(f) for f in fields), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])))


def target_ms(kind: str) -> float:
    return TARGET_VIDEO_MS if kind == "video" else TARGET_AUDIO_MS


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 50)


def concurrency_ratio(records: Sequence[dict], at: int = 4, base: int = 1) -> dict[str, dict]:
    """Issue #7's acceptance, per kind of turn: the p90 first packet (`audio_ttfp_ms`) at
    `at` users over the p50 at `base` users (target <= 1.5), and the underruns at `at`
    (target 0). Audio and video turns apart: a video turn costs more even alone, so a
    mixed p90 would compare video turns with an audio median. Kinds missing either
    level are left out."""
    out = {}
    for kind in sorted({r["kind"] for r in records}):
        ok = [r for r in records if r["kind"] == kind and r.get("error") is None]
        low = [r["audio_ttfp_ms"] for r in ok if r["concurrency"] == base]
        high = [r for r in ok if r["concurrency"] == at]
        if not low or not high:
            continue
        p50, p90 = percentile(low, 50), percentile([r["audio_ttfp_ms"] for r in high], 90)
        out[kind] = {
            f"p50_at_{base}": p50,
            f"p90_at_{at}": p90,
            "ratio": round(p90 / p50, 3) if p50 and p90 is not None else None,
            f"underruns_at_{at}": sum(r.get("underruns") or 0 for r in high),
        }
    return out


CAPACITY_RATIO = 1.5  # issue #19: a level is served when its p90 first packet is within 1.5x the 1-user p50


def capacity(records: Sequence[dict], kind: str = "audio", ratio: float = CAPACITY_RATIO) -> dict:
    """Issue #19's capacity figure for one kind of turn: the largest concurrency at which
    the p90 first packet (`audio_ttfp_ms`) stays within `ratio` x the p50 at concurrency
    1, with zero underruns and every user admitted and answered; that level and every
    level below it must pass (a machine that misses at 2 users and passes at 4 has no
    capacity of 4). Also 1/RTF (p50 of 1 / `audio_rtf`) per level: how many times faster
    than real time one answer was generated, the throughput bound beside the latency one.
    `capacity` is None without a concurrency-1 level, 0 when even 1 user misses."""
    recs = [r for r in records if r.get("kind") == kind]
    levels = sorted({r["concurrency"] for r in recs})
    base = [r["audio_ttfp_ms"] for r in recs if r["concurrency"] == 1 and r.get("error") is None]
    p50 = percentile(base, 50)
    per_level = {}
    cap: int | None = 0 if p50 else None
    for conc in levels:
        at = [r for r in recs if r["concurrency"] == conc]
        ok = [r for r in at if r.get("error") is None]
        p90 = percentile([r["audio_ttfp_ms"] for r in ok], 90)
        underruns = sum(r.get("underruns") or 0 for r in ok)
        rtfs = [1.0 / r["audio_rtf"] for r in ok if r.get("audio_rtf")]
        passed = bool(p50 and p90 is not None and ok and len(ok) == len(at) and underruns == 0 and p90 <= ratio * p50)
        per_level[str(conc)] = {
            "p90_ms": p90,
            "ratio": round(p90 / p50, 3) if p50 and p90 is not None else None,
            "underruns": underruns,
            "failed_or_refused": len(at) - len(ok),
            "inverse_rtf_p50": percentile(rtfs, 50),
            "passed": passed,
        }
        if cap is not None and cap == (levels[levels.index(conc) - 1] if levels.index(conc) else 0) and passed:
            cap = conc
    return {"kind": kind, "p50_at_1_ms": p50, "max_ratio": ratio, "capacity": cap, "levels": per_level}
