"""`hkllm serve` on loopback, driven with the official openai client (sync, async, streaming)."""

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import time

import httpx2 as httpx
import openai
import pytest

HELLO = [{"role": "user", "content": "你好，請問圖書館幾點開？"}]


def client(server, key="none", **kw):
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, **kw)


def model_name(server):
    return server.app.state.engine.name


def test_chat_sync_and_consistency_cache(serve):
    server = serve()
    c = client(server)
    first = c.chat.completions.create(model=model_name(server), messages=HELLO, max_tokens=12)
    again = c.chat.completions.create(model=model_name(server), messages=HELLO, max_tokens=12, temperature=1.5)
    assert first.choices[0].message.content and first.choices[0].finish_reason == "length"
    assert first.usage.completion_tokens == 12 and first.usage.prompt_tokens > 5
    assert first.model_extra["cached"] is False and again.model_extra["cached"] is True
    # consistency mode ignores temperature: the same request, the same answer
    assert again.choices[0].message.content == first.choices[0].message.content
    assert first.system_fingerprint == again.system_fingerprint


def test_streaming_async_matches_non_streaming(serve):
    server = serve(cache=False)

    async def main():
        c = openai.AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        stream = await c.chat.completions.create(model=model_name(server), messages=HELLO, max_tokens=20, stream=True,
                                                 stream_options={"include_usage": True})
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        whole = await c.chat.completions.create(model=model_name(server), messages=HELLO, max_tokens=20)
        return pieces, usage, whole

    pieces, usage, whole = asyncio.run(main())
    assert len(pieces) > 1 and "".join(pieces) == whole.choices[0].message.content
    assert usage.completion_tokens == 20


def test_batched_greedy_answers_do_not_depend_on_other_requests(serve):
    """The same greedy request alone and inside batches of different, longer prompts."""
    server = serve(cache=False)
    c = client(server)
    alone = c.chat.completions.create(model=model_name(server), messages=HELLO, max_tokens=24).choices[0].message.content
    answers = []

    def ask(i):
        msgs = HELLO if i % 3 == 0 else [{"role": "user", "content": "其他問題 " * (i + 1)}]
        r = c.chat.completions.create(model=model_name(server), messages=msgs, max_tokens=24)
        if i % 3 == 0:
            answers.append(r.choices[0].message.content)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(18)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 6 and set(answers) == {alone}


def test_sampling_with_consistency_off_follows_seed(serve):
    server = serve(consistency=False)
    c = client(server)

    def ask(seed):
        return c.chat.completions.create(model=model_name(server), messages=HELLO, max_tokens=16, temperature=1.0,
                                         seed=seed).choices[0].message.content

    assert ask(1) == ask(1)
    assert len({ask(s) for s in range(2, 6)}) > 1


def test_completions_echo_logprobs_are_the_models(serve, engine, model_dir):
    import torch

    server = serve()
    ids = engine.encode_text("我哋今日去咗旺角食嘢")
    r = client(server).completions.create(model=model_name(server), prompt=ids, max_tokens=1, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + 1
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0], -1)
    expected = [float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(expected, abs=1e-4)
    # the generated token is the greedy one, and its top alternative is itself
    greedy = engine.token_text(int(logp[-1].argmax()))
    assert lp.tokens[-1] == greedy and max(lp.top_logprobs[-1].values()) == pytest.approx(lp.token_logprobs[-1])


def test_stop_strings_cut_the_answer(serve):
    server = serve(cache=False)
    c = client(server)
    full = c.completions.create(model=model_name(server), prompt="香港", max_tokens=30).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 2]
    cut = c.completions.create(model=model_name(server), prompt="香港", max_tokens=30, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and cut.text == full[:full.index(stop)]
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model=model_name(server), prompt="香港", max_tokens=30, stop=[stop], stream=True))
    assert streamed == cut.text


def test_keys_are_required_hashed_and_revocable(serve, tmp_path):
    from hkllm.serve.keys import KeyStore

    state = tmp_path / "auth"
    store = KeyStore(state / "keys.sqlite")
    key, secret = store.create("alice")
    server = serve(auth=True, state_dir=state)
    with pytest.raises(openai.AuthenticationError):
        client(server, "hk-wrong").models.list()
    assert client(server, secret).models.list().data[0].id == model_name(server)
    assert secret.encode() not in (state / "keys.sqlite").read_bytes()
    store.revoke(key.id)
    with pytest.raises(openai.AuthenticationError):
        client(server, secret).models.list()


