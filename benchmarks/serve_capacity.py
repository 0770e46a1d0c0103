"""Serving capacity on a CPU: `hkllm serve` against llama.cpp's `llama-server` and `transformers serve`.

    .venv/bin/python benchmarks/serve_capacity.py --llama-server PATH/TO/llama-server
    .venv/bin/python benchmarks/serve_capacity.py --model runs/smollm2/import --llama-server PATH --requests 16

One server at a time on the same model (llama-server reads it as exported by
`hkllm export gguf --type f32`: greedy tokens equal to transformers'), the same prompts, greedy
answers of exactly --max-tokens tokens (`ignore_eos`), concurrency 1, 8 and 32, streamed and
not. The load tester is `hkllm bench serve`'s raw-HTTP client, and it reports its own CPU.

- hkllm: the embedded engine as `hkllm serve` starts it (watermark on, consistency mode, cache
  off so every request reaches the engine; decode step compiled), and with `--eager` (not
  compiled), `--decoder transformers` (the engine's forward pass before issue 14) and
  `--watermark off` (what the watermark costs);
- llama-server: `--threads` 1 and 2, each level compared with the better one (its best setting);
- transformers serve --continuous-batching (default threads and OMP_NUM_THREADS=1, the better
  at each level; it refuses `ignore_eos`, so its answers may end early: tokens/s still counts
  the tokens it made); `--no-transformers` skips it (slow).

Per level: output tokens/s, TTFT and TPOT p50/p99, and CPU milliseconds per output token of the
server (its process tree, from /proc) and of the client. Then the ratios hkllm / llama-server.
Targets (issue 14): throughput ≥ 0.7× at c=1 and ≥ 1.0× at 8 and 32; server CPU per output
token ≤ 1.5× llama-server's at every level. Written to runs/bench_serve_capacity[-NAME].json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from servers import BIN, DEFAULT_MODEL, REPO, check_model, free_port, hkllm_serve, llama_server, server

from hkllm.serve.bench import bench

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads, and of children it waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICKS


def measure(url: str, pid: int, levels: list[int], args, model: str | None = None, ignore_eos: bool = True) -> list[dict]:
    """Each level streamed and not, with the server's CPU time around it."""
    rows = []
    bench(url, [1], 4, model=model, max_tokens=args.max_tokens, client="raw", ignore_eos=ignore_eos)    # warm-up
    for stream in (True, False):
        for c in levels:
            before = cpu_seconds(pid)
            row = bench(url, [c], args.requests, model=model, max_tokens=args.max_tokens, client="raw",
                        stream=stream, ignore_eos=ignore_eos)[0]
            tokens = row["output_token_throughput"] * row["wall_s"]
            row["server_cpu_ms_per_token"] = round((cpu_seconds(pid) - before) * 1000 / max(tokens, 1), 3)
            row["server_cores"] = round((cpu_seconds(pid) - before) / row["wall_s"], 2)
            rows.append(row)
    return rows


