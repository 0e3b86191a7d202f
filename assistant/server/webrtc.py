"""WebRTC transport: `POST /v1/realtime/calls`, the OpenAI Realtime WebRTC handshake.

The client POSTs an SDP offer (application/sdp, or multipart with `sdp` and `session`),
gets the answer (201, `Location: /v1/realtime/calls/{id}`), then:
- its microphone arrives as an audio track, its camera (if any) as a video track;
- response audio goes back on one Opus track paced in real time (webrtc_media.py); no
  audio deltas travel on the data channel, as on OpenAI's WebRTC endpoint;
- JSON events travel on the `oai-events` data channel the client creates, the same
  events as the websocket.

This adapter makes no protocol decisions: a `RealtimeSession` (transport="webrtc")
decides everything and returns outputs; `Call.dispatch` carries them out. The server
owns playback: the session says `PlayAudio`/`ClearPlayback`, the track plays or drops,
and reports back started/stopped and the real playback position for truncation.

The peer connection's life, from the answer to the close, is webrtc_call.py's (`Call`);
this module keeps every call of a server (`Calls`, admission) and the HTTP endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from ..engine.api import Engine
from ..realtime.session import RealtimeSession, ResponseMetrics
from ..settings import Settings
from .app import AUTO_FALLBACK_SESSIONS, MEMORY_REFUSAL_CODE, memory_refusal
from .auth import authorized
from .drain import SHUTTING_DOWN
from .vadbatch import VadBatcher
from .webrtc_call import (
    EVENTS_CHANNEL,
    MAX_CHANNEL_BUFFERED_BYTES,
    MAX_IN_MESSAGE_BYTES,
    MAX_OUT_MESSAGE_BYTES,
    MIC_RATE_HZ,
    PREOPEN_EVENTS,
    Call,
    CallLimits,
    set_consent_timeout,
)
from .webrtc_media import TaskOwner
from .webrtc_offer import MAX_BODY_BYTES, Offer, OfferError, check_content_type, ice_servers, parse_body

__all__ = [
    "EVENTS_CHANNEL",
    "MAX_CHANNEL_BUFFERED_BYTES",
    "MAX_IN_MESSAGE_BYTES",
    "MAX_OUT_MESSAGE_BYTES",
    "MIC_RATE_HZ",
    "PREOPEN_EVENTS",
    "Call",
    "CallLimits",
    "Calls",
    "set_consent_timeout",
    "webrtc_router",
]

log = logging.getLogger("assistant.webrtc")


# ---------------------------------------------------------------------------- all calls


class Calls:
    """Every live call of one server, with admission control. Owns the close tasks and
    the VAD thread."""

    _ids = itertools.count(1)

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        limits: CallLimits | None = None,
        on_metrics: Callable[[ResponseMetrics], None] | None = None,
    ) -> None:
        self.settings, self.engine = settings, engine
        self.limits = limits or CallLimits()
        self.ice_servers = ice_servers(settings.ice_servers)
        set_consent_timeout(settings.webrtc_consent_timeout_s)
        self.calls: dict[str, Call] = {}
        self.tasks = TaskOwner("webrtc")
        # One VAD thread for all calls, one batched call at a time (vadbatch.py).
        self.vad_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webrtc-vad")
        self.vad = VadBatcher(self.vad_pool, "webrtc")
        self._on_metrics = on_metrics
        self.active_gauge = None  # the app's active-sessions gauge, labelled "webrtc" (see `attach`)
        self.sessions = None  # the app's admission control over all transports (see `attach`)
        self.drain = None  # the app's graceful drain (see `attach`)

    def attach(self, state) -> None:
        """Share the app's admission control and metrics (create_app puts them on app.state)."""
        self.sessions = getattr(state, "sessions", None)
        self.drain = getattr(state, "drain", None)
        metrics = getattr(state, "metrics", None)
        if metrics is not None:
            self.active_gauge = metrics.active_sessions.labels("webrtc")

    def full(self) -> bool:
        """All session slots taken, counting every transport when attached to an app."""
        if self.sessions is not None:
            return not self.sessions.has_room()
        limit = self.settings.max_sessions
        return len(self.calls) >= (limit if isinstance(limit, int) else AUTO_FALLBACK_SESSIONS)

    def on_metrics(self, metrics: ResponseMetrics) -> None:
        if self._on_metrics is not None:
            self._on_metrics(metrics)

    async def open(self, offer: Offer, secret_session: dict | None = None) -> Call:
        """Admit, answer and start a call; OfferError(503) when full, (400) when aiortc
        cannot answer the offer. `secret_session`: the session object of the client secret
        the call was made with (applied first)."""
        if self.drain is not None and self.drain.draining:
            raise OfferError(503, SHUTTING_DOWN)
        if self.full():
            raise OfferError(503, self.sessions.refusal() if self.sessions else "all sessions are in use")
        refusal = memory_refusal(self.engine, self.sessions.total if self.sessions is not None else len(self.calls))
        if refusal is not None:
            raise OfferError(503, refusal, MEMORY_REFUSAL_CODE)
        session = RealtimeSession(
            self.settings, transport="webrtc", model=self.engine.info.model, audio_output=self.engine.info.audio_output
        )
        for config in (secret_session, offer.session):
            if config is not None:
                self._configure(session, config)
        call = Call(self, f"rtc_{next(self._ids):06d}", session)
        self.calls[call.id] = call  # reserved before the first await, so admission cannot race
        if self.active_gauge is not None:
            self.active_gauge.inc()
        try:
            answer = await call.answer(offer)
        except Exception as exc:
            await call.close(f"offer rejected: {exc}")
            log.info("offer rejected: %s: %s", type(exc).__name__, exc)
            raise OfferError(400, f"cannot answer this offer: {type(exc).__name__}: {exc}") from None
        call.answer_sdp = answer
        call.start()
        if self.drain is not None:
            self.drain.live.add(call)
        return call

    @staticmethod
    def _configure(session: RealtimeSession, config: dict) -> None:
        """A session object (the client secret's, then the multipart `session` part),
        applied as a session.update before session.created."""
        error = session.configure(config)
        if error is not None:
            raise OfferError(400, f"invalid session: {error.get('message')}")

    def forget(self, call: Call) -> None:
        if self.drain is not None:
            self.drain.live.discard(call)
        if self.calls.pop(call.id, None) is not None and self.active_gauge is not None:
            self.active_gauge.dec()

    async def close_all(self) -> None:
        await asyncio.gather(*(call.close("server shutting down") for call in list(self.calls.values())))
        await self.tasks.close()
        await self.vad.close()
        self.vad_pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------- HTTP


