"""`hkllm bench serve` against a stub OpenAI-compatible server with known timings."""

import asyncio
import json
import socket
import threading
import time

import pytest

from hkllm.serve.bench import bench, percentile, render

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


def test_bench_measures_known_timings_and_counts_refusals(stub_url):
    rows = bench(stub_url, [1, 4], requests=10, max_tokens=8)
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


def test_goodput_applies_the_slo(stub_url):
    strict = bench(stub_url, [2], requests=6, slo_ttft_ms=1)[0]
    loose = bench(stub_url, [2], requests=6, slo_ttft_ms=5000, slo_tpot_ms=5000)[0]
    assert strict["goodput"] == 0
    assert loose["goodput"] == pytest.approx(loose["request_throughput"])


def test_percentile():
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([5], 0.99) == 5
    assert percentile([], 0.5) is None
