"""Where a person or a style gives a palette (issue 23, item 3): `semwatch colorize
--palette`, the style file's palette and `semwatch style make --palette`, the rule that a
palette given for an image wins over its style's, and the provenance record of each.
The palette itself and the network's use of it are in test_palette.py; the daemon's folder
style in test_daemon_styles.py; the web UI in test_app_browser.py."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import Ran, in_process
from helpers import write_palette_model
from PIL import Image
from test_styles import BLUE, REFERENCE, REFERENCE_HINTS, YELLOW, discs, make_reference_style

from semwatch.cli import main as semwatch_main
from semwatch.color import lab_to_rgb
from semwatch.config import EngineConfig
from semwatch.engine import Colorizer, GrayImage
from semwatch.hints import Hint
from semwatch.imaging import read_provenance
from semwatch.palette import palette_of_hints, parse_palette
from semwatch.pipeline import OutputSettings, Pipeline, Task
from semwatch.styles import StyleError, load_style, make_style, palette_for, save_style

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TWO = "#e0b030,#3060d0"
FRAME = discs(200, 360, [(70, 90), (150, 260)], 45, seed=5)


@pytest.fixture(scope="module")
def palette_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_palette_model(tmp_path_factory.mktemp("models") / "palette.safetensors")


@pytest.fixture(scope="module")
def engine(palette_model: Path) -> Colorizer:
    return Colorizer.from_file(palette_model, device="cpu", chroma_size=128)


def semwatch(*args: str) -> Ran:
    """The command line in process (click's runner): the same exit code and streams,
    without an interpreter importing torch for each call."""
    return in_process(semwatch_main, args)


def colorize(source: Path, out: Path, model: Path, *extra: str) -> Ran:
    return semwatch("colorize", str(source), "-o", str(out), "--model", str(model), "--device", "cpu",
                    "--chroma-size", "128", "--format", "png", "-q", *extra)  # fmt: skip


# ------------------------------------------------------------------ semwatch colorize --palette


def test_colorize_palette_is_used_recorded_and_a_bad_one_is_one_line(
    palette_model: Path, tmp_path: Path
) -> None:
    source = tmp_path / "frame.png"
    Image.fromarray(FRAME).save(source)
    plain = colorize(source, tmp_path / "plain", palette_model)
    given = colorize(source, tmp_path / "given", palette_model, "--palette", TWO)
    assert plain.returncode == 0 and given.returncode == 0, plain.stderr + given.stderr
    assert "warning" not in given.stderr
    before = np.asarray(Image.open(tmp_path / "plain" / "frame.png")).astype(int)
    after = np.asarray(Image.open(tmp_path / "given" / "frame.png")).astype(int)
    assert np.abs(before - after).max() > 10  # the palette changed the colours
    record = read_provenance(tmp_path / "given" / "frame.png")["semwatch"]
    assert record["palette"] == {
        "colors": [{"color": "#e0b030", "weight": 0.5}, {"color": "#3060d0", "weight": 0.5}],
        "from": "given",
        "applied": True,
    }
    assert "palette" not in read_provenance(tmp_path / "plain" / "frame.png")["semwatch"]
    # A bad palette: a usage error (exit 2) in one line naming the option and the reason,
    # before any model is loaded or anything written.
    bad = colorize(source, tmp_path / "bad", palette_model, "--palette", "#e0b030,red")
    assert bad.returncode == 2, bad.stderr
    (line,) = [x for x in bad.stderr.splitlines() if "--palette" in x]
    assert "--palette '#e0b030,red'" in line and "not an sRGB hex colour" in line
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


def test_a_model_without_palette_input_still_takes_the_palettes_colours(
    tiny_model: Path, tmp_path: Path
) -> None:
    source = tmp_path / "frame.png"
    Image.fromarray(FRAME).save(source)
    plain = colorize(source, tmp_path / "plain", tiny_model)
    done = colorize(source, tmp_path / "out", tiny_model, "--palette", "#3060d0")
    assert plain.returncode == 0 and done.returncode == 0, plain.stderr + done.stderr
    assert "warning" not in done.stderr
    before = np.asarray(Image.open(tmp_path / "plain" / "frame.png")).astype(int)
    after = np.asarray(Image.open(tmp_path / "out" / "frame.png")).astype(int)
    # One colour: every coloured pixel turns blue (more blue than red), whatever it was.
    coloured = np.abs(after - after.mean(axis=2, keepdims=True)).max(axis=2) > 8
    assert coloured.mean() > 0.5 and (after[..., 2] > after[..., 0])[coloured].all()
    assert np.abs(before - after).max() > 10
    record = read_provenance(tmp_path / "out" / "frame.png")["semwatch"]
    assert record["palette"] == {
        "colors": [{"color": "#3060d0", "weight": 1.0}],
        "from": "given",
        "applied": True,
    }


# ------------------------------------------------------------------ the style file


def test_a_styles_palette_round_trips_and_needs_version_2(engine: Colorizer, tmp_path: Path) -> None:
    palette = parse_palette("#e0b030:3,#3060d0")
    saved = save_style(make_style(engine, GrayImage(REFERENCE), REFERENCE_HINTS, name="p", source_name="ref.png",
                                  source_sha256="a" * 64, palette=palette), tmp_path / "p.json")  # fmt: skip
    loaded = load_style(tmp_path / "p.json")
    assert loaded == saved and loaded.palette == palette
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["version"] == 2
    assert data["palette"] == [{"color": "#e0b030", "weight": 0.75}, {"color": "#3060d0", "weight": 0.25}]
    # Without a palette a style stays version 1, which older semwatch versions read.
    plain = save_style(make_reference_style(engine, hint_palette=False), tmp_path / "plain.json")
    assert plain.palette is None and json.loads((tmp_path / "plain.json").read_text())["version"] == 1
    # A palette in a version-1 file, or a broken one: one line naming the file.
    for change, reason in [
        ({"version": 1}, "unknown key(s) palette"),
        (
            {"palette": [{"color": "#e0b030", "weight": 0}]},
            "palette: weight '0' of #e0b030 must be a positive",
        ),
        ({"palette": "#e0b030,#3060d0,#ffffff,#000000,#123456"}, "palette: a palette has at most 4"),
    ]:
        broken = tmp_path / "broken.json"
        broken.write_text(json.dumps({**data, **change}))
        with pytest.raises(StyleError) as info:
            load_style(broken)
        assert str(info.value).startswith(f"{broken}: ") and reason in str(info.value), str(info.value)


@pytest.mark.parametrize("which", ["palette model", "plain model"])
def test_a_style_carries_its_hints_colours_weighted_by_their_objects(
    which: str, engine: Colorizer, tiny_model: Path
) -> None:
    """The reference's field (yellow hint) is most of the frame, its disc (blue) the rest:
    the style's palette is the person's two colours, the field's the heavier, whether or not
    the model takes a palette as input (the engine places it for any model)."""
    if which == "plain model":
        engine = Colorizer.from_file(tiny_model, device="cpu", chroma_size=128)
    palette = make_reference_style(engine).palette
    assert palette is not None and [c.color for c in palette.colours] == [YELLOW, BLUE]
    assert 0.6 < palette.colours[0].weight < 0.95, palette
    # The same colour clicked twice is one palette colour; near shades merge into it.
    twice = [*REFERENCE_HINTS, Hint.from_color(20, 220, YELLOW), Hint.from_color(300, 220, "#e8b838")]
    assert len(make_reference_style(engine, twice).palette.colours) == 2
    # Not asked for, or hints of one colour (it would paint every unmatched object): none.
    assert make_reference_style(engine, hint_palette=False).palette is None
    one_colour = [REFERENCE_HINTS[0], Hint.from_color(150, 100, "#2458f8")]
    assert make_reference_style(engine, one_colour).palette is None


def test_a_palette_given_for_the_image_wins_over_its_styles(engine: Colorizer) -> None:
    own, given = parse_palette(TWO), parse_palette("#30c060")
    # One hint (the discs): the field keeps the automatic colour, which a palette steers.
    disc = REFERENCE_HINTS[:1]
    bare = make_reference_style(engine, disc, hint_palette=False)
    with_palette = make_style(engine, GrayImage(REFERENCE), disc, name="p", source_name="ref.png",
                              source_sha256="a" * 64, palette=own)  # fmt: skip
    image = GrayImage(FRAME)
    (styled,) = engine.predict_ab([image], styles=[with_palette])
    (as_given,) = engine.predict_ab([image], styles=[bare], palettes=[own])
    (no_palette,) = engine.predict_ab([image], styles=[bare])
    assert float((styled - no_palette).abs().max()) > 1.0  # the style's palette is used ...
    assert torch_close(styled, as_given)  # ... exactly as if it had been given
    (overridden,) = engine.predict_ab([image], styles=[with_palette], palettes=[given])
    (given_only,) = engine.predict_ab([image], styles=[bare], palettes=[given])
    assert torch_close(overridden, given_only) and not torch_close(overridden, styled)


def torch_close(a, b) -> bool:  # noqa: ANN001 - tensors
    return bool((a - b).abs().max() < 1e-3)


def test_the_provenance_records_the_palette_used_and_where_it_came_from(
    engine: Colorizer, tmp_path: Path
) -> None:
    source = tmp_path / "frame.png"
    Image.fromarray(FRAME).save(source)
    style = make_style(engine, GrayImage(REFERENCE), REFERENCE_HINTS, name="p", source_name="ref.png",
                       source_sha256="a" * 64, palette=parse_palette(TWO))  # fmt: skip
    tasks = [
        Task(source, tmp_path / "style.png", style=style),
        Task(source, tmp_path / "given.png", style=style, palette=parse_palette("#30c060")),
        Task(source, tmp_path / "none.png"),
    ]
    results = Pipeline(engine, OutputSettings(fmt="png"), max_pixels=10**8).run(tasks)
    assert all(r.ok for r in results), [r.line for r in results]
    from_style = read_provenance(tmp_path / "style.png")["semwatch"]
    assert from_style["palette"] == {"colors": style.palette.as_record(), "from": "style", "applied": True}
    from_given = read_provenance(tmp_path / "given.png")["semwatch"]
    assert from_given["palette"] == {
        "colors": [{"color": "#30c060", "weight": 1.0}],
        "from": "given",
        "applied": True,
    }
    assert "palette" not in read_provenance(tmp_path / "none.png")["semwatch"]


def test_the_provenance_records_spread_only_where_it_changed_the_colour(
    engine: Colorizer, tmp_path: Path
) -> None:
    """--spread pulls every other region toward the hints: a different frame, so it is
    recorded (issue 20); without hints or a style it changes nothing and is left out."""
    source = tmp_path / "frame.png"
    Image.fromarray(FRAME).save(source)
    hints = tuple(REFERENCE_HINTS)
    tasks = [
        Task(source, tmp_path / "spread.png", hints=hints, spread=True),
        Task(source, tmp_path / "local.png", hints=hints),
        Task(source, tmp_path / "nothing.png", spread=True),
    ]
    results = Pipeline(engine, OutputSettings(fmt="png"), max_pixels=10**8).run(tasks)
    assert all(r.ok for r in results), [r.line for r in results]
    assert read_provenance(tmp_path / "spread.png")["semwatch"]["spread"] is True
    assert "spread" not in read_provenance(tmp_path / "local.png")["semwatch"]
    assert "spread" not in read_provenance(tmp_path / "nothing.png")["semwatch"]


# ------------------------------------------------------------------ semwatch style make / show


def test_style_make_stores_a_palette_and_show_prints_it(palette_model: Path, tmp_path: Path) -> None:
    Image.fromarray(REFERENCE).save(tmp_path / "ref.png")
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps({"hints": [h.as_record() for h in REFERENCE_HINTS]}))
    common = ("--model", str(palette_model), "--device", "cpu")
    path = tmp_path / "style.json"
    made = semwatch("style", "make", str(tmp_path / "ref.png"), "--hints", str(hints), "-o", str(path),
                    "--palette", "#e0b030:3,#3060d0", *common)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "palette #e0b030:0.75,#3060d0:0.25" in made.stderr
    shown = semwatch("style", "show", str(path))
    assert shown.returncode == 0, shown.stderr
    assert "palette  2 colours for the whole frame:" in shown.stdout
    assert "#e0b030  weight 0.75" in shown.stdout and "#3060d0  weight 0.25" in shown.stdout
    bad = semwatch("style", "make", str(tmp_path / "ref.png"), "--hints", str(hints), "-o",
                   str(tmp_path / "bad.json"), "--palette", "#e0b030:x", *common)  # fmt: skip
    assert (
        bad.returncode == 2 and "--palette '#e0b030:x': weight 'x' of #e0b030 is not a number" in bad.stderr
    )
    assert not (tmp_path / "bad.json").exists()
    # By default the hints' colours are the palette; "none" stores none, and re-deriving
    # (--from) keeps the old style's unless told otherwise.
    for option, expected in [((), [YELLOW, BLUE]), (("--palette", "none"), None)]:
        made = semwatch("style", "make", str(tmp_path / "ref.png"), "--hints", str(hints), "-o", str(path),
                        *option, *common)  # fmt: skip
        assert made.returncode == 0, made.stderr
        palette = load_style(path).palette
        assert (palette and [c.color for c in palette.colours]) == expected, (option, palette)
    again = tmp_path / "again.json"
    for option, expected in [((), None), (("--palette", "hints"), [YELLOW, BLUE])]:
        made = semwatch("style", "make", str(tmp_path / "ref.png"), "--from", str(path), "-o", str(again),
                        *option, *common)  # fmt: skip
        assert made.returncode == 0, made.stderr
        palette = load_style(again).palette
        assert (palette and [c.color for c in palette.colours]) == expected, (option, palette)


# ------------------------------------------------------------------ the web UI's downloads


def test_a_web_ui_download_records_the_palette_given_on_the_page(engine: Colorizer, tmp_path: Path) -> None:
    from app_harness import provenance_of_tiff

    from semwatch.app import service

    data = tmp_path / "frame.png"
    Image.fromarray(FRAME).save(data)
    image = service.decode_upload(data.read_bytes(), "frame.png", engine=EngineConfig())
    palette = parse_palette("#30c060:2,#c03070")
    plain = service.colorize(engine, image, [], source_path="frame.png")
    given = service.colorize(engine, image, [], source_path="frame.png", palette=palette)
    assert np.abs(plain.rgb.astype(int) - given.rgb.astype(int)).max() > 10
    record = provenance_of_tiff(service.encode(given, engine, fmt="tiff"))["semwatch"]
    assert record["palette"] == {"colors": palette.as_record(), "from": "given", "applied": True}
    assert "palette" not in provenance_of_tiff(service.encode(plain, engine, fmt="tiff"))["semwatch"]
    # "Save as style" keeps the palette given on the page.
    hinted = service.colorize(
        engine, image, list(REFERENCE_HINTS[:1]), source_path="frame.png", palette=palette
    )
    assert service.style_from_hints(engine, hinted, "page").palette == palette


def test_a_styles_palette_colours_a_model_without_palette_input(tiny_model: Path) -> None:
    plain = Colorizer.from_file(tiny_model, device="cpu", chroma_size=128)
    style = make_style(plain, GrayImage(REFERENCE), REFERENCE_HINTS[:1], name="p", source_name="ref.png",
                       source_sha256="a" * 64, palette=parse_palette(TWO))  # fmt: skip
    image = GrayImage(FRAME)
    (styled,) = plain.predict_ab([image], styles=[style])
    (without,) = plain.predict_ab([image], styles=[dataclasses.replace(style, palette=None)])
    assert not torch_close(styled, without)
    # The image's own palette wins over the style's.
    (own,) = plain.predict_ab([image], styles=[style], palettes=[parse_palette("#30c060")])
    assert not torch_close(own, styled)


# ------------------------------------------------------------------ the hints' own colours


def test_hints_of_two_colours_or_more_are_the_palette_one_colour_is_not() -> None:
    blue, yellow, near_blue = (Hint.from_color(0, 0, c) for c in (BLUE, YELLOW, "#2458f8"))
    palette = palette_of_hints([blue, yellow, near_blue, blue])
    # One share per hint, near colours merged: 3 of 4 hints are (near) blue.
    assert [c.color for c in palette.colours] == [BLUE, YELLOW]
    assert [round(c.weight, 2) for c in palette.colours] == [0.75, 0.25]
    # One colour, however many hints: no palette (it would paint every object in it).
    assert palette_of_hints([blue, near_blue]) is None and palette_of_hints([yellow]) is None
    assert palette_of_hints([]) is None
    # The order of the rule: given, then the style's, then the hints'.
    given, style_palette = parse_palette("#30c060"), parse_palette(TWO)
    styled = StyleWithPalette(style_palette)
    assert palette_for(None, None, [blue, yellow]) == (palette_of_hints([blue, yellow]), "hints")
    assert palette_for(None, styled, [blue, yellow]) == (style_palette, "style")  # type: ignore[arg-type]
    assert palette_for(given, styled, [blue, yellow]) == (given, "given")  # type: ignore[arg-type]
    assert palette_for(None, None, [blue]) == (None, None)


@dataclasses.dataclass(frozen=True)
class StyleWithPalette:
    """Only what palette_for reads of a style."""

    palette: object


def plate_frame() -> tuple[np.ndarray, np.ndarray]:
    """Two grainy discs on a dark field and a smooth mid-gray plate unlike either: a third
    kind of object no hint will fall on. Returns the frame and the plate's mask."""
    frame = discs(200, 360, [(70, 90), (150, 200)], 40, seed=5)
    plate = np.zeros(frame.shape, dtype=bool)
    plate[40:170, 270:345] = True
    frame[plate] = 128
    return frame, plate


def mean_hue(ab: torch.Tensor, mask: torch.Tensor) -> float:
    return math.atan2(float(ab[1][mask].mean()), float(ab[0][mask].mean()))


def test_objects_no_hint_reaches_take_the_hints_colours_when_there_are_two(tiny_model: Path) -> None:
    """A model without palette input: hints on a disc and on the field, none on the plate.
    With two colours the plate takes one of them; with one, it keeps its own colour."""
    plain = Colorizer.from_file(tiny_model, device="cpu", chroma_size=128)
    frame, plate = plate_frame()
    image = GrayImage(frame)
    (automatic,) = plain.predict_ab([image])
    small = torch.from_numpy(
        np.array(Image.fromarray(plate).resize(automatic.shape[:0:-1], Image.NEAREST), dtype=bool)
    )
    inner = (
        small
        & torch.roll(small, 2, 0)
        & torch.roll(small, -2, 0)
        & torch.roll(small, 2, 1)
        & torch.roll(small, -2, 1)
    )
    own = mean_hue(automatic, inner)
    # The hints' colours a third of the hue circle either side of the plate's own colour, so
    # "took a hint's colour" cannot be told apart from "kept its own" by chance.
    colours = [lab_hex(own + turn) for turn in (2.1, -2.1)]
    hints = [Hint.from_color(90, 70, colours[0]), Hint.from_color(20, 190, colours[1])]
    (two,) = plain.predict_ab([image], hints=[hints])
    (one,) = plain.predict_ab([image], hints=[hints[:1]])
    took = min(abs(angle_between(mean_hue(two, inner), h)) for h in (own + 2.1, own - 2.1))
    assert took < 0.35, (own, mean_hue(two, inner))
    assert abs(angle_between(mean_hue(one, inner), own)) < 0.35


def angle_between(a: float, b: float) -> float:
    return math.atan2(math.sin(a - b), math.cos(a - b))


def lab_hex(hue: float, chroma: float = 45.0, lightness: float = 60.0) -> str:
    """The sRGB hex colour at that Lab hue (radians)."""
    lab = torch.tensor([lightness, chroma * math.cos(hue), chroma * math.sin(hue)]).view(1, 3, 1, 1)
    rgb = (lab_to_rgb(lab)[0, :, 0, 0].clamp(0, 1) * 255 + 0.5).long().tolist()
    return "#" + "".join(f"{c:02x}" for c in rgb)


def test_the_provenance_records_the_hints_palette_only_when_it_applied(
    engine: Colorizer, tmp_path: Path
) -> None:
    source = tmp_path / "frame.png"
    Image.fromarray(FRAME).save(source)
    two = tuple(REFERENCE_HINTS)  # blue and yellow
    tasks = [
        Task(source, tmp_path / "two.png", hints=two),
        Task(source, tmp_path / "one.png", hints=two[:1]),
        Task(source, tmp_path / "given.png", hints=two, palette=parse_palette("#30c060")),
    ]
    results = Pipeline(engine, OutputSettings(fmt="png"), max_pixels=10**8).run(tasks)
    assert all(r.ok for r in results), [r.line for r in results]
    assert read_provenance(tmp_path / "two.png")["semwatch"]["palette"] == {
        "colors": [{"color": BLUE, "weight": 0.5}, {"color": YELLOW, "weight": 0.5}],
        "from": "hints",
        "applied": True,
    }
    assert "palette" not in read_provenance(tmp_path / "one.png")["semwatch"]
    assert read_provenance(tmp_path / "given.png")["semwatch"]["palette"]["from"] == "given"
