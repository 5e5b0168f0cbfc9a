"""The training loop of both stages, and the pipeline that chains them.

Stage 1 (``pretrain``) trains the generator alone with L1; stage 2 (``gan``) is the pix2pix
fine-tune. What differs between them (losses, optimizers, schedule, the metric that picks
``best``, early stopping) is the stage's policy in ``trainer/stages.py``, chosen once when
the StageSpec is made; this module asks the policy and never compares stage names.

Both stages: one checkpoint per epoch (``last``, and ``best`` when it improves; atomic), a
metrics.csv row, a sample grid, one log line; ``resume`` continues after the last
completed epoch with model, optimizer, AMP-scaler and RNG state restored. Each epoch's data
order and augmentation depend only on (seed, epoch), so a resumed run takes exactly the
steps an uninterrupted one would have taken. An interrupted epoch is redone from its start.
The learning rate is a pure function of (epoch, stage epochs): raising the epoch count on
resume stretches the remaining schedule.

Under torchrun every rank trains on its shard (DistributedSampler) and validates its share
of the validation set (sums are all-reduced); rank 0 writes every file. The run directory
must be visible to all ranks (one node, or a shared filesystem): resuming ranks read it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from semwatch.color import target_to_ab
from semwatch.config import TrainerConfig
from semwatch.errors import one_line
from semwatch.hardware import cpu_has_native_bf16
from semwatch.log import get_logger
from semwatch.model import GeneratorConfig, UNetGenerator, add_palette_input, build_generator, widen_input
from semwatch.palette import PALETTE_COLOURS
from trainer.checkpoint import (
    CheckpointError,
    checkpoint_path,
    load_any_generator,
    load_checkpoint,
    read_any_generator_config,
    restore_rng_state,
    save_checkpoint,
    training_checkpoint,
)
from trainer.data import (
    ColorDataset,
    DataSummary,
    build_datasets,
    iter_batches,
    make_loader,
    shard_indices,
    truth_ab_counts,
)
from trainer.discriminator import build_patchgan
from trainer.distributed import DistEnv, all_reduce_sum, barrier, broadcast_flag, unwrap, wrap_model
from trainer.hints import HintSimulation, PaletteSimulation
from trainer.losses import AB_UNITS, Rebalance
from trainer.metrics import ab_histogram, histogram_intersection
from trainer.rundir import METRICS_NAME, Board, MetricsLog, sample_grid, save_sample_grid
from trainer.stages import GAN, PRETRAIN, Stage, StagePolicy, TrainState, policy_for

log = get_logger(__name__)


class TrainingError(RuntimeError):
    """A stage that cannot start (nothing to resume, a run dir in use, ...); one-line message."""


@dataclass(frozen=True)
class StageSpec:
    stage: Stage
    data: Path
    run_dir: Path
    config: TrainerConfig
    val_dir: Path | None = None
    init: Path | None = None  # generator to start from; ignored when resuming
    resume: bool = False
    tensorboard: bool = False
    # Chosen once from ``stage`` (an unknown name fails here, with the known ones).
    policy: StagePolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", policy_for(self.stage))


@dataclass(frozen=True)
class StepRecord:
    """Handed to ``on_step`` after every optimizer step (tests, progress hooks)."""

    stage: Stage
    epoch: int  # 0-based index of the running epoch
    step: int  # optimizer steps done, this one included
    losses: dict[str, float]


@dataclass(frozen=True)
class StageResult:
    stage: Stage
    epochs: int  # completed
    step: int
    best_metric: float
    finished: bool
    early_stopped: bool
    last: Path
    best: Path
    metrics: dict[str, float]


StepCallback = Callable[[StepRecord], None]


# ------------------------------------------------------------------ where a stage stands


def stage_status(
    run_dir: Path, policy: StagePolicy, config: TrainerConfig
) -> Literal["absent", "partial", "finished"]:
    """Where a stage stands in ``run_dir`` under ``config`` (epochs and patience may have changed)."""
    path = checkpoint_path(run_dir, policy.name, "last")
    if not path.exists():
        return "absent"
    state = load_checkpoint(path)
    finished = policy.is_finished(state["epoch"], state.get("bad_epochs", 0), config)
    return "finished" if finished else "partial"


# ------------------------------------------------------------------ building the state


def _amp_enabled(config: TrainerConfig, env: DistEnv) -> bool:
    """float16 autocast with gradient scaling: CUDA only."""
    return config.amp and env.device.type == "cuda"


def _cpu_bf16(config: TrainerConfig, env: DistEnv) -> bool:
    """bfloat16 autocast on a CPU that computes it natively (about 2x a float32 step on
    AVX-512 BF16); bf16 keeps float32's range, so it needs no gradient scaling."""
    return config.amp and env.device.type == "cpu" and cpu_has_native_bf16()


