#!/usr/bin/env python3
"""Full-size Qwen3-Omni with random bf16 weights, built on the GPU: our stage table
beside Qwen's Table 2 (arXiv 2509.17765), at concurrency 1 and 4.

    python scripts/gpu_bench.py                 # on one H200 (about 70 GB of weights)
    python scripts/gpu_bench.py --size tiny     # the same code path on CPU, for a smoke test

It also runs the decode path with CUDA graphs off and on, side by side (issue #7 item 4):
a micro-benchmark of the code predictor (one frame) and Code2Wav (1- and 50-frame
windows), and short audio responses at concurrency 1 (per-frame decode time, first
packet). The whole script is meant to fit in 8 minutes on one H200: levels that would
start after --budget-s are skipped and marked so.

No download: the architecture comes from the real checkpoint's config values
(../shared/reference/qwen3-omni-streaming.md §1.1) and the weights are random, which
gives honest compute timings (MoE routing of random weights is roughly uniform). The
tokenizer and processor come from the project's tiny checkpoint, whose ids are the real
ones; processor pixel budgets are set to the real ones. Results: --out (JSON + Markdown).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant import realdim, tiny  # noqa: E402
from assistant.engine.api import AudioPart, Sampling, VideoPart  # noqa: E402
from assistant.engine.local import LocalEngine  # noqa: E402
from assistant.engine.resident import Resident  # noqa: E402
from assistant.settings import from_sources  # noqa: E402

T0 = time.perf_counter()  # the budget counts from process start (imports and model build included)

# Qwen's Table 2, audio / video, ms (first-packet rows; "Overral" is their sum).
QWEN = {
    1: {"preprocessing": (72, 160), "thinker_ttft": (88, 160), "talker_ttft": (57, 210), "code_predictor": (14, 14),
        "codec": (3, 3), "total": (234, 547)},
    4: {"preprocessing": (94, 180), "thinker_ttft": (468, 866), "talker_ttft": (145, 450), "code_predictor": (16, 16),
        "codec": (5, 5), "total": (728, 1517)},
}  # fmt: skip
STAGES = ["preprocessing", "thinker_ttft", "talker_ttft", "code_predictor", "codec"]


def build_resident(
    size: str, device: torch.device, dtype: torch.dtype, window_s: int, cuda_graphs: bool = True
) -> Resident:
    from transformers import Qwen3OmniMoeProcessor

    proc_dir = Path(tiny.build(Path(tempfile.gettempdir()) / "assistant-gpu-bench-processor"))
    # The real checkpoint's pixel budgets at full size; the tiny ones keep the CPU run short.
    processor = realdim.real_processor(proc_dir) if size == "real" else Qwen3OmniMoeProcessor.from_pretrained(proc_dir)
    config = realdim.real_config() if size == "real" else tiny.tiny_config()
    t0 = time.perf_counter()
    model = realdim.build_model(config, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    print(f"built {size} model: {params / 1e9:.2f} B parameters on {device} in {time.perf_counter() - t0:.0f} s")
    return Resident(model, processor, device, dtype, window_s, cuda_graphs)


def inputs(kind: str, turn: int):
    rng = np.random.default_rng(turn)
    speech = (rng.standard_normal(16000 * 3) * 0.05).astype(np.float32)  # 3 s; content is irrelevant to timing
    parts = [AudioPart(speech, 16000)]
    if kind == "video":
        frames = [(rng.random((480, 640, 3)) * 255).astype(np.uint8) for _ in range(4)]
        parts.insert(0, VideoPart(frames, [0.0, 0.5, 1.0, 1.5]))
    return parts


async def run_level(engine: LocalEngine, kind: str, concurrency: int, turns: int, frames: int) -> list[dict]:
    async def user(u: int) -> list[dict]:
        out = []
        for t in range(turns):
            conv = engine.new_conversation()
            conv.sampling = Sampling(greedy=True, min_tokens=frames, max_tokens=frames, min_frames=frames,
                                     max_frames=frames)  # fmt: skip
            conv.add_user(inputs(kind, u * 100 + t))
            async for ev in engine.respond(conv, t_committed=time.monotonic()):
                if getattr(ev, "stats", None) is not None and hasattr(ev, "status"):
                    out.append(ev.stats.to_dict() | {"status": ev.status})
        return out

    results = await asyncio.gather(*(user(u) for u in range(concurrency)))
    return [r for rs in results for r in rs]


def timed_ms(fn, device: torch.device, iters: int) -> float:
    """Median wall time of fn() in ms, the device drained around each call."""
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


@torch.no_grad()
def micro(res: Resident, iters: int) -> dict:
    """The graphed pieces alone, graphs off then on: one predictor frame (greedy, and
    sampled with the host-side Picker as the stream does), Code2Wav on 1 and 50 frames."""
    from assistant.engine.sampling import Picker

    D = res.tcfg.text_config.hidden_size
    last_hidden = torch.randn(1, 1, D, device=res.device, dtype=res.dtype)
    e0 = res.talker.get_input_embeddings()(torch.tensor([[5]], device=res.device))  # [1, 1, D]
    picker = Picker(greedy=False, top_k=50, top_p=0.8)

    def sampled():
        res.predictor.run(last_hidden, e0, lambda s, lg: torch.tensor([picker.pick(lg[0])], device=res.device))

    codes = {T: torch.randint(0, 2048, (1, 16, T), device=res.device) for T in (1, 50)}
    out = {}
    for on in (False, True):
        res.use_cuda_graphs(on)
        out["on" if on else "off"] = {
            "predictor_greedy_frame": timed_ms(lambda: res.predictor.run_greedy(last_hidden, e0), res.device, iters),
            "predictor_sampled_frame": timed_ms(sampled, res.device, iters),
            "code2wav_1_frame": timed_ms(lambda: res.vocoder(codes[1]), res.device, iters),
            "code2wav_50_frames": timed_ms(lambda: res.vocoder(codes[50]), res.device, iters),
        }
    return out


async def compare_graphs(engine: LocalEngine, res: Resident, turns: int, frames: int, graphs: bool) -> dict:
    """Audio responses at concurrency 1 with graphs off, then on: per-frame decode time
    (code predictor + Code2Wav + talker step) and first packet, medians."""
    out = {}
    for on in (False, True):
        res.use_cuda_graphs(on)
        recs = await run_level(engine, "audio", 1, turns, frames)
        out["on" if on else "off"] = {
            "frame_ms": statistics.median(r["frame_ms_mean"] for r in recs),
            "audio_ttfp_ms": statistics.median(r["audio_ttfp_ms"] for r in recs),
        }
    res.use_cuda_graphs(graphs)
    return out


def compare_table(micro_ms: dict, e2e: dict, active: bool) -> str:
    note = "" if active else " (no CUDA: graphs are ignored, both columns are eager)"
    lines = [f"Graphs off vs on{note}, medians, ms.", "", "| what | off | on | off/on |", "|---|---|---|---|"]
    rows = [(k, micro_ms["off"][k], micro_ms["on"][k]) for k in micro_ms["off"]]
    rows += [(f"responses c=1: {k}", e2e["off"][k], e2e["on"][k]) for k in e2e["off"]]
    for name, off, on in rows:
        lines.append(f"| {name} | {off:.2f} | {on:.2f} | {off / on if on else float('nan'):.2f} |")
    return "\n".join(lines)


def table(results: dict) -> str:
    lines = ["| stage | ours c=1 audio/video | Qwen c=1 | ours c=4 audio/video | Qwen c=4 |", "|---|---|---|---|---|"]
    for stage in [*STAGES, "total"]:
        row = [stage]
        for conc in (1, 4):
            ours = []
            for kind in ("audio", "video"):
                recs = results.get(f"{kind}@{conc}", [])
                vals = [r["audio_ttfp_ms"] if stage == "total" else r["stages_ms"][stage] for r in recs]
                vals = [v for v in vals if v is not None]
                ours.append(f"{statistics.median(vals):.0f}" if vals else "-")
            row += ["/".join(ours), "/".join(str(v) for v in QWEN[conc][stage])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


async def main_async(args) -> int:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    resident = build_resident(args.size, device, dtype, args.audio_window_s, args.cuda_graphs)
    settings = from_sources(env={}, model="gpu-bench", warmup=True, cuda_graphs=args.cuda_graphs)
    engine = LocalEngine(settings, resident=resident)
    await engine.start()  # graphs: the predictor at batch 1 (Code2Wav only when windowed); then the warm-up
    print(f"engine ready at {time.perf_counter() - T0:.0f} s", flush=True)
    micro_ms = micro(resident, args.micro_iters)
    e2e = await compare_graphs(engine, resident, args.compare_turns, args.frames, args.cuda_graphs)
    compare_md = compare_table(micro_ms, e2e, device.type == "cuda")
    print(compare_md, flush=True)
    results, skipped, took = {}, [], {}
    for conc in (1, 4):
        for kind in ("audio", "video"):
            # Keep the whole run inside its budget: concurrency 4 is about 4x the work of 1 on one worker.
            expected = took.get(kind, 0.0) * conc
            if time.perf_counter() - T0 + expected > args.budget_s:
                skipped.append(f"{kind}@{conc}")
                print(f"{kind} at concurrency {conc}: skipped (expected {expected:.0f} s, over --budget-s)")
                continue
            t0 = time.perf_counter()
            results[f"{kind}@{conc}"] = await run_level(engine, kind, conc, args.turns, args.frames)
            took.setdefault(kind, time.perf_counter() - t0)
            print(f"{kind} at concurrency {conc}: {time.perf_counter() - t0:.1f} s", flush=True)
    await engine.close()
    md = table(results)
    print(md)
    meta = {
        "size": args.size,
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "cuda_graphs": resident.cuda_graphs,
        "graph_errors": graph_errors(resident),
        "skipped_over_budget": skipped,
        "wall_s": round(time.perf_counter() - T0, 1),
    }
    write_results(Path(args.out), meta, results, md, {"micro_ms": micro_ms, "responses": e2e}, compare_md)
    return 0


def graph_errors(res: Resident) -> dict:
    """Capture errors that sent a wrapper back to eager (a silent fallback would skew the ratio)."""
    if res._graphed is None:
        return {}
    return {type(w).__name__: w.fallback.error for w in res._graphed if w.fallback.error}


def write_results(out: Path, meta: dict, results: dict, md: str, compare: dict, compare_md: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "results": results, "graphs_off_on": compare}
    (out / "gpu_bench.json").write_text(json.dumps(payload, indent=1))
    (out / "gpu_bench.md").write_text(
        f"# gpu_bench ({meta})\n\nFirst packet, medians, ms.\n\n{md}\n\n## CUDA graphs\n\n{compare_md}\n"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["real", "tiny"], default="real")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--turns", type=int, default=3, help="turns per user at each level")
    p.add_argument("--frames", type=int, default=24, help="codec frames (and text tokens) per answer")
    p.add_argument("--audio-window-s", type=int, default=2)
    p.add_argument("--out", default="bench/out/gpu")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True, help="for the stage table")
    p.add_argument("--compare-turns", type=int, default=2, help="responses with graphs off and with graphs on")
    p.add_argument("--micro-iters", type=int, default=30, help="timed calls per micro-benchmark row")
    p.add_argument(
        "--budget-s", type=float, default=450, help="skip stage-table levels expected to end after this many seconds"
    )
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
