"""The input audio buffer: 16 kHz float audio since the last commit, addressed by
absolute sample offsets from the start of the session's input stream (the timeline of
`audio_start_ms`/`audio_end_ms`). Bounded: `fits()` says whether more audio may enter."""

from __future__ import annotations

from collections import deque

import numpy as np

from ..engine.api import INPUT_SAMPLE_RATE


class InputBuffer:
    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self.start = 0  # absolute offset of the first buffered sample
        self._chunks: deque[np.ndarray] = deque()
        self._samples = 0

    @property
    def end(self) -> int:
        return self.start + self._samples

    @property
    def duration_ms(self) -> float:
        return self._samples * 1000.0 / INPUT_SAMPLE_RATE

    def fits(self, samples: int) -> bool:
        return self._samples + samples <= self.max_samples

    def append(self, audio: np.ndarray) -> None:
        if len(audio):
            self._chunks.append(np.asarray(audio, dtype=np.float32))
            self._samples += len(audio)

    def take(self, begin: int, end: int) -> np.ndarray:
        """The audio in [begin, end) (clipped to what is buffered); everything before
        `end` leaves the buffer."""
        begin, end = max(begin, self.start), min(end, self.end)
        whole = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        out = whole[begin - self.start : max(begin, end) - self.start].copy()
        rest = whole[max(end, self.start) - self.start :]
        self.start = max(end, self.start)
        self._chunks.clear()
        self._samples = 0
        self.append(rest.copy())
        return out

    def peek(self, begin: int) -> np.ndarray:
        """A copy of the audio from `begin` (clipped to what is buffered) to the end; the
        buffer is unchanged."""
        whole = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        return whole[max(begin, self.start) - self.start :].copy()

    def drop_before(self, sample: int) -> None:
        """Forget the audio before `sample` (silence between turns)."""
        while self._chunks and self.start < sample:
            chunk = self._chunks[0]
            cut = min(len(chunk), sample - self.start)
            if cut == len(chunk):
                self._chunks.popleft()
            else:  # copy, so that the dropped head's memory is released
                self._chunks[0] = chunk[cut:].copy()
            self.start += cut
            self._samples -= cut

    def clear(self) -> None:
        self.start = self.end
        self._chunks.clear()
        self._samples = 0
