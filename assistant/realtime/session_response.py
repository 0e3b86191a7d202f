"""The output side of a session: the response lifecycle, engine events, and what the
transport reports back (writes, WebRTC playback). A mixin of `RealtimeSession` (see
session.py); it shares the session's state."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from ..engine.api import (
    OUTPUT_SAMPLE_RATE,
    VOICES,
    AudioChunk,
    ResponseDone,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallDone,
    ToolCallStarted,
    new_id,
)
from . import events as ev
from . import tools as tools_mod
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
    # Tool calls: with tools in play the message item is announced at the first speech (a
    # turn may be calls only); it is closed when the first call opens (calls follow speech).
    message: str = "pending"  # "pending" | "open" | "closed" | "none"
    calls: list[dict[str, Any]] = field(default_factory=list)  # per call: item id, call id, name, output index
    outputs: list[dict[str, Any]] = field(default_factory=list)  # output items, in order, as they were done


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
        tools = self._response_tools(event)
        self._create_response(
            t, event.output_modalities, event.instructions, event.max_output_tokens, voice, event.metadata, tools
        )

    def _response_tools(self, event: ev.ResponseCreate):
        """response.create's tools / tool_choice / parallel_tool_calls, for this response only; None: the session's."""
        if event.tools is None and event.tool_choice is None and event.parallel_tool_calls is None:
            return None
        conv = self.conversation
        tools = conv.tools if event.tools is None else tools_mod.parse_tools(event.tools, "response.tools")
        choice = tools_mod.resolve_choice(
            conv.tool_choice, event.tool_choice, event.parallel_tool_calls, "response.tool_choice"
        )
        tools_mod.check_choice(tools, choice, "response.tool_choice")
        return tools, choice

    def _create_response(
        self,
        t_committed: float | None,
        modalities: tuple[str, ...] | None = None,
        instructions: str | None = None,
        max_tokens: int | str | None = None,
        voice: str | None = None,
        metadata: dict[str, str] | None = None,
        tools=None,
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
        if tools is not None:
            r.restore["tools"] = (conv.tools, conv.tool_choice)
            conv.tools, conv.tool_choice = tools
        self._active = r
        self._kinds[r.item_id] = "audio" if audio else "text"
        mods = ["audio"] if audio else ["text"]
        self._send("response.created", response=self._response_json(r, "in_progress", []))
        if not conv.tools or conv.tool_choice.mode == "none":
            self._announce_message(r)  # no call possible: the message item goes out at once, as always
        self._out.append(StartResponse(r.id, conv, r.t_committed, audio))
        log.debug("session %s: response %s (%s)", self.id, r.id, mods)

    def _announce_message(self, r: _Response) -> None:
        r.message = "open"
        self._items.append(r.item_id)
        self._roles[r.item_id] = "assistant"
        previous = self._items[-2] if len(self._items) > 1 else None
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
        part = {"type": "audio", "transcript": ""} if r.audio else {"type": "text", "text": ""}
        self._send("response.content_part.added", **self._where(r), part=part)

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
        if isinstance(event, (ToolCallStarted, ToolCallDelta, ToolCallDone)):
            self._call_event(r, event)
        elif isinstance(event, TextDelta):
            if r.cancel_reason is None:
                if r.message == "pending":
                    self._announce_message(r)
                r.text.append(event.text)
                kind = "response.output_audio_transcript.delta" if r.audio else "response.output_text.delta"
                self._send(kind, **self._where(r), delta=event.text)
        elif isinstance(event, AudioChunk):
            if r.cancel_reason is None and r.audio:
                if r.message == "pending":
                    self._announce_message(r)
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

    def _close_message(self, r: _Response, item_status: str, kept: bool) -> None:
        """The message item's closing events (once): its text and audio are final."""
        r.message = "closed"
        text = "".join(r.text)
        if r.audio:
            self._send("response.output_audio.done", **self._where(r))
            self._send("response.output_audio_transcript.done", **self._where(r), transcript=text)
            part = {"type": "audio", "transcript": text}
        else:
            self._send("response.output_text.done", **self._where(r), text=text)
            part = {"type": "text", "text": text}
        self._send("response.content_part.done", **self._where(r), part=part)
        content = {"type": "output_audio", "transcript": text} if r.audio else {"type": "output_text", "text": text}
        item = {
            "id": r.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": item_status,
            "content": [content],
        }
        self._send("response.output_item.done", response_id=r.id, output_index=0, item=item)
        if kept:
            self._send("conversation.item.done", item=item)
        else:  # failed before any turn existed: the announced item is gone
            self._items.remove(r.item_id)
            self._send("conversation.item.deleted", item_id=r.item_id)
        r.outputs.append(item)

    def _call_event(self, r: _Response, event) -> None:
        """Engine call events -> the function_call item's events (openai-python
        RealtimeServerEvent: output_item.added, function_call_arguments.delta/.done,
        output_item.done). A call follows the speech, so the message item closes first."""
        if isinstance(event, ToolCallStarted):
            if r.message == "open":
                self._close_message(r, "completed", kept=True)
            r.message = "closed" if r.message == "closed" else "none"
            item_id, call_id = new_id("item"), new_id("call")
            index = len(r.outputs)
            r.calls.append({"item_id": item_id, "call_id": call_id, "name": event.name, "output_index": index})
            previous = self._items[-1] if self._items else None
            self._items.append(item_id)
            self._roles[item_id] = "assistant"
            self._call_ids[call_id] = item_id
            item = tools_mod.call_item(item_id, ToolCall(event.name, "", call_id), "in_progress")
            self._call_items[item_id] = item
            self._send("response.output_item.added", response_id=r.id, output_index=index, item=item)
            self._send("conversation.item.added", previous_item_id=previous, item=item)
            return
        call = r.calls[event.index]
        where = {"response_id": r.id, "item_id": call["item_id"], "output_index": call["output_index"]}
        if isinstance(event, ToolCallDelta):
            if r.cancel_reason is None:
                self._send(
                    "response.function_call_arguments.delta", **where, call_id=call["call_id"], delta=event.delta
                )
            return
        call["arguments"], call["complete"] = event.arguments, event.complete
        self._send(
            "response.function_call_arguments.done",
            **where,
            call_id=call["call_id"],
            name=event.name,
            arguments=event.arguments,
        )
        item = tools_mod.call_item(
            call["item_id"],
            ToolCall(event.name, event.arguments, call["call_id"]),
            "completed" if event.complete else "incomplete",
        )
        self._call_items[call["item_id"]] = item
        self._send("response.output_item.done", response_id=r.id, output_index=call["output_index"], item=item)
        self._send("conversation.item.done", item=item)
        r.outputs.append(item)

    def _finish(self, r: _Response, done: ResponseDone) -> None:
        if done.turn is not None:
            done.turn.id = r.item_id  # the engine names its turn; the client knows ours
            for call, info in zip(done.turn.tool_calls, r.calls, strict=False):
                call.call_id = info["call_id"]  # the history's calls answer to the ids the client got
        if done.status == "failed" and done.error is not None:
            err = ev.ProtocolError(done.error.code, done.error.message, type="server_error")
            self._error(err)
        status = {"completed": "completed", "cancelled": "cancelled"}.get(done.status, "failed")
        cut = any(not c.get("complete", True) for c in r.calls)
        if status == "completed" and cut:
            status = "incomplete"  # a call cut off by max_output_tokens (its partial arguments are in .done)
        if r.message == "pending" and not r.calls:
            self._announce_message(r)  # a response that said nothing still has its (empty) message
        if r.message == "open":
            self._close_message(r, "completed" if status == "completed" else "incomplete", done.turn is not None)
        if done.turn is None:
            for info in r.calls:  # a failed answer leaves no trace in the history
                if info["item_id"] in self._items:
                    self._items.remove(info["item_id"])
                    self._send("conversation.item.deleted", item_id=info["item_id"])
        r.latency = self._latency(r, done)
        details = None
        if status == "incomplete":
            details = {"type": "incomplete", "reason": "max_output_tokens"}
        elif status == "cancelled":
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
            "response.done", ("done", r.id), response=self._response_json(r, status, r.outputs, details, usage)
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
        if "tools" in r.restore:
            conv.tools, conv.tool_choice = r.restore["tools"]
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
