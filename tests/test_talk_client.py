"""`assistant talk` against a running server (the tiny model, in-process on a free port).

- the headless path: --input-wav/--output-wav writes the answer and prints a transcript
  and a latency line;
- barge-in over the real protocol: response.cancel + conversation.item.truncate;
- clear one-line errors for an unreachable server and a missing device;
- the sounddevice path through a real virtual audio device: a private PulseAudio daemon
  with two null sinks, the client's microphone reading one sink's monitor (where the test
  plays a fixture with paplay), its speaker playing into the other; the keyboard is a pty.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest

from assistant.audio import float_to_pcm16, read_wav, resample
from assistant.bench.server import InProcessServer
from assistant.client.core import ClientCore
from assistant.client.link import Link, connect, stream_pcm
from assistant.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
LATENCY_LINE = re.compile(r"turn 1 \[completed\]: speech end -> first audible (\d+) ms; first delta (\d+) ms")
ANSWER_FRAMES = 8


@pytest.fixture(scope="module")
def server(tiny_dir):
    settings = Settings(
        model=str(tiny_dir),
        log_level="warning",
        min_answer_tokens=6,
        max_answer_tokens=6,
        max_answer_frames=ANSWER_FRAMES,
    )
    with InProcessServer(settings) as srv:
        yield srv


def talk(*args: str, env: dict | None = None, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "assistant", "talk", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **kw,
    )


def test_headless_wav_in_wav_out(server, tmp_path, fixtures_dir):
    out = tmp_path / "answer.wav"
    r = talk("--url", server.url, "--input-wav", str(fixtures_dir / "hello_en_us.wav"), "--output-wav", str(out))
    assert r.returncode == 0, r.stderr
    assert re.search(r"^assistant: \S.*$", r.stdout, re.M), r.stdout  # the streamed transcript
    m = LATENCY_LINE.search(r.stdout)
    assert m, r.stdout
    assert 0 < int(m.group(2)) <= int(m.group(1)) < 30_000
    assert re.search(r"server first packet \d+ ms \(queue \d+ · preprocessing \d+ · thinker ttft \d+", r.stdout)
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24_000, 1, 2)
        frames = w.getnframes()
    assert 0 < frames <= ANSWER_FRAMES * 1920  # whole codec frames, less Code2Wav's look-ahead tail


def test_unreachable_server_is_one_line_and_nonzero(fixtures_dir):
    r = talk("--url", "ws://127.0.0.1:9/v1/realtime", "--input-wav", str(fixtures_dir / "hello_en_us.wav"))
    assert r.returncode == 2
    assert r.stderr.startswith("error: cannot reach the server at ws://127.0.0.1:9/v1/realtime")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_missing_device_is_one_line_and_nonzero():
    r = talk("--input-device", "no-such-device-xyz", stdin=subprocess.DEVNULL)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: no usable input device 'no-such-device-xyz'")
    assert r.stderr.count("\n") == 1


async def test_barge_in_cancels_and_truncates_on_the_server(server, load_wav):
    """A press while the answer streams: response.cancel then conversation.item.truncate
    with the milliseconds heard; the server confirms both."""
    core = ClientCore(manual=True)
    link = Link(await connect(server.url), core)
    reader = asyncio.create_task(link.reader())
    try:
        await link.handshake()
        pcm = float_to_pcm16(resample(load_wav("hello_en_us.wav"), 16_000, 24_000))
        await stream_pcm(link, pcm, 24_000, realtime=False)
        first_audio = link.wait_for(lambda e: e["type"] == "response.output_audio.delta")
        done = link.wait_for(lambda e: e["type"] == "response.done")
        await link.send(core.release(time.monotonic()))
        await asyncio.wait_for(first_audio, 60)
        truncated = link.wait_for(lambda e: e["type"] == "conversation.item.truncated")
        sent = core.press(played_ms=40)
        assert [e["type"] for e in sent] in (
            ["response.cancel", "conversation.item.truncate", "input_audio_buffer.clear"],
            ["conversation.item.truncate", "input_audio_buffer.clear"],  # the answer had already finished
        )
        await link.send(sent)
        done_ev = await asyncio.wait_for(done, 60)
        assert done_ev["response"]["status"] in ("cancelled", "completed")
        ev = await asyncio.wait_for(truncated, 30)
        assert ev["item_id"] == core.turns[0].item_id and ev["audio_end_ms"] == 40
        assert not core.errors, core.errors
    finally:
        await link.close()
        reader.cancel()


# ---------------------------------------------------------------------------- real (virtual) audio devices


def _pulse_unavailable() -> str | None:
    for tool in ("pulseaudio", "pactl", "paplay"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: pulseaudio, pulseaudio-utils)"
    try:
        import sounddevice  # noqa: F401
    except OSError as exc:
        return f"PortAudio is missing: {exc}"
    return None


@pytest.fixture
def pulse(tmp_path):
    """A private PulseAudio daemon with null sinks `mic` and `spk`; PortAudio reaches it
    through ALSA's pulse plugin (the `default` ALSA device), steered by PULSE_SOURCE/SINK."""
    reason = _pulse_unavailable()
    if reason:
        pytest.skip(reason)
    runtime = tmp_path / "pulse-runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime)}
    socket = runtime / "native"
    daemon = subprocess.Popen(
        [
            "pulseaudio",
            "-n",  # no default.pa: only the modules below
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--log-target=stderr",
            "-L",
            f"module-native-protocol-unix socket={socket} auth-anonymous=1",
            "-L",
            "module-null-sink sink_name=mic rate=48000",
            "-L",
            "module-null-sink sink_name=spk rate=48000",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    env["PULSE_SERVER"] = f"unix:{socket}"
    deadline = time.monotonic() + 15
    while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            pytest.skip(f"PulseAudio did not start here: {(daemon.communicate()[1] or '').strip()[-300:]}")
        time.sleep(0.2)
    env.update(PULSE_SOURCE="mic.monitor", PULSE_SINK="spk")
    try:
        yield env
    finally:
        daemon.terminate()
        try:
            daemon.wait(5)
        except subprocess.TimeoutExpired:
            daemon.kill()


def test_sounddevice_path_through_virtual_devices(server, pulse, fixtures_dir):
    """Toggle mode on a pty: tap, the fixture plays into the virtual microphone, tap; the
    client must send that speech (its level line) and play the answer on the device (the
    first-audible time comes from the output callback)."""
    listed = talk("--list-devices", env=pulse)
    assert listed.returncode == 0 and "default" in listed.stdout, listed
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "assistant", "talk", "--url", server.url, "--toggle", "--jitter-ms", "40"],
        cwd=ROOT,
        env=pulse,
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(slave)
    out = Lines(proc.stdout)
    try:
        assert out.wait("connected to", 60), out.seen
        os.write(master, b" ")
        assert out.wait("[listening]", 10), out.seen
        subprocess.run(
            ["paplay", "-d", "mic", str(fixtures_dir / "hello_en_us.wav")], env=pulse, check=True, timeout=30
        )
        os.write(master, b" ")
        sent = out.wait("[sent", 10)
        m = re.search(r"\[sent ([\d.]+) s of audio, peak (-?\d+|-inf) dBFS\]", sent or "")
        assert m, sent
        assert float(m.group(1)) >= 2.0 and m.group(2) != "-inf" and int(m.group(2)) > -30  # the speech got through
        line = out.wait("turn 1 [", 90)
        assert line and LATENCY_LINE.search(line), out.seen
        os.write(master, b"q")
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        err = proc.stderr.read()  # ALSA may note device underruns on a busy machine: harmless
        assert "Traceback" not in err, err


class Lines:
    """A child's stdout, line by line, read on a thread (select() on a buffered pipe
    misses lines already pulled into Python's buffer)."""

    def __init__(self, stream) -> None:
        import queue
        import threading

        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put(None)

    def wait(self, needle: str, timeout_s: float) -> str | None:
        """The first line from now on containing `needle` (None on EOF or timeout)."""
        import queue

        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            self.seen.append(line)
            if needle in line:
                return line
        return None


def test_wav_reader_matches_conftest(fixtures_dir):
    """The client reads WAVs with assistant.audio.read_wav; same samples as the tests' reader."""
    from conftest import read_wav as test_read_wav

    a, ra = read_wav(fixtures_dir / "count_en_us_m3.wav")
    b, rb = test_read_wav(fixtures_dir / "count_en_us_m3.wav")
    assert ra == rb and (a == b).all()
