"""`assistant serve` in-process, for the benchmark and the client tests: the same app
(`server.main.build_app`) and uvicorn configuration, on a free port, in a background
thread with its own event loop, so the caller's loop (simulated users, a client) never
shares a loop with the server it measures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading

from ..settings import Settings

START_TIMEOUT_S = 300.0  # model load + warm-up on a busy 2-core machine


class InProcessServer:
    """Context manager; `url` is the websocket endpoint once entered."""

    def __init__(self, settings: Settings) -> None:
        self.settings = dataclasses.replace(settings, port=0, host="127.0.0.1")
        self.port: int | None = None
        self.engine = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="bench-server", daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def __enter__(self) -> InProcessServer:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError(f"the in-process server did not start within {START_TIMEOUT_S:.0f} s")
        if self._error is not None:
            raise RuntimeError(f"the in-process server failed to start: {self._error!r}") from self._error
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(setattr, self._server, "should_exit", True)
        self._thread.join(30.0)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the thread that waits in __enter__
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        import uvicorn

        from ..engine import load_engine
        from ..server.main import build_app, uvicorn_config

        self._loop = asyncio.get_running_loop()
        self.engine = load_engine(self.settings)
        await self.engine.start()
        try:
            self._server = uvicorn.Server(uvicorn_config(build_app(self.settings, self.engine), self.settings))
            serving = asyncio.create_task(self._server.serve(), name="bench-uvicorn")
            while not self._server.started and not serving.done():  # noqa: ASYNC110 (uvicorn exposes a bool only)
                await asyncio.sleep(0.05)
            if serving.done():
                serving.result()  # raises the start-up error
                raise RuntimeError("uvicorn exited during start-up")
            self.port = self._server.servers[0].sockets[0].getsockname()[1]
            self._ready.set()
            await serving
        finally:
            await self.engine.close()
