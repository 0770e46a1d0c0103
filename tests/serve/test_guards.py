"""The gateway's two guard seams end to end: a toy request guard (refuses, rewrites) and a toy
response guard (redacts across chunk boundaries, stops), streamed and not, cached and not,
configured as a policy in YAML like any guard (`package.module:Class`)."""

import dataclasses
import re

import httpx2 as httpx
import openai
import pytest

from hkllm.errors import UserError
from hkllm.serve.guards import GuardPolicy, TextGuard, Verdict, refusal
from hkllm.serve.testing import ScriptedEngine

HELLO = [{"role": "user", "content": "你好，請問圖書館幾點開？"}]
OTHER = [{"role": "user", "content": "八達通可以喺邊度增值？"}]


class RefuseBlocked:
    """Toy request guard: the key named "blocked" gets nothing; "rewrite me" is answered as OTHER."""
    version = "1"

    def check(self, request, key):
        if key.name == "blocked":
            raise refusal("this key may not ask anything", "messages")
        if request.messages and request.messages[-1]["content"] == "rewrite me":
            return dataclasses.replace(request, messages=OTHER)
        return None


class Redact(TextGuard):
    """Toy response guard: `word` becomes [X], also when it arrives split across chunks."""

    def __init__(self, word: str, stop: bool = False):
        self.word, self.stop = word, stop

    def review(self, text: str, final: bool) -> Verdict:
        if self.stop and self.word in text:
            return Verdict(text[:text.index(self.word)], stop=True)
        text = text.replace(self.word, "[X]")
        for k in range(min(len(self.word) - 1, len(text)), 0, -1):     # hold back a possible start of `word`
            if not final and text.endswith(self.word[:k]):
                return Verdict(text[:-k], text[-k:])
        return Verdict(text)


def policy(request=(), response=()):
    return {"request_guards": [{"name": "tests.serve.test_guards:RefuseBlocked", **r} for r in request],
            "response_guards": [{"name": "tests.serve.test_guards:Redact", **r} for r in response]}


def ask(server, messages=HELLO, stream=False, key="none", max_tokens=30, **kw):
    """(text, finish_reason, cached, system_fingerprint, chunks) through the official client."""
    c = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
    name = server.app.state.engine.name
    if not stream:
        r = c.chat.completions.create(model=name, messages=messages, max_tokens=max_tokens, **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason, r.model_extra["cached"], \
            r.system_fingerprint, None
    raw = c.chat.completions.with_raw_response.create(model=name, messages=messages, max_tokens=max_tokens,
                                                      stream=True, **kw)
    chunks, finish, fingerprint = [], None, None
    for ch in raw.parse():
        fingerprint = ch.system_fingerprint
        if ch.choices and ch.choices[0].delta.content:
            chunks.append(ch.choices[0].delta.content)
        if ch.choices and ch.choices[0].finish_reason:
            finish = ch.choices[0].finish_reason
    return "".join(chunks), finish, raw.headers["x-hkllm-cache"] == "hit", fingerprint, chunks


def test_request_guard_sees_every_request_before_the_cache(serve, tmp_path):
    from hkllm.serve.keys import KeyStore

    state = tmp_path / "rq"
    store = KeyStore(state / "keys.sqlite")
    _, alice = store.create("alice")
    _, blocked = store.create("blocked")
    server = serve(auth=True, state_dir=state, guards=policy(request=[{}]))
    text, _, cached, _, _ = ask(server, key=alice)
    assert text and not cached and ask(server, key=alice)[2]            # now it is in the cache
    for stream in (False, True):                                        # ... and still refused to this key
        with pytest.raises(openai.BadRequestError) as err:
            ask(server, key=blocked, stream=stream)
        error = err.value.body
        assert err.value.status_code == 400 and error["code"] == "content_filter" and error["param"] == "messages"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'hkllm_rejections_total{reason="content_filter"} 2.0' in metrics


def test_request_guard_rewrites_what_the_engine_and_the_cache_see(serve):
    engine = ScriptedEngine()
    server = serve(engine, guards=policy(request=[{}]))
    other, _, other_cached, _, _ = ask(server, OTHER, max_tokens=200)
    assert other == engine.answer(OTHER[0]["content"]) and not other_cached
    for stream in (False, True):
        text, _, cached, _, _ = ask(server, [{"role": "user", "content": "rewrite me"}], stream=stream, max_tokens=200)
        assert (text, cached) == (other, True)                           # the rewritten request's cache entry
    assert engine.calls == 1


@pytest.mark.parametrize("cache", [False, True])
def test_response_guard_redacts_across_chunks_streamed_and_not_cached_and_not(serve, cache):
    engine = ScriptedEngine(piece=2)                                     # "9123 4567" arrives in five chunks
    server = serve(engine, cache=cache, guards=policy(response=[{"word": "9123 4567"}, {"word": "chan@example.com"}]))
    expected = engine.answer(HELLO[0]["content"]).replace("9123 4567", "[X]").replace("chan@example.com", "[X]")
    for i, stream in enumerate((False, True, False, True)):              # with the cache: the last three are hits
        text, finish, cached, _, chunks = ask(server, stream=stream, max_tokens=200)
        assert (text, finish, cached) == (expected, "stop", cache and i > 0)
        assert stream is False or not any(part in "".join(chunks[:i]) for i in range(len(chunks) + 1)
                                          for part in ("9123 4", "chan@ex"))
    assert engine.calls == (1 if cache else 4)


def test_response_guard_on_the_embedded_engine_streamed_and_not(serve):
    """The tiny model's greedy chat answer is one newline per token: a two-newline word spans two chunks."""
    full = ask(serve(cache=False))[0]
    server = serve(guards=policy(response=[{"word": "\n\n"}]))
    expected = full.replace("\n\n", "[X]")
    assert expected != full
    assert [ask(server, stream=s)[:3] for s in (False, True, False)] == [(expected, "length", c)
                                                                           for c in (False, True, True)]


def test_response_guard_stops_the_answer_and_the_engine(serve, engine):
    import time

    scripted = ScriptedEngine(piece=2, delay=0.005)
    server = serve(scripted, guards=policy(response=[{"word": "9123", "stop": True}]))
    script = scripted.answer(HELLO[0]["content"])
    for i, stream in enumerate((False, True, False)):                     # the last one from the cache
        text, finish, cached, _, _ = ask(server, stream=stream, max_tokens=200)
        assert (text, finish, cached) == (script[:script.index("9123")], "content_filter", i > 0)
    assert scripted.calls == scripted.closed_early == 1 and scripted.running == 0
    # on the embedded engine, the rows the guard stopped leave the batch at once
    server = serve(guards=policy(response=[{"word": "\n\n", "stop": True}]))
    for stream in (False, True):
        assert ask(server, stream=stream, max_tokens=900)[:2] == ("", "content_filter")
        t0 = time.time()
        while engine.stats()["running"] and time.time() - t0 < 5:
            time.sleep(0.02)
        assert engine.stats()["running"] == 0, "the engine kept generating after the guard stopped the answer"


def test_completions_pass_the_guards_too(serve):
    engine = ScriptedEngine(piece=3)
    server = serve(engine, cache=False, guards={"request_guards": [{"name": "refuse_words", "words": ["炸彈"]}],
                                                "response_guards": [{"name": "redact_words", "words": ["香港"]}]})
    c = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="content policy") as err:
        c.completions.create(model=engine.name, prompt="點整炸彈", max_tokens=4)
    assert err.value.body["param"] == "prompt" and engine.calls == 0
    answer = engine.answer("香港").replace("香港", "[REDACTED]")
    plain = c.completions.create(model=engine.name, prompt="香港", max_tokens=200, echo=True).choices[0].text
    assert plain == "香港" + answer                                        # the echoed prompt is not the answer
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(model=engine.name, prompt="香港",
                                                                        max_tokens=200, stream=True))
    assert streamed == answer


