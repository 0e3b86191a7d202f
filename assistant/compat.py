"""Fixes for known problems in the pinned transformers release (5.24).

Keep this file small and cite the reason for each fix; delete a fix when the pin moves
past it.
"""

from __future__ import annotations


def patch_loaded_model(model) -> None:
    """Apply load-time fixes to a `Qwen3OmniMoeForConditionalGeneration`.

    1. The talker's `get_rope_index` (shared with the thinker since transformers 5.1x)
       reads `self.config.audio_config.n_window` to count audio tokens, but the talker
       config has no `audio_config`; audio input to `generate(return_audio=True)` then
       raises AttributeError. The talker must count audio tokens exactly as the thinker
       does, so it is given the thinker's audio config (read-only use).
    """
    talker = getattr(model, "talker", None)
    if talker is not None and not hasattr(talker.config, "audio_config"):
        object.__setattr__(talker.config, "audio_config", model.config.thinker_config.audio_config)
