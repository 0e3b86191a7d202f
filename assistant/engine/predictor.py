"""The code predictor (MTP) as a hand-written decode loop over its own weights.

Per codec frame the talker picks code-0 and the code predictor fills the 15 residual
codebooks, one token per step: step 0 sees `[talker last hidden, embed(code-0)]`, step
r (r >= 1) sees `codec_embedding[r-1](residual r-1)`, and `lm_head[r]` picks residual r
(transformers' `Qwen3OmniMoeTalkerCodePredictorModelForConditionalGeneration.forward`).

Stock runs this as a nested `generate()` per frame; even a plain loop of module
`forward()`s spends most of its time in Python dispatch, mask building and cache
objects (vLLM-Omni PR #1758 replaced the same loop for the same reason). Here the
layers' own Linear/RMSNorm modules are called directly with a preallocated KV buffer
of 16 positions and precomputed rotary tables: same arithmetic, same order, a fraction
of the overhead, and static shapes that CUDA graphs can capture.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def greedy_pick(step: int, logits: torch.Tensor) -> torch.Tensor:
    """logits [B, V] -> ids [B] on the logits' device: the argmax `Picker(greedy=True)` takes."""
    return logits.float().argmax(-1)


class FastCodePredictor:
    def __init__(self, code_predictor) -> None:
        self.cp = code_predictor
        model = code_predictor.model
        cfg = model.config
        self.layers = list(model.layers)
        self.norm = model.norm
        self.embeddings = model.codec_embedding  # ModuleList of groups - 1
        self.heads = code_predictor.lm_head  # ModuleList of groups - 1
        self.groups = cfg.num_code_groups
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.max_len = self.groups  # 2 prefill positions + 14 decode steps
        weight = self.norm.weight
        positions = torch.arange(self.max_len, device=weight.device).unsqueeze(0)  # [1, S]
        dummy = torch.zeros(1, device=weight.device, dtype=weight.dtype)
        cos, sin = model.rotary_emb(dummy, positions)  # [1, S, head_dim] each
        self.cos, self.sin = cos[0], sin[0]  # [S, head_dim]

    @torch.no_grad()
    def run(
        self, last_hidden: torch.Tensor, code0_embed: torch.Tensor, pick: Callable[[int, torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """last_hidden, code0_embed: [B, 1, D]. `pick(step, logits [B, V]) -> ids [B]`.
        Returns residual codes [B, groups - 1] and the sum of all 16 code embeddings
        (code-0's included) [B, 1, D]: the talker's next codec input."""
        B = last_hidden.shape[0]
        dev, dt = last_hidden.device, last_hidden.dtype
        shape = (len(self.layers), B, self.n_kv, self.max_len, self.head_dim)
        k_cache = torch.empty(shape, device=dev, dtype=dt)
        v_cache = torch.empty(shape, device=dev, dtype=dt)
        x = torch.cat([last_hidden, code0_embed], dim=1)  # [B, 2, D]
        embeds = [code0_embed]
        codes = []
        pos = 0
        for step in range(self.groups - 1):
            logits = self.step_logits(step, x, pos, k_cache, v_cache)  # [B, V]
            pos += x.shape[1]
            ids = pick(step, logits)  # [B]
            codes.append(ids)
            x = self.embeddings[step](ids.unsqueeze(1))  # [B, 1, D]
            embeds.append(x)
        # One reduction over the 16 embeddings, in stock's order (cat then sum): a running
        # sum rounds differently and can flip a near-tied talker logit frames later.
        codec_sum = torch.cat(embeds, dim=1).sum(1, keepdim=True)  # [B, 1, D]
        return torch.stack(codes, dim=1), codec_sum

    def run_greedy(self, last_hidden: torch.Tensor, code0_embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`run` with an on-device argmax pick (no host sync per step). Picks what
        `sampling.Picker(greedy=True)` picks: argmax of the float32 logits, first index on ties."""
        return self.run(last_hidden, code0_embed, greedy_pick)

    def step_logits(
        self, step: int, x: torch.Tensor, pos: int, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        """One decode step: x [B, T, D] at positions [pos, pos + T) -> logits of residual `step`, [B, V].
        Shared by the eager loop and the CUDA-graph captures (cudagraphs.py), so both run the same kernels."""
        h = self._layers(x, pos, k_cache, v_cache)  # [B, T, D]
        # Norm and head over all T positions, as stock: a [B, 1, D] matmul rounds differently.
        return self.heads[step](self.norm(h))[:, -1]  # [B, V]

    def _layers(self, x: torch.Tensor, pos: int, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        cos = self.cos[pos : pos + T].unsqueeze(0).unsqueeze(0)  # [1, 1, T, hd]
        sin = self.sin[pos : pos + T].unsqueeze(0).unsqueeze(0)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_norm(attn.q_proj(h).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)  # [B, H, T, hd]
            k = attn.k_norm(attn.k_proj(h).view(B, T, self.n_kv, self.head_dim)).transpose(1, 2)  # [B, KV, T, hd]
            v = attn.v_proj(h).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k_cache[i, :, :, pos : pos + T] = k
            v_cache[i, :, :, pos : pos + T] = v
            keys, values = k_cache[i, :, :, : pos + T], v_cache[i, :, :, : pos + T]
            out = F.scaled_dot_product_attention(
                q, keys, values, is_causal=T > 1, scale=attn.scaling, enable_gqa=self.n_heads != self.n_kv
            )  # [B, H, T, hd]; causal only for the 2-position prefill, which starts at 0
            x = x + attn.o_proj(out.transpose(1, 2).reshape(B, T, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x
