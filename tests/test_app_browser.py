"""End to end in a real browser: `semwatch app` as a subprocess on a free loopback port,
headless Chromium (Debian's chromium + chromium-driver, driven by selenium) uploads an image,
colorizes it, clicks a hint point and finds the re-colorized result and its hint; the result's
pixels at the hint, read in the browser, must have moved toward the hint's colour. Screenshots
go to the test's temporary folder (or $SEMWATCH_SCREENSHOTS, e.g. docs/, to refresh the
README's pictures).

Skipped only where the browser binaries are absent outside CI; under CI their absence is a
failure (conftest.cannot_run): .ci/run installs them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from app_harness import write_app_config
from conftest import cannot_run
from helpers import textured_gray
from PIL import Image

from semwatch.color import rgb_to_lab

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120.0
WAIT = 300.0  # colorizing on a busy 2-core machine


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if not missing:
        return
    cannot_run(f"{', '.join(missing)} missing (Debian: apt-get install chromium chromium-driver)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"semwatch app exited {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "_stcore/health", timeout=2) as answer:
                if answer.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"semwatch app not healthy after {START_TIMEOUT} s:\n{log.read_text()}")


@pytest.fixture
def app_server(tmp_path: Path, tiny_model: Path):
    """`semwatch app` on a free loopback port; yields its URL; stopped afterwards."""
    if importlib.util.find_spec("streamlit") is None:
        cannot_run("streamlit is not installed (pip install -e '.[app]')")
    _need_browser()
    port = _free_port()
    config = write_app_config(tmp_path, tiny_model, max_upload_mb=5, port=port)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    )
    env.pop("SEMWATCH_CONFIG", None)
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "semwatch", "app", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_healthy(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    _need_browser()
    profile = tempfile.mkdtemp(prefix="semwatch-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1200",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _screenshot(driver, folder: Path, name: str) -> Path:
    target_dir = Path(os.environ.get("SEMWATCH_SCREENSHOTS") or folder)
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / name
    driver.save_screenshot(str(path))
    return path


def _text_appears(driver, text: str, timeout: float = WAIT) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.5).until(
        lambda d: text in d.find_element("tag name", "body").text,
        message=f"{text!r} never appeared on the page",
    )


# The pixels of the compare slider's "after" image (the result, without hint markers), as
# the browser decoded them: drawn on a canvas inside its iframe. [width, height, [r, g, b, ...]].
_AFTER_PIXELS_JS = """
const img = document.getElementById("after");
if (!img || !img.complete || !img.naturalWidth) return null;
const canvas = document.createElement("canvas");
canvas.width = img.naturalWidth;
canvas.height = img.naturalHeight;
const context = canvas.getContext("2d");
context.drawImage(img, 0, 0);
const rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
const rgb = [];
for (let i = 0; i < rgba.length; i += 4) rgb.push(rgba[i], rgba[i + 1], rgba[i + 2]);
return [canvas.width, canvas.height, rgb];
"""


def _shown_result(driver) -> np.ndarray | None:
    """The result the compare slider shows, read in the browser (None until it is there)."""
    from selenium.webdriver.common.by import By

    try:
        for frame in driver.find_elements(By.TAG_NAME, "iframe"):
            driver.switch_to.frame(frame)
            try:
                shown = driver.execute_script(_AFTER_PIXELS_JS)
            finally:
                driver.switch_to.default_content()
            if shown:
                width, height, rgb = shown
                return np.array(rgb, dtype=np.uint8).reshape(height, width, 3)
    except Exception as exc:  # noqa: BLE001 - Streamlit replaced the iframe meanwhile: not there yet
        if type(exc).__name__ not in ("StaleElementReferenceException", "NoSuchFrameException"):
            raise
    return None


def _result_other_than(previous: np.ndarray | None):
    """A wait condition: (the shown result,) once there and different from ``previous``."""

    def condition(driver) -> tuple[np.ndarray] | None:
        shown = _shown_result(driver)
        if shown is None or (previous is not None and np.array_equal(shown, previous)):
            return None
        return (shown,)

    return condition


def _ab_distance(pixels: np.ndarray, color: str) -> float:
    """CIELAB a,b distance of the pixels' mean colour from ``color`` (#rrggbb): the hue and
    chroma a hint sets, its lightness staying the image's."""
    target = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
    both = np.stack([pixels.reshape(-1, 3).mean(axis=0), target]) / 255.0
    lab = rgb_to_lab(torch.from_numpy(both).float().T[:, :, None])  # (3, H=2, W=1)
    return float(torch.linalg.vector_norm(lab[1:, 0, 0] - lab[1:, 1, 0]))


