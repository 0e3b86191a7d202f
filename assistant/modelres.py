"""Which checkpoint `assistant serve --model` loads, and on which device and dtype.

`--model` takes:
- `auto` (default): the real Qwen/Qwen3-Omni-30B-A3B-Instruct when a CUDA device has
  enough free memory AND its weights are available (in the Hugging Face cache, or
  downloadable); otherwise the tiny random-weight checkpoint (assistant/tiny.py),
  built once and cached under the user's cache directory;
- `tiny`: always the tiny checkpoint; `tiny-thinking` and `tiny-captioner`: the tiny
  builds of the thinker-only Thinking and Captioner checkpoints;
- a local directory or a hub id: loaded as given.

No download is ever started here: availability is a local cache look-up plus, only
when the GPU could hold the model, one bounded metadata request to the hub.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .settings import Settings

log = logging.getLogger(__name__)

REAL_MODEL_ID = "Qwen/Qwen3-Omni-30B-A3B-Instruct"
# The bf16 Instruct weights are 65.7 GB; Qwen's README gives 78.85 GB as the minimum
# with 15 s of video (reference §6). Ask for a little more than that, free, on one device.
MIN_FREE_GPU_BYTES = 80 * 10**9
HUB_CHECK_TIMEOUT_S = 3.0
TINY_DIR_NAME = "tiny-qwen3-omni"
_BUILDER_KEY = "builder_digest"  # added to tiny.MARKER_FILE: which builder made this cache


@dataclass(frozen=True)
class ResolvedModel:
    path_or_id: str  # what to pass to from_pretrained
    is_tiny: bool  # random weights: speech is noise
    reason: str  # one line, for the log and /health


# ---------------------------------------------------------------------------- device


def device_and_dtype(settings: Settings):
    """(torch.device, torch.dtype): explicit settings win; `auto` means CUDA with bf16
    (the checkpoint's dtype) when CUDA is available, else CPU with fp32 (CPU bf16
    matmuls are slow and lossy on most CPUs)."""
    import torch

    if settings.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(settings.device)
    names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    names |= {"float32": torch.float32, "fp32": torch.float32}
    if settings.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif settings.dtype in names:
        dtype = names[settings.dtype]
    else:
        raise ValueError(f"unknown dtype {settings.dtype!r}: use auto, bfloat16, float16 or float32")
    return device, dtype


def cuda_free_bytes(settings: Settings) -> int | None:
    """Free memory on the device the model would use, or None without CUDA."""
    import torch

    if settings.device != "auto" and not settings.device.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda" if settings.device == "auto" else settings.device)
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


# ---------------------------------------------------------------------------- weights


def weights_cached(repo_id: str = REAL_MODEL_ID, cache_dir: str | Path | None = None) -> bool:
    """True when config.json, the shard index and every shard it names are in the HF
    cache (`cache_dir`, default: HF_HUB_CACHE). Local file look-ups only."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> str | None:
        hit = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        return hit if isinstance(hit, str) else None  # _CACHED_NO_EXIST or None: not there

    if cached("config.json") is None:
        return False
    index = cached("model.safetensors.index.json")
    if index is None:
        return cached("model.safetensors") is not None
    shards = set(json.loads(Path(index).read_text("utf-8"))["weight_map"].values())
    return all(cached(shard) is not None for shard in shards)


