"""The wire codec: client JSON -> typed events or ProtocolError, server events -> JSON."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assistant.realtime import events as ev


def parse(**event):
    return ev.parse(json.dumps(event))


def error_of(text: str | bytes) -> ev.ProtocolError:
    with pytest.raises(ev.ProtocolError) as info:
        ev.parse(text)
    return info.value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_append_decodes_pcm16():
    e = parse(type="input_audio_buffer.append", audio=b64(b"\x01\x00\x02\x00"), event_id="a1")
    assert isinstance(e, ev.AudioAppend) and e.pcm16 == b"\x01\x00\x02\x00" and e.event_id == "a1"


@pytest.mark.parametrize(
    "text, code, param",
    [
        ("{not json", "invalid_json", None),
        ("[1, 2]", "invalid_type", ""),
        ('{"type": "nope", "event_id": "x"}', "unknown_event_type", "type"),
        ('{"event_id": "x"}', "missing_required_parameter", "type"),
        ('{"type": "input_audio_buffer.append", "audio": 5}', "invalid_type", "audio"),
        ('{"type": "input_audio_buffer.append", "audio": "***"}', "invalid_base64", "audio"),
        ('{"type": "input_audio_buffer.append", "audio": "AAAA"}', "invalid_audio", "audio"),
        ('{"type": "conversation.item.truncate", "item_id": "i"}', "missing_required_parameter", "audio_end_ms"),
        (
            '{"type": "conversation.item.truncate", "item_id": "i", "audio_end_ms": true}',
            "invalid_type",
            "audio_end_ms",
        ),
        ('{"type": "conversation.item.truncate", "item_id": "i", "audio_end_ms": -1}', "invalid_value", "audio_end_ms"),
        ('{"type": "conversation.item.create", "item": {"type": "mcp_call"}}', "unsupported_feature", "item.type"),
        (
            '{"type": "conversation.item.create", "item": {"type": "function_call", "name": "f"}}',
            "missing_required_parameter",
            "item.call_id",
        ),
        (
            '{"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "c"}}',
            "missing_required_parameter",
            "item.output",
        ),
        (
            '{"type": "response.create", "response": {"conversation": "none"}}',
            "unsupported_feature",
            "response.conversation",
        ),
        ('{"type": "session.update", "session": {"type": "translation"}}', "unsupported_feature", "session.type"),
        (
            '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"transcription": {"language": "xx"}}}}}',
            "unsupported_language",
            "session.audio.input.transcription.language",
        ),
        (
            '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": "high"}}}}}',
            "invalid_type",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            '{"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcmu"}}}}}',
            "unsupported_audio_format",
            "session.audio.output.format.type",
        ),
    ],
)
def test_bad_input_is_a_protocol_error(text, code, param):
    err = error_of(text)
    assert err.code == code and err.param == param
    body = ev.error_body(err)
    assert body["type"] == "invalid_request_error" and body["message"]


def test_event_id_is_carried_into_errors():
    err = error_of('{"type": "input_audio_buffer.append", "audio": "***", "event_id": "evt_9"}')
    assert err.event_id == "evt_9"


def test_15_mib_limit():
    audio = "A" * (ev.MAX_EVENT_BYTES + 8)
    err = error_of(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
    assert err.code == "event_too_large"
    ok = "AAAA" * ((ev.MAX_EVENT_BYTES - 200) // 4)
    assert isinstance(ev.parse(json.dumps({"type": "input_audio_buffer.append", "audio": ok})), ev.AudioAppend)


def test_ga_session_update():
    e = parse(
        type="session.update",
        session={
            "type": "realtime",
            "instructions": "hi",
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None},
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "Chelsie"},
            },
            "tools": [],  # no tools: what the server does anyway (fields.py)
        },
    )
    p = e.patch
    assert p.input_rate_hz == 16000 and p.turn_detection is None and "turn_detection" in p.fields_set
    assert p.voice == "Chelsie" and p.instructions == "hi" and p.output_modalities == ("audio",) and not p.beta_shape


def test_beta_session_update_and_semantic_vad():
    p = parse(
        type="session.update",
        session={
            "modalities": ["text", "audio"],
            "input_audio_format": "pcm16",
            "turn_detection": {"type": "semantic_vad", "eagerness": "high"},
        },
    ).patch
    assert p.beta_shape and p.input_rate_hz == 24000 and p.output_modalities == ("audio",)
    assert p.turn_detection.type == "semantic_vad" and p.turn_detection.silence_duration_ms == 300


def test_absent_turn_detection_is_not_null():
    p = parse(type="session.update", session={"type": "realtime", "instructions": "x"}).patch
    assert "turn_detection" not in p.fields_set


def test_item_create_content_kinds():
    png = b64(b"\x89PNG fake")
    e = parse(
        type="conversation.item.create",
        previous_item_id="root",
        item={
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_audio", "audio": b64(b"\0\0")},
                {"type": "input_image", "image_url": f"data:image/png;base64,{png}"},
            ],
        },
    )
    kinds = [c.type for c in e.item.content]
    assert kinds == ["input_text", "input_audio", "input_image"] and e.item.content[2].image == b"\x89PNG fake"
    err = error_of(
        json.dumps(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "https://x/y.png"}],
                },
            }
        )
    )
    assert err.code == "unsupported_feature"


def test_image_buffer_append_accepts_bare_base64_and_data_url():
    assert parse(type="input_image_buffer.append", image=b64(b"jpeg")).image == b"jpeg"
    assert parse(type="input_image_buffer.append", image="data:image/jpeg;base64," + b64(b"jpeg")).image == b"jpeg"


def test_encoder_ids_and_beta_names():
    ga, beta = ev.Encoder(), ev.Encoder(beta=True)
    a, b = ga.event("response.output_audio.delta", delta=""), ga.event("response.output_audio.delta", delta="")
    assert a["event_id"] != b["event_id"] and a["type"] == "response.output_audio.delta"
    assert beta.event("response.output_audio.delta")["type"] == "response.audio.delta"
    assert beta.event("conversation.item.added")["type"] == "conversation.item.created"
    assert json.loads(ev.dumps(a)) == a


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
        max_leaves=20,
    ),
    st.sampled_from(sorted(ev._PARSERS)),
)
def test_parser_raises_only_protocol_errors(payload, kind):
    """Arbitrary JSON under any known event type: a typed event or a ProtocolError, never a crash."""
    obj = (
        {"type": kind, **payload} if isinstance(payload, dict) else {"type": kind, "session": payload, "item": payload}
    )
    try:
        ev.parse(json.dumps(obj))
    except ev.ProtocolError:
        pass
