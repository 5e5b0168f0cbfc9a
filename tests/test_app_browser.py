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

import contextlib
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


def _need_streamlit() -> None:
    if importlib.util.find_spec("streamlit") is None:
        cannot_run("streamlit is not installed (pip install -e '.[app]')")


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


@contextlib.contextmanager
def _serve(
    root: Path,
    model: Path,
    env_extra: dict[str, str] | None = None,
    pythonpath: tuple[str, ...] = (),
    *,
    max_image_mb: int = 0,
    started: list[subprocess.Popen] | None = None,
):
    """`semwatch app` on a free loopback port with a configuration in ``root``; yields its
    URL; stopped afterwards. ``started`` receives the server's process."""
    port = _free_port()
    config = write_app_config(root, model, max_upload_mb=5, port=port, max_image_mb=max_image_mb)
    paths = [*pythonpath, str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), **(env_extra or {}))
    env.pop("SEMWATCH_CONFIG", None)
    log = root / "app.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "semwatch", "app", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
        )
    if started is not None:
        started.append(process)
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
def app_server(tmp_path: Path, tiny_model: Path):
    """`semwatch app` on a free loopback port; yields its URL; stopped afterwards."""
    _need_streamlit()
    _need_browser()
    with _serve(tmp_path, tiny_model) as url:
        yield url


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


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


@pytest.mark.slow
def test_an_upload_declaring_10000_by_10000_is_refused_without_the_memory_in_chromium(
    browser, tmp_path: Path, tiny_model: Path
) -> None:
    """Issue 19: a 97 KB PNG declaring 10000 x 10000 (under max_pixels) peaked the server at
    4.75 GB. Refused by the service's cap (engine.max_image_mb), said on the page, and the
    server's peak stays far below what decoding it would take."""
    from helpers import png_of_zeros
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    _need_streamlit()
    dark = tmp_path / "dark.png"
    dark.write_bytes(png_of_zeros(10_000, 10_000))
    started: list[subprocess.Popen] = []
    (tmp_path / "site").mkdir()
    with _serve(tmp_path / "site", tiny_model, max_image_mb=1024, started=started) as url:
        browser.get(url)
        _text_appears(browser, "Upload a scanning electron microscope image")
        upload = WebDriverWait(browser, WAIT, poll_frequency=0.5).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]"))
        )
        upload.send_keys(str(dark))
        _text_appears(browser, "dark.png is too large for this server")
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "more than the 1024 MB one image may take (engine.max_image_mb)" in body, body
        assert "Colorized in" not in body
        # The app with its model loaded is a few hundred MB; the image's pixels alone are
        # 100 MB and its colorization about 4.6 GB.
        peak = _peak_rss_mb(started[0].pid)
        assert peak < 1500, f"the server peaked at {peak:.0f} MB"
        _screenshot(browser, tmp_path, "app-upload-too-large.png")


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


def _send_to_json_input(driver, path: Path) -> bool:
    """Give ``path`` to the page's JSON file input; False while there is none."""
    from selenium.webdriver.common.by import By

    inputs = [
        e
        for e in driver.find_elements(By.CSS_SELECTOR, "input[type=file]")
        if "json" in (e.get_attribute("accept") or "")
    ]
    if not inputs:
        return False
    inputs[0].send_keys(str(path))
    return True


