"""`hkllm bench serve --base-url URL --concurrency 1,8,32 --requests N`: load-test any
OpenAI-compatible server (hkllm serve, vLLM, SGLang, llama-server, transformers serve).

Per concurrency level it sends N chat requests (streamed; `--no-stream` for whole answers;
`--ignore-eos` for answers of exactly --max-tokens), at most C at a time, and reports the
quantities `vllm bench serve` reports:
- TTFT: send → first content token;  ITL: gaps between streamed content chunks;
- TPOT: (E2E − TTFT) / (output tokens − 1);  E2E: send → last byte;
- request and output-token throughput; goodput: requests/s that met every SLO;
- errors, by HTTP status (a 429 is a clean refusal, counted apart from failures).
p50 and p99 of each, a table on screen and JSON on disk.

The load tester must not be the bottleneck, so it measures itself: the CPU time its client
processes spent during each level, as cores (CPU seconds / wall seconds, in all and for the
busiest process) and as CPU milliseconds per output token, and how late its event loop wakes
(a probe task sleeping 5 ms; p50/p99). A client process above --client-cpu-warn cores (default
0.5), or an event loop late by more than --client-lag-warn-ms (p99, default 10 ms: a client
starved of CPU by the server on the same machine), is flagged client-bound: it delays the chunks
it timestamps, so TTFT/ITL/throughput describe the client, not the server. Remedies:
`--client raw` (a minimal HTTP/1.1 SSE reader on asyncio streams; the official `openai`
client, `--client openai`, the default, builds a pydantic object per chunk and costs several
times more CPU per token) and `--clients N` (N processes share the level's concurrency and
requests; their results are merged: wall time from the first send to the last byte in any).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from hkllm.files import write_atomic

DEFAULT_PROMPTS = [
    "香港有幾多個區？", "點樣申請公共圖書館借書證？", "What does typhoon signal No. 8 mean?",
    "請把以下句子改寫成正式書面語：佢聽日唔使返工。", "Recommend a cha chaan teng dish to try in Mong Kok.",
    "八達通可以喺邊度增值？", "Translate into English: 本署已收到閣下的來信。", "請簡介香港的公眾假期。",
]


@dataclass(frozen=True)
class Shape:
    """What every request of a run asks for. `ignore_eos` (vLLM's, SGLang's and llama-server's
    field) makes every answer exactly max_tokens long, so servers are compared on equal work;
    `stream=False` asks for one JSON answer (TTFT is then the whole answer's time)."""
    max_tokens: int = 64
    stream: bool = True
    ignore_eos: bool = False

    def body(self, model: str, prompt: str) -> dict:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": self.max_tokens,
                "temperature": 0}
        if self.stream:
            body.update(stream=True, stream_options={"include_usage": True})
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body


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


def token_arrived(result: Result, now: float, start: float, last: float | None) -> float:
    """Count a streamed chunk that carries text (TTFT for the first, ITL after); returns `now` as the new `last`."""
    if result.ttft is None:
        result.ttft = now - start
    else:
        result.itl.append(now - last)
    result.output_tokens += 1
    return now


async def one_request(client, model: str, prompt: str, shape: Shape) -> Result:
    import openai

    start = time.perf_counter()
    last = None
    result = Result(ok=False)
    body = shape.body(model, prompt)
    extra = {"ignore_eos": body.pop("ignore_eos")} if "ignore_eos" in body else None
    try:
        response = await client.chat.completions.create(**body, extra_body=extra)
        if not shape.stream:
            result.e2e = result.ttft = time.perf_counter() - start
            result.output_tokens = response.usage.completion_tokens if response.usage else 0
            result.ok, result.status = True, 200
            return result
        usage_tokens = None
        async for chunk in response:
            now = time.perf_counter()
            if chunk.usage is not None:
                usage_tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                last = token_arrived(result, now, start, last)
        result.e2e = time.perf_counter() - start
        if usage_tokens is not None:
            result.output_tokens = usage_tokens
        result.ok, result.status = True, 200
    except openai.APIStatusError as e:
        result.status = e.status_code
    except (openai.APIConnectionError, openai.APITimeoutError):
        result.status = None
    return result


