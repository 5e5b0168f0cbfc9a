"""`trainer evaluate` and `trainer export` on generated colour images and tiny generators.

Everything is real: PNG/JPEG/TIFF files on disk, the daemon's engine, training checkpoints
written by trainer.checkpoint, and `semwatch colorize` as a subprocess.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cli_runs
import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from helpers import max_lightness_error
from PIL import Image
from safetensors import safe_open

from semwatch.cli import main
from semwatch.color import gray_levels_to_l, lab_to_rgb, rgb_to_lab
from semwatch.config import TrainerConfig
from semwatch.engine import Colorizer
from semwatch.imaging import read_provenance
from semwatch.model import (
    GeneratorConfig,
    LoadedGenerator,
    build_generator,
    file_sha256,
    load_generator,
    read_generator_metadata,
)
from trainer.checkpoint import save_checkpoint
from trainer.data import build_datasets, split_of
from trainer.evaluate import (
    EvaluationError,
    evaluate,
    evaluate_command,
    format_table,
    gray_from_lightness,
    load_for_evaluation,
    select_images,
)
from trainer.export import export_command
from trainer.rundir import run_facts, write_run_config

TINY = GeneratorConfig(decoder_width=8)
METRIC_KEYS = {
    "ab_mae",
    "psnr",
    "colorfulness",
    "colorfulness_truth",
    "hist_intersection",
    "region_coherence",
    "region_coherence_truth",
    "hue_contrast",
    "hue_contrast_truth",
}
REPORT_KEYS = {
    "model",
    "model_sha256",
    "split",
    "images",
    "skipped_gray",
    "skipped_unreadable",
    "chroma_size",
    "hue_scale",
    "guide_radius",
    "guide_eps",
    "region_hue",
    "region_size",
    "region_scale",
    "chroma_gain",
    "metrics",
    "gray_baseline",
    "hints",
    "hint_seed",
    "palette",
}


def colour_image(height: int, width: int, seed: int) -> np.ndarray:
    """Coloured shapes with texture: a hue ramp, a red disc, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 60 + 150 * x / width
    img[..., 1] = 90 + 60 * np.sin(y / 9.0)
    img[..., 2] = 200 - 120 * y / height
    disc = (x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(height, width) / 4) ** 2
    img[disc] = (210, 50, 40)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def truth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three colour truths (sizes not multiples of 32, three formats, a sub-folder) + one gray."""
    root = tmp_path_factory.mktemp("truth")
    (root / "sub").mkdir()
    Image.fromarray(colour_image(72, 100, 1)).save(root / "a.png")
    Image.fromarray(colour_image(90, 64, 2)).save(root / "sub" / "b.jpg", quality=95)
    tifffile.imwrite(root / "c.tif", colour_image(50, 81, 3), photometric="rgb")
    gray = colour_image(60, 60, 4)[..., :1].repeat(3, axis=2)
    Image.fromarray(gray).save(root / "gray.png")
    return root


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small chroma size and CPU: the test's speed, not the product's defaults."""
    path = tmp_path_factory.mktemp("config") / "config.toml"
    path.write_text(
        '[engine]\nchroma_size = 64\ndevice = "cpu"\nbatch_size = 2\n[trainer]\nval_fraction = 0.4\n'
    )
    return path


def write_checkpoint(path: Path, model: torch.nn.Module, **extra) -> Path:
    state = {
        "stage": "gan",
        "generator": model.state_dict(),
        "generator_config": TINY.to_dict(),
        "epoch": 7,
        "step": 350,
        "best_metric": 0.42,
        "trainer_config": {"image_size": 256, "lambda_l1": 20.0},
        "data_summary": {
            "root": "/data/train",
            "images": 12,
            "train": 10,
            "val": 2,
            "skipped_gray": 0,
            "skipped_bad": 0,
            "val_root": None,
        },
        "metrics": {"val_l1": 0.08, "hist_intersection": 0.42},
    }
    state.update(extra)
    save_checkpoint(path, state)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    return write_checkpoint(tmp_path_factory.mktemp("run") / "gan" / "best.pt", build_generator(TINY))


def run_cli(command, *args: object) -> CliRunner.invoke:
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def truth_lab(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        rgb = np.array(im.convert("RGB"))
    return rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)[0]


# -- the gray a truth image becomes --------------------------------------------------------


