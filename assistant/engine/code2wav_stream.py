"""Code2Wav as an exact streaming decoder: each chunk's frames in, its new samples out.

The windowed decode (code2wav.py) runs Code2Wav over the chunk plus 25 frames of left
context every time, as stock `chunked_decode` does. On the tiny CPU model a call costs
about 8 ms plus 1.6 ms per frame it covers, so a one-frame chunk after the ramp costs as
much as 26 frames, and the ramp has to grow to 25-frame chunks to keep Code2Wav cheap.
Chunks that large ran listeners dry whenever a frame took more than half its 80 ms
(a chunk twice the last one takes twice as long to make as the last one lasts).

Every part of Code2Wav can carry its state forward instead
(modeling_qwen3_omni_moe.py, `Qwen3OmniMoeCode2Wav.forward`):
- `pre_transformer`: causal attention over a sliding window of 72 frames; a KV cache
  (transformers' DynamicCache, which keeps a sliding layer's last window) and explicit
  positions continue it;
- causal convolutions (stride 1, `padding = (kernel - 1) x dilation` zeros on the left):
  the last `padding` input samples of the previous chunk replace the zeros;
- transposed convolutions of kernel = stride (the upsampling ratios): no overlap, each
  input sample owns its outputs;
- transposed convolutions of kernel = 2 x stride (the decoder blocks), which trim
  `stride` samples on each side: output block q reads inputs q and q + 1, so the last
  input of a chunk is held back and run again, first, with the next chunk. That held
  input is the decoder's look-ahead: 555 samples at 24 kHz in all, the same tail the
  windowed decode withholds;
- LayerNorm, linear layers, SnakeBeta and clamp act per time step.

So the samples are those of one Code2Wav call over all frames so far (stock
`generate()` decodes answers under 300 frames in one call), to float rounding, and a
chunk costs what its own frames cost: chunks can stay small. Tests:
tests/test_code2wav_stream.py compares with one call over the whole answer.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


class StreamingCode2Wav:
    """One response's decoder state. Not thread-safe; one instance per response."""

    def __init__(self, code2wav) -> None:
        self.m = code2wav
        self.cache = DynamicCache(config=code2wav.config)
        self.frames = 0  # frames decoded so far: the pre-transformer's next position
        self._conv: dict[int, torch.Tensor] = {}  # id(causal conv) -> its last `padding` input samples
        self._held: dict[int, torch.Tensor] = {}  # id(transposed conv) -> its last input sample, held back

    @torch.no_grad()
    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [1, Q, n] of the next n frames -> the samples they complete, [1, 1, S]
        (n x 1920, less the 555-sample look-ahead on the first call)."""
        return self._convs(self._pre(codes))

    def _pre(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [1, Q, n] -> the pre-transformer's output [1, H, n], continuing its KV cache."""
        return _pre_rows(self.m, [self], codes)

    def _convs(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, n] -> [B, 1, S]: the upsampling and decoder convolutions, continuing this
        object's states (B rows of them for a batch, `decode_batch`)."""
        m = self.m
        for trans, convnext in m.upsample:
            x = self._convnext(convnext, self._trans(trans, x))
        for block in m.decoder:
            x = self._block(block, x)
        return x.clamp(min=-1, max=1)

    def _block(self, block, x: torch.Tensor) -> torch.Tensor:
        name = type(block).__name__
        if name.endswith("CausalConvNet"):
            return self._causal(block, x)
        if name.endswith("DecoderBlock"):
            for part in block.block:
                x = self._block(part, x)
            return x
        if name.endswith("CausalTransConvNet"):
            return self._trans(block, x)
        if name.endswith("ResidualUnit"):
            h = self._causal(block.conv1, block.act1(x))
            return x + self._causal(block.conv2, block.act2(h))
        if name.endswith("SnakeBeta"):
            return block(x)
        raise TypeError(f"streaming Code2Wav has no rule for {name}")

    def _causal(self, conv, x: torch.Tensor) -> torch.Tensor:
        """A stride-1 causal convolution [B, C, T] -> [B, C', T], its left padding from the last chunk."""
        if conv.stride != 1:
            raise ValueError("streaming Code2Wav expects stride-1 causal convolutions (Qwen3-Omni's)")
        pad = conv.padding
        if pad == 0:
            return conv.conv(x)
        past = self._conv.get(id(conv))
        if past is None:
            past = x.new_zeros(x.shape[0], x.shape[1], pad)  # the zeros the module pads with
        joined = torch.cat([past, x], dim=-1)  # [B, C, pad + T]
        self._conv[id(conv)] = joined[..., -pad:]
        return conv.conv(joined)

    def _trans(self, trans, x: torch.Tensor) -> torch.Tensor:
        """A transposed convolution [B, C, T] -> [B, C', T x stride] (one input held back when it overlaps)."""
        stride = trans.conv.stride[0]
        kernel = trans.conv.kernel_size[0]
        if kernel == stride:
            return trans(x)
        if kernel != 2 * stride:
            raise ValueError("streaming Code2Wav expects transposed kernels of 1 or 2 strides (Qwen3-Omni's)")
        held = self._held.get(id(trans))
        joined = x if held is None else torch.cat([held, x], dim=-1)  # [B, C, T (+ 1)]
        self._held[id(trans)] = joined[..., -1:]
        if joined.shape[-1] < 2:
            return joined.new_zeros(joined.shape[0], trans.conv.out_channels, 0)
        return trans(joined)  # blocks q = first..last - 1: each needs inputs q and q + 1

    def _convnext(self, block, x: torch.Tensor) -> torch.Tensor:
        """Qwen3OmniMoeConvNeXtBlock.forward with its depthwise convolution streamed."""
        h = self._causal(block.dwconv, x).permute(0, 2, 1)  # [B, T, C]
        h = block.pwconv2(block.act(block.pwconv1(block.norm(h))))
        return x + (block.gamma * h).permute(0, 2, 1)