def _autocast(config: TrainerConfig, env: DistEnv) -> contextlib.AbstractContextManager:
    if _amp_enabled(config, env):
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    if _cpu_bf16(config, env):
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fresh_generator(spec: StageSpec) -> tuple[UNetGenerator, GeneratorConfig]:
    config = spec.config
    if spec.init is not None:
        if config.pretrained_encoder is not None:
            log.warning(
                "pretrained encoder ignored", reason="the generator comes from --init", init=str(spec.init)
            )
        try:
            model, gen_config, info = load_any_generator(spec.init)
        except CheckpointError as exc:
            raise TrainingError(str(exc)) from exc
        if gen_config.decoder_width != config.decoder_width:
            log.warning(
                "decoder width taken from the init model",
                init=str(spec.init),
                model=gen_config.decoder_width,
                configured=config.decoder_width,
            )
        log.info("generator initialised", init=str(spec.init), source=info["source"], stage=info["stage"])
        wanted = _in_channels(config)
        if gen_config.in_channels > wanted:
            raise TrainingError(
                f"{spec.init}: this generator takes colour hints, but this run trains one without"
            )
        if gen_config.in_channels != wanted:
            model = widen_input(model, wanted)
            gen_config = model.config
            log.info("generator input widened for hints", init=str(spec.init), in_channels=wanted)
        if gen_config.palette_colours and not config.palette:
            raise TrainingError(
                f"{spec.init}: this generator takes a palette, but this run trains one without"
            )
        if config.palette and not gen_config.palette_colours:
            model = add_palette_input(model)
            gen_config = model.config
            log.info("palette input added", init=str(spec.init), colours=gen_config.palette_colours)
        return model.train(), gen_config
    gen_config = GeneratorConfig(
        decoder_width=config.decoder_width,
        in_channels=_in_channels(config),
        palette_colours=PALETTE_COLOURS if config.palette else 0,
    )
    if spec.policy.expects_trained_generator:
        log.warning(
            "starting from a random generator", stage=spec.stage, reason="no --init and no earlier stage"
        )
    return build_generator(gen_config, pretrained_encoder=config.pretrained_encoder), gen_config


def _in_channels(config: TrainerConfig) -> int:
    return 4 if config.hints else 1


def resolve_input_layout(config: TrainerConfig, init: Path | None) -> TrainerConfig:
    """``config`` with ``hints`` decided: the ``--init`` generator's input layout unless the
    configuration says otherwise (unset, a retrain simply keeps what the model takes).

    Asking for no hints from a generator that takes them is refused (it would throw its
    hint weights away); asking for hints from one without widens its input.
    """
    if init is None:
        return dataclasses.replace(
            config,
            hints=bool(config.hints),
            palette=bool(config.palette),
        )
    init_config = read_any_generator_config(init)
    takes_hints = init_config.in_channels > 1
    takes_palette = init_config.palette_colours > 0
    if config.palette is None:
        config = dataclasses.replace(config, palette=takes_palette)
    elif takes_palette and not config.palette:
        raise TrainingError(
            f"{init}: this generator takes a palette, but trainer.palette = false asks for one "
            "without; leave it unset to keep the model's palette input"
        )
    if config.hints is None:
        log.info(
            "input layout taken from the init generator",
            init=str(init),
            hints=takes_hints,
            in_channels=4 if takes_hints else 1,
        )
        return dataclasses.replace(config, hints=takes_hints)
    if takes_hints and not config.hints:
        raise TrainingError(
            f"{init}: this generator takes colour hints, but --no-hints (or trainer.hints = false) "
            "asks for one without; leave the option out to keep the model's hint input"
        )
    return config


