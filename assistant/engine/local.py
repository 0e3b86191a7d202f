"""LocalEngine: one resident Qwen3-Omni in this process, shared by all conversations."""

from __future__ import annotations

import asyncio
import logging
import math

import numpy as np
import torch

from ..settings import Settings, chunk_ramp
from . import toolcall
from .api import (
    FRAME_MS,
    INPUT_SAMPLE_RATE,
    AudioPart,
    Conversation,
    EngineError,
    EngineInfo,
    Part,
    Sampling,
    TextPart,
    Turn,
    VideoPart,
    now,
)
from .convcache import ConversationCache
from .resident import Resident
from .stream import StreamConfig, StreamJob
from .worker import LocalResponse, ModelWorker

log = logging.getLogger("assistant.engine")


def load_resident(
    path: str,
    device: torch.device,
    dtype: torch.dtype,
    attn_implementation: str = "sdpa",
    audio_window_s: int | None = None,
    cuda_graphs: bool = True,
) -> Resident:
    """Load model and processor with exactly the calls used for the published checkpoint."""
    from transformers import Qwen3OmniMoeForConditionalGeneration, Qwen3OmniMoeProcessor

    from ..compat import patch_loaded_model

    # On CUDA, accelerate places weights straight on the GPU (no 66 GB detour through host memory).
    placement = {"device_map": {"": device}} if device.type == "cuda" else {}
    model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation, **placement
    ).eval()
    patch_loaded_model(model)
    processor = Qwen3OmniMoeProcessor.from_pretrained(path)
    return Resident(model, processor, device, dtype, audio_window_s, cuda_graphs)


