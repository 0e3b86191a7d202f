"""Reliability and security over the real websocket server (tiny model, CPU, loopback):
bad input that must leave the session working, idle sessions, authentication (API key,
client secrets, Origin), secrets kept out of logs, and clients that vanish mid-response
(the response is cancelled, every task ends, nothing stays alive).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
import logging
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
import websockets
from live_server import tiny_server, ws_url
from PIL import Image

from assistant.audio import float_to_pcm16
from assistant.bench.soak import TurnInput, conversation, rss_cycles, rss_figures
from assistant.realtime.session import RealtimeSession

KEY = "sk-test-9f8e7d6c5b4a"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tiny_dir):
    """Short greedy answers, an API key, a 2 s idle timeout, 2 s of input audio at most."""
    with tiny_server(
        tiny_dir,
        api_key=KEY,
        greedy=True,
        min_answer_tokens=2,
        max_answer_tokens=3,
        min_answer_frames=2,
        max_answer_frames=2,
        idle_timeout_s=2,
        max_input_audio_s=2,
        image_fps=0,  # every image is decoded: the bad ones must each get their error
        max_image_pixels=1_000_000,
        log_level="debug",  # the no-secrets-in-logs test reads everything
        max_sessions=8,  # not admission by load: sessions in quick succession overlap for a moment
    ) as running:
        yield running


@pytest.fixture(scope="module")
def long_server(tiny_dir):
    """No key; answers of exactly 60 codec frames, so a response outlives a disconnect."""
    with tiny_server(
        tiny_dir,
        greedy=True,
        min_answer_tokens=2,
        max_answer_tokens=60,
        min_answer_frames=60,
        max_answer_frames=60,
    ) as running:
        yield running


def on_server_loop(server, fn):
    """Run `fn()` on the server's event loop (its tasks live there)."""

    async def call():
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), server.loop).result(10)


async def recv_until(ws, kind: str, timeout_s: float = 60.0) -> list[dict]:
    events = []
    async with asyncio.timeout(timeout_s):
        while True:
            events.append(json.loads(await ws.recv()))
            if events[-1]["type"] == kind:
                return events


async def connect(server, manual: bool = True, **kw):
    ws = await websockets.connect(ws_url(server), additional_headers=AUTH, max_size=None, **kw)
    assert json.loads(await ws.recv())["type"] == "session.created"
    if manual:
        await ws.send(json.dumps({"type": "session.update", "session": _manual()}))
        await recv_until(ws, "session.updated")
    return ws


def _manual() -> dict:
    return {"type": "realtime", "audio": {"input": {"turn_detection": None}}}


def pcm_b64(seconds: float, rate: int = 24000) -> str:
    t = np.arange(int(seconds * rate)) / rate
    return base64.b64encode(float_to_pcm16(0.1 * np.sin(2 * np.pi * 220 * t))).decode()


def png_b64(size: tuple[int, int], color=(200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height, all zeros: a few KiB that decode to gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


async def one_turn(ws) -> dict:
    """A short spoken answer to what the conversation holds; returns response.done."""
    await ws.send(json.dumps({"type": "response.create"}))
    done = (await recv_until(ws, "response.done"))[-1]
    assert done["response"]["status"] == "completed", done
    return done


# ---------------------------------------------------------------------------- bad input


async def test_audio_faster_than_real_time_is_accepted_up_to_the_buffer_limit(server):
    """Policy: no pacing is enforced (a client may upload a recording at once); what is
    buffered is bounded by max_input_audio_s, past which appends get an error."""
    ws = await connect(server)
    try:
        chunk = pcm_b64(0.1)
        for i in range(30):  # 3 s of audio in well under a second, against a 2 s limit
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk, "event_id": f"a{i}"}))
        errors = []
        await ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "c"}))
        for event in await recv_until(ws, "input_audio_buffer.committed"):
            if event["type"] == "error":
                errors.append(event["error"])
        assert errors and {e["code"] for e in errors} == {"input_audio_buffer_full"}
        assert [e["event_id"] for e in errors] == [f"a{i}" for i in range(30 - len(errors), 30)]
        await one_turn(ws)  # the session keeps working with what fitted
    finally:
        await ws.close()


