"""Serving throughput with the watermark on and off: the same `hkllm serve`, the same load.

    .venv/bin/python benchmarks/serve_watermark.py [--model runs/quickstart/dpo] [--rounds 3]

Two servers on the same model (`--watermark on` and `--watermark off`, cache off so every
request reaches the engine) run one at a time, alternating for `--rounds` rounds so slow drifts
of this noisy machine hit both alike; each round runs `hkllm bench serve`'s load (streamed,
64-token answers, end-of-turn allowed) at each concurrency. Output tokens per second of each
setting are summed over the rounds; the ratio on / off is the figure (target ≥ 0.95). Greedy
requests (consistency mode, the default) get the green-list scheme: one keyed PRF call over the
vocabulary per token, which is the overhead measured here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from servers import DEFAULT_MODEL, REPO, check_model, free_port, hkllm_serve

from hkllm.serve.bench import bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL.parent / "dpo")
    ap.add_argument("--concurrency", default="1,8", help="comma-separated levels (default 1,8)")
    ap.add_argument("--requests", type=int, default=32, help="requests per level per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "runs/bench/serve_watermark.json")
    args = ap.parse_args()
    model = check_model(args.model)
    levels = [int(c) for c in args.concurrency.split(",")]
    totals = {(w, c): [0, 0.0] for w in ("on", "off") for c in levels}     # tokens, seconds
    for r in range(args.rounds):
        for setting in (("on", "off") if r % 2 == 0 else ("off", "on")):
            port = free_port()
            with hkllm_serve(model, port, "--no-cache", "--watermark", setting) as (base_url, _):
                for row in bench(base_url, levels, args.requests, max_tokens=64, client="raw"):
                    t = totals[(setting, row["concurrency"])]
                    t[0] += row["output_token_throughput"] * row["wall_s"]
                    t[1] += row["wall_s"]
    rows = []
    print(f"model {model}; {args.rounds} rounds × {args.requests} requests per level, 64 tokens, streamed")
    print("| concurrency | off tok/s | on tok/s | on / off |\n|---:|---:|---:|---:|")
    for c in levels:
        off, on = (totals[(w, c)][0] / totals[(w, c)][1] for w in ("off", "on"))
        rows.append({"concurrency": c, "off_tok_s": round(off, 1), "on_tok_s": round(on, 1), "ratio": round(on / off, 3)})
        print(f"| {c} | {off:.0f} | {on:.0f} | {on / off:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(model), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
