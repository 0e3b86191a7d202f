"""Conversation -> the processor's tensors, exactly as a user of the stock model would build them.

The chat template renders placeholders (`<|audio_start|><|audio_pad|><|audio_end|>`,
`<|vision_start|><|image_pad|><|vision_end|>`, ...) and `Qwen3OmniMoeProcessor` expands
them to one token per encoder output, computes log-mel features (16 kHz, 128 bins) and
image/video patches. Audio at any rate is resampled to 16 kHz first; video frames are
thinned to at most 2 fps (qwen-omni-utils' FPS) and to an even count (temporal patch 2).
"""

from __future__ import annotations

import hashlib
import types
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import soxr
import torch

from . import audio_prompt
from .api import INPUT_SAMPLE_RATE, AudioPart, Conversation, ImagePart, TextPart, VideoPart

MAX_VIDEO_FPS = 2.0
HOP_SAMPLES = 160  # 10 ms mel hop at 16 kHz
MIN_PIECE_SAMPLES = 400  # one 25 ms STFT window


def resample_to_16k(part: AudioPart) -> np.ndarray:
    pcm = np.asarray(part.pcm, dtype=np.float32)
    if pcm.ndim != 1:
        pcm = pcm.reshape(-1)
    if part.sample_rate == INPUT_SAMPLE_RATE:
        return pcm  # the caller's own array when it is 1-D float32: `_clip_features` memoises by identity
    return soxr.resample(pcm, part.sample_rate, INPUT_SAMPLE_RATE).astype(np.float32)


def sample_video(part: VideoPart, max_fps: float = MAX_VIDEO_FPS) -> tuple[np.ndarray, float]:
    """Keep frames at most `max_fps` apart in capture time; return [T, H, W, 3] and its fps."""
    kept, kept_t = [], []
    for frame, t in zip(part.frames, part.timestamps_s, strict=True):
        if not kept_t or t - kept_t[-1] >= 1.0 / max_fps - 1e-6:
            kept.append(frame)
            kept_t.append(t)
    if len(kept) % 2:  # the vision encoder's temporal patch is 2 frames
        kept.append(kept[-1])
        kept_t.append(kept_t[-1] + 1.0 / max_fps)
    span = kept_t[-1] - kept_t[0]
    fps = min(max_fps, (len(kept) - 1) / span) if span > 0 else max_fps
    return np.stack(kept), float(fps)


def live_frames(part: VideoPart) -> np.ndarray:
    """[T, H, W, 3] of a camera+microphone turn: frames at exactly 2 fps from the audio's
    start (the session slots them so), padded to whole 2-frame grids. The grid i then
    starts at i s, which is what the interleaved layout places before the audio of
    second i; no thinning here, or a grid's frames would change as the turn grows."""
    for i, t in enumerate(part.timestamps_s):
        if abs(t - i / MAX_VIDEO_FPS) > 1e-3:
            raise ValueError(f"interleaved video frames must be at {MAX_VIDEO_FPS:g} fps from the turn's start")
    frames = list(part.frames)
    if len(frames) % 2:  # temporal patch 2: the last grid repeats its frame, as sample_video does
        frames.append(frames[-1])
    return np.stack(frames)


@dataclass
class Prepared:
    """Processor outputs for one thinker prefill, plus what the talker needs."""

    tensors: dict[str, torch.Tensor]  # input_ids, attention_mask, input_features, ...
    num_audios: int
    num_images: int
    num_videos: int
    audio_in_video: bool = False  # camera turns interleaved: get_rope_index(use_audio_in_video=True)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.tensors["input_ids"]


@dataclass
class Media:
    """The conversation's media in prompt order, as the processor takes them."""

    audios: list[np.ndarray] = field(default_factory=list)  # every audio slot, video tracks included
    audio_from_video: list[int | None] = field(default_factory=list)  # per slot: None, or the video it belongs to
    images: list[np.ndarray] = field(default_factory=list)
    videos: list[np.ndarray] = field(default_factory=list)
    fps: list[float] = field(default_factory=list)
    interleaved: list[bool] = field(default_factory=list)  # per video
    video_turn: list[int] = field(default_factory=list)  # per video: index of its turn in conv.turns
    turn: int = 0  # the turn being rendered


