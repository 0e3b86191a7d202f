"""The multimodal rotary positions (M-RoPE) of a prompt, as stock computes them, in bulk.

Stock `get_rope_index` (transformers 5.24, modeling_qwen3_omni_moe.py, on
`Qwen3OmniMoePreTrainedModelForConditionalGeneration`; the talker's delegates to it)
walks the prompt media item by media item, and for a camera turn (audio in video) merges
the video and audio positions one token at a time, each step a tensor comparison and a
[3, 1] slice that is concatenated at the end. On the tiny CPU model that was 17 ms for one
2.5 s camera turn, paid again by every prompt that has one in its history, twice (thinker
and talker); on CUDA every comparison of that loop is a host sync.

`rope_index` returns the same tensors: the same walk (how the next item is found, which
block's maximum starts the next one, float32 arithmetic in the same order, the quirks
included: the KV caches were built with stock's positions), with each block made by one
vectorised expression and the camera merge done by one stable sort. Batches, padding
masks and layouts it does not expect go to stock unchanged. tests/test_rope.py compares
the two on every layout the engine builds.
"""

from __future__ import annotations

import torch
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths


class _Unexpected(Exception):
    """A layout the bulk walk does not reproduce: stock decides (and raises what it raises)."""


def rope_index(
    model,
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    video_grid_thw: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    use_audio_in_video: bool,
    audio_seqlens: torch.Tensor | None,
    second_per_grids: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`model.get_rope_index(...)` (model: the thinker or the talker) for the engine's
    prompts: input_ids [1, P] -> (positions [3, 1, P] float32, deltas [1, 1])."""
    args = (
        input_ids,
        image_grid_thw,
        video_grid_thw,
        attention_mask,
        use_audio_in_video,
        audio_seqlens,
        second_per_grids,
    )
    media = image_grid_thw is not None or video_grid_thw is not None
    unmasked = attention_mask is None or bool((attention_mask == 1).all())
    if input_ids.shape[0] != 1 or not media or not unmasked:
        return model.get_rope_index(*args)  # text only: stock's branch is a cumsum already
    try:
        walk = _Walk(model, input_ids[0].tolist(), image_grid_thw, video_grid_thw, audio_seqlens, second_per_grids)
        positions = walk.run(use_audio_in_video)  # [3, P] float32
    except (_Unexpected, IndexError, ValueError, TypeError):
        return model.get_rope_index(*args)
    deltas = torch.tensor([positions.max() + 1 - positions.shape[1]], device=input_ids.device).unsqueeze(1)
    return positions.unsqueeze(1).to(input_ids.device), deltas


class _Walk:
    """One prompt's blocks of positions, in stock's order. `start` is where the next block
    begins: 0, then one past the maximum (over all three axes) of the last block appended."""

    def __init__(self, model, ids: list[int], image_grid, video_grid, audio_seqlens, second_per_grids) -> None:
        cfg = model.config
        self.ids = ids
        self.merge = model.spatial_merge_size
        self.per_second = cfg.position_id_per_seconds
        self.n_window = cfg.audio_config.n_window
        self.image_id, self.video_id, self.audio_id = cfg.image_token_id, cfg.video_token_id, cfg.audio_token_id
        self.vision_start, self.audio_start = cfg.vision_start_token_id, cfg.audio_start_token_id
        # On the host once: indexing device tensors item by item would sync each time.
        self.image_grid = image_grid.tolist() if image_grid is not None else []
        self.video_grid = video_grid.tolist() if video_grid is not None else []
        self.seconds = second_per_grids.detach().cpu().float() if second_per_grids is not None else None
        self.audio_lengths = audio_seqlens.detach().cpu() if audio_seqlens is not None else None
        self.blocks: list[torch.Tensor] = []  # each [3, L]
        self.last: torch.Tensor | None = None  # the block whose maximum sets `start`

    def _append(self, block: torch.Tensor, sets_start: torch.Tensor | None = None) -> None:
        self.blocks.append(block)
        self.last = block if sets_start is None else sets_start

    def _start(self):
        return self.last.max() + 1 if self.last is not None else 0

    def _line(self, length, start) -> torch.Tensor:
        """[3, length]: one position per token on all three axes (text, audio, markers)."""
        return torch.arange(length).view(1, -1).expand(3, -1) + start

    def _grid(self, thw: list[int], t_index: torch.Tensor, start) -> torch.Tensor:
        """[3, T * H * W] (merged patches): temporal from `t_index` [T], then row, column."""
        t, h, w = len(t_index), thw[1] // self.merge, thw[2] // self.merge
        rows = torch.arange(h).view(1, -1, 1).expand(t, -1, w).flatten().float()
        cols = torch.arange(w).view(1, 1, -1).expand(t, h, -1).flatten().float()
        times = t_index.view(-1, 1).expand(-1, h * w).flatten().float()
        return torch.stack([times, rows, cols]) + start

    def _video_times(self, index: int) -> torch.Tensor:
        grid_t = self.video_grid[index][0]
        return (torch.arange(grid_t) * self.seconds[index] * self.per_second).float()

    def _audio_length(self, index: int) -> torch.Tensor:
        return _get_feat_extract_output_lengths(self.audio_lengths[index], self.n_window)

    def run(self, audio_in_video: bool) -> torch.Tensor:
        ids, n = self.ids, len(self.ids)
        after_vision = [ids[i + 1] for i, tok in enumerate(ids) if tok == self.vision_start]
        audios = ids.count(self.audio_start)
        images = after_vision.count(self.image_id)
        videos = after_vision.count(self.audio_start if audio_in_video else self.video_id)
        items = images + audios if audio_in_video else images + videos + audios
        any_visual = self.image_id in ids or self.video_id in ids
        any_audio = self.audio_id in ids
        st = 0
        image = video = audio = 0
        for _ in range(items):
            start = self._start()
            seen_visual = any_visual and (videos - video > 0 or images - image > 0)
            at_vision = ids.index(self.vision_start, st) if seen_visual else n + 1
            at_audio = ids.index(self.audio_start, st) if any_audio and audios - audio > 0 else n + 1
            at = min(at_vision, at_audio)
            text = at - st
            if text:
                self._append(self._line(text, start))
                start = start + text
            camera = at == at_vision and at_vision + 1 == at_audio
            marks = 2 if camera else 1  # <|vision_start|><|audio_start|> ... or one start token
            self._append(self._line(marks, start))
            start = start + marks
            if at == at_audio:
                length = self._audio_length(audio)
                self._append(self._line(length, start))
                st += int(text + marks + length + marks)
                audio += 1
            elif at == at_vision and ids[at + 1] == self.image_id:
                thw = self.image_grid[image]
                self._append(self._grid(thw, (torch.arange(thw[0]) * 1 * self.per_second).float(), start))
                st += int(text + marks + thw[0] * thw[1] * thw[2] // self.merge**2 + marks)
                image += 1
            elif at == at_vision and ids[at + 1] == self.video_id:
                thw = self.video_grid[video]
                self._append(self._grid(thw, self._video_times(video), start))
                st += int(text + marks + thw[0] * thw[1] * thw[2] // self.merge**2 + marks)
                video += 1
            elif camera:
                length = self._audio_length(audio)
                thw = self.video_grid[video]
                self._camera(self._grid(thw, self._video_times(video), start), self._line(length, start))
                st += int(text + marks + length + thw[0] * thw[1] * thw[2] // self.merge**2 + marks)
                audio += 1
                video += 1
            self._append(self._line(marks, self._start()))
        if st < n:
            self._append(self._line(n - st, self._start()))
        positions = torch.cat([b.float() for b in self.blocks], dim=1)  # [3, P]
        if positions.shape[1] != n:
            raise _Unexpected(f"{positions.shape[1]} positions for {n} tokens")
        return positions

    def _camera(self, video: torch.Tensor, audio: torch.Tensor) -> None:
        """Video [3, V] and audio [3, A] positions in time order, video first on ties: stock
        merges them two pointers at a time (`<=`), which for two ascending sequences is the
        stable sort of [video, audio] by time. Stock's loop stops when one side runs out
        and appends the rest of the other as one block; that block's maximum sets the next
        start."""
        times = torch.cat([video[0], audio[0].float()])
        if (video[0].diff() < 0).any():
            raise _Unexpected("video times not ascending")
        order = torch.sort(times, stable=True).indices
        merged = torch.cat([video.float(), audio.float()], dim=1)[:, order]  # [3, V + A]
        source = (order >= video.shape[1]).long()  # 0 video, 1 audio, in merged order
        if video.shape[1] == 0 or audio.shape[1] == 0:
            if merged.shape[1]:
                self._append(merged)  # stock: no merge steps, the non-empty side as one block
            return
        other = torch.nonzero(source != source[-1]).flatten()
        tail = merged[:, int(other[-1]) + 1 :]  # what was left of the side that ran out last
        self._append(merged, sets_start=tail)