@pytest.mark.slow
def test_apply_an_uploaded_style_in_chromium(
    app_server: str, browser, tmp_path: Path, tiny_model: Path
) -> None:
    """The style uploader of "Apply a style" takes a real style (made with the app's model)
    and the page shows it beside the hints and colorizes with it."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from semwatch.engine import Colorizer
    from semwatch.hints import Hint
    from semwatch.imaging import read_image
    from semwatch.styles import make_style, save_style

    reference = tmp_path / "reference.png"
    Image.fromarray(textured_gray(240, 320, seed=6)).save(reference)
    decoded = read_image(reference)
    engine = Colorizer.from_file(tiny_model, device="cpu", chroma_size=128)
    hints = [Hint.from_color(60, 50, "#e0b030"), Hint.from_color(250, 180, "#3060d0")]
    style_file = tmp_path / "grains.style.json"
    save_style(
        make_style(
            engine, decoded, hints, name="grains", source_name="reference.png", source_sha256=decoded.sha256
        ),
        style_file,
    )
    image = tmp_path / "next.png"
    Image.fromarray(textured_gray(240, 320, seed=7)).save(image)

    browser.get(app_server)
    WebDriverWait(browser, WAIT, poll_frequency=0.5).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, "input[type=file]")
    )[0].send_keys(str(image))
    _text_appears(browser, "Download next.tif")
    # Streamlit may re-render between finding the style input and using it: a stale element
    # means "not settled yet", so the wait finds it again and sends the file again.
    WebDriverWait(
        browser, WAIT, poll_frequency=0.5, ignored_exceptions=(StaleElementReferenceException,)
    ).until(lambda driver: _send_to_json_input(driver, style_file))
    _text_appears(browser, "Remove style")
    # Colorized again with the style (the disabled download button has its label already).
    WebDriverWait(browser, WAIT, poll_frequency=0.5).until(
        lambda driver: (
            "Colorized" in (text := driver.find_element(By.TAG_NAME, "body").text)
            and "Colorizing" not in text
            and "Download next.refined.tif" in text
        ),
        message="the result with the style never appeared",
    )
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Style grains" in body and "from reference.png, 2 hinted objects" in body, body
    # Any model takes a palette (the engine places its colours): the field is open.
    WebDriverWait(
        browser, WAIT, poll_frequency=0.5, ignored_exceptions=(StaleElementReferenceException,)
    ).until(
        lambda driver: (
            [
                field.is_enabled()
                for field in driver.find_elements(By.XPATH, "//input[starts-with(@aria-label, 'Palette')]")
            ]  # fmt: skip
            == [True]
        ),
        message="the palette field is not there, or not open",
    )
    _screenshot(browser, tmp_path, "app-style.png")


@pytest.mark.slow
def test_a_palette_typed_on_the_page_recolours_the_image_in_chromium(browser, tmp_path: Path) -> None:
    """With a palette-taking model (generated here; the engine places a palette for any
    model, and this one also feeds it to its network), a palette typed into the field
    re-colorizes the image, shown as swatches; the download becomes a refined result (its
    provenance: test_palette_use.py)."""
    from helpers import write_palette_model
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    _need_streamlit()
    _need_browser()
    model = write_palette_model(tmp_path / "palette.safetensors")
    image = tmp_path / "next.png"
    Image.fromarray(textured_gray(240, 320, seed=7)).save(image)
    (tmp_path / "site").mkdir()
    with _serve(tmp_path / "site", model) as url:
        browser.get(url)
        wait = WebDriverWait(browser, WAIT, poll_frequency=0.5)
        wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "input[type=file]"))[0].send_keys(
            str(image)
        )
        _text_appears(browser, "Download next.tif")
        (automatic,) = wait.until(_result_other_than(None))
        field = wait.until(
            lambda driver: driver.find_elements(By.XPATH, "//input[starts-with(@aria-label, 'Palette')]")
        )[0]
        assert field.is_enabled()
        # A bad palette first: one line naming it; nothing changes.
        field.send_keys("#30c060:x", Keys.ENTER)
        _text_appears(browser, "Palette '#30c060:x': weight 'x' of #30c060 is not a number")
        field = browser.find_element(By.XPATH, "//input[starts-with(@aria-label, 'Palette')]")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys("#30c060,#c03070", Keys.ENTER)
        _text_appears(browser, "Download next.refined.tif")
        (recoloured,) = wait.until(_result_other_than(automatic))
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "Palette 50% 50%" in " ".join(body.split()), body
        assert "is not a number" not in body
        # A random model's palette moves some objects a lot, most a little: a visible change
        # (over 10 levels) in at least the most changed 1 % of the pixels.
        change = np.abs(recoloured.astype(int) - automatic.astype(int)).max(axis=-1)
        assert np.percentile(change, 99) > 10, f"RGB change: 99th percentile {np.percentile(change, 99)}"
        _screenshot(browser, tmp_path, "app-palette.png")


# --------------------------------------------------------------------------- #21: work kept, zoom, service state

HINT_RGB = (0x2F, 0x7F, 0xD8)  # the page's default hint colour
HOLD_FOLDER = Path(__file__).resolve().parent / "app_hold"  # its sitecustomize holds the engine


@pytest.fixture
def held_app_server(tmp_path: Path, tiny_model: Path):
    """`semwatch app` whose full colorizations wait while tmp_path/hold exists; yields
    (URL, hold file)."""
    _need_streamlit()
    _need_browser()
    hold = tmp_path / "hold"
    with _serve(tmp_path, tiny_model, {"SEMWATCH_TEST_HOLD": str(hold)}, (str(HOLD_FOLDER),)) as url:
        yield url, hold


def _clickable(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT, poll_frequency=0.5).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "iframe[title*='streamlit_image_coordinates']"))
    )


def _in_image(browser, act) -> None:
    """Run ``act(ActionChains, img, width, height)`` inside the click component's frame."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.switch_to.frame(_clickable(browser))
    try:
        img = browser.find_element(By.ID, "image")
        act(ActionChains(browser), img, img.size["width"], img.size["height"])
    finally:
        browser.switch_to.default_content()


