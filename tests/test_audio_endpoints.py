"""/v1/audio/transcriptions and /translations end to end: the real server (tiny model, CPU)
on a loopback port, driven by the stock `openai` SDK; files in WAV, MP3 and OGG made from
the speech fixtures with PyAV. The tiny model's text is babble: what is tested is the API
(statuses, formats, timestamps, streaming order), the cutting of long audio and memory.
"""

from __future__ import annotations

import io
import json
import math
import re
import wave

import av
import httpx
import numpy as np
import openai
import pytest
from live_server import sdk, tiny_server
from openai.types.audio import TranscriptionSegment

MAX_UPLOAD = 40 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tiny_dir):
    with tiny_server(
        tiny_dir,
        warmup=False,
        transcription_min_tokens=2,
        transcription_max_tokens=3,
        max_audio_upload_bytes=MAX_UPLOAD,
        max_audio_requests=1,
    ) as running:
        yield running


def speech(load_wav) -> np.ndarray:
    """Two fixture sentences with 2.5 s of silence between: two pieces."""
    gap = np.zeros(40_000, np.float32)
    return np.concatenate([load_wav("hello_en_us.wav"), gap, load_wav("weather_en_gb_f3.wav"), gap])


def wav_bytes(pcm: np.ndarray, rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def encoded(pcm: np.ndarray, container: str, codec: str, rate: int) -> bytes:
    """`pcm` (16 kHz) encoded with PyAV, resampled to the codec's rate."""
    out = io.BytesIO()
    with av.open(out, "w", format=container) as box:
        stream = box.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((pcm * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16_000
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        for f in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(f):
                box.mux(packet)
        for packet in stream.encode(None):
            box.mux(packet)
    return out.getvalue()


@pytest.fixture(scope="module")
def files(load_wav) -> dict[str, bytes]:
    pcm = speech(load_wav)
    return {
        "speech.wav": wav_bytes(pcm),
        "speech.mp3": encoded(pcm, "mp3", "libmp3lame", 24_000),
        "speech.ogg": encoded(pcm, "ogg", "libopus", 48_000),
    }


STAMP = r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d)"


def cue_times(text: str) -> list[tuple[float, float]]:
    cues = re.findall(STAMP + r" --> " + STAMP, text)

    def sec(h, m, s, ms) -> float:
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    return [(sec(*c[:4]), sec(*c[4:])) for c in cues]


def check_increasing(times: list[tuple[float, float]]) -> None:
    assert times, "no cues"
    for (a0, a1), (b0, b1) in zip(times, times[1:], strict=False):
        assert a0 < a1 <= b0 < b1, times
    assert times[0][0] < times[0][1]


@pytest.mark.parametrize("name", ["speech.wav", "speech.mp3", "speech.ogg"])
def test_every_format_of_every_container(server, files, name):
    client = sdk(server, timeout_s=300)
    upload = (name, files[name])
    as_json = client.audio.transcriptions.create(model="qwen3-omni", file=upload, language="en")
    assert isinstance(as_json.text, str) and as_json.text
    assert as_json.usage.type == "tokens" and as_json.usage.output_tokens >= 4  # 2 pieces x >= 2 tokens
    text = client.audio.transcriptions.create(model="qwen3-omni", file=upload, response_format="text")
    assert isinstance(text, str) and text.strip()
    srt = client.audio.transcriptions.create(model="qwen3-omni", file=upload, response_format="srt")
    assert srt.startswith("1\n")
    check_increasing(cue_times(srt))
    vtt = client.audio.transcriptions.create(model="qwen3-omni", file=upload, response_format="vtt")
    assert vtt.startswith("WEBVTT\n")
    check_increasing(cue_times(vtt))
    assert len(cue_times(srt)) == len(cue_times(vtt)) == 2  # cut at the silence between the sentences
    verbose = client.audio.transcriptions.create(model="qwen3-omni", file=upload, response_format="verbose_json")
    assert verbose.language == "unknown" and 10.0 < verbose.duration < 13.0
    starts = [(s.start, s.end) for s in verbose.segments]
    check_increasing(starts)
    assert starts[0][0] < 0.5 and starts[1][0] > 3.0  # the second starts after the first sentence
    for seg in verbose.segments:  # every field of the SDK's segment, measured
        seg = TranscriptionSegment.model_validate(seg.model_dump(), strict=True)
        assert 2 <= len(seg.tokens) <= 3 and seg.temperature == 0.0  # the server's token bounds, greedy
        # Greedy picks each token at its distribution's highest probability (>= 1/vocab), and
        # random weights are never certain: the mean log-probability lies in [-log(vocab), 0).
        assert math.isfinite(seg.avg_logprob) and -math.log(152_064) <= seg.avg_logprob < 0.0, seg
        assert seg.compression_ratio > 0 and 0.0 <= seg.no_speech_prob <= 0.5  # pieces hold speech


def test_translation_to_english_and_to_a_named_target(server, files):
    client = sdk(server, timeout_s=300)
    out = client.audio.translations.create(model="qwen3-omni", file=("a.wav", files["speech.wav"]))
    assert out.text
    verbose = client.audio.translations.create(
        model="qwen3-omni",
        file=("a.wav", files["speech.wav"]),
        response_format="verbose_json",
        extra_body={"target_language": "fr"},
    )
    assert verbose.language == "french" and len(verbose.segments) == 2
    assert all(math.isfinite(s.avg_logprob) and s.avg_logprob <= 0.0 for s in verbose.segments)


def test_streaming_sends_deltas_before_done(server, files):
    client = sdk(server, timeout_s=300)
    events = list(
        client.audio.transcriptions.create(model="qwen3-omni", file=("a.ogg", files["speech.ogg"]), stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and kinds.count("transcript.text.done") == 1
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) >= 2
    assert "".join(deltas).strip() == events[-1].text
    assert events[-1].usage.output_tokens >= 4


def post(server, data: dict | None = None, files: dict | None = None, **kw) -> httpx.Response:
    return httpx.post(server.url + "/v1/audio/transcriptions", data=data, files=files, timeout=120, **kw)


def test_bad_input_gets_openai_errors_and_the_server_stays_healthy(server, files):
    def error(r: httpx.Response, status: int) -> str:
        assert r.status_code == status, r.text
        body = r.json()["error"]
        assert body["type"] and body["message"]
        return body["code"]

    boundary = "XyZ"
    malformed = post(
        server,
        content=b"--XyZ\r\nContent-Disposition: form-data; name=file\r\n\r\nabc",  # never closed
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert malformed.status_code == 400 and malformed.json()["error"]["message"]
    assert error(post(server, {"model": "m"}, {"file": ("a.txt", b"not audio at all " * 100)}), 400) == "invalid_file"
    assert error(post(server, {"model": "m"}, {"file": ("a.wav", b"")}), 400) == "empty_file"
    assert error(post(server, {"model": "m"}, {"file": ("a.wav", wav_bytes(np.zeros(0, np.float32)))}), 400) == (
        "empty_audio"
    )
    wav = ("a.wav", files["speech.wav"])
    assert error(post(server, {"response_format": "docx"}, {"file": wav}), 400) == "invalid_value"
    code = error(post(server, {"language": "sw"}, {"file": wav}), 400)
    assert code == "unsupported_language"
    assert error(post(server, {"include[]": "logprobs"}, {"file": wav}), 400) == "unsupported_parameter"
    assert error(post(server, {}, {"file": ("big.wav", bytes(MAX_UPLOAD + 1))}), 413) == "file_too_large"
    with pytest.raises(openai.BadRequestError):
        sdk(server, timeout_s=300).audio.transcriptions.create(model="m", file=("x.bin", b"\x00\x01" * 4000))
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok"
    assert "th" in health["languages"]["speech_input"] and len(health["languages"]["speech_input"]) == 19
    assert len(health["languages"]["speech_output"]) == 10
    ok = post(server, {"response_format": "text"}, {"file": wav})
    assert ok.status_code == 200 and ok.text.strip()


def test_a_full_server_answers_503(server, files):
    """One request slot (max_audio_requests=1): while a stream holds it, the next request gets 503."""
    wav = ("a.wav", files["speech.wav"])
    with httpx.stream(
        "POST", server.url + "/v1/audio/transcriptions", data={"stream": "true"}, files={"file": wav}, timeout=120
    ) as streaming:
        assert streaming.status_code == 200
        busy = post(server, {}, {"file": wav})
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "server_busy"
        lines = [json.loads(line[6:]) for line in streaming.iter_lines() if line.startswith("data: ")]
    assert lines[-1]["type"] == "transcript.text.done"
    assert post(server, {}, {"file": wav}).status_code == 200  # the slot is free again


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def test_ten_minutes_are_transcribed_in_bounded_memory(server, load_wav, tmp_path):
    """A 10-minute WAV (19 MB: the fixtures over and over, short pauses between) goes through
    piece by piece: the process's peak RSS (the server runs in it) grows by under 300 MB."""
    clips = [load_wav(n) for n in ("hello_en_us.wav", "count_en_us_m3.wav", "weather_en_gb_f3.wav")]
    pause = np.zeros(6_400, np.float32)  # 0.4 s: utterances join into pieces of up to 30 s
    unit = np.concatenate([x for clip in clips for x in (clip, pause)])
    pcm = np.tile(unit, int(np.ceil(600 * 16_000 / len(unit))))[: 600 * 16_000]
    path = tmp_path / "ten_minutes.wav"
    path.write_bytes(wav_bytes(pcm))
    del pcm, unit
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    base_kb = _status_kb("VmRSS")
    with open(path, "rb") as f:
        out = sdk(server, timeout_s=300).audio.transcriptions.create(model="m", file=f, response_format="verbose_json")
    growth_mb = (_status_kb("VmHWM") - base_kb) / 1024
    print(f"\n10 min WAV: {len(out.segments)} pieces, peak RSS growth {growth_mb:.0f} MB")
    assert 595 < out.duration <= 600.1
    assert len(out.segments) >= 20 and all(s.end - s.start <= 30.0 for s in out.segments)
    assert growth_mb < 300
