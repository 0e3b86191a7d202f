"""scripts/gpu_check.sh --dry-run: the GPU check's own steps on CPU with the tiny model, so that the
script is not what fails on the GPU machine. It writes its JSON and Markdown to a temporary directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_gpu_check_dry_run_writes_every_step(tmp_path):
    out = tmp_path / "gpu"
    args = ["--dry-run", "--out-dir", str(out), "--turns", "1", "--frames", "4", "--iters", "2",
            "--tests-timeout-s", "600"]  # fmt: skip
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", *args], cwd=ROOT, capture_output=True, text=True, timeout=880,
        env=dict(os.environ, PYTHON=sys.executable),
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    [json_path] = out.glob("*-dry-run.json")
    [md_path] = out.glob("*-dry-run.md")
    data = json.loads(json_path.read_text())
    assert data["meta"]["dry_run"] is True and json_path.stem == md_path.stem
    steps = data["steps"]
    assert list(steps) == ["versions", "a", "b", "c", "d"]  # written in order of importance
    assert steps["versions"]["torch"] != "missing" and steps["versions"]["transformers"] != "missing"
    a = steps["a"]
    assert a["returncode"] == 0 and a["counts"]["failed"] == a["counts"]["error"] == 0
    assert a["counts"]["passed"] >= 5 and any("bf16" in name for name in a["tests"])  # both dtypes ran
    rows = steps["b"]["rows"]
    assert set(rows) == {"code predictor (greedy frame)", "Code2Wav (1-frame window)", "Code2Wav (50-frame window)",
                         "talker step (batch 1)"}  # fmt: skip
    assert all(r["equal"] and r["graph_error"] is None and r["off_ms"] > 0 and r["on_ms"] > 0 for r in rows.values())
    assert rows["talker step (batch 1)"]["same_greedy_code0_as_stock"]
    c = steps["c"]
    assert set(c["results"]) == {"audio@1", "video@1", "audio@4", "video@4"} and not c["skipped_over_budget"]
    assert all(r["status"] == "completed" for recs in c["results"].values() for r in recs)
    assert all(v is not None and v > 0 for v in c["rtf"].values())
    d = steps["d"]
    assert d["after_load"]["peak_rss_gb"] > 0 and d["eight_conversations"]["cached_conversations"] >= 8
    assert "kv_budget_full" in d
    md = md_path.read_text()
    heads = [md.index(h) for h in ("## Versions", "## (a)", "## (b)", "## (c)", "## (d)")]
    assert heads == sorted(heads) and "234/547" in md and "728/1517" in md
