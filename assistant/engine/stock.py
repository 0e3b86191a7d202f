"""How to ask stock `generate()` for what the streaming engine computes.

The oracle tests and the engine-only benchmark compare the engine with stock
`Qwen3OmniMoeForConditionalGeneration.generate()`; both build its arguments here so
that "the same answer length, greedy" means one thing.
"""

from __future__ import annotations

from .api import Sampling


def greedy_generate_kwargs(sampling: Sampling, voice: str) -> dict:
    """Stock arguments for a greedy answer with the engine's length limits."""
    return {
        "speaker": voice,
        "return_audio": True,
        "thinker_do_sample": False,
        "talker_do_sample": False,
        "thinker_max_new_tokens": sampling.max_tokens,
        "thinker_min_new_tokens": sampling.min_tokens,
        # The talker's last code-0 of a max-length run gets no residual codes, so stock
        # needs one more step to produce max_frames whole frames.
        "talker_max_new_tokens": sampling.max_frames + 1,
        "talker_min_new_tokens": sampling.min_frames,
    }
