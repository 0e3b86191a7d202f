"""The cutting of long audio (rest/audio_pieces.Cutter) and the subtitle formats, on plain data."""

from __future__ import annotations

import zlib

import numpy as np

from assistant.realtime.vad import WINDOW_SAMPLES
from assistant.rest import audio_formats as fmt
from assistant.rest.audio_pieces import WINDOW_S, Cutter


def run(probs: list[float], max_windows: int) -> list:
    cutter = Cutter(max_windows)
    samples = np.arange(len(probs) * WINDOW_SAMPLES, dtype=np.float32)  # sample i holds i: checks the slicing
    out = []
    for k in range(0, len(probs), 7):  # uneven pushes
        out += cutter.push(samples[k * WINDOW_SAMPLES : (k + 7) * WINDOW_SAMPLES], np.array(probs[k : k + 7]))
    return out + cutter.finish()


def windows(piece) -> tuple[int, int]:
    return round(piece.start_s / WINDOW_S), round(piece.end_s / WINDOW_S)


def test_utterances_become_padded_pieces_and_silence_is_skipped():
    probs = [0.0] * 50 + [0.9] * 40 + [0.0] * 100 + [0.9] * 30 + [0.0] * 5
    pieces = run(probs, 1000)
    assert [windows(p) for p in pieces] == [(40, 100), (180, 225)]  # pad 10 before, 10 after (or the end)
    for p in pieces:
        a, b = windows(p)
        assert p.pcm[0] == a * WINDOW_SAMPLES and len(p.pcm) == (b - a) * WINDOW_SAMPLES
        assert abs(p.no_speech_prob - 0.1) < 1e-6


def test_a_long_stretch_is_cut_at_its_latest_pause_and_never_exceeds_the_maximum():
    # speech with a short pause (12 windows) at 150 and 260, no long silence: max 300 windows
    probs = ([0.9] * 150 + [0.1] * 12 + [0.9] * 98 + [0.1] * 12 + [0.9] * 200) + [0.0] * 40
    pieces = run(probs, 300)
    spans = [windows(p) for p in pieces]
    assert all(b - a <= 300 for a, b in spans)
    assert spans[0] == (0, 266)  # the middle of the latest pause in the second half (260..272)
    assert spans[1][0] == 266 and spans[-1][1] == 482  # contiguous, then padded after the last speech
    for (_, b0), (a1, _) in zip(spans, spans[1:], strict=False):
        assert b0 == a1


def test_speech_without_any_pause_is_cut_at_its_quietest_window():
    rng = np.random.default_rng(0)
    probs = list(0.6 + 0.3 * rng.random(700))
    probs[230] = 0.5  # the quietest, in the second half of the first piece
    spans = [windows(p) for p in run(probs, 300)]
    assert spans[0] == (0, 231)
    assert all(b - a <= 300 for a, b in spans) and spans[-1][1] == 700


def test_memory_holds_one_piece():
    cutter = Cutter(100)
    speech = np.ones(WINDOW_SAMPLES * 50, np.float32)
    for _ in range(200):  # 10 000 windows of speech
        cutter.push(speech, np.full(50, 0.9))
        assert len(cutter._buf) <= 100


def test_srt_and_vtt():
    segs = [fmt.Segment(0.032, 2.24, " hello"), fmt.Segment(3661.5, 3662.0, "two ")]
    assert fmt.srt(segs) == "1\n00:00:00,032 --> 00:00:02,240\nhello\n\n2\n01:01:01,500 --> 01:01:02,000\ntwo\n"
    assert fmt.vtt(segs).startswith("WEBVTT\n\n00:00:00.032 --> 00:00:02.240\nhello\n")
    assert fmt.full_text(segs) == "hello two"


def test_verbose_segments_carry_avg_logprob_when_the_engine_reports_it():
    segs = [fmt.Segment(0.0, 1.0, " aaaa aaaa", [1, 2], 0.25, avg_logprob=-0.1234567), fmt.Segment(1.0, 2.0, "b")]
    out = fmt.verbose(segs, task="transcribe", language="english", duration_s=2.0, temperature=0.0)["segments"]
    assert out[0]["avg_logprob"] == -0.123457 and out[0]["tokens"] == [1, 2] and out[0]["no_speech_prob"] == 0.25
    assert out[0]["compression_ratio"] == round(10 / len(zlib.compress(b" aaaa aaaa")), 4)
    assert "avg_logprob" not in out[1]  # no figure from the engine: left out, never made up
