#!/usr/bin/env python3
"""Every GPU path checked in one run: the steps of scripts/gpu_check.sh (which installs and calls this).

    scripts/gpu_check.sh                 # on one H200: the whole check, about 8 minutes
    scripts/gpu_check.sh --dry-run       # the same steps on CPU with the tiny model (CI runs it)

Steps, in order of importance, each written to the JSON and Markdown as soon as it ends, so
a run cut off by its time limit still returns what finished:

  versions  what was found (python, torch and CUDA, transformers, every runtime dependency)
  a         the engine oracle and the CUDA-marked tests on the tiny model, on the device, bf16 and fp32
  b         CUDA graphs on against off, for the code predictor, the talker step and Code2Wav:
            equality and time per frame (full-size model, random bf16 weights)
  c         scripts/gpu_bench.py's stage table at concurrency 1 and 4, audio and video, beside
            Qwen's Table 2, and the real-time factor
  d         peak device memory after load, with 8 conversations, and with the KV budget full

Results: docs/bench/gpu/<date>-<commit>.{json,md} (--out-dir elsewhere). In --dry-run the
graphs are CallReplay stand-ins (cudagraphs.py) and memory is the process's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

T0 = time.perf_counter()
# Runtime dependencies (pyproject.toml) whose versions the report lists.
DEPENDENCIES = ["torch", "torchvision", "transformers", "safetensors", "accelerate", "numpy", "pillow", "soxr",
                "silero-vad", "websockets", "fastapi", "uvicorn", "prometheus-client", "aiortc", "av"]  # fmt: skip
# Step (a): the oracle and every test that needs CUDA, as ASSISTANT_TEST_DEVICE runs them.
DEVICE_TESTS = ["tests/test_engine_oracle.py", "tests/test_cudagraphs.py", "tests/test_talker_graph.py",
                "tests/test_batching.py"]  # fmt: skip
DRY_RUN_TESTS = "audio_only_turn or predictor_graphs_match or static_step_equals"  # a few per file, both dtypes


class Report:
    """The results so far, rewritten to JSON and Markdown after every step."""

    def __init__(self, out_dir: Path, meta: dict) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{meta['date']}-{meta['commit']}" + ("-dry-run" if meta["dry_run"] else "")
        self.json_path, self.md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
        self.data = {"meta": meta, "steps": {}}
        self.md: list[str] = []
        self.write()

    def step(self, name: str, result: dict, md: str) -> None:
        result["elapsed_s"] = round(time.perf_counter() - T0, 1)
        self.data["steps"][name] = result
        self.md.append(md)
        self.write()
        print(md, flush=True)

    def write(self) -> None:
        self.json_path.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        m = self.data["meta"]
        head = [
            f"# GPU check {m['date']} at {m['commit']}" + (" (dry run: CPU, tiny model)" if m["dry_run"] else ""),
            "",
            f"Device: {m['device']}. Written by scripts/gpu_check.sh; each step is added as soon as it ends.",
            "",
        ]
        self.md_path.write_text("\n".join(head + self.md) + "\n")


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def versions() -> dict:
    found = {"python": sys.version.split()[0], "torch_cuda": torch.version.cuda}
    for name in DEPENDENCIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    import assistant

    found["assistant_imported_from"] = str(Path(assistant.__file__).parent)
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name()
        found["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
    return found


# ---------------------------------------------------------------------------- step a


def device_tests(args, device: str) -> tuple[dict, str]:
    """pytest on the device, one file at a time (a cut-off loses only the file it was in), within
    --tests-timeout-s in all; per-test outcomes from each run's JUnit XML."""
    env = dict(os.environ, ASSISTANT_TEST_DEVICE=device, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    tests, returncodes, tails = {}, {}, {}
    for path in DEVICE_TESTS:
        left = args.tests_timeout_s - (time.perf_counter() - t0)
        if left < 5:
            returncodes[path] = "not run: --tests-timeout-s spent"
            continue
        with tempfile.TemporaryDirectory() as tmp:
            junit = Path(tmp) / "junit.xml"
            cmd = [sys.executable, "-m", "pytest", path, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
            if args.dry_run:
                cmd += ["-k", DRY_RUN_TESTS]
            try:
                proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=left)
                rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
            except subprocess.TimeoutExpired as exc:
                rc, tail = "timeout", str(exc.stdout or "")[-2000:]
            returncodes[path] = 0 if rc == 5 else rc  # 5: nothing selected in this file (dry-run's -k)
            if returncodes[path] != 0:
                tails[path] = tail
            if junit.exists():
                tests.update(junit_outcomes(junit))
    counts = {
        k: sum(1 for v in tests.values() if v.split(":")[0] == k) for k in ("passed", "failed", "error", "skipped")
    }
    rc = 0 if all(v == 0 for v in returncodes.values()) else 1
    result = {"device": device, "returncode": rc, "returncodes": returncodes, "counts": counts, "tests": tests,
              "seconds": round(time.perf_counter() - t0, 1), "output_tails": tails}  # fmt: skip
    lines = [f"## (a) Engine oracle and CUDA tests on {device}, bf16 and fp32", "",
             f"{result['seconds']} s: " + ", ".join(f"{v} {k}" for k, v in counts.items()), ""]  # fmt: skip
    lines += [f"- {path}: rc {code}" for path, code in returncodes.items() if code != 0]
    lines += [f"- {name}: {outcome}" for name, outcome in tests.items() if not outcome.startswith("passed")]
    return result, "\n".join(lines) + "\n"


def junit_outcomes(junit: Path) -> dict[str, str]:
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        outcome = "passed"
        for kind, word in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            node = case.find(kind)
            if node is not None:
                outcome = word if kind == "skipped" else f"{word}: {(node.get('message') or '')[:300]}"
        out[name] = outcome
    return out


# ---------------------------------------------------------------------------- step b


def timed(fn, device: torch.device, iters: int) -> tuple[float, object]:
    """Median ms of fn() over iters calls (device drained around each), and its last result."""
    times, out = [], None
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times), out


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@torch.inference_mode()
def graphs_on_off(res, iters: int, dry_run: bool) -> tuple[dict, str]:
    """Each graphed piece off (eager) against on, on the same inputs: equal outputs, ms per frame."""
    from transformers import DynamicCache

    from assistant.engine.cudagraphs import (
        CallReplay,
        GraphedCode2Wav,
        GraphedCodePredictor,
        GraphedTalkerStep,
        decode_lengths,
    )

    backend = CallReplay() if dry_run else None  # None: real torch.cuda.CUDAGraph
    dev, dt = res.device, res.dtype
    D = res.tcfg.text_config.hidden_size
    g = torch.Generator().manual_seed(0)
    rows = {}

    eager_cp = res._eager_predictor
    graphed_cp = GraphedCodePredictor(eager_cp, backend=backend)
    hidden = torch.randn(1, 1, D, generator=g).to(dev, dt)
    e0 = res.talker.get_input_embeddings()(torch.tensor([[5]], device=dev))
    off_ms, off = timed(lambda: eager_cp.run_greedy(hidden, e0), dev, iters)
    on_ms, on = timed(lambda: graphed_cp.run_greedy(hidden, e0), dev, iters)
    rows["code predictor (greedy frame)"] = {"off_ms": off_ms, "on_ms": on_ms, "equal": same(off, on),
                                             "graph_error": graphed_cp.fallback.error}  # fmt: skip

    vocoder = GraphedCode2Wav(res.code2wav, decode_lengths([1, 2, 4, 8, 16, 25], 25), backend=backend)
    for T in (1, 50):
        codes = torch.randint(0, 2048, (1, 16, T), generator=g).to(dev)
        off_ms, off = timed(lambda codes=codes: res.code2wav(codes), dev, iters)
        on_ms, on = timed(lambda codes=codes: vocoder(codes), dev, iters)
        rows[f"Code2Wav ({T}-frame window)"] = {"off_ms": off_ms, "on_ms": on_ms, "equal": torch.equal(off, on),
                                                "graph_error": vocoder.fallback.error}  # fmt: skip

    # The talker: stock's dynamic-cache step (off) against the graph (on) and the same static step run
    # eagerly; after a 200-position prefill, one step per call on copies of the same cache.
    talker = GraphedTalkerStep(res.talker, backend=backend)
    cache = DynamicCache(config=res.talker.config.text_config)
    prompt = (torch.randn(1, 200, D, generator=g) * 0.5).to(dev, dt)
    res.talker(inputs_embeds=prompt, position_ids=torch.arange(200, device=dev).view(1, 1, -1).expand(3, 1, -1),
               cache=cache, use_cache=True)  # fmt: skip
    embeds = (torch.randn(1, 1, D, generator=g) * 0.5).to(dev, dt)
    position = torch.full((3, 1, 1), 200, device=dev)

    def fresh():
        c = DynamicCache(config=res.talker.config.text_config)
        for i, layer in enumerate(cache.layers):
            c.update(layer.keys.clone(), layer.values.clone(), i)
        return c

    def stock():
        out = res.talker(inputs_embeds=embeds, position_ids=position, cache=fresh(), use_cache=True,
                         output_hidden_states=True, generation_step=0)  # fmt: skip
        return out.logits[:, -1], out.hidden_states[0][-1][:, -1:]

    off_ms, off = timed(stock, dev, iters)
    static_ms, static = timed(lambda: talker.step(fresh(), embeds, position, graph=False), dev, iters)
    on_ms, on = timed(lambda: talker.step(fresh(), embeds, position), dev, iters)
    rows["talker step (batch 1)"] = {
        "off_ms": off_ms, "on_ms": on_ms, "static_eager_ms": static_ms,
        "equal": on is not None and same(on, static),  # graph == the same code run eagerly
        "equal_to_stock": on is not None and same(on, off),
        "max_abs_logit_diff_vs_stock": None if on is None else float((on[0].float() - off[0].float()).abs().max()),
        "same_greedy_code0_as_stock": on is not None and int(on[0].argmax()) == int(off[0].argmax()),
        "graph_error": talker.fallback.error,
    }  # fmt: skip
    note = "CallReplay stand-ins on CPU: equality of the plumbing only, times not meaningful" if dry_run else "CUDA"
    lines = [f"## (b) CUDA graphs off vs on ({note}), median ms per call", "",
             "| piece | off | on | off/on | equal |", "|---|---|---|---|---|"]  # fmt: skip
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['off_ms']:.2f} | {r['on_ms']:.2f} | {r['off_ms'] / r['on_ms']:.2f} | {r['equal']} |"
        )
    t = rows["talker step (batch 1)"]
    lines += ["", f"Talker: static path run eagerly {t['static_eager_ms']:.2f} ms; graph bit-equal to stock: "
              f"{t['equal_to_stock']}; max |logit diff| vs stock {t['max_abs_logit_diff_vs_stock']}; same greedy "
              f"code-0: {t['same_greedy_code0_as_stock']}. Capture errors: "
              f"{[r['graph_error'] for r in rows.values() if r['graph_error']] or 'none'}."]  # fmt: skip
    return {"rows": rows}, "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- steps c and d


