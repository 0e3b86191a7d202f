"""The thinker-only checkpoints on their tiny builds, through the real server and the stock
`openai` SDK: Thinking keeps its reasoning out of the answer (Chat Completions stream it as
reasoning_content; realtime sessions drop it) and refuses audio output with an error that
names the checkpoint; the Captioner captions one clip, in pieces when it is long, and
refuses anything else with a 400 that says why."""

from __future__ import annotations

import base64
import io
import json
import urllib.request
import wave

import numpy as np
import openai
import pytest
from live_server import async_sdk, sdk, tiny_server
from PIL import Image

from assistant import tiny

TAGS = ("<think>", "</think>")


def wav_b64(pcm: np.ndarray) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((pcm * 32767).astype(np.int16).tobytes())
    return base64.b64encode(buf.getvalue()).decode()


def png_data_url() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def audio_part(pcm: np.ndarray) -> dict:
    return {"type": "input_audio", "input_audio": {"data": wav_b64(pcm), "format": "wav"}}


@pytest.fixture(scope="module")
def thinking(tmp_path_factory):
    path = tiny.build(tmp_path_factory.mktemp("tiny") / "tiny-thinking", "thinking")
    with tiny_server(path, min_answer_tokens=10, max_answer_tokens=16) as running:
        yield running


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    path = tiny.build(tmp_path_factory.mktemp("tiny") / "tiny-captioner", "captioner")
    with tiny_server(path, min_answer_tokens=4, max_answer_tokens=6, caption_piece_s=4.0) as running:
        yield running


def test_thinker_only_builds_have_no_talker_and_sample_like_the_real_ones(thinking, captioner):
    for server, variant in ((thinking, "thinking"), (captioner, "captioner")):
        resident = server.engine.resident
        assert not resident.has_talker and resident.talker is None and resident.code2wav is None
        assert not any(name.startswith(("talker.", "code2wav.")) for name, _ in resident.model.named_parameters())
        assert resident.thinker_defaults == {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}
        health = json.load(urllib.request.urlopen(server.url + "/health"))
        assert health["variant"] == variant and health["modalities"]["output"] == ["text"]
        card = sdk(server).models.list().data[0]
        assert card.model_extra["variant"] == variant and card.model_extra["output_modalities"] == ["text"]
    assert json.load(urllib.request.urlopen(captioner.url + "/health"))["modalities"]["input"] == ["audio"]


def test_thinking_reasoning_stays_out_of_the_answer(thinking):
    client, model = sdk(thinking), thinking.engine.info.model
    reasoned = 0
    for seed in range(4):
        done = client.chat.completions.create(
            model=model, seed=seed, messages=[{"role": "user", "content": "Why is the sky blue?"}]
        )
        message = done.choices[0].message
        assert not any(tag in (message.content or "") for tag in TAGS), message.content
        reasoning = message.model_extra.get("reasoning_content")
        if reasoning and message.content:
            reasoned += 1
            assert not any(tag in reasoning for tag in TAGS)
            assert done.usage.completion_tokens_details.reasoning_tokens > 0
    assert reasoned, "no seed gave both reasoning and an answer: the test exercised nothing"
    # Streamed: reasoning arrives as delta.reasoning_content, never as delta.content.
    content, reasoning = "", ""
    for chunk in client.chat.completions.create(
        model=model, seed=1, stream=True, messages=[{"role": "user", "content": "Why is the sky blue?"}]
    ):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
    again = (
        client.chat.completions.create(
            model=model, seed=1, messages=[{"role": "user", "content": "Why is the sky blue?"}]
        )
        .choices[0]
        .message
    )
    assert (content, reasoning) == (again.content, again.model_extra.get("reasoning_content") or "")


def test_thinking_refuses_audio_output_naming_the_checkpoint(thinking):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(thinking).chat.completions.create(
            model=thinking.engine.info.model,
            modalities=["text", "audio"],
            audio={"voice": "Ethan", "format": "wav"},
            messages=[{"role": "user", "content": "hi"}],
        )
    assert thinking.engine.info.model in caught.value.body["message"]