def weights_downloadable(repo_id: str = REAL_MODEL_ID, timeout_s: float = HUB_CHECK_TIMEOUT_S) -> tuple[bool, str]:
    """One bounded metadata request (no download). Offline mode means no."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    if constants.HF_HUB_OFFLINE:
        return False, "HF_HUB_OFFLINE=1"
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=timeout_s)
    except Exception as exc:  # any failure (DNS, refused, timeout, 401) means "not downloadable now"
        return False, f"the hub is not reachable ({type(exc).__name__})"
    return True, "downloadable from the hub"


def choose_auto(free_bytes: int | None, cached: bool, downloadable: tuple[bool, str] | None) -> tuple[bool, str]:
    """The `auto` rule as a pure function: (use the real model?, why)."""
    if free_bytes is None:
        return False, "no CUDA device"
    if free_bytes < MIN_FREE_GPU_BYTES:
        return False, (
            f"the CUDA device has {free_bytes / 1e9:.1f} GB free; "
            f"{REAL_MODEL_ID} needs at least {MIN_FREE_GPU_BYTES / 1e9:.0f} GB"
        )
    if cached:
        return True, f"CUDA device with {free_bytes / 1e9:.1f} GB free and the weights in the Hugging Face cache"
    ok, why = downloadable if downloadable is not None else (False, "not checked")
    if ok:
        return True, f"CUDA device with {free_bytes / 1e9:.1f} GB free; weights {why}"
    return False, f"the weights are not in the Hugging Face cache and cannot be downloaded: {why}"


# ---------------------------------------------------------------------------- tiny cache


def cache_root(settings: Settings) -> Path:
    """`--cache-dir`, else $XDG_CACHE_HOME/assistant, else ~/.cache/assistant."""
    if settings.cache_dir:
        return Path(settings.cache_dir).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "assistant"


def tiny_cache_dir(settings: Settings, variant: str = "instruct") -> Path:
    return cache_root(settings) / (TINY_DIR_NAME if variant == "instruct" else f"{TINY_DIR_NAME}-{variant}")


def builder_digest() -> str:
    """Identifies the builder: its source, its corpus, and the library versions whose
    initialisation and serialisation decide the bytes. A change to any of them makes
    a cached tiny checkpoint stale."""
    import torch
    import transformers

    from . import tiny, tiny_tokenizer

    digest = hashlib.sha256()
    for module in (tiny, tiny_tokenizer):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(resources.files("assistant").joinpath("data/tiny_corpus.txt").read_bytes())
    digest.update(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    return digest.hexdigest()


def _cached_digest(path: Path) -> str | None:
    from . import tiny

    try:
        marker = json.loads((path / tiny.MARKER_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    complete = (path / "config.json").exists() and any(path.glob("*.safetensors"))
    return marker.get(_BUILDER_KEY) if complete else None


@contextlib.contextmanager
def _lock(path: Path):
    """Serialise builders (two servers starting at once) with an advisory file lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_tiny(settings: Settings, variant: str = "instruct") -> tuple[Path, bool]:
    """The cached tiny checkpoint, built if missing or stale. Returns (path, built now)."""
    from . import tiny

    path = tiny_cache_dir(settings, variant)
    want = builder_digest()
    with _lock(path.with_name(path.name + ".lock")):
        if _cached_digest(path) == want:
            return path, False
        log.info("building the tiny Qwen3-Omni checkpoint in %s", path)
        tiny.build(path, variant)
        marker_path = path / tiny.MARKER_FILE
        marker = json.loads(marker_path.read_text("utf-8"))
        marker[_BUILDER_KEY] = want
        marker_path.write_text(json.dumps(marker) + "\n", "utf-8")
        return path, True


# ---------------------------------------------------------------------------- resolve


def _tiny(settings: Settings, why: str, variant: str = "instruct") -> ResolvedModel:
    path, built = ensure_tiny(settings, variant)
    reason = f"tiny random-weight checkpoint ({why}); {'built' if built else 'cached'} at {path}"
    log.warning("using the tiny random-weight Qwen3-Omni model: its speech is noise. %s", reason)
    return ResolvedModel(str(path), True, reason)


def resolve_model(settings: Settings) -> ResolvedModel:
    from . import tiny

    choice = settings.model.strip()
    if choice == "tiny":
        return _tiny(settings, "--model tiny")
    if choice in ("tiny-thinking", "tiny-captioner"):
        return _tiny(settings, f"--model {choice}", choice.removeprefix("tiny-"))
    if choice == "auto":
        free = cuda_free_bytes(settings)
        cached = free is not None and free >= MIN_FREE_GPU_BYTES and weights_cached()
        downloadable = None
        if free is not None and free >= MIN_FREE_GPU_BYTES and not cached:
            downloadable = weights_downloadable()
        use_real, why = choose_auto(free, cached, downloadable)
        if not use_real:
            return _tiny(settings, f"--model auto: {why}")
        log.info("using %s: %s", REAL_MODEL_ID, why)
        return ResolvedModel(REAL_MODEL_ID, False, f"--model auto: {why}")
    local = Path(choice).expanduser()
    if local.is_dir():
        is_tiny = tiny.is_tiny(local)
        kind = "tiny random-weight checkpoint" if is_tiny else "checkpoint"
        return ResolvedModel(str(local), is_tiny, f"local {kind} given by --model")
    return ResolvedModel(choice, False, "hub id given by --model")


def main(argv: list[str] | None = None) -> int:
    """`python -m assistant.modelres [tiny|resolve]`: build/reuse the cached tiny
    checkpoint (as `make tiny` does), or show what `--model` would resolve to."""
    from . import settings as settings_mod

    parser = argparse.ArgumentParser(prog="python -m assistant.modelres", description=main.__doc__)
    parser.add_argument("action", choices=["tiny", "resolve"], nargs="?", default="resolve")
    settings_mod.add_arguments(parser, only={"model", "device", "dtype", "cache_dir"})
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = settings_mod.from_sources(args)
    if args.action == "tiny":
        path, built = ensure_tiny(settings)
        print(f"{'built' if built else 'up to date'}: {path}")
        return 0
    resolved = resolve_model(settings)
    device, dtype = device_and_dtype(settings)
    print(json.dumps({**resolved.__dict__, "device": str(device), "dtype": str(dtype)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