def test_gray_from_lightness_inverts_the_gray_levels() -> None:
    table = gray_levels_to_l().float()
    assert torch.equal(gray_from_lightness(table), torch.arange(256, dtype=torch.uint8))


def test_gray_from_lightness_is_nearest_level() -> None:
    rgb = colour_image(40, 40, 5)
    lab = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)[0]
    gray = gray_from_lightness(lab[0])
    # The engine keeps the L of (g, g, g): the chosen g is within half a level of the truth's L.
    assert max_lightness_error(rgb, gray.numpy()) <= 0.5 + 1e-3


# -- evaluate --------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_json_on_a_checkpoint(truth_dir: Path, checkpoint: Path, config_file: Path) -> None:
    result = run_cli(
        evaluate_command, checkpoint, truth_dir, "--split", "all", "--json", "-q", "--config", config_file
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == REPORT_KEYS
    assert set(report["metrics"]) == METRIC_KEYS and set(report["gray_baseline"]) == METRIC_KEYS
    assert (report["images"], report["skipped_gray"], report["split"]) == (3, 1, "all")
    assert report["chroma_size"] == 64
    assert report["model_sha256"] == file_sha256(checkpoint)
    assert report["model"].endswith("gan/best.pt")
    for side in ("metrics", "gray_baseline"):
        assert all(math.isfinite(v) for v in report[side].values()), report[side]
        assert 0.0 <= report[side]["hist_intersection"] <= 1.0

    # The gray baseline, worked out here independently: a = b = 0 against the truths' ab.
    labs = [truth_lab(p) for p in (truth_dir / "a.png", truth_dir / "sub" / "b.jpg")]
    with tifffile.TiffFile(truth_dir / "c.tif") as tif:
        c = tif.asarray()
    labs.append(rgb_to_lab(torch.from_numpy(c).permute(2, 0, 1)[None].float() / 255)[0])
    abs_sum = sum(float(lab[1:].abs().double().sum()) for lab in labs)
    count = sum(lab[1:].numel() for lab in labs)
    baseline = report["gray_baseline"]
    assert baseline["ab_mae"] == pytest.approx(abs_sum / count, abs=0.05)
    assert baseline["colorfulness"] == 0.0
    assert baseline["hist_intersection"] == 0.0
    assert baseline["region_coherence"] == 0.0  # no hue at all
    assert baseline["colorfulness_truth"] == report["metrics"]["colorfulness_truth"] > 20


@pytest.fixture(scope="module")
def tiny_colorizer(tiny_model: Path) -> Colorizer:
    """One engine for the tests that call evaluate() directly (building one takes seconds)."""
    return Colorizer(load_for_evaluation(tiny_model), chroma_size=64, batch_size=2)


def test_evaluate_table_on_a_generator_file(truth_dir: Path, tiny_colorizer: Colorizer) -> None:
    report = evaluate(tiny_colorizer, select_images(truth_dir, "all", 0.1, limit=2), progress=False)
    assert (report.model, report.model_sha256) == ("tiny-random", tiny_colorizer.model_sha256)
    assert report.images == 2  # a.png and c.tif: the first two files in path order
    text = format_table(report)
    assert "model tiny-random" in text and "2 images" in text
    for label in ("ab MAE", "PSNR", "colorfulness", "histogram intersection", "region hue coherence", "gray"):
        assert label in text
    assert f"{report.metrics.ab_mae:.2f}" in text and f"{report.gray_baseline.ab_mae:.2f}" in text


def test_evaluate_refuses_a_set_without_colour(tmp_path: Path, tiny_colorizer: Colorizer) -> None:
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "g.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(EvaluationError, match="no colour images.*1 gray, 1 unreadable"):
        evaluate(tiny_colorizer, select_images(tmp_path, "all", 0.1), progress=False)


def constant_colour_generator(a: float, b: float) -> LoadedGenerator:
    """A generator that predicts the same (a, b) everywhere: zero head weights, tanh bias."""
    model = build_generator(TINY)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.atanh(torch.tensor([a, b]) / 110.0))
    return LoadedGenerator(model.eval(), TINY, {}, Path("constant"), "0" * 64, "constant")


