"""Decode steps of several concurrent responses as one batched forward (issue #7).

Each response keeps its own KV caches (thinker, talker) with its own length, so a step
of B responses runs the stock module once over a left-padded batch:

- `padded_cache` stacks the B caches into one DynamicCache, shorter rows padded on the
  left, plus a [B, Lmax + 1] attention mask that hides the padding. Cached keys already
  carry their rotary phase, so where a key sits in the buffer does not matter; the mask
  removes padded keys from the softmax exactly.
- after the forward, each row's new key/value (the last position) is appended to that
  response's own cache, so a response can leave or join a batch at any step.
- the code predictor needs no padding at all: every frame starts from an empty
  16-position buffer, so B frames are B rows of the same shapes.

Why: on a GPU, a decode step of a 3B-active MoE reads all its weights for one token, so
B rows cost about as much as one; on this CPU the tiny model's step is pure dispatch
overhead, which batching shares the same way (`make bench`, docs/bench/). Numerics: a
[B, D] matmul may round differently from B separate [1, D] ones, so batched greedy
decoding is not promised bit-equal to the solo path (tests/test_batching.py measures
the agreement); a response running alone always takes the solo path, which is the one
the stock oracle tests pin.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .api import Event, now
from .code2wav import decode_together
from .sampling import pick_rows
from .stream import STEP_ERRORS, step_error


def padded_cache(caches: list[DynamicCache], config) -> tuple[DynamicCache, torch.Tensor]:
    """B per-response caches -> one left-padded batch cache and its mask [B, Lmax + 1]
    (the +1 is the position about to be decoded)."""
    lengths = [c.get_seq_length() for c in caches]
    lmax = max(lengths)
    batch = DynamicCache(config=config)
    ref = caches[lengths.index(lmax)]  # an empty cache (a first turn's prefill) takes its shapes from this one
    for layer in range(len(ref.layers)):
        keys, values = [], []
        for cache, n in zip(caches, lengths, strict=True):
            if n == 0:
                k, v = ref.layers[layer].keys[:, :, :0], ref.layers[layer].values[:, :, :0]
            else:
                k, v = cache.layers[layer].keys, cache.layers[layer].values  # [1, KV, n, hd]
            pad = lmax - n
            if pad:
                k = torch.cat([k.new_zeros(*k.shape[:2], pad, k.shape[-1]), k], dim=2)
                v = torch.cat([v.new_zeros(*v.shape[:2], pad, v.shape[-1]), v], dim=2)
            keys.append(k)
            values.append(v)
        batch.update(torch.cat(keys), torch.cat(values), layer)  # [B, KV, Lmax, hd]
    device = ref.layers[0].keys.device
    mask = torch.ones(len(caches), lmax + 1, dtype=torch.long, device=device)
    for row, n in enumerate(lengths):
        mask[row, : lmax - n] = 0
    return batch, mask


def scatter_new_kv(batch: DynamicCache, caches: list[DynamicCache]) -> None:
    """Append each row's newly decoded key/value (the batch's last position) to its own cache."""
    for layer in range(len(batch.layers)):
        k, v = batch.layers[layer].keys[:, :, -1:], batch.layers[layer].values[:, :, -1:]  # [B, KV, 1, hd]
        for row, cache in enumerate(caches):
            cache.update(k[row : row + 1], v[row : row + 1], layer)


def decode_step(module, caches: list[DynamicCache], config, position_ids: torch.Tensor, **inputs):
    """One decode position for B responses through `module` (thinker or talker).
    position_ids: [3, B, 1]; inputs: `input_ids` [B, 1] or `inputs_embeds` [B, 1, D]."""
    batch, mask = padded_cache(caches, config)
    out = module(attention_mask=mask, position_ids=position_ids, cache=batch, use_cache=True, **inputs)
    scatter_new_kv(batch, caches)
    return out


def prefill_step(module, caches: list[DynamicCache], config, embeds: list[torch.Tensor], positions, **kw):
    """Prefill B prompts' new positions through `module` (thinker text model or talker) in
    one forward, each row extending its own cache. embeds: B tensors [1, T_i, D]; positions:
    B tensors [3, 1, T_i]. Returns the output (rows [B, T, ...], T = max T_i) and the T_i.

    Row layout in the batch: [left pad | cache_i | tail_i | right pad]. The mask hides both
    pads; tails are padded on the right so that every real query sees only its own cache
    and the tail before it (causal), and no query row is all masked (a padded query still
    sees its row's real keys, so softmax never gets a row of -inf, which would be NaN)."""
    lengths = [e.shape[1] for e in embeds]
    T = max(lengths)
    cached = [c.get_seq_length() for c in caches]
    if any(cached):
        stacked, mask = padded_cache(caches, config)
        mask = torch.cat([mask[:, :-1], mask.new_zeros(len(caches), T)], dim=1)  # [B, Lc + T]
    else:
        stacked = DynamicCache(config=config)
        mask = torch.zeros(len(caches), T, dtype=torch.long, device=embeds[0].device)
    lc = mask.shape[1] - T
    for row, n in enumerate(lengths):
        mask[row, lc : lc + n] = 1
    padded = torch.cat([torch.nn.functional.pad(e, (0, 0, 0, T - e.shape[1])) for e in embeds])  # [B, T, D]
    pos = torch.cat(
        [torch.cat([p, p[:, :, -1:].expand(-1, -1, T - p.shape[2])], dim=2) for p in positions], dim=1
    )  # [3, B, T]: pads repeat the last position (they are masked)
    out = module(inputs_embeds=padded, attention_mask=mask, position_ids=pos, cache=stacked, use_cache=True, **kw)
    for layer in range(len(stacked.layers)):
        keys, values = stacked.layers[layer].keys, stacked.layers[layer].values  # [B, KV, Lc + T, hd]
        for row, (cache, n) in enumerate(zip(caches, lengths, strict=True)):
            cache.update(keys[row : row + 1, :, lc : lc + n], values[row : row + 1, :, lc : lc + n], layer)
    return out, lengths


def step_jobs(jobs) -> dict[object, list[Event]]:
    """One batched unit of work for responses that are all in the same phase ("prefill",
    "thinker_forward", "talker_prefill", "frame", "advance" or "codec"); returns each
    response's events."""
    phase = jobs[0]._phase
    try:
        with torch.inference_mode():  # as StreamJob.step
            if phase == "prefill":
                return _prefill(jobs)
            if phase == "thinker_forward":
                return _thinker_forward(jobs)
            if phase == "talker_prefill":
                return _talker_prefill(jobs)
            if phase == "frame":
                return _frames(jobs)
            if phase == "advance":
                return _advance(jobs)
            if phase == "codec":
                return _codec(jobs)
    except STEP_ERRORS as exc:  # every response in the step fails, each with its own done event
        return {job: job._finish("failed", step_error(exc)) for job in jobs if not job.done}
    raise ValueError(f"phase {phase!r} is not batched")


def _prefill(jobs) -> dict[object, list[Event]]:
    """First packets of commits that arrived together (issue #19), their first step: each
    response's processor and cached prefix as alone, then one audio-encoder call for all
    their audio tails (`_audio_together`). Their thinker forward is the next step."""
    events: dict[object, list[Event]] = {}
    tails = {}
    for job in jobs:
        try:
            tails[job] = job._prefill_tail()
        except STEP_ERRORS as exc:  # this response fails alone
            events[job] = job._finish("failed", step_error(exc))
    audio = _audio_together(tails)
    for job, tail in tails.items():
        try:
            events[job] = job._prefill_encoded(tail, audio.get(job))
        except STEP_ERRORS as exc:  # this response fails alone
            events[job] = job._finish("failed", step_error(exc))
    return events


def _thinker_forward(jobs) -> dict[object, list[Event]]:
    """One thinker forward over the new tokens of several prepared prompts. Audio-only
    tails: the worker runs camera and image turns alone, and a tail that still holds
    vision (an earlier camera turn the cache no longer covers) runs its forward alone here
    (vision features and DeepStack rows are per prompt)."""
    events: dict[object, list[Event]] = {}
    live = []
    for job in jobs:
        if job._prepared_tail[2] is not None:
            events[job] = job._thinker_forward()
        else:
            live.append(job)
    if not live:
        return events
    inputs = [job._prepared_tail for job in live]
    for job in live:
        job._prepared_tail = None
    res = live[0].res
    out, lengths = prefill_step(
        res.thinker.model,
        [job._thinker_cache for job in live],
        res.thinker.config.text_config,
        [prepared[1] for prepared in inputs],  # [1, T_i, D]
        [prepared[4] for prepared in inputs],  # [3, 1, T_i]
        output_hidden_states=True,
    )
    hs, layer = out.hidden_states, res.talker_layer
    for row, (job, n) in enumerate(zip(live, lengths, strict=True)):
        job._prefill_done(hs[0][row : row + 1, :n], hs[layer][row : row + 1, :n])
    rows = torch.arange(len(live), device=res.device)
    last = out.last_hidden_state[rows, torch.tensor(lengths, device=res.device) - 1]  # [B, D]: each row's last
    # One lm_head product for all rows: its [D, 152k] weight is read once, not once per row
    # (about 1 ms a row on the tiny CPU model; 0.6 GB a row in bf16 on the real one).
    logits = res.thinker.lm_head(last.unsqueeze(1))[:, -1]  # [B, V]
    tokens = pick_thinker_rows(live, logits)
    for row, job in enumerate(live):
        events[job] = job._first_token(logits[row], tokens.get(job))
    return events


def pick_thinker_rows(jobs, logits: torch.Tensor) -> dict[object, int]:
    """The next text token of every response that may pick with others (`_picks_in_batch`),
    from logits [B, V] (row i: jobs[i]), as `sampling.pick_rows` picks them: one argmax, or
    one top-k / top-p / multinomial, over the rows instead of one each (the thinker's rows
    are 152k wide). The other responses pick their own in `_accept_token`."""
    rows = [row for row, job in enumerate(jobs) if job._picks_in_batch()]
    if len(rows) < 2:
        return {}
    ids = pick_rows([jobs[row]._thinker_picker for row in rows], logits[rows]).tolist()
    return {jobs[row]: token for row, token in zip(rows, ids, strict=True)}


def _audio_together(tails: dict) -> dict[object, torch.Tensor]:
    """The audio encoder over several responses' audio tails in one call: {job: its rows
    [N_i, D]}; {} when fewer than two have audio to encode, or when the one call fails
    (each response then encodes alone, and fails alone if it must). The encoder attends
    within each window of each clip (Qwen3OmniMoeAudioEncoder's chunked attention), so
    clips side by side give the rows each gives alone; the clips' mel frames are padded to
    one width and masked, as the processor pads several clips of one prompt. Per call the
    encoder cost about 2 ms on the tiny CPU model whatever the clips, so four commits
    together paid 6 ms for nothing."""
    rows = [
        (job, ids, tail)
        for job, (ids, tail, _) in tails.items()
        if "input_features" in tail and not getattr(job, "audio_from", None)
    ]
    if len(rows) < 2:
        return {}
    res = rows[0][0].res
    audio_id = res.cfg.thinker_config.audio_token_id
    width = max(tail["input_features"].shape[-1] for _, _, tail in rows)
    feats = torch.cat(
        [torch.nn.functional.pad(t["input_features"], (0, width - t["input_features"].shape[-1])) for _, _, t in rows]
    )  # [clips, mel, width]
    masks = torch.cat(
        [
            torch.nn.functional.pad(t["feature_attention_mask"], (0, width - t["feature_attention_mask"].shape[-1]))
            for _, _, t in rows
        ]
    )  # [clips, width]
    counts = [int((ids == audio_id).sum()) for _, ids, _ in rows]  # each tail's audio tokens
    try:
        out = res.thinker.get_audio_features(feats, masks).last_hidden_state  # [sum counts, D]
    except STEP_ERRORS:
        return {}
    if out.shape[0] != sum(counts):
        return {}  # not the tails' tokens: each encodes alone, and its own scatter says what is wrong
    return {job: part for (job, _, _), part in zip(rows, torch.split(out, counts), strict=True)}


def _talker_prefill(jobs) -> dict[object, list[Event]]:
    """The talker prompts of responses whose first text token exists, in one forward."""
    inputs = [job._talker_prefill_inputs() for job in jobs]
    res = jobs[0].res
    out, lengths = prefill_step(
        res.talker,
        [job._talker_cache for job in jobs],
        res.talker.config.text_config,
        [e for e, _, _ in inputs],
        [p for _, _, p in inputs],
        output_hidden_states=True,
    )
    last = out.hidden_states[0][-1]  # [B, T, D]: last layer, as the solo path reads it
    return {
        job: job._talker_prefill_done(n, out.logits[row, n - 1], last[row : row + 1, n - 1 : n])
        for row, (job, n) in enumerate(zip(jobs, lengths, strict=True))
    }


def _frames(jobs) -> dict[object, list[Event]]:
    """Residual codebooks of the current frame of every response in one predictor run."""
    events: dict[object, list[Event]] = {}
    live = []
    for job in jobs:
        done = job._frame_end_check()
        if done is not None:
            events[job] = done
        else:
            live.append(job)
    if not live:
        return events
    res = live[0].res
    for job in live:
        job._frame_t0 = now()
    c0 = torch.tensor([[job._code0] for job in live], device=res.device)  # [B, 1]
    e0 = res.talker.get_input_embeddings()(c0)  # [B, 1, D]
    hidden = torch.cat([job._talker_last_hidden for job in live])  # [B, 1, D]
    if res.device.type == "cuda" and all(job.sampling.greedy for job in live):
        residual, codec_sum = res.predictor.run_greedy(hidden, e0)  # on-device argmax, as the solo path
    else:
        pickers = [job._residual_picker() for job in live]
        # logits [B, V] -> ids [B]; rows that can draw together do (sampling.py)
        residual, codec_sum = res.predictor.run(hidden, e0, lambda step, logits: pick_rows(pickers, logits))
    for row, job in enumerate(live):
        codes = torch.cat([c0[row], residual[row]])  # [16]
        events[job] = job._frame_finish(codes, codec_sum[row : row + 1])
    return events


def _advance(jobs) -> dict[object, list[Event]]:
    """Thinker catch-up (batched while several need a token), then one talker step for all."""
    events: dict[object, list[Event]] = {job: [] for job in jobs}
    res = jobs[0].res
    while True:
        need = [job for job in jobs if job._needs_text()]
        if not need:
            break
        if len(need) == 1:
            events[need[0]] += need[0]._thinker_step()
            continue
        ids = torch.tensor([[job._tokens[-1]] for job in need], device=res.device)  # [B, 1]
        pos = torch.cat([job._thinker_next_position() for job in need], dim=1)  # [3, B, 1]
        out = decode_step(
            res.thinker, [job._thinker_cache for job in need], res.thinker.config.text_config, pos, input_ids=ids
        )
        logits = out.logits[:, -1]  # [B, V]
        tokens = pick_thinker_rows(need, logits)
        for row, job in enumerate(need):
            events[job] += job._accept_token(logits[row], tokens.get(job))
    embeds = torch.cat([job._codec_sum + job._next_text_input() for job in jobs])  # [B, 1, D]
    pos = torch.cat([job._talker_next_position() for job in jobs], dim=1)  # [3, B, 1]
    out = decode_step(
        res.talker,
        [job._talker_cache for job in jobs],
        res.talker.config.text_config,
        pos,
        inputs_embeds=embeds,
        output_hidden_states=True,
        generation_step=0,  # only echoed back by the module; text comes from each response's queue
    )
    last = out.hidden_states[0][-1]  # [B, 1, D]: last layer, as stock's prepare_inputs reads it
    for row, job in enumerate(jobs):
        job._after_talker_row(out.logits[row, -1], last[row : row + 1, -1:])
        job._end_advance()
    return events


def _codec(jobs) -> dict[object, list[Event]]:
    """Chunks of the same length, one per response, through Code2Wav's convolutions as one
    batch (code2wav.decode_together; the worker groups only responses whose streaming
    decoders share a `batch_key`). At 4 users on the tiny CPU model the one-per-response
    decodes took as long as the batched frames: their cost is mostly per call."""
    outs = decode_together([job._vocoder for job in jobs])
    return {job: job._codec_done(out) for job, out in zip(jobs, outs, strict=True)}
