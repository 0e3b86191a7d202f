"""The OpenAI Realtime wire codec, sans-I/O: JSON text -> typed client events, server
event dicts -> JSON text, and the one mapping from errors to `error` events.

Why our own schema rather than validating against `openai.types.realtime` (openai 3.57):
- we deliberately accept more than the spec's models: `audio/pcm` at 16 kHz (the SDK's
  `AudioPCM.rate` is `Literal[24000]`), Alibaba Qwen-Omni-Realtime's
  `input_image_buffer.append`, and the beta flat `session.update` shape;
- the SDK's unions carry openai's own discriminator marker, not pydantic's, so a strict
  validation of one bad field reports 18-28 errors across every union member instead of
  one `param` (measured), and the models are made for lenient parsing of server output;
- a client SDK as a server runtime dependency would tie our wire contract to its
  release cadence.
The SDK stays the oracle: tests validate every server event we emit against its typed
models, and drive the server with its real client.

Limits enforced here (the spec's, see realtime-landscape.md §3): an event is at most
15 MiB; base64 must be valid; PCM16 must have an even byte length.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from . import fields as fieldtable

MAX_EVENT_BYTES = 15 * 1024 * 1024  # OpenAI: "the maximum size of an event is 15 MiB"
INPUT_RATES_HZ = (24_000, 16_000)
OUTPUT_RATE_HZ = 24_000


class ProtocolError(Exception):
    """A client error that becomes an `error` event; the session keeps working."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.event_id, self.type = code, message, param, event_id, type


# ---------------------------------------------------------------------------- client events


@dataclass(frozen=True)
class TurnDetection:
    """`server_vad` parameters (`semantic_vad` is mapped onto them, see `_turn_detection`)."""

    type: str = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.type == "semantic_vad":
            out: dict[str, Any] = {"type": "semantic_vad", "eagerness": self.eagerness or "auto"}
        else:
            out = {
                "type": "server_vad",
                "threshold": self.threshold,
                "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms,
            }
        return {**out, "create_response": self.create_response, "interrupt_response": self.interrupt_response}


@dataclass(frozen=True)
class Transcription:
    """`audio.input.transcription`: transcribe each committed user audio item with the
    resident model (`model` is echoed; the server has one model). `language` is a checked
    speech-input code (languages.py) or None (the language spoken)."""

    model: str = ""
    language: str | None = None
    prompt: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "language": self.language, "prompt": self.prompt}


@dataclass(frozen=True)
class Interpreter:
    """`session.interpreter` (this server's extension): every user audio turn is answered
    only by its translation into `target_language`, spoken (a speech-output language) or
    written (a text language), by Qwen's translation prompt after the turn's audio.
    `source_language`: a speech-input code, or None for whatever is spoken."""

    target_language: str
    source_language: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"target_language": self.target_language, "source_language": self.source_language}


@dataclass(frozen=True)
class SessionPatch:
    """The fields a `session.update` sets; `fields_set` says which were present
    (`turn_detection=None` in it means manual turns)."""

    fields_set: frozenset[str] = frozenset()
    input_rate_hz: int | None = None
    turn_detection: TurnDetection | None = None
    voice: str | None = None
    instructions: str | None = None
    output_modalities: tuple[str, ...] | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    model: str | None = None
    beta_shape: bool = False
    transcription: Transcription | None = None  # in fields_set with None: transcription off
    session_type: str | None = None  # "realtime" | "transcription"
    interpreter: Interpreter | None = None  # in fields_set with None: interpreter off
    # tool calling: the raw JSON, checked against the session's tools in realtime/tools.py
    tools: Any = None
    tool_choice: Any = None


@dataclass(frozen=True)
class ContentIn:
    type: Literal["input_text", "input_audio", "input_image", "output_text", "output_audio"]
    text: str = ""
    audio: bytes = b""  # PCM16 at the session's input rate
    image: bytes = b""  # encoded JPEG/PNG


@dataclass(frozen=True)
class ItemIn:
    role: Literal["user", "assistant", "system", "tool"]
    content: tuple[ContentIn, ...]
    id: str | None = None
    type: Literal["message", "function_call", "function_call_output"] = "message"
    call_id: str | None = None  # function_call and function_call_output
    name: str | None = None  # function_call
    arguments: str | None = None  # function_call
    output: str | None = None  # function_call_output


