#!/usr/bin/env python3
"""Latency benchmark: simulated users over /v1/realtime, or the engine against stock generate().

    python scripts/bench_latency.py                      # `make bench`: in-process server, tiny model
    python scripts/bench_latency.py --url ws://host:8000/v1/realtime --concurrency 1,4
    python scripts/bench_latency.py --engine-only        # ours vs stock generate(), >= 100 codec frames
    python scripts/bench_latency.py --engine-only --turns 10

Server mode: for each concurrency level, N users at once (websocket), each streaming speech
fixtures at real-time pace in 20 ms chunks for several turns (some with camera frames),
server VAD (default) or manual commits. Per turn: server audio_ttfp, client first delta,
voice-to-voice (with the VAD wait apart), engine stages, RTF, underruns. p50/p90/p99 per
concurrency and per audio/video, against Qwen's 234 / 547 ms.

Writes <out>/{server,engine_only}.json (+ one line in runs.jsonl), a Markdown summary and
PNG plots; prints a summary table.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant.bench import report  # noqa: E402
from assistant.bench.transcription import TRANSCRIPT_TOKENS  # noqa: E402
from assistant.bench.transcription import compare as transcription_compare  # noqa: E402

DEFAULT_FIXTURES = "hello_en_us.wav,weather_en_gb_f3.wav,count_en_us_m3.wav,describe_en_scotland.wav"
# Answers of about 5 s of speech (issue #19): Qwen's recommended voice prompt asks for replies of
# at most 50 words; 63 codec frames of 80 ms are 5.04 s. The random-weight tiny model speaks one
# text token per frame, so 50 tokens fill most of them.
ANSWER_TOKENS, ANSWER_FRAMES = 50, 63
ARRIVALS = ("staggered", "burst", "poisson")
POISSON_THINK_S = 1.0  # mean pause between turns under --arrival poisson


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="benchmark this running server instead of starting one in-process")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run the server in this process (default: a child process, so users never share its GIL)",
    )
    p.add_argument("--api-key", default=os.environ.get("ASSISTANT_API_KEY"), help="for --url (env ASSISTANT_API_KEY)")
    p.add_argument("--model", default="tiny", help="in-process server / engine-only model (default: tiny)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"), help="output directory")
    p.add_argument("--concurrency", default="1,2,4,8", help="comma-separated numbers of simultaneous users")
    p.add_argument(
        "--turns",
        type=int,
        default=None,
        help="turns per user (default 5: 4 audio, 1 video); engine-only: turn-1 vs turn-N",
    )
    p.add_argument("--video-turns", type=int, default=1, help="of each user's turns, how many send camera frames")
    p.add_argument("--turn-detection", choices=("server_vad", "manual"), default="server_vad")
    p.add_argument("--transport", choices=("websocket",), default="websocket", help="(WebRTC users: not yet)")
    p.add_argument("--fixtures", default=DEFAULT_FIXTURES, help="speech fixtures, used in rotation")
    p.add_argument(
        "--answer-tokens",
        type=int,
        default=None,
        help=f"text tokens per answer (min = max; default {ANSWER_TOKENS}, engine-only 32)",
    )
    p.add_argument(
        "--answer-frames",
        type=int,
        default=None,
        help=f"codec frames per answer (max; min where possible; default {ANSWER_FRAMES} = 5 s, engine-only 100)",
    )
    p.add_argument(
        "--arrival",
        choices=ARRIVALS,
        default="staggered",
        help="staggered: users start --stagger-ms apart; burst: every user starts every turn at the same "
        "moment; poisson: starts a Poisson process (mean gap --stagger-ms), random pauses between turns",
    )
    p.add_argument(
        "--stagger-ms", type=int, default=None, help="users start this far apart (default 300; poisson: on average)"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed of --arrival poisson (default 0)")
    p.add_argument(
        "--max-sessions",
        default=None,
        help="in-process server: a number, or 'auto' (admission by measured load); default: the largest --concurrency",
    )
    p.add_argument(
        "--load-threshold", type=float, default=None, help="in-process server with --max-sessions auto (default 0.8)"
    )
    p.add_argument(
        "--first-packet-burst-ratio",
        type=float,
        default=None,
        help="in-process server with --max-sessions auto: its burst first-packet bound (default 2.0; 0 = none)",
    )
    p.add_argument(
        "--input-transcription",
        choices=("off", "on", "both"),
        default="off",
        help="Realtime input transcription of every turn; both: each level off, on, on, off (issue #15's check)",
    )
    p.add_argument("--no-prefill-probe", action="store_true", help="skip the 2 s vs 10 s prefill-token probe")
    p.add_argument("--engine-only", action="store_true", help="the engine in-process, beside stock generate()")
    p.add_argument("--reps", type=int, default=3, help="engine-only: repetitions (medians reported)")
    p.add_argument("--visual", default="none,video", help="engine-only cases: none, image, video (comma-separated)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--chat-traffic",
        type=int,
        default=0,
        help="run each level again with this many Chat Completions clients alongside (speech in and out), "
        "and compare the live first packets (extra.chat_alongside)",
    )
    args = p.parse_args(argv)
    if args.arrival == "burst" and args.stagger_ms is not None:
        p.error("--stagger-ms does not apply to --arrival burst (every user starts every turn at once)")
    if args.arrival != "poisson" and args.seed is not None:
        p.error("--seed applies to --arrival poisson only")
    admission = args.load_threshold is not None or args.first_packet_burst_ratio is not None
    if args.url and (args.max_sessions is not None or admission):
        p.error(
            "--max-sessions, --load-threshold and --first-packet-burst-ratio configure the in-process server, not --url"
        )
    if admission and args.max_sessions != "auto":
        p.error("--load-threshold and --first-packet-burst-ratio apply with --max-sessions auto")
    if args.max_sessions not in (None, "auto"):
        try:
            args.max_sessions = int(args.max_sessions)
        except ValueError:
            p.error(f"--max-sessions takes a number or 'auto', not {args.max_sessions!r}")
    args.stagger_ms = 300 if args.stagger_ms is None else args.stagger_ms
    args.seed = args.seed or 0
    return args


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="turn", disable=quiet, leave=True, dynamic_ncols=True)


def _settings(args, **overrides):
    from assistant.settings import Settings, from_sources

    names = {f.name for f in dataclasses.fields(Settings)}
    return from_sources(None, env=os.environ, **{k: v for k, v in overrides.items() if k in names})


# ---------------------------------------------------------------------------- server mode


def _health(url: str) -> dict:
    http = url.replace("wss://", "https://").replace("ws://", "http://").split("/v1/")[0] + "/health"
    try:
        with urllib.request.urlopen(http, timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError) as exc:
        return {"health_error": str(exc)}


def _plan(args, utterances) -> list:
    from assistant.bench.users import TurnPlan

    turns = args.turns or 5
    video = min(args.video_turns, turns)
    # Video turns come last, so turn 1 and the last audio turn compare equal inputs kinds.
    return [TurnPlan(utterances[i % len(utterances)], video=i >= turns - video) for i in range(turns)]


async def _level(args, url, conc: int, plan, frames, bar, transcription: bool = False) -> list[dict]:
    from assistant.bench.users import run_user

    def on_turn(record):
        bar.update(1)

    cfgs = _user_configs(args, url, conc, transcription)
    results = await asyncio.gather(*(run_user(c, plan, frames, on_turn) for c in cfgs), return_exceptions=True)
    records = []
    for user, res in enumerate(results):
        if isinstance(res, BaseException):
            error = f"{type(res).__name__}: {res}"
            records.append(
                {
                    "user": user,
                    "turn": 1,
                    "kind": plan[0].video and "video" or "audio",
                    # Admission control said no (session_limit_reached or HTTP 503): not a failure.
                    "status": "refused" if "session_limit_reached" in error or "HTTP 503" in error else "failed",
                    "error": error,
                }
            )
            continue
        records += [{"user": user, **r} for r in res]
    return [{"concurrency": conc, **r, **({"input_transcription": True} if transcription else {})} for r in records]


def _user_configs(args, url: str, conc: int, transcription: bool = False) -> list:
    """When each user starts, and how long it pauses between turns, for --arrival."""
    import random

    from assistant.bench.users import Rendezvous, UserConfig

    manual = args.turn_detection == "manual"
    if args.arrival == "burst":
        meet = Rendezvous(conc)
        return [
            UserConfig(url, manual, args.api_key, transcription=transcription, rendezvous=meet) for _ in range(conc)
        ]
    if args.arrival == "poisson":
        rng = random.Random(args.seed * 1000 + conc)
        starts, t = [], 0.0
        for _ in range(conc):
            starts.append(t)
            t += rng.expovariate(1000 / max(1, args.stagger_ms))
        return [
            UserConfig(
                url,
                manual,
                args.api_key,
                transcription=transcription,
                start_delay_s=s,
                think_s=lambda: rng.expovariate(1 / POISSON_THINK_S),
            )
            for s in starts
        ]
    return [
        UserConfig(url, manual, args.api_key, transcription=transcription, start_delay_s=i * args.stagger_ms / 1000)
        for i in range(conc)
    ]


async def _with_chat(args, url, conc: int, plan, frames, without: list[dict], tokens: int) -> dict:
    """The same level again with Chat Completions clients running throughout (chat_traffic.py)."""
    from assistant.bench.chat_traffic import ChatLoad, compare, request_body
    from assistant.bench.users import RATE_HZ

    base = url.replace("wss://", "https://").replace("ws://", "http://").split("/v1/")[0]
    body = request_body(plan[0].utterance.pcm16, RATE_HZ, tokens)
    async with ChatLoad(base, body, args.chat_traffic, args.api_key) as load:
        await asyncio.sleep(1.0)  # the chat requests are in the worker before the live users start
        with _progress(conc * len(plan), f"{conc} user(s) + {args.chat_traffic} chat", args.quiet) as bar:
            with_chat = await _level(args, url, conc, plan, frames, bar)
    return {"first_packet": compare(without, with_chat), "chat": load.summary()}


PROBE_KEYS = ("prefill_tokens", "audio_ttfp_ms", "stage_preprocessing_ms", "error")


async def _prefill_probe(args, url, known: dict) -> dict:
    """Tokens prefilled after the commit for a 2 s and a 10 s utterance, each the first
    turn of a fresh session (so no history is counted)."""
    from assistant.bench.users import TurnPlan, UserConfig, load_utterance, run_user

    out = {}
    for name in ("hello_en_us.wav", "long_10s_en_us.wav"):
        if name in known:  # the first turn of the first session already measured it
            out[name] = known[name]
            continue
        cfg = UserConfig(url, args.turn_detection == "manual", args.api_key)
        recs = await run_user(cfg, [TurnPlan(load_utterance(name), video=False)], [])
        r = recs[0] if recs else {}
        out[name] = {k: r.get(k) for k in PROBE_KEYS}
    return out


def _turn_trend(records: list[dict]) -> dict:
    """Issue #7: first packet of the first vs the last audio turn, at the lowest concurrency."""
    if not records:
        return {}
    low = min(r["concurrency"] for r in records)
    audio = [r for r in records if r["concurrency"] == low and r["kind"] == "audio" and r.get("error") is None]
    if not audio:
        return {}
    first_t, last_t = min(r["turn"] for r in audio), max(r["turn"] for r in audio)
    from assistant.bench.metrics import median

    first = median([r["audio_ttfp_ms"] for r in audio if r["turn"] == first_t])
    last = median([r["audio_ttfp_ms"] for r in audio if r["turn"] == last_t])
    return {
        "concurrency": low,
        "first_turn": first_t,
        "last_turn": last_t,
        "first_turn_ttfp_ms": first,
        "last_turn_ttfp_ms": last,
        "last_over_first": round(last / first, 3) if first and last else None,
    }


