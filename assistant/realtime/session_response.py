"""The output side of a session: the response lifecycle, engine events, and what the
transport reports back (writes, WebRTC playback). A mixin of `RealtimeSession` (see
session.py); it shares the session's state."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from ..engine.api import OUTPUT_SAMPLE_RATE, VOICES, AudioChunk, ResponseDone, TextDelta, new_id
from . import events as ev
from .commands import CancelResponse, ClearPlayback, Output, PlayAudio, ResponseMetrics, StartResponse

log = logging.getLogger("assistant.realtime")


@dataclass
class _Response:
    id: str
    item_id: str
    audio: bool
    t_committed: float
    text: list[str] = field(default_factory=list)
    samples_sent: int = 0
    cancel_reason: str | None = None
    t_first_audio_sent: float | None = None
    t_first_audio_received: float | None = None  # the engine's first chunk reached the session
    latency: dict[str, Any] | None = None
    restore: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] | None = None


def resolve_voice(name: str, param: str) -> str:
    """A client's voice name -> ours (case-insensitive), or `invalid_value` naming `param`."""
    voice = next((v for v in VOICES if v.lower() == name.lower()), None)
    if voice is None:
        raise ev.ProtocolError("invalid_value", f"unknown voice {name!r}; use one of {list(VOICES)}", param=param)
    return voice


