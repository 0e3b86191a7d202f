"""LocalEngine: one resident Qwen3-Omni in this process, shared by all conversations."""

from __future__ import annotations

import asyncio
import logging
import math

import numpy as np
import torch

from ..settings import Settings, chunk_ramp
from . import inputs, toolcall
from .api import (
    FRAME_MS,
    INPUT_SAMPLE_RATE,
    AudioPart,
    Conversation,
    EngineError,
    EngineInfo,
    ImagePart,
    Part,
    ResponseStats,
    Sampling,
    TextJob,
    TextPart,
    Turn,
    VideoPart,
    now,
)
from .budget import GB, Costs, MemoryBudget, default_limit_bytes
from .capacity import LoadReport
from .code2wav_stream import warm_shapes
from .convcache import ConversationCache
from .resident import Resident
from .stream import StreamConfig, StreamJob
from .worker import LocalResponse, ModelWorker

FIRST_CHUNKS_WARMED = 2  # of the codec chunk ramp, at every batch size (CPU; `_warm_codec_shapes`)
LOAD_PROBE_ANSWERS = 4  # answers at once in the warm-up's load measurement (issue #19)
PROBE_TOKENS = 13  # text tokens of each 16-frame probe answer (the benchmark's 50 per 63 frames)

log = logging.getLogger("assistant.engine")


