"""Shared test fixtures.

Tests never reach the network or state outside the repository: the Hugging Face hub is
put in offline mode before anything imports it, and the tiny checkpoint is built into
pytest's temporary directory once per session.
"""

from __future__ import annotations

import os

# Set before transformers / huggingface_hub are imported: both read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import wave  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV as mono float32 in [-1, 1), with its sample rate."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, w.getnchannels())
        return pcm.mean(axis=1).astype(np.float32) / 32768.0, w.getframerate()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def load_wav():
    """`load_wav("hello_en_us.wav")` -> float32 mono samples at 16 kHz (name or path)."""

    def load(name: str | Path) -> np.ndarray:
        path = Path(name) if Path(name).is_absolute() else FIXTURES_DIR / name
        samples, rate = read_wav(path)
        assert rate == 16000, f"{path}: fixture clips are 16 kHz, got {rate}"
        return samples

    return load


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny random-weight Qwen3-Omni checkpoint, built once per test session."""
    from assistant import tiny

    return tiny.build(tmp_path_factory.mktemp("tiny") / "tiny-qwen3-omni")