async def test_huge_and_corrupt_images_are_errors_and_the_session_keeps_working(server):
    # Built before connecting: compressing 900 Mpx takes seconds on a loaded machine, past the 2 s idle limit.
    bomb = base64.b64encode(png_bomb(30_000, 30_000)).decode()  # 900 Mpx in ~100 KiB
    good = png_b64((64, 48))
    truncated = base64.b64encode(base64.b64decode(png_b64((200, 200)))[:80]).decode()
    ws = await connect(server)
    try:
        cases = {
            "bomb": bomb,
            "over_limit": png_b64((1200, 1000)),  # 1.2 Mpx > max_image_pixels
            "truncated": truncated,
            "garbage": base64.b64encode(b"GIF89a not really" * 10).decode(),
            "empty": "",
        }
        for name, data in cases.items():
            await ws.send(json.dumps({"type": "input_image_buffer.append", "image": data, "event_id": name}))
            error = (await recv_until(ws, "error"))[-1]["error"]
            assert (error["event_id"], error["code"]) == (name, "invalid_image"), error
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_image", "image_url": "data:image/png;base64," + bomb}],
        }
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item, "event_id": "item-bomb"}))
        error = (await recv_until(ws, "error"))[-1]["error"]
        assert (error["event_id"], error["code"]) == ("item-bomb", "invalid_image")
        # Nothing was lost or half-added: a good image and audio make one user turn.
        await ws.send(json.dumps({"type": "input_image_buffer.append", "image": good}))
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm_b64(0.3)}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        added = [e for e in await recv_until(ws, "conversation.item.done") if e["type"] == "conversation.item.added"]
        kinds = [c["type"] for c in added[-1]["item"]["content"]]
        assert kinds == ["input_image", "input_audio"]
        await one_turn(ws)
    finally:
        await ws.close()


async def test_session_that_never_sends_anything_is_closed_cleanly(server):
    ws = await websockets.connect(ws_url(server), additional_headers=AUTH)
    t0 = time.monotonic()
    events = [json.loads(m) async for m in ws]  # until the server closes
    assert [e["type"] for e in events] == ["session.created", "error"]
    assert events[-1]["error"]["code"] == "idle_timeout"
    assert ws.close_code == 1000 and ws.close_reason == "idle_timeout"
    assert 2.0 <= time.monotonic() - t0 < 4.0
    await wait_sessions(server, 0)


async def wait_sessions(server, n: int) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            if (await http.get(server.url + "/health")).json()["sessions"] == n:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"sessions did not return to {n}")


# ---------------------------------------------------------------------------- authentication


