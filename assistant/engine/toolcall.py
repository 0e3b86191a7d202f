"""Tool calls in Qwen's Hermes format, decoded under a grammar so they always parse.

Qwen3-Omni writes a call as (../shared/reference/qwen3-omni-variants-and-tools.md §2)

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

with `<tool_call>` and `</tool_call>` single special tokens; several calls follow one
another, a newline apart, and end the assistant turn. The opening token is the switch:
before it the model speaks freely, from it on the rest of the turn is decoded under a
grammar (llguidance, chosen by per-token mask cost: scripts/bench_grammar_libs.py) that
allows only a declared tool's name and arguments that match that tool's JSON Schema,
more calls, or the end of the turn. `tool_choice` "required" or a named tool starts the
grammar at the first token, so the turn is a call from its first token on.

`ToolConstraint` is per response and lives on the model worker's thread: `mask()` edits
a logits row before the pick, `accept()` takes the picked token and returns the call
events (ToolCallStarted / ToolCallDelta / ToolCallDone).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from .api import Event, Tool, ToolCall, ToolCallDelta, ToolCallDone, ToolCallStarted, ToolChoice

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
# llguidance's JSON options: the separators json.dumps (and the chat template's tojson)
# writes, and no free whitespace, which a random-weight model would otherwise fill forever.
JSON_FORMAT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
_NEG_INF = torch.tensor(-float("inf"))
_HEAD = re.compile(r'\A\n\{"name": "([A-Za-z0-9_-]+)", "arguments": ')


def call_grammar(tools: tuple[Tool, ...], choice: ToolChoice, open_id: int, close_id: int) -> str:
    """The Lark grammar (llguidance dialect) of the calls section of a turn: one call of
    the named tool, one call of a declared tool (`choice.parallel` False), or one or more
    calls of declared tools a newline apart. Token ids name the special tokens (`<[id]>`),
    so the text `<tool_call>` cannot stand in."""
    if choice.mode == "function":
        tools = tuple(t for t in tools if t.name == choice.name)
    if choice.mode == "function" or not choice.parallel:
        start = "start: call"
    else:
        start = 'start: call ("\\n" call)*'
    bodies = " | ".join(f"body{i}" for i in range(len(tools)))
    lines = [start, f'call: <[{open_id}]> "\\n{{\\"name\\": \\"" ({bodies}) "}}\\n" <[{close_id}]>']
    for i, tool in enumerate(tools):
        schema = {**tool.parameters, "x-guidance": JSON_FORMAT}
        lines.append(f'body{i}: "{tool.name}\\", \\"arguments\\": " args{i}')
        lines.append(f"args{i}: %json {json.dumps(schema, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


def check_schema(tool: Tool) -> str | None:
    """Why llguidance cannot constrain this tool's arguments (an unsupported keyword, ...),
    or None. Needs no tokenizer: the protocol layer asks before accepting a tool."""
    import llguidance

    grammar = call_grammar((tool,), ToolChoice("function", tool.name), 151657, 151658)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        llguidance.LLMatcher.grammar_from_lark(grammar)
    )
    return ("; ".join(messages) or "invalid grammar") if is_error else None


_LL_TOKENIZERS: dict[int, object] = {}


def ll_tokenizer(tokenizer, vocab_size: int):
    """llguidance's view of a Hugging Face tokenizer (about 2 s for Qwen's 151k entries, so
    built once per resident model: `warm_up()`)."""
    import llguidance.hf

    key = id(tokenizer)
    if key not in _LL_TOKENIZERS:
        _LL_TOKENIZERS[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
    return _LL_TOKENIZERS[key]


def json_value_end(text: str) -> int | None:
    """Length of the complete JSON object or array at the start of `text`, or None while
    it is still open (strings and escapes are skipped)."""
    depth, in_str, escape = 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


@dataclass
class _Open:
    """The call being decoded: its tokens after `<tool_call>` and what was reported."""

    index: int
    ids: list[int] = field(default_factory=list)
    name: str | None = None
    sent: int = 0  # characters of the arguments already sent as deltas


class ToolConstraint:
    """Per response: the grammar's mask on the thinker's logits and the calls it decodes."""

    def __init__(self, tokenizer, vocab_size: int, tools: tuple[Tool, ...], choice: ToolChoice) -> None:
        self.tokenizer = tokenizer
        self.open_id = tokenizer.convert_tokens_to_ids(CALL_OPEN)
        self.close_id = tokenizer.convert_tokens_to_ids(CALL_CLOSE)
        self.choice = choice
        self.enabled = bool(tools) and choice.mode != "none"
        self.forbid_open = bool(tools) and choice.mode == "none"
        self._tools, self._vocab_size = tools, vocab_size
        self._matcher = None
        self._mask = None
        self.calls: list[ToolCall] = []
        self._open: _Open | None = None
        self.in_calls = False  # the calls section began: nothing more is speech
        if self.enabled and choice.mode in ("required", "function"):
            self._start()

    def _start(self) -> None:
        import llguidance
        import llguidance.numpy as lnp

        lltok = ll_tokenizer(self.tokenizer, self._vocab_size)
        grammar = call_grammar(self._tools, self.choice, self.open_id, self.close_id)
        self._matcher = llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_lark(grammar))
        if self._matcher.is_error():
            raise ValueError(f"tool grammar: {self._matcher.get_error()}")
        self._mask = lnp.allocate_token_bitmask(1, lltok.vocab_size)  # [1, ceil(V / 32)] int32
        self.in_calls = True

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [V] -> logits [V] with the tokens the grammar forbids at -inf (a copy)."""
        if self._matcher is not None:
            import llguidance.numpy as lnp

            lnp.fill_next_token_bitmask(self._matcher, self._mask, 0)
            # Unpacked on the host with numpy: llguidance.torch compiles its masking kernel on
            # first use (40 s on this CPU), and a 19 KB bitmask unpacks in ~0.1 ms.
            bits = np.unpackbits(self._mask[0].view(np.uint8), bitorder="little")[: logits.shape[-1]]
            allowed = torch.from_numpy(bits.view(np.bool_)).to(logits.device)  # [V]
            return torch.where(allowed, logits.float(), _NEG_INF.to(logits.device))
        if self.forbid_open:
            out = logits.clone()
            out[self.open_id] = -float("inf")
            return out
        return logits

    def accept(self, token: int) -> list[Event]:
        """The token the thinker picked; returns the call events it completes."""
        if self._matcher is None:
            if not (self.enabled and token == self.open_id):
                return []
            self._start()  # auto: the model opened a call; the grammar governs the rest of the turn
        if not self._matcher.consume_token(token):
            raise ValueError(f"tool grammar refused token {token}: {self._matcher.get_error()}")
        if token == self.open_id:
            self._open = _Open(len(self.calls))
            return []
        if self._open is None:
            return []  # the newline between calls, or the end of the turn
        if token == self.close_id:
            return self._close(complete=True)
        self._open.ids.append(token)
        return self._read()

    def _read(self) -> list[Event]:
        call = self._open
        text = self._text_of(call)
        events: list[Event] = []
        head = _HEAD.match(text)
        if head is None:
            return events
        if call.name is None:
            call.name = head.group(1)
            events.append(ToolCallStarted(call.index, call.name))
        args = self._arguments(text, head.end())
        if len(args) > call.sent:
            events.append(ToolCallDelta(call.index, args[call.sent :]))
            call.sent = len(args)
        return events

    @staticmethod
    def _arguments(text: str, start: int) -> str:
        body = text[start:]
        end = json_value_end(body)
        return body if end is None else body[:end]

    def _close(self, *, complete: bool) -> list[Event]:
        call, self._open = self._open, None
        events: list[Event] = []
        text = self._text_of(call)
        head = _HEAD.match(text)
        if call.name is None:
            if head is None:  # cut off before the name was complete: there is no call to report
                return events
            call.name = head.group(1)
            events.append(ToolCallStarted(call.index, call.name))
        args = self._arguments(text, head.end())
        if len(args) > call.sent:
            events.append(ToolCallDelta(call.index, args[call.sent :]))
        self.calls.append(ToolCall(call.name, args, complete=complete))
        events.append(ToolCallDone(call.index, call.name, args, complete))
        return events

    def _text_of(self, call: _Open) -> str:
        text = self.tokenizer.decode(call.ids)
        return text[:-1] if text.endswith("\ufffd") else text  # an incomplete UTF-8 sequence

    def finish(self) -> list[Event]:
        """The response ends (end of turn, max tokens or cancel): a call still open ends
        incomplete, with the arguments decoded so far."""
        return self._close(complete=False) if self._open is not None else []

    def forced(self) -> list[int]:
        """The tokens the grammar now allows one way only (empty outside calls)."""
        return list(self._matcher.compute_ff_tokens()) if self._matcher is not None else []

    @property
    def open_call(self) -> bool:
        return self._open is not None

    def only_eos_left(self) -> bool:
        return self._matcher is not None and self._matcher.is_stopped()