async def _read_http_head(reader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return status, headers
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()


async def _body_chunks(reader, headers: dict[str, str]):
    """The response body as it arrives: chunked, Content-Length or until close."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("the stream was cut short")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readline()
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while data := await reader.read(65536):
            yield data


class RawClient:
    """A minimal streaming chat client: one HTTP/1.1 connection per request (Connection: close), SSE
    lines split by hand and only the `data:` payloads JSON-decoded. A few percent of the openai
    client's CPU per chunk, so a fast server's numbers are the server's."""

    def __init__(self, base_url: str, api_key: str, timeout: float):
        url = urllib.parse.urlsplit(base_url.rstrip("/"))
        if url.scheme not in ("http", "https"):
            raise ValueError(f"--client raw needs an http(s) base URL, not {base_url}")
        self.ssl = url.scheme == "https"
        self.host, self.port = url.hostname, url.port or (443 if self.ssl else 80)
        self.path = url.path + "/chat/completions"
        self.api_key, self.timeout = api_key, timeout

    async def one_request(self, model: str, prompt: str, shape: Shape) -> Result:
        start = time.perf_counter()
        result = Result(ok=False)
        try:
            await asyncio.wait_for(self._stream(model, prompt, shape, start, result), self.timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            result.ok = False  # refused, cut short or malformed: a failure, counted as "None" unless refused
            if result.status == 200:
                result.status = None
        return result

    async def _stream(self, model: str, prompt: str, shape: Shape, start: float, result: Result) -> None:
        body = json.dumps(shape.body(model, prompt)).encode()
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl or None)
        try:
            writer.write((f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                          f"Authorization: Bearer {self.api_key}\r\nContent-Type: application/json\r\n"
                          f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                          ).encode() + body)
            await writer.drain()
            status, headers = await _read_http_head(reader)
            result.status = status
            if status != 200 or not shape.stream:
                whole = b"".join([data async for data in _body_chunks(reader, headers)])
                if status == 200:
                    result.e2e = result.ttft = time.perf_counter() - start
                    result.output_tokens = json.loads(whole)["usage"]["completion_tokens"]
                    result.ok = True
                return
            buffer, last, usage_tokens = b"", None, None
            async for data in _body_chunks(reader, headers):
                now = time.perf_counter()
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        continue
                    chunk = json.loads(payload)
                    if chunk.get("usage"):
                        usage_tokens = chunk["usage"].get("completion_tokens")
                    choices = chunk.get("choices")
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        last = token_arrived(result, now, start, last)
            result.e2e = time.perf_counter() - start
            if usage_tokens is not None:
                result.output_tokens = usage_tokens
            result.ok = True
        finally:
            writer.close()


LAG_TICK = 0.005  # the event-loop lag probe's sleep


async def _probe_lag(lag: list[float], done: asyncio.Event) -> None:
    """How late the event loop wakes a task that sleeps LAG_TICK: a busy or starved client (its own
    work, or a machine with no core free for it) delays every chunk timestamp by about as much."""
    while not done.is_set():
        t = time.perf_counter()
        await asyncio.sleep(LAG_TICK)
        lag.append(max(0.0, time.perf_counter() - t - LAG_TICK))


async def run_level(base_url: str, api_key: str, model: str, prompts: list[str], concurrency: int, requests: int,
                    shape: Shape, timeout: float, client_kind: str = "openai", offset: int = 0,
                    lag: list[float] | None = None) -> tuple[list[Result], float]:
    if client_kind == "raw":
        raw = RawClient(base_url, api_key, timeout)
        send, close = raw.one_request, None
    else:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)

        def send(model, prompt, shape):
            return one_request(client, model, prompt, shape)

        close = client.close
    gate = asyncio.Semaphore(concurrency)

    async def limited(i: int) -> Result:
        async with gate:
            return await send(model, prompts[(offset + i) % len(prompts)], shape)

    done = asyncio.Event()
    probe = asyncio.create_task(_probe_lag(lag if lag is not None else [], done))
    start = time.perf_counter()
    results = await asyncio.gather(*(limited(i) for i in range(requests)))
    wall = time.perf_counter() - start
    done.set()
    await probe
    if close is not None:
        await close()
    return list(results), wall


def _measured_level(*args) -> dict:
    """One client's share of a level, with its own CPU time (all threads of this process) and the
    epoch times of its first send and last byte (comparable across processes)."""
    lag: list[float] = []
    cpu0, t0 = time.process_time(), time.time()
    results, _ = asyncio.run(run_level(*args, lag=lag))
    return {"results": results, "start": t0, "end": time.time(), "cpu_s": time.process_time() - cpu0, "lag": lag}


