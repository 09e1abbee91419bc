"""The web front end in a real browser: ``labelfree web`` served, headless Chromium driving the page.

Marked ``browser``: skipped where no Chromium is installed (``.ci/run`` installs Debian's).
Screenshots go to ``$LABELFREE_ARTIFACTS`` (default ``test-artifacts/web`` in the checkout).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="needs the web extra (pip install -e '.[web]')")
playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (test extra)")

from labelfree.demo import SAMPLE  # noqa: E402
from labelfree.io import read_image  # noqa: E402
from labelfree.web.process import CHROMIUM_ARGS, WebServer  # noqa: E402

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("LABELFREE_CHROMIUM") or shutil.which("chromium") or ""
JOB_TIMEOUT_MS = 120_000


def _artifacts() -> Path:
    folder = Path(os.environ.get("LABELFREE_ARTIFACTS", ROOT / "test-artifacts" / "web"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not CHROMIUM:
        pytest.skip("no Chromium (apt-get install chromium, or set LABELFREE_CHROMIUM)")
    exports = tmp_path_factory.mktemp("exports")
    log = _artifacts() / "server.log"
    with WebServer(outputDir=exports, log=log) as running:
        yield running.url, exports


@pytest.fixture(scope="module")
def page(server):
    url, _ = server
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        page.goto(url)
        _waitForMessage(page, "Loaded")
        yield page
        browser.close()


def _waitForMessage(page, text: str, timeout: int = JOB_TIMEOUT_MS) -> None:
    page.wait_for_function(
        "text => (document.querySelector('#lf-message')?.innerText || '').includes(text)",
        arg=text,
        timeout=timeout,
    )


def _axialFrame(page):
    return page.locator(".remote-controlled-area img").first


def _waitForNewFrame(page, previousSrc: str) -> str:
    page.wait_for_function(
        "src => document.querySelector('.remote-controlled-area img').src !== src",
        arg=previousSrc,
        timeout=10_000,
    )
    return _axialFrame(page).get_attribute("src")


def test_apply_slider_click_and_download_in_the_page(page, server):
    _, exports = server
    page.screenshot(path=str(_artifacts() / "01_loaded.png"))

    page.click("#lf-apply")
    _waitForMessage(page, "granularity levels")
    page.wait_for_timeout(500)
    page.screenshot(path=str(_artifacts() / "02_segmented.png"))
    levels = page.evaluate("() => window.trame.state.get('levelCount')")
    assert levels >= 3

    # The granularity slider: keyboard on its thumb, as a user tabbing to it would.
    src = _axialFrame(page).get_attribute("src")
    thumb = page.locator(".lf-level .v-slider-thumb")
    thumb.focus()
    thumb.press("ArrowRight")
    page.wait_for_function("() => window.trame.state.get('level') === 1", timeout=10_000)
    assert page.evaluate("() => window.trame.state.get('clusters')") > 0
    _waitForNewFrame(page, src)
    page.screenshot(path=str(_artifacts() / "03_level2.png"))

    # A click in the middle of the axial view makes a segment.
    box = page.locator(".remote-controlled-area").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.45)
    _waitForMessage(page, "Added segment", timeout=10_000)
    assert page.locator(".v-chip").count() == 1
    page.screenshot(path=str(_artifacts() / "04_segment.png"))

    page.click("#lf-export-labelmap-nrrd")
    link = page.locator("a[download]").first
    link.wait_for(timeout=10_000)
    with page.expect_download() as download:
        link.click()
    saved = _artifacts() / download.value.suggested_filename
    download.value.save_as(saved)
    labels = read_image(saved)
    assert labels.array.shape == read_image(SAMPLE).array.shape
    level = np.unique(labels.array)
    assert len(level[level > 0]) == page.evaluate("() => window.trame.state.get('clusters')")
    assert (exports / saved.name).is_file()


def test_landmarks_in_the_page(page):
    page.fill("#lf-keep", "10")
    page.click("#lf-detect")
    _waitForMessage(page, "Placed 10 landmarks")
    page.screenshot(path=str(_artifacts() / "05_landmarks.png"))
    page.click("#lf-export-landmarks-mrk-json")
    page.locator("a[download]", has_text=".mrk.json").wait_for(timeout=10_000)


def test_uploads_of_a_volume_and_a_landmark_model(page, tmp_path):
    from labelfree.modelfile import bundled_model_path

    volume = tmp_path / "uploaded.nrrd"
    volume.write_bytes(SAMPLE.read_bytes())
    inputs = page.locator("input[type=file]")
    inputs.nth(0).set_input_files(str(volume))
    _waitForMessage(page, "Loaded uploaded.nrrd", timeout=30_000)
    assert page.evaluate("() => window.trame.state.get('levelCount')") == 0  # results cleared

    inputs.nth(1).set_input_files(str(bundled_model_path("landmarks_3d.pt")))
    page.wait_for_function(
        "() => (window.trame.state.get('landmarkModel') || '').endsWith('.pt')", timeout=30_000
    )
    page.fill("#lf-keep", "5")
    page.click("#lf-detect")
    _waitForMessage(page, "Placed 5 landmarks")
