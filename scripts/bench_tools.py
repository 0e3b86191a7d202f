"""Tool calling's costs on the engine (not a test; figures for the README and reviews).

1. The argument grammar's cost per decoded token: required calls of a nested schema, with
   the time spent in the constraint (mask, accept, forced tokens) apart from the rest of
   each step; against a plain decode step of the same model (a text answer's thinker step,
   and a spoken answer's per-frame step).
2. The first audio packet of the answer after a function_call_output, against a plain
   follow-up turn's, in the same run: both conversations declare the same tools, have one
   earlier exchange in the KV cache and prefill only their new turn.

    python scripts/bench_tools.py                      # the tiny model, built on first use
    python scripts/bench_tools.py --model DIR --calls 30 --turns 10
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import time

import torch

from assistant.bench.ticket import ticket_schema

TICKET = ticket_schema()  # the schema of tests/test_tools_openai_client.py, less the device's ports


class Timed:
    """Wraps ToolConstraint's methods to add up the time spent in them."""

    def __init__(self) -> None:
        from assistant.engine.toolcall import ToolConstraint

        self.cls, self.total_s, self.saved = ToolConstraint, 0.0, {}
        for name in ("mask", "accept", "forced"):
            self.saved[name] = getattr(ToolConstraint, name)
            setattr(ToolConstraint, name, self._wrap(self.saved[name]))

    def _wrap(self, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total_s += time.perf_counter() - t0

        return timed

    def restore(self) -> None:
        for name, fn in self.saved.items():
            setattr(self.cls, name, fn)


def step_all(job) -> tuple[list, float]:
    events, t0 = [], time.perf_counter()
    while not job.done:
        events += job.step()
    return events, time.perf_counter() - t0


def constraint_cost(res, calls: int) -> dict:
    from assistant.engine.api import Conversation, Sampling, TextPart, Tool, ToolCallDone, ToolChoice
    from assistant.engine.stream import StreamJob

    def conv(seed: int, **kw) -> Conversation:
        c = Conversation(sampling=Sampling(greedy=False, seed=seed, **kw))
        c.add_user([TextPart("My router keeps dropping the connection, please open a ticket.")])
        return c

    # Plain decode steps: text answers of the same prompt length class, no tools.
    plain_s = plain_tokens = 0
    for seed in range(3):
        job = StreamJob(res, conv(seed, min_tokens=60, max_tokens=60), audio=False)
        _, total = step_all(job)
        plain_s += total - (job.stats.t_thinker_first_token - job.stats.t_started)  # decode only
        plain_tokens += len(job._tokens) - 1
    # Spoken answers: the per-frame step (talker + code predictor + thinker share + Code2Wav).
    frames = []
    for seed in range(2):
        job = StreamJob(res, conv(seed, min_tokens=20, max_tokens=20, min_frames=40, max_frames=40), audio=True)
        step_all(job)
        frames += job.stats.frame_ms
    timer = Timed()
    tokens = forwards = n_calls = 0
    decode_s = 0.0
    try:
        for seed in range(calls):
            c = conv(seed, max_tokens=600)
            c.tools, c.tool_choice = (
                (Tool("open_ticket", "Open a ticket", TICKET),),
                ToolChoice("function", "open_ticket"),
            )
            job = StreamJob(res, c, audio=False)
            forward_count = [0]
            real = job._thinker_step

            def counted(real=real, forward_count=forward_count):
                forward_count[0] += 1
                return real()

            job._thinker_step = counted
            events, total = step_all(job)
            decode_s += total - (job.stats.t_thinker_first_token - job.stats.t_started)
            tokens += len(job._tokens)
            forwards += forward_count[0] + 1  # the prefill's pick of the first token
            done = [e for e in events if isinstance(e, ToolCallDone)]
            n_calls += len(done)
            for d in done:
                json.loads(d.arguments)
    finally:
        timer.restore()
    plain_ms = plain_s / plain_tokens * 1000
    per_token_ms = timer.total_s / tokens * 1000
    return {
        "calls": n_calls,
        "call_tokens": tokens,
        "call_forwards": forwards,
        "constraint_ms_per_token": round(per_token_ms, 3),
        "constraint_ms_per_forward": round(timer.total_s / forwards * 1000, 3),
        "plain_thinker_step_ms": round(plain_ms, 3),
        "spoken_frame_step_ms": round(statistics.mean(frames), 3),
        "constrained_decode_ms_per_token": round(decode_s / tokens * 1000, 3),
        "ratio_to_thinker_step": round(per_token_ms / plain_ms, 3),
        "ratio_to_frame_step": round(per_token_ms / statistics.mean(frames), 3),
    }


async def first_packets(settings, turns: int) -> dict:
    from assistant.engine.api import AudioChunk, ResponseDone, TextPart, Tool, ToolChoice, Turn
    from assistant.engine.local import LocalEngine

    engine = LocalEngine(settings)
    await engine.start()

    async def answer(conv, audio=True):
        t0 = time.monotonic()
        first = None
        done = None
        async for ev in engine.respond(conv, t_committed=t0, audio=audio):
            if isinstance(ev, AudioChunk) and first is None:
                first = (time.monotonic() - t0) * 1000
            if isinstance(ev, ResponseDone):
                done = ev
        return first, done

    plain, after_call, prefill = [], [], {"plain": [], "after_call": []}
    try:
        for i in range(turns):
            conv = engine.new_conversation()  # the same tools in the prompt, but no call
            conv.tools, conv.tool_choice = (Tool("open_ticket", "Open a ticket", TICKET),), ToolChoice("none")
            conv.add_user([TextPart("My router keeps dropping the connection.")])
            await answer(conv, audio=False)
            conv.add_user([TextPart(f"It is a model {i} router from last year.")])
            ms, done = await answer(conv)
            plain.append(ms)
            prefill["plain"].append(done.stats.prefill_tokens)
            engine.forget(conv)

            conv = engine.new_conversation()
            conv.tools = (Tool("open_ticket", "Open a ticket", TICKET),)
            conv.tool_choice = ToolChoice("function", "open_ticket")
            conv.add_user([TextPart("My router keeps dropping the connection.")])
            short = conv.sampling
            conv.sampling = dataclasses.replace(short, max_tokens=600)  # room for the whole call
            _, done = await answer(conv, audio=False)
            assert all(c.complete for c in done.turn.tool_calls)
            conv.sampling = short
            for k, call in enumerate(done.turn.tool_calls):
                call.call_id = f"call_{k}"
                conv.turns.append(Turn("tool", [TextPart(f'{{"ticket": {4200 + i}}}')], call_id=call.call_id))
            conv.tool_choice = ToolChoice("none")
            ms, done = await answer(conv)
            after_call.append(ms)
            prefill["after_call"].append(done.stats.prefill_tokens)
            engine.forget(conv)
    finally:
        await engine.close()
    p, a = statistics.median(plain), statistics.median(after_call)
    return {
        "turns": turns,
        "plain_first_audio_ms_p50": round(p, 1),
        "after_call_first_audio_ms_p50": round(a, 1),
        "ratio": round(a / p, 3),
        "plain_prefill_tokens_p50": statistics.median(prefill["plain"]),
        "after_call_prefill_tokens_p50": statistics.median(prefill["after_call"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="auto", help="checkpoint directory (default: the tiny model)")
    ap.add_argument("--calls", type=int, default=20, help="required calls for the constraint's cost")
    ap.add_argument("--turns", type=int, default=8, help="turns of each kind for the first-packet comparison")
    args = ap.parse_args()
    from assistant.engine.local import load_resident
    from assistant.engine.toolcall import ll_tokenizer
    from assistant.modelres import resolve_model
    from assistant.settings import Settings

    settings = Settings(
        model=args.model, device="cpu", warmup=True, min_answer_tokens=8, max_answer_tokens=24, max_answer_frames=20
    )
    torch.set_num_threads(max(1, settings.cpu_threads))
    path = resolve_model(settings).path_or_id
    res = load_resident(path, torch.device("cpu"), torch.float32, "sdpa")
    ll_tokenizer(res.processor.tokenizer, res.thinker.config.text_config.vocab_size)
    with torch.inference_mode():
        cost = constraint_cost(res, args.calls)
    print(json.dumps({"constraint": cost}, indent=1), flush=True)
    del res
    packets = asyncio.run(first_packets(Settings(**{**settings.__dict__, "model": path}), args.turns))
    print(json.dumps({"first_packet": packets}, indent=1))


if __name__ == "__main__":
    main()
