"""Server VAD: Silero speech probabilities -> OpenAI `server_vad` endpointing.

Two parts, so that the protocol core stays free of I/O:

- `SileroModel` is one stream's Silero VAD (silero-vad package, `load_silero_vad()`), and
  `probabilities_together` scores several streams' windows as one batch. Blocking CPU
  work (~0.4 ms per 32 ms window on one core): transports call it from a worker thread,
  never on the event loop.
- `Endpointer` is a pure state machine over the per-window probabilities. It turns them
  into speech-started / speech-stopped events with the semantics of OpenAI's
  `server_vad` (developers.openai.com/api/docs/guides/realtime-vad):
  * `threshold`: a window whose probability reaches it is speech;
  * `prefix_padding_ms`: `audio_start_ms` of speech_started is the first speech window
    minus this padding ("includes the prefix_padding_ms");
  * `silence_duration_ms`: speech stops once this much silence has followed it;
    `audio_end_ms` is where that silence was reached ("includes the silence").
  A window counts as silence below `threshold - 0.15`, the hysteresis Silero's own
  `VADIterator` uses, so a word's quiet tail does not end the turn.

Positions are sample offsets at 16 kHz from the start of the session's input stream.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

VAD_SAMPLE_RATE = 16_000
WINDOW_SAMPLES = 512  # Silero v5+ takes exactly 512 samples per call at 16 kHz (32 ms)
WINDOW_MS = WINDOW_SAMPLES * 1000 // VAD_SAMPLE_RATE
HYSTERESIS = 0.15  # silero_vad.utils_vad.VADIterator: neg_threshold = threshold - 0.15


@dataclass(frozen=True)
class VadParams:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    min_speech_ms: int = 64  # speech this long before speech_started: a click is not a turn

    @property
    def silence_threshold(self) -> float:
        return max(self.threshold - HYSTERESIS, 0.01)


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int  # first speech window minus the prefix padding (>= 0)
    speech_start_ms: int  # first speech window


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int  # end of the silence that ended the turn


VadEvent = SpeechStarted | SpeechStopped


def _ms(sample: int) -> int:
    return sample * 1000 // VAD_SAMPLE_RATE


class Endpointer:
    """Feed consecutive windows' probabilities; get speech start/stop events."""

    def __init__(self, params: VadParams) -> None:
        self.params = params
        self.position = 0  # next sample expected
        self.reset()

    def reset(self) -> None:
        """Back to silence (after a commit, a clear, or an ignored echo)."""
        self.speaking = False
        self._candidate: int | None = None  # first sample of unconfirmed speech
        self._silence_from: int | None = None  # first sample of the silence inside speech

    def feed(self, start_sample: int, probs: Sequence[float]) -> list[VadEvent]:
        events: list[VadEvent] = []
        for i, p in enumerate(probs):
            begin = start_sample + i * WINDOW_SAMPLES
            event = self._step(begin, begin + WINDOW_SAMPLES, float(p))
            if event is not None:
                events.append(event)
        self.position = start_sample + len(probs) * WINDOW_SAMPLES
        return events

    def _step(self, begin: int, end: int, p: float) -> VadEvent | None:
        params = self.params
        if not self.speaking:
            if p < params.threshold:
                self._candidate = None
                return None
            if self._candidate is None:
                self._candidate = begin
            if _ms(end - self._candidate) < params.min_speech_ms:
                return None
            self.speaking, start = True, self._candidate
            self._candidate, self._silence_from = None, None
            return SpeechStarted(max(0, _ms(start) - params.prefix_padding_ms), _ms(start))
        if p >= params.threshold:
            self._silence_from = None
        elif p < params.silence_threshold and self._silence_from is None:
            self._silence_from = begin
        if self._silence_from is not None and _ms(end - self._silence_from) >= params.silence_duration_ms:
            self.speaking, self._silence_from = False, None
            return SpeechStopped(_ms(end))
        return None


class SileroModel:
    """One input stream's Silero VAD: its recurrent state and 64 samples of context, over
    a network every stream shares (`_network`). Blocking; one thread at a time per stream.

    silero-vad's `load_silero_vad()` module keeps one stream's state inside itself, so each
    stream needed a module of its own (~0.1 s to load) and one call per stream. Its 16 kHz
    network takes the state as an argument and returns the next one (the wrapper's own
    `forward` does only this: context + window in, last 64 samples kept, state carried), so
    several streams' windows run as one batch (`probabilities_together`)."""

    def __init__(self) -> None:
        self._net, self._torch = _network()
        self.reset()

    def reset(self) -> None:
        torch = self._torch
        self._state = torch.zeros(2, 1, STATE_SIZE)  # [h; c] of the LSTM cell, as the wrapper's first call
        self._context = torch.zeros(1, CONTEXT_SAMPLES)

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Speech probability of each 512-sample window of 16 kHz float audio."""
        return probabilities_together([(self, samples)])[0]


STATE_SIZE = 128  # silero-vad v5+: the decoder's LSTMCell width
CONTEXT_SAMPLES = 64  # the 16 kHz network's context_size_samples
_NETWORK: tuple | None = None
_NETWORK_LOCK = threading.Lock()


def _network():
    """(the 16 kHz network, torch), loaded once per process. Its forward keeps no state
    of its own, so streams on different threads may share it."""
    global _NETWORK
    with _NETWORK_LOCK:
        if _NETWORK is None:
            import torch

            threads = torch.get_num_threads()
            # silero_vad.model calls torch.set_num_threads(1) at import, process-wide; that
            # would slow the engine's CPU inference, so put the setting back.
            from silero_vad import load_silero_vad

            torch.set_num_threads(threads)
            net = load_silero_vad()._model
            if net.context_size_samples != CONTEXT_SAMPLES:
                raise RuntimeError(f"unexpected Silero context of {net.context_size_samples} samples")
            _NETWORK = (net, torch)
        return _NETWORK


def probabilities_together(streams: Sequence[tuple[SileroModel, np.ndarray]]) -> list[np.ndarray]:
    """`SileroModel.probabilities` for several streams (distinct models) in one pass: window
    i of every stream that has an i-th window runs as one batch row each. Each row's LSTM
    state and convolutions are its own, so rows give what each stream gives alone (to
    float rounding); one forward over B rows costs about what one row does (issue #19: four
    users' endpoints were scored one after another on one thread, and their commits reached
    the engine 2-9 ms apart, too far apart to share a first-packet batch)."""
    if not streams:
        return []
    net, torch = streams[0][0]._net, streams[0][0]._torch
    counts = [len(samples) // WINDOW_SAMPLES for _, samples in streams]
    outs = [np.empty(n, np.float32) for n in counts]
    audio = [
        torch.from_numpy(np.ascontiguousarray(samples[: n * WINDOW_SAMPLES], dtype=np.float32))
        for (_, samples), n in zip(streams, counts, strict=True)
    ]
    with torch.inference_mode():
        for i in range(max(counts)):
            rows = [k for k, n in enumerate(counts) if n > i]
            models = [streams[k][0] for k in rows]
            windows = torch.stack([audio[k][i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES] for k in rows])  # [B, 512]
            x = torch.cat([torch.cat([m._context for m in models]), windows], dim=1)  # [B, 64 + 512]
            prob, state = net(x, torch.cat([m._state for m in models], dim=1))  # [B, 1], [2, B, 128]
            for row, (k, m) in enumerate(zip(rows, models, strict=True)):
                m._state = state[:, row : row + 1].clone()
                m._context = x[row : row + 1, -CONTEXT_SAMPLES:].clone()
                outs[k][i] = float(prob[row, 0])
    return outs
