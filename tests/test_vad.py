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
