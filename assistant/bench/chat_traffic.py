"""Chat Completions traffic beside live sessions (issue: one deployment serves both).

`ChatLoad` runs `clients` loops, each sending one chat completion after another (a spoken
question plus text in, text and speech out, as `chat.completions.create` would) until it
is stopped; `compare` puts the live sessions' first packets with and without that traffic
side by side. The acceptance figure is the p90 first packet with chat traffic over the p90
without it, per kind of turn, at the same concurrency (target <= 1.2).
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field

from .metrics import percentile


def request_body(pcm16: bytes, rate_hz: int, tokens: int) -> dict:
    """A spoken question (PCM16 mono) as a WAV part, plus text; speech out."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate_hz)
        out.writeframes(pcm16)
    clip = base64.b64encode(buf.getvalue()).decode("ascii")
    return {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
                    {"type": "text", "text": "Answer the question in the clip."},
                ],
            }
        ],
        "modalities": ["text", "audio"],
        "audio": {"voice": "Chelsie", "format": "wav"},
        "max_completion_tokens": tokens,
    }


@dataclass
class ChatLoad:
    base_url: str  # http://host:port
    body: dict
    clients: int
    api_key: str | None = None
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    async def __aenter__(self) -> ChatLoad:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=300)
        self._tasks = [asyncio.create_task(self._loop(), name=f"chat-load-{i}") for i in range(self.clients)]
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # each finishes its request in flight
        await self._http.aclose()

    async def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                r = await self._http.post("/v1/chat/completions", json=self.body)
                if r.status_code != 200:
                    self.errors.append(f"{r.status_code}: {r.text[:200]}")
                    await asyncio.sleep(0.5)
                    continue
                r.json()["choices"][0]["message"]["audio"]["data"]
            except Exception as exc:  # counted, reported; the load goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)
                continue
            self.latencies_s.append(time.monotonic() - t0)

    def summary(self) -> dict:
        lat = [x * 1000 for x in self.latencies_s]
        return {
            "clients": self.clients,
            "completed": len(lat),
            "errors": len(self.errors),
            "first_errors": self.errors[:3],
            "latency_ms_p50": percentile(lat, 50),
            "latency_ms_p90": percentile(lat, 90),
        }


def compare(without: Sequence[dict], with_chat: Sequence[dict]) -> dict[str, dict]:
    """Per kind of turn: p50 and p90 `audio_ttfp_ms` without and with chat traffic, and the
    p90 ratio (target <= 1.2)."""
    out = {}
    for kind in sorted({r["kind"] for r in [*without, *with_chat]}):
        a = [r["audio_ttfp_ms"] for r in without if r["kind"] == kind and r.get("error") is None]
        b = [r["audio_ttfp_ms"] for r in with_chat if r["kind"] == kind and r.get("error") is None]
        if not a or not b:
            continue
        p90a, p90b = percentile(a, 90), percentile(b, 90)
        out[kind] = {
            "turns": [len(a), len(b)],
            "p50_without": percentile(a, 50),
            "p50_with": percentile(b, 50),
            "p90_without": p90a,
            "p90_with": p90b,
            "ratio_p90": round(p90b / p90a, 3) if p90a else None,
        }
    return out
