"""Pure tests of the desktop client's sans-I/O parts and the benchmark's metrics."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from assistant.bench import metrics
from assistant.client.buffers import HoldDetector, JitterBuffer, PreRoll
from assistant.client.core import ClientCore, PlayAudio, TurnReport


def pcm(ms: int, value: int = 1000, rate: int = 24_000) -> bytes:
    return np.full(rate * ms // 1000, value, dtype="<i2").tobytes()


def delta(rid: str, item: str, data: bytes) -> dict:
    return {
        "type": "response.output_audio.delta",
        "response_id": rid,
        "item_id": item,
        "delta": base64.b64encode(data).decode(),
    }


# ---------------------------------------------------------------------------- pre-roll


def test_preroll_keeps_only_the_last_300_ms():
    roll = PreRoll(300, 24_000)
    for i in range(50):  # 50 x 20 ms = 1 s, each chunk tagged with its index
        roll.push(np.full(480, i, dtype="<i2").tobytes())
    data = np.frombuffer(roll.take(), dtype="<i2")
    assert len(data) == 300 * 24  # exactly 300 ms
    assert data[-1] == 49 and data[0] == 35  # the last 15 chunks
    assert roll.take() == b""


def test_preroll_zero_keeps_nothing():
    roll = PreRoll(0, 24_000)
    roll.push(pcm(20))
    assert roll.take() == b""


# ---------------------------------------------------------------------------- jitter buffer


def test_jitter_buffer_waits_for_prebuffer_then_plays_in_order():
    jb = JitterBuffer(prebuffer=100)
    jb.push(np.arange(60, dtype=np.float32))
    assert not jb.pull(10).any() and jb.played == 0  # 60 < 100 queued: still buffering
    jb.push(np.arange(60, 120, dtype=np.float32))
    jb.mark(offset=-70)  # time sample 50 (120 queued - 70)
    out = jb.pull(50, now=7.0)
    assert out.tolist() == list(range(50)) and jb.played == 50 and jb.mark_played_at is None
    out = jb.pull(100, now=8.0)
    assert jb.mark_played_at == 8.0
    assert out[:70].tolist() == list(range(50, 120)) and not out[70:].any()
    assert jb.underruns == 1 and jb.played == 120


def test_jitter_buffer_complete_stream_plays_out_without_prebuffer():
    jb = JitterBuffer(prebuffer=1000)
    jb.push(np.ones(10, np.float32))
    jb.mark_complete()
    assert jb.pull(20)[:10].all() and jb.underruns == 0 and jb.idle


def test_jitter_buffer_clear_drops_and_resets():
    jb = JitterBuffer(prebuffer=0)
    jb.push(np.ones(100, np.float32))
    jb.pull(30)
    assert jb.clear() == 70 and jb.played == 0 and jb.idle
    assert not jb.pull(10).any()


# ---------------------------------------------------------------------------- key hold detection


def test_hold_space_press_repeat_release():
    d = HoldDetector()
    assert d.key(0.0) == "press"
    assert d.tick(0.3) is None  # waiting for the first auto-repeat
    for t in np.arange(0.5, 2.0, 0.033):
        assert d.key(float(t)) is None
    assert d.tick(2.05) is None
    assert d.tick(2.2) == "release" and not d.down


def test_tap_without_repeat_latches_until_next_tap():
    d = HoldDetector(first_repeat_ms=700)
    assert d.key(0.0) == "press"
    assert d.tick(0.8) is None and d.down  # no repeat: latched, still talking
    assert d.tick(5.0) is None and d.down
    assert d.key(5.1) == "release"


def test_toggle_mode_taps():
    d = HoldDetector(toggle=True)
    assert d.key(0.0) == "press"
    assert d.key(0.03) is None  # auto-repeat of the same press
    assert d.tick(3.0) is None and d.down
    assert d.key(3.0) == "release"
    assert d.key(4.0) == "press"


# ---------------------------------------------------------------------------- client core


def test_session_update_manual_and_vad():
    manual = ClientCore(manual=True, voice="Chelsie").session_update()
    assert manual["session"]["audio"]["input"]["turn_detection"] is None
    assert manual["session"]["audio"]["output"]["voice"] == "Chelsie"
    vad = ClientCore(manual=False, vad={"silence_duration_ms": 400}).session_update()
    assert vad["session"]["audio"]["input"]["turn_detection"] == {"type": "server_vad", "silence_duration_ms": 400}


def run_turn(core: ClientCore, t0: float = 10.0) -> list:
    sent = core.release(t0)
    assert [e["type"] for e in sent] == ["input_audio_buffer.commit", "response.create"]
    effects = []
    effects += core.receive({"type": "response.created", "response": {"id": "resp_1"}}, t0 + 0.01)
    effects += core.receive(
        {"type": "response.output_item.added", "response_id": "resp_1", "item": {"id": "item_9"}}, t0 + 0.02
    )
    quiet = b"\0\0" * 240  # 10 ms of silence, then sound
    effects += core.receive(delta("resp_1", "item_9", quiet + pcm(70)), t0 + 0.2)
    effects += core.receive(delta("resp_1", "item_9", pcm(160)), t0 + 0.25)
    effects += core.receive(delta("resp_1", "item_9", pcm(320)), t0 + 0.6)  # plays from 0.44: a 160 ms underrun
    return effects


def test_turn_metrics_from_events():
    core = ClientCore()
    effects = run_turn(core)
    assert sum(isinstance(e, PlayAudio) for e in effects) == 3
    latency = {"audio_ttfp_ms": 150.0, "audio_rtf": 0.5, "stages_ms": {"thinker_ttft": 40.0}, "prefill_tokens": 47}
    done = core.receive(
        {"type": "response.done", "response": {"id": "resp_1", "status": "completed", "latency": latency}}, 10.7
    )
    report = next(e for e in done if isinstance(e, TurnReport))
    s = report.turn.summary()
    assert s["status"] == "completed" and core.active_response is None
    assert s["first_delta_ms"] == pytest.approx(200.0)
    assert s["voice_to_voice_ms"] == pytest.approx(210.0)  # + 10 ms of leading silence
    assert s["vad_wait_ms"] == 0.0 and s["v2v_minus_vad_ms"] == pytest.approx(210.0)
    assert s["audio_ttfp_ms"] == 150.0 and s["stage_thinker_ttft_ms"] == 40.0 and s["prefill_tokens"] == 47
    assert s["audio_ms"] == pytest.approx(560.0)
    assert s["underruns"] == 1 and s["worst_gap_ms"] == pytest.approx(160.0)


def test_barge_in_cancels_and_truncates_to_what_was_played():
    core = ClientCore()
    run_turn(core)
    sent = core.press(played_ms=123.7)
    assert sent[0] == {"type": "response.cancel", "response_id": "resp_1"}
    assert sent[1] == {
        "type": "conversation.item.truncate",
        "item_id": "item_9",
        "content_index": 0,
        "audio_end_ms": 123,
    }
    assert sent[2] == {"type": "input_audio_buffer.clear"}
    # Deltas still in flight for the cancelled response are not played.
    assert core.receive(delta("resp_1", "item_9", pcm(80)), 11.0) == []


def test_press_after_everything_played_sends_no_truncate():
    core = ClientCore()
    run_turn(core)
    core.receive({"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}, 10.7)
    assert core.press(played_ms=560.0) == [{"type": "input_audio_buffer.clear"}]
    assert core.press(played_ms=None) == [{"type": "input_audio_buffer.clear"}]


def test_server_vad_turn_uses_server_commit_time():
    core = ClientCore(manual=False)
    core.speech_ended(5.0)
    core.receive({"type": "input_audio_buffer.committed", "item_id": "item_1"}, 5.55)
    core.receive({"type": "response.created", "response": {"id": "r"}}, 5.56)
    core.receive(delta("r", "i", pcm(80)), 5.75)
    core.receive({"type": "response.done", "response": {"id": "r", "status": "completed"}}, 6.0)
    s = core.turns[0].summary()
    assert s["vad_wait_ms"] == pytest.approx(550.0)
    assert s["first_delta_ms"] == pytest.approx(200.0)
    assert s["v2v_minus_vad_ms"] == pytest.approx(200.0)


def test_error_event_becomes_an_effect():
    core = ClientCore()
    (err,) = core.receive({"type": "error", "error": {"code": "session_limit_reached", "message": "full"}}, 1.0)
    assert err.code == "session_limit_reached" and core.errors == [err]


# ---------------------------------------------------------------------------- metrics


def test_playout_counts_only_gaps_over_100_ms():
    assert metrics.playout([(0, 80), (80, 80), (250, 80)])["underruns"] == 0  # a 90 ms stall
    r = metrics.playout([(0, 80), (80, 80), (300, 80)])
    assert r["underruns"] == 1 and r["worst_gap_ms"] == pytest.approx(140.0)
    assert metrics.playout([(0, 80), (200, 80)], jitter_ms=150)["underruns"] == 0


def test_percentiles_and_summary():
    values = list(range(1, 101))
    assert metrics.percentile(values, 50) == pytest.approx(50.5)
    assert metrics.percentile([], 50) is None
    rows = metrics.summarize([{"a": v} for v in values] + [{"a": None}], ["a", "b"])
    assert rows["a"]["n"] == 100 and rows["a"]["p99"] == pytest.approx(99.01)
    assert rows["b"] == {"n": 0, "p50": None, "p90": None, "p99": None, "mean": None}


def test_concurrency_ratio_compares_each_kind_with_itself():
    def rec(c, kind, ms, underruns=0, error=None):
        return {"concurrency": c, "kind": kind, "audio_ttfp_ms": ms, "underruns": underruns, "error": error}

    records = [rec(1, "audio", 40), rec(1, "audio", 60), rec(1, "video", 90)]
    records += [rec(4, "audio", ms) for ms in range(50, 100, 5)] + [rec(4, "audio", 1000, error="x")]
    records += [rec(4, "video", 200, underruns=2), rec(2, "audio", 500)]
    out = metrics.concurrency_ratio(records)
    assert out["audio"] == {"p50_at_1": 50.0, "p90_at_4": 90.5, "ratio": 1.81, "underruns_at_4": 0}
    assert out["video"]["ratio"] == pytest.approx(200 / 90, abs=1e-3) and out["video"]["underruns_at_4"] == 2
    assert metrics.concurrency_ratio(records, at=8) == {}


def test_first_audible_offset():
    data = b"\0\0" * 480 + np.full(10, 2000, dtype="<i2").tobytes()
    assert metrics.first_audible_offset_ms(data, 24_000) == pytest.approx(20.0)
    assert metrics.first_audible_offset_ms(b"\0\0" * 100, 24_000) is None
