"""The web front end as a user meets it: start-up, Apply, the slider's round trip, a click.

Serves ``labelfree web`` (the bundled 2 mm sample) and drives it with headless Chromium
(Playwright, Debian's ``chromium``), one run:

- server start: from the process start to the page answering;
- page ready: from navigation to the volume shown ("Loaded" in the status line);
- Apply: from the click to the label map shown (CUTS on the sample, the page's defaults);
- slider round trip: from a key press on the granularity slider to a new frame of the axial
  view in the page (state change -> server -> level switch -> render -> encoded frame ->
  image), over ``--moves`` moves, min / median / max;
- click to segment: from a click in the axial view to the status line naming the segment.

- Detect: from the click to the landmarks placed (bundled 3-D model).

``--screenshot FILE`` saves the page after the click, and ``FILE``'s stem + ``_landmarks.png``
after Detect (the README's screenshots).

Usage: python bench/web_slider.py [--moves 20] [--screenshot Resources/Screenshots/web_cuts.png]
(about 40 s on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import OUT, fmt_table, machine

from labelfree.web.process import CHROMIUM_ARGS, WebServer

MESSAGE = "text => (document.querySelector('#lf-message')?.innerText || '').includes(text)"
NEW_FRAME = "src => document.querySelector('.remote-controlled-area img').src !== src"
AXIAL_SRC = "() => document.querySelector('.remote-controlled-area img').src"


def slider_round_trips(page, moves: int) -> list[float]:
    """Seconds from a key press on the slider thumb to the next axial frame, per move."""
    thumb = page.locator(".lf-level .v-slider-thumb")
    thumb.focus()
    levels = page.evaluate("() => window.trame.state.get('levelCount')")
    times, key = [], "ArrowRight"
    for _ in range(moves):
        level = page.evaluate("() => window.trame.state.get('level')")
        if level >= levels - 1:
            key = "ArrowLeft"
        elif level <= 0:
            key = "ArrowRight"
        src = page.evaluate(AXIAL_SRC)
        start = time.perf_counter()
        thumb.press(key)
        page.wait_for_function(NEW_FRAME, arg=src, timeout=20_000)
        times.append(time.perf_counter() - start)
        page.wait_for_timeout(200)  # let trailing frames of this move arrive first
    return times


def save_small_png(png: bytes, path: Path) -> None:
    """Save a screenshot with a 128-colour palette (a few times smaller, same look)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        print("needs Chromium: apt-get install chromium")
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, WebServer(outputDir=tmp) as server:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
            page = browser.new_page(viewport={"width": 1200, "height": 780})
            start = time.perf_counter()
            page.goto(server.url)
            page.wait_for_function(MESSAGE, arg="Loaded", timeout=60_000)
            ready = time.perf_counter() - start

            start = time.perf_counter()
            page.click("#lf-apply")
            page.wait_for_function(MESSAGE, arg="granularity levels", timeout=300_000)
            apply = time.perf_counter() - start
            page.wait_for_timeout(500)
            trips = slider_round_trips(page, args.moves)

            box = page.locator(".remote-controlled-area").first.bounding_box()
            start = time.perf_counter()
            page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.45)
            page.wait_for_function(MESSAGE, arg="Added segment", timeout=20_000)
            click = time.perf_counter() - start
            if args.screenshot:
                page.wait_for_timeout(500)
                save_small_png(page.screenshot(), args.screenshot)
            start = time.perf_counter()
            page.click("#lf-detect")
            page.wait_for_function(MESSAGE, arg="Placed", timeout=120_000)
            detect = time.perf_counter() - start
            if args.screenshot:
                page.wait_for_timeout(500)
                landmarks = args.screenshot.with_name(args.screenshot.stem + "_landmarks.png")
                save_small_png(page.screenshot(), landmarks)
            browser.close()

    ms = [1000 * t for t in trips]
    rows = [
        ["server start", f"{server.startSeconds:.1f} s", ""],
        ["page ready (volume shown)", f"{ready:.1f} s", ""],
        ["Apply to label map shown", f"{apply:.1f} s", ""],
        [
            f"slider round trip ({len(ms)} moves)",
            f"{statistics.median(ms):.0f} ms",
            f"min {min(ms):.0f} / max {max(ms):.0f} ms",
        ],
        ["click to segment", f"{1000 * click:.0f} ms", ""],
        ["Detect to landmarks shown", f"{detect:.1f} s", ""],
    ]
    report = f"{machine()}\n" + fmt_table(rows, ["step", "median / time", "spread"])
    print(report)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "web_slider.txt").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
