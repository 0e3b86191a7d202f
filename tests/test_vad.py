"""Server VAD: the pure endpointer over probabilities, and Silero on the speech fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from assistant.realtime.vad import WINDOW_MS, Endpointer, SileroModel, SpeechStarted, SpeechStopped, VadParams


def feed(params: VadParams, probs: list[float], chunk: int = 7):
    """Feed in uneven batches, as a transport would."""
    e, out = Endpointer(params), []
    for i in range(0, len(probs), chunk):
        out += e.feed(i * 512, probs[i : i + chunk])
    return out


def test_start_includes_prefix_padding_and_stop_includes_silence():
    probs = [0.0] * 20 + [0.9] * 30 + [0.0] * 40
    events = feed(VadParams(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500), probs)
    assert events == [SpeechStarted(20 * WINDOW_MS - 300, 20 * WINDOW_MS), SpeechStopped(50 * WINDOW_MS + 512)]


def test_hysteresis_keeps_quiet_word_tails_inside_the_turn():
    probs = [0.9] * 10 + [0.4] * 30 + [0.9] * 5 + [0.0] * 30  # 0.4 sits between 0.35 and 0.5
    events = feed(VadParams(silence_duration_ms=300), probs)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert events[1].audio_end_ms >= 45 * WINDOW_MS + 300


def test_short_click_is_not_speech_and_pause_shorter_than_silence_is_kept():
    assert feed(VadParams(min_speech_ms=64), [0.0] * 5 + [0.9] + [0.0] * 30) == []
    probs = [0.9] * 10 + [0.0] * 10 + [0.9] * 10 + [0.0] * 30  # a 320 ms pause inside a 500 ms silence rule
    assert len(feed(VadParams(silence_duration_ms=500), probs)) == 2


@pytest.fixture(scope="module")
def silero():
    return SileroModel()


@pytest.mark.parametrize("name", ["hello_en_us.wav", "count_en_us_m3.wav", "weather_en_gb_f3.wav"])
def test_silero_endpoints_the_fixtures(silero, load_wav, fixtures_dir, name):
    manifest = {m["file"]: m for m in json.loads((fixtures_dir / "manifest.json").read_text())["speech"]}[name]
    audio = load_wav(name)
    silero.reset()
    probs = silero.probabilities(audio)
    assert len(probs) == len(audio) // 512
    params = VadParams()
    events = Endpointer(params).feed(0, probs)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    start, stop = events
    assert abs(start.speech_start_ms - manifest["speech_start_s"] * 1000) < 150
    end_ms = manifest["speech_end_s"] * 1000 + params.silence_duration_ms
    assert end_ms - 100 < stop.audio_end_ms < end_ms + 250


def test_silero_silence_is_not_speech(silero):
    silero.reset()
    rng = np.random.default_rng(0)
    probs = silero.probabilities((rng.standard_normal(16000 * 2) * 0.001).astype(np.float32))
    assert Endpointer(VadParams()).feed(0, probs) == []


CLIPS = ["hello_en_us.wav", "count_en_us_m3.wav", "weather_en_gb_f3.wav", "describe_en_scotland.wav"]


def test_silero_model_scores_as_the_silero_vad_module(load_wav):
    """SileroModel carries the state that silero-vad's own module keeps inside itself:
    the same probabilities, bit for bit, over a clip fed in uneven pieces."""
    import torch
    from silero_vad import load_silero_vad

    audio = load_wav("count_en_us_m3.wav")
    module = load_silero_vad()
    want = [module(torch.from_numpy(audio[i : i + 512].copy()), 16000).item() for i in range(0, len(audio) - 511, 512)]
    model, got, at = SileroModel(), [], 0
    for size in [3, 1, 0, 7, 2] * 40:
        piece = audio[at : at + size * 512]
        at += len(piece) // 512 * 512
        got += model.probabilities(piece).tolist()
    assert got == want


def test_streams_scored_together_score_as_each_alone(load_wav):
    """probabilities_together (one batch row per stream, each with its own state): four
    streams fed pieces of different sizes, some none at all, give what each gives alone,
    to float rounding, and the endpoints each finds alone."""
    from assistant.realtime.vad import probabilities_together

    clips = [load_wav(name) for name in CLIPS]
    alone = [SileroModel().probabilities(clip) for clip in clips]
    models = [SileroModel() for _ in clips]
    together = [[] for _ in clips]
    at = [0] * len(clips)
    rng = np.random.default_rng(0)
    while any(a < len(clip) // 512 * 512 for a, clip in zip(at, clips, strict=True)):
        pieces = []
        for k, clip in enumerate(clips):
            piece = clip[at[k] : at[k] + int(rng.integers(0, 5)) * 512]
            at[k] += len(piece)
            pieces.append(piece)
        for k, probs in enumerate(probabilities_together(list(zip(models, pieces, strict=True)))):
            assert len(probs) == len(pieces[k]) // 512
            together[k].append(probs)
    for want, parts in zip(alone, together, strict=True):
        got = np.concatenate(parts)
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert Endpointer(VadParams()).feed(0, got) == Endpointer(VadParams()).feed(0, want)
