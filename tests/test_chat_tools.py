"""Tool calling in Chat Completions, on the tiny model with the stock `openai` SDK: calls
(streamed and not) whose arguments parse and match the schema, the result round trip,
audio requested beside a call, and OpenAI-shaped 400s naming the field. The weights are
random: `tool_choice` "required" or a named function makes the turn a call from its first
token (as tests/test_tools_openai_client.py does over Realtime), and that the arguments
are valid is the grammar's doing. The history's mapping is checked against the Realtime
path's own turns, through the same chat template."""

from __future__ import annotations

import base64
import io
import json
import wave

import jsonschema
import numpy as np
import openai
import pytest
from openai import OpenAI
from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeProcessor

from assistant.engine import inputs
from assistant.engine.api import Conversation, TextPart, Tool, ToolCall, ToolChoice, Turn
from assistant.engine.toolcall import ToolConstraint
from assistant.rest.chat_media import ChatError
from assistant.rest.chat_request import Limits, parse
from assistant.server.main import ServerThread
from assistant.settings import Settings

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"type": "string", "enum": ["c", "f"]},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "forecast", "description": "The weather", "parameters": WEATHER}},
    {
        "type": "function",
        "function": {
            "name": "local_time",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    },
]
ASK = [{"role": "user", "content": "Will it rain in Oslo this week?"}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def server(tiny_dir):
    settings = Settings(
        model=str(tiny_dir),
        device="cpu",
        port=0,
        max_answer_tokens=160,  # room for a few calls of bounded arguments
        max_answer_frames=6,
        min_answer_tokens=3,
    )
    with ServerThread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def valid(name: str, arguments: str) -> dict:
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args


def test_one_call_not_streamed_then_the_result_is_answered(client, model):
    done = client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_completion_tokens=120,
        seed=1,
    )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert len(calls) == 1 and choice.message.content is None  # parallel_tool_calls false: one call, no speech
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in SCHEMAS
    valid(call.function.name, call.function.arguments)
    # The round trip: the call and its result go back; the answer is text, not another call.
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"rain_mm": [0, 4, 12]}'},
    ]
    answer = client.chat.completions.create(
        model=model, messages=history, tools=TOOLS, tool_choice="none", max_completion_tokens=8, seed=2
    )
    reply = answer.choices[0]
    assert reply.finish_reason in ("stop", "length") and reply.message.tool_calls is None
    assert isinstance(reply.message.content, str) and reply.message.content
    # The call and the result were in the prompt: more of it than the question alone.
    assert answer.usage.prompt_tokens > done.usage.prompt_tokens + 20


def test_streamed_calls_come_as_openai_tool_call_deltas(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_completion_tokens=160,
        stream=True,
        seed=5,
    )
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        finish = chunk.choices[0].finish_reason or finish
        assert not delta.content  # required: calls from the first token, nothing said
        for piece in delta.tool_calls or []:
            if piece.index not in calls:  # a call's first chunk: id, type and name
                assert piece.id and piece.type == "function" and piece.function.name in SCHEMAS
                calls[piece.index] = {"id": piece.id, "name": piece.function.name, "arguments": ""}
            else:  # later ones: pieces of the arguments only
                assert piece.id is None and piece.function.name is None
            calls[piece.index]["arguments"] += piece.function.arguments or ""
    assert calls and sorted(calls) == list(range(len(calls)))
    assert len({c["id"] for c in calls.values()}) == len(calls)
    # A response cut at max_completion_tokens ends "length" and its last call is partial.
    complete = list(calls.values()) if finish == "tool_calls" else list(calls.values())[:-1]
    assert finish in ("tool_calls", "length") and complete
    for call in complete:
        valid(call["name"], call["arguments"])


def test_named_choice_with_audio_out_calls_and_speaks_nothing(client, model):
    done = client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "forecast"}},
        modalities=["text", "audio"],
        audio={"voice": "Ethan", "format": "wav"},
        max_completion_tokens=120,
    )
    message = done.choices[0].message
    assert done.choices[0].finish_reason == "tool_calls" and message.audio is None
    assert [c.function.name for c in message.tool_calls] == ["forecast"]
    valid("forecast", message.tool_calls[0].function.arguments)
    stream = client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "forecast"}},
        modalities=["text", "audio"],
        audio={"voice": "Ethan", "format": "pcm16"},
        max_completion_tokens=120,
        stream=True,
    )
    chunks = [c.choices[0] for c in stream if c.choices]
    assert not any(getattr(c.delta, "audio", None) for c in chunks)  # no audio, no closing transcript
    arguments = "".join(p.function.arguments or "" for c in chunks for p in c.delta.tool_calls or [])
    valid("forecast", arguments)
    assert chunks[-1].finish_reason == "tool_calls"


