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
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from digitcnn.training.augment import Augmentation
from digitcnn.metrics import confusion_counts

__all__ = ["Evaluation", "EpochRecord", "FoldTensors", "EarlyStopping", "FitOutcome",
           "make_optimizer", "make_scheduler", "smoothed_nll", "autocast", "training_forward",
           "epoch_order", "SingleModel", "run_epoch", "FoldSchedule", "fit_folds", "train_epoch",
           "evaluate", "predict_log_probs", "fit"]


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
    """What :func:`fit` returns: history, final evaluation, where training ended, and the
    seconds spent training and evaluating (for folds trained together: all of them)."""

    history: EpochRecord
    evaluation: Evaluation
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    final_lr: float
    train_s: float = 0.0
    eval_s: float = 0.0


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


def epoch_order(count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A random permutation of ``count`` rows for one epoch, on ``device``.

    It is drawn where ``generator`` lives: a CPU generator gives the same order on every
    device (one copy per epoch), a generator on the GPU draws it there with no copy at all.
    """
    order = torch.randperm(count, generator=generator, device=generator.device)
    return order.to(device, non_blocking=True)


class SingleModel:
    """One model on one fold's :class:`FoldTensors`: the K = 1 case of the folds that
    :func:`fit_folds` trains (:class:`digitcnn.training.parallel.FoldBatch` is the K-fold one).

    A trainer gives :func:`run_epoch` and :func:`fit_folds` what they need: ``folds``,
    ``train_counts``, ``parameters()``, ``start_epoch(batch_size) -> steps``,
    ``step(index) -> (loss to minimise, (K,) summed losses, (K,) correct counts)``,
    ``evaluate(batch_size, num_classes) -> [Evaluation] * K``, ``fold_state(k)`` and
    ``load_fold_state(k, state)``.
    """

    folds = 1

    def __init__(self, model: nn.Module, data: FoldTensors, generator: torch.Generator, *,
                 augmentation: Augmentation | None = None, label_smoothing: float = 0.0,
                 autocast_dtype: torch.dtype | None = None):
        self.model, self.data, self.generator = model, data, generator
        self.augmentation, self.label_smoothing = augmentation, label_smoothing
        self.forward = training_forward(model, autocast_dtype)
        self.train_counts = [len(data.train_labels)]
        self.batches: list[torch.Tensor] = []

    def parameters(self):
        return self.model.parameters()

    def start_epoch(self, batch_size: int) -> int:
        self.model.train()
        order = epoch_order(self.train_counts[0], self.generator, self.data.train_labels.device)
        self.batches = list(order.split(batch_size))
        return len(self.batches)

    def step(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self.batches[index]
        data = self.data
        labels = data.train_labels[batch]
        log_probs = self.forward(data.inputs(data.train_images[batch], self.augmentation,
                                             self.generator))
        loss = smoothed_nll(log_probs, labels, self.label_smoothing)
        correct = (log_probs.detach().argmax(dim=1) == labels).sum()
        return loss, (loss.detach() * len(batch))[None], correct[None]

    def evaluate(self, batch_size: int, num_classes: int) -> list[Evaluation]:
        return [evaluate(self.model, self.data, batch_size, num_classes)]

    def fold_state(self, fold: int = 0) -> dict[str, torch.Tensor]:
        return copy.deepcopy(self.model.state_dict())

    def load_fold_state(self, fold: int, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


def run_epoch(trainer, optimizer: torch.optim.Optimizer, batch_size: int, *,
              before_step: Callable[[], torch.Tensor | None] | None = None,
              after_step: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of ``trainer`` (K folds) over its training rows: THE training loop.

    Returns (K,) summed losses and (K,) correct counts, on the device: nothing is read back
    to the host inside the epoch. ``before_step`` may set the optimizer's rates and return a
    (K,) tensor of per-fold rates to apply by scaling each fold's update (None: the
    optimizer's own rate serves every fold); ``after_step`` steps per-batch schedules.
    """
    steps = trainer.start_epoch(batch_size)
    loss_sums = corrects = None
    for index in range(steps):
        rates = before_step() if before_step is not None else None
        loss, loss_sum, correct = trainer.step(index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if rates is None:
            optimizer.step()
        else:
            _rate_scaled_step(optimizer, rates)
        loss_sums = loss_sum if loss_sums is None else loss_sums + loss_sum
        corrects = correct if corrects is None else corrects + correct
        if after_step is not None:
            after_step()
    return loss_sums, corrects


@torch.no_grad()
def _rate_scaled_step(optimizer: torch.optim.Optimizer, rates: torch.Tensor) -> None:
    """``optimizer.step()`` at rate 1, then each fold's change scaled by its own rate.

    Exact for Adam, AdamW, SGD and RMSprop, whose change is linear in the rate (decoupled
    weight decay included); parameters are fold-stacked along dimension 0, K blocks.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    before = [p.detach().clone() for p in params]
    optimizer.step()
    for param, old in zip(params, before):
        change = (param - old).unflatten(0, (len(rates), -1))
        scale = rates.view(-1, *([1] * (change.dim() - 1))).to(change.dtype)
        param.copy_((old.unflatten(0, change.shape[:2]) + scale * change).reshape(param.shape))


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: FoldTensors,
                batch_size: int, generator: torch.Generator, *,
                augmentation: Augmentation | None = None, label_smoothing: float = 0.0,
                batch_scheduler=None, autocast_dtype: torch.dtype | None = None
                ) -> tuple[float, float]:
    """One pass over the training rows in a random order; returns (mean loss, accuracy).

    The permutation is drawn from ``generator`` (:func:`epoch_order`). ``autocast_dtype``
    (e.g. ``torch.bfloat16``) trains under autocast; weights, optimizer state and the loss
    stay float32.
    """
    trainer = SingleModel(model, data, generator, augmentation=augmentation,
                          label_smoothing=label_smoothing, autocast_dtype=autocast_dtype)
    loss_sum, correct = run_epoch(trainer, optimizer, batch_size,
                                  after_step=None if batch_scheduler is None
                                  else batch_scheduler.step)
    count = trainer.train_counts[0]
    return float(loss_sum[0]) / count, int(correct[0]) / count


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


class FoldSchedule:
    """One fold's learning-rate schedule, driving a one-parameter optimizer of the run's kind.

    The optimizer that trains the folds steps at the rate (and, for OneCycle, momentum) that
    these schedules give, so every fold follows its own schedule (its own plateaus) whether it
    trains alone or beside other folds.
    """

    def __init__(self, config, steps_per_epoch: int):
        self.parameter = nn.Parameter(torch.zeros(1))
        self.optimizer = make_optimizer([self.parameter], config)
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

    def epoch_step(self, metric: float) -> None:
        if self.scheduler is None or self.per_batch:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(metric)
        else:
            self.optimizer.step()
            self.scheduler.step()


class _FoldStateView:
    """What :class:`EarlyStopping` copies: fold k's state dict."""

    def __init__(self, trainer, fold: int):
        self.trainer, self.fold = trainer, fold

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.trainer.fold_state(self.fold)


def fit_folds(trainer, config, *, num_classes: int,
              on_epoch: Callable[[int, list[EpochRecord]], None] | None = None
              ) -> list[FitOutcome]:
    """Train the K folds of ``trainer`` with ``config``'s recipe: THE epoch loop.

    Each fold gets a fresh schedule and early-stopping state here; one optimizer (fused where
    torch has it) steps all folds' parameters, which is K independent optimizers because
    Adam, AdamW, SGD and RMSprop act elementwise. When the running folds' rates agree (every
    schedule but a plateau that one fold hit) the optimizer steps at that rate; otherwise
    each fold's change is scaled by its own rate. A fold that stops early keeps the state it
    stopped with (or its best, with ``restore_best``), whatever the others still do. Losses
    and correct counts are read back once per epoch.
    """
    folds = trainer.folds
    steps_per_epoch = math.ceil(max(trainer.train_counts) / config.batch_size)
    optimizer = make_optimizer(trainer.parameters(), config)
    schedules = [FoldSchedule(config, steps_per_epoch) for _ in range(folds)]
    stoppers = [EarlyStopping(config.monitor, config.min_delta, config.patience)
                for _ in range(folds)]
    histories = [EpochRecord() for _ in range(folds)]
    active = [True] * folds
    stopped_states: list[dict | None] = [None] * folds
    evaluations: list[Evaluation | None] = [None] * folds
    epochs_run = [0] * folds
    rate_cache: dict[tuple[float, ...], torch.Tensor] = {}
    device = next(iter(trainer.parameters())).device
    timing = {"train_s": 0.0, "eval_s": 0.0}

    def before_step() -> torch.Tensor | None:
        running = [schedule for schedule, is_active in zip(schedules, active) if is_active]
        rates = {schedule.lr for schedule in running}
        common = rates.pop() if len(rates) == 1 else None
        for group in optimizer.param_groups:
            group.update(running[0].momentum_settings())  # OneCycle's: the same for all folds
            group["lr"] = 1.0 if common is None else common
        if common is not None:
            return None  # one rate: stopped folds may drift, their stopping state is kept
        key = tuple(schedule.lr if is_active else 0.0
                    for schedule, is_active in zip(schedules, active))
        if key not in rate_cache:  # rates change per epoch, not per step (plateaus)
            rate_cache.clear()
            rate_cache[key] = torch.tensor(key, device=device)
        return rate_cache[key]

    def after_step() -> None:
        for schedule, is_active in zip(schedules, active):
            if is_active:
                schedule.batch_step()

    for epoch in range(config.epochs):
        for fold in range(folds):
            if active[fold]:
                histories[fold].lr.append(schedules[fold].lr)
        started = time.perf_counter()
        loss_sums, corrects = run_epoch(trainer, optimizer, config.batch_size,
                                        before_step=before_step, after_step=after_step)
        loss_sums, corrects = loss_sums.tolist(), corrects.tolist()  # the epoch's one read
        timing["train_s"] += time.perf_counter() - started
        started = time.perf_counter()
        fold_evaluations = trainer.evaluate(config.test_batch_size, num_classes)
        timing["eval_s"] += time.perf_counter() - started
        for fold in range(folds):
            if not active[fold]:
                continue
            count, history = trainer.train_counts[fold], histories[fold]
            evaluations[fold] = fold_evaluations[fold]
            history.train_loss.append(loss_sums[fold] / count)
            history.train_accuracy.append(corrects[fold] / count)
            history.val_loss.append(evaluations[fold].loss)
            history.val_accuracy.append(evaluations[fold].accuracy)
            schedules[fold].epoch_step(history.metric(config.plateau_monitor))
            epochs_run[fold] = epoch + 1
            stoppers[fold].update(epoch, history.metric(config.monitor),
                                  _FoldStateView(trainer, fold))
            if config.early_stopping and stoppers[fold].should_stop:
                active[fold] = False
                if any(active):  # the others go on training, and this fold's copy with them
                    stopped_states[fold] = trainer.fold_state(fold)
        if on_epoch is not None:
            on_epoch(epoch, histories)
        if not any(active):
            break
    if evaluations[0] is None:
        raise ValueError("fit needs at least one epoch")

    restored = []
    for fold in range(folds):
        stopper = stoppers[fold]
        if config.early_stopping and config.restore_best and \
                stopper.best_epoch != epochs_run[fold] - 1:
            trainer.load_fold_state(fold, stopper.best_state)
            restored.append(fold)
        elif stopped_states[fold] is not None:
            trainer.load_fold_state(fold, stopped_states[fold])
    if restored:
        started = time.perf_counter()
        again = trainer.evaluate(config.test_batch_size, num_classes)
        timing["eval_s"] += time.perf_counter() - started
        for fold in restored:
            evaluations[fold] = again[fold]
    return [FitOutcome(histories[fold], evaluations[fold], epochs_run[fold],
                       stoppers[fold].best_epoch, config.early_stopping and not active[fold],
                       schedules[fold].lr, **timing) for fold in range(folds)]


def fit(model: nn.Module, data: FoldTensors, config, *, num_classes: int,
        generator: torch.Generator,
        on_epoch: Callable[[int, EpochRecord], None] | None = None,
        autocast_dtype: torch.dtype | None = None) -> FitOutcome:
    """Train ``model`` with ``config``'s recipe, evaluating on the validation rows each epoch.

    The public way to train one model on given tensors. A fresh optimizer, schedule and
    early-stopping state are made here, so nothing carries over from an earlier call. With
    early stopping and ``restore_best``, the model ends with its best weights and the
    returned evaluation is of those weights. Training runs under autocast to
    ``autocast_dtype`` when given; evaluation is always float32, so reported probabilities
    are not rounded to bf16. ``generator`` draws the batch order and the augmentation.
    """
    trainer = SingleModel(model, data, generator, augmentation=config.augmentation(),
                          label_smoothing=config.label_smoothing, autocast_dtype=autocast_dtype)
    report = None if on_epoch is None else (lambda epoch, histories: on_epoch(epoch,
                                                                               histories[0]))
    return fit_folds(trainer, config, num_classes=num_classes, on_epoch=report)[0]
