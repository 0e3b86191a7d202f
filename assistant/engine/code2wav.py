"""Incremental Code2Wav: codec frames in, seamless 24 kHz audio out.

Code2Wav is causal except for its transposed convolutions, which each trim one input
frame of look-ahead: one forward over N frames returns N*1920 - 555 samples, and the
last 555 samples (about 23 ms) only become final once more frames exist
(../shared/reference/qwen3-omni-streaming.md §1.5, §2.5; vLLM-Omni's
`chunked_decode_streaming` handles the same tail).

So every decode call covers `[a, n)` with `a = max(0, s - left_context)`, returns the
samples `[a*1920, n*1920 - 555)`, and we emit from what was already emitted up to that
end. Emitted samples are never revised, so chunk boundaries are seamless. The left
context truncation (25 frames) is the same approximation stock `chunked_decode` makes.

With `left_context` 0 (the default, --codec-left-context-frames) no window is decoded
again: `StreamingCode2Wav` (code2wav_stream.py) carries Code2Wav's state from chunk to
chunk and returns exactly the samples one call over every frame so far would, so a chunk
costs only its own frames and the chunks can stay small.
"""

from __future__ import annotations

import numpy as np
import torch

from .code2wav_stream import StreamingCode2Wav, decode_batch

FRAME_SAMPLES = 1920


class IncrementalCode2Wav:
    def __init__(self, code2wav, left_context: int = 25, ramp: list[int] | None = None) -> None:
        if left_context < 0:
            raise ValueError("left_context must be >= 0 frames (0: exact streaming decode)")
        self.code2wav = code2wav
        self.stream = StreamingCode2Wav(code2wav) if left_context == 0 else None
        self.left_context = left_context
        self.ramp = list(ramp or [1, 2, 4, 8, 16])
        self.frames: list[torch.Tensor] = []  # each [Q] long
        self.decoded_frames = 0  # frames whose audio has been emitted (up to their look-ahead)
        self.emitted = 0  # samples emitted so far
        self.chunks = 0

    def push(self, codes: torch.Tensor) -> None:
        """Add one frame of codes, [Q] (Q = 16 code groups)."""
        self.frames.append(codes.reshape(-1))

    def next_chunk_size(self) -> int:
        return self.ramp[min(self.chunks, len(self.ramp) - 1)]

    def ready(self) -> bool:
        return len(self.frames) - self.decoded_frames >= self.next_chunk_size()

    @torch.no_grad()
    def decode(self, final: bool = False) -> np.ndarray | None:
        """Decode the pending frames if a whole chunk is ready (or `final`), returning
        float32 samples in [-1, 1], or None when there is nothing to emit."""
        n = len(self.frames)
        if n == self.decoded_frames or not (final or self.ready()):
            return None
        if self.stream is not None:  # the new frames only: their samples, look-ahead withheld
            return self._emit(self.stream(self._pending_codes()))
        start = max(0, self.decoded_frames - self.left_context)
        codes = torch.stack(self.frames[start:n], dim=-1).unsqueeze(0)  # [1, Q, n - start]
        wav = self.code2wav(codes).reshape(-1)  # [(n - start) * 1920 - tail]
        end = start * FRAME_SAMPLES + wav.shape[-1]  # absolute sample index of the decode's end
        out = wav[self.emitted - start * FRAME_SAMPLES : end - start * FRAME_SAMPLES]
        self.emitted = end
        self.decoded_frames = n
        self.chunks += 1
        return out.float().cpu().numpy()

    # ---------------------------------------------------------------- streaming only

    def batch_key(self) -> tuple[int, bool] | None:
        """What decoders decoded together (`decode_together`) must share: (frames pending,
        stream started); None for the windowed decode or with nothing pending."""
        pending = len(self.frames) - self.decoded_frames
        if self.stream is None or pending == 0:
            return None
        return pending, self.stream.frames > 0

    def _pending_codes(self) -> torch.Tensor:
        return torch.stack(self.frames[self.decoded_frames :], dim=-1).unsqueeze(0)  # [1, Q, pending]

    def _emit(self, wav: torch.Tensor) -> np.ndarray:
        """Book a streaming decode of every pending frame and return its samples."""
        wav = wav.reshape(-1)
        self.emitted += wav.shape[-1]
        self.decoded_frames = len(self.frames)
        self.chunks += 1
        return wav.float().cpu().numpy()


def to_pcm16(samples: np.ndarray) -> bytes:
    """float32 [-1, 1] -> little-endian int16 bytes."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def decode_together(decoders: list[IncrementalCode2Wav]) -> list[np.ndarray]:
    """`decode(final=True)` of several streaming decoders with one `batch_key`, as one batch
    through Code2Wav's convolutions (code2wav_stream.decode_batch): each one's samples."""
    keys = {d.batch_key() for d in decoders}
    if len(keys) != 1 or None in keys:
        raise ValueError("decode_together takes streaming decoders with one batch_key")
    outs = decode_batch([d.stream for d in decoders], [d._pending_codes() for d in decoders])
    return [d._emit(out) for d, out in zip(decoders, outs, strict=True)]
