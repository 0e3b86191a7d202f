"""UpstreamEngine: the engine interface over a remote OpenAI-Realtime server (scale-out).

The front end keeps what it does well (WebRTC, server VAD with barge-in, camera frames,
the page, authentication, limits, metrics) and an upstream (vLLM-Omni serving
Qwen3-Omni on several GPUs, another instance of this server, any OpenAI-Realtime server)
does the generation. The session state machine drives this engine exactly as it drives
the local one.

One upstream websocket session per `Conversation`, opened on its first response and
reopened after any failure. Upstream turn detection is off: the front end sends each
committed turn as a `conversation.item.create` and asks with `response.create`. What the
upstream holds is tracked per item (`Link.synced`, by turn identity: the session renames
assistant turns after ResponseDone), so each response sends only the difference: new
turns, deleted ones, truncations, and a `session.update` when the voice or the
instructions changed. A new upstream session (after a failure, or when the idle reaper
closed one) gets the whole history again, assistant turns as text.

Failures (refused connection, an upstream that closes or goes silent mid-response, an
`error` event about our request) end the response as `ResponseDone(status="failed",
error=EngineError("upstream_error", ...))` and drop the link; the session lives on and the
next response reconnects.

Tasks: the reaper (closes idle links), one closer per dropped link; both owned by the
engine, cancelled in `close()`. A response does its I/O in its own iterator, which the
transport's pump task owns; cancelling that task closes the upstream session (its state
is then unknown).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ..settings import Settings
from . import upstream_protocol as proto
from .api import (
    AudioPart,
    Conversation,
    EngineError,
    EngineInfo,
    Event,
    ImagePart,
    ResponseDone,
    ResponseStats,
    TextPart,
    Turn,
    VideoPart,
    new_id,
    now,
)

log = logging.getLogger("assistant.upstream")

REAP_PERIOD_S = 5.0
CANCEL_GRACE_S = 5.0  # after response.cancel, how long the upstream gets to say response.done
MAX_UPSTREAM_EVENT_BYTES = 32 * 1024 * 1024  # item echoes may carry a turn's audio
KINDS_KEPT = 256  # our recent event ids, to tell which request an upstream `error` is about
BENIGN_ERRORS_FOR = ("conversation.item.truncate", "response.cancel")


# Encoding a turn inline costs ~10 us per 1000 samples (PCM16 + base64 + JSON); past about
# 5 s of 16 kHz audio (~1 ms) it goes to a thread, whose hop (~0.2 ms) is then the smaller cost.
INLINE_ENCODE_LIMIT = 80_000


def _encoding_cost(turn: Turn) -> int:
    """Samples (or, for images, pixels / 4) a turn's content would encode."""
    cost = 0
    for p in turn.parts:
        if isinstance(p, AudioPart):
            cost += len(p.pcm)
        elif isinstance(p, ImagePart):
            cost += p.image.size // 4 + INLINE_ENCODE_LIMIT  # PNG encoding: always off the loop
        elif isinstance(p, VideoPart):
            cost += sum(f.size // 4 for f in p.frames) + INLINE_ENCODE_LIMIT
    return cost


class UpstreamFailure(Exception):
    """The upstream cannot serve this response; the message is what the client sees."""


@dataclass
class _Synced:
    turn: Turn  # ours (compared by identity)
    upstream_id: str
    deltas: list[str] | None = None  # assistant turns the upstream generated: its transcript deltas


class Link:
    """One upstream websocket session, for one conversation."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.synced: list[_Synced] = []
        self.voice: str | None = None
        self.instructions: str | None = None
        self.pending: list[dict[str, Any]] = []  # truncations, sent before the next response
        self.kinds: dict[str, str] = {}  # our event_id -> event type
        self.busy = False
        self.t_used = now()

    async def send(self, event: dict[str, Any]) -> None:
        self.kinds[event["event_id"]] = event["type"]
        while len(self.kinds) > KINDS_KEPT:
            self.kinds.pop(next(iter(self.kinds)))
        await self.ws.send(json.dumps(event, separators=(",", ":")))

    def entry(self, turn: Turn) -> _Synced | None:
        return next((s for s in self.synced if s.turn is turn), None)

    @property
    def open(self) -> bool:
        return self.ws.close_code is None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, UpstreamFailure):
        return str(exc)
    if isinstance(exc, ConnectionClosed):
        return f"the upstream closed the connection ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
    if isinstance(exc, TimeoutError):
        return "the upstream did not answer in time"
    if isinstance(exc, (InvalidHandshake, InvalidURI)):
        return f"the upstream refused the websocket: {exc}"
    return f"cannot reach the upstream: {exc}"


UPSTREAM_ERRORS = (UpstreamFailure, ConnectionClosed, TimeoutError, InvalidHandshake, InvalidURI, OSError)


class UpstreamEngine:
    def __init__(self, settings: Settings) -> None:
        if not settings.upstream_url:
            raise ValueError("UpstreamEngine needs settings.upstream_url")
        self.settings = settings
        self.info = EngineInfo("upstream", settings.upstream_url, "remote", "n/a", False)
        self._links: dict[str, Link] = {}
        self._watched: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn(self._reap(), "upstream-reaper")
        try:  # a probe: serving starts either way (the upstream may come up later), but say so
            link = await self._connect()
            await link.ws.close()
            log.info("upstream %s answers", self.settings.upstream_url)
        except UPSTREAM_ERRORS as exc:
            log.warning("upstream %s: %s; responses fail until it answers", self.settings.upstream_url, _describe(exc))

    async def close(self) -> None:
        for conv_id in list(self._links):
            self.drop(conv_id)
        tasks = list(self._tasks)
        for task in tasks:
            if task.get_name() == "upstream-reaper":
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _reap(self) -> None:
        """Close upstream sessions nobody used for `idle_timeout_s`, or that the upstream
        closed; a later response reopens them."""
        while True:
            await asyncio.sleep(REAP_PERIOD_S)
            t = now()
            for conv_id, link in list(self._links.items()):
                if not link.busy and (not link.open or t - link.t_used > self.settings.idle_timeout_s):
                    self.drop(conv_id)

    # ------------------------------------------------------------------ links

    async def _connect(self) -> Link:
        s = self.settings
        url = s.upstream_url
        if s.upstream_model:
            url += ("&" if "?" in url else "?") + "model=" + quote(s.upstream_model)
        headers = {"Authorization": f"Bearer {s.upstream_api_key}"} if s.upstream_api_key else None
        ws = await connect(
            url,
            additional_headers=headers,
            open_timeout=s.upstream_connect_timeout_s,
            compression=None,  # base64 audio barely compresses; deflate costs latency
            max_size=MAX_UPSTREAM_EVENT_BYTES,
        )
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), s.upstream_connect_timeout_s))
            if first.get("type") == "error":
                err = first.get("error") or {}
                raise UpstreamFailure(f"upstream refused the session: {err.get('code')}: {err.get('message')}")
        except BaseException:
            await ws.close()
            raise
        return Link(ws)

    async def link_for(self, conversation: Conversation) -> Link:
        link = self._links.get(conversation.id)
        if link is not None and link.open:
            return link
        if link is not None:
            self.drop(conversation.id)
        link = await self._connect()
        self._links[conversation.id] = link
        if conversation.id not in self._watched:
            # The session owns the conversation; when it is gone, so is the upstream session.
            self._watched.add(conversation.id)
            weakref.finalize(conversation, self._forget, conversation.id)
        return link

    def _forget(self, conv_id: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._forget_now, conv_id)

    def _forget_now(self, conv_id: str) -> None:
        self._watched.discard(conv_id)
        self.drop(conv_id)

    def drop(self, conv_id: str) -> None:
        """Forget the conversation's upstream session and close it in the background."""
        link = self._links.pop(conv_id, None)
        if link is not None:
            self._spawn(link.ws.close(), f"upstream-close-{conv_id}")

    @property
    def open_links(self) -> int:
        return len(self._links)

    # ------------------------------------------------------------------ engine interface

    def respond(
        self, conversation: Conversation, *, t_committed: float | None = None, audio: bool = True, listener: bool = True
    ):
        # `listener` ranks work on a local model's worker; the upstream schedules its own.
        return UpstreamResponse(self, conversation, t_committed, audio)

    def transcribe(self, request) -> _Failed:
        """Not through the protocol: an OpenAI-Realtime upstream transcribes only inside its
        own sessions, with its own model, so the request fails with a reason."""
        return _Failed(EngineError("unsupported", "transcription needs a local model; this server uses an upstream"))

    def prefill(self, conversation: Conversation, parts: list) -> bool:
        """No head start through the protocol: the upstream receives the turn at commit."""
        return False

    def forget(self, conversation: Conversation) -> None:
        """The session is over: close its upstream session now rather than at collection."""
        self.drop(conversation.id)

    def truncate(self, conversation: Conversation, item_id: str, audio_end_ms: int) -> Turn:
        """Cut our copy of the turn's text to what was heard, and queue
        conversation.item.truncate for the upstream (sent before the next response: the
        upstream's history matters only then)."""
        turn = conversation.find(item_id)
        if turn is None or turn.role != "assistant":
            raise KeyError(f"no assistant item {item_id!r}")
        if audio_end_ms < 0:
            raise ValueError("audio_end_ms must be >= 0")
        link = self._links.get(conversation.id)
        entry = link.entry(turn) if link is not None else None
        deltas = entry.deltas if entry is not None and entry.deltas is not None else None
        heard = proto.heard_deltas(audio_end_ms, turn.frames)
        if deltas is not None:
            entry.deltas = deltas[:heard]
            turn.text = "".join(entry.deltas)
        turn.frames = min(turn.frames, heard)
        turn.parts = [TextPart(turn.text)]
        if entry is not None:
            link.pending.append(
                proto.event(
                    "conversation.item.truncate", item_id=entry.upstream_id, content_index=0, audio_end_ms=audio_end_ms
                )
            )
        return turn


class _Failed:
    """A response that fails at once (a request the upstream cannot serve)."""

    def __init__(self, error: EngineError) -> None:
        self.id, self._error = new_id("resp"), error

    def cancel(self) -> None:
        pass

    async def __aiter__(self):
        yield ResponseDone("failed", None, ResponseStats(t_done=now()), self._error)


class UpstreamResponse:
    def __init__(self, engine: UpstreamEngine, conversation: Conversation, t_committed: float | None, audio: bool):
        self.id = new_id("uresp")
        self._engine, self._conv, self._audio = engine, conversation, audio
        self._t_committed = t_committed
        self._cancel = asyncio.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def __aiter__(self):
        return self._run()

    async def _run(self):
        eng, conv = self._engine, self._conv
        stats = proto.UpstreamStats(t_committed=self._t_committed, t_started=now())
        if self._cancel.is_set():
            stats.t_done = now()
            yield ResponseDone("cancelled", None, stats)
            return
        if conv.tools or any(t.role == "tool" or t.tool_calls for t in conv.turns):
            # Refused, not ignored: tools, calls and results are not forwarded upstream yet.
            stats.t_done = now()
            msg = "tool calling is not supported with an upstream engine yet; run the model locally"
            yield ResponseDone("failed", None, stats, EngineError("unsupported_feature", msg))
            return
        mapper = proto.ResponseMapper(self._audio, stats)
        link: Link | None = None
        error: str | None = None
        cancel_timed_out = False
        try:
            link = await eng.link_for(conv)
            link.busy = True
            await self._sync(link)
            max_tokens = conv.sampling.max_tokens
            await link.send(proto.response_create(audio=self._audio, max_output_tokens=max_tokens))
            # The front end's own share before the upstream can start: opening, item sync, encoding.
            stats.extra["upstream_request_ms"] = round((now() - stats.t_started) * 1000, 3)
            async for out in self._stream(link, mapper):
                yield out
            cancel_timed_out = not mapper.finished
        except UPSTREAM_ERRORS as exc:
            error = _describe(exc)
        finally:
            if link is not None:
                link.busy = False
                link.t_used = now()
            if error is not None or not mapper.finished:
                eng.drop(conv.id)  # its state is unknown now; the next response starts afresh
        if error is not None:
            log.warning("conversation %s: %s", conv.id, error)
            stats.t_done = now()
            yield ResponseDone("failed", None, stats, EngineError("upstream_error", error))
            return
        yield self._finish(link, mapper, cancelled=cancel_timed_out)

    async def _sync(self, link: Link) -> None:
        """Bring the upstream's items in line with the conversation."""
        s, conv = self._engine.settings, self._conv
        for event in link.pending:
            await link.send(event)
        link.pending.clear()
        live = {id(t) for t in conv.turns}
        for gone in [e for e in link.synced if id(e.turn) not in live]:
            await link.send(proto.event("conversation.item.delete", item_id=gone.upstream_id))
            link.synced.remove(gone)
        if (link.voice, link.instructions) != (conv.voice, conv.instructions):
            await link.send(
                proto.session_update(
                    voice=conv.voice, instructions=conv.instructions, input_rate_hz=s.upstream_input_rate_hz
                )
            )
            link.voice, link.instructions = conv.voice, conv.instructions
        known = {id(e.turn): e for e in link.synced}
        ordered: list[_Synced] = []
        previous: str | None = None
        for turn in list(conv.turns):
            entry = known.get(id(turn))
            if entry is None:
                entry = _Synced(turn, f"fe_{new_id('item')}")
                # First position while the upstream holds items: "root" (GA); else after the previous one.
                where = previous if previous is not None else ("root" if link.synced else None)
                heavy = _encoding_cost(turn) > INLINE_ENCODE_LIMIT
                build = (proto.item_create, turn, entry.upstream_id, where, s.upstream_input_rate_hz)
                # Resampling and base64 of a long turn's audio would hold the event loop for ms.
                event = await asyncio.to_thread(*build) if heavy else build[0](*build[1:])
                await link.send(event)
            ordered.append(entry)
            previous = entry.upstream_id
        link.synced = ordered

    async def _stream(self, link: Link, mapper: proto.ResponseMapper):
        """Upstream events -> engine events until response.done. Cancellation sends
        response.cancel and keeps reading (the upstream's response.done ends it)."""
        s = self._engine.settings
        cancel_wait = asyncio.ensure_future(self._cancel.wait())
        recv: asyncio.Future | None = None
        deadline: float | None = None  # after cancel
        try:
            while not mapper.finished:
                if recv is None:
                    recv = asyncio.ensure_future(link.ws.recv())
                waiters = {recv} if deadline is not None else {recv, cancel_wait}
                timeout = s.upstream_event_timeout_s if deadline is None else max(0.0, deadline - time.monotonic())
                done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    if deadline is not None:
                        log.warning("upstream did not confirm a cancel within %.0f s", CANCEL_GRACE_S)
                        return
                    raise TimeoutError
                if cancel_wait in done and deadline is None:
                    deadline = time.monotonic() + CANCEL_GRACE_S
                    fields = {"response_id": mapper.response_id} if mapper.response_id else {}
                    await link.send(proto.event("response.cancel", **fields))
                if recv in done:
                    message, recv = recv.result(), None
                    event = json.loads(message)
                    if event.get("type") == "error":
                        self._upstream_error(link, mapper, event.get("error") or {})
                        continue
                    for out in mapper.feed(event, now()):
                        if deadline is None:
                            yield out
        finally:
            cancel_wait.cancel()
            if recv is not None:
                recv.cancel()

    def _upstream_error(self, link: Link, mapper: proto.ResponseMapper, err: dict[str, Any]) -> None:
        about = link.kinds.get(err.get("event_id") or "")
        text = f"upstream error {err.get('code')}: {err.get('message')}"
        if about in BENIGN_ERRORS_FOR or err.get("code") == "response_cancel_not_active":
            log.info("conversation %s: %s (about %s; ignored)", self._conv.id, text, about)
        elif mapper.created and about is None:
            # About the response in progress: its response.done (status failed) follows.
            mapper.error = EngineError("upstream_error", text)
        else:  # a request of ours was refused before the response began: the upstream's state is unknown
            raise UpstreamFailure(text)

    def _finish(self, link: Link, mapper: proto.ResponseMapper, *, cancelled: bool) -> Event:
        stats = mapper.stats
        if stats.t_done is None:
            stats.t_done = now()
        if mapper.status == "failed":
            self._engine.drop(self._conv.id)
            error = mapper.error or EngineError("upstream_error", "the upstream response failed")
            return ResponseDone("failed", None, stats, error)
        text = mapper.text()
        turn = Turn("assistant", [TextPart(text)], text=text, frames=stats.frames)
        self._conv.turns.append(turn)
        if mapper.item_id is not None and not cancelled:
            link.synced.append(_Synced(turn, mapper.item_id, list(mapper.deltas)))
        else:  # the upstream's copy cannot be named: resend the history next time
            self._engine.drop(self._conv.id)
        status = "cancelled" if cancelled or mapper.status == "cancelled" else "completed"
        return ResponseDone(status, turn, stats)
