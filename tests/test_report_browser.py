"""The HTML report in a real headless Chromium: it loads cleanly, every figure shows, the page is not blank.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); skipped with the
reason where they are absent. The driver is used as installed: selenium is never allowed
to download one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.report_fixtures import REAL_CPU, SYNTHETIC, rendered_report

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="headless Chromium not installed (apt-get install chromium chromium-driver; .ci/run does)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(browser) -> Path:  # type: ignore[no-untyped-def]
    index = rendered_report(SYNTHETIC, REAL_CPU) / "index.html"
    browser.get(index.as_uri())
    # get() can return before the load event on a busy machine (readyState still "loading",
    # seen once in CI): wait for it, so every test reads the finished page.
    deadline = time.monotonic() + 60
    while browser.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
        time.sleep(0.1)
    return index


def test_page_loads_without_console_errors(browser, page: Path) -> None:  # type: ignore[no-untyped-def]
    assert browser.execute_script("return document.readyState") == "complete"
    assert browser.title.startswith("attnbench report")
    errors = [e for e in browser.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")]
    assert errors == []


def test_every_image_loads(browser, page: Path) -> None:  # type: ignore[no-untyped-def]
    images = browser.execute_script(
        "return Array.from(document.images)"
        ".map(i => ({alt: i.alt, done: i.complete, w: i.naturalWidth, h: i.naturalHeight}))"
    )
    assert len(images) == len(list((page.parent / "figures").glob("*.svg")))
    broken = [i["alt"] for i in images if not (i["done"] and i["w"] > 0 and i["h"] > 0)]
    assert broken == []


def test_screenshot_is_not_blank(browser, page: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image, ImageStat

    # Scroll to the first figure so the shot holds a plot, not only the header.
    browser.execute_script("document.querySelector('figure').scrollIntoView()")
    shot = tmp_path / "shot.png"
    assert browser.save_screenshot(str(shot))
    image = Image.open(shot).convert("L")
    assert image.size[0] >= 1000
    stats = ImageStat.Stat(image)
    assert stats.stddev[0] > 20  # a blank or single-colour page has ~0
    assert sum(1 for count in image.histogram() if count) > 50  # lines, text and bands: many grey levels
