"""The web UI's answer time for a large upload, beside the engine's own time; and the
README's screenshots.

    python benchmarks/app.py [--image FILE] [--repeats 3] [--screenshots docs/]

Starts `semwatch app` (bundled model, the service's default engine settings) on a free
loopback port and drives it with headless Chromium (Debian chromium + chromium-driver):
uploads the image (default: the 2560x2048 pollen sample) and times until the result and its
download are on the page, then clicks a hint and times the re-colorized page (and the first
feedback: the hint listed with its marker). The same image is timed through the bare engine
(Colorizer.colorize, in this process). With --screenshots, it also saves app-colorize.png
(three hints), app-zoom.png (a box dragged over the grain, a hint placed in the zoom) and
app-queue.png (a queue with finished, failed and waiting jobs, a running service), at
1400x1000, shrunk to palette PNGs for the README.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from machine import describe_machine  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "sem-real"
DEFAULT_IMAGE = SAMPLES / "pollen-1062-550x.png"
# (fraction across, fraction down, colour) on the default image: the grain, the scaly
# anther, the background.
HINTS = ((0.42, 0.55, "#e0b030"), (0.66, 0.18, "#c04890"), (0.10, 0.45, "#3a6fc8"))
# A box around the grain's spines (fractions of the shown image), zoomed for app-zoom.png.
ZOOM_BOX = (0.30, 0.45, 0.55, 0.70)
WAIT = 900.0  # a busy 2-core machine


def engine_seconds(image: Path, repeats: int) -> tuple[float, float]:
    """(median seconds of Colorizer.colorize, seconds to load the model) with the service's
    default engine settings."""
    from semwatch.config import load_config
    from semwatch.engine import Colorizer
    from semwatch.imaging import read_image

    config = load_config(ROOT / "config.toml")
    started = time.perf_counter()
    colorizer = Colorizer.from_config(config.engine)
    load = time.perf_counter() - started
    decoded = read_image(image)
    colorizer.colorize([decoded])  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        colorizer.colorize([decoded])
        times.append(time.perf_counter() - started)
    return statistics.median(times), load


def page_seconds(image: Path, repeats: int) -> tuple[float, float]:
    """(median seconds of one page run after an upload, the engine's part of it), the page
    script run in this process by streamlit.testing (no browser, no network)."""
    from streamlit.testing.v1 import AppTest

    from semwatch.app import APP_SCRIPT
    from semwatch.app.workspace import SESSION_KEY

    os.environ["SEMWATCH_CONFIG"] = str(ROOT / "config.toml")
    data = image.read_bytes()
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=WAIT)
    at.run()
    runs, inside = [], []
    for index in range(repeats + 1):  # the first loads the model
        at.file_uploader(key="cz_upload").set_value((f"{index}-{image.name}", data, "image/png"))
        started = time.perf_counter()
        at.run()
        if index:
            runs.append(time.perf_counter() - started)
            inside.append(at.session_state[SESSION_KEY].result.seconds)
    return statistics.median(runs), statistics.median(inside)


def start_app(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = root / "config.toml"
    # The repository's config.toml (service defaults) with the folders moved to `root`.
    text = (ROOT / "config.toml").read_text()
    text = text.replace('input_dir = "inbox"', f'input_dir = "{root / "inbox"}"')
    text = text.replace('dir = "outbox"', f'dir = "{root / "outbox"}"')
    text = text.replace('"sqlite:///var/semwatch.db"', f'"sqlite:///{root / "var" / "semwatch.db"}"')
    text = text.replace('level = "info"', 'level = "warning"')
    config.write_text(text)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = (root / "app.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "semwatch", "app", "--port", str(port), "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "_stcore/health", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"semwatch app did not start; see {root / 'app.log'}")


def browser(width: int = 1400, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
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
        f"--user-data-dir={tempfile.mkdtemp(prefix='semwatch-chromium-')}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait_text(driver, text: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT, poll_frequency=0.1).until(
        lambda d: text in d.find_element("tag name", "body").text
    )


def times_in_page(driver) -> tuple[float, float]:
    """(what the user waited, the engine's part) as the page reports its latest result:
    "Colorized in X s (Y s of it in the engine)"."""
    text = driver.find_element("tag name", "body").text
    waited = float(text.split("Colorized in ", 1)[1].split(" s", 1)[0])
    engine = float(text.split("Colorized in ", 1)[1].split("(", 1)[1].split(" s", 1)[0])
    return waited, engine


def upload(driver, url: str, image: Path) -> float:
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_text(driver, "Upload a scanning electron microscope image")
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    field = WebDriverWait(driver, WAIT).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]"))
    )
    started = time.perf_counter()
    field.send_keys(str(image))
    wait_text(driver, "Colorized in")
    wait_text(driver, "Download ")
    return time.perf_counter() - started


def click_hint(driver, fx: float, fy: float, color: str, count: int) -> tuple[float, float]:
    """(seconds to the hint listed with its marker, seconds to the re-colorized page)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    # Streamlit's picker: a swatch button opening a popover with a hex field; the value is
    # sent when the popover closes.
    driver.find_element(By.CSS_SELECTOR, "[data-testid=stColorPicker] button").click()
    field = WebDriverWait(driver, 10).until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=stColorPickerPopover] input"))
    )
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(color, Keys.ENTER)
    field.send_keys(Keys.ESCAPE)
    driver.find_element(By.CSS_SELECTOR, "[data-testid*=Caption]").click()  # closes the popover
    time.sleep(2)  # the picker's value reaches the server in its own rerun
    frame = driver.find_element(By.CSS_SELECTOR, "iframe[title*='streamlit_image_coordinates']")
    driver.switch_to.frame(frame)
    img = driver.find_element(By.ID, "image")
    size = img.size
    started = time.perf_counter()
    ActionChains(driver).move_to_element_with_offset(
        img, int(size["width"] * (fx - 0.5)), int(size["height"] * (fy - 0.5))
    ).click().perform()
    driver.switch_to.default_content()
    wait_text(driver, f"Hint {count}: x")
    feedback = time.perf_counter() - started
    wait_text(driver, f"Hints ({count}")
    wait_text(driver, "Colorized in")
    return feedback, time.perf_counter() - started


