"""scripts/gpu_bench.py runs end to end (on the tiny config, CPU) and writes its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_smoke_on_tiny_config(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_bench.py", "--size", "tiny", "--device", "cpu", "--turns", "1", "--frames", "4",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (out / "gpu_bench.md").read_text()
    assert "| total |" in table and "234/547" in table and "728/1517" in table
    results = json.loads((out / "gpu_bench.json").read_text())["results"]
    assert set(results) == {"audio@1", "video@1", "audio@4", "video@4"}
    assert all(r["status"] == "completed" and r["audio_ttfp_ms"] > 0 for rs in results.values() for r in rs)
    assert len(results["audio@4"]) == 4
    # Graphs off vs on, side by side (on CPU both columns are eager and say so).
    assert "| predictor_greedy_frame |" in table and "| responses c=1: frame_ms |" in table and "no CUDA" in table
    compare = json.loads((out / "gpu_bench.json").read_text())["graphs_off_on"]
    assert set(compare["micro_ms"]) == set(compare["responses"]) == {"off", "on"}
    assert all(v > 0 for side in compare["micro_ms"].values() for v in side.values())
