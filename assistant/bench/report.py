"""Benchmark output: the run's JSON object, a Markdown summary, PNG plots, a console table.

JSON keys are stable (`SCHEMA` bumps when they change): one object per run, written to
`<out>/<mode>.json` and appended as one line to `<out>/runs.jsonl`.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from . import metrics

SCHEMA = 1
STAGES = ("queue", "preprocessing", "thinker_ttft", "talker_ttft", "code_predictor", "codec")
# Qwen3-Omni Table 2 at concurrency 1, audio / video (ms): the rows our stages map onto.
QWEN_TABLE2 = {
    "audio": {"preprocessing": 72, "thinker_ttft": 88, "talker_ttft": 57, "code_predictor": 14, "codec": 3},
    "video": {"preprocessing": 160, "thinker_ttft": 160, "talker_ttft": 210, "code_predictor": 14, "codec": 3},
}
TURN_KEYS = (
    "audio_ttfp_ms",
    "first_delta_ms",
    "voice_to_voice_ms",
    "v2v_minus_vad_ms",
    "vad_wait_ms",
    "audio_rtf",
    "client_rtf",
    "underruns",
    "stall_ms",
    "frames",
    "prefill_tokens",
    *(f"stage_{s}_ms" for s in STAGES),
)


def environment() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    import os

    import torch

    return {
        "git_commit": commit or None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def summarize_server(records: list[dict]) -> list[dict]:
    """One row per (concurrency, kind): percentiles of every per-turn metric."""
    rows = []
    for (conc, kind), recs in metrics.group(records, "concurrency", "kind").items():
        ok = [r for r in recs if r.get("error") is None]
        refused = sum(1 for r in recs if r.get("status") == "refused")
        stats = metrics.summarize(ok, TURN_KEYS)
        target = metrics.target_ms(kind)
        p50 = stats["audio_ttfp_ms"]["p50"]
        rows.append(
            {
                "concurrency": conc,
                "kind": kind,
                "turns": len(recs),
                "failed": len(recs) - len(ok) - refused,
                "refused": refused,  # users that admission control turned away (one record each)
                "underruns_total": sum(r.get("underruns") or 0 for r in ok),
                "target_ms": target,
                "ttfp_p50_within_target": None if p50 is None else p50 <= target,
                "frames_min": min((r["frames"] for r in ok if r.get("frames") is not None), default=None),
                "frames_max": max((r["frames"] for r in ok if r.get("frames") is not None), default=None),
                "stats": stats,
            }
        )
    return rows


def write_json(out_dir: Path, mode: str, run: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{mode}.json"
    path.write_text(json.dumps(run, indent=1) + "\n")
    with (out_dir / "runs.jsonl").open("a") as f:
        f.write(json.dumps(run, separators=(",", ":")) + "\n")
    return path


# ---------------------------------------------------------------------------- tables


def _f(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


SERVER_COLUMNS = (
    "conc",
    "kind",
    "turns",
    "ttfp p50",
    "ttfp p90",
    "ttfp p99",
    "1st delta p50",
    "v2v p50",
    "v2v p90",
    "vad wait p50",
    "rtf p50",
    "underruns",
    "target",
)


def server_table(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        s = r["stats"]
        verdict = {True: "met", False: "missed", None: "-"}[r["ttfp_p50_within_target"]]
        out.append(
            [
                str(r["concurrency"]),
                r["kind"],
                f"{r['turns']}"
                + (f" ({r['failed']} failed)" if r["failed"] else "")
                + (f" ({r['refused']} refused)" if r.get("refused") else ""),
                _f(s["audio_ttfp_ms"]["p50"]),
                _f(s["audio_ttfp_ms"]["p90"]),
                _f(s["audio_ttfp_ms"]["p99"]),
                _f(s["first_delta_ms"]["p50"]),
                _f(s["voice_to_voice_ms"]["p50"]),
                _f(s["voice_to_voice_ms"]["p90"]),
                _f(s["vad_wait_ms"]["p50"]),
                _f(s["audio_rtf"]["p50"], 2),
                str(r["underruns_total"]),
                f"{r['target_ms']:.0f} {verdict}",
            ]
        )
    return out


def capacity_line(cap: dict, cfg: dict) -> str:
    """Issue #19's headline: the capacity figure beside 1/RTF at each level."""
    levels = cap["levels"]
    inv = ", ".join(
        f"{conc} user{'s' if conc != '1' else ''} {_f(v['inverse_rtf_p50'], 2)}" for conc, v in levels.items()
    )
    return (
        f"capacity ({cap['kind']} turns, {cfg.get('arrival', 'staggered')} arrivals, answers of "
        f"{cfg['answer_frames'] * 0.08:.1f} s): {cap['capacity']} user(s) with p90 first packet <= "
        f"{cap['max_ratio']}x the 1-user p50 ({_f(cap['p50_at_1_ms'])} ms) and no underruns; 1/RTF: {inv}"
    )


