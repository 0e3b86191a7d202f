"""POST /v1/chat/completions on the tiny Instruct model, driven by the stock `openai` SDK
against the real server on a loopback port: audio and text in with speech out (a WAV that
decodes), streaming (audio interleaved with the text), image and video parts, and
OpenAI-shaped 4xx errors for bad input after which the server keeps serving."""

from __future__ import annotations

import base64
import io
import json
import urllib.request
import wave

import av
import numpy as np
import openai
import pytest
from live_server import sdk, tiny_server
from openai import OpenAI
from PIL import Image

from assistant.rest.chat import cut_at_silences
from assistant.rest.chat_media import decode_audio, encode_audio


@pytest.fixture(scope="module")
def server(tiny_dir):
    with tiny_server(
        tiny_dir,
        min_answer_tokens=6,  # random weights end anywhere: keep answers long enough to interleave
        max_answer_tokens=12,
        max_answer_frames=12,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return sdk(server)


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def wav_b64(load_wav, name: str = "hello_en_us.wav") -> str:
    pcm = (load_wav(name) * 32767).astype(np.int16)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(pcm.tobytes())
    return base64.b64encode(buf.getvalue()).decode()


def png_data_url(size=(64, 48)) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def mp4_data_url(frames: int = 6, fps: int = 2) -> str:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(frames):
            img = np.full((64, 64, 3), 40 * i % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return "data:video/mp4;base64," + base64.b64encode(buf.getvalue()).decode()


def test_models_and_health_name_the_variant(server, client, model):
    card = client.models.retrieve(model)
    assert card.id == model
    assert card.model_extra["variant"] == "instruct"
    assert card.model_extra["output_modalities"] == ["text", "audio"]
    health = json.load(urllib.request.urlopen(server.url + "/health"))
    assert health["variant"] == "instruct"
    assert health["modalities"] == {"input": ["text", "image", "audio", "video"], "output": ["text", "audio"]}


def test_audio_and_text_in_speech_out_is_a_wav_that_decodes(client, model, load_wav):
    done = client.chat.completions.create(
        model=model,
        modalities=["text", "audio"],
        audio={"voice": "Chelsie", "format": "wav"},
        max_completion_tokens=8,
        seed=7,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": wav_b64(load_wav), "format": "wav"}},
                    {"type": "text", "text": "Answer the question in the clip."},
                ],
            }
        ],
    )
    message = done.choices[0].message
    with wave.open(io.BytesIO(base64.b64decode(message.audio.data))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert len(pcm) > 1920 and np.abs(pcm).max() > 0  # at least one 80 ms frame of (noisy) speech
    assert message.audio.transcript == message.content and message.content
    assert done.usage.prompt_tokens > 20 and 6 <= done.usage.completion_tokens <= 8
    assert done.usage.completion_tokens_details.audio_tokens > 0


def test_streamed_audio_starts_before_the_text_ends(client, model, load_wav):
    chunks = client.chat.completions.create(
        model=model,
        modalities=["text", "audio"],
        audio={"voice": "Ethan", "format": "pcm16"},
        stream=True,
        stream_options={"include_usage": True},
        messages=[
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": wav_b64(load_wav), "format": "wav"}}],
            }
        ],
    )
    order, pcm, usage, finish = [], b"", None, None
    for chunk in chunks:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            audio = choice.delta.audio  # openai's ChoiceDeltaAudio
            if audio is not None and audio.data:
                order.append("audio")
                pcm += base64.b64decode(audio.data)
            if choice.delta.content:
                order.append("text")
    assert "audio" in order and "text" in order
    last_text = len(order) - 1 - order[::-1].index("text")
    assert order.index("audio") < last_text, order
    assert len(pcm) % 2 == 0 and len(pcm) >= 2 * 1920
    assert usage is not None and usage.completion_tokens >= 6 and finish in ("stop", "length")


@pytest.mark.parametrize("part", ["image", "video"])
def test_image_and_video_parts_answer(client, model, part):
    if part == "image":
        content = {"type": "image_url", "image_url": {"url": png_data_url()}}
    else:
        content = {"type": "video_url", "video_url": {"url": mp4_data_url()}}
    done = client.chat.completions.create(
        model=model,
        max_completion_tokens=6,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [content, {"type": "text", "text": "Describe it."}]},
        ],
    )
    assert done.choices[0].message.content
    assert done.choices[0].message.audio is None
    assert done.usage.prompt_tokens > 10


def _bad(content=None, **extra) -> dict:
    body = {"messages": [{"role": "user", "content": content or "hi"}], "max_completion_tokens": 4, **extra}
    return body


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (_bad([{"type": "input_image", "image": "x"}]), "invalid_value"),
        (_bad([{"type": "input_audio", "input_audio": {"data": "@@not base64@@", "format": "wav"}}]), "invalid_base64"),
        (
            _bad([{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGVsbG8="}}]),
            "invalid_image_format",
        ),
        (_bad([{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]), "invalid_image_format"),
        (_bad([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]), "invalid_image_url"),
        (_bad([{"type": "input_audio", "input_audio": {"data": "aGVsbG8=", "format": "wav"}}]), "invalid_audio"),
        (_bad(modalities=["text", "audio"], audio={"voice": "Nobody", "format": "wav"}), "invalid_value"),
        (_bad(modalities=["text", "audio"], audio={"voice": "Ethan", "format": "wav"}, stream=True), "invalid_value"),
        (_bad(n=2), "invalid_value"),
        (_bad(functions=[{"name": "f"}]), "unsupported_parameter"),  # the deprecated form of tools
        (_bad(max_completion_tokens=100000), "invalid_value"),
    ],
)
def test_bad_input_gets_an_openai_shaped_400(client, model, body, code):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, **body)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]


