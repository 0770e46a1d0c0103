"""Gateway overhead: `hkllm serve --upstream` in front of a second hkllm vs calling that one directly.

    .venv/bin/python benchmarks/serve_gateway.py [--model runs/quickstart/cpt] [--requests 40]

Both paths are measured in one run, alternating direct / gateway / direct / gateway at
concurrency 1 (greedy, max_tokens 32, caches off), and the added p50 end-to-end latency is
printed as a share of the direct p50. Target: ≤ 5%.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from servers import DEFAULT_MODEL, check_model, free_port, hkllm_serve, server, BIN, REPO

from hkllm.serve.bench import bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--requests", type=int, default=40)
    args = ap.parse_args()
    model = check_model(args.model.resolve())
    backend_port, gw_port = free_port(), free_port()
    with hkllm_serve(model, backend_port, "--no-cache") as (backend, _):
        with server([str(BIN / "hkllm"), "serve", "--upstream", backend, "--port", str(gw_port), "--no-auth",
                     "--no-cache", "--state-dir", str(REPO / f"runs/bench_state_{gw_port}")], gw_port) as (gateway, _):
            bench(backend, [1], 4, max_tokens=32)
            bench(gateway, [1], 4, max_tokens=32)
            p50 = {"direct": [], "gateway": []}
            for _ in range(2):
                for name, url in (("direct", backend), ("gateway", gateway)):
                    row = bench(url, [1], args.requests // 2, max_tokens=32)[0]
                    p50[name].append(row["e2e"]["p50_ms"])
    direct, via = statistics.fmean(p50["direct"]), statistics.fmean(p50["gateway"])
    print("| path | E2E p50 ms (two rounds) |\n|---|---|")
    for name in p50:
        print(f"| {name} | {' / '.join(f'{x:.1f}' for x in p50[name])} |")
    print(f"\nadded p50 latency: {via - direct:+.1f} ms = {(via - direct) / direct:+.1%} of direct (target ≤ +5%)")


if __name__ == "__main__":
    main()
