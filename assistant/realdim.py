"""Qwen3-Omni-30B-A3B-Instruct's architecture with random weights, built without a download.

Two users: `scripts/gpu_bench.py` builds it whole on a GPU (honest compute timings: MoE
routing of random weights is roughly uniform), and the real-dimension smoke test
(tests/test_realdim.py) builds it with every stack cut to 2 layers on the CPU in
bfloat16, so that the real widths, head counts, expert counts, vocabularies and pixel
budgets go through the engine: shape assumptions that the tiny model's dimensions hide
fail there, not on the first GPU run.

Values: the real checkpoint's config.json (../shared/reference/qwen3-omni-streaming.md
§1.1-1.5). Everything the tiny config already has at its real value (special and codec
ids, speakers, vocab sizes, 16 code groups, mel bins, audio windowing, vision patching,
Code2Wav's window and upsampling) is taken from it.
"""

from __future__ import annotations

import contextlib
import math

from . import tiny

# The real depth of every stack, and what `accept_hidden_layer` and DeepStack read from them.
REAL_LAYERS = {"thinker": 48, "talker": 20, "code_predictor": 5, "code2wav": 8, "audio": 32, "vision": 27}
REAL_ACCEPT_HIDDEN_LAYER = 24
REAL_DEEPSTACK = [8, 16, 24]


def real_config(layers: int | None = None):
    """The Instruct architecture; `layers` cuts every stack to that depth (None: real depth).
    A cut model reads the talker's thinker state from its last layer and DeepStack from its
    first vision layers, since layer 24 and vision layer 8 no longer exist."""
    from transformers import Qwen3OmniMoeConfig

    def depth(stack: str) -> int:
        return REAL_LAYERS[stack] if layers is None else min(layers, REAL_LAYERS[stack])

    cfg = tiny.tiny_config().to_dict()
    mrope = {"rope_type": "default", "mrope_section": [24, 20, 20], "interleaved": True, "rope_theta": 1e6}
    th = cfg["thinker_config"]
    th["audio_config"].update(
        encoder_layers=depth("audio"), encoder_attention_heads=20, encoder_ffn_dim=5120, d_model=1280,
        output_dim=2048, downsample_hidden_size=480,
    )  # fmt: skip
    deepstack = REAL_DEEPSTACK if layers is None else list(range(min(depth("vision"), len(REAL_DEEPSTACK))))
    th["vision_config"].update(
        depth=depth("vision"), hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=2048,
        deepstack_visual_indexes=deepstack,
    )  # fmt: skip
    th["text_config"].update(
        hidden_size=2048, intermediate_size=768, num_hidden_layers=depth("thinker"), num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
        rope_parameters=mrope,
    )  # fmt: skip
    tk = cfg["talker_config"]
    tk["text_config"].update(
        hidden_size=1024, intermediate_size=2048, num_hidden_layers=depth("talker"), num_attention_heads=16,
        num_key_value_heads=2, head_dim=128, moe_intermediate_size=384, shared_expert_intermediate_size=768,
        num_experts=128, num_experts_per_tok=6, rope_parameters=dict(mrope),
    )  # fmt: skip
    tk["text_config"]["num_local_experts"] = 128  # what the talker's to_dict() calls num_experts (see _check)
    tk["code_predictor_config"].pop("layer_types", None)  # the tiny depth's list; rebuilt for the new depth
    tk["code_predictor_config"].update(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=depth("code_predictor"), num_attention_heads=16,
        num_key_value_heads=8, head_dim=128,
    )  # fmt: skip
    accept = REAL_ACCEPT_HIDDEN_LAYER if layers is None else depth("thinker")
    tk.update(thinker_hidden_size=2048, accept_hidden_layer=accept)
    cfg["code2wav_config"].update(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=depth("code2wav"), num_attention_heads=16,
        num_key_value_heads=16, decoder_dim=1536,
    )  # fmt: skip
    config = Qwen3OmniMoeConfig(**{k: cfg[k] for k in ("thinker_config", "talker_config", "code2wav_config")})
    _check(config.thinker_config, th, "thinker_config")
    _check(config.talker_config, tk, "talker_config")
    _check(config.code2wav_config, cfg["code2wav_config"], "code2wav_config")
    return config


def _check(config, wanted: dict, path: str) -> None:
    """Every value asked for is the one the config object reports. A dict key can lose to an
    alias: the talker's to_dict() carries `num_local_experts` (attribute_map of `num_experts`),
    which silently kept the tiny model's 4 experts under an update of `num_experts` to 128."""
    for key, value in wanted.items():
        if isinstance(value, dict) and hasattr(getattr(config, key, None), "to_dict"):
            _check(getattr(config, key), value, f"{path}.{key}")
        elif key in ("rope_parameters", "speaker_id", "transformers_version") or isinstance(value, dict):
            continue
        elif getattr(config, key, value) != value:
            raise ValueError(f"{path}.{key} is {getattr(config, key)!r}, not the real {value!r}")


