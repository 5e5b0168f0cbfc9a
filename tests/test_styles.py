"""Colour styles (issue 20): the file format, making one, applying it in the engine and
through `semwatch colorize`, the model check and re-derivation, and which style a watch
folder's file gets. The service end to end is in test_daemon_styles.py."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cli_runs
import numpy as np
import pytest
import torch
from PIL import Image

from semwatch.cli import main
from semwatch.engine import Colorizer, GrayImage
from semwatch.hints import Hint
from semwatch.imaging import read_provenance
from semwatch.model import GeneratorConfig, build_generator, save_generator
from semwatch.styles import (
    STYLE_FILENAME,
    StyleError,
    StyleFinder,
    load_style,
    make_style,
    parse_style,
    save_style,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BLUE = "#2050ff"
YELLOW = "#e0c020"


def _model(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    config = GeneratorConfig(decoder_width=8, in_channels=4)
    save_generator(path, build_generator(config), config, {"name": f"tiny-{seed}"})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("models")
    return _model(folder / "one.safetensors", 1), _model(folder / "two.safetensors", 2)


def discs(height: int, width: int, centres: list[tuple[int, int]], radius: int, seed: int = 0) -> np.ndarray:
    """Bright grainy discs on a dark smooth field: two kinds of object a colorist paints apart."""
    y, x = np.mgrid[0:height, 0:width]
    inside = np.zeros((height, width), dtype=bool)
    for cy, cx in centres:
        inside |= (x - cx) ** 2 + (y - cy) ** 2 < radius**2
    rng = np.random.default_rng(seed)
    gray = np.where(inside, 200 + rng.normal(0, 12, inside.shape), 50 + rng.normal(0, 2, inside.shape))
    return np.clip(gray, 0, 255).astype(np.uint8)


def disc_mask(height: int, width: int, centres: list[tuple[int, int]], radius: int) -> torch.Tensor:
    y, x = np.mgrid[0:height, 0:width]
    inside = np.zeros((height, width), dtype=bool)
    for cy, cx in centres:
        inside |= (x - cx) ** 2 + (y - cy) ** 2 < radius**2
    return torch.from_numpy(inside)


def hue_agreement(ab: torch.Tensor, mask: torch.Tensor, color: str) -> float:
    """Mean cos(hue - the colour's hue) over ``mask``: 1 = exactly that hue."""
    target = Hint.from_color(0, 0, color)
    hue = torch.atan2(ab[1][mask], ab[0][mask])
    return float(torch.cos(hue - math.atan2(target.b, target.a)).mean())


REFERENCE = discs(240, 320, [(120, 100)], 60)
REFERENCE_HINTS = [Hint.from_color(100, 120, BLUE), Hint.from_color(280, 30, YELLOW)]


def make_reference_style(
    engine: Colorizer, hints: list[Hint] = REFERENCE_HINTS, name: str = "discs", **options: object
):
    return make_style(
        engine, GrayImage(REFERENCE), hints, name=name, source_name="ref.png", source_sha256="a" * 64,
        **options,
    )  # fmt: skip


# ------------------------------------------------------------------ the file


def test_style_round_trips_through_its_file_and_reads_as_json(models, tmp_path: Path) -> None:
    engine = Colorizer.from_file(models[0], device="cpu", chroma_size=128)
    # Without a palette (test_palette_use.py has the version 2 file that carries one).
    style = make_reference_style(engine, hint_palette=False)
    assert style.colors() == [BLUE, YELLOW] and len(style.prototypes) == 2
    assert style.model_sha256 == engine.model_sha256 and style.source_shape == (240, 320)
    saved = save_style(style, tmp_path / "s.json")
    loaded = load_style(tmp_path / "s.json")
    assert loaded == saved  # equal in every field (vectors rounded to 5 digits on both)
    assert loaded.sha256 == saved.sha256 and len(loaded.sha256) == 64
    assert loaded.record == {"name": "discs", "sha256": saved.sha256}
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["format"] == "semwatch-style" and data["version"] == 1
    assert [c["color"] for c in data["colors"]] == [BLUE, YELLOW]
    assert data["hints"][0] == {"x": 100, "y": 120, "color": BLUE}
    assert len(data["features"]["centre"]) == sum(data["features"]["parts"])


def _valid(tmp_path: Path, models) -> dict:
    engine = Colorizer.from_file(models[0], device="cpu", chroma_size=128)
    return make_reference_style(engine).to_json()


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda d: d.update(format="other"), "not a semwatch style file"),
        (lambda d: d.update(version=9), "style version 9 is not supported"),
        (lambda d: d.pop("colors"), "missing key(s) colors"),
        (lambda d: d.update(extra=1), "unknown key(s) extra"),
        (lambda d: d.update(name=""), "name must be a non-empty string"),
        (lambda d: d["model"].update(sha256="xyz"), "model.sha256 must be a SHA-256"),
        (lambda d: d["features"].update(kind="magic/1"), "features.kind 'magic/1' is not known"),
        (lambda d: d["colors"][0]["prototypes"][0].update(hint=7), "must be the index of one of the 2 hints"),
        (lambda d: d["colors"][0]["prototypes"][0].update(hint=1), "hint 1 is #e0c020, not this colour"),
        (lambda d: d["colors"][0]["prototypes"][0]["vector"].pop(), "numbers, features.centre"),
        (lambda d: d["colors"][0]["prototypes"][0]["vector"].__setitem__(0, "x"), "finite numbers"),
        (lambda d: d["hints"][0].update(color="blue"), "hints[0]: colour 'blue'"),
    ],
)
def test_a_broken_style_is_one_line_naming_the_file(models, tmp_path: Path, change, reason) -> None:
    data = _valid(tmp_path, models)
    change(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    with pytest.raises(StyleError) as info:
        load_style(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and reason in text and "\n" not in text


def test_unreadable_and_non_json_style_files(tmp_path: Path) -> None:
    with pytest.raises(StyleError, match=r"missing.json: cannot read style file"):
        load_style(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"format": ')
    with pytest.raises(StyleError, match=r"bad.json: not JSON \(line 1"):
        load_style(tmp_path / "bad.json")
    with pytest.raises(StyleError, match="expected a JSON object"):
        parse_style([], "x.json")


# ------------------------------------------------------------------ applying


def test_a_style_colours_the_matching_objects_of_another_frame(models) -> None:
    engine = Colorizer.from_file(models[0], device="cpu", chroma_size=128)
    style = make_reference_style(engine)
    # Another field of view: two smaller discs elsewhere, another noise, another size.
    centres = [(70, 90), (150, 260)]
    frame = discs(200, 360, centres, 45, seed=5)
    plain, styled = engine.predict_ab([GrayImage(frame)] * 2, styles=[None, style])
    inside = disc_mask(200, 360, centres, 35)
    outside = ~disc_mask(200, 360, centres, 60)
    assert hue_agreement(styled, inside, BLUE) > 0.95
    assert hue_agreement(styled, outside, YELLOW) > 0.95
    assert hue_agreement(plain, inside, BLUE) < 0.9  # not what the automatic colour gives


def test_regions_that_match_nothing_keep_the_automatic_colour(models) -> None:
    engine = Colorizer.from_file(models[0], device="cpu", chroma_size=128)
    style = make_reference_style(engine, [REFERENCE_HINTS[0]], name="only the discs")
    centres = [(70, 90), (150, 260)]
    frame = GrayImage(discs(200, 360, centres, 45, seed=5))
    plain, styled = engine.predict_ab([frame, frame], styles=[None, style])
    assert hue_agreement(styled, disc_mask(200, 360, centres, 35), BLUE) > 0.95
    outside = ~disc_mask(200, 360, centres, 60)
    assert float((styled[:, outside] - plain[:, outside]).norm(dim=0).median()) < 3.0


def test_a_matched_region_takes_the_annealed_mean_of_the_prototypes_colours() -> None:
    """A clear winner gives its own colour, a near tie a colour between the two (not a coin
    toss); the gray-statistics baseline always gives the nearest prototype's own colour."""
    from semwatch.prototypes import ENCODER_FEATURES, GRAY_FEATURES, MATCH_TEMPERATURE, Prototype, match

    yellow = Prototype(torch.tensor([1.0, 0.0]), 10.0, 60.0, YELLOW)
    blue = Prototype(torch.tensor([0.0, 1.0]), 10.0, -60.0, BLUE)
    tie = torch.tensor([0.6, 0.6])
    clear = torch.tensor([1.0, 0.0])
    unlike = torch.tensor([-1.0, -0.2])
    found = match(torch.stack((tie, clear, unlike)), [yellow, blue], 0.0, ENCODER_FEATURES)
    assert found.matched.tolist() == [True, True, False]
    assert found.ab[0].tolist() == pytest.approx([10.0, 0.0], abs=1e-4)
    weight = 1.0 / (1.0 + math.exp(-1.0 / MATCH_TEMPERATURE))
    assert float(found.ab[1, 1]) == pytest.approx(60.0 * (2 * weight - 1), abs=1e-3)
    assert float(found.ab[1, 1]) > 59.0
    nearest = match(
        torch.stack((tie + torch.tensor([0.01, 0.0]), clear)), [yellow, blue], -1e9, GRAY_FEATURES
    )
    assert nearest.ab.tolist() == [[10.0, 60.0], [10.0, 60.0]]


def test_a_style_from_another_model_is_refused_in_one_line(models) -> None:
    style = make_reference_style(Colorizer.from_file(models[0], device="cpu", chroma_size=128))
    other = Colorizer.from_file(models[1], device="cpu", chroma_size=128)
    with pytest.raises(StyleError) as info:
        other.colorize([GrayImage(REFERENCE)], styles=[style])
    text = str(info.value)
    assert "style made with model tiny-1" in text and "tiny-2" in text and "\n" not in text
    assert "semwatch style make ref.png --from" in text


# ------------------------------------------------------------------ the command line


def semwatch(*args: str) -> cli_runs.Ran:
    return cli_runs.in_process(main, args)


def test_style_make_show_and_colorize_with_it(models, tmp_path: Path) -> None:
    Image.fromarray(REFERENCE).save(tmp_path / "ref.png")
    Image.fromarray(discs(200, 360, [(70, 90), (150, 260)], 45, seed=5)).save(tmp_path / "next.png")
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps({"hints": [h.as_record() for h in REFERENCE_HINTS]}))
    style_path = tmp_path / "style.json"
    common = ("--model", str(models[0]), "--device", "cpu")
    made = semwatch("style", "make", str(tmp_path / "ref.png"), "--hints", str(hints), "-o", str(style_path),
                    "--name", "discs", *common)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "2 colours from 2 hints" in made.stderr
    shown = semwatch("style", "show", str(style_path))
    assert shown.returncode == 0, shown.stderr
    assert "style    discs" in shown.stdout and f"{BLUE}  1 object at (100, 120)" in shown.stdout
    out = tmp_path / "out"
    done = semwatch("colorize", str(tmp_path / "next.png"), "-o", str(out), "--style", str(style_path),
                    "--format", "png", "-q", "--chroma-size", "128", *common)  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = read_provenance(out / "next.png")["semwatch"]
    assert record["style"] == {"name": "discs", "sha256": load_style(style_path).sha256}
    # A broken style is a usage error naming the file, before any model is loaded.
    (tmp_path / "broken.json").write_text("{}")
    bad = semwatch("colorize", str(tmp_path / "next.png"), "-o", str(out), "--style",
                   str(tmp_path / "broken.json"), "--overwrite", *common)  # fmt: skip
    assert bad.returncode == 2 and f"{tmp_path / 'broken.json'}: not a semwatch style file" in bad.stderr


def test_a_style_is_re_derived_for_another_model_from_its_own_source(models, tmp_path: Path) -> None:
    Image.fromarray(REFERENCE).save(tmp_path / "ref.png")
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps({"hints": [h.as_record() for h in REFERENCE_HINTS]}))
    old = tmp_path / "old.json"
    assert semwatch("style", "make", str(tmp_path / "ref.png"), "--hints", str(hints), "-o", str(old),
                    "--model", str(models[0]), "--device", "cpu").returncode == 0  # fmt: skip
    new = tmp_path / "new.json"
    again = semwatch("style", "make", str(tmp_path / "ref.png"), "--from", str(old), "-o", str(new),
                     "--model", str(models[1]), "--device", "cpu")  # fmt: skip
    assert again.returncode == 0, again.stderr
    old_style, new_style = load_style(old), load_style(new)
    assert new_style.name == "ref" == old_style.name and new_style.hints == old_style.hints
    assert new_style.model_name == "tiny-2" and new_style.source_sha256 == old_style.source_sha256
    # Another image is not the style's source: refused, naming both.
    Image.fromarray(np.flipud(REFERENCE).copy()).save(tmp_path / "other.png")
    wrong = semwatch("style", "make", str(tmp_path / "other.png"), "--from", str(old), "-o", str(new),
                     "--model", str(models[1]), "--device", "cpu")  # fmt: skip
    assert wrong.returncode == 1 and "other.png: not the source of" in wrong.stderr


# ------------------------------------------------------------------ watch folders


def test_the_nearest_style_file_up_the_tree_wins(models, tmp_path: Path) -> None:
    engine = Colorizer.from_file(models[0], device="cpu", chroma_size=128)
    root = tmp_path / "watch"
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    top = save_style(make_reference_style(engine, name="top"), root / STYLE_FILENAME)
    inner = save_style(make_reference_style(engine, name="inner"), root / "a" / STYLE_FILENAME)
    default = save_style(make_reference_style(engine, name="default"), tmp_path / "default.json")
    finder = StyleFinder(root, Path(default.path))
    assert finder.style_for(root / "a" / "b" / "x.tif").name == "inner"
    assert finder.style_for(root / "c" / "x.tif").name == "top"
    os.remove(top.path)
    assert finder.style_for(root / "c" / "x.tif").name == "default"
    assert StyleFinder(root).style_for(root / "c" / "x.tif") is None
    # Read again when changed, kept while unchanged.
    first = finder.style_for(root / "a" / "x.tif")
    assert finder.style_for(root / "a" / "x.tif") is first
    save_style(make_reference_style(engine, name="edited"), Path(inner.path))
    assert finder.style_for(root / "a" / "x.tif").name == "edited"


def test_a_style_file_leading_out_of_the_watch_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "watch"
    root.mkdir()
    (tmp_path / "elsewhere.json").write_text("{}")
    (root / STYLE_FILENAME).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(StyleError, match="leads outside the watch folder"):
        StyleFinder(root).style_for(root / "x.tif")
    with pytest.raises(StyleError, match="not inside the watch folder"):
        StyleFinder(root).style_for(tmp_path / "x.tif")
