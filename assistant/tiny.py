"""`assistant make-tiny DIR`: a complete, random-weight Qwen3-Omni checkpoint.

The real Qwen/Qwen3-Omni-30B-A3B-Instruct (about 66 GB) cannot be downloaded on the
project's machines, so everything is tested on this checkpoint. It uses the same
classes as the real model (`Qwen3OmniMoeForConditionalGeneration`,
`Qwen3OmniMoeProcessor`) and loads through the same `from_pretrained` calls.

What is kept from the real checkpoint (../shared/reference/qwen3-omni-streaming.md §1.1):
special-token ids, codec ids (pad/bos/eos/nothink/think_bos/think_eos), speaker names and
ids, vocab sizes (thinker 152064, talker 3072, codebook 2048), 16 code groups, 128 mel
bins, the audio windowing (n_window 50, n_window_infer 800), position_id_per_seconds 13,
vision patch 16 / temporal patch 2 / merge 2, mrope interleaving, Code2Wav's sliding
window 72 and its upsampling [8,5,4,3]x[2,2] (1920 samples = 80 ms per codec frame).

What differs, and why (all to make a spoken turn run in well under a second on one
CPU core):
- every width, depth, head count and expert count is tiny (see `tiny_config`);
- thinker depth is 4 and `accept_hidden_layer` is 3 (real: 48 layers, 24): the talker
  still reads a mid-depth hidden state through the same code path;
- mrope_section is [2,1,1] because head_dim is 8 (real [24,20,20] for head_dim 128);
- the tokenizer is a 1k-entry byte-level BPE trained on assistant/data/tiny_corpus.txt
  (real: 151k Qwen BPE), renumbered so every id the config names is the real one;
- the vision encoder has 2 layers with DeepStack taps at [0, 1] (real 27 layers, [8,16,24]);
- Code2Wav's last convolution is rescaled so random codes give audible noise (about
  0.15 RMS): at plain random init the waveform peaks near 5e-7, which PCM16 rounds to
  silence, and nothing downstream (WebRTC, browser, jitter buffers) could be observed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from . import tiny_tokenizer

SEED = 1234
# The three published checkpoints (reference variants §1): Instruct has thinker, talker and
# Code2Wav; Thinking and Captioner are the thinker alone (enable_audio_output false).
VARIANTS = ("instruct", "thinking", "captioner")
THINKER_ONLY = ("thinking", "captioner")
# Thinking and Captioner decode by sampling (their generation_config.json).
THINKER_ONLY_SAMPLING = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}
THINK_TAG_LOGIT_SCALE = 30.0  # see _make_thinking
SPEAKERS = {"chelsie": 2301, "ethan": 2302, "aiden": 2303}  # real checkpoint's ids
MARKER_FILE = "assistant_tiny.json"  # lets the server recognise a random-weight checkpoint

CHAT_TEMPLATE = (
    "{%- macro render(content) %}"
    "{%- if content is string %}{{- content }}"
    "{%- else %}{%- for part in content %}"
    "{%- if part['type'] == 'text' %}{{- part['text'] }}"
    "{%- elif part['type'] == 'audio' or 'audio' in part %}"
    "{{- '<|audio_start|><|audio_pad|><|audio_end|>' }}"
    "{%- elif part['type'] == 'image' or 'image' in part %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or 'video' in part %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{%- endmacro %}"
    # Tools, calls and results in Qwen3's Hermes format (Qwen3's published chat template):
    # the tools in the system turn, calls in <tool_call> blocks after the assistant's text,
    # and consecutive results as one user turn of <tool_response> blocks.
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- render(messages[0]['content']) + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if tools and loop.first and message['role'] == 'system' %}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + render(message['content']) + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- set content = render(message['content']) %}{{- content }}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] %}"
    "{%- for call in message['tool_calls'] %}"
    "{%- if (loop.first and content) or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{%- if call['function'] %}{%- set call = call['function'] %}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' }}"
    "{%- if call['arguments'] is string %}{{- call['arguments'] }}{%- else %}{{- call['arguments'] | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def tiny_config(variant: str = "instruct"):
    """The tiny `Qwen3OmniMoeConfig`. Field names follow the real config.json; a
    thinker-only variant turns audio output off, so no talker or Code2Wav is built."""
    from transformers import Qwen3OmniMoeConfig

    hidden = 32  # thinker hidden == audio output_dim == vision out_hidden_size (constraint 1)
    talker_hidden = 32  # == code predictor hidden (constraint 2)
    mrope = {"rope_type": "default", "mrope_section": [2, 1, 1], "interleaved": True, "rope_theta": 1e6}
    thinker = {
        "audio_config": {
            "num_mel_bins": 128,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 64,
            "d_model": 32,
            "output_dim": hidden,
            "downsample_hidden_size": 16,
            "n_window": 50,
            "n_window_infer": 800,
            "max_source_positions": 1500,
        },
        "vision_config": {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": hidden,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [0, 1],
        },
        "text_config": {
            "vocab_size": 152064,
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "moe_intermediate_size": 32,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "max_position_embeddings": 65536,
            "rope_parameters": dict(mrope),
        },
        "audio_token_id": 151675,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "audio_start_token_id": 151669,
        "audio_end_token_id": 151670,
        "vision_start_token_id": 151652,  # undeclared field the real config.json carries
        "vision_end_token_id": 151653,
        "user_token_id": 872,
        "position_id_per_seconds": 13,
    }
    talker = {
        "text_config": {
            "vocab_size": 3072,
            "hidden_size": talker_hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 32,  # constraint 4: the shared expert must exist
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "max_position_embeddings": 65536,
            "rope_parameters": dict(mrope),
        },
        "code_predictor_config": {
            "vocab_size": 2048,
            "hidden_size": talker_hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "num_code_groups": 16,
        },
        "num_code_groups": 16,
        "thinker_hidden_size": hidden,
        "accept_hidden_layer": 3,
        "codec_eos_token_id": 2150,
        "codec_nothink_id": 2155,
        "codec_think_bos_id": 2156,
        "codec_think_eos_id": 2157,
        "codec_pad_id": 2148,
        "codec_bos_id": 2149,
        "audio_token_id": 151675,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "audio_start_token_id": 151669,
        "position_id_per_seconds": 13,
        "speaker_id": dict(SPEAKERS),
        "spatial_merge_size": 2,  # constraint 3: read by the talker, not a declared field
    }
    code2wav = {
        "codebook_size": 2048,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "sliding_window": 72,
        "num_quantizers": 16,
        "upsample_rates": [8, 5, 4, 3],
        "upsampling_ratios": [2, 2],
        "decoder_dim": 64,  # divisible by 2**len(upsample_rates)
    }
    return Qwen3OmniMoeConfig(
        thinker_config=thinker,
        talker_config=talker,
        code2wav_config=code2wav,
        enable_audio_output=variant not in THINKER_ONLY,
    )


TARGET_RMS = 0.15


def _make_audible(model) -> None:
    """Scale Code2Wav's output convolution so random codes decode to ~TARGET_RMS noise."""
    import torch

    final = model.code2wav.decoder[-1].conv  # Conv1d(output_dim -> 1)
    gen = torch.Generator().manual_seed(SEED)
    codes = torch.randint(0, model.config.code2wav_config.codebook_size, (1, 16, 8), generator=gen)
    with torch.no_grad():
        rms = float(model.code2wav(codes).float().pow(2).mean().sqrt())
        scale = TARGET_RMS / max(rms, 1e-12)
        final.weight.mul_(scale)
        if final.bias is not None:
            final.bias.mul_(scale)


