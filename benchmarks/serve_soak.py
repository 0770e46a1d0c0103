"""Soak: 32 concurrent clients for 60 s against a server with a small queue.

    .venv/bin/python benchmarks/serve_soak.py [--model runs/quickstart/cpt] [--seconds 60]

Pass: zero 5xx and zero broken connections — every request answered (200) or cleanly
refused (429 with Retry-After) — and no memory growth: the server's RSS at the end vs after
the first 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
from pathlib import Path

import httpx2 as httpx
import psutil
from servers import DEFAULT_MODEL, check_model, free_port, hkllm_serve


async def soak(url: str, clients: int, seconds: float, proc: psutil.Process) -> tuple[collections.Counter, list]:
    statuses: collections.Counter = collections.Counter()
    rss = []
    stop = time.monotonic() + seconds

    async def client(i: int, http: httpx.AsyncClient):
        n = 0
        while time.monotonic() < stop:
            try:
                r = await http.post(url + "/chat/completions", json={
                    "messages": [{"role": "user", "content": f"第{i}位用戶第{n}個問題：香港有咩好去處？"}],
                    "max_tokens": 32})
                statuses[r.status_code if r.status_code != 429 or r.headers.get("retry-after") else "429 no Retry-After"] += 1
                if r.status_code == 429:
                    await asyncio.sleep(float(r.headers.get("retry-after", 1)) / 4)
            except httpx.HTTPError as e:
                statuses[type(e).__name__] += 1
            n += 1

    async def sample():
        while time.monotonic() < stop:
            rss.append((round(seconds - (stop - time.monotonic())), proc.memory_info().rss / 2**20))
            await asyncio.sleep(5)

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(sample(), *(client(i, http) for i in range(clients)))
    return statuses, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=32)
    args = ap.parse_args()
    with hkllm_serve(check_model(args.model.resolve()), free_port(), "--no-cache", "--max-batch", "8",
                     "--max-queue", "8") as (url, proc):
        statuses, rss = asyncio.run(soak(url, args.clients, args.seconds, psutil.Process(proc.pid)))
    total = sum(statuses.values())
    bad = {k: v for k, v in statuses.items() if k not in (200, 429)}
    print(f"{total} requests in {args.seconds:g} s from {args.clients} clients: "
          + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str)))
    print(f"5xx / broken: {sum(bad.values())} {bad or ''}")
    after_warmup = next((m for t, m in rss if t >= 10), rss[0][1])
    print("server RSS MiB: " + ", ".join(f"{t}s {m:.0f}" for t, m in rss)
          + f"; growth after warm-up: {rss[-1][1] - after_warmup:+.1f} MiB")


if __name__ == "__main__":
    main()
