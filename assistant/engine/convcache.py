"""Per-conversation thinker KV caches, so a turn prefills only its new input.

Policy (issue #7):
- After a response, its conversation keeps the thinker's KV cache for every token the
  thinker has seen (the prompt plus the generated tokens fed back), with the layer-0
  inputs and `accept_hidden_layer` states the talker reads for earlier user turns.
- The next turn's prompt is compared with the cached ids; the longest common prefix is
  kept (the cache is cropped to it: this is how a barge-in truncation, which shortens
  the last answer, stays consistent) and only the rest is prefilled. Encoders run only
  on media whose placeholders fall in that rest.
- At most `capacity` conversations are cached; the least recently used is evicted and
  simply pays a full prefill on its next turn. A conversation longer than the model's
  context is trimmed oldest-first to half the context (context.py); `starts` remembers
  where, so the trimmed prompt is prefilled in full once and later turns append to it.
- The talker's KV is kept too, for the user-role positions of the prompt only (the
  talker prompt is every user turn's positions, then a 9-position assistant prefix that
  changes each turn, qwen3-omni-streaming.md §2.2): the user parts of earlier turns are
  a prefix of the next talker prompt, so only the new user turn and the assistant
  prefix are prefilled. It is cropped with the thinker's, so truncation and eviction
  treat both alike.
- Placeholder ids say nothing of media content, so each entry also keeps a digest of
  every complete media turn it covers (inputs.turn_media_keys); reuse stops at the
  first turn whose media differ from the new prompt's at the same position.
- A cache is checked out while a response uses it, so two responses can never write it.
  Only the model worker thread touches this object.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch


@dataclass
class TalkerPrefix:
    """The talker's KV for the user-role positions among the first `len(user)` thinker
    tokens of the cached ids (the talker prompt's leading part)."""

    kv: object  # transformers DynamicCache, int(user.sum()) positions
    user: torch.Tensor  # [M] bool: which of those thinker positions the talker read

    def keep(self, m: int) -> None:
        """Cover only the first m thinker positions (causal attention: the rest of the KV is exact)."""
        if m < len(self.user):
            self.user = self.user[:m]
            crop_to(self.kv, int(self.user.sum()))


@dataclass
class CachedPrefix:
    ids: list[int]  # tokens whose keys/values are in `kv`
    kv: object  # transformers DynamicCache
    embed: torch.Tensor  # [1, N, D] thinker layer-0 inputs
    hidden: torch.Tensor  # [1, N, D] thinker accept_hidden_layer outputs (zeros where never computed)
    window_aligned: bool = False  # ends inside an audio span at an encoder-window boundary (incremental prefill)
    talker: TalkerPrefix | None = None  # None after a text-only first turn, or a talker-less path
    media: list[tuple[int, bytes]] = field(default_factory=list)  # (turn start, content digest) of whole media turns

    def keep(self, n: int) -> None:
        """Crop to the first n tokens."""
        drop = len(self.ids) - n
        if drop > 0:
            self.window_aligned = False
            self.kv.crop(-drop)
            self.ids = self.ids[:n]
            self.embed = self.embed[:, :n]
            self.hidden = self.hidden[:, :n]
            self.media = [(pos, key) for pos, key in self.media if pos < n]
            if self.talker is not None:
                self.talker.keep(n)


class ConversationCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, CachedPrefix] = OrderedDict()
        self._forgotten: OrderedDict[str, None] = OrderedDict()  # closed conversations (bounded)
        self.starts: dict[str, str] = {}  # conversation -> first turn kept after a context trim (context.py)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def has(self, conv_id: str) -> bool:
        return conv_id in self._entries

    def count(self, conv_id: str, token: int) -> int:
        """How many of the cached ids are `token` (0 without an entry); the entry stays."""
        entry = self._entries.get(conv_id)
        return entry.ids.count(token) if entry is not None else 0

    def peek(self, conv_id: str) -> CachedPrefix | None:
        """The entry, left in place (read within one worker step only: a response may check it out next)."""
        return self._entries.get(conv_id)

    def checkout(self, conv_id: str) -> CachedPrefix | None:
        entry = self._entries.pop(conv_id, None)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def checkin(self, conv_id: str, entry: CachedPrefix) -> None:
        if conv_id in self._forgotten:  # closed while a response still held its cache
            del self._forgotten[conv_id]
            return
        if self.capacity <= 0:
            return
        self._entries[conv_id] = entry
        self._entries.move_to_end(conv_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def drop(self, conv_id: str) -> None:
        self._entries.pop(conv_id, None)

    def forget(self, conv_id: str) -> None:
        """The conversation is over: free its cache now, and refuse the check-in of a
        response that was still running (it would otherwise linger until evicted)."""
        self._entries.pop(conv_id, None)
        self.starts.pop(conv_id, None)
        self._forgotten[conv_id] = None
        while len(self._forgotten) > 1024:
            self._forgotten.popitem(last=False)


def crop_to(kv, n: int) -> None:
    """Keep the first n positions of a DynamicCache (its `crop` takes minus the count to drop)."""
    drop = kv.get_seq_length() - n
    if drop > 0:
        kv.crop(-drop)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
