"""`bench_latency.py --engine-only`: the streaming engine in-process, beside stock `generate()`.

Stock `Qwen3OmniMoeForConditionalGeneration.generate(..., return_audio=True)` runs the
thinker to its end, then the talker to its end, then decodes all audio
(qwen3-omni-streaming.md §2.1-2.2), so its first audio exists when it returns. For the
same prepared inputs and the same fixed answer length (greedy, min = max, so random
weights cannot end early) we time:

- ours: `respond()` -> first AudioChunk received on the event loop, and -> ResponseDone;
- stock: `prepare()` + `generate()` -> return (first audio = total).

Both include the processor and encoders. Runs alternate ours/stock per repetition so a
busy shared machine hurts both alike; medians are reported.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import read_wav
from ..engine import inputs as inputs_mod
from ..engine.api import (
    OUTPUT_SAMPLE_RATE,
    AudioChunk,
    AudioPart,
    Conversation,
    ImagePart,
    Part,
    ResponseDone,
    Sampling,
    TextDelta,
    VideoPart,
    now,
)
from ..engine.stock import greedy_generate_kwargs
from .metrics import median

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"


@dataclass(frozen=True)
class AnswerLength:
    """A fixed answer: exactly `tokens` text tokens (<|im_end|> included) and `frames` codec frames."""

    tokens: int
    frames: int

    def sampling(self) -> Sampling:
        return Sampling(
            greedy=True,
            min_tokens=self.tokens,
            max_tokens=self.tokens,
            min_frames=self.frames,
            max_frames=self.frames,
        )


def load_frames(fixtures: Path = FIXTURES) -> tuple[list[np.ndarray], list[float]]:
    """The camera-like fixture frames (RGB uint8) and their timestamps."""
    from PIL import Image

    manifest = json.loads((fixtures / "manifest.json").read_text())["video"]["frames"]
    frames = [np.asarray(Image.open(fixtures / f["file"]).convert("RGB")) for f in manifest]
    return frames, [float(f["t_s"]) for f in manifest]


def user_parts(wav: Path, visual: str = "none", fixtures: Path = FIXTURES) -> list[Part]:
    """One user turn: the spoken fixture, plus an image (first frame) or the frame sequence."""
    pcm, rate = read_wav(wav)
    parts: list[Part] = []
    if visual == "image":
        parts.append(ImagePart(load_frames(fixtures)[0][0]))
    elif visual == "video":
        frames, stamps = load_frames(fixtures)
        parts.append(VideoPart(frames, stamps))
    parts.append(AudioPart(pcm, rate))
    return parts


async def run_ours(engine, conv: Conversation) -> dict:
    """One streamed response; the assistant turn is appended to `conv`."""
    t0 = now()
    first = None
    chunks, text_tokens = 0, 0
    async for ev in engine.respond(conv, t_committed=t0):
        if isinstance(ev, AudioChunk):
            chunks += 1
            if first is None:
                first = now()
        elif isinstance(ev, TextDelta):
            text_tokens += 1
        elif isinstance(ev, ResponseDone):
            if ev.status != "completed":
                raise RuntimeError(f"engine response {ev.status}: {ev.error}")
            t_end = now()
            st = ev.stats
            return {
                "first_audio_ms": None if first is None else round((first - t0) * 1000, 3),
                "total_ms": round((t_end - t0) * 1000, 3),
                "frames": st.frames,
                "text_tokens": st.text_tokens,
                "audio_ms": round(st.audio_samples * 1000 / OUTPUT_SAMPLE_RATE, 1),
                "chunks": chunks,
                "prefill_tokens": st.prefill_tokens,
                "talker_prefill_tokens": st.talker_prefill_tokens,
                "audio_ttfp_ms": st.audio_ttfp_ms,
                "audio_rtf": None if st.audio_rtf is None else round(st.audio_rtf, 4),
                "stages_ms": st.stage_ms(),
            }
    raise RuntimeError("the response ended without ResponseDone")


def run_stock(resident, conv: Conversation) -> dict:
    """Stock generate() on the same conversation (blocking; call it off the event loop)."""
    import torch

    s = conv.sampling
    model = resident.model
    t0 = time.monotonic()
    prepared = inputs_mod.prepare(resident.processor, conv)
    tensors = {k: v.to(resident.device) for k, v in prepared.tensors.items()}
    for key in ("input_features", "pixel_values", "pixel_values_videos"):
        if key in tensors:
            tensors[key] = tensors[key].to(resident.dtype)
    with torch.no_grad():
        ids, wav = model.generate(**tensors, **greedy_generate_kwargs(s, conv.voice))
    total_ms = round((time.monotonic() - t0) * 1000, 3)
    if wav is None:
        raise RuntimeError("stock generate() returned no audio")
    samples = int(wav.reshape(-1).shape[0])
    return {
        "first_audio_ms": total_ms,  # audio exists only once generate() returns
        "total_ms": total_ms,
        "text_tokens": int(ids.shape[1] - prepared.input_ids.shape[1]),
        "audio_ms": round(samples * 1000 / OUTPUT_SAMPLE_RATE, 1),
        "prefill_tokens": int(prepared.input_ids.shape[1]),
    }


def _conv(engine, parts: list[Part], length: AnswerLength) -> Conversation:
    conv = engine.new_conversation()
    conv.sampling = length.sampling()
    conv.add_user(parts)
    return conv


async def compare(engine, parts: list[Part], length: AnswerLength, reps: int, progress=None) -> dict:
    """Ours vs stock, alternating, `reps` times each; medians and the two ratios."""
    runs = []
    for rep in range(reps):
        ours = await run_ours(engine, _conv(engine, parts, length))
        if progress:
            progress.update(1)
        stock = await asyncio.to_thread(run_stock, engine.resident, _conv(engine, parts, length))
        if progress:
            progress.update(1)
        runs.append({"rep": rep, "ours": ours, "stock": stock})
    ours_first = median([r["ours"]["first_audio_ms"] for r in runs])
    ours_total = median([r["ours"]["total_ms"] for r in runs])
    stock_total = median([r["stock"]["total_ms"] for r in runs])
    return {
        "runs": runs,
        "median": {
            "ours_first_audio_ms": ours_first,
            "ours_total_ms": ours_total,
            "stock_first_audio_ms": stock_total,
            "stock_total_ms": stock_total,
        },
        # Targets from issue #3: first audio >= 10x sooner, whole answer <= 1.2x stock's time.
        "first_audio_speedup": round(stock_total / ours_first, 2) if ours_first else None,
        "total_ratio": round(ours_total / stock_total, 3) if stock_total else None,
    }


TURN_KEYS = ("first_audio_ms", "audio_ttfp_ms", "prefill_tokens", "talker_prefill_tokens")


async def turns(engine, parts: list[Part], length: AnswerLength, n: int, progress=None, reps: int = 1) -> dict:
    """`reps` conversations of `n` equal user turns each; per turn, the median first packet
    over the conversations (one sample per turn is at the mercy of a noisy machine)."""
    runs: list[list[dict]] = []
    for _ in range(reps):
        conv = engine.new_conversation()
        conv.sampling = length.sampling()
        rows = []
        for i in range(n):
            conv.add_user(list(parts))
            r = await run_ours(engine, conv)
            rows.append({"turn": i + 1, **{k: r[k] for k in TURN_KEYS}})
            if progress:
                progress.update(1)
        runs.append(rows)
    per_turn = [{"turn": i + 1, **{k: median([run[i][k] for run in runs]) for k in TURN_KEYS}} for i in range(n)]
    first, last = per_turn[0]["first_audio_ms"], per_turn[-1]["first_audio_ms"]
    return {
        "reps": reps,
        "per_turn": per_turn,
        "runs": runs,
        "turn1_first_audio_ms": first,
        f"turn{n}_first_audio_ms": last,
        "last_over_first": round(last / first, 3) if first and last else None,  # issue #7 target: <= 1.2
    }


async def prefill_tokens(engine, wavs: dict[str, Path], length: AnswerLength) -> dict[str, int]:
    """Tokens prefilled after the commit, for each utterance (first turn, audio only)."""
    out = {}
    for name, wav in wavs.items():
        r = await run_ours(engine, _conv(engine, user_parts(wav), length))
        out[name] = r["prefill_tokens"]
    return out