async def stage_table(engine, args) -> tuple[dict, str]:
    import gpu_bench

    results, took, skipped = {}, {}, []
    for conc in (1, 4):
        for kind in ("audio", "video"):
            # Step d still needs time after this: a level expected to end past --budget-s is skipped.
            expected = took.get(f"{kind}@1", 0.0) * conc
            if time.perf_counter() - T0 + expected > args.budget_s:
                skipped.append(f"{kind}@{conc}")
                continue
            t0 = time.perf_counter()
            results[f"{kind}@{conc}"] = await gpu_bench.run_level(engine, kind, conc, args.turns, args.frames)
            took[f"{kind}@{conc}"] = round(time.perf_counter() - t0, 1)
    rtf = {}
    for key, recs in results.items():
        vals = [r["audio_rtf"] for r in recs if r.get("audio_rtf") is not None]
        rtf[key] = round(statistics.median(vals), 3) if vals else None
    md = ["## (c) First-packet stages beside Qwen's Table 2 (medians, ms)", "", gpu_bench.table(results), "",
          "Real-time factor (generation time / audio duration, medians; Qwen: 0.47 at c=1, 0.56 at c=4): "
          + ", ".join(f"{k} {v}" for k, v in rtf.items()), ""]  # fmt: skip
    if skipped:
        md.append(f"Skipped to stay inside --budget-s: {', '.join(skipped)}.\n")
    return {"results": results, "rtf": rtf, "level_s": took, "skipped_over_budget": skipped}, "\n".join(md)


