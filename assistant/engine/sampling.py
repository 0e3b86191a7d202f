"""Token selection that mirrors transformers' `generate()` logits pipeline.

Stock `generate()` applies, in order: repetition penalty, suppressed tokens, min-new-
tokens (EOS masked), then (only when sampling) temperature, top-k and top-p, and
samples; greedy takes the argmax of the processed scores. The same order is kept here
so that greedy decoding matches stock token for token (see tests/test_engine_oracle.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Picker:
    """Selects one token id from a [vocab] logits row."""

    greedy: bool
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    suppress: torch.Tensor | None = None  # [n] ids that may never be chosen
    eos_id: int | None = None
    min_new: int = 0  # EOS is masked until this many tokens were chosen
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        self.history: list[int] = []  # ids chosen so far (repetition penalty covers only these, as stock does)

    def pick(self, logits: torch.Tensor) -> int:
        scores = logits.float().clone()  # [vocab]
        if self.repetition_penalty != 1.0 and self.history:
            seen = torch.tensor(sorted(set(self.history)), device=scores.device)
            picked = scores[seen]
            scores[seen] = torch.where(picked < 0, picked * self.repetition_penalty, picked / self.repetition_penalty)
        if self.suppress is not None:
            scores[self.suppress] = -float("inf")
        if self.eos_id is not None and len(self.history) < self.min_new:
            scores[self.eos_id] = -float("inf")
        if self.greedy:
            token = int(torch.argmax(scores))
        else:
            token = self._sample(scores)
        self.history.append(token)
        return token

    def _sample(self, scores: torch.Tensor) -> int:
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k and self.top_k < scores.numel():
            kth = torch.topk(scores, self.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if self.top_p < 1.0:
            # Nucleus: keep the smallest set whose probability reaches top_p (stock TopPLogitsWarper).
            sorted_scores, order = torch.sort(scores, descending=False)
            cumulative = sorted_scores.softmax(-1).cumsum(-1)
            drop_sorted = cumulative <= (1 - self.top_p)
            drop_sorted[-1] = False
            scores = scores.masked_fill(drop_sorted.scatter(0, order, drop_sorted), -float("inf"))
        probs = scores.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