def test_evaluate_an_oracle_scores_near_perfect(tmp_path: Path) -> None:
    # Truths with exactly that colour and varying L: the engine path must give them back.
    a, b = 28.0, -12.0  # bin centres of the 8-unit histogram, well inside sRGB for L 40..75
    for i, (h, w) in enumerate(((48, 70), (64, 40))):
        lightness = torch.linspace(40, 75, w).expand(h, w)
        lab = torch.stack((lightness, torch.full((h, w), a), torch.full((h, w), b)))
        rgb = (lab_to_rgb(lab[None])[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(rgb).save(tmp_path / f"t{i}.png")
    colorizer = Colorizer(constant_colour_generator(a, b), chroma_size=64, batch_size=2)
    report = evaluate(colorizer, select_images(tmp_path, "all", 0.1), progress=False)
    assert report.images == 2
    assert report.metrics.ab_mae < 1.5  # 8-bit quantisation of the truths and the output
    assert report.metrics.hist_intersection > 0.95
    assert report.metrics.psnr > 40
    assert report.gray_baseline.ab_mae == pytest.approx((a + abs(b)) / 2, abs=1.0)
    assert report.metrics.colorfulness == pytest.approx(report.metrics.colorfulness_truth, rel=0.05)
    assert report.metrics.region_coherence > 0.99  # one hue everywhere


def test_split_val_is_the_training_split(truth_dir: Path, tiny_model: Path, config_file: Path) -> None:
    # The same hash of the relative path as training, so the same validation images.
    _, val_set, _ = build_datasets(truth_dir, image_size=32, val_fraction=0.4, threads=1)
    selected = select_images(truth_dir, "val", 0.4)
    rels = {p.relative_to(truth_dir).as_posix() for p in selected}
    assert rels == {r.rel for r in val_set.records}
    assert rels == {r for r in ("a.png", "sub/b.jpg", "c.tif", "gray.png") if split_of(r, 0.4) == "val"}
    assert 1 <= len(rels) < 3  # a real split of the three colour images, not all or none
    # The CLI takes the fraction from [trainer] val_fraction (0.4 in the test's config).
    result = run_cli(evaluate_command, tiny_model, truth_dir, "--json", "-q", "--config", config_file)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["split"], report["images"]) == ("val", len(rels))


def test_evaluate_errors_are_one_line(
    tmp_path: Path, truth_dir: Path, tiny_model: Path, config_file: Path
) -> None:
    missing = run_cli(evaluate_command, tmp_path / "nope.pt", truth_dir, "--config", config_file)
    assert missing.exit_code == 1
    assert "nope.pt" in missing.output and "not found" in missing.output

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    bad = run_cli(evaluate_command, garbage, truth_dir, "--config", config_file)
    assert bad.exit_code == 1 and "garbage.pt" in bad.output

    not_a_folder = run_cli(evaluate_command, tiny_model, tmp_path / "absent", "--config", config_file)
    assert not_a_folder.exit_code == 1 and "absent: not a folder" in not_a_folder.output

    no_val = run_cli(evaluate_command, tiny_model, truth_dir, "--val-fraction", "0", "--config", config_file)
    assert no_val.exit_code == 1 and "selects nothing" in no_val.output


# -- export ----------------------------------------------------------------------------------


def test_export_checkpoint_to_fp16_with_card(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "facility-v1.safetensors"
    result = run_cli(export_command, checkpoint, "-o", out)
    assert result.exit_code == 0, result.output

    with safe_open(str(out), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes  # integer buffers stay integer

    config, card = read_generator_metadata(out)
    assert config == TINY
    assert card["name"] == "facility-v1"
    assert card["dtype"] == "float16"
    assert card["created"].endswith("+00:00")
    assert card["data_summary"]["images"] == 12
    assert card["metrics"] == {"val_l1": 0.08, "hist_intersection": 0.42}
    assert card["recipe"]["stage"] == "gan"
    assert (card["recipe"]["epoch"], card["recipe"]["step"]) == (7, 350)
    assert card["recipe"]["trainer_config"]["lambda_l1"] == 20.0
    assert card["exported_from"] == {
        "path": str(checkpoint.resolve()),
        "sha256": file_sha256(checkpoint),
        "kind": "checkpoint",
    }
    assert "semwatch_version" in card and "export" in card["command"]

    loaded = load_generator(out)
    state = torch.load(checkpoint, weights_only=True)["generator"]
    for key, value in loaded.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, state[key].half().float(), rtol=0, atol=0)
    assert loaded.name == "facility-v1"


@pytest.mark.slow
def test_export_card_says_how_the_model_was_trained_and_how_it_evaluated(
    tmp_path: Path, truth_dir: Path, config_file: Path
) -> None:
    run_dir = tmp_path / "run"
    torch.manual_seed(2)
    source = write_checkpoint(run_dir / "gan" / "best.pt", build_generator(TINY))
    command = "trainer run /data/sem --out run --gan-epochs 3"
    write_run_config(run_dir, TrainerConfig(), run_facts(command, Path("/data/sem"), None, None, 1))
    report = tmp_path / "eval.json"
    result = run_cli(
        evaluate_command,
        source,
        truth_dir,
        "--split",
        "all",
        "--json",
        "-q",
        "--hue-scale",
        "0.1",
        "--config",
        config_file,
    )
    assert result.exit_code == 0, result.output
    report.write_text(result.stdout)

    out = tmp_path / "m.safetensors"
    assert run_cli(export_command, source, "-o", out, "--evaluation", report).exit_code == 0
    card = read_generator_metadata(out)[1]
    assert card["training"]["command"] == command
    assert card["training"]["data"] == "/data/sem"
    assert card["evaluation"]["hue_scale"] == 0.1
    assert card["evaluation"]["metrics"] == json.loads(report.read_text())["metrics"]

    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"what": 1}')
    refused = run_cli(export_command, source, "-o", tmp_path / "x.safetensors", "--evaluation", bogus)
    assert refused.exit_code == 1 and "bogus.json" in refused.output
    assert not (tmp_path / "x.safetensors").exists()


def test_export_refuses_to_overwrite_without_force(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")
    refused = run_cli(export_command, checkpoint, "-o", out)
    assert refused.exit_code == 1 and "--force" in refused.output and str(out) in refused.output
    assert out.read_bytes() == b"precious"
    assert run_cli(export_command, checkpoint, "-o", out, "--force", "--fp32").exit_code == 0
    assert read_generator_metadata(out)[1]["dtype"] == "float32"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".semwatch-tmp-")]
    assert not leftovers