def _new_state(
    spec: StageSpec,
    env: DistEnv,
    generator: nn.Module,
    gen_config: GeneratorConfig,
    discriminator: nn.Module | None,
) -> TrainState:
    config, policy = spec.config, spec.policy
    if config.palette_only:
        _freeze_all_but_palette(generator)
    elif config.freeze_encoder:
        _freeze(generator, lambda name: not _is_encoder(name))
    generator = wrap_model(env, generator.train())
    amp = _amp_enabled(config, env)
    # Adam runs fused (one kernel over all parameters): on CPU the default per-tensor loop
    # spends ~0.8 s per step on the 14M-parameter generator, the fused kernel ~10 ms.
    opt_g = torch.optim.Adam(
        _generator_groups(generator, policy.base_lr_g(config)), betas=policy.betas, fused=True
    )
    state = TrainState(
        stage=spec.stage,
        gen_config=gen_config,
        generator=generator,
        opt_g=opt_g,
        scaler_g=torch.amp.GradScaler("cuda", enabled=amp),
        best_metric=policy.initial_best(),
    )
    if discriminator is not None:
        state.discriminator = wrap_model(env, discriminator.train())
        state.opt_d = torch.optim.Adam(
            state.discriminator.parameters(), lr=config.lr_d, betas=policy.betas, fused=True
        )
        state.scaler_d = torch.amp.GradScaler("cuda", enabled=amp)
    return state


# The palette network joins a trained generator with its last layer at zero; at the base
# rate it barely moves within a few epochs (a 3-epoch stage 1 left the palette's effect at
# 1.04x gray), so it learns faster than the weights it steers.
PALETTE_LR_SCALE = 10.0


def _is_palette(name: str) -> bool:
    return ".palette." in f".{name}."


# The generator's encoder: the stem and the four ResNet stages (UNetGenerator).
_ENCODER = ("stem", "layer1", "layer2", "layer3", "layer4")


def _is_encoder(name: str) -> bool:
    return name.split(".", 1)[0] in _ENCODER


def _freeze_all_but_palette(generator: nn.Module) -> None:
    """``palette_only``: only the palette network learns; the body's weights stay the init's."""
    if not any(_is_palette(name) for name, _ in generator.named_parameters()):
        raise TrainingError("palette_only: this generator has no palette network (train with --palette)")
    _freeze(generator, _is_palette)


def _freeze(generator: nn.Module, learns: Callable[[str], bool]) -> None:
    """Only the parameters whose names ``learns`` accepts get gradients; the batch norms of
    the others keep their running statistics too (momentum 0: train-mode batch statistics
    still normalise, but nothing is written back)."""
    for name, parameter in generator.named_parameters():
        parameter.requires_grad_(learns(name))
    for name, module in generator.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not learns(name):
            module.momentum = 0.0


def _generator_groups(generator: nn.Module, lr: float) -> list[dict]:
    """Adam parameter groups of the parameters that learn: the palette network at
    ``PALETTE_LR_SCALE`` times ``lr``."""
    palette, rest = [], []
    for name, parameter in generator.named_parameters():
        if parameter.requires_grad:
            (palette if _is_palette(name) else rest).append(parameter)
    groups = [{"params": rest, "lr": lr, "lr_scale": 1.0}] if rest else []
    if palette:
        groups.append({"params": palette, "lr": lr * PALETTE_LR_SCALE, "lr_scale": PALETTE_LR_SCALE})
    return groups


def _start_fresh(spec: StageSpec, env: DistEnv) -> TrainState:
    last = checkpoint_path(spec.run_dir, spec.stage, "last")
    if last.exists():
        raise TrainingError(
            f"{last}: this run directory already has a {spec.stage} stage; "
            "pass --resume to continue it or choose another --out"
        )
    _seed_everything(spec.config.seed)
    generator, gen_config = _fresh_generator(spec)
    discriminator = _fresh_discriminator(gen_config) if spec.policy.trains_discriminator else None
    return _new_state(spec, env, generator, gen_config, discriminator)