async def test_api_key_is_required_everywhere_but_the_page_and_health(server):
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/")).status_code in (200, 404)  # the page, if installed: never 401
        for method, path in [
            ("GET", "/metrics"),
            ("POST", "/v1/realtime/calls"),
            ("POST", "/v1/realtime/client_secrets"),
        ]:
            r = await http.request(method, path, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, r.text)
        assert (await http.get("/metrics", headers=AUTH)).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(ws_url(server), additional_headers=headers)
        assert refused.value.response.status_code == 403
    # Browsers: the key as a subprotocol.
    async with websockets.connect(ws_url(server), subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"


async def test_client_secrets(server):
    async with httpx.AsyncClient(base_url=server.url) as http:
        body = {"expires_after": {"anchor": "created_at", "seconds": 60}, "session": {"type": "realtime"}}
        r = await http.post("/v1/realtime/client_secrets", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        minted = r.json()
        assert minted["value"].startswith("ek_") and 55 <= minted["expires_at"] - time.time() <= 61
        assert minted["session"]["model"]
        secret = {"Authorization": f"Bearer {minted['value']}"}
        assert (await http.get("/metrics", headers=secret)).status_code == 200
        # A secret cannot mint more secrets; bad bodies are 4xx, not 500.
        assert (await http.post("/v1/realtime/client_secrets", headers=secret)).status_code == 401
        bad = [
            ({"content": b"{}", "headers": {**AUTH, "content-type": "text/plain"}}, 415),
            ({"content": b"{nope", "headers": {**AUTH, "content-type": "application/json"}}, 400),
            ({"json": [1, 2], "headers": AUTH}, 400),
            ({"json": {"expires_after": {"seconds": 5}}, "headers": AUTH}, 400),
            ({"json": {"expires_after": {"seconds": 7201}}, "headers": AUTH}, 400),
            ({"json": {"expires_after": {"anchor": "now", "seconds": 60}}, "headers": AUTH}, 400),
            ({"content": b"x" * 70_000, "headers": {**AUTH, "content-type": "application/json"}}, 413),
        ]
        for kwargs, status in bad:
            assert (await http.post("/v1/realtime/client_secrets", **kwargs)).status_code == status, kwargs
        assert (await http.post("/v1/realtime/client_secrets", headers=AUTH)).status_code == 200  # no body: defaults
        # The secret's session is honored, or refused by name; never echoed and ignored.
        session = {"type": "realtime", "instructions": "From the secret.", "audio": {"output": {"voice": "chelsie"}}}
        r = await http.post("/v1/realtime/client_secrets", json={"session": session}, headers=AUTH)
        assert r.json()["session"]["audio"]["output"]["voice"] == "Chelsie"
        configured = r.json()["value"]
        r = await http.post(
            "/v1/realtime/client_secrets", json={"session": {**session, "tracing": "auto"}}, headers=AUTH
        )
        assert r.status_code == 400 and (r.json()["error"]["code"], r.json()["error"]["param"]) == (
            "unsupported_feature",
            "session.tracing",
        )
    subprotocols = ["realtime", f"openai-insecure-api-key.{minted['value']}"]
    async with websockets.connect(ws_url(server), subprotocols=subprotocols) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    headers = {"Authorization": f"Bearer {configured}"}
    async with websockets.connect(ws_url(server), additional_headers=headers) as ws:
        created = json.loads(await ws.recv())
        assert created["session"]["instructions"] == "From the secret."
        assert created["session"]["audio"]["output"]["voice"] == "Chelsie"


async def test_wrong_content_type_on_the_calls_endpoint(server):
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.post("/v1/realtime/calls", content=b"v=0", headers={**AUTH, "content-type": "text/plain"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        r = await http.post("/v1/realtime/calls", json={"sdp": "v=0"}, headers=AUTH)
        assert r.status_code == 415


async def test_origin_check_on_websocket_upgrades(server):
    port = server.url.rsplit(":", 1)[1]
    for origin in ("https://evil.example", "null", f"http://evil.example:{port}"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(ws_url(server), additional_headers=AUTH, origin=origin)
        assert refused.value.response.status_code == 403, origin
    # The page itself (same host) and clients without an Origin (SDKs) are let in.
    async with websockets.connect(ws_url(server), additional_headers=AUTH, origin=f"http://127.0.0.1:{port}") as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"


def test_secrets_never_reach_the_logs(server, caplog):
    """Everything logged at DEBUG (ours, uvicorn's, websockets') while the key and a
    client secret are used, right and wrong, on every endpoint."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "assistant"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        with httpx.Client(base_url=server.url) as http:
            secret = http.post("/v1/realtime/client_secrets", headers=AUTH).json()["value"]
            http.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
            http.get(f"/metrics?api_key={KEY}")

        async def sockets():
            for proto in (KEY, secret, KEY + "x"):
                try:
                    async with websockets.connect(
                        ws_url(server), subprotocols=[f"openai-insecure-api-key.{proto}"]
                    ) as ws:
                        await ws.recv()
                except websockets.InvalidStatus:
                    pass

        asyncio.run(sockets())
        time.sleep(0.3)  # let the server thread log the closes
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
    # The test's own clients log what they send (websockets.client, httpx): not the server's logs.
    clients = ("websockets.client", "httpx", "httpcore")
    text = "\n".join(r.getMessage() for r in records if not r.name.startswith(clients))
    assert "client_secrets" in text or "GET /metrics" in text, "no server log was captured at all"
    assert KEY not in text and secret not in text


# ---------------------------------------------------------------------------- disconnects


def server_tasks(server) -> list[str]:
    return on_server_loop(server, lambda: sorted(t.get_name() for t in asyncio.all_tasks()))


def live_sessions(server) -> int:
    def count():
        gc.collect()
        return sum(isinstance(o, RealtimeSession) for o in gc.get_objects())

    return on_server_loop(server, count)


async def wait_quiet(server, n_tasks: int | None = None, timeout_s: float = 10.0) -> int:
    """Wait until no session task is left, the engine is idle and (if given) the server
    loop runs at most `n_tasks` tasks; returns the number of tasks then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tasks = server_tasks(server)
        ours = [t for t in tasks if t.startswith("ws-")]
        if not ours and server.engine.worker.load == 0 and (n_tasks is None or len(tasks) <= n_tasks):
            return len(tasks)
        await asyncio.sleep(0.05)
    raise AssertionError(f"tasks left: {server_tasks(server)} (expected {n_tasks}), load {server.engine.worker.load}")


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_client_vanishing_mid_response_cancels_it_and_leaks_nothing(long_server, how, caplog):
    server = long_server
    await conversation(ws_url(server), [TurnInput(text="warm up")])  # lazy initialisation out of the way
    await wait_sessions(server, 0)
    await asyncio.sleep(0.2)  # the previous connection's handler task ends
    baseline = await wait_quiet(server)
    worker = server.engine.worker
    ws = await websockets.connect(ws_url(server))
    await recv_until(ws, "session.created")
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "talk for a while"}]}
    await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
    await ws.send(json.dumps({"type": "response.create"}))
    await recv_until(ws, "response.output_audio.delta")
    assert worker.load == 1 and any(n.startswith("ws-") for n in server_tasks(server))
    steps = worker.steps
    if how == "abort":  # gone without a close frame, as a killed process or a lost network
        ws.transport.abort()
    else:
        await ws.close()
    t0 = time.monotonic()
    while worker.load and time.monotonic() - t0 < 5:  # noqa: ASYNC110 (the worker thread has no event)
        await asyncio.sleep(0.005)
    # The response had ~60 frames to go; it ended within a few steps of the close (the
    # steps that ran while the server was noticing), i.e. it was cancelled, not finished.
    assert worker.load == 0 and worker.steps - steps <= 4, worker.steps - steps
    assert await wait_quiet(server, baseline) <= baseline
    assert live_sessions(server) == 0
    await wait_sessions(server, 0)
    # A client going away is the client's business: no server error, no traceback.
    errors = [r.getMessage() for r in caplog.records if r.name.startswith("assistant") and r.levelno >= 40]
    assert not errors, errors


async def test_connect_turn_disconnect_cycles_release_memory(server):
    """A short version of scripts/soak_rss.py (200 cycles, figures in docs/reliability.md):
    after each session nothing of it stays alive, and RSS does not climb."""
    rss = await rss_cycles(ws_url(server), 30, headers=AUTH)
    figures = rss_figures(rss, warmup=10)
    assert live_sessions(server) == 0 and server.engine.worker.load == 0
    # The conversation KV cache (16 conversations) fills during the first cycles; past
    # that a leak of a session's audio, events or tasks would show as a steady climb.
    assert figures["last_mib"] - figures["after_warmup_mib"] < 40, figures