def test_reexport_generator_file_fp32_to_fp16_keeps_its_card(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "half.safetensors"
    assert run_cli(export_command, tiny_model, "-o", out).exit_code == 0
    _, card = read_generator_metadata(out)
    assert card["name"] == "tiny-random"  # the source's own name, not the file's
    assert card["dtype"] == "float16"
    assert card["exported_from"]["kind"] == "generator"
    assert card["exported_from"]["sha256"] == file_sha256(tiny_model)
    source = load_generator(tiny_model).model.state_dict()
    for key, value in load_generator(out).model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, source[key].half().float(), rtol=0, atol=0)


def test_export_refuses_weights_beyond_float16(tmp_path: Path) -> None:
    model = build_generator(TINY)
    with torch.no_grad():
        model.head.bias.fill_(1e6)
    source = write_checkpoint(tmp_path / "pretrain" / "last.pt", model, stage="pretrain")
    refused = run_cli(export_command, source, "-o", tmp_path / "x.safetensors")
    assert refused.exit_code == 1 and "head.bias" in refused.output and "--fp32" in refused.output
    assert not (tmp_path / "x.safetensors").exists()
    assert run_cli(export_command, source, "-o", tmp_path / "x.safetensors", "--fp32").exit_code == 0


def test_exported_model_colorizes_through_semwatch_cli(tmp_path: Path, checkpoint: Path) -> None:
    model_file = tmp_path / "exported.safetensors"
    assert run_cli(export_command, checkpoint, "-o", model_file).exit_code == 0
    gray = colour_image(70, 90, 6)[..., 1]
    Image.fromarray(gray).save(tmp_path / "sem.png")
    out_dir = tmp_path / "out"
    proc = cli_runs.in_process(
        main,
        [
            "colorize",
            str(tmp_path / "sem.png"),
            "--output-dir",
            str(out_dir),
            "--model",
            str(model_file),
            "--chroma-size",
            "64",
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert proc.returncode == 0, proc.stderr
    with tifffile.TiffFile(out_dir / "sem.tif") as tif:
        rgb = tif.pages[0].asarray()
    provenance = read_provenance(out_dir / "sem.tif")["semwatch"]
    assert rgb.shape == (70, 90, 3)
    assert max_lightness_error(rgb, gray) <= 1.0
    assert provenance["model"] == {"name": "exported", "sha256": file_sha256(model_file)}
