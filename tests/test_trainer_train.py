"""Training stages on a small generated dataset: learning, GAN stage, resume, torchrun, CLI.

Everything is real (files, checkpoints, subprocesses, a gloo process group); the sizes are
tiny (32-pixel crops, decoder width 8) so that the file runs in a couple of minutes on two
shared cores. Torch runs single-threaded here: on an oversubscribed machine OpenMP's
spinning threads make two-thread training several times slower, not faster.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cli_runs
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_trainer_data import write_shapes_dataset

import trainer.checkpoint
from semwatch.cli import main
from semwatch.config import TrainerConfig, load_config_file
from semwatch.model import GeneratorConfig, build_generator, save_generator
from trainer.checkpoint import CheckpointError, checkpoint_path, load_any_generator, load_checkpoint
from trainer.cli import main as trainer_main
from trainer.cli import resolve_config
from trainer.data import DataSummary, build_datasets
from trainer.discriminator import build_patchgan, receptive_field
from trainer.distributed import init_distributed
from trainer.loops import StageSpec, StepRecord, TrainingError, run_pipeline, train_stage, validate
from trainer.losses import discriminator_loss, gan_loss
from trainer.rundir import MetricsLog, render_trainer_toml
from trainer.stages import GAN, PRETRAIN

REPO = Path(__file__).resolve().parents[1]
TINY = TrainerConfig(
    image_size=32,
    val_fraction=0.2,
    seed=0,
    batch_size=4,
    workers=0,
    decoder_width=8,
    pretrain_epochs=2,
    pretrain_lr=1e-3,
    patience=0,
    gan_epochs=2,
    lambda_l1=20.0,
    lr_g=2e-4,
    lr_d=2e-4,
    device="cpu",
    sample_images=2,
    max_steps_per_epoch=3,
)
TINY_OPTIONS = [
    "--image-size",
    "32",
    "--val-fraction",
    "0.2",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--decoder-width",
    "8",
    "--device",
    "cpu",
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), count=40, gray=2)


@pytest.fixture(scope="module")
def datasets(data_root: Path):
    return build_datasets(data_root, image_size=32, val_fraction=0.2, seed=0)


def _env():
    return init_distributed("cpu")


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _documented_checkpoint_keys() -> set[str]:
    """The keys of the format table in trainer/checkpoint.py's docstring."""
    return set(re.findall(r"^    ``(\w+)``", trainer.checkpoint.__doc__ or "", flags=re.MULTILINE))


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SEMWATCH_CONFIG"):
        env.pop(name, None)
    return env


# ------------------------------------------------------------------ learning


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path, datasets) -> dict:
    """A stage-1 run of a few hundred steps, shared by the tests that need a trained generator."""
    run_dir = tmp_path_factory.mktemp("pretrain-run")
    # ~200 steps: 25 epochs of the 32 training images in batches of 4.
    config = dataclasses.replace(TINY, pretrain_epochs=25, pretrain_lr=2e-3, max_steps_per_epoch=0)
    _, val_ds, _ = datasets
    torch.manual_seed(config.seed)
    start_l1 = validate(build_generator(GeneratorConfig(decoder_width=8)), val_ds, _env(), config)["val_l1"]
    steps: list[StepRecord] = []
    spec = StageSpec("pretrain", data_root, run_dir, config)
    result = train_stage(spec, _env(), on_step=steps.append, datasets=datasets)
    return {"run_dir": run_dir, "result": result, "start_l1": start_l1, "steps": steps, "config": config}


@pytest.mark.slow  # the shared ~200-step stage-1 run
def test_pretrain_lowers_validation_l1_well_below_its_start(pretrained_run: dict) -> None:
    result, run_dir = pretrained_run["result"], pretrained_run["run_dir"]
    steps_per_epoch = len(pretrained_run["steps"]) // 25
    assert steps_per_epoch == 32 // 4
    assert result.finished and result.epochs == 25 and result.step == 25 * steps_per_epoch
    rows = _rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 26))
    val_l1 = [float(r["val_l1"]) for r in rows]
    start = pretrained_run["start_l1"]
    assert min(val_l1) < 0.5 * start, (start, val_l1)
    assert result.best_metric == pytest.approx(min(val_l1), rel=1e-4)
    best = load_checkpoint(checkpoint_path(run_dir, "pretrain", "best"))
    assert best["epoch"] == 1 + val_l1.index(min(val_l1))
    assert best["best_metric_name"] == "val_l1"
    assert best["data_summary"]["skipped_gray"] == 2