@dataclass(frozen=True)
class ClientEvent:
    type: str
    event_id: str | None = None


@dataclass(frozen=True)
class SessionUpdate(ClientEvent):
    patch: SessionPatch = field(default_factory=SessionPatch)


@dataclass(frozen=True)
class AudioAppend(ClientEvent):
    pcm16: bytes = b""


@dataclass(frozen=True)
class AudioCommit(ClientEvent):
    pass


@dataclass(frozen=True)
class AudioClear(ClientEvent):
    pass


@dataclass(frozen=True)
class ImageAppend(ClientEvent):
    image: bytes = b""


@dataclass(frozen=True)
class ItemCreate(ClientEvent):
    item: ItemIn | None = None
    previous_item_id: str | None = None


@dataclass(frozen=True)
class ItemRetrieve(ClientEvent):
    item_id: str = ""


@dataclass(frozen=True)
class ItemDelete(ClientEvent):
    item_id: str = ""


@dataclass(frozen=True)
class ItemTruncate(ClientEvent):
    item_id: str = ""
    content_index: int = 0
    audio_end_ms: int = 0


@dataclass(frozen=True)
class ResponseCreate(ClientEvent):
    output_modalities: tuple[str, ...] | None = None
    instructions: str | None = None
    max_output_tokens: int | Literal["inf"] | None = None  # None: the session's
    voice: str | None = None
    metadata: dict[str, str] | None = None
    tools: Any = None  # raw JSON; None: the session's (realtime/tools.py)
    tool_choice: Any = None


@dataclass(frozen=True)
class ResponseCancel(ClientEvent):
    response_id: str | None = None


@dataclass(frozen=True)
class OutputAudioClear(ClientEvent):
    pass


# ---------------------------------------------------------------------------- field access


class _Fields:
    """Typed access to one JSON object, raising ProtocolError with the field's path."""

    def __init__(self, obj: Any, path: str, event_id: str | None) -> None:
        if not isinstance(obj, dict):
            raise ProtocolError("invalid_type", f"'{path}' must be an object", param=path, event_id=event_id)
        self.obj, self.path, self.event_id = obj, path, event_id

    def has(self, key: str) -> bool:
        return key in self.obj

    def _param(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kinds: tuple[type, ...], what: str, *, required: bool = False, nullable: bool = False):
        if key not in self.obj or (self.obj[key] is None and not required and not nullable):
            if required:
                raise ProtocolError(
                    "missing_required_parameter",
                    f"missing required parameter '{self._param(key)}'",
                    param=self._param(key),
                    event_id=self.event_id,
                )
            return None
        value = self.obj[key]
        if value is None and nullable:
            return None
        # bool is an int subclass in Python; JSON true is not a number
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise ProtocolError(
                "invalid_type",
                f"'{self._param(key)}' must be {what}",
                param=self._param(key),
                event_id=self.event_id,
            )
        return value

    def str(self, key: str, **kw) -> str | None:
        return self.get(key, (str,), "a string", **kw)

    def int(self, key: str, **kw) -> int | None:
        return self.get(key, (int,), "an integer", **kw)

    def num(self, key: str, **kw) -> float | None:
        value = self.get(key, (int, float), "a number", **kw)
        return None if value is None else float(value)

    def bool(self, key: str, **kw) -> bool | None:
        return self.get(key, (bool,), "a boolean", **kw)

    def sub(self, key: str, *, required: bool = False) -> _Fields | None:
        value = self.get(key, (dict,), "an object", required=required)
        return None if value is None else _Fields(value, self._param(key), self.event_id)

    def list(self, key: str, **kw) -> list | None:
        return self.get(key, (list,), "an array", **kw)

    def fail(self, key: str, message: str, code: str = "invalid_value") -> ProtocolError:
        return ProtocolError(code, message, param=self._param(key), event_id=self.event_id)


def decode_base64(text: str, *, param: str, event_id: str | None) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(
            "invalid_base64", f"'{param}' is not valid base64", param=param, event_id=event_id
        ) from None