def _worker(args: tuple, barrier, queue) -> None:
    if args[8] == "openai":
        import openai  # noqa: F401  (imported before the barrier: startup is not measured)
    try:
        barrier.wait(timeout=120)
        queue.put(_measured_level(*args))
    except BaseException as e:  # the parent must hear of a crash, not wait forever
        queue.put({"error": f"{type(e).__name__}: {e}"})


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_clients(base_url: str, api_key: str, model: str, prompts: list[str], concurrency: int, requests: int,
                shape: Shape, timeout: float, client_kind: str, clients: int) -> dict:
    """The level run by `clients` processes (in this one when 1), each with its share of the
    concurrency and requests; results merged, CPU per process kept."""
    if clients <= 1:
        parts = [_measured_level(base_url, api_key, model, prompts, concurrency, requests, shape, timeout,
                                 client_kind, 0)]
    else:
        clients = min(clients, concurrency, requests)
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads and locks
        barrier, queue = ctx.Barrier(clients), ctx.Queue()
        procs, offset = [], 0
        for c, n in zip(_split(concurrency, clients), _split(requests, clients)):
            args = (base_url, api_key, model, prompts, c, n, shape, timeout, client_kind, offset)
            procs.append(ctx.Process(target=_worker, args=(args, barrier, queue), daemon=True))
            offset += n
        for proc in procs:
            proc.start()
        try:
            parts = [queue.get(timeout=timeout * (requests + 1) + 120) for _ in procs]
        finally:
            for proc in procs:
                proc.join(5)
                if proc.is_alive():
                    proc.terminate()
        failed = [p["error"] for p in parts if "error" in p]
        if failed:
            raise RuntimeError(f"a client process failed: {failed[0]}")
    start, end = min(p["start"] for p in parts), max(p["end"] for p in parts)
    return {"results": [r for p in parts for r in p["results"]], "wall": end - start,
            "cpu": [(p["cpu_s"], p["end"] - p["start"]) for p in parts], "lag": [x for p in parts for x in p["lag"]]}


def client_report(cpu: list[tuple[float, float]], wall: float, output_tokens: int, kind: str,
                  warn_cores: float, lag: list[float] | None = None, warn_lag_ms: float = 10.0) -> dict:
    """The load tester's own CPU use (total and busiest process, as cores and per output token) and
    its event loops' lag; client-bound when a process is above warn_cores or the lag's p99 above
    warn_lag_ms (a starved client: its CPU share can be low while it waits for a core)."""
    total = sum(c for c, _ in cpu)
    busiest = max((c / w if w > 0 else 0.0) for c, w in cpu)
    lag_p99 = _ms(percentile(lag or [], 0.99))
    reasons = []
    if busiest > warn_cores:
        reasons.append(f"a client process used {busiest:.2f} cores (> {warn_cores})")
    if lag_p99 is not None and lag_p99 > warn_lag_ms:
        reasons.append(f"its event loop ran {lag_p99} ms late (p99 > {warn_lag_ms} ms)")
    warning = None
    if reasons:
        warning = (f"client-bound: {' and '.join(reasons)}; these numbers describe the load tester, not the server — "
                   "use --client raw, more --clients, or a machine with a core free for the client")
    return {"kind": kind, "processes": len(cpu), "cpu_s": round(total, 4),
            "cpu_cores": round(total / wall, 3) if wall > 0 else None,
            "max_process_cores": round(busiest, 3),
            "cpu_ms_per_output_token": round(total * 1000 / output_tokens, 4) if output_tokens else None,
            "loop_lag_ms": {"p50": _ms(percentile(lag or [], 0.5)), "p99": lag_p99},
            "warn_cores": warn_cores, "warn_lag_ms": warn_lag_ms, "client_bound": bool(reasons), "warning": warning}


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
    head = ("| conc | ok/total | req/s | tok/s | goodput | TTFT p50/p99 ms | TPOT p50/p99 ms | ITL p50/p99 ms "
            "| E2E p50/p99 ms | client cores (max/proc) | client CPU ms/tok | client lag p99 ms | errors |")
    lines = [head, "|" + "---:|" * 12 + "---|"]
    f = lambda d: f"{d['p50_ms']}/{d['p99_ms']}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['completed']}/{r['requests']} | {r['request_throughput']} | "
                     f"{r['output_token_throughput']} | {r['goodput']} | {f(r['ttft'])} | {f(r['tpot'])} | {f(r['itl'])} | "
                     f"{f(r['e2e'])} | {_cores(r)} | {r.get('client', {}).get('cpu_ms_per_output_token')} | "
                     f"{r.get('client', {}).get('loop_lag_ms', {}).get('p99')} | {r['errors'] or '—'} |")
    warnings = [f"warning: concurrency {r['concurrency']}: {r['client']['warning']}" for r in rows
                if r.get("client", {}).get("warning")]
    return "\n".join(lines + warnings)


def _cores(row: dict) -> str:
    c = row.get("client")
    return "—" if not c else f"{c['cpu_cores']} ({c['max_process_cores']}) ×{c['processes']} {c['kind']}"


