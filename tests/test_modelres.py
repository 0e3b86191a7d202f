"""`--model` resolution: auto/tiny/path/hub id, the tiny build cache, device and dtype."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from assistant import modelres, tiny
from assistant.settings import Settings

GB = 10**9


@pytest.fixture
def cache_settings(tmp_path) -> Settings:
    return Settings(cache_dir=str(tmp_path / "cache"))


def _mtime_ns(path) -> int:
    return (path / "model.safetensors").stat().st_mtime_ns


def _seed_cache(settings: Settings, tiny_dir, digest: str):
    """Put a copy of the session's tiny build in the cache, stamped with `digest`."""
    target = modelres.tiny_cache_dir(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_dir, target)
    marker = target / tiny.MARKER_FILE
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {"builder_digest": digest}))
    return target


def test_current_cache_is_reused(cache_settings, tiny_dir):
    target = _seed_cache(cache_settings, tiny_dir, modelres.builder_digest())
    before = _mtime_ns(target)
    assert modelres.ensure_tiny(cache_settings) == (target, False)
    assert _mtime_ns(target) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_auto_without_cuda_builds_tiny_once_then_reuses(cache_settings, tiny_dir, caplog):
    """A stale cache (another builder's digest) and an empty one take the same branch:
    build. One real build here; the next resolution reuses it."""
    caplog.set_level(logging.INFO, logger="assistant.modelres")
    expected = _seed_cache(cache_settings, tiny_dir, "from-an-older-builder")
    first = modelres.resolve_model(cache_settings)
    assert first.is_tiny and first.path_or_id == str(expected)
    assert "no CUDA device" in first.reason and "built" in first.reason
    assert any("tiny random-weight" in r.message and "noise" in r.message for r in caplog.records)
    marker = json.loads((expected / tiny.MARKER_FILE).read_text())
    assert marker["builder_digest"] == modelres.builder_digest()
    assert tiny.weights_digest(expected) == tiny.weights_digest(tiny_dir)  # deterministic rebuild
    built_at = _mtime_ns(expected)

    second = modelres.resolve_model(cache_settings)
    assert second.path_or_id == first.path_or_id and second.is_tiny
    assert "cached" in second.reason
    assert _mtime_ns(expected) == built_at  # not rebuilt


def test_empty_or_incomplete_cache_is_not_trusted(cache_settings):
    target = modelres.tiny_cache_dir(cache_settings)
    assert modelres._cached_digest(target) is None  # nothing there yet
    target.mkdir(parents=True)
    (target / tiny.MARKER_FILE).write_text(json.dumps({"builder_digest": modelres.builder_digest()}))
    assert modelres._cached_digest(target) is None  # marker but no weights: an interrupted copy


def test_tiny_local_dir_and_hub_id(cache_settings, tiny_dir, tmp_path):
    local = modelres.resolve_model(Settings(model=str(tiny_dir)))
    assert local == modelres.ResolvedModel(str(tiny_dir), True, local.reason)
    assert "local" in local.reason

    other = tmp_path / "some-checkpoint"
    other.mkdir()
    assert modelres.resolve_model(Settings(model=str(other))).is_tiny is False

    hub = modelres.resolve_model(Settings(model="Qwen/Qwen3-Omni-30B-A3B-Instruct"))
    assert hub.path_or_id == "Qwen/Qwen3-Omni-30B-A3B-Instruct" and not hub.is_tiny


def test_cache_root_follows_setting_then_xdg(monkeypatch, tmp_path):
    assert modelres.cache_root(Settings(cache_dir=str(tmp_path))) == tmp_path
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert modelres.tiny_cache_dir(Settings()) == tmp_path / "xdg" / "assistant" / "tiny-qwen3-omni"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert modelres.cache_root(Settings()) == tmp_path / "home" / ".cache" / "assistant"


@pytest.mark.parametrize(
    ("free", "cached", "downloadable", "use_real", "says"),
    [
        (None, True, None, False, "no CUDA device"),
        (40 * GB, True, None, False, "40.0 GB free"),
        (139 * GB, True, None, True, "Hugging Face cache"),
        (139 * GB, False, (True, "downloadable from the hub"), True, "downloadable"),
        (139 * GB, False, (False, "HF_HUB_OFFLINE=1"), False, "HF_HUB_OFFLINE=1"),
    ],
)
def test_auto_rule(free, cached, downloadable, use_real, says):
    real, why = modelres.choose_auto(free, cached, downloadable)
    assert real is use_real
    assert says in why


def test_offline_mode_means_not_downloadable():
    # conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported; no request is made.
    assert modelres.weights_downloadable() == (False, "HF_HUB_OFFLINE=1")


def _fake_hub_cache(root, files: dict[str, str]) -> None:
    """The Hugging Face cache layout: models--ORG--NAME/{refs/main, snapshots/REV/...}."""
    repo = root / ("models--" + modelres.REAL_MODEL_ID.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)


def test_weights_cached_needs_every_shard(tmp_path):
    index = json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    )
    partial = tmp_path / "partial"
    _fake_hub_cache(
        partial, {"config.json": "{}", "model.safetensors.index.json": index, "model-00001-of-00002.safetensors": ""}
    )
    assert modelres.weights_cached(cache_dir=partial) is False

    full = tmp_path / "full"
    _fake_hub_cache(
        full,
        {
            "config.json": "{}",
            "model.safetensors.index.json": index,
            "model-00001-of-00002.safetensors": "",
            "model-00002-of-00002.safetensors": "",
        },
    )
    assert modelres.weights_cached(cache_dir=full) is True
    assert modelres.weights_cached(cache_dir=tmp_path / "empty") is False


def test_device_and_dtype():
    device, dtype = modelres.device_and_dtype(Settings(device="cpu"))
    assert (device, dtype) == (torch.device("cpu"), torch.float32)
    assert modelres.device_and_dtype(Settings(device="cpu", dtype="bfloat16"))[1] == torch.bfloat16  # explicit wins
    auto_device, auto_dtype = modelres.device_and_dtype(Settings())
    if torch.cuda.is_available():
        assert (auto_device.type, auto_dtype) == ("cuda", torch.bfloat16)
    else:
        assert (auto_device.type, auto_dtype) == ("cpu", torch.float32)
    assert modelres.device_and_dtype(Settings(device="cuda:1"))[0] == torch.device("cuda", 1)
    assert modelres.device_and_dtype(Settings(device="cuda:0", dtype="auto"))[1] == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        modelres.device_and_dtype(Settings(dtype="int8"))


def test_cpu_device_never_picks_the_real_model(cache_settings):
    assert modelres.cuda_free_bytes(Settings(device="cpu")) is None
