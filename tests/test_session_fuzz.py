"""Property-based fuzz of the session state machine (issue #8): random sequences of
valid and invalid client events, VAD results, engine events and time never crash the
session, every server event it emits is a valid spec event (the `openai` package's
models, via the session tests' Harness), and no item vanishes silently: once the
responses have ended, the engine conversation holds exactly the items the client was
told about (added, and not deleted), in the client's order.
"""

from __future__ import annotations

import base64
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from session_harness import Harness, chunk, done

from assistant.engine.api import TextDelta

ROLES = st.sampled_from(["user", "system", "assistant"])
SMALL_TEXT = st.text(max_size=12)


def _pcm(n_bytes: int) -> str:
    return base64.b64encode(bytes((i * 37) % 256 for i in range(n_bytes))).decode()


def _content(role: str, text: str) -> list[dict]:
    kind = {"user": "input_text", "system": "input_text", "assistant": "output_text"}[role]
    return [{"type": kind, "text": text}]


# An action is a tuple; ids are drawn as integers and resolved against the session's
# items when the action runs (so that they mostly name real items).
client_event = st.one_of(
    st.tuples(st.just("raw"), st.one_of(st.text(max_size=40), st.binary(max_size=40))),
    st.tuples(st.just("append"), st.integers(0, 30_000), st.booleans()),
    st.tuples(st.just("commit")),
    st.tuples(st.just("clear")),
    st.tuples(st.just("create"), ROLES, SMALL_TEXT, st.integers(-2, 20), st.booleans()),
    st.tuples(st.just("retrieve"), st.integers(-1, 20)),
    st.tuples(st.just("delete"), st.integers(-1, 20)),
    st.tuples(st.just("truncate"), st.integers(-1, 20), st.integers(-100, 10_000), st.integers(-1, 1)),
    st.tuples(st.just("response"), st.sampled_from([None, ["text"], ["audio"]]), st.sampled_from([None, 1, 50])),
    st.tuples(st.just("cancel"), st.booleans()),
    st.tuples(st.just("update"), st.sampled_from(["manual", "vad", "voice", "bad_voice", "instructions", "rate16"])),
    st.tuples(st.just("image"), st.binary(max_size=64)),
    st.tuples(st.just("wrong_types"), st.sampled_from(["audio", "item", "item_id", "event_id", "type"])),
)
engine_event = st.tuples(st.just("engine"), st.sampled_from(["text", "audio", "completed", "cancelled", "failed"]))
vad_event = st.tuples(st.just("vad"), st.lists(st.booleans(), min_size=1, max_size=8))
tick = st.tuples(st.just("tick"), st.floats(0, 5))
actions = st.lists(st.one_of(client_event, client_event, engine_event, vad_event, tick), max_size=40)


def _pick(h: Harness, n: int) -> str:
    items = h.session._items
    if n < 0 or not items:
        return "item_bogus"
    return items[n % len(items)]


def run_action(h: Harness, action: tuple) -> None:
    kind = action[0]
    if kind == "raw":
        h.take(h.session.receive_text(action[1]))
    elif kind == "append":
        n, valid = action[1], action[2]
        h.send(type="input_audio_buffer.append", audio=_pcm(n) if valid else "%%%not base64", event_id="a")
    elif kind == "commit":
        h.send(type="input_audio_buffer.commit")
    elif kind == "clear":
        h.send(type="input_audio_buffer.clear")
    elif kind == "create":
        _, role, text, prev, with_id = action
        item = {"type": "message", "role": role, "content": _content(role, text)}
        if with_id:
            item["id"] = _pick(h, prev) if prev % 3 == 0 else f"mine_{prev}"
        event = {"type": "conversation.item.create", "item": item}
        if prev == -2:
            event["previous_item_id"] = "root"
        elif prev >= 0 and prev % 2:
            event["previous_item_id"] = _pick(h, prev)
        h.send(**event)
    elif kind == "retrieve":
        h.send(type="conversation.item.retrieve", item_id=_pick(h, action[1]))
    elif kind == "delete":
        h.send(type="conversation.item.delete", item_id=_pick(h, action[1]))
    elif kind == "truncate":
        _, n, ms, index = action
        h.send(type="conversation.item.truncate", item_id=_pick(h, n), content_index=index, audio_end_ms=ms)
    elif kind == "response":
        response = {}
        if action[1] is not None:
            response["output_modalities"] = action[1]
        if action[2] is not None:
            response["max_output_tokens"] = action[2]
        h.send(type="response.create", response=response)
    elif kind == "cancel":
        h.send(type="response.cancel", **({"response_id": "resp_bogus"} if action[1] else {}))
    elif kind == "update":
        h.send(type="session.update", session=_update(action[1]))
    elif kind == "image":
        h.send(type="input_image_buffer.append", image=base64.b64encode(action[1]).decode())
    elif kind == "wrong_types":
        h.take(h.session.receive_text(json.dumps(_wrong_types(action[1]))))
    elif kind == "engine":
        _engine(h, action[1])
    elif kind == "vad":
        pattern = action[1]
        h.vad(lambda w: 0.9 if pattern[w % len(pattern)] else 0.1)
    elif kind == "tick":
        h.clock.t += action[1]


