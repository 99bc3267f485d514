"""Fold-parallel training: the K fold models of a run trained as ONE fold-batched model.

K small models trained one after another use a GPU poorly (each step is dominated by kernel
launches and Python) and a CPU's cores no better (tiny matrix products). Here the folds'
models, each built from its own seed as in sequential mode, are stacked into one model
(:func:`digitcnn.models.stacked.stack_folds`): grouped convolutions with K groups, BatchNorm
over K*C channels, batched matrix products for the linear layers. One step trains all folds
with the kernels of one model, and :func:`digitcnn.training.loop.fit_folds`, the epoch loop
sequential mode uses too, drives it: :class:`FoldBatch` is its fold-batched
:class:`~digitcnn.training._steps.Trainer`.

What stays per fold:
* rows: fold k's batch is drawn from fold k's training rows only, with its own permutation
  from its own generator (on the device when the generator is);
* scaling: each fold's own mean and scale, fitted on its training rows;
* initialisation: each fold's model is built with its seed, then its weights are stacked;
* optimizer state: one (fused) optimizer over the stacked tensors is K independent
  optimizers, because Adam, AdamW, SGD and RMSprop act elementwise;
* learning rate, schedule and early stopping: see :class:`digitcnn.training.loop.FitLoop`;
* BatchNorm statistics and dropout masks: per channel, hence per fold, and per element.

Batches have static shapes: every step but an epoch's last has (K, batch) rows; the last has
the largest remainder, as the sequential loop's last batch. Folds can differ by a row in size;
a smaller fold pads its last batch with its own rows at weight 0, so every fold's loss is the
mean over its real rows (the padded row does enter that step's BatchNorm statistics).
Within an epoch nothing is read back to the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from digitcnn.models.stacked import fold_state, load_fold_state, stack_folds
from digitcnn.training._steps import (
    Evaluation,
    epoch_order,
    evaluation_of,
    smoothed_nll,
    training_forward,
)
from digitcnn.training.augment import Augmentation
from digitcnn.training.callbacks import Callback
from digitcnn.training.graphs import capture_refusal
from digitcnn.training.loop import EpochCheckpoints, FitOutcome, fit_folds
from digitcnn.training.recipe import Recipe

__all__ = ["StackedFolds", "FoldBatch", "fit_parallel", "epoch_plan"]


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

    def inputs(
        self,
        rows: torch.Tensor,
        augmentation: Augmentation | None = None,
        generator: torch.Generator | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> torch.Tensor:
        """(K, B) row indices -> (B, K*C, H, W) inputs of a fold-batched model, each fold
        scaled with its own statistics (fold k in channels k*C..(k+1)*C-1)."""
        folds, batch = rows.shape
        channels, height, width = self.images.shape[1:]
        raw = self.images[rows.t().reshape(-1)].float()  # slot-major: b0k0, b0k1, ...
        if augmentation is not None and augmentation.active:
            raw = augmentation(raw, generator)
        scaled = (raw.reshape(batch, folds, -1) - self.mean) / self.scale
        return scaled.reshape(batch, folds * channels, height, width).contiguous(
            memory_format=memory_format
        )


def epoch_plan(
    row_sets: Sequence[torch.Tensor], generators: Sequence[torch.Generator] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, L) row indices and (K, L) float weights (1 real, 0 padding), L the largest set.

    With ``generators`` each fold's rows come in its own random order (one epoch); without,
    in their given order (evaluation). A smaller fold is padded with its own first rows.
    """
    longest = max(len(rows) for rows in row_sets)
    device = row_sets[0].device
    plan, weights = [], []
    for fold, rows in enumerate(row_sets):
        order = (
            torch.arange(len(rows), device=device)
            if generators is None
            else epoch_order(len(rows), generators[fold], device)
        )
        missing = longest - len(rows)
        plan.append(rows[torch.cat([order, order[:missing]])])
        weight = torch.ones(longest, device=device)
        weight[len(rows) :] = 0.0
        weights.append(weight)
    return torch.stack(plan), torch.stack(weights)


