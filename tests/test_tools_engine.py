"""Tool calls in the engine, on the tiny model: the chat template's Hermes format, calls
decoded under the schema's grammar, the talker never fed a call, and the KV cache kept
across a call. Jobs are stepped directly (no worker thread), so what the talker was fed
can be recorded."""

from __future__ import annotations

import json
from collections import deque

import jsonschema
import pytest
import torch

from assistant.engine import inputs as inputs_mod
from assistant.engine.api import (
    AudioChunk,
    Conversation,
    ResponseDone,
    Sampling,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallDone,
    ToolCallStarted,
    ToolChoice,
    Turn,
)
from assistant.engine.convcache import ConversationCache
from assistant.engine.local import load_resident
from assistant.engine.stream import StreamJob
from assistant.engine.toolcall import ToolConstraint

TICKET = {
    "type": "object",
    "properties": {
        "device": {
            "type": "object",
            "properties": {
                "kind": {"type": "string", "enum": ["router", "laptop", "phone"]},
                "age_years": {"type": "integer", "minimum": 0, "maximum": 20},
            },
            "required": ["kind"],
            "additionalProperties": False,
        },
        "symptoms": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
        "urgent": {"type": "boolean"},
    },
    "required": ["device", "symptoms"],
    "additionalProperties": False,
}
TOOLS = (
    Tool("open_ticket", "Open a support ticket", TICKET),
    Tool("local_time", "The local time", {"type": "object", "properties": {}, "additionalProperties": False}),
)

