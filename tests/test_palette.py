"""Global palettes (issue 23): the text form, the truth's dominant colours, the palette-taking
generator, the engine, training on simulated palettes and the rebalanced L1."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from semwatch.engine import Colorizer, GrayImage
from semwatch.hints import color_to_ab
from semwatch.model import GeneratorConfig, add_palette_input, build_generator, load_generator, save_generator
from semwatch.palette import (
    PALETTE_PLANES,
    PaletteError,
    dominant_colours,
    palette_from_record,
    palette_planes,
    palette_vector,
    parse_palette,
)
from trainer.hints import PaletteSimulation
from trainer.losses import Rebalance, ab_counts, l1_ab

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def palette_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random hint + palette generator whose palette network is not zero (so it matters)."""
    torch.manual_seed(2)
    config = GeneratorConfig(decoder_width=8, in_channels=4, palette_colours=4)
    model = build_generator(config)
    with torch.no_grad():
        # Large: a random decoder passes little of its bottleneck through to the output.
        model.palette[-1].weight.normal_(0, 50.0)
    path = tmp_path_factory.mktemp("models") / "palette.safetensors"
    save_generator(path, model, config, {"name": "tiny-palette"})
    return path


# ------------------------------------------------------------------ the text form


def test_palette_text_parses_with_weights_heaviest_first() -> None:
    palette = parse_palette(" #e0b030:1, #3060D0:3 ")
    assert [c.color for c in palette.colours] == ["#3060d0", "#e0b030"]
    assert [c.weight for c in palette.colours] == pytest.approx([0.75, 0.25])
    a, b = color_to_ab("#3060d0")
    assert (palette.colours[0].a, palette.colours[0].b) == pytest.approx((a, b))
    assert parse_palette(palette.as_text()).as_record() == palette.as_record()
    assert palette_from_record(palette.as_record(), "style.json") == palette
    equal = parse_palette("#ff0000,#00ff00")
    assert [c.weight for c in equal.colours] == [0.5, 0.5]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("#e0b030,#3060d0,#ffffff,#000000,#123456", "at most 4"),
        ("red", "not an sRGB hex colour"),
        ("#e0b030:heavy", "not a number"),
        ("#e0b030:-1", "positive"),
        ("#e0b030:nan", "positive"),
    ],
)
def test_bad_palettes_say_what_is_wrong(text: str, expected: str) -> None:
    with pytest.raises(PaletteError, match=expected):
        parse_palette(text)


def test_a_bad_palette_record_names_its_source() -> None:
    with pytest.raises(PaletteError, match="style.json: .*needs a 'color'"):
        palette_from_record([{"weight": 1}], "style.json")


# ------------------------------------------------------------------ dominant colours


def test_dominant_colours_find_the_truths_clusters_and_their_shares() -> None:
    ab = torch.zeros(2, 60, 100)
    ab[:, :, :70] = torch.tensor([40.0, 50.0])[:, None, None]  # 70 %: orange
    ab[:, :, 70:] = torch.tensor([10.0, -60.0])[:, None, None]  # 30 %: blue
    ab[:, :5] = 0.0  # gray rows take no part
    palette = dominant_colours(ab + torch.randn_like(ab), 2, seed=0)
    assert palette is not None
    first, second = palette.colours
    assert (first.a, first.b) == pytest.approx((40, 50), abs=1.5)
    assert (second.a, second.b) == pytest.approx((10, -60), abs=1.5)
    assert (first.weight, second.weight) == pytest.approx((0.7, 0.3), abs=0.02)
    assert dominant_colours(ab, 2, seed=0) == dominant_colours(ab, 2, seed=0)
    assert dominant_colours(torch.zeros(2, 50, 50), 3) is None  # a gray frame has no palette


def test_palette_planes_are_constant_and_absent_is_zero() -> None:
    palette = parse_palette("#e0b030:3,#3060d0")
    planes = palette_planes(palette, 8, 12)
    assert planes.shape == (PALETTE_PLANES, 8, 12)
    vector = palette_vector(palette)
    assert torch.equal(planes[:, 3, 7], vector)
    assert vector[-1] == 1.0 and vector[2] == pytest.approx(0.75) and float(vector[6:12].abs().sum()) == 0
    assert float(palette_planes(None, 4, 4).abs().sum()) == 0.0


