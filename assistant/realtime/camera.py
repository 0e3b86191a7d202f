"""Camera frames of a user turn, one per half second of its audio (issue #7).

A camera+microphone turn goes to the engine as `[VideoPart(frames, [i / 2 ...],
interleave_audio=True), AudioPart]`: Qwen's time-interleaved layout, where frame i is the
camera at i / 2 s from the audio's start (engine/inputs.py `live_frames`). The engine
prefills such a turn while it is spoken and reuses that KV cache at the commit, matching
it on token ids only; a different frame with the same token count would silently reuse
the wrong KV. So the frames must be chosen once and never change:

- Frames are stamped with the input audio position they arrived at (images.Frame).
- Half-second k of a turn starting at sample `start` shows the latest frame that arrived
  at or before `start + k * 8000`. Once the audio has passed that point no frame arriving
  later can change the choice, and `CameraTurn` stores it.
- A camera that starts after the turn: the half-seconds before its first frame show that
  first frame (the layout has no grid without frames, and grids start at 0 s).
- Video covers at most the first `max_camera_turn_s` seconds; the rest of the turn is
  audio only (the layout allows audio after the last grid).

`turn_parts` builds both the prefill offers and the committed turn from the same stored
choices, so the committed frames are exactly those offered.
"""

from __future__ import annotations

import numpy as np

from ..engine.api import INPUT_SAMPLE_RATE, AudioPart, ImagePart, Part, VideoPart
from .images import Frame, FrameSampler

HALF_S_SAMPLES = INPUT_SAMPLE_RATE // 2  # the interleaved layout's frame period: 2 fps


class CameraTurn:
    """The frames chosen for the half-seconds of one turn so far."""

    def __init__(self, start: int, max_camera_turn_s: int) -> None:
        self.start = start  # first audio sample of the turn (16 kHz input stream position)
        self.max_slots = 2 * max(0, max_camera_turn_s)
        self.slots: list[Frame | None] = []  # None only before the camera's first frame

    def advance(self, frames: FrameSampler, end: int) -> None:
        """Choose the frames of the half-seconds whose start the audio has passed (`end`
        is the input buffer's end). Call it as audio arrives, so that every choice is
        made while `frames` still holds the frames it needs."""
        while len(self.slots) < self.max_slots and self.start + len(self.slots) * HALF_S_SAMPLES < end:
            self.slots.append(frames.at(self.start + len(self.slots) * HALF_S_SAMPLES))
        if self.slots and self.slots[0] is None:
            first = frames.after(self.start)
            last_point = self.start + (self.max_slots - 1) * HALF_S_SAMPLES
            if first is not None and first.pos <= last_point:  # a camera that starts past the video's span: none
                self.slots = [s if s is not None else first for s in self.slots]

    def full(self, samples: int) -> bool:
        """Whether the video of a turn of `samples` samples has all its frames (the cap)."""
        return (
            self.max_slots > 0 and len(self.slots) == self.max_slots and samples > (self.max_slots - 1) * HALF_S_SAMPLES
        )

    def frames(self, samples: int) -> list[Frame]:
        """The frames of a turn of `samples` audio samples: one per started half-second,
        up to the cap; empty when the camera has sent nothing for it."""
        n = min(-(-samples // HALF_S_SAMPLES), len(self.slots))
        chosen = self.slots[:n]
        return [] if not chosen or chosen[0] is None else chosen  # type: ignore[return-value]


def turn_parts(camera: CameraTurn | None, audio: np.ndarray) -> list[Part]:
    """The user turn for 16 kHz `audio` (the turn so far, or the whole committed turn).

    - Two or more distinct frames: a camera+microphone turn, interleaved.
    - One distinct frame (a still image sent before speaking, or a turn shorter than
      half a second): `[ImagePart, AudioPart]`, as a photo is read best. The engine does
      not prefill such a turn early; it is prefilled whole at the commit.
    - None: audio only.
    A plain (non-interleaved) VideoPart is never built: the engine cannot mix it with
    camera turns in one conversation (engine/inputs.py `messages`)."""
    frames = camera.frames(len(audio)) if camera is not None else []
    spoken = AudioPart(audio, INPUT_SAMPLE_RATE)
    if len({id(f) for f in frames}) >= 2:
        video = VideoPart(
            [f.image for f in frames],
            [i / 2 for i in range(len(frames))],
            interleave_audio=True,
            complete=camera.full(len(audio)),
        )
        return [video, spoken]
    if frames:
        return [ImagePart(frames[0].image), spoken]
    return [spoken]
