#!/usr/bin/env python3
"""Full-size Qwen3-Omni with random bf16 weights, built on the GPU: our stage table
beside Qwen's Table 2 (arXiv 2509.17765), at concurrency 1 and 4.

    python scripts/gpu_bench.py                 # on one H200 (about 70 GB of weights)
    python scripts/gpu_bench.py --size tiny     # the same code path on CPU, for a smoke test

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
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant import tiny  # noqa: E402
from assistant.engine.api import AudioPart, Sampling, VideoPart  # noqa: E402
from assistant.engine.local import LocalEngine  # noqa: E402
from assistant.engine.resident import Resident  # noqa: E402
from assistant.settings import from_sources  # noqa: E402

# Qwen's Table 2, audio / video, ms (first-packet rows; "Overral" is their sum).
QWEN = {
    1: {"preprocessing": (72, 160), "thinker_ttft": (88, 160), "talker_ttft": (57, 210), "code_predictor": (14, 14),
        "codec": (3, 3), "total": (234, 547)},
    4: {"preprocessing": (94, 180), "thinker_ttft": (468, 866), "talker_ttft": (145, 450), "code_predictor": (16, 16),
        "codec": (5, 5), "total": (728, 1517)},
}  # fmt: skip
STAGES = ["preprocessing", "thinker_ttft", "talker_ttft", "code_predictor", "codec"]


def real_config():
    """Qwen3-Omni-30B-A3B-Instruct's architecture (config values from the reference)."""
    from transformers import Qwen3OmniMoeConfig

    cfg = tiny.tiny_config().to_dict()
    mrope = {"rope_type": "default", "mrope_section": [24, 20, 20], "interleaved": True, "rope_theta": 1e6}
    th = cfg["thinker_config"]
    th["audio_config"].update(
        encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, d_model=1280, output_dim=2048,
        downsample_hidden_size=480,
    )  # fmt: skip
    th["vision_config"].update(
        depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=2048,
        deepstack_visual_indexes=[8, 16, 24],
    )  # fmt: skip
    th["text_config"].update(
        hidden_size=2048, intermediate_size=768, num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4,
        head_dim=128, moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8, rope_parameters=mrope,
    )  # fmt: skip
    tk = cfg["talker_config"]
    tk["text_config"].update(
        hidden_size=1024, intermediate_size=2048, num_hidden_layers=20, num_attention_heads=16, num_key_value_heads=2,
        head_dim=128, moe_intermediate_size=384, shared_expert_intermediate_size=768, num_experts=128,
        num_experts_per_tok=6, rope_parameters=dict(mrope),
    )  # fmt: skip
    tk["code_predictor_config"].update(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=5, num_attention_heads=16, num_key_value_heads=8,
        head_dim=128,
    )  # fmt: skip
    tk.update(thinker_hidden_size=2048, accept_hidden_layer=24)
    cfg["code2wav_config"].update(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16,
        decoder_dim=1536,
    )  # fmt: skip
    return Qwen3OmniMoeConfig(**{k: cfg[k] for k in ("thinker_config", "talker_config", "code2wav_config")})


def build_resident(size: str, device: torch.device, dtype: torch.dtype, window_s: int) -> Resident:
    from transformers import Qwen3OmniMoeForConditionalGeneration, Qwen3OmniMoeProcessor

    from assistant.compat import patch_loaded_model

    proc_dir = Path(tiny.build(Path("/tmp") / "assistant-gpu-bench-processor"))
    processor = Qwen3OmniMoeProcessor.from_pretrained(proc_dir)
    if size == "real":  # the real checkpoint's pixel budgets
        processor.image_processor.min_pixels, processor.image_processor.max_pixels = 4 * 32 * 32, 16384 * 32 * 32
        processor.video_processor.size = {"shortest_edge": 128 * 32 * 32, "longest_edge": 768 * 32 * 32}
    config = real_config() if size == "real" else tiny.tiny_config()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        model = Qwen3OmniMoeForConditionalGeneration._from_config(config, dtype=dtype).eval()
    patch_loaded_model(model)
    params = sum(p.numel() for p in model.parameters())
    print(f"built {size} model: {params / 1e9:.2f} B parameters on {device} in {time.perf_counter() - t0:.0f} s")
    return Resident(model, processor, device, dtype, window_s)


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
    resident = build_resident(args.size, device, dtype, args.audio_window_s)
    settings = from_sources(env={}, model="gpu-bench", warmup=True)
    engine = LocalEngine(settings, resident=resident)
    await engine.start()
    results = {}
    for conc in (1, 4):
        for kind in ("audio", "video"):
            t0 = time.perf_counter()
            results[f"{kind}@{conc}"] = await run_level(engine, kind, conc, args.turns, args.frames)
            print(f"{kind} at concurrency {conc}: {time.perf_counter() - t0:.1f} s", flush=True)
    await engine.close()
    md = table(results)
    print(md)
    meta = {
        "size": args.size,
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
    }
    write_results(Path(args.out), meta, results, md)
    return 0


def write_results(out: Path, meta: dict, results: dict, md: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (out / "gpu_bench.md").write_text(f"# gpu_bench ({meta})\n\nFirst packet, medians, ms.\n\n{md}\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["real", "tiny"], default="real")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--turns", type=int, default=3, help="turns per user at each level")
    p.add_argument("--frames", type=int, default=24, help="codec frames (and text tokens) per answer")
    p.add_argument("--audio-window-s", type=int, default=2)
    p.add_argument("--out", default="bench/out/gpu")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
