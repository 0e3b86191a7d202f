"""Camera frames for a session: decoding with limits, and sampling to the model's rate.

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


@dataclass
class Frame:
    t_s: float  # arrival time (the session clock)
    image: np.ndarray


class FrameSampler:
    """Keep at most `fps` frames per second and only the latest `max_frames`.

    Time is cut into slots of 1/fps seconds; the first frame of a slot is kept and later
    ones in the same slot are dropped undecoded (`wants()` says which)."""

    def __init__(self, fps: float, max_frames: int) -> None:
        self.period_s = 1.0 / fps if fps > 0 else 0.0
        self.frames: deque[Frame] = deque(maxlen=max(1, max_frames))
        self._last_slot: int | None = None

    def wants(self, t_s: float) -> bool:
        return self.period_s == 0.0 or self._last_slot is None or int(t_s // self.period_s) > self._last_slot

    def add(self, t_s: float, image: np.ndarray) -> None:
        self.frames.append(Frame(t_s, image))
        self._last_slot = int(t_s // self.period_s) if self.period_s else None

    def take(self) -> list[Frame]:
        """The frames for the turn being committed; the sampler starts over."""
        frames = list(self.frames)
        self.frames.clear()
        return frames

    def clear(self) -> None:
        self.frames.clear()
