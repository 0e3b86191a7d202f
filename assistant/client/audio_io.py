"""sounddevice and opencv adapters of `assistant talk`: thin, no protocol decisions.

- `Microphone`: an input stream at the device's native rate (devices and PulseAudio's
  ALSA route resample badly or refuse other rates), 20 ms blocks handed to the event
  loop, resampled there to the protocol's 24 kHz with soxr (assistant/audio.py).
- `Speaker`: an output stream at the device's native rate, fed from a `JitterBuffer`
  with the response audio resampled from 24 kHz.
- `Camera`: opencv frames, at most `fps` a second, as JPEG.

Bounds and drop policies: the microphone queue holds 2 s of blocks; when the loop falls
that far behind the oldest block is dropped (late audio is worth less than fresh audio).
The camera keeps only its latest frame. The jitter buffer is bounded by the response
length (the server sends at most one answer ahead).
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from ..audio import StreamResampler, float_to_pcm16, pcm16_to_float
from ..bench.metrics import AUDIBLE_THRESHOLD
from .buffers import JitterBuffer

PROTOCOL_RATE_HZ = 24_000
BLOCK_MS = 20
MIC_QUEUE_BLOCKS = 2000 // BLOCK_MS


class DeviceError(Exception):
    """A missing or unusable audio/video device (one line for the user)."""


def _sd():
    try:
        import sounddevice
    except OSError as exc:  # PortAudio itself is missing
        raise DeviceError(f"audio is unavailable: {exc} (install libportaudio2)") from None
    return sounddevice


def list_devices() -> str:
    sd = _sd()
    return str(sd.query_devices())


def _device(value: str | None):
    """A device index given as digits, else a name substring, else the default (None)."""
    if value is None or value == "":
        return None
    return int(value) if value.isdigit() else value


def native_rate(device: str | None, kind: str) -> int:
    sd = _sd()
    try:
        info = sd.query_devices(_device(device), kind)
    except (ValueError, sd.PortAudioError) as exc:
        which = f"{kind} device {device!r}" if device else f"default {kind} device"
        raise DeviceError(f"no usable {which}: {exc} (see --list-devices)") from None
    return int(info["default_samplerate"])


class Microphone:
    """Captures mono audio; `blocks` yields 24 kHz PCM16 chunks of about 20 ms."""

    def __init__(self, device: str | None = None) -> None:
        sd = _sd()
        self.rate = native_rate(device, "input")
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[np.ndarray] = asyncio.Queue(MIC_QUEUE_BLOCKS)
        self._resampler = StreamResampler(self.rate, PROTOCOL_RATE_HZ)
        self.dropped_blocks = 0
        try:
            self._stream = sd.InputStream(
                device=_device(device),
                channels=1,
                samplerate=self.rate,
                dtype="float32",
                blocksize=self.rate * BLOCK_MS // 1000,
                callback=self._callback,
            )
        except sd.PortAudioError as exc:
            raise DeviceError(f"cannot open input device {device or '(default)'}: {exc}") from None

    def _callback(self, indata, frames, time_info, status) -> None:  # PortAudio's thread
        self._loop.call_soon_threadsafe(self._put, indata[:, 0].copy())

    def _put(self, block: np.ndarray) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped_blocks += 1
        self._queue.put_nowait(block)

    def __enter__(self) -> Microphone:
        self._stream.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stream.stop()
        self._stream.close()

    async def read(self) -> bytes:
        """The next captured block as 24 kHz PCM16 (may be empty while soxr fills up)."""
        block = await self._queue.get()
        return float_to_pcm16(self._resampler.process(block))


class Speaker:
    """Plays 24 kHz PCM16 as it arrives, through a jitter buffer of `jitter_ms`."""

    def __init__(self, device: str | None = None, jitter_ms: int = 80) -> None:
        sd = _sd()
        self.rate = native_rate(device, "output")
        self.buffer = JitterBuffer(prebuffer=self.rate * jitter_ms // 1000)
        self._resampler = StreamResampler(PROTOCOL_RATE_HZ, self.rate)
        self._item: str | None = None
        self._heard = False
        self._item_start = 0  # position (samples played + queued) where the current item began
        try:
            self._stream = sd.OutputStream(
                device=_device(device),
                channels=1,
                samplerate=self.rate,
                dtype="float32",
                blocksize=self.rate * BLOCK_MS // 1000,
                callback=self._callback,
            )
        except sd.PortAudioError as exc:
            raise DeviceError(f"cannot open output device {device or '(default)'}: {exc}") from None
        self.output_latency_s = float(self._stream.latency)

    def _callback(self, outdata, frames, time_info, status) -> None:  # PortAudio's thread
        outdata[:, 0] = self.buffer.pull(frames, now=time.monotonic())

    def __enter__(self) -> Speaker:
        self._stream.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stream.stop()
        self._stream.close()

    def play(self, pcm16: bytes, item_id: str) -> None:
        if item_id != self._item:
            self._item, self._heard = item_id, False
            self.buffer.reopen()
            self._item_start = self.buffer.played + self.buffer.queued
        samples = self._resampler.process(pcm16_to_float(pcm16))
        if not self._heard and samples.size:
            # Time the item's first audible sample, skipping leading silence within its
            # first chunk (or its first sample when that chunk is all quiet).
            self._heard = True
            loud = np.flatnonzero(np.abs(samples) > AUDIBLE_THRESHOLD)
            self.buffer.mark(int(loud[0]) if loud.size else 0)
        self.buffer.push(samples)

    def finish(self) -> None:
        """The response ended: play out the rest without waiting for the pre-buffer."""
        self.buffer.push(self._resampler.flush())
        self._resampler = StreamResampler(PROTOCOL_RATE_HZ, self.rate)
        self.buffer.mark_complete()

    def stop(self) -> None:
        """Barge-in: silence now."""
        self.buffer.clear()
        self._item, self._item_start = None, 0
        self._resampler = StreamResampler(PROTOCOL_RATE_HZ, self.rate)

    def played_ms(self) -> float | None:
        """Milliseconds of the current item heard so far (None when nothing was played).
        The device's own output latency is subtracted: those samples are not heard yet."""
        if self._item is None:
            return None
        heard = self.buffer.played - self._item_start - self.output_latency_s * self.rate
        return max(0.0, heard * 1000 / self.rate)

    def first_audible_at(self) -> float | None:
        t = self.buffer.mark_played_at
        return None if t is None else t + self.output_latency_s


