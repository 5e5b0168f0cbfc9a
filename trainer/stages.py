"""The two training stages as policy objects: everything that differs between them.

The loops (``trainer/loops.py``) are one code path for both stages; wherever the stages
differ they ask the stage's policy, chosen once from the stage's name by :func:`policy_for`:
its optimizer step (which losses, whether a discriminator trains), Adam's betas and base
learning rate, the learning-rate schedule, which validation metric picks ``best``, and
whether early stopping applies. Adding a stage means adding a policy here, not another
``if stage == ...`` in the loops.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import torch
from torch import nn

from semwatch.config import TrainerConfig
from semwatch.model import GeneratorConfig
from trainer.distributed import unwrap
from trainer.losses import AB_UNITS, Rebalance, discriminator_loss, gan_loss, l1_ab

Stage = Literal["pretrain", "gan"]
Autocast = Callable[[], contextlib.AbstractContextManager]
COSINE_FLOOR = 0.01


@dataclass
class TrainState:
    """Everything a stage mutates while it runs (and what its checkpoints hold)."""

    stage: Stage
    gen_config: GeneratorConfig
    generator: nn.Module  # DDP-wrapped under torchrun
    opt_g: torch.optim.Optimizer
    scaler_g: torch.amp.GradScaler
    discriminator: nn.Module | None = None
    opt_d: torch.optim.Optimizer | None = None
    scaler_d: torch.amp.GradScaler | None = None
    epoch: int = 0  # completed epochs
    step: int = 0
    best_metric: float = math.inf
    bad_epochs: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    # Class-rebalanced L1 weights (trainer.losses.Rebalance), measured on the training split.
    rebalance: Rebalance | None = None

    def loss_weights(self, target: torch.Tensor) -> torch.Tensor | None:
        return self.rebalance.weights(target) if self.rebalance is not None else None


@dataclass(frozen=True)
class StagePolicy(ABC):
    """What one stage does differently; the loops hold no stage names."""

    name: Stage
    betas: tuple[float, float]  # Adam's, for every optimizer of the stage
    best_metric: str  # the validation metric that picks ``best``
    higher_is_better: bool
    early_stopping: bool  # whether ``patience`` applies
    schedule: str  # the learning-rate schedule's name, recorded in checkpoints
    trains_discriminator: bool
    # A stage meant to refine a trained generator warns when it has to start from random weights.
    expects_trained_generator: bool
    later_stages: tuple[Stage, ...]  # stages whose metrics.csv rows a restart of this one voids

    @abstractmethod
    def epochs(self, config: TrainerConfig) -> int:
        """The stage's epoch count under ``config``."""

    @abstractmethod
    def base_lr_g(self, config: TrainerConfig) -> float:
        """The generator's learning rate before the schedule's factor."""

    @abstractmethod
    def lr_factor(self, epoch: int, total_epochs: int) -> float:
        """Multiplier of the base learning rates during 0-based ``epoch`` of ``total_epochs``."""

    @abstractmethod
    def step(
        self,
        state: TrainState,
        l_in: torch.Tensor,
        ab: torch.Tensor,
        config: TrainerConfig,
        autocast: Autocast,
    ) -> dict[str, float]:
        """One optimizer step on a batch; returns its losses (``train_l1`` in Lab units)."""

    def initial_best(self) -> float:
        return -math.inf if self.higher_is_better else math.inf

    def improves(self, value: float, best: float) -> bool:
        if math.isnan(value):
            return False
        return value > best if self.higher_is_better else value < best

    def stops_early(self, bad_epochs: int, config: TrainerConfig) -> bool:
        """The early-stopping rule: ``patience`` epochs without a better ``best`` (0 = never)."""
        return self.early_stopping and config.patience > 0 and bad_epochs >= config.patience

    def is_finished(self, epoch: int, bad_epochs: int, config: TrainerConfig) -> bool:
        """Nothing left to do after ``epoch`` completed epochs (``config`` may have changed)."""
        return epoch >= self.epochs(config) or self.stops_early(bad_epochs, config)


@dataclass(frozen=True)
class PretrainPolicy(StagePolicy):
    """Stage 1: the generator alone, L1 on ab (the network's ab/110 units; reported in Lab
    units), Adam (0.9, 0.999). Learning rate: cosine from ``pretrain_lr`` down to 1 % of it
    over ``pretrain_epochs``. Early stopping after ``patience`` epochs without a lower
    validation L1 (0 disables it). ``best`` = lowest validation L1."""

    name: Stage = "pretrain"
    betas: tuple[float, float] = (0.9, 0.999)
    best_metric: str = "val_l1"
    higher_is_better: bool = False
    early_stopping: bool = True
    schedule: str = "cosine"
    trains_discriminator: bool = False
    expects_trained_generator: bool = False
    later_stages: tuple[Stage, ...] = ("gan",)

    def epochs(self, config: TrainerConfig) -> int:
        return config.pretrain_epochs

    def base_lr_g(self, config: TrainerConfig) -> float:
        return config.pretrain_lr

    def lr_factor(self, epoch: int, total_epochs: int) -> float:
        """Cosine from 1 down to ``COSINE_FLOOR`` over the stage."""
        if total_epochs <= 1:
            return 1.0
        t = min(epoch, total_epochs - 1) / (total_epochs - 1)
        return COSINE_FLOOR + (1.0 - COSINE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t))

    def step(
        self,
        state: TrainState,
        l_in: torch.Tensor,
        ab: torch.Tensor,
        config: TrainerConfig,
        autocast: Autocast,
    ) -> dict[str, float]:
        state.opt_g.zero_grad(set_to_none=True)
        with autocast():
            pred = state.generator(l_in)
        loss = l1_ab(pred, ab, state.loss_weights(ab))
        state.scaler_g.scale(loss).backward()
        state.scaler_g.step(state.opt_g)
        state.scaler_g.update()
        return _l1_report(loss, pred, ab, state)


