"""The viewer in a real headless browser: Debian's chromium driven by Selenium through chromedriver.

``her2score serve`` runs as a subprocess on a free loopback port over a folder of synthetic slides with
a tiny checkpoint. The test picks a slide, scores it, and checks what is drawn: the OpenSeadragon canvas
has tissue pixels, each overlay toggle changes the pixels, the score shows a category; then an upload
is scored and shown. The server wants a token, so every request of the page (tiles included) carries
it. Skipped when chromium, its driver, Selenium or the vendored OpenSeadragon is missing, unless ``CI``
is set: CI (``.ci/run`` installs chromium with apt-get) must run it.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
VENDOR = Path(__file__).resolve().parents[2] / "src/her2score/serve/static/vendor/openseadragon"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1200,800", "--force-device-scale-factor=1",
]  # fmt: skip

TOKEN = "viewer-test-token"

pytestmark = pytest.mark.slow


def _require(ok: bool, what: str) -> None:
    """Skip locally when ``what`` is missing; in CI (``$CI`` set) fail, loudly."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {what}", pytrace=False)
    pytest.skip(what)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[tuple[str, Path]]:
    """``her2score serve`` on a folder with two synthetic IHC images; yields (base URL, upload file)."""
    import urllib.request

    from her2score.data.synth import render_pair

    root = tmp_path_factory.mktemp("browser")
    folder = root / "slides"
    folder.mkdir()
    _, ihc, _ = render_pair("3+", size=(512, 512), seed=5)
    Image.fromarray(ihc).save(folder / "case-3plus.png")
    _, other, _ = render_pair("1+", size=(384, 384), seed=6)
    upload = root / "to-upload.png"
    Image.fromarray(other).save(upload)
    port = _free_port()
    log = (root / "serve.log").open("w")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src, "HER2SCORE_TOKEN": TOKEN}  # the page must carry it everywhere
    cmd = [sys.executable, "-m", "her2score", "serve", "--model", str(tiny_model), "--data-dir", str(folder),
           "--port", str(port), "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "her2score serve did not start:\n" + (root / "serve.log").read_text(), pytrace=False
                )
            time.sleep(0.3)
        yield base, upload
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    _require(CHROMIUM.is_file(), f"{CHROMIUM} not installed (apt-get install chromium chromium-driver)")
    _require(CHROMEDRIVER.is_file(), f"{CHROMEDRIVER} not installed (apt-get install chromium-driver)")
    _require((VENDOR / "openseadragon.min.js").is_file(), "OpenSeadragon not vendored: run `make viewer`")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _require(False, "selenium not installed (pip install -e '.[dev]')")
        raise
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(what: str, check: Callable[[], object], timeout: float = 90.0, driver: object = None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if isinstance(value, np.ndarray) or value:
            return value
        time.sleep(0.2)
    seen = ""
    if driver is not None:  # what the page shows, to say why
        seen = driver.execute_script(
            "const s = window.her2view, v = s.viewer; return JSON.stringify({base: s.base,"
            " loading: s.loading, items: v ? v.world.getItemCount() : null,"
            " status: document.getElementById('status').textContent})"
        )
    raise AssertionError(f"timed out waiting for {what} {seen}")


def _drawn(driver: object) -> np.ndarray:
    """The viewer area as the browser drew it (RGB)."""
    png = driver.find_element("id", "viewer").screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _settled(driver: object, n_items: int) -> bool:
    return bool(
        driver.execute_script(
            "const s = window.her2view, v = s && s.viewer; if (!v || s.loading) return false;"
            "const w = v.world; if (w.getItemCount() !== arguments[0]) return false;"
            "for (let i = 0; i < w.getItemCount(); i++) {"
            "  const item = w.getItemAt(i);"  # a hidden layer (opacity 0) is never drawn, so never loaded
            "  if (item.getOpacity() > 0 && !item.getFullyLoaded()) return false;"
            "}"
            "return !v.isAnimating || !v.isAnimating();",
            n_items,
        )
    )


def _changed(driver: object, before: np.ndarray, what: str) -> np.ndarray:
    """Poll until the drawing differs from ``before`` by a visible amount; the new drawing."""

    def differs() -> np.ndarray | None:
        now = _drawn(driver)
        return now if now.shape == before.shape and np.abs(now - before).mean() > 1.0 else None

    return _wait(what, differs, timeout=20)


def test_the_viewer_draws_a_slide_its_score_and_toggles_its_layers(browser: object, served: tuple) -> None:
    from selenium.webdriver.support.ui import Select

    driver = browser
    base, upload = served
    driver.get(base + "/")
    assert not driver.find_elements("id", "vendor-missing")
    _wait("the token box (the API answered 401)", lambda: driver.find_element("id", "token").is_displayed())
    driver.find_element("id", "token").send_keys(TOKEN)
    driver.find_element("id", "token-use").click()
    _wait("the slide list", lambda: "case-3plus.png" in driver.find_element("id", "slides").text)
    driver.find_element("id", "mpp").send_keys("0.5")
    Select(driver.find_element("id", "slides")).select_by_value("case-3plus.png")
    _wait("the slide's tiles", lambda: _settled(driver, 1), driver=driver)
    time.sleep(0.5)
    plain = _drawn(driver)
    tissue = (plain.min(axis=2) < 200).mean()
    assert tissue > 0.05, f"the canvas is blank ({tissue:.1%} tissue pixels)"

    driver.find_element("id", "score").click()
    category = _wait("a category", lambda: driver.find_element("id", "category").text.strip())
    assert category in {"0", "1+", "2+", "3+"}
    assert "% complete, intense" in driver.find_element("id", "figures").text
    assert len(driver.find_elements("css selector", "#probabilities tr")) == 3
    _wait("both overlay layers", lambda: _settled(driver, 3), driver=driver)
    both = _changed(driver, plain, "the overlays to be drawn")

    if os.environ.get("HER2SCORE_SCREENSHOTS"):
        driver.save_screenshot(os.path.join(os.environ["HER2SCORE_SCREENSHOTS"], "viewer-scored.png"))
    driver.find_element("id", "layer-heatmap").click()  # off
    cells_only = _changed(driver, both, "the heatmap to be hidden")
    driver.find_element("id", "layer-cells").click()  # off
    neither = _changed(driver, cells_only, "the cell layer to be hidden")
    assert np.abs(neither - plain).mean() < 1.0, "with both layers off the slide looks as before"
    driver.find_element("id", "layer-cells").click()  # on again
    again = _changed(driver, neither, "the cell layer to come back")
    assert np.abs(again - cells_only).mean() < 1.0

    driver.find_element("id", "upload").send_keys(str(upload))
    _wait("the upload's score", lambda: "scored to-upload.png" in driver.find_element("id", "status").text)
    _wait("the upload and its layers", lambda: _settled(driver, 3), driver=driver)
    assert driver.execute_script("return window.her2view.base").startswith("/api/uploads/")
    assert driver.find_element("id", "category").text.strip() in {"0", "1+", "2+", "3+"}
    shown = _drawn(driver)
    assert (shown.min(axis=2) < 200).mean() > 0.05
    if os.environ.get("HER2SCORE_SCREENSHOTS"):  # to look at what the test saw
        driver.save_screenshot(os.path.join(os.environ["HER2SCORE_SCREENSHOTS"], "viewer-upload.png"))
    logged = driver.get_log("browser")
    assert any("status of 401" in e.get("message", "") for e in logged)  # the first, token-less call
    # OpenSeadragon reports a tile request it aborted itself (the upload replaced the slide while its tiles
    # were loading) as an error; a tile the server refused would read "AJAX request returned <status>"
    benign = ("status of 401", "Image load aborted")
    errors = [
        e for e in logged if e.get("level") == "SEVERE" and not any(b in e.get("message", "") for b in benign)
    ]
    assert not errors, errors
