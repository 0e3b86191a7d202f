"""Media in and out of Chat Completions: data URLs and base64 clips to arrays, PCM16 to files.

Everything here is plain functions over bytes and arrays (no I/O, no asyncio), so a bad
input is a `ChatError` the router maps to an OpenAI-shaped 400. Decoding and encoding use
PyAV (already a dependency through aiortc), so wav, mp3, flac and friends need nothing new.
The server fetches no URL: images and videos come as data URLs (`data:image/png;base64,...`).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import wave
from dataclasses import dataclass

import numpy as np

from ..engine.api import INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE

# Input clip formats (openai-python ChatCompletionContentPartInputAudioParam: "wav" | "mp3").
INPUT_AUDIO_FORMATS = ("wav", "mp3")
# Output formats (ChatCompletionAudioParam.format), each with the PyAV muxer and codec that
# write it; pcm16 and wav need no codec.
OUTPUT_AUDIO_FORMATS = {
    "wav": None,
    "pcm16": None,
    "flac": ("flac", "flac"),
    "mp3": ("mp3", "libmp3lame"),
    "opus": ("ogg", "libopus"),
    "aac": ("adts", "aac"),
}
MAX_VIDEO_FPS = 2.0  # Qwen3-Omni reads video at 2 fps (engine/inputs.py thins to it too)
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*),(?P<data>.*)$", re.DOTALL)


@dataclass
class ChatError(Exception):
    """A request Chat Completions refuses: the HTTP status and OpenAI's error fields."""

    status: int
    code: str
    message: str
    param: str | None = None


def b64decode(data: object, param: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise ChatError(400, "invalid_value", f"{param} must be a non-empty base64 string", param)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ChatError(400, "invalid_base64", f"{param} is not valid base64: {exc}", param) from None


def data_url(url: object, kind: str, param: str) -> bytes:
    """The bytes of a base64 data URL whose media type is `kind`/* (image or video)."""
    if not isinstance(url, str):
        raise ChatError(400, "invalid_value", f"{param} must be a string", param)
    match = _DATA_URL.match(url)
    if match is None:
        scheme = url.split(":", 1)[0] if ":" in url else url[:16]
        raise ChatError(
            400,
            f"invalid_{kind}_url",
            f"{param} must be a data URL (data:{kind}/...;base64,...); this server fetches no URL ({scheme!r})",
            param,
        )
    mime = (match["mime"] or "").lower()
    if not mime.startswith(f"{kind}/"):
        raise ChatError(
            400, f"invalid_{kind}_format", f"{param} is a {mime or 'text/plain'} data URL, not {kind}/*", param
        )
    if ";base64" not in match["params"].lower():
        raise ChatError(400, "invalid_base64", f"{param} must be base64-encoded (;base64,)", param)
    return b64decode(match["data"], param)


def decode_image(raw: bytes, param: str, max_pixels: int) -> np.ndarray:
    """uint8 [H, W, 3] RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.width * image.height > max_pixels:
                raise ChatError(
                    400,
                    "image_too_large",
                    f"{param} is {image.width}x{image.height}; the limit is {max_pixels} pixels",
                    param,
                )
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ChatError(400, "invalid_image_format", f"{param} is not a decodable image: {exc}", param) from None


def decode_audio(raw: bytes, fmt: str, param: str) -> np.ndarray:
    """float32 mono at 16 kHz (the audio encoder's rate) from a wav or mp3 file."""
    import av

    if fmt not in INPUT_AUDIO_FORMATS:
        raise ChatError(400, "invalid_value", f"{param}.format must be one of {list(INPUT_AUDIO_FORMATS)}", param)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=INPUT_SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(raw), format=fmt) as container:
            if not container.streams.audio:
                raise ChatError(400, "invalid_audio", f"{param} has no audio stream", param)
            for frame in container.decode(audio=0):
                pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except av.FFmpegError as exc:
        raise ChatError(400, "invalid_audio", f"{param} is not a decodable {fmt} file: {exc}", param) from None
    pcm = np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)
    if len(pcm) < INPUT_SAMPLE_RATE // 10:
        raise ChatError(400, "invalid_audio", f"{param} holds less than 0.1 s of audio", param)
    return pcm


def decode_video(raw: bytes, param: str, max_frames: int) -> tuple[list[np.ndarray], list[float]]:
    """RGB frames at most MAX_VIDEO_FPS apart, and their times in seconds from the first.
    The video's sound track is not used (vLLM's default, use_audio_in_video false)."""
    import av

    frames: list[np.ndarray] = []
    times: list[float] = []
    try:
        with av.open(io.BytesIO(raw)) as container:
            if not container.streams.video:
                raise ChatError(400, "invalid_video", f"{param} has no video stream", param)
            for frame in container.decode(video=0):
                t = float(frame.time or 0.0)
                if times and t - (times[0] + (len(times) - 1) / MAX_VIDEO_FPS) < 1.0 / MAX_VIDEO_FPS - 1e-6:
                    continue
                if len(frames) == max_frames:
                    raise ChatError(400, "video_too_long", f"{param} has more than {max_frames} frames at 2 fps", param)
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(t)
    except av.FFmpegError as exc:
        raise ChatError(400, "invalid_video", f"{param} is not a decodable video: {exc}", param) from None
    if not frames:
        raise ChatError(400, "invalid_video", f"{param} has no frames", param)
    return frames, [t - times[0] for t in times]


def encode_audio(pcm16: bytes, fmt: str) -> bytes:
    """A file of `fmt` (OUTPUT_AUDIO_FORMATS) from PCM16 mono at 24 kHz."""
    if fmt == "pcm16":
        return pcm16
    if fmt == "wav":
        buf = io.BytesIO()
        with wave.open(buf, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(OUTPUT_SAMPLE_RATE)
            out.writeframes(pcm16)
        return buf.getvalue()
    import av

    muxer, codec = OUTPUT_AUDIO_FORMATS[fmt]
    buf = io.BytesIO()
    with av.open(buf, "w", format=muxer) as out:
        stream = out.add_stream(codec, rate=OUTPUT_SAMPLE_RATE, layout="mono")
        samples = np.frombuffer(pcm16, dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = OUTPUT_SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def available_output_formats() -> list[str]:
    """The output formats this PyAV build can write (its FFmpeg may lack an encoder)."""
    import av

    names = []
    for fmt, spec in OUTPUT_AUDIO_FORMATS.items():
        try:
            if spec is not None:
                av.codec.Codec(spec[1], "w")
        except (av.FFmpegError, ValueError):
            continue
        names.append(fmt)
    return names
