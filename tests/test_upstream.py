"""Scale-out: our server as a front end over an upstream OpenAI-Realtime server.

The upstream is a second instance of our own server (tiny model, greedy, answers fixed at
30 codec frames), all on loopback. Between the front end and the upstream sits a plain
TCP relay, so a test can make the upstream vanish (connections reset, port closed) and
come back on the same address without reloading a model.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import math
import threading
import time
import urllib.error
import urllib.request

import pytest
from live_server import tiny_server, ws_url
from websockets.asyncio.client import connect

from assistant import settings as settings_mod
from assistant.audio import float_to_pcm16, pcm16_to_float
from assistant.cli import build_parser
from assistant.engine.api import ReasoningDelta, TextDelta
from assistant.engine.upstream_protocol import ResponseMapper, UpstreamStats
from assistant.server.main import ServerThread
from assistant.settings import Settings

FRAMES = 30


class TcpRelay:
    """127.0.0.1:port -> 127.0.0.1:target, on its own thread and loop."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)
        self._thread.start()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def listen(self) -> None:
        self._call(self._listen())

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def vanish(self) -> None:
        """Reset every relayed connection and stop listening (connects are refused)."""
        self._call(self._vanish())

    async def _vanish(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()

    async def _handle(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort() if dst.transport.is_closing() else dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}

    def close(self) -> None:
        self._call(self._vanish())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


@pytest.fixture(scope="module")
def upstream(tiny_dir):
    with tiny_server(
        tiny_dir,
        greedy=True,
        min_answer_tokens=6,
        max_answer_tokens=FRAMES,
        min_answer_frames=FRAMES,
        max_answer_frames=FRAMES,
        # The windowed Code2Wav: its chunks follow the ramp whatever the timing (the streaming
        # decode sends short chunks when a lead runs short), so two runs cut the same chunks.
        codec_left_context_frames=25,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def relay(upstream):
    r = TcpRelay(int(upstream.url.rsplit(":", 1)[1]))
    r.listen()
    yield r
    r.close()


@pytest.fixture(scope="module")
def frontend(relay):
    settings = Settings(
        port=0,
        upstream_url=f"ws://127.0.0.1:{relay.port}/v1/realtime",
        upstream_input_rate_hz=16_000,  # lossless: the front end holds turns at 16 kHz
        upstream_event_timeout_s=30.0,
        idle_timeout_s=60,
    )
    with ServerThread(settings) as running:
        yield running


# ---------------------------------------------------------------------------- a small client


class Client:
    """Push-to-talk over a raw websocket, 16 kHz input."""

    def __init__(self, ws) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, url: str) -> Client:
        c = cls(await connect(url, compression=None, max_size=None))
        assert (await c.next())["type"] == "session.created"
        await c.send(
            "session.update",
            session={
                "type": "realtime",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}},
            },
        )
        await c.until("session.updated")
        return c

    async def send(self, type: str, **fields) -> None:
        await self.ws.send(json.dumps({"type": type, **fields}))

    async def next(self) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), 120))

    async def until(self, type: str) -> list[dict]:
        events = []
        while True:
            events.append(await self.next())
            if events[-1]["type"] == type:
                return events

    async def say(self, pcm16_16k: bytes | None = None, text: str | None = None) -> None:
        if pcm16_16k is not None:
            await self.send("input_audio_buffer.append", audio=base64.b64encode(pcm16_16k).decode())
            await self.send("input_audio_buffer.commit")
        else:
            content = [{"type": "input_text", "text": text}]
            await self.send("conversation.item.create", item={"type": "message", "role": "user", "content": content})
        await self.send("response.create")

    async def answer(self) -> dict:
        events = await self.until("response.done")
        return {
            "events": events,
            "audio": b"".join(
                base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
            ),
            "transcript": "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta"),
            "done": events[-1],
            "errors": [e for e in events if e["type"] == "error"],
        }

    async def close(self) -> None:
        await self.ws.close()


@pytest.fixture(scope="module")
def hello(load_wav) -> bytes:
    return float_to_pcm16(load_wav("hello_en_us.wav"))


async def two_turns(url: str, hello: bytes) -> list[dict]:
    c = await Client.open(url)
    try:
        await c.say(hello)
        first = await c.answer()
        await c.say(text="And then?")
        return [first, await c.answer()]
    finally:
        await c.close()


# ---------------------------------------------------------------------------- tests