def list_models(base_url: str, api_key: str, timeout: float = 30) -> list[str]:
    request = urllib.request.Request(base_url.rstrip("/") + "/models", headers={"Authorization": f"Bearer {api_key}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return [m["id"] for m in json.load(response)["data"]]


def bench(base_url: str, concurrency: list[int], requests: int, model: str | None = None, api_key: str = "none",
          max_tokens: int = 64, prompts: list[str] | None = None, slo_ttft_ms: float = 1000, slo_tpot_ms: float = 100,
          timeout: float = 120, client: str = "openai", clients: int = 1, client_cpu_warn: float = 0.5,
          client_lag_warn_ms: float = 10.0, stream: bool = True, ignore_eos: bool = False) -> list[dict]:
    if client not in ("openai", "raw"):
        raise ValueError(f"client must be 'openai' or 'raw', not {client!r}")
    if model is None:
        model = list_models(base_url, api_key)[0]
    shape = Shape(max_tokens, stream, ignore_eos)
    rows = []
    for c in concurrency:
        level = run_clients(base_url, api_key, model, prompts or DEFAULT_PROMPTS, c, requests, shape, timeout,
                            client, clients)
        row = {"model": model, "stream": stream, **summarize(level["results"], level["wall"], c, slo_ttft_ms / 1000, slo_tpot_ms / 1000)}
        tokens = sum(r.output_tokens for r in level["results"] if r.ok)
        row["client"] = client_report(level["cpu"], level["wall"], tokens, client, client_cpu_warn, level["lag"],
                                      client_lag_warn_ms)
        rows.append(row)
    return rows


def _run(args) -> int:
    prompts = None
    if args.prompts:
        prompts = [json.loads(line)["prompt"] if line.lstrip().startswith("{") else line.strip()
                   for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = bench(args.base_url, [int(c) for c in args.concurrency.split(",")], args.requests, args.model, args.api_key,
                 args.max_tokens, prompts, args.slo_ttft_ms, args.slo_tpot_ms, client=args.client, clients=args.clients,
                 client_cpu_warn=args.client_cpu_warn, client_lag_warn_ms=args.client_lag_warn_ms,
                 stream=not args.no_stream, ignore_eos=args.ignore_eos)
    print(render(rows))
    out = Path(args.out)
    write_atomic(out, json.dumps(rows, ensure_ascii=False, indent=1))
    print(f"\nresults written to {out}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: `bench serve` load-tests an OpenAI-compatible server",
                              description="Benchmarks.")
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="{serve}")
    s = sub.add_parser("serve", help="TTFT, TPOT, ITL, E2E (p50/p99), throughput, goodput and the client's own CPU "
                       "per concurrency level",
                       description=__doc__.split("\n\n", 1)[1],
                       epilog="example: hkllm bench serve --base-url http://127.0.0.1:8000/v1 --concurrency 1,8,32 --requests 64")
    s.add_argument("--base-url", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    s.add_argument("--concurrency", default="1,8,32", help="comma-separated levels (default 1,8,32)")
    s.add_argument("--requests", type=int, default=32, help="requests per level (default 32)")
    s.add_argument("--model", default=None, help="model name (default: the first from /v1/models)")
    s.add_argument("--api-key", default="none")
    s.add_argument("--max-tokens", type=int, default=64)
    s.add_argument("--ignore-eos", action="store_true",
                   help="every answer exactly --max-tokens long (the server must know vLLM's ignore_eos field): "
                        "servers compared on equal work")
    s.add_argument("--no-stream", action="store_true",
                   help="one JSON answer per request instead of a token stream (TTFT = the answer's time)")
    s.add_argument("--prompts", default=None, help="file of prompts: one per line, or JSONL with a 'prompt' field")
    s.add_argument("--slo-ttft-ms", type=float, default=1000, help="goodput SLO on time to first token (default 1000)")
    s.add_argument("--slo-tpot-ms", type=float, default=100, help="goodput SLO on time per output token (default 100)")
    s.add_argument("--client", default="openai", choices=("openai", "raw"),
                   help="openai: the official client (default); raw: a minimal HTTP/1.1 SSE reader, far less CPU per chunk")
    s.add_argument("--clients", type=int, default=1,
                   help="client processes sharing each level's concurrency and requests (default 1: this process)")
    s.add_argument("--client-cpu-warn", type=float, default=0.5,
                   help="warn that the client is the bottleneck above this many cores in one client process (default 0.5)")
    s.add_argument("--client-lag-warn-ms", type=float, default=10.0,
                   help="warn that the client is the bottleneck when its event loop runs this late (p99, default 10 ms)")
    s.add_argument("--out", default="bench_serve.json", help="JSON results (default bench_serve.json)")
    s.set_defaults(func=_run)