async def run_server_mode(args) -> dict:
    from assistant.bench.server import InProcessServer, ServerProcess
    from assistant.bench.users import load_jpeg_frames, load_utterance

    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    # Answers as long as real ones (about 5 s): a short answer leaves the worker idle between
    # turns, and the first packets then never meet the load that real use puts them under.
    tokens, frames_n = args.answer_tokens or ANSWER_TOKENS, args.answer_frames or ANSWER_FRAMES
    utterances = [load_utterance(n.strip()) for n in args.fixtures.split(",") if n.strip()]
    plan = _plan(args, utterances)
    frames = load_jpeg_frames()
    t0 = time.monotonic()
    server_ctx = None
    if args.url:
        url, server_info = args.url, {"url": args.url, "in_process": False, **_health(args.url)}
    else:
        settings = _settings(
            args,
            model=args.model,
            log_level="warning",
            max_sessions=max(levels) if args.max_sessions is None else args.max_sessions,
            **({} if args.load_threshold is None else {"load_threshold": args.load_threshold}),
            **(
                {}
                if args.first_packet_burst_ratio is None
                else {"first_packet_burst_ratio": args.first_packet_burst_ratio}
            ),
            min_answer_tokens=tokens,
            max_answer_tokens=tokens,
            min_answer_frames=frames_n,  # applied when the server has this setting
            max_answer_frames=frames_n,
            transcription_min_tokens=TRANSCRIPT_TOKENS,
            transcription_max_tokens=TRANSCRIPT_TOKENS,
        )
        where = "in-process" if args.in_process else "in a child process"
        print(f"starting the server {where} ({args.model})...", file=sys.stderr, flush=True)
        server_ctx = InProcessServer(settings) if args.in_process else ServerProcess(settings)
        server_ctx.__enter__()
        url = server_ctx.url
        server_info = {"url": url, "in_process": args.in_process, **_health(url)}
    t_started = time.monotonic()
    records: list[dict] = []
    transcribed: list[dict] = []  # --input-transcription both: the turns with it on
    extra: dict = {}
    try:
        # both: off, on, on, off (ABBA), so a machine load that drifts during the run weighs on both alike
        modes = {"off": [False], "on": [True], "both": [False, True, True, False]}[args.input_transcription]
        for conc in levels:
            for transcription in modes:
                t_level = time.monotonic()
                with _progress(conc * len(plan), f"{conc} user(s)", args.quiet) as bar:
                    records += await _level(args, url, conc, plan, frames, bar, transcription)
                key = f"{conc}+transcription" if transcription else str(conc)
                runtimes = extra.setdefault("level_runtime_s", {})
                runtimes[key] = round(runtimes.get(key, 0.0) + time.monotonic() - t_level, 1)
            if args.chat_traffic:
                extra.setdefault("chat_alongside", {})[str(conc)] = await _with_chat(
                    args,
                    url,
                    conc,
                    plan,
                    frames,
                    [r for r in records if r["concurrency"] == conc and not r.get("input_transcription")],
                    tokens,
                )
        if args.input_transcription == "both":
            extra["input_transcription_on_vs_off"] = transcription_compare(records)
            transcribed = [r for r in records if r.get("input_transcription")]
            records = [r for r in records if not r.get("input_transcription")]  # the tables: transcription off
        extra["turn_trend"] = _turn_trend(records)
        if 1 in levels and 4 in levels:
            from assistant.bench.metrics import concurrency_ratio

            extra["concurrency_4_vs_1"] = concurrency_ratio(records)
        if 1 in levels:
            from assistant.bench.metrics import capacity

            extra["capacity"] = capacity(records)
        if not args.no_prefill_probe:
            first = next((r for r in records if r.get("turn") == 1 and r.get("error") is None), None)
            known = (
                {first["fixture"]: {k: first.get(k) for k in PROBE_KEYS}} if first and first["kind"] == "audio" else {}
            )
            extra["prefill_tokens_after_commit"] = await _prefill_probe(args, url, known)
    finally:
        if server_ctx is not None:
            server_ctx.__exit__(None, None, None)
    return {
        "schema": report.SCHEMA,
        "mode": "server",
        "started_at": _now_iso(),
        "runtime_s": round(time.monotonic() - t0, 1),
        "server_start_s": round(t_started - t0, 1),
        "environment": report.environment(),
        "server": server_info,
        "config": {
            "transport": args.transport,
            "turn_detection": args.turn_detection,
            "concurrency": levels,
            "turns_per_user": len(plan),
            "video_turns_per_user": sum(p.video for p in plan),
            "fixtures": [u.name for u in utterances],
            "answer_tokens": tokens,
            "answer_frames": frames_n,
            "stagger_ms": args.stagger_ms,
            "arrival": args.arrival,
            "max_sessions": server_info.get("max_sessions"),
            "seed": args.seed if args.arrival == "poisson" else None,
            "chunk_ms": 20,
            "underrun_gap_ms": 100,
        },
        "records": records,
        "records_input_transcription": transcribed,
        "summary": report.summarize_server(records),
        "extra": extra,
    }