async def test_thinking_realtime_is_text_without_reasoning(thinking):
    async with async_sdk(thinking).realtime.connect(model="qwen3-omni") as conn:
        created = await conn.recv()
        assert created.session.output_modalities == ["text"]
        await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"]})
        error = await conn.recv()
        assert error.type == "error" and thinking.engine.info.model in error.error.message
        await conn.response.create(response={"output_modalities": ["audio"]})
        error = await conn.recv()
        assert error.type == "error" and "thinker-only" in error.error.message
        reasoned = 0
        for turn in range(4):
            await conn.conversation.item.create(
                item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"Q{turn}?"}]}
            )
            await conn.response.create()
            deltas, done = [], None
            async for event in conn:
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
                elif event.type == "response.done":
                    done = event
                    break
            text = "".join(deltas)
            assert done.response.status == "completed" and "audio" not in done.response.output_modalities
            assert not any(tag in text for tag in TAGS), text
            assert done.response.output[0].content[0].text == text
            reasoned += done.model_extra["latency"]["reasoning_tokens"] > 0
        assert reasoned, "no response reasoned: the test exercised nothing"


def test_captioner_captions_one_clip_and_refuses_anything_else(captioner, load_wav):
    client, model = sdk(captioner), captioner.engine.info.model
    clip = load_wav("hello_en_us.wav")  # 2.8 s: one piece
    done = client.chat.completions.create(model=model, messages=[{"role": "user", "content": [audio_part(clip)]}])
    assert done.choices[0].message.content and done.usage.completion_tokens <= 6
    refused = {
        "text": [audio_part(clip), {"type": "text", "text": "What is this?"}],
        "a second clip": [audio_part(clip), audio_part(clip)],
        "an image": [{"type": "image_url", "image_url": {"url": png_data_url()}}],
    }
    for content in refused.values():
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}])
        assert "Captioner" in caught.value.body["message"], caught.value.body
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": [audio_part(clip)]}],
        )
    assert "system" in caught.value.body["message"]


def test_captioner_cuts_a_long_clip_at_silences(captioner, load_wav):
    clip = load_wav("long_10s_en_us.wav")  # with caption_piece_s 4: at least three pieces
    done = sdk(captioner).chat.completions.create(
        model=captioner.engine.info.model, messages=[{"role": "user", "content": [audio_part(clip)]}]
    )
    # Each piece is its own answer of 4-6 tokens; one answer alone has at most 6.
    assert done.usage.completion_tokens >= 12
    assert done.choices[0].message.content.count("\n\n") >= 2


def test_thinking_history_keeps_answers_without_their_reasoning(thinking):
    """Two turns on the engine: the first answer's turn holds no reasoning ids or text, so
    the second prompt carries the answer alone (Qwen3's template drops earlier reasoning)."""
    import asyncio

    from assistant.engine.api import Conversation, ResponseDone, Sampling, TextPart
    from assistant.engine.inputs import prepare

    engine = thinking.engine
    think_ids = set(engine.resident.think_ids)

    async def answer(conv: Conversation) -> ResponseDone:
        async for event in engine.respond(conv, audio=False):
            if isinstance(event, ResponseDone):
                return event

    for seed in range(6):
        conv = Conversation(sampling=Sampling(seed=seed, min_tokens=10, max_tokens=16))
        conv.add_user([TextPart("Why is the sky blue?")])
        done = asyncio.run_coroutine_threadsafe(answer(conv), thinking.loop).result(120)
        if done.stats.reasoning_tokens and done.turn.token_ids:
            break
    else:
        pytest.fail("no seed gave both reasoning and an answer")
    turn = conv.turns[-1]
    assert turn.role == "assistant" and not think_ids & set(turn.token_ids)
    assert len(turn.token_ids) < done.stats.text_tokens - 1  # reasoning tokens were generated, not kept
    assert not any(tag in turn.text for tag in TAGS)
    conv.add_user([TextPart("And at sunset?")])
    ids = prepare(engine.resident.processor, conv).input_ids[0].tolist()
    assert not think_ids & set(ids)
    n = len(turn.token_ids)
    assert any(ids[i : i + n] == turn.token_ids for i in range(len(ids) - n + 1))  # the answer, as generated