def _marker_share(browser, fx: float, fy: float) -> float:
    """Share of the pixels in a small square at (fx, fy) of the shown image that have the
    hint colour (the marker's fill; the JPEG blurs it a little)."""
    import io

    from selenium.webdriver.common.by import By

    browser.switch_to.frame(_clickable(browser))
    try:
        png = browser.find_element(By.ID, "image").screenshot_as_png
    finally:
        browser.switch_to.default_content()
    with Image.open(io.BytesIO(png)) as shot:
        rgb = np.asarray(shot.convert("RGB")).astype(int)
    h, w = rgb.shape[:2]
    x, y = int(fx * w), int(fy * h)
    patch = rgb[y - 4 : y + 5, x - 4 : x + 5]
    return float((np.abs(patch - np.array(HINT_RGB)).max(axis=2) < 40).mean())


def _image_offset(browser) -> tuple[float, float]:
    """(top, height) of the clickable image, its top measured from the top of the page's
    first line (the image's caption): the page scrolls, layout shifts change this."""
    return tuple(
        browser.execute_script(
            "const img = document.querySelector(\"iframe[title*='streamlit_image_coordinates']\")"
            ".getBoundingClientRect();"
            "const top = document.querySelector('[data-testid*=Caption]').getBoundingClientRect().top;"
            "return [img.top - top, img.height];"
        )
    )


def _laid_out_offset(browser) -> tuple[float, float]:
    """:func:`_image_offset` once the image has its height: its component frame joins the page
    a moment after the text around it, later on a loaded machine."""
    _wait_for(browser, lambda: _image_offset(browser)[1] > 0, "the laid-out image")
    return _image_offset(browser)


def _hint_xy(browser, number: int) -> tuple[int, int]:
    _text_appears(browser, f"Hint {number}: x ")
    body = browser.find_element("tag name", "body").text
    match = re.search(rf"Hint {number}: x (\d+), y (\d+)", body)
    assert match, body
    return int(match.group(1)), int(match.group(2))


def _page_link(browser, title: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.PARTIAL_LINK_TEXT, title)


