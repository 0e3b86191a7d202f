"""Simulated users over /v1/realtime (websocket), for the latency benchmark.

Each user is one websocket session that, turn after turn, streams a speech fixture at
real-time pace in 20 ms `input_audio_buffer.append` events (camera frames interleaved as
`input_image_buffer.append` JPEGs at their timestamps on video turns), lets the server's
VAD end the turn (or commits and sends response.create itself in manual mode), records
the answer, and waits until its simulated playback would have ended before speaking
again, as a person would. The per-turn record is `TurnMetrics.summary()` plus who/when.

The transport is a seam: `Transport` names the one implemented here ("websocket"); a
WebRTC user would produce the same records from the same `ClientCore`.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..audio import float_to_pcm16, read_wav, resample
from ..client.core import ClientCore, TurnMetrics, TurnReport
from ..client.link import CHUNK_MS, ClientError, Link, connect, stream_pcm
from .engine_only import FIXTURES

Transport = Literal["websocket"]
RATE_HZ = 24_000
RESPONSE_TIMEOUT_S = 180.0
THINK_S = 0.3  # pause between the end of the answer's playback and the next question


@dataclass(frozen=True)
class Utterance:
    name: str
    pcm16: bytes  # 24 kHz
    speech_end_s: float  # end of speech inside the clip (manifest)

    @property
    def duration_s(self) -> float:
        return len(self.pcm16) / 2 / RATE_HZ


@dataclass(frozen=True)
class TurnPlan:
    utterance: Utterance
    video: bool


def load_utterance(name: str, fixtures: Path = FIXTURES) -> Utterance:
    manifest = {s["file"]: s for s in json.loads((fixtures / "manifest.json").read_text())["speech"]}
    audio, rate = read_wav(fixtures / name)
    return Utterance(name, float_to_pcm16(resample(audio, rate, RATE_HZ)), float(manifest[name]["speech_end_s"]))


def load_jpeg_frames(fixtures: Path = FIXTURES) -> list[tuple[float, bytes]]:
    """The camera fixture as (seconds, JPEG) at its 2 fps timestamps."""
    from PIL import Image

    out = []
    for f in json.loads((fixtures / "manifest.json").read_text())["video"]["frames"]:
        buf = io.BytesIO()
        Image.open(fixtures / f["file"]).convert("RGB").save(buf, "JPEG", quality=85)
        out.append((float(f["t_s"]), buf.getvalue()))
    return out


class Rendezvous:
    """Burst arrivals (issue #19): every user starts each turn at the same moment, when
    the last of them is ready, the way Qwen's Table 2 counts concurrency (N requests at
    once). A user that leaves (its session ended or was refused) no longer holds the
    others back."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self._arrived = 0
        self._release = asyncio.Event()

    async def wait(self) -> None:
        self._arrived += 1
        release = self._release
        if self._arrived >= self.parties:
            self._open()
        await release.wait()

    def leave(self) -> None:
        self.parties -= 1
        if self.parties > 0 and self._arrived >= self.parties:
            self._open()

    def _open(self) -> None:
        self._release.set()
        self._release, self._arrived = asyncio.Event(), 0


@dataclass
class UserConfig:
    url: str
    manual: bool  # False: server VAD ends turns
    api_key: str | None = None
    vad_silence_ms: int | None = None
    start_delay_s: float = 0.0
    rendezvous: Rendezvous | None = None  # burst arrivals: wait for every user before each turn
    think_s: Callable[[], float] = lambda: THINK_S  # pause after the answer's playback (poisson: random)
    transcription: bool = False  # Realtime input transcription on (bench/transcription.py)


async def run_user(
    cfg: UserConfig, plan: list[TurnPlan], frames: list[tuple[float, bytes]], on_turn=None
) -> list[dict]:
    """One user's session; returns one record per planned turn (failed turns included)."""
    try:
        return await _run_user(cfg, plan, frames, on_turn)
    finally:
        if cfg.rendezvous is not None:
            cfg.rendezvous.leave()


async def _run_user(cfg: UserConfig, plan: list[TurnPlan], frames, on_turn) -> list[dict]:
    await asyncio.sleep(cfg.start_delay_s)
    vad = {"silence_duration_ms": cfg.vad_silence_ms} if cfg.vad_silence_ms is not None else None
    core = ClientCore(manual=cfg.manual, vad=vad)
    reports: asyncio.Queue[TurnMetrics] = asyncio.Queue()
    link = Link(
        await connect(cfg.url, cfg.api_key),
        core,
        lambda e: reports.put_nowait(e.turn) if isinstance(e, TurnReport) else None,
    )
    reader = asyncio.create_task(link.reader(), name="bench-user-reader")
    records = []
    try:
        await link.handshake()
        if cfg.transcription:
            from .transcription import enable

            await enable(link)
        for i, step in enumerate(plan):
            record = {"turn": i + 1, "kind": "video" if step.video else "audio", "fixture": step.utterance.name}
            try:
                if cfg.rendezvous is not None:
                    await cfg.rendezvous.wait()
                turn = await _one_turn(link, core, step, frames, reports, cfg.manual)
                record.update(turn.summary())
                record["error"] = None if turn.status == "completed" else f"response {turn.status}"
                # Let the answer "play" to its end (simulated), then think briefly.
                t_end = _playback_end(turn)
                await asyncio.sleep(max(0.0, t_end - time.monotonic()) + cfg.think_s())
            except (ClientError, TimeoutError) as exc:
                record.update(status="failed", error=str(exc) or type(exc).__name__)
                records.append(record)
                if on_turn:
                    on_turn(record)
                break
            records.append(record)
            if on_turn:
                on_turn(record)
    finally:
        await link.close()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return records


async def _one_turn(link: Link, core: ClientCore, step: TurnPlan, frames, reports, manual: bool) -> TurnMetrics:
    utt = step.utterance
    end_chunk = int(utt.speech_end_s * 1000 // CHUNK_MS)  # the chunk holding the last speech sample
    images = frames if step.video else []
    if manual:
        # Push-to-talk: the key comes up when speech ends; the trailing silence is never sent.
        cut = (end_chunk + 1) * RATE_HZ * CHUNK_MS // 1000 * 2
        await stream_pcm(link, utt.pcm16[:cut], RATE_HZ, images=images)
        await link.send(core.release(time.monotonic()))
    else:

        def on_chunk(i: int, t: float) -> None:
            if i == end_chunk:
                core.speech_ended(t)  # announced before the server can commit this turn

        await stream_pcm(link, utt.pcm16, RATE_HZ, images=images, on_chunk=on_chunk)
    turn = await asyncio.wait_for(reports.get(), RESPONSE_TIMEOUT_S)
    while not reports.empty():  # an extra response (a second VAD turn in one clip) is dropped
        reports.get_nowait()
    return turn


def _playback_end(turn: TurnMetrics) -> float:
    """When a player that started at the first delta would finish (monotonic seconds)."""
    if not turn.arrivals:
        return time.monotonic()
    cursor = turn.arrivals[0][0]
    for t, ms in turn.arrivals:
        cursor = max(cursor, t) + ms / 1000
    return cursor
