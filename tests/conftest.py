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


# ---------------------------------------------------------------------------- network namespaces (tests/netns.py)
# Tests marked `netns` run in a child pytest inside a private network namespace (one child per module); the
# parent reports the child's per-test outcomes. Inside the child they run normally and get `netns_addrs`.
import netns as _netns  # noqa: E402

_NETNS_TEST_TIMEOUT_S = 150  # per test inside the child; the child as a whole gets their sum plus start-up
_netns_runs: dict[str, _netns.ChildRun] = {}


def _netns_batch(item) -> list:
    module = item.nodeid.split("::")[0]
    return [i for i in item.session.items if i.nodeid.split("::")[0] == module and i.get_closest_marker("netns")]


def _netns_child_timeout_s(batch: list) -> int:
    return _NETNS_TEST_TIMEOUT_S * len(batch) + 60


def pytest_collection_finish(session):
    """Give the first `netns` test of each module (the one that runs the child) a timeout covering the batch."""
    if _netns.inside():
        return
    seen: set[str] = set()
    for item in session.items:
        module = item.nodeid.split("::")[0]
        if item.get_closest_marker("netns") and module not in seen:
            seen.add(module)
            item.add_marker(pytest.mark.timeout(_netns_child_timeout_s(_netns_batch(item)) + 30))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if item.get_closest_marker("netns") is None or _netns.inside() or _netns.unavailable_reason():
        return None  # normal run; the `netns_addrs` fixture skips with the reason
    module = item.nodeid.split("::")[0]
    if module not in _netns_runs:
        batch = _netns_batch(item)
        _netns_runs[module] = _netns.run_pytest_inside(
            [i.nodeid for i in batch],
            rootdir=item.config.rootpath,
            timeout_s=_netns_child_timeout_s(batch),
            per_test_timeout_s=_NETNS_TEST_TIMEOUT_S,
        )
    run = _netns_runs[module]
    result = run.results.get(_netns.junit_key(item.nodeid))
    if result is None:
        result = _netns.ChildResult(
            "failed", f"no result from the namespace child (rc {run.returncode}):\n" + run.output[-6000:], 0.0
        )
    _netns_report(item, result)
    # This replaces pytest's own protocol, which would tear down what the next item does not
    # share (runner.runtestprotocol); without it, a module fixture set up by an earlier
    # non-netns test stays on the stack and the next module errors with "previous item was
    # not torn down properly".
    item.session._setupstate.teardown_exact(nextitem)
    return True


def _netns_report(item, result) -> None:
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    keywords = {k: 1 for k in item.keywords}
    for when in ("setup", "call", "teardown"):
        outcome, longrepr, duration = "passed", None, 0.0
        if result.outcome == "skipped" and when == "setup":
            outcome, longrepr = "skipped", (str(item.path), item.location[1] or 0, result.message)
        elif result.outcome == "failed" and when == "call":
            outcome, longrepr, duration = (
                "failed",
                "[inside the network namespace]\n" + result.message,
                result.duration_s,
            )
        elif result.outcome == "skipped" and when == "call":
            continue
        elif when == "call":
            duration = result.duration_s
        sections = (
            [("Captured output (namespace child)", result.output)] if when == "call" and result.output.strip() else []
        )
        report = pytest.TestReport(
            item.nodeid, item.location, keywords, outcome, longrepr, when, sections=sections, duration=duration
        )
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


@pytest.fixture(scope="session")
def netns_addrs() -> _netns.Netns:
    """The private addresses of the namespace this test runs in (only inside the child)."""
    if not _netns.inside():
        pytest.skip(_netns.unavailable_reason() or "mark the test `netns` so that it runs inside a namespace")
    return _netns.Netns()
