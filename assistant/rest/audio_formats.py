"""The response bodies of /v1/audio/transcriptions and /translations, from the transcribed
pieces: OpenAI's `json`, `text`, `srt`, `verbose_json` and `vtt` (openai-python
`types/audio/transcription*.py`, `translation*.py`). Pure functions of plain data.

verbose_json segments carry what this server measures: `start`/`end` (the piece's place in
the file), `text`, `tokens` (the model's token ids), `temperature`, `avg_logprob` (the mean
log-probability of the tokens the model chose for the piece, its end-of-turn token included
as Whisper includes its end-of-text token; each under the distribution it was chosen from:
greedy, the softmax of the logits; sampling, after temperature), `compression_ratio` (zlib,
as Whisper computes it) and `no_speech_prob` (1 - the piece's highest Silero VAD speech
probability: a VAD's figure, not the model's, as Whisper's is its no-speech token's).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
MEDIA_TYPES = {"json": "application/json", "verbose_json": "application/json"}  # the rest: text/plain


@dataclass
class Segment:
    start_s: float
    end_s: float
    text: str
    tokens: list[int] = field(default_factory=list)
    no_speech_prob: float = 0.0
    input_tokens: int = 0
    avg_logprob: float | None = None  # None: the engine reported no log-probabilities (the key is left out)


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def full_text(segments: list[Segment]) -> str:
    return " ".join(t for t in (s.text.strip() for s in segments) if t)


def srt(segments: list[Segment]) -> str:
    blocks = [
        f"{i}\n{_stamp(s.start_s, ',')} --> {_stamp(s.end_s, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(segments, 1)
    ]
    return "\n".join(blocks)


def vtt(segments: list[Segment]) -> str:
    blocks = [f"{_stamp(s.start_s, '.')} --> {_stamp(s.end_s, '.')}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return round(len(data) / len(zlib.compress(data)), 4) if data else 0.0


def usage_tokens(segments: list[Segment]) -> dict:
    inp = sum(s.input_tokens for s in segments)
    out = sum(len(s.tokens) for s in segments)
    return {"type": "tokens", "input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}


def verbose(segments: list[Segment], *, task: str, language: str, duration_s: float, temperature: float) -> dict:
    return {
        "task": task,
        "language": language,
        "duration": round(duration_s, 3),
        "text": full_text(segments),
        "segments": [_segment(i, s, temperature) for i, s in enumerate(segments)],
        "usage": {"type": "duration", "seconds": round(duration_s, 3)},
    }


def _segment(i: int, s: Segment, temperature: float) -> dict:
    out = {
        "id": i,
        "seek": round(s.start_s * 100),  # Whisper's seek: the window's offset in 10 ms frames
        "start": round(s.start_s, 3),
        "end": round(s.end_s, 3),
        "text": s.text.strip(),
        "tokens": s.tokens,
        "temperature": temperature,
        "avg_logprob": None if s.avg_logprob is None else round(s.avg_logprob, 6),
        "compression_ratio": compression_ratio(s.text),
        "no_speech_prob": round(s.no_speech_prob, 4),
    }
    if out["avg_logprob"] is None:
        del out["avg_logprob"]
    return out


def render(fmt: str, segments: list[Segment], **verbose_args) -> str | dict:
    """The body: a dict for the JSON formats, text otherwise."""
    if fmt == "json":
        return {"text": full_text(segments), "usage": usage_tokens(segments)}
    if fmt == "verbose_json":
        return verbose(segments, **verbose_args)
    if fmt == "srt":
        return srt(segments)
    if fmt == "vtt":
        return vtt(segments)
    return full_text(segments)
