"""`hkllm bench serve` against a stub OpenAI-compatible server with known timings, with both clients
(the official openai one and the raw SSE reader), and against a fast paced server in its own
process measured by one and by two client processes (the load tester's own CPU report)."""

import asyncio
import json
import socket
import threading
import time

import pytest

from hkllm.cli import main
from hkllm.serve.bench import _split, bench, client_report, percentile, render

FIRST_DELAY, GAP, TOKENS = 0.05, 0.01, 5


def stub_app():
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI()
    state = {"n": 0}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        state["n"] += 1
        if state["n"] % 5 == 0:  # every fifth request is refused, as a full queue would
            return JSONResponse({"error": {"message": "queue full", "type": "rate_limit", "code": 429}}, status_code=429,
                                headers={"Retry-After": "1"})
        assert body["stream"] is True

        async def events():
            await asyncio.sleep(FIRST_DELAY)
            for i in range(TOKENS):
                if i:
                    await asyncio.sleep(GAP)
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "stub",
                         "choices": [{"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            usage = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "stub", "choices": [],
                     "usage": {"prompt_tokens": 3, "completion_tokens": TOKENS, "total_tokens": TOKENS + 3}}
            yield f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def stub_url():
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(stub_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=5)


@pytest.mark.parametrize("client", ["openai", "raw"])
def test_bench_measures_known_timings_and_counts_refusals(stub_url, client):
    rows = bench(stub_url, [1, 4], requests=10, max_tokens=8, client=client)
    assert [r["concurrency"] for r in rows] == [1, 4]
    for r in rows:
        assert r["model"] == "stub"
        assert r["requests"] == 10 and r["completed"] == 8 and r["errors"] == {"429": 2}
        assert FIRST_DELAY * 1000 <= r["ttft"]["p50_ms"] < FIRST_DELAY * 1000 + 200
        assert GAP * 1000 * 0.8 <= r["itl"]["p50_ms"] < GAP * 1000 + 100
        assert r["tpot"]["p50_ms"] >= GAP * 1000 * 0.8
        expected_e2e = (FIRST_DELAY + GAP * (TOKENS - 1)) * 1000
        assert r["e2e"]["p50_ms"] >= expected_e2e
        assert r["output_token_throughput"] == pytest.approx(r["request_throughput"] * TOKENS, rel=0.01)
    # four at a time finish the same work faster than one at a time
    assert rows[1]["request_throughput"] > 1.5 * rows[0]["request_throughput"]
    assert "| 4 | 8/10 |" in render(rows)
    for r in rows:
        assert r["client"]["kind"] == client and r["client"]["processes"] == 1


def test_goodput_applies_the_slo(stub_url):
    strict = bench(stub_url, [2], requests=6, slo_ttft_ms=1)[0]
    loose = bench(stub_url, [2], requests=6, slo_ttft_ms=5000, slo_tpot_ms=5000)[0]
    assert strict["goodput"] == 0
    assert loose["goodput"] == pytest.approx(loose["request_throughput"])


def test_percentile():
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([5], 0.99) == 5
    assert percentile([], 0.5) is None


# A fast server in a process of its own (so that the client's CPU is measured apart from it): a raw
# ASGI app that streams FAST_TOKENS chunks FAST_GAP apart, whatever the request.
FAST_TOKENS, FAST_GAP = 10, 0.02


async def fast_app(scope, receive, send):
    if scope["path"].endswith("/models"):
        body = json.dumps({"object": "list", "data": [{"id": "fast", "object": "model"}]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for i in range(FAST_TOKENS):
        await asyncio.sleep(FAST_GAP)
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "fast",
                 "choices": [{"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None}]}
        await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(), "more_body": True})
    usage = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "fast", "choices": [],
             "usage": {"prompt_tokens": 3, "completion_tokens": FAST_TOKENS, "total_tokens": FAST_TOKENS + 3}}
    await send({"type": "http.response.body", "body": f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode()})


def _serve_fast(port: int) -> None:
    import uvicorn

    uvicorn.run(fast_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


@pytest.fixture(scope="module")
def fast_url():
    import multiprocessing

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = multiprocessing.get_context("spawn").Process(target=_serve_fast, args=(port,), daemon=True)
    proc.start()
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.time() < deadline and proc.is_alive(), "fast server did not start"
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.join(5)


def test_more_client_processes_do_not_change_a_servers_numbers(fast_url):
    """The paced server sets the rate (4 streams × one token per FAST_GAP): one client process and two
    measure the same tokens/s (loose tolerance: only gross client interference would break it), and
    each reports its own CPU."""
    one = bench(fast_url, [4], requests=8, client="raw")[0]
    two = bench(fast_url, [4], requests=8, client="raw", clients=2)[0]
    for row, processes in ((one, 1), (two, 2)):
        assert row["model"] == "fast" and row["completed"] == 8 and row["errors"] == {}
        c = row["client"]
        assert c["processes"] == processes and c["kind"] == "raw"
        assert c["cpu_s"] > 0 and 0 < c["max_process_cores"] and c["cpu_cores"] == pytest.approx(c["cpu_s"] / row["wall_s"], rel=0.05)
        assert c["cpu_ms_per_output_token"] == pytest.approx(c["cpu_s"] * 1000 / (8 * FAST_TOKENS), rel=0.01)
        assert set(c) >= {"warn_cores", "client_bound", "warning", "loop_lag_ms"} and c["loop_lag_ms"]["p99"] is not None
    assert two["output_token_throughput"] == pytest.approx(one["output_token_throughput"], rel=0.35)
    assert one["ttft"]["p50_ms"] >= FAST_GAP * 1000 and two["ttft"]["p50_ms"] >= FAST_GAP * 1000


def test_the_openai_client_in_two_processes_and_the_cli(fast_url, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "serve", "--base-url", fast_url, "--concurrency", "2", "--requests", "4",
                 "--clients", "2", "--out", str(out)]) == 0
    row = json.loads(out.read_text())[0]
    assert row["completed"] == 4 and row["client"]["processes"] == 2 and row["client"]["kind"] == "openai"
    assert "client cores" in capsys.readouterr().out


def test_a_busy_client_is_flagged():
    busy = client_report([(0.9, 1.0), (0.2, 1.0)], wall=1.0, output_tokens=100, kind="openai", warn_cores=0.5)
    assert busy["client_bound"] and "client-bound" in busy["warning"] and busy["max_process_cores"] == 0.9
    assert busy["cpu_cores"] == 1.1 and busy["cpu_ms_per_output_token"] == 11.0 and busy["processes"] == 2
    idle = client_report([(0.1, 1.0)], wall=1.0, output_tokens=0, kind="raw", warn_cores=0.5, lag=[0.001] * 10)
    assert not idle["client_bound"] and idle["warning"] is None and idle["cpu_ms_per_output_token"] is None
    starved = client_report([(0.1, 1.0)], wall=1.0, output_tokens=10, kind="raw", warn_cores=0.5, lag=[0.001, 0.05])
    assert starved["client_bound"] and "event loop ran" in starved["warning"] and starved["loop_lag_ms"]["p99"] > 10
    row = {"concurrency": 8, "requests": 1, "completed": 1, "request_throughput": 1, "output_token_throughput": 1,
           "goodput": 1, "errors": {}, "client": busy,
           **{k: {"p50_ms": 1, "p99_ms": 1} for k in ("ttft", "tpot", "itl", "e2e")}}
    assert "warning: concurrency 8: client-bound" in render([row])


def test_split():
    assert _split(5, 2) == [3, 2] and _split(4, 4) == [1, 1, 1, 1] and sum(_split(7, 3)) == 7


@pytest.mark.parametrize("client", ["openai", "raw"])
def test_whole_answers_of_exactly_max_tokens_against_hkllm_serve(serve, client):
    """--no-stream --ignore-eos against the gateway: every answer is whole and max_tokens long;
    TTFT is then the answer's time."""
    server = serve(cache=False)
    rows = bench(server.url + "/v1", [2], requests=4, max_tokens=7, client=client, stream=False, ignore_eos=True)
    row = rows[0]
    assert row["completed"] == 4 and not row["errors"] and row["stream"] is False
    assert round(row["output_token_throughput"] * row["wall_s"]) == 4 * 7
    assert row["ttft"]["p50_ms"] == row["e2e"]["p50_ms"]
