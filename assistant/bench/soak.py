"""Websocket clients for the soak and memory scripts (scripts/soak.py, scripts/soak_rss.py)
and their tests: deterministic conversations over the real protocol, resident-memory
sampling and the summary figures.

A conversation is a list of turns (text, or 24 kHz PCM16 audio as an `input_audio` item,
no VAD: the input is exactly what was sent), each answered with `response.create`. What
a turn produced is kept as its transcript and the SHA-256 of its audio, so that a run
under load can be compared with the same conversation run alone (greedy decoding makes
answers a function of the input).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from dataclasses import dataclass, field

import websockets

from ..audio import float_to_pcm16, resample


@dataclass(frozen=True)
class TurnInput:
    text: str = ""
    audio_pcm16: bytes = b""  # 24 kHz mono; used instead of text when set


@dataclass
class TurnResult:
    status: str
    transcript: str
    audio_sha256: str
    audio_bytes: int
    first_audio_ms: float | None  # response.create sent -> first audio delta received
    done_ms: float  # response.create sent -> response.done received
    errors: list[dict] = field(default_factory=list)

    @property
    def answer(self) -> tuple[str, str, str]:
        """What must match between a run under load and the same input alone."""
        return self.status, self.transcript, self.audio_sha256


def clip_pcm16(samples_16k, seconds: float) -> bytes:
    """The first `seconds` of a 16 kHz float clip as 24 kHz PCM16 (the protocol's rate)."""
    return float_to_pcm16(resample(samples_16k[: int(16000 * seconds)], 16000, 24000))


def _item(turn: TurnInput) -> dict:
    if turn.audio_pcm16:
        content = [{"type": "input_audio", "audio": base64.b64encode(turn.audio_pcm16).decode()}]
    else:
        content = [{"type": "input_text", "text": turn.text}]
    return {"type": "message", "role": "user", "content": content}


async def _recv(ws, timeout_s: float) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))


async def take_turn(ws, turn: TurnInput, timeout_s: float = 120.0) -> TurnResult:
    await ws.send(json.dumps({"type": "conversation.item.create", "item": _item(turn)}))
    t0 = time.monotonic()
    await ws.send(json.dumps({"type": "response.create"}))
    audio, errors, t_first = hashlib.sha256(), [], None
    n_audio = 0
    while True:
        event = await _recv(ws, timeout_s)
        kind = event["type"]
        if kind == "response.output_audio.delta":
            if t_first is None:
                t_first = time.monotonic()
            chunk = base64.b64decode(event["delta"])
            audio.update(chunk)
            n_audio += len(chunk)
        elif kind == "error":
            errors.append(event["error"])
        elif kind == "response.done":
            response = event["response"]
            content = response["output"][0]["content"][0] if response["output"] else {}
            return TurnResult(
                status=response["status"],
                transcript=content.get("transcript", content.get("text", "")),
                audio_sha256=audio.hexdigest(),
                audio_bytes=n_audio,
                first_audio_ms=None if t_first is None else (t_first - t0) * 1000,
                done_ms=(time.monotonic() - t0) * 1000,
                errors=errors,
            )


async def conversation(
    url: str,
    turns: list[TurnInput],
    *,
    instructions: str = "",
    headers: dict[str, str] | None = None,
    timeout_s: float = 120.0,
) -> list[TurnResult]:
    """One websocket session: manual turns (no VAD), `instructions` set first."""
    async with websockets.connect(url, additional_headers=headers, max_size=None, open_timeout=timeout_s) as ws:
        created = await _recv(ws, timeout_s)
        if created["type"] != "session.created":
            raise RuntimeError(f"expected session.created, got {created}")
        update = {"type": "realtime", "instructions": instructions, "audio": {"input": {"turn_detection": None}}}
        await ws.send(json.dumps({"type": "session.update", "session": update}))
        while (await _recv(ws, timeout_s))["type"] != "session.updated":
            pass
        return [await take_turn(ws, turn, timeout_s) for turn in turns]


# ---------------------------------------------------------------------------- figures


def rss_mib() -> float:
    """This process's resident set size (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency_summary(values: list[float]) -> dict[str, float | None]:
    def r(x):
        return None if x is None else round(x, 1)

    return {
        "n": len(values),
        "p50": r(percentile(values, 0.5)),
        "p90": r(percentile(values, 0.9)),
        "p99": r(percentile(values, 0.99)),
        "max": r(max(values)) if values else None,
    }


async def sample_rss(samples: list[tuple[float, float]], period_s: float, stop: asyncio.Event) -> None:
    """Append (seconds since start, RSS MiB) every `period_s` until `stop` is set."""
    t0 = time.monotonic()
    while not stop.is_set():
        samples.append((round(time.monotonic() - t0, 2), round(rss_mib(), 1)))
        try:
            await asyncio.wait_for(stop.wait(), period_s)
        except TimeoutError:
            pass


async def rss_cycles(url: str, cycles: int, *, headers: dict[str, str] | None = None) -> list[float]:
    """`cycles` times: connect, take one short text turn, disconnect. Returns the RSS
    (MiB) after each cycle, measured after a garbage collection."""
    import gc

    out = []
    for i in range(cycles):
        results = await conversation(url, [TurnInput(text=f"Cycle {i}: hello.")], headers=headers)
        if results[0].status != "completed" or results[0].errors:
            raise RuntimeError(f"cycle {i}: {results[0]}")
        gc.collect()
        out.append(rss_mib())
    return out


def rss_figures(rss: list[float], warmup: int) -> dict[str, float]:
    """First/last RSS and the slope in MiB per 100 cycles, after `warmup` cycles (lazy
    initialisation, allocator pools and caches filling up are not a leak)."""
    tail = rss[warmup:] if len(rss) > warmup + 1 else rss
    xs = list(range(len(rss) - len(tail), len(rss)))
    return {
        "cycles": len(rss),
        "first_mib": round(rss[0], 1),
        "after_warmup_mib": round(tail[0], 1),
        "last_mib": round(rss[-1], 1),
        "max_mib": round(max(rss), 1),
        "slope_mib_per_100_cycles": round(100 * slope(xs, tail), 2),
    }
