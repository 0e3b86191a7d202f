"""Issue #15's benchmark check: the first packet with Realtime input transcription on
against off, in one run (`scripts/bench_latency.py --input-transcription both`: each
concurrency level off, on, on, off, so that a load drifting during the run weighs on both).

With it on, every committed turn is also transcribed by the resident model, as a
background job the worker ranks after every response's work; the check is that spoken
answers do not wait for it (target: on within 1.1x of off, p50 and p90, per concurrency).
"""

from __future__ import annotations

from collections.abc import Sequence

from .metrics import percentile

# Fixed transcript lengths, as answers have (--answer-tokens): a 2-4 s utterance is ~10-25 tokens.
TRANSCRIPT_TOKENS = 24


async def enable(link, timeout_s: float = 10.0) -> None:
    """Turn input transcription on for a benchmark user's session (after its handshake)."""
    import asyncio

    updated = link.wait_for(lambda e: e.get("type") in ("session.updated", "error"))
    await link.send(
        [{"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"transcription": {}}}}}]
    )
    reply = await asyncio.wait_for(updated, timeout_s)
    if reply.get("type") == "error" or not reply["session"]["audio"]["input"].get("transcription"):
        raise RuntimeError(f"the server did not turn input transcription on: {reply}")


def compare(records: Sequence[dict]) -> dict[str, dict]:
    """Per concurrency and kind of turn: p50/p90 first packet (`audio_ttfp_ms`) with
    transcription off and on, and on/off ratios."""
    out: dict[str, dict] = {}
    ok = [r for r in records if r.get("error") is None and r.get("audio_ttfp_ms") is not None]
    for conc in sorted({r["concurrency"] for r in ok}):
        for kind in sorted({r["kind"] for r in ok}):
            row = {}
            for mode in (False, True):
                values = [
                    r["audio_ttfp_ms"]
                    for r in ok
                    if r["concurrency"] == conc and r["kind"] == kind and bool(r.get("input_transcription")) is mode
                ]
                name = "on" if mode else "off"
                row[f"{name}_n"] = len(values)
                row[f"{name}_p50_ms"] = percentile(values, 50)
                row[f"{name}_p90_ms"] = percentile(values, 90)
            if row["off_n"] and row["on_n"]:
                row["p50_ratio"] = round(row["on_p50_ms"] / row["off_p50_ms"], 3)
                row["p90_ratio"] = round(row["on_p90_ms"] / row["off_p90_ms"], 3)
                out[f"{conc}/{kind}"] = row
    return out
