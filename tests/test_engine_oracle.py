"""Streaming equals offline: the engine's greedy output is stock `generate()`'s.

For each input kind, the same prepared tensors go to stock
`Qwen3OmniMoeForConditionalGeneration.generate(..., thinker_do_sample=False,
talker_do_sample=False)` and to the streaming engine. Text tokens and codec frames must
be identical; the streamed waveform must equal Code2Wav run on the same codes under the
same chunk schedule, and its deviation from stock's one-shot decode is measured.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_dtypes import DEVICE, DTYPES
from PIL import Image

from assistant.engine import inputs as inputs_mod
from assistant.engine.api import (
    AudioChunk,
    AudioPart,
    Conversation,
    ImagePart,
    ResponseDone,
    Sampling,
    TextPart,
    VideoPart,
)
from assistant.engine.code2wav import FRAME_SAMPLES
from assistant.engine.local import load_resident
from assistant.engine.stock import greedy_generate_kwargs
from assistant.engine.stream import StreamConfig, StreamJob

GREEDY = Sampling(greedy=True, min_tokens=4, max_tokens=8, min_frames=10, max_frames=14)


@pytest.fixture(scope="module", params=DTYPES)
def resident(tiny_dir, request):
    """The engine in each dtype; stock generate() runs on the same modules, so it is compared in that dtype too."""
    return load_resident(str(tiny_dir), DEVICE, request.param, "sdpa")


def frames_fixture(fixtures_dir, count=4):
    paths = sorted((fixtures_dir / "frames").glob("*.png"))[:count]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def run_stream(resident, conv, config=None):
    job = StreamJob(resident, conv, config=config or StreamConfig())
    events = []
    while not job.done:
        events += job.step()
    done = events[-1]
    assert isinstance(done, ResponseDone) and done.status == "completed", done
    audio = np.frombuffer(b"".join(e.pcm16 for e in events if isinstance(e, AudioChunk)), dtype="<i2")
    return job, done, audio


def codes_of(job) -> torch.Tensor:
    return torch.stack(job._vocoder.frames, dim=-1)  # [16, frames]


def run_stock(resident, conv):
    """Stock generate() on the same tensors; returns (text ids, codes [16, T], wav)."""
    model = resident.model
    prepared = inputs_mod.prepare(resident.processor, conv)
    s = conv.sampling
    captured = {}
    original = model.code2wav.chunked_decode

    def capture(codes, **kw):  # record the codes stock decodes, then decode as stock does
        captured["codes"] = codes
        return original(codes, **kw)

    model.code2wav.chunked_decode = capture
    try:
        ids, wav = model.generate(
            **prepared.tensors, **greedy_generate_kwargs(s, conv.voice), use_audio_in_video=prepared.audio_in_video
        )
    finally:
        model.code2wav.chunked_decode = original
    generated = ids[0, prepared.input_ids.shape[1] :].tolist()
    return generated, captured["codes"][0], wav.reshape(-1).float().cpu().numpy()


def assert_matches_stock(resident, conv):
    job, done, audio = run_stream(resident, conv)
    stock_ids, stock_codes, stock_wav = run_stock(resident, conv)
    assert job._tokens == stock_ids, "text tokens differ from stock generate()"
    ours = codes_of(job)
    assert ours.shape == stock_codes.shape, (ours.shape, stock_codes.shape)
    assert torch.equal(ours, stock_codes), "codec frames differ from stock generate()"
    assert len(audio) == ours.shape[1] * FRAME_SAMPLES - 555  # one tail, like one stock chunk
    return job, done, audio, stock_wav


def test_audio_only_turn_matches_stock(resident, load_wav):
    conv = Conversation(sampling=GREEDY)
    conv.add_user([AudioPart(load_wav("hello_en_us.wav"), 16000)])
    _, done, _, _ = assert_matches_stock(resident, conv)
    assert GREEDY.min_frames <= done.stats.frames <= GREEDY.max_frames


def test_audio_and_image_turn_matches_stock(resident, load_wav, fixtures_dir):
    conv = Conversation(sampling=GREEDY, voice="Chelsie")
    conv.add_user([AudioPart(load_wav("describe_en_scotland.wav"), 16000), ImagePart(frames_fixture(fixtures_dir)[0])])
    assert_matches_stock(resident, conv)


def test_audio_and_video_turn_matches_stock(resident, load_wav, fixtures_dir):
    frames = frames_fixture(fixtures_dir, 4)
    conv = Conversation(sampling=GREEDY, voice="Aiden")
    conv.add_user([AudioPart(load_wav("weather_en_gb_f3.wav"), 16000), VideoPart(frames, [0.0, 0.5, 1.0, 1.5])])
    assert_matches_stock(resident, conv)


def test_camera_and_microphone_turn_matches_stock(resident, load_wav, fixtures_dir):
    """A camera turn in Qwen's interleaved layout (each 2-frame grid at its start time,
    then that second's audio), after an earlier audio turn: stock generate() with
    use_audio_in_video=True and the engine agree token for token and frame for frame."""
    frames = frames_fixture(fixtures_dir, 6)
    conv = Conversation(sampling=GREEDY, voice="Aiden")
    conv.add_user([AudioPart(load_wav("hello_en_us.wav"), 16000)])
    conv.add_assistant_text("Hi.")
    video = VideoPart(frames, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5], interleave_audio=True)
    conv.add_user([video, AudioPart(load_wav("describe_en_scotland.wav"), 16000)])
    prepared = inputs_mod.prepare(resident.processor, conv)
    assert prepared.audio_in_video
    ids = prepared.input_ids[0].tolist()
    tc = resident.cfg.thinker_config
    camera = ids[ids.index(tc.vision_start_token_id) :]
    assert camera[1] == tc.audio_start_token_id  # <|vision_start|><|audio_start|> opens the interleaved span
    runs = [tok for i, tok in enumerate(camera[2:]) if i == 0 or camera[1 + i] != tok][:6]
    assert runs == [tc.video_token_id, tc.audio_token_id] * 3  # grid, its second of audio, grid, ...
    assert_matches_stock(resident, conv)


def test_three_turn_conversation_matches_stock(resident, load_wav):
    conv = Conversation(sampling=GREEDY, instructions="You are a helpful voice assistant.")
    clips = ["hello_en_us.wav", "weather_en_gb_f3.wav", "count_en_us_m3.wav"]
    for i, clip in enumerate(clips):
        conv.add_user([AudioPart(load_wav(clip), 16000)] + ([TextPart("And briefly.")] if i == 1 else []))
        job, done, _, _ = assert_matches_stock(resident, conv)
        conv.turns.append(done.turn)  # later turns see earlier ones
    assert [t.role for t in conv.turns] == ["user", "assistant"] * 3


def test_waveform_equals_code2wav_under_the_same_schedule(resident, load_wav):
    """The streamed audio is exactly Code2Wav over [start - left_context, end) windows
    of the same codes, stitched at the 555-sample look-ahead; its difference from stock's
    one-shot decode is the left-context truncation only, measured here."""
    config = StreamConfig(chunk_ramp=(1, 2, 4), left_context=3)
    conv = Conversation(sampling=GREEDY)
    conv.add_user([AudioPart(load_wav("hello_en_us.wav"), 16000)])
    job, _, audio = run_stream(resident, conv, config)
    codes = codes_of(job).unsqueeze(0)  # [1, 16, T]
    c2w = resident.model.code2wav
    expected, emitted, done_frames, chunk = [], 0, 0, 0
    T = codes.shape[-1]
    with torch.no_grad():
        while done_frames < T:
            n = min(T, done_frames + config.chunk_ramp[min(chunk, 2)])
            start = max(0, done_frames - config.left_context)
            wav = c2w(codes[..., start:n]).reshape(-1)
            end = start * FRAME_SAMPLES + wav.shape[0]
            expected.append(wav[emitted - start * FRAME_SAMPLES :])
            emitted, done_frames, chunk = end, n, chunk + 1
        reference = torch.cat(expected).float().cpu().numpy()
        one_shot = c2w(codes).reshape(-1).float().cpu().numpy()
    ours = audio.astype(np.float32) / 32767.0
    assert len(ours) == len(reference) == len(one_shot)
    assert np.max(np.abs(ours - reference)) <= 1.0 / 32767 + 1e-6  # PCM16 rounding only
    deviation = np.max(np.abs(reference - one_shot))
    print(f"max |streamed - one-shot| with 3-frame left context: {deviation:.2e}")
    assert deviation < 0.5  # bounded: same codes, truncated context (a random vocoder is far from smooth)