@pytest.mark.slow
def test_marker_first_work_kept_across_pages_and_a_hint_placed_in_the_zoom(
    held_app_server, browser, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, hold = held_app_server
    image = tmp_path / "grains.png"
    Image.fromarray(textured_gray(480, 640, seed=5)).save(image)
    browser.set_window_size(1400, 1000)
    browser.get(url)
    _text_appears(browser, "Upload a scanning electron microscope image")
    # The uploader's input joins the page a moment after its label on a loaded machine.
    upload = WebDriverWait(browser, 60).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, "input[type=file]")
    )[0]
    upload.send_keys(str(image))
    _text_appears(browser, "Colorized in")
    _text_appears(browser, "Download grains.tif")
    before = _laid_out_offset(browser)
    assert _marker_share(browser, 1 / 3, 1 / 3) < 0.2

    # The engine is held: the marker shows, where the user clicked, before the result.
    hold.touch()
    _in_image(
        browser,
        lambda chain, img, w, h: (
            chain.move_to_element_with_offset(img, -w // 2 + w // 3, -h // 2 + h // 3).click().perform()
        ),
    )
    _text_appears(browser, "Colorizing with 1 hint")
    _wait_for(browser, lambda: _marker_share(browser, 1 / 3, 1 / 3) > 0.5, "the marker")
    assert "Colorized in" not in browser.find_element(By.TAG_NAME, "body").text  # still held
    marked = _laid_out_offset(browser)
    hold.unlink()
    _text_appears(browser, "Colorized in")
    _text_appears(browser, "Download grains.refined.tif")
    assert before == marked == _laid_out_offset(browser)  # nothing above the image moved it
    first = _hint_xy(browser, 1)
    assert abs(first[0] - 640 / 3) < 640 * 0.03 and abs(first[1] - 480 / 3) < 480 * 0.03, first

    # To the Queue page and back: the image and its hint are still there.
    _page_link(browser, "Queue").click()
    _text_appears(browser, "No queue database yet")
    _page_link(browser, "Colorize").click()
    assert _hint_xy(browser, 1) == first
    _text_appears(browser, "Colorized in")

    # Drag a box over the lower right quarter: the view zooms in; a click at its centre
    # lands at the centre of that quarter of the image.
    _in_image(
        browser,
        lambda chain, img, w, h: (
            chain.move_to_element_with_offset(img, 1, 1)
            .click_and_hold()
            .move_by_offset(w // 4, h // 4)
            .release()
            .perform()
        ),
    )
    _wait_for(
        browser,
        lambda: browser.find_element(By.XPATH, "//button[contains(., 'Whole image')]").is_enabled(),
        "the zoomed view",
    )
    _in_image(
        browser,
        lambda chain, img, w, h: chain.move_to_element_with_offset(img, 0, 0).click().perform(),
    )
    x, y = _hint_xy(browser, 2)
    assert abs(x - 640 * 5 / 8) < 640 * 0.02 and abs(y - 480 * 5 / 8) < 480 * 0.02, (x, y)
    _text_appears(browser, "Colorized in")
    _screenshot(browser, tmp_path, "app-zoom.png")

    # The before/after slider fits its frame: no scrollbar, nothing cut off.
    browser.find_element(By.XPATH, "//summary[contains(., 'Compare with the gray original')]").click()
    frame = WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.CSS_SELECTOR, "iframe[srcdoc]"))
    _wait_for(browser, lambda: frame.size["height"] > 100, "the slider")
    browser.switch_to.frame(frame)
    try:
        # Scrollable content is what a (non-overlay) scrollbar would appear for.
        inner, content = browser.execute_script(
            "return [window.innerHeight, document.documentElement.scrollHeight];"
        )
    finally:
        browser.switch_to.default_content()
    assert content <= inner, (content, inner)


def _wait_for(browser, condition, what: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, WAIT, poll_frequency=0.25).until(
        lambda _d: condition(), message=f"{what} never showed"
    )


@pytest.mark.slow
def test_queue_page_shows_the_service_running_then_stopped_in_chromium(
    app_server: str, browser, tmp_path: Path
) -> None:
    """A real daemon on the app's configuration: the Queue page says it runs (host, pid),
    and after its clean stop, when it was last seen."""
    config = tmp_path / "config.toml"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    )
    env.pop("SEMWATCH_CONFIG", None)
    with (tmp_path / "daemon.log").open("wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "semwatch", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        host = socket.gethostname()
        running = f"Service running on {host} (pid {daemon.pid}, watches and colorizes)"
        _reload_until(browser, app_server + "queue", running, daemon)
        _screenshot(browser, tmp_path, "app-queue-running.png")
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=120) == 0
    _reload_until(browser, app_server + "queue", "stopped cleanly", daemon)
    body = browser.find_element("tag name", "body").text
    assert "Service stopped: last seen" in body and f"on {host}, stopped cleanly" in body, body


def _reload_until(browser, url: str, text: str, daemon: subprocess.Popen) -> None:
    """Reload ``url`` until ``text`` is on it (the daemon's first beat follows its model load)."""
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(driver) -> bool:
        browser.get(url)
        try:
            _text_appears(browser, "Recent jobs", timeout=30)
        except Exception:  # noqa: BLE001 - no database yet: the daemon is still starting
            if daemon.poll() not in (None, 0):
                raise AssertionError(f"daemon exited {daemon.returncode}") from None
            return False
        return text in driver.find_element("tag name", "body").text

    WebDriverWait(browser, WAIT, poll_frequency=1).until(shown, message=f"{text!r} never on {url}")
