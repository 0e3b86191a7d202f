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
- With a byte budget (budget.py), entries are also evicted, least recently used first,
  while the idle caches plus what live responses reserved exceed it; a checked-out
  cache (a live response's) is never among them. Entries are stored compact (a cropped
  cache is a view that would keep the whole storage), so the counted bytes are the real ones.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .budget import MemoryBudget


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
    def __init__(self, capacity: int, budget: MemoryBudget | None = None) -> None:
        self.capacity = capacity
        self.budget = budget
        self._entries: OrderedDict[str, CachedPrefix] = OrderedDict()
        self._bytes: dict[str, int] = {}  # conversation -> bytes of its entry (budget.Costs.prefix_bytes)
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
            self._report()
        return entry

    def checkin(self, conv_id: str, entry: CachedPrefix) -> None:
        if conv_id in self._forgotten:  # closed while a response still held its cache
            del self._forgotten[conv_id]
            return
        if self.capacity <= 0:
            return
        if self.budget is not None:
            _compact(entry)
            talker = int(entry.talker.user.sum()) if entry.talker is not None else 0
            self._bytes[conv_id] = self.budget.costs.prefix_bytes(len(entry.ids), talker)
        self._entries[conv_id] = entry
        self._entries.move_to_end(conv_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        self._report()
        evicted = 0
        while self.budget is not None and self._entries and not self.budget.fits(0):
            self._entries.popitem(last=False)
            evicted += 1
            self._report()
        self._report(evicted)

    def reserve(self, owner: object, nbytes: int) -> bool:
        """Reserve `nbytes` of the budget for a live job, evicting idle conversations (least
        recently used first) until it fits; False, with nothing reserved, if it cannot."""
        if self.budget is None:
            return True
        evicted = 0
        while self._entries and not self.budget.fits(nbytes):
            self._entries.popitem(last=False)
            evicted += 1
            self._report()
        self._report(evicted)
        return self.budget.reserve(owner, nbytes)

    def release(self, owner: object) -> None:
        if self.budget is not None:
            self.budget.release(owner)

    def _report(self, evicted: int = 0) -> None:
        """Bring the budget's figure for idle caches up to date with the entries."""
        if self.budget is None:
            return
        self._bytes = {conv: self._bytes[conv] for conv in self._entries if conv in self._bytes}
        self.budget.set_cached(sum(self._bytes.values()), len(self._entries), evicted)

    def drop(self, conv_id: str) -> None:
        self._entries.pop(conv_id, None)
        self._report()

    def forget(self, conv_id: str) -> None:
        """The conversation is over: free its cache now, and refuse the check-in of a
        response that was still running (it would otherwise linger until evicted)."""
        self._entries.pop(conv_id, None)
        self._report()
        self.starts.pop(conv_id, None)
        self._forgotten[conv_id] = None
        while len(self._forgotten) > 1024:
            self._forgotten.popitem(last=False)


def _compact(entry: CachedPrefix) -> None:
    """Copy the tensors that are views over a larger storage (a crop keeps it all alive)."""
    layers = [*entry.kv.layers, *(entry.talker.kv.layers if entry.talker is not None else [])]
    for layer in layers:
        if getattr(layer, "keys", None) is not None and _oversized(layer.keys):
            layer.keys, layer.values = layer.keys.clone(), layer.values.clone()
    if _oversized(entry.embed):
        entry.embed = entry.embed.clone()
    if _oversized(entry.hidden):
        entry.hidden = entry.hidden.clone()


def _oversized(t: torch.Tensor) -> bool:
    return t.untyped_storage().nbytes() > t.numel() * t.element_size()


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