def table(name: str, rows: list[dict]) -> str:
    lines = [f"\n{name}", "| conc | stream | tok/s | TTFT p50/p99 ms | TPOT p50/p99 ms | server CPU ms/tok (cores) "
             "| client CPU ms/tok (cores) | errors |", "|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        c = r["client"]
        lines.append(f"| {r['concurrency']} | {'yes' if r['stream'] else 'no'} | {r['output_token_throughput']} | "
                     f"{r['ttft']['p50_ms']}/{r['ttft']['p99_ms']} | {r['tpot']['p50_ms']}/{r['tpot']['p99_ms']} | "
                     f"{r['server_cpu_ms_per_token']} ({r['server_cores']}) | {c['cpu_ms_per_output_token']} "
                     f"({c['cpu_cores']}) | {r['errors'] or '—'} |"
                     + (" client-bound" if c["client_bound"] else ""))
    return "\n".join(lines)


def best_of(rows: dict, prefix: str) -> list[dict] | None:
    """Per level, the setting of one server (e.g. llama-server's thread counts) that served it best."""
    names = [k for k in rows if k.startswith(prefix)]
    if not names:
        return None
    return [max((rows[k][i] for k in names), key=lambda r: r["output_token_throughput"])
            for i in range(len(rows[names[0]]))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--llama-server", default=shutil.which("llama-server"),
                    help="llama.cpp's llama-server binary (default: on PATH); README, 'Load testing', says how to build it")
    ap.add_argument("--no-transformers", action="store_true", help="skip transformers serve")
    ap.add_argument("--only", default=None,
                    help="comma-separated server names as the tables title them, e.g. 'hkllm,llama-server (threads 2)'")
    args = ap.parse_args()
    model = check_model(args.model.resolve())
    levels = [int(c) for c in args.concurrency.split(",")]
    wanted = set(args.only.split(",")) if args.only else None
    rows: dict[str, list[dict]] = {}

    def run(name: str, start, model_name: str | None = None, ignore_eos: bool = True):
        if wanted and name not in wanted:
            return
        print(f"-- {name}", flush=True)
        with start as (url, proc):
            rows[name] = measure(url, proc.pid, levels, args, model_name, ignore_eos)
        print(table(name, rows[name]), flush=True)

    max_batch = str(max(levels))
    run("hkllm", hkllm_serve(model, free_port(), "--no-cache", "--max-batch", max_batch))
    run("hkllm --eager", hkllm_serve(model, free_port(), "--no-cache", "--max-batch", max_batch, "--eager"))
    run("hkllm --decoder transformers", hkllm_serve(model, free_port(), "--no-cache", "--max-batch", max_batch,
                                                    "--decoder", "transformers"))
    run("hkllm --watermark off", hkllm_serve(model, free_port(), "--no-cache", "--max-batch", max_batch,
                                             "--watermark", "off"))
    if args.llama_server:
        for threads in (1, 2):
            run(f"llama-server (threads {threads})", llama_server(args.llama_server, model, free_port(), threads,
                                                                  max(levels)))
    else:
        print("no llama-server binary (--llama-server PATH): llama.cpp's columns are left out", file=sys.stderr)
    if not args.no_transformers:
        for threads in ("default", "1"):
            port = free_port()
            env = {} if threads == "default" else {"OMP_NUM_THREADS": threads}
            run(f"transformers (threads {threads})",
                server([str(BIN / "transformers"), "serve", str(model), "--device", "cpu", "--continuous-batching",
                        "--port", str(port), "--host", "127.0.0.1"], port, ready_path="/health", env=env),
                model_name=str(model), ignore_eos=False)     # it refuses the field (422): answers end at EOS or max_tokens

    ratios = []
    for ref_name in ("llama-server", "transformers"):
        ref = best_of(rows, ref_name)
        if ref is None or "hkllm" not in rows or not all(r["completed"] for r in ref):
            continue
        print(f"\nhkllm against the better {ref_name} setting at each level (> 1: hkllm ahead in throughput; "
              "CPU ratio < 1: hkllm spends less per token)")
        print("| conc | stream | throughput hkllm/ref | server CPU ms/tok hkllm/ref | TPOT p50 hkllm · ref ms |\n"
              "|---:|---|---:|---:|---|")
        for ours, theirs in zip(rows["hkllm"], ref):
            r = {"reference": ref_name, "concurrency": ours["concurrency"], "stream": ours["stream"],
                 "throughput_ratio": round(ours["output_token_throughput"] / max(theirs["output_token_throughput"], 1e-9), 2),
                 "cpu_per_token_ratio": round(ours["server_cpu_ms_per_token"] / max(theirs["server_cpu_ms_per_token"], 1e-9), 2)}
            ratios.append(r)
            print(f"| {r['concurrency']} | {'yes' if r['stream'] else 'no'} | {r['throughput_ratio']} | "
                  f"{r['cpu_per_token_ratio']} | {ours['tpot']['p50_ms']} · {theirs['tpot']['p50_ms']} |")
    suffix = "" if model == DEFAULT_MODEL.resolve() else f"-{model.parent.name}-{model.name}"
    out = REPO / f"runs/bench_serve_capacity{suffix}.json"
    out.write_text(json.dumps({"model": str(model), "rows": rows, "ratios": ratios}, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