def memory_now(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"allocated_gb": round(torch.cuda.memory_allocated() / 1e9, 2),
                "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
                "reserved_gb": round(torch.cuda.memory_reserved() / 1e9, 2)}  # fmt: skip
    return {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}


async def memory(engine, res, after_load: dict, args) -> tuple[dict, str]:
    """Peak memory after load, with 8 conversations kept (their caches), and with the KV budget full."""
    import gpu_bench

    from assistant.engine.api import Sampling

    if res.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    async def conversation(i: int) -> None:
        conv = engine.new_conversation()
        conv.sampling = Sampling(greedy=True, min_tokens=args.frames, max_tokens=args.frames,
                                 min_frames=args.frames, max_frames=args.frames)  # fmt: skip
        for turn in range(2):
            conv.add_user(gpu_bench.inputs("audio", 1000 * i + turn))
            async for ev in engine.respond(conv):
                if getattr(ev, "turn", None) is not None:
                    conv.turns.append(ev.turn)

    await asyncio.gather(*(conversation(i) for i in range(8)))
    eight = memory_now(res.device) | {"cached_conversations": len(engine.conv_cache)}
    budget = getattr(engine.settings, "kv_cache_gb", None)
    if budget is None:
        full = {"status": "not available: this tree has no --kv-cache-gb byte budget"}
    else:  # keep opening conversations until the byte budget evicts (engine/budget.py) or 64 are open
        if res.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sizes = []
        for i in range(8, 64, 8):
            await asyncio.gather(*(conversation(j) for j in range(i, i + 8)))
            sizes.append(len(engine.conv_cache))
            if engine.budget is not None and engine.budget.snapshot()["evictions"] > 0:
                break
        snap = engine.budget.snapshot() if engine.budget is not None else {}
        full = memory_now(res.device) | {"kv_cache_gb": budget, "cached_conversations": sizes, "budget": snap}
    result = {"after_load": after_load, "eight_conversations": eight, "kv_budget_full": full}
    md = ["## (d) Memory", "", f"- after load: {after_load}", f"- with 8 conversations (2 turns each): {eight}",
          f"- with the KV budget full: {full}", ""]  # fmt: skip
    return result, "\n".join(md)


