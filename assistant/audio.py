"""PCM helpers: conversions, resampling and fixed-size chunking. Pure functions and small
stateful helpers; no I/O beyond `read_wav`/`write_wav`, no asyncio.

Conventions: "pcm16" is little-endian signed 16-bit mono bytes (the OpenAI Realtime
`audio/pcm` format); float audio is float32 mono in [-1, 1] (what the engine takes).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr

PCM16_MAX = 32768.0


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian int16 bytes -> float32 in [-1, 1). `len(data)` must be even."""
    if len(data) % 2:
        raise ValueError(f"PCM16 data has an odd length ({len(data)} bytes)")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / PCM16_MAX


def float_to_pcm16(audio: np.ndarray) -> bytes:
    """float audio -> little-endian int16 bytes, clipped (never wraps around)."""
    scaled = np.clip(np.asarray(audio, dtype=np.float32) * PCM16_MAX, -PCM16_MAX, PCM16_MAX - 1)
    return np.round(scaled).astype("<i2").tobytes()


def samples_to_ms(samples: int, sample_rate_hz: int) -> int:
    return int(samples * 1000 // sample_rate_hz)


def ms_to_samples(ms: float, sample_rate_hz: int) -> int:
    return int(round(ms * sample_rate_hz / 1000))


def pcm16_duration_ms(data: bytes, sample_rate_hz: int) -> float:
    return len(data) / 2 * 1000.0 / sample_rate_hz


def resample(audio: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """One-shot resampling of a whole clip (soxr, high quality)."""
    audio = np.asarray(audio, dtype=np.float32)
    if from_hz == to_hz or len(audio) == 0:
        return audio
    return soxr.resample(audio, from_hz, to_hz, quality="HQ").astype(np.float32, copy=False)


class StreamResampler:
    """Resample a stream chunk by chunk without clicks at chunk borders (soxr keeps the
    filter state). Output lags input by the filter delay; `flush()` returns the tail."""

    def __init__(self, from_hz: int, to_hz: int) -> None:
        self.from_hz, self.to_hz = from_hz, to_hz
        self._stream = None if from_hz == to_hz else soxr.ResampleStream(from_hz, to_hz, 1, dtype="float32")

    def process(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if self._stream is None:
            return audio
        return self._stream.resample_chunk(audio)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, np.float32)
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True)


class FrameChunker:
    """Cut a byte stream into fixed-size frames (e.g. 20 ms of PCM16 for WebRTC), keeping
    the remainder for the next call."""

    def __init__(self, frame_bytes: int) -> None:
        if frame_bytes <= 0:
            raise ValueError("frame_bytes must be positive")
        self.frame_bytes = frame_bytes
        self._rest = b""

    def push(self, data: bytes) -> list[bytes]:
        data = self._rest + data
        n = len(data) // self.frame_bytes
        frames = [data[i * self.frame_bytes : (i + 1) * self.frame_bytes] for i in range(n)]
        self._rest = data[n * self.frame_bytes :]
        return frames

    def flush(self, pad: bool = True) -> list[bytes]:
        """The remainder as a last frame (zero-padded to full size when `pad`)."""
        rest, self._rest = self._rest, b""
        if not rest:
            return []
        return [rest.ljust(self.frame_bytes, b"\0") if pad else rest]

    def clear(self) -> None:
        self._rest = b""

    @property
    def pending_bytes(self) -> int:
        return len(self._rest)


def chunk_pcm16(data: bytes, sample_rate_hz: int, chunk_ms: int) -> list[bytes]:
    """Split PCM16 into chunks of `chunk_ms` (the last one may be shorter)."""
    step = ms_to_samples(chunk_ms, sample_rate_hz) * 2
    return [data[i : i + step] for i in range(0, len(data), step)]


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A mono 16-bit WAV file -> (float32 audio, sample rate)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit WAV is supported")
        frames = w.readframes(w.getnframes())
        audio = pcm16_to_float(frames)
        if w.getnchannels() > 1:
            audio = audio.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.float32)
        return audio, w.getframerate()


def write_wav(path: str | Path, audio: np.ndarray, sample_rate_hz: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate_hz)
        w.writeframes(float_to_pcm16(audio))
