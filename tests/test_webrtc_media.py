"""The WebRTC media plumbing: the paced outbound track in virtual time (no network), and
a real two-peer aiortc loopback inside a private network namespace."""

from __future__ import annotations

import asyncio
import fractions
import json
import time

import av
import numpy as np
import pytest

from assistant.server.webrtc_media import (
    FRAME_MS,
    OutboundAudioTrack,
    PlaybackEvent,
    TaskOwner,
    pcm16_mono,
    read_audio,
    read_video,
)


class VirtualClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def tone(ms: int, *, rate: int = 24_000, freq: float = 440.0, amp: float = 0.5) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * np.pi * freq * t) * amp * 32767).astype("<i2").tobytes()


def samples_of(frame: av.AudioFrame) -> np.ndarray:
    return np.frombuffer(pcm16_mono(frame), dtype="<i2")


def make_track(**kw) -> tuple[OutboundAudioTrack, VirtualClock, list[PlaybackEvent]]:
    clock = VirtualClock()
    events: list[PlaybackEvent] = []
    track = OutboundAudioTrack(clock=clock, sleep=clock.sleep, on_playback=events.append, **kw)
    return track, clock, events


async def test_frames_are_20ms_with_sample_pts_and_paced_in_real_time():
    track, clock, _ = make_track()
    t0 = clock.t
    frames = [await track.recv() for _ in range(5)]
    assert [f.samples for f in frames] == [480] * 5
    assert [f.pts for f in frames] == [0, 480, 960, 1440, 1920]
    assert all(f.sample_rate == 24_000 and f.time_base == fractions.Fraction(1, 24_000) for f in frames)
    assert all(f.format.name == "s16" and f.layout.name == "mono" for f in frames)
    # Frame n leaves at t0 + n * 20 ms: the clock advanced exactly 4 frames.
    assert clock.t - t0 == pytest.approx(4 * FRAME_MS / 1000)
    assert not np.any(samples_of(frames[0])), "an empty track plays silence"


async def test_pacing_does_not_burst_after_a_stall():
    track, clock, _ = make_track()
    await track.recv()
    clock.t += 0.5  # the loop stalled for 500 ms
    await track.recv()
    clock.sleeps.clear()
    await track.recv()
    # After resyncing, the next frame waits a full frame instead of going out at once.
    assert clock.sleeps == [pytest.approx(FRAME_MS / 1000)]


async def test_audio_is_played_in_order_and_counted_per_item():
    track, _, events = make_track()
    a, b = tone(50, freq=300), tone(30, freq=600)
    track.push(a, response_id="r1", item_id="i1")
    track.push(b, response_id="r1", item_id="i2")
    track.finish("r1")
    out = b"".join([pcm16_mono(await track.recv()) for _ in range(5)])
    assert out[: len(a) + len(b)] == a + b
    assert not any(out[len(a) + len(b) :])
    assert track.played_ms("i1") == 50 and track.played_ms("i2") == 30
    assert [(e.kind, e.response_id) for e in events] == [("started", "r1"), ("stopped", "r1")]
    assert track.queued_ms == 0


async def test_stopped_waits_for_finish_across_an_underrun():
    track, _, events = make_track()
    track.push(tone(20), response_id="r1", item_id="i1")
    await track.recv()
    await track.recv()  # underrun: silence, but the response is not over
    assert [e.kind for e in events] == ["started"]
    track.push(tone(20), response_id="r1", item_id="i1")
    await track.recv()
    track.finish("r1")
    assert [e.kind for e in events] == ["started", "stopped"]
    assert events[-1].played_ms == 40


async def test_clear_silences_the_very_next_frame_and_reports_the_position():
    track, _, events = make_track()
    track.push(tone(1000), response_id="r1", item_id="i1")
    for _ in range(3):
        assert np.abs(samples_of(await track.recv())).max() > 1000
    cleared = track.clear()
    assert cleared == PlaybackEvent("cleared", "r1", "i1", 60, 3)
    assert track.cleared_frame == 3
    assert events[-1] == cleared
    assert track.queued_ms == 0
    assert not np.any(samples_of(await track.recv()))
    assert track.played_ms("i1") == 60
    assert track.clear() is None, "clearing an idle track reports nothing"
    # A new response after the clear starts cleanly.
    track.push(tone(20), response_id="r2", item_id="i2")
    assert np.any(samples_of(await track.recv()))
    assert events[-1].kind == "started" and events[-1].response_id == "r2"