class ResponseSide:
    # ------------------------------------------------------------------ responses

    def _response_create(self, event: ev.ResponseCreate) -> None:
        if self.session_type == "transcription":
            raise ev.ProtocolError("invalid_value", "a transcription session creates no responses", param="type")
        self._check_interpreter(self.interpreter, event.output_modalities or self.output_modalities)
        if self._active is not None:
            raise ev.ProtocolError(
                "conversation_already_has_active_response",
                f"response {self._active.id} is in progress; cancel it or wait for response.done",
            )
        if event.output_modalities is not None:
            self._check_audio_output(event.output_modalities, "response.output_modalities")
        voice = None if event.voice is None else resolve_voice(event.voice, "response.audio.output.voice")
        t = self._t_last_commit if self._t_last_commit is not None else self.clock()
        self._create_response(
            t, event.output_modalities, event.instructions, event.max_output_tokens, voice, event.metadata
        )

    def _create_response(
        self,
        t_committed: float | None,
        modalities: tuple[str, ...] | None = None,
        instructions: str | None = None,
        max_tokens: int | str | None = None,
        voice: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self._t_last_commit = None
        audio = (modalities or self.output_modalities) == ("audio",)
        r = _Response(new_id("resp"), new_id("item"), audio, t_committed if t_committed is not None else self.clock())
        r.metadata = metadata
        conv = self.conversation
        if instructions is not None:
            r.restore["instructions"] = conv.instructions
            conv.instructions = instructions
        if voice is not None:
            r.restore["voice"] = conv.voice
            conv.voice = voice
        # This response's max_output_tokens ("inf": the server's cap), else the session's; never above the cap.
        cap = conv.sampling.max_tokens
        limit = cap if max_tokens == "inf" else min(max_tokens or self.max_output_tokens, cap)
        if limit != conv.sampling.max_tokens:
            r.restore["sampling"] = conv.sampling
            conv.sampling = replace(conv.sampling, max_tokens=limit)
        self._active = r
        self._items.append(r.item_id)
        self._roles[r.item_id] = "assistant"
        self._kinds[r.item_id] = "audio" if audio else "text"
        previous = self._items[-2] if len(self._items) > 1 else None
        mods = ["audio"] if audio else ["text"]
        self._send("response.created", response=self._response_json(r, "in_progress", []))
        item = {
            "id": r.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        self._send("response.output_item.added", response_id=r.id, output_index=0, item=item)
        self._send("conversation.item.added", previous_item_id=previous, item=item)
        part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        self._send("response.content_part.added", **self._where(r), part=part)
        self._out.append(StartResponse(r.id, conv, r.t_committed, audio))
        log.debug("session %s: response %s (%s)", self.id, r.id, mods)

    def _response_json(self, r: _Response, status: str, output: list, details: dict | None = None, usage=None):
        out = {
            "object": "realtime.response",
            "id": r.id,
            "status": status,
            "status_details": details,
            "output": output,
            "conversation_id": self.conversation.id,
            "output_modalities": ["audio"] if r.audio else ["text"],
            "audio": {
                "output": {
                    "format": {"type": "audio/pcm", "rate": OUTPUT_SAMPLE_RATE},
                    "voice": self.conversation.voice,
                }
            },
            "max_output_tokens": self.conversation.sampling.max_tokens,
            "metadata": r.metadata,
        }
        if usage is not None:
            out["usage"] = usage
        return out

    @staticmethod
    def _where(r: _Response) -> dict[str, Any]:
        return {"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0}

    def _response_cancel(self, event: ev.ResponseCancel) -> None:
        active = self._active
        if active is None or (event.response_id and event.response_id != active.id):
            raise ev.ProtocolError(
                "response_cancel_not_active", "there is no such response in progress", param="response_id"
            )
        if active.cancel_reason is None:
            active.cancel_reason = "client_cancelled"
            self._out.append(CancelResponse(active.id))

    def _output_audio_clear(self, event: ev.OutputAudioClear) -> None:
        if not self.webrtc:
            raise ev.ProtocolError(
                "unsupported_feature",
                "output_audio_buffer.clear is for WebRTC; over websocket the client owns playback",
            )
        if self._playing is not None:
            self._out.append(ClearPlayback(self._playing, self._last_assistant() or ""))

    # ------------------------------------------------------------------ engine events

    def on_engine_event(self, response_id: str, event: Any) -> list[Output]:
        r = self._active
        if r is None or r.id != response_id:
            return self._drain()
        if isinstance(event, TextDelta):
            if r.cancel_reason is None:
                r.text.append(event.text)
                kind = "response.output_audio_transcript.delta" if r.audio else "response.output_text.delta"
                self._send(kind, **self._where(r), delta=event.text)
        elif isinstance(event, AudioChunk):
            if r.cancel_reason is None and r.audio:
                self._audio_out(r, event.pcm16)
        elif isinstance(event, ResponseDone):
            self._finish(r, event)
        return self._drain()

    def _audio_out(self, r: _Response, pcm16: bytes) -> None:
        first = r.samples_sent == 0
        if first:
            r.t_first_audio_received = self.clock()
        r.samples_sent += len(pcm16) // 2
        self._audio_sent_ms[r.item_id] = r.samples_sent * 1000.0 / OUTPUT_SAMPLE_RATE
        if self.webrtc:
            self._out.append(PlayAudio(r.id, r.item_id, pcm16))
        else:
            tag = ("first_audio", r.id) if first else None
            self._send("response.output_audio.delta", tag, **self._where(r), delta=ev.b64(pcm16))

    def _finish(self, r: _Response, done: ResponseDone) -> None:
        if done.turn is not None:
            done.turn.id = r.item_id  # the engine names its turn; the client knows ours
        text = "".join(r.text)
        if done.status == "failed" and done.error is not None:
            err = ev.ProtocolError(done.error.code, done.error.message, type="server_error")
            self._error(err)
        if r.audio:
            self._send("response.output_audio.done", **self._where(r))
            self._send("response.output_audio_transcript.done", **self._where(r), transcript=text)
            part = {"type": "audio", "transcript": text}
        else:
            self._send("response.output_text.done", **self._where(r), text=text)
            part = {"type": "text", "text": text}
        self._send("response.content_part.done", **self._where(r), part=part)
        status = {"completed": "completed", "cancelled": "cancelled"}.get(done.status, "failed")
        content = {"type": "output_audio", "transcript": text} if r.audio else {"type": "output_text", "text": text}
        item_status = "completed" if status == "completed" else "incomplete"
        item = {
            "id": r.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": item_status,
            "content": [content],
        }
        self._send("response.output_item.done", response_id=r.id, output_index=0, item=item)
        if done.turn is not None:
            self._send("conversation.item.done", item=item)
        else:  # failed before any turn existed: the announced item is gone
            self._items.remove(r.item_id)
            self._send("conversation.item.deleted", item_id=r.item_id)
        r.latency = self._latency(r, done)
        details = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": r.cancel_reason or "client_cancelled"}
        elif status == "failed":
            error = done.error
            details = {
                "type": "failed",
                "error": {
                    "type": "server_error",
                    "code": error.code if error else "engine_error",
                    "message": error.message if error else "",
                },
            }
        stats = done.stats
        usage = {
            "total_tokens": stats.prefill_tokens + stats.text_tokens,
            "input_tokens": stats.prefill_tokens,
            "output_tokens": stats.text_tokens,
        }
        self._done_latency[r.id] = (status, r.latency)
        event = self._send(
            "response.done", ("done", r.id), response=self._response_json(r, status, [item], details, usage)
        )
        event["latency"] = r.latency  # an extra key: stock clients ignore it (the SDK keeps unknown keys)
        self._end_response(r)

    def _latency(self, r: _Response, done: ResponseDone) -> dict[str, Any]:
        """The `latency` extra of response.done. `audio_ttfp_ms` runs from the commit or
        VAD endpoint to the first audio packet the transport actually sent; it is filled
        in by `sent()` (the writer serialises response.done after that packet)."""
        stats = done.stats
        lat = stats.to_dict()
        lat["engine_audio_ttfp_ms"] = lat.pop("audio_ttfp_ms")
        lat["audio_ttfp_ms"] = None
        lat["e2e_ms"] = None if stats.t_done is None else round((stats.t_done - r.t_committed) * 1000, 3)
        lat["t_committed_s"] = r.t_committed
        lat["t_engine_first_audio_s"] = stats.t_first_audio  # stamped by the engine's worker
        lat["t_first_audio_received_s"] = r.t_first_audio_received  # the chunk reached this session
        lat["t_first_audio_sent_s"] = None
        if r.t_first_audio_sent is not None:
            self._fill_ttfp(lat, r.t_committed, r.t_first_audio_sent)
        return lat

    @staticmethod
    def _fill_ttfp(lat: dict[str, Any], t_committed: float, t_sent: float) -> None:
        lat["t_first_audio_sent_s"] = t_sent
        lat["audio_ttfp_ms"] = round((t_sent - t_committed) * 1000, 3)
        upstream = lat.get("upstream_ttfp_ms")  # the upstream engine: the upstream's own figure
        if upstream is not None:
            # What this front end adds to the first packet: ours (commit here -> our write)
            # minus the upstream's (its commit -> its write), i.e. our share of both hops.
            lat["frontend_added_ms"] = round(lat["audio_ttfp_ms"] - upstream, 3)

    def _end_response(self, r: _Response) -> None:
        conv = self.conversation
        if "instructions" in r.restore:
            conv.instructions = r.restore["instructions"]
        if "sampling" in r.restore:
            conv.sampling = r.restore["sampling"]
        if "voice" in r.restore:
            conv.voice = r.restore["voice"]
        self._active = None
        deferred, self._deferred = self._deferred, []
        for fn in deferred:
            fn()
        self._enforce_max_items()  # the engine appended the assistant turn
        if self._auto_response is not None:
            t, self._auto_response = self._auto_response, None
            self._create_response(t)

    # ------------------------------------------------------------------ transport feedback

    def sent(self, tag: tuple[str, str]) -> list[Output]:
        """The transport wrote a tagged event (see `Send.tag`)."""
        kind, response_id = tag
        t = self.clock()
        if kind == "first_audio":
            self._first_audio_at(response_id, t)
        elif kind == "done":
            entry = self._done_latency.pop(response_id, None)
            if entry is not None:
                self._out.append(ResponseMetrics(*entry))
        return self._drain()

    def _first_audio_at(self, response_id: str, t: float) -> None:
        self._guard_until = t + self.settings.echo_guard_ms / 1000.0
        r = self._active
        if r is not None and r.id == response_id:
            r.t_first_audio_sent = t
        lat = self._done_latency.get(response_id, (None, None))[1]
        if lat is not None and lat["audio_ttfp_ms"] is None:
            self._fill_ttfp(lat, lat["t_committed_s"], t)

    def output_audio_started(self, response_id: str) -> list[Output]:
        """WebRTC: the first frame of this response's audio went out on the track."""
        self._playing = response_id
        self._first_audio_at(response_id, self.clock())
        self._send("output_audio_buffer.started", response_id=response_id)
        return self._drain()

    def output_audio_stopped(self, response_id: str) -> list[Output]:
        """WebRTC: this response's audio finished playing."""
        if self._playing == response_id:
            self._playing = None
        self._send("output_audio_buffer.stopped", response_id=response_id)
        return self._drain()

    def playback_truncated(self, item_id: str, played_ms: int) -> list[Output]:
        """WebRTC: after `ClearPlayback`, the adapter reports how much of the item was
        really played; the history keeps only that."""
        response_id = self._playing or (self._active.id if self._active else "")
        self._playing = None
        self._send("output_audio_buffer.cleared", response_id=response_id)
        if item_id:
            try:
                self._truncate(item_id, played_ms)
            except ev.ProtocolError as err:
                self._error(err)
        return self._drain()
