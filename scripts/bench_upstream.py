#!/usr/bin/env python3
"""What a front end adds: the same users talk to an upstream directly and through a front
end (`assistant serve --upstream`), side by side in one run, and the first-packet
figures are compared.

    python scripts/bench_upstream.py                       # tiny model, both servers started here
    python scripts/bench_upstream.py --upstream-url ws://gpu-host:8091/v1/realtime --turns 20

Without --upstream-url, an upstream (`assistant serve`, tiny model, greedy, fixed answer
length) and a front end (`assistant serve --upstream ...`) run as subprocesses on
loopback, so neither shares a Python interpreter (GIL) with the other or with the users.
Users are push-to-talk (manual commits), one at a time, alternating direct and front-end
rounds so both see the same machine. Per turn: the client's first delta (commit sent ->
first audio delta received), the server's audio_ttfp_ms, and, through the front end, the
upstream's own audio_ttfp_ms and `frontend_added_ms` (ours minus the upstream's).
Writes <out>/upstream.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant.bench.metrics import summarize  # noqa: E402

KEYS = ("first_delta_ms", "audio_ttfp_ms", "upstream_ttfp_ms", "frontend_added_ms", "upstream_request_ms")
START_TIMEOUT_S = 300


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream-url", help="an upstream already running (else a tiny one is started here)")
    p.add_argument("--upstream-api-key", default=os.environ.get("ASSISTANT_UPSTREAM_API_KEY", ""))
    p.add_argument("--upstream-input-rate-hz", type=int, default=24_000)
    p.add_argument("--model", default="tiny", help="model of the upstream started here")
    p.add_argument("--answer-frames", type=int, default=12, help="codec frames per answer (upstream started here)")
    p.add_argument("--turns", type=int, default=6, help="turns per user and round")
    p.add_argument("--rounds", type=int, default=2, help="direct/front-end rounds, alternating")
    p.add_argument("--fixtures", default="hello_en_us.wav,count_en_us_m3.wav")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    return p.parse_args(argv)


class Serve:
    """`assistant serve ARGS` as a subprocess on a free loopback port."""

    def __init__(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "assistant", "serve", "--host", "127.0.0.1", "--port", "0", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.url = ""

    def wait(self) -> Serve:
        for line in self.proc.stdout:  # "Open http://127.0.0.1:PORT/" once it listens
            m = re.match(r"Open (http://\S+)/", line)
            if m:
                self.url = m.group(1).replace("http://", "ws://") + "/v1/realtime"
                break
        if not self.url:
            raise RuntimeError(f"server exited with {self.proc.wait()}")
        # Keep draining its log so it never blocks on a full pipe.
        import threading

        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        return self

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _user(url: str, plan) -> list[dict]:
    from assistant.bench.users import UserConfig, run_user

    return await run_user(UserConfig(url, manual=True), plan, [])


async def run(args) -> dict:
    from assistant.bench.users import TurnPlan, load_utterance

    started = []
    try:
        upstream_url = args.upstream_url
        if not upstream_url:
            f = str(args.answer_frames)
            up = Serve(
                "--model",
                args.model,
                "--device",
                "cpu",
                "--greedy",
                "--min-answer-tokens",
                "4",
                "--max-answer-tokens",
                f,
                "--min-answer-frames",
                f,
                "--max-answer-frames",
                f,
            )
            started.append(up)
            upstream_url = up.wait().url
        fe = Serve(
            "--upstream",
            upstream_url,
            "--upstream-input-rate-hz",
            str(args.upstream_input_rate_hz),
            *(["--upstream-api-key", args.upstream_api_key] if args.upstream_api_key else []),
        )
        started.append(fe)
        frontend_url = fe.wait().url
        utts = [load_utterance(n.strip()) for n in args.fixtures.split(",") if n.strip()]
        plan = [TurnPlan(utts[i % len(utts)], video=False) for i in range(args.turns)]
        records = []
        for r in range(args.rounds):
            for path, url in (("direct", upstream_url), ("front_end", frontend_url)):
                for rec in await _user(url, plan):
                    records.append({"path": path, "round": r + 1, **rec})
                    print(
                        f"{path:9s} round {r + 1} turn {rec['turn']}: first delta {rec.get('first_delta_ms')} ms,"
                        f" ttfp {rec.get('audio_ttfp_ms')} ms, added {rec.get('frontend_added_ms')}",
                        flush=True,
                    )
    finally:
        for s in reversed(started):
            s.stop()
    ok = [r for r in records if r.get("status") == "completed"]
    direct = summarize([r for r in ok if r["path"] == "direct"], KEYS)
    front = summarize([r for r in ok if r["path"] == "front_end"], KEYS)

    def diff(key):
        a, b = direct[key]["p50"], front[key]["p50"]
        return None if a is None or b is None else round(b - a, 3)

    return {
        "upstream_url": upstream_url,
        "turns": len(records),
        "failed": len(records) - len(ok),
        "direct": direct,
        "front_end": front,
        "added_p50_ms": {
            "frontend_added_ms (server-side, per turn)": front["frontend_added_ms"]["p50"],
            "first_delta_ms (client, p50 difference)": diff("first_delta_ms"),
            "audio_ttfp_ms (server, p50 difference)": diff("audio_ttfp_ms"),
        },
        "records": records,
    }


def markdown(res: dict) -> str:
    rows = ["| figure | direct p50 | through the front end p50 | through the front end p90 |", "|---|---|---|---|"]
    for key in KEYS:
        d, f = res["direct"][key], res["front_end"][key]
        rows.append(f"| {key} | {d['p50']} (n={d['n']}) | {f['p50']} (n={f['n']}) | {f['p90']} |")
    rows.append("")
    rows += [f"- added, {k}: **{v} ms**" for k, v in res["added_p50_ms"].items()]
    rows.append(f"- turns: {res['turns']}, failed: {res['failed']}")
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    res = asyncio.run(run(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "upstream.json").write_text(json.dumps(res, indent=1))
    print(markdown(res))
    return 0 if res["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
