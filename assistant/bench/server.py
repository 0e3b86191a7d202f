"""The server under benchmark: `assistant serve` in a child process (`ServerProcess`,
the default of scripts/bench_latency.py) or in-process (`InProcessServer`, for the client
tests and the soak scripts).

A child process is what a deployment looks like: the simulated users' event loop (20 ms
audio chunks, base64, JSON for every user) then never competes with the server for
Python's GIL. In one process it did, and the model worker's steps ran up to twice as
long while other users were still speaking (decode steps are hundreds of tiny tensor
ops, and each one re-acquires the GIL). `vllm bench serve` likewise drives a server
from a separate client process.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import signal
import subprocess
import sys
import threading

from ..server.main import ServerThread
from ..settings import ENV_PREFIX, Settings

START_TIMEOUT_S = 300.0  # model load + warm-up on a busy 2-core machine
STOP_TIMEOUT_S = 15.0  # graceful shutdown (uvicorn's own is 5 s), then SIGKILL
_READY = re.compile(r"^Open (http://\S+?)/?$")


class InProcessServer(ServerThread):
    """Context manager; `url` is the websocket endpoint once entered."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(dataclasses.replace(settings, port=0, host="127.0.0.1"), startup_timeout_s=START_TIMEOUT_S)

    def _on_ready(self, url: str) -> None:
        super()._on_ready(url.replace("http://", "ws://", 1) + "/v1/realtime")


def settings_env(settings: Settings) -> dict[str, str]:
    """Every field as its ASSISTANT_* variable (the server's own configuration path;
    variables keep secrets off the command line that `ps` shows)."""
    env = {}
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        env[ENV_PREFIX + f.name.upper()] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return env


class ServerProcess:
    """`python -m assistant serve` on a free loopback port. Context manager; `url` is the
    websocket endpoint once entered. The child's stderr passes through; its stdout is read
    for the line announcing the URL and then drained, so a chatty server never blocks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = dataclasses.replace(settings, port=0, host="127.0.0.1")
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()  # unbounded, but the child prints a few lines

    def __enter__(self) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(settings_env(self.settings))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "assistant", "serve"], env=env, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        threading.Thread(target=self._drain, name="bench-server-stdout", daemon=True).start()
        try:
            self.url = self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # EOF: the child exited

    def _wait_ready(self) -> str:
        while True:
            try:
                line = self._lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                raise TimeoutError(f"the server printed no URL within {START_TIMEOUT_S:.0f} s") from None
            if line is None:
                raise RuntimeError(f"the server exited during start-up (status {self.proc.wait()})")
            match = _READY.match(line)
            if match:
                return match.group(1).replace("http://", "ws://", 1) + "/v1/realtime"

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
