"""Input transcription: each committed user audio item is transcribed by the resident
model, as a background text job (Engine.transcribe), and the transcript is sent as
`conversation.item.input_audio_transcription.delta` / `.completed` (or `.failed`) and
kept on the item (`conversation.item.retrieve` returns it). A mixin of `RealtimeSession`
(see session.py); it shares the session's state.

Transcripts run beside responses, not before them: the engine ranks them after every
response's work, so they never delay a spoken answer; their events may come before or
after the response's (OpenAI says the same of its own).
"""

from __future__ import annotations

from typing import Any

from .. import languages
from ..engine.api import AudioPart, Part, ResponseDone, TextDelta, TextJob, TextPart, VideoPart
from . import events as ev
from .commands import TranscribeItem


def audio_content_index(parts: list[Part]) -> int | None:
    """Index of the `input_audio` entry in the item's content (items.item_json writes one
    `input_image` per camera frame before it)."""
    index = 0
    for part in parts:
        if isinstance(part, AudioPart):
            return index
        index += len(part.frames) if isinstance(part, VideoPart) else 1
    return None


class TranscribeSide:
    # ------------------------------------------------------------------ interpreter mode

    @staticmethod
    def _check_interpreter(interpreter: ev.Interpreter | None, modalities: tuple[str, ...]) -> None:
        """A spoken translation needs a speech-output language (Qwen speaks 10)."""
        if interpreter is None or modalities != ("audio",):
            return
        if interpreter.target_language not in languages.SPEECH_OUTPUT:
            raise ev.ProtocolError(
                "unsupported_language",
                f"spoken translation into {interpreter.target_language!r} is not available; speech output "
                f"languages are {', '.join(languages.SPEECH_OUTPUT)} (or set output_modalities to ['text'])",
                param="session.interpreter.target_language",
            )

    def _interpreted(self, parts: list[Part]) -> list[Part]:
        """In interpreter mode a user audio turn carries Qwen's translation prompt after its
        audio, so the answer is the turn's translation and nothing else."""
        it = self.interpreter
        if it is None or not any(isinstance(p, AudioPart) for p in parts):
            return parts
        spoken = self.output_modalities == ("audio",)
        return [*parts, TextPart(languages.translation_prompt(it.source_language, it.target_language, spoken=spoken))]

    # ------------------------------------------------------------------ input transcription

    def _transcribe(self, item_id: str, parts: list[Part]) -> None:
        """Called for each committed audio turn."""
        config = self.transcription
        index = audio_content_index(parts)
        if config is None or index is None:
            return
        audio = next(p for p in parts if isinstance(p, AudioPart))
        s = self.settings
        job = TextJob(
            audio,
            languages.recognition_prompt(config.language),
            languages.context_instructions(config.prompt) if config.prompt else "",
            max_tokens=s.transcription_max_tokens,
            min_tokens=s.transcription_min_tokens,
            conversation_id=self.conversation.id,  # the engine may reuse the turn's encoder output
        )
        if len(self._transcripts) > 2 * s.max_conversation_items:  # deleted items' transcripts
            self._transcripts = {k: v for k, v in self._transcripts.items() if k in self._items}
        self._transcripts[item_id] = (index, [], False)
        self._out.append(TranscribeItem(item_id, job))

    def transcript_of(self, item_id: str) -> str | None:
        """The item's transcript once completed, else None."""
        entry = self._transcripts.get(item_id)
        return "".join(entry[1]) if entry is not None and entry[2] else None

    def on_transcription_event(self, item_id: str, event: Any) -> list:
        entry = self._transcripts.get(item_id)
        if entry is None or entry[2]:
            return self._drain()
        index, pieces, _ = entry
        where = {"item_id": item_id, "content_index": index}
        if isinstance(event, TextDelta):
            pieces.append(event.text)
            self._send("conversation.item.input_audio_transcription.delta", **where, delta=event.text)
        elif isinstance(event, ResponseDone):
            if event.status == "completed":
                self._transcripts[item_id] = (index, pieces, True)
                stats = event.stats
                usage = {
                    "type": "tokens",
                    "input_tokens": stats.prefill_tokens,
                    "output_tokens": stats.text_tokens,
                    "total_tokens": stats.prefill_tokens + stats.text_tokens,
                }
                self._send(
                    "conversation.item.input_audio_transcription.completed",
                    **where,
                    transcript="".join(pieces),
                    usage=usage,
                )
            else:
                del self._transcripts[item_id]
                err = event.error
                error = {
                    "type": "server_error",
                    "code": err.code if err else "cancelled",
                    "message": err.message if err else "the transcription was cancelled",
                    "param": None,
                }
                self._send("conversation.item.input_audio_transcription.failed", **where, error=error)
        return self._drain()
