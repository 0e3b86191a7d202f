"""`assistant talk`: the desktop push-to-talk client over /v1/realtime (websocket).

Interactive: hold space to talk (or tap it to start and stop; `--toggle` makes every tap
toggle), the last 300 ms before the key went down are sent too (pre-roll), the answer
plays as it streams through a small jitter buffer, and pressing the key while the
assistant speaks interrupts it (response.cancel, then conversation.item.truncate with
the milliseconds actually heard). Headless: `--input-wav` streams a file at real-time
pace in 20 ms chunks, commits, asks for a response and `--output-wav` keeps the answer.

Each turn prints the transcript and one latency line: end of speech -> first audible
sample, and the server's stage breakdown (the `latency` extra of response.done).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..audio import float_to_pcm16, read_wav, resample, write_wav
from .core import OUTPUT_RATE_HZ, ClientCore, Effect, PlayAudio, ServerError, Transcript, TurnMetrics, TurnReport
from .link import ClientError, Link, connect, stream_pcm

STAGES = ("queue", "preprocessing", "thinker_ttft", "talker_ttft", "code_predictor", "codec")


# ---------------------------------------------------------------------------- printing


def _fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.0f}"


def latency_line(turn: TurnMetrics) -> str:
    """One line per turn: what the user waited for, then where the server spent it."""
    s = turn.summary()
    stages = " · ".join(f"{k.replace('_', ' ')} {_fmt(s.get(f'stage_{k}_ms'))}" for k in STAGES)
    rtf = s.get("audio_rtf")
    parts = [
        f"turn {turn.index} [{s['status']}]: speech end -> first audible {_fmt(s['voice_to_voice_ms'])} ms",
        f"first delta {_fmt(s['first_delta_ms'])} ms after commit",
        f"server first packet {_fmt(s['audio_ttfp_ms'])} ms ({stages} ms)",
        f"rtf {rtf:.2f}" if rtf is not None else "rtf -",
        f"{s['audio_ms'] / 1000:.1f} s audio",
    ]
    if s.get("underruns"):
        parts.append(f"{s['underruns']} underruns")
    return "; ".join(parts)


class Printer:
    """The transcript as it streams, then the latency line."""

    def __init__(self, out=None) -> None:
        self.out = out or sys.stdout
        self._open = False

    def __call__(self, effect: Effect) -> None:
        if isinstance(effect, Transcript):
            if effect.role == "user" and effect.text:
                self._line(f"you: {effect.text.strip()}")
            elif effect.role == "assistant" and effect.text:
                text = effect.text
                if not self._open:
                    self.out.write("assistant: ")
                    self._open = True
                    text = text.lstrip()
                self.out.write(text)
                self.out.flush()
            elif effect.role == "assistant" and effect.final and self._open:
                self._line("")
        elif isinstance(effect, ServerError):
            self._line(f"server error {effect.code}: {effect.message}")

    def _line(self, text: str) -> None:
        if self._open:
            self.out.write("\n")
        self._open = False
        if text:
            self.out.write(text + "\n")
        self.out.flush()

    def turn(self, turn: TurnMetrics) -> None:
        if not turn.transcript:
            self._line("assistant: (no transcript)")
        self._line(latency_line(turn))


# ---------------------------------------------------------------------------- headless


def preset_session(args) -> dict | None:
    """--preset (and --target-language) as session fields; ClientError when they do not fit."""
    from .. import languages, presets

    if args.preset is None:
        if args.target_language:
            raise ClientError("--target-language is for --preset interpreter")
        return None
    if args.target_language and args.preset != "interpreter":
        raise ClientError("--target-language is for --preset interpreter")
    try:
        return presets.session(args.preset, target_language=args.target_language)
    except (ValueError, languages.UnsupportedLanguage) as exc:
        raise ClientError(str(exc)) from None


async def _open(args, core: ClientCore, on_effect) -> tuple[Link, asyncio.Task]:
    ws = await connect(args.url, args.api_key, args.connect_timeout_s)
    link = Link(ws, core, on_effect)
    reader = asyncio.create_task(link.reader(), name="talk-reader")
    try:
        await link.handshake(args.connect_timeout_s)
    except (TimeoutError, ClientError) as exc:
        reader.cancel()
        await link.close()
        raise exc if isinstance(exc, ClientError) else ClientError("no session.created from the server") from None
    return link, reader


async def run_headless(args) -> int:
    """--input-wav: one turn from a file, the answer to --output-wav."""
    path = Path(args.input_wav)
    try:
        audio, rate = read_wav(path)
    except (OSError, ValueError, EOFError) as exc:
        raise ClientError(f"cannot read {path}: {exc}") from None
    pcm16 = float_to_pcm16(resample(audio, rate, 24_000))
    core = ClientCore(
        manual=not args.vad, voice=args.voice, instructions=args.instructions, preset=preset_session(args)
    )
    printer = Printer()
    done: asyncio.Queue[TurnMetrics | None] = asyncio.Queue()
    heard = asyncio.Event()  # the user's transcript (presets turn input transcription on)

    def on_effect(effect: Effect) -> None:
        printer(effect)
        if isinstance(effect, TurnReport):
            done.put_nowait(effect.turn)
        elif isinstance(effect, Transcript) and effect.role == "user" and effect.final:
            heard.set()
            if not core.answers:
                done.put_nowait(None)  # a transcriber's turn ends with its transcript

    link, reader = await _open(args, core, on_effect)
    try:
        await stream_pcm(link, pcm16, 24_000, realtime=not args.fast)
        if args.vad:
            core.speech_ended(time.monotonic())  # the server decides; this is the clip's end
        else:
            await link.send(core.release(time.monotonic()))
        try:
            turn = await asyncio.wait_for(done.get(), args.response_timeout_s)
        except TimeoutError:
            raise ClientError(f"no response.done within {args.response_timeout_s} s") from None
        if turn is None:
            return 0
        if core.preset is not None:  # the transcript runs after the answer: wait for it too
            try:
                await asyncio.wait_for(heard.wait(), args.response_timeout_s)
            except TimeoutError:
                raise ClientError(f"no transcript of the turn within {args.response_timeout_s} s") from None
        printer.turn(turn)
        if args.output_wav:
            pcm = np.frombuffer(bytes(turn.audio), dtype="<i2").astype(np.float32) / 32768.0
            write_wav(args.output_wav, pcm, OUTPUT_RATE_HZ)
            print(f"wrote {len(pcm) / OUTPUT_RATE_HZ:.2f} s of audio to {args.output_wav}")
        return 0 if turn.status == "completed" else 1
    finally:
        await link.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


# ---------------------------------------------------------------------------- interactive


class InputLevel:
    """Duration and peak level of what one turn sent (shows a dead microphone at once)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.samples, self.peak = 0, 0

    def add(self, pcm16: bytes) -> None:
        data = np.frombuffer(pcm16, dtype="<i2")
        self.samples += data.size
        if data.size:
            self.peak = max(self.peak, int(np.abs(data.astype(np.int32)).max()))

    def describe(self) -> str:
        dbfs = 20 * np.log10(self.peak / 32768) if self.peak else float("-inf")
        return f"{self.samples / 24_000:.1f} s of audio, peak {dbfs:.0f} dBFS"


