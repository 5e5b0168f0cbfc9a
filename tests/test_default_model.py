"""The generator bundled with the package: shipped with its card, used by default, colourful."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from safetensors import safe_open

from conftest import SEM_REAL
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
@pytest.mark.parametrize("name", ["pollen-hibiscus-300x.png", "fei-helios-rbc.tif"])
def test_real_sem_image_comes_out_coloured_with_a_gray_data_bar(tmp_path: Path, shared_data: Path,
                                                               name: str) -> None:
    source = SEM_REAL / name
    config = tmp_path / "config.toml"
    config.write_text('[engine]\ndevice = "cpu"\n')  # no model key: the bundled one
    result = subprocess.run(
        [sys.executable, "-m", "semwatch", "colorize", str(source), "--output-dir",
         str(tmp_path / "out"), "--config", str(config), "-q"],
        capture_output=True, text=True, timeout=600,
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
