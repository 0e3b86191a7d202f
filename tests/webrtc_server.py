"""The server of the WebRTC end-to-end tests (test_webrtc*.py), inside their private network
namespace: `build_app` (websocket + WebRTC routers, the tiny model) under uvicorn on the
namespace's veth address, and `Server`, which connects aiortc client peers to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
from webrtc_peer import FIXTURES, ClientPeer, read_wav

MAX_SESSIONS = 3
CONNECT_TIMEOUT_S = 3.0
# ICE consent (RFC 7675), shortened for the tests: a check every 1.7 s, gone after 5 misses in a row. (The
# default, 30 s, is aioice's own 6 checks x 5 s.) Each check waits 0.5 s for its answer, and a client in this
# process shares the event loop with the server: under the data-channel flood a much shorter timeout failed.
CONSENT_TIMEOUT_S = 10.0


class Server:
    def __init__(self, url: str, calls, engine, settings) -> None:
        self.url, self.calls, self.engine, self.settings = url, calls, engine, settings

    async def connect(self, client: ClientPeer, **post) -> tuple[str, float]:
        """POST the client's offer, apply the answer, wait until connected. Returns (call id, connect ms)."""
        t0 = time.monotonic()
        offer = await client.offer()
        async with httpx.AsyncClient() as http:
            reply = await http.post(
                f"{self.url}/v1/realtime/calls", content=offer, headers={"Content-Type": "application/sdp"}, **post
            )
        assert reply.status_code == 201, reply.text
        assert reply.headers["content-type"].startswith("application/sdp")
        location = reply.headers["location"]
        assert location.startswith("/v1/realtime/calls/")
        await client.accept(reply.text)
        await asyncio.wait_for(client.connected.wait(), 20)
        await asyncio.wait_for(client.channel_open.wait(), 10)
        return location.rsplit("/", 1)[1], (time.monotonic() - t0) * 1000

    async def wait_all_closed(self, timeout_s: float = 10.0) -> None:
        """Every call has finished closing (a client's close reaches the server as a DTLS close)."""
        waits = [call.closed.wait() for call in list(self.calls.calls.values())]
        await asyncio.wait_for(asyncio.gather(*waits), timeout_s)
        assert not self.calls.calls, f"calls still open: {list(self.calls.calls)}"


@contextlib.asynccontextmanager
async def serve(netns_addrs, tiny_dir):
    """The server on the tiny checkpoint at the namespace's address, until the block ends."""
    import uvicorn

    from assistant.engine import load_engine
    from assistant.server.main import build_app
    from assistant.server.webrtc import CallLimits
    from assistant.settings import Settings

    settings = Settings(
        host=netns_addrs.server_addr,
        port=0,
        model=str(tiny_dir),
        device="cpu",
        warmup=False,
        max_sessions=MAX_SESSIONS,
        min_answer_tokens=4,
        max_answer_tokens=80,  # a tool call with the tiny near-character-level BPE takes ~60 tokens
        min_answer_frames=200,  # random weights may end an answer at any frame: fix the length
        # 16 s of speech (noise: random weights), made in about 5 s on the 2-core CPU: long enough that a
        # response is still being generated when a vanished peer is detected (PEER_TIMEOUT_S + polling).
        # (120 frames stopped being enough once the engine got faster.)
        max_answer_frames=200,
        # A short first chunk, then 2 s chunks: audio made faster than real time queues up on the server,
        # as it does on a GPU (barge-in must then drop queued audio).
        chunk_ramp_frames="2,25",
        echo_guard_ms=0,
        webrtc_consent_timeout_s=CONSENT_TIMEOUT_S,
    )
    engine = load_engine(settings)
    await engine.start()
    app = build_app(settings, engine)
    config = uvicorn.Config(app, host=settings.host, port=0, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve(), name="uvicorn")
    while not uv.started:  # noqa: ASYNC110 (uvicorn has no started event)
        await asyncio.sleep(0.05)
    calls = app.state.webrtc_calls
    calls.limits = CallLimits(connect_timeout_s=CONNECT_TIMEOUT_S)
    port = uv.servers[0].sockets[0].getsockname()[1]
    yield Server(f"http://{settings.host}:{port}", calls, engine, settings)
    uv.should_exit = True
    await task
    await engine.close()


def speech(name: str = "hello_en_us.wav") -> bytes:
    pcm, rate = read_wav(FIXTURES / name)
    assert rate == 16_000
    return pcm
