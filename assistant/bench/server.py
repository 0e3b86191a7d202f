"""`assistant serve` in-process, for the benchmark and the client tests: `ServerThread`
(the same app and uvicorn configuration as `assistant serve`) on a free loopback port,
in a background thread with its own event loop, so the caller's loop (simulated users,
a client) never shares a loop with the server it measures.
"""

from __future__ import annotations

import dataclasses

from ..server.main import ServerThread
from ..settings import Settings

START_TIMEOUT_S = 300.0  # model load + warm-up on a busy 2-core machine


class InProcessServer(ServerThread):
    """Context manager; `url` is the websocket endpoint once entered."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(dataclasses.replace(settings, port=0, host="127.0.0.1"), startup_timeout_s=START_TIMEOUT_S)

    def _on_ready(self, url: str) -> None:
        super()._on_ready(url.replace("http://", "ws://", 1) + "/v1/realtime")
