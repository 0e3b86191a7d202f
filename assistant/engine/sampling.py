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
        ids, probs = candidates_rows(scores.unsqueeze(0), self.temperature, self.top_k, self.top_p)  # [1, n] each
        return ids[0], probs[0]


def _together(p: Picker) -> bool:
    """A picker whose scores are the raw logits, EOS masked or not (no penalty or
    suppression): rows of such pickers are processed as one [b, V] tensor."""
    return p.generator is None and p.repetition_penalty == 1.0 and p.suppress is None


def _eos_masked(p: Picker) -> bool:
    return p.eos_id is not None and len(p.history) < p.min_new


def candidates_rows(scores: torch.Tensor, temperature: float, top_k: int, top_p: float):
    """`Picker.candidates` for B rows at once: scores [B, V] -> (ids [B, n], probs [B, n])."""
    if top_k and top_k < scores.shape[-1]:
        values, ids = torch.topk(scores, top_k, dim=-1)  # [B, k] each, descending
    else:
        values, ids = torch.sort(scores, dim=-1, descending=True)
    if temperature != 1.0:  # division keeps the order, so top-k before it picks the same set
        values = values / temperature
    if top_p < 1.0:
        # Nucleus (stock TopPLogitsWarper): over ascending scores, drop those whose cumulative
        # probability stays within 1 - top_p; the most likely token always stays.
        ascending = values.flip(-1)
        drop = ascending.softmax(-1).cumsum(-1) <= (1 - top_p)
        drop[:, -1] = False
        values = values.masked_fill(drop.flip(-1), -float("inf"))
    return ids, values.softmax(-1)


def pick_rows(pickers: list[Picker], logits: torch.Tensor) -> torch.Tensor:
    """One token per row of logits [B, V], row i as pickers[i] would pick it; returns ids [B].

    Why: a batched code-predictor step (batch.py) picks 15 residual codes per frame for every
    response in it, and picking row by row was a sixth of the worker's time with four users on
    the tiny CPU model (each pick is a dozen small ops); the thinker's rows (152k wide) pick
    here too. Rows that sample from the global generator with the same settings draw
    together: one top-k, one top-p, one multinomial; an EOS that `min_new` still masks is
    masked in its own row first.
    A row with a generator of its own (a seeded response) draws alone from it, so a seeded
    response picks the same batched or alone; greedy rows take the argmax, as `pick` does.
    Unseeded rows drawn together take other draws from the global generator than they
    would one by one; their distributions are the same."""
    out = [0] * len(pickers)
    groups: dict[tuple, list[int]] = {}
    for row, p in enumerate(pickers):
        if _together(p):
            key = ("greedy",) if p.greedy else (p.temperature, p.top_k, p.top_p)
            groups.setdefault(key, []).append(row)
        else:
            out[row] = p.pick(logits[row])
    for key, rows in groups.items():
        scores = logits[rows].float()  # [b, V]: a copy (advanced indexing), edited below
        masked = [(i, pickers[row].eos_id) for i, row in enumerate(rows) if _eos_masked(pickers[row])]
        if masked:  # stock's min-new-tokens processor, row by row as `_processed` does it
            at, eos = zip(*masked, strict=True)
            scores[list(at), list(eos)] = -float("inf")
        if key == ("greedy",):
            chosen = torch.argmax(scores, dim=-1)  # [b]
        else:
            ids, probs = candidates_rows(scores, *key)  # [b, n] each
            chosen = ids.gather(1, torch.multinomial(probs, 1)).squeeze(1)  # [b]
        for row, token in zip(rows, chosen.tolist(), strict=True):
            out[row] = token
            pickers[row].history.append(token)
    return torch.tensor(out, device=logits.device)
