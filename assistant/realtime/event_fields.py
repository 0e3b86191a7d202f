"""Typed field access for the Realtime codec (events.py): each JSON object is read through
`_Fields`, which raises a `ProtocolError` naming the field's path; and the parsing of the
nested objects, `session` (session.update) and `item` (conversation.item.create).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from . import fields as fieldtable
from .client_events import (
    INPUT_RATES_HZ,
    OUTPUT_RATE_HZ,
    ContentIn,
    Interpreter,
    ItemIn,
    ProtocolError,
    SessionPatch,
    Transcription,
    TurnDetection,
)

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
    if s.bool("parallel_tool_calls") is not None:  # null: unchanged
        values["parallel_tool_calls"] = s.bool("parallel_tool_calls")
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
