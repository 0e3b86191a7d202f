"""Tool calling end to end with the stock `openai` SDK over the websocket, on the tiny
model: a required tool whose schema has nested objects, enums, arrays and required
fields; every call parses and validates (jsonschema), and the function_call_output round
trip ends in a spoken answer. The model's weights are random: that the arguments are
valid is the grammar's doing, which is the point."""

from __future__ import annotations

import base64
import json

import jsonschema
import pytest
from live_server import async_sdk, collect_until, tiny_server

from assistant.bench.ticket import ticket_schema

TICKET = ticket_schema(ports=True)
TOOL = {"type": "function", "name": "open_ticket", "description": "Open a support ticket", "parameters": TICKET}
CALLS = 50


@pytest.fixture(scope="module")
def server(tiny_dir):
    with tiny_server(
        tiny_dir,
        # Room for several calls of bounded arguments in one response: how many a random model
        # makes before it ends the turn is luck, and 1500 tokens cut one response off in a CI run.
        max_answer_tokens=4000,
        max_answer_frames=6,
        min_answer_tokens=3,
    ) as running:
        yield running


async def until(conn, stop: str) -> list:
    """Events up to `stop`; an error fails the test (responses of many calls take a while)."""
    return await collect_until(conn, stop, timeout_s=300.0, fail_on_error=True)


async def test_required_tool_calls_validate_and_the_result_is_spoken(server):
    async with async_sdk(server).realtime.connect(model="qwen3-omni") as conn:
        await conn.recv()
        await conn.session.update(
            session={"type": "realtime", "output_modalities": ["audio"], "tools": [TOOL], "tool_choice": "required"}
        )
        updated = await until(conn, "session.updated")
        assert updated[-1].session.tool_choice == "required"
        calls = []
        while len(calls) < CALLS:
            await conn.conversation.item.create(
                item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "My wifi drops."}]}
            )
            await conn.response.create()
            events = await until(conn, "response.done")
            done = events[-1].response
            assert done.status == "completed", done.status_details
            arg_done = [e for e in events if e.type == "response.function_call_arguments.done"]
            items = [o for o in done.output if o.type == "function_call"]
            assert arg_done and [e.call_id for e in arg_done] == [o.call_id for o in items]
            assert not any(e.type == "response.output_audio.delta" for e in events)  # a call is never spoken
            for event, item in zip(arg_done, items, strict=True):
                deltas = "".join(
                    e.delta
                    for e in events
                    if e.type == "response.function_call_arguments.delta" and e.call_id == item.call_id
                )
                assert event.name == item.name == "open_ticket" and deltas == event.arguments == item.arguments
                calls.append(item)
        failures = []
        for item in calls:
            try:
                jsonschema.validate(json.loads(item.arguments), TICKET)
            except (ValueError, jsonschema.ValidationError) as exc:
                failures.append((item.arguments, exc))
        assert not failures, failures
        # The round trip: results for the last response's calls, then a spoken answer.
        for item in items:
            await conn.conversation.item.create(
                item={"type": "function_call_output", "call_id": item.call_id, "output": '{"ticket": 4211}'}
            )
            added = await until(conn, "conversation.item.done")
            assert added[-1].item.type == "function_call_output"
        await conn.response.create(response={"tool_choice": "none", "max_output_tokens": 8})
        events = await until(conn, "response.done")
        audio = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
        done = events[-1].response
        assert done.status == "completed" and len(audio) > 0
        assert [o.type for o in done.output] == ["message"]
        usage = done.usage
        assert usage.input_tokens < 40 * len(items) + 30  # only the results were prefilled
