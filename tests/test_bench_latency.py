"""scripts/bench_latency.py end to end on the tiny model, small enough for the suite:
one user, an audio and a video turn; and the engine-only comparison with a short answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(*args: str, tiny_dir: Path, timeout: int = 280) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/bench_latency.py", "--model", str(tiny_dir), "--quiet", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_server_mode_writes_json_markdown_and_plots(tiny_dir, tmp_path):
    out = tmp_path / "out"
    r = bench(
        "--concurrency", "1", "--turns", "2", "--video-turns", "1", "--turn-detection", "manual",
        "--answer-tokens", "6", "--answer-frames", "8", "--no-prefill-probe", "--out", str(out), tiny_dir=tiny_dir,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((out / "server.json").read_text())
    assert run["schema"] == 1 and run["mode"] == "server" and run["server"]["is_tiny"]
    assert [(x["turn"], x["kind"], x["error"]) for x in run["records"]] == [(1, "audio", None), (2, "video", None)]
    for rec in run["records"]:
        assert rec["audio_ttfp_ms"] > 0 and rec["first_delta_ms"] > 0 and rec["voice_to_voice_ms"] > 0
        assert rec["vad_wait_ms"] == 0.0  # manual commits: no VAD wait
        assert rec["frames"] == 8 and rec["stage_thinker_ttft_ms"] > 0 and rec["underruns"] >= 0
    assert {(row["concurrency"], row["kind"]) for row in run["summary"]} == {(1, "audio"), (1, "video")}
    assert run["summary"][0]["stats"]["audio_ttfp_ms"]["n"] == 1
    assert (out / "server.md").read_text().startswith("# Latency benchmark")
    for png in ("latency_cdf.png", "stage_waterfall.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "runs.jsonl").read_text().splitlines()) == 1
    assert "ttfp p50" in r.stdout and "234" in r.stdout  # the summary table
    assert run["extra"]["capacity"]["levels"]["1"]["inverse_rtf_p50"] > 0
    assert "capacity (audio turns, staggered arrivals, answers of 0.6 s)" in r.stdout


def test_engine_only_compares_with_stock(tiny_dir, tmp_path):
    out = tmp_path / "out"
    r = bench(
        "--engine-only", "--answer-tokens", "4", "--answer-frames", "6", "--reps", "1", "--visual", "none",
        "--turns", "2", "--out", str(out), "--no-plots", tiny_dir=tiny_dir,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((out / "engine_only.json").read_text())
    case = run["cases"]["audio"]
    ours, stock = case["runs"][0]["ours"], case["runs"][0]["stock"]
    assert ours["frames"] == 6 and ours["text_tokens"] == 4 and stock["text_tokens"] == 4
    assert ours["audio_ms"] == stock["audio_ms"]  # same answer length both ways
    assert 0 < ours["first_audio_ms"] < ours["total_ms"]
    assert case["first_audio_speedup"] > 0 and case["total_ratio"] > 0
    assert [t["turn"] for t in run["turns"]["per_turn"]] == [1, 2]
    talker = [t["talker_prefill_tokens"] for t in run["turns"]["per_turn"]]
    assert 9 < talker[1] < 2 * talker[0]  # turn 2's talker reads turn 1's user part from the cache
    assert run["prefill_tokens"]["10s"] > run["prefill_tokens"]["2s"] > 0
