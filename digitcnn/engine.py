"""The training engine: one model, device-resident tensors, index-sliced batches.

No DataLoader: a fold's scaled images and labels already sit on the device, so a batch is
one index into them. This removes the per-sample ``__getitem__`` and collate work that
dominates small-image training with a DataLoader, and keeps the loop free of host syncs
(losses are summed on the device and read once per epoch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .metrics import confusion_counts

__all__ = ["Evaluation", "EpochRecord", "train_epoch", "evaluate", "fit", "make_optimizer",
           "make_scheduler"]


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
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam, S5's optimizer."""
    return torch.optim.Adam(model.parameters(), lr=lr)


def make_scheduler(optimizer: torch.optim.Optimizer, step_size: int, gamma: float):
    """StepLR, S5's schedule: the learning rate times ``gamma`` every ``step_size`` epochs."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                labels: torch.Tensor, batch_size: int, generator: torch.Generator) -> float:
    """One pass over (N, C, H, W) ``images`` and (N,) ``labels`` in a random order.

    The permutation is drawn on the CPU from ``generator`` (so a seed gives the same order on
    every device) and moved once. Returns the mean training NLL of the epoch.
    """
    model.train()
    count = len(labels)
    order = torch.randperm(count, generator=generator).to(images.device, non_blocking=True)
    loss_sum = torch.zeros((), device=images.device)
    for start in range(0, count, batch_size):
        batch = order[start:start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = F.nll_loss(model(images[batch]), labels[batch])
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(batch)
    return float(loss_sum) / count


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
             num_classes: int) -> Evaluation:
    """Summed NLL, confusion counts and log-probabilities of ``model`` on a labelled set."""
    model.eval()
    outputs = [model(images[start:start + batch_size]) for start in range(0, len(labels), batch_size)]
    log_probs = torch.cat(outputs) if outputs else images.new_zeros((0, num_classes))
    loss_sum = F.nll_loss(log_probs, labels, reduction="sum")
    confusion = confusion_counts(log_probs.argmax(dim=1), labels, num_classes)
    return Evaluation(float(loss_sum), len(labels), confusion.cpu(), log_probs.float().cpu())


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, train_images: torch.Tensor,
        train_labels: torch.Tensor, val_images: torch.Tensor, val_labels: torch.Tensor, *,
        epochs: int, batch_size: int, test_batch_size: int, num_classes: int,
        generator: torch.Generator,
        on_epoch: Callable[[int, EpochRecord], None] | None = None) -> tuple[EpochRecord, Evaluation]:
    """Train for ``epochs`` epochs, evaluating on the validation rows after each.

    Returns the per-epoch history and the final validation :class:`Evaluation`.
    """
    history = EpochRecord()
    evaluation = None
    for epoch in range(epochs):
        history.train_loss.append(train_epoch(model, optimizer, train_images, train_labels,
                                              batch_size, generator))
        evaluation = evaluate(model, val_images, val_labels, test_batch_size, num_classes)
        history.val_loss.append(evaluation.loss)
        history.val_accuracy.append(evaluation.accuracy)
        history.lr.append(optimizer.param_groups[0]["lr"])
        if scheduler is not None:
            scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch, history)
    assert evaluation is not None  # epochs >= 1 is validated by RunConfig
    return history, evaluation