def load_resident(
    path: str,
    device: torch.device,
    dtype: torch.dtype,
    attn_implementation: str = "sdpa",
    audio_window_s: int | None = None,
    cuda_graphs: bool = True,
    talker_cuda_graph: bool = False,
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
    return Resident(model, processor, device, dtype, audio_window_s, cuda_graphs, talker_cuda_graph)


def variant_of(path_or_id: str, model, asked: str = "auto") -> str:
    """Which checkpoint this is: `--model-variant` when given; a tiny checkpoint's marker;
    else the checkpoint's name (Qwen/Qwen3-Omni-30B-A3B-{Instruct,Thinking,Captioner}, or a
    directory named after it); else its config: one without a talker is taken as Thinking."""
    from ..tiny import VARIANTS, tiny_variant

    if asked != "auto":
        if asked not in VARIANTS:
            raise ValueError(f"unknown --model-variant {asked!r}: use auto, {', '.join(VARIANTS)}")
        return asked
    marked = tiny_variant(path_or_id)
    if marked:
        return marked
    name = path_or_id.rstrip("/").rsplit("/", 1)[-1].lower()
    for variant in ("captioner", "thinking", "instruct"):
        if variant in name:
            return variant
    return "instruct" if getattr(model, "has_talker", False) else "thinking"


def configure_variant(resident: Resident, variant: str) -> None:
    """Variant-specific behaviour of the resident model: a Thinking checkpoint's reasoning
    is split from its answer (thinker.py), and every thinker sampling field the checkpoint's
    generation_config.json sets becomes the default (what a request leaves unset)."""
    if variant != "instruct" and resident.has_talker:
        raise ValueError(
            f"a {variant} checkpoint is the thinker alone, but this one has a talker (enable_audio_output): "
            "set --model-variant instruct"
        )
    if variant == "instruct" and not resident.has_talker:
        raise ValueError(
            "an instruct checkpoint speaks, but this one has no talker (enable_audio_output false): "
            "set --model-variant thinking or captioner"
        )
    resident.reasons = variant == "thinking"
    gen = getattr(resident.model, "generation_config", None)
    explicit = gen.to_diff_dict() if gen is not None else {}
    keys = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty")
    resident.thinker_defaults = {k: explicit[k] for k in keys if explicit.get(k) is not None}


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
            first_packet_target_s=settings.schedule_first_packet_target_ms / 1000.0,
        )
        self.conv_cache = ConversationCache(settings.conversation_cache_size)  # touched by the worker thread only
        if settings.kv_cache_gb < 0:
            raise ValueError(f"kv_cache_gb must be >= 0 (0 = automatic), got {settings.kv_cache_gb}")
        self.budget: MemoryBudget | None = None  # the caches' byte budget (budget.py), set by start()
        self._offered: dict[str, tuple[int, int]] = {}  # conversation -> (turns, samples) last offered to prefill

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.resident is None:
            self.resident = await asyncio.to_thread(self._load)
        # Before the worker starts: a CUDA graph capture must have the device to itself.
        await asyncio.to_thread(self.resident.capture_graphs, list(self.stream_config.chunk_ramp),
                                self.stream_config.left_context)  # fmt: skip
        self.worker.start()
        budget = self._new_budget()
        if self.settings.warmup:
            await self.warmup()
        if not self.settings.kv_cache_gb:
            budget.limit_bytes = self._default_budget_bytes()  # on CUDA, what warm-up left free
        log.info("cache budget: %d bytes (--kv-cache-gb), %d per session", budget.limit_bytes, budget.floor_bytes)
        context = self.stream_config.context_tokens or self.resident.thinker.config.text_config.max_position_embeddings
        if budget.costs.response_bytes(context, context, 0, self.settings.max_answer_frames) > budget.limit_bytes:
            log.warning(  # such a conversation's turns would fail with memory_budget_exceeded until trimmed
                "one response at the full context (%d tokens) needs more than the cache budget; "
                "lower --max-context-tokens or raise --kv-cache-gb",
                context,
            )

    def _new_budget(self) -> MemoryBudget:
        """The budget, charged by the conversation cache and the responses from now on. With
        the default it is unlimited until warm-up has run and the free memory is known."""
        res, s = self.resident, self.settings
        costs = Costs.from_config(res.cfg, torch.empty((), dtype=res.dtype).element_size())
        limit = int(s.kv_cache_gb * GB) if s.kv_cache_gb else 1 << 62
        self.budget = MemoryBudget(limit, costs, costs.floor_bytes(s.max_answer_tokens, s.max_answer_frames))
        self.conv_cache.budget = self.budget
        return self.budget

    def _default_budget_bytes(self) -> int:
        """budget.default_limit_bytes for this device. On CUDA: free device memory plus what
        PyTorch's caching allocator holds unused (it is ours to reuse), less the reserve."""
        device = self.resident.device
        if device.type != "cuda":
            return default_limit_bytes(device.type)
        torch.cuda.synchronize(device)
        free, total = torch.cuda.mem_get_info(device)
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        limit = default_limit_bytes("cuda", free + unused, total)
        if limit <= 0:
            raise RuntimeError(
                f"no device memory left for caches after loading: {free + unused} bytes free of {total}, "
                "less the reserve; set --kv-cache-gb explicitly"
            )
        return limit

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
            self.settings.talker_cuda_graph,
        )
        variant = variant_of(resolved.path_or_id, resident.model, self.settings.model_variant)
        # Tool calls' grammar reads the vocabulary through llguidance: built now (seconds for
        # Qwen's 151k entries), not in the first constrained step.
        toolcall.ll_tokenizer(resident.processor.tokenizer, resident.thinker.config.text_config.vocab_size)
        self.info = EngineInfo(
            "local", resolved.path_or_id, str(device), str(dtype).removeprefix("torch."), resolved.is_tiny, variant
        )
        configure_variant(resident, variant)
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
        speaks = self.resident.has_talker
        t0 = now()
        convs = []
        for parts in turns:
            conv = self.new_conversation()
            conv.sampling = Sampling(greedy=True, min_tokens=2, max_tokens=4, min_frames=6, max_frames=6)
            conv.add_user(parts)
            convs.append(conv)

        async def answer(conv: Conversation) -> ResponseStats | None:
            stats = None
            async for ev in self.respond(conv, audio=speaks):
                if getattr(ev, "status", None) == "failed":
                    raise RuntimeError(f"warm-up failed: {ev.error}")
                stats = getattr(ev, "stats", stats)
            return stats

        try:
            await self._warm_codec_shapes()
            await asyncio.gather(*(answer(conv) for conv in convs))
            await self._measure_load(speech, answer)
        finally:
            for conv in convs:
                self.forget(conv)
        log.info("warm-up done in %.0f ms; %s", (now() - t0) * 1000, self.load_report(0, 0.8, 2.0).as_dict())

    async def _warm_codec_shapes(self) -> None:
        """On the CPU, the streaming Code2Wav's first-packet chunk shapes for every batch size
        the worker forms (code2wav_stream.warm_shapes), on the worker thread that owns the
        model: the ramp's first two chunks (what a first packet and the chunk after it
        decode)."""
        res, config = self.resident, self.stream_config
        if not res.has_talker or res.device.type != "cpu" or config.left_context:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def run() -> None:
            t0 = now()
            try:
                calls = warm_shapes(res.code2wav, list(config.chunk_ramp[:FIRST_CHUNKS_WARMED]), self.worker.max_batch)
            except Exception as exc:  # the warm-up fails with it: serving would meet the same error
                loop.call_soon_threadsafe(done.set_exception, exc)
                return
            log.info("codec shapes warmed: %d chunk decodes in %.0f ms", calls, (now() - t0) * 1000)
            loop.call_soon_threadsafe(done.set_result, None)

        self.worker.call_soon(run)
        await done

    async def _measure_load(self, speech: np.ndarray, answer) -> None:
        """Issue #19: the sustainable load, from decode steps timed with one answer alone and
        then LOAD_PROBE_ANSWERS at once (capacity.py), after the lazy initialisation above;
        and the first packets of both, the slowest of the batch (admission's burst bound).
        Live steps refine the decode figures from then on."""
        model = self.worker.load_model
        model.cost_s.clear()
        model.codec_frame_s = 0.0
        model.first_packet_s.clear()
        for n in (1, min(LOAD_PROBE_ANSWERS, self.worker.max_batch)):
            convs = []
            for _ in range(n):
                conv = self.new_conversation()
                # Text lasts most of the answer, as in real speech (the benchmark's answers: 50
                # tokens over 63 frames): a frame's talker step then carries a thinker step too.
                # With 4 tokens the probe timed mostly text-free frames and admitted 6 users on
                # a machine that served 2 without underruns.
                conv.sampling = Sampling(
                    greedy=True, min_tokens=PROBE_TOKENS, max_tokens=PROBE_TOKENS, min_frames=16, max_frames=16
                )
                conv.add_user([AudioPart(speech)])
                convs.append(conv)
            t_submit = now()
            try:
                stats = await asyncio.gather(*(answer(conv) for conv in convs))
            finally:
                for conv in convs:
                    self.forget(conv)
            first = [st.t_first_audio for st in stats if st is not None and st.t_first_audio is not None]
            if len(first) == n:  # a text-only checkpoint has no first packet to bound
                model.observe_first_packets(n, max(first) - t_submit)
        model.calibrated = True

    def load_report(self, sessions: int, threshold: float, max_first_packet_ratio: float = 0.0) -> LoadReport:
        """Live load and capacity (capacity.py) for admission, /health and /metrics."""
        live, speaking = self.worker.live_load()
        return self.worker.load_model.report(sessions, live, speaking, threshold, max_first_packet_ratio)

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

    def respond(
        self, conversation: Conversation, *, t_committed: float | None = None, audio: bool = True, listener: bool = True
    ):
        job = StreamJob(
            self.resident,
            conversation,
            audio=audio,
            t_committed=t_committed,
            config=self.stream_config,
            cache=self.conv_cache,
            listener=listener,
        )
        response = LocalResponse(job, conversation, self.worker)
        if audio and not self.resident.has_talker:
            message = f"{self.info.model} is a thinker-only checkpoint ({self.info.variant}): it answers in text only"
            response.fail_now(EngineError("invalid_input", message))
            return response
        self._count_frames(conversation)
        try:
            if audio:
                self.resident.speaker_id(conversation.voice)
        except ValueError as exc:  # refuse before any work: a bad setting, not an engine fault
            response.fail_now(EngineError("invalid_input", str(exc)))
            return response
        if not self.worker.submit(job, response.deliver):
            response.fail_now(EngineError("overloaded", "the model worker's queue is full; try again shortly"))
        return response

    def transcribe(self, request: TextJob) -> LocalResponse:
        """A text-only job with no listener (Engine.transcribe): one user turn, the audio
        then Qwen's task prompt, answered by the thinker alone (no talker), with no cache
        of its own. A turn committed to a live conversation is not encoded again: its
        encoder output is read from that conversation's cache when it holds the turn
        (prefill.py `_reused_audio`), else the clip is encoded."""
        sampling = Sampling(
            greedy=request.temperature <= 0.0,
            thinker_temperature=request.temperature if request.temperature > 0.0 else 0.7,
            min_tokens=request.min_tokens,
            max_tokens=request.max_tokens,
        )
        conv = Conversation(instructions=request.context, sampling=sampling)
        conv.add_user([request.audio, TextPart(request.task)])
        job = StreamJob(self.resident, conv, audio=False, config=self.stream_config, background=True)
        job.stats.token_logprobs = []  # each chosen token's log-probability (verbose_json's avg_logprob)
        if request.conversation_id is not None:
            key = inputs.turn_media_keys(Conversation(turns=[Turn("user", [request.audio])]))[0]
            job.audio_from = (self.conv_cache, request.conversation_id, key)
        response = LocalResponse(job, conv, self.worker)
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

    def _count_frames(self, conversation: Conversation) -> None:
        """Camera frames and images the conversation holds (host memory, budget.py)."""
        if self.budget is not None:
            images = [p.image for t in conversation.turns for p in t.parts if isinstance(p, ImagePart)]
            frames = [f for t in conversation.turns for p in t.parts if isinstance(p, VideoPart) for f in p.frames]
            self.budget.set_frames(conversation.id, sum(a.nbytes for a in images + frames))

    def forget(self, conversation: Conversation) -> None:
        """The session is over: release the conversation's cached KV now."""
        self._offered.pop(conversation.id, None)
        if self.budget is not None:
            self.budget.set_frames(conversation.id, 0)
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
