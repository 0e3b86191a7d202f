"""The input side of a session: microphone audio, server VAD turns and camera frames.
A mixin of `RealtimeSession` (see session.py); it shares the session's state."""

from __future__ import annotations

import numpy as np

from ..audio import StreamResampler, pcm16_to_float
from ..engine.api import INPUT_SAMPLE_RATE, Part, Turn, new_id
from . import events as ev
from .camera import CameraTurn, turn_parts
from .commands import CancelResponse, ClearPlayback, Output, PrefillTurn, VadWork
from .images import decode_image
from .vad import WINDOW_SAMPLES, SpeechStarted, SpeechStopped

MIN_COMMIT_MS = 100  # OpenAI refuses to commit less than 100 ms of audio
PREFILL_EVERY_SAMPLES = INPUT_SAMPLE_RATE  # offer the turn so far to the engine once a second


class InputSide:
    # ------------------------------------------------------------------ input audio

    def append_audio(self, pcm: np.ndarray, sample_rate_hz: int) -> list[Output]:
        """Microphone audio as float32 mono (WebRTC adapters call this directly)."""
        self._t_activity = self.clock()
        try:
            self._append(pcm, sample_rate_hz)
        except ev.ProtocolError as err:
            self._error(err)
        return self._drain()

    def _append(self, pcm: np.ndarray, rate_hz: int, event_id: str | None = None) -> None:
        if rate_hz != self._resampler.from_hz:
            self._resampler = StreamResampler(rate_hz, INPUT_SAMPLE_RATE)
        x = self._resampler.process(pcm)
        if not self._buf.fits(len(x)):
            raise ev.ProtocolError(
                "input_audio_buffer_full",
                f"more than {self.settings.max_input_audio_s} s of input audio buffered; commit or clear it",
                event_id=event_id,
            )
        self._buf.append(x)
        self._camera_turn()  # choose frames as the audio passes their half-seconds
        if self.turn_detection is not None:
            self._vad_pending.append(x)
        self._offer_prefill()

    def _turn_start(self) -> int | None:
        """Where the commit will take the turn being spoken from: the VAD's audio_start
        (with its prefix padding, clipped to what is buffered), or the whole buffer in
        manual mode; None between VAD turns."""
        if self._speech is not None:
            return max(self._speech[1], self._buf.start)
        if self.turn_detection is None:
            return self._buf.start
        return None

    def _camera_turn(self) -> CameraTurn | None:
        """The camera frames of the turn being spoken, chosen up to the buffer's end."""
        start = self._turn_start()
        if start is None:
            return None
        if self._camera is None or self._camera.start != start:
            self._camera = CameraTurn(start, self.settings.max_camera_turn_s)
        self._camera.advance(self._frames, self._buf.end)
        return self._camera

    def _offer_prefill(self) -> None:
        """While a turn is being spoken, hand the engine the turn so far about once a
        second, so that what is final of it is prefilled before the commit (issue #7).
        Built by `turn_parts` from the same frame choices as the commit, so a camera
        turn's offered frames are exactly the committed ones."""
        start = self._turn_start()
        if start is None or self._buf.end <= start or self.session_type != "realtime":
            return  # a transcription session has no response to give a head start
        if self._buf.end - max(self._prefill_offered, start) < PREFILL_EVERY_SAMPLES:
            return
        self._prefill_offered = self._buf.end
        parts = turn_parts(self._camera_turn(), self._buf.peek(start))
        self._out.append(PrefillTurn(self.conversation, parts))

    def _audio_append(self, event: ev.AudioAppend) -> None:
        self._append(pcm16_to_float(event.pcm16), self.input_rate_hz, event.event_id)

    def _audio_commit(self, event: ev.AudioCommit) -> None:
        if self._buf.duration_ms < MIN_COMMIT_MS:
            raise ev.ProtocolError(
                "input_audio_buffer_commit_empty",
                f"buffer too small: at least {MIN_COMMIT_MS} ms of audio is needed, got {self._buf.duration_ms:.0f} ms",
            )
        item_id = self._speech[0] if self._speech else new_id("item")
        # The resampler holds a few ms back (filter delay); a manual commit means "all I sent".
        self._buf.append(self._resampler.flush())
        self._resampler = StreamResampler(self._resampler.from_hz, INPUT_SAMPLE_RATE)
        camera = self._camera_turn()  # before the take moves the buffer's start
        self._frames.consume(self._buf.end)
        audio = self._buf.take(self._buf.start, self._buf.end)
        self._reset_vad()
        self._commit(item_id, turn_parts(camera, audio))

    def _audio_clear(self, event: ev.AudioClear) -> None:
        self._buf.clear()
        self._reset_vad()
        self._send("input_audio_buffer.cleared")

    def _reset_vad(self) -> None:
        """Forget VAD state and any VAD work in flight (its results come back stale)."""
        self._vad_epoch += 1
        self._vad_pending.clear()
        self._vad_next = self._buf.end
        self._endpointer.reset()
        self._endpointer.position = self._buf.end
        self._speech = None
        self._camera = None

    def _commit(self, item_id: str, parts: list[Part], *, transcribe: bool = True) -> None:
        t = self.clock()
        previous = self._items[-1] if self._items else None
        self._send("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        self._add_turn(Turn("user", self._interpreted(parts), id=item_id), previous)
        self._t_last_commit = t
        if transcribe:
            self._transcribe(item_id, parts)

    # ------------------------------------------------------------------ VAD

    @property
    def vad_enabled(self) -> bool:
        return self.turn_detection is not None

    def take_vad_work(self) -> VadWork | None:
        """The next whole windows to score, or None. Score them off the event loop, then
        call `on_vad(work, probabilities)`."""
        if not self._vad_pending:
            return None
        x = np.concatenate(self._vad_pending) if len(self._vad_pending) > 1 else self._vad_pending[0]
        n = len(x) // WINDOW_SAMPLES * WINDOW_SAMPLES
        self._vad_pending = [x[n:]] if n < len(x) else []
        if n == 0:
            return None
        work = VadWork(self._vad_epoch, self._vad_next, x[:n])
        self._vad_next += n
        return work

    def on_vad(self, work: VadWork, probs: np.ndarray) -> list[Output]:
        if work.epoch != self._vad_epoch or self.turn_detection is None:
            return self._drain()  # stale: the buffer was committed or cleared meanwhile
        try:
            for event in self._endpointer.feed(work.start_sample, probs):
                if isinstance(event, SpeechStarted):
                    self._speech_started(event)
                elif isinstance(event, SpeechStopped) and self._speech is not None:
                    self._speech_stopped(event)
            if self._speech is None:  # between turns keep only the prefix padding
                keep = self._endpointer.position - self.turn_detection.prefix_padding_ms * INPUT_SAMPLE_RATE // 1000
                self._buf.drop_before(keep)
        except ev.ProtocolError as err:
            self._error(err)
        return self._drain()

    def _speech_started(self, event: SpeechStarted) -> None:
        td = self.turn_detection
        assert td is not None
        if self.clock() < self._guard_until:
            # Echo guard: the assistant just started talking; its own voice may leak back
            # through the client's speaker before echo cancellation adapts (unmute, pipecat).
            self._endpointer.reset()
            return
        item_id = new_id("item")
        self._speech = (item_id, event.audio_start_ms * INPUT_SAMPLE_RATE // 1000)
        self._send("input_audio_buffer.speech_started", audio_start_ms=event.audio_start_ms, item_id=item_id)
        if td.interrupt_response:
            self._barge_in()

    def _barge_in(self) -> None:
        active = self._active
        if active is not None and active.cancel_reason is None:
            active.cancel_reason = "turn_detected"
            self._out.append(CancelResponse(active.id))
        if self.webrtc and self._playing is not None:
            item = active.item_id if active and active.id == self._playing else self._last_assistant()
            self._out.append(ClearPlayback(self._playing, item or ""))

    def _last_assistant(self) -> str | None:
        return next((i for i in reversed(self._items) if self._roles.get(i) == "assistant"), None)

    def _speech_stopped(self, event: SpeechStopped) -> None:
        td = self.turn_detection
        assert td is not None and self._speech is not None
        item_id, start = self._speech
        self._send("input_audio_buffer.speech_stopped", audio_end_ms=event.audio_end_ms, item_id=item_id)
        camera = self._camera_turn()  # before the take moves the buffer's start
        end = event.audio_end_ms * INPUT_SAMPLE_RATE // 1000
        self._frames.consume(end)
        audio = self._buf.take(start, end)
        self._speech = self._camera = None
        parts = turn_parts(camera, audio)
        self._commit(item_id, parts, transcribe=False)
        if td.create_response and self.session_type == "realtime":  # a transcription session never answers
            if self._active is None:
                self._create_response(self._t_last_commit)
            else:
                self._auto_response = self._t_last_commit
        # The transcription goes to the engine after the response: the worker, idle until
        # then, would otherwise start the transcription's prefill first and the first packet
        # would wait for that step (input transcription on put 14 ms on one user's median
        # first packet); the transcription also reads the encoder output the response's
        # prefill leaves in the conversation's cache instead of encoding the clip again.
        self._transcribe(item_id, parts)

    # ------------------------------------------------------------------ camera

    def _image_append(self, event: ev.ImageAppend) -> None:
        """A camera frame or a still image (Qwen-Omni-Realtime's event). It is stamped with
        the input audio position, so a client that sends images between its audio chunks
        gets them in the half-seconds they arrived in (camera.py); one sent before the
        audio, with no other during the turn, reaches the model as an image."""
        t = self.clock()
        if not self._frames.wants(t):
            return  # over the frame rate: dropped before decoding
        try:
            image = decode_image(event.image, max_pixels=self.settings.max_image_pixels)
        except ValueError as exc:
            raise ev.ProtocolError("invalid_image", str(exc), param="image") from None
        self._frames.add(t, self._buf.end, image)

    def append_frame(self, rgb: np.ndarray) -> list[Output]:
        """A decoded camera frame (uint8 [H, W, 3]), e.g. from a WebRTC video track. Sampled
        like `input_image_buffer.append`: over the frame rate it is dropped."""
        t = self.clock()
        if self._frames.wants(t):
            self._frames.add(t, self._buf.end, rgb)
        return self._drain()

    def wants_frame(self) -> bool:
        """Whether a frame arriving now would be kept (skip decoding it otherwise)."""
        return self._frames.wants(self.clock())
