"""`POST /v1/chat/completions` and `GET /v1/models` on the resident model.

A chat completion is one response of a fresh conversation, run by the same engine and
worker as the realtime sessions, with no listener: the scheduler ranks it as a head start,
below live first packets and below responses short of their guard (engine/worker.py). The
request is parsed and its media decoded off the event loop (chat_request.py, chat_media.py);
the answer is either one JSON body or server-sent `chat.completion.chunk` events that carry
`delta.content`, `delta.reasoning_content` (Thinking) and `delta.audio` (base64 PCM16 at
24 kHz) as the engine makes them.

Tool calls (chat_tools.py) come as `message.tool_calls` with `finish_reason: "tool_calls"`,
streamed as `delta.tool_calls` (a call's id, type and name in its first chunk, pieces of its
arguments after). With audio output requested, a call is never spoken (the engine stops
the talker at the call's first token): `message.audio` carries the speech before the calls,
and is null when the answer is calls only, as there is nothing to hear; streamed, the
closing `delta.audio` transcript chunk is then left out too.

The Captioner captions clips longer than `--caption-piece-s` (Qwen recommends at most 30 s)
in pieces cut at the quietest point Silero VAD finds in each piece's second half; the
captions follow each other in the answer, separated by a blank line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..engine.api import (
    INPUT_SAMPLE_RATE,
    AudioChunk,
    AudioPart,
    Conversation,
    Engine,
    EngineError,
    ReasoningDelta,
    ResponseDone,
    ResponseStats,
    Sampling,
    TextDelta,
    ToolCallDelta,
    ToolCallDone,
    ToolCallStarted,
    Turn,
    new_id,
    now,
)
from ..server.auth import authorized, error_json, unauthorized
from ..settings import Settings
from .chat_media import ChatError, available_output_formats, encode_audio
from .chat_request import ChatRequest, Limits, parse
from .chat_tools import Calls

log = logging.getLogger("assistant.rest.chat")

# Engine error codes -> HTTP statuses (everything else is the server's fault: 500).
# "unsupported_feature": the engine refuses what the request asks (tools on an upstream engine).
ERROR_STATUS = {"invalid_input": 400, "context_length_exceeded": 400, "unsupported_feature": 400, "overloaded": 503}


@dataclass
class Outcome:
    """What one request's responses produced (summed over a Captioner's pieces)."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    pcm16: list[bytes] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    audio_frames: int = 0
    calls: Calls = field(default_factory=Calls)
    length: bool = False  # a response ended at max_tokens

    @property
    def finish_reason(self) -> str:
        return "length" if self.length else "tool_calls" if self.calls else "stop"

    def add(self, done: ResponseDone) -> None:
        s = done.stats
        self.prompt_tokens += s.prefill_tokens
        self.completion_tokens += s.text_tokens
        self.reasoning_tokens += s.reasoning_tokens
        self.audio_frames += s.frames
        if s.end_reason == "length":
            self.length = True

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens, "audio_tokens": self.audio_frames},
        }


