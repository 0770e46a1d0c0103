"""港文通 in a real browser: Debian's Chromium driven by Playwright (tests/app/conftest.py).

One journey per task, a keyboard-only journey, streaming seen as it arrives, an empty and a
failed answer shown as such, stop, sign-in with CSRF, and axe-core's WCAG 2.1 A/AA scan of every
page. The model is scripted (DocumentEngine) so that what the page must show is known; one
journey runs the embedded engine on the tiny random model.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "data/app/docs/faq_library_booking_yue.txt"
PDF = REPO / "data/demo/pdf/service_pledge.pdf"
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]

LETTER = {"our_ref": "HAD WC/13/25/3", "address": "香港灣仔軒尼詩道130號", "addressee": "陳大文先生",
          "salutation": "陳先生", "subject": "有關灣仔區噪音投訴", "received": "2026-11-20",
          "facts": "本處已派員視察；將與承建商跟進。", "post": "灣仔民政事務專員", "date": "2026-12-01"}


SHOTS = REPO / "runs" / "app-screenshots"      # one per task, for people to look at (not compared)


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def output(page) -> str:
    return page.locator("[data-output]").inner_text()


def wait_status(page, prefix: str = "完成") -> None:
    page.wait_for_function("p => document.querySelector('[data-status]').textContent.startsWith(p)", arg=prefix)


def upload(page, path: Path) -> None:
    page.set_input_files("#file", str(path))
    page.wait_for_function("document.querySelector('[data-upload-status]').textContent.includes('已上載')")


def ask_document(page, server, path: Path, question: str) -> None:
    page.goto(f"{server.url}/app/ask")
    upload(page, path)
    page.fill("#question", question)
    page.click("form.task button[type=submit]")
    wait_status(page)


def axe_violations(page) -> list:
    from axe_playwright_python.sync_playwright import Axe

    result = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG}})
    return [(v["id"], v["help"], [n["target"] for n in v["nodes"]][:3]) for v in result.response["violations"]]


def test_draft_journey_streams_checks_fixes_and_exports_word(app_server, page):
    import docx

    server = app_server()
    page.goto(f"{server.url}/app/draft")
    page.select_option("#template", "letter_reply")
    for name, value in LETTER.items():
        page.fill(f"#letter_reply-{name}", value)
    page.click("form.task button[type=submit]")
    # streaming: text is on the page while the answer is still being written
    page.wait_for_function("document.querySelector('[data-output]').textContent.length > 0 && "
                           "document.querySelector('[data-output]').getAttribute('aria-busy') === 'true'")
    page.wait_for_function("document.querySelector('[data-output]').getAttribute('aria-busy') === 'false'")
    document = output(page)
    assert "HAD WC/13/25/3" in document and "陳先生：" in document and "本署已安排人員跟進" in document
    assert page.locator("[data-checks]").is_visible()
    failures = page.locator("[data-failures] li").all_inner_texts()
    assert failures, "the format check lists its findings (or says all passed)"
    fix = page.locator("[data-failures] button")
    if fix.count():
        before = output(page)
        fix.first.click()
        page.wait_for_function("t => document.querySelector('[data-output]').textContent !== t", arg=before)
    assert [page.locator(b).inner_text() for b in ("[data-stop]", "[data-copy]", "[data-export]")] == \
        ["停止", "複製", "匯出 Word (.docx)"]
    shot(page, "draft")
    with page.expect_download() as download:
        page.click("[data-export]")
    data = Path(download.value.path()).read_bytes()
    text = "\n".join(p.text for p in docx.Document(io.BytesIO(data)).paragraphs)
    assert "HAD WC/13/25/3" in text and "本署已安排人員跟進" in text


def test_rewrite_journey_under_the_strict_csp_and_translate(app_server, strict_page, page):
    from playwright.sync_api import expect

    server = app_server()
    blocked = []
    strict_page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    strict_page.goto(f"{server.url}/app/rewrite?lang=en")
    assert strict_page.locator("html").get_attribute("lang") == "en-HK"
    strict_page.fill("#text", "我哋聽日去飲茶，你嚟唔嚟？")
    strict_page.click("form.task button[type=submit]")
    expect(strict_page.locator("[data-status]")).to_have_text(re.compile("^Done"))
    assert "本署已安排人員跟進" in output(strict_page) and blocked == []
    shot(strict_page, "rewrite")
    engine_saw = server.app.state.engine.seen[-1]
    assert any("我哋聽日去飲茶" in m["content"] for m in engine_saw)

    page.goto(f"{server.url}/app/translate")
    page.select_option("#source", "yue")
    page.select_option("#target", "en")
    page.fill("#text", "唔該你幫我影印呢份文件。")
    page.click("form.task button[type=submit]")
    wait_status(page)
    page.click("[data-copy]")
    assert page.evaluate("navigator.clipboard.readText()") == output(page)
    shot(page, "translate")


def test_summarize_journey_uploads_and_reports_progress(app_server, page, tmp_path):
    server = app_server()
    page.goto(f"{server.url}/app/summarize")
    upload(page, DOC)
    assert page.locator("#doc option:checked").inner_text() == DOC.name
    page.click("form.task button[type=submit]")
    wait_status(page)
    assert output(page) == "本文件說明預約及收費安排。"
    shot(page, "summarize")
    # an unreadable file is refused with a message, not indexed
    bad = tmp_path / "garbled.txt"
    bad.write_bytes(bytes(range(1, 32)) * 40)
    page.set_input_files("#file", str(bad))
    page.wait_for_function("!document.querySelector('[data-upload-error]').hidden")
    assert "無法讀取" in page.locator("[data-upload-error]").inner_text()


def test_ask_journey_on_a_pdf_cites_opens_passages_and_checks_quotes(app_server, page):
    from hkllm.app.retrieval import extract_text

    server = app_server()
    ask_document(page, server, PDF, "投訴幾耐會有回覆？")
    items = page.locator("[data-cite-list] li").all_inner_texts()
    assert len(items) == 3 and "沒有此出處" in items[2]                # [7] was never given
    assert "引文見於原文" in items[0] and "引文不在原文中" in items[1]   # a true and a false quote of [1]
    shot(page, "ask")
    link = page.locator("[data-output] a[data-citation='1']").first
    href = link.get_attribute("href")
    link.click()
    page.wait_for_url(re.compile(r"/app/passage/\d+"))
    passage = page.locator("#passage").inner_text()
    assert passage and passage.strip() in extract_text(PDF)
    shot(page, "ask-passage")
    # another browser (another anonymous owner) cannot open it
    other = page.context.browser.new_context()
    try:
        p2 = other.new_page()
        p2.goto(f"{server.url}/app")
        assert p2.goto(server.url + href).status == 404
    finally:
        other.close()


def test_keyboard_only_journey(app_server, page):
    server = app_server()
    page.goto(f"{server.url}/app")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    for _ in range(12):                                   # the menu is in reading order: reach 改寫
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "改寫":
            break
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/app/rewrite"))
    page.keyboard.press("Tab")                            # skip link
    while page.evaluate("document.activeElement.id") != "text":
        page.keyboard.press("Tab")
    page.keyboard.type("佢哋琴日冇返工。")
    while page.evaluate("document.activeElement.type") != "submit":
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    wait_status(page)
    while page.evaluate("document.activeElement.dataset.copy === undefined"):
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    wait_status(page, "已複製")


def test_empty_failed_and_stopped_answers_are_shown_as_such(app_server, page):
    from tests.app.conftest import DocumentEngine

    engine = DocumentEngine(delay=0.15)
    server = app_server(engine)
    page.goto(f"{server.url}/app/rewrite")
    page.fill("#text", "EMPTY")
    page.click("form.task button[type=submit]")
    page.wait_for_function("!document.querySelector('[data-error]').hidden")
    assert "沒有回應" in page.locator("[data-error]").inner_text()
    page.fill("#text", "FAIL")
    page.click("form.task button[type=submit]")
    page.wait_for_function("!document.querySelector('[data-error]').hidden")
    assert "出錯了" in page.locator("[data-error]").inner_text()
    page.fill("#text", "慢慢寫")
    page.click("form.task button[type=submit]")
    page.wait_for_function("document.querySelector('[data-output]').textContent.length > 0")
    page.click("[data-stop]")
    assert page.locator("[data-status]").inner_text() == "已停止"
    page.wait_for_timeout(500)
    assert engine.closed_early >= 1                       # the server stopped generating


def test_sign_in_with_a_key_and_csrf(app_server, page, tmp_path):
    from hkllm.serve.keys import KeyStore

    state = tmp_path / "signed"
    server = app_server(state_dir=state, auth=True)
    _, secret = KeyStore(state / "keys.sqlite").create("officer")
    page.goto(f"{server.url}/app/draft")
    page.wait_for_url(re.compile(r"/app/signin"))
    page.fill("#key", "not-a-key")
    page.click("form.signin button")
    assert "金鑰無效" in page.locator("[role=alert]").inner_text()
    page.fill("#key", secret)
    page.click("form.signin button")
    page.wait_for_url(re.compile(r"/app\?lang="))
    cookie = next(c for c in page.context.cookies() if c["name"] == "hkllm_app")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and secret not in cookie["value"]
    assert secret not in page.content()
    # an API call without the page's CSRF token is refused, with the session cookie or not
    status = page.evaluate("fetch('/app/api/run', {method: 'POST', body: '{}'}).then(r => r.status)")
    assert status == 403
    page.click("text=登出")
    page.wait_for_url(re.compile(r"/app/signin"))


def test_the_embedded_engine_behind_the_app(app_server, page, engine):
    """The tiny random model through the real engine: text streams and ends (whatever it says)."""
    server = app_server(engine)
    page.goto(f"{server.url}/app/translate")
    page.fill("#text", "The library opens at ten.")
    page.select_option("#target", "zh-hant")
    page.click("form.task button[type=submit]")
    page.wait_for_function("document.querySelector('[data-output]').getAttribute('aria-busy') === 'false' && "
                           "document.querySelector('[data-status]').textContent !== '生成中…'", timeout=60000)
    assert output(page) or page.locator("[data-error]").is_visible()


@pytest.mark.parametrize("path", ["/app", "/app/draft", "/app/rewrite", "/app/translate", "/app/summarize", "/app/ask",
                                  "/app/docs", "/app/draft?lang=en", "/app/ask?lang=en"])
def test_every_page_passes_axe_wcag21_aa_and_loads_nothing_foreign(app_server, strict_page, path):
    server, page = app_server(), strict_page
    blocked, requests = [], []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server.url + path)
    assert axe_violations(page) == []
    assert blocked == [] and all(u.startswith(server.url) for u in requests)


def test_pages_after_a_result_pass_axe(app_server, page):
    server = app_server()
    ask_document(page, server, DOC, "點樣預約？")
    assert axe_violations(page) == []
    page.goto(f"{server.url}/app/docs")
    assert axe_violations(page) == []
    page.click("[data-delete]")
    page.wait_for_function("document.querySelector('[data-status]').textContent === '已刪除'")
