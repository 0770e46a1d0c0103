"""Serving capacity: `hkllm serve` (embedded engine) vs `transformers serve --continuous-batching`.

    .venv/bin/python benchmarks/serve_capacity.py [--model runs/quickstart/cpt] [--requests 64]

Same tiny model, same prompts, same greedy decoding (max_tokens 64), concurrency 1, 8 and 32,
one server at a time so they do not share the 2 cores. hkllm keeps one core for its HTTP layer
(torch threads = cores - 1); the reference runs twice, with its default threads and with
OMP_NUM_THREADS=1, and each level is compared with the better of the two. The cache of consistency mode is
off (--no-cache) so every request reaches the engine. Prints both tables and the ratios
(throughput hkllm/reference, p99 TTFT reference/hkllm: > 1 means hkllm is ahead) and writes
runs/bench_serve_capacity.json. Target: ahead at every level.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from servers import BIN, DEFAULT_MODEL, REPO, check_model, free_port, hkllm_serve, server

from hkllm.serve.bench import bench, render


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,8,32")
    args = ap.parse_args()
    model = check_model(args.model.resolve())
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = {}
    port = free_port()
    with hkllm_serve(model, port, "--no-cache", "--max-batch", "32") as (url, _):
        bench(url, [1], 4, max_tokens=args.max_tokens)                       # warm-up
        rows["hkllm"] = bench(url, levels, args.requests, max_tokens=args.max_tokens)
    for threads in ("default", "1"):
        port = free_port()
        env = {} if threads == "default" else {"OMP_NUM_THREADS": threads}
        with server([str(BIN / "transformers"), "serve", str(model), "--device", "cpu", "--continuous-batching",
                     "--port", str(port), "--host", "127.0.0.1"], port, ready_path="/health", env=env) as (url, _):
            bench(url, [1], 4, model=str(model), max_tokens=args.max_tokens)
            rows[f"transformers (threads {threads})"] = bench(url, levels, args.requests, model=str(model),
                                                              max_tokens=args.max_tokens)
    for name, r in rows.items():
        print(f"\n{name}\n{render(r)}")
    # The reference at each level in whichever thread setting served it better.
    best = [max((rows[k][i] for k in rows if k.startswith("transformers")), key=lambda r: r["output_token_throughput"])
            for i in range(len(levels))]
    print("\nAgainst the better transformers setting at each level:")
    print("| concurrency | throughput hkllm/transformers | p99 TTFT transformers/hkllm |\n|---:|---:|---:|")
    ratios = []
    for ours, ref in zip(rows["hkllm"], best):
        tput = ours["output_token_throughput"] / max(ref["output_token_throughput"], 1e-9)
        ttft = (ref["ttft"]["p99_ms"] or 0) / max(ours["ttft"]["p99_ms"] or 1e-9, 1e-9)
        ratios.append({"concurrency": ours["concurrency"], "throughput_ratio": round(tput, 2),
                       "p99_ttft_ratio": round(ttft, 2)})
        print(f"| {ours['concurrency']} | {tput:.2f} | {ttft:.2f} |")
    out = REPO / "runs/bench_serve_capacity.json"
    out.write_text(json.dumps({"rows": rows, "ratios": ratios}, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
