"""Fold-parallel training: the K fold models of a run trained by one set of kernels.

K small models trained one after another use a 2-core CPU poorly (tiny matrix products) and
a GPU worse (each step is dominated by kernel launches and Python). Here the folds' weights
are stacked (``torch.func.stack_module_state``) and one ``vmap``-ed step trains all of them on
a (K, B, C, H, W) batch, so each kernel does K folds' work.

What stays per fold:
* rows: fold k's batch is drawn from fold k's training rows only, with its own permutation;
* scaling: each fold's own mean and scale, fitted on its training rows;
* optimizer state: one optimizer over the stacked tensors is K independent optimizers,
  because Adam, AdamW, SGD and RMSprop act elementwise;
* learning rate: each fold has its own scheduler (driving a one-parameter shadow optimizer);
  the shared optimizer steps with lr = 1 and each fold's update is then scaled by its own
  rate, which is exact for these optimizers since their update is linear in the rate;
* early stopping: a stopped fold's rate is 0, so its weights no longer change, and its best
  weights are kept and restored as in sequential mode;
* BatchNorm running statistics: stacked buffers, updated in place under ``vmap``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .augment import Augmentation
from .engine import (EarlyStopping, EpochRecord, Evaluation, FitOutcome, autocast,
                     make_optimizer, make_scheduler)
from .metrics import confusion_counts

__all__ = ["StackedFolds", "fit_parallel", "supports_parallel"]


@dataclass
class StackedFolds:
    """K folds' data over one device-resident copy of the rows.

    Attributes:
        images: (N, C, H, W) raw pixels of the whole dataset, on the device.
        labels: (N,) int64 labels, on the device.
        train_rows, val_rows: K int64 tensors of row indices, on the device.
        mean, scale: (K, C*H*W) float32 per-fold scaling: input = (raw - mean) / scale.
    """

    images: torch.Tensor
    labels: torch.Tensor
    train_rows: list[torch.Tensor]
    val_rows: list[torch.Tensor]
    mean: torch.Tensor
    scale: torch.Tensor

    @property
    def folds(self) -> int:
        return len(self.train_rows)

    def inputs(self, rows: torch.Tensor, augmentation: Augmentation | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """(K, B) row indices -> (K, B, C, H, W) scaled inputs, each fold with its own scaling."""
        folds, batch = rows.shape
        raw = self.images[rows.reshape(-1)].float()
        if augmentation is not None and augmentation.active:
            raw = augmentation(raw, generator)
        flat = raw.reshape(folds, batch, -1)
        scaled = (flat - self.mean[:, None]) / self.scale[:, None]
        return scaled.reshape(folds, batch, *self.images.shape[1:])

    def fold_inputs(self, fold: int, rows: torch.Tensor) -> torch.Tensor:
        """(B,) row indices -> (B, C, H, W) inputs scaled with fold ``fold``'s statistics."""
        raw = self.images[rows].float().reshape(len(rows), -1)
        scaled = (raw - self.mean[fold]) / self.scale[fold]
        return scaled.reshape(len(rows), *self.images.shape[1:])


def supports_parallel(config) -> bool:
    """Fold-parallel mode covers every optimizer and schedule; it needs 2+ folds."""
    return config.cv in ("kfold", "stratified")