def markdown_table(columns, rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def console_table(columns, rows) -> str:
    widths = [max(len(str(c)), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*columns), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)])


def server_markdown(run: dict) -> str:
    cfg = run["config"]
    rows = server_table(run["summary"])
    stage_rows = []
    for r in run["summary"]:
        s = r["stats"]
        stage_rows.append(
            [str(r["concurrency"]), r["kind"], *(_f(s[f"stage_{k}_ms"]["p50"]) for k in STAGES)]
            + [_f(s["audio_ttfp_ms"]["p50"])]
        )
    extra = run.get("extra", {})
    lines = [
        f"# Latency benchmark ({run['started_at']})",
        "",
        f"Model `{_model(run['server'])}` on {run['server'].get('device')}, server "
        f"{'in the benchmark process' if run['server'].get('in_process') else 'in its own process'}; "
        f"transport {cfg['transport']}; "
        f"turns {cfg['turn_detection']}; {cfg['turns_per_user']} turns per user "
        f"({cfg['video_turns_per_user']} with video); answers fixed at {cfg['answer_tokens']} text tokens / "
        f"≤{cfg['answer_frames']} codec frames; {_arrival(cfg)}. "
        f"Runtime {run['runtime_s']:.0f} s. Commit {run['environment'].get('git_commit')}.",
        "",
        "All times in ms, p50/p90/p99 over turns. `ttfp` = server audio_ttfp (commit or VAD endpoint -> first "
        "audio packet sent); `1st delta` = client, commit -> first response.output_audio.delta; `v2v` = end of "
        "speech in the fixture -> first audible sample (the VAD's silence wait included; `vad wait` shown apart); "
        "underruns = playback gaps > 100 ms. Targets: Qwen3-Omni Table 2 first packet, 234 ms audio / 547 ms video "
        "(concurrency 1, their GPU).",
        "",
        markdown_table(SERVER_COLUMNS, rows),
        "",
        "## Stages of the first packet (p50, ms)",
        "",
        markdown_table(("conc", "kind", *STAGES, "ttfp"), stage_rows),
    ]
    if extra.get("capacity"):
        lines += ["", "## Capacity", "", capacity_line(extra["capacity"], cfg) + "."]
    srv = run["server"]
    if srv.get("max_sessions") == "auto":
        lines += [
            "",
            f"Server admission: `--max-sessions auto`, load threshold {srv.get('load_threshold')}, burst first-packet "
            f"bound {srv.get('first_packet_burst_ratio')}x, capacity measured at warm-up "
            f"{srv.get('capacity_sessions')} sessions.",
        ]
    if extra:
        lines += ["", "## Turns and prefill", "", "```json", json.dumps(extra, indent=1), "```"]
    if run.get("plots"):
        lines += ["", *(f"![{Path(p).stem}]({Path(p).name})" for p in run["plots"])]
    return "\n".join(lines) + "\n"


def _arrival(cfg: dict) -> str:
    arrival = cfg.get("arrival", "staggered")
    if arrival == "burst":
        return "burst arrivals (every user starts every turn at the same moment)"
    if arrival == "poisson":
        return f"Poisson arrivals (mean gap {cfg['stagger_ms']} ms, seed {cfg.get('seed')})"
    return f"users start {cfg['stagger_ms']} ms apart"


# ---------------------------------------------------------------------------- plots