def test_rate_limits_answer_429_with_retry_after(serve, tmp_path):
    from hkllm.serve.keys import KeyStore

    state = tmp_path / "limits"
    store = KeyStore(state / "keys.sqlite")
    _, per_request = store.create("two-per-minute", rpm=2)
    _, per_token = store.create("few-tokens", tpm=10)
    server = serve(auth=True, state_dir=state)
    c = client(server, per_request)
    for _ in range(2):
        c.chat.completions.create(model=model_name(server), messages=HELLO, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as err:
        c.chat.completions.create(model=model_name(server), messages=HELLO, max_tokens=2)
    assert 1 <= int(err.value.response.headers["retry-after"]) <= 60
    c = client(server, per_token)
    c.chat.completions.create(model=model_name(server), messages=HELLO, max_tokens=4)   # spends > 10 tokens
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model=model_name(server), messages=HELLO, max_tokens=4)


def test_full_queue_refuses_cleanly(serve, model_dir):
    from hkllm.serve.engine import LocalEngine

    server = serve(LocalEngine(model_dir, max_batch=1), max_queue=1, cache=False)
    statuses = []

    def ask(i):
        r = httpx.post(server.base_url + "/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": f"問題 {i}"}], "max_tokens": 200})
        statuses.append((r.status_code, r.headers.get("retry-after"), r.json()))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(s for s, _, _ in statuses)
    assert codes.count(200) >= 2 and codes.count(429) >= 1 and set(codes) <= {200, 429}
    refused = [(h, body) for s, h, body in statuses if s == 429]
    assert all(h == "1" and body["error"]["code"] == "queue_full" for h, body in refused)


def running(server) -> float:
    text = httpx.get(server.url + "/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("hkllm_num_requests_running")))


def test_client_disconnect_cancels_generation(serve):
    server = serve(cache=False)
    body = {"messages": HELLO, "max_tokens": 900, "stream": True}
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        next(line for line in lines if '"content"' in line and '"role"' not in line)   # generation has begun
        assert running(server) == 1
    t0 = time.time()
    while running(server) and time.time() - t0 < 5:
        time.sleep(0.05)
    assert running(server) == 0, "the engine kept decoding for a client that left"
    # non-streaming: the client gives up after 0.5 s; the server notices and stops too
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.base_url + "/chat/completions", json={**body, "stream": False}, timeout=0.5)
    t0 = time.time()
    while running(server) and time.time() - t0 < 5:
        time.sleep(0.05)
    assert running(server) == 0


def test_request_timeout_is_504(serve):
    server = serve(cache=False, request_timeout_s=0.3)
    r = httpx.post(server.base_url + "/chat/completions", json={"messages": HELLO, "max_tokens": 900}, timeout=30)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b'{"messages": []}', "messages"),
    (b'{"messages": [{"role": "robot", "content": "hi"}]}', "messages.0.role"),
    (b'{"messages": "hi"}', "messages"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 5}', "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', "n"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}', "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1020}', "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}', "stop"),
    (b'[1, 2, 3]', None),
])
def test_malformed_bodies_are_400_never_500(serve, body, param):
    server = serve()
    r = httpx.post(server.base_url + "/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param


def test_prompt_limit_and_unknown_model(serve):
    server = serve(max_prompt_tokens=20)
    c = client(server)
    with pytest.raises(openai.BadRequestError, match="limit is 20"):
        c.chat.completions.create(model=model_name(server), messages=[{"role": "user", "content": "長" * 200}])
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="gpt-4", messages=HELLO)
    with pytest.raises(openai.BadRequestError, match="token ids"):
        c.completions.create(model=model_name(server), prompt=[99999], max_tokens=1)


def test_health_ready_metrics_openapi(serve):
    server = serve()
    c = client(server)
    c.chat.completions.create(model=model_name(server), messages=HELLO, max_tokens=3)
    c.chat.completions.create(model=model_name(server), messages=HELLO, max_tokens=3)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    assert httpx.get(server.url + "/ready").json()["status"] == "ready"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'hkllm_requests_total{endpoint="chat",status="200"} 2.0' in metrics
    assert 'hkllm_cache_lookups_total{result="hit"} 1.0' in metrics
    assert "hkllm_generation_tokens_total 3.0" in metrics
    assert "hkllm_time_to_first_token_seconds_count 1.0" in metrics
    assert "hkllm_num_requests_waiting" in metrics
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(paths)


