"""The websocket transport: a thin adapter between a websocket and a `RealtimeSession`.

It makes no protocol decisions; it reads client messages into the session, writes the
session's events out, runs the session's commands (engine calls, VAD) and nothing else.

Tasks, all owned by one `WsConnection`, named, and cancelled and awaited on close:
- reader: websocket -> session.receive_text();
- writer: outbound queue -> websocket; reports tagged writes back (`session.sent`);
- vad: scores the session's VAD work on the VAD thread (never on the event loop);
- one pump per running response: engine events -> session.on_engine_event().

Bounds and policies:
- outbound queue: `settings.ws_outbound_queue_events` events. Dropping protocol events
  would desynchronise the client (a missing audio delta is a gap, a missing
  response.done a hang), so a client that does not read is disconnected instead
  (close 1008, "client too slow"), as websockets' own write-buffer limit would.
- inbound: one message at a time; an event is at most 15 MiB (the codec enforces it,
  uvicorn's `ws_max_size` is set above that so the client gets an `error`, not a close).
- VAD work: the session hands out all pending windows at once, so a client appending
  faster than real time is scored in batches; the input buffer's limit bounds memory.
- limits: a watchdog asks the session every `LIMITS_PERIOD_S` whether the session is
  past its duration or idle (`check_limits`); on `EndSession` the events already queued
  (the `error` saying why) are written, then the socket closes with 1000.

Before the upgrade is accepted: the Origin check, then the API key (or a client secret);
either failing answers HTTP 403 (a close before accept). Then admission (session limit).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from ..realtime import events as ev
from ..realtime.session import (
    CancelResponse,
    EndSession,
    Output,
    PrefillTurn,
    RealtimeSession,
    ResponseMetrics,
    Send,
    StartResponse,
    TranscribeItem,
    TruncateTurn,
)
from ..realtime.vad import SileroModel
from .app import MEMORY_REFUSAL_CODE, memory_refusal
from .drain import SHUTTING_DOWN

log = logging.getLogger("assistant.ws")

CLOSE_POLICY = 1008  # RFC 6455: policy violation (here: a client too slow to read its events)
CLOSE_BUSY = 1013  # try again later (session limit)
CLOSE_GOING_AWAY = 1001  # the server is shutting down (drain.py)
LIMITS_PERIOD_S = 0.25  # how often the session's duration and idle limits are checked


async def serve_websocket(websocket: WebSocket, state: Any) -> None:
    from .auth import authorized, origin_allowed

    settings = state.settings
    if not origin_allowed(settings, websocket.headers):
        log.info("websocket refused: origin not allowed")
        await websocket.close(code=CLOSE_POLICY, reason="origin not allowed")  # before accept: HTTP 403
        return
    if not authorized(settings, websocket.headers, client_secrets=state.client_secrets):
        await websocket.close(code=CLOSE_POLICY, reason="invalid API key")
        return
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
    drain = getattr(state, "drain", None)
    if (drain is not None and drain.draining) or not state.sessions.admit():
        why = SHUTTING_DOWN if drain is not None and drain.draining else state.sessions.refusal()
        err = ev.ProtocolError("session_limit_reached", why, type="server_error")
        await websocket.send_text(ev.dumps(ev.Encoder().error(err)))
        await websocket.close(code=CLOSE_BUSY, reason="session limit reached")
        return
    refusal = memory_refusal(state.engine, state.sessions.total - 1)  # the others: this one is counted already
    if refusal is not None:
        state.sessions.release()
        err = ev.ProtocolError(MEMORY_REFUSAL_CODE, refusal, type="server_error")
        await websocket.send_text(ev.dumps(ev.Encoder().error(err)))
        await websocket.close(code=CLOSE_BUSY, reason="memory budget full")
        return
    beta = websocket.headers.get("openai-beta", "").startswith("realtime")
    session = RealtimeSession(
        settings,
        transport="websocket",
        model=state.engine.info.model,
        beta=beta,
        audio_output=state.engine.info.audio_output,
    )
    secret_session = state.client_secrets.session_of(websocket.headers)
    if secret_session is not None:
        session.configure(secret_session)  # validated when the secret was minted
    state.metrics.active_sessions.labels("websocket").inc()
    try:
        await WsConnection(websocket, session, state).run()
    finally:
        state.sessions.release()
        state.metrics.active_sessions.labels("websocket").dec()


class WsConnection:
    def __init__(self, websocket: WebSocket, session: RealtimeSession, state: Any) -> None:
        self.ws, self.session = websocket, session
        self.engine, self.metrics, self.vad = state.engine, state.metrics, state.vad
        # `None` is the writer's stop mark (EndSession): it ends after what was queued before.
        self.out: asyncio.Queue[Send | None] = asyncio.Queue(maxsize=state.settings.ws_outbound_queue_events)
        self.responses: dict[str, Any] = {}  # response id -> engine Response
        self.tasks: set[asyncio.Task] = set()
        self._vad_wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._close_code = 1000
        self._close_reason = ""
        self._drain = getattr(state, "drain", None)
        self._ended = asyncio.Event()

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"{name}-{self.session.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def busy(self) -> bool:
        """An answer in progress, or events not yet written (the drain waits for both)."""
        return self.session.responding or not self.out.empty()

    async def go_away(self) -> None:
        """Server shutdown: write what is queued, close with 1001, and wait until this
        connection has ended. (The stop mark, as for EndSession: a close cut short would
        lose a response.done being written.)"""
        self._close_code, self._close_reason = CLOSE_GOING_AWAY, SHUTTING_DOWN
        try:
            self.out.put_nowait(None)
        except asyncio.QueueFull:
            self._closing.set()
        await self._ended.wait()

    async def run(self) -> None:
        if self._drain is not None:
            self._drain.live.add(self)
        self.dispatch(self.session.start())
        reader = self._spawn(self._read(), "ws-read")
        writer = self._spawn(self._write(), "ws-write")
        self._spawn(self._vad(), "ws-vad")
        self._spawn(self._limits(), "ws-limits")
        closing = self._spawn(self._closing.wait(), "ws-closing")
        try:
            done, _ = await asyncio.wait({reader, writer, closing}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("session %s: %s failed", self.session.id, task.get_name(), exc_info=task.exception())
                    self._close_code, self._close_reason = 1011, "internal error"
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        self.dispatch(self.session.close())  # cancels the active response in the engine
        self.engine.forget(self.session.conversation)  # its KV cache, now rather than at eviction
        for response in self.responses.values():
            response.cancel()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.ws.close(code=self._close_code, reason=self._close_reason)
        except (RuntimeError, WebSocketDisconnect, OSError):
            pass  # already closed by the peer
        finally:
            if self._drain is not None:
                self._drain.live.discard(self)
            self._ended.set()

    def _fail(self, code: int, reason: str) -> None:
        self._close_code, self._close_reason = code, reason
        self._closing.set()

    # ------------------------------------------------------------------ commands

    def dispatch(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                try:
                    self.out.put_nowait(out)
                except asyncio.QueueFull:
                    log.warning("session %s: client too slow, %d events unread", self.session.id, self.out.qsize())
                    self._fail(CLOSE_POLICY, "client too slow: outbound queue full")
                    return
            elif isinstance(out, StartResponse):
                response = self.engine.respond(out.conversation, t_committed=out.t_committed, audio=out.audio)
                self.responses[out.response_id] = response
                self._spawn(self._pump(out.response_id, response), f"ws-resp-{out.response_id}")
            elif isinstance(out, CancelResponse):
                response = self.responses.get(out.response_id)
                if response is not None:
                    response.cancel()
            elif isinstance(out, PrefillTurn):
                self.engine.prefill(out.conversation, out.parts)
            elif isinstance(out, TranscribeItem):
                key = f"transcribe-{out.item_id}"  # cancelled with the responses at shutdown
                self.responses[key] = self.engine.transcribe(out.job)
                self._spawn(self._pump_transcript(key, out.item_id, self.responses[key]), f"ws-{key}")
            elif isinstance(out, TruncateTurn):
                self._truncate(out)
            elif isinstance(out, ResponseMetrics):
                self.metrics.observe_response(out.status, out.latency)
            elif isinstance(out, EndSession):
                self._close_code, self._close_reason = 1000, out.reason
                try:
                    self.out.put_nowait(None)
                except asyncio.QueueFull:
                    self._closing.set()

    def _truncate(self, cmd: TruncateTurn) -> None:
        try:
            self.engine.truncate(self.session.conversation, cmd.item_id, cmd.audio_end_ms)
        except (KeyError, ValueError) as exc:
            err = ev.ProtocolError("item_not_found", f"cannot truncate {cmd.item_id!r}: {exc}", param="item_id")
            self.dispatch([Send(self.session.enc.error(err))])

    # ------------------------------------------------------------------ tasks

    async def _read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            self.dispatch(self.session.receive_text(data))
            if self.session.vad_enabled:
                self._vad_wake.set()

    async def _write(self) -> None:
        while True:
            item = await self.out.get()
            if item is None:
                return  # EndSession: everything before it is written
            # Serialised at write time: response.done's `latency` is completed by the
            # first audio packet's write, which precedes it in this queue.
            try:
                await self.ws.send_text(ev.dumps(item.event))
            except WebSocketDisconnect:
                # The peer vanished (no close frame: a killed client or a lost network)
                # while we wrote. That ends the session like a close does; it is not a
                # server fault, so no 1011 and no error log holding the session's frames.
                return
            if item.tag is not None:
                self.dispatch(self.session.sent(item.tag))

    async def _pump(self, response_id: str, response: Any) -> None:
        try:
            async for event in response:
                self.dispatch(self.session.on_engine_event(response_id, event))
        finally:
            self.responses.pop(response_id, None)

    async def _pump_transcript(self, key: str, item_id: str, response: Any) -> None:
        try:
            async for event in response:
                self.dispatch(self.session.on_transcription_event(item_id, event))
        finally:
            self.responses.pop(key, None)

    async def _limits(self) -> None:
        while True:
            await asyncio.sleep(LIMITS_PERIOD_S)
            self.dispatch(self.session.check_limits())

    async def _vad(self) -> None:
        model: SileroModel | None = None
        while True:
            await self._vad_wake.wait()
            self._vad_wake.clear()
            while (work := self.session.take_vad_work()) is not None:
                if model is None:
                    model = await self.vad.new_model()
                probs = await self.vad.probabilities(model, work.samples)  # batched with other sessions'
                self.dispatch(self.session.on_vad(work, probs))