async def test_queue_bound_drops_the_newest_audio():
    track, _, _ = make_track(max_queued_ms=100)
    assert track.push(tone(80), response_id="r", item_id="i") == 80 * 24
    assert track.push(tone(80), response_id="r", item_id="i") == 20 * 24
    assert track.queued_ms == 100 and track.dropped_ms == 60
    assert track.push(b"\x01", response_id="r", item_id="i") == 0, "odd trailing byte is ignored"


async def test_stopped_track_ends_the_stream():
    track, _, _ = make_track()
    track.push(tone(100), response_id="r", item_id="i")
    track.stop()
    with pytest.raises(Exception, match="") as info:
        await track.recv()
    assert type(info.value).__name__ == "MediaStreamError"


async def test_real_clock_pacing():
    track = OutboundAudioTrack()
    start = time.monotonic()
    for _ in range(26):
        await track.recv()
    elapsed = time.monotonic() - start
    assert 0.48 <= elapsed < 0.65, elapsed


async def test_task_owner_cancels_everything():
    owner = TaskOwner("peer")
    started = asyncio.Event()

    async def forever():
        started.set()
        await asyncio.sleep(3600)

    tasks = [owner.spawn(forever(), f"t{i}") for i in range(3)]
    await started.wait()
    assert all(t.get_name().startswith("peer:t") for t in tasks)
    await owner.close()
    assert all(t.cancelled() for t in tasks) and not owner.tasks
    with pytest.raises(RuntimeError):
        owner.spawn(forever(), "late")


class _FrameSource:
    """A track-like source of given frames, then end of stream (exercises the readers without a network)."""

    def __init__(self, frames):
        self.frames = list(frames)

    async def recv(self):
        from aiortc.mediastreams import MediaStreamError

        if not self.frames:
            raise MediaStreamError
        return self.frames.pop(0)