def zoom_and_hint(driver, box: tuple[float, float, float, float], count: int) -> None:
    """Drag ``box`` (fractions of the shown image) to zoom in, then click its centre."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    def in_image(act) -> None:
        driver.switch_to.frame(
            driver.find_element(By.CSS_SELECTOR, "iframe[title*='streamlit_image_coordinates']")
        )
        img = driver.find_element(By.ID, "image")
        act(ActionChains(driver), img, img.size["width"], img.size["height"])
        driver.switch_to.default_content()

    x0, y0, x1, y1 = box
    in_image(
        lambda chain, img, w, h: (
            chain.move_to_element_with_offset(img, int(w * (x0 - 0.5)), int(h * (y0 - 0.5)))
            .click_and_hold()
            .move_by_offset(int(w * (x1 - x0)), int(h * (y1 - y0)))
            .release()
            .perform()
        )
    )
    time.sleep(3)  # the zoomed view
    in_image(lambda chain, img, w, h: chain.move_to_element_with_offset(img, 0, 0).click().perform())
    wait_text(driver, f"Hint {count}: x")
    wait_text(driver, "Colorized in")


def queue_fixture(root: Path) -> None:
    """A queue as the service leaves it: three samples done, one failed, one waiting."""
    from semwatch.config import load_config
    from semwatch.engine import Colorizer
    from semwatch.imaging import read_image
    from semwatch.pipeline import OutputSettings, Task, write_output
    from semwatch.queue import Owner, open_queue

    config = load_config(root / "config.toml")
    colorizer = Colorizer.from_config(config.engine)
    inbox, outbox = config.watch.input_dir, config.output.dir
    inbox.mkdir(parents=True, exist_ok=True)
    owner = Owner.current()
    queue = open_queue(config.queue)
    names = ["zeiss-sem-512.tif", "fei-helios-rbc.tif", "zeiss-sem-1k.tif", "pollen-hibiscus-300x.png"]
    now = time.time()
    for index, name in enumerate(names):
        (inbox / name).write_bytes((SAMPLES / name).read_bytes())
        decoded = read_image(inbox / name)
        job_id = queue.enqueue(name, decoded.sha256, decoded.size, now, arrived_at=now - 40 + index)
        queue.claim(owner, 1)
        target = outbox / (Path(name).stem + ".tif")
        rgb = colorizer.colorize([decoded])[0]
        write_output(Task(inbox / name, target), decoded, rgb, colorizer.info, OutputSettings("tiff"))
        queue.complete(owner, job_id, str(target))
    (inbox / "truncated.tif").write_bytes((SAMPLES / "zeiss-sem-512.tif").read_bytes()[:5000])
    bad = queue.enqueue("truncated.tif", "f" * 64, 5000, now)
    queue.claim(owner, 1)
    queue.fail(
        owner, bad, "truncated.tif: cannot decode TIFF: file is truncated (5000 bytes)", permanent=True
    )
    queue.enqueue("incoming/new-frame.tif", "a" * 64, 1, now)
    queue.beat(owner, "all")  # the service's heartbeat: the page shows it running
    queue.close()


def shoot(driver, path: Path) -> None:
    time.sleep(2)  # fade-ins
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))
    shrink_png(path)


def shrink_png(path: Path, limit: int = 150_000) -> None:
    """Palette PNG, scaled down until it is under ``limit`` bytes (README pictures)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
    width = image.width
    while True:
        small = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        small.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size < limit or width < 500:
            return
        width = int(width * 0.85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--screenshots", type=Path, default=None)
    args = parser.parse_args()
    from PIL import Image

    with Image.open(args.image) as im:
        size = f"{im.width}x{im.height}"
    print(describe_machine())
    engine, load = engine_seconds(args.image, args.repeats)
    print(f"engine: {engine:.2f} s per {size} image (median of {args.repeats}; model load {load:.1f} s)")
    page, inside = page_seconds(args.image, args.repeats)
    print(
        f"page script after an upload (AppTest, no browser): {page:.2f} s, of which the "
        f"engine {inside:.2f} s (medians of {args.repeats})"
    )

    with tempfile.TemporaryDirectory(prefix="semwatch-app-bench-") as folder:
        root = Path(folder)
        process, url = start_app(root)
        driver = browser()
        try:
            first = upload(driver, url, args.image)
            print(f"UI, first upload (model load included): {first:.2f} s")
            times, inside = [], []
            for _ in range(args.repeats):
                times.append(upload(driver, url, args.image))
                inside.append(times_in_page(driver)[1])
            print(
                f"UI, upload -> result + download ready: {statistics.median(times):.2f} s; "
                f"the engine's part in the page {statistics.median(inside):.2f} s "
                f"(medians of {args.repeats}; bare engine above {engine:.2f} s)"
            )
            hint_times, feedback, inside = [], [], []
            for n, (fx, fy, color) in enumerate(HINTS, start=1):
                first, done = click_hint(driver, fx, fy, color, n)
                feedback.append(first)
                hint_times.append(done)
                inside.append(times_in_page(driver))
            print(
                f"UI, click a hint -> hint listed with its marker: {statistics.median(feedback):.2f} s; "
                f"-> re-colorized page: {statistics.median(hint_times):.2f} s; the page says the user "
                f"waited {statistics.median(w for w, _ in inside):.2f} s, the engine's part "
                f"{statistics.median(e for _, e in inside):.2f} s (medians of {len(hint_times)})"
            )
            body = driver.find_element("tag name", "body").text
            print("hints on the page:", [line for line in body.splitlines() if line.startswith("Hint ")])
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                shoot(driver, args.screenshots / "app-colorize.png")
                zoom_and_hint(driver, ZOOM_BOX, len(HINTS) + 1)
                shoot(driver, args.screenshots / "app-zoom.png")
                queue_fixture(root)
                driver.set_window_size(1400, 1250)  # the service line, counts and a row of cards
                driver.get(url + "queue")
                wait_text(driver, "Recent jobs")
                time.sleep(2)  # thumbnails
                shoot(driver, args.screenshots / "app-queue.png")
                print(f"screenshots in {args.screenshots}")
        finally:
            driver.quit()
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
