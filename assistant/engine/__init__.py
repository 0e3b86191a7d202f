"""The streaming engine: one async interface (api.Engine) over a resident Qwen3-Omni."""

from __future__ import annotations

from ..settings import Settings
from .api import Engine


def load_engine(settings: Settings) -> Engine:
    """The engine `assistant serve` uses; call `await engine.start()` before traffic.
    With `upstream_url` set, a remote OpenAI-Realtime server generates (scale-out)."""
    if settings.upstream_url:
        from .upstream import UpstreamEngine

        return UpstreamEngine(settings)
    from .local import LocalEngine

    return LocalEngine(settings)
