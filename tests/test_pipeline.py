"""The shared pipeline (decode -> colorize -> write + provenance) on real files with a tiny
generator; and `semwatch colorize` falling back image by image through it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from semwatch.cli import main
from semwatch.engine import Colorizer
from semwatch.hashing import sha256_file
from semwatch.hints import Hint
from semwatch.imaging import TEMP_PREFIX, read_provenance
from semwatch.pipeline import OutputSettings, Pipeline, Task, colorize_batch, decode

MAX_PIXELS = 10_000_000


@pytest.fixture(scope="module")
def colorizer(tiny_model: Path) -> Colorizer:
    return Colorizer.from_file(tiny_model, device="cpu", backend="eager", chroma_size=64, batch_size=4)


def gray_png(path: Path, shape: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def tasks_for(sources: list[Path], out: Path, suffix: str = ".tif") -> list[Task]:
    return [Task(source, out / (source.stem + suffix)) for source in sources]


def no_temp_files(folder: Path) -> bool:
    return not any(p.name.startswith(TEMP_PREFIX) for p in folder.rglob("*"))


def test_a_batch_is_written_with_one_result_each(tmp_path: Path, colorizer: Colorizer) -> None:
    sources = [gray_png(tmp_path / "in" / f"{i}.png", seed=i) for i in range(3)]
    tasks = tasks_for(sources, tmp_path / "out")
    seen = []
    results = Pipeline(colorizer, OutputSettings("tiff"), max_pixels=MAX_PIXELS).run(tasks, seen.append)
    assert results == seen
    assert sorted(r.task.source.name for r in results) == ["0.png", "1.png", "2.png"]
    assert all(r.ok for r in results), [r.line for r in results]
    for task in tasks:
        with Image.open(task.target) as image:
            assert (image.mode, image.size) == ("RGB", (64, 48))


def test_a_bad_file_fails_alone_with_a_line_naming_it(tmp_path: Path, colorizer: Colorizer) -> None:
    good = [gray_png(tmp_path / "in" / f"{i}.png", seed=i) for i in range(3)]
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    tasks = tasks_for([good[0], bad, *good[1:]], tmp_path / "out")
    results = Pipeline(colorizer, OutputSettings("tiff"), max_pixels=MAX_PIXELS).run(tasks)
    failed = [r for r in results if not r.ok]
    assert [r.task.source for r in failed] == [bad]
    assert str(bad) in failed[0].line and "\n" not in failed[0].line
    assert all(t.target.is_file() for t in tasks if t.source != bad)
    assert not (tmp_path / "out" / "broken.tif").exists()


def test_an_image_that_breaks_the_engine_costs_only_its_own_output(
    tmp_path: Path, colorizer: Colorizer
) -> None:
    images = [decode(gray_png(tmp_path / f"{i}.png", seed=i), max_pixels=MAX_PIXELS) for i in range(3)]
    # Decoded fine, refused by the engine (it takes 8-bit gray only): the whole batch fails.
    wrong = dataclasses.replace(images[1], gray=images[1].gray.astype(np.float32))
    with pytest.raises(ValueError):
        colorizer.colorize([images[0], wrong, images[2]])
    results = colorize_batch(colorizer, [images[0], wrong, images[2]])
    assert isinstance(results[1], ValueError)
    for got, image in zip((results[0], results[2]), (images[0], images[2])):
        assert isinstance(got, np.ndarray) and got.shape == image.gray.shape + (3,)
        np.testing.assert_array_equal(got, colorizer.colorize([image])[0])


def test_a_failed_encode_leaves_no_partial_output(tmp_path: Path, colorizer: Colorizer) -> None:
    source = gray_png(tmp_path / "in" / "a.png")
    target = tmp_path / "out" / "a.jpg"
    target.parent.mkdir()
    target.write_bytes(b"the previous output")
    # A JPEG comment holds at most 64 KiB: this provenance record fails inside the encoder.
    task = Task(source, target, source_path="x" * 70_000)
    results = Pipeline(colorizer, OutputSettings("jpeg"), max_pixels=MAX_PIXELS).run([task])
    assert not results[0].ok
    assert (
        results[0].error.startswith(f"cannot write {target}: ") and "Comment is too long" in results[0].error
    )
    assert target.read_bytes() == b"the previous output"
    assert no_temp_files(tmp_path / "out")


def test_provenance_records_the_engine_and_the_source(
    tmp_path: Path, colorizer: Colorizer, tiny_model: Path
) -> None:
    source = gray_png(tmp_path / "in" / "a.png")
    hint = Hint.from_color(10, 20, "#e0b030")
    task = Task(source, tmp_path / "out" / "a.png", hints=(hint,))
    results = Pipeline(colorizer, OutputSettings("png"), max_pixels=MAX_PIXELS).run([task])
    assert results[0].ok, results[0].line
    record = read_provenance(task.target)["semwatch"]
    assert record["source"]["path"] == str(source)
    assert record["source"]["sha256"] == sha256_file(source)
    assert record["source"]["shape"] == [48, 64]
    assert record["model"] == {"name": "tiny-random", "sha256": sha256_file(tiny_model)}
    assert (record["backend"], record["device"], record["chroma_size"]) == ("eager", "cpu", 64)
    assert record["precision"] == colorizer.precision
    assert record["refinement"] == colorizer.refinement.as_dict()
    assert record["hints"] == [{"x": 10, "y": 20, "color": "#e0b030"}]


def test_semwatch_colorize_falls_back_image_by_image(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch holding one image the device cannot take (a GPU out of memory on the big one;
    no GPU here, so that failure is simulated) fails; the CLI then colorizes its images one
    by one, and only the big one fails."""
    for i in range(3):
        gray_png(tmp_path / "in" / f"s{i}.png", seed=i)
    big = gray_png(tmp_path / "in" / "big.png", shape=(96, 128), seed=9)
    real = Colorizer.colorize

    def out_of_memory_on_big(self, images, hints=None):
        if any(image.gray.size > 48 * 64 for image in images):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, images, hints)

    monkeypatch.setattr(Colorizer, "colorize", out_of_memory_on_big)
    config = tmp_path / "config.toml"
    config.write_text("")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["colorize", str(tmp_path / "in"), "-o", str(out), "--model", str(tiny_model), "--device", "cpu"]
        + ["--chroma-size", "64", "--batch-size", "4", "-q", "--config", str(config)],
    )
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {big}: colorization failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    ]
    assert sorted(p.name for p in out.iterdir()) == ["s0.tif", "s1.tif", "s2.tif"]
    assert "colorized 3 of 4 images, 1 failed" in result.output
