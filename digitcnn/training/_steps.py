"""The steps the epoch loop (:mod:`digitcnn.training.loop`) delegates to, for one model.

No DataLoader: a fold's raw uint8 images and labels sit on the device, so a batch is one
index into them, augmented (training only) and scaled on the fly. This removes the
per-sample ``__getitem__`` and collate work of a DataLoader, keeps raw data compact on a GPU,
and keeps the steps free of host syncs (losses are summed on the device and read once per
epoch).

:class:`Trainer` is what the loop drives: K folds' models, their data and their steps.
:class:`SingleModel` is the K = 1 case; :class:`digitcnn.training.parallel.FoldBatch` trains
K folds as one fold-batched model. Both take their loss (:func:`smoothed_nll`) and their
evaluation (:func:`evaluation_of`) from here.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from digitcnn.metrics import confusion_counts
from digitcnn.training.augment import Augmentation

__all__ = [
    "FoldTensors",
    "Evaluation",
    "evaluation_of",
    "smoothed_nll",
    "autocast",
    "training_forward",
    "epoch_order",
    "Trainer",
    "SingleModel",
    "predict_log_probs",
    "evaluate",
]


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

    @classmethod
    def of(
        cls,
        train_images: torch.Tensor,
        train_labels: torch.Tensor,
        val_images: torch.Tensor | None = None,
        val_labels: torch.Tensor | None = None,
        *,
        mean: torch.Tensor | float = 0.0,
        scale: torch.Tensor | float = 1.0,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> FoldTensors:
        """One fold from plain tensors: (N, C, H, W) images and (N,) int64 labels, already on
        their device; no validation rows when ``val_images`` is None. Inputs are
        ``(x - mean) / scale`` (default: the images as given, as float32)."""
        device = train_images.device
        if val_images is None or val_labels is None:
            val_images, val_labels = train_images[:0], train_labels[:0]
        pixels = train_images[0].numel()

        def per_pixel(value: torch.Tensor | float) -> torch.Tensor:
            tensor = torch.as_tensor(value, dtype=torch.float32, device=device)
            return tensor.expand(pixels).contiguous() if tensor.dim() == 0 else tensor.reshape(-1)

        return cls(
            train_images,
            train_labels.long(),
            val_images,
            val_labels.long(),
            per_pixel(mean),
            per_pixel(scale),
            memory_format,
        )

    def inputs(
        self,
        raw: torch.Tensor,
        augmentation: Augmentation | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
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

    @classmethod
    def empty(cls, num_classes: int) -> Evaluation:
        """No rows to evaluate (training on every row, ``--full``)."""
        return cls(
            float("nan"),
            0,
            torch.zeros(num_classes, num_classes, dtype=torch.int64),
            torch.zeros(0, num_classes),
        )


def evaluation_of(log_probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Evaluation:
    """The :class:`Evaluation` of (N, C) float32 log-probabilities of rows labelled (N,)."""
    loss_sum = F.nll_loss(log_probs, labels, reduction="sum")
    confusion = confusion_counts(log_probs.argmax(dim=1), labels, num_classes)
    return Evaluation(float(loss_sum), len(labels), confusion.cpu(), log_probs.cpu())


def smoothed_nll(
    log_probs: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0, reduction: str = "mean"
) -> torch.Tensor:
    """NLL of (..., C) log-probabilities against (...) targets, with label smoothing.

    ``reduction="mean"`` (default) takes (N, C) and gives the mean, equal to
    ``F.cross_entropy(logits, targets, label_smoothing=smoothing)``: the models end in
    LogSoftmax, so the smoothing term is the mean of ``-log_probs`` over classes.
    ``reduction="none"`` gives one loss per row, shaped as ``targets`` (e.g. (K, B) for K
    folds' batches).
    """
    if reduction == "mean":
        loss = F.nll_loss(log_probs, targets)
        spread = log_probs.mean(dim=-1).mean() if smoothing else None
    elif reduction == "none":
        loss = F.nll_loss(log_probs.flatten(0, -2), targets.reshape(-1), reduction="none").view_as(
            targets
        )
        spread = log_probs.mean(dim=-1) if smoothing else None
    else:
        raise ValueError(f"unknown reduction {reduction!r}; choose 'mean' or 'none'")
    return (1 - smoothing) * loss - smoothing * spread if spread is not None else loss


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
    body = (
        model[:-1]
        if isinstance(model, nn.Sequential) and isinstance(head, nn.LogSoftmax)
        else model
    )
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


class Trainer(Protocol):
    """K folds' models and data, as the epoch loop (:func:`digitcnn.training.loop.fit_folds`)
    drives them.

    Attributes:
        folds: K.
        train_counts: each fold's number of training rows.
    """

    folds: int
    train_counts: list[int]

    def parameters(self) -> Iterator[nn.Parameter]:
        """Every trained parameter (one optimizer steps them all)."""

    def start_epoch(self, batch_size: int) -> int:
        """Train mode and this epoch's batch order; returns the number of steps."""

    def train_step(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch ``index``: (loss to minimise, (K,) summed losses, (K,) correct counts), all
        on the device."""

    def validation_step(self, batch_size: int, num_classes: int) -> list[Evaluation]:
        """Each fold's :class:`Evaluation` on its validation rows (eval mode, float32)."""

    def fold_state(self, fold: int) -> dict[str, torch.Tensor]:
        """A copy of fold ``fold``'s weights and buffers, keyed as its own model's."""

    def load_fold_state(self, fold: int, state: dict[str, torch.Tensor]) -> None:
        """Load a state from :meth:`fold_state` into fold ``fold``."""

    def state_dict(self) -> dict[str, Any]:
        """Everything of the trainer the next epoch depends on (weights, generators), for an
        epoch checkpoint."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""


class SingleModel:
    """One model on one fold's :class:`FoldTensors`: the K = 1 :class:`Trainer`."""

    folds = 1

    def __init__(
        self,
        model: nn.Module,
        data: FoldTensors,
        generator: torch.Generator,
        *,
        augmentation: Augmentation | None = None,
        label_smoothing: float = 0.0,
        autocast_dtype: torch.dtype | None = None,
    ):
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

    def train_step(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self.batches[index]
        data = self.data
        labels = data.train_labels[batch]
        log_probs = self.forward(
            data.inputs(data.train_images[batch], self.augmentation, self.generator)
        )
        loss = smoothed_nll(log_probs, labels, self.label_smoothing)
        correct = (log_probs.detach().argmax(dim=1) == labels).sum()
        return loss, (loss.detach() * len(batch))[None], correct[None]

    def validation_step(self, batch_size: int, num_classes: int) -> list[Evaluation]:
        return [evaluate(self.model, self.data, batch_size, num_classes)]

    def fold_state(self, fold: int = 0) -> dict[str, torch.Tensor]:
        return copy.deepcopy(self.model.state_dict())

    def load_fold_state(self, fold: int, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        """What the next epoch depends on: the weights and the batch-order generator."""
        return {"model": self.model.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.generator.set_state(state["generator"])


@torch.no_grad()
def predict_log_probs(
    model: nn.Module, data: FoldTensors, images: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """(N, C) log-probabilities of raw ``images`` (N, C, H, W), in eval mode, no augmentation."""
    model.eval()
    outputs = [
        model(data.inputs(images[start : start + batch_size]))
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs).float() if outputs else images.new_zeros((0, 0), dtype=torch.float32)


def evaluate(model: nn.Module, data: FoldTensors, batch_size: int, num_classes: int) -> Evaluation:
    """Summed NLL, confusion counts and log-probabilities on the validation rows."""
    labels = data.val_labels
    if len(labels) == 0:  # training on every row (--full): nothing to evaluate
        return Evaluation.empty(num_classes)
    return evaluation_of(
        predict_log_probs(model, data, data.val_images, batch_size), labels, num_classes
    )
