"""One streaming response as a step-wise state machine over the resident model.

Stock `generate()` runs thinker -> talker -> Code2Wav one after the other. Here the same
modules run interleaved (../shared/reference/qwen3-omni-streaming.md §2.3-2.5):

1. `_prefill` (prefill.py): processor, audio/vision encoders, thinker prefill (KV cache)
   and the first text token t0.
2. `_talker_prefill` (talker.py): as soon as t0 exists, the talker prompt (user parts from thinker
   layer-0 embeddings and `accept_hidden_layer` hidden states, then the 9-position
   assistant prefix ending in t0) is prefilled and code-0 of frame 0 is chosen.
3. `_frame` (talker.py): the residual codebooks of the current frame (hand-written code-predictor
   loop, no nested `generate()`), Code2Wav on a ramped chunk schedule, then the next
   talker step, which consumes the next text token (the thinker is advanced when it is
   behind, thinker.py), then `tts_eos`, then `tts_pad`.

Each `step()` does one unit of work and returns the events it produced, so one worker
can interleave many responses and cancel one within a talker step. Positions are always
passed explicitly: the modules' `rope_deltas` attributes are shared state and are never
relied on. Every call mirrors what stock `generate()` feeds the same module, so greedy
decoding matches it token for token (tests/test_engine_oracle.py).

This module owns the job's state, its driver (`step()` dispatches on `_phase`), what the
worker's scheduler reads (`first_packet_pending`, `playback_slack_s`, `stats`), the
error mapping of a failed step, and the end of a response (`_finish`, the conversation
cache's check-in). The steps themselves live in mixins, one per stage, so that modules
stay small: prefill.py (`ThinkerPrefill`), thinker.py (`ThinkerDecode`) and talker.py
(`TalkerAudio`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from .api import (
    Conversation,
    EngineError,
    Event,
    ImagePart,
    ResponseDone,
    ResponseStats,
    Sampling,
    Turn,
    VideoPart,
    new_id,
    now,
)
from .budget import MemoryBudgetExceeded
from .context import ContextTooLong
from .convcache import CachedPrefix, ConversationCache, crop_to
from .prefill import ThinkerPrefill
from .resident import Resident
from .talker import TalkerAudio
from .thinker import ThinkerDecode
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


@dataclass
class StreamConfig:
    chunk_ramp: tuple[int, ...] = (1, 2, 4, 8, 16)  # settings.chunk_ramp_frames
    left_context: int = 0  # Code2Wav: 0 streams its state; N > 0 decodes N frames of left context again
    context_tokens: int = 0  # prompt + answer budget; 0 = the thinker's max_position_embeddings (context.py)


class StreamJob(ThinkerPrefill, ThinkerDecode, TalkerAudio):
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
        # Audio ahead of playback under which the frames so far go out short of a whole chunk
        # (talker.py `_lead_short`); set by the model worker from its step costs, 0 = never.
        self.flush_lead_s = 0.0
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
                if self._phase == "thinker_forward":
                    return self._thinker_forward()
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
        ahead = self._lead_s(t)
        pending = self._frames - self._vocoder.decoded_frames
        # The chunk goes out when it is full or when the answer ends, whichever comes first;
        # with the streaming decode, also after the next frame once the lead runs short.
        to_chunk = min(self._vocoder.next_chunk_size() - pending, self.sampling.max_frames - self._frames)
        if self._vocoder.stream is not None and self.flush_lead_s:
            to_chunk = min(to_chunk, 1)
        return ahead - max(0, to_chunk) * frame_cost_s - codec_cost_s

    # ------------------------------------------------------------------ end

    def _store_cache(self, status: str) -> None:
        """Keep the thinker's KV for the next turn: the prompt plus every generated token
        fed back (all but the last). Layer-0 inputs of fed tokens are their embeddings; the
        talker never reads their deep hidden states (assistant positions), so zeros."""
        cache_kv = getattr(self, "_thinker_cache", None)
        prefix = getattr(self, "_prefix", None)
        if self.cache is not None and prefix is not None and status != "failed":
            # Cancelled between the prefill's two steps: the prefix, checked out and cropped
            # to what this prompt shares with it, goes back as it is (no forward touched it).
            self._prefix = None
            self.cache.checkin(self.conv.id, prefix)
            return
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
