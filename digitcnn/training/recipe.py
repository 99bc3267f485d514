"""A fold's training recipe: its settings (:class:`Recipe`), and the optimizer, learning-rate
schedule and early stopping made from them, fresh for every fold.

:class:`Recipe` is what the training loop needs to know, and nothing more: a library user
builds one directly (``Recipe(epochs=5, lr=3e-3)``); :class:`digitcnn.config.RunConfig`
extends it with the data, fold and output settings of a whole run. Every setting's limits are
declared here, beside it (:func:`digitcnn.settings.setting`).

This module's top imports no torch, so that building a config stays light: the functions
import it where they use it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from digitcnn.settings import SettingError, check_settings, setting
from digitcnn.training.augment import PRESETS, Augmentation, augmentation_from_preset
from digitcnn.training.callbacks import Callback, EpochEnd

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "Recipe",
    "OPTIMIZERS",
    "SCHEDULERS",
    "MONITORS",
    "AUGMENTATIONS",
    "make_optimizer",
    "recipe_optimizer",
    "make_scheduler",
    "FoldSchedule",
    "EarlyStopping",
]

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULERS = ("step", "plateau", "onecycle", "cosine", "none")
MONITORS = ("val_accuracy", "val_loss")
AUGMENTATIONS = tuple(PRESETS)

_train = partial(setting, "train")


@dataclass(frozen=True)
class Recipe:
    """How one model is trained: epochs, batches, optimizer, schedule, loss, augmentation and
    early stopping. Defaults are pipeline S5's recipe (Adam 1e-3, StepLR gamma 0.7, 10 epochs
    of batches of 64). Invalid values raise :class:`~digitcnn.errors.SettingError`."""

    epochs: int = _train(10, "epochs per fold (the most, with early stopping)", low=1)
    batch_size: int = _train(64, "training batch size", low=1)
    test_batch_size: int = _train(1000, "evaluation batch size", low=1)
    optimizer: str = _train("adam", "optimizer", OPTIMIZERS)
    lr: float = _train(1e-3, "learning rate (OneCycle: the peak rate)", low=0, low_open=True)
    momentum: float = _train(0.0, "momentum of SGD and RMSprop", low=0)
    nesterov: bool = _train(False, "Nesterov momentum (SGD)")
    weight_decay: float | None = _train(
        None, "weight decay (default: the optimizer's own; AdamW 0.01, others 0)", low=0
    )
    scheduler: str = _train(
        "step",
        "learning-rate schedule: StepLR, ReduceLROnPlateau, OneCycleLR (per batch), cosine "
        "annealing, or none",
        SCHEDULERS,
    )
    gamma: float = _train(0.7, "StepLR decay factor", low=0, high=1, low_open=True)
    step_size: int = _train(1, "StepLR period in epochs", low=1)
    plateau_monitor: str = _train("val_accuracy", "metric ReduceLROnPlateau watches", MONITORS)
    plateau_patience: int = _train(3, "ReduceLROnPlateau patience in epochs", low=0)
    plateau_factor: float = _train(
        0.5, "ReduceLROnPlateau factor", low=0, high=1, low_open=True, high_open=True
    )
    min_lr: float = _train(1e-5, "ReduceLROnPlateau's lowest learning rate", low=0)
    label_smoothing: float = _train(
        0.0, "label smoothing of the training loss", low=0, high=1, high_open=True
    )
    augment: str = _train(
        "none",
        "training augmentation preset: s1 is S1's settings (with its horizontal flip), digits "
        "the same without flips",
        AUGMENTATIONS,
    )
    rotation: float | None = _train(None, "override the preset's maximum rotation (degrees)")
    zoom: float | None = _train(None, "override the preset's zoom range")
    shift_x: float | None = _train(None, "override the preset's width shift (fraction)")
    shift_y: float | None = _train(None, "override the preset's height shift (fraction)")
    hflip: bool | None = _train(None, "override the preset's horizontal flip")
    vflip: bool | None = _train(None, "override the preset's vertical flip")
    early_stopping: bool = _train(False, "stop a fold when the monitored metric stops improving")
    monitor: str = _train(
        "val_accuracy", "metric for early stopping and the best checkpoint", MONITORS
    )
    min_delta: float = _train(0.0, "smallest change of the monitored metric that counts")
    patience: int = _train(4, "epochs without improvement before early stopping", low=1)
    restore_best: bool = _train(True, "with early stopping, end each fold with its best weights")

    def __post_init__(self) -> None:
        check_settings(self)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise SettingError("nesterov", True, "needs optimizer 'sgd' and a positive momentum")
        self.augmentation()  # validates the augmentation settings

    def augmentation(self) -> Augmentation:
        """The training :class:`~digitcnn.training.augment.Augmentation` these settings describe."""
        return augmentation_from_preset(
            self.augment,
            rotation=self.rotation,
            zoom=self.zoom,
            shift_x=self.shift_x,
            shift_y=self.shift_y,
            hflip=self.hflip,
            vflip=self.vflip,
        )

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` (checked again)."""
        return replace(self, **changes)

    @classmethod
    def of(cls, settings: Any) -> Recipe:
        """The recipe part of ``settings`` (a RunConfig, or any object with these attributes)."""
        if isinstance(settings, cls):  # a RunConfig is a Recipe
            return settings
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


