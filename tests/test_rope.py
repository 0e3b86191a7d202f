"""rope.rope_index equals stock get_rope_index on the prompts the engine builds.

The KV caches (conversation cache, early prefill) hold keys rotated with stock's
positions, so the bulk version must return the same tensors: same values, dtype and
shape, for the thinker (audio in video on for camera turns) and for the talker (which
stock calls with it off, on ids that still hold camera spans).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from assistant.engine import inputs as inputs_mod
from assistant.engine.api import AudioPart, Conversation, ImagePart, TextPart, Turn, VideoPart
from assistant.engine.local import load_resident
from assistant.engine.rope import rope_index


@pytest.fixture(scope="module")
def res(tiny_dir):
    return load_resident(str(tiny_dir), torch.device("cpu"), torch.float32, "sdpa", audio_window_s=2)


@pytest.fixture(scope="module")
def frames(fixtures_dir):
    paths = sorted((fixtures_dir / "frames").glob("*.png"))
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def speech(seconds: float, seed: int = 0) -> AudioPart:
    rng = np.random.default_rng(seed)
    return AudioPart((0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32))


def camera(frames, count: int, seconds: float) -> list:
    pick = [frames[i % len(frames)] for i in range(count)]
    return [VideoPart(pick, [i / 2 for i in range(count)], interleave_audio=True), speech(seconds, count)]


def reply(text: str = "Sure, here it is.") -> Turn:
    return Turn("assistant", [TextPart(text)])


def conversations(frames) -> dict[str, list[Turn]]:
    return {
        "image and audio": [Turn("user", [ImagePart(frames[0]), speech(1.3)])],
        "camera 1 frame, short audio": [Turn("user", camera(frames, 1, 0.4))],
        "camera 5 frames, 2.45 s": [Turn("user", camera(frames, 5, 2.45))],
        "camera 6 frames, 3 s": [Turn("user", camera(frames, 6, 3.0))],
        "camera, audio longer than video": [Turn("user", camera(frames, 2, 7.3))],
        "camera, video longer than audio": [Turn("user", camera(frames, 12, 1.1))],
        "plain video with text": [Turn("user", [VideoPart(frames[:4], [0, 0.5, 1, 1.5]), TextPart("what is this")])],
        "history": [
            Turn("user", [speech(2.2)]),
            reply(),
            Turn("user", camera(frames, 5, 2.45)),
            reply("A room."),
            Turn("user", [TextPart("and now?"), ImagePart(frames[3])]),
            reply(),
            Turn("user", camera(frames, 8, 4.2)),
        ],
    }


class NoStock:
    """The model as rope_index sees it, minus stock's function: a fallback would fail the test."""

    def __init__(self, model) -> None:
        self.config, self.spatial_merge_size = model.config, model.spatial_merge_size

    def get_rope_index(self, *args):
        raise AssertionError("rope_index fell back to stock")


def stock_and_ours(model, ids, t, audio_in_video, fallback=False):
    args = (
        ids,
        t.get("image_grid_thw"),
        t.get("video_grid_thw"),
        torch.ones_like(ids),
        audio_in_video,
        t["feature_attention_mask"].sum(-1) if "feature_attention_mask" in t else None,
        t.get("video_second_per_grid"),
    )
    return model.get_rope_index(*args), rope_index(model if fallback else NoStock(model), *args)


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, (x.dtype, y.dtype, x.shape, y.shape)
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", list(conversations([np.zeros((96, 128, 3), np.uint8)] * 6)))
def test_thinker_and_talker_positions_equal_stock(res, frames, name):
    conv = Conversation(turns=conversations(frames)[name], instructions="Be brief.")
    prepared = inputs_mod.prepare(res.processor, conv)
    t, ids = prepared.tensors, prepared.tensors["input_ids"]
    assert_same(*stock_and_ours(res.thinker, ids, t, prepared.audio_in_video))
    # The talker: stock passes use_audio_in_video=False whatever the prompt holds
    # (talker.talker_positions), on the user part of the ids and on all of them.
    user = torch.isin(ids, torch.tensor([res.cfg.thinker_config.audio_token_id, res.video_id, res.image_id]))
    assert_same(*stock_and_ours(res.talker, ids, t, False))
    assert_same(*stock_and_ours(res.talker, ids[:, : int(torch.nonzero(user[0])[-1]) + 3], t, False))


def test_text_only_and_batches_go_to_stock(res):
    ids = torch.tensor([[1, 2, 3, 4]])
    (pos, deltas), ours = stock_and_ours(res.thinker, ids, {}, False, fallback=True)
    assert_same((pos, deltas), ours)
    assert torch.equal(pos[0, 0], torch.arange(4.0))
