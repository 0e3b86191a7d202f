"""Conversations longer than the model's context (issue #7: a documented policy).

Policy:
- A prompt may use `limit = context_tokens - max_tokens` tokens, so the answer fits too
  (context_tokens: `--max-context-tokens`, default the thinker's max_position_embeddings).
- When a turn's prompt is over the limit, whole exchanges are dropped from the oldest
  (a user turn and the answers after it; the instructions always stay) until the
  prompt uses at most half the limit. Trimming to half rather than just under the limit
  means the next turns append to the same start: the conversation cache keeps matching
  and there is one full prefill per trim, not one per turn.
- The first kept turn is remembered per conversation (ConversationCache.starts) and
  applied to later turns and to early prefill alike, until the prompt is over again.
- If the latest user turn alone is over the limit, the response fails with
  `context_length_exceeded` (an error event for the client, nothing is cut silently).
- The session's own item cap (`--max-conversation-items`) still bounds memory first.
"""

from __future__ import annotations

from dataclasses import replace

from . import inputs as inputs_mod
from .api import Conversation, Turn


class ContextTooLong(ValueError):
    """The latest user turn alone does not fit in the context."""


def _view(conv: Conversation, start: int) -> Conversation:
    return replace(conv, turns=list(conv.turns[start:]))


def _start_index(turns: list[Turn], turn_id: str | None) -> int:
    if turn_id is None:
        return 0
    for i, turn in enumerate(turns):
        if turn.id == turn_id:
            return i
    return 0  # the remembered turn was deleted: start over from the oldest


def fit(
    processor,
    conv: Conversation,
    limit_tokens: int,
    start_id: str | None,
    pixels_from_turn: int = 0,
    cached_video_tokens: int = 0,
) -> tuple[inputs_mod.Prepared, int]:
    """The prompt of `conv.turns[start:]` within `limit_tokens`, and `start`.
    `pixels_from_turn` (an index into conv.turns) and `cached_video_tokens`: see inputs.prepare."""
    turns = conv.turns
    start = _start_index(turns, start_id)
    prepared = inputs_mod.prepare(processor, _view(conv, start), max(0, pixels_from_turn - start), cached_video_tokens)
    if prepared.input_ids.shape[1] <= limit_tokens:
        return prepared, start
    target = limit_tokens // 2
    while True:
        later_users = [i for i in range(start + 1, len(turns)) if turns[i].role == "user"]
        if not later_users:
            raise ContextTooLong(
                f"the latest user turn needs {prepared.input_ids.shape[1]} prompt tokens; "
                f"the context allows {limit_tokens} before the answer"
            )
        start = later_users[0]
        # A trimmed prompt no longer matches the cache: every pixel of what is left.
        prepared = inputs_mod.prepare(processor, _view(conv, start))
        n = prepared.input_ids.shape[1]
        if n <= target or (n <= limit_tokens and len(later_users) == 1):
            return prepared, start
