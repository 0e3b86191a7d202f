"""Server VAD for every session of a transport, scored in batches on the VAD thread(s).

Each session's VAD task hands its new audio to `VadBatcher.probabilities` and awaits the
result. One owner task takes everything queued since its last call and scores it as one
`probabilities_together` call off the event loop, so sessions that spoke at the same time
are scored together (issue #19).

Why: with one call per session on one thread, a burst of four users' last windows were
scored one after another, 1.5-2.5 ms each while the model worker was busy, and their
commits reached the engine 2-9 ms apart (22 ms once). The first commit's first-packet
step was then already running, and the others waited for it before their own: a burst's
first packets cost two prefills instead of one batch.

Bound: each session awaits its result before it queues more, so at most one request per
session is queued; nothing is dropped. A session that goes away while its request is
queued or being scored gets no result (its future is cancelled); its model's state
advanced anyway, which matters to no one.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor

import numpy as np

from ..realtime.vad import SileroModel, probabilities_together

log = logging.getLogger(__name__)


class VadBatcher:
    def __init__(self, pool: Executor, name: str) -> None:
        self._pool, self._name = pool, name
        self._queued: list[tuple[SileroModel, np.ndarray, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.calls = 0  # batched calls made (tests, and a reader of how much batching happens)
        self.rows = 0  # sessions' requests scored in them

    async def new_model(self) -> SileroModel:
        """A stream's model, made off the loop (the first one loads the network)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, SileroModel)

    async def probabilities(self, model: SileroModel, samples: np.ndarray) -> np.ndarray:
        """`model.probabilities(samples)`, scored with whatever else is queued."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self._name}-vad-batcher")
        future = asyncio.get_running_loop().create_future()
        self._queued.append((model, samples, future))
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Stop the owner task; queued requests are cancelled."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for _, _, future in self._queued:
            future.cancel()
        self._queued.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queued:
                batch, self._queued = self._queued, []
                live = [entry for entry in batch if not entry[2].done()]
                try:
                    results = await loop.run_in_executor(
                        self._pool, probabilities_together, [(model, samples) for model, samples, _ in live]
                    )
                except Exception as exc:  # each waiting session's VAD task gets the error and ends with it
                    for _, _, future in live:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.calls += 1
                self.rows += len(live)
                for (_, _, future), probs in zip(live, results, strict=True):
                    if not future.done():
                        future.set_result(probs)
