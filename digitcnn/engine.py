"""The training engine: one model, device-resident tensors, index-sliced batches.

No DataLoader: a fold's raw uint8 images and labels sit on the device, so a batch is one
index into them, augmented (training only) and scaled on the fly. This removes the
per-sample ``__getitem__`` and collate work of a DataLoader, keeps raw data compact on a GPU,
and keeps the loop free of host syncs (losses are summed on the device and read once per
epoch).
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .augment import Augmentation
from .metrics import confusion_counts

__all__ = ["Evaluation", "EpochRecord", "FoldTensors", "EarlyStopping", "FitOutcome",
           "make_optimizer", "make_scheduler", "smoothed_nll", "autocast", "training_forward",
           "train_epoch", "evaluate", "predict_log_probs", "fit"]


@dataclass
class FoldTensors:
    """One fold's data on the device, with the scaling that turns raw pixels into inputs.

    Attributes:
        train_images, val_images: (N, C, H, W) raw pixels (uint8 or float) on the device.
        train_labels, val_labels: (N,) int64 on the device.
        mean, scale: (C*H*W,) float32 per-pixel scaling on the device: input = (x - mean) / scale.
        memory_format: the layout handed to the model.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    memory_format: torch.memory_format = torch.contiguous_format

    def inputs(self, raw: torch.Tensor, augmentation: Augmentation | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, H, W) raw pixels -> scaled float32 model inputs, augmented when asked."""
        images = raw.float()
        if augmentation is not None and augmentation.active:
            images = augmentation(images, generator)  # on raw values: the fill is background
        shape = images.shape
        scaled = (images.reshape(shape[0], -1) - self.mean) / self.scale
        return scaled.reshape(shape).contiguous(memory_format=self.memory_format)


@dataclass
class Evaluation:
    """Outcome of :func:`evaluate` on N rows.

    Attributes:
        loss_sum: summed NLL over the rows.
        n: number of rows.
        confusion: (C, C) int64 counts, rows true, columns predicted (on the CPU).
        log_probs: (N, C) float32 log-probabilities (on the CPU).
    """

    loss_sum: float
    n: int
    confusion: torch.Tensor
    log_probs: torch.Tensor

    @property
    def loss(self) -> float:
        return self.loss_sum / self.n if self.n else float("nan")

    @property
    def correct(self) -> int:
        return int(torch.trace(self.confusion))

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


@dataclass
class EpochRecord:
    """Per-epoch history of one fold: each list has one entry per finished epoch."""

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def metric(self, name: str) -> float:
        return getattr(self, name)[-1]


class EarlyStopping:
    """Keras-style early stopping on ``val_accuracy`` (higher is better) or ``val_loss``.

    An epoch improves when it beats the best value so far by more than ``min_delta``; after
    ``patience`` epochs without improvement, :attr:`should_stop` turns true. The best weights
    are kept (on the model's device) so that they can be restored.
    """

    def __init__(self, monitor: str = "val_accuracy", min_delta: float = 0.0, patience: int = 4):
        self.monitor, self.min_delta, self.patience = monitor, abs(min_delta), patience
        self.sign = 1.0 if monitor == "val_accuracy" else -1.0
        self.best_value = -math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.waited = 0

    @property
    def should_stop(self) -> bool:
        return self.waited >= self.patience

    def update(self, epoch: int, value: float, model: nn.Module) -> bool:
        """Record ``value`` for ``epoch``; True when it is the new best."""
        if self.sign * value > self.best_value + self.min_delta or self.best_epoch < 0:
            self.best_value, self.best_epoch, self.waited = self.sign * value, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
            return True
        self.waited += 1
        return False


@dataclass
class FitOutcome:
    """What :func:`fit` returns: history, final evaluation, and where training ended."""

    history: EpochRecord
    evaluation: Evaluation
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    final_lr: float


def make_optimizer(parameters, config) -> torch.optim.Optimizer:
    """Adam (S5), AdamW, SGD (momentum, Nesterov) or RMSprop, from a RunConfig.

    Adam, AdamW and SGD use torch's fused kernels on the CPU and CUDA: one kernel for all
    parameters instead of a handful of ops per tensor, the same update rule. Measured on UCI
    S5 (one fold, 10 epochs, one thread, bf16): 4.3-4.5 s against 4.8-5.0 s unfused, on a
    machine busy with other work, so the ~10% is indicative.
    """
    parameters = list(parameters)
    decay = {} if config.weight_decay is None else {"weight_decay": config.weight_decay}
    fused = {"fused": True} if parameters and all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in parameters) else {}
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, **decay, **fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, **decay, **fused)
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov, **decay, **fused)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=config.lr, momentum=config.momentum, **decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, config, steps_per_epoch: int):
    """The schedule and whether it steps per batch (OneCycle) rather than per epoch."""
    kind = config.scheduler
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, config.step_size, config.gamma), False
    if kind == "plateau":
        mode = "max" if config.plateau_monitor == "val_accuracy" else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=config.plateau_factor, patience=config.plateau_patience,
            min_lr=config.min_lr), False
    if kind == "onecycle":
        # OneCycle cycles momentum (Adam's beta1) against the rate; for SGD/RMSprop that
        # would silently add momentum to a run configured without it.
        cycle = config.optimizer in ("adam", "adamw") or config.momentum > 0
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
            cycle_momentum=cycle), True
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs), False
    if kind == "none":
        return None, False
    raise ValueError(f"unknown scheduler {kind!r}")


def smoothed_nll(log_probs: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Mean NLL of (N, C) log-probabilities, with label smoothing.

    Equal to ``F.cross_entropy(logits, targets, label_smoothing=smoothing)``: the models end in
    LogSoftmax, so the smoothing term is the mean of ``-log_probs`` over classes.
    """
    loss = F.nll_loss(log_probs, targets)
    if smoothing:
        loss = (1 - smoothing) * loss - smoothing * log_probs.mean(dim=1).mean()
    return loss


def autocast(device_type: str, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype``, or no context at all for float32 (None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def training_forward(model: nn.Module, dtype: torch.dtype | None = None):
    """``inputs -> (N, C) float32 log-probabilities`` for training, under autocast to ``dtype``.

    Convolutions and matrix products run in ``dtype`` (bf16); a final LogSoftmax runs in
    float32 outside autocast, because CPU autocast would otherwise keep it in bf16 and round
    the log-probabilities the loss is taken of to three significant digits.
    """
    if dtype is None:
        return model
    device_type = next(model.parameters()).device.type
    head = model[-1] if isinstance(model, nn.Sequential) and len(model) > 1 else None
    body = model[:-1] if isinstance(head, nn.LogSoftmax) else model
    tail = head if isinstance(head, nn.LogSoftmax) else nn.Identity()

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        with autocast(device_type, dtype):
            outputs = body(inputs)
        return tail(outputs.float())

    return forward


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: FoldTensors,
                batch_size: int, generator: torch.Generator, *,
                augmentation: Augmentation | None = None, label_smoothing: float = 0.0,
                batch_scheduler=None, autocast_dtype: torch.dtype | None = None
                ) -> tuple[float, float]:
    """One pass over the training rows in a random order; returns (mean loss, accuracy).

    The permutation is drawn on the CPU from ``generator`` (so a seed gives the same order on
    every device) and moved once. ``autocast_dtype`` (e.g. ``torch.bfloat16``) trains under
    autocast; weights, optimizer state and the loss stay float32.
    """
    model.train()
    forward = training_forward(model, autocast_dtype)
    count = len(data.train_labels)
    device = data.train_labels.device
    order = torch.randperm(count, generator=generator).to(device, non_blocking=True)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for start in range(0, count, batch_size):
        batch = order[start:start + batch_size]
        labels = data.train_labels[batch]
        log_probs = forward(data.inputs(data.train_images[batch], augmentation, generator))
        loss = smoothed_nll(log_probs, labels, label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if batch_scheduler is not None:
            batch_scheduler.step()
        loss_sum += loss.detach() * len(batch)
        correct += (log_probs.detach().argmax(dim=1) == labels).sum()
    return float(loss_sum) / count, int(correct) / count


@torch.no_grad()
def predict_log_probs(model: nn.Module, data: FoldTensors, images: torch.Tensor,
                      batch_size: int) -> torch.Tensor:
    """(N, C) log-probabilities of raw ``images`` (N, C, H, W), in eval mode, no augmentation."""
    model.eval()
    outputs = [model(data.inputs(images[start:start + batch_size]))
               for start in range(0, len(images), batch_size)]
    return torch.cat(outputs).float() if outputs else images.new_zeros((0, 0), dtype=torch.float32)


def evaluate(model: nn.Module, data: FoldTensors, batch_size: int, num_classes: int) -> Evaluation:
    """Summed NLL, confusion counts and log-probabilities on the validation rows."""
    labels = data.val_labels
    if len(labels) == 0:  # training on every row (--full): nothing to evaluate
        return Evaluation(float("nan"), 0, torch.zeros(num_classes, num_classes, dtype=torch.int64),
                          torch.zeros(0, num_classes))
    log_probs = predict_log_probs(model, data, data.val_images, batch_size)
    loss_sum = F.nll_loss(log_probs, labels, reduction="sum")
    confusion = confusion_counts(log_probs.argmax(dim=1), labels, num_classes)
    return Evaluation(float(loss_sum), len(labels), confusion.cpu(), log_probs.cpu())


def fit(model: nn.Module, data: FoldTensors, config, *, num_classes: int,
        generator: torch.Generator,
        on_epoch: Callable[[int, EpochRecord], None] | None = None,
        autocast_dtype: torch.dtype | None = None) -> FitOutcome:
    """Train ``model`` with ``config``'s recipe, evaluating on the validation rows each epoch.

    A fresh optimizer, schedule and early-stopping state are made here, so nothing carries
    over from an earlier call. With early stopping and ``restore_best``, the model ends with
    its best weights and the returned evaluation is of those weights. Training runs under
    autocast to ``autocast_dtype`` when given; evaluation is always float32, so reported
    probabilities are not rounded to bf16.
    """
    steps_per_epoch = math.ceil(len(data.train_labels) / config.batch_size)
    optimizer = make_optimizer(model.parameters(), config)
    scheduler, per_batch = make_scheduler(optimizer, config, steps_per_epoch)
    augmentation = config.augmentation()
    stopper = EarlyStopping(config.monitor, config.min_delta, config.patience)
    history = EpochRecord()
    evaluation = None
    stopped_early = False
    for epoch in range(config.epochs):
        history.lr.append(optimizer.param_groups[0]["lr"])
        train_loss, train_accuracy = train_epoch(
            model, optimizer, data, config.batch_size, generator, augmentation=augmentation,
            label_smoothing=config.label_smoothing,
            batch_scheduler=scheduler if per_batch else None, autocast_dtype=autocast_dtype)
        evaluation = evaluate(model, data, config.test_batch_size, num_classes)
        history.train_loss.append(train_loss)
        history.train_accuracy.append(train_accuracy)
        history.val_loss.append(evaluation.loss)
        history.val_accuracy.append(evaluation.accuracy)
        if scheduler is not None and not per_batch:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(history.metric(config.plateau_monitor))
            else:
                scheduler.step()
        stopper.update(epoch, history.metric(config.monitor), model)
        if on_epoch is not None:
            on_epoch(epoch, history)
        if config.early_stopping and stopper.should_stop:
            stopped_early = True
            break
    if evaluation is None:
        raise ValueError("fit needs at least one epoch")
    final_lr = optimizer.param_groups[0]["lr"]
    if config.early_stopping and config.restore_best and stopper.best_epoch != epoch:
        model.load_state_dict(stopper.best_state)
        evaluation = evaluate(model, data, config.test_batch_size, num_classes)
    return FitOutcome(history, evaluation, epochs_run=epoch + 1, best_epoch=stopper.best_epoch,
                      stopped_early=stopped_early, final_lr=final_lr)
