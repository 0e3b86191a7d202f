"""The engine interface: what the server, the benchmark and the tests program against.

One `Engine` owns one resident model (or, for scale-out, one upstream connection) and
serves many `Conversation`s. `Engine.respond()` returns a `Response`, an async iterator
of events:

    TextDelta*  AudioChunk*  ResponseDone        (text and audio deltas interleave;
                                                 a Thinking checkpoint's ReasoningDelta* come first)

With tools, calls follow the spoken text: ToolCallStarted, ToolCallDelta*, ToolCallDone
per call, before ResponseDone (toolcall.py).

`ResponseDone` is always the last event, also when the response was cancelled or failed;
errors never vanish inside a worker thread, they arrive as `ResponseDone(status="failed",
error=EngineError(...))`.

A `Conversation` is plain data: the server's session edits it (adds user turns, deletes
items, truncates after barge-in) and the engine reads it at the start of each response.
Audio out is PCM16 mono at 24 kHz, in chunks of whole 80 ms codec frames (the first
chunk is short by Code2Wav's 555-sample look-ahead, which later chunks make up).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

OUTPUT_SAMPLE_RATE = 24_000
INPUT_SAMPLE_RATE = 16_000
FRAME_SAMPLES = 1920  # one codec frame: 80 ms at 24 kHz
FRAME_MS = 80
VOICES = ("Ethan", "Chelsie", "Aiden")

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}"


def now() -> float:
    """The clock every timestamp uses (monotonic seconds)."""
    return time.monotonic()


# ---------------------------------------------------------------------------- sampling


@dataclass
class Sampling:
    """Sampling settings. Defaults mirror stock `generate()` (thinker: the checkpoint's
    generation config, i.e. greedy unless asked; talker: T=0.9, top-k 50, top-p 1.0,
    repetition penalty 1.05; code predictor: top-k 50, top-p 0.8 when sampling)."""

    greedy: bool = False
    seed: int | None = None
    # Thinker: None takes the checkpoint's generation_config.json (Thinking and Captioner:
    # T=0.6, top-p 0.95, top-k 20), else T=0.7, top-k 20, top-p 0.8, no penalty.
    thinker_temperature: float | None = None
    thinker_top_k: int | None = None
    thinker_top_p: float | None = None
    thinker_repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()  # the answer ends before the first of these strings (Chat Completions `stop`)
    talker_temperature: float = 0.9
    talker_top_k: int = 50
    talker_top_p: float = 1.0
    talker_repetition_penalty: float = 1.05
    min_tokens: int = 0  # text tokens before <|im_end|> is allowed (random weights end anywhere)
    max_tokens: int = 256  # text tokens, <|im_end|> included
    min_frames: int = 0  # codec frames before codec EOS is allowed
    max_frames: int = 600  # codec frames


# ---------------------------------------------------------------------------- conversation


@dataclass
class TextPart:
    text: str


@dataclass
class AudioPart:
    pcm: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int = INPUT_SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.sample_rate


@dataclass
class ImagePart:
    image: np.ndarray  # uint8 [H, W, 3] RGB


@dataclass
class VideoPart:
    frames: list[np.ndarray]  # uint8 [H, W, 3] RGB each
    timestamps_s: list[float]  # capture time of each frame, seconds from the turn's start
    # A camera+microphone turn: the turn's AudioPart was recorded with these frames and is
    # rendered time-interleaved with them (Qwen's audio-in-video layout, inputs.py); frame i
    # is then the camera at i / 2 s from the audio's start (timestamps_s[i] == i / 2).
    interleave_audio: bool = False
    # No frame will be added to this video (a camera turn past --max-camera-turn-s): early
    # prefill may then go on past its last grid, with the audio that follows it.
    complete: bool = False


Part = TextPart | AudioPart | ImagePart | VideoPart
Role = Literal["system", "user", "assistant", "tool"]


# Tool calling (toolcall.py): declared tools, the model's calls and their results.
@dataclass(frozen=True)
class Tool:
    name: str  # ^[a-zA-Z0-9_-]{1,64}$ (checked by the protocol layer)
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})  # JSON Schema


@dataclass(frozen=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None  # mode "function": the one tool to call
    parallel: bool = True  # False: at most one call per response (Chat Completions `parallel_tool_calls`)


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text as generated (partial when incomplete)
    call_id: str = ""  # the session's id for it
    complete: bool = True


@dataclass
class Turn:
    role: Role
    parts: list[Part]
    id: str = field(default_factory=lambda: new_id("item"))
    # Assistant turns: the text token ids spoken (after truncation, only those heard),
    # and the number of codec frames generated for them.
    token_ids: list[int] = field(default_factory=list)
    frames: int = 0
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)  # assistant turns: calls after the text
    call_id: str = ""  # role "tool": the call whose result this turn holds (text part: the output)

    def text_content(self) -> str:
        return self.text or "".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass
class Conversation:
    """History plus per-conversation settings. Plain data; not thread-safe: the owner
    (a server session) must not edit it while a response for it is running, except
    through `Response.cancel()`."""

    voice: str = "Ethan"
    instructions: str = ""
    sampling: Sampling = field(default_factory=Sampling)
    turns: list[Turn] = field(default_factory=list)
    id: str = field(default_factory=lambda: new_id("conv"))
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)

    def add_user(self, parts: list[Part], item_id: str | None = None) -> Turn:
        turn = Turn("user", list(parts), id=item_id or new_id("item"))
        self.turns.append(turn)
        return turn

    def add_assistant_text(self, text: str, item_id: str | None = None) -> Turn:
        turn = Turn("assistant", [TextPart(text)], id=item_id or new_id("item"), text=text)
        self.turns.append(turn)
        return turn

    def find(self, item_id: str) -> Turn | None:
        return next((t for t in self.turns if t.id == item_id), None)

    def delete(self, item_id: str) -> bool:
        turn = self.find(item_id)
        if turn is None:
            return False
        self.turns.remove(turn)
        return True


@dataclass
class TextJob:
    """One audio clip with a task prompt after it (Qwen's own, languages.py), answered in
    text: `Engine.transcribe`. `context` becomes a system message."""

    audio: AudioPart
    task: str
    context: str = ""
    max_tokens: int = 448
    min_tokens: int = 0
    temperature: float = 0.0  # 0: greedy
    # The live conversation the clip was committed to (a Realtime input transcription): the
    # engine may take the clip's audio-encoder output from that conversation's cache.
    conversation_id: str | None = None


# ---------------------------------------------------------------------------- events


@dataclass
class EngineError:
    code: str  # e.g. "engine_error", "out_of_memory", "invalid_input", "overloaded", "upstream_error"
    message: str


@dataclass
class ResponseStats:
    """Monotonic timestamps (seconds, `now()`) and counts for one response. Stage names
    follow the rows of Qwen3-Omni's Table 2 (arXiv 2509.17765)."""

    t_committed: float | None = None  # input committed (end of the user's turn)
    t_started: float | None = None  # the model worker picked the request up
    t_preprocessed: float | None = None  # processor + audio/vision encoders done
    t_thinker_first_token: float | None = None
    t_talker_first_frame: float | None = None  # talker prefill done, first code-0 sampled
    t_code_predictor_first_frame: float | None = None  # residual codebooks of frame 0 done
    t_first_audio: float | None = None  # first audio chunk handed out
    t_done: float | None = None
    prefill_tokens: int = 0
    context_trimmed_turns: int = 0  # oldest turns left out of the prompt to fit the context (context.py)
    talker_prefill_tokens: int = 0  # talker prompt positions prefilled (earlier user turns come from the cache)
    text_tokens: int = 0
    frames: int = 0
    audio_samples: int = 0
    frame_ms: list[float] = field(default_factory=list)  # compute time of each codec frame
    reasoning_tokens: int = 0  # of text_tokens, those in <think> spans (tags included)
    end_reason: str = ""  # "stop" (end of answer or a stop string) or "length" (max_tokens)
    # Transcription jobs (Engine.transcribe) only, else None: the log-probability of each
    # token the thinker chose, its end-of-turn token included (Picker.pick_scored).
    token_logprobs: list[float] | None = None

    def _ms(self, a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) * 1000.0, 3)

    def stage_ms(self) -> dict[str, float | None]:
        """Table 2's rows, each the time since the previous stage ended."""
        start = self.t_committed if self.t_committed is not None else self.t_started
        return {
            "queue": self._ms(start, self.t_started),
            "preprocessing": self._ms(self.t_started, self.t_preprocessed),
            "thinker_ttft": self._ms(self.t_preprocessed, self.t_thinker_first_token),
            "talker_ttft": self._ms(self.t_thinker_first_token, self.t_talker_first_frame),
            "code_predictor": self._ms(self.t_talker_first_frame, self.t_code_predictor_first_frame),
            "codec": self._ms(self.t_code_predictor_first_frame, self.t_first_audio),
        }

    @property
    def audio_ttfp_ms(self) -> float | None:
        start = self.t_committed if self.t_committed is not None else self.t_started
        return self._ms(start, self.t_first_audio)

    @property
    def audio_rtf(self) -> float | None:
        """Generation time over audio duration, from the first frame to the end."""
        if not self.audio_samples or self.t_talker_first_frame is None or self.t_done is None:
            return None
        return (self.t_done - self.t_talker_first_frame) / (self.audio_samples / OUTPUT_SAMPLE_RATE)

    def to_dict(self) -> dict:
        return {
            "audio_ttfp_ms": self.audio_ttfp_ms,
            "audio_rtf": self.audio_rtf,
            "stages_ms": self.stage_ms(),
            "prefill_tokens": self.prefill_tokens,
            "text_tokens": self.text_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "frames": self.frames,
            "audio_ms": round(self.audio_samples * 1000 / OUTPUT_SAMPLE_RATE, 1),
            "frame_ms_mean": round(sum(self.frame_ms) / len(self.frame_ms), 3) if self.frame_ms else None,
        }


