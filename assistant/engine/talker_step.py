"""The talker's decode step over a static KV buffer, with no host synchronisation, so that
a CUDA graph can capture it (cudagraphs.py `GraphedTalkerStep`).

The stock step (`model.talker(inputs_embeds=[1, 1, D], cache=DynamicCache, ...)`) cannot be
captured: the DynamicCache grows by concatenation (a new shape every step), the mask is
built on the host, and the MoE experts loop over the experts hit (`nonzero`, a host sync).
This module does the same arithmetic for one response at batch 1, op for op as stock
(modeling_qwen3_omni_moe.py: Qwen3OmniMoeTalkerDecoderLayer, ThinkerTextAttention,
TalkerTextSparseMoeBlock, TalkerTextExperts), on fixed shapes:

- the keys and values live in a buffer [layers, 1, KV, max_len, hd]; the new position is
  written at `index` (a device tensor) and attention runs over the whole buffer under a
  mask of the positions filled, so every step has the same shapes;
- the position ids [3, 1, 1] and the input embedding [1, 1, D] are static buffers too;
- the experts: the top-k chosen are sorted by id and their weights gathered by a device
  index, then applied one after another and summed in ascending expert order, which is
  the order in which stock's loop adds them (index_add_ per expert hit, ascending), with
  the same [1, D] x [D, 2I] products. No host sync anywhere.

Numerics: everything but attention runs the same kernels on the same shapes as stock. The
attention is over max_len keys with a mask instead of L keys without one, so SDPA may pick
another kernel and round differently; the CPU tests compare this path with stock's
(tests/test_talker_graph.py), and only a GPU run can say how close the two are there
(scripts/gpu_check.sh, step b). A graph replay of this code is bit-equal to running it
eagerly (same kernels, same addresses).

The response keeps its DynamicCache as the source of truth (conversation cache, batched
steps and barge-in crop it as before): before a step its KV is copied into the buffer
unless the buffer already holds exactly it (the same tensors as after this module's last
step), and after the step the new position is appended to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as qwen

MAX_LEN = 4096  # talker positions per response this path serves (user turns + answer frames); longer: stock


class StaticTalkerStep:
    """Buffers and the sync-free step of one talker decode position at batch 1."""

    def __init__(self, talker, max_len: int = MAX_LEN) -> None:
        model = talker.model
        cfg = model.config
        weight = model.norm.weight
        device, dtype = weight.device, weight.dtype
        self.talker, self.model, self.max_len = talker, model, max_len
        self.layers = list(model.layers)
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.top_k = cfg.num_experts_per_tok
        self.norm_topk = cfg.norm_topk_prob
        shape = (len(self.layers), 1, self.n_kv, max_len, self.head_dim)
        self.k_cache = torch.zeros(shape, device=device, dtype=dtype)
        self.v_cache = torch.zeros(shape, device=device, dtype=dtype)
        self.embeds = torch.zeros(1, 1, cfg.hidden_size, device=device, dtype=dtype)  # static input
        self.position = torch.zeros(3, 1, 1, device=device, dtype=torch.long)  # static mrope position
        self.index = torch.zeros(1, device=device, dtype=torch.long)  # where the new key goes (= cache length)
        self._slots = torch.arange(max_len, device=device)
        self._owner: tuple[object, object] | None = None  # (cache, its layer-0 keys) the buffer holds

    # ------------------------------------------------------------------ host side

    def load(self, cache, embeds: torch.Tensor, position: torch.Tensor) -> bool:
        """Stage one step of the response whose talker KV is `cache` (DynamicCache):
        embeds [1, 1, D], position [3, 1, 1]. False when it does not fit the buffer."""
        n = cache.get_seq_length()
        if n + 1 > self.max_len or embeds.shape[0] != 1:
            return False
        owner = self._owner
        if owner is None or owner[0] is not cache or owner[1] is not cache.layers[0].keys:
            for i, layer in enumerate(cache.layers):  # [1, KV, n, hd] each
                self.k_cache[i, :, :, :n].copy_(layer.keys)
                self.v_cache[i, :, :, :n].copy_(layer.values)
        self.embeds.copy_(embeds)
        self.position.copy_(position)
        self.index.fill_(n)
        return True

    def commit(self, cache) -> None:
        """Append the position just computed to the response's DynamicCache."""
        n = cache.get_seq_length()
        for i in range(len(self.layers)):
            cache.update(self.k_cache[i, :, :, n : n + 1].clone(), self.v_cache[i, :, :, n : n + 1].clone(), i)
        self._owner = (cache, cache.layers[0].keys)

    # ------------------------------------------------------------------ the step (captured)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> logits [1, V] (codec_head) and the last hidden state [1, 1, D] after the final
        norm (stock's `hidden_states[0][-1]`, which transformers ties to last_hidden_state)."""
        x = self.embeds  # [1, 1, D]
        cos, sin = self.model.rotary_emb(x, self.position)  # [1, 1, hd] each
        mask = (self._slots <= self.index).view(1, 1, 1, -1)  # [1, 1, 1, max_len]
        for i, layer in enumerate(self.layers):
            x = self._layer(i, layer, x, cos, sin, mask)
        h = self.model.norm(x)  # [1, 1, D]
        return self.talker.codec_head(h)[:, -1], h

    def _layer(self, i: int, layer, x, cos, sin, mask) -> torch.Tensor:
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_norm(attn.q_proj(h).view(1, 1, -1, self.head_dim)).transpose(1, 2)  # [1, H, 1, hd]
        k = attn.k_norm(attn.k_proj(h).view(1, 1, -1, self.head_dim)).transpose(1, 2)  # [1, KV, 1, hd]
        v = attn.v_proj(h).view(1, 1, -1, self.head_dim).transpose(1, 2)
        q, k = qwen.apply_rotary_pos_emb(q, k, cos, sin)
        self.k_cache[i].index_copy_(2, self.index, k)  # [1, KV, max_len, hd]
        self.v_cache[i].index_copy_(2, self.index, v)
        out = F.scaled_dot_product_attention(
            q,
            self.k_cache[i],
            self.v_cache[i],
            attn_mask=mask,
            scale=attn.scaling,
            enable_gqa=self.n_heads != self.n_kv,
        )  # [1, H, 1, hd]
        x = x + attn.o_proj(out.transpose(1, 2).reshape(1, 1, -1))
        return x + self._moe(layer.mlp, layer.post_attention_layernorm(x))

    def _moe(self, moe, h: torch.Tensor) -> torch.Tensor:
        """Qwen3OmniMoeTalkerTextSparseMoeBlock.forward for one token, without host syncs."""
        flat = h.view(1, -1)  # [1, D]
        shared = moe.shared_expert(flat)
        router_logits = F.linear(flat, moe.gate.weight)  # [1, E]
        probs = F.softmax(router_logits, dtype=torch.float, dim=-1)
        top_w, top_i = torch.topk(probs, self.top_k, dim=-1)  # [1, k]
        if self.norm_topk:
            top_w /= top_w.sum(dim=-1, keepdim=True)
        top_w = top_w.to(router_logits.dtype)
        order = top_i[0].argsort()  # stock adds the experts' outputs in ascending expert id
        ids, weights = top_i[0, order], top_w[0, order]  # [k]
        experts = moe.experts
        gate_up, down = experts.gate_up_proj[ids], experts.down_proj[ids]  # [k, 2I, D], [k, D, I]: gathers
        total = torch.zeros_like(flat)
        for j in range(self.top_k):
            gate, up = F.linear(flat, gate_up[j]).chunk(2, dim=-1)
            current = F.linear(experts.act_fn(gate) * up, down[j]) * weights[j]
            total = total + current
        shared = torch.sigmoid(moe.shared_expert_gate(flat)) * shared
        return (total + shared).view_as(h)