@torch.no_grad()
def decode_batch(streams: list[StreamingCode2Wav], codes: list[torch.Tensor]) -> list[torch.Tensor]:
    """Several responses' next chunks, each continuing its own stream, with one pass through
    the convolutions: each stream's conv states are stacked into B rows and split back after.
    The pre-transformer runs as one batch too while the streams are at one position and
    its sliding window still holds every frame (`_window_holds_all`), and per stream after.
    Most of a call's time is per call, not per frame (tiny CPU model: 8 of the 9.5 ms of
    a one-frame chunk), so each part run once for B rows saves nearly all of B - 1 calls.
    The chunks must have one length and the streams must all have started or all be fresh
    (a fresh stream returns the look-ahead fewer samples). Returns each stream's samples,
    [1, 1, S] as a call would."""
    n = {c.shape[-1] for c in codes}
    if len(n) != 1 or len({s.frames > 0 for s in streams}) != 1 or len({id(s.m) for s in streams}) != 1:
        raise ValueError("decode_batch takes chunks of one length, from streams all started or all fresh")
    if _window_holds_all(streams, n.pop()):
        x = _pre_rows(streams[0].m, streams, torch.cat(codes))  # [B, H, n]
    else:
        x = torch.cat([stream._pre(c) for stream, c in zip(streams, codes, strict=True)])  # [B, H, n]
    rows = StreamingCode2Wav.__new__(StreamingCode2Wav)
    rows.m = streams[0].m
    rows._conv = {k: torch.cat([s._conv[k] for s in streams]) for k in streams[0]._conv}  # [B, C, pad] each
    rows._held = {k: torch.cat([s._held[k] for s in streams]) for k in streams[0]._held}  # [B, C, 1] each
    out = rows._convs(x)  # [B, 1, S]
    for i, stream in enumerate(streams):
        stream._conv = {k: v[i : i + 1] for k, v in rows._conv.items()}
        stream._held = {k: v[i : i + 1] for k, v in rows._held.items()}
    return [out[i : i + 1] for i in range(len(streams))]


def _window_holds_all(streams: list[StreamingCode2Wav], n: int) -> bool:
    """Whether the streams' pre-transformer caches can be stacked into one batch, exactly,
    through the cache's public `update` alone: every stream is at the same frame, and after
    these n frames the sliding window (72 frames in Qwen3-Omni) will still hold every one.
    Past that, a stacked cache would start its sliding count at the window's length
    instead of the stream's position, and the window's mask would be placed wrongly."""
    frames = {s.frames for s in streams}
    window = getattr(streams[0].m.config, "sliding_window", None)
    return len(frames) == 1 and (window is None or frames.pop() + n <= window - 1)


def _pre_rows(m, streams: list[StreamingCode2Wav], codes: torch.Tensor) -> torch.Tensor:
    """codes [B, Q, n] of B streams at one position -> the pre-transformer's output [B, H, n],
    run once over a cache stacked from theirs; each stream's cache then takes its own
    row's new keys and values, as its own forward would have added them."""
    n = codes.shape[-1]
    start = streams[0].frames
    if len(streams) == 1:
        cache = streams[0].cache
    else:
        cache = DynamicCache(config=m.config)
        if start:
            for layer in range(len(cache.layers)):
                keys = torch.cat([s.cache.layers[layer].keys for s in streams])  # [B, KV, start, hd]
                values = torch.cat([s.cache.layers[layer].values for s in streams])
                cache.update(keys, values, layer)
    hidden = m.code_embedding(codes + m.code_offset).mean(1)  # [B, n, H]
    positions = torch.arange(start, start + n, device=codes.device).expand(len(streams), n)  # [B, n]
    hidden = m.pre_transformer(
        inputs_embeds=hidden, position_ids=positions, cache=cache, use_cache=True
    ).last_hidden_state  # [B, n, H]
    for row, stream in enumerate(streams):
        if cache is not stream.cache:
            for layer in range(len(cache.layers)):
                keys, values = cache.layers[layer].keys, cache.layers[layer].values  # [B, KV, start + n, hd]
                stream.cache.update(keys[row : row + 1, :, -n:], values[row : row + 1, :, -n:], layer)
        stream.frames += n
    return hidden.permute(0, 2, 1)


@torch.no_grad()
def warm_shapes(code2wav, ramp: list[int], max_rows: int) -> int:
    """Decode a fresh stream's first chunks (`ramp`, in frames) once for every batch size up
    to `max_rows`, so that first packets never meet these input shapes for the first time;
    returns the calls made.

    Why: on the CPU, oneDNN builds a convolution kernel for every new input shape, and a
    chunk decode's shapes depend on its rows and frames (and on whether the stream is
    fresh). A shape's first call cost 2-4x the next (tiny model, 2 cores: 4 rows of one
    frame 34 ms, then 10-15 ms), and a fresh server put those 15-25 ms on the first packets
    of its first 4-user burst. The ramp's later, longer chunks (their first calls cost
    tens of ms each: 5 s for the whole default ramp at up to 8 rows) and chunks of other
    lengths (a short lead's, an answer's last) are met on first use, when their listener
    has audio ahead."""
    calls = 0
    q = code2wav.config.num_quantizers
    for rows in range(1, max_rows + 1):
        streams = [StreamingCode2Wav(code2wav) for _ in range(rows)]
        for n in ramp:
            codes = [torch.zeros(1, q, n, dtype=torch.long, device=code2wav.device) for _ in streams]  # [1, Q, n] each
            decode_batch(streams, codes)
            calls += 1
    return calls