def _pcm16(f: _Fields, key: str, *, required: bool) -> bytes:
    text = f.str(key, required=required)
    if text is None:
        return b""
    data = decode_base64(text, param=f._param(key), event_id=f.event_id)
    if len(data) % 2:
        raise f.fail(key, f"'{f._param(key)}' is PCM16 and must have an even number of bytes", "invalid_audio")
    return data


def parse_data_url(url: str, *, param: str, event_id: str | None) -> bytes:
    """`data:image/png;base64,...` (or bare base64) -> bytes. Remote URLs are refused:
    the server never fetches on a client's behalf."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.endswith(";base64"):
            raise ProtocolError("invalid_value", f"'{param}' must be a base64 data URL", param=param, event_id=event_id)
        return decode_base64(payload, param=param, event_id=event_id)
    if url.startswith(("http://", "https://")):
        raise ProtocolError("unsupported_feature", "image URLs are not fetched; send a data URL", param=param)
    return decode_base64(url, param=param, event_id=event_id)


# ---------------------------------------------------------------------------- session.update


_EAGERNESS_SILENCE_MS = {"low": 1000, "medium": 500, "high": 300, "auto": 500}


def _turn_detection(f: _Fields, key: str, defaults: TurnDetection) -> TurnDetection | None:
    td = f.get(key, (dict,), "an object or null", nullable=True)
    if td is None:
        return None
    t = _Fields(td, f._param(key), f.event_id)
    kind = t.str("type") or "server_vad"
    create, interrupt = t.bool("create_response"), t.bool("interrupt_response")
    common = {
        "create_response": defaults.create_response if create is None else create,
        "interrupt_response": defaults.interrupt_response if interrupt is None else interrupt,
    }
    if kind == "semantic_vad":
        # No semantic turn model yet: semantic_vad runs the Silero endpointer with a
        # silence wait chosen by eagerness (OpenAI's max waits are 8/4/2 s; ours are short).
        eagerness = t.str("eagerness") or "auto"
        if eagerness not in _EAGERNESS_SILENCE_MS:
            raise t.fail("eagerness", "eagerness must be low, medium, high or auto")
        silence = _EAGERNESS_SILENCE_MS[eagerness]
        return TurnDetection(
            "semantic_vad", defaults.threshold, defaults.prefix_padding_ms, silence, **common, eagerness=eagerness
        )
    if kind != "server_vad":
        raise t.fail("type", f"turn_detection type must be server_vad or semantic_vad, not {kind!r}")
    threshold = t.num("threshold")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise t.fail("threshold", "threshold must be between 0 and 1")
    prefix, silence = t.int("prefix_padding_ms"), t.int("silence_duration_ms")
    for name, value in (("prefix_padding_ms", prefix), ("silence_duration_ms", silence)):
        if value is not None and not 0 <= value <= 10_000:
            raise t.fail(name, f"{name} must be between 0 and 10000")
    return TurnDetection(
        "server_vad",
        defaults.threshold if threshold is None else threshold,
        defaults.prefix_padding_ms if prefix is None else prefix,
        defaults.silence_duration_ms if silence is None else silence,
        **common,
    )


def _audio_format(f: _Fields, key: str, allowed_rates: tuple[int, ...]) -> int | None:
    """GA `{type: "audio/pcm", rate}` or beta `"pcm16"` (24 kHz; Alibaba also says `pcm24`)."""
    value = f.get(key, (dict, str), "an audio format")
    if value is None:
        return None
    if isinstance(value, str):
        rates = {"pcm16": 24_000, "pcm24": 24_000, "pcm": 24_000}
        if value not in rates:
            raise f.fail(key, f"unsupported audio format {value!r}; use audio/pcm", "unsupported_audio_format")
        return rates[value]
    fmt = _Fields(value, f._param(key), f.event_id)
    kind = fmt.str("type") or "audio/pcm"
    if kind != "audio/pcm":
        raise fmt.fail("type", f"unsupported audio format {kind!r}; use audio/pcm", "unsupported_audio_format")
    rate = fmt.int("rate") or 24_000
    if rate not in allowed_rates:
        raise fmt.fail("rate", f"rate must be one of {list(allowed_rates)}", "unsupported_audio_format")
    return rate


def _modalities(f: _Fields, key: str) -> tuple[str, ...] | None:
    values = f.list(key)
    if values is None:
        return None
    if not values or any(v not in ("audio", "text") for v in values):
        raise f.fail(key, f'\'{f._param(key)}\' must be ["audio"] or ["text"]')
    # Beta clients send ["text", "audio"], meaning audio plus its transcript.
    return ("audio",) if "audio" in values else ("text",)


def _check_fields(f: _Fields, table: dict) -> None:
    """The field table (fields.py): unknown or refused fields are errors naming them."""
    found = fieldtable.violation(f.obj, table, f.path)
    if found is not None:
        code, message, path = found
        raise ProtocolError(code, message, param=path, event_id=f.event_id)


def _max_tokens(f: _Fields, key: str) -> int | Literal["inf"] | None:
    value = f.get(key, (int, str), "an integer or 'inf'")
    if isinstance(value, str) and value != "inf" or isinstance(value, int) and value < 1:
        raise f.fail(key, f"{key} must be a positive integer or 'inf'")
    return value


def _voice(f: _Fields, key: str) -> str | None:
    voice = f.get(key, (str, dict), "a voice name")
    if isinstance(voice, dict):
        voice = _Fields(voice, f._param(key), f.event_id).str("id", required=True)
    return voice


def _transcription(f: _Fields, key: str) -> Transcription | None:
    from .. import languages

    value = f.get(key, (dict,), "an object or null", nullable=True)
    if value is None:
        return None
    t = _Fields(value, f._param(key), f.event_id)
    language = t.str("language") or None
    if language is not None:
        try:
            language = languages.speech_input(language)
        except languages.UnsupportedLanguage as exc:
            raise t.fail("language", str(exc), "unsupported_language") from None
    return Transcription(t.str("model") or "", language, t.str("prompt") or "")


def _interpreter(f: _Fields, key: str) -> Interpreter | None:
    from .. import languages

    value = f.get(key, (dict,), "an object or null", nullable=True)
    if value is None:
        return None
    t = _Fields(value, f._param(key), f.event_id)
    target, source = t.str("target_language", required=True), t.str("source_language")
    try:
        target = languages.text(target)  # spoken targets are checked against the output modality (session.py)
    except languages.UnsupportedLanguage as exc:
        raise t.fail("target_language", str(exc), "unsupported_language") from None
    try:
        source = languages.speech_input(source) if source else None
    except languages.UnsupportedLanguage as exc:
        raise t.fail("source_language", str(exc), "unsupported_language") from None
    return Interpreter(target, source)


def parse_session(obj: Any, event_id: str | None, defaults: TurnDetection) -> SessionPatch:
    s = _Fields(obj, "session", event_id)
    kind = s.str("type")
    if kind not in (None, "realtime", "transcription"):
        raise s.fail(
            "type", f"session type {kind!r} is not supported; use 'realtime' or 'transcription'", "unsupported_feature"
        )
    _check_fields(s, fieldtable.TRANSCRIPTION_SESSION if kind == "transcription" else fieldtable.SESSION)
    beta = kind is None
    values: dict[str, Any] = {"beta_shape": beta}
    if kind is not None:
        values["session_type"] = kind
    audio = s.sub("audio")
    inp = audio.sub("input") if audio else None
    out = audio.sub("output") if audio else None
    rate = (inp and _audio_format(inp, "format", INPUT_RATES_HZ)) or _audio_format(
        s, "input_audio_format", INPUT_RATES_HZ
    )
    if rate is not None:
        values["input_rate_hz"] = rate
    if out is not None:
        _audio_format(out, "format", (OUTPUT_RATE_HZ,))  # only 24 kHz PCM out; refuse anything else
    _audio_format(s, "output_audio_format", (OUTPUT_RATE_HZ,))
    for holder in (inp, s):
        if holder is not None and holder.has("turn_detection"):
            values["turn_detection"] = _turn_detection(holder, "turn_detection", defaults)
    if s.has("interpreter"):
        values["interpreter"] = _interpreter(s, "interpreter")
    for holder, key in ((inp, "transcription"), (s, "input_audio_transcription")):
        if holder is not None and holder.has(key):
            values["transcription"] = _transcription(holder, key)
    voice = (out and _voice(out, "voice")) or s.str("voice")
    if voice is not None:
        values["voice"] = voice
    max_tokens = _max_tokens(s, "max_output_tokens") or _max_tokens(s, "max_response_output_tokens")
    if max_tokens is not None:
        values["max_output_tokens"] = max_tokens
    if s.str("model") is not None:
        values["model"] = s.str("model")
    if s.has("instructions"):
        values["instructions"] = s.str("instructions") or ""
    mods = _modalities(s, "output_modalities") or _modalities(s, "modalities")
    if mods is not None:
        values["output_modalities"] = mods
    if s.has("tools"):
        values["tools"] = s.list("tools") or []
    if s.has("tool_choice"):
        values["tool_choice"] = s.get("tool_choice", (str, dict), "a string or an object")
    names = frozenset(k for k in values if k != "beta_shape")
    return SessionPatch(fields_set=names, **values)


# ---------------------------------------------------------------------------- items


def _content(c: _Fields, role: str, index: int) -> ContentIn:
    kind = c.str("type", required=True)
    allowed = {
        "user": ("input_text", "input_audio", "input_image"),
        "system": ("input_text",),
        "assistant": ("output_text", "output_audio", "text", "audio"),
    }[role]
    if kind not in allowed:
        raise c.fail("type", f"content type {kind!r} is not allowed for role {role!r}")
    if kind == "input_audio":
        return ContentIn("input_audio", audio=_pcm16(c, "audio", required=True))
    if kind == "input_image":
        url = c.str("image_url", required=True)
        return ContentIn("input_image", image=parse_data_url(url, param=c._param("image_url"), event_id=c.event_id))
    if kind in ("output_audio", "audio"):
        return ContentIn("output_audio", text=c.str("transcript") or "")
    return ContentIn("input_text" if role != "assistant" else "output_text", text=c.str("text") or "")


def parse_item(obj: Any, event_id: str | None) -> ItemIn:
    it = _Fields(obj, "item", event_id)
    kind = it.str("type") or "message"
    if kind == "function_call":  # a client replaying history
        call_id, name = it.str("call_id", required=True), it.str("name", required=True)
        args = it.str("arguments") or "{}"
        return ItemIn("assistant", (), it.str("id"), "function_call", call_id=call_id, name=name, arguments=args)
    if kind == "function_call_output":
        call_id, output = it.str("call_id", required=True), it.str("output", required=True)
        return ItemIn("tool", (), it.str("id"), "function_call_output", call_id=call_id, output=output)
    if kind != "message":
        raise it.fail("type", f"item type {kind!r} is not supported", "unsupported_feature")
    role = it.str("role", required=True)
    if role not in ("user", "assistant", "system"):
        raise it.fail("role", "role must be user, assistant or system")
    raw = it.list("content", required=True)
    content = tuple(_content(_Fields(c, f"item.content[{i}]", event_id), role, i) for i, c in enumerate(raw))
    if not content:
        raise it.fail("content", "content must not be empty")
    return ItemIn(role, content, it.str("id"))


# ---------------------------------------------------------------------------- parse


def parse(text: str | bytes, defaults: TurnDetection = TurnDetection()) -> ClientEvent:
    """One client message -> a typed event. Raises ProtocolError (with the event_id when
    one could be read)."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_EVENT_BYTES:
        raise ProtocolError("event_too_large", f"event of {size} bytes exceeds the 15 MiB limit")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("invalid_json", f"the event is not valid JSON: {exc}") from None
    event_id = obj.get("event_id") if isinstance(obj, dict) and isinstance(obj.get("event_id"), str) else None
    f = _Fields(obj, "", event_id)
    kind = f.str("type", required=True)
    handler = _PARSERS.get(kind)
    if handler is None:
        raise ProtocolError("unknown_event_type", f"unknown event type {kind!r}", param="type", event_id=event_id)
    return handler(f, kind, event_id, defaults)


