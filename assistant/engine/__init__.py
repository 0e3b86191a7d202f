"""The streaming engine: one async interface (api.Engine) over a resident Qwen3-Omni."""

from __future__ import annotations

from ..settings import Settings
from .api import Engine


def load_engine(settings: Settings) -> Engine:
    """The engine `assistant serve` uses; call `await engine.start()` before traffic.
    With `upstream_url` set, a remote OpenAI-Realtime server generates (scale-out)."""
    if settings.upstream_url:
        from .upstream import UpstreamEngine

        if settings.kv_cache_gb:  # the upstream server holds the caches and keeps its own budget
            raise ValueError("--kv-cache-gb budgets a local model's caches; it does not apply with --upstream")

        return UpstreamEngine(settings)
    from .local import LocalEngine

    return LocalEngine(settings)