async def test_read_audio_resamples_48k_stereo_to_16k_mono():
    frames = []
    for i in range(50):  # 1 s of 48 kHz stereo, like aiortc's Opus decoder output
        t = (np.arange(960) + i * 960) / 48_000
        mono = (np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2")
        frame = av.AudioFrame.from_ndarray(np.stack([mono, mono]).T.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, i * 960, fractions.Fraction(1, 48_000)
        frames.append(frame)
    got: list[bytes] = []
    await read_audio(_FrameSource(frames), got.append, sample_rate=16_000)
    pcm = np.frombuffer(b"".join(got), dtype="<i2")
    assert abs(len(pcm) - 16_000) < 200
    spectrum = np.abs(np.fft.rfft(pcm[1000:15000]))
    peak_hz = np.argmax(spectrum) * 16_000 / len(pcm[1000:15000])
    assert abs(peak_hz - 440) < 5


async def test_read_video_samples_at_most_max_fps_and_bounds_size():
    clock = VirtualClock()
    frames = []
    for i in range(30):  # 1 s at 30 fps, 1920x1080
        frames.append(av.VideoFrame.from_ndarray(np.full((1080, 1920, 3), i, dtype=np.uint8), format="rgb24"))

    class Timed(_FrameSource):
        async def recv(self):
            frame = await super().recv()
            clock.t += 1 / 30
            return frame

    got: list[tuple[np.ndarray, float]] = []
    await read_video(Timed(frames), lambda rgb, t: got.append((rgb, t)), max_fps=2.0, max_side=640, clock=clock)
    assert len(got) == 2  # 1 s at 2 fps
    assert got[0][0].shape == (360, 640, 3) and got[0][0].dtype == np.uint8
    assert got[1][1] - got[0][1] >= 0.5


# ---------------------------------------------------------------------------- two real peers in a namespace


@pytest.mark.netns
async def test_two_peer_loopback_audio_both_ways_and_clear(netns_addrs):
    """A 'server' peer with an OutboundAudioTrack and read_audio, a client peer playing a speech
    fixture: audio flows both ways, the data channel carries messages, and clear() stops the
    audio the client hears within one 20 ms frame."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from webrtc_peer import FIXTURES, LOUD_RMS, ClientPeer, read_wav

    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    owner = TaskOwner("server")
    playing = asyncio.Event()
    started: list[PlaybackEvent] = []
    out_track = OutboundAudioTrack(on_playback=lambda e: e.kind == "started" and (started.append(e), playing.set()))
    mic_pcm: list[bytes] = []
    server_messages: list[str] = []

    @server.on("track")
    def on_track(track):
        owner.spawn(read_audio(track, mic_pcm.append, sample_rate=16_000), "mic")

    @server.on("datachannel")
    def on_datachannel(channel):
        channel.on("message", server_messages.append)
        channel.send('{"type":"hello"}')

    client = ClientPeer()
    speech, rate = read_wav(FIXTURES / "hello_en_us.wav")
    assert rate == 16_000
    t0 = time.monotonic()
    await server.setRemoteDescription(RTCSessionDescription(await client.offer(), "offer"))
    for transceiver in server.getTransceivers():
        if transceiver.kind == "audio":
            transceiver.sender.replaceTrack(out_track)
            transceiver.direction = "sendrecv"
    await server.setLocalDescription(await server.createAnswer())
    sdp = server.localDescription.sdp
    assert netns_addrs.server_addr in sdp or netns_addrs.client_addr in sdp
    await client.accept(sdp)
    await asyncio.wait_for(client.connected.wait(), 20)
    connect_ms = (time.monotonic() - t0) * 1000
    try:
        await asyncio.wait_for(client.channel_open.wait(), 10)
        # Mic: the speech fixture reaches the server as 16 kHz PCM with its speech where it was.
        client.play(speech)
        for i in range(100):
            client.send({"type": "ping", "n": i})
        await client.wait_for("hello", timeout_s=10)
        await asyncio.sleep(len(speech) / 2 / rate + 0.3)
        heard = np.frombuffer(b"".join(mic_pcm), dtype="<i2").astype(np.float64)
        assert len(heard) > 0.9 * len(speech) / 2
        envelope = [np.sqrt(np.mean(heard[i : i + 1600] ** 2)) for i in range(0, len(heard) - 1600, 1600)]
        assert max(envelope) > 1000 and min(envelope) < 50, "speech and the silence around it both arrive"
        assert len(server_messages) == 100 and json.loads(server_messages[-1])["n"] == 99

        # Speaker: 3 s of tone; clear() after ~0.5 s of playback.
        loud_before = client.received.loud_frames()
        out_track.push(tone(3000), response_id="r1", item_id="i1")
        await asyncio.wait_for(playing.wait(), 5)
        await asyncio.sleep(0.5)
        cleared = out_track.clear()
        t_clear = time.monotonic()
        await asyncio.sleep(0.5)
        assert cleared is not None and cleared.played_ms >= 400
        span_ms = client.received.sound_span_ms()
        late_ms = span_ms - cleared.played_ms
        stop_wall_ms = (client.received.last_loud_s() - t_clear) * 1000
        print(
            f"\nconnect {connect_ms:.0f} ms; played {cleared.played_ms} ms before clear; heard {span_ms:.1f} ms "
            f"(+{late_ms:.1f} ms after the clear point); last loud frame arrived {stop_wall_ms:.1f} ms after clear; "
            f"{client.received.loud_frames() - loud_before} loud frames"
        )
        assert -5 <= late_ms <= FRAME_MS, "the client hears at most one frame after clear()"
        # Frame i the client decodes is frame i the track produced (one Opus packet per frame, no loss on a
        # veth): sound starts at the started frame and nothing is heard past the first frame after the clear.
        loud = [i for i, r in enumerate(client.received.rms) if r > LOUD_RMS]
        assert loud[0] == started[0].frame
        assert loud[-1] <= cleared.frame
        assert client.received.rms[-1] < 5, "then silence"
    finally:
        await client.close()
        await server.close()
        await owner.close()
    assert not owner.tasks