def _user_content(parts: list, media: Media) -> list[dict]:
    live = any(isinstance(p, VideoPart) and p.interleave_audio for p in parts)
    spoken = [p for p in parts if isinstance(p, AudioPart)]
    if live and (len(spoken) != 1 or sum(isinstance(p, VideoPart) for p in parts) != 1):
        raise ValueError("a camera+microphone turn has exactly one video and one audio part")
    content = []
    for part in parts:
        if isinstance(part, AudioPart) and not live:
            media.audios.append(resample_to_16k(part))
            media.audio_from_video.append(None)
            content.append({"type": "audio"})
        elif isinstance(part, ImagePart):
            media.images.append(np.asarray(part.image, dtype=np.uint8))
            content.append({"type": "image"})
        elif isinstance(part, VideoPart):
            if live:
                # The audio track has no placeholder of its own: the processor writes it
                # into the video's span (processing_utils.OmniModalProcessorMixin.__call__,
                # `audio_from_video_indices`), in the same slot order as the prompt.
                media.audios.append(resample_to_16k(spoken[0]))
                media.audio_from_video.append(len(media.videos))
                frames, rate = live_frames(part), MAX_VIDEO_FPS
            else:
                frames, rate = sample_video(part)
            media.videos.append(frames)
            media.video_turn.append(media.turn)
            media.fps.append(rate)
            media.interleaved.append(live)
            content.append({"type": "video"})
        elif isinstance(part, TextPart):
            content.append({"type": "text", "text": part.text})
    return content


