"""An offline byte-level BPE tokenizer whose ids agree with Qwen3-Omni's config.

The real Qwen tokenizer cannot be downloaded here, so the tiny checkpoint ships its
own: a small byte-level BPE trained on text the project ships (tiny_corpus.txt),
renumbered so that

* the role words keep the real ids that `generate()` looks for
  (`system`=8948, `user`=872, `assistant`=77091, see Qwen3OmniMoeConfig), and
* Qwen's special tokens keep their real ids (151643 and up), so that
  `<|audio_pad|>`=151675, `<|image_pad|>`=151655, `<tts_pad>`=151671 and the rest
  match `thinker_config` and the top-level tts ids.

The vocabulary is therefore sparse: ids between the BPE entries and the specials are
unused, which the embedding tables (sized to the real 152064) tolerate.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Qwen2/Qwen3 special tokens, in id order starting at 151643 (the real checkpoint's table).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
    "<tts_text_bos_single>",
    "<|audio_pad|>",
]
FIRST_SPECIAL_ID = 151643
# Qwen3's reasoning tags are added tokens but not special ones (tokenizer_config.json
# "special": false): decoding with skip_special_tokens keeps them, as with the real tokenizer.
ORDINARY_ADDED = {"<think>", "</think>"}
ROLE_IDS = {"system": 8948, "user": 872, "assistant": 77091}
BPE_VOCAB_SIZE = 1024

# Qwen2's pre-tokenizer split pattern (the same regex the real tokenizer.json uses).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def special_token_ids() -> dict[str, int]:
    return {tok: FIRST_SPECIAL_ID + i for i, tok in enumerate(SPECIAL_TOKENS)}


def _corpus() -> list[str]:
    text = resources.files("assistant").joinpath("data/tiny_corpus.txt").read_text("utf-8")
    # The role words must be learned as single tokens so they can carry the real ids.
    chat = ["<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n"] * 200
    return text.splitlines() + chat


def _pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern=_regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _regex(pattern: str):
    from tokenizers import Regex

    return Regex(pattern)


_CONSONANTS = "bdfghklmnprstvwz"
_VOWELS = "aeiou"


def _pseudo_word(i: int) -> str:
    """A pronounceable filler word for id i (3 syllables cover 80^3 > 152k ids)."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    parts = []
    for _ in range(3):
        i, r = divmod(i, len(syllables))
        parts.append(syllables[r])
    return "".join(parts)


def _fill(vocab: dict[str, int]) -> dict[str, int]:
    """Give every unused id below the specials a filler token.

    Random weights pick ids anywhere in the 152k vocabulary; without fillers those decode
    to nothing and transcripts stay empty. Fillers decode to pseudo-words (" bakemo"),
    so a random answer reads as babble. No merge produces them, so encoding is unchanged.
    """
    used_ids = set(vocab.values())
    taken = set(vocab)
    for i in range(FIRST_SPECIAL_ID):
        if i in used_ids:
            continue
        word = "\u0120" + _pseudo_word(i)  # byte-level form of " word"
        while word in taken:
            word += "a"
        vocab[word] = i
        taken.add(word)
    return vocab


def _renumber(vocab: dict[str, int]) -> dict[str, int]:
    """Move the role words onto their real ids; everything else keeps a dense id."""
    renumbered = {}
    next_id = 0
    reserved = set(ROLE_IDS.values())
    for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        if token in ROLE_IDS:
            renumbered[token] = ROLE_IDS[token]
            continue
        while next_id in reserved:
            next_id += 1
        renumbered[token] = next_id
        next_id += 1
    missing = set(ROLE_IDS) - set(renumbered)
    if missing:
        raise RuntimeError(f"BPE training did not learn role tokens {missing}")
    return renumbered


def build_tokenizer() -> Tokenizer:
    """Train the BPE (deterministic for a fixed corpus) and return it with Qwen's ids."""
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    trainer_tok.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(trainer_tok.to_str())["model"]
    vocab = _fill(_renumber(model["vocab"]))
    # Specials live in the BPE vocabulary itself at their real ids: `tokenizers` (and
    # transformers when it re-saves) keep an added token's id when the vocab has it.
    vocab.update(special_token_ids())
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def tokenizer_json(tok: Tokenizer) -> dict:
    """Serialise with the special tokens pinned to Qwen's ids.

    `tokenizers` numbers added tokens after the vocabulary, so the added-token table is
    written directly into the JSON, where ids are taken as given when it is loaded.
    """
    data = json.loads(tok.to_str())
    data["added_tokens"] = [
        {
            "id": tid,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": text not in ORDINARY_ADDED,
        }
        for text, tid in special_token_ids().items()
    ]
    return data


def write_tokenizer_files(out: Path) -> None:
    data = tokenizer_json(build_tokenizer())
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=1), "utf-8")
    specials = special_token_ids()
    added_decoder = {
        str(tid): {
            "content": text,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": text not in ORDINARY_ADDED,
        }
        for text, tid in specials.items()
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 65536,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "added_tokens_decoder": added_decoder,
        "extra_special_tokens": {
            "image_token": "<|image_pad|>",
            "audio_token": "<|audio_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
        },
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1), "utf-8")