def _update(kind: str) -> dict:
    if kind == "manual":
        return {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
    if kind == "vad":
        return {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad"}}}}
    if kind == "voice":
        return {"type": "realtime", "audio": {"output": {"voice": "chelsie"}}}
    if kind == "bad_voice":
        return {"type": "realtime", "audio": {"output": {"voice": "nobody"}}}
    if kind == "rate16":
        return {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}
    return {"type": "realtime", "instructions": "be brief"}


def _wrong_types(field: str) -> dict:
    return {
        "audio": {"type": "input_audio_buffer.append", "audio": 12},
        "item": {"type": "conversation.item.create", "item": "text"},
        "item_id": {"type": "conversation.item.delete", "item_id": ["x"]},
        "event_id": {"type": "input_audio_buffer.clear", "event_id": {"a": 1}},
        "type": {"type": 7},
    }[field]


def _engine(h: Harness, kind: str) -> None:
    active = h.session._active
    if active is None:
        return
    if kind == "text":
        h.engine(active.id, TextDelta("ab", 1))
    elif kind == "audio":
        h.engine(active.id, chunk(80))
    elif kind == "failed":
        h.engine(active.id, done("failed", turn=False))
    else:
        h.engine(active.id, done(kind, text="ok", frames=2))


def settle(h: Harness) -> None:
    """End responses as the engine would (one may start another: a queued VAD turn)."""
    for _ in range(10):
        active = h.session._active
        if active is None:
            return
        h.engine(active.id, done("completed", text="end", frames=1))
    raise AssertionError("responses never ended")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=actions, max_items=st.integers(2, 8))
def test_random_event_sequences_never_crash_or_lose_items(actions, max_items):
    h = Harness(max_conversation_items=max_items, max_input_audio_s=1)
    for action in actions:
        run_action(h, action)
    settle(h)
    internal = [e for e in h.events if e["type"] == "error" and e["error"]["code"] == "server_error"]
    assert internal == [], internal  # a handler raised: a bug, even though the session survived
    created = [e["response"]["id"] for e in h.events if e["type"] == "response.created"]
    finished = [e["response"]["id"] for e in h.events if e["type"] == "response.done"]
    assert created == finished  # every response ends exactly once, in order
    told: list[str] = []  # items the client was told exist, by the events it got
    for e in h.events:
        if e["type"] == "conversation.item.added" and e["item"]["id"] not in told:
            told.append(e["item"]["id"])
        elif e["type"] == "conversation.item.deleted" and e["item_id"] in told:
            told.remove(e["item_id"])
    turns = [t.id for t in h.session.conversation.turns]
    assert sorted(turns) == sorted(told) == sorted(h.session._items)
    assert turns == h.session._items  # the model sees the items in the client's order
    assert len(turns) <= max_items


def test_no_internal_errors_on_a_plain_turn_after_garbage():
    """The fuzz's invariants hold on a known sequence (and the test can fail)."""
    h = Harness()
    h.take(h.session.receive_text(b"\xff\xfe"))
    h.send(type="session.update", session=_update("manual"))
    h.append(0.3)
    h.send(type="input_audio_buffer.commit")
    h.send(type="response.create")
    settle(h)
    assert [t.role for t in h.session.conversation.turns] == ["user", "assistant"]
