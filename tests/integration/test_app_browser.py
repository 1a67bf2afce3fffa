"""The demo page in a real headless browser (Debian chromium driven by Playwright): type, Generate, read panels.

Needs /usr/bin/chromium (`make browser`); Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPT = "pub fn parse(input: &str) -> Result<"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian chromium at /usr/bin/chromium (make browser)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(tmp_path, tiny_checkpoint_factory):
    from apps.demo import launch

    runs = tmp_path / "runs"
    for recipe in ("engram-v1", "baseline-v1"):
        shutil.copytree(tiny_checkpoint_factory(recipe), runs / recipe / "final")
    port = free_port()
    demo = launch(runs, port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_page_generates_side_by_side(app_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[dev]')")
    expect, sync_playwright = sync_api.expect, sync_api.sync_playwright

    shot = tmp_path / "demo.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url, wait_until="load")
            expect(page.get_by_role("button", name="Generate")).to_be_visible(timeout=30_000)
            page.get_by_label("Prompt").fill(PROMPT)
            page.get_by_role("button", name="Generate").click()
            for i in range(2):
                expect(page.locator(f"#panel-{i}-stats")).to_contain_text("tree-sitter:", timeout=30_000)
                expect(page.locator(f"#panel-{i}-header")).to_contain_text("/final")
                expect(page.locator(f"#panel-{i}-code")).to_contain_text(PROMPT)
                expect(page.locator(f"#panel-{i}-stats")).to_contain_text("tok/s")
            expect(page.locator("#panel-2-stats")).to_be_hidden()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
