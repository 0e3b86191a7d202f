"""Uploaded audio -> pieces of at most N seconds, cut at silences, with memory bounded by
one piece: the file is decoded by PyAV frame by frame (any container and codec FFmpeg
reads), resampled to 16 kHz mono, scored by the server's Silero VAD (realtime/vad.py)
window by window, and cut by `Cutter`, a sans-I/O state machine over the per-window
speech probabilities.

Cutting policy (`Cutter`):
- a piece starts `pad` before its first speech window (never before the previous piece's
  end), so silence between utterances is not transcribed;
- it ends `pad` after its last speech window once `close_gap` (2 s) of silence follows;
  utterances with shorter pauses between join one piece, as Whisper reads 30 s windows:
  fewer, longer pieces give the model context and cost less per second of audio;
- a piece that reaches `max_windows` is cut at the middle of its latest silence of at
  least `cut_gap` in its second half or, in speech without such a pause (music, noise),
  after its quietest window there; the rest goes on as the next piece.
Positions are 512-sample VAD windows (32 ms at 16 kHz), so piece times are exact multiples
of 32 ms.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from ..realtime.vad import WINDOW_SAMPLES

RATE = 16_000
WINDOW_S = WINDOW_SAMPLES / RATE
VAD_BATCH_SAMPLES = RATE  # score the VAD a second at a time


class BadAudio(ValueError):
    """The upload is not audio PyAV can decode (the message says why)."""


@dataclass
class Piece:
    start_s: float
    end_s: float
    pcm: np.ndarray  # float32 mono at 16 kHz
    no_speech_prob: float  # 1 - the highest VAD speech probability in the piece


@dataclass
class Cutter:
    max_windows: int
    threshold: float = 0.5
    pad: int = 10  # windows (320 ms)
    close_gap: int = 62  # windows of silence that end a piece (~2 s)
    cut_gap: int = 9  # windows: a pause a long piece may be cut in (~0.3 s)
    pos: int = 0  # next window
    _buf: list[np.ndarray] = field(default_factory=list)  # whole windows from _buf_start on
    _probs: list[float] = field(default_factory=list)
    _buf_start: int = 0  # window
    _open: int | None = None  # first window of the open piece
    _last_speech: int = -1
    _min_start: int = 0  # the previous piece's end
    _gaps: list[tuple[int, int]] = field(default_factory=list)  # pauses >= cut_gap in the open piece

    def push(self, samples: np.ndarray, probs: np.ndarray) -> list[Piece]:
        """`samples`: len(probs) whole windows, following the previous push."""
        assert len(samples) == len(probs) * WINDOW_SAMPLES
        out: list[Piece] = []
        for k, p in enumerate(probs):
            self._buf.append(samples[k * WINDOW_SAMPLES : (k + 1) * WINDOW_SAMPLES])
            self._probs.append(float(p))
            self._step(self.pos, float(p) >= self.threshold, out)
            self.pos += 1
        self._trim()
        return out

    def finish(self) -> list[Piece]:
        out: list[Piece] = []
        if self._open is not None and self._last_speech >= self._open:
            out.append(self._emit(self._open, min(self._last_speech + 1 + self.pad, self.pos)))
        self._open = None
        return out

    def _step(self, i: int, speech: bool, out: list[Piece]) -> None:
        if self._open is None:
            if speech:
                self._open, self._last_speech, self._gaps = max(i - self.pad, self._min_start), i, []
            return
        if speech:
            if i - self._last_speech - 1 >= self.cut_gap:
                self._gaps.append((self._last_speech + 1, i))
            self._last_speech = i
        elif i - self._last_speech >= self.close_gap:
            if self._last_speech >= self._open:
                out.append(self._emit(self._open, self._last_speech + 1 + self.pad))
            self._open = None
            return
        if i + 1 - self._open >= self.max_windows:
            cut = self._cut_point(i)
            out.append(self._emit(self._open, cut))
            self._open = cut
            self._gaps = [g for g in self._gaps if g[0] >= cut]

    def _cut_point(self, i: int) -> int:
        half = self._open + self.max_windows // 2
        pauses = list(self._gaps)
        if i - self._last_speech >= self.cut_gap:
            pauses.append((self._last_speech + 1, i + 1))
        mids = [(a + b) // 2 for a, b in pauses if (a + b) // 2 > half]
        if mids:
            return mids[-1]
        probs = self._probs[half - self._buf_start : i + 1 - self._buf_start]
        return half + int(np.argmin(probs)) + 1

    def _emit(self, start: int, end: int) -> Piece:
        a, b = start - self._buf_start, end - self._buf_start
        pcm = np.concatenate(self._buf[a:b]) if b > a else np.zeros(0, np.float32)
        self._min_start = end
        return Piece(start * WINDOW_S, end * WINDOW_S, pcm.astype(np.float32), 1.0 - max(self._probs[a:b], default=0))

    def _trim(self) -> None:
        """Keep only what a piece may still need: the open piece, or the padding."""
        keep = self._open if self._open is not None else max(self.pos - self.pad, self._min_start)
        drop = keep - self._buf_start
        if drop > 0:
            del self._buf[:drop], self._probs[:drop]
            self._buf_start = keep


def decode_16k(file: BinaryIO) -> Iterator[np.ndarray]:
    """The first audio stream of `file` as float32 mono 16 kHz chunks, frame by frame."""
    import av

    try:
        container = av.open(file, mode="r")
    except (av.FFmpegError, ValueError) as exc:
        raise BadAudio(f"the file is not audio that can be decoded: {exc}") from None
    with container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise BadAudio("the file has no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(-1)
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(-1)
        except av.FFmpegError as exc:
            raise BadAudio(f"the audio could not be decoded: {exc}") from None


class PieceStream:
    """Iterate the pieces of an upload; blocking (decoding and the VAD): run `next()` off
    the event loop. `samples` counts what was decoded so far (the duration at the end)."""

    def __init__(self, file: BinaryIO, vad, *, max_s: float, threshold: float) -> None:
        """`vad`: a realtime.vad.SileroModel this stream may use alone (its state is reset)."""
        self.samples = 0
        self._file = file
        self._vad = vad
        vad.reset()
        self._cutter = Cutter(max(2, int(max_s / WINDOW_S)), threshold)
        self._it = self._run()

    def __iter__(self) -> Iterator[Piece]:
        return self._it

    def __next__(self) -> Piece:
        return next(self._it)

    def close(self) -> None:
        self._it.close()

    def _run(self) -> Iterator[Piece]:
        pending: list[np.ndarray] = []
        held = 0
        for chunk in decode_16k(self._file):
            self.samples += len(chunk)
            pending.append(chunk)
            held += len(chunk)
            if held >= VAD_BATCH_SAMPLES:
                pending, held = yield from self._score(pending)
        yield from self._score(pending)
        yield from self._cutter.finish()

    def _score(self, pending: list[np.ndarray]):
        x = np.concatenate(pending) if pending else np.zeros(0, np.float32)
        n = len(x) // WINDOW_SAMPLES * WINDOW_SAMPLES
        if n:
            yield from self._cutter.push(x[:n], self._vad.probabilities(x[:n]))
        rest = x[n:]
        return [rest], len(rest)