class _ShadowSchedule:
    """Fold k's own scheduler, driving a one-parameter optimizer of the run's kind.

    The real optimizer steps all folds at once with lr = 1; this shadow says what fold k's
    rate (and, for OneCycle, momentum) is at each step.
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


def _fold_slice(stacked: dict[str, torch.Tensor], fold: int) -> dict[str, torch.Tensor]:
    return {name: tensor[fold] for name, tensor in stacked.items()}


def _epoch_batches(stacked: StackedFolds, batch_size: int,
                   generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """(steps, K, B) row indices and (steps, K, B) weights for one epoch.

    Folds can differ by a row in size; a smaller fold's last batch is padded with its own
    rows at weight 0, so every fold's loss is the mean over its real rows only.
    """
    device = stacked.labels.device
    longest = max(len(rows) for rows in stacked.train_rows)
    steps = math.ceil(longest / batch_size)
    slots = steps * batch_size
    rows, weights = [], []
    for fold_rows, generator in zip(stacked.train_rows, generators):
        order = torch.randperm(len(fold_rows), generator=generator).to(device)
        padded = torch.cat([order, order[: slots - len(order)].new_zeros(slots - len(order))])
        weight = torch.zeros(slots, device=device)
        weight[: len(order)] = 1.0
        # The row count per step follows the sequential loop: full batches, then the rest.
        rows.append(fold_rows[padded].reshape(steps, batch_size))
        weights.append(weight.reshape(steps, batch_size))
    return torch.stack(rows, dim=1), torch.stack(weights, dim=1)


def fit_parallel(models: Sequence[nn.Module], stacked: StackedFolds, config, *, num_classes: int,
                 generators: Sequence[torch.Generator], augment_generator: torch.Generator,
                 on_epoch: Callable[[int, list[EpochRecord]], None] | None = None,
                 autocast_dtype: torch.dtype | None = None) -> list[FitOutcome]:
    """Train K freshly built ``models`` together; they end with their trained (or best) weights.

    ``generators`` give each fold's batch order; ``augment_generator`` draws the augmentation
    of the stacked batch; ``autocast_dtype`` (e.g. bf16) is the training steps' autocast, as
    in :func:`digitcnn.engine.fit`. Returns one :class:`FitOutcome` per fold, like
    :func:`digitcnn.engine.fit`.
    """
    folds = len(models)
    params, buffers = stack_module_state(list(models))
    template = copy.deepcopy(models[0]).to("meta")
    smoothing = config.label_smoothing
    augmentation = config.augmentation()

    device_type = stacked.labels.device.type

    def fold_loss(fold_params, fold_buffers, inputs, labels, weights):
        with autocast(device_type, autocast_dtype):
            log_probs = functional_call(template, (fold_params, fold_buffers), (inputs,))
        log_probs = log_probs.float()
        nll = F.nll_loss(log_probs, labels, reduction="none")
        if smoothing:
            nll = (1 - smoothing) * nll - smoothing * log_probs.mean(dim=1)
        total = (nll * weights).sum() / weights.sum().clamp(min=1)
        correct = ((log_probs.argmax(dim=1) == labels).float() * weights).sum()
        return total, (total.detach() * weights.sum(), correct)

    batched_loss = vmap(fold_loss, randomness="different")
    optimizer = make_optimizer(list(params.values()), config)
    for group in optimizer.param_groups:
        group["lr"] = 1.0  # the folds' own rates scale each update below
    steps_per_epoch = math.ceil(max(len(r) for r in stacked.train_rows) / config.batch_size)
    schedules = [_ShadowSchedule(config, steps_per_epoch) for _ in range(folds)]
    stoppers = [EarlyStopping(config.monitor, config.min_delta, config.patience)
                for _ in range(folds)]
    histories = [EpochRecord() for _ in range(folds)]
    active = [True] * folds
    evaluations: list[Evaluation | None] = [None] * folds
    epochs_run = [0] * folds
    names = list(params)
    device = stacked.labels.device

    for epoch in range(config.epochs):
        for fold in range(folds):
            if active[fold]:
                histories[fold].lr.append(schedules[fold].lr)
        rows, weights = _epoch_batches(stacked, config.batch_size, generators)
        loss_sums = torch.zeros(folds, device=device)
        corrects = torch.zeros(folds, device=device)
        template.train()
        for step in range(rows.shape[0]):
            rates = torch.tensor([s.lr if a else 0.0 for s, a in zip(schedules, active)],
                                 device=device)
            leader = schedules[active.index(True)]
            for group in optimizer.param_groups:
                group.update(leader.momentum_settings())
            inputs = stacked.inputs(rows[step], augmentation, augment_generator)
            losses, (loss_sum, correct) = batched_loss(params, buffers, inputs,
                                                       stacked.labels[rows[step]], weights[step])
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            before = [params[name].detach().clone() for name in names]
            optimizer.step()
            with torch.no_grad():
                for name, old in zip(names, before):
                    scale = rates.view(-1, *([1] * (old.dim() - 1)))
                    params[name].copy_(old + scale * (params[name] - old))
            loss_sums += loss_sum.detach()
            corrects += correct.detach()
            for schedule, is_active in zip(schedules, active):
                if is_active:
                    schedule.batch_step()
        for fold in range(folds):
            if not active[fold]:
                continue
            count = len(stacked.train_rows[fold])
            history = histories[fold]
            history.train_loss.append(float(loss_sums[fold]) / count)
            history.train_accuracy.append(float(corrects[fold]) / count)
            evaluations[fold] = _evaluate_fold(template, params, buffers, stacked, fold,
                                               config.test_batch_size, num_classes)
            history.val_loss.append(evaluations[fold].loss)
            history.val_accuracy.append(evaluations[fold].accuracy)
            schedules[fold].epoch_step(history.metric(config.plateau_monitor))
            epochs_run[fold] = epoch + 1
            stoppers[fold].update(epoch, history.metric(config.monitor),
                                  _FoldView(params, buffers, fold))
            if config.early_stopping and stoppers[fold].should_stop:
                active[fold] = False
        if on_epoch is not None:
            on_epoch(epoch, histories)
        if not any(active):
            break

    outcomes = []
    for fold, model in enumerate(models):
        state = {**_fold_slice(params, fold), **_fold_slice(buffers, fold)}
        model.load_state_dict({k: v.detach().clone() for k, v in state.items()})
        stopper = stoppers[fold]
        evaluation = evaluations[fold]
        if config.early_stopping and config.restore_best and \
                stopper.best_epoch != epochs_run[fold] - 1:
            model.load_state_dict(stopper.best_state)
            evaluation = _evaluate_model(model, stacked, fold, config.test_batch_size,
                                         num_classes)
        outcomes.append(FitOutcome(histories[fold], evaluation, epochs_run[fold],
                                   stopper.best_epoch, config.early_stopping and not active[fold],
                                   schedules[fold].lr))
    return outcomes


class _FoldView:
    """Enough of an ``nn.Module`` for EarlyStopping to copy fold k's weights."""

    def __init__(self, params, buffers, fold):
        self.params, self.buffers, self.fold = params, buffers, fold

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in {**_fold_slice(self.params, self.fold),
                                                   **_fold_slice(self.buffers, self.fold)}.items()}