def messages(conv: Conversation) -> tuple[list[dict], Media]:
    msgs: list[dict] = []
    media = Media()
    if conv.instructions:
        msgs.append({"role": "system", "content": [{"type": "text", "text": conv.instructions}]})
    for i, turn in enumerate(conv.turns):
        media.turn = i
        if turn.role == "assistant":
            msg = {"role": "assistant", "content": [{"type": "text", "text": turn.text_content()}]}
            if turn.tool_calls:  # rendered by the template in the checkpoint's own call format
                msg["tool_calls"] = [
                    {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in turn.tool_calls
                ]
            msgs.append(msg)
            continue
        if turn.role == "tool":  # a call's result; the template wraps consecutive ones in one user turn
            msgs.append({"role": "tool", "content": turn.text_content()})
            continue
        msgs.append({"role": turn.role, "content": _user_content(turn.parts, media)})
    if any(media.interleaved) and not all(media.interleaved):
        # get_rope_index takes one use_audio_in_video flag for the whole prompt
        # (modeling_qwen3_omni_moe.py): with it set, a plain video span is not recognised.
        raise ValueError("a conversation cannot mix camera+microphone turns with plain video turns")
    return msgs, media


def tool_schemas(conv: Conversation) -> list[dict]:
    """The declared tools as chat templates take them (`tools=`, OpenAI's nested form).
    With tool_choice "none" they stay in the prompt, as OpenAI keeps them in context."""
    return [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
        for t in conv.tools
    ]


def prepare(processor, conv: Conversation, pixels_from_turn: int = 0, cached_video_tokens: int = 0) -> Prepared:
    """`pixels_from_turn`: videos of earlier turns get their grids (token counts) but no
    pixel values: they are in the KV cache already, and resizing and patching every
    earlier camera turn again cost ~270 ms per 10 s of 640x480 video, every turn and
    every early-prefill offer. `cached_video_tokens` (the video tokens in the
    conversation's cached prefix) extends this into the first video that has pixels: its
    leading 2-frame grids that the cache holds get no pixels either, so a camera turn's
    early prefill offers and its commit patch only the frames since the last offer.
    `video_pixel_offset` then says how many leading patch rows are missing
    (resident.media_after, which asks for every pixel again if the cache turns out shorter)."""
    msgs, media = messages(conv)
    tools = tool_schemas(conv) or None
    _install_hooks(processor)
    tensors = None
    if not media.images and not media.videos:
        tensors = audio_prompt.tensors(processor, msgs, tools, media.audios)  # None: the processor's own call
    if tensors is None:
        tensors = _processor_tensors(processor, msgs, tools, media, pixels_from_turn, cached_video_tokens)
    spoken = [t.token_ids for t in conv.turns if t.role == "assistant"]
    if any(spoken):
        ids = splice_assistant_ids(tensors["input_ids"][0].tolist(), spoken, processor.tokenizer)
        tensors["input_ids"] = torch.tensor([ids])
        tensors["attention_mask"] = torch.ones_like(tensors["input_ids"])
    return Prepared(tensors, len(media.audios), len(media.images), len(media.videos), any(media.interleaved))


def _install_hooks(processor) -> None:
    """Our per-clip audio and grid-only video steps in place of the processor's own."""
    if not isinstance(getattr(processor, "_process_audio", None), types.MethodType) or (
        processor._process_audio.__func__ is not per_clip_process_audio
    ):
        processor._process_audio = types.MethodType(per_clip_process_audio, processor)
    if not isinstance(getattr(processor, "_process_videos", None), types.MethodType) or (
        processor._process_videos.__func__ is not grid_only_process_videos
    ):
        processor._process_videos = types.MethodType(grid_only_process_videos, processor)


def _processor_tensors(
    processor, msgs: list[dict], tools, media: Media, pixels_from_turn: int, cached_video_tokens: int
) -> dict[str, torch.Tensor]:
    """The processor's own call over the rendered chat template."""
    text = processor.apply_chat_template(msgs, tools=tools, add_generation_prompt=True, tokenize=False)
    kwargs: dict = {}
    if media.audios:
        kwargs["audio"] = media.audios
    if media.images:
        kwargs["images"] = media.images
    if media.videos:
        kwargs["videos"] = media.videos
        # The processor takes one fps for the batch; frames were already thinned to <= 2 fps.
        # cap_pixels_per_frame=False: with the cap, a frame's size would depend on how many
        # frames the video has, and a camera turn's early grids would change as it grows.
        kwargs["videos_kwargs"] = {"fps": min(media.fps), "do_sample_frames": False, "cap_pixels_per_frame": False}
    if any(media.interleaved):
        # Qwen's time-interleaved audio+video layout (processing_qwen3_omni_moe.py
        # replace_video_with_audio_token): each 2-frame grid at its start time, then the
        # audio tokens up to the next grid.
        kwargs["load_audio_from_video"] = True
        kwargs["audio_from_video_indices"] = media.audio_from_video
    # The leading videos only: media_after can then skip their rows by one offset.
    dry = 0
    while dry < len(media.videos) and media.video_turn[dry] < pixels_from_turn:
        dry += 1
    # Read by grid_only_process_videos; the model worker is the only caller.
    processor._assistant_dry_videos, processor._assistant_cached_video_tokens = dry, cached_video_tokens
    processor._assistant_missing_rows = 0  # written back by it
    try:
        tensors = dict(processor(text=text, return_tensors="pt", padding=True, **kwargs))
    finally:
        processor._assistant_dry_videos = processor._assistant_cached_video_tokens = 0
    if processor._assistant_missing_rows:
        tensors["video_pixel_offset"] = torch.tensor([processor._assistant_missing_rows])  # patch rows not computed
    return tensors


FEATURE_MEMO_PIECES = 256  # ~100 KB each for 2 s windows: earlier turns are not featurised again


def _piece_features(processor, piece: np.ndarray, kwargs: dict) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel features of one window, memoised by content: every turn re-renders the
    whole conversation, and incremental prefill re-offers the turn so far, so without
    this every earlier window would be featurised again each time."""
    memo = processor.__dict__.setdefault("_assistant_feature_memo", OrderedDict())
    key = (len(piece), hashlib.blake2b(np.ascontiguousarray(piece, dtype=np.float32).tobytes()).digest())
    if key in memo:
        memo.move_to_end(key)
        return memo[key]
    frames = len(piece) // HOP_SAMPLES
    # The STFT's reflect padding needs > n_fft/2 samples; a short tail is padded with
    # silence and cut back to the frames its own samples cover.
    padded = np.pad(piece, (0, max(0, MIN_PIECE_SAMPLES - len(piece))))
    out = processor.feature_extractor([padded], **kwargs)
    value = (np.asarray(out["input_features"])[0][:, :frames], np.asarray(out["attention_mask"])[0][:frames])
    memo[key] = value
    while len(memo) > FEATURE_MEMO_PIECES:
        memo.popitem(last=False)
    return value


def _clip_features(processor, clip: np.ndarray, window: int | None, kwargs: dict) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel features of one clip, featurised window by window.

    Every turn re-renders the whole conversation, so earlier turns' clips come back each
    turn; hashing their samples for `_piece_features` costs time in proportion to the
    history. A clip that owns its samples is made read-only the first time it is seen
    (it is history: nothing may change it) and then found again by identity, held by a
    weak reference so the entry goes when the conversation drops the clip. Views and
    other arrays whose contents could change under us take the content-keyed path."""
    memo = processor.__dict__.setdefault("_assistant_clip_memo", {})
    key = (id(clip), window, repr(sorted(kwargs.items())))

    def compute() -> tuple[np.ndarray, np.ndarray]:
        pieces = [clip[i : i + window] for i in range(0, len(clip), window)] if window else [clip]
        f_parts, m_parts = [], []
        for piece in pieces:
            if len(piece) // HOP_SAMPLES == 0:
                continue
            feat, mask_part = _piece_features(processor, piece, kwargs)
            f_parts.append(feat)
            m_parts.append(mask_part)
        return np.concatenate(f_parts, axis=-1), np.concatenate(m_parts, axis=-1)  # [mel, T], [T]

    return _by_identity(memo, key, clip, compute)


def _by_identity(memo: dict, key, arr: np.ndarray, compute):
    """`compute()` once for an array that owns its memory: the array is made read-only (it
    is history: nothing may change it) and found again by identity, held by a weak
    reference so the entry goes with the array. Views, whose memory another array could
    still write, take `compute()` every time."""
    hit = memo.get(key)
    if hit is not None and hit[0]() is arr and not arr.flags.writeable:
        return hit[1]
    value = compute()
    if arr.base is None:
        arr.flags.writeable = False

        def release(ref, key=key):
            if memo.get(key, (None,))[0] is ref:
                del memo[key]

        memo[key] = (weakref.ref(arr, release), value)
    return value


def _grid_of(video_processor, video: np.ndarray, videos_kwargs: dict) -> list[int]:
    """[t, h, w] patches of a video from its shape alone, as the processor would resize it
    (Qwen2VLVideoProcessor.get_num_of_video_patches; without the per-frame pixel cap,
    which prepare() turns off)."""
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize

    vp = video_processor
    patch, merge, temporal = vp.patch_size, vp.merge_size, vp.temporal_patch_size
    size = videos_kwargs.get("size") or vp.size
    frames, height, width = video.shape[0], video.shape[1], video.shape[2]  # [T, H, W, 3]
    rh, rw = smart_resize(
        height, width, patch * merge, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"]
    )
    return [(frames + -frames % temporal) // temporal, rh // patch, rw // patch]


def grid_only_process_videos(self, videos, audio=None, processed_audio=None, video_to_audio_indices=None, **kwargs):
    """A drop-in for `Qwen3OmniMoeProcessor._process_videos` that skips the pixel work of
    the first `self._assistant_dry_videos` videos and of the leading grids of the next one
    that `self._assistant_cached_video_tokens` covers (their grids still make their tokens).
    Frames are resized and patched one at a time and patch rows are ordered grid by grid,
    so the frames after a skipped grid give exactly the rows they give in the whole video
    (tests/test_camera_prefill.py)."""
    dry = getattr(self, "_assistant_dry_videos", 0)
    vk = kwargs["videos_kwargs"]
    vp = self.video_processor
    grids = [_grid_of(vp, v, vk) for v in videos[:dry]]
    missing = sum(t * h * w for t, h, w in grids)  # patch rows
    pixels = None
    if len(videos) > dry:
        t, h, w = _grid_of(vp, videos[dry], vk)
        cached = getattr(self, "_assistant_cached_video_tokens", 0) - missing // vp.merge_size**2
        skip = min(t, max(0, cached) // (h * w // vp.merge_size**2))  # leading grids of videos[dry] in the cache
        missing += skip * h * w
        head = videos[dry][skip * vp.temporal_patch_size :]  # its frames still to patch
        todo = ([head] if len(head) else []) + list(videos[dry + 1 :])
        got = []
        if todo:
            out = vp(todo, **vk)
            pixels, got = out["pixel_values_videos"], out["video_grid_thw"].tolist()
        if skip and len(head):
            if got[0][1:] != [h, w]:
                raise RuntimeError(f"video grid {got[0]} differs from the estimate {[t, h, w]}")
            got[0] = [t, h, w]  # the whole video's grid: it makes the video's tokens
        elif skip:
            got.insert(0, [t, h, w])
        grids += got
    self._assistant_missing_rows = missing
    if pixels is None:
        width = 3 * self.video_processor.temporal_patch_size * self.video_processor.patch_size**2
        pixels = torch.zeros(0, width)
    fps = vk.get("fps") or 1.0
    processed = {
        "pixel_values_videos": pixels,
        "video_grid_thw": torch.tensor(grids, dtype=torch.long),
        "video_second_per_grid": [self.video_processor.temporal_patch_size / fps] * len(grids),
    }
    replacements = [
        self.replace_video_token(
            processed,
            video_idx=i,
            processed_audio=processed_audio,
            video_to_audio_indices=video_to_audio_indices,
            **kwargs,
        )
        for i in range(len(grids))
    ]
    return processed, replacements


def per_clip_process_audio(self, audio, **kwargs):
    """A drop-in for `Qwen3OmniMoeProcessor._process_audio` that featurises each clip alone.

    Stock computes all clips' log-mel features as one padded batch, and Whisper's feature
    extractor makes a clip's frame count and log floor depend on the longest clip beside
    it: the same earlier turn would get a different number of audio tokens once a longer
    turn follows, and the conversation's cached prefix would stop matching. Per clip, a
    turn's tokens never change; the clips are then padded into one tensor as before."""
    audio_prompt.remember_audio_kwargs(self, kwargs)
    audio_inputs = audio_features(self, audio, **kwargs)
    replacements = [self.replace_audio_token(audio_inputs, audio_idx=i) for i in range(len(audio))]
    return audio_inputs, replacements


def audio_features(self, audio, **kwargs) -> dict:
    """The processor's audio tensors (input_features [C, mel, T], feature_attention_mask
    [C, T], num_audio_tokens [C]) of clips featurised one by one (per_clip_process_audio)."""
    from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import _get_feat_extract_output_lengths

    n_window = kwargs.pop("n_window", self.n_window)
    window = getattr(self, "audio_window_samples", None)
    feats, masks = [], []
    for clip in audio:
        # Each encoder window is featurised alone too, so a window's features (and so its
        # audio tokens) are final as soon as the window is complete: what incremental
        # prefill needs. Whisper's per-utterance log floor would otherwise tie every frame
        # to the loudest frame of the whole clip.
        feat, mask_part = _clip_features(self, clip, window, kwargs)
        feats.append(feat)  # [mel, T_i]
        masks.append(mask_part)  # [T_i]
    width = max(f.shape[-1] for f in feats)
    features = np.zeros((len(feats), feats[0].shape[0], width), dtype=feats[0].dtype)
    mask = np.zeros((len(feats), width), dtype=masks[0].dtype)
    for i, (f, m) in enumerate(zip(feats, masks, strict=True)):
        features[i, :, : f.shape[-1]] = f
        mask[i, : m.shape[-1]] = m
    if kwargs.get("return_tensors") == "pt":
        features, mask = torch.from_numpy(features), torch.from_numpy(mask)
    audio_inputs = {"input_features": features, "feature_attention_mask": mask}
    audio_inputs["num_audio_tokens"] = _get_feat_extract_output_lengths(mask.sum(-1), n_window)
    return audio_inputs


def splice_assistant_ids(ids: list[int], spoken: list[list[int]], tokenizer) -> list[int]:
    """Put each assistant turn's generated ids back in place of its re-tokenized text.

    Decoding then re-encoding an answer does not give back the ids the model produced
    (BPE merges differ), so the KV cache of the earlier turn would stop matching the
    prompt. The answer spans are the tokens between `<|im_start|>assistant\n` and the
    next `<|im_end|>`, in order; a turn without ids keeps its text."""
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assistant = tokenizer.convert_tokens_to_ids("assistant")
    out: list[int] = []
    turn = 0
    i = 0
    while i < len(ids):
        is_answer = ids[i] == im_start and i + 1 < len(ids) and ids[i + 1] == assistant
        end = ids.index(im_end, i) if is_answer and im_end in ids[i:] else -1
        if not is_answer or end < 0:  # not an answer, or the open generation prompt at the end
            out.append(ids[i])
            i += 1
            continue
        out += ids[i : i + 3]  # <|im_start|> assistant \n
        out += spoken[turn] if spoken[turn] else ids[i + 3 : end]
        turn += 1
        i = end
    return out


_DIGESTS: dict[int, tuple[weakref.ref, bytes]] = {}  # id(array) -> (weak ref, digest); read-only arrays only


def _digest(arr: np.ndarray) -> bytes:
    """Content digest of a media array, memoised by identity (earlier turns come back every turn)."""
    return _by_identity(
        _DIGESTS, id(arr), arr, lambda: hashlib.blake2b(np.ascontiguousarray(arr).tobytes(), digest_size=16).digest()
    )


def turn_media_keys(conv: Conversation) -> list[bytes | None]:
    """Per turn, a digest of its media content (None without media).

    The conversation cache matches prompts by token ids, and every audio, image or video
    placeholder has the same id: a turn replaced by different media of the same token
    length would otherwise reuse the old media's keys and values."""
    keys: list[bytes | None] = []
    for turn in conv.turns:
        h = hashlib.blake2b(digest_size=16)
        media = False
        for part in turn.parts:
            if isinstance(part, AudioPart):
                h.update(b"a%d" % part.sample_rate + _digest(np.asarray(part.pcm)))
            elif isinstance(part, ImagePart):
                h.update(b"i" + _digest(np.asarray(part.image)))
            elif isinstance(part, VideoPart):
                h.update(b"v%d" % bool(getattr(part, "interleave_audio", False)))
                for frame, t in zip(part.frames, part.timestamps_s, strict=True):
                    h.update(_digest(np.asarray(frame)) + repr(float(t)).encode())
            else:
                continue
            media = True
        keys.append(h.digest() if media else None)
    return keys
