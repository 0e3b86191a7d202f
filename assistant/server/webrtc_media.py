"""WebRTC media plumbing: a paced outbound audio track and inbound audio/video readers.

Nothing here knows the realtime protocol. The WebRTC adapter (webrtc.py) feeds the
outbound track with the engine's 24 kHz PCM16 chunks and turns the track's playback
notices into protocol events; the readers hand decoded microphone PCM and sampled
camera frames to callbacks.

aiortc media is pull-based (aiortc mediastreams.py): the RTP sender awaits
`track.recv()` for each frame, encodes it and sends it, with no queue of its own
(rtcrtpsender.py `_next_encoded_frame`). So the outbound track's `recv()` is the
pacing clock: it returns one 20 ms frame per 20 ms of wall time, silence when nothing
is queued, and whatever it returns is what the listener will hear. That makes
"samples returned by recv()" the server's best measure of the playback position, and
`clear()` effective from the very next frame (barge-in stops within one frame).

Frames are 24 kHz mono s16, 480 samples, pts counted in samples with time_base
1/24000. aiortc's Opus encoder (codecs/opus.py) resamples whatever it gets to 48 kHz
stereo in 960-sample frames, so no rate conversion is needed on our side.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

log = logging.getLogger(__name__)

OUTPUT_SAMPLE_RATE = 24_000
FRAME_MS = 20
# If the event loop stalls for longer than this, restart the pacing clock instead of
# sending the backlog in a burst (a burst overflows the receiver's jitter buffer and is
# heard as a skip anyway).
MAX_PACING_LAG_S = 0.1
# Playback positions are kept for this many recent items (truncation asks about the
# item just interrupted; older ones are never asked about).
PLAYED_ITEMS_KEPT = 64


# ---------------------------------------------------------------------------- tasks


class TaskOwner:
    """Owns named tasks and cancels them all on close (every task has an owner, a name
    and a cancellation path). Tasks that end by themselves are forgotten."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.name} is closed")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    @property
    def tasks(self) -> set[asyncio.Task]:
        return set(self._tasks)

    async def close(self) -> None:
        """Cancel every task and wait until each has ended (the caller's own task, if it
        is one of ours, is skipped so that a task may close its owner)."""
        self._closed = True
        current = asyncio.current_task()
        pending = [t for t in self._tasks if t is not current]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


# ---------------------------------------------------------------------------- outbound audio


@dataclass
class PlaybackEvent:
    """What the outbound track did with a response's audio. `started`: its first
    sample went to the encoder; `stopped`: its last sample went out after `finish()`;
    `cleared`: `clear()` dropped what was still queued."""

    kind: Literal["started", "stopped", "cleared"]
    response_id: str
    item_id: str
    played_ms: int  # of item_id, at the time of the event
    frame: int  # index of the frame it happened in (started: the first frame with this audio; cleared: the first silent one)


@dataclass
class _Segment:
    response_id: str
    item_id: str
    pcm: bytes
    offset: int = 0  # bytes already taken

    @property
    def remaining(self) -> int:
        return len(self.pcm) - self.offset


