"""Settings: CLI flag > ASSISTANT_* environment > default; units in names; secrets masked."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from assistant import settings as settings_mod
from assistant.cli import build_parser
from assistant.settings import Settings


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_without_flags_or_env():
    s = settings_mod.from_sources(parse([]), env={})
    assert s == Settings()
    assert (s.host, s.port, s.model) == ("127.0.0.1", 8000, "auto")


def test_flag_beats_env_beats_default():
    env = {"ASSISTANT_PORT": "9001", "ASSISTANT_VAD_SILENCE_MS": "700", "ASSISTANT_VOICE": "Aiden"}
    s = settings_mod.from_sources(parse(["--port", "9100"]), env=env)
    assert s.port == 9100  # flag wins over env
    assert s.vad_silence_ms == 700  # env wins over default, converted to int
    assert s.voice == "Aiden"
    assert s.max_session_s == Settings().max_session_s  # neither: default


def test_types_are_converted():
    s = settings_mod.from_sources(parse(["--vad-threshold", "0.25"]), env={"ASSISTANT_MAX_SESSIONS": "3"})
    assert s.vad_threshold == 0.25 and isinstance(s.vad_threshold, float)
    assert s.max_sessions == 3 and isinstance(s.max_sessions, int)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("false", False), ("No", False)],
)
def test_bool_env_parsing(text, value):
    assert settings_mod.from_sources(None, env={"ASSISTANT_WARMUP": text}).warmup is value


def test_bad_bool_is_an_error():
    with pytest.raises(ValueError, match="not a boolean"):
        settings_mod.from_sources(None, env={"ASSISTANT_WARMUP": "maybe"})


def test_bool_flags_beat_env_both_ways():
    assert settings_mod.from_sources(parse(["--no-warmup"]), env={"ASSISTANT_WARMUP": "1"}).warmup is False
    assert settings_mod.from_sources(parse(["--warmup"]), env={"ASSISTANT_WARMUP": "0"}).warmup is True


def test_redacted_masks_the_api_key():
    s = settings_mod.from_sources(None, env={"ASSISTANT_API_KEY": "sk-very-secret"})
    assert s.api_key == "sk-very-secret"
    shown = settings_mod.redacted(s)
    assert shown["api_key"] == "***"
    assert "sk-very-secret" not in repr(shown)
    assert shown["port"] == 8000
    assert settings_mod.redacted(Settings())["api_key"] == ""  # nothing to hide: stays empty


def test_every_field_has_a_unit_or_is_unitless_by_nature():
    # Durations carry their unit in the name (_ms, _s); a bare "timeout" or "delay" would be ambiguous.
    for f in fields(Settings):
        if any(word in f.name for word in ("timeout", "delay", "silence", "padding", "duration")):
            assert f.name.endswith(("_ms", "_s")), f.name


def test_serve_help_lists_flags_and_env_names(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--vad-silence-ms" in out and "ASSISTANT_VAD_SILENCE_MS" in out
    assert "--model" in out and "ASSISTANT_MODEL" in out


def test_chunk_ramp():
    assert settings_mod.chunk_ramp(Settings()) == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError):
        settings_mod.chunk_ramp(Settings(chunk_ramp_frames="1,0"))


def test_settings_survive_the_environment_of_a_child_server():
    # The benchmark starts `assistant serve` as a child process configured by ASSISTANT_* variables.
    from assistant.bench.server import settings_env

    s = Settings(port=0, vad_silence_ms=321, warmup=False, cuda_graphs=False, max_context_tokens=999, model="tiny")
    assert settings_mod.from_sources(None, env=settings_env(s)) == s
    assert settings_mod.from_sources(None, env=settings_env(Settings())) == Settings()
