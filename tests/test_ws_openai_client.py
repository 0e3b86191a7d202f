"""The websocket transport end to end: the real server (tiny model, CPU) on a loopback
port, driven by the official `openai` package's realtime client.

Covers: a spoken turn with server VAD, push-to-talk (turn_detection null), barge-in
(speech cancels the response, audio stops, truncation keeps what was heard), errors
that leave the session usable, /health and /metrics.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request

import pytest
from live_server import async_sdk, collect_until, pcm24, stream, tiny_server, ws_url


@pytest.fixture(scope="module")
def server(tiny_dir):
    with tiny_server(
        tiny_dir,
        # Bounded answers keep the tiny model's turns short; the minimum keeps a response
        # running long enough to be interrupted.
        min_answer_tokens=10,
        max_answer_tokens=14,
        max_answer_frames=75,  # 6 s: at 25 a fast machine finished the answer before the barge-in test spoke
        echo_guard_ms=100,
        max_sessions=4,  # a number: the limit test below opens that many (auto: tests/test_capacity.py)
    ) as running:
        yield running


def types(events) -> list[str]:
    return [e.type for e in events]


async def test_spoken_turn_with_server_vad(server, load_wav):
    async with async_sdk(server).realtime.connect(model="qwen3-omni") as conn:
        created = await conn.recv()
        assert created.type == "session.created"
        assert created.session.audio.input.turn_detection.type == "server_vad"
        sender = asyncio.create_task(stream(conn, pcm24(load_wav, "hello_en_us.wav", tail_silence_s=0.5), True))
        events = await collect_until(conn, "response.done")
        await sender
    seen = types(events)
    for needed in (
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "response.created",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.done",
    ):
        assert needed in seen, f"missing {needed} in {seen}"
    order = [seen.index(t) for t in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped")]
    assert order[0] < order[1] < seen.index("input_audio_buffer.committed") < seen.index("response.created")
    started = next(e for e in events if e.type == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e.type == "input_audio_buffer.speech_stopped")
    assert 0 <= started.audio_start_ms < 200  # speech at 0.3 s minus 300 ms padding
    assert 1900 < stopped.audio_end_ms < 2800  # speech ends at 1.83 s, plus 500 ms of silence
    audio = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
    assert len(audio) > 0 and len(audio) % 2 == 0
    done = events[-1]
    assert done.response.status == "completed"
    transcript = "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
    assert done.response.output[0].content[0].transcript == transcript
    latency = done.model_extra["latency"]
    assert latency["audio_ttfp_ms"] > 0 and latency["stages_ms"]["thinker_ttft"] is not None
    assert latency["t_first_audio_sent_s"] >= latency["t_engine_first_audio_s"]


async def test_push_to_talk(server, load_wav):
    async with async_sdk(server).realtime.connect(model="qwen3-omni") as conn:
        await conn.recv()
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        assert (await conn.recv()).session.audio.input.turn_detection is None
        await stream(conn, pcm24(load_wav, "count_en_us_m3.wav"), False)
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        events = await collect_until(conn, "response.done")
        seen = types(events)
        assert "input_audio_buffer.speech_started" not in seen  # no VAD in manual mode
        user_item = next(e for e in events if e.type == "input_audio_buffer.committed").item_id
        assert "response.output_audio.delta" in seen and events[-1].response.status == "completed"
        await conn.conversation.item.retrieve(item_id=user_item)
        retrieved = (await collect_until(conn, "conversation.item.retrieved"))[-1]
        audio = base64.b64decode(retrieved.item.content[0].audio)
        assert abs(len(audio) / 2 / 24000 - 3.02) < 0.05  # the whole clip, back at the client's rate


async def test_barge_in_stops_audio_and_history_keeps_what_was_heard(server, load_wav):
    async with async_sdk(server).realtime.connect(model="qwen3-omni") as conn:
        await conn.recv()
        # No automatic answer to the interruption itself: the history stays easy to inspect.
        vad = {"type": "server_vad", "create_response": False, "interrupt_response": True}
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": vad}}})
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a story."}]}
        )
        await conn.response.create()
        events = await collect_until(conn, "response.output_audio.delta")
        response_id, item_id = events[-1].response_id, events[-1].item_id
        sender = asyncio.create_task(stream(conn, pcm24(load_wav, "hello_en_us.wav", 0.5), True))
        events += await collect_until(conn, "input_audio_buffer.speech_started")
        assert "response.done" not in types(events), "the response ended before the user spoke"
        barge = len(events)

        def sent_ms() -> int:
            mine = [e for e in events if e.type == "response.output_audio.delta" and e.response_id == response_id]
            return sum(len(base64.b64decode(e.delta)) // 2 for e in mine) * 1000 // 24000

        # Like a real client: stop playback at speech_started and report what was heard
        # (here 100 ms; the server clamps it to the audio it actually sent).
        heard_ms = min(100, sent_ms())
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=100)
        events += await collect_until(conn, "response.done")
        assert not [e for e in events[barge:] if e.type == "response.output_audio.delta"]  # the audio stopped
        done = events[-1]
        assert done.response.id == response_id and done.response.status == "cancelled"
        assert done.response.status_details.reason == "turn_detected"
        truncated = next(e for e in events if e.type == "conversation.item.truncated")
        assert truncated.audio_end_ms == heard_ms
        full = "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
        await conn.conversation.item.retrieve(item_id=item_id)
        heard = (await collect_until(conn, "conversation.item.retrieved"))[-1].item.content[0].transcript
        assert len(heard) < len(full) and full.startswith(heard), (heard, full)
        # A claim past the audio that was sent is clamped to it.
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=60_000)
        assert (await collect_until(conn, "conversation.item.truncated"))[-1].audio_end_ms == sent_ms()
        await sender


async def test_errors_keep_the_session_usable(server):
    async with async_sdk(server).realtime.connect(model="qwen3-omni") as conn:
        await conn.recv()
        ws = conn._connection  # raw frames: the SDK's typed senders cannot produce bad input
        await ws.send("{not json")
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "odd"}))
        await ws.send(json.dumps({"type": "no.such.event", "event_id": "u1"}))
        errors = [await conn.recv() for _ in range(3)]
        assert [e.error.code for e in errors] == ["invalid_json", "invalid_audio", "unknown_event_type"]
        assert [e.error.event_id for e in errors] == [None, "odd", "u1"]
        await conn.session.update(session={"type": "realtime", "instructions": "still here"})
        assert (await conn.recv()).session.instructions == "still here"


async def test_session_max_output_tokens_bounds_the_answer(server):
    """Session-level max_output_tokens reaches the engine (it once was accepted and had no
    effect): the fixture's answers run 10-14 tokens; with 3 requested they stop at 3."""
    async with async_sdk(server).realtime.connect(model="qwen3-omni") as conn:
        await conn.recv()
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 3, "tools": []})
        assert (await conn.recv()).session.max_output_tokens == 3
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there."}]}
        )
        await conn.response.create()
        done = (await collect_until(conn, "response.done"))[-1]
        assert done.response.status == "completed" and done.response.max_output_tokens == 3
        assert 1 <= done.response.usage.output_tokens <= 3, done.response.usage
        await conn.session.update(session={"type": "realtime", "tracing": "auto"})  # a field this server refuses
        error = await conn.recv()
        assert error.type == "error" and (error.error.code, error.error.param) == (
            "unsupported_feature",
            "session.tracing",
        )


def test_health_and_metrics(server):
    with urllib.request.urlopen(server.url + "/health") as r:
        health = json.load(r)
    assert health["is_tiny"] is True and health["device"] == "cpu" and "sessions" in health
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    assert "assistant:audio_ttfp_s_bucket" in text and "assistant:active_sessions" in text


async def test_session_limit_is_an_error_event_not_a_hang(server):
    import websockets

    url = ws_url(server)
    limit = server.settings.max_sessions
    conns = [await websockets.connect(url) for _ in range(limit)]
    try:
        for c in conns:
            assert json.loads(await c.recv())["type"] == "session.created"
        async with websockets.connect(url) as extra:
            event = json.loads(await extra.recv())
            assert event["type"] == "error" and event["error"]["code"] == "session_limit_reached"
            await extra.wait_closed()
            assert extra.close_code == 1013
    finally:
        for c in conns:
            await c.close()
    import httpx

    async with httpx.AsyncClient() as http:  # slots come back once the clients leave
        for _ in range(200):
            if (await http.get(server.url + "/health")).json()["sessions"] == 0:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("sessions were not released")