# ------------------------------------------------------------------ the generator


def test_adding_a_palette_input_answers_exactly_like_the_original(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = build_generator(GeneratorConfig(decoder_width=8, in_channels=4)).eval()
    wide = add_palette_input(plain).eval()
    assert wide.takes_palette and not plain.takes_palette
    assert wide.config.input_channels == 4 + PALETTE_PLANES
    x = torch.randn(2, 4, 64, 96)
    planes = palette_planes(parse_palette("#3060d0"), 64, 96)[None].expand(2, -1, -1, -1)
    with torch.no_grad():
        assert torch.equal(plain(x), wide(torch.cat((x, planes), dim=1)))
    path = tmp_path / "wide.safetensors"
    save_generator(path, wide, wide.config)
    assert load_generator(path).config.palette_colours == 4
    with pytest.raises(ValueError, match="palette_colours must be one of"):
        GeneratorConfig.from_dict({"palette_colours": 3})


def test_without_a_palette_a_trained_palette_model_answers_exactly_like_its_body() -> None:
    """The palette network's output is gated by the presence flag: whatever it learned,
    an image given no palette gets the body's answer (palette_only training relies on it)."""
    torch.manual_seed(0)
    plain = build_generator(GeneratorConfig(decoder_width=8, in_channels=4)).eval()
    wide = add_palette_input(plain).eval()
    for parameter in wide.palette.parameters():  # as if trained: nothing at zero
        torch.nn.init.normal_(parameter)
    x = torch.randn(2, 4, 64, 96)
    none = palette_planes(None, 64, 96)[None].expand(2, -1, -1, -1)
    given = palette_planes(parse_palette("#3060d0"), 64, 96)[None].expand(2, -1, -1, -1)
    with torch.no_grad():
        assert torch.equal(plain(x), wide(torch.cat((x, none), dim=1)))
        assert not torch.allclose(plain(x), wide(torch.cat((x, given), dim=1)))


def test_engine_feeds_the_palette_to_a_palette_network_and_places_it_for_any_model(
    palette_model: Path, tiny_model: Path
) -> None:
    engine = Colorizer.from_file(palette_model, device="cpu", chroma_size=128, batch_size=2)
    assert engine.takes_palette
    rng = np.random.default_rng(0)
    image = GrayImage(rng.integers(0, 255, (96, 128), dtype=np.uint8))
    blue, orange = parse_palette("#3060d0"), parse_palette("#e0b030")
    none, with_blue, with_orange = engine.predict_ab([image] * 3, palettes=[None, blue, orange])
    assert float((none - with_blue).abs().max()) > 0.02
    assert float((with_blue - with_orange).abs().max()) > 0.02
    # One image at a time gives the same answer as the batch: the palette is per image.
    (alone,) = engine.predict_ab([image], palettes=[blue])
    assert torch.allclose(alone, with_blue, atol=1e-4)
    # A model without palette input: the engine still hands the colour to the frame.
    plain = Colorizer.from_file(tiny_model, device="cpu", chroma_size=128)
    with capture_logs() as logs:
        (placed,) = plain.predict_ab([image], palettes=[blue])
    assert not [e for e in logs if e["log_level"] == "warning"], logs
    assert float((placed - plain.predict_ab([image])[0]).abs().max()) > 5.0
    with pytest.raises(ValueError, match="2 palettes for 1 images"):
        engine.predict_ab([image], palettes=[blue, orange])


# ------------------------------------------------------------------ training


def test_simulated_palettes_come_from_the_truth_for_their_share() -> None:
    ab = torch.zeros(2, 40, 40)
    ab[0], ab[1] = 30.0, -40.0
    ab += torch.randn_like(ab)
    drawn = [PaletteSimulation(share=0.5).draw(ab, np.random.default_rng(i)) for i in range(200)]
    given = [p for p in drawn if p is not None]
    assert 70 < len(given) < 130
    for palette in given:
        assert 1 <= len(palette.colours) <= 4
        mean_a = sum(c.a * c.weight for c in palette.colours)
        mean_b = sum(c.b * c.weight for c in palette.colours)
        assert (mean_a, mean_b) == pytest.approx((30, -40), abs=1.0)
    assert all(PaletteSimulation(share=0.0).draw(ab, np.random.default_rng(i)) is None for i in range(20))


def test_dataset_with_a_palette_appends_its_planes_and_validation_has_none(tmp_path: Path) -> None:
    from test_trainer_data import write_shapes_dataset

    from trainer.data import build_datasets
    from trainer.hints import HintSimulation

    root = write_shapes_dataset(tmp_path / "shapes", count=12, gray=0)
    train, val, _ = build_datasets(
        root,
        image_size=32,
        val_fraction=0.3,
        seed=0,
        hints=HintSimulation(none_share=1.0),
        palette=PaletteSimulation(share=1.0),
    )
    x, ab = train[0]
    assert x.shape == (4 + PALETTE_PLANES, 32, 32)
    vector = x[4:, 0, 0]
    assert vector[-1] == 1.0 and torch.equal(x[4:], vector[:, None, None].expand(-1, 32, 32))
    assert float(vector[2::3][:-1].sum()) == pytest.approx(1.0)  # the weights
    vx, _ = val[0]
    assert float(vx[4:].abs().sum()) == 0.0


def plain_init_run(tmp_path: Path, **changes: object):  # noqa: ANN201 - (data, plain, init, config)
    """Shapes to train on, a random hint-taking generator without palette input saved as the
    init, and a 2-step pretrain + GAN configuration with ``changes`` laid out for that init."""
    from test_trainer_data import write_shapes_dataset
    from test_trainer_train import TINY

    from trainer.loops import resolve_input_layout

    root = write_shapes_dataset(tmp_path / "shapes", count=16, gray=0)
    torch.manual_seed(3)
    plain = build_generator(GeneratorConfig(decoder_width=8, in_channels=4))
    init = tmp_path / "v2.safetensors"
    save_generator(init, plain, plain.config, {"name": "v2"})
    config = dataclasses.replace(TINY, pretrain_epochs=1, gan_epochs=1, max_steps_per_epoch=2, **changes)
    return root, plain, init, resolve_input_layout(config, init)


@pytest.mark.slow
def test_training_adds_the_palette_input_to_a_plain_init(tmp_path: Path) -> None:
    from test_trainer_train import TINY

    from trainer.checkpoint import checkpoint_path, load_checkpoint
    from trainer.distributed import init_distributed
    from trainer.loops import TrainingError, resolve_input_layout, run_pipeline

    root, plain, init, config = plain_init_run(tmp_path, palette=True, rebalance=0.5)
    assert config.hints is True and config.palette is True
    results = run_pipeline(root, tmp_path / "run", config, init_distributed("cpu"), init=init)
    assert [r.stage for r in results] == ["pretrain", "gan"]
    ckpt = load_checkpoint(checkpoint_path(tmp_path / "run", "gan", "last"))
    assert ckpt["generator_config"]["palette_colours"] == 4
    # Unset, a palette model's retrain keeps the palette; asking for none is refused.
    wide = tmp_path / "wide.safetensors"
    save_generator(wide, add_palette_input(plain), add_palette_input(plain).config)
    kept = resolve_input_layout(dataclasses.replace(TINY, palette=None, hints=None), wide)
    assert kept.palette is True
    with pytest.raises(TrainingError, match="takes a palette"):
        resolve_input_layout(dataclasses.replace(TINY, palette=False), wide)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("changes", "frozen", "learning"),
    [
        ({"palette_only": True}, lambda key: not key.startswith("palette."), ("palette.4.",)),
        ({"freeze_encoder": True}, lambda key: key.split(".")[0] in ("stem", "layer1", "layer2", "layer3", "layer4"),
         ("palette.4.", "up4.", "head.")),
    ],
    ids=["palette_only", "freeze_encoder"],
)  # fmt: skip
def test_frozen_training_leaves_its_part_of_the_init_as_it_was(
    tmp_path: Path, changes: dict, frozen: Callable[[str], bool], learning: tuple[str, ...]
) -> None:
    from trainer.checkpoint import checkpoint_path, load_checkpoint
    from trainer.distributed import init_distributed
    from trainer.loops import run_pipeline

    root, plain, init, config = plain_init_run(tmp_path, palette=True, palette_share=1.0, **changes)
    run_pipeline(root, tmp_path / "run", config, init_distributed("cpu"), init=init)
    state = load_checkpoint(checkpoint_path(tmp_path / "run", "gan", "last"))["generator"]
    before = plain.state_dict()
    kept = [k for k in state if frozen(k)]
    assert kept and set(kept) <= set(before)
    for key in kept:  # weights and batch-norm statistics alike (not its step counter)
        assert key.endswith("num_batches_tracked") or torch.equal(state[key], before[key]), key
    for prefix in learning:  # and what was meant to learn did
        moved = [k for k in state if k.startswith(prefix) and not k.endswith("num_batches_tracked")]
        assert moved and any(
            not torch.equal(state[k], before[k]) if k in before else float(state[k].abs().max()) > 0
            for k in moved
        ), prefix