def _session_update(f, kind, eid, defaults):
    return SessionUpdate(kind, eid, parse_session(f.obj.get("session", {}), eid, defaults))


def _append(f, kind, eid, _):
    return AudioAppend(kind, eid, _pcm16(f, "audio", required=True))


def _image_append(f, kind, eid, _):
    text = f.str("image", required=True)
    return ImageAppend(kind, eid, parse_data_url(text, param="image", event_id=eid))


def _item_create(f, kind, eid, _):
    f.sub("item", required=True)
    return ItemCreate(kind, eid, parse_item(f.obj["item"], eid), f.str("previous_item_id"))


def _item_ref(cls):
    return lambda f, kind, eid, _: cls(kind, eid, f.str("item_id", required=True))


def _truncate(f, kind, eid, _):
    item_id, index, end = (
        f.str("item_id", required=True),
        f.int("content_index") or 0,
        f.int("audio_end_ms", required=True),
    )
    if end < 0:
        raise f.fail("audio_end_ms", "audio_end_ms must not be negative")
    return ItemTruncate(kind, eid, item_id, index, end)


def _response_create(f, kind, eid, _):
    r = f.sub("response")
    if r is None:
        return ResponseCreate(kind, eid)
    _check_fields(r, fieldtable.RESPONSE)
    conv = r.str("conversation")
    if conv not in (None, "auto"):
        raise r.fail("conversation", "only the default conversation is supported", "unsupported_feature")
    if r.list("input") is not None:
        raise r.fail("input", "custom response input is not supported", "unsupported_feature")
    mods = _modalities(r, "output_modalities") or _modalities(r, "modalities")
    max_tokens = _max_tokens(r, "max_output_tokens") or _max_tokens(r, "max_response_output_tokens")
    audio = r.sub("audio")
    out = audio.sub("output") if audio else None
    if out is not None:
        _audio_format(out, "format", (OUTPUT_RATE_HZ,))  # only 24 kHz PCM out; refuse anything else
    _audio_format(r, "output_audio_format", (OUTPUT_RATE_HZ,))
    voice = (out and _voice(out, "voice")) or r.str("voice")
    metadata = r.get("metadata", (dict,), "an object of strings")
    if metadata is not None and not all(isinstance(v, str) for v in metadata.values()):
        raise r.fail("metadata", "metadata values must be strings")
    tools = r.list("tools")
    choice = r.get("tool_choice", (str, dict), "a string or an object")
    return ResponseCreate(kind, eid, mods, r.str("instructions"), max_tokens, voice, metadata, tools, choice)


