"""The real studio server in a subprocess: end to end in a headless browser, and under load.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium
chromium-driver``; ``.ci/run`` installs them) and Selenium (the ``dev`` extra). Without them
this test fails, saying what to install: it is never skipped.

``STUDIO_SCREENSHOT=docs/studio.png pytest tests/test_serve_browser.py`` also saves a
screenshot of the page after the run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.request

import pytest

from garment_gen.serve.loadtest import studio_server

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1440,1080",
]
INSTALL = "install them with: apt-get install -y chromium chromium-driver (.ci/run does this)"

# Mean RGB of an <img> and a 16x16 signature of its pixels, read back through a canvas.
PIXELS_JS = """
const img = arguments[0];
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const ctx = c.getContext('2d');
ctx.drawImage(img, 0, 0);
const d = ctx.getImageData(0, 0, c.width, c.height).data;
const mean = [0, 0, 0];
for (let i = 0; i < d.length; i += 4) { mean[0] += d[i]; mean[1] += d[i + 1]; mean[2] += d[i + 2]; }
const n = d.length / 4;
const small = document.createElement('canvas'); small.width = small.height = 16;
small.getContext('2d').drawImage(img, 0, 0, 16, 16);
const s = Array.from(small.getContext('2d').getImageData(0, 0, 16, 16).data);
return {w: c.width, h: c.height, mean: mean.map((v) => v / n), sig: s};
"""


def _executables() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        missing = [n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p]
        pytest.fail(f"the browser test needs {' and '.join(missing)}; {INSTALL}", pytrace=False)
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = _executables()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the browser test needs selenium: pip install -e '.[dev]'", pytrace=False)
    profile = tempfile.mkdtemp(prefix="studio_chromium_")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    with studio_server() as s:
        yield s


def _wait(driver, what, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: what(d))


def _result(driver, after: int) -> dict:
    """Wait for a generation newer than ``after`` to be shown; its pixels and number."""
    from selenium.webdriver.common.by import By

    def shown(d):
        img = d.find_element(By.ID, "result-img")
        gen = int(img.get_attribute("data-generation") or 0)
        done = d.find_element(By.ID, "busy").get_attribute("hidden") is not None
        loaded = d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
        err = d.find_element(By.ID, "error")
        if err.is_displayed() and err.text:
            raise AssertionError(f"the page shows an error: {err.text}")
        return gen > after and done and loaded and img.is_displayed()

    _wait(driver, shown)
    img = driver.find_element(By.ID, "result-img")
    return {
        **driver.execute_script(PIXELS_JS, img),
        "gen": int(img.get_attribute("data-generation")),
    }


def test_studio_page_generates_garments_end_to_end(browser, server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    d = browser
    d.get(server.url + "/")
    _wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert "Design studio" in d.title
    shapes = d.find_elements(By.CSS_SELECTOR, "#shape-gallery .thumb")
    textures = d.find_elements(By.CSS_SELECTOR, "#texture-gallery .thumb")
    assert len(shapes) == len(textures) == 64
    _wait(
        d,
        lambda d: all(
            d.execute_script("return arguments[0].naturalWidth", t.find_element(By.TAG_NAME, "img"))
            for t in textures[:40]
        ),
    )

    # The two sample textures whose thumbnails differ most in colour.
    means = [
        d.execute_script(PIXELS_JS, t.find_element(By.TAG_NAME, "img"))["mean"]
        for t in textures[:40]
    ]
    pairs = [
        (sum((a - b) ** 2 for a, b in zip(means[i], means[j], strict=True)), i, j)
        for i in range(40)
        for j in range(i)
    ]
    _, ta, tb = max(pairs)

    d.execute_script("document.getElementById('live').checked = false")  # explicit clicks only
    shapes[2].click()
    textures[ta].click()
    d.find_element(By.ID, "generate").click()
    first = _result(d, 0)
    assert (first["w"], first["h"]) == (64, 64)
    assert "selected" in textures[ta].get_attribute("class")
    assert d.find_element(By.ID, "download").get_attribute("href").startswith("blob:")

    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", textures[tb])
    textures[tb].click()
    d.find_element(By.ID, "generate").click()
    second = _result(d, first["gen"])
    diff = sum(abs(a - b) for a, b in zip(first["sig"], second["sig"], strict=True)) / len(
        first["sig"]
    )
    assert diff > 4, f"two textures gave nearly the same garment (mean difference {diff:.1f})"

    # Variations of the current pair.
    d.find_element(By.ID, "vary").click()
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#variations img")) == 6)
    srcs = {i.get_attribute("src") for i in d.find_elements(By.CSS_SELECTOR, "#variations img")}
    assert len(srcs) == 6  # six different images

    # Draw a silhouette on the canvas: a thick stroke, then generate from it.
    d.find_element(By.ID, "tab-draw").click()
    canvas = d.find_element(By.ID, "draw-canvas")
    d.execute_script("document.getElementById('brush-size').value = 60")
    ActionChains(d).move_to_element_with_offset(canvas, -40, -80).click_and_hold().move_by_offset(
        0, 60
    ).move_by_offset(30, 60).move_by_offset(30, -60).move_by_offset(0, -60).release().perform()
    drawn_pixels = d.execute_script(
        "const c = document.getElementById('draw-canvas').getContext('2d').getImageData(0, 0, 256, 256).data;"
        "let n = 0; for (let i = 0; i < c.length; i += 4) n += c[i] > 127; return n;"
    )
    assert drawn_pixels > 2000
    d.find_element(By.ID, "generate").click()
    third = _result(d, second["gen"])
    assert "your drawing" in d.find_element(By.ID, "result-caption").text
    assert third["sig"] != second["sig"]

    # A 4 x 5 grid of samples.
    d.find_element(By.ID, "grid-fill").click()
    assert len(d.find_elements(By.CSS_SELECTOR, "#tray-shapes .chip")) == 4
    d.find_element(By.ID, "make-grid").click()
    _wait(
        d,
        lambda d: d.execute_script(
            "const g = document.getElementById('grid-img'); return !g.hidden && g.complete && g.naturalWidth"
        ),
    )
    grid = d.execute_script(PIXELS_JS, d.find_element(By.ID, "grid-img"))
    assert (grid["w"], grid["h"]) == (6 * 66 + 2, 5 * 66 + 2)
    assert d.find_element(By.ID, "zip-download").get_attribute("href").startswith("blob:")

    severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # no failed requests, no script errors, no CSP violations

    shot = os.environ.get("STUDIO_SCREENSHOT")
    if shot:  # a sample pair with its variations, the grid below
        d.find_element(By.CSS_SELECTOR, ".tab[data-tab='shape-samples']").click()
        shapes[int(os.environ.get("STUDIO_SHAPE", "2"))].click()
        textures[int(os.environ.get("STUDIO_TEXTURE", str(ta)))].click()
        d.find_element(By.ID, "generate").click()
        _result(d, third["gen"])
        d.find_element(By.ID, "vary").click()
        time.sleep(2)
        d.set_window_size(1440, 1400)
        d.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.5)
        from PIL import Image

        d.save_screenshot(shot)
        palette = Image.open(shot).convert("RGB").quantize(256, dither=Image.Dither.NONE)
        palette.save(shot, optimize=True)  # a third of the size, the same to the eye


def test_load_on_the_real_server(server, capsys):
    """16 clients for 6 s on the real server: no errors, batched, memory flat."""
    from garment_gen.serve.loadtest import run_load

    single = run_load(server.url, clients=1, duration_s=2, pid=server.pid)
    load = run_load(server.url, clients=16, duration_s=6, pid=server.pid, warmup_s=2)
    with urllib.request.urlopen(server.url + "/healthz") as r:
        alive = json.loads(r.read())
    with capsys.disabled():
        print(f"\n[serve load] single client: {single.summary()}\n[serve load] {load.summary()}")
    assert single.errors == 0 and load.errors == 0, load.error_samples
    assert load.ok > 16
    stats = load.server["models"]["reference"]
    assert stats["largest_batch"] >= 4, stats  # concurrent requests were batched
    assert stats["rejected"] == 0
    assert load.rss_after_mib - load.rss_before_mib < 64  # flat once warm
    assert alive["status"] == "ok"
