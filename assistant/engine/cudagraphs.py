"""CUDA graphs for the fixed-shape decode work: the code predictor's 15 steps per frame
and Code2Wav on the few window lengths the chunk ramp produces.

Why: at batch 1 these modules are launch-bound (tens of small kernels per step, each a
few microseconds of GPU work behind Python dispatch). Qwen applied "torch.compile and
CUDA Graph acceleration to the MTP Module and codec decoder" for Table 2 of the report
(../shared/reference/qwen3-omni-streaming.md §4); vLLM-Omni captures its Code2Wav per
padded length the same way. A graph replays the recorded kernels with one launch, on the
same addresses, so inputs are copied into static buffers and outputs copied out.

Rules followed (PyTorch docs, "CUDA semantics" > "CUDA Graphs"):
- warm up on a side stream before capture (lazy init, cuBLAS workspaces, autotuning);
- no host synchronisation, no data-dependent shapes or control flow inside a capture;
- graphs that share a memory pool are captured one after another and never replayed
  concurrently. Here every replay's outputs are consumed (copied, cloned or picked from)
  before any other graph of the same pool replays, so replay order does not matter.

Fallback: any exception while capturing disables graphs for that wrapper for good, logs
one warning with the traceback, and the call (and all later ones) runs the eager path,
which is the code the CPU runs. Replay errors are not caught: on CUDA they are sticky
context errors that the eager path could not survive either.

The talker decode step (talker.py `_advance`, batch 1) has a graph too, off by default
(`--talker-cuda-graph`): `GraphedTalkerStep` replays talker_step.py's static-KV, sync-free
step. Unlike the two above it changes kernels (attention over a masked fixed-length
buffer), so it stays off until a GPU run shows equality with the stock step and a
speed-up (scripts/gpu_check.sh, step b). Batched talker steps (batch.py) stay eager.

Status: the CUDA path has NOT been run on a GPU yet (written without one). The CPU tests
drive every buffer and bookkeeping path through `CallReplay`, and
tests/test_cudagraphs.py has CUDA-only equality tests (graph == eager, bit for bit,
expected because a replay runs the very kernels the eager call launched).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .predictor import FastCodePredictor
from .talker_step import MAX_LEN, StaticTalkerStep

log = logging.getLogger("assistant.engine")

Outputs = tuple[torch.Tensor, ...]
WARMUP_ITERS = 2  # the docs' examples use 3 for DDP; 2 covers lazy init and cuBLAS/cuDNN heuristics here
MAX_GRAPH_BATCH = 8  # predictor batch sizes captured lazily; larger batches run eagerly


class CudaGraphBackend:
    """Captures with torch.cuda.CUDAGraph."""

    def new_pool(self):
        return torch.cuda.graph_pool_handle()

    def capture(self, fn: Callable[[], Outputs], pool) -> tuple[Callable[[], None], Outputs]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_ITERS):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs = fn()
        return graph.replay, outputs


class CallReplay:
    """Stands in for a CUDA graph where there is none (CPU tests): "capture" runs `fn`
    once and "replay" runs it again and copies its results into the first call's output
    tensors. It exercises exactly the static-buffer plumbing a real graph relies on:
    a function that reads an input it was not given through a static buffer gives
    wrong answers here too."""

    def __init__(self) -> None:
        self.captures = 0

    def new_pool(self):
        return None

    def capture(self, fn: Callable[[], Outputs], pool) -> tuple[Callable[[], None], Outputs]:
        self.captures += 1
        outputs = fn()

        def replay() -> None:
            for static, fresh in zip(outputs, fn(), strict=True):
                static.copy_(fresh)

        return replay, outputs


class _Fallback:
    """Graphs on until the first capture error, then eager for good (logged once)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.error: str | None = None

    def disable(self, exc: BaseException) -> None:
        self.error = f"{type(exc).__name__}: {exc}"
        log.warning("CUDA graphs off for the %s, running eagerly: %s", self.what, self.error, exc_info=exc)
        if torch.cuda.is_available():
            try:  # a failed capture has ended; make sure nothing of it is still in flight
                torch.cuda.synchronize()
            except RuntimeError:
                pass


