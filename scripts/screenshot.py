"""Redraw the README's playground screenshot from a running server (``make serve`` first).

    .venv/bin/python scripts/screenshot.py                       # http://127.0.0.1:8000 -> docs/img/playground.png
    .venv/bin/python scripts/screenshot.py --url http://127.0.0.1:8077 --digit 2 --seed 3

The scene: the playground's "Race two models" tab, the served block model against the AR-SSM on the
top half of a test digit, run one after the other (fair times), in headless Chromium (the system's:
Playwright cannot download browsers here).  The race runs twice and the second is shown (the first
warms the models up); the picture is what a user sees, times included, so run it on an idle machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
WAIT_MS = 120_000  # the AR lane draws 392 tokens one by one


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--a", default="mnist-vssm-blocks", help="lane A's model")
    p.add_argument("--b", default="mnist-ar-ssm", help="lane B's model")
    p.add_argument("--digit", type=int, default=2, help="the test digit whose top half is the prompt")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "playground.png")
    args = p.parse_args()
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        raise SystemExit("chromium not found (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1110})
        page.goto(args.url + "/")
        expect(page.locator("#model option")).not_to_have_count(0, timeout=WAIT_MS)
        page.select_option("#model", args.a)
        page.click(f"#digits button[data-digit='{args.digit}']")
        page.uncheck("#seed-random")
        page.fill("#seed", str(args.seed))
        page.click("#tab-race")
        page.select_option("#race-a", args.a)
        page.select_option("#race-b", args.b)
        page.select_option("#race-mode", "sequential")
        for _ in range(2):  # the first race warms both models up (kernels, packed weights): the second is shown
            page.click("#race")
            for lane in ("#lane-a", "#lane-b"):
                expect(page.locator(lane)).to_have_attribute("data-state", "done", timeout=WAIT_MS)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
