"""A Chat Completions request body -> what the engine runs, or a ChatError saying why not.

Pure: a dict in, a `ChatRequest` out (media decoded by chat_media.py). The fields follow
openai-python's `CompletionCreateParams` (reference variants §6): content parts `text`,
`image_url`, `input_audio` and vLLM's `video_url`; `modalities` with `audio: {voice,
format}`; `stream`, `stream_options.include_usage`; `max_completion_tokens` (or the older
`max_tokens`), `temperature`, `top_p`, `seed`, `stop`, `n`; `tools`, `tool_choice`,
`parallel_tool_calls`, assistant messages' `tool_calls` and `tool` messages (chat_tools.py).
A field that would change the answer and that this server does not implement is refused
by name, never ignored.

The history becomes engine turns as a Realtime session's items do: an assistant message
with `tool_calls` is one assistant turn holding its text and calls, a `tool` message a
"tool" turn holding the result for its `tool_call_id`; the chat template then renders
them in Qwen's `<tool_call>` / `<tool_response>` form (engine/inputs.py).

The variants (reference variants §1): Thinking and Captioner answer in text only; the
Captioner takes exactly one audio clip and nothing else (no text, no system turn).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..engine.api import VOICES, AudioPart, ImagePart, Part, TextPart, Tool, ToolChoice, Turn, VideoPart
from .chat_media import (
    ChatError,
    b64decode,
    data_url,
    decode_audio,
    decode_image,
    decode_video,
)
from .chat_tools import history_calls, parse_choice, parse_tools

# Fields that change the answer and are not implemented: refused unless at their no-op value.
UNSUPPORTED = {
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "prediction": (None,),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "store": (None, False),
}
IGNORABLE = {"model", "user", "metadata", "service_tier", "safety_identifier", "prompt_cache_key"}


@dataclass
class ChatRequest:
    turns: list[Turn]  # user, assistant and tool turns, in order
    instructions: str = ""
    audio_out: bool = False
    voice: str | None = None
    audio_format: str = "wav"
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    clip: np.ndarray | None = None  # Captioner: the one clip, 16 kHz float32
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=lambda: ToolChoice("none"))
    media: dict[str, int] = field(default_factory=dict)  # counts, for the log


@dataclass
class Limits:
    variant: str = "instruct"  # instruct | thinking | captioner
    model: str = ""
    max_tokens: int = 256
    max_image_pixels: int = 16_777_216
    max_video_frames: int = 240
    output_formats: tuple[str, ...] = ("wav", "pcm16")


def _number(body: dict, name: str, kind: type, lo: float, hi: float) -> float | int | None:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
    if not ok or isinstance(value, bool) or not lo <= value <= hi:
        raise ChatError(400, "invalid_value", f"{name} must be a {kind.__name__} in [{lo}, {hi}], got {value!r}", name)
    return value


def _text_only(content: object, param: str) -> str:
    """System, developer and assistant content: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ChatError(
                    400, "invalid_value", f"{param}[{j}] must be a text part, got {kind!r}", f"{param}[{j}]"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise ChatError(400, "invalid_value", f"{param} must be a string or a list of text parts", param)


def _part(part: object, param: str, limits: Limits) -> Part:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise ChatError(400, "invalid_value", f"{param} must be an object with a type", param)
    kind = part["type"]
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise ChatError(400, "invalid_value", f"{param}.text must be a string", f"{param}.text")
        return TextPart(part["text"])
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        raw = data_url(url, "image", f"{param}.image_url.url")
        return ImagePart(decode_image(raw, f"{param}.image_url.url", limits.max_image_pixels))
    if kind == "input_audio":
        spec = part.get("input_audio")
        if not isinstance(spec, dict):
            raise ChatError(400, "invalid_value", f"{param}.input_audio must be an object", f"{param}.input_audio")
        raw = b64decode(spec.get("data"), f"{param}.input_audio.data")
        fmt = spec.get("format")
        return AudioPart(decode_audio(raw, fmt if isinstance(fmt, str) else "", f"{param}.input_audio"))
    if kind == "video_url":
        spec = part.get("video_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        raw = data_url(url, "video", f"{param}.video_url.url")
        frames, times = decode_video(raw, f"{param}.video_url.url", limits.max_video_frames)
        return VideoPart(frames, times)
    raise ChatError(
        400,
        "invalid_value",
        f"unknown content part type {kind!r}: use text, image_url, input_audio or video_url",
        f"{param}.type",
    )


def _messages(messages: object, limits: Limits) -> tuple[list[Turn], str]:
    if not isinstance(messages, list) or not messages:
        raise ChatError(400, "invalid_value", "messages must be a non-empty list", "messages")
    turns: list[Turn] = []
    system: list[str] = []
    call_ids: set[str] = set()  # ids of the calls earlier assistant messages made
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise ChatError(400, "invalid_value", f"{param} must be an object", param)
        role, content = msg.get("role"), msg.get("content")
        if role in ("system", "developer"):
            if turns:
                raise ChatError(400, "invalid_value", f"{param}: {role} messages must come first", f"{param}.role")
            system.append(_text_only(content, f"{param}.content"))
        elif role == "assistant":
            turns.append(_assistant(msg, param, call_ids))
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in call_ids:
                raise ChatError(
                    400,
                    "invalid_value",
                    f"{param}.tool_call_id {call_id!r} names no call of an earlier assistant message's tool_calls",
                    f"{param}.tool_call_id",
                )
            output = _text_only(content, f"{param}.content")
            turns.append(Turn("tool", [TextPart(output)], call_id=call_id))
        elif role == "user":
            if isinstance(content, str):
                parts: list[Part] = [TextPart(content)]
            elif isinstance(content, list) and content:
                parts = [_part(p, f"{param}.content[{j}]", limits) for j, p in enumerate(content)]
            else:
                raise ChatError(400, "invalid_value", f"{param}.content must be a string or a list of parts", param)
            turns.append(Turn("user", parts))
        else:
            raise ChatError(
                400,
                "invalid_value",
                f"{param}.role {role!r} is not supported: use system, developer, user, assistant or tool",
                f"{param}.role",
            )
    if not turns or turns[-1].role not in ("user", "tool"):
        raise ChatError(400, "invalid_value", "the last message must be a user or tool message", "messages")
    return turns, "\n\n".join(system)


def _assistant(msg: dict, param: str, call_ids: set[str]) -> Turn:
    content = msg.get("content")
    if content is None and msg.get("audio") is not None:
        raise ChatError(
            400,
            "invalid_value",
            f"{param}.audio: earlier answers' audio is not kept; send their transcript as content",
            f"{param}.audio",
        )
    if msg.get("function_call") is not None:
        raise ChatError(
            400,
            "unsupported_parameter",
            f"{param}.function_call is deprecated; use tool_calls",
            f"{param}.function_call",
        )
    calls = history_calls(msg["tool_calls"], f"{param}.tool_calls", call_ids) if msg.get("tool_calls") else []
    # Earlier answers' reasoning is dropped, as Qwen3's template does (split at </think>).
    text = _text_only(content or "", f"{param}.content").split("</think>")[-1].lstrip("\n")
    return Turn("assistant", [TextPart(text)], text=text, tool_calls=calls)


def _captioner(turns: list[Turn], instructions: str, tools: tuple[Tool, ...]) -> np.ndarray:
    """The Captioner's one input: a single audio clip (Qwen: no text, no system turn)."""
    why = "the Captioner describes exactly one audio clip and takes nothing else"
    if instructions:
        raise ChatError(400, "invalid_value", f"{why}: remove the system message", "messages")
    if tools:
        raise ChatError(400, "invalid_value", f"{why}: it calls no tools", "tools")
    if len(turns) != 1:
        raise ChatError(400, "invalid_value", f"{why}: send one user message", "messages")
    parts = turns[0].parts
    kinds = {TextPart: "text", ImagePart: "an image", VideoPart: "a video", AudioPart: "audio"}
    for j, part in enumerate(parts):
        if not isinstance(part, AudioPart):
            raise ChatError(
                400, "invalid_value", f"{why}: it cannot take {kinds[type(part)]}", f"messages[0].content[{j}]"
            )
    if len(parts) != 1:
        raise ChatError(400, "invalid_value", f"{why}: it got {len(parts)} clips", "messages[0].content")
    return parts[0].pcm


def parse(body: object, limits: Limits) -> ChatRequest:
    if not isinstance(body, dict):
        raise ChatError(400, "invalid_value", "the body must be a JSON object")
    for name, fine in UNSUPPORTED.items():
        if name in body and body[name] not in fine:
            raise ChatError(400, "unsupported_parameter", f"{name} is not supported by this server", name)
    known = {"messages", "modalities", "audio", "stream", "stream_options", "max_completion_tokens", "max_tokens"}
    known |= {"temperature", "top_p", "seed", "stop", "n", "tools", "tool_choice", "parallel_tool_calls"}
    known |= set(UNSUPPORTED) | IGNORABLE
    extra = sorted(set(body) - known)
    if extra:
        raise ChatError(400, "unknown_parameter", f"unknown parameter {extra[0]!r}", extra[0])
    if body.get("n") not in (None, 1):
        raise ChatError(400, "invalid_value", "n must be 1: this server returns one choice per request", "n")
    turns, instructions = _messages(body.get("messages"), limits)
    req = ChatRequest(turns, instructions)
    req.tools = parse_tools(body.get("tools"))
    req.tool_choice = parse_choice(body.get("tool_choice"), req.tools, body.get("parallel_tool_calls"))
    req.media = {
        kind.__name__: sum(isinstance(p, kind) for turn in turns for p in turn.parts)
        for kind in (AudioPart, ImagePart, VideoPart)
    }
    _output(body, req, limits)
    _sampling(body, req, limits)
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise ChatError(400, "invalid_value", "stream must be a boolean", "stream")
    req.stream = bool(stream)
    options = body.get("stream_options")
    if options is not None:
        if not req.stream or not isinstance(options, dict):
            raise ChatError(400, "invalid_value", "stream_options needs stream: true and an object", "stream_options")
        req.include_usage = bool(options.get("include_usage", False))
    if req.stream and req.audio_out and req.audio_format != "pcm16":
        raise ChatError(
            400, "invalid_value", "streamed audio is pcm16: set audio.format to 'pcm16' with stream", "audio.format"
        )
    if limits.variant == "captioner":
        req.clip = _captioner(turns, instructions, req.tools)
    return req


def _output(body: dict, req: ChatRequest, limits: Limits) -> None:
    modalities = body.get("modalities") or ["text"]
    if not isinstance(modalities, list) or not set(modalities) <= {"text", "audio"} or "text" not in modalities:
        raise ChatError(400, "invalid_value", "modalities must be ['text'] or ['text', 'audio']", "modalities")
    req.audio_out = "audio" in modalities
    audio = body.get("audio")
    if not req.audio_out:
        if audio is not None:
            raise ChatError(400, "invalid_value", "audio is set but modalities does not include 'audio'", "audio")
        return
    if limits.variant != "instruct":
        raise ChatError(
            400,
            "invalid_value",
            f"the loaded checkpoint {limits.model} ({limits.variant}) is thinker-only (no talker): "
            "it answers in text only; use modalities ['text']",
            "modalities",
        )
    if not isinstance(audio, dict):
        raise ChatError(400, "invalid_value", "modalities includes 'audio': set audio {voice, format}", "audio")
    voice = audio.get("voice")
    match = next((v for v in VOICES if isinstance(voice, str) and v.lower() == voice.lower()), None)
    if match is None:
        raise ChatError(400, "invalid_value", f"unknown voice {voice!r}; use one of {list(VOICES)}", "audio.voice")
    fmt = audio.get("format")
    if fmt not in limits.output_formats:
        raise ChatError(
            400, "invalid_value", f"audio.format must be one of {list(limits.output_formats)}", "audio.format"
        )
    req.voice, req.audio_format = match, fmt


def _sampling(body: dict, req: ChatRequest, limits: Limits) -> None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = _number(body, name, int, 1, 1 << 31)
        if value is not None:
            if value > limits.max_tokens:
                raise ChatError(
                    400,
                    "invalid_value",
                    f"{name} is {value}; this server answers with at most {limits.max_tokens} tokens "
                    "(--max-answer-tokens)",
                    name,
                )
            req.max_tokens = int(value)
    req.temperature = _number(body, "temperature", float, 0.0, 2.0)
    top_p = _number(body, "top_p", float, 0.0, 1.0)
    if top_p == 0:
        raise ChatError(400, "invalid_value", "top_p must be greater than 0", "top_p")
    req.top_p = top_p
    seed = _number(body, "seed", int, -(1 << 63), (1 << 63) - 1)
    req.seed = None if seed is None else int(seed) & ((1 << 63) - 1)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop)
    ):
        raise ChatError(400, "invalid_value", "stop must be a non-empty string or a list of up to 4", "stop")
    req.stop = tuple(stop or ())