@pytest.mark.slow  # the shared ~200-step stage-1 run
def test_pretrain_run_dir_contents(pretrained_run: dict) -> None:
    run_dir = pretrained_run["run_dir"]
    last = load_checkpoint(checkpoint_path(run_dir, "pretrain", "last"))
    assert last["stage"] == "pretrain" and last["epoch"] == 25 and last["step"] == 200
    assert last["finished"] and last["discriminator"] is None and last["opt_d"] is None
    assert set(last) == _documented_checkpoint_keys()
    assert last["generator_config"]["decoder_width"] == 8
    assert set(last["metrics"]) == {"val_l1", "val_hist_intersection"}
    samples = sorted(p.name for p in (run_dir / "samples").iterdir())
    assert samples[0] == "pretrain_001.png" and len(samples) == 25
    from PIL import Image

    with Image.open(run_dir / "samples" / "pretrain_025.png") as grid:
        # 2 images x (gray | predicted | truth) of 32 pixels with 2-pixel padding.
        assert grid.size == (3 * 34 + 2, 2 * 34 + 2)
    rows = _rows(run_dir)
    lrs = [float(r["lr_g"]) for r in rows]
    assert lrs[0] == pytest.approx(2e-3) and lrs == sorted(lrs, reverse=True)  # cosine decay
    assert all(float(r["images_per_s"]) > 0 for r in rows)


@pytest.mark.slow  # starts from the shared ~200-step stage-1 run
def test_stage2_from_stage1_checkpoint(
    pretrained_run: dict, data_root: Path, datasets, tmp_path: Path
) -> None:
    init = checkpoint_path(pretrained_run["run_dir"], "pretrain", "best")
    config = dataclasses.replace(TINY, gan_epochs=3, max_steps_per_epoch=4, lambda_l1=20.0)
    steps: list[StepRecord] = []
    spec = StageSpec("gan", data_root, tmp_path, config, init=init, tensorboard=True)
    result = train_stage(spec, _env(), on_step=steps.append, datasets=datasets)
    assert result.finished and result.step == 12 and len(steps) == 12
    for record in steps:
        assert set(record.losses) == {"train_l1", "train_g_gan", "train_d"}
        assert all(math.isfinite(v) for v in record.losses.values())
    rows = _rows(tmp_path)
    assert [r["stage"] for r in rows] == ["gan"] * 3
    assert all(
        math.isfinite(float(r[k])) for r in rows for k in ("train_g_gan", "train_d", "val_hist_intersection")
    )
    hist = [float(r["val_hist_intersection"]) for r in rows]
    best = load_checkpoint(checkpoint_path(tmp_path, "gan", "best"))
    assert best["best_metric_name"] == "val_hist_intersection"
    assert best["epoch"] == 1 + hist.index(max(hist))  # realism, not L1, picks the best
    last = load_checkpoint(checkpoint_path(tmp_path, "gan", "last"))
    assert last["discriminator"] is not None and last["opt_d"] is not None and last["epoch"] == 3
    assert set(last) == _documented_checkpoint_keys()
    assert last["sched_g"] == {"kind": "constant-then-linear", "total_epochs": 3, "base_lr": config.lr_g}
    # The GAN stage starts from the stage-1 weights, not from scratch.
    assert steps[0].losses["train_l1"] < 0.8 * pretrained_run["start_l1"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "samples" / "gan_003.png").is_file()


# ------------------------------------------------------------------ resume


class _Crash(RuntimeError):
    pass


def _crash_at(step: int):
    def callback(record: StepRecord) -> None:
        if record.step == step:
            raise _Crash(f"simulated crash at step {step}")

    return callback