def test_palette_only_needs_a_palette_network() -> None:
    from trainer.loops import TrainingError, _freeze_all_but_palette

    with pytest.raises(TrainingError, match="no palette network"):
        _freeze_all_but_palette(build_generator(GeneratorConfig(decoder_width=8, in_channels=4)))


def test_rebalanced_l1_weighs_rare_colours_more() -> None:
    common = torch.tensor([5.0, 20.0])  # the orange-brown most SEM colorings use
    rare = torch.tensor([-40.0, -40.0])  # a blue-green
    truth = torch.cat((common[:, None].expand(2, 900), rare[:, None].expand(2, 100)), dim=1)
    counts = ab_counts(truth)
    rebalance = Rebalance.from_counts(counts, 0.5)
    target = (truth / 110.0).view(1, 2, 1, 1000)
    weights = rebalance.weights(target)[0, 0, 0]
    assert float(weights[-1]) > 2 * float(weights[0])
    pred = torch.zeros_like(target)
    plain = l1_ab(pred, target)
    weighted = l1_ab(pred, target, rebalance.weights(target))
    assert float(weighted) != pytest.approx(float(plain))
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        Rebalance.from_counts(counts, 1.0)
    assert math.isfinite(rebalance.spread) and rebalance.spread > 1


# ------------------------------------------------------------------ evaluation


