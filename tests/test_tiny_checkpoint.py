"""The tiny checkpoint loads and runs through exactly the calls used for the real model
(issue #2 §4): `from_pretrained` on the model and processor classes, offline, and the
stock `generate(..., return_audio=True)` on real speech plus an image."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from assistant import tiny

# Real checkpoint values (reference §1.1).
SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<|audio_start|>": 151669,
    "<|audio_end|>": 151670,
    "<tts_pad>": 151671,
    "<tts_text_bos>": 151672,
    "<tts_text_eod>": 151673,
    "<|audio_pad|>": 151675,
}
ROLE_IDS = {"system": 8948, "user": 872, "assistant": 77091}
SAMPLES_PER_FRAME = 1920  # 80 ms at 24 kHz
CODE2WAV_LOOKAHEAD_SAMPLES = 555  # one forward over N frames gives N*1920 - 555 (reference §1.5)


@pytest.fixture(scope="module")
def model(tiny_dir):
    from transformers import Qwen3OmniMoeForConditionalGeneration

    from assistant.compat import patch_loaded_model

    loaded = Qwen3OmniMoeForConditionalGeneration.from_pretrained(tiny_dir).eval()
    patch_loaded_model(loaded)
    return loaded


@pytest.fixture(scope="module")
def processor(tiny_dir):
    from transformers import Qwen3OmniMoeProcessor

    return Qwen3OmniMoeProcessor.from_pretrained(tiny_dir)


def test_loads_offline_with_the_published_classes(model, processor):
    from transformers import Qwen3OmniMoeForConditionalGeneration, Qwen3OmniMoeProcessor

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert type(model) is Qwen3OmniMoeForConditionalGeneration
    assert type(processor) is Qwen3OmniMoeProcessor
    assert type(processor.tokenizer).__name__.startswith("Qwen2Tokenizer")  # v5 dropped the "Fast" suffix
    assert type(processor.feature_extractor).__name__ == "WhisperFeatureExtractor"
    assert processor.feature_extractor.sampling_rate == 16000
    assert processor.feature_extractor.feature_size == 128
    assert processor.image_processor is not None and processor.video_processor is not None
    assert processor.chat_template


def test_every_component_is_present(model):
    thinker, talker = model.thinker, model.talker
    # v5 nests the encoders under thinker.model (4.57 had thinker.audio_tower).
    assert type(thinker.model.audio_tower).__name__ == "Qwen3OmniMoeAudioEncoder"
    assert type(thinker.model.visual).__name__ == "Qwen3OmniMoeVisionEncoder"
    shared = talker.model.layers[0].mlp.shared_expert
    assert sum(p.numel() for p in shared.parameters()) > 0
    assert model.config.talker_config.num_code_groups == 16
    assert model.config.talker_config.code_predictor_config.num_code_groups == 16
    assert len(talker.code_predictor.lm_head) == 15
    assert len(talker.code_predictor.model.codec_embedding) == 15
    assert model.config.code2wav_config.num_quantizers == 16
    assert model.code2wav.total_upsample == SAMPLES_PER_FRAME
    # The talker reads a thinker hidden layer that must exist (constraint 6).
    assert model.config.talker_config.accept_hidden_layer <= model.config.thinker_config.text_config.num_hidden_layers


def test_special_ids_agree_between_tokenizer_and_config(model, processor):
    tok = processor.tokenizer
    for token, expected in {**SPECIAL_IDS, **ROLE_IDS}.items():
        assert tok.convert_tokens_to_ids(token) == expected, token
    cfg, thinker = model.config, model.config.thinker_config
    assert (cfg.im_start_token_id, cfg.im_end_token_id) == (151644, 151645)
    assert (cfg.tts_pad_token_id, cfg.tts_bos_token_id, cfg.tts_eos_token_id) == (151671, 151672, 151673)
    assert (cfg.system_token_id, cfg.user_token_id, cfg.assistant_token_id) == (8948, 872, 77091)
    assert (thinker.audio_token_id, thinker.image_token_id, thinker.video_token_id) == (151675, 151655, 151656)
    assert (thinker.audio_start_token_id, thinker.audio_end_token_id) == (151669, 151670)
    # Role words are single tokens, so `<|im_start|>user` encodes as the two ids generate() looks for.
    assert tok("<|im_start|>user\n")["input_ids"][:2] == [151644, 872]
    assert tok("<|im_start|>assistant\n")["input_ids"][:2] == [151644, 77091]


def test_speakers_and_codec_ids(model):
    talker = model.config.talker_config
    assert {name.lower() for name in talker.speaker_id} == {"ethan", "chelsie", "aiden"}
    assert dict(talker.speaker_id) == {"chelsie": 2301, "ethan": 2302, "aiden": 2303}
    assert (talker.codec_pad_id, talker.codec_bos_id, talker.codec_eos_token_id) == (2148, 2149, 2150)
    assert (talker.codec_nothink_id, talker.codec_think_bos_id, talker.codec_think_eos_id) == (2155, 2156, 2157)


def test_code2wav_frame_arithmetic(model):
    frames = 5
    codes = torch.randint(0, 2048, (1, 16, frames), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        wav = model.code2wav(codes)
    assert wav.shape[-1] == frames * SAMPLES_PER_FRAME - CODE2WAV_LOOKAHEAD_SAMPLES


def test_stock_generate_with_speech_and_image(model, processor, load_wav, fixtures_dir):
    speech = load_wav("hello_en_us.wav")
    image = Image.open(fixtures_dir / "frames" / "frame_000.png").convert("RGB")
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": "hello_en_us.wav"},
                {"type": "image", "image": "frame_000.png"},
                {"type": "text", "text": "What do you see?"},
            ],
        }
    ]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, audio=[speech], images=[image], return_tensors="pt", padding=True)
    prompt_ids = inputs["input_ids"][0].tolist()
    assert prompt_ids.count(151675) > 1 and prompt_ids.count(151655) > 1  # placeholders were expanded

    max_frames = 6
    with torch.no_grad():
        text_ids, wav = model.generate(
            **inputs,
            return_audio=True,
            speaker="Chelsie",
            thinker_do_sample=False,
            talker_do_sample=False,
            thinker_max_new_tokens=4,
            talker_max_new_tokens=max_frames,
        )
    assert text_ids.shape[0] == 1
    assert text_ids[0, : len(prompt_ids)].tolist() == prompt_ids
    generated = text_ids.shape[1] - len(prompt_ids)
    assert 1 <= generated <= 4
    # One waveform at 24 kHz: a whole number of 80 ms codec frames less Code2Wav's look-ahead.
    assert wav.dim() == 3 and wav.shape[:2] == (1, 1) and wav.dtype == torch.float32
    frames, rest = divmod(wav.shape[-1] + CODE2WAV_LOOKAHEAD_SAMPLES, SAMPLES_PER_FRAME)
    assert rest == 0 and 1 <= frames <= max_frames
    assert torch.isfinite(wav).all() and wav.abs().max() <= 1.0


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_make_tiny_cli_is_byte_identical(tmp_path, tiny_dir):
    """Two `assistant make-tiny` runs (run side by side to halve the wall time) write the
    same weight and tokenizer bytes, and the same bytes as the session's in-process build."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    outs = [tmp_path / "a" / "tiny", tmp_path / "b" / "not-yet" / "tiny"]  # parents are created
    procs = []
    for out in outs:
        cmd = [sys.executable, "-m", "assistant", "make-tiny", str(out)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output
        assert "wrote tiny Qwen3-Omni checkpoint" in output
    for name in ["model.safetensors", "tokenizer.json", "config.json"]:
        digests = {_sha256(out / name) for out in [*outs, tiny_dir]}
        assert len(digests) == 1, name
    assert tiny.weights_digest(outs[0]) == tiny.weights_digest(tiny_dir)
    marker = json.loads((outs[0] / tiny.MARKER_FILE).read_text())
    assert marker["kind"] == "tiny-random"
