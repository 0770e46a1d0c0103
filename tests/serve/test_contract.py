"""The engine contract (contract.py): both engines and a test fake implement it, failures arrive
as typed ErrorEvents and reach the client in OpenAI's error shape, and a logits processor set at
the gateway (where a watermark plugs in) reaches the embedded engine and is refused upstream."""

import asyncio
import dataclasses
import json

import httpx2 as httpx
import openai
import pytest

from hkllm.serve.contract import Engine, ErrorEvent, SamplingParams, missing_members
from hkllm.serve.testing import ScriptedEngine

HELLO = [{"role": "user", "content": "你好，請問圖書館幾點開？"}]


def test_both_engines_and_a_fake_implement_the_contract(serve, engine, tmp_path):
    from hkllm.serve.app import Settings, build_app
    from hkllm.serve.upstream import UpstreamEngine

    upstream = UpstreamEngine(serve(cache=False).base_url)
    for e in (engine, upstream, ScriptedEngine()):
        assert isinstance(e, Engine) and missing_members(e) == [], type(e).__name__

    class Partial:                                      # an engine written from the old docstrings
        kind, name, version, template_version = "x", "x", "1", "1"
        max_model_len, max_batch, default_temperature, default_top_p = 8, 1, 0.0, 1.0
        chat = complete = ready = ScriptedEngine.chat
    assert not isinstance(Partial(), Engine)
    with pytest.raises(TypeError, match="no stats, aclose"):
        build_app(Partial(), Settings(auth=False, state_dir=tmp_path))


def test_engine_error_is_a_500_in_openai_shape_plain_and_streamed(serve, tmp_path):
    engine = ScriptedEngine(fail_after=3)
    server = serve(engine, state_dir=tmp_path / "err")
    body = {"model": engine.name, "messages": HELLO, "max_tokens": 50}
    for _ in range(2):                                  # a failed answer is never cached
        r = httpx.post(server.base_url + "/chat/completions", json=body)
        assert r.status_code == 500 and r.json()["error"] == {
            "message": "engine error: RuntimeError: scripted failure", "type": "server_error", "param": None,
            "code": "engine_error"}
    assert engine.calls == 2
    with httpx.stream("POST", server.base_url + "/chat/completions", json={**body, "stream": True}) as r:
        frames = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert frames[-1]["error"]["code"] == "engine_error" and "".join(
        f["choices"][0]["delta"].get("content", "") for f in frames[:-1]) == engine.answer(HELLO[0]["content"])[:6]
    server.stop()
    rows = server.app.state.gateway.audit
    import sqlite3
    statuses = [s for (s,) in sqlite3.connect(rows.path).execute("SELECT status FROM requests ORDER BY time")]
    assert statuses == [500, 500, 500]


def test_embedded_engine_reports_a_failing_processor_as_an_error_event_for_its_row_only(engine):
    def boom(ids, logits):
        raise RuntimeError("no watermark key")

    async def run(params):
        return [ev async for ev in engine.generate(engine.encode_text("香港"), params)]

    async def main():
        return await asyncio.gather(run(SamplingParams(5, logits_processors=(boom,))), run(SamplingParams(5)))

    failed, fine = asyncio.run(main())
    assert isinstance(failed[-1], ErrorEvent) and "no watermark key" in failed[-1].message
    assert failed[-1].finish_reason == "error" and failed[-1].text == ""
    assert fine[-1].finish_reason == "length" and fine[-1].completion_tokens == 5


class BanNewline:
    """A request guard that gives every request a logits processor, as a watermark would."""
    version = "1"

    def __init__(self, token: int):
        self.token = token

    def ban(self, ids, logits):
        logits[self.token] = float("-inf")
        return logits

    def check(self, request, key):
        return dataclasses.replace(request, params=dataclasses.replace(request.params, logits_processors=(self.ban,)))


def test_a_logits_processor_set_at_the_gateway_reaches_the_embedded_engine_and_is_refused_upstream(serve, engine):
    from hkllm.serve.guards import GuardPolicy
    from hkllm.serve.upstream import UpstreamEngine

    newline = engine.encode_text("\n")[0]
    guards = GuardPolicy([BanNewline(newline)])
    plain, banned = serve(cache=False), serve(cache=False, guards=guards)
    c = {s: openai.OpenAI(base_url=s.base_url, api_key="none", max_retries=0) for s in (plain, banned)}
    free = c[plain].chat.completions.create(model=engine.name, messages=HELLO, max_tokens=8).choices[0].message.content
    got = c[banned].chat.completions.create(model=engine.name, messages=HELLO, max_tokens=8).choices[0].message.content
    assert free == "\n" * 8 and "\n" not in got
    gateway = serve(UpstreamEngine(plain.base_url), cache=False, guards=guards)
    r = httpx.post(gateway.base_url + "/chat/completions", json={"messages": HELLO, "max_tokens": 8})
    assert r.status_code == 501 and "logits processors" in r.json()["error"]["message"]


def test_upstream_failures_are_typed_error_events(serve):
    from hkllm.serve.upstream import UpstreamEngine

    backend = serve(cache=False)
    gateway = serve(UpstreamEngine(backend.base_url), cache=False, max_output_tokens=5000)
    body = {"messages": HELLO, "max_tokens": 2000}          # the gateway allows it, the backend does not
    r = httpx.post(gateway.base_url + "/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "upstream_error"
    assert "at most 1024" in r.json()["error"]["message"]
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json={**body, "stream": True}) as s:
        frames = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    assert frames[-1]["error"]["code"] == "upstream_error"
    backend.stop()                                           # the upstream is gone: 502, never a hang or a 500
    r = httpx.post(gateway.base_url + "/chat/completions", json={"messages": HELLO, "max_tokens": 2}, timeout=30)
    assert r.status_code == 502 and r.json()["error"]["type"] == "server_error"
