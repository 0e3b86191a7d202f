"""The latency benchmark's parts (scripts/bench_latency.py is the command line).

- metrics: pure functions over per-turn records (percentiles, underruns, onsets, summaries)
- engine_only: the engine in-process against stock `generate()`
- users: simulated websocket users driving a running server
- report: JSON, Markdown, PNG plots and the console table
"""