class Keys:
    """stdin in cbreak mode (no line buffering, no echo), restored on exit."""

    def __init__(self) -> None:
        if not sys.stdin.isatty():
            raise ClientError("interactive mode needs a terminal; use --input-wav for headless use")
        import termios
        import tty

        self._fd = sys.stdin.fileno()
        self._saved = termios.tcgetattr(self._fd)
        self._termios, self._tty = termios, tty
        self.queue: asyncio.Queue[tuple[str, float]] = asyncio.Queue(256)

    def __enter__(self) -> Keys:
        self._tty.setcbreak(self._fd)
        asyncio.get_running_loop().add_reader(self._fd, self._read)
        return self

    def _read(self) -> None:
        for ch in os.read(self._fd, 64).decode(errors="ignore"):
            if not self.queue.full():
                self.queue.put_nowait((ch, time.monotonic()))

    def __exit__(self, *exc) -> None:
        asyncio.get_running_loop().remove_reader(self._fd)
        self._termios.tcsetattr(self._fd, self._termios.TCSADRAIN, self._saved)


async def run_interactive(args) -> int:
    from .audio_io import Camera, Microphone, Speaker, wait_first_audible
    from .buffers import HoldDetector, PreRoll

    key = " " if args.key == "space" else args.key
    core = ClientCore(manual=True, voice=args.voice, instructions=args.instructions, preset=preset_session(args))
    printer = Printer()
    detector = HoldDetector(toggle=args.toggle)
    preroll = PreRoll(args.pre_roll_ms, 24_000)
    with contextlib.ExitStack() as stack:
        mic = stack.enter_context(Microphone(args.input_device))
        speaker = stack.enter_context(Speaker(args.output_device, args.jitter_ms))
        camera = stack.enter_context(Camera(args.camera, args.camera_fps)) if args.camera is not None else None
        reports: asyncio.Queue[TurnMetrics] = asyncio.Queue()

        def on_effect(effect: Effect) -> None:
            if isinstance(effect, PlayAudio):
                speaker.play(effect.pcm16, effect.item_id)
            elif isinstance(effect, TurnReport):
                speaker.finish()
                reports.put_nowait(effect.turn)
            printer(effect)

        link, reader = await _open(args, core, on_effect)
        keys = stack.enter_context(Keys())
        how = "tap space to start and stop" if args.toggle else "hold space to talk (or tap to start/stop)"
        print(f"connected to {args.url}: {how}; q or Ctrl-C quits", flush=True)
        talking = asyncio.Event()
        level = InputLevel()

        async def on_key(action: str, t: float) -> None:
            if action == "press":
                await link.send(core.press(speaker.played_ms()))
                speaker.stop()
                level.reset()
                pre = preroll.take()
                level.add(pre)
                await link.send([core.append_audio(pre)])
                if camera and (jpeg := camera.take()):
                    await link.send([core.append_image(jpeg)])
                talking.set()
                print("[listening]", flush=True)
            else:
                talking.clear()
                await link.send(core.release(t))
                print(f"[sent {level.describe()}]", flush=True)

        async def keyboard() -> None:
            while True:
                try:
                    ch, t = await asyncio.wait_for(keys.queue.get(), 0.03)
                except TimeoutError:
                    if action := detector.tick(time.monotonic()):
                        await on_key(action, time.monotonic())
                    continue
                if ch in ("q", "\x04"):
                    return
                if ch == key and (action := detector.key(t)):
                    await on_key(action, t)

        async def microphone() -> None:
            while True:
                pcm = await mic.read()
                if talking.is_set():
                    level.add(pcm)
                    await link.send([core.append_audio(pcm)])
                    if camera and (jpeg := camera.take()):
                        await link.send([core.append_image(jpeg)])
                else:
                    preroll.push(pcm)

        async def latency() -> None:
            while True:
                turn = await reports.get()
                turn.t_first_audible = await wait_first_audible(speaker, 2.0)
                printer.turn(turn)

        tasks = [
            asyncio.create_task(keyboard(), name="talk-keyboard"),
            asyncio.create_task(microphone(), name="talk-microphone"),
            asyncio.create_task(latency(), name="talk-latency"),
            asyncio.create_task(link.closed.wait(), name="talk-closed"),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*tasks, reader):
                task.cancel()
            await asyncio.gather(*tasks, reader, return_exceptions=True)
            await link.close()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception():
                raise task.exception()
        if link.closed.is_set() and tasks[0].done() is False:
            raise ClientError(f"the server closed the connection ({link.close_reason})")
    return 0


# ---------------------------------------------------------------------------- entry


def main(args: argparse.Namespace) -> int:
    from .audio_io import DeviceError, list_devices

    try:
        if args.list_devices:
            print(list_devices())
            return 0
        if args.output_wav and not args.input_wav:
            raise ClientError("--output-wav needs --input-wav (headless mode)")
        return asyncio.run(run_headless(args) if args.input_wav else run_interactive(args))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
