"""The gateway in front of llama.cpp's `llama-server` (`hkllm serve --upstream`): the model exported
with `hkllm export gguf`, answered by llama.cpp, with hkllm's keys, cache, audit and fixed-length
answers (`ignore_eos`) kept. Runs only where a `llama-server` binary is on PATH (README: how to
build it); skips, saying so, elsewhere."""

import sqlite3

import openai
import pytest

from tests.llama_cpp import LLAMA_SERVER, llama_server

pytestmark = pytest.mark.skipif(LLAMA_SERVER is None, reason="no llama-server on PATH (README, 'Load testing': "
                                "how to build it from llama-cpp-python's sdist, ~11-15 min); the gateway-in-front "
                                "path is then untested here")
HELLO = [{"role": "user", "content": "旺角"}]


@pytest.fixture(scope="module")
def llama_url(model_dir, tmp_path_factory):
    from hkllm.train.gguf_export import export_gguf

    gguf = tmp_path_factory.mktemp("llama") / "tiny-chat.f32.gguf"
    export_gguf(model_dir, gguf, "f32")
    with llama_server(gguf, "-t", "1", "-c", "2048", "-np", "2", "--no-warmup") as url:
        yield url + "/v1"


def test_gateway_in_front_of_llama_server_keeps_keys_cache_audit(serve, engine, llama_url, tmp_path):
    from hkllm.serve.keys import KeyStore
    from hkllm.serve.upstream import UpstreamEngine

    state = tmp_path / "gw"
    _, secret = KeyStore(state / "keys.sqlite").create("officer")
    gateway = serve(UpstreamEngine(llama_url), auth=True, state_dir=state)
    c = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    name = c.models.list().data[0].id
    first = c.chat.completions.create(model=name, messages=HELLO, max_tokens=12)
    again = c.chat.completions.create(model=name, messages=HELLO, max_tokens=12)
    # llama.cpp's greedy answer is the embedded engine's: same weights, same chat template
    embedded = serve(cache=False)
    ours = openai.OpenAI(base_url=embedded.url + "/v1", api_key="none", max_retries=0).chat.completions.create(
        model=engine.name, messages=HELLO, max_tokens=12)
    assert first.choices[0].message.content == ours.choices[0].message.content
    assert first.model_extra["cached"] is False and again.model_extra["cached"] is True
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model=name, messages=HELLO, max_tokens=12, stream=True, extra_body={"ignore_eos": True}) if ch.choices)
    assert streamed
    fixed = c.chat.completions.create(model=name, messages=[{"role": "user", "content": "你好"}], max_tokens=9,
                                      extra_body={"ignore_eos": True})
    assert fixed.usage.completion_tokens == 9
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="wrong", max_retries=0).models.list()
    rows = sqlite3.connect(state / "audit.sqlite").execute("SELECT status, cache_hit FROM requests").fetchall()
    assert len(rows) >= 4 and {200} == {status for status, _ in rows} and any(hit for _, hit in rows)
