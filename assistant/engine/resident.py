"""The resident model: the loaded modules plus constants every response reads.

Read-only after load, shared by all responses; only the model worker calls into it.
`media_after` picks the processor tensors a prefill still has to encode when part of
the prompt is already in a conversation's KV cache.
"""

from __future__ import annotations

import torch

from .cudagraphs import GraphedCode2Wav, GraphedCodePredictor, GraphedTalkerStep, decode_lengths
from .predictor import FastCodePredictor


class Resident:
    """The loaded model plus constants every response needs (read-only after load)."""

    def __init__(
        self,
        model,
        processor,
        device: torch.device,
        dtype: torch.dtype,
        audio_window_s: int | None = None,
        cuda_graphs: bool = True,
        talker_cuda_graph: bool = False,
    ) -> None:
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype
        self.audio_window_tokens = self.audio_window_frames = 0
        if audio_window_s:
            # Incremental prefill: the audio encoder attends within windows of this many
            # seconds (the checkpoint's 8 s default is n_window_infer=800 mel frames; the
            # report trained 1-8 s windows), and features are computed per window, so a
            # complete window's tokens never change. 13 tokens per second (n_window 50).
            n_window = model.config.thinker_config.audio_config.n_window
            model.thinker.model.audio_tower.n_window_infer = audio_window_s * 2 * n_window
            processor.audio_window_samples = audio_window_s * 16000
            self.audio_window_frames = audio_window_s * 2 * n_window
            self.audio_window_tokens = audio_window_s * 13
        cfg = model.config
        self.cfg, self.tcfg = cfg, cfg.talker_config
        # Thinking and Captioner are the thinker alone (enable_audio_output false): no talker
        # or Code2Wav module exists, and nothing below allocates one; they answer in text.
        self.has_talker = bool(getattr(model, "has_talker", False))
        self.thinker = model.thinker
        self.talker = model.talker if self.has_talker else None
        self.code2wav = model.code2wav if self.has_talker else None
        self.talker_layer = self.tcfg.accept_hidden_layer if self.has_talker else 0  # thinker layer the talker reads
        self.embed = model.thinker.get_input_embeddings()
        self.mm_ids = torch.tensor(
            [cfg.thinker_config.audio_token_id, cfg.thinker_config.image_token_id, cfg.thinker_config.video_token_id],
            device=device,
        )
        tc = cfg.thinker_config
        self.audio_start_id, self.vision_start_id = tc.audio_start_token_id, tc.vision_start_token_id
        self.audio_end_id = tc.audio_start_token_id + 1  # <|audio_end|> follows <|audio_start|> in Qwen's table
        self.image_id, self.video_id = tc.image_token_id, tc.video_token_id
        # A cached prefix must not end inside one of these spans (placeholders of one medium).
        self.span_ids = {
            tc.audio_token_id,
            tc.image_token_id,
            tc.video_token_id,
            self.audio_start_id,
            self.vision_start_id,
        }
        # Reasoning tags (Qwen3 Thinking): ordinary tokens in Qwen's tokenizer, so found by text.
        vocab = processor.tokenizer.get_vocab()
        self.think_ids = (vocab.get("<think>"), vocab.get("</think>"))
        self.reasons = False  # set by the engine for a Thinking checkpoint: split reasoning from the answer
        self.thinker_defaults: dict = {}  # sampling the checkpoint's generation_config.json sets (engine)
        self._graphed: tuple[GraphedCodePredictor, GraphedCode2Wav] | None = None
        self.talker_graph: GraphedTalkerStep | None = None  # the talker's decode step at batch 1, off by default
        self._talker_graph: GraphedTalkerStep | None = None
        if not self.has_talker:
            self.cuda_graphs, self.predictor, self.vocoder = False, None, None
            return
        vocab_size = self.tcfg.text_config.vocab_size
        eos = self.tcfg.codec_eos_token_id
        # Stock generate() suppresses the talker's special range except codec EOS.
        self.talker_suppress = torch.tensor(
            [i for i in range(vocab_size - 1024, vocab_size) if i != eos], device=device
        )
        self._eager_predictor = FastCodePredictor(self.talker.code_predictor)
        self.use_cuda_graphs(cuda_graphs)
        self.use_talker_graph(talker_cuda_graph)
        with torch.no_grad():
            special = torch.tensor([[cfg.tts_bos_token_id, cfg.tts_eos_token_id, cfg.tts_pad_token_id]], device=device)
            self.tts_bos, self.tts_eos, self.tts_pad = self.talker.text_projection(self.embed(special)).chunk(3, dim=1)

    def use_cuda_graphs(self, on: bool) -> None:
        """Pick the decode path: CUDA graphs (cudagraphs.py) or eager. Ignored on CPU,
        where `predictor` is the eager FastCodePredictor and `vocoder` the Code2Wav module
        itself. Graphs already captured are kept when switching off and on (gpu_bench)."""
        self.cuda_graphs = on and self.device.type == "cuda"
        if self.cuda_graphs and self._graphed is None:
            self._graphed = (GraphedCodePredictor(self._eager_predictor), GraphedCode2Wav(self.code2wav))
        self.predictor = self._graphed[0] if self.cuda_graphs else self._eager_predictor
        self.vocoder = self._graphed[1] if self.cuda_graphs else self.code2wav

    def use_talker_graph(self, on: bool) -> None:
        """Graph the talker's solo decode step (cudagraphs.py GraphedTalkerStep, captured at
        its first step; kept when switched off and on). CUDA only: the CPU ignores it, as it
        does --cuda-graphs."""
        if on and self.device.type == "cuda" and self._talker_graph is None:
            self._talker_graph = GraphedTalkerStep(self.talker)
        self.talker_graph = self._talker_graph if on and self.device.type == "cuda" else None

    def capture_graphs(self, chunk_ramp: list[int], left_context: int) -> None:
        """Capture ahead of traffic: the predictor at batch 1 and Code2Wav at the window
        lengths this chunk schedule decodes. Call while no other thread uses the GPU
        (a capture forbids other work on the device). No-op without CUDA graphs."""
        if not getattr(self, "cuda_graphs", False):
            return
        predictor, vocoder = self._graphed
        predictor.capture(1, self.device, self.dtype)
        if left_context:  # the windowed decode; the streaming one (0) calls Code2Wav's modules eagerly
            vocoder.lengths |= set(decode_lengths(list(chunk_ramp), left_context))
            vocoder.capture_all(self.device)

    def speaker_id(self, voice: str) -> int:
        table = (self.tcfg.speaker_id or {}) if self.has_talker else {}
        if voice.lower() not in table:
            raise ValueError(f"unknown voice {voice!r}; choose from {sorted(table)}")
        return table[voice.lower()]