def test_audit_log_stores_redacted_prompts_and_exports(serve, tmp_path):
    from hkllm.cli import main

    state = tmp_path / "audit"
    server = serve(state_dir=state)
    c = client(server)
    c.chat.completions.create(model=model_name(server), messages=[{"role": "user", "content": "請致電 9123 4567 或電郵 "
                                                                                         "chan@example.com"}],
                              max_tokens=3)
    c.chat.completions.create(model=model_name(server), messages=HELLO, max_tokens=3)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=model_name(server), messages=HELLO, max_tokens=5000)
    server.stop()     # flushes the audit writer
    raw = (state / "audit.sqlite").read_bytes() + (state / "audit.sqlite-wal").read_bytes() \
        if (state / "audit.sqlite-wal").exists() else (state / "audit.sqlite").read_bytes()
    assert b"9123 4567" not in raw and b"chan@example.com" not in raw
    out = tmp_path / "audit.jsonl"
    assert main(["audit", "--state-dir", str(state), "export", "--since", "2020-01-01", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in rows] == [200, 200, 400] and "[PHONE]" in rows[0]["prompt"]
    assert rows[2]["finish_reason"] == "max_tokens_too_large" and rows[2]["key_id"] == "anonymous"
    assert "[EMAIL]" in rows[0]["prompt"] and rows[0]["completion_tokens"] == 3 and rows[0]["key_id"] == "anonymous"
    assert main(["audit", "--state-dir", str(state), "export", "--since", "2999-01-01", "--out", str(out)]) == 0
    assert out.read_text() == ""


def test_keys_cli(tmp_path, capsys):
    from hkllm.cli import main

    state = str(tmp_path / "k")
    assert main(["keys", "--state-dir", state, "create", "--name", "bob", "--rpm", "5"]) == 0
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("hk-")
    assert main(["keys", "--state-dir", state, "list"]) == 0
    listing = capsys.readouterr().out
    assert "bob" in listing and "rpm=5" in listing and secret not in listing
    assert main(["keys", "--state-dir", state, "revoke", "bob"]) == 0
    assert main(["keys", "--state-dir", state, "revoke", "bob"]) == 2
    rows = sqlite3.connect(tmp_path / "k" / "keys.sqlite").execute("SELECT revoked FROM keys").fetchall()
    assert rows[0][0] is not None


def test_upstream_gateway_forwards_and_keeps_its_own_keys(serve, tmp_path):
    from hkllm.serve.keys import KeyStore
    from hkllm.serve.upstream import UpstreamEngine

    backend = serve(cache=False)
    state = tmp_path / "gw"
    _, secret = KeyStore(state / "keys.sqlite").create("gw-user")
    gateway = serve(UpstreamEngine(backend.base_url), auth=True, state_dir=state, cache=False)
    direct = client(backend).chat.completions.create(model=model_name(backend), messages=HELLO, max_tokens=10)
    via = client(gateway, secret).chat.completions.create(model=model_name(backend), messages=HELLO, max_tokens=10)
    assert via.choices[0].message.content == direct.choices[0].message.content
    assert via.usage.prompt_tokens == direct.usage.prompt_tokens and via.usage.completion_tokens == 10
    streamed = "".join(ch.choices[0].delta.content or "" for ch in client(gateway, secret).chat.completions.create(
        model=model_name(backend), messages=HELLO, max_tokens=10, stream=True) if ch.choices)
    assert streamed == direct.choices[0].message.content
    echo = client(gateway, secret).completions.create(model=model_name(backend), prompt="香港", max_tokens=1,
                                                      echo=True, logprobs=1)
    assert echo.choices[0].logprobs.token_logprobs[0] is None and echo.choices[0].text.startswith("香港")
    with pytest.raises(openai.AuthenticationError):
        client(gateway).models.list()


def test_cli_serve_starts_and_refuses_no_auth_off_loopback(model_dir, tmp_path):
    from hkllm.serve.testing import free_port

    bad = subprocess.run([sys.executable, "-m", "hkllm", "serve", str(model_dir), "--no-auth", "--host", "0.0.0.0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "loopback" in bad.stderr
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hkllm", "serve", str(model_dir), "--no-auth", "--port", str(port),
                             "--state-dir", str(tmp_path / "cli")], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        r = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x").chat.completions.create(
            model=model_dir.name, messages=HELLO, max_tokens=4)
        assert r.usage.completion_tokens == 4
    finally:
        proc.terminate()
        err = proc.communicate(timeout=20)[1]
    assert "curl http://127.0.0.1" in err