@torch.no_grad()
def _evaluate_fold(template, params, buffers, stacked: StackedFolds, fold: int, batch_size: int,
                   num_classes: int) -> Evaluation:
    template.eval()
    fold_params = _fold_slice(params, fold)
    fold_buffers = _fold_slice(buffers, fold)
    return _evaluation(lambda x: functional_call(template, (fold_params, fold_buffers), (x,)),
                       stacked, fold, batch_size, num_classes)


@torch.no_grad()
def _evaluate_model(model: nn.Module, stacked: StackedFolds, fold: int, batch_size: int,
                    num_classes: int) -> Evaluation:
    model.eval()
    return _evaluation(model, stacked, fold, batch_size, num_classes)


def _evaluation(forward, stacked: StackedFolds, fold: int, batch_size: int,
                num_classes: int) -> Evaluation:
    rows = stacked.val_rows[fold]
    outputs = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        outputs.append(forward(stacked.fold_inputs(fold, chunk)).float())
    log_probs = torch.cat(outputs)
    labels = stacked.labels[rows]
    loss_sum = F.nll_loss(log_probs, labels, reduction="sum")
    confusion = confusion_counts(log_probs.argmax(dim=1), labels, num_classes)
    return Evaluation(float(loss_sum), len(labels), confusion.cpu(), log_probs.cpu())
