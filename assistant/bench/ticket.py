"""The support-ticket tool that tool calling is measured and tested with: one schema for
the benchmark (scripts/bench_tools.py) and the end-to-end test over the `openai` SDK
(tests/test_tools_openai_client.py), so that the two decode against the same grammar.

Nested objects, enums, bounded strings, integers and arrays, required fields and no extra
properties: what the argument grammar must hold a random-weight model to.
"""

from __future__ import annotations

import copy

_TICKET = {
    "type": "object",
    "properties": {
        "customer": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 16},
                "plan": {"type": "string", "enum": ["basic", "plus", "business"]},
            },
            "required": ["name", "plan"],
            "additionalProperties": False,
        },
        "device": {
            "type": "object",
            "properties": {
                "kind": {"type": "string", "enum": ["router", "laptop", "phone", "printer"]},
                "age_years": {"type": "integer", "minimum": 0, "maximum": 30},
            },
            "required": ["kind"],
            "additionalProperties": False,
        },
        "symptoms": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
        "priority": {"type": "string", "enum": ["low", "normal", "high"]},
    },
    "required": ["customer", "device", "symptoms", "priority"],
    "additionalProperties": False,
}

# The device's ports: an array of objects, bounded.
_PORTS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": ["wan", "lan1", "lan2", "usb"]},
            "link": {"type": "boolean"},
        },
        "required": ["name", "link"],
        "additionalProperties": False,
    },
    "maxItems": 3,
}


def ticket_schema(*, ports: bool = False) -> dict:
    """A fresh copy of the ticket's JSON schema; `ports` adds the device's list of ports
    (after its other properties: the order is the prompt's)."""
    schema = copy.deepcopy(_TICKET)
    if ports:
        schema["properties"]["device"]["properties"]["ports"] = copy.deepcopy(_PORTS)
    return schema
