"""Server pieces that need no model: bind policy, API key check, admission, metrics."""

from __future__ import annotations

from assistant.server.app import Sessions
from assistant.server.auth import authorized
from assistant.server.main import check_bind, is_loopback, serve
from assistant.server.metrics import Metrics
from assistant.settings import Settings


def test_loopback_detection():
    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "127.8.9.10"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.2", "example.org"))


def test_non_loopback_bind_needs_a_key_or_an_override(capsys):
    assert check_bind(Settings(host="0.0.0.0")) is not None
    assert check_bind(Settings(host="0.0.0.0", api_key="k")) is None
    assert check_bind(Settings(host="0.0.0.0", allow_insecure_bind=True)) is None
    assert serve(Settings(host="0.0.0.0")) == 2  # refused before any model is loaded
    assert "--api-key" in capsys.readouterr().err


def test_api_key_header_or_browser_subprotocol():
    open_server, keyed = Settings(), Settings(api_key="s3cret")
    assert authorized(open_server, {}, {})
    assert not authorized(keyed, {}, {})
    assert not authorized(keyed, {"authorization": "Bearer wrong"}, {})
    assert authorized(keyed, {"authorization": "Bearer s3cret"}, {})
    assert authorized(keyed, {"sec-websocket-protocol": "realtime, openai-insecure-api-key.s3cret"}, {})


def test_admission_counts_every_transport():
    calls = [1, 2]
    sessions = Sessions(limit=3, others=lambda: len(calls))
    assert sessions.admit() and sessions.total == 3
    assert not sessions.admit()
    calls.pop()
    assert sessions.admit() and sessions.websocket == 2
    sessions.release()
    assert sessions.total == 2


def test_metrics_from_a_response_done_latency():
    m = Metrics()
    latency = {
        "audio_ttfp_ms": 250.0,
        "e2e_ms": 1200.0,
        "audio_ms": 960.0,
        "audio_rtf": 0.4,
        "stages_ms": {"queue": 1.0, "thinker_ttft": 80.0, "codec": None},
        "t_engine_first_audio_s": 10.0,
        "t_first_audio_sent_s": 10.002,
    }
    m.observe_response("completed", latency)
    text = m.render().decode()
    assert 'assistant:audio_ttfp_s_bucket{le="0.3"} 1.0' in text
    assert 'assistant:stage_latency_s_count{stage="thinker_ttft"} 1.0' in text
    assert 'assistant:first_packet_server_delay_s_bucket{le="0.005"} 1.0' in text
    assert 'assistant:responses_total{status="completed"} 1.0' in text


def test_client_secrets_expire_and_are_bounded():
    from assistant.server.auth import ClientSecrets

    t = [1000.0]
    store = ClientSecrets(max_live=2, clock=lambda: t[0])
    value, expires_at = store.mint(60)
    assert value.startswith("ek_") and expires_at == 1060 and store.valid(value)
    keyed = Settings(api_key="k")
    assert authorized(keyed, {"authorization": f"Bearer {value}"}, client_secrets=store)
    assert not authorized(keyed, {"authorization": f"Bearer {value}"})  # no store: the key only
    assert store.mint(10) is not None and store.mint(10) is None  # full
    t[0] = 1060.0
    assert not store.valid(value) and not authorized(keyed, {"authorization": f"Bearer {value}"}, client_secrets=store)
    assert store.mint(10) is not None  # expired ones were pruned


def test_origin_check():
    from assistant.server.auth import origin_allowed

    local = Settings()
    same = {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}
    assert origin_allowed(local, {"host": "127.0.0.1:8000"})  # no Origin: not a browser
    assert origin_allowed(local, same)
    assert not origin_allowed(local, {**same, "origin": "https://evil.example"})
    assert not origin_allowed(local, {**same, "origin": "null"})
    rebound = {"host": "evil.example:8000", "origin": "http://evil.example:8000"}
    assert not origin_allowed(local, rebound)  # DNS rebinding onto a loopback server
    assert origin_allowed(Settings(host="0.0.0.0", api_key="k"), rebound)  # a real host name on a public bind
    listed = Settings(allowed_origins="https://app.example, http://localhost:5173/")
    assert origin_allowed(listed, {**same, "origin": "http://localhost:5173"})
    assert origin_allowed(Settings(allowed_origins="*"), {**same, "origin": "https://any.example"})


def test_log_redaction():
    import logging

    from assistant.server.auth import RedactSecrets

    f = RedactSecrets("sk-live-123")
    for msg, args in [
        ("< authorization: Bearer %s", ("sk-live-123",)),
        ("< sec-websocket-protocol: realtime, openai-insecure-api-key.%s", ("whatever-key",)),
        ("minted %s", ("ek_abcDEF123-_x",)),
        ("headers %r", ({"Authorization": "Bearer guess"},)),
    ]:
        record = logging.LogRecord("uvicorn.error", logging.DEBUG, "x", 1, msg, args, None)
        f.filter(record)
        text = record.getMessage()
        assert not any(s in text for s in ("sk-live-123", "whatever-key", "abcDEF", "guess")), text


def test_startup_heap_is_frozen_without_its_garbage():
    """`assistant serve` freezes what is alive after warm-up (server/main.py
    freeze_startup_heap): garbage from before is collected first, not kept forever, and
    cycles made afterwards are still collected. In a child process: freezing is
    process-wide."""
    import subprocess
    import sys

    code = """
import gc, weakref
from assistant.server.main import freeze_startup_heap

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

before = cycle()  # garbage at startup
frozen = freeze_startup_heap()
assert before() is None, "startup garbage was frozen"
assert frozen > 1000 and gc.get_freeze_count() == frozen, frozen
after = cycle()
gc.collect()
assert after() is None, "a cycle made after the freeze was not collected"
print("ok", frozen)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")
