"""The sampler's distribution against transformers' own logits warpers (pure data).

`Picker.candidates` works on the top-k tokens only; stock `generate()` warps the whole
vocabulary (temperature, then top-k, then top-p) and samples from its softmax. The two
distributions must be the same, token for token.
"""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from assistant.engine.sampling import Picker


def stock_probs(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """[V] -> [V]: what stock generate() samples from (its warper order)."""
    x = scores.unsqueeze(0)
    ids = torch.zeros(1, 1, dtype=torch.long)
    if temperature != 1.0:
        x = TemperatureLogitsWarper(temperature)(ids, x)
    if top_k:
        x = TopKLogitsWarper(top_k)(ids, x)
    if top_p < 1.0:
        x = TopPLogitsWarper(top_p)(ids, x)
    return x.softmax(-1)[0]


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "vocab"),
    [
        (1.0, 50, 0.8, 2048),  # the code predictor's residuals
        (0.9, 50, 1.0, 3072),  # the talker
        (0.7, 20, 0.8, 4096),  # the thinker (its real vocabulary is 152k)
        (1.3, 0, 0.5, 300),  # no top-k: the whole vocabulary is sorted
    ],
)
def test_candidates_match_stock_warpers(temperature, top_k, top_p, vocab):
    gen = torch.Generator().manual_seed(vocab)
    picker = Picker(greedy=False, temperature=temperature, top_k=top_k, top_p=top_p)
    for scale in (0.5, 3.0, 12.0):  # flat to peaked distributions
        scores = torch.randn(vocab, generator=gen) * scale
        ids, probs = picker.candidates(scores)
        ours = torch.zeros(vocab).index_put_((ids,), probs)
        want = stock_probs(scores, temperature, top_k, top_p)
        assert torch.equal(ours > 0, want > 0), "a different set of tokens may be chosen"
        torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-7)


def test_sampling_draws_only_candidates_and_follows_the_seed():
    scores = torch.randn(2048, generator=torch.Generator().manual_seed(0)) * 4
    allowed = set(stock_probs(scores, 1.0, 50, 0.8).nonzero().flatten().tolist())

    def draws(seed: int) -> list[int]:
        picker = Picker(greedy=False, top_k=50, top_p=0.8, generator=torch.Generator().manual_seed(seed))
        return [picker.pick(scores) for _ in range(200)]

    first = draws(7)
    assert set(first) <= allowed
    assert len(set(first)) > 1  # it samples, not argmax
    assert draws(7) == first


def test_edits_do_not_touch_the_callers_logits():
    logits = torch.arange(10, dtype=torch.float32)
    before = logits.clone()
    picker = Picker(greedy=True, repetition_penalty=1.5, suppress=torch.tensor([9]), eos_id=8, min_new=1)
    assert picker.pick(logits) == 7
    assert picker.pick(logits) == 8  # min_new reached; 7 is penalised, 8 is now the best
    assert torch.equal(logits, before)


def test_pick_scored_is_pick_plus_the_log_probability_it_was_drawn_with():
    """Same tokens and generator draws as `pick`; the log-probability is that of stock's
    warped distribution (sampling) or of the softmax of the processed scores (greedy)."""
    scores = torch.randn(2048, generator=torch.Generator().manual_seed(1)) * 4
    want = stock_probs(scores, 0.7, 50, 0.8)

    def picker(seed: int) -> Picker:
        return Picker(greedy=False, temperature=0.7, top_k=50, top_p=0.8, generator=torch.Generator().manual_seed(seed))

    plain, scored = picker(3), picker(3)
    for _ in range(50):
        token, logprob = scored.pick_scored(scores)
        assert token == plain.pick(scores)
        assert logprob == pytest.approx(float(want[token].log()), abs=1e-5) and logprob <= 0.0
    greedy = Picker(greedy=True, suppress=torch.tensor([int(scores.argmax())]))
    token, logprob = greedy.pick_scored(scores)
    masked = scores.clone()
    masked[int(scores.argmax())] = -float("inf")  # the suppressed best is not in the distribution
    assert token == int(masked.argmax())
    assert logprob == pytest.approx(float(masked.log_softmax(-1)[token]), abs=1e-6)


def test_rows_picked_together_pick_as_each_picker_alone():
    """sampling.pick_rows (a batched code-predictor step): the same candidates and
    probabilities as Picker.candidates row by row, greedy rows their argmax, seeded rows the
    same draws as alone, and unseeded rows drawn together only inside their own candidates."""
    from assistant.engine.sampling import Picker, candidates_rows, pick_rows

    torch.manual_seed(0)
    logits = torch.randn(5, 2048) * 3  # [B, V]
    ids, probs = candidates_rows(logits, 0.9, 50, 0.8)
    for row in range(5):
        p_ids, p_probs = Picker(greedy=False, temperature=0.9, top_k=50, top_p=0.8).candidates(logits[row])
        assert torch.equal(ids[row], p_ids) and torch.allclose(probs[row], p_probs, atol=1e-7)

    def pickers(seeded: bool):
        return [Picker(greedy=True)] + [
            Picker(
                greedy=False,
                top_k=50,
                top_p=0.8,
                generator=torch.Generator().manual_seed(row) if seeded and row % 2 else None,
            )
            for row in range(1, 5)
        ]

    together, alone = pickers(True), pickers(True)
    got = pick_rows(together, logits).tolist()
    assert got[0] == int(torch.argmax(logits[0]))
    for row in (1, 3):  # seeded: the same draw as alone
        assert got[row] == alone[row].pick(logits[row])
    for row in (2, 4):  # unseeded: drawn together, from the row's own nucleus
        allowed, p = Picker(greedy=False, top_k=50, top_p=0.8).candidates(logits[row])
        assert got[row] in allowed[p > 0].tolist()
    assert [p.history for p in together] == [[t] for t in got]


def test_rows_whose_eos_is_still_masked_pick_together_as_alone():
    """The thinker's rows under `min_new` (EOS masked until then) pick together too
    (batch.py pick_thinker_rows): a masked row never picks EOS, an unmasked one may, and
    greedy rows pick what each picker alone picks."""
    from assistant.engine.sampling import Picker, pick_rows

    eos = 7
    logits = torch.randn(4, 300)
    logits[:, eos] = 50.0  # EOS is every row's best
    masks = [True, False, True, False]

    def pickers(greedy: bool):
        return [Picker(greedy=greedy, top_k=20, top_p=0.8, eos_id=eos, min_new=3 if masked else 0) for masked in masks]

    got = pick_rows(pickers(True), logits).tolist()
    assert got == [p.pick(logits[row]) for row, p in enumerate(pickers(True))]
    assert got[0] != eos and got[1] == eos and got[2] != eos and got[3] == eos
    for _ in range(20):  # sampled: a masked row draws from its nucleus without EOS
        drawn = pick_rows(pickers(False), logits).tolist()
        assert drawn[0] != eos and drawn[2] != eos and drawn[1] == eos and drawn[3] == eos
        for row in (0, 2):
            allowed, probs = pickers(False)[row].candidates(pickers(False)[row]._processed(logits[row]))
            assert drawn[row] in allowed[probs > 0].tolist()
