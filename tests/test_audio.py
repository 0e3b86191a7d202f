"""PCM helpers."""

from __future__ import annotations

import numpy as np
import pytest

from assistant import audio


def test_pcm16_round_trip_and_clipping():
    x = np.array([0.0, 0.5, -0.5, 1.5, -1.5], np.float32)
    y = audio.pcm16_to_float(audio.float_to_pcm16(x))
    assert y[:3] == pytest.approx([0.0, 0.5, -0.5], abs=1e-4)
    assert y[3] == pytest.approx(32767 / 32768) and y[4] == -1.0  # clipped, never wrapped
    with pytest.raises(ValueError):
        audio.pcm16_to_float(b"\x00\x00\x00")


def test_stream_resampler_matches_one_shot():
    t = np.arange(24000) / 24000
    x = (np.sin(2 * np.pi * 440 * t) * 0.5).astype(np.float32)
    r = audio.StreamResampler(24000, 16000)
    pieces = [r.process(x[i : i + 480]) for i in range(0, len(x), 480)] + [r.flush()]
    streamed = np.concatenate(pieces)
    assert abs(len(streamed) - 16000) <= 1
    whole = audio.resample(x, 24000, 16000)
    assert np.max(np.abs(streamed[100:-100] - whole[100 : len(streamed) - 100])) < 1e-3


def test_frame_chunker():
    c = audio.FrameChunker(4)
    assert c.push(b"abcdef") == [b"abcd"] and c.pending_bytes == 2
    assert c.push(b"gh") == [b"efgh"]
    c.push(b"x")
    assert c.flush() == [b"x\0\0\0"] and c.flush() == []


def test_chunk_pcm16_and_durations():
    data = bytes(24000 * 2)  # 1 s at 24 kHz
    chunks = audio.chunk_pcm16(data, 24000, 20)
    assert len(chunks) == 50 and all(len(c) == 960 for c in chunks)
    assert audio.pcm16_duration_ms(data, 24000) == 1000.0
    assert audio.ms_to_samples(20, 16000) == 320 and audio.samples_to_ms(320, 16000) == 20
