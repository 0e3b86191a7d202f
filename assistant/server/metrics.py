"""Prometheus metrics for /metrics.

Names follow vLLM-Omni's `vllm_omni:*` families where one exists, under our own prefix
(`vllm_omni:audio_ttfp_s` -> `assistant:audio_ttfp_s`, likewise `audio_rtf`,
`audio_duration_s`, `e2e_request_latency_s`), so dashboards and `vllm bench` vocabulary
carry over. Each app gets its own registry (tests build many apps in one process).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "assistant:"
# vLLM-Omni's latency buckets span 0.05 s..300 s; first packets of interest sit at 0.1-2 s.
SECONDS_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0, 1.1, 1.5, 2.0, 5.0)  # the SLO red line is 1.0
SERVER_DELAY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.05, 0.1, 0.25, 1.0)
STAGES = ("queue", "preprocessing", "thinker_ttft", "talker_ttft", "code_predictor", "codec")

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.audio_ttfp = Histogram(
            PREFIX + "audio_ttfp_s",
            "Commit or VAD endpoint to the first audio packet written to the client",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.audio_rtf = Histogram(
            PREFIX + "audio_rtf", "Generation time over audio duration per response", buckets=RTF_BUCKETS, registry=r
        )
        self.audio_duration = Histogram(
            PREFIX + "audio_duration_s", "Audio generated per response", buckets=SECONDS_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            PREFIX + "e2e_request_latency_s",
            "Commit or VAD endpoint to the end of the response",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            PREFIX + "stage_latency_s",
            "Engine stage times of the first packet (Qwen3-Omni tech report, Table 2 rows)",
            ["stage"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.server_delay = Histogram(
            PREFIX + "first_packet_server_delay_s",
            "Engine's first audio chunk to its write on the transport (what the server adds)",
            buckets=SERVER_DELAY_BUCKETS,
            registry=r,
        )
        self.upstream_ttfp = Histogram(
            PREFIX + "upstream_audio_ttfp_s",
            "Front end (--upstream): the upstream's own first-packet time, from its response.done",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.frontend_added = Histogram(
            PREFIX + "frontend_added_s",
            "Front end (--upstream): our audio_ttfp minus the upstream's (what the front end adds)",
            buckets=SERVER_DELAY_BUCKETS,
            registry=r,
        )
        self.responses = Counter(PREFIX + "responses", "Responses by final status", ["status"], registry=r)
        self.active_sessions = Gauge(PREFIX + "active_sessions", "Open realtime sessions", ["transport"], registry=r)
        # Admission by measured load (issue #19; engine/capacity.py), set when /metrics is read
        self.load = Gauge(PREFIX + "load", "Sum of the speaking responses' real-time factors", registry=r)
        self.capacity_sessions = Gauge(
            PREFIX + "capacity_sessions",
            "Sessions within the load threshold and the burst first-packet bound",
            registry=r,
        )

    def observe_response(self, status: str, latency: dict[str, Any]) -> None:
        """Record one response from the `latency` extra of its response.done."""
        self.responses.labels(status).inc()

        def seconds(key: str) -> float | None:
            value = latency.get(key)
            return None if value is None else value / 1000.0

        for hist, value in (
            (self.audio_ttfp, seconds("audio_ttfp_ms")),
            (self.e2e, seconds("e2e_ms")),
            (self.audio_duration, seconds("audio_ms")),
            (self.audio_rtf, latency.get("audio_rtf")),
            (self.upstream_ttfp, seconds("upstream_ttfp_ms")),
            (
                self.frontend_added,
                None if latency.get("frontend_added_ms") is None else max(0.0, seconds("frontend_added_ms")),
            ),
        ):
            if value is not None:
                hist.observe(value)
        for stage, ms in (latency.get("stages_ms") or {}).items():
            if ms is not None:
                self.stage.labels(stage).observe(ms / 1000.0)
        sent, engine = latency.get("t_first_audio_sent_s"), latency.get("t_engine_first_audio_s")
        if sent is not None and engine is not None:
            self.server_delay.observe(max(0.0, sent - engine))

    def watch_memory(self, figures: Callable[[], dict | None]) -> None:
        """Export the caches' byte budget (engine/budget.py snapshot) at every scrape."""
        self.registry.register(_MemoryCollector(figures))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _MemoryCollector:
    """Read at scrape time: the figures live with the engine, which the worker thread updates."""

    def __init__(self, figures: Callable[[], dict | None]) -> None:
        self._figures = figures

    def collect(self):
        f = self._figures()
        if f is None:
            return
        yield GaugeMetricFamily(
            PREFIX + "kv_budget_bytes", "Byte budget of the caches (--kv-cache-gb)", f["budget_bytes"]
        )
        in_use = GaugeMetricFamily(
            PREFIX + "kv_in_use_bytes",
            "Cache bytes charged to the budget: live (reserved) and idle (cached)",
            labels=["kind"],
        )
        in_use.add_metric(["live"], f["live_bytes"])
        in_use.add_metric(["cached"], f["cached_bytes"])
        yield in_use
        yield GaugeMetricFamily(PREFIX + "kv_peak_bytes", "Most cache bytes charged at once", f["peak_bytes"])
        yield GaugeMetricFamily(
            PREFIX + "camera_frame_bytes",
            "Camera frames and images the conversations hold (host)",
            f["camera_frame_bytes"],
        )
        yield CounterMetricFamily(
            PREFIX + "kv_evictions", "Idle conversations' caches evicted for the budget", f["evictions"]
        )
        refusals = CounterMetricFamily(PREFIX + "kv_refusals", "Refused for the budget", labels=["what"])
        refusals.add_metric(["session"], f["refused_sessions"])
        refusals.add_metric(["response"], f["refused_responses"])
        yield refusals