class FoldBatch:
    """K folds as one fold-batched model over :class:`StackedFolds`: the
    :class:`~digitcnn.training._steps.Trainer` of fold-parallel training."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        data: StackedFolds,
        generators: Sequence[torch.Generator],
        augment_generator: torch.Generator,
        *,
        augmentation: Augmentation | None = None,
        label_smoothing: float = 0.0,
        autocast_dtype: torch.dtype | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        self.folds = len(models)
        self.model = stack_folds(models, memory_format)
        self.data, self.generators, self.augment_generator = data, generators, augment_generator
        self.augmentation, self.label_smoothing = augmentation, label_smoothing
        self.memory_format = memory_format
        self.forward = training_forward(self.model, autocast_dtype)
        self.train_counts = [len(rows) for rows in data.train_rows]
        self.plan = self.weights = torch.empty(0)  # this epoch's, set by start_epoch
        self.bounds: list[tuple[int, int]] = []

    def parameters(self):
        return self.model.parameters()

    def start_epoch(self, batch_size: int) -> int:
        self.model.train()
        self.plan, self.weights = epoch_plan(self.data.train_rows, self.generators)
        length = self.plan.shape[1]
        self.bounds = [
            (start, min(start + batch_size, length)) for start in range(0, length, batch_size)
        ]
        return len(self.bounds)

    def train_step(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.loss_of(*self.batch(index))

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch ``index`` of this epoch: (B, K*C, H, W) inputs (augmented, each fold
        scaled with its own statistics), (K, B) labels and (K, B) row weights."""
        start, end = self.bounds[index]
        rows, weights = self.plan[:, start:end], self.weights[:, start:end]
        inputs = self.data.inputs(
            rows, self.augmentation, self.augment_generator, self.memory_format
        )
        return inputs, self.data.labels[rows], weights

    def loss_of(
        self, inputs: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A :meth:`batch`'s (loss to minimise, (K,) loss sums, (K,) correct counts): each
        fold's loss is the mean over its real rows, and the loss minimised their sum."""
        log_probs = self.forward(inputs)  # (K, B, classes), float32
        nll = smoothed_nll(log_probs, labels, self.label_smoothing, reduction="none")  # (K, B)
        counts = weights.sum(dim=1)
        fold_losses = (nll * weights).sum(dim=1) / counts.clamp(min=1)
        correct = ((log_probs.detach().argmax(dim=2) == labels) & (weights > 0)).sum(dim=1)
        return fold_losses.sum(), fold_losses.detach() * counts, correct

    @torch.no_grad()
    def validation_step(self, batch_size: int, num_classes: int) -> list[Evaluation]:
        """Every fold on its validation rows, in eval mode and float32, all folds at once."""
        self.model.eval()
        plan, _ = epoch_plan(self.data.val_rows, None)
        outputs = [
            self.model(
                self.data.inputs(
                    plan[:, start : start + batch_size], memory_format=self.memory_format
                )
            ).float()
            for start in range(0, plan.shape[1], batch_size)
        ]
        log_probs = torch.cat(outputs, dim=1)  # (K, V, classes)
        return [
            evaluation_of(log_probs[fold, : len(rows)], self.data.labels[rows], num_classes)
            for fold, rows in enumerate(self.data.val_rows)
        ]

    def fold_state(self, fold: int) -> dict[str, torch.Tensor]:
        return fold_state(self.model, self.folds, fold)

    def load_fold_state(self, fold: int, state: dict[str, torch.Tensor]) -> None:
        load_fold_state(self.model, self.folds, fold, state)

    def state_dict(self) -> dict[str, Any]:
        """The stacked weights, each fold's batch-order generator and the augmentation's."""
        return {
            "model": self.model.state_dict(),
            "generators": [generator.get_state() for generator in self.generators],
            "augment_generator": self.augment_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for generator, saved in zip(self.generators, state["generators"]):
            generator.set_state(saved)
        self.augment_generator.set_state(state["augment_generator"])


def fit_parallel(
    models: Sequence[nn.Module],
    stacked: StackedFolds,
    recipe: Recipe,
    *,
    num_classes: int,
    generators: Sequence[torch.Generator],
    augment_generator: torch.Generator,
    folds: Sequence[int] | None = None,
    callbacks: Sequence[Callback] = (),
    autocast_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    checkpoints: EpochCheckpoints | None = None,
    cuda_graph: bool = False,
) -> list[FitOutcome]:
    """Train K freshly built ``models`` together; they end with their trained (or best) weights.

    ``generators`` give each fold's batch order; ``augment_generator`` draws the augmentation
    of the stacked batch; ``autocast_dtype`` (e.g. bf16) is the training steps' autocast, and
    ``callbacks`` hear each fold's epochs (numbered ``folds``), as in
    :func:`digitcnn.training.loop.fit`; ``memory_format`` is the inputs' layout. Returns one
    :class:`FitOutcome` per fold, like :func:`digitcnn.training.loop.fit`; ``checkpoints``
    keep the group's epoch checkpoints (one for all its folds). ``cuda_graph`` replays the
    step as a CUDA graph (:mod:`digitcnn.training.graphs`); raises ValueError where it
    cannot (:func:`~digitcnn.training.graphs.capture_refusal` says why).
    """
    recipe = Recipe.of(recipe)
    if cuda_graph:
        refusal = capture_refusal(recipe, stacked.images.device, autocast_dtype)
        if refusal:
            raise ValueError(refusal)
    trainer = FoldBatch(
        models,
        stacked,
        generators,
        augment_generator,
        augmentation=recipe.augmentation(),
        label_smoothing=recipe.label_smoothing,
        autocast_dtype=autocast_dtype,
        memory_format=memory_format,
    )
    outcomes = fit_folds(
        trainer,
        recipe,
        num_classes=num_classes,
        folds=folds,
        callbacks=callbacks,
        checkpoints=checkpoints,
        cuda_graph=cuda_graph,
    )
    for fold, model in enumerate(models):
        model.load_state_dict(trainer.fold_state(fold))
    return outcomes
