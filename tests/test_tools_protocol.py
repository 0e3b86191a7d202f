"""Tool calling on the wire, sans-I/O: session.tools / tool_choice, their checks, the
function_call item events in order, and function_call / function_call_output items.

Engine events are built by hand (the engine's own dataclasses); every server event is
validated against openai-python's typed models by the Harness of session_harness.py.
"""

from __future__ import annotations

from session_harness import Harness, chunk, done

from assistant.engine.api import TextDelta, ToolCall, ToolCallDelta, ToolCallDone, ToolCallStarted, ToolChoice
from assistant.realtime import session as s

LOOKUP = {
    "type": "function",
    "name": "lookup",
    "description": "Search the troubleshooting guide",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
}


def with_tools(h: Harness, tools=(LOOKUP,), choice="auto") -> None:
    h.send(type="session.update", session={"type": "realtime", "tools": list(tools), "tool_choice": choice})


def error(h: Harness, since: int) -> dict:
    errs = [e for e in h.events[since:] if e["type"] == "error"]
    assert errs, h.types(since)
    return errs[-1]["error"]


def test_session_reports_tools_and_choice():
    h = Harness()
    with_tools(h, choice={"type": "function", "name": "lookup"})
    session = h.last("session.updated")["session"]
    assert session["tools"] == [LOOKUP] and session["tool_choice"] == {"type": "function", "name": "lookup"}
    assert h.session.conversation.tools[0].name == "lookup"


def test_bad_tools_get_clear_errors_and_the_session_lives():
    h = Harness()
    bad_schema = {**LOOKUP, "parameters": {"type": "object", "properties": {"query": {"type": "strin"}}}}
    cases = [
        ({"tools": [bad_schema]}, "invalid_value", "session.tools[0].parameters", "not a valid JSON Schema"),
        ({"tools": [LOOKUP, LOOKUP]}, "invalid_value", "session.tools[1].name", "duplicate tool name"),
        ({"tools": [LOOKUP], "tool_choice": {"type": "function", "name": "nope"}}, "invalid_value", None, "nope"),
        ({"tool_choice": "required"}, "invalid_value", "session.tool_choice", "at least one tool"),
        ({"tools": [{**LOOKUP, "name": "bad name"}]}, "invalid_value", "session.tools[0].name", "must match"),
        ({"tools": [{"type": "mcp"}]}, "unsupported_feature", "session.tools[0].type", "mcp"),
        # the field table (fields.py) names an MCP field before the tool is parsed
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "unsupported_feature", "session.tools.server_label", "MCP"),
    ]
    for session, code, param, words in cases:
        n = len(h.events)
        h.send(type="session.update", session={"type": "realtime", **session})
        err = error(h, n)
        assert err["code"] == code and words in err["message"], (session, err)
        if param:
            assert err["param"] == param
        assert "session.updated" not in h.types(n)  # a refused update changes nothing
    assert h.session.conversation.tools == ()
    with_tools(h)  # still alive, and a good update works
    assert h.last("session.updated")["session"]["tools"] == [LOOKUP]


def test_schema_the_grammar_cannot_enforce_is_refused_by_name():
    h = Harness()
    odd = {**LOOKUP, "parameters": {"type": "object", "propertyNames": {"maxLength": 3}}}
    n = len(h.events)
    h.send(type="session.update", session={"type": "realtime", "tools": [odd]})
    err = error(h, n)
    assert err["code"] == "unsupported_feature" and "propertyNames" in err["message"]


def call_response(h: Harness, *, speech: str = "", args: str = '{"query": "wifi"}', complete: bool = True):
    h.send(type="response.create")
    start = h.cmds(s.StartResponse)[-1]
    n = len(h.events)
    events = []
    if speech:
        events += [TextDelta(speech, 1), chunk(80)]
    events += [ToolCallStarted(0, "lookup"), ToolCallDelta(0, args[:5]), ToolCallDelta(0, args[5:])]
    events += [ToolCallDone(0, "lookup", args, complete)]
    d = done(text=speech)
    d.turn.tool_calls = [ToolCall("lookup", args, complete=complete)]
    h.engine(start.response_id, *events, d)
    return start, n


