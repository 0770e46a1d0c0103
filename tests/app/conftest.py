"""港文通 under test: a live `hkllm serve` app with /app mounted, over a scripted engine (answers
the tests choose, streamed in pieces with a delay) or the tiny random model, and Debian's
Chromium driven by Playwright."""

from __future__ import annotations

import contextlib
import re

import pytest

from hkllm.app.testing import CHROMIUM, CHROMIUM_ARGS
from hkllm.serve.testing import LiveServer, ScriptedEngine
from tests.serve.conftest import engine, model_dir  # noqa: F401  (fixtures reused)


class DocumentEngine(ScriptedEngine):
    """Answers by what the prompt asks: a draft's paragraphs, a citation with a true quote,
    nothing at all ("EMPTY" in the request), or an engine failure part-way ("FAIL")."""

    name = "scripted"

    def __init__(self, delay: float = 0.02):
        super().__init__(piece=3, delay=delay)

    def answer(self, text: str) -> str:
        if "EMPTY" in text:
            return ""
        if m := re.search(r"^\[1\] (.+)$", text, re.M):   # ask: quote passage [1] truly, once falsely; cite a [7] never given
            quote = re.split(r"[，。：；,.:;]", m.group(1).strip())[0][:12]
            return f"根據文件，「{quote}」[1]。另有「這句不在文件之內」[1]。另見[7]。"
        if "摘要" in text or "Summar" in text or "summar" in text:
            return "本文件說明預約及收費安排。"
        return "就你的查詢，現回覆如下。\n本署已安排人員跟進。\n如有查詢，請致電 2835 1234。"

    async def chat(self, messages, params, stream=True):
        from hkllm.serve.contract import Generation

        self.seen.append(messages)
        whole = "\n".join(m["content"] for m in messages)
        events = self._events(self.answer(whole), params)
        return Generation(len(whole) // 2, _fail_after(events, 2) if "FAIL" in whole else events)


async def _fail_after(events, n: int):
    """The engine's events, then an engine failure after n of them (as an engine reports one)."""
    from hkllm.serve.contract import ErrorEvent

    async with contextlib.aclosing(events):
        async for i, ev in _enumerate(events):
            if i == n:
                yield ErrorEvent(message="engine error: RuntimeError: scripted failure", completion_tokens=n)
                return
            yield ev


async def _enumerate(events):
    i = 0
    async for ev in events:
        yield i, ev
        i += 1


@pytest.fixture
def app_server(tmp_path):
    """app_server(engine=None, **settings) → a LiveServer with 港文通 mounted (no auth unless asked)."""
    from hkllm.app.web import mount
    from hkllm.serve.app import Settings, build_app

    servers = []

    def start(engine_=None, **settings):
        settings.setdefault("state_dir", tmp_path / f"state{len(servers)}")
        settings.setdefault("auth", False)
        settings.setdefault("watermark", False)
        server = LiveServer(build_app(engine_ or DocumentEngine(), Settings(**settings), extensions=(mount,)))
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def browser():
    """One Chromium per test module: Playwright's sync API keeps an event loop marked running in
    this thread while it is started, which would break asyncio.run() in the tests that follow."""
    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium fonts-noto-cjk; make test does it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _page(browser, bypass_csp: bool):
    context = browser.new_context(locale="zh-HK", accept_downloads=True, bypass_csp=bypass_csp)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    p = context.new_page()
    p.set_default_timeout(15000)
    return context, p


@pytest.fixture
def page(browser):
    """A page for journeys. The app's CSP forbids eval, which Playwright's wait_for_function
    needs: these pages bypass it; `strict_page` does not (the app's own script must run under it)."""
    context, p = _page(browser, bypass_csp=True)
    yield p
    context.close()


@pytest.fixture
def strict_page(browser):
    context, p = _page(browser, bypass_csp=False)
    yield p
    context.close()
