"""The thinker's decode of a response: each text token after the first, and what it means.

Part of `StreamJob` (stream.py), split out to keep modules small, as prefill.py is. It owns
the thinker step (feed the tokens not yet in the KV cache, pick the next), what a picked
token becomes: answer text (`TextDelta`, stop strings), reasoning (a Thinking checkpoint's
`<think>` spans), a tool call (toolcall.py's constraint and its forced tokens), and the
talker's text inputs (`_text_queue`). Everything here runs on the model worker thread,
inside `StreamJob.step()`; the state lives on the job.
"""

from __future__ import annotations

import torch

from .api import Event, ReasoningDelta, TextDelta
from .toolcall import ToolConstraint


class ThinkerDecode:
    """The thinker decode steps of StreamJob (a mixin: the state lives on the job)."""

    def _thinker_step(self) -> list[Event]:
        """Feed the generated tokens not yet in the cache (one, or a call's forced run) and
        pick the next."""
        res = self.res
        past = self._thinker_cache.get_seq_length()
        new = self._tokens[past - self._prompt_ids.shape[1] :]  # [k]: k > 1 only after forced tokens
        tok = torch.tensor([new], device=res.device)  # [1, k]
        pos = torch.arange(past, past + len(new), device=res.device) + self._thinker_deltas  # [1, k]
        out = res.thinker(
            input_ids=tok, position_ids=pos.view(1, 1, -1).expand(3, 1, -1), cache=self._thinker_cache, use_cache=True
        )
        return self._accept_token(out.logits[0, -1])

    def _thinker_next_position(self) -> torch.Tensor:
        """[3, 1, 1]: the mrope position of the next fed token (text: all three axes equal)."""
        past = self._thinker_cache.get_seq_length()
        return (
            (torch.arange(past, past + 1, device=self.res.device) + self._thinker_deltas).view(1, 1, 1).expand(3, 1, 1)
        )

    def _picks_in_batch(self) -> bool:
        """Whether this response's next token may be picked with other rows' (batch.py
        `pick_thinker_rows`): not under a tool-call grammar (its mask and forced tokens are
        this response's) and not reporting log-probabilities (a transcription)."""
        return self._tool_constraint() is None and self.stats.token_logprobs is None

    def _accept_token(self, logits: torch.Tensor, token: int | None = None) -> list[Event]:
        """logits [V]: pick the next token, or take `token`, picked from these logits with
        other responses' rows by `sampling.pick_rows` (only when `_picks_in_batch`)."""
        res = self.res
        tools = self._tool_constraint()
        if tools is not None:
            logits = tools.mask(logits)  # [V]
            if tools.in_calls:
                self._thinker_picker.min_new = 0  # the grammar says where the turn may end
        if token is None:  # else pick_rows chose it and put it in the picker's history, as `pick` does
            if self.stats.token_logprobs is None:
                token = self._thinker_picker.pick(logits)
            else:  # a transcription: its tokens' log-probabilities are reported (avg_logprob)
                token, logprob = self._thinker_picker.pick_scored(logits)
                self.stats.token_logprobs.append(logprob)
        self._tokens.append(token)
        eos = token == res.cfg.im_end_token_id
        self._thinker_done = eos or len(self._tokens) >= self.sampling.max_tokens
        if eos:
            self.stats.end_reason = "stop"
        elif self._thinker_done:
            self.stats.end_reason = "length"
        reasoning = self._classify(token)
        call_events = tools.accept(token) if tools is not None else []
        opened = self._call_at is None and tools is not None and tools.in_calls
        if opened:
            self._call_at = len(self._tokens) - 1
        if self.audio and not self._tts_eos_queued:
            # The talker reads the layer-0 embedding of generated tokens 1..n-2, then
            # tts_eos, then tts_pad: stock builds its text inputs from the thinker's
            # hidden states, which never contain the last generated token (EOS, or the
            # token that hit max_tokens) because it is never fed back. t0 enters through
            # the talker's assistant prefix instead. A call is never spoken: its opening
            # token ends the talker's text like EOS does, and nothing after it is fed.
            if self._thinker_done or opened:
                self._text_queue.append(res.tts_eos)
                self._tts_eos_queued = True
            elif len(self._tokens) > 1 and not reasoning:
                emb = res.talker.text_projection(res.embed(torch.tensor([[token]], device=res.device)))  # [1, 1, D]
                self._text_queue.append(emb)
        if self._call_at is not None and not self._thinker_done:
            call_events += self._forced_tokens(tools)
        self.stats.text_tokens = len(self._tokens)
        if eos or self._call_at is not None:
            return call_events
        if reasoning:
            return self._reasoning_delta(token)
        text = res.processor.tokenizer.decode(self._spoken_tokens(), skip_special_tokens=True)
        if self._reasoned:
            text = text.lstrip("\n")  # Qwen3's template: the answer follows "</think>\n\n"
        text = self._cut_at_stop(text)
        delta, self._text = text[len(self._text) :], text
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            self._text = text[: -len(delta)] if delta else text
            return []
        return [TextDelta(delta, token)] if delta else []

    def _classify(self, token: int) -> bool:
        """Whether `token` is reasoning, for a Thinking checkpoint: `<think>` ... `</think>`
        and the tags themselves (reference variants §1: the model writes the tags, which
        are ordinary tokens, so `skip_special_tokens` would keep them). Reasoning is never
        part of the answer's text, never spoken, and not kept in the history."""
        res = self.res
        if not res.reasons:
            return False
        open_id, close_id = res.think_ids
        if len(self._tokens) == 1:  # a template that opens the reasoning in the generation prompt
            ids = self._prompt_ids[0].tolist()
            self._thinking = open_id in ids[-3:] and close_id not in ids[ids.index(open_id, len(ids) - 3) :]
        tag = token in (open_id, close_id)  # also a stray one: a tag is never text
        if token == open_id:
            self._thinking = True
        reasoning = tag or self._thinking
        if token == close_id:
            self._thinking = False
        if reasoning:
            self._reasoned = True
            self._reasoning_at.add(len(self._tokens) - 1)
            self.stats.reasoning_tokens += 1
            if not tag:
                self._reasoning_ids.append(token)
        return reasoning

    def _reasoning_delta(self, token: int) -> list[Event]:
        text = self.res.processor.tokenizer.decode(self._reasoning_ids, skip_special_tokens=True)
        delta = text[len(self._reasoning_text) :]
        if not delta or text.endswith("\ufffd"):
            return []
        self._reasoning_text = text
        return [ReasoningDelta(delta, token)]

    def _cut_at_stop(self, text: str) -> str:
        """The answer ends before the first stop string (Chat Completions `stop`)."""
        for stop in self.sampling.stop:
            at = text.find(stop, max(0, len(self._text) - len(stop)))
            if at >= 0:
                text = text[:at]
                if not self._tts_eos_queued and self.audio:
                    self._text_queue.append(self.res.tts_eos)
                    self._tts_eos_queued = True
                self._thinker_done = True
                self.stats.end_reason = "stop"
        return text

    def _spoken_tokens(self) -> list[int]:
        eos = self.res.cfg.im_end_token_id
        # Neither reasoning nor a tool call (from its opening token on) is spoken or answer text.
        return [t for i, t in enumerate(self._tokens[: self._call_at]) if t != eos and i not in self._reasoning_at]

    def _forced_tokens(self, tools: ToolConstraint) -> list[Event]:
        """Tokens the grammar allows alone (a call's keys, its closing braces) are taken
        without a pick and fed in one forward with the next step: a call costs a forward
        per free choice, not per token. The picks they skip would have had one candidate."""
        forced = tools.forced()[: self.sampling.max_tokens - len(self._tokens)]
        events: list[Event] = []
        for token in forced:
            self._tokens.append(token)
            self._thinker_picker.history.append(token)
            events += tools.accept(token)
        self._thinker_done = len(self._tokens) >= self.sampling.max_tokens
        if self._thinker_done:
            self.stats.end_reason = "length"
        return events

    def _tool_constraint(self) -> ToolConstraint | None:
        if self._tools is None and self.conv.tools:
            tok = self.res.processor.tokenizer
            vocab = self.res.thinker.config.text_config.vocab_size
            self._tools = ToolConstraint(tok, vocab, self.conv.tools, self.conv.tool_choice)
        return self._tools

    def _text_only_step(self) -> list[Event]:
        if self._thinker_done:
            return self._finish("completed")
        return self._thinker_step()
