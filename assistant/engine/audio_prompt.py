"""The processor's tensors for prompts of text and audio only, without its per-call work.

Every commit and every early-prefill offer renders the whole conversation again, and the
processor's call (transformers 5.24 `ProcessorMixin.__call__`) spent about 2.4 ms of it
on the tiny CPU model before any encoder ran: merging and validating its kwargs, the
Jinja template, tokenizing the expanded text. Four commits prefilled together paid that
four times, one after another, ahead of the batched forward.

For text and audio the processor's result is simple to rebuild:
- the chat template renders one `<|audio_pad|>` per clip (inside
  `<|audio_start|>...<|audio_end|>`), and the processor replaces it with
  `num_audio_tokens` copies before tokenizing (`replace_audio_token`). `<|audio_pad|>` is
  a special token, which the tokenizer splits out before anything else, so repeating its
  id in the token ids of the unexpanded text gives the same ids;
- the audio tensors come from the same per-clip featuriser the processor calls
  (inputs.audio_features), with the kwargs the processor passed it, remembered from its
  first call (until then the processor runs: `tensors` returns None).

The rendered template's ids depend only on the messages and tools, which are small, so
they are memoised. Images and video take the processor's own call (inputs.prepare).
tests/test_audio_prompt.py compares both paths on conversations of every kind of turn.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

PROMPT_MEMO_ENTRIES = 64  # rendered conversations: a few per live session between turns


def remember_audio_kwargs(processor, kwargs: dict) -> None:
    """Called by the processor's audio step (inputs.per_clip_process_audio) with its kwargs."""
    processor.__dict__["_assistant_audio_kwargs"] = dict(kwargs)


def audio_kwargs(processor) -> dict | None:
    return processor.__dict__.get("_assistant_audio_kwargs")


def tensors(processor, msgs: list[dict], tools: list[dict] | None, audios: list) -> dict[str, torch.Tensor] | None:
    """input_ids and attention_mask [1, P], and for audio input_features [C, mel, T] and
    feature_attention_mask [C, T], as the processor returns them; None when the processor
    has not run on audio yet (its audio kwargs are not known)."""
    kwargs = audio_kwargs(processor)
    if kwargs is None:
        return None
    from .inputs import audio_features

    ids = _template_ids(processor, msgs, tools)
    out: dict[str, torch.Tensor] = {}
    if audios:
        audio = audio_features(processor, audios, **kwargs)
        counts = [int(n) for n in audio.pop("num_audio_tokens")]
        ids = _expand(ids, processor.audio_token_id, counts)
        out.update(audio)
    elif processor.audio_token_id in ids:
        raise ValueError("the prompt has an audio placeholder but no audio")
    out["input_ids"] = torch.tensor([ids], dtype=torch.long)
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    return out


def _template_ids(processor, msgs: list[dict], tools: list[dict] | None) -> list[int]:
    """Token ids of the rendered chat template, one placeholder per clip; memoised."""
    memo = processor.__dict__.setdefault("_assistant_prompt_memo", OrderedDict())
    key = repr((msgs, tools))  # audio content entries are {"type": "audio"}: no samples in the key
    ids = memo.get(key)
    if ids is not None:
        memo.move_to_end(key)
        return ids
    text = processor.apply_chat_template(msgs, tools=tools, add_generation_prompt=True, tokenize=False)
    ids = processor.tokenizer(text)["input_ids"]
    memo[key] = ids
    while len(memo) > PROMPT_MEMO_ENTRIES:
        memo.popitem(last=False)
    return ids


def _expand(ids: list[int], audio_id: int, counts: list[int]) -> list[int]:
    """Each audio placeholder id, in order, repeated for its clip's tokens."""
    if ids.count(audio_id) != len(counts):
        raise ValueError(f"the prompt has {ids.count(audio_id)} audio placeholders for {len(counts)} clips")
    out: list[int] = []
    start, clip = 0, 0
    while clip < len(counts):
        at = ids.index(audio_id, start)
        out += ids[start:at]
        out += [audio_id] * counts[clip]
        start, clip = at + 1, clip + 1
    out += ids[start:]
    return out
