"""Headless Chromium for the report tests (Debian's chromium + chromedriver)."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@contextlib.contextmanager
def chrome(profile: Path, width: int = 1280, height: int = 900):
    """A headless Chromium driven by selenium; fails in CI when it is missing."""
    chromium, driver_path = _chromium(), shutil.which("chromedriver")
    if not (chromium and driver_path):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium and chromedriver are required in CI (.ci/run installs them)")
        pytest.skip(
            "chromium/chromedriver not installed: apt-get install chromium chromium-driver "
            "(this test fails instead of skipping when CI=true)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def severe_console_messages(driver) -> list:
    """Console errors (SEVERE) since the last call."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def remote_requests(driver) -> list[str]:
    """Every resource the page requested that is not a local file."""
    names = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])"
    )
    return [n for n in names if not n.startswith(("file://", "data:", "about:"))]


def loaded_bytes(driver, root: Path) -> int:
    """Bytes of the page and of the images the browser has loaded so far."""
    srcs = driver.execute_script(
        "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0)"
        ".map(i => i.getAttribute('src'))"
    )
    page = root / "index.html"
    return page.stat().st_size + sum((root / s).stat().st_size for s in set(srcs))


def open_everything_and_wait(driver, timeout: float = 60, open_details: bool = True) -> None:
    """Load every image now (not lazily), optionally open every <details>, and wait."""
    if open_details:
        driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
    driver.execute_script("document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
    deadline = time.time() + timeout
    while time.time() < deadline:
        pending = driver.execute_script(
            "return Array.from(document.images).filter(i => !i.complete).length"
        )
        if not pending:
            # Decoded too: a full-page screenshot paints only decoded images.
            driver.set_script_timeout(timeout)
            driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "Promise.all(Array.from(document.images).map(i => i.decode().catch(() => 0)))"
                ".then(() => done(true));"
            )
            return
        time.sleep(0.2)
    raise AssertionError(f"{pending} images still loading after {timeout} s")


def full_page_screenshot(driver) -> np.ndarray:
    """The whole page (beyond the viewport) as a (height, width) grey array."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # a tall page is the point, not a decompression bomb
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("L")
    return np.asarray(image, dtype=np.float64)


def blank_bands(image: np.ndarray, bands: int = 20) -> list[int]:
    """Indices of horizontal bands of the screenshot with no visible content."""
    content = image[:, int(image.shape[1] * 0.2) :]  # right of the fixed navigation
    return [i for i, band in enumerate(np.array_split(content, bands)) if band.std() < 1.0]


def unpainted_images(driver, screenshot: np.ndarray) -> list[str]:
    """Images whose area in a full-page screenshot is a flat colour (not painted)."""
    # Only images the page shows: those in a closed <details> are laid out but hidden.
    rects = driver.execute_script(
        "return Array.from(document.images).filter(i => i.checkVisibility())"
        ".map(i => { const r = i.getBoundingClientRect();"
        " return [i.getAttribute('src'), r.left + scrollX, r.top + scrollY, r.width, r.height];"
        "})"
    )
    flat = []
    for src, x, y, w, h in rects:
        if w < 8 or h < 8 or y + h > screenshot.shape[0]:
            continue
        area = screenshot[int(y) + 2 : int(y + h) - 2, int(x) + 2 : int(x + w) - 2]
        if area.size and area.std() < 1.0:
            flat.append(src)
    return flat
