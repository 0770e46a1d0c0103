"""Bad input never yields a 5xx, and every error is in OpenAI's shape: the cases found by hand,
then generated bodies (Hypothesis) thrown at both generation endpoints.

    HYPOTHESIS_PROFILE=serve-thorough pytest tests/serve/test_bad_input.py     # 2,000 bodies an endpoint
"""

import json
import os
import time

import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hkllm.serve.testing import LiveServer

settings.register_profile("serve-fast", max_examples=40, deadline=None, database=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("serve-thorough", parent=settings.get_profile("serve-fast"), max_examples=2000,
                          derandomize=False)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "serve-fast")
if not PROFILE.startswith("serve-"):
    PROFILE = "serve-fast"
JSON = {"content-type": "application/json"}
HELLO = [{"role": "user", "content": "你好"}]


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    """One server for the module: answers of at most 8 tokens, a 16 KiB body limit."""
    from hkllm.serve.app import Settings, build_app

    s = LiveServer(build_app(engine, Settings(state_dir=tmp_path_factory.mktemp("bad"), auth=False,
                                              max_output_tokens=8, max_body_bytes=16 * 1024)))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def assert_openai_error(r: httpx.Response, status: int | None = None) -> dict:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert status is None or r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    return error


def assert_answered(r: httpx.Response) -> None:
    """A 2xx is a whole answer: JSON with choices, or an SSE stream that ends with [DONE] and no error."""
    if r.headers["content-type"].startswith("text/event-stream"):
        lines = [line for line in r.text.split("\n") if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]", lines[-3:]
        frames = [json.loads(line[6:]) for line in lines[:-1]]
        assert all("error" not in f and "choices" in f for f in frames), frames
    else:
        assert "choices" in r.json()


def post(http, path: str, body: bytes, headers=JSON) -> httpx.Response:
    return http.post("/v1" + path, content=body, headers=headers)


# -- found by hand -------------------------------------------------------------------------------

@pytest.mark.parametrize("path, body, param", [
    ("/chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]}, "messages.0.content"),
    ("/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a\udfff"}]}]},
     "messages.0.content.0.text"),
    ("/chat/completions", {"messages": HELLO, "stop": ["\udc00"]}, "stop.0"),
    ("/chat/completions", {"messages": HELLO, "metadata": {"note": "\ud83d"}}, "metadata.note"),
    ("/completions", {"prompt": "香港\ud800"}, "prompt"),
    ("/completions", {"prompt": ["ok", "\ud800"]}, "prompt.1"),
])
def test_lone_surrogates_are_400_naming_the_field(http, path, body, param):
    r = post(http, path, json.dumps(body).encode())              # ensure_ascii: "\ud800" as JSON allows it
    assert assert_openai_error(r, 400)["param"] == param


def test_a_surrogate_pair_is_text_like_any_other(http):
    body = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 2, "stop": "\\ud83d\\ude00"}'
    assert post(http, "/chat/completions", body).status_code == 200


@pytest.mark.parametrize("body", [b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
                                  b'{"prompt": "\xed\xa0\x80"}',                  # a surrogate encoded as UTF-8
                                  b'{"prompt": "\xe9\xa6"}'])                     # a character cut short
def test_invalid_utf8_is_400(http, body):
    for path in ("/chat/completions", "/completions"):
        assert assert_openai_error(post(http, path, body), 400)["code"] == "invalid_encoding"


def test_a_body_over_the_limit_is_413_before_it_is_read(engine, tmp_path):
    from hkllm.serve.app import Settings, build_app

    server = LiveServer(build_app(engine, Settings(state_dir=tmp_path, auth=False)))    # the default limit
    try:
        big = json.dumps({"messages": [{"role": "user", "content": "長" * 3_000_000}]}, ensure_ascii=False).encode()
        assert len(big) > 9_000_000
        t0 = time.perf_counter()
        r = httpx.post(server.base_url + "/chat/completions", content=big, headers=JSON, timeout=60)
        assert time.perf_counter() - t0 < 2                  # not tokenized: 3,000,000 tokens would take far longer
        error = assert_openai_error(r, 413)
        assert error["code"] == "request_too_large" and str(server.app.state.gateway.max_body_bytes) in error["message"]

        def pieces():                                        # no Content-Length: refused as the bytes arrive
            for i in range(0, len(big), 1 << 16):
                yield big[i:i + (1 << 16)]
        assert_openai_error(httpx.post(server.base_url + "/completions", content=pieces(), headers=JSON, timeout=60),
                            413)
        metrics = httpx.get(server.url + "/metrics").text
        assert 'hkllm_requests_total{endpoint="chat",status="413"} 1.0' in metrics
        assert "hkllm_prompt_tokens_total 0.0" in metrics
        ok = {"messages": [{"role": "user", "content": "長" * 100}], "max_tokens": 1}
        assert httpx.post(server.base_url + "/chat/completions", json=ok).status_code == 200
    finally:
        server.stop()


