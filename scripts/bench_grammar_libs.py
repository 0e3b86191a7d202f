"""Which structured-generation library constrains tool-call arguments: per-token mask cost.

For each of llguidance, xgrammar and outlines-core that is importable, this compiles the
JSON Schema of a tool's arguments against the checkpoint's tokenizer (the tiny one follows
Qwen's 151k-entry table, so the vocabulary size is the real model's), then walks random
valid token paths: at each step it computes the mask of allowed tokens, picks one of them
at random and advances. It reports the compile time and the mean / p90 time of one mask
(what a decode step pays). Not a test: a measurement to choose by.

    python scripts/bench_grammar_libs.py --model /path/to/tiny-qwen3-omni --walks 20
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "device": {
            "type": "object",
            "properties": {
                "kind": {"type": "string", "enum": ["router", "laptop", "phone", "printer"]},
                "model": {"type": "string", "maxLength": 24},
                "age_years": {"type": "integer", "minimum": 0, "maximum": 30},
            },
            "required": ["kind", "model"],
            "additionalProperties": False,
        },
        "symptoms": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 4},
        "urgency": {"type": "string", "enum": ["low", "normal", "high"]},
        "remote_ok": {"type": "boolean"},
    },
    "required": ["device", "symptoms", "urgency"],
    "additionalProperties": False,
}


def walk(step, advance, done, vocab: int, rng: random.Random, max_steps: int) -> list[float]:
    """Random valid path; returns the time of each step in ms: computing the mask and
    applying it to a logits row [vocab], which is what a decode step pays."""
    times = []
    logits = torch.zeros(152064)
    for _ in range(max_steps):
        logits.zero_()
        t0 = time.perf_counter()
        step(logits)  # -inf on the tokens not allowed
        times.append((time.perf_counter() - t0) * 1000)
        ids = torch.isfinite(logits).nonzero().flatten().tolist()
        if not ids:
            break
        token = rng.choice(ids)
        if done(token):
            break
        advance(token)
    return times


def bench_llguidance(tok, schema, walks, rng, eos):
    import llguidance
    import llguidance.hf
    import llguidance.torch as lt

    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tok, n_vocab=152064)
    t_tok = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    m = llguidance.LLMatcher(lltok, grammar)
    t_compile = time.perf_counter() - t0
    mask = lt.allocate_token_bitmask(1, lltok.vocab_size)
    times = []
    for w in range(walks + 1):  # walk 0 warms up (lazy kernels, caches), untimed
        m = llguidance.LLMatcher(lltok, grammar)

        def step(logits, m=m):
            lt.fill_next_token_bitmask(m, mask, 0)
            lt.apply_token_bitmask_inplace(logits, mask[0])

        got = walk(step, m.consume_token, lambda t: t == eos, lltok.vocab_size, rng, 400)
        times += got if w else []
    return t_tok, t_compile, times


def bench_xgrammar(tok, schema, walks, rng, eos):
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=152064)
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    t_tok = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
    t_compile = time.perf_counter() - t0
    mask = xgr.allocate_token_bitmask(1, info.vocab_size)
    times = []
    for w in range(walks + 1):  # walk 0 warms up (lazy kernels, caches), untimed
        m = xgr.GrammarMatcher(compiled)

        def step(logits, m=m):
            m.fill_next_token_bitmask(mask)
            xgr.apply_token_bitmask_inplace(logits, mask[0])

        got = walk(step, m.accept_token, lambda t: t == eos, info.vocab_size, rng, 400)
        times += got if w else []
    return t_tok, t_compile, times


def bench_outlines(tok, schema, walks, rng, eos):
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    t0 = time.perf_counter()
    vocab: dict[str, list[int]] = {}
    for text, i in tok.get_vocab().items():
        if i != eos:
            vocab.setdefault(text, []).append(i)
    vocabulary = Vocabulary(eos, vocab)
    t_tok = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = Index(build_regex_from_schema(json.dumps(schema), r"[ ]?"), vocabulary)
    t_compile = time.perf_counter() - t0
    times = []
    for w in range(walks + 1):  # walk 0 warms up (lazy kernels, caches), untimed
        g = Guide(index)

        def step(logits, g=g):
            keep = torch.full_like(logits, -float("inf"))
            ids = torch.tensor(g.get_tokens())
            keep[ids] = 0.0
            logits += keep

        got = walk(step, g.advance, lambda t: t == eos, 152064, rng, 400)
        times += got if w else []
    return t_tok, t_compile, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint directory (its tokenizer is used)")
    ap.add_argument("--walks", type=int, default=20)
    ap.add_argument("--libs", default="llguidance,xgrammar,outlines-core")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    print(f"tokenizer: {len(tok)} entries")
    benches = {"llguidance": bench_llguidance, "xgrammar": bench_xgrammar, "outlines-core": bench_outlines}
    for name in args.libs.split(","):
        rng = random.Random(0)
        try:
            t_tok, t_compile, times = benches[name](tok, SCHEMA, args.walks, rng, eos)
        except ImportError as exc:
            print(f"{name}: not installed ({exc})")
            continue
        times.sort()
        print(
            f"{name}: tokenizer {t_tok * 1000:.0f} ms, compile {t_compile * 1000:.0f} ms, "
            f"mask mean {statistics.mean(times):.3f} ms, p50 {times[len(times) // 2]:.3f}, "
            f"p90 {times[int(len(times) * 0.9)]:.3f}, max {times[-1]:.3f} ms over {len(times)} tokens"
        )


if __name__ == "__main__":
    main()