class Camera:
    """Webcam frames as JPEG at most `fps` a second, read on a worker thread."""

    def __init__(self, index: int, fps: float = 2.0, max_side_px: int = 640) -> None:
        try:
            import cv2
        except ImportError as exc:
            raise DeviceError(f"--camera needs opencv: {exc}") from None
        self._cv2 = cv2
        self.period_s = 1.0 / min(max(fps, 0.1), 2.0)  # Qwen3-Omni samples video at 2 fps
        self.max_side_px = max_side_px
        self._cap = cv2.VideoCapture(index)
        if not self._cap.isOpened():
            raise DeviceError(f"camera {index} is not available (no /dev/video{index}, or busy)")
        self._latest: bytes | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)

    def __enter__(self) -> Camera:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._cap.release()

    def _run(self) -> None:
        cv2 = self._cv2
        while not self._stop.is_set():
            ok, frame = self._cap.read()
            if not ok:
                self._stop.wait(self.period_s)
                continue
            h, w = frame.shape[:2]
            scale = self.max_side_px / max(h, w)
            if scale < 1:
                frame = cv2.resize(frame, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
            if ok:
                with self._lock:
                    self._latest = jpeg.tobytes()
            self._stop.wait(self.period_s)

    def take(self) -> bytes | None:
        """The newest frame not taken yet (None if there is none)."""
        with self._lock:
            frame, self._latest = self._latest, None
        return frame


async def wait_first_audible(speaker: Speaker, timeout_s: float) -> float | None:
    """Poll until the device played the first audible sample (response.done can come
    first when the answer is short). The PortAudio thread sets it; polling every 20 ms
    keeps that thread free of event-loop calls."""
    deadline = time.monotonic() + timeout_s
    while (t := speaker.first_audible_at()) is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return t
