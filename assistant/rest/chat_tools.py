"""Tools in Chat Completions, sans-I/O: the request's `tools`, `tool_choice` and
`parallel_tool_calls` -> engine values; the history's calls and results -> engine turns;
the engine's call events -> `message.tool_calls` and streamed `delta.tool_calls`.

Chat Completions nests the function inside its tool (openai-python
`ChatCompletionFunctionToolParam`: `{"type": "function", "function": {name, description,
parameters, strict}}`) where Realtime is flat; each function is then checked by the same
code as a Realtime session's tools (realtime/tools.py: OpenAI's name rule, a valid JSON
Schema, and only what the argument grammar can enforce), and the model is prompted and
constrained by the same engine code (engine/inputs.py, engine/toolcall.py).

`strict`: the arguments always match the schema (they are decoded under a grammar built
from it, toolcall.py), so both values get what `strict: true` promises.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine.api import Tool, ToolCall, ToolCallDelta, ToolCallDone, ToolCallStarted, ToolChoice, new_id
from ..realtime import tools as rt_tools
from ..realtime.events import ProtocolError
from .chat_media import ChatError

TOOL_KEYS = {"type", "function"}
FUNCTION_KEYS = {"name", "description", "parameters", "strict"}
# Realtime's error codes -> Chat Completions' (OpenAI answers `unsupported_value` for a value it does not take).
_CODES = {"unsupported_feature": "unsupported_value"}


def _chat_error(exc: ProtocolError) -> ChatError:
    return ChatError(400, _CODES.get(exc.code, exc.code), exc.message, exc.param)


def _object(value: object, param: str, keys: set[str]) -> dict:
    if not isinstance(value, dict):
        raise ChatError(400, "invalid_type", f"{param} must be an object", param)
    extra = sorted(set(value) - keys)
    if extra:
        raise ChatError(400, "unknown_parameter", f"unknown parameter {param}.{extra[0]}", f"{param}.{extra[0]}")
    return value


def parse_tools(value: object) -> tuple[Tool, ...]:
    """`tools`: function tools only, names unique."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ChatError(400, "invalid_type", "tools must be an array", "tools")
    tools: list[Tool] = []
    for i, raw in enumerate(value):
        param = f"tools[{i}]"
        if isinstance(raw, dict) and raw.get("type") != "function":
            raise ChatError(
                400,
                "unsupported_value",
                f"tool type {raw.get('type')!r} is not supported; use 'function'",
                f"{param}.type",
            )
        _object(raw, param, TOOL_KEYS)
        fn = _object(raw.get("function"), f"{param}.function", FUNCTION_KEYS)
        if fn.get("strict") not in (None, True, False):
            raise ChatError(
                400, "invalid_type", f"{param}.function.strict must be a boolean", f"{param}.function.strict"
            )
        flat = {"type": "function", **{k: v for k, v in fn.items() if k != "strict"}}
        try:
            tool = rt_tools.parse_tool(flat, f"{param}.function")
        except ProtocolError as exc:
            raise _chat_error(exc) from None
        if any(t.name == tool.name for t in tools):
            raise ChatError(400, "invalid_value", f"duplicate tool name {tool.name!r}", f"{param}.function.name")
        tools.append(tool)
    return tuple(tools)


