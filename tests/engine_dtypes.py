"""The device and dtypes the engine's test modules run in.

Every engine module runs in both dtypes the server uses: float32 (the CPU default) and
bfloat16 (the checkpoint's dtype and the CUDA default), because float32 hides dtype
mixing that bfloat16 turns into errors or wrong tokens. `ASSISTANT_TEST_DEVICE=cuda`
runs the same modules on a GPU (scripts/gpu_check.sh); CI has none and uses the CPU.
"""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = torch.device(os.environ.get("ASSISTANT_TEST_DEVICE", "cpu"))
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# Where bfloat16 makes two correct paths differ. A prefix served from the conversation cache (or early prefill)
# was computed with other shapes than the full prefill it is compared with: fewer query rows, one decoded token
# at a time. CPU and CUDA kernels choose blocking and reduction order by shape, so a value can come out a few
# bf16 ulps apart (eps 2**-7; measured here on the tiny model: 0 in the embeddings, 2**-13 after two layers,
# one ulp of the last layer's output). float32 has the same effect at 1e-7, below every greedy decision the
# tiny model makes, so there the paths stay bit-equal. In bfloat16 one ulp is enough to flip a near-tie of
# the random-weight model's logits, after which the two answers are different, equally valid texts: their
# tokens and codes cannot be compared. What is compared instead is the state the cache carries: every key
# and value of the shared prompt. Rounding moves a few elements by a few ulps; a wrong position, a wrong
# crop or another turn's content moves every element by about its own size, which these bounds catch.
BF16_MAX_REL = 2**-3  # per element: |a - b| <= MAX_REL * (|b| + 1); measured up to 0.094 at |b| ~ 1 after a
# 10 s turn early-prefilled in five 2 s windows, each a prefill of another shape (rounding accumulates per piece)
BF16_MEAN_REL = 2**-8  # over a tensor: mean |a - b| <= MEAN_REL * mean |b| (noise is sparse)


def assert_state_close(mine: torch.Tensor, full: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Two computations of the same keys/values: equal to float32 rounding, or to the bf16 bounds above."""
    assert mine.shape == full.shape, (what, mine.shape, full.shape)
    if dtype != torch.bfloat16:
        torch.testing.assert_close(mine, full, rtol=1e-4, atol=1e-4, msg=what)
        return
    a, b = mine.float(), full.float()
    diff = (a - b).abs()
    mean = float(diff.mean())
    stats = f"max |diff| {diff.max():.3g}, mean |diff| {mean:.3g}, mean |b| {float(b.abs().mean()):.3g}"
    assert bool((diff <= BF16_MAX_REL * (b.abs() + 1)).all()), f"{what}: {stats}"
    assert mean <= BF16_MEAN_REL * float(b.abs().mean()), f"{what}: {stats}"


def assert_kv_close(mine, full, n: int, dtype: torch.dtype, what: str) -> None:
    """The first n positions of two DynamicCaches (every layer's keys and values)."""
    for i, (a, b) in enumerate(zip(mine.layers, full.layers, strict=True)):
        assert a.keys.shape[-2] >= n and b.keys.shape[-2] >= n, (what, n)
        assert_state_close(a.keys[..., :n, :], b.keys[..., :n, :], dtype, f"{what} layer {i} keys")
        assert_state_close(a.values[..., :n, :], b.values[..., :n, :], dtype, f"{what} layer {i} values")


def exact(dtype: torch.dtype) -> bool:
    """Whether two correct paths give bit-equal tokens and codes in this dtype (see above)."""
    return dtype != torch.bfloat16


def assert_same_answer(job_c, codes_c, job_p, codes_p, audio_c=None, audio_p=None, what=""):
    """A response served from a cached or early-prefilled prefix (job_c) equals one prefilled in full
    (job_p): in float32 the same tokens, codes and audio; in bfloat16 (see above) the same prompt and
    the same thinker KV over it, within the stated bounds. (Early prefill featurises audio per encoder
    window, so its keys differ from a full prefill's by more than 1e-4 even in float32, below any
    greedy decision: float32 compares the answers, as it always did.)"""
    assert job_c._prompt_ids.tolist() == job_p._prompt_ids.tolist(), what
    if exact(job_c.res.dtype):
        assert job_c._tokens == job_p._tokens, f"{what}: text differs with the cache"
        assert torch.equal(codes_c, codes_p), f"{what}: codec frames differ with the cache"
        assert audio_c == audio_p
        return
    prompt = job_p._prompt_ids.shape[1]
    assert_kv_close(job_c._thinker_cache, job_p._thinker_cache, prompt, job_c.res.dtype, f"{what} thinker KV")


def fp32_only(fixture: str):
    """For a test whose path bf16 adds nothing to (its numerics are covered by the module's bf16 tests):
    run it in float32 only, which keeps the suite's time down (the module fixture `fixture` takes DTYPES)."""
    return pytest.mark.parametrize(fixture, [pytest.param(torch.float32, id="fp32")], indirect=True)