async def test_front_end_gives_the_upstreams_greedy_output(upstream, frontend, hello):
    direct = await two_turns(ws_url(upstream), hello)
    through = await two_turns(ws_url(frontend), hello)
    for d, f in zip(direct, through, strict=True):
        assert d["done"]["response"]["status"] == f["done"]["response"]["status"] == "completed"
        # The fixed answer length (Code2Wav's last look-ahead samples are not emitted): a real answer.
        assert (FRAMES - 1) * 1920 * 2 < len(d["audio"]) <= FRAMES * 1920 * 2
        assert f["audio"] == d["audio"]
        assert f["transcript"] == d["transcript"] and d["transcript"]
        assert not f["errors"]
    # Audio chunks arrive as the upstream cut them (no re-chunking at the front end).
    sizes = [len(e["delta"]) for e in direct[1]["events"] if e["type"] == "response.output_audio.delta"]
    assert sizes == [len(e["delta"]) for e in through[1]["events"] if e["type"] == "response.output_audio.delta"]
    for f in through:
        latency = f["done"]["latency"]
        assert latency["upstream_ttfp_ms"] > 0
        assert latency["audio_ttfp_ms"] > latency["upstream_ttfp_ms"]
        assert latency["frontend_added_ms"] == pytest.approx(latency["audio_ttfp_ms"] - latency["upstream_ttfp_ms"])
    health = json.loads(await asyncio.to_thread(_get, frontend.url + "/health"))
    assert health["model"] == frontend.settings.upstream_url and health["device"] == "remote"
    metrics = (await asyncio.to_thread(_get, frontend.url + "/metrics")).decode()
    counts = [
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("assistant:frontend_added_s_count")
    ]
    assert counts and counts[0] >= 2


