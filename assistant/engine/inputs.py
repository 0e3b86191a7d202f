"""Conversation -> the processor's tensors, exactly as a user of the stock model would build them.

The chat template renders placeholders (`<|audio_start|><|audio_pad|><|audio_end|>`,
`<|vision_start|><|image_pad|><|vision_end|>`, ...) and `Qwen3OmniMoeProcessor` expands
them to one token per encoder output, computes log-mel features (16 kHz, 128 bins) and
image/video patches. Audio at any rate is resampled to 16 kHz first; video frames are
thinned to at most 2 fps (qwen-omni-utils' FPS) and to an even count (temporal patch 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr
import torch

from .api import INPUT_SAMPLE_RATE, AudioPart, Conversation, ImagePart, TextPart, VideoPart

MAX_VIDEO_FPS = 2.0


def resample_to_16k(part: AudioPart) -> np.ndarray:
    pcm = np.asarray(part.pcm, dtype=np.float32).reshape(-1)
    if part.sample_rate == INPUT_SAMPLE_RATE:
        return pcm
    return soxr.resample(pcm, part.sample_rate, INPUT_SAMPLE_RATE).astype(np.float32)


def sample_video(part: VideoPart, max_fps: float = MAX_VIDEO_FPS) -> tuple[np.ndarray, float]:
    """Keep frames at most `max_fps` apart in capture time; return [T, H, W, 3] and its fps."""
    kept, kept_t = [], []
    for frame, t in zip(part.frames, part.timestamps_s, strict=True):
        if not kept_t or t - kept_t[-1] >= 1.0 / max_fps - 1e-6:
            kept.append(frame)
            kept_t.append(t)
    if len(kept) % 2:  # the vision encoder's temporal patch is 2 frames
        kept.append(kept[-1])
        kept_t.append(kept_t[-1] + 1.0 / max_fps)
    span = kept_t[-1] - kept_t[0]
    fps = min(max_fps, (len(kept) - 1) / span) if span > 0 else max_fps
    return np.stack(kept), float(fps)


@dataclass
class Prepared:
    """Processor outputs for one thinker prefill, plus what the talker needs."""

    tensors: dict[str, torch.Tensor]  # input_ids, attention_mask, input_features, ...
    num_audios: int
    num_images: int
    num_videos: int

    @property
    def input_ids(self) -> torch.Tensor:
        return self.tensors["input_ids"]


def messages(
    conv: Conversation,
) -> tuple[list[dict], list[np.ndarray], list[np.ndarray], list[np.ndarray], list[float]]:
    msgs: list[dict] = []
    audios, images, videos, fps = [], [], [], []
    if conv.instructions:
        msgs.append({"role": "system", "content": [{"type": "text", "text": conv.instructions}]})
    for turn in conv.turns:
        if turn.role == "assistant":
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": turn.text_content()}]})
            continue
        content = []
        for part in turn.parts:
            if isinstance(part, AudioPart):
                audios.append(resample_to_16k(part))
                content.append({"type": "audio"})
            elif isinstance(part, ImagePart):
                images.append(np.asarray(part.image, dtype=np.uint8))
                content.append({"type": "image"})
            elif isinstance(part, VideoPart):
                frames, rate = sample_video(part)
                videos.append(frames)
                fps.append(rate)
                content.append({"type": "video"})
            elif isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
        msgs.append({"role": turn.role, "content": content})
    return msgs, audios, images, videos, fps


def prepare(processor, conv: Conversation) -> Prepared:
    msgs, audios, images, videos, fps = messages(conv)
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    kwargs = {}
    if audios:
        kwargs["audio"] = audios
    if images:
        kwargs["images"] = images
    if videos:
        kwargs["videos"] = videos
        # The processor takes one fps for the batch; frames were already thinned to <= 2 fps.
        kwargs["videos_kwargs"] = {"fps": min(fps), "do_sample_frames": False}
    tensors = processor(text=text, return_tensors="pt", padding=True, **kwargs)
    return Prepared(dict(tensors), len(audios), len(images), len(videos))