async def model_steps(args, report: Report) -> None:
    import gpu_bench

    from assistant.engine.local import LocalEngine
    from assistant.settings import from_sources

    device = torch.device("cpu" if args.dry_run else "cuda")
    size = "tiny" if args.dry_run else "real"
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res = gpu_bench.build_resident(size, device, dtype, 2, cuda_graphs=True)
    after_load = memory_now(device) | {"built_at_s": round(time.perf_counter() - T0, 1)}
    # The conversation cache's count cap (16 by default) would stop the memory step (d) long
    # before the byte budget does: lift it, so that (d) fills the budget itself.
    # A dry run's budget is 3 MB (the tiny model: about 150 kB per live response), so that it
    # is full within a few conversations; on CUDA it is the default, what warm-up left free.
    settings = from_sources(
        env={},
        model="gpu-check",
        warmup=True,
        cuda_graphs=True,
        conversation_cache_size=256,
        kv_cache_gb=0.003 if args.dry_run else 0.0,
    )
    engine = LocalEngine(settings, resident=res)
    await engine.start()  # captures the predictor and Code2Wav graphs, then the warm-up responses
    steps = set(args.steps.split(","))
    try:
        if "b" in steps:
            report.step("b", *graphs_on_off(res, args.iters, args.dry_run))
        if "c" in steps:
            report.step("c", *await stage_table(engine, args))
        if "d" in steps:
            report.step("d", *await memory(engine, res, after_load, args))
    finally:
        await engine.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model: the same steps, for CI")
    p.add_argument("--out-dir", default=str(ROOT / "docs" / "bench" / "gpu"))
    p.add_argument("--steps", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    p.add_argument("--turns", type=int, default=2, help="turns per simulated user in step c")
    p.add_argument("--frames", type=int, default=16, help="codec frames (and text tokens) per answer")
    p.add_argument("--iters", type=int, default=20, help="timed calls per row of step b")
    p.add_argument("--tests-timeout-s", type=int, default=200, help="step a's pytest runs, in all")
    p.add_argument("--budget-s", type=float, default=390, help="step c starts no level expected to end after this")
    args = p.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a CPU", file=sys.stderr)
        return 2
    steps = set(args.steps.split(","))
    meta = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"), "commit": commit(),
            "dry_run": args.dry_run, "device": "cpu" if args.dry_run else torch.cuda.get_device_name(),
            "argv": sys.argv[1:]}  # fmt: skip
    report = Report(Path(args.out_dir), meta)
    found = versions()
    report.step("versions", found, "## Versions found\n\n" + "\n".join(f"- {k}: {v}" for k, v in found.items()) + "\n")
    if "a" in steps:
        report.step("a", *device_tests(args, "cpu" if args.dry_run else "cuda"))
    if steps & {"b", "c", "d"}:
        np.random.seed(0)
        asyncio.run(model_steps(args, report))
    print(f"wrote {report.json_path} and {report.md_path} in {time.perf_counter() - T0:.0f} s")
    failed = report.data["steps"].get("a", {}).get("returncode", 0) not in (0, None)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