@dataclass(frozen=True)
class GanPolicy(StagePolicy):
    """Stage 2, pix2pix. The 70x70 PatchGAN sees (L, ab) pairs; D minimises
    0.5 * (loss(D(real), 1) + loss(D(fake), 0)); G minimises loss(D(fake), 1) + lambda_l1 * L1,
    with ``gan_loss`` BCE-with-logits or least squares. Adam (0.5, 0.999) for both with
    ``lr_g`` / ``lr_d``: constant for the first half of ``gan_epochs``, then linearly down
    (pix2pix's schedule). No early stopping: GAN losses do not converge in the usual sense.
    ``best`` = highest validation ab-histogram intersection (realism), not lowest L1, which
    prefers the desaturated "sepia" generator."""

    name: Stage = "gan"
    betas: tuple[float, float] = (0.5, 0.999)
    best_metric: str = "val_hist_intersection"
    higher_is_better: bool = True
    early_stopping: bool = False
    schedule: str = "constant-then-linear"
    trains_discriminator: bool = True
    expects_trained_generator: bool = True
    later_stages: tuple[Stage, ...] = ()

    def epochs(self, config: TrainerConfig) -> int:
        return config.gan_epochs

    def base_lr_g(self, config: TrainerConfig) -> float:
        return config.lr_g

    def lr_factor(self, epoch: int, total_epochs: int) -> float:
        """1 for the first half of the stage, then linearly down towards 0."""
        if total_epochs <= 1:
            return 1.0
        keep = total_epochs - total_epochs // 2
        decay = total_epochs // 2
        return max(0.0, 1.0 - max(0, epoch + 1 - keep) / (decay + 1))

    def step(
        self,
        state: TrainState,
        l_in: torch.Tensor,
        ab: torch.Tensor,
        config: TrainerConfig,
        autocast: Autocast,
    ) -> dict[str, float]:
        assert state.discriminator is not None and state.opt_d is not None and state.scaler_d is not None
        with autocast():
            fake = state.generator(l_in)
        # The discriminator judges (L, ab) pairs: hints are the generator's input, not the image's.
        l_in = l_in[:, :1]
        # Discriminator: real pairs against the generator's current output (no gradient to G).
        _set_requires_grad(state.discriminator, True)
        state.opt_d.zero_grad(set_to_none=True)
        with autocast():
            fake_logits = state.discriminator(torch.cat((l_in, fake.detach()), dim=1))
            real_logits = state.discriminator(torch.cat((l_in, ab), dim=1))
        loss_d = discriminator_loss(real_logits, fake_logits, config.gan_loss)
        state.scaler_d.scale(loss_d).backward()
        state.scaler_d.step(state.opt_d)
        state.scaler_d.update()
        # Generator: fool D and stay near the truth. D is frozen and called unwrapped, so this
        # pass neither computes D's weight gradients nor takes part in DDP's gradient sync.
        plain_d = unwrap(state.discriminator)
        _set_requires_grad(plain_d, False)
        state.opt_g.zero_grad(set_to_none=True)
        with autocast():
            g_logits = plain_d(torch.cat((l_in, fake), dim=1))
        loss_gan = gan_loss(g_logits, True, config.gan_loss)
        loss_l1 = l1_ab(fake, ab, state.loss_weights(ab))
        loss_g = loss_gan + config.lambda_l1 * loss_l1
        state.scaler_g.scale(loss_g).backward()
        state.scaler_g.step(state.opt_g)
        state.scaler_g.update()
        _set_requires_grad(plain_d, True)
        return {
            **_l1_report(loss_l1, fake, ab, state),
            "train_g_gan": float(loss_gan.detach()),
            "train_d": float(loss_d.detach()),
        }


def _l1_report(
    loss: torch.Tensor, pred: torch.Tensor, ab: torch.Tensor, state: TrainState
) -> dict[str, float]:
    """train_l1 stays the plain L1 (comparable across runs); a rebalanced run adds its loss."""
    if state.rebalance is None:
        return {"train_l1": float(loss.detach()) * AB_UNITS}
    plain = float(l1_ab(pred.detach(), ab)) * AB_UNITS
    return {"train_l1": plain, "train_l1_rebalanced": float(loss.detach()) * AB_UNITS}


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


PRETRAIN = PretrainPolicy()
GAN = GanPolicy()
POLICIES: Mapping[str, StagePolicy] = MappingProxyType({p.name: p for p in (PRETRAIN, GAN)})


def policy_for(stage: str) -> StagePolicy:
    """The policy of the stage named ``stage``; ValueError naming the known stages otherwise."""
    try:
        return POLICIES[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r} (expected one of {tuple(POLICIES)})") from None