@pytest.mark.slow  # two runs of up to 9 steps, each stage
@pytest.mark.parametrize("stage", ["pretrain", "gan"])
def test_resume_continues_exactly_like_an_uninterrupted_run(
    stage: str, data_root: Path, datasets, tmp_path: Path
) -> None:
    config = dataclasses.replace(TINY, pretrain_epochs=3, gan_epochs=3, max_steps_per_epoch=3)
    init = None
    if stage == "gan":  # a stage-1 generator to start from, shared by both runs
        init_dir = tmp_path / "init"
        train_stage(
            StageSpec("pretrain", data_root, init_dir, dataclasses.replace(config, pretrain_epochs=1)),
            _env(),
            datasets=datasets,
        )
        init = checkpoint_path(init_dir, "pretrain", "last")

    straight: list[StepRecord] = []
    train_stage(
        StageSpec(stage, data_root, tmp_path / "a", config, init=init),
        _env(),
        on_step=straight.append,
        datasets=datasets,
    )

    run_b = tmp_path / "b"
    with pytest.raises(_Crash):  # dies in the middle of epoch 2 (steps 4..6)
        train_stage(
            StageSpec(stage, data_root, run_b, config, init=init),
            _env(),
            on_step=_crash_at(5),
            datasets=datasets,
        )
    saved = load_checkpoint(checkpoint_path(run_b, stage, "last"))
    assert (saved["epoch"], saved["step"]) == (1, 3)
    assert len(_rows(run_b)) == 1

    resumed: list[StepRecord] = []
    result = train_stage(
        StageSpec(stage, data_root, run_b, config, resume=True),
        _env(),
        on_step=resumed.append,
        datasets=datasets,
    )
    assert [r.step for r in resumed] == [4, 5, 6, 7, 8, 9]
    # The next step's loss is bit-identical to the uninterrupted run's, and so is the rest.
    assert [r.losses for r in resumed] == [r.losses for r in straight[3:]]
    assert result.step == 9 and result.epochs == 3
    a = load_checkpoint(checkpoint_path(tmp_path / "a", stage, "last"))
    b = load_checkpoint(checkpoint_path(run_b, stage, "last"))
    for key in ("generator", "discriminator"):
        if a[key] is not None:
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    for key in ("opt_g", "opt_d"):
        if a[key] is not None:
            for pid, s in a[key]["state"].items():
                assert all(torch.equal(s[k], b[key]["state"][pid][k]) for k in s)
    assert [r["epoch"] for r in _rows(run_b)] == ["1", "2", "3"]  # no duplicate rows


@pytest.mark.slow
def test_resume_refusals_are_one_line_errors(data_root: Path, datasets, tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, pretrain_epochs=1, max_steps_per_epoch=1)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train_stage(
            StageSpec("pretrain", data_root, tmp_path, config, resume=True), _env(), datasets=datasets
        )
    train_stage(StageSpec("pretrain", data_root, tmp_path, config), _env(), datasets=datasets)
    with pytest.raises(TrainingError, match="pass --resume"):
        train_stage(StageSpec("pretrain", data_root, tmp_path, config), _env(), datasets=datasets)
    # Resuming a finished stage does nothing; raising its epoch count continues it.
    done = train_stage(
        StageSpec("pretrain", data_root, tmp_path, config, resume=True), _env(), datasets=datasets
    )
    assert done.finished and done.step == 1
    more = train_stage(
        StageSpec(
            "pretrain", data_root, tmp_path, dataclasses.replace(config, pretrain_epochs=2), resume=True
        ),
        _env(),
        datasets=datasets,
    )
    assert more.epochs == 2 and more.step == 2
    (tmp_path / "pretrain" / "last.pt").write_bytes(b"truncated")
    with pytest.raises(TrainingError, match="last.pt"):
        train_stage(
            StageSpec("pretrain", data_root, tmp_path, config, resume=True), _env(), datasets=datasets
        )


@pytest.mark.slow
def test_early_stopping_on_patience(data_root: Path, datasets, tmp_path: Path) -> None:
    # A learning rate of zero never improves after the first epoch: stops after 1 + patience.
    config = dataclasses.replace(TINY, pretrain_epochs=10, patience=2, pretrain_lr=0.0, max_steps_per_epoch=1)
    result = train_stage(StageSpec("pretrain", data_root, tmp_path, config), _env(), datasets=datasets)
    assert result.early_stopped and result.finished and result.epochs == 3
    assert load_checkpoint(checkpoint_path(tmp_path, "pretrain", "last"))["finished"]


@pytest.mark.slow  # two stages, crashed and re-run
def test_run_pipeline_resumes_as_a_whole(data_root: Path, datasets, tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, pretrain_epochs=2, gan_epochs=2, max_steps_per_epoch=2)
    seen: list[StepRecord] = []

    def crash_in_gan(record: StepRecord) -> None:
        seen.append(record)
        if record.stage == "gan" and record.step == 3:  # stage 2, epoch 2: after its first checkpoint
            raise _Crash("killed during stage 2")

    with pytest.raises(_Crash):
        run_pipeline(data_root, tmp_path, config, _env(), on_step=crash_in_gan)
    assert [(r.stage, r.step) for r in seen] == [
        ("pretrain", 1),
        ("pretrain", 2),
        ("pretrain", 3),
        ("pretrain", 4),
        ("gan", 1),
        ("gan", 2),
        ("gan", 3),
    ]
    pretrain_last = checkpoint_path(tmp_path, "pretrain", "last")
    stamp = pretrain_last.stat().st_mtime_ns

    again: list[StepRecord] = []
    results = run_pipeline(data_root, tmp_path, config, _env(), on_step=again.append)
    assert [(r.stage, r.step) for r in again] == [("gan", 3), ("gan", 4)]  # stage 1 not redone
    assert [r.stage for r in results] == ["gan"] and results[0].finished
    assert pretrain_last.stat().st_mtime_ns == stamp
    assert [(r["stage"], r["epoch"]) for r in _rows(tmp_path)] == [
        ("pretrain", "1"),
        ("pretrain", "2"),
        ("gan", "1"),
        ("gan", "2"),
    ]
    assert run_pipeline(data_root, tmp_path, config, _env()) == []  # all done: nothing to do


