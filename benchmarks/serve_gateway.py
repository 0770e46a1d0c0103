"""Gateway overhead: `hkllm serve --upstream` in front of a second hkllm (or llama.cpp's
llama-server) vs calling that one directly, and vs a bare Python relay (benchmarks/relay.py: the
floor of any Python hop, which parses nothing and keeps no features).

    .venv/bin/python benchmarks/serve_gateway.py [--model runs/quickstart/cpt] [--requests 60]
    .venv/bin/python benchmarks/serve_gateway.py --llama-server PATH/TO/llama-server

Requests rotate direct / relay / gateway, one at a time (streamed, greedy, 32 tokens, caches
off), so slow drifts of this noisy machine hit every path alike. Prints the p50 end-to-end
latency of each path, the gateway's added p50 as a share of the direct p50 (target ≤ 5%), and how
much of it any Python hop costs (the relay). On the quickstart model llama-server answers 32
tokens in ~20 ms, so a hop's fixed few ms show; on a real model (`--model runs/smollm2/import`,
~1.5 s per answer on one core) they do not.

The engine behind both paths gets one core (`--threads 1`), the gateway and the client the
other: a gateway fronts a GPU engine, which does not compute on the host's cores, so what is
measured is the gateway's own cost rather than three processes fighting over two cores.
`--engine-threads 2` shows the contended case.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from openai import OpenAI
from servers import BIN, DEFAULT_MODEL, REPO, check_model, free_port, hkllm_serve, llama_server, server

PROMPTS = ["香港有幾多個區？", "點樣申請公共圖書館借書證？", "What does typhoon signal No. 8 mean?", "八達通可以喺邊度增值？"]


def one(client: OpenAI, model: str, prompt: str) -> float:
    start = time.perf_counter()
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=32,
                                            stream=True)
    for _ in stream:
        pass
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--engine-threads", type=int, default=1)
    ap.add_argument("--llama-server", default=None,
                    help="put llama.cpp's llama-server (this binary, on the model's GGUF) behind the gateway instead")
    args = ap.parse_args()
    model = check_model(args.model.resolve())
    backend_port, gw_port, relay_port = free_port(), free_port(), free_port()
    backend_server = (llama_server(args.llama_server, model, backend_port, args.engine_threads, 2) if args.llama_server
                      else hkllm_serve(model, backend_port, "--no-cache", "--threads", str(args.engine_threads)))
    print(f"behind the gateway: {'llama-server' if args.llama_server else 'hkllm serve'}")
    with backend_server as (backend, _):
        with server([str(BIN / "hkllm"), "serve", "--upstream", backend, "--port", str(gw_port), "--no-auth",
                     "--no-cache", "--state-dir", str(REPO / f"runs/bench_state_{gw_port}")], gw_port) as (gateway, _):
            with server([sys.executable, str(REPO / "benchmarks/relay.py"), backend.removesuffix("/v1"), str(relay_port)],
                        relay_port) as (relay, _):
                urls = {"direct": backend, "bare relay": relay, "gateway": gateway}
                paths = {k: OpenAI(base_url=u, api_key="none") for k, u in urls.items()}
                name = paths["direct"].models.list().data[0].id
                e2e = {k: [] for k in paths}
                for i in range(args.requests + 4):
                    order = list(paths)[i % 3:] + list(paths)[:i % 3]
                    for path in order:
                        t = one(paths[path], name, PROMPTS[i % len(PROMPTS)])
                        if i >= 4:                                  # the first rounds warm every path up
                            e2e[path].append(t)
    p50 = {k: statistics.median(v) for k, v in e2e.items()}
    direct = p50["direct"]
    print("| path | requests | E2E p50 ms | added |\n|---|---:|---:|---:|")
    for k, v in p50.items():
        print(f"| {k} | {len(e2e[k])} | {v * 1000:.1f} | {(v - direct) * 1000:+.1f} ms ({(v - direct) / direct:+.1%}) |")
    via, floor = p50["gateway"], p50["bare relay"]
    print(f"\nadded p50 latency: {(via - direct) * 1000:+.1f} ms = {(via - direct) / direct:+.1%} of direct (target ≤ +5%); "
          f"a bare Python relay adds {(floor - direct) * 1000:+.1f} ms, the gateway's features {(via - floor) * 1000:+.1f} ms")


if __name__ == "__main__":
    main()