def _fresh_discriminator(gen_config: GeneratorConfig) -> nn.Module:
    return build_patchgan(in_channels=1 + gen_config.out_channels)


def _resume(spec: StageSpec, env: DistEnv) -> TrainState:
    path = checkpoint_path(spec.run_dir, spec.stage, "last")
    if not path.exists():
        raise TrainingError(f"{path}: nothing to resume (no {spec.stage} checkpoint in {spec.run_dir})")
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from exc
    if ckpt["stage"] != spec.stage:
        raise TrainingError(f"{path}: holds stage {ckpt['stage']!r}, expected {spec.stage!r}")
    try:
        gen_config = GeneratorConfig.from_dict(ckpt["generator_config"])
        generator = UNetGenerator(gen_config)
        generator.load_state_dict(ckpt["generator"])
        discriminator = None
        if spec.policy.trains_discriminator:
            discriminator = _fresh_discriminator(gen_config)
            discriminator.load_state_dict(ckpt["discriminator"])
        state = _new_state(spec, env, generator, gen_config, discriminator)
        state.opt_g.load_state_dict(ckpt["opt_g"])
        _load_scaler(state.scaler_g, ckpt.get("scaler_g"))
        if state.opt_d is not None and state.scaler_d is not None:
            state.opt_d.load_state_dict(ckpt["opt_d"])
            _load_scaler(state.scaler_d, ckpt.get("scaler_d"))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise TrainingError(f"{path}: cannot resume from this checkpoint: {one_line(exc)}") from exc
    state.epoch = int(ckpt["epoch"])
    state.step = int(ckpt["step"])
    state.best_metric = float(ckpt["best_metric"])
    state.bad_epochs = int(ckpt.get("bad_epochs", 0))
    state.metrics = dict(ckpt.get("metrics") or {})
    restore_rng_state(ckpt.get("rng") or {})
    log.info("resuming run", stage=spec.stage, checkpoint=str(path), epochs_done=state.epoch, step=state.step)
    return state


def _load_scaler(scaler: torch.amp.GradScaler, saved: dict[str, Any] | None) -> None:
    # A CPU run saves the empty state of a disabled scaler; resumed on CUDA, the scaler
    # starts afresh (its scale adapts within a few steps).
    if saved and scaler.is_enabled():
        scaler.load_state_dict(saved)


# ------------------------------------------------------------------ epochs


def _set_learning_rates(spec: StageSpec, state: TrainState, epoch: int) -> tuple[float, float | None]:
    config, policy = spec.config, spec.policy
    factor = policy.lr_factor(epoch, policy.epochs(config))
    lr_g = policy.base_lr_g(config) * factor
    for group in state.opt_g.param_groups:
        group["lr"] = lr_g * group.get("lr_scale", 1.0)
    lr_d = None
    if state.opt_d is not None:
        lr_d = config.lr_d * factor
        for group in state.opt_d.param_groups:
            group["lr"] = lr_d
    return lr_g, lr_d


