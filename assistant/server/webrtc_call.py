"""One WebRTC call (webrtc.py): a peer connection, its session and the tasks that carry
out the session's outputs, from the answer to the close.

A peer counts as gone only when its connection says so: `connectionState` (or the ICE
state) failed or closed, which is how DTLS closing and ICE consent failure surface in
aiortc; the `oai-events` channel closing (SCTP); or its microphone track ending, which
aiortc reports on an RTCP BYE or a closed transport (rtcrtpreceiver.py). Silence never
ends a call: a file player, a telephony gateway or a muted browser may send no RTP at
all for minutes, and still wants its answer and its events. A peer that vanishes without
a goodbye is found by ICE consent freshness (RFC 7675): aioice sends a check every
CONSENT_INTERVAL seconds and closes after CONSENT_FAILURES misses in a row, 6 x 5 s by
default (aioice/ice.py `query_consent`); `webrtc_consent_timeout_s` sets both. Closing
cancels the response, ends every task of the call and frees its session slot. Idle and
duration limits are the session's (`check_limits`), as on the websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aioice.ice
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..audio import pcm16_to_float
from ..engine.api import Response as EngineResponse
from ..engine.api import ResponseDone
from ..realtime import events as ev
from ..realtime.session import (
    CancelResponse,
    ClearPlayback,
    EndSession,
    Output,
    PlayAudio,
    PrefillTurn,
    RealtimeSession,
    ResponseMetrics,
    Send,
    StartResponse,
    TranscribeItem,
    TruncateTurn,
)
from .drain import SHUTTING_DOWN
from .webrtc_media import OutboundAudioTrack, PlaybackEvent, TaskOwner, read_audio, read_video
from .webrtc_offer import Offer

if TYPE_CHECKING:
    from .webrtc import Calls

log = logging.getLogger("assistant.webrtc")

EVENTS_CHANNEL = "oai-events"
MIC_RATE_HZ = 16_000  # the session's (and the VAD's) rate: no second resampling inside the session
# aiortc advertises a=max-message-size:262144 (rtcsctptransport.LOCAL_MAX_MESSAGE_SIZE); a
# client that sends more ignores our SDP. Outbound we stay under the RFC 8841 default a
# peer must accept when it advertises nothing.
MAX_IN_MESSAGE_BYTES = 262_144
MAX_OUT_MESSAGE_BYTES = 65_536
# Before the client's channel opens, at most this many events wait (session.created and
# a few more); later ones are dropped (and counted): a client that never opens the
# channel cannot make us buffer without bound.
PREOPEN_EVENTS = 256
# A client that does not read its events: past this much unsent data the call is closed,
# as a websocket client that stops reading is disconnected.
MAX_CHANNEL_BUFFERED_BYTES = 1 << 20


@dataclass(frozen=True)
class CallLimits:
    """Transport timings (tests shorten them)."""

    connect_timeout_s: float = 30.0  # offer answered but never connected -> slot freed
    watchdog_period_s: float = 0.25
    messages_per_s: float = 50.0  # data-channel flood control: a token bucket...
    message_burst: int = 200  # ...of this depth; excess messages are dropped with one error per second
    error_repeat_s: float = 5.0  # the same microphone-path error is reported at most this often


class _TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.t = float(burst), clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


# ---------------------------------------------------------------------------- one call


class Call:
    """One peer connection and its session. Created by `Calls.open`."""

    def __init__(self, calls: Calls, call_id: str, session: RealtimeSession) -> None:
        self.calls, self.id, self.session = calls, call_id, session
        self.limits = calls.limits
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=calls.ice_servers))
        self.track = OutboundAudioTrack(on_playback=self._on_playback)
        self.tasks = TaskOwner(f"call-{call_id}")
        self.channel = None
        self.closed = asyncio.Event()  # set once close() has finished: tasks ended, peer connection closed
        self._closing = False
        self.close_reason: str | None = None
        self.answer_sdp = ""
        self._pending: deque[str] = deque()
        self.dropped_events = 0
        self._responses: dict[str, EngineResponse] = {}
        self._vad_wake = asyncio.Event()
        self._t_created = time.monotonic()
        self.t_last_mic: float | None = None  # last microphone frame (logs and tests; never a liveness signal)
        self._t_connected: float | None = None
        self._has_mic = False
        self._bucket = _TokenBucket(self.limits.messages_per_s, self.limits.message_burst)
        self._t_flood_error = 0.0
        self._mic_errors: dict[str, float] = {}
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)
        # connectionstatechange may not fire on ICE failure (aiortc #1344, per speaches).
        self.pc.on("iceconnectionstatechange", self._on_state)

    # -- signalling

    async def answer(self, offer: Offer) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        opus_first = _opus_first()
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio" and transceiver.sender.track is None and self.track is not None:
                # One outbound track, on the first audio section. Forcing sendrecv: aiortc
                # answers the intersection with the offer's direction (pipecat, speaches).
                transceiver.sender.replaceTrack(self.track)
                transceiver.direction = "sendrecv"
                transceiver.setCodecPreferences(opus_first)
            elif transceiver.kind == "video":
                transceiver.direction = "recvonly"
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    def start(self) -> None:
        self.dispatch(self.session.start())
        self.tasks.spawn(self._watchdog(), "watchdog")
        self.tasks.spawn(self._vad_loop(), "vad")

    # -- carrying out the session's outputs

    def dispatch(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                self._send_event(out.event)
                if out.tag is not None:
                    self.dispatch(self.session.sent(out.tag))
            elif isinstance(out, PlayAudio):
                self.track.push(out.pcm16, response_id=out.response_id, item_id=out.item_id)
            elif isinstance(out, ClearPlayback):
                self.track.clear()
                # What the listener heard of the item is what the track handed to the encoder.
                self.dispatch(self.session.playback_truncated(out.item_id, self.track.played_ms(out.item_id)))
            elif isinstance(out, StartResponse):
                self._start_response(out)
            elif isinstance(out, CancelResponse):
                response = self._responses.get(out.response_id)
                if response is not None:
                    response.cancel()
            elif isinstance(out, PrefillTurn):
                self.calls.engine.prefill(out.conversation, out.parts)
            elif isinstance(out, TranscribeItem):
                self._start_transcript(out)
            elif isinstance(out, TruncateTurn):
                self._truncate(out)
            elif isinstance(out, ResponseMetrics):
                self.calls.on_metrics(out)
            elif isinstance(out, EndSession):
                self.request_close(out.reason)  # after the `error` saying why, sent just before

    def _truncate(self, cmd: TruncateTurn) -> None:
        try:
            self.calls.engine.truncate(self.session.conversation, cmd.item_id, cmd.audio_end_ms)
        except (KeyError, ValueError) as exc:  # as the websocket adapter reports it
            err = ev.ProtocolError("item_not_found", f"cannot truncate {cmd.item_id!r}: {exc}", param="item_id")
            self._send_event(self.session.enc.error(err))

    def _start_response(self, out: StartResponse) -> None:
        response = self.calls.engine.respond(out.conversation, t_committed=out.t_committed, audio=out.audio)
        self._responses[out.response_id] = response
        self.tasks.spawn(self._pump(out.response_id, response), f"response-{out.response_id}")

    def _start_transcript(self, out: TranscribeItem) -> None:
        key = f"transcribe-{out.item_id}"
        response = self.calls.engine.transcribe(out.job)
        self._responses[key] = response
        self.tasks.spawn(self._pump_transcript(key, out.item_id, response), key)

    async def _pump_transcript(self, key: str, item_id: str, response: EngineResponse) -> None:
        done = False
        try:
            async for event in response:
                self.dispatch(self.session.on_transcription_event(item_id, event))
                done = isinstance(event, ResponseDone)
        finally:
            self._responses.pop(key, None)
            if not done:
                response.cancel()  # the call is closing: stop the engine's job too

    async def _pump(self, response_id: str, response: EngineResponse) -> None:
        """Feed one engine response's events to the session (its audio reaches the track
        through PlayAudio outputs)."""
        done = False
        try:
            async for event in response:
                self.dispatch(self.session.on_engine_event(response_id, event))
                if isinstance(event, ResponseDone):
                    done = True
                    self.track.finish(response_id)  # output_audio_buffer.stopped once played out
        finally:
            self._responses.pop(response_id, None)
            if not done:
                response.cancel()  # the pump was cancelled (call closing): stop the engine too

    def _on_playback(self, event: PlaybackEvent) -> None:
        if event.kind == "started":
            self.dispatch(self.session.output_audio_started(event.response_id))
        elif event.kind == "stopped":
            self.dispatch(self.session.output_audio_stopped(event.response_id))
        # "cleared" is reported through playback_truncated when ClearPlayback is carried out.

    # -- events out

    def _send_event(self, event: dict) -> None:
        text = ev.dumps(event)
        if len(text.encode()) > MAX_OUT_MESSAGE_BYTES:
            # e.g. conversation.item.retrieved of a long audio item: base64 audio belongs on
            # the websocket, not on a data channel.
            err = ev.ProtocolError("event_too_large", f"{event.get('type')} is too large for the data channel")
            text = ev.dumps(self.session.enc.error(err))
        channel = self.channel
        if channel is None or channel.readyState == "connecting":
            if len(self._pending) < PREOPEN_EVENTS:
                self._pending.append(text)
            else:
                self.dropped_events += 1
        elif channel.readyState == "open":
            if channel.bufferedAmount > MAX_CHANNEL_BUFFERED_BYTES:
                self.request_close("client does not read its events")
                return
            channel.send(text)

    def _flush_pending(self) -> None:
        while self._pending and self.channel is not None and self.channel.readyState == "open":
            self.channel.send(self._pending.popleft())

    # -- events in

    def _on_datachannel(self, channel) -> None:
        if channel.label != EVENTS_CHANNEL or self.channel is not None:
            log.info("call %s: closing unexpected data channel %r", self.id, channel.label)
            channel.close()
            return
        self.channel = channel
        channel.on("open", self._flush_pending)
        channel.on("message", self._on_message)
        channel.on("close", lambda: self.request_close("events channel closed"))
        self._flush_pending()

    def _on_message(self, message: str | bytes) -> None:
        if len(message) > MAX_IN_MESSAGE_BYTES:
            self._client_error(
                "message_too_large", f"data-channel messages are limited to {MAX_IN_MESSAGE_BYTES} bytes"
            )
            return
        if not self._bucket.take():
            now = time.monotonic()
            if now - self._t_flood_error >= 1.0:
                self._t_flood_error = now
                self._client_error("rate_limit_exceeded", "too many events; some were dropped")
            return
        self.dispatch(self.session.receive_text(message))

    def _client_error(self, code: str, message: str) -> None:
        self._send_event(self.session.enc.error(ev.ProtocolError(code, message)))

    # -- media in

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and not self._has_mic:
            self._has_mic = True
            self.tasks.spawn(self._microphone(track), "microphone")
        elif track.kind == "video":
            fps = self.calls.settings.image_fps
            self.tasks.spawn(read_video(track, self._on_camera, max_fps=fps), "camera")
        else:
            self.tasks.spawn(_drain(track), f"drain-{track.kind}")

    async def _microphone(self, track: MediaStreamTrack) -> None:
        await read_audio(track, self._on_mic, sample_rate=MIC_RATE_HZ)
        # The remote track ends only on an RTCP BYE or a closed transport (aiortc's
        # RTCRtpReceiver stops its decoder then): the peer left. A client that merely stops
        # sending (its file ended, its mic muted) never gets here.
        self.request_close("the peer ended its microphone stream (RTCP BYE or transport closed)")

    def _on_mic(self, pcm16: bytes) -> None:
        self.t_last_mic = time.monotonic()
        outputs = self.session.append_audio(pcm16_to_float(pcm16), MIC_RATE_HZ)
        self.dispatch(self._throttle_mic_errors(outputs))
        self._vad_wake.set()

    def _throttle_mic_errors(self, outputs: list[Output]) -> list[Output]:
        """The microphone appends 50 times a second, so an error it causes (a full input
        buffer in manual mode) would repeat 50 times a second: pass each code once per
        `error_repeat_s`."""
        now, kept = time.monotonic(), []
        for out in outputs:
            if isinstance(out, Send) and out.event.get("type") == "error":
                code = out.event.get("error", {}).get("code", "")
                if now - self._mic_errors.get(code, -1e9) < self.limits.error_repeat_s:
                    continue
                self._mic_errors[code] = now
            kept.append(out)
        return kept

    def _on_camera(self, rgb: np.ndarray, t: float) -> None:
        self.dispatch(self.session.append_frame(rgb))

    async def _vad_loop(self) -> None:
        """Score new microphone audio with this call's Silero state, batched with the other
        calls' on the VAD thread (vadbatch.py), never on the event loop."""
        model = await self.calls.vad.new_model()
        while True:
            await self._vad_wake.wait()
            self._vad_wake.clear()
            while (work := self.session.take_vad_work()) is not None:
                probs = await self.calls.vad.probabilities(model, work.samples)
                self.dispatch(self.session.on_vad(work, probs))

    # -- liveness and closing

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected" and self._t_connected is None:
            self._t_connected = time.monotonic()
        if self.pc.connectionState in ("failed", "closed") or self.pc.iceConnectionState in ("failed", "closed"):
            self.request_close(f"connection {self.pc.connectionState}, ICE {self.pc.iceConnectionState}")

    async def _watchdog(self) -> None:
        """A call that never connects frees its slot; the session's duration and idle
        limits end it as they end a websocket session. No media timeout: see the module
        docstring."""
        limits = self.limits
        while self.close_reason is None:
            await asyncio.sleep(limits.watchdog_period_s)
            if self._t_connected is None and time.monotonic() - self._t_created > limits.connect_timeout_s:
                self.request_close("never connected")
            else:
                self.dispatch(self.session.check_limits())

    def busy(self) -> bool:
        """An answer in progress: being generated, or its audio still playing (drain.py)."""
        return self.session.responding or self.track.playing_response_id is not None or self.track.queued_ms > 0

    async def go_away(self) -> None:
        """Server shutdown: hang up (RTCP BYE, DTLS close)."""
        await self.close(SHUTTING_DOWN)

    def request_close(self, reason: str) -> None:
        """Close from a callback: the close runs as a task owned by the registry."""
        if self.close_reason is None:
            self.close_reason = reason
            self.calls.tasks.spawn(self.close(), f"close-{self.id}")

    async def close(self, reason: str = "closed") -> None:
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        self.close_reason = self.close_reason or reason
        log.info("call %s closing: %s", self.id, self.close_reason)
        self.dispatch(self.session.close())  # cancels the active response
        self.calls.engine.forget(self.session.conversation)  # its KV cache, now rather than at eviction
        for response in list(self._responses.values()):
            response.cancel()
        self.calls.forget(self)
        self.track.stop()
        try:
            await self.tasks.close()
            log.debug("call %s: tasks ended", self.id)
            await self.pc.close()
            log.debug("call %s: peer connection closed", self.id)
        finally:
            self.closed.set()