class OutboundAudioTrack(MediaStreamTrack):
    """An audio track fed with PCM16 chunks and read by aiortc in 20 ms frames, paced in
    real time, silence when empty.

    Bound and drop policy: at most `max_queued_ms` of audio waits in the track. The
    engine writes faster than real time, but one answer is bounded (settings'
    max_answer_frames, 48 s by default), so the default bound of 120 s is never reached
    in normal use; past it, the *newest* audio is dropped (what is queued keeps playing
    unbroken) and counted in `dropped_ms`.

    `clock` and `sleep` are injectable so that pacing can be unit-tested in virtual time.
    """

    kind = "audio"

    def __init__(
        self,
        *,
        sample_rate: int = OUTPUT_SAMPLE_RATE,
        max_queued_ms: int = 120_000,
        on_playback: Callable[[PlaybackEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * FRAME_MS // 1000
        self.time_base = fractions.Fraction(1, sample_rate)
        self.max_queued_samples = max_queued_ms * sample_rate // 1000
        self.on_playback = on_playback
        self._clock = clock
        self._sleep = sleep
        self._queue: deque[_Segment] = deque()
        self._queued_samples = 0
        self._finished: set[str] = set()  # responses whose audio is complete
        self._playing: _Segment | None = None  # segment of the response being played
        self._played: OrderedDict[str, int] = OrderedDict()  # item_id -> samples handed out
        self._start: float | None = None
        self._paced_frames = 0
        self._pts = 0
        self.dropped_samples = 0
        self.frames_sent = 0
        self.audio_frames_sent = 0  # frames that carried some queued audio
        self.cleared_frame: int | None = None  # first frame after the last clear() that dropped audio

    # -- feeding (called by the adapter)

    def push(self, pcm16: bytes, *, response_id: str, item_id: str) -> int:
        """Queue audio of one response item; returns the samples accepted."""
        if self.readyState != "live":
            return 0
        pcm16 = pcm16[: len(pcm16) // 2 * 2]
        room = max(0, self.max_queued_samples - self._queued_samples)
        samples = len(pcm16) // 2
        if samples > room:
            self.dropped_samples += samples - room
            log.warning("outbound audio queue full: dropped %d ms", (samples - room) * 1000 // self.sample_rate)
            pcm16, samples = pcm16[: room * 2], room
        if samples:
            self._queue.append(_Segment(response_id, item_id, pcm16))
            self._queued_samples += samples
        return samples

    def finish(self, response_id: str) -> None:
        """No more audio will come for this response: `stopped` follows once it has played."""
        self._finished.add(response_id)
        if self._playing is not None and self._playing.response_id == response_id and not self._queue:
            self._stop_playing()

    def clear(self) -> PlaybackEvent | None:
        """Drop all queued audio now; the next frame is silence. Returns the `cleared`
        notice (also given to on_playback) for the response that was playing or queued,
        or None if nothing was."""
        head = self._playing or (self._queue[0] if self._queue else None)
        self._queue.clear()
        self._queued_samples = 0
        self._playing = None
        self._finished.clear()
        if head is None:
            return None
        self.cleared_frame = self.frames_sent
        event = PlaybackEvent("cleared", head.response_id, head.item_id, self.played_ms(head.item_id), self.frames_sent)
        self._notify(event)
        return event

    # -- reading positions

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of `item_id` handed to the encoder so far (what the listener heard,
        up to the network and jitter-buffer delay)."""
        return self._played.get(item_id, 0) * 1000 // self.sample_rate

    @property
    def queued_ms(self) -> int:
        return self._queued_samples * 1000 // self.sample_rate

    @property
    def dropped_ms(self) -> int:
        return self.dropped_samples * 1000 // self.sample_rate

    @property
    def playing_response_id(self) -> str | None:
        return self._playing.response_id if self._playing else None

    # -- aiortc side

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pace()
        if self.readyState != "live":
            raise MediaStreamError
        pcm = self._take(self.frame_samples)
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.frame_samples)
        frame.planes[0].update(pcm)
        frame.sample_rate = self.sample_rate
        frame.time_base = self.time_base
        frame.pts = self._pts
        self._pts += self.frame_samples
        self.frames_sent += 1
        return frame

    async def _pace(self) -> None:
        """Wait until the next frame is due: frame n goes out at start + n * 20 ms."""
        frame_s = FRAME_MS / 1000
        now = self._clock()
        if self._start is None:
            self._start = now
        else:
            self._paced_frames += 1
            wait = self._start + self._paced_frames * frame_s - now
            if wait > 0:
                await self._sleep(wait)
            elif -wait > MAX_PACING_LAG_S:
                log.debug("outbound audio pacing fell %.0f ms behind; resyncing", -wait * 1000)
                self._start = now - self._paced_frames * frame_s

    def _take(self, samples: int) -> bytes:
        """Take one frame's worth of audio from the queue, zero-padded."""
        out = bytearray()
        need = samples * 2
        while len(out) < need and self._queue:
            seg = self._queue[0]
            if self._playing is None or self._playing.response_id != seg.response_id:
                if self._playing is not None:
                    self._stop_playing()
                self._playing = seg
                self._notify(
                    PlaybackEvent(
                        "started", seg.response_id, seg.item_id, self.played_ms(seg.item_id), self.frames_sent
                    )
                )
            self._playing = seg
            n = min(need - len(out), seg.remaining)
            out += seg.pcm[seg.offset : seg.offset + n]
            seg.offset += n
            self._queued_samples -= n // 2
            self._count_played(seg.item_id, n // 2)
            if seg.remaining == 0:
                self._queue.popleft()
        if out:
            self.audio_frames_sent += 1
        if self._playing is not None and not self._queue and self._playing.response_id in self._finished:
            self._stop_playing()
        out += bytes(need - len(out))
        return bytes(out)

    def _count_played(self, item_id: str, samples: int) -> None:
        self._played[item_id] = self._played.get(item_id, 0) + samples
        self._played.move_to_end(item_id)
        while len(self._played) > PLAYED_ITEMS_KEPT:
            self._played.popitem(last=False)

    def _stop_playing(self) -> None:
        seg = self._playing
        self._playing = None
        if seg is not None:
            self._finished.discard(seg.response_id)
            self._notify(
                PlaybackEvent("stopped", seg.response_id, seg.item_id, self.played_ms(seg.item_id), self.frames_sent)
            )

    def _notify(self, event: PlaybackEvent) -> None:
        if self.on_playback is None:
            return
        try:
            self.on_playback(event)
        except Exception:  # a listener bug must not stop the media clock
            log.exception("on_playback listener failed")

    def stop(self) -> None:
        self._queue.clear()
        self._queued_samples = 0
        super().stop()


# ---------------------------------------------------------------------------- inbound media


def pcm16_mono(frame: av.AudioFrame) -> bytes:
    """The samples of an s16 mono frame as bytes (the plane may carry padding)."""
    return frame.to_ndarray().reshape(-1)[: frame.samples].astype("<i2", copy=False).tobytes()


async def read_audio(
    track: MediaStreamTrack,
    on_pcm16: Callable[[bytes], None],
    *,
    sample_rate: int,
) -> None:
    """Read a remote audio track until it ends, handing mono PCM16 at `sample_rate` to
    `on_pcm16` as it arrives. No queue of our own: the callback is synchronous and
    cheap (it appends to the session's input buffer, which has its own bound), and
    reading promptly keeps aiortc's unbounded receiver queue (RemoteStreamTrack._queue)
    from growing. Returns when the track ends (peer gone or track stopped)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        for out in resampler.resample(frame):
            on_pcm16(pcm16_mono(out))


async def read_video(
    track: MediaStreamTrack,
    on_frame: Callable[[np.ndarray, float], None],
    *,
    max_fps: float = 2.0,
    max_side: int = 1280,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Read a remote video track until it ends, handing at most `max_fps` RGB frames per
    second (uint8 [H, W, 3], longer side at most `max_side`) to `on_frame(rgb, t)` with
    `t` the monotonic arrival time. Every frame is received (so aiortc's queue stays
    empty) but only sampled ones are converted; the rest are dropped, which is the drop
    policy: the model sees the video at 2 fps or less anyway (Qwen3-Omni's video rate)."""
    interval = 1.0 / max_fps
    last: float | None = None
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        now = clock()
        if last is not None and now - last < interval:
            continue
        last = now
        on_frame(video_rgb(frame, max_side), now)


def video_rgb(frame: av.VideoFrame, max_side: int) -> np.ndarray:
    width, height = frame.width, frame.height
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        # Even sizes keep every pixel format's chroma planes whole.
        width, height = max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)
        return frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
    return frame.to_ndarray(format="rgb24")