@pytest.mark.slow
def test_upload_colorize_and_click_a_hint_in_chromium(app_server: str, browser, tmp_path: Path) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from semwatch.app.colorize_page import DEFAULT_HINT_COLOR

    image = tmp_path / "grains.png"
    Image.fromarray(textured_gray(480, 640, seed=5)).save(image)
    browser.get(app_server)
    wait = WebDriverWait(browser, WAIT, poll_frequency=0.5)
    _text_appears(browser, "Upload a scanning electron microscope image")

    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
    upload.send_keys(str(image))
    _text_appears(browser, "Colorized in")
    _text_appears(browser, "Download grains.tif")
    (automatic,) = WebDriverWait(browser, WAIT, poll_frequency=0.5).until(_result_other_than(None))

    # The clickable result lives in the component's iframe; click a third of the way in.
    frame = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "iframe[title*='streamlit_image_coordinates']"))
    )
    browser.switch_to.frame(frame)
    shown = wait.until(lambda d: (img := d.find_element(By.ID, "image")).size["width"] > 0 and img)
    size = shown.size
    ActionChains(browser).move_to_element_with_offset(
        shown,
        -size["width"] // 2 + size["width"] // 3,
        -size["height"] // 2 + size["height"] // 3,
    ).click().perform()
    browser.switch_to.default_content()

    _text_appears(browser, "Hints (1")
    _text_appears(browser, "Download grains.refined.tif")
    # Streamlit streams elements as the script runs and fades new ones in: wait for the row.
    _text_appears(browser, "Hint 1: x ")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Hint 1: x " in body and "Remove" in body, body
    # The click was scaled from displayed to image pixels: about a third of 640 x 480.
    match = re.search(r"Hint 1: x (\d+), y (\d+)", body)
    assert match, body
    x, y = int(match.group(1)), int(match.group(2))
    line = match.group(0)
    assert abs(x - 640 / 3) < 640 * 0.03 and abs(y - 480 / 3) < 480 * 0.03, line

    # What the browser shows at the hint moved toward the hint's colour (the default one).
    try:
        (hinted,) = WebDriverWait(browser, 60, poll_frequency=0.5).until(_result_other_than(automatic))
    except TimeoutException:
        hinted = automatic  # unchanged: the assertion below says so
    height, width = automatic.shape[:2]
    px, py = round(x * width / 640), round(y * height / 480)
    window = (slice(max(py - 2, 0), py + 3), slice(max(px - 2, 0), px + 3))
    before, after = (
        _ab_distance(automatic[window], DEFAULT_HINT_COLOR),
        _ab_distance(hinted[window], DEFAULT_HINT_COLOR),
    )
    assert after < 0.5 * before, (
        f"a,b distance from the hint's colour at ({px}, {py}): {before:.1f} -> {after:.1f}"
    )
    shot = _screenshot(browser, tmp_path, "app-colorize.png")
    with Image.open(shot) as picture:
        assert picture.size[0] > 0 and np.asarray(picture).std() > 1

    browser.get(app_server + "queue")
    _text_appears(browser, "No queue database yet")
    _screenshot(browser, tmp_path, "app-queue-empty.png")
