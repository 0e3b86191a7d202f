"""WebRTC end to end, inside a private network namespace: the real server (`build_app`:
websocket + WebRTC routers, the tiny model) under uvicorn on the namespace's veth address,
and aiortc client peers that send a speech fixture as their microphone.

This file: spoken turns, push-to-talk, camera, barge-in, a quiet microphone, input
transcription and tool calls over the data channel. A call's life (a vanished peer,
HTTP errors and admission, flood control, drain, session limits): test_webrtc_calls.py.

Figures (connect time, first audio, barge-in stop) are printed; run with -rP to see them.
"""

from __future__ import annotations

import asyncio
import json
import time
import wave

import numpy as np
import pytest
import pytest_asyncio
from webrtc_peer import FIXTURES, LOUD_RMS, ClientPeer
from webrtc_server import serve, speech

pytestmark = [pytest.mark.netns, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(netns_addrs, tiny_dir):
    async with serve(netns_addrs, tiny_dir) as running:
        yield running


async def test_spoken_turn_with_server_vad(server):
    client = ClientPeer()
    try:
        call_id, connect_ms = await server.connect(client)
        created = await client.wait_for("session.created")
        assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        t_play = time.monotonic()
        client.play(speech())
        for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"):
            await client.wait_for(kind, timeout_s=20)
        committed = await client.wait_for("input_audio_buffer.committed")
        await client.wait_for("response.created")
        started = await client.wait_for("output_audio_buffer.started", timeout_s=30)
        done = await client.wait_for("response.done", timeout_s=90)
        stopped = await client.wait_for("output_audio_buffer.stopped", timeout_s=30)
        types = client.types()
        assert "response.output_audio_transcript.delta" in types
        assert "response.output_audio.delta" not in types, "audio travels on the track, not the data channel"
        assert done["response"]["status"] == "completed"
        assert types.index("response.done") < types.index("output_audio_buffer.stopped")
        assert stopped["response_id"] == started["response_id"] == done["response"]["id"]
        audio_ms = done["latency"]["audio_ms"]
        assert audio_ms > 1000
        # The client heard the answer: about as many loud 20 ms frames as the engine made audio.
        loud = client.received.loud_frames()
        assert loud >= 0.8 * audio_ms / 20, (loud, audio_ms)
        first_heard_ms = (client.received.first_loud_s() - committed["_t"]) * 1000
        print(
            f"\nconnect {connect_ms:.0f} ms; speech end -> committed {(committed['_t'] - t_play) * 1000:.0f} ms "
            f"after playback start; server audio_ttfp {done['latency']['audio_ttfp_ms']} ms; committed -> first "
            f"loud frame at the client {first_heard_ms:.0f} ms; {loud} loud frames for {audio_ms} ms of audio"
        )
        assert done["latency"]["audio_ttfp_ms"] is not None
    finally:
        await client.close()
    await server.wait_all_closed()


async def test_push_to_talk_over_the_data_channel(server):
    client = ClientPeer()
    try:
        await server.connect(client)
        client.send(
            {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}
        )
        updated = await client.wait_for("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        client.send({"type": "input_audio_buffer.clear"})
        await client.wait_for("input_audio_buffer.cleared")
        pcm = speech("weather_en_gb_f3.wav")
        client.play(pcm, "ptt")
        await client.played("ptt")
        await asyncio.sleep(0.3)  # the last packets' way to the server
        client.send({"type": "input_audio_buffer.commit"})
        client.send({"type": "response.create"})
        committed = await client.wait_for("input_audio_buffer.committed")
        done = await client.wait_for("response.done", timeout_s=90)
        assert done["response"]["status"] == "completed"
        assert "input_audio_buffer.speech_started" not in client.types()
        # The committed turn holds the push-to-talk audio (clip length, give or take the frames in flight).
        call = next(iter(server.calls.calls.values()))
        user = call.session.conversation.find(committed["item_id"])
        clip_s = len(pcm) / 2 / 16_000
        audio = user.parts[-1]
        assert clip_s - 0.1 < audio.duration_s < clip_s + 1.5, (audio.duration_s, clip_s)
        # ...with the speech inside it (the fixture's speech is 0.3-1.9 s into the clip).
        level = np.sqrt(np.mean(audio.pcm**2))
        assert level > 0.01, level
        await client.wait_for("output_audio_buffer.stopped", timeout_s=30)
        assert client.received.loud_frames() > 20
    finally:
        await client.close()
    await server.wait_all_closed()


async def test_camera_frames_join_the_user_turn(server):
    """A video track's frames reach the committed turn as a camera+microphone turn: one
    frame per half second of its audio, in Qwen's interleaved layout, and the tiny model
    answers it."""
    from PIL import Image

    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((FIXTURES / "frames").glob("*.png"))]
    client = ClientPeer(camera=frames)
    try:
        await server.connect(client)
        client.send(
            {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}
        )
        await client.wait_for("session.updated")
        client.play(speech("describe_en_scotland.wav"), "ptt")
        await client.played("ptt")
        client.send({"type": "input_audio_buffer.commit"})
        client.send({"type": "response.create"})
        committed = await client.wait_for("input_audio_buffer.committed")
        done = await client.wait_for("response.done", timeout_s=90)
        assert done["response"]["status"] == "completed"
        call = next(iter(server.calls.calls.values()))
        turn = call.session.conversation.find(committed["item_id"])
        visual = [p for p in turn.parts if type(p).__name__ in ("VideoPart", "ImagePart")]
        assert len(visual) == 1, turn.parts
        video = visual[0]
        assert type(video).__name__ == "VideoPart" and video.interleave_audio, "a streamed camera: a camera turn"
        half_seconds = -(-len(turn.parts[-1].pcm) // 8000)  # 16 kHz audio: one frame per started half second
        assert len(video.frames) == min(half_seconds, 2 * server.settings.max_camera_turn_s)
        assert video.timestamps_s == [i / 2 for i in range(len(video.frames))]
        assert len({id(f) for f in video.frames}) >= 2, "the camera's frames change over the turn"
        assert video.frames[0].shape == frames[0].shape and video.frames[0].dtype == np.uint8
    finally:
        await client.close()
    await server.wait_all_closed()


async def test_barge_in_stops_audio_within_one_frame_and_keeps_what_was_heard(server):
    client = ClientPeer()
    try:
        call_id, _ = await server.connect(client)
        call = server.calls.calls[call_id]
        client.play(speech())
        started = await client.wait_for("output_audio_buffer.started", timeout_s=60)
        response_id = started["response_id"]
        # Speak over the answer once seconds of it wait in the server's queue.
        for _ in range(1200):
            if call.track.queued_ms >= 1000:
                break
            await asyncio.sleep(0.05)
        queued_ms = call.track.queued_ms
        assert queued_ms >= 1000
        client.play(speech("count_en_us_m3.wav"), "barge")
        n = len(client.events)
        barge = await client.wait_for("input_audio_buffer.speech_started", after=n, timeout_s=20)
        cleared = await client.wait_for("output_audio_buffer.cleared", after=n, timeout_s=10)
        truncated = await client.wait_for("conversation.item.truncated", after=n, timeout_s=10)
        done = await client.wait_for("response.done", after=n, timeout_s=30)
        assert cleared["response_id"] == response_id == done["response"]["id"]
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        heard_ms = truncated["audio_end_ms"]
        assert heard_ms > 0
        # The stop, measured on what the client decoded: frame i at the client is frame i of the
        # server's track. Nothing after the first frame following the clear carries sound.
        clear_frame = call.track.cleared_frame
        await asyncio.sleep(0.5)
        rms = client.received.rms
        loud_after = [i for i in range(clear_frame, len(rms)) if rms[i] > LOUD_RMS]
        first_reply = next((i for i in loud_after if i > clear_frame + 10), None)
        tail = [i for i in loud_after if first_reply is None or i < first_reply]
        # The barge-in turn gets its own answer later; only frames right after the clear matter here.
        assert tail in ([], [clear_frame]), f"sound {tail} after the clear at frame {clear_frame}"
        stop_ms = 20 * len(tail)
        # The history keeps what was heard: the assistant turn covers audio_end_ms, not what was generated.
        turn = call.session.conversation.find(cleared_item := truncated["item_id"])
        assert turn is not None and turn.role == "assistant"
        assert turn.frames == -(-heard_ms // 80), (turn.frames, heard_ms)
        generated_ms = done["latency"]["audio_ms"]
        print(
            f"\nbarge-in: speech_started -> cleared event {(cleared['_t'] - barge['_t']) * 1000:.1f} ms on the channel; "
            f"sound after the clear: {stop_ms} ms (limit 20); heard {heard_ms} ms of {generated_ms} ms generated; "
            f"item {cleared_item} keeps {turn.frames} frames; {queued_ms} ms were queued when the user started speaking"
        )
        assert heard_ms < generated_ms - 300, "audio generated but never played is not kept"
    finally:
        await client.close()
    await server.wait_all_closed()


async def test_quiet_microphone_keeps_the_call_and_the_whole_answer(server, tmp_path):
    """A file player (aiortc's MediaPlayer) streams 4 s (a question, then silence) and its
    track ends: no more RTP at all, and no goodbye. The call is not taken for gone: the
    answer is generated, played out whole on the track, and its events all arrive."""
    from aiortc.contrib.media import MediaPlayer

    pcm = speech()
    path = tmp_path / "question_4s.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16_000)
        w.writeframes(pcm + bytes(4 * 16_000 * 2 - len(pcm)))
    player = MediaPlayer(str(path))
    client = ClientPeer(mic=player.audio)
    try:
        call_id, _ = await server.connect(client)
        call = server.calls.calls[call_id]
        await client.wait_for("input_audio_buffer.committed", timeout_s=30)
        done = await client.wait_for("response.done", timeout_s=120)
        stopped = await client.wait_for("output_audio_buffer.stopped", timeout_s=60)
        await asyncio.sleep(0.5)  # the last frames' way to the client
        assert player.audio.readyState == "ended", "the file ended: the client sends no audio"
        quiet_s = stopped["_t"] - call.t_last_mic
        assert done["response"]["status"] == "completed"
        assert stopped["response_id"] == done["response"]["id"]
        audio_ms = done["latency"]["audio_ms"]
        loud = client.received.loud_frames()
        assert loud >= 0.8 * audio_ms / 20, (loud, audio_ms)
        assert quiet_s > 8, f"the answer ended {quiet_s:.1f} s after the last microphone frame"
        assert call_id in server.calls.calls and call.close_reason is None, call.close_reason
        print(f"\nquiet microphone: {quiet_s:.1f} s without RTP; {loud} loud frames for {audio_ms} ms of answer")
    finally:
        await client.close()
    await server.wait_all_closed()


async def test_input_transcription_completes_for_every_committed_item(server):
    """Each VAD-committed item of a WebRTC call gets its `.completed` transcript on the data channel."""
    client = ClientPeer()
    try:
        await server.connect(client)
        await client.wait_for("session.created")
        update = {"type": "realtime", "audio": {"input": {"transcription": {"model": "qwen3-omni"}}}}
        client.send({"type": "session.update", "session": update})
        updated = await client.wait_for("session.updated")
        assert updated["session"]["audio"]["input"]["transcription"]["model"] == "qwen3-omni"
        client.play(speech())
        committed = await client.wait_for("input_audio_buffer.committed", timeout_s=30)
        completed = await client.wait_for("conversation.item.input_audio_transcription.completed", timeout_s=90)
        assert completed["item_id"] == committed["item_id"]
        assert completed["usage"]["type"] == "tokens" and completed["usage"]["input_tokens"] > 0
        await client.wait_for("response.done", timeout_s=90)
    finally:
        await client.close()
    await server.wait_all_closed()


async def test_transcription_session_over_webrtc(server):
    """session.type = transcription on a call: VAD segments are transcribed, nothing is answered."""
    client = ClientPeer()
    try:
        await server.connect(client)
        await client.wait_for("session.created")
        client.send({"type": "session.update", "session": {"type": "transcription"}})
        updated = await client.wait_for("session.updated")
        assert updated["session"]["type"] == "transcription"
        client.play(speech())
        client.play_silence(1000)
        committed = await client.wait_for("input_audio_buffer.committed", timeout_s=30)
        completed = await client.wait_for("conversation.item.input_audio_transcription.completed", timeout_s=90)
        assert completed["item_id"] == committed["item_id"]
        assert not [t for t in client.types() if t.startswith("response.")]
    finally:
        await client.close()
    await server.wait_all_closed()


async def test_tool_call_round_trip_over_the_data_channel(server):
    """A named tool's call arrives on `oai-events` as function_call events and is never
    played; its function_call_output is answered with speech on the track."""
    tool = {
        "type": "function",
        "name": "local_time",
        "description": "The local time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "JST"]}, "h24": {"type": "boolean"}},
            "required": ["zone", "h24"],
            "additionalProperties": False,
        },
    }
    client = ClientPeer()
    try:
        await server.connect(client)
        client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"turn_detection": None}},
                    "tools": [tool],
                    "tool_choice": {"type": "function", "name": "local_time"},
                },
            }
        )
        await client.wait_for("session.updated")
        text = {"type": "input_text", "text": "What time is it in Tokyo?"}
        client.send(
            {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [text]}}
        )
        n = len(client.events)
        client.send({"type": "response.create"})
        done = await client.wait_for("response.done", timeout_s=60, after=n)
        assert done["response"]["status"] == "completed"
        (call,) = done["response"]["output"]
        assert call["type"] == "function_call" and call["name"] == "local_time"
        args = json.loads(call["arguments"])
        assert args["zone"] in ("UTC", "CET", "JST") and isinstance(args["h24"], bool) and len(args) == 2
        seen = client.types()[n:]
        assert seen.index("response.function_call_arguments.done") < seen.index("response.output_item.done")
        assert "output_audio_buffer.started" not in seen  # nothing of the call was played
        out = {"type": "function_call_output", "call_id": call["call_id"], "output": '{"time": "19:04"}'}
        client.send({"type": "conversation.item.create", "item": out})
        m = len(client.events)
        client.send({"type": "response.create", "response": {"tool_choice": "none"}})
        done = await client.wait_for("response.done", timeout_s=90, after=m)
        assert done["response"]["status"] == "completed"
        assert [o["type"] for o in done["response"]["output"]] == ["message"]
        await client.wait_for("output_audio_buffer.started", after=m)
        await client.wait_for("output_audio_buffer.stopped", timeout_s=30, after=m)
        assert client.received.loud_frames() > 20
    finally:
        await client.close()
    await server.wait_all_closed()
