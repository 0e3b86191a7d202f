"""The FastAPI app: /v1/realtime (websocket), /health, /metrics, the demo page at /, plus
routers other transports bring (WebRTC's /v1/realtime/calls).

`create_app` takes an engine that has already started: `serve()` loads and warms the
model before the app exists, so no request ever waits for a load.

What handlers find on `app.state`: settings, engine, metrics, sessions (the websocket
session registry and admission control), client_secrets (auth.py), vad_pool (the VAD
worker thread).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import languages
from ..engine.api import Engine
from ..settings import Settings
from .auth import ClientSecrets, authorized, client_secrets_router, unauthorized
from .metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("assistant.server")

WEB_DIR = Path(__file__).resolve().parents[2] / "web"


class Sessions:
    """Admission control over all transports: websocket sessions are counted here,
    others report theirs through `others` (e.g. the number of live WebRTC calls)."""

    def __init__(self, limit: int, others: Callable[[], int] | None = None) -> None:
        self.limit = limit
        self.websocket = 0
        self._others = others

    @property
    def total(self) -> int:
        return self.websocket + (self._others() if self._others else 0)

    def admit(self) -> bool:
        if self.total >= self.limit:
            return False
        self.websocket += 1
        return True

    def release(self) -> None:
        self.websocket -= 1


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

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One VAD thread for all websocket sessions: Silero costs ~0.4 ms per 32 ms window,
        # so one core serves dozens of sessions, and they never contend with each other.
        app.state.vad_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ws-vad")
        try:
            yield
        finally:
            app.state.vad_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="assistant", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings, app.state.engine, app.state.metrics = settings, engine, metrics
    app.state.sessions = Sessions(settings.max_sessions, other_sessions)
    app.state.client_secrets = ClientSecrets()

    @app.get("/health")
    async def health() -> dict:
        info = engine.info
        return {
            "status": "ok",
            "model": info.model,
            "device": info.device,
            "dtype": info.dtype,
            "is_tiny": info.is_tiny,
            "sessions": app.state.sessions.total,
            "max_sessions": settings.max_sessions,
            "languages": {"speech_input": list(languages.SPEECH_INPUT), "speech_output": list(languages.SPEECH_OUTPUT)},
        }

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        if not authorized(settings, request.headers, client_secrets=app.state.client_secrets):
            return unauthorized()
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


def _mount_web(app: FastAPI, web_dir: Path | None) -> None:
    if web_dir is not None and (web_dir / "index.html").is_file():
        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")
        return

    @app.get("/")
    async def no_page() -> HTMLResponse:
        return HTMLResponse("<h1>404</h1><p>The demo page (web/index.html) is not installed.</p>", status_code=404)
