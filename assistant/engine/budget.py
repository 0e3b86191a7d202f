"""A byte budget for the memory that grows with conversations (issue #17).

What is counted, in bytes from the config (one token of a transformers DynamicCache holds
a key and a value [KV heads, head dim] per layer, modeling_qwen3_omni_moe.py attention):

    kv bytes/token = 2 (K and V) x num_hidden_layers x num_key_value_heads x head_dim x dtype size

- thinker (thinker_config.text_config): the KV of every live response's prompt and answer,
  of every idle conversation's cached prefix (convcache.py), and of early prefills; plus
  the two [1, N, hidden_size] tensors a cached prefix keeps (layer-0 inputs and the
  `accept_hidden_layer` states the talker reads, convcache.CachedPrefix), 2 x hidden_size
  x dtype size per token;
- talker (talker_config.text_config): the KV of live responses (user positions, the
  9-position assistant prefix, one position per codec frame) and the user positions an
  idle conversation keeps;
- camera frames (uint8 H x W x 3) the conversations hold: host memory, counted and
  exported but not charged to the budget, which guards the model's device. They are
  bounded per conversation by `max_conversation_video_frames`.

Policy:
- A response reserves, before its prefill, the most its caches can grow to: thinker
  prompt + max_tokens, talker user positions + 9 + max_frames. Idle conversations are
  evicted, least recently used first, until the reservation fits; if it does not fit
  with none left, the response fails at once with `memory_budget_exceeded` (before any
  work, so a running response is never cut and never evicted: its caches are checked out
  and only idle ones are evictable). An early prefill that does not fit is skipped.
- A new session is admitted when the larger of (bytes reserved by live responses, one
  floor per open session), plus a floor for the newcomer, fits in the budget; a floor is
  the reservation of a response to a `FLOOR_PROMPT_TOKENS` prompt. Otherwise it is
  refused (HTTP 503 / websocket error, `memory_budget_exceeded`) rather than admitted to
  an out-of-memory crash. Idle caches never block admission: they are evictable.
- Not counted: activations and transients (a batched decode step's left-padded copy of
  the batch's caches, batch.py; encoder outputs). The CUDA default leaves a reserve for them.

Only plain numbers here; the worker thread calls reserve/release/set_cached, the event
loop reads `snapshot()` and asks `admit_session()`; a lock keeps the figures consistent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

TALKER_PREFIX_POSITIONS = 9  # the talker's assistant prefix (qwen3-omni-streaming.md §2.2)
FLOOR_PROMPT_TOKENS = 512  # a first turn: instructions and ~30 s of speech (13 audio tokens per second)
GB = 1_000_000_000  # --kv-cache-gb is in decimal gigabytes
CPU_DEFAULT_BYTES = 2 * GB  # host memory is not measured; 2 GB holds ~2.6 M tiny-model tokens
CUDA_RESERVE_FRACTION = 0.10  # of the device's total memory, kept free for activations and transients
CUDA_RESERVE_MIN_BYTES = 4 * 1024**3


class MemoryBudgetExceeded(RuntimeError):
    """A response's caches would not fit in the budget even with every idle conversation evicted."""


@dataclass(frozen=True)
class KvShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


def kv_shape(text_config, dtype_bytes: int) -> KvShape:
    """From a text config's num_hidden_layers, num_key_value_heads and head_dim (Qwen3 sets
    head_dim; hidden_size // num_attention_heads is the transformers fallback)."""
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    return KvShape(text_config.num_hidden_layers, text_config.num_key_value_heads, head_dim, dtype_bytes)


@dataclass(frozen=True)
class Costs:
    """Bytes per token of each cache, from a Qwen3OmniMoeConfig."""

    thinker: KvShape
    talker: KvShape
    thinker_hidden: int  # thinker text hidden_size

    @classmethod
    def from_config(cls, config, dtype_bytes: int) -> Costs:
        text = config.thinker_config.text_config
        return cls(
            kv_shape(text, dtype_bytes), kv_shape(config.talker_config.text_config, dtype_bytes), text.hidden_size
        )

    @property
    def thinker_token_bytes(self) -> int:
        """KV plus the cached prefix's layer-0 input and accept_hidden_layer state."""
        return self.thinker.bytes_per_token + 2 * self.thinker_hidden * self.thinker.dtype_bytes

    def prefix_bytes(self, thinker_tokens: int, talker_tokens: int) -> int:
        """A cached prefix (convcache.CachedPrefix): thinker tokens and talker user positions."""
        return thinker_tokens * self.thinker_token_bytes + talker_tokens * self.talker.bytes_per_token

    def response_bytes(self, prompt_tokens: int, talker_user_tokens: int, max_tokens: int, max_frames: int) -> int:
        """The most one response's caches grow to; talker_user_tokens < 0: a text-only response."""
        talker = talker_user_tokens + TALKER_PREFIX_POSITIONS + max_frames if talker_user_tokens >= 0 else 0
        return self.prefix_bytes(prompt_tokens + max_tokens, talker)

    def floor_bytes(self, max_tokens: int, max_frames: int) -> int:
        return self.response_bytes(FLOOR_PROMPT_TOKENS, FLOOR_PROMPT_TOKENS, max_tokens, max_frames)