def plot_server(run: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    records = [r for r in run["records"] if r.get("error") is None]
    kinds = sorted({r["kind"] for r in records}) or ["audio"]
    paths = []

    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for (conc,), recs in metrics.group([r for r in records if r["kind"] == kind], "concurrency").items():
            values = np.sort([r["audio_ttfp_ms"] for r in recs if r.get("audio_ttfp_ms") is not None])
            if values.size:  # empirical CDF: 0 before the first value, k/n from the k-th on
                xs = np.concatenate([[values[0]], values])
                ys = np.concatenate([[0.0], np.arange(1, values.size + 1) / values.size])
                ax.step(xs, ys, where="post", label=f"{conc} user{'s' if conc != 1 else ''}")
        for t, name in ((metrics.TARGET_AUDIO_MS, "audio"), (metrics.TARGET_VIDEO_MS, "video")):
            strong = name == kind
            ax.axvline(
                t,
                color="k" if strong else "gray",
                ls="--" if strong else ":",
                lw=1.2 if strong else 0.8,
                label=f"{t:.0f} ms (Qwen T2, {name})",
            )
        ax.set(title=f"first audio packet, {kind} turns", xlabel="audio_ttfp (ms)", ylabel="fraction of turns")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(str(out_dir / "latency_cdf.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    rows = [r for r in run["summary"] if r["stats"]["audio_ttfp_ms"]["n"]]
    fig, ax = plt.subplots(figsize=(9, 0.5 * (len(rows) + 2) + 1.5))
    labels = []
    colors = plt.cm.tab10.colors
    bars = [(f"Qwen T2 {k}", {s: QWEN_TABLE2[k].get(s, 0) for s in STAGES}) for k in kinds]
    bars += [
        (f"{r['concurrency']}u {r['kind']}", {s: r["stats"][f"stage_{s}_ms"]["p50"] or 0 for s in STAGES}) for r in rows
    ]
    for y, (label, stages) in enumerate(bars):
        left = 0.0
        for i, s in enumerate(STAGES):
            ax.barh(y, stages[s], left=left, color=colors[i], label=s if y == 0 else None)
            left += stages[s]
        labels.append(label)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.axvline(metrics.TARGET_AUDIO_MS, color="k", ls="--", lw=1)
    ax.axvline(metrics.TARGET_VIDEO_MS, color="gray", ls=":", lw=1)
    ax.set(title="first-packet stage waterfall (p50 per stage)", xlabel="ms since commit")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    paths.append(str(out_dir / "stage_waterfall.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def plot_engine_only(run: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = run["cases"]
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.9 * len(cases)))
    for y, case in enumerate(cases.values()):
        m = case["median"]
        ax.barh(
            y - 0.2, m["stock_total_ms"], height=0.35, color="tab:gray", label="stock generate()" if y == 0 else None
        )
        ax.barh(
            y + 0.2,
            m["ours_total_ms"],
            height=0.35,
            color="tab:blue",
            alpha=0.35,
            label="ours, whole answer" if y == 0 else None,
        )
        ax.barh(
            y + 0.2,
            m["ours_first_audio_ms"],
            height=0.35,
            color="tab:blue",
            label="ours, first audio" if y == 0 else None,
        )
    ax.set_yticks(range(len(cases)), list(cases))
    ax.invert_yaxis()
    ax.set(title="engine only: time to audio (median)", xlabel="ms")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = str(out_dir / "engine_only.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


ENGINE_COLUMNS = (
    "input",
    "ours first audio",
    "stock audio",
    "first-audio speedup",
    "ours total",
    "stock total",
    "total ratio",
)


def engine_table(run: dict) -> list[list[str]]:
    rows = []
    for name, case in run["cases"].items():
        m = case["median"]
        rows.append(
            [
                name,
                _f(m["ours_first_audio_ms"]),
                _f(m["stock_first_audio_ms"]),
                f"{case['first_audio_speedup']:.1f}x",
                _f(m["ours_total_ms"]),
                _f(m["stock_total_ms"]),
                f"{case['total_ratio']:.3f}",
            ]
        )
    return rows


def engine_markdown(run: dict) -> str:
    cfg = run["config"]
    lines = [
        f"# Engine-only benchmark ({run['started_at']})",
        "",
        f"Model `{run['engine'].get('model')}` on {run['engine'].get('device')} ({run['engine'].get('dtype')}); "
        f"greedy, answers fixed at {cfg['answer_tokens']} text tokens and {cfg['answer_frames']} codec frames; "
        f"{cfg['reps']} repetitions, ours and stock alternating; medians, ms. Runtime {run['runtime_s']:.0f} s.",
        "",
        "Stock = `prepare()` + `model.generate(..., return_audio=True)` (audio exists when it returns). "
        "Targets (issue #3): first-audio speedup >= 10x, total ratio ours/stock <= 1.2.",
        "",
        markdown_table(ENGINE_COLUMNS, engine_table(run)),
    ]
    if run.get("turns"):
        t = run["turns"]
        rows = [
            [
                str(x["turn"]),
                _f(x["first_audio_ms"]),
                _f(x["prefill_tokens"]),
                _f(x.get("talker_prefill_tokens")),
            ]
            for x in t["per_turn"]
        ]
        lines += [
            "",
            f"## Turn 1 vs turn {len(rows)} (equal user turns; medians over {t.get('reps', 1)} conversations)",
            "",
            f"Last over first: {t['last_over_first']} (issue #7 target: <= 1.2).",
            "",
            markdown_table(("turn", "first audio", "prefill tokens", "talker prefill tokens"), rows),
        ]
    if run.get("prefill_tokens"):
        rows = [[k, str(v)] for k, v in run["prefill_tokens"].items()]
        lines += ["", "## Tokens prefilled after the commit (first turn)", ""]
        lines += [markdown_table(("utterance", "prefill tokens"), rows)]
    if run.get("plots"):
        lines += ["", *(f"![{Path(p).stem}]({Path(p).name})" for p in run["plots"])]
    return "\n".join(lines) + "\n"


def _model(server: dict) -> str:
    """The model's name for a report: the tiny checkpoint's local cache path says nothing
    to a reader (and names the machine), so it is called `tiny`."""
    return "tiny" if server.get("is_tiny") else str(server.get("model"))
