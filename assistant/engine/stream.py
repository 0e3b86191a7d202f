"""One streaming response as a step-wise state machine over the resident model.

Stock `generate()` runs thinker -> talker -> Code2Wav one after the other. Here the same
modules run interleaved (../shared/reference/qwen3-omni-streaming.md §2.3-2.5):

1. `_prefill`: processor, audio/vision encoders, thinker prefill (KV cache) and the first
   text token t0.
2. `_talker_prefill`: as soon as t0 exists, the talker prompt (user parts from thinker
   layer-0 embeddings and `accept_hidden_layer` hidden states, then the 9-position
   assistant prefix ending in t0) is prefilled and code-0 of frame 0 is chosen.
3. `_frame`: the residual codebooks of the current frame (hand-written code-predictor
   loop, no nested `generate()`), Code2Wav on a ramped chunk schedule, then the next
   talker step, which consumes the next text token (the thinker is advanced when it is
   behind), then `tts_eos`, then `tts_pad`.

Each `step()` does one unit of work and returns the events it produced, so one worker
can interleave many responses and cancel one within a talker step. Positions are always
passed explicitly: the modules' `rope_deltas` attributes are shared state and are never
relied on. Every call mirrors what stock `generate()` feeds the same module, so greedy
decoding matches it token for token (tests/test_engine_oracle.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from . import inputs as inputs_mod
from .api import (
    AudioChunk,
    Conversation,
    EngineError,
    Event,
    ResponseDone,
    ResponseStats,
    Sampling,
    TextDelta,
    Turn,
    new_id,
    now,
)
from .code2wav import IncrementalCode2Wav, to_pcm16
from .predictor import FastCodePredictor
from .sampling import Picker


@dataclass
class StreamConfig:
    chunk_ramp: tuple[int, ...] = (1, 2, 4, 8, 16, 25)
    left_context: int = 25


class Resident:
    """The loaded model plus constants every response needs (read-only after load)."""

    def __init__(self, model, processor, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype
        cfg = model.config
        self.cfg, self.tcfg = cfg, cfg.talker_config
        self.thinker, self.talker, self.code2wav = model.thinker, model.talker, model.code2wav
        self.embed = model.thinker.get_input_embeddings()
        self.mm_ids = torch.tensor(
            [cfg.thinker_config.audio_token_id, cfg.thinker_config.image_token_id, cfg.thinker_config.video_token_id],
            device=device,
        )
        vocab = self.tcfg.text_config.vocab_size
        eos = self.tcfg.codec_eos_token_id
        # Stock generate() suppresses the talker's special range except codec EOS.
        self.talker_suppress = torch.tensor([i for i in range(vocab - 1024, vocab) if i != eos], device=device)
        self.predictor = FastCodePredictor(self.talker.code_predictor)
        with torch.no_grad():
            special = torch.tensor([[cfg.tts_bos_token_id, cfg.tts_eos_token_id, cfg.tts_pad_token_id]], device=device)
            self.tts_bos, self.tts_eos, self.tts_pad = self.talker.text_projection(self.embed(special)).chunk(3, dim=1)

    def speaker_id(self, voice: str) -> int:
        table = self.tcfg.speaker_id or {}
        if voice.lower() not in table:
            raise ValueError(f"unknown voice {voice!r}; choose from {sorted(table)}")
        return table[voice.lower()]


class StreamJob:
    """One response. Not thread-safe: only the model worker calls `step()`."""

    def __init__(
        self,
        res: Resident,
        conv: Conversation,
        *,
        audio: bool = True,
        t_committed: float | None = None,
        config: StreamConfig | None = None,
    ) -> None:
        self.res, self.audio, self.config = res, audio, config or StreamConfig()
        # A snapshot: the session may edit the live conversation while this runs.
        self.conv = Conversation(
            voice=conv.voice, instructions=conv.instructions, sampling=conv.sampling, turns=list(conv.turns), id=conv.id
        )
        self.sampling: Sampling = conv.sampling
        self.stats = ResponseStats(t_committed=t_committed)
        self.item_id = new_id("item")
        self.cancelled = False
        self.done = False
        self._phase = "prefill"
        self._tokens: list[int] = []  # text tokens generated (EOS included if produced)
        self._text = ""
        self._thinker_done = False
        self._text_queue: deque[torch.Tensor] = deque()  # talker text inputs, each [1, 1, D]
        self._frames = 0
        gen = torch.Generator(device="cpu")
        if self.sampling.seed is not None:
            gen.manual_seed(self.sampling.seed)
        self._gen = gen if self.sampling.seed is not None else None

    # ------------------------------------------------------------------ driver

    def step(self) -> list[Event]:
        """Run one unit of work; returns its events (the last one is ResponseDone)."""
        if self.done:
            return []
        try:
            with torch.no_grad():
                if self.cancelled:
                    return self._finish("cancelled")
                if self._phase == "prefill":
                    return self._prefill()
                if self._phase == "talker_prefill":
                    return self._talker_prefill()
                if self._phase == "frame":
                    return self._frame()
                return self._text_only_step()
        except torch.OutOfMemoryError as exc:  # only this response fails; the worker keeps serving
            return self._finish("failed", EngineError("out_of_memory", str(exc)[:300]))
        except (ValueError, RuntimeError, IndexError) as exc:
            return self._finish("failed", EngineError("engine_error", f"{type(exc).__name__}: {exc}"[:500]))

    @property
    def first_packet_pending(self) -> bool:
        first = self.stats.t_first_audio if self.audio else self.stats.t_thinker_first_token
        return first is None and not self.done

    # ------------------------------------------------------------------ thinker

    def _prefill(self) -> list[Event]:
        res, s = self.res, self.sampling
        self.stats.t_started = now()
        prepared = inputs_mod.prepare(res.processor, self.conv)
        t = {k: v.to(res.device) for k, v in prepared.tensors.items()}
        for key in ("input_features", "pixel_values", "pixel_values_videos"):
            if key in t:
                t[key] = t[key].to(res.dtype)
        ids = t["input_ids"]  # [1, P]
        self._prompt_ids = ids
        self._t = t
        embeds, mm_outputs = self._encode(t)
        self.stats.t_preprocessed = now()

        self._audio_lengths = t["feature_attention_mask"].sum(-1) if "feature_attention_mask" in t else None
        pos, deltas = res.thinker.get_rope_index(
            ids,
            t.get("image_grid_thw"),
            t.get("video_grid_thw"),
            t["attention_mask"],
            False,
            self._audio_lengths,
            t.get("video_second_per_grid"),
        )  # pos [3, 1, P]
        self._thinker_deltas = deltas  # [1, 1]
        self._thinker_cache = DynamicCache(config=res.thinker.config.text_config)
        out = res.thinker(
            input_ids=ids,
            inputs_embeds=embeds,
            mm_encoder_outputs=mm_outputs,
            image_grid_thw=t.get("image_grid_thw"),
            video_grid_thw=t.get("video_grid_thw"),
            attention_mask=t["attention_mask"],
            position_ids=pos,
            cache=self._thinker_cache,
            use_cache=True,
            output_hidden_states=self.audio,
            logits_to_keep=1,
        )
        self.stats.prefill_tokens = ids.shape[1]
        self._thinker_picker = Picker(
            greedy=s.greedy,
            temperature=s.thinker_temperature,
            top_k=s.thinker_top_k,
            top_p=s.thinker_top_p,
            repetition_penalty=s.thinker_repetition_penalty,
            eos_id=res.cfg.im_end_token_id,
            min_new=s.min_tokens,
            generator=self._gen,
        )
        if s.thinker_repetition_penalty != 1.0:
            self._thinker_picker.history = ids[0].tolist()  # stock penalises prompt ids too
            self._thinker_picker.min_new += len(self._thinker_picker.history)
        if self.audio:
            hs = out.hidden_states
            self._thinker_embed = hs[0]  # [1, P, D] layer-0 inputs (text + scattered encoder outputs)
            self._thinker_hidden = hs[res.tcfg.accept_hidden_layer]  # [1, P, D]
        events = self._accept_token(out.logits[0, -1])
        self.stats.t_thinker_first_token = now()
        self._phase = "talker_prefill" if self.audio else "text"
        return events

    def _encode(self, t: dict) -> tuple[torch.Tensor, dict]:
        """Run the audio and vision encoders (Table 2's preprocessing) and scatter audio
        into the token embeddings; vision outputs go to the thinker as `mm_encoder_outputs`,
        which also carries their DeepStack features."""
        res = self.res
        ids = t["input_ids"]
        embeds = res.embed(ids)  # [1, P, D]
        if "input_features" in t:
            feats = res.thinker.get_audio_features(t["input_features"], t["feature_attention_mask"]).last_hidden_state
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

    def _thinker_step(self) -> list[Event]:
        res = self.res
        tok = torch.tensor([[self._tokens[-1]]], device=res.device)
        past = self._thinker_cache.get_seq_length()
        pos = (torch.arange(past, past + 1, device=res.device) + self._thinker_deltas).view(1, 1, 1).expand(3, 1, 1)
        out = res.thinker(input_ids=tok, position_ids=pos, cache=self._thinker_cache, use_cache=True)
        return self._accept_token(out.logits[0, -1])

    def _accept_token(self, logits: torch.Tensor) -> list[Event]:
        res = self.res
        token = self._thinker_picker.pick(logits)
        self._tokens.append(token)
        eos = token == res.cfg.im_end_token_id
        self._thinker_done = eos or len(self._tokens) >= self.sampling.max_tokens
        if self.audio:
            # The talker reads the layer-0 embedding of generated tokens 1..n-2, then
            # tts_eos, then tts_pad: stock builds its text inputs from the thinker's
            # hidden states, which never contain the last generated token (EOS, or the
            # token that hit max_tokens) because it is never fed back. t0 enters through
            # the talker's assistant prefix instead.
            if self._thinker_done:
                self._text_queue.append(res.tts_eos)
            elif len(self._tokens) > 1:
                emb = res.talker.text_projection(res.embed(torch.tensor([[token]], device=res.device)))  # [1, 1, D]
                self._text_queue.append(emb)
        self.stats.text_tokens = len(self._tokens)
        if eos:
            return []
        text = res.processor.tokenizer.decode(self._spoken_tokens(), skip_special_tokens=True)
        delta, self._text = text[len(self._text) :], text
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            self._text = text[: -len(delta)] if delta else text
            return []
        return [TextDelta(delta, token)] if delta else []

    def _spoken_tokens(self) -> list[int]:
        eos = self.res.cfg.im_end_token_id
        return [t for t in self._tokens if t != eos]

    def _text_only_step(self) -> list[Event]:
        if self._thinker_done:
            return self._finish("completed")
        return self._thinker_step()

    # ------------------------------------------------------------------ talker

    def _talker_prefill(self) -> list[Event]:
        res, s = self.res, self.sampling
        ids = self._prompt_ids  # [1, P]
        P = ids.shape[1]
        pos_idx = torch.arange(P, device=res.device)
        is_start = ids[0] == res.cfg.im_start_token_id
        prev_start = torch.cummax(torch.where(is_start, pos_idx, torch.full_like(pos_idx, -1)), 0).values.clamp_min(0)
        role = ids[0, (prev_start + 1).clamp_max(P - 1)]
        user = role == res.cfg.user_token_id  # every user-role position, all turns (as stock)
        mm = torch.isin(ids, res.mm_ids)  # [1, P]
        full_user = res.model._get_talker_user_parts(0, P, mm, self._thinker_hidden, self._thinker_embed)
        user_embeds, user_ids = full_user[:, user], ids[:, user]  # [1, U, D], [1, U]
        starts = torch.nonzero(is_start[:-1] & (ids[0, 1:] == res.cfg.assistant_token_id)).flatten()
        a0 = int(starts[-1])
        t0 = torch.tensor([[self._tokens[0]]], device=res.device)
        embed_with_t0 = torch.cat([self._thinker_embed, res.embed(t0)], dim=1)  # [1, P + 1, D]
        asst_embeds, asst_ids, _ = res.model._get_talker_assistant_parts(
            a0, P + 1, res.speaker_id(self.conv.voice), embed_with_t0, res.tts_pad, res.tts_bos, res.tts_eos
        )
        embeds = torch.cat([user_embeds, asst_embeds], dim=1)  # [1, U + 9, D]
        talker_ids = torch.cat([user_ids, asst_ids], dim=1)
        mask = torch.ones_like(talker_ids)
        t = self._t
        has_mm = self._audio_lengths is not None or "image_grid_thw" in t or "video_grid_thw" in t
        if has_mm:
            pos, deltas = res.talker.get_rope_index(
                talker_ids,
                t.get("image_grid_thw"),
                t.get("video_grid_thw"),
                mask,
                False,
                self._audio_lengths,
                t.get("video_second_per_grid"),
            )
        else:
            pos = torch.arange(talker_ids.shape[1], device=res.device).view(1, 1, -1).expand(3, 1, -1)
            deltas = torch.zeros(1, 1, dtype=torch.long, device=res.device)
        self._talker_deltas = deltas
        self._talker_cache = DynamicCache(config=res.talker.config.text_config)
        out = res.talker(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=pos,
            cache=self._talker_cache,
            use_cache=True,
            output_hidden_states=True,
        )
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
        self._vocoder = IncrementalCode2Wav(res.code2wav, self.config.left_context, list(self.config.chunk_ramp))
        self._after_talker(out)
        self.stats.t_talker_first_frame = now()
        self._phase = "frame"
        return []

    def _after_talker(self, out) -> None:
        self._code0 = self._talker_picker.pick(out.logits[0, -1])
        self._talker_last_hidden = out.hidden_states[0][-1][:, -1:]  # [1, 1, D], as stock's prepare_inputs

    def _frame(self) -> list[Event]:
        """Finish the current frame (residual codes, audio), then run the next talker step."""
        res, s = self.res, self.sampling
        t0 = now()
        eos = self._code0 == res.tcfg.codec_eos_token_id
        if eos or self._frames >= s.max_frames:
            return self._finish("completed")
        codes, codec_sum = self._predict_residuals()  # [16], [1, 1, D]
        if self.stats.t_code_predictor_first_frame is None:
            self.stats.t_code_predictor_first_frame = now()
        self._frames += 1
        self._vocoder.push(codes)
        events: list[Event] = []
        audio = self._vocoder.decode()
        if audio is not None:
            events.append(self._audio_event(audio))
        # The talker waits for the thinker: one text token per frame while text lasts.
        while not self._text_queue and not self._thinker_done:
            events += self._thinker_step()
        text_in = self._text_queue.popleft() if self._text_queue else res.tts_pad
        past = self._talker_cache.get_seq_length()
        pos = (torch.arange(past, past + 1, device=res.device) + self._talker_deltas).view(1, 1, 1).expand(3, 1, 1)
        out = res.talker(
            inputs_embeds=codec_sum + text_in,
            position_ids=pos,
            cache=self._talker_cache,
            use_cache=True,
            output_hidden_states=True,
            generation_step=self._frames,  # only echoed back by the module; text comes from our queue
        )
        self._after_talker(out)
        self.stats.frame_ms.append((now() - t0) * 1000.0)
        return events

    def _predict_residuals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 15 residual codebooks of the current frame, picked as stock's nested
        `generate()` would (greedy, or top-k 50 / top-p 0.8 when sampling), and the sum
        of all 16 code embeddings that the next talker step consumes."""
        res = self.res
        c0 = torch.tensor([[self._code0]], device=res.device)
        e0 = res.talker.get_input_embeddings()(c0)  # [1, 1, D]
        picker = Picker(greedy=self.sampling.greedy, top_k=50, top_p=0.8, generator=self._gen)
        residual, codec_sum = res.predictor.run(
            self._talker_last_hidden, e0, lambda step, logits: torch.tensor([picker.pick(logits[0])], device=res.device)
        )  # [1, 15], [1, 1, D]
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

    # ------------------------------------------------------------------ end

    def _finish(self, status: str, error: EngineError | None = None) -> list[Event]:
        events: list[Event] = []
        if status == "completed" and self.audio and getattr(self, "_vocoder", None) is not None:
            tail = self._vocoder.decode(final=True)
            if tail is not None and len(tail):
                events.append(self._audio_event(tail))
        self.done = True
        self.stats.frames = self._frames
        self.stats.t_done = now()
        turn = None
        if status != "failed":  # a failed answer leaves no trace in the history
            spoken = self._spoken_tokens()
            turn = Turn("assistant", [], id=self.item_id, token_ids=spoken, frames=self._frames, text=self._text)
        events.append(ResponseDone(status, turn, self.stats, error))  # type: ignore[arg-type]
        return events
