"""An aiortc peer for tests: a microphone track that plays a WAV, a recorder of the audio
it receives (with arrival times), and the `oai-events` data channel.

Used in-process by the WebRTC tests, and as a script (`python tests/webrtc_peer.py
URL WAV`) by the test that kills a client without a goodbye. Only ever used inside the
test's private network namespace, always with `iceServers=[]`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack

from assistant.server.webrtc_media import OutboundAudioTrack, TaskOwner

FIXTURES = Path(__file__).parent / "fixtures"
LOUD_RMS = 200.0  # int16 RMS above which a received 20 ms frame counts as sound


def read_wav(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1, path
        return w.readframes(w.getnframes()), w.getframerate()


@dataclass
class Received:
    """The decoded audio this peer received: channel 0 at 48 kHz, plus per-frame arrival times and RMS."""

    sample_rate: int = 48_000
    chunks: list[np.ndarray] = field(default_factory=list)
    arrival_s: list[float] = field(default_factory=list)
    rms: list[float] = field(default_factory=list)

    def add(self, samples: np.ndarray, t: float) -> None:
        self.chunks.append(samples)
        self.arrival_s.append(t)
        self.rms.append(float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0)

    def pcm(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)

    def loud_frames(self) -> int:
        return sum(r > LOUD_RMS for r in self.rms)

    def first_loud_s(self) -> float | None:
        return next((t for t, r in zip(self.arrival_s, self.rms, strict=True) if r > LOUD_RMS), None)

    def last_loud_s(self) -> float | None:
        return next(
            (t for t, r in zip(reversed(self.arrival_s), reversed(self.rms), strict=True) if r > LOUD_RMS), None
        )

    def sound_span_ms(self, threshold: int = 300) -> float:
        """From the first to the last sample above `threshold`, in ms of stream time."""
        pcm = np.abs(self.pcm().astype(np.int32))
        idx = np.flatnonzero(pcm > threshold)
        return 0.0 if len(idx) == 0 else (idx[-1] - idx[0]) * 1000 / self.sample_rate


class CameraTrack(VideoStreamTrack):
    """A camera that shows the given RGB frames in a loop, one per 100 ms, at 30 fps."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        super().__init__()
        self.frames = frames
        self.t0 = time.monotonic()

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        index = int((time.monotonic() - self.t0) * 10) % len(self.frames)
        frame = av.VideoFrame.from_ndarray(self.frames[index], format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class ClientPeer:
    """One test client: mic out, audio in, events on `oai-events`."""

    def __init__(
        self,
        *,
        mic_rate: int = 16_000,
        with_audio_in: bool = True,
        camera: list[np.ndarray] | None = None,
        configuration: RTCConfiguration | None = None,  # e.g. a TURN server, relay only (tests/test_deploy_netns.py)
    ) -> None:
        self.pc = RTCPeerConnection(configuration or RTCConfiguration(iceServers=[]))
        if camera:
            self.pc.addTrack(CameraTrack(camera))
        self.tasks = TaskOwner("client")
        self.mic = OutboundAudioTrack(sample_rate=mic_rate, on_playback=self._on_mic_playback)
        self._mic_done: set[str] = set()
        self._mic_event = asyncio.Event()
        self.pc.addTrack(self.mic)
        self.received = Received()
        self.events: list[dict] = []
        self._event_added = asyncio.Event()
        self.channel = self.pc.createDataChannel("oai-events")
        self.channel_open = asyncio.Event()
        self.channel.on("open", self.channel_open.set)
        self.channel.on("message", self._on_message)
        self.connected = asyncio.Event()
        self.pc.on("connectionstatechange", self._on_state)
        if with_audio_in:
            self.pc.on("track", self._on_track)

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.connected.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.tasks.spawn(self._record(track), "record-audio")

    async def _record(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            # aiortc's Opus decoder gives s16 interleaved stereo at 48 kHz: keep channel 0.
            self.received.add(frame.to_ndarray().reshape(-1)[::2].copy(), time.monotonic())

    def _on_message(self, message: str | bytes) -> None:
        event = json.loads(message)
        event["_t"] = time.monotonic()
        self.events.append(event)
        self._event_added.set()

    def _on_mic_playback(self, event) -> None:
        if event.kind == "stopped":
            self._mic_done.add(event.response_id)
            self._mic_event.set()

    def play(self, pcm16: bytes, tag: str = "mic") -> None:
        """Queue audio on the microphone (played in real time after what is queued)."""
        self.mic.push(pcm16, response_id=tag, item_id=tag)
        self.mic.finish(tag)

    async def played(self, tag: str = "mic", *, timeout_s: float = 60.0) -> None:
        """Until the microphone has sent all of `tag` (later than its duration on a loaded machine)."""
        async with asyncio.timeout(timeout_s):
            while tag not in self._mic_done:
                self._mic_event.clear()
                await self._mic_event.wait()

    def play_silence(self, ms: int) -> None:
        self.play(bytes(self.mic.sample_rate * ms // 1000 * 2), "silence")

    def send(self, event: dict) -> None:
        self.channel.send(json.dumps(event))

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())  # waits for ICE gathering
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    async def wait_for(self, event_type: str, *, timeout_s: float = 30.0, after: int = 0) -> dict:
        """The first event of this type at index >= `after`, waiting for it if needed."""
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events[after:]:
                if event["type"] == event_type:
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {event_type} within {timeout_s} s; got {self.types()}")
            self._event_added.clear()
            try:
                await asyncio.wait_for(self._event_added.wait(), remaining)
            except TimeoutError:
                pass

    async def close(self) -> None:
        await self.pc.close()
        await self.tasks.close()


async def _main(url: str, wav: str) -> None:
    """Connect, play the WAV as the microphone, then keep sending silence until killed."""
    import httpx

    client = ClientPeer()
    async with httpx.AsyncClient() as http:
        reply = await http.post(url, content=await client.offer(), headers={"Content-Type": "application/sdp"})
        reply.raise_for_status()
    await client.accept(reply.text)
    await asyncio.wait_for(client.connected.wait(), 30)
    pcm, _ = read_wav(Path(wav))
    client.play(pcm)
    print("connected", reply.headers["location"].rsplit("/", 1)[1], flush=True)
    while True:
        await client.wait_for("response.created", timeout_s=3600)
        print("response", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2]))