def test_unknown_paths_and_methods_are_openai_shaped(http):
    assert assert_openai_error(http.get("/v1/nothing"), 404)["code"] == "not_found"
    assert assert_openai_error(http.post("/v2/chat/completions", json={}), 404)["code"] == "not_found"
    r = http.get("/v1/chat/completions")
    assert assert_openai_error(r, 405)["code"] == "method_not_allowed" and r.headers["allow"] == "POST"
    assert_openai_error(http.delete("/v1/models"), 405)
    assert_openai_error(http.put("/health", content=b"{}"), 405)


@pytest.mark.parametrize("path, field, value", [
    ("/chat/completions", "tools", [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]),
    ("/chat/completions", "tool_choice", "required"),
    ("/chat/completions", "response_format", {"type": "json_object"}),
    ("/chat/completions", "logprobs", True),
    ("/chat/completions", "top_logprobs", 3),
    ("/chat/completions", "frequency_penalty", 0.5),
    ("/chat/completions", "logit_bias", {"42": 100}),
    ("/chat/completions", "audio", {"voice": "alloy", "format": "wav"}),
    ("/completions", "suffix", "。"),
    ("/completions", "best_of", 3),
    ("/completions", "presence_penalty", 1.0),
    ("/completions", "top_k", 5),
])
def test_fields_the_server_does_not_implement_are_400_naming_them(http, path, field, value):
    base = {"messages": HELLO} if path == "/chat/completions" else {"prompt": "香港"}
    error = assert_openai_error(post(http, path, json.dumps({**base, field: value}).encode()), 400)
    assert error["param"] == field and field in error["message"] and error["code"] == "unsupported_parameter"


@pytest.mark.parametrize("extra", [{"tools": None}, {"tools": []}, {"logprobs": False}, {"frequency_penalty": 0},
                                   {"response_format": {"type": "text"}}, {"tool_choice": "none"},
                                   {"parallel_tool_calls": True}, {"user": "alice"}, {"something_else": [1, 2]}])
def test_unimplemented_fields_set_to_off_and_unknown_extras_are_accepted(http, extra):
    r = post(http, "/chat/completions", json.dumps({"messages": HELLO, "max_tokens": 2, **extra}).encode())
    assert r.status_code == 200, r.text


def test_another_endpoints_fields_are_extras_like_any_other(http):
    """Found by the generated bodies: `messages` sent to /v1/completions was read as chat messages (500)."""
    for messages in (HELLO, "hi", None, 3):
        r = post(http, "/completions", json.dumps({"prompt": "香港", "max_tokens": 2, "messages": messages}).encode())
        assert r.status_code == 200, r.text
    assert post(http, "/chat/completions", json.dumps({"messages": HELLO, "max_tokens": 2, "prompt": [1, 2]}
                                                      ).encode()).status_code == 200


def test_tool_calls_in_history_are_400(http):
    messages = [*HELLO, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                               "function": {"name": "f"}}]}]
    error = assert_openai_error(post(http, "/chat/completions", json.dumps({"messages": messages}).encode()), 400)
    assert error["param"] == "messages.1.tool_calls"


def test_chat_template_refusal_is_400(serve, engine, model_dir, tmp_path):
    """A template that raises (many released ones do, for roles out of order) is the client's to fix."""
    from hkllm.serve.engine import LocalEngine

    strict = LocalEngine(model_dir, max_batch=2)
    strict.tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'tool' %}"
                                      "{{ raise_exception('tool messages are not supported') }}{% endif %}"
                                      "{{ m['content'] }}{% endfor %}")
    try:
        server = serve(strict)
        r = httpx.post(server.base_url + "/chat/completions", json={"messages": [{"role": "tool", "content": "x"}]})
        assert "tool messages are not supported" in assert_openai_error(r, 400)["message"]
    finally:
        strict.close()


# -- generated ------------------------------------------------------------------------------------

SPECIAL = ["", " ", "\ud800", "a\udfffb", "\ud83d\ude00", "\x00", "香港", "<|im_end|>", "\n", "長" * 2000]
text = st.one_of(st.text(max_size=12), st.sampled_from(SPECIAL))
scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 12),
                   st.floats(allow_nan=True, allow_infinity=True), text)