def parse_choice(value: object, tools: tuple[Tool, ...], parallel: object) -> ToolChoice:
    """`tool_choice` ("auto" when tools are given, else "none", as OpenAI defaults) and
    `parallel_tool_calls` (default true: a response may make several calls; false: at most one)."""
    if parallel is not None and not isinstance(parallel, bool):
        raise ChatError(400, "invalid_type", "parallel_tool_calls must be a boolean", "parallel_tool_calls")
    if value is None:
        choice = ToolChoice("auto" if tools else "none")
    elif isinstance(value, str):
        if value not in rt_tools.CHOICES:
            raise ChatError(
                400, "invalid_value", "tool_choice must be auto, none, required or a function", "tool_choice"
            )
        choice = ToolChoice(value)
    elif isinstance(value, dict) and value.get("type") == "function":
        fn = value.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise ChatError(
                400, "invalid_value", "tool_choice.function.name must name a function", "tool_choice.function.name"
            )
        choice = ToolChoice("function", name)
    elif isinstance(value, dict) and isinstance(value.get("type"), str):
        raise ChatError(
            400,
            "unsupported_value",
            f"tool_choice type {value['type']!r} is not supported; use auto, none, required or "
            '{"type": "function", "function": {"name": ...}}',
            "tool_choice.type",
        )
    else:
        raise ChatError(400, "invalid_value", "tool_choice must be auto, none, required or a function", "tool_choice")
    if choice.mode == "function" and not any(t.name == choice.name for t in tools):
        raise ChatError(
            400,
            "invalid_value",
            f"tool_choice names {choice.name!r}, which is not in tools",
            "tool_choice.function.name",
        )
    if choice.mode == "required" and not tools:
        raise ChatError(400, "invalid_value", "tool_choice 'required' needs at least one tool", "tool_choice")
    return ToolChoice(choice.mode, choice.name, parallel=parallel is not False)


def history_calls(value: object, param: str, known: set[str]) -> list[ToolCall]:
    """An assistant message's `tool_calls` (the calls an earlier answer made); adds their ids to `known`."""
    if not isinstance(value, list):
        raise ChatError(400, "invalid_type", f"{param} must be an array", param)
    calls = []
    for j, raw in enumerate(value):
        where = f"{param}[{j}]"
        raw = _object(raw, where, {"id", "type", "function"})
        call_id, fn = raw.get("id"), raw.get("function")
        if raw.get("type", "function") != "function":
            raise ChatError(400, "unsupported_value", f"{where}.type must be 'function'", f"{where}.type")
        if not isinstance(call_id, str) or not call_id:
            raise ChatError(400, "invalid_value", f"{where}.id must be a non-empty string", f"{where}.id")
        if call_id in known:
            raise ChatError(400, "invalid_value", f"{where}.id {call_id!r} is already used", f"{where}.id")
        fn = _object(fn, f"{where}.function", {"name", "arguments"})
        name, arguments = fn.get("name"), fn.get("arguments")
        if not isinstance(name, str) or not rt_tools.NAME.match(name):
            raise ChatError(
                400,
                "invalid_value",
                f"{where}.function.name must match ^[A-Za-z0-9_-]{{1,64}}$",
                f"{where}.function.name",
            )
        if not isinstance(arguments, str):
            raise ChatError(
                400,
                "invalid_type",
                f"{where}.function.arguments must be a string (JSON)",
                f"{where}.function.arguments",
            )
        known.add(call_id)
        calls.append(ToolCall(name, arguments, call_id=call_id))
    return calls


# ---------------------------------------------------------------------------- response side


@dataclass
class Calls:
    """One response's calls, from the engine's call events (index: 0-based in the response,
    which is the `index` of OpenAI's streamed `delta.tool_calls`)."""

    ids: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)

    def feed(self, event: ToolCallStarted | ToolCallDelta | ToolCallDone) -> dict | None:
        """The event's `delta.tool_calls` entry (None: nothing to send): id, type and name
        in a call's first chunk, pieces of its arguments after."""
        if isinstance(event, ToolCallStarted):
            self.ids.append(new_id("call"))
            self.names.append(event.name)
            self.arguments.append("")
            fn = {"name": event.name, "arguments": ""}
            return {"index": event.index, "id": self.ids[event.index], "type": "function", "function": fn}
        if isinstance(event, ToolCallDelta):
            self.arguments[event.index] += event.delta
            return {"index": event.index, "function": {"arguments": event.delta}}
        self.arguments[event.index] = event.arguments  # ToolCallDone: the whole text (the deltas' sum)
        return None

    def message(self) -> list[dict]:
        """`message.tool_calls`."""
        return [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in zip(self.ids, self.names, self.arguments, strict=True)
        ]

    def __bool__(self) -> bool:
        return bool(self.ids)