def set_consent_timeout(timeout_s: float) -> None:
    """ICE consent freshness (RFC 7675) for every peer connection of this process: aioice
    checks every CONSENT_INTERVAL s (+-20 %), each check failing after 0.5 s without an
    answer (stun.RETRY_RTO, no retransmission), and closes after CONSENT_FAILURES misses
    in a row. aioice has no per-connection knob, only these module constants, so the
    setting is process-wide. 30 s gives aioice's own 5 s x 6 (detection in 28-40 s)."""
    if not timeout_s > 0:
        raise ValueError(f"webrtc_consent_timeout_s must be positive, got {timeout_s}")
    if not hasattr(aioice.ice, "CONSENT_INTERVAL") or not hasattr(aioice.ice, "CONSENT_FAILURES"):
        raise RuntimeError("this aioice release has no CONSENT_INTERVAL/CONSENT_FAILURES: cannot set the timeout")
    interval = min(5.0, timeout_s / 6)
    aioice.ice.CONSENT_INTERVAL = interval
    aioice.ice.CONSENT_FAILURES = max(1, math.ceil(timeout_s / (interval + 0.5)))


async def _drain(track: MediaStreamTrack) -> None:
    """Read and drop a track we do not use, so that aiortc's receiver queue stays empty."""
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


def _opus_first() -> list:
    codecs = RTCRtpSender.getCapabilities("audio").codecs
    return sorted(codecs, key=lambda c: c.mimeType.lower() != "audio/opus")