@dataclass
class TextDelta:
    text: str
    token_id: int


@dataclass
class ReasoningDelta:
    """A Thinking checkpoint's reasoning (its `<think>` span, tags left out): never spoken,
    never part of the answer's text, and not kept in the history. Chat Completions stream
    it as `reasoning_content`; realtime sessions drop it (README, "Thinking")."""

    text: str
    token_id: int


@dataclass
class AudioChunk:
    pcm16: bytes  # little-endian int16 mono at OUTPUT_SAMPLE_RATE
    first_frame: int  # index of the first codec frame this chunk completes
    frames: int  # number of codec frames it completes

    @property
    def samples(self) -> int:
        return len(self.pcm16) // 2


@dataclass
class ResponseDone:
    status: Literal["completed", "cancelled", "failed"]
    turn: Turn | None  # the assistant turn added to the conversation (None if failed early)
    stats: ResponseStats
    error: EngineError | None = None


@dataclass
class ToolCallStarted:
    """The model opened call `index` (0-based in this response) of tool `name`."""

    index: int
    name: str


@dataclass
class ToolCallDelta:
    index: int
    delta: str  # more of the arguments' JSON text


@dataclass
class ToolCallDone:
    index: int
    name: str
    arguments: str  # the whole JSON text; partial when `complete` is False (cut off or cancelled)
    complete: bool


