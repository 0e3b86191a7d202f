"""Real-dimension smoke test: the Instruct checkpoint's architecture, every stack cut to 2 layers.

The tiny model's widths (32), head dims (8), expert counts (4) and pixel budgets hide shape
assumptions that only the real ones expose (head_dim 128 with mrope [24, 20, 20], 128 experts
top-8 / top-6, 2048 / 1024 hidden, vision 1152 wide with 16 heads, the audio encoder's 1280,
Code2Wav's 1536-channel decoder, the real processor's pixel budgets). Here that model is
built on the CPU in bfloat16 with random weights (assistant/realdim.py) and one spoken turn
and one camera turn stream end to end through the engine. Its build time, each turn's time
and the peak RSS are printed (pytest -s), since the GPU run counts on them.
"""

from __future__ import annotations

import resource
import time

import numpy as np
import pytest
import torch

from assistant import realdim
from assistant.engine.api import AudioChunk, AudioPart, Conversation, ResponseDone, Sampling, TextDelta, VideoPart
from assistant.engine.resident import Resident
from assistant.engine.stream import StreamJob

FRAMES = 3
# Measured on the 2-core CI box: see the module's printout. The build and two turns take a few minutes of
# one core under load, so this module gets its own budget rather than the suite's 300 s per test.
pytestmark = pytest.mark.timeout(900)
SAMPLING = Sampling(greedy=True, min_tokens=3, max_tokens=3, min_frames=FRAMES, max_frames=FRAMES)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB


@pytest.fixture(scope="module")
def resident(tiny_dir):
    t0 = time.perf_counter()
    model = realdim.build_model(realdim.real_config(layers=2), torch.device("cpu"), torch.bfloat16, fast_init=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"\nreal-dimension model, 2 layers per stack: {params / 1e9:.2f} B parameters, bf16, built in "
          f"{time.perf_counter() - t0:.1f} s; peak RSS {peak_rss_gb():.2f} GB")  # fmt: skip
    res = Resident(model, realdim.real_processor(tiny_dir), torch.device("cpu"), torch.bfloat16, audio_window_s=2)
    yield res
    print(f"peak RSS after both turns: {peak_rss_gb():.2f} GB")


def stream(res: Resident, parts: list, what: str) -> tuple[StreamJob, list]:
    conv = Conversation(sampling=SAMPLING)
    conv.add_user(parts)
    job = StreamJob(res, conv)
    t0 = time.perf_counter()
    events = []
    while not job.done:
        events += job.step()
    done = events[-1]
    assert isinstance(done, ResponseDone) and done.status == "completed", done.error
    print(f"{what}: {job.stats.prefill_tokens} prompt tokens, {time.perf_counter() - t0:.1f} s, "
          f"stages {done.stats.stage_ms()}")  # fmt: skip
    return job, events


def assert_spoke(job: StreamJob, events: list) -> None:
    assert job.stats.frames == FRAMES
    pcm = np.frombuffer(b"".join(e.pcm16 for e in events if isinstance(e, AudioChunk)), dtype="<i2")
    assert len(pcm) == FRAMES * 1920 - 555  # every frame, less the last look-ahead (as stock)
    assert any(isinstance(e, TextDelta) for e in events) or len(job._tokens) == SAMPLING.max_tokens
    codes = torch.stack(job._vocoder.frames, -1)  # [16, frames]
    assert codes.shape == (16, FRAMES) and int(codes.max()) < 2048


def test_real_dimensions_spoken_turn(resident, load_wav):
    job, events = stream(resident, [AudioPart(load_wav("hello_en_us.wav"), 16000)], "spoken turn")
    assert job._thinker_hidden.shape[-1] == 2048 and job._talker_last_hidden.shape[-1] == 1024
    assert_spoke(job, events)


def test_real_dimensions_camera_turn(resident, load_wav, fixtures_dir):
    from PIL import Image

    paths = sorted((fixtures_dir / "frames").glob("*.png"))[:4]
    frames = [np.asarray(Image.open(p).convert("RGB").resize((640, 480))) for p in paths]  # a webcam's VGA
    video = VideoPart(frames, [0.0, 0.5, 1.0, 1.5], interleave_audio=True)
    job, events = stream(resident, [video, AudioPart(load_wav("hello_en_us.wav"), 16000)], "camera turn")
    grid = job._t["video_grid_thw"]
    assert int(grid[0, 1]) * int(grid[0, 2]) * 16 * 16 >= 128 * 32 * 32  # the real per-frame pixel floor
    assert_spoke(job, events)


def test_full_size_config_has_the_checkpoints_values():
    """What gpu_bench.py builds on a GPU: the real depths and the values the tiny config's aliases
    once overrode (the talker's expert count, the code predictor's layer types)."""
    cfg = realdim.real_config()
    thinker, talker = cfg.thinker_config.text_config, cfg.talker_config.text_config
    assert (thinker.num_hidden_layers, thinker.num_experts, thinker.num_experts_per_tok) == (48, 128, 8)
    assert (talker.num_hidden_layers, talker.num_experts, talker.num_experts_per_tok) == (20, 128, 6)
    predictor = cfg.talker_config.code_predictor_config
    assert predictor.num_hidden_layers == 5 and len(predictor.layer_types) == 5
    assert cfg.talker_config.accept_hidden_layer == 24
    assert cfg.thinker_config.vision_config.deepstack_visual_indexes == [8, 16, 24]
    assert cfg.code2wav_config.num_hidden_layers == 8 and cfg.code2wav_config.decoder_dim == 1536
