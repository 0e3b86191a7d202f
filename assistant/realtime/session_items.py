"""Conversation items: the `conversation.item.*` client events (create, retrieve, delete,
truncate) and the bookkeeping of turns against the engine's `Conversation` (the item
order, the sliding window of items and of camera frames, function-call items). A mixin of
`RealtimeSession` (see session.py); it shares the session's state.

Edits reach the `Conversation` through `_edit`, so that none lands while a response for it
runs (engine api).
"""

from __future__ import annotations

from ..engine.api import TextPart, ToolCall, Turn, VideoPart, new_id
from . import events as ev
from . import tools as tools_mod
from .commands import TruncateTurn
from .items import item_json, parts_from_content


class ItemsSide:
    def _add_turn(self, turn: Turn, previous: str | None) -> None:
        if previous is None or previous not in self._items:
            self._items.append(turn.id)
        else:
            self._items.insert(self._items.index(previous) + 1, turn.id)
        self._roles[turn.id] = turn.role
        item = item_json(turn, output=self._kinds.get(turn.id, "audio"))
        self._send("conversation.item.added", previous_item_id=previous, item=item)
        self._send("conversation.item.done", item=item)
        self._pending_turns[turn.id] = turn
        self._edit(lambda: self._insert_turn(turn, previous))

    def _insert_turn(self, turn: Turn, previous: str | None) -> None:
        self._pending_turns.pop(turn.id, None)
        if turn.id not in self._items:
            return  # deleted before it was applied
        turns = self.conversation.turns
        index = next((i + 1 for i, t in enumerate(turns) if t.id == previous), len(turns))
        turns.insert(index, turn)
        self._enforce_max_items()

    def _enforce_max_items(self) -> None:
        """Policy: past `max_conversation_items`, the oldest items are deleted (and the
        client is told with conversation.item.deleted), as a sliding window."""
        turns = self.conversation.turns
        while len(turns) > self.settings.max_conversation_items:
            old = turns.pop(0)
            if old.id in self._items:
                self._items.remove(old.id)
            self._send("conversation.item.deleted", item_id=old.id)
        self._enforce_video_frames()

    def _enforce_video_frames(self) -> None:
        """Policy: past `max_conversation_video_frames` (40 per 20 s camera turn, ~0.9 MB each
        at 640x480), the oldest camera turns lose their frames until half the budget is
        left; they keep their audio and their item. Halving makes it one event per many
        turns: each costs one prefill from the first changed turn on, since the prompt
        changes there (the conversation cache compares every turn's media). The turn is
        replaced, not edited: a response already running keeps the turns it took."""
        budget = self.settings.max_conversation_video_frames
        turns = self.conversation.turns
        counts = [sum(len(p.frames) for p in t.parts if isinstance(p, VideoPart)) for t in turns]
        total = sum(counts)
        if total <= budget:
            return
        for i, turn in enumerate(turns):
            if total <= budget // 2:
                break
            rest = [p for p in turn.parts if not isinstance(p, VideoPart)]
            if counts[i] and rest:  # a turn made only of video (not one the session builds) stays whole
                turns[i] = Turn(
                    turn.role, rest, id=turn.id, token_ids=turn.token_ids, frames=turn.frames, text=turn.text
                )
                total -= counts[i]

    def _item_create(self, event: ev.ItemCreate) -> None:
        item = event.item
        assert item is not None
        item_id = item.id or new_id("item")
        if item_id in self._items:
            raise ev.ProtocolError("item_already_exists", f"item {item_id!r} already exists", param="item.id")
        previous = event.previous_item_id
        if previous not in (None, "root") and previous not in self._items:
            raise ev.ProtocolError("item_not_found", f"no item {previous!r}", param="previous_item_id")
        if item.type != "message":
            turn = self._tool_turn(item, item_id)
        elif item.role == "user":
            try:
                parts = parts_from_content(
                    item.content, input_rate_hz=self.input_rate_hz, max_image_pixels=self.settings.max_image_pixels
                )
            except ValueError as exc:
                raise ev.ProtocolError("invalid_image", str(exc), param="item.content") from None
            turn = Turn("user", parts, id=item_id)
        else:
            text = "".join(c.text for c in item.content)
            turn = Turn(item.role, [TextPart(text)], id=item_id, text=text if item.role == "assistant" else "")
            if item.role == "assistant":
                self._kinds[item_id] = "audio" if any(c.type == "output_audio" for c in item.content) else "text"
        if previous == "root":
            self._items.insert(0, item_id)
            self._roles[item_id] = turn.role
            payload = item_json(turn, output=self._kinds.get(item_id, "audio"))
            self._send("conversation.item.added", previous_item_id=None, item=payload)
            self._send("conversation.item.done", item=payload)
            self._pending_turns[item_id] = turn
            self._edit(lambda: self._insert_root(turn))
        else:
            self._add_turn(turn, previous or (self._items[-1] if self._items else None))

    def _tool_turn(self, item: ev.ItemIn, item_id: str) -> Turn:
        """A client's function_call (history it replays) or function_call_output item."""
        call_id = item.call_id or ""
        if item.type == "function_call":
            if call_id in self._call_ids:
                raise ev.ProtocolError("invalid_value", f"call_id {call_id!r} is already used", param="item.call_id")
            call = ToolCall(item.name or "", item.arguments or "{}", call_id=call_id)
            self._call_ids[call_id] = item_id
            self._call_items[item_id] = tools_mod.call_item(item_id, call, "completed")
            return Turn("assistant", [], id=item_id, tool_calls=[call])
        if call_id not in self._call_ids:
            raise ev.ProtocolError(
                "invalid_value", f"no function_call with call_id {call_id!r} in this conversation", param="item.call_id"
            )
        return Turn("tool", [TextPart(item.output or "")], id=item_id, call_id=call_id)

    def _drop_call(self, call_id: str) -> None:
        """A deleted function_call item: the assistant turn keeps its other calls."""
        turns = self.conversation.turns
        for i, t in enumerate(turns):
            if any(c.call_id == call_id for c in t.tool_calls):
                calls = [c for c in t.tool_calls if c.call_id != call_id]
                if not calls and not t.text_content() and t.role == "assistant" and not t.token_ids:
                    turns.pop(i)
                else:
                    turns[i] = Turn(
                        t.role, t.parts, id=t.id, token_ids=[], frames=t.frames, text=t.text, tool_calls=calls
                    )
                return

    def _insert_root(self, turn: Turn) -> None:
        self._pending_turns.pop(turn.id, None)
        if turn.id in self._items:
            self.conversation.turns.insert(0, turn)
            self._enforce_max_items()

    def _find(self, item_id: str) -> Turn | None:
        return self._pending_turns.get(item_id) or self.conversation.find(item_id)

    def _item_retrieve(self, event: ev.ItemRetrieve) -> None:
        active = self._active
        if active is not None and event.item_id == active.item_id:
            turn = Turn("assistant", [], id=active.item_id, text="".join(active.text))
            item = item_json(turn, status="in_progress", output="audio" if active.audio else "text")
        elif event.item_id in self._call_items and event.item_id in self._items:
            item = self._call_items[event.item_id]
        else:
            turn = self._find(event.item_id) if event.item_id in self._items else None
            if turn is None:
                raise ev.ProtocolError("item_not_found", f"no item {event.item_id!r}", param="item_id")
            item = item_json(
                turn,
                output=self._kinds.get(turn.id, "audio"),
                with_audio=True,
                input_rate_hz=self.input_rate_hz,
                transcript=self.transcript_of(turn.id),
            )
        self._send("conversation.item.retrieved", item=item)

    def _item_delete(self, event: ev.ItemDelete) -> None:
        item_id = event.item_id
        if item_id not in self._items:
            raise ev.ProtocolError("item_not_found", f"no item {item_id!r}", param="item_id")
        if self._active is not None and item_id == self._active.item_id:
            raise ev.ProtocolError(
                "invalid_value", "the item of the response in progress cannot be deleted", param="item_id"
            )
        self._items.remove(item_id)
        self._pending_turns.pop(item_id, None)
        call = self._call_items.pop(item_id, None)
        if call is not None:
            self._call_ids.pop(call["call_id"], None)  # an output for it would now answer no call
        if call is not None and self._find(item_id) is None:  # a generated call: part of its response's turn
            self._edit(lambda: self._drop_call(call["call_id"]))
        else:
            self._edit(lambda: self.conversation.delete(item_id))
        self._send("conversation.item.deleted", item_id=item_id)

    def _item_truncate(self, event: ev.ItemTruncate) -> None:
        if event.content_index != 0:
            raise ev.ProtocolError(
                "invalid_value", "assistant items have one content part (index 0)", param="content_index"
            )
        self._truncate(event.item_id, event.audio_end_ms)

    def _truncate(self, item_id: str, audio_end_ms: int) -> None:
        if item_id not in self._items:
            raise ev.ProtocolError("item_not_found", f"no item {item_id!r}", param="item_id")
        if self._roles.get(item_id) != "assistant" or item_id in self._call_items:
            raise ev.ProtocolError("invalid_value", "only assistant message items can be truncated", param="item_id")
        # Clamp to the audio actually sent: a client may report playback past what it got
        # (openai-agents-python PR #4122 clamps the same way on its side).
        clamped = max(0, min(audio_end_ms, int(self._audio_sent_ms.get(item_id, 0.0))))
        self._edit(lambda: self._out.append(TruncateTurn(item_id, clamped)))
        self._send("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=clamped)
