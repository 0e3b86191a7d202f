"""The real server in-process on a loopback port, and the stock `openai` SDK pointed at it.

Shared by the end-to-end tests that drive the server as a client would: each test module
starts its own server on the tiny checkpoint (with its own bounds) through `tiny_server`,
then talks to it with `sdk` / `async_sdk` or a raw websocket at `ws_url`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from openai import AsyncOpenAI, OpenAI

from assistant.audio import chunk_pcm16, float_to_pcm16, resample
from assistant.server.main import ServerThread
from assistant.settings import Settings

CHUNK_MS = 20  # what a browser's microphone worklet sends at a time


@contextmanager
def tiny_server(model_dir: str | Path, **settings) -> Iterator[ServerThread]:
    """The whole server on the checkpoint at `model_dir`, on the CPU and a free loopback
    port (0); `settings` are further `Settings` fields."""
    with ServerThread(Settings(model=str(model_dir), device="cpu", port=0, **settings)) as running:
        yield running


def sdk(server: ServerThread, timeout_s: float = 120.0) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=timeout_s)


def async_sdk(server: ServerThread) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def ws_url(server: ServerThread) -> str:
    return server.url.replace("http://", "ws://") + "/v1/realtime"


def pcm24(load_wav, name: str, tail_silence_s: float = 0.0) -> bytes:
    """A 16 kHz fixture clip (plus trailing silence) as 24 kHz PCM16, the realtime input format."""
    audio = np.concatenate([load_wav(name), np.zeros(int(16000 * tail_silence_s), np.float32)])
    return float_to_pcm16(resample(audio, 16000, 24000))


async def stream(conn, pcm: bytes, realtime: bool) -> None:
    """Append in 20 ms chunks, paced like a microphone when `realtime`."""
    t0 = time.monotonic()
    for i, chunk in enumerate(chunk_pcm16(pcm, 24000, CHUNK_MS)):
        await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        if realtime:
            await asyncio.sleep(max(0.0, t0 + (i + 1) * CHUNK_MS / 1000 - time.monotonic()))


async def collect_until(conn, stop: str, timeout_s: float = 120.0, fail_on_error: bool = False) -> list:
    """The SDK connection's events up to and including the first of type `stop`; with
    `fail_on_error`, an `error` event on the way fails the test."""
    events = []
    async with asyncio.timeout(timeout_s):
        async for event in conn:
            events.append(event)
            if fail_on_error and event.type == "error":
                raise AssertionError(event.error)
            if event.type == stop:
                return events
    raise AssertionError(f"connection ended before {stop}")
