"""The generator bundled with the package: shipped with its card, used by default, colourful."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from cli_runs import in_process
from conftest import SEM_REAL
from safetensors import safe_open

from semwatch.cli import main
from semwatch.color import rgb_to_lab
from semwatch.config import EngineConfig, load_config_file
from semwatch.engine import Colorizer
from semwatch.imaging import read_image, read_provenance
from semwatch.model import default_model_path, file_sha256, read_generator_metadata

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_model_is_shipped_small_and_half_precision() -> None:
    path = default_model_path()
    assert path.is_file(), f"{path} is missing"
    assert path.stat().st_size <= 40 * 2**20
    with safe_open(str(path), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes


def test_bundled_model_card_says_what_it_is_and_how_to_rebuild_it() -> None:
    _, card = read_generator_metadata(default_model_path())
    for key in ("name", "created", "data_summary", "recipe", "metrics", "training", "evaluation"):
        assert card.get(key), f"model card has no {key}"
    assert card["data_summary"]["images"] == 702
    assert card["training"]["command"].startswith("trainer run ")
    evaluation = card["evaluation"]
    assert evaluation["split"] == "val"
    assert set(evaluation["metrics"]) >= {"ab_mae", "colorfulness", "hist_intersection"}
    # The README's model section names this exact file.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert card["name"] in readme and file_sha256(default_model_path())[:12] in readme
    assert card["training"]["command"].split(" --out ")[0] in readme


def test_config_and_engine_default_to_the_bundled_model() -> None:
    assert load_config_file(ROOT / "config.toml").engine.model is None
    colorizer = Colorizer.from_config(EngineConfig(device="cpu", chroma_size=128))
    assert colorizer.model_path == default_model_path()
    assert colorizer.model_sha256 == file_sha256(default_model_path())


@pytest.mark.realdata
@pytest.mark.parametrize(
    # The large pollen image (bundled model at chroma 512) runs with the full suite only.
    "name",
    [pytest.param("pollen-hibiscus-300x.png", marks=pytest.mark.slow), "fei-helios-rbc.tif"],
)
def test_real_sem_image_comes_out_coloured_with_a_gray_data_bar(
    tmp_path: Path, shared_data: Path, name: str
) -> None:
    source = SEM_REAL / name
    config = tmp_path / "config.toml"
    config.write_text('[engine]\ndevice = "cpu"\n')  # no model key: the bundled one
    result = in_process(
        main, ["colorize", source, "--output-dir", tmp_path / "out", "--config", config, "-q"]
    )
    assert result.returncode == 0, result.stderr
    output = tmp_path / "out" / (source.stem + ".tif")
    with tifffile.TiffFile(output) as tif:
        rgb = tif.pages[0].asarray()
    record = read_provenance(output)["semwatch"]
    assert record["model"]["sha256"] == file_sha256(default_model_path())
    bar = read_image(source).databar_row
    assert bar is not None
    image = torch.from_numpy(np.ascontiguousarray(rgb[:bar])).permute(2, 0, 1).float() / 255
    lab = rgb_to_lab(image[None])[0]
    chroma = torch.hypot(lab[1], lab[2])
    assert float(chroma.mean()) > 4.0, f"{name}: mean chroma {float(chroma.mean()):.2f}: looks gray"
    assert np.ptp(rgb[bar:].astype(int), axis=2).max() == 0  # the data bar stays gray


def test_bundled_model_takes_colour_hints() -> None:
    config, card = read_generator_metadata(default_model_path())
    assert config.in_channels == 4  # L + hint a, b + mask
    assert card["name"] == "semwatch-default-v2"
    assert card["evaluation"]["hints"], "the card's evaluation has the simulated-hint table"


@pytest.mark.slow  # the large pollen image with the bundled model; the fast loop has test_hints
@pytest.mark.realdata
def test_hints_on_a_real_image_give_the_colours_asked_for(tmp_path: Path, shared_data: Path) -> None:
    import json
    import math

    source = SEM_REAL / "pollen-hibiscus-300x.png"
    hints = [
        {"x": 768, "y": 640, "color": "#e0b030"},  # a spiky grain: yellow
        {"x": 1920, "y": 1100, "color": "#c040a0"},  # the large grain: magenta
        {"x": 200, "y": 400, "color": "#3060d0"},
    ]  # the background ring: blue
    hint_file = tmp_path / "hints.json"
    hint_file.write_text(json.dumps({"hints": hints}))
    config = tmp_path / "config.toml"
    config.write_text('[engine]\ndevice = "cpu"\n')
    result = in_process(
        main,
        [
            "colorize",
            source,
            "--output-dir",
            tmp_path / "out",
            "--config",
            config,
            "--hints",
            hint_file,
            "-q",
        ],
    )
    assert result.returncode == 0, result.stderr
    output = tmp_path / "out" / (source.stem + ".tif")
    rgb = tifffile.imread(output)
    lab = rgb_to_lab(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255)[0]
    from semwatch.hints import color_to_ab

    for hint in hints:
        x, y = hint["x"], hint["y"]
        patch = lab[1:, y - 8 : y + 8, x - 8 : x + 8].reshape(2, -1).mean(dim=1)
        a, b = color_to_ab(hint["color"])
        turn = abs(
            math.remainder(math.atan2(float(patch[1]), float(patch[0])) - math.atan2(b, a), 2 * math.pi)
        )
        assert turn < math.radians(20), f"{hint}: hue off by {math.degrees(turn):.0f} degrees"
    assert read_provenance(output)["semwatch"]["hints"] == hints
