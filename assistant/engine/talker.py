"""The talker side of a response: talker prefill, code predictor, Code2Wav, audio events.

Part of `StreamJob` (stream.py), split out to keep modules small, as prefill.py is. It owns
the talker prompt and its prefill (user parts from the thinker's layer-0 embeddings and
`accept_hidden_layer` states, the assistant prefix ending in t0; stock's talker positions),
the early talker prefill of a turn still being spoken, each frame's code-0 and residual
codebooks (the code predictor), the chunked Code2Wav decode and the audio events, and the
talker step that consumes the thinker's text. Everything here runs on the model worker
thread, inside `StreamJob.step()`; the state lives on the job.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .api import OUTPUT_SAMPLE_RATE, AudioChunk, Event, now
from .code2wav import IncrementalCode2Wav, to_pcm16
from .convcache import TalkerPrefix
from .resident import Resident
from .rope import rope_index
from .sampling import Picker


def reuse_talker(prefix: TalkerPrefix | None, user: torch.Tensor) -> int:
    """How many leading thinker positions a reused talker KV covers for a prompt whose
    user mask is `user` [P], cropping `prefix` to them. The thinker's reuse already cut it
    to the shared ids; the role of its last position can still hinge on the token after
    it (`<|im_start|>` then a different role), so it is cut further where the masks part."""
    if prefix is None:
        return 0
    m = min(len(prefix.user), len(user))
    differ = torch.nonzero(prefix.user[:m] != user[:m]).flatten()
    if len(differ):
        m = int(differ[0])
    prefix.keep(m)
    return m


def talker_positions(res: Resident, talker_ids: torch.Tensor, t: dict, audio_lengths) -> tuple:
    """(position_ids [3, 1, T], rope deltas [1, 1]) of a talker prompt [1, T]: the scan over
    it assigns each token its position from the tokens before it only, so a reused or
    early-prefilled prefix keeps the positions it was built with."""
    if audio_lengths is None and "image_grid_thw" not in t and "video_grid_thw" not in t:
        pos = torch.arange(talker_ids.shape[1], device=res.device).view(1, 1, -1).expand(3, 1, -1)
        return pos, torch.zeros(1, 1, dtype=torch.long, device=res.device)
    return rope_index(
        res.talker,
        talker_ids,
        t.get("image_grid_thw"),
        t.get("video_grid_thw"),
        torch.ones_like(talker_ids),
        # Stays False for camera turns too: stock generate() hands the talker only the grids and
        # video_second_per_grid, never use_audio_in_video ("Merge kwargs" in
        # modeling_qwen3_omni_moe.py generate), so its talker positions are computed without it.
        False,
        audio_lengths,
        t.get("video_second_per_grid"),
    )


class TalkerAudio:
    """The talker, code predictor and Code2Wav steps of StreamJob (a mixin: the state lives on the job)."""

    def _talker_prefill_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The talker prompt still to prefill: (embeddings [1, N, D], mask [1, U + 9],
        positions [3, 1, N]); the cache it extends is `self._talker_cache`."""
        res = self.res
        ids = self._prompt_ids  # [1, P]
        P = ids.shape[1]
        user = self._user_mask(ids[0])  # [P] every user-role position, all turns (as stock)
        m = reuse_talker(self._talker_prefix, user)  # the first m thinker positions' user parts are in the KV
        k = int(user[:m].sum())
        mm = torch.isin(ids, res.mm_ids)  # [1, P]
        new_user = res.model._get_talker_user_parts(m, P, mm, self._thinker_hidden, self._thinker_embed)
        user_embeds, user_ids = new_user[:, user[m:]], ids[:, user]  # [1, U - k, D], [1, U]
        is_start = ids[0] == res.cfg.im_start_token_id
        starts = torch.nonzero(is_start[:-1] & (ids[0, 1:] == res.cfg.assistant_token_id)).flatten()
        a0 = int(starts[-1])
        t0 = torch.tensor([[self._tokens[0]]], device=res.device)
        # Only the open assistant turn from its `<|im_start|>`, plus t0 (the parts read no further back).
        embed_with_t0 = torch.cat([self._thinker_embed[:, a0:], res.embed(t0)], dim=1)  # [1, P + 1 - a0, D]
        asst_embeds, asst_ids, _ = res.model._get_talker_assistant_parts(
            0, P + 1 - a0, res.speaker_id(self.conv.voice), embed_with_t0, res.tts_pad, res.tts_bos, res.tts_eos
        )
        embeds = torch.cat([user_embeds, asst_embeds], dim=1)  # [1, U - k + 9, D]: what is left to prefill
        talker_ids = torch.cat([user_ids, asst_ids], dim=1)  # [1, U + 9]: the whole talker prompt
        mask = torch.ones_like(talker_ids)
        pos, deltas = talker_positions(res, talker_ids, self._t, self._audio_lengths)
        self._talker_deltas = deltas
        self._talker_cache = self._talker_prefix.kv if k else DynamicCache(config=res.talker.config.text_config)
        self._talker_prefix = TalkerPrefix(self._talker_cache, user)  # _store_cache crops it back to U
        return embeds, mask, pos[:, :, k:]

    def _talker_prefill(self) -> list[Event]:
        embeds, mask, pos = self._talker_prefill_inputs()
        out = self.res.talker(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=pos,
            cache=self._talker_cache,
            use_cache=True,
            output_hidden_states=True,
        )
        return self._talker_prefill_done(embeds.shape[1], out.logits[0, -1], out.hidden_states[0][-1][:, -1:])

    def _talker_prefill_done(self, tokens: int, logits: torch.Tensor, last_hidden: torch.Tensor) -> list[Event]:
        """After the talker's prefill forward of `tokens` positions: the last one's logits
        [V] and last-layer hidden state [1, 1, D] choose code-0 of frame 0."""
        res = self.res
        self.stats.talker_prefill_tokens = tokens
        s = self.sampling
        self._talker_picker = Picker(
            greedy=s.greedy,
            temperature=s.talker_temperature,
            top_k=s.talker_top_k,
            top_p=s.talker_top_p,
            repetition_penalty=s.talker_repetition_penalty,
            suppress=res.talker_suppress,
            eos_id=res.tcfg.codec_eos_token_id,
            min_new=s.min_frames,
            generator=self._gen,
        )
        left = self.config.left_context  # 0: streaming, from the module itself (code2wav_stream.py)
        self._vocoder = IncrementalCode2Wav(res.vocoder if left else res.code2wav, left, list(self.config.chunk_ramp))
        self._after_talker_row(logits, last_hidden)
        self.stats.t_talker_first_frame = now()
        self._phase = "frame"
        return []

    def _user_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """[P] bool: positions in user turns (from their `<|im_start|>` to the next one),
        which stock's talker prompt takes from every turn of the conversation."""
        res = self.res
        P = ids.shape[0]
        pos_idx = torch.arange(P, device=res.device)
        is_start = ids == res.cfg.im_start_token_id
        prev_start = torch.cummax(torch.where(is_start, pos_idx, torch.full_like(pos_idx, -1)), 0).values.clamp_min(0)
        return ids[(prev_start + 1).clamp_max(P - 1)] == res.cfg.user_token_id

    def _talker_user_prefill(
        self, ids: torch.Tensor, t: dict, audio_lengths, embed: torch.Tensor, hidden: torch.Tensor, prefix
    ) -> TalkerPrefix:
        """The talker's KV for the user-role positions of `ids` [1, N], a prompt cut inside
        the user turn being spoken (early prefill), extending `prefix` (a TalkerPrefix for
        a leading part, or None). The talker reads user turns from the thinker's layer-0
        inputs and `accept_hidden_layer` states ([1, N, D] each), which the early prefill
        has just computed; with causal attention these positions' KV is final, so at
        commit the talker prefills only the turn's tail and the assistant prefix. The same
        calls as `_talker_prefill`, in two pieces (tests/test_camera_prefill.py and
        tests/test_incremental_prefill.py compare with one offline prefill)."""
        res = self.res
        N = ids.shape[1]
        user = self._user_mask(ids[0])  # [N]
        m = reuse_talker(prefix, user)
        k = int(user[:m].sum())
        kv = prefix.kv if prefix is not None and k else DynamicCache(config=res.talker.config.text_config)
        if int(user.sum()) > k:
            mm = torch.isin(ids, res.mm_ids)  # [1, N]
            new_user = res.model._get_talker_user_parts(m, N, mm, hidden, embed)[:, user[m:]]  # [1, U - k, D]
            talker_ids = ids[:, user]  # [1, U]
            pos, _ = talker_positions(res, talker_ids, t, audio_lengths)
            res.talker(
                inputs_embeds=new_user,
                attention_mask=torch.ones_like(talker_ids),
                position_ids=pos[:, :, k:],
                cache=kv,
                use_cache=True,
            )
        return TalkerPrefix(kv, user)

    def _after_talker(self, out) -> None:
        self._after_talker_row(out.logits[0, -1], out.hidden_states[0][-1][:, -1:])

    def _after_talker_row(self, logits: torch.Tensor, last_hidden: torch.Tensor) -> None:
        """logits [V] of the last position; last_hidden [1, 1, D] (as stock's prepare_inputs reads it)."""
        self._code0 = self._talker_picker.pick(logits)
        self._talker_last_hidden = last_hidden

    def _frame(self) -> list[Event]:
        """Finish the current frame: residual codes. The chunk's decode, when one is due,
        and the next talker step (`_advance`) are steps of their own, so that a commit
        arriving meanwhile waits for one of them at most: with the talker step inline, a
        speaking response's frame was 10-18 ms on the tiny CPU model under a second user's
        traffic, and that user's commits waited 5-11 ms for it before their first packet."""
        done = self._frame_end_check()
        if done is not None:
            return done
        self._frame_t0 = now()
        codes, codec_sum = self._predict_residuals()  # [16], [1, 1, D]
        return self._frame_finish(codes, codec_sum)

    def _frame_end_check(self) -> list[Event] | None:
        """The response's end (codec EOS or max_frames) instead of another frame, or None."""
        if self._code0 == self.res.tcfg.codec_eos_token_id or self._frames >= self.sampling.max_frames:
            if self._call_at is not None and not self._thinker_done:
                return self._end_speech()
            return self._finish("completed")
        return None

    def _end_speech(self) -> list[Event]:
        """The talker ended its utterance before a call: the rest of the audio goes out,
        then the thinker decodes the calls alone (the "text" phase)."""
        tail = self._vocoder.decode(final=True)
        self._vocoder_flushed = True
        self._phase = "text"
        return [self._audio_event(tail)] if tail is not None and len(tail) else []

    def _frame_finish(self, codes: torch.Tensor, codec_sum: torch.Tensor) -> list[Event]:
        """codes [16] of this frame; codec_sum [1, 1, D], the talker's next codec input
        (the next step's, "advance": batch.py advances several responses in one)."""
        self._codec_sum = codec_sum
        if self.stats.t_code_predictor_first_frame is None:
            self.stats.t_code_predictor_first_frame = now()
        self._frames += 1
        self._vocoder.push(codes)
        if self._vocoder.ready() or self._lead_short():
            # A chunk is due. Its Code2Wav decode is a step of its own, so that the scheduler
            # can put a new turn's first packet, or a listener shorter of audio, before it:
            # four responses' decodes inside one batched frame step took 50-60 ms on the tiny
            # CPU model, and a first packet that arrived meanwhile waited for all of them.
            self._phase = "codec"
            return []
        self._phase = "advance"
        return []

    def _lead_short(self) -> bool:
        """Whether the frames so far must go out now, short of a whole chunk: with the
        streaming decode (a chunk costs only its own frames), once the listener's audio
        ahead of playback falls under `flush_lead_s` (the model worker's guard, plus a
        frame and a decode: waiting for one more frame would leave it less than the guard).
        The ramp's chunks then shrink to what the listener can wait for. A ramp that
        doubles runs a listener dry whenever a frame takes more than half its 80 ms, and
        at 4 users on the tiny CPU model a batched frame took 60-70 ms."""
        if self._vocoder.stream is None or self.stats.t_first_audio is None or not self.flush_lead_s:
            return False
        ahead = self._lead_s(now())
        # Two frames at least while the lead is over half of it: a decode call has a fixed cost
        # (8 of the 9.5 ms of a one-frame chunk, tiny CPU model), which one-frame chunks for
        # four listeners turned into half of the worker's time.
        pending = self._frames - self._vocoder.decoded_frames
        return ahead < self.flush_lead_s and (pending >= 2 or ahead < self.flush_lead_s / 2)

    def _lead_s(self, t: float) -> float:
        """The listener's audio ahead of real-time playback at `t` (negative: dry), counted
        from the first chunk; the response must have sent one."""
        return self.stats.t_first_audio + self.stats.audio_samples / OUTPUT_SAMPLE_RATE - t

    def _codec(self) -> list[Event]:
        """Decode the chunk that the last frame completed and send it; the talker advances
        on the next step."""
        return self._codec_done(self._vocoder.decode(final=True))  # due: a whole chunk, or a short one

    def _codec_done(self, audio) -> list[Event]:
        """After a chunk's decode (here, or batched with other responses' in batch.py)."""
        self._phase = "advance"
        return [self._audio_event(audio)] if audio is not None else []

    def _advance(self) -> list[Event]:
        """The next talker step. The talker waits for the thinker: it reads one text
        token per frame while text lasts, then tts_eos, then tts_pad."""
        res = self.res
        events: list[Event] = []
        while self._needs_text():
            events += self._thinker_step()
        embeds, position = self._codec_sum + self._next_text_input(), self._talker_next_position()
        graphed = res.talker_graph.step(self._talker_cache, embeds, position) if res.talker_graph else None
        if graphed is not None:  # --talker-cuda-graph (cudagraphs.py GraphedTalkerStep): logits [1, V], [1, 1, D]
            self._after_talker_row(graphed[0][0], graphed[1])
        else:
            out = res.talker(
                inputs_embeds=embeds,
                position_ids=position,
                cache=self._talker_cache,
                use_cache=True,
                output_hidden_states=True,
                generation_step=self._frames,  # only echoed back by the module; text comes from our queue
            )
            self._after_talker(out)
        self._end_advance()
        return events

    def _needs_text(self) -> bool:
        return not self._text_queue and not self._thinker_done and not self._tts_eos_queued

    def _next_text_input(self) -> torch.Tensor:
        """[1, 1, D]: the next generated token's projected embedding, tts_eos, then tts_pad."""
        return self._text_queue.popleft() if self._text_queue else self.res.tts_pad

    def _talker_next_position(self) -> torch.Tensor:
        past = self._talker_cache.get_seq_length()
        return (
            (torch.arange(past, past + 1, device=self.res.device) + self._talker_deltas).view(1, 1, 1).expand(3, 1, 1)
        )

    def _end_advance(self) -> None:
        self.stats.frame_ms.append((now() - self._frame_t0) * 1000.0)
        self._phase = "frame"

    def _residual_picker(self) -> Picker:
        """Stock's nested code-predictor `generate()` picks residuals greedily, or with
        top-k 50 / top-p 0.8 when sampling."""
        return Picker(greedy=self.sampling.greedy, top_k=50, top_p=0.8, generator=self._gen)

    def _predict_residuals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 15 residual codebooks of the current frame and the sum of all 16 code
        embeddings that the next talker step consumes."""
        res = self.res
        c0 = torch.tensor([[self._code0]], device=res.device)
        e0 = res.talker.get_input_embeddings()(c0)  # [1, 1, D]
        if self.sampling.greedy and res.device.type == "cuda":
            # The same argmax on the device: no host round trip per step, and one graph replay
            # per frame with CUDA graphs (cudagraphs.py). The CPU keeps the Picker path below.
            residual, codec_sum = res.predictor.run_greedy(self._talker_last_hidden, e0)  # [1, 15], [1, 1, D]
            return torch.cat([c0[0], residual[0]]), codec_sum
        picker = self._residual_picker()
        residual, codec_sum = res.predictor.run(
            self._talker_last_hidden, e0, lambda step, logits: torch.tensor([picker.pick(logits[0])], device=res.device)
        )  # [1, 15], [1, 1, D]; Picker samples on the host side of the graphs, between step replays
        return torch.cat([c0[0], residual[0]]), codec_sum

    def _audio_event(self, samples) -> AudioChunk:
        vocoder = self._vocoder
        chunk = AudioChunk(
            to_pcm16(samples),
            first_frame=self._frames_emitted(),
            frames=vocoder.decoded_frames - self._frames_emitted(),
        )
        self._emitted_frames = vocoder.decoded_frames
        self.stats.audio_samples += chunk.samples
        if self.stats.t_first_audio is None:
            self.stats.t_first_audio = now()
        return chunk

    def _frames_emitted(self) -> int:
        return getattr(self, "_emitted_frames", 0)
