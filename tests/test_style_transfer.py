"""`trainer evaluate --style-transfer --locality` (issue 20) on generated colour truths: the
two fields of view, the report's figures, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_styles import BLUE, YELLOW, discs

from semwatch.engine import Colorizer
from semwatch.hints import Hint
from semwatch.model import GeneratorConfig, build_generator, save_generator
from trainer.evaluate import evaluate_command
from trainer.style_transfer import B_SCALE, VIEW_SHARE, locality, split_views, style_transfer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def painted(seed: int) -> np.ndarray:
    """A colorist's picture: yellow grains on a blue field, shaded by a gray image."""
    rng = np.random.default_rng(seed)
    centres = [(int(rng.integers(40, 160)), int(rng.integers(40, 280))) for _ in range(3)]
    gray = discs(200, 320, centres, 30, seed=seed).astype(np.float32) / 255
    grain = gray > 0.5
    colours = {True: Hint.from_color(0, 0, YELLOW), False: Hint.from_color(0, 0, BLUE)}
    rgb = np.zeros((200, 320, 3), np.float32)
    for inside, hint in colours.items():
        rgb[grain == inside] = np.array([int(hint.color[i : i + 2], 16) for i in (1, 3, 5)]) / 255
    shade = 0.35 + 0.65 * gray[..., None]
    return (np.clip(rgb * shade, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Colorizer:
    torch.manual_seed(1)
    config = GeneratorConfig(decoder_width=8, in_channels=4)
    path = tmp_path_factory.mktemp("models") / "hinted.safetensors"
    save_generator(path, build_generator(config), config, {"name": "tiny-hinted"})
    return Colorizer.from_file(path, device="cpu", chroma_size=128)


def test_the_two_fields_of_view_share_a_strip() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    view_a, view_b = split_views(rgb)
    assert view_a.shape == (100, round(200 * VIEW_SHARE), 3)
    assert view_b.shape == (round(100 * B_SCALE), round(120 * B_SCALE), 3)
    assert np.array_equal(view_a, rgb[:, :120])


def test_a_style_from_view_a_colours_view_b_and_hints_stay_local(engine: Colorizer) -> None:
    truths = [(Path(f"t{i}.png"), painted(i)) for i in range(2)]
    report = style_transfer(engine, truths)
    assert report.images == 2
    assert report.ab_mae_style < 0.5 * report.ab_mae_auto  # the random model knows no colour
    assert report.coherence_truth > 0.9 and 0 < report.coherence_style <= 1
    local = locality(engine, truths)
    assert local.images == 2 and 0 <= local.moved_local <= local.moved_spread <= 1


@pytest.mark.slow
def test_evaluate_command_reports_styles_and_locality(engine: Colorizer, tmp_path: Path) -> None:
    for i in range(2):
        Image.fromarray(painted(i)).save(tmp_path / f"t{i}.png")
    (tmp_path / "config.toml").write_text('[engine]\nchroma_size = 128\ndevice = "cpu"\n')
    args = [
        str(engine.model_path),
        str(tmp_path),
        "--split",
        "all",
        "-q",
        "--config",
        str(tmp_path / "config.toml"),
    ]
    result = CliRunner().invoke(evaluate_command, [*args, "--style-transfer", "--locality", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["style_transfer"]["images"] == 2 and data["locality"]["images"] == 2
    table = CliRunner().invoke(evaluate_command, [*args, "--style-transfer"])
    assert table.exit_code == 0, table.output
    assert "with A's style" in table.stdout and "with 10 hints on B itself" in table.stdout