@pytest.mark.slow
def test_run_pipeline_with_init_fine_tunes_an_existing_generator(
    data_root: Path, datasets, tmp_path: Path
) -> None:
    torch.manual_seed(5)
    generator = build_generator(GeneratorConfig(decoder_width=12))
    model_file = tmp_path / "production.safetensors"
    save_generator(model_file, generator, generator.config, {"name": "production"})
    config = dataclasses.replace(TINY, pretrain_epochs=1, gan_epochs=1, max_steps_per_epoch=1)
    results = run_pipeline(data_root, tmp_path / "run", config, _env(), init=model_file)
    assert [r.stage for r in results] == ["pretrain", "gan"]
    for stage in ("pretrain", "gan"):
        ckpt = load_checkpoint(checkpoint_path(tmp_path / "run", stage, "last"))
        assert ckpt["generator_config"]["decoder_width"] == 12  # the init model's architecture


# ------------------------------------------------------------------ pieces


def test_patchgan_is_the_70x70_pix2pix_discriminator() -> None:
    assert receptive_field(3) == 70
    d = build_patchgan(in_channels=3, n_layers=3, norm="batch")
    assert d(torch.zeros(2, 3, 256, 256)).shape == (2, 1, 30, 30)
    assert sum(p.numel() for p in d.parameters()) == 2_765_633  # pix2pix's NLayerDiscriminator
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules()) == 3
    with pytest.raises(ValueError, match="norm"):
        build_patchgan(norm="group")  # type: ignore[arg-type]


def test_gan_losses() -> None:
    logits = torch.tensor([[0.0, 2.0]])
    assert float(gan_loss(logits, True, "lsgan")) == pytest.approx((1 + 1) / 2)
    assert float(gan_loss(torch.zeros(3), True, "bce")) == pytest.approx(math.log(2))
    assert float(discriminator_loss(torch.full((4,), 20.0), torch.full((4,), -20.0), "bce")) < 1e-6
    with pytest.raises(ValueError, match="hinge"):
        gan_loss(logits, True, "hinge")  # type: ignore[arg-type]


def test_learning_rate_schedules() -> None:
    cosine = [PRETRAIN.lr_factor(e, 5) for e in range(5)]
    assert cosine[0] == 1.0 and cosine[-1] == pytest.approx(0.01) and cosine == sorted(cosine, reverse=True)
    linear = [GAN.lr_factor(e, 6) for e in range(6)]
    assert linear[:3] == [1.0, 1.0, 1.0] and linear[3] > linear[4] > linear[5] > 0
    assert PRETRAIN.lr_factor(0, 1) == 1.0


def test_stage_policies_hold_the_per_stage_rules(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, patience=2, pretrain_epochs=10, gan_epochs=10)
    assert [PRETRAIN.stops_early(n, config) for n in (0, 1, 2, 3)] == [False, False, True, True]
    assert not PRETRAIN.stops_early(5, dataclasses.replace(config, patience=0))  # 0 = never
    assert not GAN.stops_early(5, config)  # GAN losses do not converge: no early stopping
    assert PRETRAIN.is_finished(3, 2, config) and not PRETRAIN.is_finished(3, 1, config)
    assert GAN.is_finished(10, 0, config) and not GAN.is_finished(9, 9, config)
    assert PRETRAIN.improves(0.4, 0.5) and not PRETRAIN.improves(0.6, 0.5)
    assert GAN.improves(0.6, 0.5) and not GAN.improves(0.4, 0.5)
    assert not PRETRAIN.improves(math.nan, PRETRAIN.initial_best())
    assert StageSpec("gan", tmp_path, tmp_path, config).policy is GAN
    with pytest.raises(ValueError, match="unknown stage 'gann'"):
        StageSpec("gann", tmp_path, tmp_path, config)  # type: ignore[arg-type]