anything = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(text, inner, max_size=3)), max_leaves=8)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "robot"])
part = st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": text}),
                 st.fixed_dictionaries({"type": st.sampled_from(["image_url", "text"])}, optional={"text": anything}))
message = st.fixed_dictionaries({"role": roles | anything},
                                optional={"content": text | st.lists(part, max_size=2) | anything,
                                          "name": text, "tool_calls": anything})
common = {"model": st.sampled_from(["tiny-chat", "gpt-4"]) | anything, "temperature": st.floats(-1, 3) | anything,
          "top_p": st.floats(-0.5, 1.5) | anything, "max_tokens": st.integers(-2, 12) | anything,
          "stop": text | st.lists(text, max_size=5) | anything, "seed": st.integers(-2**65, 2**65) | anything,
          "stream": st.booleans() | anything, "stream_options": st.just({"include_usage": True}) | anything,
          "n": st.integers(0, 2) | anything, "user": text | anything, "logit_bias": anything,
          "frequency_penalty": anything, "response_format": anything, "x_unknown": anything}
chat_body = st.fixed_dictionaries({}, optional={"messages": st.lists(message, max_size=3) | anything, **common,
                                                "tools": anything, "logprobs": anything,
                                                "max_completion_tokens": st.integers(-1, 12) | anything})
token_ids = st.lists(st.integers(-5, 420), max_size=6)
completion_body = st.fixed_dictionaries({}, optional={
    "prompt": text | st.lists(text, max_size=3) | token_ids | st.lists(token_ids, max_size=3) | anything, **common,
    "echo": st.booleans() | anything, "logprobs": st.integers(-2, 25) | anything, "suffix": anything,
    "best_of": anything})


# Mostly valid bodies, then the same with one field set to anything at all, then wild ones.
plain_text = st.one_of(st.text(max_size=12), st.sampled_from([s for s in SPECIAL if "\ud800" not in s
                                                               and "\udfff" not in s]))
valid_message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                       "content": plain_text | st.lists(st.fixed_dictionaries(
                                           {"type": st.just("text"), "text": plain_text}), min_size=1, max_size=2)})
valid_common = {"model": st.just("tiny-chat"), "max_tokens": st.integers(1, 8), "stream": st.booleans(),
                "stop": plain_text.filter(bool) | st.lists(plain_text.filter(bool), max_size=4),
                "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "seed": st.integers(0, 1 << 40),
                "stream_options": st.just({"include_usage": True}), "user": plain_text}
valid_chat = st.fixed_dictionaries({"messages": st.lists(valid_message, min_size=1, max_size=3)},
                                   optional={**valid_common, "logprobs": st.just(False), "tools": st.just([]),
                                             "max_completion_tokens": st.integers(1, 8)})
valid_completion = st.fixed_dictionaries({"prompt": plain_text.filter(bool) | st.lists(
    st.integers(0, 399), min_size=1, max_size=6)}, optional={**valid_common, "echo": st.booleans(),
                                                              "logprobs": st.integers(0, 5)})
FIELDS = ["messages", "prompt", "model", "max_tokens", "stream", "stop", "temperature", "top_p", "seed", "n",
          "stream_options", "echo", "logprobs", "tools", "tool_choice", "response_format", "top_logprobs", "suffix",
          "best_of", "frequency_penalty", "logit_bias", "top_k", "max_completion_tokens", "user"]


def mutated(valid):
    return st.tuples(valid, st.sampled_from(FIELDS), anything).map(lambda t: {**t[0], t[1]: t[2]})


def raw(body_strategy):
    """Bodies as bytes: JSON (ASCII-escaped or not), any JSON value, or JSON with bytes broken."""
    encoded = st.tuples(st.one_of(body_strategy, anything), st.booleans()).map(
        lambda t: json.dumps(t[0], ensure_ascii=t[1], allow_nan=True).encode("utf-8", "surrogatepass"))
    broken = st.tuples(encoded, st.integers(0, 200), st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"{", b""])
                       ).map(lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:])
    return st.one_of(encoded, encoded, broken)


BODIES = {"/chat/completions": raw(st.one_of(valid_chat, mutated(valid_chat), chat_body)),
          "/completions": raw(st.one_of(valid_completion, mutated(valid_completion), completion_body))}


@pytest.mark.parametrize("path", BODIES, ids=["chat", "completions"])
@settings(settings.get_profile(PROFILE))
@given(data=st.data())
def test_generated_bodies_never_get_a_5xx_and_errors_are_openai_shaped(http, path, data):
    r = post(http, path, data.draw(BODIES[path], label="body"))
    event(f"status {r.status_code}")
    if r.status_code >= 400:
        assert_openai_error(r)
    else:
        assert_answered(r)