def media_after(t: dict, ids: list[int], n: int, res: Resident) -> dict:
    """The processor tensors for media whose placeholders are at or after position n
    (media before n are already in the KV cache and are not encoded again). An audio clip
    may be cut at an encoder-window boundary by incremental prefill: its cached windows'
    mel frames are dropped too (per-window features make the rest independent of them)."""
    tail = {}
    if "input_features" in t:
        starts = [k for k in range(len(ids)) if ids[k] == res.audio_start_id]
        done = sum(1 for k in starts if res.audio_end_id in ids[k:n])  # clips wholly before n
        partial = next((k for k in starts if k < n and res.audio_end_id not in ids[k:n]), None)
        if done < t["input_features"].shape[0]:
            feats, mask = t["input_features"][done:].clone(), t["feature_attention_mask"][done:].clone()
            if partial is not None:
                # Audio tokens of this clip already in the cache (a camera turn's span holds video tokens too).
                cached = sum(1 for tok in ids[partial:n] if tok == res.cfg.thinker_config.audio_token_id)
                per_window = res.audio_window_tokens
                if not per_window or cached % per_window:
                    raise RuntimeError("cached audio prefix is not aligned to encoder windows")
                skip = cached // per_window * res.audio_window_frames
                width = feats.shape[-1]
                feats[0, :, : width - skip] = feats[0, :, skip:].clone()
                feats[0, :, width - skip :] = 0
                mask[0, : width - skip] = mask[0, skip:].clone()
                mask[0, width - skip :] = 0
                if int(mask[0].sum()) == 0:  # every window of this clip is cached already
                    feats, mask = feats[1:], mask[1:]
            if feats.shape[0]:
                tail["input_features"], tail["feature_attention_mask"] = feats, mask
    for pixels, grid, token, proc in (
        ("pixel_values", "image_grid_thw", res.image_id, res.processor.image_processor),
        ("pixel_values_videos", "video_grid_thw", res.video_id, res.processor.video_processor),
    ):
        if grid in t:
            cached = sum(1 for tok in ids[:n] if tok == token)
            missing = (
                int(t["video_pixel_offset"][0]) if pixels == "pixel_values_videos" and "video_pixel_offset" in t else 0
            )
            tail.update(_vision_after(t, pixels, grid, cached, proc.merge_size, missing))
    return tail


class MissingPixels(LookupError):
    """The tail needs patches of a video that prepare() only gridded (pixels_from_turn)."""


def _vision_after(t: dict, pixels: str, grid: str, cached: int, merge: int, missing: int = 0) -> dict:
    """The patches and grids of one kind of visual media past the first `cached`
    placeholder tokens. A camera turn cut by incremental prefill is cached up to a whole
    2-frame grid; the vision encoder attends within each grid (cu_seqlens per temporal
    slice, vision_utils.get_vision_cu_seqlens), so the rest encodes alone to the same rows."""
    skip, rest = 0, []
    for thw in t[grid].tolist():
        per_grid = thw[1] * thw[2] // merge**2  # tokens of one temporal grid
        done = min(thw[0] * per_grid, cached)
        if done % per_grid:
            raise RuntimeError("cached visual prefix is not aligned to temporal grids")
        cached -= done
        skip += done // per_grid * thw[1] * thw[2]
        if done < thw[0] * per_grid:
            rest.append([thw[0] - done // per_grid, thw[1], thw[2]])
    if not rest:
        return {}
    if skip < missing:  # the first `missing` rows (earlier videos) were never computed
        raise MissingPixels(f"the tail starts {missing - skip} patch rows inside a video prepared without pixels")
    return {pixels: t[pixels][skip - missing :], grid: torch.tensor(rest, dtype=t[grid].dtype, device=t[grid].device)}