@pytest.mark.slow
def test_load_any_generator_reads_checkpoints_and_generator_files(
    data_root: Path, datasets, tmp_path: Path
) -> None:
    # Any stage-1 checkpoint will do: one step of its own (the shared long run is slow).
    config = dataclasses.replace(TINY, pretrain_epochs=1, max_steps_per_epoch=1)
    train_stage(StageSpec("pretrain", data_root, tmp_path / "run", config), _env(), datasets=datasets)
    ckpt = checkpoint_path(tmp_path / "run", "pretrain", "best")
    model, config, info = load_any_generator(ckpt)
    assert config.decoder_width == 8 and info["stage"] == "pretrain" and info["source"] == "checkpoint"
    assert info["data_summary"]["train"] > 0 and "val_l1" in info["metrics"]
    out = tmp_path / "g.safetensors"
    save_generator(out, model, config, {"name": "x", "metrics": info["metrics"]})
    model2, config2, info2 = load_any_generator(out)
    assert config2 == config and info2["source"] == "generator" and info2["metrics"] == info["metrics"]
    x = torch.zeros(1, 1, 32, 32)
    assert torch.equal(model(x), model2(x))
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_any_generator(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_any_generator(tmp_path / "missing.pt")


def test_run_config_round_trips_and_options_override(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, pretrained_encoder=Path("/models/resnet18.pth"), gan_loss="lsgan")
    (tmp_path / "config.toml").write_text(render_trainer_toml(config, {"command": 'trainer "quoted"'}))
    assert load_config_file(tmp_path / "config.toml").trainer == config
    resolved = resolve_config(None, tmp_path, True, {"gan_epochs": 7, "lr_g": 1e-5})
    assert resolved == dataclasses.replace(config, gan_epochs=7, lr_g=1e-5)
    from semwatch.config import ConfigError

    with pytest.raises(ConfigError, match="lambda_l1"):
        resolve_config(None, tmp_path, True, {"lambda_l1": -1.0})


def test_metrics_log_drops_rows_of_redone_epochs(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.csv")
    for stage, epoch in [("pretrain", 1), ("pretrain", 2), ("pretrain", 3), ("gan", 1)]:
        log.append({"stage": stage, "epoch": epoch, "step": epoch * 10, "val_l1": 1.5})
    log.truncate_after("pretrain", 2, later_stages=["gan"])
    assert [(r["stage"], r["epoch"]) for r in log.rows()] == [("pretrain", "1"), ("pretrain", "2")]
    with pytest.raises(ValueError, match="unknown"):
        log.append({"stage": "gan", "bogus": 1})


# ------------------------------------------------------------------ command line and torchrun


def test_cli_errors_are_one_line(data_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(trainer_main, ["gan", str(data_root), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--init" in result.output
    result = runner.invoke(
        trainer_main, ["pretrain", str(data_root), "--out", str(tmp_path / "r"), "--resume", *TINY_OPTIONS]
    )
    assert result.exit_code == 1 and "nothing to resume" in result.output
    result = runner.invoke(
        trainer_main, ["pretrain", str(data_root), "--out", str(tmp_path / "r"), "--image-size", "-5"]
    )
    assert result.exit_code == 1 and "trainer.image_size" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(
        trainer_main, ["pretrain", str(empty), "--out", str(tmp_path / "r"), *TINY_OPTIONS]
    )
    assert result.exit_code == 1 and "no JPEG/PNG/TIFF images" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_cli_run_killed_between_stages_continues(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "trainer",
        "run",
        str(data_root),
        "--out",
        str(run_dir),
        *TINY_OPTIONS,
        "--max-steps-per-epoch",
        "2",
        "--pretrain-epochs",
        "1",
        "--gan-epochs",
        "2",
    ]
    proc = subprocess.Popen(
        command, env=_subprocess_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    pretrain_last = checkpoint_path(run_dir, "pretrain", "last")
    deadline = time.monotonic() + 180
    while not pretrain_last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the harshest interruption, right after stage 1 ended
    proc.wait(timeout=30)
    assert pretrain_last.exists(), proc.stderr.read().decode() if proc.stderr else ""
    proc.stderr.close()
    stamp = pretrain_last.stat().st_mtime_ns

    done = subprocess.run(
        command, env=_subprocess_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert pretrain_last.stat().st_mtime_ns == stamp  # stage 1 was not redone
    assert [(r["stage"], r["epoch"]) for r in _rows(run_dir)] == [
        ("pretrain", "1"),
        ("gan", "1"),
        ("gan", "2"),
    ]
    gan_last = load_checkpoint(checkpoint_path(run_dir, "gan", "last"))
    assert gan_last["finished"] and gan_last["step"] == 4
    assert load_config_file(run_dir / "config.toml").trainer.gan_epochs == 2
    # The result is a generator semwatch can load once exported (export is trainer export's job);
    # here: the checkpoint's generator loads through the shared loader.
    model, config, info = load_any_generator(checkpoint_path(run_dir, "gan", "best"))
    assert info["stage"] == "gan" and config.decoder_width == 8


@pytest.mark.slow
def test_torchrun_two_processes_with_gloo_complete_both_stages(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "trainer",
        "run",
        str(data_root),
        "--out",
        str(run_dir),
        *TINY_OPTIONS,
        "--pretrain-epochs",
        "1",
        "--gan-epochs",
        "1",
    ]
    done = subprocess.run(
        command, env=_subprocess_env(), cwd=tmp_path, capture_output=True, text=True, timeout=420
    )
    assert done.returncode == 0, done.stderr[-4000:]
    _, _, summary = build_datasets(data_root, image_size=32, val_fraction=0.2)
    # DistributedSampler pads to equal shards; the ragged last batch of a shard is dropped.
    per_rank_steps = math.ceil(summary.train / 2) // 4
    for stage in ("pretrain", "gan"):
        ckpt = load_checkpoint(checkpoint_path(run_dir, stage, "last"))
        assert ckpt["epoch"] == 1 and ckpt["step"] == per_rank_steps and ckpt["finished"]
    rows = _rows(run_dir)
    assert [r["stage"] for r in rows] == ["pretrain", "gan"]  # rank 0 alone writes
    assert all(float(r["images_per_s"]) > 0 for r in rows)


# ------------------------------------------------------------------ training behaviour, seeded


class SyntheticColorData(torch.utils.data.Dataset):
    """Generated (input, ab) pairs that depend only on (epoch, index): no decoder, no files.

    The ab target is a smooth function of L, so there is something to learn; with ``hints``
    the input carries three more planes (a, b at a few points, and their mask), like
    ColorDataset's.
    """

    def __init__(self, count: int, size: int, offset: int, hints: bool) -> None:
        self.count, self.size, self.offset, self.hints = count, size, offset, hints
        self.epoch = 0

    def __len__(self) -> int:
        return self.count

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(1000 * self.epoch + self.offset + index)
        coarse = torch.rand(1, 1, 4, 4, generator=g) * 2 - 1
        light = torch.nn.functional.interpolate(coarse, size=(self.size, self.size), mode="bilinear")[0]
        ab = torch.cat((0.3 + 0.3 * torch.sin(3 * light), 0.3 * light - 0.1))
        if not self.hints:
            return light, ab
        mask = (torch.rand(1, self.size, self.size, generator=g) < 0.01).float()
        return torch.cat((light, ab * mask, mask)), ab


def _synthetic_datasets(hints: bool):
    summary = DataSummary(root="synthetic", images=20, train=16, val=4, skipped_gray=0, skipped_bad=0)
    return SyntheticColorData(16, 32, 0, hints), SyntheticColorData(4, 32, 500, hints), summary


# Stage variants: plain input with BCE, hints with LSGAN; both train two stages twice over,
# so they run with the full suite (CI). The fast loop keeps the one-step training checks.
VARIANT_PARAMS = [pytest.param(v, marks=pytest.mark.slow) for v in ("plain-bce", "hints-lsgan")]


@dataclasses.dataclass(frozen=True)
class TwoStages:
    """What a seeded float32 run of both stages did, as training reported it."""

    steps: list[tuple[str, int, dict[str, float]]]  # (stage, step, losses) per optimizer step
    rows: list[dict[str, str]]  # metrics.csv, pretrain then gan
    pretrain_best: dict[str, torch.Tensor]  # the generator's parameters in pretrain/best.pt
    gan_last: dict[str, torch.Tensor]  # ... and in gan/last.pt


def _parameters(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The generator's learned tensors (BatchNorm's running statistics left out: they move
    in every training forward pass, whatever the learning rate)."""
    state = load_checkpoint(checkpoint)["generator"]
    return {
        k: v
        for k, v in state.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


def _train_both_stages(variant: str, folder: Path, **changes) -> TwoStages:
    """A few float32 steps of each stage on synthetic data, stage 2 from stage 1's best."""
    hints = variant == "hints-lsgan"
    config = dataclasses.replace(
        TINY,
        amp=False,  # float32 everywhere: bf16 autocast exists on some CPUs only
        pretrain_epochs=2,
        gan_epochs=2,
        max_steps_per_epoch=4,
        pretrain_lr=2e-2,
        lr_g=2e-3,
        hints=hints,
        gan_loss="lsgan" if hints else "bce",
    )
    config = dataclasses.replace(config, **changes)
    datasets = _synthetic_datasets(hints)
    seen: list[StepRecord] = []
    train_stage(StageSpec("pretrain", folder, folder, config), _env(), on_step=seen.append, datasets=datasets)
    best = checkpoint_path(folder, "pretrain", "best")
    run_gan = folder / "gan-run"
    train_stage(
        StageSpec("gan", folder, run_gan, config, init=best), _env(), on_step=seen.append, datasets=datasets
    )
    return TwoStages(
        steps=[(r.stage, r.step, r.losses) for r in seen],
        rows=_rows(folder) + _rows(run_gan),
        pretrain_best=_parameters(best),
        gan_last=_parameters(checkpoint_path(run_gan, "gan", "last")),
    )


@pytest.fixture(scope="module", params=VARIANT_PARAMS)
def two_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[TwoStages]:
    """The same seeded training twice in this process."""
    return [_train_both_stages(request.param, tmp_path_factory.mktemp(request.param)) for _ in range(2)]


def _column(rows: list[dict[str, str]], stage: str, name: str) -> list[float]:
    return [float(row[name]) for row in rows if row["stage"] == stage]


# Behaviour, not one machine's numbers: float32 convolutions round differently with each
# CPU's vector kernels (AVX-512 or not), so losses pinned on one machine fail on another.


def test_two_seeded_runs_on_one_machine_are_bit_identical(two_runs: list[TwoStages]) -> None:
    first, second = two_runs
    assert first.steps == second.steps  # exact floats, every step of both stages
    timing = ("seconds", "images_per_s")
    assert [{k: v for k, v in row.items() if k not in timing} for row in first.rows] == [
        {k: v for k, v in row.items() if k not in timing} for row in second.rows
    ]
    for name, tensor in first.gan_last.items():
        assert torch.equal(tensor, second.gan_last[name]), name


def test_both_stages_lower_their_losses(two_runs: list[TwoStages]) -> None:
    run = two_runs[0]
    pretrain = [losses["train_l1"] for stage, _, losses in run.steps if stage == "pretrain"]
    assert len(pretrain) == 8 and np.mean(pretrain[4:]) < np.mean(pretrain[:4])  # epoch 2 below epoch 1
    for stage in ("pretrain", "gan"):
        first, second = _column(run.rows, stage, "val_l1")
        assert second < first, (stage, first, second)
    gan = [losses for stage, _, losses in run.steps if stage == "gan"]
    assert len(gan) == 8 and all(set(losses) == {"train_l1", "train_g_gan", "train_d"} for losses in gan)
    assert all(math.isfinite(value) for losses in gan for value in losses.values())


def test_the_learning_rates_follow_each_stages_schedule_exactly(two_runs: list[TwoStages]) -> None:
    # pretrain: cosine from pretrain_lr (2e-2) down to 1 % of it over 2 epochs; gan: lr_g
    # (2e-3) and lr_d (2e-4) constant for the first half of 2 epochs, then linearly down.
    rows = two_runs[0].rows
    assert _column(rows, "pretrain", "lr_g") == pytest.approx([2e-2, 2e-4], rel=1e-9)
    assert _column(rows, "gan", "lr_g") == pytest.approx([2e-3, 1e-3], rel=1e-9)
    assert _column(rows, "gan", "lr_d") == pytest.approx([2e-4, 1e-4], rel=1e-9)
    assert [(r["stage"], r["epoch"], r["step"]) for r in rows] == [
        ("pretrain", "1", "4"),
        ("pretrain", "2", "8"),
        ("gan", "1", "4"),
        ("gan", "2", "8"),
    ]


@pytest.mark.parametrize("variant", VARIANT_PARAMS)
def test_stage_2_starts_from_stage_1s_best(variant: str, tmp_path: Path) -> None:
    """With the generator's learning rate at 0 stage 2 cannot move it: its last parameters
    are the ones it started from, which must be stage 1's best."""
    run = _train_both_stages(variant, tmp_path, lr_g=0.0)
    assert run.gan_last.keys() == run.pretrain_best.keys()
    for name, tensor in run.pretrain_best.items():
        assert torch.equal(run.gan_last[name], tensor), name


# ------------------------------------------------------------------ retraining the bundled model


@pytest.mark.slow  # trains the full-width bundled generator
def test_retraining_the_bundled_model_needs_no_hint_option(data_root: Path, tmp_path: Path) -> None:
    """The README's retraining command, word for word but tiny: the bundled generator takes
    hints, the run takes that layout from it (one log line), trains, exports, colorizes."""
    from semwatch.model import default_model_path, read_generator_metadata
    from trainer.export import export_command

    bundled = default_model_path()
    assert read_generator_metadata(bundled)[0].in_channels == 4
    run_dir = tmp_path / "retrain"
    runner = CliRunner()
    result = runner.invoke(
        trainer_main,
        [
            "run",
            str(data_root),
            "--out",
            str(run_dir),
            "--init",
            str(bundled),
            "--image-size",
            "32",
            "--batch-size",
            "2",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--pretrain-epochs",
            "1",
            "--gan-epochs",
            "1",
            "--max-steps-per-epoch",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "input layout taken from the init generator" in result.output
    assert load_config_file(run_dir / "config.toml").trainer.hints is True
    for stage in ("pretrain", "gan"):
        assert (
            load_checkpoint(checkpoint_path(run_dir, stage, "last"))["generator_config"]["in_channels"] == 4
        )

    model_file = tmp_path / "retrained.safetensors"
    exported = runner.invoke(
        export_command, [str(checkpoint_path(run_dir, "gan", "best")), "-o", str(model_file)]
    )
    assert exported.exit_code == 0, exported.output
    image = tmp_path / "sem.png"
    Image.fromarray((np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) % 251).astype(np.uint8)).save(image)
    colorized = cli_runs.in_process(
        main,
        [
            "colorize",
            str(image),
            "--output-dir",
            str(tmp_path / "out"),
            "--model",
            str(model_file),
            "--chroma-size",
            "64",
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert colorized.returncode == 0, colorized.stderr
    assert (tmp_path / "out" / "sem.tif").is_file()


def test_no_hints_against_a_hint_taking_init_is_a_one_line_error(data_root: Path, tmp_path: Path) -> None:
    from semwatch.model import default_model_path

    result = CliRunner().invoke(
        trainer_main,
        [
            "run",
            str(data_root),
            "--out",
            str(tmp_path / "r"),
            "--init",
            str(default_model_path()),
            "--no-hints",
        ],
    )
    assert result.exit_code == 1
    assert "takes colour hints" in result.output and "--no-hints" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r" / "pretrain").exists()


def test_without_init_or_option_a_run_trains_without_hints(tmp_path: Path) -> None:
    from trainer.loops import resolve_input_layout

    assert resolve_input_layout(TrainerConfig(), None).hints is False
    assert resolve_input_layout(TrainerConfig(hints=True), None).hints is True
    generator = build_generator(GeneratorConfig(decoder_width=8))
    plain = tmp_path / "plain.safetensors"
    save_generator(plain, generator, generator.config, {"name": "plain"})
    assert resolve_input_layout(TrainerConfig(), plain).hints is False
    assert resolve_input_layout(TrainerConfig(hints=True), plain).hints is True  # widened later


def test_trainer_options_are_generated_from_the_config_fields() -> None:
    """Each [trainer] key with an option takes its type, help and shown default from the
    field, and an option given lands on that key (--lr only where --lr-g/--lr-d are not)."""
    from trainer.cli import _overrides, run_command

    params = {p.name: p for p in run_command.params}
    fields = {f.name: f for f in dataclasses.fields(TrainerConfig)}
    generated = [name for name in fields if name in params]
    assert {"batch_size", "image_size", "crop_min", "hints", "lambda_l1", "pretrained_encoder"} <= set(
        generated
    )
    for name in generated:
        option = params[name]
        assert option.opts == ["--" + name.replace("_", "-")] and option.default is None
        assert fields[name].metadata["help"] in option.help
        if fields[name].default is not None:
            assert f"Default: [trainer] {name} ({fields[name].default})." in option.help
    assert params["config_path"].opts == ["--config"]
    given = {"batch_size": 3, "hints": False, "lr": 1e-3, "lr_d": 5e-4, "epochs": 2, "gan_epochs": 9}
    assert _overrides(given, ["pretrain_epochs", "gan_epochs"]) == {
        "batch_size": 3,
        "hints": False,
        "pretrain_epochs": 2,
        "gan_epochs": 2,
        "pretrain_lr": 1e-3,
        "lr_g": 1e-3,
        "lr_d": 5e-4,
    }
