"""Camera frames for a session: decoding with limits, sampling to the model's rate, and
the recent frames stamped with the input audio position they arrived at (camera.py picks
a turn's frames from them).

Qwen3-Omni reads video at 2 fps (qwen-omni-utils samples at that rate), so frames that
arrive faster are dropped *before* they are decoded: decoding costs a few ms of CPU per
frame and runs on the caller's thread, so at most `fps` decodes per second happen.
"""

from __future__ import annotations

import io
import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..engine.api import INPUT_SAMPLE_RATE

MAX_SIDE_PX = 1280  # larger frames are reduced on decode (JPEG draft mode makes that cheap)


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Encoded JPEG/PNG/WebP -> uint8 RGB [H, W, 3]. Raises ValueError for corrupt data or
    an image whose header declares more than `max_pixels` (checked before decoding, so a
    decompression bomb costs nothing)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels or width < 1 or height < 1:
                raise ValueError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels}")
            if image.format == "JPEG":
                image.draft("RGB", (MAX_SIDE_PX, MAX_SIDE_PX))
            image = image.convert("RGB")
            if max(image.size) > MAX_SIDE_PX:
                image.thumbnail((MAX_SIDE_PX, MAX_SIDE_PX))
            return np.asarray(image, dtype=np.uint8)
    except ValueError:
        raise
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise ValueError(f"not a decodable image: {type(exc).__name__}") from None


@dataclass(eq=False)
class Frame:
    """A kept camera frame, stamped with the input audio position it arrived at: the end of
    the session's input audio buffer then (16 kHz samples of the input stream, the timeline
    of `audio_start_ms`). The audio position, not the wall clock, decides which half-second
    of a turn shows it, so the choice does not depend on when the events were handled."""

    pos: int
    image: np.ndarray


HISTORY_S = 10  # frames this far behind the newest are kept for a turn start the VAD finds late
HISTORY_FRAMES = 32  # and at most this many (with image_fps=0 every frame is kept)


class FrameSampler:
    """The camera's recent frames, at most `fps` per second of wall clock.

    Time is cut into slots of 1/fps seconds; the first frame of a slot is kept and later
    ones in the same slot are dropped undecoded (`wants()` says which): decoding is the
    CPU cost this bounds. Kept frames stay for `HISTORY_S` s of input audio (plus the
    latest older one), because a turn's start is only known once the VAD has found it,
    up to a few hundred ms after the fact, padded back by its prefix padding."""

    def __init__(self, fps: float) -> None:
        self.period_s = 1.0 / fps if fps > 0 else 0.0
        self.frames: deque[Frame] = deque(maxlen=HISTORY_FRAMES)
        self._last_slot: int | None = None

    def wants(self, t_s: float) -> bool:
        return self.period_s == 0.0 or self._last_slot is None or int(t_s // self.period_s) > self._last_slot

    def add(self, t_s: float, pos: int, image: np.ndarray) -> None:
        if self.frames and self.frames[-1].pos == pos:
            self.frames.pop()  # no audio between them: no half-second could ever pick the older one
        self.frames.append(Frame(pos, image))
        self._last_slot = int(t_s // self.period_s) if self.period_s else None
        while len(self.frames) > 1 and self.frames[1].pos <= pos - HISTORY_S * INPUT_SAMPLE_RATE:
            self.frames.popleft()

    def consume(self, through: int) -> None:
        """A turn whose audio ends at `through` was committed: its frames are not shown
        again (a still image goes with one turn, as a message would); frames that arrived
        after its audio stay for the next turn."""
        while self.frames and self.frames[0].pos <= through:
            self.frames.popleft()

    def at(self, pos: int) -> Frame | None:
        """The latest frame that arrived at or before audio position `pos`."""
        return next((f for f in reversed(self.frames) if f.pos <= pos), None)

    def after(self, pos: int) -> Frame | None:
        """The first frame that arrived after audio position `pos`."""
        return next((f for f in self.frames if f.pos > pos), None)
