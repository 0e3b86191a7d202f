"""Admission by measured load (issue #19): the load model as plain data, the Sessions
policy, and a real server that measures its load at warm-up and turns sessions away."""

from __future__ import annotations

import json
import urllib.request

import pytest
import websockets
from live_server import tiny_server

from assistant.engine.capacity import FRAME_S, LoadModel, LoadReport
from assistant.server.app import AUTO_FALLBACK_SESSIONS, Sessions


def test_load_model_interpolates_measured_batch_sizes():
    m = LoadModel(max_batch=8)
    assert not m.measured and m.capacity(0.8) == 0
    for phase, rows, s in (("frame", 1, 0.010), ("advance", 1, 0.010), ("frame", 4, 0.016), ("advance", 4, 0.016)):
        m.observe(phase, rows, s)
    m.observe("prefill", 1, 5.0)  # not a decode step: not a load
    assert not m.measured  # live steps alone are not a calibration
    m.calibrated = True
    assert m.measured
    assert m.load(1) == pytest.approx(0.020 / FRAME_S)  # 0.25
    assert m.step_s("frame", 2) == pytest.approx(0.012)  # between the measured sizes
    assert m.step_s("frame", 6) == pytest.approx(0.020)  # along the last two
    assert m.step_s("frame", 16) == pytest.approx(2 * m.step_s("frame", 8))  # past max_batch: two steps
    # load(N) = 2 x (0.010 + 0.002 (N - 1)) / 0.08 up to 8 (0.6), then N/8 x load(8): 0.75 at 10, 0.825 at 11
    assert m.capacity(0.8) == 10
    m.observe("frame", 4, 0.116)  # a slower measure moves the moving average, not replaces it
    assert m.step_s("frame", 4) == pytest.approx(0.016 + 0.2 * 0.1)
    one = LoadModel()
    one.calibrated = True
    one.observe("frame", 1, 0.02)
    one.observe("advance", 1, 0.02)
    assert one.load(3) == pytest.approx(3 * one.load(1))  # one size known: no batching gain assumed
    report = one.report(sessions=1, live=0.9, speaking=2, threshold=0.8)
    assert report.projected == pytest.approx(max(one.load(2), 0.9 + one.load(1)))  # the live load when higher
    assert report.capacity_sessions == 1


def test_a_burst_bound_caps_capacity_by_the_first_packets_of_all_at_once():
    m = LoadModel(max_batch=8)
    m.calibrated = True
    m.observe("frame", 1, 0.002)
    m.observe("advance", 1, 0.002)
    m.observe("frame", 4, 0.004)
    m.observe("advance", 4, 0.004)
    assert m.capacity(0.8) >= 8 and m.first_packet_ratio(3) == 1.0  # no first packet timed: no bound yet
    m.observe_first_packets(1, 0.020)
    assert m.first_packet_ratio(2) == pytest.approx(2.0)  # one size known: no batching gain assumed
    m.observe_first_packets(4, 0.050)
    # 20 ms alone, 50 ms for 4 at once: 1.5x at 2, 2.0x at 3, 2.5x at 4, 4.5x at 8 (along the last two), twice that at 16 (two batches)
    assert [round(m.first_packet_ratio(n), 3) for n in (1, 2, 3, 4, 8)] == [1.0, 1.5, 2.0, 2.5, 4.5]
    assert m.first_packet_ratio(16) == pytest.approx(2 * m.first_packet_ratio(8))
    assert m.capacity(0.8, 2.0) == 3 and m.capacity(0.8, 0.0) == m.capacity(0.8)
    within = m.report(sessions=2, live=0.0, speaking=0, threshold=0.8, max_first_packet_ratio=2.0)
    assert within.first_packet_ratio == pytest.approx(2.0) and within.has_room() and within.capacity_sessions == 3
    past = m.report(sessions=3, live=0.0, speaking=0, threshold=0.8, max_first_packet_ratio=2.0)
    assert past.projected < 0.8 and not past.has_room()  # the load has room; the burst bound does not
    assert m.report(sessions=3, live=0.0, speaking=0, threshold=0.8).has_room()  # without the bound
    assert past.as_dict()["projected_first_packet_ratio"] == 2.5 and past.as_dict()["first_packet_burst_ratio"] == 2.0


def test_sessions_refuse_past_the_burst_bound_and_say_so():
    auto = Sessions("auto", load=lambda n: LoadReport(0.0, 0, 0.1, 2, 0.8, True, 1.0 + 0.6 * n, 2.0), threshold=0.8)
    # burst ratio with the new one: 1.0, 1.6, then 2.2 > 2.0, while the load stays at 0.1
    assert [auto.admit() for _ in range(3)] == [True, True, False]
    assert "first packets" in auto.refusal() and "2.2x" in auto.refusal()


def _report(projected: float, measured: bool = True) -> LoadReport:
    return LoadReport(0.1, 1, projected, 3, 0.8, measured)


def test_sessions_admit_by_projected_load_or_by_number():
    seen = []

    def load(n: int) -> LoadReport:
        seen.append(n)
        return _report(0.3 * (n + 1))

    auto = Sessions("auto", load=load, threshold=0.8)
    # projected with the new one: 0.3 (none open), 0.6 (one open), then 0.9 >= 0.8
    assert [auto.admit() for _ in range(4)] == [True, True, False, False]
    assert seen[-1] == 2 and "capacity" in auto.refusal()
    unmeasured = Sessions("auto", load=lambda n: _report(5.0, measured=False))
    assert sum(unmeasured.admit() for _ in range(20)) == AUTO_FALLBACK_SESSIONS
    assert Sessions("auto", load=lambda n: _report(5.0)).admit()  # the first session is always served
    fixed = Sessions(2, load=lambda n: _report(0.0))
    assert [fixed.admit() for _ in range(3)] == [True, True, False] and fixed.refusal() == "all 2 sessions are in use"
    with pytest.raises(ValueError, match="max_sessions"):
        Sessions("many")


@pytest.fixture(scope="module")
def server(tiny_dir):
    # A threshold no load can stay under: one session is served, the next is turned away.
    with tiny_server(tiny_dir, log_level="warning", load_threshold=0.001) as running:
        assert running.settings.max_sessions == "auto"  # the default
        yield running


def _get(server, path: str) -> str:
    with urllib.request.urlopen(server.url + path, timeout=30) as r:
        return r.read().decode()


async def test_a_server_at_capacity_turns_new_sessions_away_and_reports_its_load(server):
    health = json.loads(_get(server, "/health"))
    assert health["load_measured"] is True and health["load_threshold"] == 0.001
    assert health["max_sessions"] == "auto" and health["capacity_sessions"] == 0 and health["load"] == 0
    assert health["first_packet_burst_ratio"] == 2.0 and health["projected_first_packet_ratio"] == 1.0  # 1 session
    url = server.url.replace("http://", "ws://") + "/v1/realtime"
    async with websockets.connect(url) as first:
        assert json.loads(await first.recv())["type"] == "session.created"
        async with websockets.connect(url) as second:
            event = json.loads(await second.recv())
            assert event["type"] == "error" and event["error"]["code"] == "session_limit_reached"
            assert "capacity" in event["error"]["message"]
            await second.wait_closed()
            assert second.close_code == 1013
        assert json.loads(_get(server, "/health"))["projected_load"] > 0.001
    metrics = _get(server, "/metrics")
    assert "assistant:load " in metrics and "assistant:capacity_sessions 0.0" in metrics