def _batches(loader: torch.utils.data.DataLoader, limit: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for index, batch in enumerate(loader):
        if limit and index >= limit:
            return
        yield batch


def _train_epoch(
    spec: StageSpec,
    state: TrainState,
    loader: torch.utils.data.DataLoader,
    env: DistEnv,
    epoch: int,
    on_step: StepCallback | None,
) -> tuple[dict[str, float], int, float]:
    """Mean losses over the epoch (this rank), images seen (all ranks), seconds in steps."""
    config = spec.config
    limit = config.max_steps_per_epoch
    total = min(len(loader), limit) if limit else len(loader)
    autocast = functools.partial(_autocast, config, env)
    sums: dict[str, float] = {}
    steps = images = 0
    started = time.monotonic()
    bar = tqdm(
        _batches(loader, limit),
        total=total,
        unit="batch",
        leave=False,
        dynamic_ncols=True,
        desc=f"{spec.stage} {epoch + 1}/{spec.policy.epochs(config)}",
        disable=not (env.is_main and sys.stderr.isatty()),
    )
    non_blocking = env.device.type == "cuda"
    for l_in, ab in bar:
        l_in = l_in.to(env.device, non_blocking=non_blocking)
        ab = ab.to(env.device, non_blocking=non_blocking)
        losses = spec.policy.step(state, l_in, ab, config, autocast)
        state.step += 1
        steps += 1
        images += l_in.shape[0]
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + value
        if not all(math.isfinite(v) for v in losses.values()):
            raise TrainingError(
                f"{spec.stage}: non-finite loss at step {state.step} ({losses}); "
                "lower the learning rate or check the data"
            )
        bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
        if on_step is not None:
            on_step(StepRecord(spec.stage, epoch, state.step, losses))
    bar.close()
    seconds = time.monotonic() - started
    images_all = int(
        all_reduce_sum(env, torch.tensor([images], dtype=torch.float64, device=_reduce_device(env)))[0]
    )
    return {k: v / max(steps, 1) for k, v in sums.items()}, images_all, seconds


def _reduce_device(env: DistEnv) -> torch.device:
    return env.device if env.backend == "nccl" else torch.device("cpu")


@torch.no_grad()
def validate(
    generator: nn.Module, val_ds: ColorDataset, env: DistEnv, config: TrainerConfig
) -> dict[str, float]:
    """Validation L1 (Lab units) and pooled ab-histogram intersection, over all ranks' shares."""
    model = unwrap(generator)
    was_training = model.training
    model.eval()
    abs_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    count = torch.zeros((), dtype=torch.float64, device=env.device)
    hist_pred: torch.Tensor | None = None
    hist_true: torch.Tensor | None = None
    for batch in iter_batches(shard_indices(len(val_ds), env.rank, env.world_size), config.batch_size):
        items = [val_ds[i] for i in batch]
        l_in = torch.stack([x[0] for x in items]).to(env.device)
        ab = torch.stack([x[1] for x in items]).to(env.device)
        with _autocast(config, env):
            pred = model(l_in)
        pred = pred.float()
        abs_sum += (pred - ab).abs().sum(dtype=torch.float64) * AB_UNITS
        count += pred.numel()
        hp, ht = ab_histogram(target_to_ab(pred)), ab_histogram(target_to_ab(ab))
        hist_pred = hp if hist_pred is None else hist_pred + hp
        hist_true = ht if hist_true is None else hist_true + ht
    if hist_pred is None or hist_true is None:  # this rank's share is empty (tiny val set)
        empty = ab_histogram(torch.zeros(1, 2, 1, 1, device=env.device))
        hist_pred, hist_true = empty.clone(), empty.clone()
    packed = torch.cat([abs_sum.view(1), count.view(1), hist_pred.flatten(), hist_true.flatten()])
    packed = all_reduce_sum(env, packed.to(_reduce_device(env))).to(env.device)
    n = hist_pred.numel()
    shape = hist_pred.shape
    model.train(was_training)
    return {
        "val_l1": float(packed[0] / packed[1].clamp(min=1)),
        "val_hist_intersection": histogram_intersection(
            packed[2 : 2 + n].view(shape), packed[2 + n :].view(shape)
        ),
    }


@torch.no_grad()
def _samples(
    generator: nn.Module, val_ds: ColorDataset, config: TrainerConfig, env: DistEnv
) -> np.ndarray | None:
    count = min(config.sample_images, len(val_ds))
    if count == 0:
        return None
    model = unwrap(generator)
    was_training = model.training
    model.eval()
    items = [val_ds[i] for i in range(count)]
    l_in = torch.stack([x[0] for x in items]).to(env.device)
    ab = torch.stack([x[1] for x in items])
    with _autocast(config, env):
        pred = model(l_in).float()
    model.train(was_training)
    return sample_grid(l_in, pred, ab)


def _record_epoch(
    spec: StageSpec,
    state: TrainState,
    summary: DataSummary,
    row: dict[str, Any],
    grid: np.ndarray | None,
    board: Board,
    improved: bool,
    early_stopped: bool,
) -> None:
    """Rank 0: metrics row, sample grid, TensorBoard, checkpoints (best before last), log line."""
    MetricsLog(spec.run_dir / METRICS_NAME).append(row)
    if grid is not None:
        save_sample_grid(spec.run_dir, spec.stage, state.epoch, grid)
        board.image(spec.stage, grid, state.step)
    board.scalars(spec.stage, {k: v for k, v in row.items() if isinstance(v, float)}, state.step)
    checkpoint = training_checkpoint(spec.policy, state, spec.config, summary, early_stopped)
    if improved:
        save_checkpoint(checkpoint_path(spec.run_dir, spec.stage, "best"), checkpoint)
    save_checkpoint(checkpoint_path(spec.run_dir, spec.stage, "last"), checkpoint)
    fields = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items() if v is not None}
    log.info("epoch done", best=improved, **fields)


