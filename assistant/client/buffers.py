"""Audio buffers of the desktop client, sans-I/O: the push-to-talk pre-roll, the playback
jitter buffer, and the detector that turns terminal key repeats into press/release.

None of these touch a device or the event loop. `JitterBuffer` is filled on the event
loop and drained by the sounddevice callback thread, so it takes a lock (held only for
array slicing, never for I/O).
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np


class PreRoll:
    """The last `max_ms` of microphone audio (PCM16 bytes), kept while nobody talks, so a
    turn starts a little before the key went down and first words are not clipped
    (livekit-agents #2140; realtime-landscape.md §8.4)."""

    def __init__(self, max_ms: int, sample_rate_hz: int) -> None:
        self.max_bytes = max(0, max_ms * sample_rate_hz // 1000) * 2
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def push(self, pcm16: bytes) -> None:
        if not self.max_bytes:
            return
        self._chunks.append(pcm16)
        self._size += len(pcm16)
        while self._size - len(self._chunks[0]) >= self.max_bytes:
            self._size -= len(self._chunks.popleft())

    def take(self) -> bytes:
        """Everything buffered, trimmed to at most `max_bytes` (whole samples); empties it."""
        data = b"".join(self._chunks)[-self.max_bytes :] if self.max_bytes else b""
        self._chunks.clear()
        self._size = 0
        return data


class JitterBuffer:
    """Float samples at the device rate, queued for the output callback.

    Playback starts once `prebuffer` samples are queued (or the stream is marked
    complete), absorbing network and generation jitter; when it runs dry mid-stream it
    plays silence and waits for `prebuffer` again. `played` counts samples of real audio
    handed to the device since the last `clear()`: what the listener has heard, which a
    barge-in reports in `conversation.item.truncate`.
    """

    def __init__(self, prebuffer: int) -> None:
        self.prebuffer = max(0, prebuffer)
        self._lock = threading.Lock()
        self._chunks: deque[np.ndarray] = deque()
        self._queued = 0
        self._head = 0  # offset into _chunks[0]
        self._started = False
        self._complete = False
        self.played = 0
        self.underruns = 0  # times the device ran dry after playback had started
        self._mark: int | None = None  # a `played` position to time (see `mark`)
        self.mark_played_at: float | None = None  # caller's clock, set by `pull(now=...)`

    def push(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size == 0:
            return
        with self._lock:
            self._chunks.append(samples)
            self._queued += samples.size

    def mark_complete(self) -> None:
        """No more audio for this response: play out what is queued without waiting."""
        with self._lock:
            self._complete = True

    def mark(self, offset: int = 0) -> None:
        """Time the moment the sample `offset` past everything queued now reaches the
        device (e.g. the first audible sample of a new response): `mark_played_at`."""
        with self._lock:
            self._mark = self.played + self._queued + offset
            self.mark_played_at = None

    def reopen(self) -> None:
        """A new response starts: wait for its pre-buffer again before it ends; forget the old mark."""
        with self._lock:
            self._complete = False
            self._mark, self.mark_played_at = None, None

    def clear(self) -> int:
        """Drop queued audio (barge-in); returns the samples dropped. Resets counters."""
        with self._lock:
            dropped = self._queued
            self._chunks.clear()
            self._queued = self._head = 0
            self._started = self._complete = False
            self.played = 0
            self._mark, self.mark_played_at = None, None
            return dropped

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def idle(self) -> bool:
        """Nothing queued to play."""
        return self._queued == 0

    def pull(self, n: int, now: float | None = None) -> np.ndarray:
        """`n` samples for the device: audio when available, zeros otherwise."""
        out = np.zeros(n, dtype=np.float32)
        with self._lock:
            if not self._started:
                if self._queued == 0 or (self._queued < self.prebuffer and not self._complete):
                    return out
                self._started = True
            filled = 0
            while filled < n and self._chunks:
                head = self._chunks[0]
                take = min(n - filled, head.size - self._head)
                out[filled : filled + take] = head[self._head : self._head + take]
                filled += take
                self._head += take
                if self._head == head.size:
                    self._chunks.popleft()
                    self._head = 0
            self._queued -= filled
            self.played += filled
            if self._mark is not None and self.mark_played_at is None and self.played > self._mark:
                self.mark_played_at = now
            if filled < n and not self._complete:
                self.underruns += 1
                self._started = False  # re-buffer before resuming
            return out


class HoldDetector:
    """Terminal push-to-talk: a terminal reports key presses, never releases, so holding
    a key is seen as its auto-repeat (a first character, a pause of typically 250-660 ms,
    then ~30 characters a second). The key counts as released when repeats stop for
    `release_ms`. A tap that never repeats within `first_repeat_ms` latches instead:
    talking goes on until the next tap (so short or repeat-less keyboards still work).
    With `toggle=True` every tap toggles.

    `key(t)` for each key character, `tick(t)` periodically; both return "press",
    "release" or None. Times are seconds.
    """

    def __init__(self, toggle: bool = False, first_repeat_ms: float = 700, release_ms: float = 150) -> None:
        self.toggle = toggle
        self.first_repeat_s = first_repeat_ms / 1000
        self.release_s = release_ms / 1000
        self.down = False
        self._latched = False
        self._repeating = False
        self._last: float | None = None

    def key(self, t: float) -> str | None:
        if not self.down:
            self.down, self._latched, self._repeating, self._last = True, self.toggle, False, t
            return "press"
        if self._latched:
            # A fresh tap ends a latched turn; auto-repeat of the same hold does not.
            if self._last is not None and t - self._last <= self.release_s:
                self._last = t
                return None
            return self._release()
        self._repeating = True
        self._last = t
        return None

    def tick(self, t: float) -> str | None:
        if not self.down or self._latched or self._last is None:
            return None
        if self._repeating and t - self._last > self.release_s:
            return self._release()
        if not self._repeating and t - self._last > self.first_repeat_s:
            self._latched = True  # a tap: keep talking until the next tap
        return None

    def _release(self) -> str:
        self.down, self._latched, self._repeating, self._last = False, False, False, None
        return "release"
