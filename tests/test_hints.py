"""Colour hints end to end: the file format, the widened generator, the engine, the CLI,
training with simulated hints and `trainer evaluate --hints`; and the region refinements."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from helpers import textured_gray
from structlog.testing import capture_logs

from semwatch.cli import main as semwatch_main
from semwatch.engine import Colorizer, GrayImage, Refinement
from semwatch.hints import Hint, HintError, HintPoint, color_to_ab, hint_planes, load_hints
from semwatch.model import GeneratorConfig, build_generator, load_generator, save_generator, widen_input
from semwatch.regions import HINT_PULL, RegionSettings, apply_dominant_hue, segment, spread_hints
from trainer.hints import HintSimulation, sample_points
from trainer.metrics import region_hue_coherence

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hint_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 4-channel generator whose hint channels matter (non-zero weights)."""
    torch.manual_seed(1)
    config = GeneratorConfig(decoder_width=8, in_channels=4)
    path = tmp_path_factory.mktemp("models") / "hinted.safetensors"
    save_generator(path, build_generator(config), config, {"name": "tiny-hinted"})
    return path


# ------------------------------------------------------------------ hint files


def test_hint_file_parses_and_colour_gives_its_ab(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(
        json.dumps({"hints": [{"x": 12, "y": 3.5, "color": "#E0B030"}, {"x": 0, "y": 0, "color": "0000ff"}]})
    )
    hints = load_hints(path)
    assert [(h.x, h.y, h.color) for h in hints] == [(12, 3.5, "#e0b030"), (0, 0, "#0000ff")]
    a, b = color_to_ab("#e0b030")
    assert b > 40 and abs(a) < 20  # a yellow: strongly positive b
    blue_a, blue_b = color_to_ab("#0000ff")
    assert blue_b < -90
    assert hints[1].a == pytest.approx(blue_a) and hints[1].b == pytest.approx(blue_b)
    assert hints[0].as_record() == {"x": 12, "y": 3.5, "color": "#e0b030"}


@pytest.mark.parametrize(
    "content, expected",
    [
        ("not json", "not JSON"),
        (json.dumps([1, 2]), "expected a JSON object"),
        (json.dumps({"hints": [{"x": 1, "y": 2}]}), "hints[0]: missing color"),
        (json.dumps({"hints": [{"x": 1, "y": 2, "color": "#12345"}]}), "hints[0]: colour '#12345'"),
        (
            json.dumps(
                {"hints": [{"x": 1, "y": 2, "color": "#123456"}, {"x": -1, "y": 2, "color": "#123456"}]}
            ),
            "hints[1]: x = -1 is negative",
        ),
        (json.dumps({"hints": [{"x": "a", "y": 2, "color": "#123456"}]}), "hints[0]: x must be a number"),
    ],
)
def test_bad_hint_files_name_the_file_and_the_entry(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(HintError) as info:
        load_hints(path)
    message = str(info.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_hint_planes_fill_a_square_and_the_mask() -> None:
    planes = hint_planes([HintPoint(5, 7, 55.0, -22.0, 3), HintPoint(0, 0, 11.0, 0.0, 1)], 10, 12)
    assert planes.shape == (3, 10, 12)
    assert torch.all(planes[2, 4:7, 6:9] == 1) and float(planes[2].sum()) == 10
    assert float(planes[0, 5, 7]) == pytest.approx(55 / 110) and float(planes[1, 6, 8]) == pytest.approx(
        -22 / 110
    )
    assert float(planes[0, 0, 0]) == pytest.approx(11 / 110)


# ------------------------------------------------------------------ model


def test_widened_generator_answers_exactly_like_the_original(tmp_path: Path) -> None:
    torch.manual_seed(0)
    narrow = build_generator(GeneratorConfig(decoder_width=8)).eval()
    wide = widen_input(narrow, 4).eval()
    assert wide.config.in_channels == 4 and wide.takes_hints and not narrow.takes_hints
    x = torch.randn(2, 1, 64, 96)
    planes = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(narrow(x), wide(torch.cat((x, planes), dim=1)))
    path = tmp_path / "wide.safetensors"
    save_generator(path, wide, wide.config)
    assert load_generator(path).config.in_channels == 4
    with pytest.raises(ValueError, match="in_channels must be one of"):
        GeneratorConfig.from_dict({"in_channels": 3})


# ------------------------------------------------------------------ engine


def _two_region_image() -> np.ndarray:
    """A bright disc on a dark textured field: two objects a colorist would paint apart."""
    y, x = np.mgrid[0:240, 0:320]
    gray = np.where((x - 160) ** 2 + (y - 120) ** 2 < 70**2, 200, 60).astype(np.float32)
    gray += np.random.default_rng(0).normal(0, 4, gray.shape)
    return np.clip(gray, 0, 255).astype(np.uint8)


def test_engine_hints_colour_the_object_they_fall_in(hint_model: Path) -> None:
    engine = Colorizer.from_file(hint_model, device="cpu", chroma_size=128, batch_size=2)
    assert engine.takes_hints
    gray = _two_region_image()
    image = GrayImage(gray)
    blue = Hint.from_color(160, 120, "#2050ff")  # in the disc
    plain, hinted = engine.predict_ab([image, image], hints=[[], [blue]])
    (spread,) = engine.predict_ab([image], hints=[[blue]], spread=True)
    disc = torch.from_numpy(
        (np.mgrid[0:240, 0:320][1] - 160) ** 2 + (np.mgrid[0:240, 0:320][0] - 120) ** 2 < 60**2
    )
    hue = torch.atan2(hinted[1][disc], hinted[0][disc])
    assert float(torch.cos(hue - math.atan2(blue.b, blue.a)).mean()) > 0.95  # the disc is blue
    # Outside the disc, the hint does not paint the field (an object unlike the disc): it
    # keeps its own colour; asked to spread, it moves part of the way.
    field = torch.from_numpy(np.ones_like(gray, dtype=bool)) & ~torch.from_numpy(
        (np.mgrid[0:240, 0:320][1] - 160) ** 2 + (np.mgrid[0:240, 0:320][0] - 120) ** 2 < 80**2
    )
    target = torch.tensor([blue.a, blue.b])[:, None]
    own = float((plain[:, field] - target).abs().mean())
    assert float((hinted[:, field] - target).abs().mean()) == pytest.approx(own, rel=0.15)
    assert float((spread[:, field] - target).abs().mean()) == pytest.approx((1 - HINT_PULL) * own, rel=0.15)
    # Without hints the same call is the automatic colour, image by image.
    (alone,) = engine.predict_ab([image])
    assert torch.allclose(alone, plain, atol=1e-4)


def test_hint_in_the_data_bar_is_ignored_with_a_warning(hint_model: Path) -> None:
    engine = Colorizer.from_file(hint_model, device="cpu", chroma_size=128)
    gray = textured_gray(200, 160)
    image = GrayImage(gray, databar_row=170)
    (plain,) = engine.colorize([image])
    # capture_logs, not capsys: an earlier test's logging set-up may have bound the console
    # logger to its own stderr (the test failed after the trainer CLI tests).
    with capture_logs() as logs:
        (hinted,) = engine.colorize([image], hints=[[Hint.from_color(50, 185, "#ff0000")]])
    assert np.array_equal(plain, hinted)
    warnings = [e for e in logs if e["event"] == "hint in the data bar ignored"]
    assert [(e["log_level"], e["logger"]) for e in warnings] == [("warning", "semwatch.engine")]


def test_one_channel_model_still_takes_hints_through_the_regions(tiny_model: Path) -> None:
    engine = Colorizer.from_file(tiny_model, device="cpu", chroma_size=128)
    assert not engine.takes_hints
    gray = _two_region_image()
    red = Hint.from_color(160, 120, "#e02020")
    (ab,) = engine.predict_ab([GrayImage(gray)], hints=[[red]])
    centre = ab[:, 100:140, 140:180].reshape(2, -1).mean(dim=1)
    assert float(centre[0]) == pytest.approx(red.a, abs=3) and float(centre[1]) == pytest.approx(red.b, abs=3)


# ------------------------------------------------------------------ regions


def test_dominant_hue_gives_one_hue_per_region_and_keeps_chroma() -> None:
    labels = torch.zeros(20, 40, dtype=torch.long)
    labels[:, 20:] = 1
    rng = np.random.default_rng(0)
    angle = np.where(rng.random((20, 40)) < 0.7, 0.5, 2.5)  # 70 % one hue, 30 % another
    angle[:, 20:] = -2.0 + rng.normal(0, 0.05, (20, 20))
    chroma = 20 + 10 * rng.random((20, 40))
    ab = torch.from_numpy(np.stack((chroma * np.cos(angle), chroma * np.sin(angle)))).float()
    out = apply_dominant_hue(ab, labels, 1.0)
    hue = torch.atan2(out[1], out[0])
    assert torch.allclose(hue[:, :20], torch.full((20, 20), 0.5), atol=1e-3)  # the mode, not the mean
    assert float(hue[:, 20:].std()) < 1e-3
    assert torch.allclose(torch.hypot(out[0], out[1]), torch.hypot(ab[0], ab[1]), atol=1e-3)
    half = apply_dominant_hue(ab, labels, 0.5)
    assert not torch.allclose(half, out) and torch.equal(apply_dominant_hue(ab, labels, 0.0), ab)


def test_segment_separates_a_disc_from_its_field_and_spread_stops_at_the_edge() -> None:
    gray = torch.from_numpy(_two_region_image()).float() / 255
    labels = segment(gray, RegionSettings(size=160))
    assert labels.shape == gray.shape
    assert int(labels[120, 160]) != int(labels[5, 5])
    ab = torch.zeros(2, 240, 320)
    out = spread_hints(ab, labels, [HintPoint(120, 160, 40.0, -30.0)])
    assert torch.allclose(out[:, 120, 160], torch.tensor([40.0, -30.0]))
    # Beyond the disc's edge the field keeps its colour; with a pull (--spread) it moves
    # only part of the way toward the hint's colour.
    assert torch.equal(out[:, 5, 5], torch.zeros(2))
    pulled = spread_hints(ab, labels, [HintPoint(120, 160, 40.0, -30.0)], pull=HINT_PULL)
    assert torch.allclose(pulled[:, 5, 5], HINT_PULL * torch.tensor([40.0, -30.0]))
    assert HINT_PULL < 1


# ------------------------------------------------------------------ metrics


def test_region_hue_coherence_ignores_desaturation_and_punishes_rainbows() -> None:
    truth = torch.zeros(2, 120, 160)
    truth[0, :, :80], truth[1, :, :80] = 40.0, 10.0
    truth[0, :, 80:], truth[1, :, 80:] = -20.0, -35.0
    assert region_hue_coherence(truth, truth) == pytest.approx(1.0, abs=1e-6)
    assert region_hue_coherence(truth * 0.3, truth) == pytest.approx(1.0, abs=1e-6)
    x = torch.linspace(0, 6 * math.pi, 160)
    rainbow = torch.stack((30 * torch.cos(x), 30 * torch.sin(x)))[:, None, :].expand(2, 120, 160)
    assert region_hue_coherence(rainbow, truth) < 0.5
    assert region_hue_coherence(torch.zeros_like(truth), truth) == 0.0


# ------------------------------------------------------------------ training


def test_simulated_hints_come_from_the_truth() -> None:
    ab = torch.zeros(2, 32, 32)
    ab[0, :, 16:] = 50.0
    rng = np.random.default_rng(0)
    points = sample_points(ab, 50, rng, patch_max=1)
    assert len(points) == 50
    for point in points:
        assert point.a == pytest.approx(50.0 if point.col >= 16 else 0.0)
    counts = [
        HintSimulation(none_share=0.3, mean_points=8).count(np.random.default_rng(i)) for i in range(400)
    ]
    assert 0.2 < counts.count(0) / 400 < 0.4
    assert 5 < np.mean([c for c in counts if c]) < 11
    assert HintSimulation(none_share=1.0).count(rng) == 0


def test_dataset_with_hints_gives_four_channels_and_empty_validation_planes(tmp_path: Path) -> None:
    from test_trainer_data import write_shapes_dataset

    from trainer.data import build_datasets

    root = write_shapes_dataset(tmp_path / "shapes", count=12, gray=0)
    train, val, _ = build_datasets(
        root, image_size=32, val_fraction=0.3, seed=0, hints=HintSimulation(none_share=0.0, mean_points=4)
    )
    x, ab = train[0]
    assert x.shape == (4, 32, 32) and ab.shape == (2, 32, 32)
    mask = x[3] > 0
    assert bool(mask.any())
    # Revealed colour is the truth's patch mean: near the truth where revealed.
    assert float((x[1:3][:, mask] - ab[:, mask]).abs().mean()) < 0.1
    assert torch.equal(train[0][0], x)  # deterministic per (seed, epoch, index)
    vx, _ = val[0]
    assert vx.shape == (4, 32, 32) and float(vx[1:].abs().sum()) == 0.0


@pytest.mark.slow
def test_training_with_hints_widens_a_one_channel_init(tmp_path: Path) -> None:
    from test_trainer_data import write_shapes_dataset
    from test_trainer_train import TINY

    from trainer.checkpoint import checkpoint_path, load_checkpoint
    from trainer.distributed import init_distributed
    from trainer.loops import TrainingError, run_pipeline

    root = write_shapes_dataset(tmp_path / "shapes", count=16, gray=0)
    torch.manual_seed(3)
    narrow = build_generator(GeneratorConfig(decoder_width=8))
    init = tmp_path / "v1.safetensors"
    save_generator(init, narrow, narrow.config, {"name": "v1"})
    config = dataclasses.replace(TINY, pretrain_epochs=1, gan_epochs=1, max_steps_per_epoch=2, hints=True)
    results = run_pipeline(root, tmp_path / "run", config, init_distributed("cpu"), init=init)
    assert [r.stage for r in results] == ["pretrain", "gan"]
    ckpt = load_checkpoint(checkpoint_path(tmp_path / "run", "gan", "last"))
    assert ckpt["generator_config"]["in_channels"] == 4
    # A hint model cannot be trained without hints: a one-line refusal.
    wide_file = tmp_path / "wide.safetensors"
    wide = widen_input(narrow, 4)
    save_generator(wide_file, wide, wide.config)
    with pytest.raises(TrainingError, match="takes colour hints"):
        run_pipeline(
            root,
            tmp_path / "run2",
            dataclasses.replace(config, hints=False),
            init_distributed("cpu"),
            init=wide_file,
        )


# ------------------------------------------------------------------ CLI


def _tiff_provenance(path: Path) -> dict:
    from semwatch.imaging import read_provenance

    return read_provenance(path)["semwatch"]


def test_colorize_hints_cli_records_them_and_rejects_bad_files(hint_model: Path, tmp_path: Path) -> None:
    source = tmp_path / "in" / "disc.tif"
    source.parent.mkdir()
    tifffile.imwrite(source, _two_region_image())
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps({"hints": [{"x": 160, "y": 120, "color": "#2050ff"}]}))
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(
        semwatch_main,
        [
            "colorize",
            str(source),
            "-o",
            str(out),
            "--model",
            str(hint_model),
            "--chroma-size",
            "128",
            "--hints",
            str(hints),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    record = _tiff_provenance(out / "disc.tif")
    assert record["hints"] == [{"x": 160, "y": 120, "color": "#2050ff"}]
    rgb = tifffile.imread(out / "disc.tif")
    assert rgb[120, 160, 2] > rgb[120, 160, 0]  # blue where the hint asked for blue

    hints.write_text(json.dumps({"hints": [{"x": 160, "y": 120, "color": "blue"}]}))
    result = runner.invoke(
        semwatch_main,
        [
            "colorize",
            str(source),
            "-o",
            str(tmp_path / "o2"),
            "--model",
            str(hint_model),
            "--hints",
            str(hints),
            "-q",
        ],
    )
    assert result.exit_code == 2 and f"{hints}: hints[0]: colour 'blue'" in result.output

    hints.write_text(json.dumps({"hints": [{"x": 500, "y": 120, "color": "#2050ff"}]}))
    result = runner.invoke(
        semwatch_main,
        [
            "colorize",
            str(source),
            "-o",
            str(tmp_path / "o3"),
            "--model",
            str(hint_model),
            "--hints",
            str(hints),
            "-q",
        ],
    )
    assert result.exit_code == 1 and "is outside the 320x240 image" in result.output

    other = tmp_path / "other.tif"
    tifffile.imwrite(other, _two_region_image())
    result = runner.invoke(
        semwatch_main,
        [
            "colorize",
            str(source),
            str(other),
            "-o",
            str(tmp_path / "o4"),
            "--model",
            str(hint_model),
            "--hints",
            str(hints),
            "-q",
        ],
    )
    assert result.exit_code == 2 and "hints are for one input image" in result.output


def test_evaluate_reports_error_per_hint_count(hint_model: Path, tmp_path: Path) -> None:
    from test_trainer_data import write_shapes_dataset

    from trainer.evaluate import evaluate, select_images

    root = write_shapes_dataset(tmp_path / "shapes", count=4, gray=0)
    engine = Colorizer.from_file(
        hint_model, device="cpu", chroma_size=64, refinement=Refinement(region_hue=1.0, region_size=64)
    )
    report = evaluate(engine, select_images(root, "all", 0.1), progress=False, hint_counts=[0, 2, 20])
    assert [row.points for row in report.hints] == [0, 2, 20]
    assert report.hints[0].ab_mae == pytest.approx(report.metrics.ab_mae)
    assert report.hints[2].ab_mae < report.hints[0].ab_mae  # many true hints: closer to the truth
    assert 0.0 <= report.metrics.region_coherence <= 1.0
    assert report.metrics.region_coherence_truth > 0.8
