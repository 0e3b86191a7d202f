"""Load and soak: N concurrent websocket clients x M turns, each client with its own
inputs, checked against the same conversation run alone.

    .venv/bin/python scripts/soak.py --model /tmp/tiny            # 16 clients x 20 turns, tiny model, CPU
    .venv/bin/python scripts/soak.py --clients 4 --turns 5 --json out.json

The server runs in this process on a loopback port (assistant/bench/server.py), with
greedy decoding and fixed answer lengths (min = max answer tokens and frames), so an
answer is a function of its conversation. Each client has distinct instructions and
distinct turns (text naming the client and the turn; every `--audio-every`-th turn a
fixture clip, its length depending on the client). Phase 1 runs every client alone, one
after the other (the reference); phase 2 runs them all at once, --rounds times (new
sessions each round, so memory can be seen to level off). Any answer under load
that differs from its reference (transcript or audio SHA-256) is a leak between
sessions or a race, and is reported.

Reports: errors, mismatches, latency percentiles (response.create -> first audio delta,
-> response.done) alone and under load, and resident memory over time. Bounded: the
whole run stops after --time-limit-s (exit 1, with what was measured). Exit 0 only if
every turn of every client completed, matched its reference and no error was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.audio import read_wav  # noqa: E402
from assistant.bench.server import InProcessServer  # noqa: E402
from assistant.bench.soak import (  # noqa: E402
    TurnInput,
    TurnResult,
    clip_pcm16,
    conversation,
    latency_summary,
    rss_mib,
    sample_rss,
    slope,
)
from assistant.settings import Settings  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
CLIPS = ("hello_en_us.wav", "count_en_us_m3.wav", "weather_en_gb_f3.wav", "describe_en_scotland.wav")
WORDS = ("apple", "river", "violet", "engine", "marble", "thunder", "pepper", "lantern", "orbit", "meadow")


def client_inputs(client: int, turns: int, audio_every: int) -> tuple[str, list[TurnInput]]:
    instructions = f"You are assistant number {client}. Answer in the style of a {WORDS[client % len(WORDS)]}."
    out = []
    for i in range(turns):
        if audio_every and i % audio_every == audio_every - 1:
            samples, _ = read_wav(FIXTURES / CLIPS[client % len(CLIPS)])
            out.append(TurnInput(audio_pcm16=clip_pcm16(samples, 0.5 + 0.1 * (client % 8))))
        else:
            word = WORDS[(client * 7 + i) % len(WORDS)]
            out.append(TurnInput(text=f"Client {client}, turn {i}: tell me about the {word}."))
    return instructions, out


async def run_alone(url: str, inputs: list[tuple[str, list[TurnInput]]]) -> list[list[TurnResult]]:
    return [await conversation(url, turns, instructions=instr) for instr, turns in inputs]


async def run_together(url: str, inputs: list[tuple[str, list[TurnInput]]], stagger_s: float) -> list:
    async def one(i: int, instr: str, turns: list[TurnInput]):
        await asyncio.sleep(i * stagger_s)
        return await conversation(url, turns, instructions=instr)

    return await asyncio.gather(*(one(i, instr, t) for i, (instr, t) in enumerate(inputs)), return_exceptions=True)


def compare(reference: list[list[TurnResult]], loaded: list) -> dict:
    mismatches, errors, failed_clients, turns_ok = [], [], [], 0
    for c, (ref, got) in enumerate(zip(reference, loaded, strict=True)):
        if isinstance(got, BaseException):
            failed_clients.append({"client": c, "error": repr(got)})
            continue
        for i, (a, b) in enumerate(zip(ref, got, strict=True)):
            errors += [{"client": c, "turn": i, **e} for e in b.errors]
            if a.answer != b.answer:
                mismatches.append({"client": c, "turn": i, "alone": a.answer, "loaded": b.answer})
            elif b.status == "completed":
                turns_ok += 1
    return {"turns_ok": turns_ok, "mismatches": mismatches, "errors": errors, "failed_clients": failed_clients}


def latencies(runs: list) -> dict:
    results = [r for run in runs if not isinstance(run, BaseException) for r in run]
    first = [r.first_audio_ms for r in results if r.first_audio_ms is not None]
    return {"first_audio_ms": latency_summary(first), "done_ms": latency_summary([r.done_ms for r in results])}


async def main_async(args: argparse.Namespace) -> dict:
    settings = Settings(
        model=args.model,
        device=args.device,
        greedy=True,
        min_answer_tokens=args.answer_tokens,
        max_answer_tokens=args.answer_tokens,
        min_answer_frames=args.answer_frames,
        max_answer_frames=args.answer_frames,
        max_sessions=args.clients,
        conversation_cache_size=2 * args.clients,
        engine_queue_size=max(64, 2 * args.clients),
        log_level="warning",
    )
    inputs = [client_inputs(c, args.turns, args.audio_every) for c in range(args.clients)]
    report: dict = {"clients": args.clients, "turns": args.turns, "answer_tokens": args.answer_tokens}
    report["answer_frames"] = args.answer_frames
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()
    t0 = time.monotonic()
    with InProcessServer(settings) as server:
        report["startup_s"] = round(time.monotonic() - t0, 1)
        sampler = asyncio.create_task(sample_rss(samples, args.rss_period_s, stop), name="rss-sampler")
        try:
            async with asyncio.timeout(args.time_limit_s):
                t = time.monotonic()
                reference = await run_alone(server.url, inputs)
                report["alone_s"] = round(time.monotonic() - t, 1)
                rss_after_alone = rss_mib()
                rounds, report["together_s"], report["rss_after_round_mib"] = [], [], []
                for _ in range(args.rounds):
                    t = time.monotonic()
                    rounds.append(await run_together(server.url, inputs, args.stagger_s))
                    report["together_s"].append(round(time.monotonic() - t, 1))
                    report["rss_after_round_mib"].append(round(rss_mib(), 1))
            checks = [compare(reference, loaded) for loaded in rounds]
            report["turns_ok"] = sum(c["turns_ok"] for c in checks)
            for key in ("mismatches", "errors", "failed_clients"):
                report[key] = [{"round": r, **x} for r, c in enumerate(checks) for x in c[key]]
            report["latency_alone"] = latencies(reference)
            report["latency_together"] = latencies([run for loaded in rounds for run in loaded])
            report["completed"] = True
        except TimeoutError:
            report["completed"] = False
            report["error"] = f"stopped after the {args.time_limit_s} s time limit"
            rss_after_alone = None
        finally:
            stop.set()
            await sampler
        worker = getattr(server.engine, "worker", None)
        report["engine_load_after"] = worker.load if worker is not None else None
    report["rss_mib"] = {
        "first": samples[0][1] if samples else None,
        "after_alone": None if rss_after_alone is None else round(rss_after_alone, 1),
        "last": samples[-1][1] if samples else None,
        "max": max(s[1] for s in samples) if samples else None,
        "slope_mib_per_min": round(60 * slope([s[0] for s in samples], [s[1] for s in samples]), 2),
        "samples": samples,
    }
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="'tiny' (built on demand), a checkpoint directory or a hub id")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--answer-tokens", type=int, default=3, help="text tokens per answer (min = max)")
    p.add_argument("--answer-frames", type=int, default=3, help="codec frames per answer (min = max)")
    p.add_argument("--audio-every", type=int, default=4, help="every Nth turn is a fixture clip (0 = text only)")
    p.add_argument("--rounds", type=int, default=2, help="concurrent rounds (memory should level off after the first)")
    p.add_argument("--stagger-s", type=float, default=0.05, help="delay between client starts under load")
    p.add_argument("--rss-period-s", type=float, default=2.0)
    p.add_argument("--time-limit-s", type=float, default=900.0)
    p.add_argument("--json", type=Path, help="write the full report here")
    args = p.parse_args()
    report = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    brief = {k: v for k, v in report.items() if k not in ("rss_mib", "mismatches", "errors")}
    brief["mismatches"] = len(report.get("mismatches", []))
    brief["errors"] = len(report.get("errors", []))
    brief["rss_mib"] = {k: v for k, v in report["rss_mib"].items() if k != "samples"}
    print(json.dumps(brief, indent=1))
    for m in report.get("mismatches", [])[:5]:
        print("MISMATCH", m)
    for e in report.get("errors", [])[:5]:
        print("ERROR", e)
    total = args.clients * args.turns * args.rounds
    ok = report.get("completed") and report.get("turns_ok") == total and not report.get("errors")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
