"""What the server adds to the first audio packet: engine first chunk -> websocket client.

Runs the whole server in this process (engine, app, uvicorn on a loopback port, on its
own thread), and a plain `websockets` client on the main thread (same process, so the
monotonic clocks agree). Per turn it reads response.done's `latency` extra and the
client's receive time of the first `response.output_audio.delta`:

- server share (the budget: p50 <= 15 ms): the moment the engine's first chunk reached
  the session (`t_first_audio_received_s`, on the event loop) -> client receive;
- socket write: the same chunk -> written to the socket (`t_first_audio_sent_s`);
- engine stamp: the engine's own `t_first_audio_s` -> client receive. It also counts the
  engine's work between stamping the chunk and handing it over (the rest of that model
  step), so it is an upper bound on the server's share.

The client shares the interpreter with the server and the model worker, so the figures
are conservative: a client in another process pays no GIL for the server's work.

    .venv/bin/python scripts/bench_server_overhead.py --turns 30            # tiny model, CPU
    .venv/bin/python scripts/bench_server_overhead.py --model auto --device cuda

Prints per-turn figures, p50/p90, then one JSON line; exits 1 if the server share's p50
is over budget.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import websockets  # noqa: E402

from assistant.server.main import ServerThread  # noqa: E402
from assistant.settings import Settings  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def one_turn(ws, text: str) -> dict:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
    await ws.send(json.dumps({"type": "response.create"}))
    t_first = None
    while True:
        raw = await ws.recv()
        t = time.monotonic()  # before parsing: the arrival time
        event = json.loads(raw)
        if event["type"] == "response.output_audio.delta" and t_first is None:
            t_first = t
        elif event["type"] == "error":
            raise RuntimeError(event["error"])
        elif event["type"] == "response.done":
            lat = event["latency"]
            engine, received = lat["t_engine_first_audio_s"], lat["t_first_audio_received_s"]
            return {
                "client_ms": (t_first - received) * 1000.0,  # server got the chunk -> client receive
                "server_ms": (lat["t_first_audio_sent_s"] - received) * 1000.0,  # -> written to the socket
                "engine_stamp_ms": (t_first - engine) * 1000.0,  # engine's own stamp -> client receive
                "audio_ttfp_ms": lat["audio_ttfp_ms"],
            }


async def run_client(url: str, turns: int, warmup: int) -> list[dict]:
    results = []
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        update = {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        }
        await ws.send(json.dumps(update))
        await ws.recv()
        for i in range(warmup + turns):
            r = await one_turn(ws, f"Turn {i}: say something.")
            if i >= warmup:
                results.append(r)
                print(
                    f"turn {i - warmup:3d}: share {r['client_ms']:6.2f} ms  write {r['server_ms']:6.2f} ms  "
                    f"engine stamp -> client {r['engine_stamp_ms']:7.2f} ms",
                    flush=True,
                )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--warmup-turns", type=int, default=2)
    parser.add_argument("--max-answer-frames", type=int, default=8)
    args = parser.parse_args()
    settings = Settings(
        model=args.model,
        device=args.device,
        port=0,
        min_answer_tokens=2,
        max_answer_tokens=8,
        max_answer_frames=args.max_answer_frames,
        log_level="warning",
    )
    with ServerThread(settings) as server:
        url = server.url.replace("http://", "ws://") + "/v1/realtime"
        results = asyncio.run(run_client(url, args.turns, args.warmup_turns))
        info = server.engine.info
    rows = {
        "server share (session receipt -> client)": [r["client_ms"] for r in results],
        "socket write (session receipt -> written)": [r["server_ms"] for r in results],
        "engine stamp -> client (upper bound)": [r["engine_stamp_ms"] for r in results],
    }
    print(f"\nmodel {info.model} on {info.device} (tiny={info.is_tiny}), {len(results)} turns")
    for name, values in rows.items():
        print(f"{name:44s} p50 {statistics.median(values):7.2f} ms   p90 {percentile(values, 0.9):7.2f} ms")
    share = rows["server share (session receipt -> client)"]
    summary = {
        "model": info.model,
        "device": info.device,
        "turns": len(results),
        "server_share_p50_ms": round(statistics.median(share), 3),
        "server_share_p90_ms": round(percentile(share, 0.9), 3),
        "engine_stamp_to_client_p50_ms": round(statistics.median(rows["engine stamp -> client (upper bound)"]), 3),
        "engine_stamp_to_client_p90_ms": round(percentile(rows["engine stamp -> client (upper bound)"], 0.9), 3),
        "budget_p50_ms": 15.0,
    }
    print(json.dumps(summary))
    return 0 if summary["server_share_p50_ms"] <= 15.0 else 1


if __name__ == "__main__":
    sys.exit(main())
