"""WebRTC end to end, inside a private network namespace: the real server (`build_app`:
websocket + WebRTC routers, the tiny model) under uvicorn on the namespace's veth address,
and aiortc client peers that send a speech fixture as their microphone.

Figures (connect time, first audio, barge-in stop) are printed; run with -rP to see them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest
import pytest_asyncio
from webrtc_peer import FIXTURES, LOUD_RMS, ClientPeer, read_wav

pytestmark = [pytest.mark.netns, pytest.mark.asyncio(loop_scope="module")]

MAX_SESSIONS = 3
CONNECT_TIMEOUT_S = 3.0
# ICE consent (RFC 7675), shortened for the tests: a check every 1.7 s, gone after 5 misses in a row. (The
# default, 30 s, is aioice's own 6 checks x 5 s.) Each check waits 0.5 s for its answer, and a client in this
# process shares the event loop with the server: under the data-channel flood a much shorter timeout failed.
CONSENT_TIMEOUT_S = 10.0
# The vanished-peer test shortens it further (aioice's timing is process-wide), so that the engine is still
# generating when the peer is found gone: checks every 0.33 s, gone after 3 misses (~2.5 s).
FAST_CONSENT_TIMEOUT_S = 2.0


class Server:
    def __init__(self, url: str, calls, engine, settings) -> None:
        self.url, self.calls, self.engine, self.settings = url, calls, engine, settings

    async def connect(self, client: ClientPeer, **post) -> tuple[str, float]:
        """POST the client's offer, apply the answer, wait until connected. Returns (call id, connect ms)."""
        t0 = time.monotonic()
        offer = await client.offer()
        async with httpx.AsyncClient() as http:
            reply = await http.post(
                f"{self.url}/v1/realtime/calls", content=offer, headers={"Content-Type": "application/sdp"}, **post
            )
        assert reply.status_code == 201, reply.text
        assert reply.headers["content-type"].startswith("application/sdp")
        location = reply.headers["location"]
        assert location.startswith("/v1/realtime/calls/")
        await client.accept(reply.text)
        await asyncio.wait_for(client.connected.wait(), 20)
        await asyncio.wait_for(client.channel_open.wait(), 10)
        return location.rsplit("/", 1)[1], (time.monotonic() - t0) * 1000

    async def wait_all_closed(self, timeout_s: float = 10.0) -> None:
        """Every call has finished closing (a client's close reaches the server as a DTLS close)."""
        waits = [call.closed.wait() for call in list(self.calls.calls.values())]
        await asyncio.wait_for(asyncio.gather(*waits), timeout_s)
        assert not self.calls.calls, f"calls still open: {list(self.calls.calls)}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(netns_addrs, tiny_dir):
    import uvicorn

    from assistant.engine import load_engine
    from assistant.server.main import build_app
    from assistant.server.webrtc import CallLimits
    from assistant.settings import Settings

    settings = Settings(
        host=netns_addrs.server_addr,
        port=0,
        model=str(tiny_dir),
        device="cpu",
        warmup=False,
        max_sessions=MAX_SESSIONS,
        min_answer_tokens=4,
        max_answer_tokens=80,  # a tool call with the tiny near-character-level BPE takes ~60 tokens
        min_answer_frames=200,  # random weights may end an answer at any frame: fix the length
        # 16 s of speech (noise: random weights), made in about 5 s on the 2-core CPU: long enough that a
        # response is still being generated when a vanished peer is detected (PEER_TIMEOUT_S + polling).
        # (120 frames stopped being enough once the engine got faster.)
        max_answer_frames=200,
        # A short first chunk, then 2 s chunks: audio made faster than real time queues up on the server,
        # as it does on a GPU (barge-in must then drop queued audio).
        chunk_ramp_frames="2,25",
        echo_guard_ms=0,
        webrtc_consent_timeout_s=CONSENT_TIMEOUT_S,
    )
    engine = load_engine(settings)
    await engine.start()
    app = build_app(settings, engine)
    config = uvicorn.Config(app, host=settings.host, port=0, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve(), name="uvicorn")
    while not uv.started:  # noqa: ASYNC110 (uvicorn has no started event)
        await asyncio.sleep(0.05)
    calls = app.state.webrtc_calls
    calls.limits = CallLimits(connect_timeout_s=CONNECT_TIMEOUT_S)
    port = uv.servers[0].sockets[0].getsockname()[1]
    yield Server(f"http://{settings.host}:{port}", calls, engine, settings)
    uv.should_exit = True
    await task
    await engine.close()


def speech(name: str = "hello_en_us.wav") -> bytes:
    pcm, rate = read_wav(FIXTURES / name)
    assert rate == 16_000
    return pcm


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


