"""One streaming response as a step-wise state machine over the resident model.

Stock `generate()` runs thinker -> talker -> Code2Wav one after the other. Here the same
modules run interleaved (../shared/reference/qwen3-omni-streaming.md §2.3-2.5):

1. `_prefill` (prefill.py): processor, audio/vision encoders, thinker prefill (KV cache)
   and the first text token t0.
2. `_talker_prefill`: as soon as t0 exists, the talker prompt (user parts from thinker
   layer-0 embeddings and `accept_hidden_layer` hidden states, then the 9-position
   assistant prefix ending in t0) is prefilled and code-0 of frame 0 is chosen.
3. `_frame`: the residual codebooks of the current frame (hand-written code-predictor
   loop, no nested `generate()`), Code2Wav on a ramped chunk schedule, then the next
   talker step, which consumes the next text token (the thinker is advanced when it is
   behind), then `tts_eos`, then `tts_pad`.

Each `step()` does one unit of work and returns the events it produced, so one worker
can interleave many responses and cancel one within a talker step. Positions are always
passed explicitly: the modules' `rope_deltas` attributes are shared state and are never
relied on. Every call mirrors what stock `generate()` feeds the same module, so greedy
decoding matches it token for token (tests/test_engine_oracle.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .api import (
    OUTPUT_SAMPLE_RATE,
    AudioChunk,
    Conversation,
    EngineError,
    Event,
    ImagePart,
    ReasoningDelta,
    ResponseDone,
    ResponseStats,
    Sampling,
    TextDelta,
    Turn,
    VideoPart,
    new_id,
    now,
)
from .budget import MemoryBudgetExceeded
from .code2wav import IncrementalCode2Wav, to_pcm16
from .context import ContextTooLong
from .convcache import CachedPrefix, ConversationCache, TalkerPrefix, crop_to
from .prefill import ThinkerPrefill
from .resident import Resident
from .rope import rope_index
from .sampling import Picker
from .toolcall import ToolConstraint

# What a step may raise that fails its response(s) but not the worker (batch.py too).
STEP_ERRORS = (ValueError, RuntimeError, IndexError, torch.OutOfMemoryError)


def step_error(exc: Exception) -> EngineError:
    """The client-facing error for an exception from a step (one mapping for solo and batched steps)."""
    if isinstance(exc, ContextTooLong):
        return EngineError("context_length_exceeded", str(exc))
    if isinstance(exc, MemoryBudgetExceeded):
        return EngineError("memory_budget_exceeded", str(exc))
    if isinstance(exc, torch.OutOfMemoryError):
        return EngineError("out_of_memory", str(exc)[:300])
    return EngineError("engine_error", f"{type(exc).__name__}: {exc}"[:500])


def reuse_talker(prefix: TalkerPrefix | None, user: torch.Tensor) -> int:
    """How many leading thinker positions a reused talker KV covers for a prompt whose
    user mask is `user` [P], cropping `prefix` to them. The thinker's reuse already cut it
    to the shared ids; the role of its last position can still hinge on the token after
    it (`<|im_start|>` then a different role), so it is cut further where the masks part."""
    if prefix is None:
        return 0
    m = min(len(prefix.user), len(user))
    differ = torch.nonzero(prefix.user[:m] != user[:m]).flatten()
    if len(differ):
        m = int(differ[0])
    prefix.keep(m)
    return m


def talker_positions(res: Resident, talker_ids: torch.Tensor, t: dict, audio_lengths) -> tuple:
    """(position_ids [3, 1, T], rope deltas [1, 1]) of a talker prompt [1, T]: the scan over
    it assigns each token its position from the tokens before it only, so a reused or
    early-prefilled prefix keeps the positions it was built with."""
    if audio_lengths is None and "image_grid_thw" not in t and "video_grid_thw" not in t:
        pos = torch.arange(talker_ids.shape[1], device=res.device).view(1, 1, -1).expand(3, 1, -1)
        return pos, torch.zeros(1, 1, dtype=torch.long, device=res.device)
    return rope_index(
        res.talker,
        talker_ids,
        t.get("image_grid_thw"),
        t.get("video_grid_thw"),
        torch.ones_like(talker_ids),
        # Stays False for camera turns too: stock generate() hands the talker only the grids and
        # video_second_per_grid, never use_audio_in_video ("Merge kwargs" in
        # modeling_qwen3_omni_moe.py generate), so its talker positions are computed without it.
        False,
        audio_lengths,
        t.get("video_second_per_grid"),
    )


@dataclass
class StreamConfig:
    chunk_ramp: tuple[int, ...] = (1, 2, 4, 8, 16, 25)
    left_context: int = 25
    context_tokens: int = 0  # prompt + answer budget; 0 = the thinker's max_position_embeddings (context.py)


class StreamJob(ThinkerPrefill):
    """One response. Not thread-safe: only the model worker calls `step()`."""

    def __init__(
        self,
        res: Resident,
        conv: Conversation,
        *,
        audio: bool = True,
        t_committed: float | None = None,
        config: StreamConfig | None = None,
        cache: ConversationCache | None = None,
        partial: bool = False,
        listener: bool = True,
        background: bool = False,
    ) -> None:
        self.res, self.audio, self.config = res, audio, config or StreamConfig()
        self.cache = cache
        self.partial = partial  # incremental prefill of a turn still being spoken: no response
        # No one plays this response as it is made (a Chat Completions request, `listener`
        # False, or a transcription, `background`): no first packet to wait for and no playback
        # to run dry, so the scheduler ranks it below first packets and below responses short
        # of their guard (worker.py).
        self.background = background or not listener
        # A snapshot: the session may edit the live conversation while this runs.
        self.conv = Conversation(
            voice=conv.voice,
            instructions=conv.instructions,
            sampling=conv.sampling,
            turns=list(conv.turns),
            id=conv.id,
            tools=conv.tools,
            tool_choice=conv.tool_choice,
        )
        self.sampling: Sampling = conv.sampling
        self.stats = ResponseStats(t_committed=t_committed)
        self.t_submitted = now()  # first-come order for first packets (the worker's scheduler)
        self.item_id = new_id("item")
        self.cancelled = False
        self.done = False
        self.decode_s = 0.0  # this response's share of the decode steps it ran in (the worker's live load)
        last_user = next((turn for turn in reversed(self.conv.turns) if turn.role == "user"), None)
        # Camera and image turns cost several times an audio turn to prefill (the worker's estimates).
        self.visual = last_user is not None and any(isinstance(p, (ImagePart, VideoPart)) for p in last_user.parts)
        self._phase = "prefill"
        self._tokens: list[int] = []  # text tokens generated (EOS included if produced)
        self._text = ""
        # Reasoning (a Thinking checkpoint's <think> spans): positions in _tokens, their ids, their text.
        self._thinking = self._reasoned = False
        self._reasoning_at: set[int] = set()
        self._reasoning_ids: list[int] = []
        self._reasoning_text = ""
        self._thinker_done = False
        self._text_queue: deque[torch.Tensor] = deque()  # talker text inputs, each [1, 1, D]
        # Tool calls (toolcall.py): the constraint is built on the worker thread at the first
        # token; from the token that opens a call on, nothing more is speech.
        self._tools: ToolConstraint | None = None
        self._call_at: int | None = None  # index in _tokens of the first `<tool_call>`
        self._tts_eos_queued = False
        self._frames = 0
        # On the logits' device: multinomial refuses a CPU generator for CUDA probabilities.
        gen = torch.Generator(device=res.device)
        if self.sampling.seed is not None:
            gen.manual_seed(self.sampling.seed)
        self._gen = gen if self.sampling.seed is not None else None

    # ------------------------------------------------------------------ driver

    def step(self) -> list[Event]:
        """Run one unit of work; returns its events (the last one is ResponseDone)."""
        if self.done:
            return []
        try:
            # Inference mode, not just no_grad: no version counters or view tracking on any
            # tensor made here. The tiny CPU model's steps are hundreds of small ops, and
            # that bookkeeping was 17% of a code-predictor frame (10.4 -> 8.6 ms). Every
            # tensor the caches keep is made and updated inside steps, so never outside it.
            with torch.inference_mode():
                if self.cancelled:
                    return self._finish("cancelled")
                if self._phase == "prefill":
                    return self._partial_prefill() if self.partial else self._prefill()
                if self._phase == "early_encode":
                    return self._early_encode()
                if self._phase == "early_forward":
                    return self._early_forward()
                if self._phase == "talker_prefill":
                    return self._talker_prefill()
                if self._phase == "frame":
                    return self._frame()
                if self._phase == "codec":
                    return self._codec()
                if self._phase == "advance":
                    return self._advance()
                return self._text_only_step()
        except STEP_ERRORS as exc:  # only this response fails; the worker keeps serving
            return self._finish("failed", step_error(exc))

    @property
    def first_packet_pending(self) -> bool:
        if self.background:
            return False
        first = self.stats.t_first_audio if self.audio else self.stats.t_thinker_first_token
        return first is None and not self.done

    def playback_slack_s(self, t: float, frame_cost_s: float, codec_cost_s: float = 0.0) -> float:
        """Seconds to spare before this response's listener runs dry: the audio emitted
        ahead of real-time playback, minus the work left before the next chunk is out (the
        frames still to compute for it, then its Code2Wav decode)."""
        if self.background:
            return float("inf")
        if self.stats.t_first_audio is None or getattr(self, "_vocoder", None) is None:
            return 0.0
        ahead = self.stats.t_first_audio + self.stats.audio_samples / OUTPUT_SAMPLE_RATE - t
        pending = self._frames - self._vocoder.decoded_frames
        # The chunk goes out when it is full or when the answer ends, whichever comes first.
        to_chunk = min(self._vocoder.next_chunk_size() - pending, self.sampling.max_frames - self._frames)
        return ahead - max(0, to_chunk) * frame_cost_s - codec_cost_s

    # ------------------------------------------------------------------ thinker

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

    def _accept_token(self, logits: torch.Tensor) -> list[Event]:
        res = self.res
        tools = self._tool_constraint()
        if tools is not None:
            logits = tools.mask(logits)  # [V]
            if tools.in_calls:
                self._thinker_picker.min_new = 0  # the grammar says where the turn may end
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

    # ------------------------------------------------------------------ talker

    def _talker_prefill_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The talker prompt still to prefill: (embeddings [1, N, D], mask [1, U + 9],
        positions [3, 1, N]); the cache it extends is `self._talker_cache`."""
        res = self.res
        ids = self._prompt_ids  # [1, P]
        P = ids.shape[1]
        user = self._user_mask(ids[0])  # [P] every user-role position, all turns (as stock)
        m = reuse_talker(self._talker_prefix, user)  # the first m thinker positions' user parts are in the KV
        k = int(user[:m].sum())
        mm = torch.isin(ids, res.mm_ids)  # [1, P]
        new_user = res.model._get_talker_user_parts(m, P, mm, self._thinker_hidden, self._thinker_embed)
        user_embeds, user_ids = new_user[:, user[m:]], ids[:, user]  # [1, U - k, D], [1, U]
        is_start = ids[0] == res.cfg.im_start_token_id
        starts = torch.nonzero(is_start[:-1] & (ids[0, 1:] == res.cfg.assistant_token_id)).flatten()
        a0 = int(starts[-1])
        t0 = torch.tensor([[self._tokens[0]]], device=res.device)
        # Only the open assistant turn from its `<|im_start|>`, plus t0 (the parts read no further back).
        embed_with_t0 = torch.cat([self._thinker_embed[:, a0:], res.embed(t0)], dim=1)  # [1, P + 1 - a0, D]
        asst_embeds, asst_ids, _ = res.model._get_talker_assistant_parts(
            0, P + 1 - a0, res.speaker_id(self.conv.voice), embed_with_t0, res.tts_pad, res.tts_bos, res.tts_eos
        )
        embeds = torch.cat([user_embeds, asst_embeds], dim=1)  # [1, U - k + 9, D]: what is left to prefill
        talker_ids = torch.cat([user_ids, asst_ids], dim=1)  # [1, U + 9]: the whole talker prompt
        mask = torch.ones_like(talker_ids)
        pos, deltas = talker_positions(res, talker_ids, self._t, self._audio_lengths)
        self._talker_deltas = deltas
        self._talker_cache = self._talker_prefix.kv if k else DynamicCache(config=res.talker.config.text_config)
        self._talker_prefix = TalkerPrefix(self._talker_cache, user)  # _store_cache crops it back to U
        return embeds, mask, pos[:, :, k:]

    def _talker_prefill(self) -> list[Event]:
        embeds, mask, pos = self._talker_prefill_inputs()
        out = self.res.talker(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=pos,
            cache=self._talker_cache,
            use_cache=True,
            output_hidden_states=True,
        )
        return self._talker_prefill_done(embeds.shape[1], out.logits[0, -1], out.hidden_states[0][-1][:, -1:])

    def _talker_prefill_done(self, tokens: int, logits: torch.Tensor, last_hidden: torch.Tensor) -> list[Event]:
        """After the talker's prefill forward of `tokens` positions: the last one's logits
        [V] and last-layer hidden state [1, 1, D] choose code-0 of frame 0."""
        res = self.res
        self.stats.talker_prefill_tokens = tokens
        s = self.sampling
        self._talker_picker = Picker(
            greedy=s.greedy,
            temperature=s.talker_temperature,
            top_k=s.talker_top_k,
            top_p=s.talker_top_p,
            repetition_penalty=s.talker_repetition_penalty,
            suppress=res.talker_suppress,
            eos_id=res.tcfg.codec_eos_token_id,
            min_new=s.min_frames,
            generator=self._gen,
        )
        self._vocoder = IncrementalCode2Wav(res.vocoder, self.config.left_context, list(self.config.chunk_ramp))
        self._after_talker_row(logits, last_hidden)
        self.stats.t_talker_first_frame = now()
        self._phase = "frame"
        return []

    def _user_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """[P] bool: positions in user turns (from their `<|im_start|>` to the next one),
        which stock's talker prompt takes from every turn of the conversation."""
        res = self.res
        P = ids.shape[0]
        pos_idx = torch.arange(P, device=res.device)
        is_start = ids == res.cfg.im_start_token_id
        prev_start = torch.cummax(torch.where(is_start, pos_idx, torch.full_like(pos_idx, -1)), 0).values.clamp_min(0)
        return ids[(prev_start + 1).clamp_max(P - 1)] == res.cfg.user_token_id

    def _talker_user_prefill(
        self, ids: torch.Tensor, t: dict, audio_lengths, embed: torch.Tensor, hidden: torch.Tensor, prefix
    ) -> TalkerPrefix:
        """The talker's KV for the user-role positions of `ids` [1, N], a prompt cut inside
        the user turn being spoken (early prefill), extending `prefix` (a TalkerPrefix for
        a leading part, or None). The talker reads user turns from the thinker's layer-0
        inputs and `accept_hidden_layer` states ([1, N, D] each), which the early prefill
        has just computed; with causal attention these positions' KV is final, so at
        commit the talker prefills only the turn's tail and the assistant prefix. The same
        calls as `_talker_prefill`, in two pieces (tests/test_camera_prefill.py and
        tests/test_incremental_prefill.py compare with one offline prefill)."""
        res = self.res
        N = ids.shape[1]
        user = self._user_mask(ids[0])  # [N]
        m = reuse_talker(prefix, user)
        k = int(user[:m].sum())
        kv = prefix.kv if prefix is not None and k else DynamicCache(config=res.talker.config.text_config)
        if int(user.sum()) > k:
            mm = torch.isin(ids, res.mm_ids)  # [1, N]
            new_user = res.model._get_talker_user_parts(m, N, mm, hidden, embed)[:, user[m:]]  # [1, U - k, D]
            talker_ids = ids[:, user]  # [1, U]
            pos, _ = talker_positions(res, talker_ids, t, audio_lengths)
            res.talker(
                inputs_embeds=new_user,
                attention_mask=torch.ones_like(talker_ids),
                position_ids=pos[:, :, k:],
                cache=kv,
                use_cache=True,
            )
        return TalkerPrefix(kv, user)

    def _after_talker(self, out) -> None:
        self._after_talker_row(out.logits[0, -1], out.hidden_states[0][-1][:, -1:])

    def _after_talker_row(self, logits: torch.Tensor, last_hidden: torch.Tensor) -> None:
        """logits [V] of the last position; last_hidden [1, 1, D] (as stock's prepare_inputs reads it)."""
        self._code0 = self._talker_picker.pick(logits)
        self._talker_last_hidden = last_hidden

    def _frame(self) -> list[Event]:
        """Finish the current frame: residual codes, then audio if a chunk is due. When a
        chunk is produced the step ends there, so it reaches the listener before the
        next talker step is computed; `_advance` runs on the following step."""
        done = self._frame_end_check()
        if done is not None:
            return done
        self._frame_t0 = now()
        codes, codec_sum = self._predict_residuals()  # [16], [1, 1, D]
        return self._frame_finish(codes, codec_sum, inline_advance=True)

    def _frame_end_check(self) -> list[Event] | None:
        """The response's end (codec EOS or max_frames) instead of another frame, or None."""
        if self._code0 == self.res.tcfg.codec_eos_token_id or self._frames >= self.sampling.max_frames:
            if self._call_at is not None and not self._thinker_done:
                return self._end_speech()
            return self._finish("completed")
        return None

    def _end_speech(self) -> list[Event]:
        """The talker ended its utterance before a call: the rest of the audio goes out,
        then the thinker decodes the calls alone (the "text" phase)."""
        tail = self._vocoder.decode(final=True)
        self._vocoder_flushed = True
        self._phase = "text"
        return [self._audio_event(tail)] if tail is not None and len(tail) else []

    def _frame_finish(self, codes: torch.Tensor, codec_sum: torch.Tensor, *, inline_advance: bool) -> list[Event]:
        """codes [16] of this frame; codec_sum [1, 1, D], the talker's next codec input.
        A batched caller (batch.py) advances every response in one talker step instead."""
        self._codec_sum = codec_sum
        if self.stats.t_code_predictor_first_frame is None:
            self.stats.t_code_predictor_first_frame = now()
        self._frames += 1
        self._vocoder.push(codes)
        if self._vocoder.ready():
            # A chunk is due. Its Code2Wav decode is a step of its own, so that the scheduler
            # can put a new turn's first packet, or a listener shorter of audio, before it:
            # four responses' decodes inside one batched frame step took 50-60 ms on the tiny
            # CPU model, and a first packet that arrived meanwhile waited for all of them.
            self._phase = "codec"
            return []
        if not inline_advance:
            self._phase = "advance"
            return []
        return self._advance()

    def _codec(self) -> list[Event]:
        """Decode the chunk that the last frame completed and send it; the talker advances
        on the next step."""
        audio = self._vocoder.decode()
        self._phase = "advance"
        return [self._audio_event(audio)] if audio is not None else []

    def _advance(self) -> list[Event]:
        """The next talker step. The talker waits for the thinker: it reads one text
        token per frame while text lasts, then tts_eos, then tts_pad."""
        res = self.res
        events: list[Event] = []
        while self._needs_text():
            events += self._thinker_step()
        embeds, position = self._codec_sum + self._next_text_input(), self._talker_next_position()
        graphed = res.talker_graph.step(self._talker_cache, embeds, position) if res.talker_graph else None
        if graphed is not None:  # --talker-cuda-graph (cudagraphs.py GraphedTalkerStep): logits [1, V], [1, 1, D]
            self._after_talker_row(graphed[0][0], graphed[1])
        else:
            out = res.talker(
                inputs_embeds=embeds,
                position_ids=position,
                cache=self._talker_cache,
                use_cache=True,
                output_hidden_states=True,
                generation_step=self._frames,  # only echoed back by the module; text comes from our queue
            )
            self._after_talker(out)
        self._end_advance()
        return events

    def _needs_text(self) -> bool:
        return not self._text_queue and not self._thinker_done and not self._tts_eos_queued

    def _next_text_input(self) -> torch.Tensor:
        """[1, 1, D]: the next generated token's projected embedding, tts_eos, then tts_pad."""
        return self._text_queue.popleft() if self._text_queue else self.res.tts_pad

    def _talker_next_position(self) -> torch.Tensor:
        past = self._talker_cache.get_seq_length()
        return (
            (torch.arange(past, past + 1, device=self.res.device) + self._talker_deltas).view(1, 1, 1).expand(3, 1, 1)
        )

    def _end_advance(self) -> None:
        self.stats.frame_ms.append((now() - self._frame_t0) * 1000.0)
        self._phase = "frame"

    def _residual_picker(self) -> Picker:
        """Stock's nested code-predictor `generate()` picks residuals greedily, or with
        top-k 50 / top-p 0.8 when sampling."""
        return Picker(greedy=self.sampling.greedy, top_k=50, top_p=0.8, generator=self._gen)

    def _predict_residuals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 15 residual codebooks of the current frame and the sum of all 16 code
        embeddings that the next talker step consumes."""
        res = self.res
        c0 = torch.tensor([[self._code0]], device=res.device)
        e0 = res.talker.get_input_embeddings()(c0)  # [1, 1, D]
        if self.sampling.greedy and res.device.type == "cuda":
            # The same argmax on the device: no host round trip per step, and one graph replay
            # per frame with CUDA graphs (cudagraphs.py). The CPU keeps the Picker path below.
            residual, codec_sum = res.predictor.run_greedy(self._talker_last_hidden, e0)  # [1, 15], [1, 1, D]
            return torch.cat([c0[0], residual[0]]), codec_sum
        picker = self._residual_picker()
        residual, codec_sum = res.predictor.run(
            self._talker_last_hidden, e0, lambda step, logits: torch.tensor([picker.pick(logits[0])], device=res.device)
        )  # [1, 15], [1, 1, D]; Picker samples on the host side of the graphs, between step replays
        return torch.cat([c0[0], residual[0]]), codec_sum

    def _audio_event(self, samples) -> AudioChunk:
        vocoder = self._vocoder
        chunk = AudioChunk(
            to_pcm16(samples),
            first_frame=self._frames_emitted(),
            frames=vocoder.decoded_frames - self._frames_emitted(),
        )
        self._emitted_frames = vocoder.decoded_frames
        self.stats.audio_samples += chunk.samples
        if self.stats.t_first_audio is None:
            self.stats.t_first_audio = now()
        return chunk

    def _frames_emitted(self) -> int:
        return getattr(self, "_emitted_frames", 0)

    # ------------------------------------------------------------------ end

    def _store_cache(self, status: str) -> None:
        """Keep the thinker's KV for the next turn: the prompt plus every generated token
        fed back (all but the last). Layer-0 inputs of fed tokens are their embeddings; the
        talker never reads their deep hidden states (assistant positions), so zeros."""
        cache_kv = getattr(self, "_thinker_cache", None)
        if self.cache is None or cache_kv is None or status == "failed":
            return
        fed = self._tokens[:-1]
        ids = self._prompt_ids[0].tolist() + fed
        if cache_kv.get_seq_length() != len(ids):
            return  # never store a cache that does not match its ids
        embed, hidden = self._thinker_embed, self._thinker_hidden
        if fed:
            fed_embed = self.res.embed(torch.tensor([fed], device=self.res.device))  # [1, F, D]
            embed = torch.cat([embed, fed_embed], 1)
            hidden = torch.cat([hidden, torch.zeros_like(fed_embed)], 1)
        talker = getattr(self, "_talker_prefix", None)
        if talker is not None:  # drop the assistant prefix and codec steps: the next prompt differs there
            crop_to(talker.kv, int(talker.user.sum()))
        media = sorted(getattr(self, "_media", {}).items())
        self.cache.checkin(self.conv.id, CachedPrefix(ids, cache_kv, embed, hidden, talker=talker, media=media))

    def _finish(self, status: str, error: EngineError | None = None) -> list[Event]:
        events: list[Event] = []
        flushed = getattr(self, "_vocoder_flushed", False)
        if status == "completed" and self.audio and getattr(self, "_vocoder", None) is not None and not flushed:
            tail = self._vocoder.decode(final=True)
            if tail is not None and len(tail):
                events.append(self._audio_event(tail))
        if self._tools is not None:
            events += self._tools.finish()  # a call still open ends incomplete, its arguments so far
        self.done = True
        if self.cache is not None:
            self.cache.release(self)  # before the check-in, which may need the room
        self._store_cache(status)
        self.stats.frames = self._frames
        self.stats.t_done = now()
        turn = None
        if status != "failed":  # a failed answer leaves no trace in the history
            eos = self.res.cfg.im_end_token_id
            # Calls included (the next prompt splices them back); reasoning dropped, as Qwen3's template
            # drops earlier turns' reasoning from the history.
            ids = [t for i, t in enumerate(self._tokens) if t != eos and i not in self._reasoning_at]
            calls = list(self._tools.calls) if self._tools is not None else []
            turn = Turn(
                "assistant", [], id=self.item_id, token_ids=ids, frames=self._frames, text=self._text, tool_calls=calls
            )
        events.append(ResponseDone(status, turn, self.stats, error))  # type: ignore[arg-type]
        return events
