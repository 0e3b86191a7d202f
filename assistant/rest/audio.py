"""`POST /v1/audio/transcriptions` and `POST /v1/audio/translations` on the resident model.

The OpenAI audio API (openai-python `audio.transcriptions.create` / `audio.translations.create`):
multipart `file`, `model`, `language`, `prompt`, `response_format` (json, text, srt,
verbose_json, vtt), `temperature`; transcriptions also `stream=true`, answered with
server-sent `transcript.text.delta` events and one `transcript.text.done`. Translations go
to English, as OpenAI's do; the extra field `target_language` (any text language code,
languages.py) chooses another.

The file is decoded and cut piece by piece (audio_pieces.py: PyAV, the VAD, pieces of at
most `max_audio_piece_s` cut at silences), and each piece is one background text job
(`Engine.transcribe`): the worker runs them after every live response's work. Decoding the
next piece overlaps transcribing this one; memory holds two pieces, never the file (the
upload itself is spooled to disk by the multipart parser past 1 MB).

`model` is accepted with any value: the server has one model, the resident one, and
transcribes with it (as `/v1/realtime?model=` does). Unknown fields are refused, as are
`timestamp_granularities[]` other than `segment` and `include[]`.

Errors, OpenAI-shaped (`{"error": {type, code, message}}`): 400 for malformed multipart, a
missing, empty, undecodable or silent-free-of-samples file, an unknown format or language;
401 without the API key; 413 over `max_audio_upload_bytes`; 503 when `max_audio_requests`
are running or the worker's queue is full; 500 when the engine fails. A failure after a
stream has started ends it with an `error` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from .. import languages
from ..engine.api import AudioPart, Engine, ResponseDone, TextDelta, TextJob
from ..realtime.vad import SileroModel
from ..server.auth import authorized, error_json, unauthorized
from ..settings import Settings
from . import audio_formats as fmt
from .audio_pieces import BadAudio, Piece, PieceStream

log = logging.getLogger("assistant.rest.audio")

FIELDS = {"file", "model", "language", "prompt", "response_format", "temperature", "stream"}
TRANSLATION_FIELDS = {"file", "model", "language", "prompt", "response_format", "temperature", "target_language"}
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # the form fields and boundaries around the file


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.kind = status, code, message, kind

    def response(self) -> JSONResponse:
        return error_json(self.status, self.code, self.message, self.kind)


@dataclass
class Params:
    task: str  # "transcribe" | "translate"
    upload: UploadFile
    language: str | None
    target: str | None  # translations
    prompt: str
    response_format: str
    temperature: float
    stream: bool

    def task_prompt(self) -> str:
        if self.task == "transcribe":
            return languages.recognition_prompt(self.language)
        return languages.translation_prompt(self.language, self.target or "en")

    def language_name(self) -> str:
        code = self.target if self.task == "translate" else self.language
        return languages.NAMES[code].lower() if code else "unknown"


def _text(form, key: str) -> str | None:
    value = form.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "invalid_value", f"'{key}' must be a text field")
    return value


def parse_form(form, task: str) -> Params:
    allowed = FIELDS if task == "transcribe" else TRANSLATION_FIELDS
    for key, value in form.multi_items():
        if key in ("timestamp_granularities[]", "timestamp_granularities") and value == "segment":
            continue  # segments are what verbose_json has
        if key not in allowed:
            raise ApiError(
                400, "unsupported_parameter", f"'{key}' is not supported by this server", "invalid_request_error"
            )
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "missing_required_parameter", "'file' is required and must be a file upload")
    response_format = _text(form, "response_format") or "json"
    if response_format not in fmt.FORMATS:
        raise ApiError(400, "invalid_value", f"response_format must be one of {', '.join(fmt.FORMATS)}")
    try:
        temperature = float(_text(form, "temperature") or 0.0)
    except ValueError:
        raise ApiError(400, "invalid_value", "temperature must be a number") from None
    if not 0.0 <= temperature <= 2.0:
        raise ApiError(400, "invalid_value", "temperature must be between 0 and 2")
    stream = (_text(form, "stream") or "false").lower() in ("true", "1")
    if stream and response_format not in ("json", "text"):
        raise ApiError(
            400, "invalid_value", "stream=true sends transcript.text events; use response_format json or text"
        )
    try:
        language = languages.speech_input(_text(form, "language")) if _text(form, "language") else None
        target = languages.text(_text(form, "target_language")) if _text(form, "target_language") else None
    except languages.UnsupportedLanguage as exc:
        raise ApiError(400, "unsupported_language", str(exc)) from None
    return Params(task, upload, language, target, _text(form, "prompt") or "", response_format, temperature, stream)


class AudioApi:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings, self.engine = settings, engine
        self.running = 0  # requests admitted (bounded by settings.max_audio_requests)
        self._vads: list = []  # idle Silero models (one per running request at most): loading one costs ~0.1 s

    async def handle(self, request: Request, task: str) -> Response:
        s = self.settings
        if not authorized(s, request.headers):
            return unauthorized()
        try:
            length = int(request.headers.get("content-length", "0") or 0)
        except ValueError:
            length = 0
        if length > s.max_audio_upload_bytes + MULTIPART_OVERHEAD_BYTES:
            return ApiError(413, "file_too_large", self._too_large()).response()
        if self.running >= s.max_audio_requests:
            return ApiError(
                503, "server_busy", f"all {s.max_audio_requests} audio request slots are in use; retry", "server_error"
            ).response()
        self.running += 1
        release = True
        feed: _Prefetch | None = None
        try:
            try:
                form = await request.form(max_files=1, max_fields=16)
            except Exception as exc:  # starlette raises HTTPException or MultiPartException
                raise ApiError(
                    400,
                    "invalid_multipart",
                    f"the body is not valid multipart/form-data: {getattr(exc, 'detail', exc)}",
                ) from None
            params = parse_form(form, task)
            if params.upload.size is not None and params.upload.size > s.max_audio_upload_bytes:
                raise ApiError(413, "file_too_large", self._too_large())
            if not params.upload.size:
                raise ApiError(400, "empty_file", "the file is empty")
            vad = self._vads.pop() if self._vads else await asyncio.to_thread(SileroModel)  # off the loop
            pieces = PieceStream(params.upload.file, vad, max_s=s.max_audio_piece_s, threshold=s.vad_threshold)
            feed = _Prefetch(pieces, lambda: self._vads.append(vad))
            first = await feed.next()  # a file that is not audio fails here, before any status is sent
            if first is None and pieces.samples == 0:
                raise ApiError(400, "empty_audio", "the file contains no audio samples")
            if params.stream:
                release = False  # the stream releases its slot when it ends
                return StreamingResponse(self._sse(params, feed, first), media_type="text/event-stream")
            segments = [seg async for seg in self._transcribe_all(params, feed, first, None)]
            return self._body(params, segments, pieces.samples)
        except ApiError as err:
            return err.response()
        except BadAudio as exc:
            return ApiError(400, "invalid_file", str(exc)).response()
        finally:
            if release:
                self.running -= 1
                if feed is not None:
                    await feed.close()  # after an error before transcribing (else already closed)

    def _too_large(self) -> str:
        return f"the file is larger than the server's limit of {self.settings.max_audio_upload_bytes} bytes"

    def _body(self, params: Params, segments: list[fmt.Segment], samples: int) -> Response:
        body = fmt.render(
            params.response_format,
            segments,
            task=params.task,
            language=params.language_name(),
            duration_s=samples / 16_000,
            temperature=params.temperature,
        )
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type="text/plain")

    async def _transcribe_all(self, params: Params, feed: _Prefetch, first: Piece | None, deltas):
        piece = first
        try:
            while piece is not None:
                yield await self._one(params, piece, deltas)
                piece = await feed.next()
        finally:
            await feed.close()

    async def _one(self, params: Params, piece: Piece, deltas) -> fmt.Segment:
        s = self.settings
        job = TextJob(
            AudioPart(piece.pcm),
            params.task_prompt(),
            languages.context_instructions(params.prompt) if params.prompt else "",
            max_tokens=s.transcription_max_tokens,
            min_tokens=s.transcription_min_tokens,
            temperature=params.temperature,
        )
        text: list[str] = []
        response = self.engine.transcribe(job)
        try:
            async for event in response:
                if isinstance(event, TextDelta):
                    text.append(event.text)
                    if deltas is not None:
                        await deltas(event.text, not text[:-1], piece)
                elif isinstance(event, ResponseDone):
                    if event.status != "completed":
                        err = event.error
                        if err is not None and err.code == "overloaded":
                            raise ApiError(503, "server_busy", err.message, "server_error")
                        raise ApiError(
                            500, err.code if err else "engine_error", err.message if err else "failed", "server_error"
                        )
                    tokens = event.turn.token_ids if event.turn else []
                    logprobs = event.stats.token_logprobs
                    return fmt.Segment(
                        piece.start_s,
                        piece.end_s,
                        "".join(text),
                        list(tokens),
                        piece.no_speech_prob,
                        event.stats.prefill_tokens,
                        sum(logprobs) / len(logprobs) if logprobs else None,
                    )
        finally:
            response.cancel()  # no-op when done; a client gone mid-piece stops the engine's job
        raise ApiError(500, "engine_error", "the engine ended without a result", "server_error")

    async def _sse(self, params: Params, feed: _Prefetch, first: Piece | None) -> AsyncIterator[str]:
        """transcript.text.delta per token (pieces after the first start with a space), then
        transcript.text.done with the whole text and the usage."""
        queue: list[str] = []

        async def on_delta(delta: str, first_of_piece: bool, piece: Piece) -> None:
            if first_of_piece and piece is not first:
                delta = " " + delta.lstrip()
            queue.append(_event({"type": "transcript.text.delta", "delta": delta}))

        segments: list[fmt.Segment] = []
        gen = self._transcribe_all(params, feed, first, on_delta)
        try:
            while True:
                try:
                    segment = await anext(gen)
                except StopAsyncIteration:
                    break
                finally:
                    while queue:
                        yield queue.pop(0)
                segments.append(segment)
            done = {
                "type": "transcript.text.done",
                "text": fmt.full_text(segments),
                "usage": fmt.usage_tokens(segments),
            }
            yield _event(done)
        except (ApiError, BadAudio) as exc:
            code = exc.code if isinstance(exc, ApiError) else "invalid_file"
            kind = exc.kind if isinstance(exc, ApiError) else "invalid_request_error"
            yield _event({"type": "error", "error": {"type": kind, "code": code, "message": str(exc)}})
        finally:
            self.running -= 1
            await gen.aclose()  # a client gone mid-stream: stop decoding too


def _event(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _Prefetch:
    """Pieces from a blocking PieceStream, the next one decoding on a thread while the
    current one is transcribed (one in flight: memory holds two pieces at most)."""

    def __init__(self, pieces: PieceStream, release: Callable[[], None]) -> None:
        self._pieces, self._release = pieces, release
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._next = self._start()

    def _start(self) -> asyncio.Future:
        return self._loop.run_in_executor(None, next, self._pieces, None)

    async def next(self) -> Piece | None:
        piece = await self._next
        self._next = self._start() if piece is not None else None
        return piece

    async def close(self) -> None:
        """Wait for the decode in flight (a thread cannot be interrupted), then close the file's decoder."""
        if self._closed:
            return
        self._closed = True
        if self._next is not None:
            await asyncio.wait([self._next])
            self._next = None
        await self._loop.run_in_executor(None, self._pieces.close)
        self._release()  # the VAD model is free for the next request


def audio_router(settings: Settings, engine: Engine) -> APIRouter:
    api = AudioApi(settings, engine)
    router = APIRouter()

    @router.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await api.handle(request, "transcribe")

    @router.post("/v1/audio/translations")
    async def translations(request: Request) -> Response:
        return await api.handle(request, "translate")

    return router
