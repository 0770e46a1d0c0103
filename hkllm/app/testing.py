"""港文通 in a real browser, for tests and benchmarks: Debian's Chromium driven by Playwright.

    from playwright.sync_api import sync_playwright
    from hkllm.app.testing import CHROMIUM, CHROMIUM_ARGS
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

Playwright's own browser download needs the internet; `apt-get install chromium fonts-noto-cjk`
does not (the Makefile runs it when it can). CHROMIUM is None where it is missing.
"""

from __future__ import annotations

import shutil

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# headless, as root in a container (no sandbox, no GPU, a small /dev/shm), and quiet on the network
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--no-first-run"]