class _PredictorGraphs:
    """The graphs and static buffers of one batch size B.

    Per-step graphs (15): step 0 reads `last_hidden` and the code-0 slot of `embeds`,
    step s >= 1 reads the ids picked at step s-1 from `ids[s-1]`; each writes its input
    embedding into `embeds[:, s]` and returns that step's logits. The caller's `pick`
    runs between replays, outside any graph, so any sampler (host generator included)
    is correct. The greedy graph is all 15 steps with the argmax on device, no host
    round trip at all, and also sums the 16 embeddings."""

    def __init__(self, cp: FastCodePredictor, B: int, device: torch.device, dtype: torch.dtype, backend) -> None:
        self.cp, self.B = cp, B
        D, G = cp.norm.weight.shape[0], cp.groups
        self.last_hidden = torch.zeros(B, 1, D, device=device, dtype=dtype)
        self.embeds = torch.zeros(B, G, D, device=device, dtype=dtype)  # slot 0: code-0, slot s+1: residual s
        self.ids = torch.zeros(G - 1, B, device=device, dtype=torch.long)  # residual s picked at step s
        shape = (len(cp.layers), B, cp.n_kv, cp.max_len, cp.head_dim)
        self.k_cache = torch.zeros(shape, device=device, dtype=dtype)
        self.v_cache = torch.zeros(shape, device=device, dtype=dtype)
        pool = backend.new_pool()
        self.steps = [backend.capture(lambda s=s: (self._step(s),), pool) for s in range(G - 1)]
        self.greedy = backend.capture(self._greedy_loop, pool)

    def _step(self, s: int) -> torch.Tensor:
        if s == 0:
            x = torch.cat([self.last_hidden, self.embeds[:, :1]], dim=1)  # [B, 2, D]
            pos = 0
        else:
            x = self.cp.embeddings[s - 1](self.ids[s - 1].unsqueeze(1))  # [B, 1, D]
            self.embeds[:, s : s + 1].copy_(x)
            pos = s + 1  # 2 prefill positions, then one per step
        return self.cp.step_logits(s, x, pos, self.k_cache, self.v_cache)  # [B, V]

    def _last_embedding(self) -> None:
        G = self.cp.groups
        self.embeds[:, G - 1 : G].copy_(self.cp.embeddings[G - 2](self.ids[G - 2].unsqueeze(1)))

    def _greedy_loop(self) -> Outputs:
        for s in range(self.cp.groups - 1):
            self.ids[s].copy_(self._step(s).float().argmax(-1))  # what predictor.greedy_pick picks
        self._last_embedding()
        return (self.embeds.sum(1, keepdim=True),)  # [B, 1, D]; same reduction as the eager cat(...).sum

    def load(self, last_hidden: torch.Tensor, code0_embed: torch.Tensor) -> None:
        self.last_hidden.copy_(last_hidden)  # [B, 1, D]
        self.embeds[:, :1].copy_(code0_embed)  # [B, 1, D]

    def run(self, pick: Callable[[int, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        for s, (replay, (logits,)) in enumerate(self.steps):
            replay()
            # `logits` is overwritten by the next replay: pick must not keep it (Picker clones).
            self.ids[s].copy_(pick(s, logits))
        self._last_embedding()
        return self.ids.t().contiguous(), self.embeds.sum(1, keepdim=True)

    def run_greedy(self) -> tuple[torch.Tensor, torch.Tensor]:
        replay, (codec_sum,) = self.greedy
        replay()
        return self.ids.t().contiguous(), codec_sum.clone()


class GraphedCodePredictor:
    """FastCodePredictor's interface (`run`, `run_greedy`) over per-batch-size graphs,
    captured lazily the first time a batch size is seen (up to `max_batch`; larger
    batches, other dtypes and everything after a capture error run `eager`)."""

    def __init__(self, eager: FastCodePredictor, max_batch: int = MAX_GRAPH_BATCH, backend=None) -> None:
        self.eager = eager
        self.max_batch = max_batch
        self.backend = backend or CudaGraphBackend()
        self.fallback = _Fallback("code predictor")
        self.graphs: dict[tuple[int, torch.dtype], _PredictorGraphs] = {}

    @torch.no_grad()
    def capture(self, B: int, device: torch.device, dtype: torch.dtype) -> _PredictorGraphs | None:
        key = (B, dtype)
        if key in self.graphs:
            return self.graphs[key]
        if self.fallback.error is not None or not 1 <= B <= self.max_batch:
            return None
        try:
            graphs = _PredictorGraphs(self.eager, B, device, dtype, self.backend)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: stay eager
            self.fallback.disable(exc)
            return None
        self.graphs[key] = graphs
        return graphs

    @torch.no_grad()
    def run(
        self, last_hidden: torch.Tensor, code0_embed: torch.Tensor, pick: Callable[[int, torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        graphs = self.capture(last_hidden.shape[0], last_hidden.device, last_hidden.dtype)
        if graphs is None:
            return self.eager.run(last_hidden, code0_embed, pick)
        graphs.load(last_hidden, code0_embed)
        return graphs.run(pick)

    @torch.no_grad()
    def run_greedy(self, last_hidden: torch.Tensor, code0_embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        graphs = self.capture(last_hidden.shape[0], last_hidden.device, last_hidden.dtype)
        if graphs is None:
            return self.eager.run_greedy(last_hidden, code0_embed)
        graphs.load(last_hidden, code0_embed)
        return graphs.run_greedy()


def decode_lengths(ramp: list[int], left_context: int) -> list[int]:
    """The window lengths (frames) IncrementalCode2Wav decodes before the final flush:
    chunk c after d decoded frames covers [max(0, d - left_context), d + c). With the
    defaults (1, 2, 4, 8, 16, 25; 25) that is 1, 3, 7, 15, 31 and then 50 for good.
    The final flush of a response has any length and runs eagerly."""
    lengths, decoded = [], 0
    for i in range(len(ramp) + left_context + 1):  # enough chunks to reach the steady state
        n = decoded + ramp[min(i, len(ramp) - 1)]
        length = n - max(0, decoded - left_context)
        if length not in lengths:
            lengths.append(length)
        decoded = n
    return lengths


class GraphedCode2Wav:
    """Code2Wav for codes [1, Q, T] with one graph per T in `lengths` (captured lazily,
    or all at once by `capture_all`); any other shape runs the module eagerly."""

    def __init__(self, code2wav, lengths: list[int] = (), backend=None) -> None:
        self.code2wav = code2wav
        self.lengths = set(lengths)
        self.backend = backend or CudaGraphBackend()
        self.fallback = _Fallback("Code2Wav")
        self.graphs: dict[int, tuple[torch.Tensor, Callable[[], None], torch.Tensor]] = {}
        self._pool = None

    @torch.no_grad()
    def capture(self, T: int, device: torch.device) -> tuple | None:
        if T in self.graphs:
            return self.graphs[T]
        if self.fallback.error is not None or T not in self.lengths:
            return None
        try:
            if self._pool is None:
                self._pool = self.backend.new_pool()
            Q = self.code2wav.config.num_quantizers
            codes = torch.zeros(1, Q, T, device=device, dtype=torch.long)  # static input; code 0 is a valid id
            replay, (wav,) = self.backend.capture(lambda: (self.code2wav(codes),), self._pool)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: stay eager
            self.fallback.disable(exc)
            return None
        self.graphs[T] = (codes, replay, wav)
        return self.graphs[T]

    def capture_all(self, device: torch.device) -> None:
        for T in sorted(self.lengths):
            self.capture(T, device)

    @torch.no_grad()
    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        graph = self.capture(codes.shape[-1], codes.device) if codes.shape[0] == 1 else None
        if graph is None:
            return self.code2wav(codes)
        static_codes, replay, wav = graph
        static_codes.copy_(codes)  # [1, Q, T]
        replay()
        return wav.clone()  # [1, 1, T * 1920 - 555]; the next replay overwrites `wav`


class GraphedTalkerStep:
    """One talker decode position at batch 1 from one graph of `StaticTalkerStep.compute`
    (captured lazily at the first step). `step` returns None where this path does not
    apply (a context past `max_len`, a capture error): the caller then runs stock."""

    def __init__(self, talker, max_len: int = MAX_LEN, backend=None) -> None:
        self.static = StaticTalkerStep(talker, max_len)
        self.backend = backend or CudaGraphBackend()
        self.fallback = _Fallback("talker step")
        self._graph: tuple[Callable[[], None], Outputs] | None = None
        self.replays = 0

    def _capture(self) -> tuple[Callable[[], None], Outputs] | None:
        if self._graph is None and self.fallback.error is None:
            try:
                self._graph = self.backend.capture(self.static.compute, self.backend.new_pool())
            except Exception as exc:  # noqa: BLE001 - any capture failure means: stay eager (stock)
                self.fallback.disable(exc)
        return self._graph

    @torch.no_grad()
    def step(self, cache, embeds: torch.Tensor, position: torch.Tensor, *, graph: bool = True):
        """cache: the response's talker DynamicCache; embeds [1, 1, D]; position [3, 1, 1].
        Returns (logits [1, V], last hidden [1, 1, D]) and appends the new key/value to
        `cache`, or None. `graph=False` runs the same static step eagerly (for comparisons)."""
        if not self.static.load(cache, embeds, position):
            return None
        if graph:
            captured = self._capture()
            if captured is None:
                return None
            replay, (logits, hidden) = captured
            replay()
            self.replays += 1
            logits, hidden = logits.clone(), hidden.clone()  # the next replay overwrites them
        else:
            logits, hidden = self.static.compute()
        self.static.commit(cache)
        return logits, hidden