def _error(status: int, message: str, code: str = "invalid_request") -> JSONResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse({"error": {"type": kind, "code": code, "message": message}}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise OfferError(413, f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise OfferError(413, f"request body over {limit} bytes")
    return bytes(body)


def _secrets(request: Request):
    return getattr(request.app.state, "client_secrets", None)


def webrtc_router(calls: Calls) -> APIRouter:
    """The calls endpoints, bound to one registry; its lifespan closes every call on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        calls.attach(app.state)
        app.state.webrtc_calls = calls
        try:
            yield
        finally:
            await calls.close_all()

    router = APIRouter(lifespan=lifespan)

    @router.post("/v1/realtime/calls", status_code=201)
    async def create_call(request: Request) -> Response:
        if not authorized(calls.settings, request.headers, client_secrets=_secrets(request)):
            return _error(401, "a valid API key is required", "invalid_api_key")
        if calls.drain is not None and calls.drain.draining:
            return _error(503, SHUTTING_DOWN, "session_limit_reached")
        try:
            check_content_type(request.headers.get("content-type"))
            body = await _read_body(request, MAX_BODY_BYTES)
            offer = parse_body(request.headers.get("content-type"), body)
            secrets = _secrets(request)
            call = await calls.open(offer, secrets.session_of(request.headers) if secrets is not None else None)
        except OfferError as exc:
            code = {415: "unsupported_media_type", 413: "payload_too_large", 503: "session_limit_reached"}
            return _error(exc.status, exc.message, exc.code or code.get(exc.status, "invalid_offer"))
        return Response(
            content=call.answer_sdp,
            status_code=201,
            media_type="application/sdp",
            # Under a proxy's path prefix (--root-path) the call lives below that prefix too.
            headers={"Location": f"{request.scope.get('root_path', '')}/v1/realtime/calls/{call.id}"},
        )

    async def hangup(call_id: str, request: Request) -> Response:
        if not authorized(calls.settings, request.headers, client_secrets=_secrets(request)):
            return _error(401, "a valid API key is required", "invalid_api_key")
        call = calls.calls.get(call_id)
        if call is None:
            return _error(404, f"no call {call_id!r}", "call_not_found")
        await call.close("hung up by the client")
        return Response(status_code=204)

    # OpenAI spells hang-up POST .../hangup; DELETE on the Location is the REST reflex.
    router.add_api_route("/v1/realtime/calls/{call_id}/hangup", hangup, methods=["POST"], status_code=204)
    router.add_api_route("/v1/realtime/calls/{call_id}", hangup, methods=["DELETE"], status_code=204)
    return router