def test_call_events_in_order_after_speech():
    h = Harness()
    with_tools(h)
    start, n = call_response(h, speech="Let me look.")
    types = h.types(n)
    # The message item (speech) closes before the function_call item opens.
    assert types.index("response.output_item.added") < types.index("response.output_audio_transcript.done")
    call_added = [i for i, t in enumerate(types) if t == "response.output_item.added"][1]
    assert types.index("response.output_audio_transcript.done") < call_added
    after = types[call_added:]
    assert after == [
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    added = [e for e in h.events[n:] if e["type"] == "response.output_item.added"][1]
    assert added["output_index"] == 1 and added["item"]["type"] == "function_call"
    call_id = added["item"]["call_id"]
    deltas = "".join(e["delta"] for e in h.events[n:] if e["type"] == "response.function_call_arguments.delta")
    args_done = h.last("response.function_call_arguments.done")
    assert deltas == args_done["arguments"] == '{"query": "wifi"}' and args_done["call_id"] == call_id
    resp = h.last("response.done")["response"]
    assert resp["status"] == "completed"
    assert [o["type"] for o in resp["output"]] == ["message", "function_call"]
    assert resp["output"][1]["arguments"] == '{"query": "wifi"}'
    # The history's call answers to the id the client got.
    assert h.session.conversation.turns[-1].tool_calls[0].call_id == call_id


def test_call_only_response_has_no_message_item_and_output_round_trip():
    h = Harness()
    with_tools(h, choice="required")
    start, n = call_response(h)
    resp = h.last("response.done")["response"]
    assert [o["type"] for o in resp["output"]] == ["function_call"]
    assert "response.content_part.added" not in h.types(n)
    call_id = resp["output"][0]["call_id"]
    # An output for an unknown call is refused; the session lives.
    m = len(h.events)
    h.send(type="conversation.item.create", item={"type": "function_call_output", "call_id": "nope", "output": "x"})
    assert error(h, m)["param"] == "item.call_id"
    h.send(type="conversation.item.create", item={"type": "function_call_output", "call_id": call_id, "output": "ok"})
    added = h.last("conversation.item.added")["item"]
    assert added["type"] == "function_call_output" and added["call_id"] == call_id and added["output"] == "ok"
    turn = h.session.conversation.turns[-1]
    assert turn.role == "tool" and turn.call_id == call_id and turn.text_content() == "ok"
    h.send(type="response.create", response={"tool_choice": "none"})  # the answer with the result in context
    assert h.cmds(s.StartResponse)[-1].conversation.tool_choice.mode == "none"


def test_cut_off_call_ends_incomplete_with_partial_arguments():
    h = Harness()
    with_tools(h)
    call_response(h, args='{"query": "wi', complete=False)
    assert h.last("response.function_call_arguments.done")["arguments"] == '{"query": "wi'
    resp = h.last("response.done")["response"]
    assert resp["status"] == "incomplete" and resp["status_details"]["reason"] == "max_output_tokens"
    assert resp["output"][0]["status"] == "incomplete"


def test_response_create_overrides_tools_for_one_response():
    h = Harness()
    with_tools(h)
    other = {**LOOKUP, "name": "local_time", "parameters": {"type": "object", "properties": {}}}
    h.send(
        type="response.create", response={"tools": [other], "tool_choice": {"type": "function", "name": "local_time"}}
    )
    conv = h.cmds(s.StartResponse)[-1].conversation
    assert [t.name for t in conv.tools] == ["local_time"] and conv.tool_choice.name == "local_time"
    h.engine(h.cmds(s.StartResponse)[-1].response_id, done())
    assert [t.name for t in h.session.conversation.tools] == ["lookup"]  # restored after the response
    n = len(h.events)
    h.send(type="response.create", response={"tool_choice": {"type": "function", "name": "local_time"}})
    assert error(h, n)["param"] == "response.tool_choice"


def test_client_replays_a_call_and_its_output():
    h = Harness()
    call = {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": '{"query": "dns"}'}
    h.send(type="conversation.item.create", item=call)
    assert h.last("conversation.item.added")["item"]["type"] == "function_call"
    h.send(type="conversation.item.create", item={"type": "function_call_output", "call_id": "call_1", "output": "1"})
    turns = h.session.conversation.turns
    assert turns[-2].tool_calls[0].call_id == "call_1" and turns[-1].role == "tool"
    n = len(h.events)
    h.send(type="conversation.item.create", item=call)
    assert error(h, n)["param"] == "item.call_id"  # the call_id is taken


def test_without_tools_the_message_item_goes_out_at_once():
    h = Harness()
    n = len(h.events)
    h.send(type="response.create")
    assert h.types(n)[:4] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
    ]


def test_cancelled_call_ends_cancelled_with_partial_arguments():
    h = Harness()
    with_tools(h, choice="required")
    h.send(type="response.create")
    start = h.cmds(s.StartResponse)[-1]
    h.engine(start.response_id, ToolCallStarted(0, "lookup"), ToolCallDelta(0, '{"que'))
    h.send(type="response.cancel")
    assert h.cmds(s.CancelResponse)[-1].response_id == start.response_id
    n = len(h.events)
    h.engine(
        start.response_id, ToolCallDelta(0, 'ry"'), ToolCallDone(0, "lookup", '{"query"', False), done("cancelled")
    )
    assert "response.function_call_arguments.delta" not in h.types(n)  # nothing new after the cancel...
    assert h.last("response.function_call_arguments.done")["arguments"] == '{"query"'  # ...but .done has it all
    resp = h.last("response.done")["response"]
    assert resp["status"] == "cancelled" and resp["output"][0]["status"] == "incomplete"


def test_generated_call_items_can_be_retrieved_and_deleted():
    h = Harness()
    with_tools(h, choice="required")
    call_response(h)
    item = h.last("response.done")["response"]["output"][0]
    h.send(type="conversation.item.retrieve", item_id=item["id"])
    assert h.last("conversation.item.retrieved")["item"] == item
    h.send(type="conversation.item.delete", item_id=item["id"])
    assert h.last("conversation.item.deleted")["item_id"] == item["id"]
    assert not any(t.tool_calls for t in h.session.conversation.turns)  # the history lost the call too
    n = len(h.events)
    out = {"type": "function_call_output", "call_id": "x", "output": "1"}
    h.send(type="conversation.item.create", item={**out, "call_id": item["call_id"]})
    assert error(h, n)["param"] == "item.call_id"  # the call is gone: its output would answer nothing


def test_parallel_tool_calls_reaches_the_engine_from_session_and_response():
    h = Harness()
    with_tools(h)
    assert h.last("session.updated")["session"]["parallel_tool_calls"] is True  # the default, echoed
    h.send(type="session.update", session={"type": "realtime", "parallel_tool_calls": False})
    assert h.last("session.updated")["session"]["parallel_tool_calls"] is False
    h.send(type="session.update", session={"type": "realtime", "tool_choice": "required"})
    updated = h.last("session.updated")["session"]
    assert updated["tool_choice"] == "required" and updated["parallel_tool_calls"] is False, "a new choice keeps it"
    h.send(type="response.create")
    start = h.cmds(s.StartResponse)[-1]
    assert start.conversation.tool_choice == ToolChoice("required", parallel=False), "the engine is told"
    h.engine(start.response_id, done())
    # response.create's value holds for that response only, with or without its own tool_choice.
    h.send(type="response.create", response={"parallel_tool_calls": True})
    start = h.cmds(s.StartResponse)[-1]
    assert start.conversation.tool_choice == ToolChoice("required", parallel=True)
    h.engine(start.response_id, done())
    assert h.session.conversation.tool_choice.parallel is False, "the session's value is back"
    h.send(type="session.update", session={"type": "realtime", "parallel_tool_calls": True})
    h.send(type="response.create", response={"tool_choice": "auto", "parallel_tool_calls": False})
    assert h.cmds(s.StartResponse)[-1].conversation.tool_choice == ToolChoice("auto", parallel=False)
    for kind, body in (("session.update", {"session": {"type": "realtime"}}), ("response.create", {"response": {}})):
        n = len(h.events)
        root = next(iter(body))
        h.send(type=kind, **{root: {**body[root], "parallel_tool_calls": "no"}})
        err = error(h, n)
        assert (err["code"], err["param"]) == ("invalid_type", f"{root}.parallel_tool_calls")