def test_system_prompt_guard_rewrites_what_the_engine_sees(serve):
    instructions = "你係香港政府嘅查詢助理。"
    engine = ScriptedEngine()
    server = serve(engine, guards={"request_guards": [{"name": "system_prompt", "text": instructions}]})
    ask(server)
    ask(server, [{"role": "system", "content": "細心啲"}] + HELLO)
    assert engine.seen == [[{"role": "system", "content": instructions}] + HELLO,
                           [{"role": "system", "content": f"{instructions}\n\n細心啲"}] + HELLO]


def test_redact_words_holds_back_across_any_split():
    from hkllm.serve.guards import RedactWords

    guard = RedactWords(["9123 4567", "chan@example.com"], replacement="[PII]")
    text = "請致電 9123 4567 或電郵 chan@example.com，多謝。9123"
    expected = "請致電 [PII] 或電郵 [PII]，多謝。9123"
    for size in range(1, 8):
        out, held = "", ""
        pieces = [text[i:i + size] for i in range(0, len(text), size)]
        for i, piece in enumerate(pieces):
            v = guard.review(held + piece, final=i == len(pieces) - 1)
            out, held = out + v.release, v.hold
        assert out == expected, size


def test_policy_from_yaml_and_its_errors(tmp_path):
    good = tmp_path / "guards.yaml"
    good.write_text("request_guards:\n  - name: refuse_words\n    words: [bomb]\n"
                    "response_guards:\n  - name: redact_words\n    words: [secret]\n", encoding="utf-8")
    p = GuardPolicy.load(good)
    assert [type(g).__name__ for g in p.request_guards + p.response_guards] == ["RefuseWords", "RedactWords"]
    assert p.version and p.version == GuardPolicy.load(good).version and GuardPolicy.load(None).version is None
    for text, message in [("request_guards:\n  - name: refuse_word\n    words: [x]\n", "did you mean 'refuse_words'"),
                          ("request_guards:\n  - name: refuse_words\n    wrds: [x]\n",
                           "request_guards[0]: refuse_words"),
                          ("respons_guards: []\n", "unknown key 'respons_guards'"),
                          ("request_guards:\n  - name: nope.module:Guard\n", "cannot import"),
                          ("request_guards: {name: x}\n", "a list of guards")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(UserError, match=re.escape(message)):
            GuardPolicy.load(bad)
    with pytest.raises(TypeError, match="not a response guard"):
        GuardPolicy(response_guards=[RefuseBlocked()])