Event = TextDelta | ReasoningDelta | AudioChunk | ToolCallStarted | ToolCallDelta | ToolCallDone | ResponseDone


# ---------------------------------------------------------------------------- engine


@dataclass
class EngineInfo:
    kind: Literal["local", "upstream"]
    model: str  # hub id, path, or upstream URL
    device: str
    dtype: str
    is_tiny: bool  # random weights: speech is noise
    # Which Qwen3-Omni checkpoint (reference variants §1): instruct (speaks), thinking
    # (reasons first) or captioner (one audio clip in, a caption out); the last two are
    # the thinker alone and answer in text only.
    variant: str = "instruct"

    @property
    def audio_output(self) -> bool:
        return self.variant == "instruct"

    @property
    def input_modalities(self) -> list[str]:
        return ["audio"] if self.variant == "captioner" else ["text", "image", "audio", "video"]

    @property
    def output_modalities(self) -> list[str]:
        return ["text", "audio"] if self.audio_output else ["text"]


class Response(Protocol):
    id: str

    def __aiter__(self) -> AsyncIterator[Event]: ...

    def cancel(self) -> None:
        """Stop all stages within one talker step; a `ResponseDone(status="cancelled")`
        follows, and the assistant turn keeps what was generated so far."""


class Engine(Protocol):
    info: EngineInfo

    async def start(self) -> None:
        """Load (and warm up); returns when the engine can take traffic."""

    async def close(self) -> None: ...

    def respond(
        self,
        conversation: Conversation,
        *,
        t_committed: float | None = None,
        audio: bool = True,
        listener: bool = True,
    ) -> Response:
        """Start a response to the conversation as it is now. With `audio=False` only
        text is produced. `listener=False`: no one plays it as it streams (a one-shot
        request), so live responses go first. Raises nothing: failures arrive as the final event."""

    def prefill(self, conversation: Conversation, parts: list[Part]) -> bool:
        """A head start, fire and forget: `parts` is the user turn being spoken so far
        (not yet in the conversation). The engine may prefill what of it is final, so that
        the response after the commit has less left to do; False when it does nothing."""

    def transcribe(self, request: TextJob) -> Response:
        """A background text-only job on the resident model (transcription, translation):
        `TextDelta*` then `ResponseDone`, no audio, no talker. It has no live listener,
        so the worker runs it after every response's work (worker.py). Raises nothing:
        failures arrive as the final event."""

    def forget(self, conversation: Conversation) -> None:
        """The conversation is over: release what the engine keeps for it."""

    def truncate(self, conversation: Conversation, item_id: str, audio_end_ms: int) -> Turn:
        """The listener heard `audio_end_ms` of assistant item `item_id`: cut its text
        to what was spoken by then (one text token per codec frame, the talker's
        schedule) so the next turn sees only that. Raises KeyError/ValueError."""
