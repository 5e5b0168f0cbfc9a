"""The web UI's pieces without a page: launch command line, metadata summary, click
scaling, output containment, refined names."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import cli_runs
import numpy as np
import pytest
from conftest import SEM_REAL

from semwatch.app import APP_SCRIPT
from semwatch.app.acquisition import acquisition_summary, databar_text
from semwatch.app.launch import is_loopback, streamlit_argv
from semwatch.app.queue_view import output_file, refined_name, refined_target
from semwatch.app.widgets import Box, Click, compare_html, preview, to_image_pixels, to_view, view, zoom_box
from semwatch.cli import main
from semwatch.config import AppConfig, Config, ConfigError, parse_config
from semwatch.imaging import SourceMetadata, read_image
from semwatch.queue import Job, JobState


def test_streamlit_command_line_is_loopback_headless_capped_and_private() -> None:
    config = dataclasses.replace(Config(), app=AppConfig(max_upload_mb=42))
    argv = streamlit_argv(config, host="127.0.0.1", port=8600)
    assert argv[:5] == [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT)]
    for flag in (
        "--server.address=127.0.0.1",
        "--server.port=8600",
        "--server.headless=true",
        "--browser.gatherUsageStats=false",
        "--server.maxUploadSize=42",
    ):
        assert flag in argv
    assert AppConfig().host == "127.0.0.1" and AppConfig().max_upload_mb == 200
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")


def test_app_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="app.port"):
        parse_config({"app": {"port": 70000}})
    with pytest.raises(ConfigError, match="app.max_upload_mb"):
        parse_config({"app": {"max_upload_mb": 0}})


def test_app_command_reports_a_bad_config_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text("[app]\nport = 0\n")
    done = cli_runs.in_process(main, ["app", "--config", bad])
    assert done.returncode == 2
    assert "app.port = 0" in done.stderr and "Traceback" not in done.stderr


def test_clicks_scale_from_displayed_to_image_pixels() -> None:
    # A 2560x2048 image shown 700 px wide: the click's pixel centre maps into the image.
    assert to_image_pixels(Click(0, 0, 700, 560, 1), 2048, 2560) == (1, 1)
    assert to_image_pixels(Click(349.5, 279.5, 700, 560, 1), 2048, 2560) == (1280, 1024)
    assert to_image_pixels(Click(699, 559, 700, 560, 1), 2048, 2560) == (2558, 2046)
    assert to_image_pixels(Click(900, -5, 700, 560, 1), 2048, 2560) == (2559, 0)  # clamped


def test_a_drag_frames_a_zoom_of_the_image_s_shape_inside_the_image() -> None:
    # A thin box dragged at the top edge of a 2560x2048 frame shown at 1000x800, released
    # beyond the image's right edge (the component reports where the mouse went up).
    drag = Click(900, 5, 1000, 800, 1, x2=1030, y2=40)
    box = zoom_box(drag, 2048, 2560)
    assert (box.x1, box.y0) == (2560, 0)  # pushed inside the image
    assert box.width * 2048 == pytest.approx(box.height * 2560, rel=0.01)
    start, end = to_image_pixels(drag, 2048, 2560), to_image_pixels(drag, 2048, 2560, end=True)
    assert box.x0 <= start[0] and box.y1 > end[1]  # the whole framed region in view
    tiny = zoom_box(Click(10, 10, 1000, 800, 2, x2=16, y2=16), 2048, 2560)
    assert tiny.width >= 32 and tiny.height >= 32  # never below MIN_ZOOM_SIDE
    assert not Click(10, 10, 1000, 800, 3, x2=12, y2=13).is_drag  # a shaky click is a click


def test_the_zoomed_view_and_its_clicks_agree() -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    shown = Box(80, 60, 240, 180)
    zoomed = view(rgb, (240, 320), shown, (320, 240))
    assert zoomed.shape == (240, 320, 3)
    # The image pixel under a click in the zoomed view is where to_view puts it back.
    x, y = to_image_pixels(Click(200, 100, 320, 240, 1), 240, 320, shown)
    vx, vy = to_view(x, y, (240, 320), shown, (320, 240))
    assert abs(vx - 200) <= 2 and abs(vy - 100) <= 2


def test_preview_and_compare_slider_are_self_contained() -> None:
    gray = np.zeros((2048, 2560), np.uint8)
    small = preview(gray, 1024)
    assert small.shape == (819, 1024)
    rgb = np.zeros((100, 120, 3), np.uint8)
    page = compare_html(rgb, rgb)
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert page.count("data:image/jpeg;base64,") == 2


def test_fei_and_zeiss_settings_are_summarised() -> None:
    fei = SourceMetadata(
        vendor="fei",
        fields={
            "Beam": {"HV": 2000},
            "EBeam": {"HFW": 1.184e-05, "WD": 0.00965589},
            "Scan": {"PixelWidth": 7.70833e-09},
            "Image": {"MagCanvasRealWidth": 0.4144},
            "Detectors": {"Name": "ETD", "Mode": "SE"},
        },
    )
    assert dict(acquisition_summary(fei)) == {
        "Pixel size": "7.708 nm",
        "High voltage": "2 kV",
        "Magnification": "35,000 x",
        "Horizontal field width": "11.84 µm",
        "Working distance": "9.66 mm",
        "Detector": "ETD (SE)",
    }
    zeiss = SourceMetadata(
        vendor="zeiss",
        fields={
            "ap_pixel_size": ("Pixel Size", 5.825, "nm"),
            "ap_actualkv": ("EHT", 5.0, "kV"),
            "ap_mag": ("Mag", "50.00 K X"),
            "ap_wd": ("WD", 3.9, "mm"),
            "dp_detector_channel": ("Signal A", "InLens"),
        },
    )
    assert dict(acquisition_summary(zeiss)) == {
        "Pixel size": "5.825 nm",
        "High voltage": "5.0 kV",
        "Magnification": "50.00 K X",
        "Working distance": "3.9 mm",
        "Detector": "InLens",
    }
    assert acquisition_summary(SourceMetadata()) == []
    assert acquisition_summary(SourceMetadata(vendor="fei", fields={"Beam": "garbage"})) == []
    assert databar_text(1094, 1024).startswith("Data bar detected: rows 1024-1093 (70 rows)")
    assert databar_text(1024, None).startswith("No data bar")


@pytest.mark.realdata
@pytest.mark.usefixtures("sem_real")
def test_real_fei_file_summary() -> None:
    summary = dict(acquisition_summary(read_image(SEM_REAL / "fei-helios-rbc.tif").metadata))
    assert summary["High voltage"] == "2 kV" and summary["Detector"] == "ETD (SE)"
    assert summary["Magnification"] == "35,000 x"


def _job(output: str | None) -> Job:
    return Job(
        id=7,
        rel_path="a/x.png",
        sha256="0" * 64,
        size=1,
        mtime=0.0,
        state=JobState.DONE,
        attempts=1,
        arrived_at=0.0,
        error=None,
        output_path=output,
    )


def test_outputs_from_the_database_stay_inside_the_output_folder(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    (outbox / "a").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    config = dataclasses.replace(Config(), output=dataclasses.replace(Config().output, dir=outbox))
    inside = outbox / "a" / "x.tif"
    assert output_file(config, _job(str(inside))) == inside.resolve()
    assert output_file(config, _job(str(outbox / "a" / ".." / ".." / "secret" / "x.tif"))) is None
    assert output_file(config, _job("/etc/passwd")) is None
    assert output_file(config, _job(str(outbox))) is None
    assert output_file(config, _job(None)) is None
    (outbox / "link").symlink_to(tmp_path / "secret")
    assert output_file(config, _job(str(outbox / "link" / "x.tif"))) is None


def test_refined_results_sit_beside_the_automatic_output() -> None:
    assert refined_target(Path("/out/a/x.tif")) == Path("/out/a/x.refined.tif")
    assert refined_target(Path("/out/a/x.png.tif")) == Path("/out/a/x.png.refined.tif")
    assert refined_name("sample.png", "tiff") == "sample.refined.tif"
    assert refined_name("sample.tif", "png") == "sample.refined.png"


def test_read_only_queue_never_creates_or_writes(tmp_path: Path) -> None:
    from semwatch.config import QueueConfig
    from semwatch.queue import QueueError, open_queue

    cfg = QueueConfig(database_url=f"sqlite:///{tmp_path / 'q.db'}")
    with pytest.raises(QueueError):
        open_queue(cfg, read_only=True)
    assert not (tmp_path / "q.db").exists()
    open_queue(cfg).close()  # what the daemon does at its first start
    queue = open_queue(cfg, read_only=True)
    try:
        assert queue.stats().counts["pending"] == 0
        with pytest.raises(QueueError, match="readonly|read-only|read only"):
            queue.enqueue("x.png", "0" * 64, 1, 0.0)
    finally:
        queue.close()


# --------------------------------------------------------------------------- styles (#20)


def test_folder_style_paths_never_leave_the_watch_folder(tmp_path: Path) -> None:
    from semwatch.app.service import folder_style_target, read_watch_style, watch_styles
    from semwatch.styles import STYLE_FILENAME, StyleError

    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    (inbox / "series" / "deep").mkdir(parents=True)
    outside.mkdir()
    (inbox / "series" / STYLE_FILENAME).write_text("{}")
    (inbox / "series" / "deep" / STYLE_FILENAME).write_text("{}")
    (outside / STYLE_FILENAME).write_text("{}")
    (inbox / "escape").symlink_to(outside)  # a folder leading out: not walked, not written
    (inbox / "linked").mkdir()
    (inbox / "linked" / STYLE_FILENAME).symlink_to(outside / STYLE_FILENAME)  # a file leading out

    assert watch_styles(inbox) == [Path("series", STYLE_FILENAME), Path("series", "deep", STYLE_FILENAME)]
    assert folder_style_target(inbox, inbox / "series" / "a.tif") == inbox / "series" / STYLE_FILENAME
    with pytest.raises(StyleError, match="leads outside the watch folder"):
        folder_style_target(inbox, inbox / "escape" / "a.tif")
    with pytest.raises(StyleError, match="leads outside the watch folder"):
        folder_style_target(inbox, inbox / "linked" / "a.tif")
    for relative in (Path("..", "outside", STYLE_FILENAME), Path("escape", STYLE_FILENAME)):
        with pytest.raises(StyleError, match="not a style file inside the watch folder"):
            read_watch_style(inbox, relative)


def test_a_style_upload_is_read_as_strictly_as_a_file() -> None:
    from semwatch.app.service import read_style_upload
    from semwatch.styles import MAX_STYLE_BYTES, StyleError

    with pytest.raises(StyleError, match=r"^notes.json: not JSON \(line 1"):
        read_style_upload(b"my notes", "notes.json")
    with pytest.raises(StyleError, match=r"^x.json: not a semwatch style file"):
        read_style_upload(b'{"format": "other"}', "../../x.json")  # the name shown, never a path
    with pytest.raises(StyleError, match="larger than 4 MB"):
        read_style_upload(b" " * (MAX_STYLE_BYTES + 1), "big.json")


def test_a_style_and_the_spread_setting_stay_when_the_next_image_opens() -> None:
    from semwatch.app.workspace import Source, Workspace
    from semwatch.hints import Hint
    from semwatch.styles import Style, StylePrototype

    hint = Hint.from_color(1, 1, "#e0b030")
    style = Style("s", "2026", "m", "0" * 64, "gray", (1,), (0.0,), "a.png", "1" * 64, (4, 4), (hint,),
                  (StylePrototype(0, (1.0,)),))  # fmt: skip
    image = None  # the workspace never looks at the decoded image
    work = Workspace()
    work.open(Source("a.png", "a.png", image, np.zeros((1, 1, 3), np.uint8)), 0.0)  # type: ignore[arg-type]
    work.restyle(style, 1.0)
    work.set_spread(True, 1.0)
    assert work.recipe().steered and not work.unsaved()  # a style alone is kept: nothing to lose
    work.open(Source("b.png", "b.png", image, np.zeros((1, 1, 3), np.uint8)), 2.0)  # type: ignore[arg-type]
    assert work.style is style and work.spread
    work.steer((hint,), 3.0)
    assert work.unsaved()
