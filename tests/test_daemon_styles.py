"""A watch folder's style, end to end: `semwatch run` as a real subprocess, a style file made
by `semwatch style make` in one subfolder and none in another, a style edited mid-run, and a
broken one that fails only the jobs under it (issue 20); the edited style carries a palette
to the images after it (issue 23)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from daemon_harness import Site, png_bytes, provenance, write_atomically
from test_styles import BLUE, REFERENCE, REFERENCE_HINTS, YELLOW, disc_mask, discs

from semwatch.color import rgb_to_lab
from semwatch.hints import Hint
from semwatch.model import GeneratorConfig, build_generator, save_generator
from semwatch.queue import JobState
from semwatch.styles import STYLE_FILENAME, load_style

pytestmark = pytest.mark.slow

CENTRES = [(70, 90), (150, 260)]


@pytest.fixture
def site(tmp_path: Path):
    torch.manual_seed(1)  # the hint-taking model test_styles colours with
    # With a palette input (built last, its output layer zero: the same colours as without),
    # so a style's palette is recorded as applied.
    config = GeneratorConfig(decoder_width=8, in_channels=4, palette_colours=4)
    model = tmp_path / "hinted.safetensors"
    save_generator(model, build_generator(config), config, {"name": "tiny-hinted"})
    site = Site(tmp_path / "site", model, settings={"engine": {"chroma_size": 128}})
    yield site
    site.stop_all()


def make_style(site: Site, folder: Path, hints: list[Hint], name: str, *options: str) -> Path:
    """`semwatch style make` with the site's own config (its model and engine settings)."""
    reference = site.root / "reference.png"
    reference.write_bytes(png_bytes(REFERENCE))
    hint_file = site.root / f"{name}-hints.json"
    hint_file.write_text(json.dumps({"hints": [h.as_record() for h in hints]}))
    staged = site.root / f"{name}.json"
    site.cli("style", "make", str(reference), "--hints", str(hint_file), "-o", str(staged),
             "--name", name, *options)  # fmt: skip
    target = folder / STYLE_FILENAME
    write_atomically(target, staged.read_bytes())  # as an editor saving over it would
    return target


def hue_agreement(output: Path, mask: torch.Tensor, color: str) -> float:
    rgb = torch.from_numpy(tifffile.imread(output)).permute(2, 0, 1).float() / 255
    ab = rgb_to_lab(rgb[None])[0, 1:]
    target = Hint.from_color(0, 0, color)
    hue = torch.atan2(ab[1][mask], ab[0][mask])
    return float(torch.cos(hue - math.atan2(target.b, target.a)).mean())


def test_a_folder_style_colours_its_images_and_an_edit_applies_to_the_next(site: Site) -> None:
    styled, plain, broken = site.inbox / "styled", site.inbox / "plain" / "deeper", site.inbox / "broken"
    for folder in (styled / "sub", plain, broken):
        folder.mkdir(parents=True)
    style_file = make_style(site, styled, REFERENCE_HINTS, "discs blue")
    (broken / STYLE_FILENAME).write_text('{"format": "semwatch-style", "version": 1')
    frame = png_bytes(discs(200, 360, CENTRES, 45, seed=5))
    for path in (styled / "sub" / "one.png", plain / "one.png", broken / "one.png"):
        path.write_bytes(frame)

    daemon = site.start()
    counts = site.wait_settled(3)
    assert counts["done"] == 2 and counts["failed"] == 1, counts
    inside = disc_mask(200, 360, CENTRES, 35)
    outside = ~disc_mask(200, 360, CENTRES, 60)
    first = site.outbox / "styled" / "sub" / "one.tif"
    # Under the style (its folder's subfolder: the nearest file up the tree): its colours.
    assert hue_agreement(first, inside, BLUE) > 0.9
    assert hue_agreement(first, outside, YELLOW) > 0.9
    assert provenance(first)["style"] == {"name": "discs blue", "sha256": load_style(style_file).sha256}
    # Elsewhere: automatic, and no style in the provenance.
    automatic = site.outbox / "plain" / "deeper" / "one.tif"
    assert "style" not in provenance(automatic)
    assert hue_agreement(automatic, inside, BLUE) < 0.9
    # The broken style failed its job, in one line naming the file; intake went on.
    (failed,) = site.jobs(JobState.FAILED)
    assert failed.rel_path == "broken/one.png"
    assert failed.error.startswith(f"{broken / STYLE_FILENAME}: not JSON") and "\n" not in failed.error
    assert all(not job.rel_path.endswith(".json") for job in site.jobs())  # a style is never a job

    # A palette model's style carries its hints' colours as its palette, the field's first.
    palette = provenance(first)["palette"]
    assert [c["color"] for c in palette["colors"]] == [YELLOW, BLUE] and palette["from"] == "style"
    # The style is edited mid-run (colours swapped, a palette given): the next image takes
    # the new one, palette included, with nothing given but the folder's file.
    swapped = [Hint.from_color(h.x, h.y, YELLOW if h.color == BLUE else BLUE) for h in REFERENCE_HINTS]
    make_style(site, styled, swapped, "discs yellow", "--palette", "#30c060")
    (styled / "two.png").write_bytes(frame)
    site.wait_settled(4)
    second = site.outbox / "styled" / "two.tif"
    assert hue_agreement(second, inside, YELLOW) > 0.9
    assert hue_agreement(second, outside, BLUE) > 0.9
    assert provenance(second)["style"]["name"] == "discs yellow"
    assert provenance(second)["palette"] == {
        "colors": [{"color": "#30c060", "weight": 1.0}],
        "from": "style",
        "applied": True,
    }
    assert provenance(first)["style"]["name"] == "discs blue"  # done images stay as they were
    assert daemon.alive() and daemon.stop() == 0
    assert np.array_equal(tifffile.imread(first).shape, (200, 360, 3))
