"""`hkllm bench serve --base-url URL --concurrency 1,8,32 --requests N`: load-test any
OpenAI-compatible server (hkllm serve, vLLM, SGLang, llama-server, transformers serve).

Per concurrency level it sends N streaming chat requests, at most C at a time, with the
official `openai` client, and reports the quantities `vllm bench serve` reports:
- TTFT: send → first content token;  ITL: gaps between streamed content chunks;
- TPOT: (E2E − TTFT) / (output tokens − 1);  E2E: send → last byte;
- request and output-token throughput; goodput: requests/s that met every SLO;
- errors, by HTTP status (a 429 is a clean refusal, counted apart from failures).
p50 and p99 of each, a table on screen and JSON on disk.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from hkllm.files import write_atomic

DEFAULT_PROMPTS = [
    "香港有幾多個區？", "點樣申請公共圖書館借書證？", "What does typhoon signal No. 8 mean?",
    "請把以下句子改寫成正式書面語：佢聽日唔使返工。", "Recommend a cha chaan teng dish to try in Mong Kok.",
    "八達通可以喺邊度增值？", "Translate into English: 本署已收到閣下的來信。", "請簡介香港的公眾假期。",
]


@dataclass
class Result:
    ok: bool
    status: int | None = None
    ttft: float | None = None
    e2e: float | None = None
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def one_request(client, model: str, prompt: str, max_tokens: int) -> Result:
    import openai

    start = time.perf_counter()
    last = None
    result = Result(ok=False)
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True})
        usage_tokens = None
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                usage_tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                if result.ttft is None:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
                result.output_tokens += 1
        result.e2e = time.perf_counter() - start
        if usage_tokens is not None:
            result.output_tokens = usage_tokens
        result.ok, result.status = True, 200
    except openai.APIStatusError as e:
        result.status = e.status_code
    except (openai.APIConnectionError, openai.APITimeoutError):
        result.status = None
    return result


async def run_level(base_url: str, api_key: str, model: str, prompts: list[str], concurrency: int, requests: int,
                    max_tokens: int, timeout: float) -> tuple[list[Result], float]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def limited(i: int) -> Result:
        async with gate:
            return await one_request(client, model, prompts[i % len(prompts)], max_tokens)

    start = time.perf_counter()
    results = await asyncio.gather(*(limited(i) for i in range(requests)))
    wall = time.perf_counter() - start
    await client.close()
    return list(results), wall


def summarize(results: list[Result], wall: float, concurrency: int, slo_ttft: float, slo_tpot: float) -> dict:
    ok = [r for r in results if r.ok]
    stats = {}
    for name, values in (("ttft", [r.ttft for r in ok if r.ttft is not None]),
                         ("tpot", [r.tpot for r in ok if r.tpot is not None]),
                         ("itl", [x for r in ok for x in r.itl]),
                         ("e2e", [r.e2e for r in ok if r.e2e is not None])):
        stats[name] = {"p50_ms": _ms(percentile(values, 0.5)), "p99_ms": _ms(percentile(values, 0.99)),
                       "mean_ms": _ms(statistics.fmean(values) if values else None)}
    good = [r for r in ok if r.ttft is not None and r.ttft <= slo_ttft and (r.tpot is None or r.tpot <= slo_tpot)]
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            errors[str(r.status)] = errors.get(str(r.status), 0) + 1
    return {
        "concurrency": concurrency, "requests": len(results), "completed": len(ok), "errors": errors,
        "wall_s": round(wall, 3), "request_throughput": round(len(ok) / wall, 3),
        "output_token_throughput": round(sum(r.output_tokens for r in ok) / wall, 1),
        "goodput": round(len(good) / wall, 3), "slo": {"ttft_ms": slo_ttft * 1000, "tpot_ms": slo_tpot * 1000},
        **stats,
    }


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


def render(rows: list[dict]) -> str:
    head = "| conc | ok/total | req/s | tok/s | goodput | TTFT p50/p99 ms | TPOT p50/p99 ms | ITL p50/p99 ms | E2E p50/p99 ms | errors |"
    lines = [head, "|" + "---:|" * 9 + "---|"]
    f = lambda d: f"{d['p50_ms']}/{d['p99_ms']}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['completed']}/{r['requests']} | {r['request_throughput']} | "
                     f"{r['output_token_throughput']} | {r['goodput']} | {f(r['ttft'])} | {f(r['tpot'])} | {f(r['itl'])} | "
                     f"{f(r['e2e'])} | {r['errors'] or '—'} |")
    return "\n".join(lines)


def bench(base_url: str, concurrency: list[int], requests: int, model: str | None = None, api_key: str = "none",
          max_tokens: int = 64, prompts: list[str] | None = None, slo_ttft_ms: float = 1000, slo_tpot_ms: float = 100,
          timeout: float = 120) -> list[dict]:
    from openai import OpenAI

    if model is None:
        model = OpenAI(base_url=base_url, api_key=api_key, max_retries=0).models.list().data[0].id
    rows = []
    for c in concurrency:
        results, wall = asyncio.run(run_level(base_url, api_key, model, prompts or DEFAULT_PROMPTS, c, requests,
                                              max_tokens, timeout))
        rows.append({"model": model, **summarize(results, wall, c, slo_ttft_ms / 1000, slo_tpot_ms / 1000)})
    return rows


def _run(args) -> int:
    prompts = None
    if args.prompts:
        prompts = [json.loads(line)["prompt"] if line.lstrip().startswith("{") else line.strip()
                   for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = bench(args.base_url, [int(c) for c in args.concurrency.split(",")], args.requests, args.model, args.api_key,
                 args.max_tokens, prompts, args.slo_ttft_ms, args.slo_tpot_ms)
    print(render(rows))
    out = Path(args.out)
    write_atomic(out, json.dumps(rows, ensure_ascii=False, indent=1))
    print(f"\nresults written to {out}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: `bench serve` load-tests an OpenAI-compatible server",
                              description="Benchmarks.")
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="{serve}")
    s = sub.add_parser("serve", help="TTFT, TPOT, ITL, E2E (p50/p99), throughput and goodput per concurrency level",
                       description=__doc__.split("\n\n", 1)[1],
                       epilog="example: hkllm bench serve --base-url http://127.0.0.1:8000/v1 --concurrency 1,8,32 --requests 64")
    s.add_argument("--base-url", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    s.add_argument("--concurrency", default="1,8,32", help="comma-separated levels (default 1,8,32)")
    s.add_argument("--requests", type=int, default=32, help="requests per level (default 32)")
    s.add_argument("--model", default=None, help="model name (default: the first from /v1/models)")
    s.add_argument("--api-key", default="none")
    s.add_argument("--max-tokens", type=int, default=64)
    s.add_argument("--prompts", default=None, help="file of prompts: one per line, or JSONL with a 'prompt' field")
    s.add_argument("--slo-ttft-ms", type=float, default=1000, help="goodput SLO on time to first token (default 1000)")
    s.add_argument("--slo-tpot-ms", type=float, default=100, help="goodput SLO on time per output token (default 100)")
    s.add_argument("--out", default="bench_serve.json", help="JSON results (default bench_serve.json)")
    s.set_defaults(func=_run)
