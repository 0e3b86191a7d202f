"""One settings object, built from CLI flags and ASSISTANT_* environment variables.

Precedence, as in uvicorn: an explicit CLI flag beats the environment, which beats the
default. Every field's name carries its unit (`vad_silence_ms`, `max_session_s`), and
its flag is the same name with dashes (`--vad-silence-ms`); its variable is upper case
with the prefix (`ASSISTANT_VAD_SILENCE_MS`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any

ENV_PREFIX = "ASSISTANT_"


def opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Settings:
    # Server
    host: str = opt("127.0.0.1", "address to bind; a non-loopback host needs --api-key or --allow-insecure-bind")
    port: int = opt(8000, "TCP port (0 picks a free one)")
    api_key: str = opt("", "require this key as 'Authorization: Bearer KEY' (except on / and /health)", secret=True)
    allow_insecure_bind: bool = opt(False, "allow a non-loopback --host without an API key")
    allowed_origins: str = opt(
        "", "comma-separated browser origins allowed on websocket upgrades ('' = same host only, '*' = any)"
    )
    client_secret_ttl_s: int = opt(600, "default lifetime of a client secret from POST /v1/realtime/client_secrets")
    ice_servers: str = opt(
        "",
        'STUN/TURN servers for WebRTC, the server\'s peer and the page alike, as JSON: [{"urls": ["turn:HOST:3478"], '
        '"username": "U", "credential": "P"}] (comma-separated URLs, turn:U:P@HOST:3478, still work; none by default)',
        secret=True,
    )
    log_level: str = opt("info", "logging level")
    # HTTPS and reverse proxies (docs/deploy.md)
    ssl_certfile: str = opt("", "serve HTTPS with this PEM certificate (chain), as uvicorn's --ssl-certfile")
    ssl_keyfile: str = opt("", "the certificate's PEM private key, as uvicorn's --ssl-keyfile ('' = in the certfile)")
    ssl_self_signed: bool = opt(
        False, "serve HTTPS with a self-signed certificate for this host's names and addresses (made once, cached)"
    )
    root_path: str = opt("", "path prefix a reverse proxy serves this server under, e.g. /assistant (proxy strips it)")
    # Model
    model: str = opt(
        "auto", "'auto', 'tiny', 'tiny-thinking', 'tiny-captioner', a hub id or a local checkpoint directory"
    )
    device: str = opt("auto", "'auto', 'cpu' or 'cuda[:N]'")
    dtype: str = opt("auto", "'auto' (bf16 on CUDA, fp32 on CPU), 'bfloat16', 'float16' or 'float32'")
    attn_implementation: str = opt("sdpa", "attention implementation: 'sdpa', 'eager' or 'flash_attention_2'")
    cuda_graphs: bool = opt(
        True,
        "on CUDA, replay the code predictor and Code2Wav from CUDA graphs (--no-cuda-graphs: eager); CPU ignores it",
    )
    # Talker CUDA graph (issue 17): off until a GPU run shows equality and a speed-up (scripts/gpu_check.sh)
    talker_cuda_graph: bool = opt(
        False, "on CUDA, replay the talker's solo decode step from a CUDA graph over a static KV; CPU ignores it"
    )
    cache_dir: str = opt("", "where the tiny checkpoint is built ('' = the user cache directory)")
    warmup: bool = opt(True, "run one short response before accepting traffic")
    # Checkpoint variants (Instruct, Thinking, Captioner) and Chat Completions
    model_variant: str = opt(
        "auto", "'auto' (from the checkpoint's name and config), 'instruct', 'thinking' or 'captioner'"
    )
    caption_piece_s: float = opt(
        30.0, "Captioner: longer clips are captioned in pieces of at most this, cut at silences"
    )
    max_chat_responses: int = opt(
        1, "Chat Completions answered at once; more wait their turn (live sessions keep the model first)"
    )
    # Upstream (scale-out): serve every conversation from a remote OpenAI-Realtime server instead of a local model
    upstream_url: str = opt(
        "",
        "ws(s)://HOST:PORT/v1/realtime of an OpenAI-Realtime server to use instead of a local model",
        aliases=("--upstream",),
    )
    upstream_api_key: str = opt("", "sent to the upstream as 'Authorization: Bearer KEY'", secret=True)
    upstream_model: str = opt("", "model name for the upstream's ?model= query ('' = none)")
    upstream_input_rate_hz: int = opt(
        24_000, "PCM16 rate the upstream takes: 24000 (OpenAI GA; vLLM-Omni's OpenAI handler) or 16000"
    )
    upstream_connect_timeout_s: float = opt(10.0, "connecting to the upstream (and its session.created)")
    upstream_event_timeout_s: float = opt(60.0, "a response fails if the upstream sends nothing for this long")
    # Engine
    voice: str = opt("Ethan", "default voice: Ethan, Chelsie or Aiden")
    max_answer_tokens: int = opt(256, "upper bound on text tokens per answer")
    max_answer_frames: int = opt(600, "upper bound on 80 ms codec frames per answer")
    min_answer_tokens: int = opt(0, "suppress end-of-answer before this many text tokens (tests, benchmarks)")
    min_answer_frames: int = opt(0, "suppress end-of-speech before this many codec frames (tests, benchmarks)")
    greedy: bool = opt(False, "greedy decoding: the same input gives the same answer (tests, soak)")
    # Up to 16 frames (1.28 s), not 25: a chunk decode is one worker step that nothing preempts,
    # and on the tiny CPU model 4 rows of 25 frames took 100-200 ms (4.0 ms a frame against 2.8
    # at 8 or 16 frames), which other users' first packets and low listeners waited behind. One
    # row loses 0.25 ms a frame (1.0 against 0.74), next to a frame's 10 ms of talker work.
    chunk_ramp_frames: str = opt("1,2,4,8,16", "codec frames per audio chunk, ramping up (comma-separated)")
    codec_left_context_frames: int = opt(
        0,
        "0: exact streaming Code2Wav (its state carried between chunks); N > 0: decode each chunk again with N "
        "frames of left context, stock chunked_decode's approximation (25 there), with CUDA graphs per window",
    )
    engine_queue_size: int = opt(64, "bound on requests waiting for the model worker")
    audio_window_s: int = opt(
        2,
        "audio-encoder attention window in whole seconds (checkpoint: 8); complete windows are prefilled while the user speaks (0 = off)",
    )
    max_context_tokens: int = opt(
        0,
        "prompt + answer token budget; over it the oldest exchanges are dropped to half of it (0 = the model's context)",
    )
    conversation_cache_size: int = opt(16, "conversations whose thinker KV cache is kept between turns (0 = off)")
    cpu_threads: int = opt(
        1,
        "torch intra-op threads when the model runs on CPU; the tiny model's ops are too small to split, "
        "and OpenMP barriers cost more than a second thread gives",
    )
    max_batch_responses: int = opt(
        8, "decode steps of up to this many concurrent responses run as one batched forward (1 = never batch)"
    )
    schedule_guard_ms: int = opt(
        160, "a response with less audio than this buffered ahead of playback is stepped before new first packets"
    )
    schedule_first_packet_target_ms: int = opt(
        0,
        "a first packet's deadline after its commit: it goes before every listener that will still have audio "
        "then, and after those that ran dry before it",
    )
    # Memory budget (issue #17): bytes of the caches that grow with conversations (engine/budget.py)
    kv_cache_gb: float = opt(
        0.0,
        "budget in GB (1e9 bytes) for KV caches of live responses, idle conversations and early prefill; past it "
        "idle conversations are evicted (LRU) and new sessions refused (0 = auto: on CUDA the memory free after "
        "warm-up less max(4 GiB, a tenth of the card), on CPU 2 GB)",
    )
    # Transcription and translation (Realtime input transcription, /v1/audio/*)
    transcription_max_tokens: int = opt(448, "upper bound on text tokens per transcribed turn or 30 s piece")
    transcription_min_tokens: int = opt(0, "suppress the end of a transcript before this many tokens (tests)")
    max_audio_upload_bytes: int = opt(
        25 * 1024 * 1024, "largest file /v1/audio/transcriptions and /translations take (HTTP 413 above)"
    )
    max_audio_piece_s: int = opt(30, "long uploads are cut at silences into pieces of at most this many seconds")
    max_audio_requests: int = opt(4, "concurrent /v1/audio requests; more get HTTP 503")
    # Turn-taking
    vad_threshold: float = opt(0.5, "Silero speech probability threshold")
    vad_prefix_padding_ms: int = opt(300, "audio kept before detected speech")
    vad_silence_ms: int = opt(500, "silence that ends a turn")
    echo_guard_ms: int = opt(300, "ignore barge-in this long after the assistant starts speaking")
    vad_min_speech_ms: int = opt(64, "speech must last this long before it counts as a turn start (clicks do not)")
    # Camera
    image_fps: float = opt(
        2.0, "camera frames kept per second (Qwen3-Omni reads video at 2 fps); extra frames are dropped"
    )
    max_camera_turn_s: int = opt(
        20, "camera video covers at most this much of a spoken turn, at 2 fps; the rest is audio only (0 = no camera)"
    )
    max_image_pixels: int = opt(16_777_216, "largest image accepted (width x height); larger ones get an error")
    # Websocket transport
    ws_outbound_queue_events: int = opt(4096, "events queued for a slow websocket client before it is disconnected")
    # Limits
    max_sessions: int | str = opt(
        "auto",
        "concurrent sessions; more get HTTP 503 / session_limit_reached. 'auto': admit while the projected load "
        "stays under --load-threshold (measured at warm-up; without warm-up, or with --upstream, 8)",
    )
    # Admission by measured load (issue #19)
    load_threshold: float = opt(0.8, "--max-sessions auto admits a session while the projected load stays under this")
    first_packet_burst_ratio: float = opt(
        2.0,
        "--max-sessions auto admits a session while the first packets of all sessions committing at once are "
        "projected within this multiple of one alone (measured at warm-up; 0 = no such bound)",
    )
    max_session_s: int = opt(1800, "maximum session duration (0 = none)")
    idle_timeout_s: int = opt(
        300, "close a session without client events, input audio or a response for this long (0 = never)"
    )
    max_input_audio_s: int = opt(120, "maximum buffered input audio per turn")
    max_conversation_items: int = opt(200, "oldest items are dropped past this count")
    max_conversation_video_frames: int = opt(
        240,
        "camera frames a conversation keeps (2 per second of camera turn); past it the oldest camera turns "
        "keep only their audio, until half remain",
    )
    # Graceful drain and WebRTC liveness
    drain_timeout_s: float = opt(
        30.0, "on SIGTERM: refuse new sessions, let answers in progress finish for up to this long, then close"
    )
    webrtc_consent_timeout_s: float = opt(
        30.0, "a WebRTC peer that answers no ICE consent check (RFC 7675) for about this long is gone"
    )


def _parse_value(kind: Any, text: str) -> Any:
    if kind in (bool, "bool"):
        value = text.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean: {text!r}")
    if kind in (int, "int"):
        return int(text)
    if kind == "int | str":  # a number, or a word such as 'auto'
        return int(text) if text.strip().lstrip("-").isdigit() else text.strip()
    if kind in (float, "float"):
        return float(text)
    return text


def add_arguments(parser: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    """Add one flag per settings field (or per field in `only`). Defaults stay unset so
    that the environment can fill what the command line does not say."""
    for f in fields(Settings):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        help_text = f"{f.metadata['help']} (env {env}; default {f.default!r})"
        if f.type in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            aliases = f.metadata.get("aliases", ())
            parser.add_argument(flag, *aliases, dest=f.name, default=None, help=help_text, metavar=f.name.upper())


def from_sources(
    args: argparse.Namespace | None = None, env: dict[str, str] | None = None, **overrides: Any
) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is None:
            raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is None:
            continue
        values[f.name] = raw if not isinstance(raw, str) else _parse_value(f.type, raw)
    values.update(overrides)
    return Settings(**values)


def redacted(settings: Settings) -> dict[str, Any]:
    """The settings as a dict, with secrets masked: safe to log."""
    out = dataclasses.asdict(settings)
    for f in fields(Settings):
        if f.metadata.get("secret") and out[f.name]:
            out[f.name] = "***"
    return out


def chunk_ramp(settings: Settings) -> list[int]:
    ramp = [int(x) for x in settings.chunk_ramp_frames.split(",") if x.strip()]
    if not ramp or any(x < 1 for x in ramp):
        raise ValueError(f"chunk_ramp_frames must be positive integers, got {settings.chunk_ramp_frames!r}")
    return ramp