def make_optimizer(
    parameters: Iterable[nn.Parameter],
    optimizer: str = "adam",
    lr: float = 1e-3,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float | None = None,
) -> torch.optim.Optimizer:
    """Adam (S5, the default), AdamW, SGD (``momentum``, ``nesterov``) or RMSprop at rate
    ``lr``; ``weight_decay`` None keeps the optimizer's own default.

    Adam, AdamW and SGD use torch's fused kernels on the CPU and CUDA: one kernel for all
    parameters instead of a handful of ops per tensor, the same update rule, measured faster
    on UCI S5.
    """
    import torch

    parameters = list(parameters)
    # keyword options only where set, so that each optimizer keeps its own defaults
    decay: dict[str, Any] = {} if weight_decay is None else {"weight_decay": weight_decay}
    fused: dict[str, Any] = (
        {"fused": True}
        if parameters
        and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in parameters)
        else {}
    )
    if optimizer == "adam":
        return torch.optim.Adam(parameters, lr=lr, **decay, **fused)
    if optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, **decay, **fused)
    if optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=lr, momentum=momentum, nesterov=nesterov, **decay, **fused
        )
    if optimizer == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, momentum=momentum, **decay)
    raise SettingError(
        "optimizer", optimizer, f"is not valid; choose one of: {', '.join(OPTIMIZERS)}"
    )


def recipe_optimizer(parameters: Iterable[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """:func:`make_optimizer` with ``recipe``'s optimizer settings."""
    return make_optimizer(
        parameters,
        recipe.optimizer,
        recipe.lr,
        recipe.momentum,
        recipe.nesterov,
        recipe.weight_decay,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: Recipe, steps_per_epoch: int
) -> tuple[Any, bool]:
    """The schedule ``config`` names for ``optimizer`` and whether it steps per batch
    (OneCycle) rather than per epoch."""
    import torch

    kind = config.scheduler
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, config.step_size, config.gamma), False
    if kind == "plateau":
        mode: Literal["min", "max"] = "max" if config.plateau_monitor == "val_accuracy" else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=mode,
            factor=config.plateau_factor,
            patience=config.plateau_patience,
            min_lr=config.min_lr,
        ), False
    if kind == "onecycle":
        # OneCycle cycles momentum (Adam's beta1) against the rate; for SGD/RMSprop that
        # would silently add momentum to a run configured without it.
        cycle = config.optimizer in ("adam", "adamw") or config.momentum > 0
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            cycle_momentum=cycle,
        ), True
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs), False
    if kind == "none":
        return None, False
    raise SettingError("scheduler", kind, f"is not valid; choose one of: {', '.join(SCHEDULERS)}")


class FoldSchedule:
    """One fold's learning-rate schedule, driving a one-parameter optimizer of the run's kind.

    The optimizer that trains the folds steps at the rate (and, for OneCycle, momentum) that
    these schedules give, so every fold follows its own schedule (its own plateaus) whether it
    trains alone or beside other folds.
    """

    def __init__(self, config: Recipe, steps_per_epoch: int) -> None:
        import torch

        self.parameter = torch.nn.Parameter(torch.zeros(1))
        self.optimizer = recipe_optimizer([self.parameter], config)
        self.scheduler, self.per_batch = make_scheduler(self.optimizer, config, steps_per_epoch)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def momentum_settings(self) -> dict:
        group = self.optimizer.param_groups[0]
        return {key: group[key] for key in ("betas", "momentum") if key in group}

    def batch_step(self) -> None:
        if self.per_batch:
            self.optimizer.step()  # keeps torch's "optimizer.step() before scheduler" order
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """Where the schedule is (its optimizer's rate and its scheduler's counters)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s values (a resumed fold)."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def epoch_step(self, metric: float) -> None:
        if self.scheduler is None or self.per_batch:
            return
        import torch

        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(metric)
        else:
            self.optimizer.step()
            self.scheduler.step()


class EarlyStopping(Callback):
    """Keras-style early stopping on ``val_accuracy`` (higher is better) or ``val_loss``.

    An epoch improves when it beats the best value so far by more than ``min_delta``; after
    ``patience`` epochs without improvement, :attr:`should_stop` turns true. The best weights
    are kept (on the model's device) so that they can be restored. As a callback of one fold
    it follows that fold's epochs and, when ``stops`` (the recipe's ``early_stopping``), asks
    the fold to stop; otherwise it only records the best epoch.
    """

    def __init__(
        self,
        monitor: str = "val_accuracy",
        min_delta: float = 0.0,
        patience: int = 4,
        stops: bool = True,
    ) -> None:
        self.monitor, self.min_delta, self.patience = monitor, abs(min_delta), patience
        self.stops = stops
        self.sign = 1.0 if monitor == "val_accuracy" else -1.0
        self.best_value = -math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.waited = 0

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` epochs have passed without an improvement."""
        return self.waited >= self.patience

    def update(self, epoch: int, value: float, model: Any) -> bool:
        """Record ``value`` for ``epoch``; True when it is the new best."""
        if self.sign * value > self.best_value + self.min_delta or self.best_epoch < 0:
            self.best_value, self.best_epoch, self.waited = self.sign * value, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
            return True
        self.waited += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        """The best value and epoch, the epochs waited and the best weights."""
        return {
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "waited": self.waited,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s values (a resumed fold)."""
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.waited, self.best_state = state["waited"], state["best_state"]

    def on_epoch_end(self, event: EpochEnd) -> None:
        state = event.state
        if state is None:
            raise ValueError("EarlyStopping keeps the best weights: it runs beside the model")
        self.update(event.epoch, event.metrics[self.monitor], _StateHolder(state))
        if self.stops and self.should_stop:
            event.stop()


class _StateHolder:
    """What :meth:`EarlyStopping.update` copies: a state dict read on demand."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.state_dict = state
