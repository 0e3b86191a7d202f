"""The websocket side of the client (used by `assistant talk` and the benchmark): connect
with one-line errors, run the session handshake, read server events into a `ClientCore`
and stream PCM at real-time pace. A thin transport: protocol decisions live in core.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from .core import ClientCore, Effect

CHUNK_MS = 20  # what a microphone or a WebRTC track delivers


class ClientError(Exception):
    """Something the user must fix; the message is one line. `exit_code` for the CLI."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


async def connect(url: str, api_key: str | None = None, timeout_s: float = 10.0):
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    try:
        return await ws_connect(
            url,
            additional_headers=headers,
            open_timeout=timeout_s,
            max_size=None,  # audio deltas can be large; the server bounds them
            compression=None,  # base64 audio barely compresses; deflate costs latency
            proxy=None,
        )
    except InvalidURI as exc:
        raise ClientError(f"invalid server URL {url!r}: {exc}") from None
    except InvalidStatus as exc:
        raise ClientError(f"server at {url} refused the websocket: HTTP {exc.response.status_code}") from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        reason = str(exc) or type(exc).__name__
        raise ClientError(f"cannot reach the server at {url}: {reason}") from None


class Link:
    """One websocket session. `reader()` feeds every server event into the core and
    hands the resulting effects to `on_effect`; `sent`/`received` are for tests."""

    def __init__(self, ws, core: ClientCore, on_effect: Callable[[Effect], None] | None = None) -> None:
        self.ws, self.core = ws, core
        self.on_effect = on_effect or (lambda e: None)
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._waiters: list[tuple[Callable[[dict], bool], asyncio.Future]] = []

    async def send(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            await self.ws.send(json.dumps(event, separators=(",", ":")))

    def wait_for(self, match: Callable[[dict], bool]) -> asyncio.Future:
        """A future for the next server event that `match`es (registered before it arrives)."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((match, fut))
        return fut

    async def reader(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self.ws:
                t = time.monotonic()
                event = json.loads(message)
                for effect in self.core.receive(event, t):
                    self.on_effect(effect)
                for entry in list(self._waiters):
                    if not entry[1].done() and entry[0](event):
                        entry[1].set_result(event)
                        self._waiters.remove(entry)
        except ConnectionClosed as exc:
            self.close_reason = f"{exc.rcvd.code} {exc.rcvd.reason}" if exc.rcvd else "connection lost"
        finally:
            if not self.close_reason:
                self.close_reason = "closed by the server"
            self.closed.set()
            for _, fut in self._waiters:
                if not fut.done():
                    fut.set_exception(ClientError(f"the server closed the connection ({self.close_reason})"))

    async def handshake(self, timeout_s: float = 10.0) -> dict:
        """Wait for session.created, send our session.update, wait for session.updated."""
        created = self.wait_for(lambda e: e.get("type") in ("session.created", "error"))
        first = await asyncio.wait_for(created, timeout_s)
        if first.get("type") == "error":
            err = first.get("error") or {}
            raise ClientError(f"the server refused the session: {err.get('code')}: {err.get('message')}")
        updated = self.wait_for(lambda e: e.get("type") in ("session.updated", "error"))
        await self.send([self.core.session_update()])
        reply = await asyncio.wait_for(updated, timeout_s)
        if reply.get("type") == "error":
            err = reply.get("error") or {}
            raise ClientError(f"session.update rejected: {err.get('code')}: {err.get('message')}")
        return reply

    async def close(self) -> None:
        await self.ws.close()


async def stream_pcm(
    link: Link,
    pcm16: bytes,
    rate_hz: int,
    *,
    images: list[tuple[float, bytes]] = (),
    realtime: bool = True,
    on_chunk: Callable[[int, float], None] | None = None,
) -> float:
    """Send `pcm16` as 20 ms `input_audio_buffer.append` events at real-time pace (chunk
    i leaves at start + i*20 ms, sleeping to absolute deadlines so delays do not
    accumulate), with `images` ((seconds into the clip, JPEG)) interleaved at their
    times. `on_chunk(i, t_sent)` after each chunk. Returns the start time."""
    step = rate_hz * CHUNK_MS // 1000 * 2
    pending = sorted(images, key=lambda x: x[0])
    t0 = time.monotonic()
    for i, offset in enumerate(range(0, len(pcm16), step)):
        clip_s = i * CHUNK_MS / 1000
        if realtime:
            delay = t0 + clip_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        while pending and pending[0][0] <= clip_s:
            await link.send([link.core.append_image(pending.pop(0)[1])])
        await link.send([link.core.append_audio(pcm16[offset : offset + step])])
        if on_chunk:
            on_chunk(i, time.monotonic())
        if link.closed.is_set():
            raise ClientError(f"the server closed the connection ({link.close_reason})")
    for _, jpeg in pending:
        await link.send([link.core.append_image(jpeg)])
    return t0
