"""`assistant serve`: load the model, then listen.

Order matters: the model is resolved, loaded and warmed up before the socket is bound,
so the first client never waits for a load and /health never reports a server that
cannot answer. A non-loopback bind needs an API key (or an explicit override): the
server has no other authentication, and a microphone endpoint open to a network is a
privacy problem.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable

import uvicorn

from ..realtime.events import MAX_EVENT_BYTES
from ..settings import Settings, redacted
from .app import create_app
from .auth import install_log_redaction, is_loopback
from .drain import Drain
from .metrics import Metrics

log = logging.getLogger("assistant.server")


def check_bind(settings: Settings) -> str | None:
    """Why this bind is refused, or None."""
    if is_loopback(settings.host) or settings.api_key or settings.allow_insecure_bind:
        return None
    return (
        f"refusing to listen on {settings.host} without an API key: set --api-key (or ASSISTANT_API_KEY), "
        "or pass --allow-insecure-bind if the network is trusted"
    )


class _Server(uvicorn.Server):
    """uvicorn, announcing the URL once the socket listens (port 0 resolved)."""

    url: str = ""
    on_ready: Callable[[str], None] | None = None
    # Graceful drain on SIGTERM (drain.py): set by `_serve` to the app's drain and its timeout.
    drain: Drain | None = None
    drain_timeout_s: float = 0.0
    _drain_requested = False
    _drain_task: asyncio.Task | None = None

    def handle_exit(self, sig, frame) -> None:
        """The first SIGTERM drains; a second one, or Ctrl-C, is uvicorn's immediate stop.
        (A drained SIGTERM is not re-raised after serve(), so the process exits 0.)"""
        if sig == signal.SIGTERM and self.drain is not None and not self._drain_requested:
            self._drain_requested = True  # a signal handler: the drain starts on the next tick
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_requested and self._drain_task is None and self.drain is not None:
            self._drain_task = asyncio.create_task(self._drain(self.drain), name="drain")
        return await super().on_tick(counter)

    async def _drain(self, drain: Drain) -> None:
        try:
            await drain.run(self.drain_timeout_s)
        except Exception:  # a bug in the drain must not keep the server up: stop as uvicorn would
            log.exception("drain failed; stopping now")
        finally:
            self.should_exit = True

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.should_exit or not self.servers:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if self.config.is_ssl else 'http'}://{shown}:{port}"
        if self.config.root_path:
            # Direct requests still work without the prefix; browsers come through the proxy.
            print(f"Listening on {self.url}/, served by the proxy under {self.config.root_path}/", flush=True)
        else:
            print(f"Open {self.url}/", flush=True)
        if self.on_ready is not None:
            self.on_ready(self.url)


def check_deploy(settings: Settings) -> str | None:
    """Why the HTTPS, proxy or ICE settings are refused, or None (said before the model loads)."""
    from .ice import parse_ice_servers
    from .tls import check_tls

    if settings.root_path and (not settings.root_path.startswith("/") or settings.root_path.endswith("/")):
        return f"--root-path {settings.root_path!r}: give a path like /assistant (leading slash, no trailing one)"
    try:
        parse_ice_servers(settings.ice_servers)
    except ValueError as exc:
        return f"--ice-servers: {exc}"
    return check_tls(settings)


def uvicorn_config(app, settings: Settings) -> uvicorn.Config:
    from ..modelres import cache_root
    from .tls import tls_files

    tls = tls_files(settings, cache_root(settings) / "tls")
    if tls is not None and tls.fingerprint:
        print(f"HTTPS with the self-signed certificate {tls.certfile}", flush=True)
        print(f"  SHA-256 fingerprint {tls.fingerprint}", flush=True)
        print("  (compare it with the one the browser shows before accepting the warning)", flush=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # Above the protocol's 15 MiB event limit, so an oversized event gets an `error`
        # event from the codec rather than a bare close 1009.
        ws_max_size=2 * MAX_EVENT_BYTES,
        ws_per_message_deflate=False,  # base64 audio barely compresses; deflate costs latency
        lifespan="on",
        timeout_graceful_shutdown=5,
        ssl_certfile=tls.certfile if tls else None,
        ssl_keyfile=tls.keyfile if tls else None,
        root_path=settings.root_path,
    )
    # After uvicorn configured its loggers: at DEBUG they print every handshake header.
    install_log_redaction(settings.api_key)
    return config


def build_app(settings: Settings, engine):
    """The app with every transport: websocket, plus WebRTC's router sharing the
    session limit and the metrics."""
    from ..rest.chat import chat_router
    from .auth import authorized
    from .ice import ice_router, parse_ice_servers, server_peer_uses
    from .webrtc import Calls, webrtc_router

    metrics = Metrics()
    ice = parse_ice_servers(settings.ice_servers)
    if ice:
        used, ignored = server_peer_uses(ice)
        log.info("ICE: the page gets %d server(s); the server's own peer uses %s", len(ice), ", ".join(used) or "none")
        if ignored:
            log.warning(
                "ICE: aiortc takes one STUN and one TURN URL, so the server's peer ignores %s", ", ".join(ignored)
            )

    def authorize(request) -> bool:
        return authorized(settings, request.headers, client_secrets=getattr(request.app.state, "client_secrets", None))

    def observe(cmd) -> None:
        metrics.observe_response(cmd.status, cmd.latency)

    calls = Calls(settings, engine, on_metrics=observe)
    from ..rest.audio import audio_router

    return create_app(
        settings,
        engine,
        routers=[
            webrtc_router(calls),
            ice_router(ice, authorize),
            chat_router(settings, engine),
            audio_router(settings, engine),
        ],
        metrics=metrics,
        other_sessions=lambda: len(calls.calls),
    )


async def _serve(settings: Settings) -> int:
    from ..engine import load_engine

    engine = load_engine(settings)
    await engine.start()
    info = engine.info
    log.info(
        "model %s on %s (%s)%s", info.model, info.device, info.dtype, " [tiny: speech is noise]" if info.is_tiny else ""
    )
    try:
        app = build_app(settings, engine)
        server = _Server(uvicorn_config(app, settings))
        server.drain, server.drain_timeout_s = app.state.drain, settings.drain_timeout_s
        freeze_startup_heap()
        await server.serve()
    finally:
        await engine.close()
    return 0


def freeze_startup_heap() -> int:
    """Take what is alive once the model is loaded and warm and the app is built out of the
    cyclic garbage collector's reach (`gc.freeze`); returns how many objects that was.

    Why: they live as long as the process (the modules, the tokenizer's tables, the
    weights' Python objects: about 450k objects for the tiny model), and a full collection
    walks every tracked object. One took 225-280 ms on the 2-core CPU, and the model
    worker holds the GIL through it: every listener runs dry at once. Python starts a full
    collection once the objects promoted since the last one reach a quarter of the old
    ones, so a long-running server hits one now and then. Frozen objects are never
    walked again; what is made after startup is collected as before. Garbage is
    collected first, so none is kept forever."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def serve(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    refusal = check_bind(settings) or check_deploy(settings)
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return 2
    log.info("settings: %s", redacted(settings))
    try:
        return asyncio.run(_serve(settings))
    except KeyboardInterrupt:
        return 0


class ServerThread:
    """The whole server (engine + app + uvicorn) on its own thread and event loop, for
    tests, benchmarks and embedding. `start()` returns once it listens (or raises)."""

    def __init__(self, settings: Settings, *, startup_timeout_s: float = 600.0) -> None:
        self.settings = settings
        self.url = ""
        self.engine = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's loop (tests inspect its tasks)
        self._timeout_s = startup_timeout_s
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server: _Server | None = None
        self._thread = threading.Thread(target=self._run, name="assistant-server", daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(self._timeout_s):
            raise TimeoutError(f"server not ready after {self._timeout_s} s")
        if self._error is not None:
            raise RuntimeError("server failed to start") from self._error
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(timeout_s)

    def _on_ready(self, url: str) -> None:
        self.url = url
        self._ready.set()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(); the thread ends
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        from ..engine import load_engine

        self.loop = asyncio.get_running_loop()
        self.engine = load_engine(self.settings)
        await self.engine.start()
        try:
            self._server = _Server(uvicorn_config(build_app(self.settings, self.engine), self.settings))
            self._server.on_ready = self._on_ready
            await self._server.serve()
        finally:
            await self.engine.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
