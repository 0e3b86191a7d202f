"""Realtime input transcription and transcription sessions over the websocket, end to end:
the real server (tiny model, CPU), driven by the stock `openai` realtime client, every
transcription event validated against the SDK's own models.

The tiny model's transcripts are babble; what is tested is the protocol: a `.completed`
(with usage) for every committed audio item, deltas that add up to it, the transcript on
the item, no responses in a transcription session, and refused languages.
"""

from __future__ import annotations

import re

import pytest
from live_server import async_sdk, collect_until, pcm24, stream, tiny_server, ws_url
from openai.types.realtime import (
    ConversationItemInputAudioTranscriptionCompletedEvent,
    ConversationItemInputAudioTranscriptionDeltaEvent,
)

COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


@pytest.fixture(scope="module")
def server(tiny_dir):
    with tiny_server(
        tiny_dir,
        warmup=False,
        max_answer_tokens=6,
        max_answer_frames=6,
        transcription_min_tokens=3,  # random weights may end a transcript at once: make deltas certain
        transcription_max_tokens=6,
    ) as running:
        yield running


def check_transcript(events, item_id: str) -> str:
    """The item's deltas add up to its .completed transcript; both parse as the SDK's events."""
    deltas = [e for e in events if e.type == DELTA and e.item_id == item_id]
    done = [e for e in events if e.type == COMPLETED and e.item_id == item_id]
    assert len(done) == 1, [e.type for e in events]
    for e in deltas:
        ConversationItemInputAudioTranscriptionDeltaEvent.model_validate(e.model_dump())
    completed = ConversationItemInputAudioTranscriptionCompletedEvent.model_validate(done[0].model_dump())
    assert deltas and "".join(e.delta for e in deltas) == completed.transcript
    assert completed.content_index == 0
    assert completed.usage.type == "tokens" and completed.usage.output_tokens >= 3
    assert completed.usage.input_tokens > 10  # the audio tokens and the task prompt
    return completed.transcript


async def test_conversation_items_are_transcribed(server, load_wav):
    async with async_sdk(server).realtime.connect(model="qwen3-omni") as conn:
        await conn.recv()  # session.created
        await conn.session.update(
            session={
                "type": "realtime",
                "audio": {
                    "input": {"turn_detection": None, "transcription": {"model": "qwen3-omni", "language": "en"}}
                },
            }
        )
        updated = await collect_until(conn, "session.updated")
        assert updated[-1].session.audio.input.transcription.language == "en"
        items = []
        events = []
        for name in ("hello_en_us.wav", "count_en_us_m3.wav"):  # two push-to-talk turns, each answered
            await stream(conn, pcm24(load_wav, name), realtime=False)
            await conn.input_audio_buffer.commit()
            await conn.response.create()
            got = await collect_until(conn, "response.done")
            items.append(next(e.item_id for e in got if e.type == "input_audio_buffer.committed"))
            events += got
        while sum(e.type == COMPLETED for e in events) < len(items):
            events += await collect_until(conn, COMPLETED)
        transcripts = [check_transcript(events, item) for item in items]
        await conn.send({"type": "conversation.item.retrieve", "item_id": items[0]})
        retrieved = (await collect_until(conn, "conversation.item.retrieved"))[-1]
        assert retrieved.item.content[0].transcript == transcripts[0]


async def test_transcription_session_transcribes_vad_segments_and_never_answers(server, load_wav):
    async with async_sdk(server).realtime.connect(model="qwen3-omni") as conn:
        await conn.recv()
        await conn.send({"type": "session.update", "session": {"type": "transcription"}})
        updated = (await collect_until(conn, "session.updated"))[-1]
        assert updated.session.type == "transcription"
        assert updated.session.audio.input.transcription is not None  # on by default in this kind of session
        # Two utterances with silence between and after: the server VAD cuts two segments.
        audio = pcm24(load_wav, "hello_en_us.wav", 1.0) + pcm24(load_wav, "weather_en_gb_f3.wav", 1.0)
        await stream(conn, audio, realtime=False)
        events = await collect_until(conn, COMPLETED)
        while sum(e.type == COMPLETED for e in events) < 2:
            events += await collect_until(conn, COMPLETED)
        items = [e.item_id for e in events if e.type == "input_audio_buffer.committed"]
        assert len(items) == 2
        for item in items:
            check_transcript(events, item)
        assert not [e for e in events if e.type.startswith("response.")]
        await conn.send({"type": "response.create"})
        error = (await collect_until(conn, "error"))[-1]
        assert "transcription session" in error.error.message


async def test_unsupported_language_is_refused_naming_the_supported_ones(server):
    async with async_sdk(server).realtime.connect(model="qwen3-omni") as conn:
        await conn.recv()
        await conn.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"transcription": {"language": "sw"}}}},
            }
        )
        error = (await collect_until(conn, "error"))[-1].error
        assert error.code == "unsupported_language"
        assert error.param == "session.audio.input.transcription.language"
        assert "yue" in error.message and "en" in error.message


def test_talk_presets_transcriber_and_written_interpreter(server, fixtures_dir):
    from test_talk_client import talk

    wav = str(fixtures_dir / "hello_en_us.wav")
    r = talk("--url", ws_url(server), "--input-wav", wav, "--fast", "--preset", "transcriber")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^you: \S", r.stdout, re.M) and "assistant:" not in r.stdout, r.stdout
    r = talk(
        "--url", ws_url(server), "--input-wav", wav, "--fast", "--preset", "interpreter", "--target-language", "sw"
    )
    assert r.returncode == 0, r.stderr
    assert re.search(r"^you: \S", r.stdout, re.M) and re.search(r"^assistant: \S", r.stdout, re.M), r.stdout
    r = talk("--url", ws_url(server), "--input-wav", wav, "--preset", "interpreter", "--target-language", "xx")
    assert r.returncode != 0 and "text language 'xx' is not supported" in r.stderr, r.stderr