async def test_cancel_and_truncate_through_the_front_end(upstream, frontend, hello):
    """Barge-in as a websocket client does it: cancel at the first audio, truncate the
    item to what was heard; the front end keeps the heard text and the session goes on."""
    d = await Client.open(ws_url(upstream))
    await d.say(hello)
    full = await d.answer()
    await d.close()
    tokens = [x["delta"] for x in full["events"] if x["type"] == "response.output_audio_transcript.delta"]
    c = await Client.open(ws_url(frontend))
    try:
        await c.say(hello)
        events = []
        while (e := await c.next())["type"] != "response.output_audio.delta":
            events.append(e)
        item_id = e["item_id"]
        await c.send("response.cancel")
        rest = await c.until("response.done")
        assert rest[-1]["response"]["status"] == "cancelled"
        assert not [x for x in rest if x["type"] == "error"]
        await c.send("conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=160)
        truncated = await c.until("conversation.item.truncated")
        assert truncated[-1]["audio_end_ms"] <= 160
        await c.send("conversation.item.retrieve", item_id=item_id)
        item = (await c.until("conversation.item.retrieved"))[-1]["item"]
        heard = item["content"][0]["transcript"]
        # One text token per 80 ms codec frame heard (one delta each from our upstream);
        # greedy, so the cancelled answer is a prefix of the full one.
        frames_heard = math.ceil(truncated[-1]["audio_end_ms"] / 80)
        assert 1 <= frames_heard <= 2
        assert heard == "".join(tokens[:frames_heard])
        # The next turn is answered in full, on the same upstream session.
        await c.say(text="Go on.")
        after = await c.answer()
        assert after["done"]["response"]["status"] == "completed" and after["transcript"]
        assert not after["errors"]
    finally:
        await c.close()


async def test_upstream_vanishing_mid_response_is_an_error_and_the_session_recovers(frontend, relay, hello):
    c = await Client.open(ws_url(frontend))
    try:
        await c.say(hello)
        while (await c.next())["type"] != "response.output_audio.delta":
            pass
        relay.vanish()
        failed = await c.answer()
        assert failed["done"]["response"]["status"] == "failed"
        [error] = failed["errors"]
        assert error["error"]["code"] == "upstream_error" and "upstream" in error["error"]["message"]
        # While it is down: a clean failure, quickly.
        t0 = time.monotonic()
        await c.say(text="Are you there?")
        down = await c.answer()
        assert down["done"]["response"]["status"] == "failed" and time.monotonic() - t0 < 10
        assert "cannot reach the upstream" in down["errors"][0]["error"]["message"]
        # Back on the same address: the next turn reconnects and replays the history.
        relay.listen()
        await c.say(text="Now?")
        back = await c.answer()
        assert back["done"]["response"]["status"] == "completed" and back["transcript"]
        assert not back["errors"]
    finally:
        relay.listen() if relay._server is None else None
        await c.close()


async def test_upstream_session_ends_with_the_client(frontend, hello):
    engine = frontend.engine
    c = await Client.open(ws_url(frontend))
    await c.say(text="Hi.")
    await c.answer()
    assert engine.open_links >= 1
    before = engine.open_links
    await c.close()
    deadline = time.monotonic() + 10
    while engine.open_links >= before and time.monotonic() < deadline:
        gc.collect()  # the session's reference cycles go with the collector; production runs it too
        await asyncio.sleep(0.1)
    assert engine.open_links < before


def test_chat_tools_through_the_front_end_are_refused_by_name(frontend):
    """Tools are not forwarded upstream (yet): a Chat Completions request with tools gets a
    400 saying so, not a 500 and not an answer that ignored them."""
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [tool], "max_completion_tokens": 4}
    request = urllib.request.Request(
        frontend.url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 400
    error = json.load(caught.value)["error"]
    assert error["code"] == "unsupported_feature" and "upstream" in error["message"]


# ---------------------------------------------------------------------------- dialects and settings


def _mapper() -> ResponseMapper:
    return ResponseMapper(audio=True, stats=UpstreamStats(t_committed=0.0))


def test_both_spellings_of_a_delta_are_forwarded_once():
    m = _mapper()
    pcm = b"\x01\x00" * 480
    out = []
    for kind, text_kind in (
        ("response.output_audio.delta", "response.output_audio_transcript.delta"),
        ("response.audio.delta", "response.audio_transcript.delta"),
    ):
        out += m.feed({"type": kind, "delta": base64.b64encode(pcm).decode()}, 1.0)
        out += m.feed({"type": text_kind, "delta": "hi"}, 1.0)
    assert [type(o).__name__ for o in out] == ["AudioChunk", "TextDelta"]
    m.feed({"type": "response.done", "response": {"status": "completed", "output": [{"id": "it_1"}]}}, 2.0)
    assert m.finished and m.item_id == "it_1" and m.stats.audio_samples == 480 and m.text() == "hi"


def test_legacy_vllm_omni_audio_is_resampled_to_24k():
    """vLLM-Omni's first handler: `response.audio.delta` with `audio` and `sample_rate_hz`."""
    m = _mapper()
    one_second_16k = float_to_pcm16([0.25] * 16000)
    chunks = m.feed(
        {"type": "response.audio.delta", "audio": base64.b64encode(one_second_16k).decode(), "sample_rate_hz": 16000},
        1.0,
    )
    chunks += m.feed({"type": "transcription.delta", "delta": "ok"}, 1.0)
    chunks += m.feed({"type": "response.done", "response": {"status": "completed"}}, 2.0)
    audio = b"".join(c.pcm16 for c in chunks if hasattr(c, "pcm16"))
    assert abs(len(audio) // 2 - 24000) <= 2  # one second at 24 kHz
    assert abs(float(pcm16_to_float(audio)[12000]) - 0.25) < 0.01
    assert m.text() == "ok" and m.stats.t_first_audio == 1.0


def _kinds_and_text(events: list) -> tuple[str, str]:
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    answer = "".join(e.text for e in events if isinstance(e, TextDelta))
    return reasoning, answer


def test_think_tags_in_the_text_become_reasoning_even_split_across_deltas():
    """A Thinking checkpoint behind a server that passes its text through: the tags come as
    text, cut anywhere. The answer and the history get only what follows `</think>`."""
    m = _mapper()
    pieces = ["<thi", "nk>\nThe user", " asks <b>why</b>.\n</", "think>", "\n\n", "Because", " a < b."]
    events = []
    for piece in pieces:
        events += m.feed({"type": "response.output_text.delta", "delta": piece}, 1.0)
    events += m.feed({"type": "response.done", "response": {"status": "completed"}}, 2.0)
    reasoning, answer = _kinds_and_text(events)
    assert reasoning == "\nThe user asks <b>why</b>.\n"
    assert answer == "Because a < b." == m.text()
    assert not any("think>" in e.text for e in events)
    assert m.stats.reasoning_tokens == 2 and m.stats.text_tokens == len(pieces)  # events, not tokens


def test_reasoning_sent_apart_is_reasoning_and_a_held_tail_is_flushed():
    """vLLM's `reasoning_content` beside a delta, and OpenAI's reasoning_text event; a
    response whose text ends in what could have begun a tag still gets all of it."""
    m = _mapper()
    events = m.feed({"type": "response.output_text.delta", "delta": "", "reasoning_content": "Two"}, 1.0)
    events += m.feed({"type": "response.reasoning_text.delta", "delta": " facts."}, 1.0)
    events += m.feed({"type": "response.output_text.delta", "delta": "Hi <"}, 1.0)
    assert _kinds_and_text(events) == ("Two facts.", "Hi ")  # "<" waits: it may begin a tag
    events += m.feed({"type": "response.done", "response": {"status": "completed"}}, 2.0)
    assert _kinds_and_text(events) == ("Two facts.", "Hi <") and m.text() == "Hi <"


def test_upstream_flags():
    args = build_parser().parse_args(
        ["serve", "--upstream", "ws://10.0.0.5:8091/v1/realtime", "--upstream-api-key", "k"]
    )
    s = settings_mod.from_sources(args, env={})
    assert s.upstream_url == "ws://10.0.0.5:8091/v1/realtime" and s.upstream_api_key == "k"
    assert settings_mod.redacted(s)["upstream_api_key"] == "***"
