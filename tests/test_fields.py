"""The field audit: every field of `session.update`'s session and `response.create`'s
response, as the openai SDK's models define them, is honored or refused with an error
naming it (assistant/realtime/fields.py), never accepted and ignored.

The SDK is the list: its pydantic models are walked recursively, so a field a later SDK
release adds fails `test_every_sdk_field_is_classified` until the table says what the
server does with it.
"""

from __future__ import annotations

import typing

import pytest
from openai.types.beta.realtime import response_create_event as beta_response
from openai.types.beta.realtime import session_update_event as beta_session
from openai.types.realtime.realtime_response_create_params import RealtimeResponseCreateParams
from openai.types.realtime.realtime_session_create_request import RealtimeSessionCreateRequest
from openai.types.realtime.realtime_transcription_session_create_request import (
    RealtimeTranscriptionSessionCreateRequest,
)
from pydantic import BaseModel
from session_harness import Harness, chunk, done

from assistant.engine.api import TextDelta
from assistant.realtime import fields
from assistant.realtime import session as s


def _models(annotation) -> list[type[BaseModel]]:
    """The pydantic models inside a field's annotation (Optional, Union, List, Dict...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def sdk_paths(model: type[BaseModel], root: str) -> set[str]:
    """Every field path of `model` and of the models nested in it (union members merged,
    list elements sharing the list's path)."""
    paths: set[str] = set()

    def walk(m: type[BaseModel], prefix: str, seen: tuple) -> None:
        for name, info in m.model_fields.items():
            path = f"{prefix}.{name}"
            paths.add(path)
            for sub in _models(info.annotation):
                if sub not in seen:
                    walk(sub, path, (*seen, sub))

    walk(model, root, (model,))
    return paths


def _beta_response_model() -> type[BaseModel]:
    return _models(beta_response.ResponseCreateEvent.model_fields["response"].annotation)[0]


SCHEMAS = {
    "session (realtime)": (fields.SESSION, sdk_paths(RealtimeSessionCreateRequest, "session")),
    "session (beta)": (
        fields.SESSION,
        sdk_paths(_models(beta_session.SessionUpdateEvent.model_fields["session"].annotation)[0], "session"),
    ),
    "session (transcription)": (
        fields.TRANSCRIPTION_SESSION,
        sdk_paths(RealtimeTranscriptionSessionCreateRequest, "session"),
    ),
    "response": (fields.RESPONSE, sdk_paths(RealtimeResponseCreateParams, "response")),
    "response (beta)": (fields.RESPONSE, sdk_paths(_beta_response_model(), "response")),
}


def _covered(table: dict, path: str) -> bool:
    if path in table or fields.refusal(table, path) is not None:
        return True
    parent = path.rpartition(".")[0]
    while parent:  # inside an opaque honored field: the client's data, not fields
        if parent in table and table[parent].opaque:
            return True
        parent = parent.rpartition(".")[0]
    return False


@pytest.mark.parametrize("schema", list(SCHEMAS))
def test_every_sdk_field_is_classified(schema):
    table, paths = SCHEMAS[schema]
    assert len(paths) > 5, "the SDK walk found the models' fields"
    missing = sorted(p for p in paths if not _covered(table, p))
    assert not missing, f"fields the SDK defines that fields.py does not classify: {missing}"


def test_no_entry_names_a_field_the_sdk_lacks():
    for table in (fields.SESSION, fields.RESPONSE):
        known = set().union(*(paths for t, paths in SCHEMAS.values() if t is table))
        stale = sorted(p for p in table if p not in known and p not in fields.EXTENSIONS)
        assert not stale, f"entries for fields no SDK model has: {stale}"


# ---------------------------------------------------------------------------- refusals reach the client


def _nest(path: str, value) -> dict:
    """'session.audio.output.speed', v -> {"audio": {"output": {"speed": v}}} (below the root)."""
    out = value
    for key in reversed(path.split(".")[1:]):
        out = {key: out}
    return out


BETA_ONLY = {p for p in fields.SESSION if p not in SCHEMAS["session (realtime)"][1]}
REFUSED = [(name, p) for name, t in (("session", fields.SESSION), ("response", fields.RESPONSE)) for p in t]
REFUSED = [(name, p) for name, p in REFUSED if fields.refusal(getattr(fields, name.upper()), p) is not None]


@pytest.mark.parametrize("root, path", REFUSED, ids=[p for _, p in REFUSED])
def test_each_refused_field_is_an_error_naming_it(root, path):
    h = Harness()
    sample = {"a": "value the server does not implement"}
    if root == "session":
        session = _nest(path, sample)
        if path not in BETA_ONLY:
            session["type"] = "realtime"
        h.send(type="session.update", event_id="e1", session=session)
        assert "session.updated" not in h.types()
    else:
        h.send(type="response.create", event_id="e1", response=_nest(path, sample))
        assert not h.cmds(s.StartResponse), "no response starts"
    err = h.last("error")["error"]
    assert (err["code"], err["param"], err["event_id"]) == ("unsupported_feature", path, "e1")
    assert path in err["message"]


TRANSCRIPTION_REFUSED = [p for p in fields.TRANSCRIPTION_SESSION if fields.refusal(fields.TRANSCRIPTION_SESSION, p)]


@pytest.mark.parametrize("path", TRANSCRIPTION_REFUSED)
def test_a_transcription_session_refuses_by_name_what_it_does_not_do(path):
    h = Harness()
    session = {**_nest(path, {"a": "value the server does not implement"}), "type": "transcription"}
    h.send(type="session.update", event_id="e1", session=session)
    err = h.last("error")["error"]
    assert (err["code"], err["param"]) == ("unsupported_feature", path)
    assert "session.updated" not in h.types()


def test_a_transcription_session_takes_its_honored_fields():
    h = Harness()
    h.send(
        type="session.update",
        session={
            "type": "transcription",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"language": "en"}}},
        },
    )
    assert "session.updated" in h.types(), h.last("error")


