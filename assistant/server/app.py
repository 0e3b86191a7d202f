"""The FastAPI app: /v1/realtime (websocket), /health, /metrics, the demo page at /, plus
routers other transports bring (WebRTC's /v1/realtime/calls).

`create_app` takes an engine that has already started: `serve()` loads and warms the
model before the app exists, so no request ever waits for a load.

What handlers find on `app.state`: settings, engine, metrics, sessions (the websocket
session registry and admission control), client_secrets (auth.py), vad_pool (the VAD
worker thread) and vad (vadbatch.py: the sessions' VAD scoring, batched).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import languages
from ..engine.api import Engine
from ..engine.capacity import LoadReport
from ..settings import Settings
from .auth import ClientSecrets, authorized, client_secrets_router, unauthorized
from .drain import Drain
from .metrics import CONTENT_TYPE, Metrics
from .vadbatch import VadBatcher

log = logging.getLogger("assistant.server")

WEB_DIR = Path(__file__).resolve().parents[2] / "web"


AUTO_FALLBACK_SESSIONS = 8  # --max-sessions auto where no load was measured (no warm-up, --upstream)


class Sessions:
    """Admission control over all transports: websocket sessions are counted here,
    others report theirs through `others` (e.g. the number of live WebRTC calls).

    `limit` is a number, or "auto" (issue #19): then a new session is admitted while the
    load projected with it (`load(sessions)`, the engine's measured load model,
    engine/capacity.py) stays under `threshold`, and the first packets of all of them
    committing at once stay within the engine's burst bound (`--first-packet-burst-ratio`);
    the first session is always admitted.
    An engine that measured nothing (no warm-up, an upstream) admits up to
    AUTO_FALLBACK_SESSIONS."""

    def __init__(
        self,
        limit: int | str,
        others: Callable[[], int] | None = None,
        *,
        load: Callable[[int], LoadReport | None] | None = None,
        threshold: float = 0.8,
    ) -> None:
        if not (limit == "auto" or (isinstance(limit, int) and limit >= 0)):
            raise ValueError(f"max_sessions must be a number or 'auto', got {limit!r}")
        self.limit = limit
        self.websocket = 0
        self._others = others
        self._load = load
        self.threshold = threshold

    @property
    def total(self) -> int:
        return self.websocket + (self._others() if self._others else 0)

    def report(self) -> LoadReport | None:
        """The engine's load and capacity with the sessions open now (None: not measured)."""
        report = self._load(self.total) if self._load is not None else None
        return report if report is not None and report.measured else None

    def has_room(self) -> bool:
        n = self.total
        if isinstance(self.limit, int):
            return n < self.limit
        report = self.report()
        if report is None:
            return n < AUTO_FALLBACK_SESSIONS
        return n == 0 or report.has_room()

    def refusal(self) -> str:
        report = None if isinstance(self.limit, int) else self.report()
        if report is None:
            return f"all {self.limit if isinstance(self.limit, int) else AUTO_FALLBACK_SESSIONS} sessions are in use"
        if report.projected < self.threshold:  # the burst bound refused it
            return (
                f"the server is at capacity ({self.total} sessions: first packets of all of them at once "
                f"projected at {report.first_packet_ratio:.1f}x one alone, bound {report.max_first_packet_ratio}x)"
            )
        return f"the server is at capacity ({self.total} sessions, load threshold {self.threshold})"

    def admit(self) -> bool:
        if not self.has_room():
            return False
        self.websocket += 1
        return True

    def release(self) -> None:
        self.websocket -= 1


# Memory (issue #17): a session the caches' byte budget has no room for is refused like one past
# max_sessions (websocket: error event then close 1013; WebRTC: HTTP 503), with this code.
MEMORY_REFUSAL_CODE = "memory_budget_exceeded"


def memory_refusal(engine: Engine, open_sessions: int) -> str | None:
    """Why the engine's cache budget (engine/budget.py) has no room for one more session, or None."""
    budget = getattr(engine, "budget", None)
    return None if budget is None else budget.admit_session(open_sessions)


def memory_figures(engine: Engine) -> dict | None:
    """The budget's figures for /health and /metrics (None for an engine without one, e.g. upstream)."""
    budget = getattr(engine, "budget", None)
    return None if budget is None else budget.snapshot()


def create_app(
    settings: Settings,
    engine: Engine,
    *,
    routers: Sequence[APIRouter] = (),
    metrics: Metrics | None = None,
    other_sessions: Callable[[], int] | None = None,
    web_dir: Path | None = WEB_DIR,
) -> FastAPI:
    """The server's app. `routers` are included before the static page (so their paths
    win); `other_sessions` counts another transport's sessions for /health and for the
    shared `max_sessions` limit."""
    from .ws import serve_websocket

    metrics = metrics or Metrics()
    metrics.watch_memory(lambda: memory_figures(engine))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One VAD thread for all websocket sessions, scoring them in batches (vadbatch.py):
        # Silero costs ~0.4 ms per 32 ms window, so one core serves dozens of sessions.
        app.state.vad_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ws-vad")
        app.state.vad = VadBatcher(app.state.vad_pool, "ws")
        try:
            yield
        finally:
            await app.state.vad.close()
            app.state.vad_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="assistant", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings, app.state.engine, app.state.metrics = settings, engine, metrics
    measure = getattr(engine, "load_report", None)  # engines that measure their load (local.py)
    if not (settings.first_packet_burst_ratio == 0 or settings.first_packet_burst_ratio >= 1):
        raise ValueError(
            f"first_packet_burst_ratio must be 0 (no bound) or >= 1, got {settings.first_packet_burst_ratio}"
        )
    app.state.sessions = Sessions(
        settings.max_sessions,
        other_sessions,
        load=(lambda n: measure(n, settings.load_threshold, settings.first_packet_burst_ratio)) if measure else None,
        threshold=settings.load_threshold,
    )
    app.state.client_secrets = ClientSecrets()
    app.state.drain = Drain()  # SIGTERM: refuse new sessions, finish answers, close (drain.py)

    @app.get("/health")
    async def health() -> Response:
        info = engine.info
        body = {
            "status": "draining" if app.state.drain.draining else "ok",
            "model": info.model,
            "device": info.device,
            "dtype": info.dtype,
            "is_tiny": info.is_tiny,
            "variant": info.variant,  # instruct, thinking or captioner, and what it takes and gives
            "modalities": {"input": info.input_modalities, "output": info.output_modalities},
            "sessions": app.state.sessions.total,
            "max_sessions": settings.max_sessions,
            "memory": memory_figures(engine),
            **_load_fields(app.state.sessions),
            "languages": {"speech_input": list(languages.SPEECH_INPUT), "speech_output": list(languages.SPEECH_OUTPUT)},
        }
        # Draining: 503, so that a load balancer's health check takes this server out of rotation.
        return JSONResponse(body, status_code=503 if app.state.drain.draining else 200)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        if not authorized(settings, request.headers, client_secrets=app.state.client_secrets):
            return unauthorized()
        report = app.state.sessions.report()
        if report is not None:
            metrics.load.set(report.load)
            metrics.capacity_sessions.set(report.capacity_sessions)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        # `?model=` is accepted and ignored: this server serves the one model it loaded.
        await serve_websocket(websocket, app.state)

    app.include_router(client_secrets_router(settings, app.state.client_secrets, lambda: engine.info.model))
    for router in routers:
        app.include_router(router)
    _mount_web(app, web_dir)
    return app


def _load_fields(sessions: Sessions) -> dict:
    """/health's view of admission by load (issue #19); nulls where nothing was measured."""
    report = sessions.report()
    fields = report.as_dict() if report is not None else {"load": None, "capacity_sessions": None}
    return {**fields, "load_threshold": sessions.threshold}


def _mount_web(app: FastAPI, web_dir: Path | None) -> None:
    if web_dir is not None and (web_dir / "index.html").is_file():
        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")
        return

    @app.get("/")
    async def no_page() -> HTMLResponse:
        return HTMLResponse("<h1>404</h1><p>The demo page (web/index.html) is not installed.</p>", status_code=404)
