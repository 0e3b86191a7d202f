"""Graceful drain: the real `assistant serve` process (tiny model) gets SIGTERM in the middle
of an answer. New sessions are refused at once, the answer finishes (response.done
completed), then its websocket closes with 1001 and the process exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parents[1]


async def _start(tiny_dir: Path, log_path: Path) -> tuple[asyncio.subprocess.Process, str]:
    argv = [
        *(sys.executable, "-m", "assistant", "serve", "--model", str(tiny_dir), "--device", "cpu", "--port", "0"),
        *("--no-warmup", "--drain-timeout-s", "60"),
        # An answer of 100 codec frames: a few seconds of work on the CPU, so SIGTERM lands mid-answer.
        *("--min-answer-frames", "100", "--max-answer-frames", "100", "--min-answer-tokens", "8"),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    log = await asyncio.to_thread(open, log_path, "wb")
    with log:  # the child keeps its own handle
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=log
        )
    async with asyncio.timeout(180):
        while line := (await proc.stdout.readline()).decode():
            if found := re.match(r"Open (http://\S+)/", line):
                return proc, found.group(1)
    raise AssertionError(f"the server did not start:\n{(await asyncio.to_thread(log_path.read_text))[-3000:]}")


async def _events_until_close(ws) -> list[dict]:
    events = []
    try:
        async for message in ws:
            event = json.loads(message)
            event["_t"] = time.monotonic()
            events.append(event)
    except websockets.ConnectionClosed:
        pass
    return events


async def test_sigterm_mid_answer_finishes_it_then_closes_1001_and_exits_0(tiny_dir, tmp_path):
    log_path = tmp_path / "server.log"
    proc, url = await _start(tiny_dir, log_path)
    ws_url = url.replace("http://", "ws://") + "/v1/realtime"
    try:
        async with websockets.connect(ws_url, max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
            assert json.loads(await ws.recv())["type"] == "session.updated"
            text = {"type": "input_text", "text": "Tell me about the weather."}
            item = {"type": "message", "role": "user", "content": [text]}
            await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
            await ws.send(json.dumps({"type": "response.create"}))
            while json.loads(await ws.recv())["type"] != "response.output_audio.delta":
                pass
            proc.send_signal(signal.SIGTERM)
            t_term = time.monotonic()
            reader = asyncio.create_task(_events_until_close(ws))

            # New sessions are refused while the answer runs.
            async with httpx.AsyncClient(base_url=url) as http:
                for _ in range(50):
                    health = await http.get("/health")
                    if health.status_code == 503:
                        break
                    await asyncio.sleep(0.05)
                assert health.status_code == 503 and health.json()["status"] == "draining"
                call = await http.post(
                    "/v1/realtime/calls", content=b"v=0\r\n", headers={"Content-Type": "application/sdp"}
                )
                assert call.status_code == 503 and call.json()["error"]["code"] == "session_limit_reached"
            async with websockets.connect(ws_url) as refused:
                error = json.loads(await refused.recv())
                assert error["type"] == "error" and error["error"]["code"] == "session_limit_reached"
                await refused.wait_closed()
                assert refused.close_code == 1013
            t_refused = time.monotonic()
            assert not reader.done(), "the answer in progress had not finished"

            events = await asyncio.wait_for(reader, 120)
            assert ws.close_code == 1001, (ws.close_code, ws.close_reason)
        done = [e for e in events if e["type"] == "response.done"]
        assert len(done) == 1 and done[0]["response"]["status"] == "completed", done
        assert done[0]["_t"] > t_refused, "the answer was still running when new sessions were refused"
        rc = await asyncio.wait_for(proc.wait(), 60)
        t_exit = time.monotonic()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = await asyncio.to_thread(log_path.read_text)
    assert rc == 0, log[-3000:]
    assert "drained in" in log
    print(
        f"\nSIGTERM -> response.done {done[0]['_t'] - t_term:.2f} s (answer finished) -> exit 0 "
        f"{t_exit - t_term:.2f} s after the signal"
    )