def test_hue_contrast_is_zero_for_one_hue_and_high_for_opposite_figure_and_ground() -> None:
    from trainer.metrics import hue_contrast

    one = torch.zeros(2, 20, 20)
    one[0], one[1] = 20.0, 30.0
    assert hue_contrast(one) == pytest.approx(0.0, abs=1e-9)
    opposite = one.clone()
    opposite[:, :, 10:] *= -1  # the other half in the opposite hue
    assert hue_contrast(opposite) == pytest.approx(1.0, abs=1e-9)
    assert hue_contrast(opposite * 3) == pytest.approx(hue_contrast(opposite))  # chroma scale
    faint = opposite.clone()
    faint[:, :, 10:] *= 0.1  # chroma 3.6 < 5: not counted as a second hue
    assert hue_contrast(faint) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(hue_contrast(torch.zeros(2, 5, 5)))


def test_evaluate_reports_hue_contrast_and_the_truths_palette_pass(
    palette_model: Path, tmp_path: Path
) -> None:
    from test_trainer_data import write_shapes_dataset

    from trainer.evaluate import evaluate, format_table, select_images

    root = write_shapes_dataset(tmp_path / "shapes", count=3, gray=0)
    engine = Colorizer.from_file(palette_model, device="cpu", chroma_size=64)
    paths = select_images(root, "all", 0.1)
    report = evaluate(engine, paths, progress=False, palette_colours=3)
    assert 0.0 < report.metrics.hue_contrast_truth <= 1.0
    assert 0.0 <= report.metrics.hue_contrast <= 1.0
    assert report.palette is not None and report.palette.colours == 3
    assert report.palette.ab_mae != pytest.approx(report.metrics.ab_mae)  # the palette steered it
    table = format_table(report)
    assert "hue contrast (truth" in table and "3 dominant colours" in table
    assert evaluate(engine, paths, progress=False).palette is None