# ------------------------------------------------------------------ a whole stage


Datasets = tuple[ColorDataset, ColorDataset, DataSummary]


def load_datasets(data: Path, config: TrainerConfig, val_dir: Path | None = None) -> Datasets:
    """Scan and cache the training images once (both stages of a run share the result)."""
    hints = HintSimulation(config.hint_none_share, config.hint_mean_points) if config.hints else None
    palette = PaletteSimulation(config.palette_share) if config.palette else None
    datasets = build_datasets(
        data,
        image_size=config.image_size,
        val_fraction=config.val_fraction,
        val_dir=val_dir,
        seed=config.seed,
        crop_min=config.crop_min,
        cache=config.cache_images,
        threads=max(1, min(4, config.workers or 1)),
        hints=hints,
        palette=palette,
    )
    log.info("training data", **datasets[2].as_dict())
    return datasets


def train_stage(
    spec: StageSpec, env: DistEnv, *, on_step: StepCallback | None = None, datasets: Datasets | None = None
) -> StageResult:
    """Run (or resume) one stage to its end; returns where it stopped."""
    config, policy = spec.config, spec.policy
    total_epochs = policy.epochs(config)
    train_ds, val_ds, summary = datasets or load_datasets(spec.data, config, spec.val_dir)
    state = _resume(spec, env) if spec.resume else _start_fresh(spec, env)
    state.rebalance = _rebalance(config, train_ds)
    loader, sampler = make_loader(
        train_ds,
        batch_size=config.batch_size,
        workers=config.workers,
        seed=config.seed,
        shuffle=True,
        rank=env.rank,
        world_size=env.world_size,
        pin_memory=env.device.type == "cuda",
    )
    if env.is_main:
        MetricsLog(spec.run_dir / METRICS_NAME).truncate_after(
            spec.stage, state.epoch, later_stages=policy.later_stages
        )
    board = Board(spec.run_dir, spec.tensorboard and env.is_main)
    early_stopped = policy.stops_early(state.bad_epochs, config)
    try:
        while state.epoch < total_epochs and not early_stopped:
            early_stopped = _run_epoch(
                spec, state, env, train_ds, val_ds, summary, loader, sampler, board, on_step
            )
    finally:
        board.close()
    if early_stopped and env.is_main:
        log.info(
            "stopped early",
            stage=spec.stage,
            epochs=state.epoch,
            patience=config.patience,
            best=state.best_metric,
        )
    return StageResult(
        stage=spec.stage,
        epochs=state.epoch,
        step=state.step,
        best_metric=state.best_metric,
        finished=policy.is_finished(state.epoch, state.bad_epochs, config),
        early_stopped=early_stopped,
        last=checkpoint_path(spec.run_dir, spec.stage, "last"),
        best=checkpoint_path(spec.run_dir, spec.stage, "best"),
        metrics=dict(state.metrics),
    )


def _rebalance(config: TrainerConfig, train_ds: ColorDataset) -> Rebalance | None:
    """The rebalanced-L1 weights, measured on the training split (cheap: every 4th pixel)."""
    if not config.rebalance:
        return None
    rebalance = Rebalance.from_counts(truth_ab_counts(train_ds), config.rebalance)
    log.info(
        "L1 rebalanced by colour rarity", strength=config.rebalance, weight_spread=round(rebalance.spread, 1)
    )
    return rebalance