def _processor(out: Path) -> None:
    from transformers import (
        Qwen2TokenizerFast,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        Qwen3OmniMoeProcessor,
        WhisperFeatureExtractor,
    )

    tiny_tokenizer.write_tokenizer_files(out)
    tokenizer = Qwen2TokenizerFast.from_pretrained(out)
    # Real checkpoint values: 128 mel bins at 16 kHz, 25 ms window, 10 ms hop (report §2.3).
    feature_extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400)
    # Pixel budgets are smaller than the real ones so CPU turns stay fast.
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2, min_pixels=64 * 32 * 32, max_pixels=256 * 32 * 32
    )
    video_processor = Qwen2VLVideoProcessor(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        size={"shortest_edge": 32 * 32 * 16, "longest_edge": 64 * 32 * 32},
    )
    processor = Qwen3OmniMoeProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)


def _generation_config(out: Path, variant: str = "instruct") -> None:
    config = {
        "eos_token_id": [151645, 151643],
        "pad_token_id": 151643,
        **(THINKER_ONLY_SAMPLING if variant in THINKER_ONLY else {}),
        "transformers_version": _transformers_version(),
    }
    (out / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _init_talker_experts(model) -> None:
    """transformers 5.24's `_init_weights` initialises the thinker's fused MoE experts but
    not the talker's (`Qwen3OmniMoeTalkerTextExperts` allocates them with torch.empty),
    so without this the talker experts hold whatever memory held before: near-zero
    denormals that differ from run to run (found by the byte-identity test). Draw them
    like the thinker's, normal(0, initializer_range), from the seeded generator."""
    import torch

    std = model.config.talker_config.text_config.initializer_range
    with torch.no_grad():
        for module in model.talker.modules():
            if type(module).__name__ == "Qwen3OmniMoeTalkerTextExperts":
                module.gate_up_proj.normal_(mean=0.0, std=std)
                module.down_proj.normal_(mean=0.0, std=std)


def _make_thinking(model) -> None:
    """Random weights almost never pick one given token of 152k, so a random Thinking model
    would never open or close its reasoning, and nothing could test that reasoning stays
    out of the answer. Scaling the lm_head rows of `<think>` and `</think>` makes them
    likely picks (their logits' spread grows by THINK_TAG_LOGIT_SCALE), so sampled answers
    carry reasoning spans, as the real model's do."""
    import torch

    ids = [tiny_tokenizer.special_token_ids()[tag] for tag in ("<think>", "</think>")]
    with torch.no_grad():
        model.thinker.lm_head.weight[ids] *= THINK_TAG_LOGIT_SCALE


def _strip_talker_config(out: Path) -> None:
    """Thinking and Captioner's config.json carry no talker or Code2Wav section (reference
    variants §1); transformers writes its defaults for them, which are dropped here."""
    path = out / "config.json"
    config = json.loads(path.read_text("utf-8"))
    for key in ("talker_config", "code2wav_config"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")


def build(out_dir: str | Path, variant: str = "instruct") -> Path:
    """Write the checkpoint of `variant` (instruct, thinking or captioner) to `out_dir`
    (atomically) and return its path."""
    import torch
    from transformers import Qwen3OmniMoeForConditionalGeneration

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: use one of {', '.join(VARIANTS)}")
    out = Path(out_dir)
    # The temporary build sits beside `out` so that the final rename is atomic (same filesystem).
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
    try:
        torch.manual_seed(SEED)
        config = tiny_config(variant)
        with torch.device("cpu"):
            model = Qwen3OmniMoeForConditionalGeneration(config).to(torch.float32).eval()
        if model.has_talker:
            _init_talker_experts(model)
            _make_audible(model)
        if variant == "thinking":
            _make_thinking(model)
        model.save_pretrained(tmp, safe_serialization=True)
        if not model.has_talker:
            _strip_talker_config(tmp)
        _generation_config(tmp, variant)  # the model's own is replaced by an explicit, stable one
        _processor(tmp)
        marker = {"kind": "tiny-random", "variant": variant, "seed": SEED, "note": "random weights: speech is noise"}
        (tmp / MARKER_FILE).write_text(json.dumps(marker) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def weights_digest(path: str | Path) -> str:
    """SHA-256 over every safetensors file, to check that builds are byte-identical."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).glob("*.safetensors")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def is_tiny(path: str | Path) -> bool:
    return (Path(path) / MARKER_FILE).exists()


def tiny_variant(path: str | Path) -> str | None:
    """The variant a tiny checkpoint was built as (None: not a tiny checkpoint)."""
    try:
        marker = json.loads((Path(path) / MARKER_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return marker.get("variant", "instruct")
