"""`semwatch colorize` on generated images and on every real SEM file: in process through
click's runner, and as a real process where the entry point and its exit code are the point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cli_runs
import numpy as np
import pytest
import tifffile
from cli_runs import Ran
from conftest import sem_real_files
from helpers import bomb_tiff_bytes, max_lightness_error, raw_tiff_tag, textured_gray
from PIL import Image

from semwatch.cli import main
from semwatch.imaging import read_image, read_provenance
from semwatch.model import file_sha256

VENDOR_TAGS = (34680, 34682, 34118)


def in_process(*args: str) -> Ran:
    return cli_runs.in_process(main, args)


def as_process(*args: str) -> Ran:
    return cli_runs.as_process("semwatch", args, timeout=300)


def colorize(inputs, out: Path, model: Path, *extra: str, run: Callable[..., Ran] = in_process) -> Ran:
    return run(
        "colorize",
        *map(str, inputs),
        "--output-dir",
        str(out),
        "--model",
        str(model),
        "--chroma-size",
        "128",
        "--device",
        "cpu",
        "-q",
        *extra,
    )


def provenance_of(path: Path) -> dict:
    record = read_provenance(path)
    assert record is not None, f"{path}: no provenance record"
    return record


def check_output(source: Path, output: Path, model: Path) -> None:
    decoded = read_image(source)
    with tifffile.TiffFile(output) as tif:
        rgb = tif.pages[0].asarray()
    assert rgb.shape == decoded.gray.shape + (3,), source.name
    assert max_lightness_error(rgb, decoded.gray) <= 1.0, source.name
    if decoded.databar_row is not None:
        bar = rgb[decoded.databar_row :]
        for channel in range(3):
            assert np.array_equal(bar[..., channel], decoded.gray[decoded.databar_row :]), source.name
    record = provenance_of(output)["semwatch"]
    assert record["source"]["sha256"] == file_sha256(source)
    assert record["model"]["sha256"] == file_sha256(model)
    assert record["source"]["size"] == source.stat().st_size
    assert record["databar_row"] == decoded.databar_row
    if source.suffix.lower() in (".tif", ".tiff"):
        for code in VENDOR_TAGS:
            assert raw_tiff_tag(output, code) == raw_tiff_tag(source, code), (source.name, code)


# Slow: every real file (up to 2k x 2k, 16-bit) through decode, network and the TIFF writer;
# the fast loop colorizes real files in test_default_model and decodes each in test_imaging.
@pytest.mark.slow
@pytest.mark.realdata
def test_every_real_sem_file(tmp_path, tiny_model, shared_data):
    files = sem_real_files()
    assert files, "no files in sem-real"
    out = tmp_path / "out"
    result = colorize(files, out, tiny_model)
    assert result.returncode == 0, result.stderr
    for source in files:
        check_output(source, out / (source.stem + ".tif"), tiny_model)
    assert f"colorized {len(files)} of {len(files)}" in result.stderr


def test_generated_images_folder_and_formats(tmp_path, tiny_model):
    src = tmp_path / "src"
    (src / "day1").mkdir(parents=True)
    gray = textured_gray(120, 160)
    Image.fromarray(gray).save(src / "a.png")
    tifffile.imwrite(src / "day1" / "b.tif", (gray.astype(np.uint16) * 257))
    Image.fromarray(gray).save(src / "day1" / "c.jpg", quality=95)
    out = tmp_path / "out"
    result = colorize([src], out, tiny_model)
    assert result.returncode == 0, result.stderr
    for rel, source in [("a.tif", "a.png"), ("day1/b.tif", "day1/b.tif"), ("day1/c.tif", "day1/c.jpg")]:
        check_output(src / source, out / rel, tiny_model)
    png_out = tmp_path / "png"
    result = colorize([src / "a.png"], png_out, tiny_model, "--format", "png")
    assert result.returncode == 0, result.stderr
    assert provenance_of(png_out / "a.png")["semwatch"]["source"]["sha256"] == file_sha256(src / "a.png")
    jpg_out = tmp_path / "jpg"
    result = colorize([src / "a.png"], jpg_out, tiny_model, "--format", "jpeg")
    assert result.returncode == 0, result.stderr
    assert provenance_of(jpg_out / "a.jpg")["semwatch"]["model"]["sha256"] == file_sha256(tiny_model)


def test_engine_refinements_come_from_the_config_and_are_recorded(tmp_path, tiny_model):
    source = tmp_path / "a.png"
    Image.fromarray(textured_gray(120, 160)).save(source)
    config = tmp_path / "site.toml"
    config.write_text(
        "[engine]\nhue_scale = 0.15\nguide_radius = 4\nguide_eps = 0.02\nregion_hue = 0.5\n"
        "region_size = 96\nregion_scale = 80.0\nchroma_gain = 0.8\n"
    )
    out = tmp_path / "out"
    result = colorize([source], out, tiny_model, "--config", str(config))
    assert result.returncode == 0, result.stderr
    record = provenance_of(out / "a.tif")["semwatch"]
    assert record["refinement"] == {
        "hue_scale": 0.15,
        "guide_radius": 4,
        "guide_eps": 0.02,
        "region_hue": 0.5,
        "region_size": 96,
        "region_scale": 80.0,
        "chroma_gain": 0.8,
    }


@pytest.mark.parametrize("run", [in_process, pytest.param(as_process, marks=pytest.mark.slow)])
def test_bad_inputs_fail_one_line_each_and_the_rest_is_done(tmp_path, tiny_model, run):
    src = tmp_path / "src"
    src.mkdir()
    good = textured_gray(64, 80)
    Image.fromarray(good).save(src / "good1.png")
    Image.fromarray(good).save(src / "good2.png")
    (src / "empty.tif").write_bytes(b"")
    (src / "notes.tif").write_text("this is a text file, not a TIFF\n")
    (src / "noise.png").write_bytes(np.random.default_rng(0).bytes(5000))
    tifffile.imwrite(src / "whole.tif", textured_gray(256, 256))
    (src / "truncated.tif").write_bytes((src / "whole.tif").read_bytes()[:3000])
    (src / "whole.tif").unlink()
    (src / "bomb.tif").write_bytes(bomb_tiff_bytes())
    out = tmp_path / "out"
    result = colorize([src], out, tiny_model, run=run)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    bad = {"empty.tif", "notes.tif", "noise.png", "truncated.tif", "bomb.tif"}
    assert len(errors) == len(bad), result.stderr
    for name in bad:
        assert sum(name in line for line in errors) == 1, (name, errors)
    assert sorted(p.name for p in out.iterdir()) == ["good1.tif", "good2.tif"]
    assert "colorized 2 of 7 images, 5 failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_collision_is_an_error_before_any_work(tmp_path, tiny_model):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(textured_gray(40, 40)).save(src / "x.png")
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(textured_gray(40, 40)).save(other / "x.png")
    out = tmp_path / "out"
    result = colorize([src / "x.png", other / "x.png"], out, tiny_model)
    assert result.returncode == 2
    assert "would both be written" in result.stderr
    assert not out.exists()


def test_same_stem_in_one_folder_keeps_both(tmp_path, tiny_model):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(textured_gray(40, 40)).save(src / "x.png")
    tifffile.imwrite(src / "x.tif", textured_gray(40, 40))
    tifffile.imwrite(src / "x.TIF", textured_gray(40, 40, seed=1))  # the extension's case too
    out = tmp_path / "out"
    assert colorize([src], out, tiny_model).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["x.TIF.tif", "x.png.tif", "x.tif"]


def test_existing_output_needs_overwrite(tmp_path, tiny_model):
    src = tmp_path / "a.png"
    Image.fromarray(textured_gray(40, 40)).save(src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.tif").write_bytes(b"precious")
    result = colorize([src], out, tiny_model)
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (out / "a.tif").read_bytes() == b"precious"
    assert colorize([src], out, tiny_model, "--overwrite").returncode == 0
    assert (out / "a.tif").read_bytes()[:2] in (b"II", b"MM")


def test_missing_input_and_missing_model(tmp_path, tiny_model):
    result = colorize([tmp_path / "nope.tif"], tmp_path / "out", tiny_model)
    assert result.returncode == 2 and "nope.tif" in result.stderr
    src = tmp_path / "a.png"
    Image.fromarray(textured_gray(40, 40)).save(src)
    result = colorize([src], tmp_path / "out", tmp_path / "missing.safetensors")
    assert result.returncode == 1 and "missing.safetensors" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_and_help():
    result = as_process("--version")
    assert result.returncode == 0 and "semwatch, version" in result.stdout
    result = as_process("colorize", "--help")
    assert "--output-dir" in result.stdout and "--overwrite" in result.stdout