def real_processor(tiny_dir):
    """The tiny checkpoint's processor (its tokenizer has the real special ids) with the real
    checkpoint's pixel budgets (processing_qwen3_omni_moe.py defaults; reference §3)."""
    from transformers import Qwen3OmniMoeProcessor

    processor = Qwen3OmniMoeProcessor.from_pretrained(tiny_dir)
    processor.image_processor.min_pixels, processor.image_processor.max_pixels = 4 * 32 * 32, 16384 * 32 * 32
    processor.video_processor.size = {"shortest_edge": 128 * 32 * 32, "longest_edge": 768 * 32 * 32}
    return processor


def build_model(config, device, dtype, seed: int = 0, fast_init: bool = False):
    """Random weights, allocated directly on `device` in `dtype` (no float32 detour).
    `fast_init` draws them from a small pool of random numbers, tiled (`tiled_random_init`)."""
    import torch
    from transformers import Qwen3OmniMoeForConditionalGeneration

    from .compat import patch_loaded_model

    torch.manual_seed(seed)
    with torch.device(device), tiled_random_init() if fast_init else contextlib.nullcontext():
        model = Qwen3OmniMoeForConditionalGeneration._from_config(config, dtype=dtype).eval()
    tiny._init_talker_experts(model)  # left as torch.empty by transformers 5.24: garbage, NaN on a GPU
    patch_loaded_model(model)
    return model


POOL_SIZE = 1 << 18


@contextlib.contextmanager
def tiled_random_init():
    """Make transformers' random initialisers fill each tensor by tiling a pool of POOL_SIZE
    random numbers (scaled as asked) instead of drawing every element. Why: drawing the 2.3 B
    parameters of the 2-layer real-dimension model took over a minute of one CPU core, most of
    the smoke test; a tiled fill is a memory copy. The weights are then periodic (a row of a
    2048-wide matrix repeats every 128 rows), which is irrelevant to what that test checks (the
    engine's shapes) and would be wrong for timing MoE routing: gpu_bench.py does not use it.
    Deterministic ones (norm weights, Code2Wav's code offsets, sinusoids) are left as they are."""
    import torch
    from transformers import initialization

    table = initialization.TORCH_INIT_FUNCTIONS
    originals = dict(table)
    gen = torch.Generator().manual_seed(0)
    normal_pool = torch.randn(POOL_SIZE, generator=gen)
    uniform_pool = torch.rand(POOL_SIZE, generator=gen)
    calls = [0]

    def fill(tensor, pool, scale: float, shift: float):
        with torch.no_grad():
            flat = tensor.view(-1)
            calls[0] += 1
            start = calls[0] * 7919 % POOL_SIZE  # another phase per tensor
            src = (torch.cat([pool[start:], pool[:start]]) * scale + shift).to(tensor.device, tensor.dtype)
            for i in range(0, flat.numel(), POOL_SIZE):
                n = min(POOL_SIZE, flat.numel() - i)
                flat[i : i + n].copy_(src[:n])
        return tensor

    def normal_(tensor, mean=0.0, std=1.0, generator=None):
        return fill(tensor, normal_pool, std, mean)

    def uniform_(tensor, a=0.0, b=1.0, generator=None):
        return fill(tensor, uniform_pool, b - a, a)

    def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None):
        return fill(tensor, normal_pool.clamp(a, b), std, mean)

    def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
        fan = torch.nn.init._calculate_correct_fan(tensor, mode)
        bound = torch.nn.init.calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
        return uniform_(tensor, -bound, bound)

    def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
        fan = torch.nn.init._calculate_correct_fan(tensor, mode)
        return normal_(tensor, 0.0, torch.nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan))

    def xavier_uniform_(tensor, gain=1.0, generator=None):
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(tensor)
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        return uniform_(tensor, -bound, bound)

    def xavier_normal_(tensor, gain=1.0, generator=None):
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(tensor)
        return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))

    fast = {
        "normal_": normal_, "uniform_": uniform_, "trunc_normal_": trunc_normal_,
        "kaiming_uniform_": kaiming_uniform_, "kaiming_normal_": kaiming_normal_,
        "xavier_uniform_": xavier_uniform_, "xavier_normal_": xavier_normal_,
    }  # fmt: skip
    table.update(fast)
    try:
        yield
    finally:
        table.update(originals)