# ---------------------------------------------------------------------------- engine-only mode


async def run_engine_only(args) -> dict:
    from assistant.bench import engine_only as eo
    from assistant.engine import load_engine

    t0 = time.monotonic()
    length = eo.AnswerLength(args.answer_tokens or 32, args.answer_frames or 100)
    visuals = [v.strip() for v in args.visual.split(",") if v.strip()]
    engine = load_engine(_settings(args, model=args.model, log_level="warning"))
    await engine.start()
    wav = eo.FIXTURES / args.fixtures.split(",")[0].strip()
    run = {
        "schema": report.SCHEMA,
        "mode": "engine_only",
        "started_at": _now_iso(),
        "environment": report.environment(),
        "engine": dataclasses.asdict(engine.info),
        "config": {
            "fixture": wav.name,
            "answer_tokens": length.tokens,
            "answer_frames": length.frames,
            "reps": args.reps,
            "visual": visuals,
            "turns": args.turns,
        },
        "cases": {},
    }
    try:
        total = 2 * args.reps * len(visuals) + (args.turns or 0) * args.reps
        with _progress(total, "engine only", args.quiet) as bar:
            for visual in visuals:
                name = "audio" if visual == "none" else f"audio+{visual}"
                run["cases"][name] = await eo.compare(engine, eo.user_parts(wav, visual), length, args.reps, bar)
            if args.turns:
                short = eo.AnswerLength(min(length.tokens, 8), min(length.frames, 12))
                run["turns"] = await eo.turns(engine, eo.user_parts(wav), short, args.turns, bar, reps=args.reps)
        run["prefill_tokens"] = await eo.prefill_tokens(
            engine,
            {"2s": eo.FIXTURES / "hello_en_us.wav", "10s": eo.FIXTURES / "long_10s_en_us.wav"},
            eo.AnswerLength(2, 2),
        )
    finally:
        await engine.close()
    run["runtime_s"] = round(time.monotonic() - t0, 1)
    return run


