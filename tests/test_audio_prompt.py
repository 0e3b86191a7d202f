"""Audio and text prompts built without the processor's call (engine/audio_prompt.py)
equal the processor's own tensors, on conversations with every kind of turn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from assistant.engine import audio_prompt
from assistant.engine import inputs as inputs_mod
from assistant.engine.api import AudioPart, Conversation, TextPart, Tool, ToolCall, Turn
from assistant.engine.local import load_resident


@pytest.fixture(scope="module")
def resident(tiny_dir):
    return load_resident(str(tiny_dir), torch.device("cpu"), torch.float32, "sdpa")


def _conversations(load_wav) -> dict[str, Conversation]:
    hello, weather = load_wav("hello_en_us.wav"), load_wav("weather_en_gb_f3.wav")
    at_48k = np.repeat(hello, 3)  # resampled to 16 kHz first, as any other rate
    one = Conversation(instructions="You are brief.")
    one.add_user([AudioPart(hello)])

    history = Conversation()
    history.add_user([AudioPart(weather), TextPart("and in Paris?")])
    history.add_assistant_text("Sunny, 21 degrees.")
    history.turns[-1].token_ids = [11, 12, 13]  # spoken ids are spliced in (inputs.splice_assistant_ids)
    history.add_user([TextPart("thanks")])
    history.add_assistant_text("You're welcome.")
    history.add_user([AudioPart(at_48k, 48000), AudioPart(hello)])

    tools = Conversation(
        instructions="Support desk.",
        tools=(
            Tool(
                "reset_router", "Restart the router", {"type": "object", "properties": {"force": {"type": "boolean"}}}
            ),
        ),
    )
    tools.add_user([AudioPart(hello)])
    tools.turns.append(
        Turn("assistant", [], text="", tool_calls=[ToolCall("reset_router", '{"force": true}', "call_1")])
    )
    tools.turns.append(Turn("tool", [TextPart('{"ok": true}')], call_id="call_1"))
    tools.add_user([AudioPart(weather)])

    text_only = Conversation(instructions="Be kind.")
    text_only.add_user([TextPart("hello there")])
    return {"one": one, "history": history, "tools": tools, "text_only": text_only}


def test_audio_prompts_equal_the_processors_tensors(resident, load_wav, monkeypatch):
    processor = resident.processor
    calls = []  # the processor's own calls
    real = type(processor).__call__
    monkeypatch.setattr(type(processor), "__call__", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    for name, conv in _conversations(load_wav).items():
        processor.__dict__.pop("_assistant_audio_kwargs", None)
        processor.__dict__.pop("_assistant_prompt_memo", None)
        stock = inputs_mod.prepare(processor, conv).tensors  # the processor's call: it remembers its audio kwargs
        assert calls == [1]
        if name == "text_only":
            assert audio_prompt.audio_kwargs(processor) is None  # no audio seen yet: the processor again
            inputs_mod.prepare(processor, _conversations(load_wav)["one"])
        assert audio_prompt.audio_kwargs(processor) is not None
        calls.clear()
        ours = inputs_mod.prepare(processor, conv).tensors
        again = inputs_mod.prepare(processor, conv).tensors  # from the memoised template ids
        assert calls == [], name
        for got in (ours, again):
            assert sorted(got) == sorted(stock), name
            for key, want in stock.items():
                assert got[key].dtype == want.dtype and torch.equal(got[key], want), (name, key)


def test_placeholders_and_clips_must_agree():
    assert audio_prompt._expand([1, 9, 2, 9, 3], 9, [2, 3]) == [1, 9, 9, 2, 9, 9, 9, 3]
    with pytest.raises(ValueError, match="2 audio placeholders for 1 clips"):
        audio_prompt._expand([1, 9, 2, 9], 9, [4])
