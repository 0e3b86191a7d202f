"""The streaming Code2Wav (engine/code2wav_stream.py) against one call over every frame,
and the short chunks it allows (talker.py `_lead_short`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from assistant.engine.api import AudioChunk, AudioPart, Conversation, ResponseDone, Sampling
from assistant.engine.code2wav import FRAME_SAMPLES, IncrementalCode2Wav
from assistant.engine.code2wav_stream import StreamingCode2Wav
from assistant.engine.local import load_resident
from assistant.engine.stream import StreamConfig, StreamJob

LOOK_AHEAD = 555  # samples Code2Wav withholds at the end (its transposed convolutions' overlap)


@pytest.fixture(scope="module")
def resident(tiny_dir):
    return load_resident(str(tiny_dir), torch.device("cpu"), torch.float32, "sdpa")


def _codes(frames: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2048, (1, 16, frames), generator=gen)  # [1, Q, T]


# 1-frame chunks, the default ramp, and uneven sizes; 120 frames pass the pre-transformer's
# 72-frame attention window, so its sliding KV cache is exercised too.
@pytest.mark.parametrize("sizes", [[1] * 120, [1, 2, 4, 8, 16, 25, 25, 25, 14], [3, 7, 1, 50, 59]])
def test_streamed_chunks_equal_one_call_over_every_frame(resident, sizes):
    codes = _codes(sum(sizes))
    with torch.inference_mode():
        want = resident.code2wav(codes).reshape(-1)  # [T x 1920 - 555]
        stream, got, start = StreamingCode2Wav(resident.code2wav), [], 0
        for i, n in enumerate(sizes):
            out = stream(codes[..., start : start + n]).reshape(-1)
            # Each chunk returns its own frames' samples; the first withholds the look-ahead.
            assert out.shape[0] == n * FRAME_SAMPLES - (LOOK_AHEAD if i == 0 else 0)
            got.append(out)
            start += n
    got = torch.cat(got)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)


def test_streams_keep_their_own_state(resident):
    """Two responses interleaved chunk by chunk decode as each would alone."""
    a, b = _codes(12, seed=1), _codes(12, seed=2)
    with torch.inference_mode():
        sa, sb = StreamingCode2Wav(resident.code2wav), StreamingCode2Wav(resident.code2wav)
        outs_a, outs_b = [], []
        for start in range(0, 12, 3):
            outs_a.append(sa(a[..., start : start + 3]).reshape(-1))
            outs_b.append(sb(b[..., start : start + 3]).reshape(-1))
        torch.testing.assert_close(torch.cat(outs_a), resident.code2wav(a).reshape(-1), atol=2e-6, rtol=0)
        torch.testing.assert_close(torch.cat(outs_b), resident.code2wav(b).reshape(-1), atol=2e-6, rtol=0)


def test_incremental_decoder_streams_with_no_left_context(resident):
    """IncrementalCode2Wav with left_context 0 (the default) emits the chunks of its ramp,
    seamlessly, and the final flush adds nothing past what one call returns."""
    codes = _codes(20)
    voc = IncrementalCode2Wav(resident.code2wav, 0, [1, 2, 4])
    assert voc.stream is not None
    pieces = []
    with torch.inference_mode():
        for t in range(codes.shape[-1]):
            voc.push(codes[0, :, t])
            out = voc.decode()
            if out is not None:
                pieces.append((voc.decoded_frames, out))
        tail = voc.decode(final=True)
        want = resident.code2wav(codes).reshape(-1).numpy()
    assert [n for n, _ in pieces] == [1, 3, 7, 11, 15, 19]  # the ramp 1, 2, 4, then 4 for good
    audio = torch.cat([torch.from_numpy(p) for _, p in pieces] + [torch.from_numpy(tail)]).numpy()
    assert audio.shape == want.shape
    assert abs(audio - want).max() <= 2e-6
    with pytest.raises(ValueError):
        IncrementalCode2Wav(resident.code2wav, -1)


def _audio_job(resident, load_wav, frames: int, config: StreamConfig) -> StreamJob:
    conv = Conversation(
        sampling=Sampling(greedy=True, min_tokens=4, max_tokens=7, min_frames=frames, max_frames=frames)
    )
    conv.add_user([AudioPart(load_wav("hello_en_us.wav"), 16000)])
    return StreamJob(resident, conv, config=config)


def _pcm(events: list) -> np.ndarray:
    pcm = b"".join(e.pcm16 for e in events if isinstance(e, AudioChunk))
    return np.frombuffer(pcm, dtype="<i2").astype(np.int32)


def _run(job: StreamJob, before_step=None) -> list:
    events = []
    while not job.done:
        if before_step is not None:
            before_step(job)
        events += job.step()
    assert isinstance(events[-1], ResponseDone) and events[-1].status == "completed", events[-1]
    return events


def test_a_short_lead_sends_the_frames_so_far(resident, load_wav):
    """Once the listener's lead is under `flush_lead_s`, frames go out two at a time short
    of the ramp's chunk (one when under half of it), and the audio is the same as with
    whole chunks: the streaming decode does not depend on where chunks end."""
    config = StreamConfig(chunk_ramp=(1, 8))
    whole = _run(_audio_job(resident, load_wav, 24, config))
    sizes = [e.frames for e in whole if isinstance(e, AudioChunk)]
    assert sizes[:3] == [1, 8, 8]

    def no_lead(job):  # as if the first audio had played long ago: always short of lead
        job.flush_lead_s = 0.3
        if job.stats.t_first_audio is not None:
            job.stats.t_first_audio -= 10.0

    short = _run(_audio_job(resident, load_wav, 24, config), no_lead)
    short_sizes = [e.frames for e in short if isinstance(e, AudioChunk)]
    assert short_sizes[0] == 1 and max(short_sizes) == 1  # under half the lead: every frame
    a, b = _pcm(short), _pcm(whole)  # the same to float rounding: an int16 step at most
    assert a.shape == b.shape and np.abs(a - b).max() <= 1

    import assistant.engine.talker as talker_mod

    clock = talker_mod.now()

    def lead_600(job):
        job.flush_lead_s = 1000.0
        if job.stats.t_first_audio is not None:
            job.stats.t_first_audio = clock + 600.0 - job.stats.audio_samples / 24000

    mid = _run(_audio_job(resident, load_wav, 24, config), lead_600)
    mid_sizes = [e.frames for e in mid if isinstance(e, AudioChunk)]
    assert mid_sizes[0] == 1 and set(mid_sizes[1:-1]) == {2}


def test_windowed_decode_never_sends_short_chunks(resident, load_wav):
    """With left context (the windowed decode) a short chunk would cost a whole window:
    the ramp holds whatever the lead."""
    config = StreamConfig(chunk_ramp=(1, 8), left_context=4)

    def no_lead(job):
        job.flush_lead_s = 0.3
        if job.stats.t_first_audio is not None:
            job.stats.t_first_audio -= 10.0

    events = _run(_audio_job(resident, load_wav, 17, config), no_lead)
    assert [e.frames for e in events if isinstance(e, AudioChunk)] == [1, 8, 8]


def test_a_batch_of_streams_equals_each_stream_alone(resident):
    """decode_batch: three responses' chunks through the pre-transformer and the
    convolutions as one batch, fresh and then started, equal each response decoded alone
    (to float rounding). 80 frames pass the 72-frame attention window, where the
    pre-transformer goes back to one run per stream."""
    from assistant.engine.code2wav_stream import _window_holds_all, decode_batch

    chunks = ((0, 1), (1, 2), (3, 2), (5, 4), (9, 30), (39, 30), (69, 11))
    codes = [_codes(80, seed=s) for s in (3, 4, 5)]
    with torch.inference_mode():
        streams = [StreamingCode2Wav(resident.code2wav) for _ in codes]
        got = [[] for _ in codes]
        batched = []
        for start, n in chunks:
            batched.append(_window_holds_all(streams, n))
            outs = decode_batch(streams, [c[..., start : start + n] for c in codes])
            for row, out in zip(got, outs, strict=True):
                row.append(out.reshape(-1))
        assert batched == [True] * 6 + [False]  # 69 + 11 frames overflow the 71 the window keeps
        for row, c in zip(got, codes, strict=True):
            torch.testing.assert_close(torch.cat(row), resident.code2wav(c).reshape(-1), atol=2e-6, rtol=0)
        with pytest.raises(ValueError):  # one length per batch
            decode_batch(streams[:2], [codes[0][..., :1], codes[1][..., :2]])
        with pytest.raises(ValueError):  # a fresh stream beside a started one
            decode_batch([streams[0], StreamingCode2Wav(resident.code2wav)], [codes[0][..., :1]] * 2)


def test_first_chunk_shapes_are_warmed_for_every_batch_size(resident, monkeypatch):
    """warm_shapes (the CPU warm-up, local.py) decodes a fresh stream's first chunks once for
    every batch size up to the worker's, through the batched decode serving uses."""
    import assistant.engine.code2wav_stream as c2s

    seen = []
    decode = c2s.decode_batch
    monkeypatch.setattr(
        c2s,
        "decode_batch",
        lambda streams, codes: seen.append((len(streams), codes[0].shape[-1])) or decode(streams, codes),
    )
    with torch.inference_mode():
        assert c2s.warm_shapes(resident.code2wav, [1, 2], 3) == 6
    assert seen == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]