CUT_NET = ("10.202.0.1", "10.202.0.2")  # the link cut: server side, client side (a private /24)
ROOT = Path(__file__).resolve().parents[1]


async def _run(*cmd: str) -> None:
    proc = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 0, f"{cmd}: {err.decode()}"


async def _peer_behind_a_link(url: str, wav: Path):
    """The client script in a namespace of its own, reaching ours through the veth pair
    vcut0 (here) / vcut1 (there): cutting vcut0 drops its packets both ways, with no
    goodbye of any kind, as a laptop leaving the Wi-Fi does."""
    await _run("ip", "link", "add", "vcut0", "type", "veth", "peer", "name", "vcut1")
    await _run("ip", "addr", "add", f"{CUT_NET[0]}/24", "dev", "vcut0")
    await _run("ip", "link", "set", "vcut0", "up")
    setup = (
        "until ip link show vcut1 >/dev/null 2>&1; do sleep 0.05; done; ip link set lo up && "
        f"ip addr add {CUT_NET[1]}/24 dev vcut1 && ip link set vcut1 up && ip route add default via {CUT_NET[0]} && "
        'exec "$0" "$@"'
    )
    root = ROOT
    env = dict(os.environ, PYTHONPATH=f"{root / 'tests'}:{root}")
    proc = await asyncio.create_subprocess_exec(
        *("unshare", "-n", "sh", "-c", setup, sys.executable, str(root / "tests" / "webrtc_peer.py"), url, str(wav)),
        env=env,
        cwd=root,
        stdout=asyncio.subprocess.PIPE,
    )
    ours = os.readlink("/proc/self/ns/net")
    for _ in range(200):  # until unshare has made the child's namespace
        if os.readlink(f"/proc/{proc.pid}/ns/net") != ours:
            break
        await asyncio.sleep(0.01)
    await _run("ip", "link", "set", "vcut1", "netns", str(proc.pid))
    return proc


async def test_vanished_peer_is_found_by_ice_consent_and_cleaned_up(server):
    """A client in its own namespace whose link is cut mid-response (no DTLS close, no RTCP
    BYE, no packet at all): ICE consent fails, the call closes, the response is cancelled,
    every task ends and the slot is freed. The time is reported; it is the consent timeout
    (aioice has no faster signal: a failed send is only logged)."""
    from assistant.server.webrtc import set_consent_timeout

    set_consent_timeout(FAST_CONSENT_TIMEOUT_S)
    proc = await _peer_behind_a_link(f"{server.url}/v1/realtime/calls", FIXTURES / "hello_en_us.wav")
    try:
        word, call_id = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        assert word == "connected"
        call = server.calls.calls[call_id]
        assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"response"
        await asyncio.sleep(0.3)
        responses = [r for r in call._responses.values() if not r.job.done]
        assert responses, "the engine is still generating when the link is cut"
        await _run("ip", "link", "set", "vcut0", "down")
        t_cut = time.monotonic()
        await asyncio.wait_for(call.closed.wait(), FAST_CONSENT_TIMEOUT_S + 10)
        detect_ms = (time.monotonic() - t_cut) * 1000
        await server.wait_all_closed()
    finally:
        set_consent_timeout(server.settings.webrtc_consent_timeout_s)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await asyncio.create_subprocess_exec("ip", "link", "del", "vcut0", stderr=asyncio.subprocess.DEVNULL)
    # Consent failure closes aioice's connection; aiortc reports the ICE transport failed or closed.
    assert call.close_reason.startswith("connection ") and "ICE" in call.close_reason, call.close_reason
    assert not call.tasks.tasks
    assert all(r.job.cancelled for r in responses), "the engine was told to stop"
    leaked = [t.get_name() for t in asyncio.all_tasks() if call.id in t.get_name() and not t.done()]
    assert not leaked, leaked
    print(
        f"\nlink cut -> call closed in {detect_ms:.0f} ms ({call.close_reason}; consent timeout {FAST_CONSENT_TIMEOUT_S} s)"
    )


