"""Tools on the wire, sans-I/O: `session.tools` / `tool_choice` (and their per-response
overrides in `response.create`) checked and turned into engine values, and the GA item
objects of calls and results.

OpenAI Realtime's tools are flat: `{"type": "function", "name", "description",
"parameters": <JSON Schema>}`; `tool_choice` is "auto" | "none" | "required" |
`{"type": "function", "name"}` (openai-python `RealtimeFunctionTool`,
`RealtimeToolChoiceConfig`); `parallel_tool_calls` false allows one call per response
(the engine's `ToolChoice.parallel`). Every refusal names the field it is about, and the session
lives on.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from ..engine.api import Tool, ToolCall, ToolChoice
from .events import ProtocolError

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
CHOICES = ("auto", "none", "required")


def parse_tools(value: Any, param: str) -> tuple[Tool, ...]:
    if not isinstance(value, list):
        raise ProtocolError("invalid_type", f"'{param}' must be an array", param=param)
    tools: list[Tool] = []
    for i, raw in enumerate(value):
        tool = parse_tool(raw, f"{param}[{i}]")
        if any(t.name == tool.name for t in tools):
            raise ProtocolError(
                "invalid_value", f"duplicate tool name {tool.name!r} in '{param}'", param=f"{param}[{i}].name"
            )
        tools.append(tool)
    return tuple(tools)


def parse_tool(raw: Any, param: str) -> Tool:
    import jsonschema

    if not isinstance(raw, dict):
        raise ProtocolError("invalid_type", f"'{param}' must be an object", param=param)
    kind = raw.get("type", "function")
    if kind != "function":
        raise ProtocolError(
            "unsupported_feature", f"tool type {kind!r} is not supported; use 'function'", param=f"{param}.type"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ProtocolError(
            "invalid_value", f"'{param}.name' must match ^[A-Za-z0-9_-]{{1,64}}$", param=f"{param}.name"
        )
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise ProtocolError("invalid_type", f"'{param}.description' must be a string", param=f"{param}.description")
    schema = raw.get("parameters")
    if schema is None:
        schema = {"type": "object", "properties": {}}
    where = f"{param}.parameters"
    if not isinstance(schema, dict):
        raise ProtocolError("invalid_type", f"'{where}' must be a JSON Schema object", param=where)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = "/".join(str(p) for p in exc.path)
        raise ProtocolError(
            "invalid_value",
            f"tool {name!r}: 'parameters' is not a valid JSON Schema: {exc.message} (at /{path})",
            param=where,
        ) from None
    if schema.get("type", "object") != "object":
        raise ProtocolError(
            "invalid_value", f"tool {name!r}: arguments are an object: 'type' must be 'object'", param=where
        )
    tool = Tool(name, description, schema)
    from ..engine.toolcall import check_schema

    problem = check_schema(tool)
    if problem is not None:  # valid JSON Schema, but a keyword the argument grammar cannot enforce
        first = problem.strip().splitlines()[0]
        raise ProtocolError(
            "unsupported_feature",
            f"tool {name!r}: arguments cannot be constrained to this schema: {first}",
            param=where,
        )
    return tool


def parse_tool_choice(value: Any, param: str) -> ToolChoice:
    if isinstance(value, str):
        if value not in CHOICES:
            raise ProtocolError("invalid_value", f"'{param}' must be auto, none, required or a function", param=param)
        return ToolChoice(value)
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        return ToolChoice("function", value["name"])
    raise ProtocolError(
        "invalid_value", f'\'{param}\' must be auto, none, required or {{"type": "function", "name"}}', param=param
    )


def resolve_choice(current: ToolChoice, value: Any, parallel: bool | None, param: str) -> ToolChoice:
    """The choice in force after an update: `value` (a raw tool_choice; None keeps `current`'s
    mode) and `parallel` (`parallel_tool_calls`; None keeps `current`'s)."""
    choice = current if value is None else parse_tool_choice(value, param)
    return replace(choice, parallel=current.parallel if parallel is None else parallel)


def check_choice(tools: tuple[Tool, ...], choice: ToolChoice, param: str) -> None:
    """A named choice must name a declared tool; `required` needs at least one."""
    if choice.mode == "function" and not any(t.name == choice.name for t in tools):
        raise ProtocolError(
            "invalid_value", f"tool_choice names {choice.name!r}, which is not a declared tool", param=param
        )
    if choice.mode == "required" and not tools:
        raise ProtocolError("invalid_value", "tool_choice 'required' needs at least one tool", param=param)


def tool_json(tool: Tool) -> dict[str, Any]:
    return {"type": "function", "name": tool.name, "description": tool.description, "parameters": tool.parameters}


def choice_json(choice: ToolChoice) -> str | dict[str, Any]:
    return {"type": "function", "name": choice.name} if choice.mode == "function" else choice.mode


def call_item(item_id: str, call: ToolCall, status: str) -> dict[str, Any]:
    """The GA `function_call` item."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "call_id": call.call_id,
        "name": call.name,
        "arguments": call.arguments,
    }


def output_item(item_id: str, call_id: str, output: str) -> dict[str, Any]:
    """The GA `function_call_output` item."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call_output",
        "status": "completed",
        "call_id": call_id,
        "output": output,
    }
