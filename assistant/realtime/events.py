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

This module is the codec's front: `parse` and the server-event builders. The typed client
events and `ProtocolError` live in client_events.py, field access and the parsing of
`session` and `item` objects in event_fields.py; all are importable from here.
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

from . import fields as fieldtable
from .client_events import (
    INPUT_RATES_HZ,
    MAX_EVENT_BYTES,
    OUTPUT_RATE_HZ,
    AudioAppend,
    AudioClear,
    AudioCommit,
    ClientEvent,
    ContentIn,
    ImageAppend,
    Interpreter,
    ItemCreate,
    ItemDelete,
    ItemIn,
    ItemRetrieve,
    ItemTruncate,
    OutputAudioClear,
    ProtocolError,
    ResponseCancel,
    ResponseCreate,
    SessionPatch,
    SessionUpdate,
    Transcription,
    TurnDetection,
)
from .event_fields import (
    _audio_format,
    _check_fields,
    _Fields,
    _max_tokens,
    _modalities,
    _pcm16,
    _voice,
    decode_base64,
    parse_data_url,
    parse_item,
    parse_session,
)

__all__ = [
    "MAX_EVENT_BYTES",
    "INPUT_RATES_HZ",
    "OUTPUT_RATE_HZ",
    "ProtocolError",
    "TurnDetection",
    "Transcription",
    "Interpreter",
    "SessionPatch",
    "ContentIn",
    "ItemIn",
    "ClientEvent",
    "SessionUpdate",
    "AudioAppend",
    "AudioCommit",
    "AudioClear",
    "ImageAppend",
    "ItemCreate",
    "ItemRetrieve",
    "ItemDelete",
    "ItemTruncate",
    "ResponseCreate",
    "ResponseCancel",
    "OutputAudioClear",
    "decode_base64",
    "parse_data_url",
    "parse_item",
    "parse_session",
    "BETA_NAMES",
    "Encoder",
    "b64",
    "dumps",
    "error_body",
    "parse",
]


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
    parallel = r.bool("parallel_tool_calls")
    return ResponseCreate(kind, eid, mods, r.str("instructions"), max_tokens, voice, metadata, tools, choice, parallel)


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
