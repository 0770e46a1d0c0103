"""港文通 in the browser: what the page adds to the server's time to first token, page weight, first paint.

    .venv/bin/python benchmarks/app.py [--model runs/quickstart/dpo] [--requests 30]

A live `hkllm serve` app (in this process, on loopback) with 港文通 mounted, and Debian's Chromium
driven by Playwright. For each request, the rewrite task is submitted in the page; the page's own
clock marks the click and the first answer text appearing in the output (a MutationObserver),
and the server's audit row gives its TTFT (from the request entering the gateway to the first
token). Browser TTFT − server TTFT is what the app adds: the route, the SSE framing, fetch's
stream reader and the DOM update (target p95 < 50 ms). Page weight: the bytes of the app's JS and
CSS (target < 60 KB) and of each page's HTML; first contentful paint of each page on loopback.
The model: `--model DIR` (the embedded engine), else a scripted engine answering in 3-character
pieces (the app's cost without a model's).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hkllm.app.testing import CHROMIUM, CHROMIUM_ARGS
from hkllm.app.web import HERE, mount
from hkllm.serve.app import Settings, build_app
from hkllm.serve.testing import LiveServer, ScriptedEngine

PAGES = ["/app", "/app/draft", "/app/rewrite", "/app/translate", "/app/summarize", "/app/ask", "/app/docs"]
TEXTS = ["我哋聽日去飲茶，你嚟唔嚟？", "佢琴日冇返工，因為發燒。", "呢份文件要喺下個禮拜交。", "唔該你幫我影印多三份。"]
WATCH = """() => {
  window.__t = {};
  const out = document.querySelector('[data-output]');
  document.querySelector('form.task').addEventListener('submit', () => { window.__t = {click: performance.now()}; }, true);
  new MutationObserver(() => { if (!window.__t.first && out.textContent.length) window.__t.first = performance.now(); })
    .observe(out, {childList: true, characterData: true, subtree: true});
}"""


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a model folder for the embedded engine")
    ap.add_argument("--requests", type=int, default=30)
    args = ap.parse_args()
    if not CHROMIUM:
        sys.exit("needs Debian's chromium: apt-get install chromium fonts-noto-cjk")
    from playwright.sync_api import sync_playwright

    if args.model:
        from hkllm.serve.engine import LocalEngine
        engine, label = LocalEngine(args.model, max_batch=8), str(args.model)
    else:
        engine, label = ScriptedEngine(piece=3, delay=0.01), "scripted (3 characters per piece, 10 ms apart)"
    state = Path(tempfile.mkdtemp())
    server = LiveServer(build_app(engine, Settings(state_dir=state, auth=False, watermark=True, cache=False),
                                  extensions=(mount,)))
    weights = {f"static/{p.name}": p.stat().st_size for p in sorted((HERE / "static").iterdir())}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_context(bypass_csp=True).new_page()   # bypass: the page's evaluate() needs eval
            paints = {}
            for path in PAGES:
                response = page.goto(server.url + path)
                weights[path] = len(response.body())
                try:                                     # paint timing arrives a frame after load
                    page.wait_for_function("performance.getEntriesByName('first-contentful-paint').length", timeout=3000)
                except Exception:
                    pass
                paints[path] = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0]?.startTime"
                                             " ?? null")
            page.goto(server.url + "/app/rewrite")
            page.evaluate(WATCH)
            browser_ttft = []
            for i in range(args.requests):
                page.fill("#text", TEXTS[i % len(TEXTS)] + f"（{i}）")
                page.click("form.task button[type=submit]")
                page.wait_for_function("window.__t.first && document.querySelector('[data-output]')"
                                       ".getAttribute('aria-busy') === 'false'", timeout=60000)
                t = page.evaluate("window.__t")
                browser_ttft.append(t["first"] - t["click"])
                time.sleep(0.05)
            browser.close()
    finally:
        server.stop()
    time.sleep(0.5)                                       # the audit writer's last rows
    db = sqlite3.connect(state / "audit.sqlite")
    server_ttft = [r[0] for r in db.execute("SELECT ttft_ms FROM requests WHERE endpoint = 'chat' ORDER BY seq")]
    server_ttft = server_ttft[-len(browser_ttft):]
    added = [b - s for b, s in zip(browser_ttft, server_ttft)]
    js_css = sum(v for k, v in weights.items() if k.startswith("static/"))
    print(f"model: {label}; {len(added)} rewrite requests, one at a time, streamed; watermark on")
    print("\n| | p50 ms | p95 ms |\n|---|---:|---:|")
    for name, xs in (("browser TTFT (click → first text on the page)", browser_ttft),
                     ("server TTFT (audit row)", server_ttft), ("added by the app (browser − server)", added)):
        print(f"| {name} | {statistics.median(xs):.1f} | {percentile(xs, 0.95):.1f} |")
    print(f"\nTarget: added p95 < 50 ms: {'PASS' if percentile(added, 0.95) < 50 else 'FAIL'}")
    print("\n| asset | bytes | first contentful paint ms |\n|---|---:|---:|")
    for k, v in weights.items():
        paint = paints.get(k)
        print(f"| {k} | {v:,} | {'' if paint is None else f'{paint:.0f}'} |")
    print(f"\nJS + CSS: {js_css:,} bytes (target < 60 KB: {'PASS' if js_css < 60 * 1024 else 'FAIL'})")


if __name__ == "__main__":
    main()
