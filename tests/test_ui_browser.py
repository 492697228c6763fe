"""End to end in headless Chromium: run a prompt, look at the tree, compare two runs in History."""
from __future__ import annotations

import os
import re
import socket
import time

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(tmp_path, monkeypatch):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium to run the browser test)")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    monkeypatch.setenv("WORKBENCH_DB", str(tmp_path / "browser.sqlite"))
    from ui.app import launch

    port = _free_port()
    demo = launch(port=port, default_target="tiny-random", prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def _status_contains(page, text: str) -> None:
    page.wait_for_function(
        "t => { const e = document.querySelector('#pg-status'); return e && e.innerText.includes(t); }",
        arg=text, timeout=TIMEOUT_MS)


def _pick(page, elem_id: str, option: str) -> None:
    """Choose an option of a Gradio dropdown."""
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option, exact=True).first.click()


def test_run_look_compare(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    t0 = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(app_url)
            page.wait_for_selector("#pg-run")
            # the models and the speculative method
            _pick(page, "pg-method", "Draft model, chain › Speculative decoding (draft model)")  # family › name
            expect(page.locator("#pg-method-info")).to_contain_text("lossless")
            expect(page.locator("#pg-method-info")).to_contain_text("Pays when")
            # the spec, marked when it is the fastest precision measured here
            expect(page.locator("#pg-draft input")).to_have_value(re.compile(r"^tiny-random:bf16( · fastest here)?$"))
            expect(page.locator("#pg-backend input")).to_have_value("eager")  # the Backend choice, eager by default

            # an error first: the page says so and keeps working
            page.fill("#pg-prompt textarea", "")
            page.click("#pg-run")
            _status_contains(page, "prompt is empty")

            page.fill("#pg-prompt textarea", "The quick brown fox")
            page.click("#pg-run")
            _status_contains(page, "Done")
            assert page.locator("#pg-output .wb-tok").count() == 48
            assert page.locator("#pg-output .wb-tok-draft").count() > 0
            title = page.locator("#pg-output .wb-tok-draft").first.get_attribute("title")
            assert title.startswith("step ") and "q=" in title and "p=" in title
            expect(page.locator("#pg-cards .wb-card")).to_have_count(7)
            expect(page.locator('#pg-cards [data-metric="backend"] .wb-card-value')).to_have_text("eager")
            expect(page.locator("#pg-run-id")).to_contain_text("Run id")
            page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)

            # a second run: the plain-decoding baseline, and the speedup appears
            page.click("#pg-baseline")
            _status_contains(page, "Baseline run")
            expect(page.locator('#pg-cards [data-metric="speedup"] .wb-card-value')).to_contain_text("×")
            expect(page.locator('#pg-cards [data-metric="speedup"]')).to_contain_text("baseline just now")
            expect(page.locator('#pg-cards [data-metric="acceptance_rate"]')).to_contain_text(
                "drafted positions on the verified path accepted")

            # the draft tree of the speculative run
            page.get_by_role("tab", name="Draft tree").click()
            expect(page.locator("#tree-info")).to_contain_text("Step 1")
            page.wait_for_selector("#tree-plot .js-plotly-plot .scatterlayer")
            expect(page.locator("#tree-plot")).to_contain_text("accepted")
            page.screenshot(path=str(tmp_path / "tree.png"), full_page=True)

            # History: both runs, select them, compare, see the diff
            page.get_by_role("tab", name="History & compare").click()
            expect(page.locator("#hist-count")).to_contain_text("2 runs")
            expect(page.locator("#hist-table .virtual-row")).to_have_count(2)
            page.click('#hist-table [data-testid="cell-0-2"]')  # a click on a row selects that run
            expect(page.locator("#hist-select")).to_contain_text("autoregressive")
            page.click('#hist-table [data-testid="cell-1-2"]')
            expect(page.locator("#hist-select")).to_contain_text("speculative")
            page.click("#hist-compare")
            expect(page.locator("#hist-diff .wb-diff")).to_be_visible()
            expect(page.locator("#hist-diff")).to_contain_text("token-identical")
            expect(page.locator("#hist-metrics")).to_contain_text("speedup vs plain decoding")
            expect(page.locator("#hist-metrics")).to_contain_text("plain-decoding baseline")  # the last rows show
            page.screenshot(path=str(tmp_path / "history.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert (tmp_path / "history.png").stat().st_size > 0
    print(f"browser test took {time.monotonic() - t0:.0f} s; screenshots in {tmp_path}")