def default_limit_bytes(device_type: str, free_bytes: int = 0, total_bytes: int = 0) -> int:
    """The budget when --kv-cache-gb is 0: on CUDA, the memory free after loading and
    warm-up less max(CUDA_RESERVE_MIN_BYTES, CUDA_RESERVE_FRACTION x total); elsewhere
    CPU_DEFAULT_BYTES."""
    if device_type != "cuda":
        return CPU_DEFAULT_BYTES
    return max(0, free_bytes - max(CUDA_RESERVE_MIN_BYTES, int(CUDA_RESERVE_FRACTION * total_bytes)))


class MemoryBudget:
    def __init__(self, limit_bytes: int, costs: Costs, floor_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.costs = costs
        self.floor_bytes = floor_bytes
        self._lock = threading.Lock()
        self._reserved: dict[object, int] = {}  # live job -> bytes reserved
        self._frames: dict[str, int] = {}  # conversation id -> camera frame bytes (host)
        self.cached_bytes = 0  # idle conversations' caches (convcache.py keeps it current)
        self.cached_conversations = 0
        self.peak_bytes = 0
        self.evictions = 0  # idle conversations evicted to make room
        self.refused_sessions = 0
        self.refused_responses = 0

    # -------------------------------------------------------------- worker thread

    @property
    def reserved_bytes(self) -> int:
        return sum(self._reserved.values())

    @property
    def in_use_bytes(self) -> int:
        return self.reserved_bytes + self.cached_bytes

    def fits(self, nbytes: int) -> bool:
        return self.in_use_bytes + nbytes <= self.limit_bytes

    def reserve(self, owner: object, nbytes: int) -> bool:
        """Reserve `nbytes` for a live job if it fits now (the caller evicts first)."""
        with self._lock:
            if not self.fits(nbytes):
                return False
            self._reserved[owner] = self._reserved.get(owner, 0) + nbytes
            self._note_peak()
        return True

    def release(self, owner: object) -> None:
        with self._lock:
            self._reserved.pop(owner, None)

    def set_cached(self, nbytes: int, conversations: int, evicted: int = 0) -> None:
        with self._lock:
            self.cached_bytes, self.cached_conversations = nbytes, conversations
            self.evictions += evicted
            self._note_peak()

    def refuse_response(self) -> None:
        with self._lock:
            self.refused_responses += 1

    def _note_peak(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.in_use_bytes)

    # -------------------------------------------------------------- event loop

    def set_frames(self, conv_id: str, nbytes: int) -> None:
        with self._lock:
            if nbytes:
                self._frames[conv_id] = nbytes
            else:
                self._frames.pop(conv_id, None)

    def admit_session(self, open_sessions: int) -> str | None:
        """None when a new session fits, else why not (the refusal is counted)."""
        with self._lock:
            committed = max(self.reserved_bytes, self.floor_bytes * open_sessions)
            if committed + self.floor_bytes <= self.limit_bytes:
                return None
            self.refused_sessions += 1
        return (
            f"the memory budget is full: {committed} of {self.limit_bytes} bytes are promised to "
            f"{open_sessions} open sessions and live responses, a new session needs {self.floor_bytes}"
        )

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "budget_bytes": self.limit_bytes,
                "in_use_bytes": self.in_use_bytes,
                "live_bytes": self.reserved_bytes,
                "cached_bytes": self.cached_bytes,
                "cached_conversations": self.cached_conversations,
                "peak_bytes": self.peak_bytes,
                "session_floor_bytes": self.floor_bytes,
                "camera_frame_bytes": sum(self._frames.values()),
                "evictions": self.evictions,
                "refused_sessions": self.refused_sessions,
                "refused_responses": self.refused_responses,
            }
