"""Serving throughput with the watermark on and off: the embedded engine, the same load.

    .venv/bin/python benchmarks/serve_watermark.py [--model runs/quickstart/dpo] [--rounds 3]

The engine `hkllm serve` runs (LocalEngine: continuous batching, per-row logits processors) in
this process, given `--requests` chat requests at each concurrency, greedy as consistency mode
serves them. Every request, marked or not, carries a processor that bans the end-of-turn tokens,
so that every answer is exactly `--tokens` long: the watermark changes the answers, and with them
their lengths, which would otherwise move tokens per second more than the watermark's cost does
(the gateway cannot do this for a client: it does not implement `ignore_eos`). Marked requests
add the watermark processor after it, as the gateway does (greedy → the green list). Settings
alternate for `--rounds` rounds so slow drifts of this noisy machine hit both alike. The figure:
output tokens per second on / off at each concurrency (target ≥ 0.95), and the processor's share
of a decoding step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["香港有幾多個區？", "點樣申請公共圖書館借書證？", "What does typhoon signal No. 8 mean?", "八達通可以喺邊度增值？",
           "請介紹香港的公共交通。", "How do I renew my Hong Kong identity card?"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "runs/quickstart/dpo")
    ap.add_argument("--concurrency", default="1,8", help="comma-separated levels (default 1,8)")
    ap.add_argument("--requests", type=int, default=24, help="requests per level per round")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "runs/bench/serve_watermark.json")
    args = ap.parse_args()
    from hkllm.safety.watermark import WatermarkConfig, WatermarkKey, watermark_processor
    from hkllm.serve.engine import LocalEngine, SamplingParams

    engine = LocalEngine(args.model, max_batch=max(8, *map(int, args.concurrency.split(","))))
    eot = sorted(engine.eos_ids)          # the engine's end-of-turn ids

    def no_end(ids, logits):
        logits[eot] = float("-inf")
        return logits

    key, config = WatermarkKey(20261201), WatermarkConfig()

    async def level(concurrency: int, marked: bool) -> tuple[int, float]:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> int:
            procs = (no_end, watermark_processor(config, key, 0.0)) if marked else (no_end,)
            params = SamplingParams(max_tokens=args.tokens, logits_processors=procs)
            async with gate:
                n = 0
                async for ev in engine.generate(engine.encode_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]),
                                                params):
                    n = ev.completion_tokens or n
                return n

        start = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(i) for i in range(args.requests))))
        return tokens, time.perf_counter() - start

    levels = [int(c) for c in args.concurrency.split(",")]
    totals = {(m, c): [0, 0.0] for m in (False, True) for c in levels}
    for r in range(args.rounds):
        for marked in ((False, True) if r % 2 == 0 else (True, False)):
            for c in levels:
                tokens, seconds = asyncio.run(level(c, marked))
                totals[(marked, c)][0] += tokens
                totals[(marked, c)][1] += seconds
    print(f"model {args.model}; {args.rounds} rounds × {args.requests} requests per level, {args.tokens} tokens each "
          "(end of turn banned), greedy; watermark = green list (δ 2, γ 0.25, h 2)\n")
    print("| concurrency | off tok/s | on tok/s | on / off | ms per token off · on |\n|---:|---:|---:|---:|---|")
    rows = []
    for c in levels:
        (t_off, s_off), (t_on, s_on) = totals[(False, c)], totals[(True, c)]
        off, on = t_off / s_off, t_on / s_on
        rows.append({"concurrency": c, "off_tok_s": round(off, 1), "on_tok_s": round(on, 1), "ratio": round(on / off, 3)})
        print(f"| {c} | {off:.0f} | {on:.0f} | {on / off:.3f} | {1000 / off:.2f} · {1000 / on:.2f} |")
    print("\nTarget on / off ≥ 0.95: " + ", ".join(f"c={r['concurrency']} {'PASS' if r['ratio'] >= 0.95 else 'FAIL'}"
                                               for r in rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(args.model), "tokens": args.tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
