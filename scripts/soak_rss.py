"""Resident memory over connect -> one short turn -> disconnect cycles (issue #8: RSS
must stay stable over 200 of them).

    .venv/bin/python scripts/soak_rss.py --model /tmp/tiny              # 200 cycles, tiny model, CPU
    .venv/bin/python scripts/soak_rss.py --cycles 50 --json rss.json

The server runs in this process on a loopback port (assistant/bench/server.py), so the
figure is the server's memory plus a small, constant client. RSS is read from /proc
after a garbage collection at the end of each cycle. Reports the first and last RSS and
the least-squares slope after --warmup cycles; exits 1 if the slope exceeds
--max-slope-mib-per-100 or the run passes --time-limit-s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.bench.server import InProcessServer  # noqa: E402
from assistant.bench.soak import rss_cycles, rss_figures  # noqa: E402
from assistant.settings import Settings  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="'tiny' (built on demand), a checkpoint directory or a hub id")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cycles", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20, help="cycles left out of the slope")
    p.add_argument("--answer-frames", type=int, default=2)
    p.add_argument("--max-slope-mib-per-100", type=float, default=5.0)
    p.add_argument("--time-limit-s", type=float, default=900.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    settings = Settings(
        model=args.model,
        device=args.device,
        greedy=True,
        min_answer_tokens=2,
        max_answer_tokens=2,
        min_answer_frames=args.answer_frames,
        max_answer_frames=args.answer_frames,
        log_level="warning",
    )
    t0 = time.monotonic()
    with InProcessServer(settings) as server:
        try:
            rss = asyncio.run(asyncio.wait_for(rss_cycles(server.url, args.cycles), args.time_limit_s))
        except TimeoutError:
            print(f"stopped after the {args.time_limit_s} s time limit", file=sys.stderr)
            return 1
        load = server.engine.worker.load
    report = {**rss_figures(rss, args.warmup), "seconds": round(time.monotonic() - t0, 1), "engine_load_after": load}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps({**report, "rss_mib": [round(x, 2) for x in rss]}, indent=1))
    return 0 if report["slope_mib_per_100_cycles"] <= args.max_slope_mib_per_100 and load == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
