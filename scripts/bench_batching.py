#!/usr/bin/env python3
"""Batched decode steps on and off, side by side: N concurrent responses on one engine.

    python scripts/bench_batching.py                       # tiny model, CPU, N = 1,2,4,8
    python scripts/bench_batching.py --concurrency 4 --reps 3 --frames 100

For each N, N responses (different spoken fixtures, greedy, fixed answer length) are
submitted at once to an engine with `max_batch_responses` 1 (every step alone) and to one
with 8 (responses at the same decode step share one forward; engine/batch.py). Both
engines share one resident model and run one after the other, alternating per
repetition so machine noise hits both alike. Reported per N and mode (medians over
repetitions):

- `wall`: submit -> last response done;
- `rtf`: wall / audio of one response: below 1, N users each get audio faster than it
  plays; `speedup` is batching off over on;
- first packet p50 / max over the N responses (submit -> first audio chunk);
- `underruns`: playback gaps > 100 ms when each response is played from its first chunk
  as chunks arrive (assistant/bench/metrics.py `playout`), summed over responses;
- `rows/step`: responses per batched step.

Writes <out>/batching.json and batching.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant.bench import report  # noqa: E402
from assistant.bench.engine_only import FIXTURES, AnswerLength, user_parts  # noqa: E402
from assistant.bench.metrics import percentile, playout  # noqa: E402
from assistant.engine.api import OUTPUT_SAMPLE_RATE, AudioChunk, ResponseDone, now  # noqa: E402

CLIPS = ["hello_en_us.wav", "weather_en_gb_f3.wav", "count_en_us_m3.wav", "describe_en_scotland.wav"]
MODES = {"off": 1, "on": 8}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--concurrency", default="1,2,4,8")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--frames", type=int, default=60, help="codec frames per answer (80 ms each)")
    p.add_argument("--tokens", type=int, default=16, help="text tokens per answer")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    return p.parse_args(argv)


async def one(engine, clip: str, length: AnswerLength, t0: float) -> dict:
    conv = engine.new_conversation()
    conv.sampling = length.sampling()
    conv.add_user(user_parts(FIXTURES / clip))
    arrivals = []
    async for ev in engine.respond(conv, t_committed=t0):
        if isinstance(ev, AudioChunk):
            arrivals.append(((now() - t0) * 1000.0, ev.samples * 1000.0 / OUTPUT_SAMPLE_RATE))
        elif isinstance(ev, ResponseDone):
            if ev.status != "completed":
                raise RuntimeError(f"response {ev.status}: {ev.error}")
            return {
                "first_ms": arrivals[0][0],
                "audio_ms": sum(d for _, d in arrivals),
                "underruns": playout(arrivals)["underruns"],
            }
    raise RuntimeError("no ResponseDone")


async def level(engine, n: int, length: AnswerLength) -> dict:
    worker = engine.worker
    steps0, rows0 = worker.batched_steps, worker.batched_rows
    t0 = now()
    runs = await asyncio.gather(*(one(engine, CLIPS[i % len(CLIPS)], length, t0) for i in range(n)))
    wall_ms = (now() - t0) * 1000.0
    steps = worker.batched_steps - steps0
    return {
        "wall_ms": wall_ms,
        "rtf": wall_ms / runs[0]["audio_ms"],
        "first_p50_ms": percentile([r["first_ms"] for r in runs], 50),
        "first_max_ms": max(r["first_ms"] for r in runs),
        "underruns": sum(r["underruns"] for r in runs),
        "rows_per_step": (worker.batched_rows - rows0) / steps if steps else 1.0,
    }


async def main_async(args) -> dict:
    from assistant.engine import load_engine
    from assistant.engine.local import LocalEngine
    from assistant.settings import from_sources

    length = AnswerLength(args.tokens, args.frames)
    first = load_engine(from_sources(None, env={}, model=args.model, max_batch_responses=MODES["off"]))
    await first.start()
    engines = {"off": first}
    on_settings = from_sources(None, env={}, model=args.model, max_batch_responses=MODES["on"])
    engines["on"] = LocalEngine(on_settings, resident=first.resident, info=first.info)
    await engines["on"].start()
    levels = [int(x) for x in args.concurrency.split(",")]
    results: dict = {str(n): {m: [] for m in MODES} for n in levels}
    t0 = time.monotonic()
    try:
        for rep in range(args.reps):
            for n in levels:
                order = list(MODES) if rep % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    results[str(n)][mode].append(await level(engines[mode], n, length))
                    print(f"rep {rep} N={n} batching {mode}: {results[str(n)][mode][-1]}", flush=True)
    finally:
        for e in engines.values():
            await e.close()
    summary = []
    for n in levels:
        row = {"concurrency": n}
        for mode in MODES:
            runs = results[str(n)][mode]
            for key in ("wall_ms", "rtf", "first_p50_ms", "first_max_ms", "rows_per_step"):
                row[f"{mode}_{key}"] = round(statistics.median(r[key] for r in runs), 3)
            row[f"{mode}_underruns"] = sum(r["underruns"] for r in runs)
        row["speedup"] = round(row["off_wall_ms"] / row["on_wall_ms"], 2)
        summary.append(row)
    return {
        "mode": "batching",
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": report.environment(),
        "engine": {"model": first.info.model, "device": first.info.device, "dtype": first.info.dtype},
        "config": {"frames": args.frames, "tokens": args.tokens, "reps": args.reps, "concurrency": levels},
        "runtime_s": round(time.monotonic() - t0, 1),
        "results": results,
        "summary": summary,
    }


COLUMNS = [
    "N",
    "wall off",
    "wall on",
    "speedup",
    "rtf off",
    "rtf on",
    "first p50 off",
    "first p50 on",
    "first max off",
    "first max on",
    "underruns off",
    "underruns on",
    "rows/step on",
]


def table(run: dict) -> list[list[str]]:
    rows = []
    for r in run["summary"]:
        rows.append(
            [
                str(r["concurrency"]),
                f"{r['off_wall_ms']:.0f}",
                f"{r['on_wall_ms']:.0f}",
                f"{r['speedup']:.2f}x",
                f"{r['off_rtf']:.2f}",
                f"{r['on_rtf']:.2f}",
                f"{r['off_first_p50_ms']:.0f}",
                f"{r['on_first_p50_ms']:.0f}",
                f"{r['off_first_max_ms']:.0f}",
                f"{r['on_first_max_ms']:.0f}",
                str(r["off_underruns"]),
                str(r["on_underruns"]),
                f"{r['on_rows_per_step']:.2f}",
            ]
        )
    return rows


def markdown(run: dict) -> str:
    c = run["config"]
    head = (
        f"# Batched decode steps, off vs on ({run['started_at']})\n\n"
        f"Model `{run['engine']['model']}` on {run['engine']['device']} ({run['engine']['dtype']}); commit "
        f"{run['environment']['git_commit']}. N concurrent greedy responses of {c['frames']} codec frames "
        f"({c['frames'] * 80} ms) and {c['tokens']} text tokens, submitted at once; {c['reps']} repetitions, "
        f"off/on alternating; medians (underruns: totals). Runtime {run['runtime_s']} s.\n\n"
        "`rtf` = wall / one response's audio (< 1: every user's audio is made faster than it plays); "
        "first = submit -> first audio chunk; underruns = playback gaps > 100 ms, playing each response "
        "from its first chunk.\n\n"
    )
    return head + report.markdown_table(COLUMNS, table(run)) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    run = asyncio.run(main_async(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "batching.json").write_text(json.dumps(run, indent=1))
    (out / "batching.md").write_text(markdown(run))
    print()
    print(report.console_table(COLUMNS, table(run)))
    print(f"\nwrote {out / 'batching.json'} and {out / 'batching.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
