"""The web UI through streamlit.testing.v1.AppTest: real pages, real engine (a tiny random
model), real queue database. The click component is a browser-side custom component that
AppTest cannot drive, so the hint tests replace its wrapper (semwatch.app.widgets.click_point)
with a function returning the click a browser would send."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cannot_run
from PIL import Image

if importlib.util.find_spec("streamlit") is None:
    cannot_run("streamlit is not installed (pip install -e '.[app]')")
from app_harness import png_bytes, provenance_of_tiff, tiff_rgb, write_app_config  # noqa: E402
from helpers import max_lightness_error, png_of_zeros, textured_gray  # noqa: E402
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402
from streamlit.testing.v1 import app_test as app_test_module  # noqa: E402

from semwatch.app import APP_SCRIPT, widgets  # noqa: E402
from semwatch.app.workspace import SESSION_KEY, Workspace  # noqa: E402
from semwatch.config import load_config  # noqa: E402
from semwatch.imaging import ImageTooLarge, memory_cap, read_image, write_image  # noqa: E402
from semwatch.pipeline import decode  # noqa: E402
from semwatch.queue import JobState, Owner, open_queue, read_service_state  # noqa: E402

TIMEOUT = 180  # seconds per script run: the machine may be busy training


class _KeptStorage(MemoryMediaFileStorage):
    """AppTest drops its media store after each run; this one keeps them for the test."""

    stores: list[MemoryMediaFileStorage] = []

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        _KeptStorage.stores.append(self)


@pytest.fixture(autouse=True)
def _restore_logging():
    """The app script configures logging in this process (as it does in its server); put
    the previous set-up back so later tests' log capture (capsys) still works."""
    import logging

    import structlog

    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def app_config(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = write_app_config(tmp_path, tiny_model)
    monkeypatch.setenv("SEMWATCH_CONFIG", str(config))
    _KeptStorage.stores = []
    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", _KeptStorage)
    return config


class FakeClicks:
    """Stands in for the browser's click component: returns the click (or drag) queued last,
    and keeps the images the page showed in it."""

    def __init__(self) -> None:
        self.click: widgets.Click | None = None
        self.shown: list[np.ndarray] = []
        self.stamp = 0

    def latest(self, key: str) -> widgets.Click | None:
        return self.click

    def draw(self, image: np.ndarray, *, key: str) -> widgets.Click | None:
        self.shown.append(image)
        return self.click

    def at(self, x: float, y: float, width: float, height: float) -> None:
        self.stamp += 1
        self.click = widgets.Click(x, y, width, height, self.stamp)

    def drag(self, x: float, y: float, x2: float, y2: float, width: float, height: float) -> None:
        self.stamp += 1
        self.click = widgets.Click(x, y, width, height, self.stamp, x2, y2)


@pytest.fixture
def clicks(monkeypatch: pytest.MonkeyPatch) -> FakeClicks:
    fake = FakeClicks()
    monkeypatch.setattr(widgets, "latest_click", fake.latest)
    monkeypatch.setattr(widgets, "click_point", fake.draw)
    return fake


def new_app() -> AppTest:
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader(key="cz_upload").set_value((name, data, "application/octet-stream"))
    at.run()
    assert not at.exception, at.exception
    return at


def download_bytes(at: AppTest) -> bytes:
    button = at.download_button(key="cz_download")
    name = button.proto.url.rsplit("/", 1)[-1]
    for store in reversed(_KeptStorage.stores):
        try:
            return store.get_file(name).content
        except Exception:  # noqa: BLE001 - not in this run's store: look at the previous
            continue
    raise AssertionError(f"no media file {name}")


def work(at: AppTest) -> Workspace:
    return at.session_state[SESSION_KEY]


def result_rgb(at: AppTest) -> np.ndarray:
    return work(at).result.rgb


def texts(elements) -> str:
    return " ".join(str(e.value) for e in elements)


# --------------------------------------------------------------------------- pages


def test_both_pages_render_and_the_queue_page_says_there_is_no_database(app_config: Path) -> None:
    at = new_app()
    assert at.title[0].value == "Colorize"
    assert "Upload a scanning electron microscope image" in texts(at.info)
    at.switch_page("pages/queue.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Queue"
    assert "No queue database yet" in texts(at.info)
    assert not (app_config.parent / "var" / "semwatch.db").exists()  # looking creates nothing


# --------------------------------------------------------------------------- colorize


def test_upload_colorize_and_download_tiff_and_png(app_config: Path) -> None:
    data = png_bytes(240, 320)
    at = upload(new_app(), "sample.png", data)
    assert not at.error, texts(at.error)
    assert "does not take hints itself" in texts(at.info)  # the tiny model has 1 input channel

    tiff = download_bytes(at)
    assert at.download_button(key="cz_download").label == "Download sample.tif"
    rgb = tiff_rgb(tiff)
    assert rgb.shape == (240, 320, 3) and rgb.dtype == np.uint8
    assert max_lightness_error(rgb, textured_gray(240, 320)) <= 1.0
    record = provenance_of_tiff(tiff)["semwatch"]
    assert record["source"]["path"] == "sample.png"
    assert record["source"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert "hints" not in record

    at.radio(key="cz_format").set_value("PNG").run()
    png = download_bytes(at)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (320, 240)
        assert np.array_equal(np.asarray(image), rgb)


def test_oversize_upload_is_refused_with_a_message(app_config: Path) -> None:
    too_big = b"\0" * (1024 * 1024 + 1)  # app.max_upload_mb = 1 in this configuration
    at = upload(new_app(), "huge.tif", too_big)
    assert "uploads are limited to 1 MB" in texts(at.error)
    assert work(at).source is None
    assert not at.download_button


def test_an_upload_needing_more_memory_than_the_service_may_take_is_refused(
    app_config: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """Issue 19: a 97 KB PNG declaring 10000 x 10000 (under max_pixels) took the UI's server
    to 4.75 GB. The upload is refused by the service's rule and cap (engine.max_image_mb),
    with the same reason the daemon gives for such a file."""
    write_app_config(app_config.parent, tiny_model, max_image_mb=1024)
    dark = png_of_zeros(10_000, 10_000)
    at = upload(new_app(), "dark.png", dark)
    message = texts(at.error)
    assert "dark.png is too large for this server" in message, message
    assert "about 4577 MB, more than the 1024 MB one image may take (engine.max_image_mb)" in message
    assert work(at).source is None and not at.download_button
    # The daemon's decode of the same bytes: the same rule, the same words.
    engine = load_config(app_config).engine
    (tmp_path / "dark.png").write_bytes(dark)
    with pytest.raises(ImageTooLarge) as caught:
        decode(
            tmp_path / "dark.png", max_pixels=engine.max_pixels, max_memory=memory_cap(engine.max_image_mb)
        )
    assert caught.value.reason in message
    # An image within the cap is colorized as before.
    at = upload(at, "sample.png", png_bytes())
    assert not at.error and at.download_button


def test_non_image_upload_gets_a_clear_message(app_config: Path) -> None:
    at = upload(new_app(), "notes.png", b"these are my notes, not an image\n")
    message = texts(at.error)
    assert "notes.png is not an image semwatch can read" in message
    assert not at.download_button
    # A real image afterwards replaces the message with a result.
    at = upload(at, "sample.png", png_bytes())
    assert not at.error and at.download_button


def test_a_clicked_hint_changes_the_result_and_is_recorded(app_config: Path, clicks: FakeClicks) -> None:
    at = upload(new_app(), "sample.png", png_bytes(240, 320))
    before = result_rgb(at).copy()
    at.color_picker(key="cz_color").set_value("#00c000")
    # The browser shows the 256-px preview at 160 px wide: a click at (40, 30) there is
    # (80, 60) in the 320x240 image.
    clicks.at(39.5, 29.5, 160, 120)
    at.run()
    assert not at.exception, at.exception
    hints = work(at).hints
    assert [(h.x, h.y, h.color) for h in hints] == [(80.0, 60.0, "#00c000")]
    after = result_rgb(at)
    assert after.shape == before.shape
    assert np.abs(after.astype(int) - before.astype(int)).max() > 20
    assert max_lightness_error(after, textured_gray(240, 320)) <= 1.0
    # The same click repeated by the component on the next rerun is not a second hint.
    at.run()
    assert len(work(at).hints) == 1
    record = provenance_of_tiff(download_bytes(at))["semwatch"]
    assert record["hints"] == [{"x": 80, "y": 60, "color": "#00c000"}]
    assert at.download_button(key="cz_download").label == "Download sample.refined.tif"

    # Remove it again: the automatic colours come back.
    remove = [b for b in at.button if b.label == "Remove"]
    assert len(remove) == 1
    remove[0].click().run()
    assert work(at).hints == ()
    assert np.array_equal(result_rgb(at), before)


def test_clear_removes_every_hint(app_config: Path, clicks: FakeClicks) -> None:
    at = upload(new_app(), "sample.png", png_bytes(240, 320))
    for x in (10, 100):
        clicks.at(x, 20, 256, 192)
        at.run()
    assert len(work(at).hints) == 2
    next(b for b in at.button if b.label == "Clear hints").click().run()
    assert work(at).hints == ()


# --------------------------------------------------------------------------- queue


def _service_database(config_path: Path, *, outside: Path) -> dict[str, int]:
    """A queue as the daemon leaves it: one job done (output in outbox), one done whose
    recorded output lies outside the output folder, one failed, one pending."""
    config = load_config(config_path)
    inbox, outbox = config.watch.input_dir, config.output.dir
    gray = textured_gray(120, 160, seed=3)
    Image.fromarray(gray).save(inbox / "grain.png")
    output = outbox / "grain.tif"
    write_image(
        output,
        np.dstack([gray, np.roll(gray, 7, axis=1), gray]),
        fmt="tiff",
        metadata=None,
        provenance={"semwatch": {}},
    )
    write_image(
        outside, np.zeros((8, 8, 3), np.uint8), fmt="tiff", metadata=None, provenance={"semwatch": {}}
    )
    source_sha = hashlib.sha256((inbox / "grain.png").read_bytes()).hexdigest()
    owner = Owner.current()
    queue = open_queue(config.queue)
    try:
        ids = {}
        now = time.time()
        for name, sha in (("grain.png", source_sha), ("evil.png", "e" * 64), ("bad.png", "b" * 64)):
            # bad.png arrived two hours ago: once retried, its wait counts from the retry.
            ids[name] = queue.enqueue(name, sha, 10, now, arrived_at=now - (7200 if name == "bad.png" else 5))
        claimed = {job.rel_path: job for job in queue.claim(owner, 10)}
        queue.complete(owner, claimed["grain.png"].id, str(output))
        queue.complete(owner, claimed["evil.png"].id, str(outside))
        queue.fail(owner, claimed["bad.png"].id, "bad.png: cannot decode PNG: truncated", permanent=True)
        ids["waiting.png"] = queue.enqueue("waiting.png", "w" * 64, 10, now)
    finally:
        queue.close()
    return ids


def test_queue_page_reads_jobs_read_only_and_retries_a_failure(app_config: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "secret.tif"
    ids = _service_database(app_config, outside=outside)
    config = load_config(app_config)
    at = new_app()
    at.switch_page("pages/queue.py").run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Pending"], metrics["Running"], metrics["Done"], metrics["Failed"]) == (
        "1",
        "0",
        "2",
        "1",
    )
    # Only the output inside the output folder is previewed; the other has no preview.
    captions = sorted(image.captions[0] for image in at.image)
    assert captions == sorted([f"{ids['evil.png']}: evil.png (no preview)", f"{ids['grain.png']}: grain.png"])
    assert "cannot decode PNG: truncated" in texts(at.markdown)

    at.button(key=f"q_retry_{ids['bad.png']}").click().run()
    assert not at.exception, at.exception
    assert "Re-queued 1 failed job." in texts(at.warning)
    queue = open_queue(config.queue, read_only=True)
    try:
        assert queue.get(ids["bad.png"]).state == JobState.PENDING
    finally:
        queue.close()


def _beat(config_path: Path, *owners: tuple[Owner, str], sign_off: bool = False) -> None:
    """Heartbeat rows as running daemons write them (sign_off: as a clean stop leaves them)."""
    queue = open_queue(load_config(config_path).queue)
    try:
        for owner, role in owners:
            queue.beat(owner, role)
            if sign_off:
                queue.sign_off(owner)
    finally:
        queue.close()


def test_queue_page_shows_the_service_state_and_that_a_retry_waits_for_it(
    app_config: Path, tmp_path: Path
) -> None:
    ids = _service_database(app_config, outside=tmp_path / "x.tif")
    at = new_app()
    at.switch_page("pages/queue.py").run()
    assert "Service stopped: no daemon has run on this database" in texts(at.warning)
    assert "pending jobs wait until the service starts" in texts(at.warning)
    assert "without ever holding a lock the service waits for" in texts(at.caption)

    # Retry while nothing runs: the page says the job waits for the service, and its wait
    # counts from now, not from its arrival two hours ago.
    at.button(key=f"q_retry_{ids['bad.png']}").click().run()
    notice = texts(at.warning)
    assert "Re-queued 1 failed job. It waits until the service starts (`semwatch run`" in notice
    oldest = next(c.value for c in at.caption if "Oldest waiting image" in str(c.value))
    assert " min" not in oldest and " h " not in oldest, oldest

    gpu1, gpu2 = Owner("gpu1", 4242, "1" * 32), Owner("gpu2", 4343, "2" * 32)
    _beat(app_config, (gpu1, "all"))
    at.run()
    assert "Service running on gpu1 (pid 4242, watches and colorizes) since" in texts(at.success)
    assert not at.warning

    _beat(app_config, (gpu2, "worker"))
    at.run()
    assert "Service running: 2 daemons on gpu1, gpu2, 2 of them colorizing" in texts(at.success)
    assert "gpu2 pid 4343 (colorizes): running" in texts(at.caption)

    _beat(app_config, (gpu1, "all"), (gpu2, "worker"), sign_off=True)
    at.run()
    stopped = texts(at.warning)
    assert "Service stopped: last seen" in stopped and "stopped cleanly" in stopped
    config = load_config(app_config)
    queue = open_queue(config.queue, read_only=True)
    try:
        assert not read_service_state(queue).is_running
    finally:
        queue.close()


def test_queue_page_answers_while_the_daemon_holds_the_write_lock(app_config: Path, tmp_path: Path) -> None:
    import sqlite3

    _service_database(app_config, outside=tmp_path / "x.tif")
    at = new_app()
    at.switch_page("pages/queue.py").run()
    database = app_config.parent / "var" / "semwatch.db"
    writer = sqlite3.connect(database, timeout=1)
    writer.execute("BEGIN IMMEDIATE")  # what the daemon holds while it claims or completes
    try:
        # The lock is held until the page has answered: a writing open would wait out the
        # busy timeout and fail (an error on the page, or AppTest's timeout), however fast.
        at.run()
    finally:
        writer.rollback()
        writer.close()
    assert not at.exception and not at.error, texts(at.error)
    assert {m.label: m.value for m in at.metric}["Done"] == "2"


# --------------------------------------------------------------------------- refine


def test_refine_a_finished_job_saves_beside_the_automatic_output(
    app_config: Path, tmp_path: Path, clicks: FakeClicks
) -> None:
    ids = _service_database(app_config, outside=tmp_path / "x.tif")
    config = load_config(app_config)
    automatic = config.output.dir / "grain.tif"
    automatic_bytes = automatic.read_bytes()
    at = upload(new_app(), "earlier.png", png_bytes())  # still in the uploader afterwards
    at.switch_page("pages/queue.py").run()
    at.button(key=f"q_refine_{ids['grain.png']}").click().run()
    assert not at.exception, at.exception
    assert f"job {ids['grain.png']}" in texts(at.caption)
    # AppTest keeps requesting the page it was last switched to; the browser's URL follows
    # st.switch_page.
    at.switch_page("pages/colorize.py")
    clicks.at(50, 40, 160, 120)
    at.run()
    assert len(work(at).hints) == 1
    assert work(at).source.job_id == ids["grain.png"]

    at.button(key="cz_save_refined").click().run()
    refined = config.output.dir / "grain.refined.tif"
    assert refined.is_file() and f"Saved {refined}" in texts(at.success)
    assert automatic.read_bytes() == automatic_bytes  # the automatic output is untouched
    record = provenance_of_tiff(refined.read_bytes())["semwatch"]
    assert record["source"]["path"] == str(config.watch.input_dir / "grain.png")
    assert len(record["hints"]) == 1
    decoded = read_image(config.watch.input_dir / "grain.png")
    assert tiff_rgb(refined.read_bytes()).shape == decoded.gray.shape + (3,)

    # Saving again would replace the refined file: that needs a tick first; replacing the
    # automatic output needs its own.
    assert at.button(key="cz_save_refined").disabled
    assert at.button(key="cz_replace").disabled
    at.checkbox(key="cz_confirm_replace").check().run()
    at.button(key="cz_replace").click().run()
    assert automatic.read_bytes() != automatic_bytes
    assert "hints" in provenance_of_tiff(automatic.read_bytes())["semwatch"]


def test_refine_never_opens_a_source_swapped_for_a_link_out_of_the_watch_folder(
    app_config: Path, tmp_path: Path
) -> None:
    """Refine opened a done job's source through a symlink to a file outside
    watch.input_dir, showed it and saved its colorization into output.dir; a link to a text
    file echoed its first bytes in the error."""
    ids = _service_database(app_config, outside=tmp_path / "x.tif")
    config = load_config(app_config)
    source = config.watch.input_dir / "grain.png"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    passwd = elsewhere / "passwd"
    passwd.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    image = elsewhere / "private.png"
    image.write_bytes(source.read_bytes())
    before = sorted(p.name for p in config.output.dir.iterdir())
    for target in (passwd, image):
        source.unlink()
        source.symlink_to(target)
        at = new_app()
        at.switch_page("pages/queue.py").run()
        at.button(key=f"q_refine_{ids['grain.png']}").click().run()
        assert not at.exception, at.exception
        message = texts(at.error)
        assert f"Cannot open job {ids['grain.png']}'s source" in message, message
        assert "root:x" not in message and "leads outside the watched folder" in message
        assert not [b for b in at.button if b.key == "cz_save_refined"]
    assert sorted(p.name for p in config.output.dir.iterdir()) == before


def test_the_model_is_loaded_once_and_shared_by_sessions(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from semwatch.app import service

    config = write_app_config(tmp_path, tiny_model)
    # chroma_size 96: engine settings no other test uses, so the shared cache starts empty.
    config.write_text(config.read_text().replace("chroma_size = 128", "chroma_size = 96"))
    monkeypatch.setenv("SEMWATCH_CONFIG", str(config))
    loads = []
    real = service.load_colorizer
    monkeypatch.setattr(service, "load_colorizer", lambda engine: loads.append(engine) or real(engine))
    first = upload(new_app(), "a.png", png_bytes(seed=1))
    second = upload(new_app(), "b.png", png_bytes(seed=2))  # another browser session
    assert len(loads) == 1
    assert first.session_state[SESSION_KEY].result.rgb.shape == (240, 320, 3)
    assert second.session_state[SESSION_KEY].result.rgb.shape == (240, 320, 3)


def _fei_tiff(height: int = 240, width: int = 320, image_rows: int = 200) -> bytes:
    """An FEI-style TIFF: the instrument's text tag says the image is ``image_rows`` tall,
    so the rows below are the data bar; with the settings the page summarises."""
    import tifffile

    text = (
        f"[Beam]\r\nHV=5000\r\n[EBeam]\r\nHFW=1.2e-05\r\nWD=0.004\r\n[Scan]\r\n"
        f"PixelWidth=3.75e-08\r\n[Detectors]\r\nName=TLD\r\nMode=SE\r\n"
        f"[Image]\r\nResolutionX={width}\r\nResolutionY={image_rows}\r\n"
        f"MagCanvasRealWidth=0.12\r\n"
    ).encode() + b"\0"
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer, textured_gray(height, width, seed=4), extratags=[(34682, 2, len(text), text, True)]
    )
    return buffer.getvalue()


def test_vendor_metadata_and_data_bar_are_shown_and_bar_clicks_refused(
    app_config: Path, clicks: FakeClicks
) -> None:
    at = upload(new_app(), "fei.tif", _fei_tiff())
    assert not at.error, texts(at.error)
    table = at.table[0].value
    summary = dict(zip(table["setting"], table["value"]))
    assert summary == {
        "Pixel size": "37.5 nm",
        "High voltage": "5 kV",
        "Magnification": "10,000 x",
        "Horizontal field width": "12 µm",
        "Working distance": "4.00 mm",
        "Detector": "TLD (SE)",
    }
    assert "Data bar detected: rows 200-239 (40 rows)" in texts(at.markdown)
    clicks.at(100, 110, 160, 120)  # y 220 in the image: inside the bar
    at.run()
    assert work(at).hints == ()
    assert "in the data bar" in texts(at.markdown)  # in the status line: nothing moves
    # Below the bar's top the result stays the gray input.
    rgb = result_rgb(at)
    gray = textured_gray(240, 320, seed=4)
    assert all(np.array_equal(rgb[200:, :, c], gray[200:]) for c in range(3))


# --------------------------------------------------------------------------- work kept (#21)


def test_work_survives_the_queue_page_and_replacing_unsaved_hints_asks_first(
    app_config: Path, clicks: FakeClicks
) -> None:
    at = upload(new_app(), "first.png", png_bytes(240, 320, seed=1))
    at.color_picker(key="cz_color").set_value("#00c000").run()
    for x in (40, 120):
        clicks.at(x, 30, 160, 120)
        at.run()
    source, hints, result = work(at).source, work(at).hints, work(at).result
    assert len(hints) == 2 and work(at).fresh

    # To the Queue page and back: image, hints, result and the hint colour are all there.
    clicks.click = None  # the component is gone with the page; it comes back empty
    at.switch_page("pages/queue.py").run()
    assert at.title[0].value == "Queue"
    at.switch_page("pages/colorize.py").run()
    assert not at.exception, at.exception
    assert work(at).source is source and work(at).hints == hints and work(at).result is result
    assert at.color_picker(key="cz_color").value == "#00c000"
    assert "Hint 2: x 241, y 61" in texts(at.markdown)

    # A new upload would drop the two hints: the page asks, and keeps them on "Keep".
    at.file_uploader(key="cz_upload").set_value(("second.png", png_bytes(seed=2), "image/png")).run()
    assert "2 hints on first.png were neither downloaded nor saved. Open second.png instead" in texts(
        at.warning
    )
    assert work(at).source is source and work(at).hints == hints
    at.button(key="cz_keep").click().run()
    assert work(at).source is source and work(at).hints == hints and work(at).pending is None
    assert not at.warning

    # Asked again, "Open" replaces them.
    at.file_uploader(key="cz_upload").set_value(("third.png", png_bytes(seed=3), "image/png")).run()
    at.button(key="cz_confirm_change").click().run()
    assert not at.exception, at.exception
    assert work(at).source.name == "third.png" and work(at).hints == ()
    assert work(at).fresh and not at.warning


def test_refine_with_unsaved_hints_asks_and_a_saved_result_does_not(
    app_config: Path, tmp_path: Path, clicks: FakeClicks
) -> None:
    ids = _service_database(app_config, outside=tmp_path / "x.tif")
    at = upload(new_app(), "mine.png", png_bytes())
    clicks.at(50, 40, 160, 120)
    at.run()
    clicks.click = None
    at.switch_page("pages/queue.py").run()
    at.button(key=f"q_refine_{ids['grain.png']}").click().run()
    at.switch_page("pages/colorize.py")
    assert "1 hint on mine.png was neither downloaded nor saved. Open job" in texts(at.warning)
    assert work(at).source.name == "mine.png" and len(work(at).hints) == 1
    at.button(key="cz_confirm_change").click().run()
    assert work(at).source.job_id == ids["grain.png"] and work(at).hints == ()

    # A saved refined result is not lost work: the next Refine opens at once.
    clicks.at(30, 30, 160, 120)
    at.run()
    at.button(key="cz_save_refined").click().run()
    assert "Saved" in texts(at.success) and not work(at).unsaved()
    at.switch_page("pages/queue.py").run()
    at.button(key=f"q_refine_{ids['grain.png']}").click().run()
    at.switch_page("pages/colorize.py")
    assert not at.warning and work(at).hints == ()


def test_save_refined_is_offered_once_there_are_hints(
    app_config: Path, tmp_path: Path, clicks: FakeClicks
) -> None:
    ids = _service_database(app_config, outside=tmp_path / "x.tif")
    at = new_app()
    at.switch_page("pages/queue.py").run()
    at.button(key=f"q_refine_{ids['grain.png']}").click().run()
    at.switch_page("pages/colorize.py")
    # Zero hints: saving would write a copy of the automatic output.
    assert not [b for b in at.button if b.key in ("cz_save_refined", "cz_replace")]
    assert "Add a hint or apply a style to save a refined result" in texts(at.caption)
    clicks.at(50, 40, 160, 120)
    at.run()
    assert not at.button(key="cz_save_refined").disabled
    next(b for b in at.button if b.label == "Clear hints").click().run()
    assert not [b for b in at.button if b.key == "cz_save_refined"]


def test_the_marker_is_drawn_on_the_previous_result_before_the_new_one(
    app_config: Path, clicks: FakeClicks
) -> None:
    """The run that takes a click draws the marker at once (on the result it is about to
    change), then colorizes; the status line then says what the user waited."""
    at = upload(new_app(), "sample.png", png_bytes(240, 320))
    before = work(at).result
    at.color_picker(key="cz_color").set_value("#ff00ff").run()
    shown = len(clicks.shown)
    clicks.at(80, 60, 160, 120)  # the middle of the shown image: pixel (160, 120)
    at.run()
    first, last = clicks.shown[shown], clicks.shown[-1]
    preview = widgets.preview(before.rgb, 256)
    # The first picture after the click: the old result, with the new marker in magenta.
    assert tuple(first[96, 128]) == (255, 0, 255)
    assert np.array_equal(first[:40, :40], preview[:40, :40])
    assert work(at).result is not before and work(at).fresh
    assert tuple(last[96, 128]) == (255, 0, 255) and not np.array_equal(last[:40], first[:40])
    status = texts(at.markdown)
    assert re.search(r"Colorized in \d+\.\d s \(\d+\.\d s of it in the engine\)", status), status
    assert work(at).waited >= work(at).result.seconds


def test_a_drag_zooms_and_a_click_in_the_zoom_lands_on_the_image_pixel(
    app_config: Path, clicks: FakeClicks
) -> None:
    at = upload(new_app(), "sample.png", png_bytes(240, 320))
    assert at.button(key="cz_unzoom").disabled
    # Drag across the shown image's top-left quarter (shown 160 x 120 for 320 x 240).
    clicks.drag(0, 0, 80, 60, 160, 120)
    at.run()
    assert (work(at).zoom.x0, work(at).zoom.y0, work(at).zoom.x1, work(at).zoom.y1) == (1, 1, 162, 122)
    zoomed = clicks.shown[-1]
    assert zoomed.shape == (192, 256, 3)  # the same size as the whole view: nothing moves
    # A click at the middle of the zoomed view is at the middle of the zoomed region.
    clicks.at(80, 60, 160, 120)
    at.run()
    (hint,) = work(at).hints
    assert (hint.x, hint.y) == (82, 62)
    at.button(key="cz_unzoom").click().run()
    assert work(at).zoom is None and len(work(at).hints) == 1


# --------------------------------------------------------------------------- styles (#20)


def _media_bytes(url: str) -> bytes:
    name = url.rsplit("/", 1)[-1]
    for store in reversed(_KeptStorage.stores):
        try:
            return store.get_file(name).content
        except Exception:  # noqa: BLE001 - not in this run's store: look at the previous
            continue
    raise AssertionError(f"no media file {name}")


def _hinted(at: AppTest, clicks: FakeClicks, *points: tuple[int, int, str]) -> AppTest:
    for x, y, color in points:
        at.color_picker(key="cz_color").set_value(color).run()
        clicks.at(x, y, 160, 120)
        at.run()
        assert not at.exception, at.exception
    return at


def _style_file(at: AppTest, name: str) -> bytes:
    at.text_input(key="cz_style_name").set_value(name).run()
    assert not at.exception, at.exception
    return _media_bytes(at.download_button(key="cz_style_download").proto.url)


def test_save_as_style_then_apply_it_to_the_next_image(app_config: Path, clicks: FakeClicks) -> None:
    from semwatch.app import service

    at = upload(new_app(), "first.png", png_bytes(240, 320, seed=1))
    _hinted(at, clicks, (40, 30, "#e0b030"), (120, 90, "#3060d0"))
    data = _style_file(at, "grains")
    style = service.read_style_upload(data, "grains.style.json")
    assert style.name == "grains" and style.colors() == ["#e0b030", "#3060d0"]
    assert style.source_name == "first.png"
    assert style.source_sha256 == work(at).source.image.sha256
    assert at.download_button(key="cz_style_download").proto.label == "Download first.style.json"

    # The next image of the series: automatic first, then with the uploaded style.
    at.file_uploader(key="cz_upload").set_value(("second.png", png_bytes(seed=2), "image/png")).run()
    at.button(key="cz_confirm_change").click().run()
    automatic = result_rgb(at).copy()
    at.file_uploader(key="cz_style_upload").set_value(("grains.style.json", data, "application/json")).run()
    assert not at.exception and not at.error, texts(at.error)
    assert work(at).style == style and work(at).fresh
    assert "**Style** grains" in texts(at.markdown)
    styled = result_rgb(at)
    assert np.abs(styled.astype(int) - automatic.astype(int)).max() > 20
    record = provenance_of_tiff(download_bytes(at))["semwatch"]
    assert record["style"] == {"name": "grains", "sha256": hashlib.sha256(data).hexdigest()}
    assert at.download_button(key="cz_download").label == "Download second.refined.tif"

    # The style survives the Queue page, and removing it brings the automatic colours back.
    clicks.click = None
    at.switch_page("pages/queue.py").run()
    at.switch_page("pages/colorize.py").run()
    assert work(at).style == style and np.array_equal(result_rgb(at), styled)
    at.button(key="cz_style_remove").click().run()
    assert work(at).style is None and np.array_equal(result_rgb(at), automatic)


def test_a_style_made_with_another_model_is_refused_in_one_line(app_config: Path, clicks: FakeClicks) -> None:
    at = upload(new_app(), "first.png", png_bytes(240, 320, seed=1))
    _hinted(at, clicks, (40, 30, "#e0b030"))
    made = json.loads(_style_file(at, "grains"))
    made["model"] = {"name": "semwatch-default-v1", "sha256": "a" * 64}
    other = json.dumps(made).encode()
    at.file_uploader(key="cz_style_upload").set_value(("old.json", other, "application/json")).run()
    (error,) = [str(e.value) for e in at.error]
    assert "old.json: style made with model" in error and "\n" not in error
    assert work(at).style is None
    at.file_uploader(key="cz_style_upload").set_value(("notes.json", b"not json", "application/json")).run()
    assert "notes.json: not JSON" in texts(at.error) and work(at).style is None


def test_spread_hints_is_a_toggle_kept_with_the_workspace(app_config: Path, clicks: FakeClicks) -> None:
    at = upload(new_app(), "sample.png", png_bytes(240, 320))
    _hinted(at, clicks, (40, 30, "#00c000"))
    local = result_rgb(at).copy()
    assert not at.toggle(key="cz_spread").value
    at.toggle(key="cz_spread").set_value(True).run()
    assert work(at).spread and work(at).fresh
    assert np.abs(result_rgb(at).astype(int) - local.astype(int)).max() > 20
    spread = result_rgb(at).copy()
    clicks.click = None
    at.switch_page("pages/queue.py").run()
    at.switch_page("pages/colorize.py").run()
    assert at.toggle(key="cz_spread").value and work(at).spread
    assert np.array_equal(result_rgb(at), spread)
    at.toggle(key="cz_spread").set_value(False).run()
    assert np.array_equal(result_rgb(at), local)


def test_a_refined_job_writes_its_folder_style_and_the_tree_offers_it(
    app_config: Path, tmp_path: Path, clicks: FakeClicks
) -> None:
    from semwatch.styles import STYLE_FILENAME, load_style

    ids = _service_database(app_config, outside=tmp_path / "x.tif")
    config = load_config(app_config)
    target = config.watch.input_dir / STYLE_FILENAME
    at = new_app()
    at.switch_page("pages/queue.py").run()
    at.button(key=f"q_refine_{ids['grain.png']}").click().run()
    at.switch_page("pages/colorize.py")
    _hinted(at, clicks, (50, 40, "#e0b030"))
    at.text_input(key="cz_style_name").set_value("grain series").run()
    at.button(key="cz_write_folder_style").click().run()
    assert not at.exception, at.exception
    assert f"Saved the style grain series as {STYLE_FILENAME}" in texts(at.success)
    written = load_style(target)
    assert written.name == "grain series" and written.colors() == ["#e0b030"]
    assert not work(at).unsaved()

    # Once there is one, writing again needs a tick.
    first = target.read_bytes()
    _hinted(at, clicks, (20, 20, "#3060d0"))
    assert (
        at.checkbox(key="cz_confirm_folder_style").label
        == "Replace the existing folder style (style grain series)"
    )
    assert at.button(key="cz_write_folder_style").disabled
    at.checkbox(key="cz_confirm_folder_style").check().run()
    at.button(key="cz_write_folder_style").click().run()
    assert target.read_bytes() != first and len(load_style(target).hints) == 2

    # The watch tree's style files are offered to apply.
    assert at.selectbox(key="cz_style_pick").options == [STYLE_FILENAME]
    at.button(key="cz_style_apply_pick").click().run()
    assert not at.exception, at.exception
    assert work(at).style.name == "grain series" and work(at).style.path == str(target)