def _simple(cls):
    return lambda f, kind, eid, _: cls(kind, eid)


_PARSERS = {
    "session.update": _session_update,
    "input_audio_buffer.append": _append,
    "input_audio_buffer.commit": _simple(AudioCommit),
    "input_audio_buffer.clear": _simple(AudioClear),
    "input_image_buffer.append": _image_append,  # Alibaba Qwen-Omni-Realtime's camera frames
    "conversation.item.create": _item_create,
    "conversation.item.retrieve": _item_ref(ItemRetrieve),
    "conversation.item.delete": _item_ref(ItemDelete),
    "conversation.item.truncate": _truncate,
    "response.create": _response_create,
    "response.cancel": lambda f, kind, eid, _: ResponseCancel(kind, eid, f.str("response_id")),
    "output_audio_buffer.clear": _simple(OutputAudioClear),
}


# ---------------------------------------------------------------------------- server events

# GA name -> beta name, for clients that connect with `OpenAI-Beta: realtime=v1` or send
# the beta session shape (pipecat's and the beta SDK's parsers key on these).
BETA_NAMES = {
    "conversation.item.added": "conversation.item.created",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}

_event_ids = itertools.count(1)


class Encoder:
    """Builds server event dicts, each with a fresh `event_id`, in GA or beta names."""

    def __init__(self, beta: bool = False) -> None:
        self.beta = beta

    def event(self, type: str, **fields: Any) -> dict[str, Any]:
        if self.beta:
            type = BETA_NAMES.get(type, type)
        return {"type": type, "event_id": f"event_{next(_event_ids):08d}", **fields}

    def error(self, err: ProtocolError) -> dict[str, Any]:
        return self.event("error", error=error_body(err))


def error_body(err: ProtocolError) -> dict[str, Any]:
    """The single mapping from a ProtocolError to the spec's error object."""
    return {"type": err.type, "code": err.code, "message": err.message, "param": err.param, "event_id": err.event_id}


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
