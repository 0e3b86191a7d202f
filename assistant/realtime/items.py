"""Conversation items on the wire: engine `Turn`s -> OpenAI Realtime item objects, and
client item content -> engine parts."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ..audio import float_to_pcm16, pcm16_to_float, resample
from ..engine.api import INPUT_SAMPLE_RATE, AudioPart, ImagePart, Part, TextPart, Turn, VideoPart
from .events import ContentIn, b64
from .images import decode_image
from .tools import call_item, output_item

OutputKind = Literal["audio", "text"]


def _user_content(part: Part, with_audio: bool, rate_hz: int, transcript: str | None) -> list[dict[str, Any]]:
    if isinstance(part, TextPart):
        return [{"type": "input_text", "text": part.text}]
    if isinstance(part, AudioPart):
        audio = None
        if with_audio:  # conversation.item.retrieve returns the audio, at the client's rate
            audio = b64(float_to_pcm16(resample(part.pcm, part.sample_rate, rate_hz)))
        return [{"type": "input_audio", "audio": audio, "transcript": transcript}]
    if isinstance(part, ImagePart):
        return [{"type": "input_image", "image_url": None}]
    if isinstance(part, VideoPart):  # one entry per frame, as a client would have sent them
        return [{"type": "input_image", "image_url": None} for _ in part.frames]
    raise TypeError(f"unknown part {type(part).__name__}")


def item_json(
    turn: Turn,
    *,
    status: str = "completed",
    output: OutputKind = "audio",
    with_audio: bool = False,
    input_rate_hz: int = 24_000,
    transcript: str | None = None,
) -> dict[str, Any]:
    """The GA item object for a turn (assistant items: `output_audio` with its
    transcript, or `output_text`; user audio: with its input transcript, once done; a
    client's function_call and function_call_output items have their own shapes)."""
    if turn.role == "tool":
        return output_item(turn.id, turn.call_id, turn.text_content())
    if turn.role == "assistant" and len(turn.tool_calls) == 1 and not turn.text_content() and not turn.token_ids:
        return call_item(turn.id, turn.tool_calls[0], status)
    if turn.role == "assistant":
        text = turn.text_content()
        content = [
            {"type": "output_audio", "transcript": text} if output == "audio" else {"type": "output_text", "text": text}
        ]
    elif turn.role == "system":
        content = [{"type": "input_text", "text": turn.text_content()}]
    else:
        content = [c for p in turn.parts for c in _user_content(p, with_audio, input_rate_hz, transcript)]
    return {
        "id": turn.id,
        "object": "realtime.item",
        "type": "message",
        "role": turn.role,
        "status": status,
        "content": content,
    }


def parts_from_content(content: tuple[ContentIn, ...], *, input_rate_hz: int, max_image_pixels: int) -> list[Part]:
    """Client item content -> engine parts (audio resampled to the engine's 16 kHz).
    Raises ValueError for an undecodable image."""
    parts: list[Part] = []
    for c in content:
        if c.type == "input_audio":
            pcm = resample(pcm16_to_float(c.audio), input_rate_hz, INPUT_SAMPLE_RATE)
            parts.append(AudioPart(pcm.astype(np.float32), INPUT_SAMPLE_RATE))
        elif c.type == "input_image":
            parts.append(ImagePart(decode_image(c.image, max_pixels=max_image_pixels)))
        else:
            parts.append(TextPart(c.text))
    return parts