class LocalEngine:
    def __init__(self, settings: Settings, resident: Resident | None = None, info: EngineInfo | None = None) -> None:
        self.settings = settings
        self.resident = resident
        self.info = info or EngineInfo("local", settings.model, settings.device, settings.dtype, False)
        self.stream_config = StreamConfig(
            tuple(chunk_ramp(settings)), settings.codec_left_context_frames, settings.max_context_tokens
        )
        self.worker = ModelWorker(
            settings.engine_queue_size,
            max_batch=settings.max_batch_responses,
            guard_s=settings.schedule_guard_ms / 1000.0,
        )
        self.conv_cache = ConversationCache(settings.conversation_cache_size)  # touched by the worker thread only
        self._offered: dict[str, tuple[int, int]] = {}  # conversation -> (turns, samples) last offered to prefill

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.resident is None:
            self.resident = await asyncio.to_thread(self._load)
        # Before the worker starts: a CUDA graph capture must have the device to itself.
        await asyncio.to_thread(self.resident.capture_graphs, list(self.stream_config.chunk_ramp),
                                self.stream_config.left_context)  # fmt: skip
        self.worker.start()
        if self.settings.warmup:
            await self.warmup()

    def _load(self) -> Resident:
        from ..modelres import device_and_dtype, resolve_model

        resolved = resolve_model(self.settings)
        device, dtype = device_and_dtype(self.settings)
        if device.type == "cpu":
            # Measured on the 2-core CI box (tiny model): one intra-op thread gave a lower first
            # packet and half the decode time of two; the other core serves the event loop.
            torch.set_num_threads(max(1, self.settings.cpu_threads))
        log.info("loading %s on %s (%s): %s", resolved.path_or_id, device, dtype, resolved.reason)
        resident = load_resident(
            resolved.path_or_id,
            device,
            dtype,
            self.settings.attn_implementation,
            self.settings.audio_window_s or None,
            self.settings.cuda_graphs,
        )
        # Tool calls' grammar reads the vocabulary through llguidance: built now (seconds for
        # Qwen's 151k entries), not in the first constrained step.
        toolcall.ll_tokenizer(resident.processor.tokenizer, resident.thinker.config.text_config.vocab_size)
        self.info = EngineInfo(
            "local", resolved.path_or_id, str(device), str(dtype).removeprefix("torch."), resolved.is_tiny
        )
        return resident

    async def warmup(self) -> None:
        """Three short spoken answers at once, to two spoken turns and a camera turn, so that
        the first users pay for no lazy initialisation: the audio and vision encoders' first
        calls and the batched decode steps (batch.py) all run once. With one answer to a text
        turn instead, two fresh servers' first 4-user benchmark levels had an audio p90 first
        packet of 84 and 169 ms, against 47-60 ms when the level was run again (tiny, CPU)."""
        rng = np.random.default_rng(0)
        speech = (0.01 * rng.standard_normal(INPUT_SAMPLE_RATE)).astype(np.float32)  # 1 s, quiet
        frame = np.full((64, 64, 3), 128, dtype=np.uint8)
        turns = [
            [AudioPart(speech)],
            [AudioPart(speech)],
            [VideoPart([frame, frame], [0.0, 0.5], interleave_audio=True), AudioPart(speech)],
        ]
        t0 = now()
        convs = []
        for parts in turns:
            conv = self.new_conversation()
            conv.sampling = Sampling(greedy=True, min_tokens=2, max_tokens=4, min_frames=6, max_frames=6)
            conv.add_user(parts)
            convs.append(conv)

        async def answer(conv: Conversation) -> None:
            async for ev in self.respond(conv):
                if getattr(ev, "status", None) == "failed":
                    raise RuntimeError(f"warm-up failed: {ev.error}")

        try:
            await asyncio.gather(*(answer(conv) for conv in convs))
        finally:
            for conv in convs:
                self.forget(conv)
        log.info("warm-up done in %.0f ms", (now() - t0) * 1000)

    async def close(self) -> None:
        await asyncio.to_thread(self.worker.stop)

    # ------------------------------------------------------------------ conversations

    def new_conversation(self, voice: str | None = None, instructions: str = "") -> Conversation:
        s = self.settings
        sampling = Sampling(
            min_tokens=s.min_answer_tokens,
            max_tokens=s.max_answer_tokens,
            min_frames=s.min_answer_frames,
            max_frames=s.max_answer_frames,
        )
        return Conversation(voice=voice or s.voice, instructions=instructions, sampling=sampling)

    def respond(self, conversation: Conversation, *, t_committed: float | None = None, audio: bool = True):
        job = StreamJob(
            self.resident,
            conversation,
            audio=audio,
            t_committed=t_committed,
            config=self.stream_config,
            cache=self.conv_cache,
        )
        response = LocalResponse(job, conversation, self.worker)
        try:
            self.resident.speaker_id(conversation.voice)
        except ValueError as exc:  # refuse before any work: a bad setting, not an engine fault
            response.fail_now(EngineError("invalid_input", str(exc)))
            return response
        if not self.worker.submit(job, response.deliver):
            response.fail_now(EngineError("overloaded", "the model worker's queue is full; try again shortly"))
        return response

    def prefill(self, conversation: Conversation, parts: list[Part]) -> bool:
        """Start prefilling a user turn that is still being spoken (fire and forget).

        Only whole audio-encoder windows are prefilled, since their tokens are final; at
        commit the response then prefills just the tail. A camera turn ([VideoPart with
        interleave_audio, AudioPart]) is cut where both its audio windows and its 2-frame
        grids are complete. Returns False when there is nothing to do or the worker's
        queue is full (dropped: it is only a head start)."""
        cut = self._final_part(parts)
        if cut is None:
            return False
        key = (len(conversation.turns), len(cut[-1].pcm))  # type: ignore[union-attr]
        if self._offered.get(conversation.id) == key:
            return False  # no new complete window since the last offer
        self._offered[conversation.id] = key
        snapshot = Conversation(
            voice=conversation.voice,
            instructions=conversation.instructions,
            sampling=conversation.sampling,
            turns=[*conversation.turns, Turn("user", cut)],
            id=conversation.id,
        )
        job = StreamJob(self.resident, snapshot, cache=self.conv_cache, partial=True)
        return self.worker.submit(job, lambda events: None)

    def _final_part(self, parts: list[Part]) -> list[Part] | None:
        """The final head of a turn being spoken: whole encoder windows of its audio and,
        for a camera turn, the grids (2 frames, 1 s at 2 fps) up to there; None if empty.

        In the interleaved layout grid g sits before the audio tokens of second g
        (processing_qwen3_omni_moe.py replace_video_with_audio_token), so with audio and
        video both cut at the same whole second s, every token up to the last audio token
        is what the committed turn has too; if fewer grids than windows have arrived, the
        audio is cut back to the windows they cover."""
        window_s = self.resident.audio_window_frames // 100
        audio = parts[-1] if parts else None
        if not window_s or not isinstance(audio, AudioPart) or audio.sample_rate != INPUT_SAMPLE_RATE:
            return None
        seconds = len(audio.pcm) // (window_s * INPUT_SAMPLE_RATE) * window_s
        head: list[Part] = []
        if len(parts) == 2 and isinstance(parts[0], VideoPart) and parts[0].interleave_audio:
            video = parts[0]
            if video.complete and 2 * seconds >= len(video.frames):
                # Every grid is final and all of them precede the cut: the audio after the
                # last grid follows it in the layout, so the cut needs no more frames.
                head.append(VideoPart(video.frames, video.timestamps_s, interleave_audio=True, complete=True))
            else:
                seconds = min(seconds, len(video.frames) // 2 // window_s * window_s)
                frames = 2 * seconds  # 2 fps: two frames per grid
                head.append(VideoPart(video.frames[:frames], video.timestamps_s[:frames], interleave_audio=True))
        elif len(parts) != 1:
            return None
        if seconds == 0:
            return None
        return [*head, AudioPart(audio.pcm[: seconds * INPUT_SAMPLE_RATE], INPUT_SAMPLE_RATE)]

    def forget(self, conversation: Conversation) -> None:
        """The session is over: release the conversation's cached KV now."""
        self._offered.pop(conversation.id, None)
        self.worker.call_soon(lambda: self.conv_cache.forget(conversation.id))

    def truncate(self, conversation: Conversation, item_id: str, audio_end_ms: int) -> Turn:
        """Keep the text spoken in the first `audio_end_ms`. The talker reads one text
        token per codec frame (frame g is conditioned on token g), so F heard frames
        cover tokens 0..F-1."""
        turn = conversation.find(item_id)
        if turn is None or turn.role != "assistant":
            raise KeyError(f"no assistant item {item_id!r}")
        if audio_end_ms < 0:
            raise ValueError("audio_end_ms must be >= 0")
        heard_frames = min(turn.frames, math.ceil(audio_end_ms / FRAME_MS))
        kept = turn.token_ids[:heard_frames]
        turn.token_ids = kept
        turn.frames = heard_frames
        turn.text = self.resident.processor.tokenizer.decode(kept, skip_special_tokens=True)
        turn.parts = [TextPart(turn.text)]
        return turn
