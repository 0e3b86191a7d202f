"""Graceful drain: what `assistant serve` does on SIGTERM (systemd's stop, a rolling deploy).

1. New sessions are refused at once: a websocket gets `error` session_limit_reached and
   close 1013 (try again later), `POST /v1/realtime/calls` 503, and /health answers 503
   `"status": "draining"` so that a load balancer stops sending traffic here.
2. Answers in progress finish: the drain waits until no session has a response running
   (its response.done written) and no call has answer audio left to play, for at most
   `drain_timeout_s`. Sessions keep working meanwhile.
3. Then every websocket is closed with 1001 (going away) and every call is hung up (RTCP
   BYE and DTLS close), and the server stops; the process exits 0. A second SIGTERM, or
   Ctrl-C, stops at once (uvicorn's own handling).

Transports register their live sessions here; each reports `busy()` (an answer in
progress) and can be told to `go_away()`. The drain makes no protocol decision itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

log = logging.getLogger("assistant.server")

POLL_S = 0.1
CLOSE_WAIT_S = 5.0  # for the closes to complete once requested
SHUTTING_DOWN = "the server is shutting down"


class Live(Protocol):
    def busy(self) -> bool: ...

    async def go_away(self) -> None: ...


class Drain:
    """One per app (`app.state.drain`)."""

    def __init__(self) -> None:
        self.draining = False
        self.live: set[Live] = set()

    async def run(self, timeout_s: float) -> None:
        """Refuse new sessions, wait for answers in progress (at most `timeout_s`), then
        close everything that is left."""
        self.draining = True
        t0 = time.monotonic()
        log.info("draining: %d sessions; waiting up to %g s for answers in progress", len(self.live), timeout_s)
        # Polled: "busy" is derived from every session's state, which changes in many places.
        while any(s.busy() for s in list(self.live)) and time.monotonic() - t0 < timeout_s:  # noqa: ASYNC110
            await asyncio.sleep(POLL_S)
        busy = sum(s.busy() for s in list(self.live))
        if busy:
            log.warning("drain timeout (%g s): cutting %d answers in progress", timeout_s, busy)
        else:
            log.info("drained in %.1f s; closing %d sessions", time.monotonic() - t0, len(self.live))
        live = list(self.live)
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                await asyncio.gather(*(s.go_away() for s in live), return_exceptions=True)
        except TimeoutError:
            log.warning("drain: %d sessions did not close within %g s", len(self.live), CLOSE_WAIT_S)