async def test_http_errors_and_admission(server):
    url = f"{server.url}/v1/realtime/calls"
    sdp = await ClientPeer().offer()
    async with httpx.AsyncClient() as http:
        r = await http.post(url, content=sdp, headers={"Content-Type": "application/json"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        r = await http.post(url, content=b"v=0\r\ngarbage\r\n", headers={"Content-Type": "application/sdp"})
        assert r.status_code == 400
        r = await http.post(url, content=b"v=0\r\n" + b"a=x\r\n" * 40_000, headers={"Content-Type": "application/sdp"})
        assert r.status_code == 413
        r = await http.delete(f"{url}/rtc_nope")
        assert r.status_code == 404
    clients = [ClientPeer() for _ in range(MAX_SESSIONS)]
    try:
        for client in clients:
            await server.connect(client)
        extra = ClientPeer()
        async with httpx.AsyncClient() as http:
            r = await http.post(url, content=await extra.offer(), headers={"Content-Type": "application/sdp"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "session_limit_reached"
            health = (await http.get(f"{server.url}/health")).json()
            assert health["sessions"] == MAX_SESSIONS
            # Hanging up frees a slot at once.
            call_id = next(iter(server.calls.calls))
            assert (await http.post(f"{url}/{call_id}/hangup")).status_code == 204
            r = await http.post(url, content=await extra.offer(), headers={"Content-Type": "application/sdp"})
            assert r.status_code == 201
        # That client never applies the answer: a call that never connects must not hold its slot.
        dead = server.calls.calls[r.headers["location"].rsplit("/", 1)[1]]
        await asyncio.wait_for(dead.closed.wait(), CONNECT_TIMEOUT_S + 3)
        assert dead.close_reason == "never connected"
        await extra.close()
    finally:
        for client in clients:
            await client.close()
    await server.wait_all_closed()


async def test_data_channel_flood_is_rate_limited_and_the_session_survives(server):
    client = ClientPeer()
    try:
        await server.connect(client)
        await client.wait_for("session.created")
        for i in range(1000):
            client.send({"type": "input_audio_buffer.clear", "event_id": f"e{i}"})
        client.send({"type": "not.an.event"})
        error = await client.wait_for("error", timeout_s=10)
        assert error["error"]["code"] == "rate_limit_exceeded"
        # The flood is still in flight (SCTP paces it); what arrives over the rate is dropped, so wait
        # until it has all left the client, then for a token.
        for _ in range(600):
            if client.channel.bufferedAmount == 0:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "still here"}})
        n = len(client.events)
        updated = await client.wait_for("session.updated", after=n - 50 if n > 50 else 0, timeout_s=10)
        assert updated["session"]["instructions"] == "still here"
        cleared = sum(t == "input_audio_buffer.cleared" for t in client.types())
        assert 100 <= cleared < 1000, cleared
        print(f"\nflood: {cleared} of 1000 events served, the rest dropped with one error per second")
    finally:
        await client.close()
    await server.wait_all_closed()


async def test_drain_lets_the_answer_play_out_then_hangs_up(server):
    """What SIGTERM does to a call (tests/test_drain.py signals a real process): new calls
    get 503 at once, the answer in progress is generated and played out whole, then the
    call is hung up."""
    from assistant.server.drain import SHUTTING_DOWN

    drain = server.calls.drain
    client = ClientPeer()
    try:
        call_id, _ = await server.connect(client)
        call = server.calls.calls[call_id]
        client.play(speech())
        await client.wait_for("response.created", timeout_s=60)
        draining = asyncio.create_task(drain.run(90))
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient() as http:
            sdp = {"Content-Type": "application/sdp"}
            r = await http.post(f"{server.url}/v1/realtime/calls", content=b"v=0\r\n", headers=sdp)
        assert r.status_code == 503 and r.json()["error"]["code"] == "session_limit_reached"
        assert not call.closed.is_set(), "the call stays while its answer runs"
        await asyncio.wait_for(draining, 120)
        assert call.closed.is_set() and call.close_reason == SHUTTING_DOWN
        done = await client.wait_for("response.done", timeout_s=1)
        stopped = await client.wait_for("output_audio_buffer.stopped", timeout_s=1)
        assert done["response"]["status"] == "completed" and stopped["response_id"] == done["response"]["id"]
        audio_ms = done["latency"]["audio_ms"]
        assert client.received.loud_frames() >= 0.8 * audio_ms / 20, (client.received.loud_frames(), audio_ms)
    finally:
        drain.draining = False  # the module's server serves on
        await client.close()
    await server.wait_all_closed()


async def test_session_limits_end_a_call_as_they_end_a_websocket_session(server):
    """The call's watchdog asks the session (`check_limits`): past max_session_s the client
    gets `error` session_expired on the channel, then the call closes."""
    import dataclasses

    client = ClientPeer()
    try:
        call_id, _ = await server.connect(client)
        call = server.calls.calls[call_id]
        await client.wait_for("session.created")
        call.session.settings = dataclasses.replace(call.session.settings, max_session_s=1)
        error = await client.wait_for("error", timeout_s=10)
        assert error["error"]["code"] == "session_expired"
        await asyncio.wait_for(call.closed.wait(), 10)
        assert call.close_reason == "session_expired"
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