# Written by hand from Qwen3's published chat template (tokenizer_config.json of the Qwen3
# instruct checkpoints): tools in the system turn, calls after the assistant's text, and
# consecutive results as one user turn.
EXPECTED_PROMPT = (
    "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist with the user query."
    "\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "local_time", "description": "The local time", '
    '"parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\nWhat time is it?<|im_end|>\n"
    "<|im_start|>assistant\nLet me check.\n"
    '<tool_call>\n{"name": "local_time", "arguments": {"tz": "UTC"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "local_time", "arguments": {"tz": "Asia/Tokyo"}}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<tool_response>\n10:00\n</tool_response>\n<tool_response>\n19:00\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def resident(tiny_dir):
    return load_resident(str(tiny_dir), torch.device("cpu"), torch.float32, "sdpa")


def test_tiny_template_renders_qwen_hermes_format(resident):
    conv = Conversation(instructions="Be brief.")
    conv.tools = (Tool("local_time", "The local time", {"type": "object", "properties": {"tz": {"type": "string"}}}),)
    conv.add_user([TextPart("What time is it?")])
    calls = [ToolCall("local_time", '{"tz": "UTC"}', "c1"), ToolCall("local_time", '{"tz": "Asia/Tokyo"}', "c2")]
    conv.turns.append(Turn("assistant", [], text="Let me check.", tool_calls=calls))
    conv.turns += [Turn("tool", [TextPart("10:00")], call_id="c1"), Turn("tool", [TextPart("19:00")], call_id="c2")]
    msgs, _ = inputs_mod.messages(conv)
    text = resident.processor.apply_chat_template(
        msgs, tools=inputs_mod.tool_schemas(conv), add_generation_prompt=True, tokenize=False
    )
    assert text == EXPECTED_PROMPT
    tok = resident.processor.tokenizer
    ids = tok("<tool_call></tool_call><tool_response></tool_response>")["input_ids"]
    assert ids == [151657, 151658, 151665, 151666]  # single tokens, Qwen's ids


def tool_conv(choice: ToolChoice, seed: int, **sampling) -> Conversation:
    conv = Conversation(tools=TOOLS, tool_choice=choice)
    conv.sampling = Sampling(greedy=False, seed=seed, **sampling)
    conv.add_user([TextPart("My router keeps dropping the connection.")])
    return conv


def run(job: StreamJob) -> list:
    events = []
    while not job.done:
        events += job.step()
    return events


@pytest.mark.parametrize("seed", range(2))
def test_required_call_parses_and_validates_and_is_never_spoken(resident, seed):
    conv = tool_conv(ToolChoice("required"), seed, max_tokens=400, min_frames=4, max_frames=8)
    job = StreamJob(resident, conv, audio=True)
    events = run(job)
    done = events[-1]
    assert isinstance(done, ResponseDone) and done.status == "completed"
    calls = [e for e in events if isinstance(e, ToolCallDone)]
    assert calls and all(c.complete for c in calls)
    by_name = {t.name: t.parameters for t in TOOLS}
    for c in calls:
        jsonschema.validate(json.loads(c.arguments), by_name[c.name])
        deltas = "".join(e.delta for e in events if isinstance(e, ToolCallDelta) and e.index == c.index)
        assert deltas == c.arguments
    assert not any(isinstance(e, (AudioChunk, TextDelta)) for e in events)
    assert job.stats.t_talker_first_frame is None  # the talker never started
    assert [c.name for c in done.turn.tool_calls] == [c.name for c in calls]


def test_named_choice_calls_that_tool_once(resident):
    conv = tool_conv(ToolChoice("function", "local_time"), 7, max_tokens=100)
    events = run(StreamJob(resident, conv, audio=False))
    assert [(e.name, e.arguments, e.complete) for e in events if isinstance(e, ToolCallDone)] == [
        ("local_time", "{}", True)
    ]


def test_parallel_false_makes_exactly_one_call(resident):
    """`parallel_tool_calls: false` (ToolChoice.parallel): the turn ends after the first call.
    The same seeds with parallel calls allowed make several somewhere, so the limit is the grammar's doing."""
    counts = {True: [], False: []}
    for seed in range(4):
        for parallel in (True, False):
            conv = tool_conv(ToolChoice("required", parallel=parallel), seed, max_tokens=400)
            events = run(StreamJob(resident, conv, audio=False))
            assert events[-1].status == "completed"
            calls = [e for e in events if isinstance(e, ToolCallDone)]
            assert all(c.complete for c in calls)
            counts[parallel].append(len(calls))
    assert counts[False] == [1, 1, 1, 1], counts
    assert max(counts[True]) > 1, counts


def test_speech_then_call_talker_gets_nothing_of_the_call(resident, monkeypatch):
    """The model speaks, then opens a call (the test makes `<tool_call>` its choice at the
    fourth token, as the real model would choose it). The talker is fed the text before the
    call and tts_eos, nothing after; the audio ends before the call's events."""
    real_mask = ToolConstraint.mask

    def mask(self, logits):
        if not self.in_calls and job_ref[0] is not None and len(job_ref[0]._tokens) == 3:
            logits = logits.clone()
            logits[self.open_id] = 1e4
        return real_mask(self, logits)

    monkeypatch.setattr(ToolConstraint, "mask", mask)
    job_ref = [None]
    conv = tool_conv(ToolChoice("auto"), 3, min_tokens=8, max_tokens=300, min_frames=10, max_frames=10)
    job = StreamJob(resident, conv, audio=True)
    job_ref[0] = job
    fed: list[torch.Tensor] = []

    class Recording(deque):
        def append(self, x):
            fed.append(x)
            super().append(x)

    job._text_queue = Recording()
    events = run(job)
    res = resident
    assert job._call_at == 3 and job._tokens[3] == 151657
    # Talker inputs: tokens 1 and 2 (t0 is in its prefix), then tts_eos, and nothing else.
    expected = [res.talker.text_projection(res.embed(torch.tensor([[t]]))) for t in job._tokens[1:3]]
    assert len(fed) == 3 and fed[-1] is res.tts_eos
    for got, want in zip(fed[:2], expected, strict=True):
        assert torch.allclose(got, want)
    kinds = [type(e).__name__ for e in events]
    assert "AudioChunk" in kinds and "ToolCallStarted" in kinds
    assert max(i for i, k in enumerate(kinds) if k == "AudioChunk") < kinds.index("ToolCallStarted")
    done = events[-1]
    spoken = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert done.turn.text == spoken and "tool_call" not in spoken and spoken
    call = next(e for e in events if isinstance(e, ToolCallDone))
    assert call.complete
    jsonschema.validate(json.loads(call.arguments), {t.name: t.parameters for t in TOOLS}[call.name])
    assert job.stats.frames == 10


def test_cut_off_call_is_incomplete_with_partial_arguments(resident):
    head = '<tool_call>\n{"name": "open_ticket", "arguments": {"device": {'
    budget = len(resident.processor.tokenizer(head)["input_ids"]) + 6  # cut inside the arguments
    conv = tool_conv(ToolChoice("function", "open_ticket"), 1, max_tokens=budget)
    events = run(StreamJob(resident, conv, audio=False))
    done_calls = [e for e in events if isinstance(e, ToolCallDone)]
    assert len(done_calls) == 1 and not done_calls[0].complete
    args = done_calls[0].arguments
    assert args.startswith("{") and "".join(e.delta for e in events if isinstance(e, ToolCallDelta)) == args
    assert [type(e) for e in events if isinstance(e, ToolCallStarted)] == [ToolCallStarted]


def test_results_prefill_only_themselves_after_a_call(resident):
    cache = ConversationCache(4)
    conv = tool_conv(ToolChoice("function", "open_ticket"), 2, max_tokens=400)
    first = StreamJob(resident, conv, audio=False, cache=cache)
    done = run(first)[-1]
    conv.turns.append(done.turn)
    for i, call in enumerate(done.turn.tool_calls):
        call.call_id = f"call_{i}"
        conv.turns.append(Turn("tool", [TextPart('{"ticket": 42}')], call_id=call.call_id))
    conv.tool_choice = ToolChoice("auto")
    conv.sampling = Sampling(greedy=False, seed=2, max_tokens=4)  # random weights babble: keep the answer short
    second = StreamJob(resident, conv, audio=False, cache=cache)
    run(second)
    cached = first._prompt_ids.shape[1] + len(first._tokens) - 1  # prompt + every generated token fed back
    assert second.stats.prefill_tokens == second._prompt_ids.shape[1] - cached
    assert second.stats.prefill_tokens < 20 * len(done.turn.tool_calls) + 10 < first._prompt_ids.shape[1]