def test_unknown_model_is_404_and_the_server_stays_healthy(server, client, model):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert json.load(urllib.request.urlopen(server.url + "/health"))["status"] == "ok"
    done = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=6, stop=["\n"]
    )
    assert done.choices[0].finish_reason in ("stop", "length") and "\n" not in done.choices[0].message.content


# ---------------------------------------------------------------------------- pure parts


def test_cut_at_silences_cuts_at_the_quietest_window_of_each_second_half():
    window, probs = 512, np.full(100, 0.9, np.float32)
    probs[[30, 45, 80]] = [0.1, 0.05, 0.2]  # 45 is the quietest in the first piece's second half
    pieces = cut_at_silences(probs, window, 100 * window, 50 * window)
    assert pieces[0] == (0, 45 * window + window // 2)
    assert all(b - a <= 50 * window for a, b in pieces) and pieces[-1][1] == 100 * window
    assert [a for a, _ in pieces[1:]] == [b for _, b in pieces[:-1]]


@pytest.mark.parametrize("fmt", ["flac", "mp3", "wav"])
def test_encoded_answers_decode_back(fmt):
    tone = (np.sin(np.arange(24000) / 7.0) * 9000).astype(np.int16).tobytes()
    data = encode_audio(tone, fmt)
    if fmt == "wav":
        assert wave.open(io.BytesIO(data)).getnframes() == 24000
        return
    with av.open(io.BytesIO(data)) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert abs(samples - 24000) < 2400
    if fmt == "mp3":  # and it is an input format too
        assert abs(len(decode_audio(data, "mp3", "x")) - 16000) < 1600


def test_the_variant_comes_from_the_override_the_name_or_the_config(tmp_path):
    from types import SimpleNamespace

    from assistant.engine.local import variant_of

    speaks, silent = SimpleNamespace(has_talker=True), SimpleNamespace(has_talker=False)
    assert variant_of("Qwen/Qwen3-Omni-30B-A3B-Instruct", speaks) == "instruct"
    assert variant_of("Qwen/Qwen3-Omni-30B-A3B-Thinking", silent) == "thinking"
    assert variant_of("/models/Qwen3-Omni-30B-A3B-Captioner/", silent) == "captioner"
    assert variant_of(str(tmp_path), silent) == "thinking" and variant_of(str(tmp_path), speaks) == "instruct"
    assert variant_of("Qwen/Qwen3-Omni-30B-A3B-Thinking", silent, "captioner") == "captioner"
    with pytest.raises(ValueError, match="model-variant"):
        variant_of("x", silent, "reasoner")


def test_a_response_without_listener_ranks_below_first_packets_and_guards(monkeypatch):
    """The scheduler's rank for a chat completion (StreamJob(listener=False): background): after live
    first packets and responses short of their guard, before listeners with audio ahead;
    and its own playback never limits the slack others may borrow."""
    from types import SimpleNamespace

    import assistant.engine.worker as worker_mod
    from assistant.engine.stream import StreamJob
    from assistant.engine.worker import ModelWorker

    class Job(SimpleNamespace):
        def playback_slack_s(self, t, frame_cost_s, codec_cost_s=0.0):
            return StreamJob.playback_slack_s(self, t, frame_cost_s) if self.background else self.slack_s

    def job(name, slack_s=None, t=0.0, background=False):
        stats = SimpleNamespace(t_first_audio=None if slack_s is None else 0.0)
        return Job(name=name, slack_s=slack_s, t_submitted=t, background=background, cancelled=False, done=False,
                   audio=True, partial=False, _phase="frame", visual=False, conv=SimpleNamespace(id=name),
                   stats=stats, first_packet_pending=slack_s is None)  # fmt: skip

    monkeypatch.setattr(worker_mod, "now", lambda: 100.0)
    w = ModelWorker(4, guard_s=0.16, first_packet_target_s=0.32)
    w.step_cost_s = dict.fromkeys(w.step_cost_s, 1.0)  # nothing fits in anyone's slack
    jobs = [job("ahead", 1.0), job("chat", None, 98.0, True), job("guard", 0.1), job("first", None, 99.9)]
    w._active = [(j, None) for j in jobs]
    order = []
    while w._active:
        picked = w._pick()[0]
        order.append(picked.name)
        w._active = [e for e in w._active if e[0] is not picked]
    assert order == ["guard", "first", "chat", "ahead"]
    w._active = [(job("chat", 0.0, 98.0, True), None), (job("ahead", 1.0), None)]
    assert w._spare_s(100.0) == 1.0 - worker_mod.STEAL_MARGIN_S  # the chat response's slack is not counted