def _run_epoch(
    spec: StageSpec,
    state: TrainState,
    env: DistEnv,
    train_ds: ColorDataset,
    val_ds: ColorDataset,
    summary: DataSummary,
    loader: torch.utils.data.DataLoader,
    sampler: Any,
    board: Board,
    on_step: StepCallback | None,
) -> bool:
    """One epoch, its validation and its records; returns whether early stopping fired."""
    config, policy = spec.config, spec.policy
    epoch = state.epoch
    started = time.monotonic()
    lr_g, lr_d = _set_learning_rates(spec, state, epoch)
    train_ds.set_epoch(epoch)
    sampler.set_epoch(epoch)
    loader.generator.manual_seed(config.seed * 100_003 + epoch)  # worker seeds per epoch
    losses, images, step_seconds = _train_epoch(spec, state, loader, env, epoch, on_step)
    val = validate(state.generator, val_ds, env, config)
    state.epoch += 1
    state.metrics = dict(val)
    metric = val[policy.best_metric]
    improved = policy.improves(metric, state.best_metric)
    if improved:
        state.best_metric = metric
        state.bad_epochs = 0
    else:
        state.bad_epochs += 1
    early = policy.stops_early(state.bad_epochs, config)
    early = broadcast_flag(env, early)
    if env.is_main:
        row = {
            "stage": spec.stage,
            "epoch": state.epoch,
            "step": state.step,
            "lr_g": lr_g,
            "lr_d": lr_d,
            "train_l1": losses.get("train_l1"),
            "train_g_gan": losses.get("train_g_gan"),
            "train_d": losses.get("train_d"),
            **val,
            "seconds": time.monotonic() - started,
            "images_per_s": images / step_seconds if step_seconds > 0 else None,
        }
        grid = _samples(state.generator, val_ds, config, env)
        _record_epoch(spec, state, summary, row, grid, board, improved, early)
    barrier(env)
    return early


# ------------------------------------------------------------------ both stages


def run_pipeline(
    data: Path,
    run_dir: Path,
    config: TrainerConfig,
    env: DistEnv,
    *,
    val_dir: Path | None = None,
    init: Path | None = None,
    tensorboard: bool = False,
    on_step: StepCallback | None = None,
) -> list[StageResult]:
    """Stage 1 then stage 2, continuing whatever ``run_dir`` already holds.

    - gan checkpoint present: resume stage 2 (returns at once when it is finished);
    - else stage 1 unfinished: resume it (or start it, from ``init`` when given: fine-tuning
      an existing generator on new images), then stage 2 from stage 1's ``best``;
    - ``pretrain_epochs = 0``: stage 2 starts from ``init`` (or from scratch).
    """

    def spec(stage: Stage, resume: bool, stage_init: Path | None) -> StageSpec:
        return StageSpec(
            stage=stage,
            data=data,
            run_dir=run_dir,
            config=config,
            val_dir=val_dir,
            init=stage_init,
            resume=resume,
            tensorboard=tensorboard,
        )

    results: list[StageResult] = []
    try:
        gan = stage_status(run_dir, GAN, config)
        pre = stage_status(run_dir, PRETRAIN, config) if gan == "absent" else "finished"
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from exc
    if gan == "finished":
        log.info("both stages already finished", run_dir=str(run_dir))
        return results
    datasets = load_datasets(data, config, val_dir)
    if gan != "absent":
        results.append(train_stage(spec(GAN.name, True, None), env, on_step=on_step, datasets=datasets))
        return results
    if PRETRAIN.epochs(config) > 0 and pre != "finished":
        pre_spec = spec(PRETRAIN.name, pre == "partial", init)
        results.append(train_stage(pre_spec, env, on_step=on_step, datasets=datasets))
    best = checkpoint_path(run_dir, PRETRAIN.name, "best")
    gan_init = best if best.exists() else init
    results.append(train_stage(spec(GAN.name, False, gan_init), env, on_step=on_step, datasets=datasets))
    return results