def cut_at_silences(probs: np.ndarray, window: int, total: int, max_samples: int) -> list[tuple[int, int]]:
    """[start, end) sample ranges of at most `max_samples`, each cut at the quietest
    VAD window (lowest speech probability, the latest of equals) in the second half of
    the piece; `probs[i]` covers samples [i * window, (i + 1) * window)."""
    pieces, start = [], 0
    while total - start > max_samples:
        lo, hi = (start + max_samples // 2) // window, (start + max_samples) // window
        candidates = probs[lo:hi]
        if len(candidates):
            best = lo + int(len(candidates) - 1 - np.argmin(candidates[::-1]))
            end = best * window + window // 2
        else:
            end = start + max_samples
        pieces.append((start, end))
        start = end
    pieces.append((start, total))
    return pieces


class ChatCompletions:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings, self.engine = settings, engine
        self._formats = tuple(available_output_formats())
        # Bound on chat responses in the worker at once: each one's prefill is a step no live
        # first packet can interrupt. More requests wait here, in arrival order (asyncio.Semaphore
        # is FIFO), at most `engine_queue_size` of them; past that a request gets 503 at once.
        self._lane = asyncio.Semaphore(max(1, settings.max_chat_responses))
        self.waiting = 0

    def limits(self) -> Limits:
        s, info = self.settings, self.engine.info
        return Limits(
            variant=info.variant,
            model=info.model,
            max_tokens=s.max_answer_tokens,
            max_image_pixels=s.max_image_pixels,
            max_video_frames=s.max_conversation_video_frames,
            output_formats=self._formats,
        )

    def model_card(self) -> dict:
        info = self.engine.info
        return {
            "id": info.model,
            "object": "model",
            "created": 0,
            "owned_by": "assistant",
            "variant": info.variant,
            "input_modalities": info.input_modalities,
            "output_modalities": info.output_modalities,
            "is_tiny": info.is_tiny,
        }

    # ------------------------------------------------------------------ conversations

    def conversations(self, req: ChatRequest) -> list[Conversation]:
        """One conversation per response: the request's, or a Captioner clip's pieces."""
        s = self.settings
        sampling = Sampling(
            greedy=s.greedy or req.temperature == 0,
            seed=req.seed,
            thinker_temperature=req.temperature or None,
            thinker_top_p=req.top_p,
            stop=req.stop,
            min_tokens=s.min_answer_tokens,
            max_tokens=req.max_tokens or s.max_answer_tokens,
            min_frames=s.min_answer_frames,
            max_frames=s.max_answer_frames,
        )
        if req.clip is not None:
            return [
                self._conversation(req, sampling, [Turn("user", [AudioPart(piece)])])
                for piece in self._pieces(req.clip)
            ]
        return [self._conversation(req, sampling, req.turns)]

    def _conversation(self, req: ChatRequest, sampling: Sampling, turns: list[Turn]) -> Conversation:
        return Conversation(
            voice=req.voice or self.settings.voice,
            instructions=req.instructions,
            sampling=sampling,
            turns=list(turns),
            tools=req.tools,
            tool_choice=req.tool_choice,
        )

    def _pieces(self, clip: np.ndarray) -> list[np.ndarray]:
        max_samples = int(self.settings.caption_piece_s * INPUT_SAMPLE_RATE)
        if len(clip) <= max_samples:
            return [clip]
        from ..realtime.vad import WINDOW_SAMPLES, SileroModel

        probs = SileroModel().probabilities(clip)  # blocking: the caller runs this off the loop
        return [clip[a:b] for a, b in cut_at_silences(probs, WINDOW_SAMPLES, len(clip), max_samples)]

    # ------------------------------------------------------------------ running

    async def events(self, convs: list[Conversation], audio: bool) -> AsyncIterator[object]:
        """Every engine event of the request's responses, one after another; a separator
        TextDelta between a Captioner's pieces. Closing the iterator cancels the response
        that runs (the client went away)."""
        if self._lane.locked() and self.waiting >= self.settings.engine_queue_size:
            stats = ResponseStats(t_done=now())
            yield ResponseDone("failed", None, stats, EngineError("overloaded", "too many chat completions waiting"))
            return
        self.waiting += 1
        try:
            await self._lane.acquire()
        finally:
            self.waiting -= 1
        try:
            async for event in self._events(convs, audio):
                yield event
        finally:
            self._lane.release()

    async def _events(self, convs: list[Conversation], audio: bool) -> AsyncIterator[object]:
        for k, conv in enumerate(convs):
            response = self.engine.respond(conv, audio=audio, listener=False)
            finished = False
            try:
                if k:
                    yield TextDelta("\n\n", -1)
                async for event in response:
                    if isinstance(event, ResponseDone):
                        finished = True
                        yield event
                        if event.status != "completed":
                            return
                    else:
                        yield event
            finally:
                if not finished:
                    response.cancel()
                self.engine.forget(conv)

    async def complete(self, req: ChatRequest, convs: list[Conversation]) -> Response:
        out = Outcome()
        async for event in self.events(convs, req.audio_out):
            if isinstance(event, TextDelta):
                out.text.append(event.text)
            elif isinstance(event, ReasoningDelta):
                out.reasoning.append(event.text)
            elif isinstance(event, AudioChunk):
                out.pcm16.append(event.pcm16)
            elif isinstance(event, (ToolCallStarted, ToolCallDelta, ToolCallDone)):
                out.calls.feed(event)
            elif isinstance(event, ResponseDone):
                if event.status != "completed":
                    return _engine_error(event)
                out.add(event)
        text = "".join(out.text)
        # OpenAI's shape: content null beside tool calls when nothing was said.
        message: dict = {"role": "assistant", "content": text or (None if out.calls else ""), "refusal": None}
        if out.reasoning:
            message["reasoning_content"] = "".join(out.reasoning)
        if out.calls:
            message["tool_calls"] = out.calls.message()
        if req.audio_out and out.calls and not out.pcm16:
            message["audio"] = None  # calls only: nothing was spoken
        elif req.audio_out:
            data = await asyncio.to_thread(encode_audio, b"".join(out.pcm16), req.audio_format)
            message["audio"] = {
                "id": new_id("audio"),
                "data": base64.b64encode(data).decode("ascii"),
                "transcript": text,
                "expires_at": int(time.time()) + 3600,
            }
        body = self._envelope("chat.completion")
        body["choices"] = [{"index": 0, "message": message, "finish_reason": out.finish_reason, "logprobs": None}]
        body["usage"] = out.usage()
        return JSONResponse(body)

    async def stream(self, req: ChatRequest, convs: list[Conversation]) -> Response:
        events = self.events(convs, req.audio_out)
        first = await anext(events)
        if isinstance(first, ResponseDone) and first.status == "failed":
            await events.aclose()
            return _engine_error(first)  # nothing sent yet: a real HTTP status
        return StreamingResponse(
            self._sse(req, first, events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _sse(self, req: ChatRequest, first, events) -> AsyncIterator[str]:
        envelope = self._envelope("chat.completion.chunk")
        audio_id = new_id("audio")
        out = Outcome()
        spoke = False

        def chunk(delta: dict, finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return f"data: {json.dumps({**envelope, 'choices': [choice]})}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        try:
            event = first
            while True:
                if isinstance(event, TextDelta):
                    out.text.append(event.text)
                    yield chunk({"content": event.text})
                elif isinstance(event, ReasoningDelta):
                    yield chunk({"reasoning_content": event.text})
                elif isinstance(event, AudioChunk):
                    spoke = True
                    yield chunk({"audio": {"id": audio_id, "data": base64.b64encode(event.pcm16).decode("ascii")}})
                elif isinstance(event, (ToolCallStarted, ToolCallDelta, ToolCallDone)):
                    entry = out.calls.feed(event)
                    if entry is not None:
                        yield chunk({"tool_calls": [entry]})
                elif isinstance(event, ResponseDone):
                    if event.status != "completed":
                        error = event.error
                        body = {"type": "server_error", "code": error.code if error else event.status}
                        body["message"] = error.message if error else f"the response was {event.status}"
                        yield f"data: {json.dumps({'error': body})}\n\n"
                        return
                    out.add(event)
                event = await anext(events, None)
                if event is None:
                    break
        finally:
            await events.aclose()
        if req.audio_out and (spoke or not out.calls):
            transcript = "".join(out.text)
            yield chunk({"audio": {"id": audio_id, "transcript": transcript, "expires_at": int(time.time()) + 3600}})
        yield chunk({}, out.finish_reason)
        if req.include_usage:
            yield f"data: {json.dumps({**envelope, 'choices': [], 'usage': out.usage()})}\n\n"
        yield "data: [DONE]\n\n"

    def _envelope(self, kind: str) -> dict:
        return {"id": new_id("chatcmpl"), "object": kind, "created": int(time.time()), "model": self.engine.info.model}


def _engine_error(done: ResponseDone) -> Response:
    error = done.error
    if error is None:
        return error_json(500, done.status, f"the response was {done.status}", "server_error")
    status = ERROR_STATUS.get(error.code, 500)
    return error_json(status, error.code, error.message, "invalid_request_error" if status < 500 else "server_error")


def _model_matches(asked: object, model: str) -> bool:
    return asked is None or asked in (model, model.rstrip("/").rsplit("/", 1)[-1])


def chat_router(settings: Settings, engine: Engine) -> APIRouter:
    chat = ChatCompletions(settings, engine)
    router = APIRouter()

    def allowed(request: Request) -> bool:
        return authorized(settings, request.headers, client_secrets=request.app.state.client_secrets)

    @router.get("/v1/models")
    async def models(request: Request) -> Response:
        if not allowed(request):
            return unauthorized()
        return JSONResponse({"object": "list", "data": [chat.model_card()]})

    @router.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Response:
        if not allowed(request):
            return unauthorized()
        if not _model_matches(model_id, engine.info.model):
            return error_json(404, "model_not_found", f"no model {model_id!r}; this server serves {engine.info.model}")
        return JSONResponse(chat.model_card())

    @router.post("/v1/chat/completions")
    async def completions(request: Request) -> Response:
        if not allowed(request):
            return unauthorized()
        try:
            body = await request.json()
        except ValueError:
            return error_json(400, "invalid_json", "the body is not valid JSON")
        if isinstance(body, dict) and not _model_matches(body.get("model"), engine.info.model):
            message = f"no model {body.get('model')!r}; this server serves {engine.info.model} (GET /v1/models)"
            return error_json(404, "model_not_found", message)
        try:
            # Media decoding (and a Captioner's VAD) is CPU work: off the event loop.
            req = await asyncio.to_thread(parse, body, chat.limits())
            convs = await asyncio.to_thread(chat.conversations, req)
        except ChatError as exc:
            message = f"{exc.message} (param: {exc.param})" if exc.param else exc.message
            # OpenAI's error object also names the field in `param`.
            error = {"type": "invalid_request_error", "code": exc.code, "message": message, "param": exc.param}
            return JSONResponse({"error": error}, status_code=exc.status)
        log.debug("chat completion: media %s, audio out %s, stream %s", req.media, req.audio_out, req.stream)
        if req.stream:
            return await chat.stream(req, convs)
        return await chat.complete(req, convs)

    return router
