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
        scores = self._processed(logits)  # [vocab]
        if self.greedy:
            token = int(torch.argmax(scores))
        else:
            ids, probs = self.candidates(scores)
            token = int(ids[torch.multinomial(probs, 1, generator=self.generator)])
        self.history.append(token)
        return token

    def pick_scored(self, logits: torch.Tensor) -> tuple[int, float]:
        """`pick`, and the chosen token's log-probability under the distribution it was
        chosen from: greedy, the softmax of the processed scores (the argmax's own
        distribution, no temperature); sampling, the temperature / top-k / top-p
        distribution it was drawn from. Same choice, same generator draws as `pick`."""
        scores = self._processed(logits)  # [vocab]
        if self.greedy:
            token = int(torch.argmax(scores))
            logprob = float(torch.log_softmax(scores, -1)[token])
        else:
            ids, probs = self.candidates(scores)
            k = int(torch.multinomial(probs, 1, generator=self.generator))
            token, logprob = int(ids[k]), float(torch.log(probs[k]))
        self.history.append(token)
        return token, logprob

    def _processed(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [vocab] -> the scores stock's processors leave: repetition penalty,
        suppressed tokens, EOS masked before min_new."""
        scores = logits.float()  # [vocab]
        edits = (self.repetition_penalty != 1.0 and self.history) or self.suppress is not None
        if edits or (self.eos_id is not None and len(self.history) < self.min_new):
            scores = scores.clone()  # edited in place below; the caller's logits stay as they were
        if self.repetition_penalty != 1.0 and self.history:
            seen = torch.tensor(sorted(set(self.history)), device=scores.device)
            picked = scores[seen]
            scores[seen] = torch.where(picked < 0, picked * self.repetition_penalty, picked / self.repetition_penalty)
        if self.suppress is not None:
            scores[self.suppress] = -float("inf")
        if self.eos_id is not None and len(self.history) < self.min_new:
            scores[self.eos_id] = -float("inf")
        return scores

    def candidates(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """scores [vocab] -> (ids [n], probs [n]): the tokens sampling may choose and their
        probabilities, best first. The distribution is stock's temperature -> top-k -> top-p ->
        softmax; tokens outside it have probability 0 there, so only the top-k candidates are
        processed. Sorting and sampling 50 values instead of 2048 (code predictor) or 152k
        (thinker) takes a fifth of the time, and a frame samples 16 times. Tokens tied with the
        k-th score are kept by stock and cut here (a tie of float logits at the boundary)."""
        if self.top_k and self.top_k < scores.numel():
            values, ids = torch.topk(scores, self.top_k)  # [k] each, descending
        else:
            values, ids = torch.sort(scores, descending=True)
        if self.temperature != 1.0:  # division keeps the order, so top-k before it picks the same set
            values = values / self.temperature
        if self.top_p < 1.0:
            # Nucleus (stock TopPLogitsWarper): over ascending scores, drop those whose cumulative
            # probability stays within 1 - top_p; the most likely token always stays.
            ascending = values.flip(0)
            drop = ascending.softmax(-1).cumsum(-1) <= (1 - self.top_p)
            drop[-1] = False
            values = values.masked_fill(drop.flip(0), -float("inf"))
        return ids, values.softmax(-1)
