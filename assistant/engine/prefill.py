"""The thinker prefill of a response, and the early prefill of a turn still being spoken.

Part of `StreamJob` (stream.py), split out to keep modules small: the processor and
encoders (Table 2's preprocessing), the conversation cache's reuse of an earlier prefix
(convcache.py), the context budget (context.py), and the first text token. Everything
here runs on the model worker thread, inside `StreamJob.step()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from . import context as context_mod
from . import inputs as inputs_mod
from .api import Event, now
from .budget import MemoryBudgetExceeded
from .context import ContextTooLong
from .convcache import CachedPrefix, common_prefix
from .resident import MissingPixels, media_after
from .rope import rope_index
from .sampling import Picker

MEDIA_KEYS = ("input_features", "pixel_values", "pixel_values_videos")  # per-item encoder inputs (large)


def _pick(asked, checkpoint, fallback):
    """A sampling value: the request's, else the checkpoint generation config's, else ours."""
    return asked if asked is not None else checkpoint if checkpoint is not None else fallback


@dataclass
class _Early:
    """An early prefill between its steps: the prepared prompt [1, P], the cut (the end
    of what is final), the cached prefix it checked out (its first n positions)."""

    host: dict
    t: dict
    ids: list[int]
    cut: int
    n: int
    pos: torch.Tensor  # [3, 1, P]
    lengths: torch.Tensor
    prefix: CachedPrefix | None
    complete: list
    embeds: torch.Tensor | None = None  # [1, cut - n, D], after the encoders
    mm: dict | None = None


class ThinkerPrefill:
    """The prefill steps of StreamJob (a mixin: the state lives on the job)."""

    def _prefill(self) -> list[Event]:
        """The processor, the cached prefix and the encoders. The thinker's forward is a
        step of its own ("thinker_forward"): commits that arrive meanwhile prepare theirs
        and join it as one batch (worker `_first_packets_together`) instead of waiting for
        this one's whole first packet, or for its forward alone."""
        return self._prefill_encoded(self._prefill_tail())

    def _prefill_encoded(self, tail: tuple, audio: torch.Tensor | None = None) -> list[Event]:
        """The encoders over `_prefill_tail()`'s media (`audio` [N, D]: the audio encoder's
        output, when batch.py ran it for several responses at once), then the thinker cache
        to extend; `_prepared_tail` keeps (tail ids [1, T], tail embeddings [1, T, D],
        vision encoder outputs or None, the tail's media, tail positions [3, 1, T]) for the
        "thinker_forward" step (batch.py runs several tails as one forward)."""
        tail_ids, media, pos = tail
        embeds, mm_outputs = self._encode(tail_ids, media, audio)
        self.stats.t_preprocessed = now()
        prefix = self._prefix
        self._thinker_cache = prefix.kv if prefix else DynamicCache(config=self.res.thinker.config.text_config)
        self._prepared_tail = (tail_ids, embeds, mm_outputs, media, pos)
        self._phase = "thinker_forward"
        return []

    def _thinker_forward(self) -> list[Event]:
        prepared, self._prepared_tail = self._prepared_tail, None
        return self._prefill_forward(*prepared)

    def _prefill_forward(self, tail_ids, embeds, mm_outputs, tail, pos) -> list[Event]:
        """The thinker's forward over the tail (`_prepared_tail`), alone."""
        res = self.res
        # The thinker's own forward (transformers 5.24) takes no logits_to_keep and runs
        # lm_head over every prompt position: on the tiny model that was 250 ms of a
        # 470-token video prefill (a [P, 152k] product), on the real one P x 152k floats of
        # memory. The text model, then lm_head on the last position only.
        out = res.thinker.model(
            input_ids=tail_ids,
            inputs_embeds=embeds,
            mm_encoder_outputs=mm_outputs,
            image_grid_thw=tail.get("image_grid_thw"),
            video_grid_thw=tail.get("video_grid_thw"),
            position_ids=pos,
            cache=self._thinker_cache,
            use_cache=True,
            output_hidden_states=True,
        )
        hs = out.hidden_states
        self._prefill_done(hs[0], hs[res.talker_layer])
        return self._first_token(res.thinker.lm_head(out.last_hidden_state[:, -1:])[0, -1])  # [1, 1, V] -> [V]

    def _prefill_tail(self) -> tuple:
        """The processor and the cached prefix (checked out into `_prefix`): (tail ids
        [1, T], the tail's media on the device, tail positions [3, 1, T]) for
        `_prefill_encoded`."""
        res = self.res
        self.stats.t_started = now()
        prepared = self._prepare_in_context()
        host = prepared.tensors
        # Media stay on the host until the cached prefix is known: only the tail's are moved
        # (the history's features and pixels would otherwise be copied to the device every turn).
        t = {k: v.to(res.device) for k, v in host.items() if k not in MEDIA_KEYS}
        ids = t["input_ids"]  # [1, P]
        id_list = ids[0].tolist()
        self._prompt_ids, self._t = ids, t
        self._audio_lengths = t["feature_attention_mask"].sum(-1) if "feature_attention_mask" in t else None
        pos, deltas = rope_index(
            res.thinker,
            ids,
            t.get("image_grid_thw"),
            t.get("video_grid_thw"),
            t["attention_mask"],
            prepared.audio_in_video,  # camera turns: audio positions interleaved with the grids
            self._audio_lengths,
            t.get("video_second_per_grid"),
        )  # pos [3, 1, P]: positions of the whole prompt, prefix included
        self._thinker_deltas = deltas  # [1, 1]
        self._media = self._media_turns(id_list)
        prefix = self._reuse_prefix(id_list, self._media)
        self._reserve_response(ids, prefix)
        n = len(prefix.ids) if prefix else 0
        self._prefix = prefix
        self._talker_prefix = prefix.talker if prefix else None  # extended by _talker_prefill
        tail_ids = ids[:, n:]  # [1, P - n]
        return tail_ids, self._tail_media(host, id_list, n), pos[:, :, n:]

    def _prefill_done(self, embed: torch.Tensor, hidden: torch.Tensor) -> None:
        """After the thinker's forward over the tail: its layer-0 inputs and talker-read
        hidden states [1, T, D]. The first token's picker is ready after this."""
        res, s, prefix = self.res, self.sampling, self._prefix
        self._prefix = None
        self.stats.prefill_tokens = embed.shape[1]  # what the commit still had to prefill
        if prefix:
            embed, hidden = torch.cat([prefix.embed, embed], 1), torch.cat([prefix.hidden, hidden], 1)
        self._thinker_embed, self._thinker_hidden = embed, hidden  # [1, P, D]: layer-0 inputs, talker-read layer
        d = res.thinker_defaults  # the checkpoint's generation config fills what the request left unset
        penalty = _pick(s.thinker_repetition_penalty, d.get("repetition_penalty"), 1.0)
        self._thinker_picker = Picker(
            # A checkpoint that decodes greedily samples when the request sets temperature or top_p.
            greedy=s.greedy
            or (d.get("do_sample") is False and s.thinker_temperature is None and s.thinker_top_p is None),
            temperature=_pick(s.thinker_temperature, d.get("temperature"), 0.7),
            top_k=_pick(s.thinker_top_k, d.get("top_k"), 20),
            top_p=_pick(s.thinker_top_p, d.get("top_p"), 0.8),
            repetition_penalty=penalty,
            eos_id=res.cfg.im_end_token_id,
            min_new=s.min_tokens,
            generator=self._gen,
        )
        if penalty != 1.0:
            self._thinker_picker.history = self._prompt_ids[0].tolist()  # stock penalises prompt ids too
            self._thinker_picker.min_new += len(self._thinker_picker.history)

    def _first_token(self, logits: torch.Tensor, token: int | None = None) -> list[Event]:
        """The answer's first token from the prompt's last logits [V] (`token`: as
        `_accept_token`)."""
        events = self._accept_token(logits, token)
        self.stats.t_thinker_first_token = now()
        # A turn that opens with a call has nothing to say: the talker never starts.
        self._phase = "talker_prefill" if self.audio and self._call_at is None else "text"
        return events

    def _partial_prefill(self) -> list[Event]:
        """Prefill the conversation up to the last complete encoder window of the turn
        being spoken, and keep the KV cache, so that at commit only the tail is left
        (issue #7). The engine cut the turn's audio to whole windows and, for a camera
        turn, its frames to the grids before them; in the interleaved layout everything
        up to the last audio token is then what the committed turn will have too.

        Three steps (phases "prefill", "early_encode", "early_forward"): the processor,
        the encoders, then the thinker and talker forwards. One step for all of it was
        70 ms for a tiny-model camera turn, and another user's commit arriving just after
        it started waited for all of it. From its first step the job holds the
        conversation's cached prefix (checked out); the worker runs its later steps
        before any other job of the same conversation, its response or a newer offer
        (ModelWorker._pick)."""
        res = self.res
        self.stats.t_started = now()
        try:
            prepared = self._prepare_in_context()
        except ContextTooLong:
            self.done = True  # the response will say so at commit; a head start has nothing to do
            return []
        host = prepared.tensors
        t = {k: v.to(res.device) for k, v in host.items() if k not in MEDIA_KEYS}  # media: only the tail's, below
        ids = t["input_ids"][0].tolist()
        audio_id = res.cfg.thinker_config.audio_token_id
        cut = max(i for i, tok in enumerate(ids) if tok == audio_id) + 1 if audio_id in ids else 0
        if cut == 0 or res.image_id in ids[cut:] or res.video_id in ids[cut:]:
            self.done = True  # nothing final yet, or frames past the audio (the engine never offers those)
            return []
        lengths = t["feature_attention_mask"].sum(-1)
        pos, _ = rope_index(
            res.thinker,
            t["input_ids"],
            t.get("image_grid_thw"),
            t.get("video_grid_thw"),
            t["attention_mask"],
            prepared.audio_in_video,
            lengths,
            t.get("video_second_per_grid"),
        )
        media = self._media_turns(ids)
        prefix = self._reuse_prefix(ids[: cut + 1], media)  # +1: the cut itself may be reused whole
        # The turn being spoken is not complete: its digest will change, so it is not kept.
        last_start = max(media) if media and self.conv.turns[-1].role == "user" else None
        complete = sorted((pos, key) for pos, key in media.items() if pos != last_start)
        n = len(prefix.ids) if prefix else 0
        if n >= cut or not self._reserve_early(t["input_ids"][0, :cut]):
            if prefix:
                self.cache.checkin(self.conv.id, prefix)
            self.done = True
            return []
        self._early = _Early(host, t, ids, cut, n, pos, lengths, prefix, complete)
        self._phase = "early_encode"
        return []

    def _early_encode(self) -> list[Event]:
        e = self._early
        e.embeds, e.mm = self._encode(e.t["input_ids"][:, e.n : e.cut], self._tail_media(e.host, e.ids, e.n))
        self._phase = "early_forward"
        return []

    def _early_forward(self) -> list[Event]:
        res, e = self.res, self._early
        prefix, n, cut = e.prefix, e.n, e.cut
        kv = prefix.kv if prefix else DynamicCache(config=res.thinker.config.text_config)
        out = res.thinker.model(
            input_ids=e.t["input_ids"][:, n:cut],
            inputs_embeds=e.embeds,
            mm_encoder_outputs=e.mm,
            position_ids=e.pos[:, :, n:cut],
            cache=kv,
            use_cache=True,
            output_hidden_states=True,
        )
        hs = out.hidden_states
        embed, hidden = hs[0], hs[res.talker_layer]  # [1, cut - n, D]
        if prefix:
            embed, hidden = torch.cat([prefix.embed, embed], 1), torch.cat([prefix.hidden, hidden], 1)
        # Earlier turns' talker KV stays valid (nothing before n changed); the turn so far is added to it.
        talker = None  # a thinker-only checkpoint has no talker to give a head start
        if res.has_talker:
            talker = self._talker_user_prefill(
                e.t["input_ids"][:, :cut], e.t, e.lengths, embed, hidden, prefix.talker if prefix else None
            )
        self.cache.release(self)  # the entry's own bytes are counted as an idle cache from here
        self.cache.checkin(
            self.conv.id,
            CachedPrefix(e.ids[:cut], kv, embed, hidden, window_aligned=True, talker=talker, media=e.complete),
        )
        self.stats.prefill_tokens = cut - n
        self._early = None
        self.done = True
        return []

    def _reserve_response(self, ids: torch.Tensor, prefix: CachedPrefix | None) -> None:
        """Reserve the most this response's caches can grow to (budget.py), before any work;
        raises MemoryBudgetExceeded, with the conversation's cache back in place, when even
        evicting every idle conversation leaves too little room. ids: [1, P]."""
        budget = self.cache.budget if self.cache is not None else None
        if budget is None:
            return
        talker_users = int(self._user_mask(ids[0]).sum()) if self.audio else -1
        s = self.sampling
        need = budget.costs.response_bytes(ids.shape[1], talker_users, s.max_tokens, s.max_frames)
        if not self.cache.reserve(self, need):
            if prefix is not None:
                self.cache.checkin(self.conv.id, prefix)
            budget.refuse_response()
            raise MemoryBudgetExceeded(
                f"this response needs up to {need} bytes of KV cache; the budget is {budget.limit_bytes} bytes "
                f"and live responses hold {budget.reserved_bytes} (--kv-cache-gb)"
            )

    def _reserve_early(self, ids: torch.Tensor) -> bool:
        """Reserve what an early prefill up to len(ids) keeps; False: skip the head start. ids: [N]."""
        budget = self.cache.budget
        if budget is None:
            return True
        need = budget.costs.prefix_bytes(len(ids), int(self._user_mask(ids).sum()))
        return self.cache.reserve(self, need)

    def _prepare_in_context(self, all_pixels: bool = False) -> inputs_mod.Prepared:
        """The prompt, with the oldest exchanges dropped when it would not leave room for the
        answer in the context (policy: context.py). The snapshot keeps only the turns the
        prompt has, so the talker prompt and the cached ids match it.

        With a cached prefix for this conversation, videos before the last user turn, and
        the grids of the last one that the cache holds, get no pixel values (inputs.prepare):
        the cache almost always covers them. When it does not (a cache cut early, or
        evicted), `media_after` raises MissingPixels and the caller prepares again with
        every pixel."""
        res = self.res
        limit = (self.config.context_tokens or res.thinker.config.text_config.max_position_embeddings) - (
            self.sampling.max_tokens
        )
        pixels_from = cached_video = 0
        if not all_pixels and self.cache is not None and self.cache.has(self.conv.id):
            pixels_from = max((i for i, turn in enumerate(self.conv.turns) if turn.role == "user"), default=0)
            cached_video = self.cache.count(self.conv.id, res.video_id)
        start_id = self.cache.starts.get(self.conv.id) if self.cache is not None else None
        prepared, start = context_mod.fit(res.processor, self.conv, limit, start_id, pixels_from, cached_video)
        if start:
            self.stats.context_trimmed_turns = start
            if self.cache is not None:
                self.cache.starts[self.conv.id] = self.conv.turns[start].id
            self.conv.turns = self.conv.turns[start:]
        return prepared

    def _tail_media(self, host: dict, ids: list[int], n: int) -> dict:
        """The encoder inputs of media from position n on, on the device. Earlier videos may
        have been prepared without pixels; if the tail reaches one, prepare again with all
        of them (the same ids)."""
        try:
            tail = media_after(host, ids, n, self.res)
        except MissingPixels:
            tail = media_after(self._prepare_in_context(all_pixels=True).tensors, ids, n, self.res)
        return self._to_device(tail)

    def _to_device(self, tail: dict) -> dict:
        res = self.res
        tail = {k: v.to(res.device) for k, v in tail.items()}
        for key in MEDIA_KEYS:
            if key in tail:
                tail[key] = tail[key].to(res.dtype)
        return tail

    def _media_turns(self, ids: list[int]) -> dict[int, bytes]:
        """{position of the turn's <|im_start|>: digest of its media} for turns with media."""
        im_start = self.res.cfg.im_start_token_id
        starts = [i for i, tok in enumerate(ids) if tok == im_start]
        offset = 1 if self.conv.instructions else 0  # the system message comes first
        keys = inputs_mod.turn_media_keys(self.conv)
        return {starts[offset + i]: key for i, key in enumerate(keys) if key is not None and offset + i < len(starts)}

    def _whole_windows_cut(self, ids: list[int], n: int) -> int | None:
        """The end of the last whole encoder window of an audio-only span that `n` falls in
        (after its start token), or None. Whole windows are featurised and encoded alone
        (inputs.per_clip_process_audio, the encoder's window attention), so their tokens
        are the same in any longer or shorter clip that shares them."""
        per_window = self.res.audio_window_tokens
        audio = self.res.cfg.thinker_config.audio_token_id
        k = n
        while k > 0 and ids[k - 1] == audio:
            k -= 1
        if not per_window or k == n or k == 0 or ids[k - 1] != self.res.audio_start_id:
            return None  # not inside an audio-only span (camera spans interleave video)
        whole = (n - k) // per_window * per_window
        return k + whole if whole else None

    def _reuse_prefix(self, ids: list[int], media: dict[int, bytes]) -> CachedPrefix | None:
        """This conversation's cached KV, cropped to what the new prompt shares with it
        (never the whole prompt: the last token must be run to get logits), never past a
        turn whose media differ from the cached ones, and never ending inside a media
        placeholder span."""
        if self.cache is None:
            return None
        prefix = self.cache.checkout(self.conv.id)
        if prefix is None:
            return None
        n = min(common_prefix(prefix.ids, ids), len(ids) - 1)
        for pos, key in prefix.media:  # sorted by position
            if pos < n and media.get(pos) != key:
                n = pos  # same placeholder ids, other content: reuse stops before that turn
                break
        # An entry from incremental prefill ends at an encoder-window boundary inside an
        # audio span and may be reused whole. If the committed audio is shorter than what
        # was offered (offers run to the buffer's end, past where the VAD ends the turn),
        # its whole windows are still final: the cut goes back to the last of them. Any
        # other cut inside a span backs off to the span's start.
        if not (prefix.window_aligned and n == len(prefix.ids)):
            window_cut = self._whole_windows_cut(ids, n) if prefix.window_aligned else None
            if window_cut is not None:
                n = window_cut
            else:
                while n > 0 and ids[n - 1] in self.res.span_ids:
                    n -= 1
        if n == 0:
            return None
        prefix.keep(n)
        return prefix

    def _reused_audio(self, ids: torch.Tensor) -> torch.Tensor | None:
        """[N, D]: the audio-encoder output of this prompt's one clip, taken from the layer-0
        inputs a live conversation's cache keeps (`audio_from` = (cache, conversation id,
        the clip's media digest)), or None when the cache does not hold that clip (checked
        out, evicted, trimmed). A transcription of a committed turn then encodes nothing:
        the response's prefill scattered the encoder output into those positions, and
        whole windows are encoded alone, so it is what encoding the clip again would give."""
        cache, conv_id, key = self.audio_from
        entry = cache.peek(conv_id)
        audio_id = self.res.cfg.thinker_config.audio_token_id
        n = int((ids == audio_id).sum())
        start = next((pos for pos, k in (entry.media if entry else []) if k == key), None)
        if start is None or audio_id not in entry.ids[start:]:
            return None
        a = entry.ids.index(audio_id, start)
        if entry.ids[a : a + n + 1].count(audio_id) != n or a + n >= len(entry.ids):
            return None  # not one span of the same length (a different layout): encode
        self.reused_audio_tokens = n
        return entry.embed[0, a : a + n]

    def _encode(
        self, ids: torch.Tensor, t: dict, audio: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict | None]:
        """Run the audio and vision encoders on the tail's media (Table 2's preprocessing)
        and scatter audio into the token embeddings; vision outputs go to the thinker as
        `mm_encoder_outputs`, which also carries their DeepStack features. `audio` [N, D]:
        the audio encoder's output for this tail, when batch.py ran it for several."""
        res = self.res
        embeds = res.embed(ids)  # [1, L, D]
        if "input_features" in t:
            feats = audio
            if feats is None and getattr(self, "audio_from", None):
                feats = self._reused_audio(ids)
            if feats is None:
                feats = res.thinker.get_audio_features(
                    t["input_features"], t["feature_attention_mask"]
                ).last_hidden_state
            mask = (ids == res.cfg.thinker_config.audio_token_id).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
        mm = {}
        if "pixel_values" in t:
            mm["image"] = res.thinker.get_image_features(t["pixel_values"], t["image_grid_thw"], return_dict=True)
        if "pixel_values_videos" in t:
            mm["video"] = res.thinker.get_video_features(
                t["pixel_values_videos"], t["video_grid_thw"], return_dict=True
            )
        return embeds, (mm or None)