# ---------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mode = "engine_only" if args.engine_only else "server"
    run = asyncio.run(run_engine_only(args) if args.engine_only else run_server_mode(args))
    run["plots"] = []
    if not args.no_plots:
        plot = report.plot_engine_only if args.engine_only else report.plot_server
        run["plots"] = [str(Path(p).relative_to(out)) for p in plot(run, out)]
    path = report.write_json(out, mode, run)
    md = report.engine_markdown(run) if args.engine_only else report.server_markdown(run)
    (out / f"{mode}.md").write_text(md)
    if args.engine_only:
        table = report.console_table(report.ENGINE_COLUMNS, report.engine_table(run))
    else:
        table = report.console_table(report.SERVER_COLUMNS, report.server_table(run["summary"]))
    print()
    print(table)
    for key in ("extra", "turns", "prefill_tokens"):
        if run.get(key):
            print(f"{key}: {json.dumps(run[key])}")
    if run.get("extra", {}).get("capacity"):
        print(report.capacity_line(run["extra"]["capacity"], run["config"]))
    print(f"\nwrote {path}, {out / f'{mode}.md'} and {len(run['plots'])} plot(s) in {run['runtime_s']:.0f} s")
    failed = sum(1 for r in run.get("records", []) if r.get("error"))
    return 1 if failed and failed == len(run.get("records", [])) else 0


if __name__ == "__main__":
    sys.exit(main())