def test_unknown_fields_are_refused_not_dropped():
    h = Harness()
    h.send(type="session.update", session={"type": "realtime", "audio": {"output": {"volume": 3}}})
    assert h.last("error")["error"]["param"] == "session.audio.output.volume"
    assert h.last("error")["error"]["code"] == "unknown_parameter"
    h.send(type="response.create", response={"stream": True})
    assert h.last("error")["error"]["param"] == "response.stream"


def test_neutral_values_of_refused_fields_are_accepted_and_echoed():
    """What stock clients send by default asks for nothing the server lacks."""
    h = Harness()
    h.send(
        type="session.update",
        session={
            "type": "realtime",
            "tools": [],
            "tool_choice": "auto",
            "parallel_tool_calls": True,
            "tracing": None,
            "truncation": "auto",
            "include": [],
            "audio": {"output": {"speed": 1.0}, "input": {"transcription": None, "noise_reduction": None}},
        },
    )
    updated = h.last("session.updated")["session"]
    assert updated["tools"] == [] and updated["tool_choice"] == "auto" and updated["truncation"] == "auto"
    assert updated["parallel_tool_calls"] is True
    assert updated["audio"]["output"]["speed"] == 1.0 and updated["audio"]["input"]["transcription"] is None
    h.send(type="session.update", session={"type": "realtime", "audio": {"output": {"speed": True}}})
    assert h.last("error")["error"]["param"] == "session.audio.output.speed", "JSON true is not 1.0"


# ---------------------------------------------------------------------------- honored fields


def _respond(h: Harness, **response) -> s.StartResponse:
    h.send(type="response.create", **({"response": response} if response else {}))
    return h.cmds(s.StartResponse)[-1]


def _finish(h: Harness, start: s.StartResponse) -> None:
    h.engine(start.response_id, TextDelta("Hi", 1), chunk(80), done(text="Hi", frames=1))


def test_session_max_output_tokens_is_honored_and_echoed():
    h = Harness(max_answer_tokens=256)
    h.send(type="session.update", session={"type": "realtime", "max_output_tokens": 8})
    assert h.last("session.updated")["session"]["max_output_tokens"] == 8
    start = _respond(h)
    assert start.conversation.sampling.max_tokens == 8, "the engine is told"
    assert h.last("response.created")["response"]["max_output_tokens"] == 8
    _finish(h, start)
    assert h.last("response.done")["response"]["max_output_tokens"] == 8
    # A response's own value wins for that response only; the server's cap bounds both.
    start = _respond(h, max_output_tokens=20)
    assert start.conversation.sampling.max_tokens == 20
    _finish(h, start)
    start = _respond(h, max_output_tokens="inf")
    assert start.conversation.sampling.max_tokens == 256, "'inf' for one response: the server's cap"
    _finish(h, start)
    assert _respond(h).conversation.sampling.max_tokens == 8
    h2 = Harness(max_answer_tokens=256)
    for value, in_force in (("inf", 256), (5000, 256), (12, 12)):
        h2.send(type="session.update", session={"type": "realtime", "max_output_tokens": value})
        assert h2.last("session.updated")["session"]["max_output_tokens"] == in_force
    h2.send(type="session.update", session={"max_response_output_tokens": 9})  # beta spelling
    assert h2.session.max_output_tokens == 9
    h2.send(type="session.update", session={"type": "realtime", "max_output_tokens": 0})
    assert h2.last("error")["error"]["code"] == "invalid_value"


def test_response_voice_and_metadata_are_honored():
    h = Harness()
    start = _respond(h, audio={"output": {"voice": "aiden"}}, metadata={"topic": "weather"})
    assert start.conversation.voice == "Aiden"
    created = h.last("response.created")["response"]
    assert created["metadata"] == {"topic": "weather"} and created["audio"]["output"]["voice"] == "Aiden"
    _finish(h, start)
    assert h.last("response.done")["response"]["metadata"] == {"topic": "weather"}
    assert h.session.conversation.voice == "Ethan", "the session's voice is back after that response"
    h.send(type="response.create", response={"audio": {"output": {"voice": "nobody"}}})
    assert h.last("error")["error"]["param"] == "response.audio.output.voice"
    h.send(type="response.create", response={"audio": {"output": {"format": {"type": "audio/pcmu"}}}})
    assert h.last("error")["error"]["code"] == "unsupported_audio_format"


def test_session_model_must_be_the_served_one():
    h = Harness()
    h.send(type="session.update", session={"type": "realtime", "model": "tiny"})
    assert h.last("session.updated")["session"]["model"] == "tiny"
    h.send(type="session.update", session={"type": "realtime", "model": "gpt-realtime"})
    err = h.last("error")["error"]
    assert (err["code"], err["param"]) == ("invalid_value", "session.model")
