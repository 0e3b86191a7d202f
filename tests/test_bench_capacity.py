"""Issue #19's benchmark parts as plain data: the capacity figure, burst arrivals'
rendezvous, and the flags that only some arrivals take."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

from assistant.bench.metrics import capacity
from assistant.bench.users import Rendezvous

ROOT = Path(__file__).resolve().parents[1]


def _level(conc: int, ttfps: list[float], underruns: int = 0, rtf: float = 0.5, refused: int = 0) -> list[dict]:
    recs = [
        {"concurrency": conc, "kind": "audio", "audio_ttfp_ms": t, "underruns": 0, "audio_rtf": rtf, "error": None}
        for t in ttfps
    ]
    recs[0]["underruns"] = underruns
    recs += [{"concurrency": conc, "kind": "audio", "status": "refused", "error": "refused"}] * refused
    return recs


def test_capacity_is_the_largest_level_that_and_all_below_pass():
    records = _level(1, [100, 100, 100]) + _level(2, [120, 140]) + _level(4, [140, 150, 149, 150]) + _level(8, [400])
    cap = capacity(records)
    assert cap["p50_at_1_ms"] == 100 and cap["capacity"] == 4
    assert [v["passed"] for v in cap["levels"].values()] == [True, True, True, False]
    assert cap["levels"]["1"]["inverse_rtf_p50"] == 2.0
    # An underrun, or a user turned away, fails its level, and every level above it.
    assert capacity(_level(1, [100]) + _level(2, [110], underruns=1) + _level(4, [110]))["capacity"] == 1
    assert capacity(_level(1, [100]) + _level(2, [110], refused=1))["capacity"] == 1
    assert capacity(_level(1, [100, 100, 100, 300]))["capacity"] == 0  # even one user misses its own bound
    assert capacity(_level(2, [100]))["capacity"] is None  # no 1-user baseline
    assert capacity(_level(1, [100]), kind="video")["capacity"] is None


def test_rendezvous_starts_every_turn_together_and_a_leaver_holds_nobody_back():
    async def main() -> list[tuple[str, int]]:
        meet, log = Rendezvous(3), []

        async def user(name: str, turns: int, delay: float) -> None:
            try:
                for turn in range(turns):
                    await asyncio.sleep(delay)
                    await meet.wait()
                    log.append((name, turn))
            finally:
                meet.leave()

        await asyncio.wait_for(asyncio.gather(user("a", 2, 0.0), user("b", 2, 0.02), user("c", 1, 0.01)), 5)
        return log

    log = asyncio.run(main())
    assert sorted(log[:3]) == [("a", 0), ("b", 0), ("c", 0)]  # turn 0 released when the slowest arrived
    assert sorted(log[3:]) == [("a", 1), ("b", 1)]  # c left: a and b go on without it


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_latency", ROOT / "scripts" / "bench_latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arrival_flags_are_honoured_or_refused():
    bench = _bench_module()
    args = bench.parse_args([])
    assert (args.arrival, args.stagger_ms, args.answer_tokens, args.answer_frames) == ("staggered", 300, None, None)
    assert bench.ANSWER_FRAMES * 0.08 == pytest.approx(5.0, abs=0.1)  # answers of about 5 s by default
    with pytest.raises(SystemExit):
        bench.parse_args(["--arrival", "burst", "--stagger-ms", "100"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--seed", "3"])
    poisson = bench.parse_args(["--arrival", "poisson", "--seed", "3", "--stagger-ms", "500"])
    starts = [c.start_delay_s for c in bench._user_configs(poisson, "ws://x", 6)]
    assert starts[0] == 0 and starts == sorted(starts) and len(set(starts)) == 6
    assert starts == [c.start_delay_s for c in bench._user_configs(poisson, "ws://x", 6)]  # seeded
    burst = bench._user_configs(bench.parse_args(["--arrival", "burst"]), "ws://x", 4)
    assert len({id(c.rendezvous) for c in burst}) == 1 and burst[0].rendezvous.parties == 4


def test_admission_flags_configure_only_the_in_process_server():
    bench = _bench_module()
    assert bench.parse_args(["--max-sessions", "auto", "--load-threshold", "0.7"]).load_threshold == 0.7
    assert bench.parse_args(["--max-sessions", "auto", "--first-packet-burst-ratio", "3"]).first_packet_burst_ratio == 3
    assert bench.parse_args(["--max-sessions", "6"]).max_sessions == 6
    for bad in (
        ["--max-sessions", "lots"],
        ["--load-threshold", "0.7"],  # only with auto
        ["--first-packet-burst-ratio", "3"],
        ["--url", "ws://h/v1/realtime", "--max-sessions", "auto"],  # a remote server's own settings apply
    ):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