def _body(**extra) -> dict:
    return {"messages": ASK, "max_completion_tokens": 4, **extra}


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (_body(tools=[{"type": "function", "function": {"name": "no spaces"}}]), "invalid_value", "tools[0].function.name"),
        (_body(tools=[{"type": "custom", "custom": {"name": "f"}}]), "unsupported_value", "tools[0].type"),
        (_body(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]), "invalid_value",
         "tools[0].function.parameters"),
        (_body(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
         "propertyNames": {"maxLength": 3}}}}]), "unsupported_value", "tools[0].function.parameters"),
        (_body(tools=[TOOLS[0], TOOLS[0]]), "invalid_value", "tools[1].function.name"),
        (_body(tools=[{"type": "function", "function": {"name": "f", "colour": "red"}}]), "unknown_parameter",
         "tools[0].function.colour"),
        (_body(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "invalid_value",
         "tool_choice.function.name"),
        (_body(tools=TOOLS, tool_choice="sometimes"), "invalid_value", "tool_choice"),
        (_body(tools=TOOLS, tool_choice={"type": "allowed_tools", "allowed_tools": {}}), "unsupported_value",
         "tool_choice.type"),
        (_body(tool_choice="required"), "invalid_value", "tool_choice"),
        (_body(tools=TOOLS, parallel_tool_calls="no"), "invalid_type", "parallel_tool_calls"),
        (_body(messages=[*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]), "invalid_value",
         "messages[1].tool_call_id"),
        (_body(messages=[*ASK, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
         "function": {"name": "forecast", "arguments": {"city": "Oslo"}}}]}, {"role": "tool", "tool_call_id": "c",
         "content": "1"}]), "invalid_type", "messages[1].tool_calls[0].function.arguments"),
    ],
)  # fmt: skip
def test_bad_tools_get_an_openai_shaped_400_naming_the_field(client, model, body, code, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, **body)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["code"] == code and error["param"] == param and param in error["message"]


# ---------------------------------------------------------------------------- pure parts


def test_history_maps_to_the_realtime_paths_turns_and_qwens_format(tiny_dir):
    """An assistant message with tool_calls and its tool messages render exactly as the
    Realtime session's call (the engine's assistant turn) and function_call_output items."""
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            *ASK,
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "forecast", "arguments": '{"city": "Oslo"}'}},
                    {"id": "c2", "type": "function", "function": {"name": "local_time", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "rain"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "09:00"}]},
        ],
        "tools": TOOLS,
    }
    req = parse(body, Limits())
    assert req.tool_choice == ToolChoice("auto") and [t.name for t in req.tools] == ["forecast", "local_time"]
    ours = Conversation(instructions=req.instructions, turns=req.turns, tools=req.tools)
    realtime = Conversation(instructions="Be brief.", tools=tuple(Tool(**t["function"]) for t in TOOLS))
    realtime.add_user([TextPart(ASK[0]["content"])])
    calls = [ToolCall("forecast", '{"city": "Oslo"}', "c1"), ToolCall("local_time", "{}", "c2")]
    realtime.turns.append(Turn("assistant", [], text="Let me look.", tool_calls=calls))
    realtime.turns += [Turn("tool", [TextPart("rain")], call_id="c1"), Turn("tool", [TextPart("09:00")], call_id="c2")]
    processor = Qwen3OmniMoeProcessor.from_pretrained(tiny_dir)

    def prompt(conv: Conversation) -> str:
        msgs, _ = inputs.messages(conv)
        return processor.apply_chat_template(
            msgs, tools=inputs.tool_schemas(conv), add_generation_prompt=True, tokenize=False
        )

    text = prompt(ours)
    assert text == prompt(realtime)
    assert 'Let me look.\n<tool_call>\n{"name": "forecast", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    assert "<tool_response>\nrain\n</tool_response>\n<tool_response>\n09:00\n</tool_response>" in text


def test_parallel_tool_calls_false_ends_the_turn_after_one_call(tiny_dir):
    processor = Qwen3OmniMoeProcessor.from_pretrained(tiny_dir)
    vocab = Qwen3OmniMoeConfig.from_pretrained(tiny_dir).thinker_config.text_config.vocab_size
    tok = processor.tokenizer
    tools = tuple(Tool(**t["function"]) for t in TOOLS)
    call = tok('<tool_call>\n{"name": "forecast", "arguments": {"city": "Lima", "days": 2}}\n</tool_call>')["input_ids"]
    ends = {}
    for parallel in (True, False):
        constraint = ToolConstraint(tok, vocab, tools, ToolChoice("required", parallel=parallel))
        events = [e for t in call for e in constraint.accept(t)]
        assert events[-1].complete and events[-1].arguments == '{"city": "Lima", "days": 2}'
        ends[parallel] = constraint.only_eos_left()
    assert ends == {True: False, False: True}  # parallel: a newline and another call may follow


def test_captioner_takes_no_tools():
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(np.zeros(1600, np.int16).tobytes())
    clip = {"type": "input_audio", "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(), "format": "wav"}}
    with pytest.raises(ChatError) as caught:
        parse({"messages": [{"role": "user", "content": [clip]}], "tools": TOOLS}, Limits(variant="captioner"))
    assert caught.value.param == "tools"
