"""The fold-batched training step captured once as a CUDA graph and replayed per batch.

A small model's step on a GPU is bound by launching its kernels (the forward, the backward
and the optimizer: a hundred or more for the K stacked folds), not by their arithmetic. A
CUDA graph (:class:`torch.cuda.CUDAGraph`) records those launches once and replays them
with one call. :class:`CapturedStep` follows PyTorch's whole-network capture recipe
(``torch.cuda.graphs`` in PyTorch's CUDA semantics notes):

* the batch is gathered, augmented and scaled as before (on the device, from each fold's own
  rows and generator), then copied into static input buffers the graph reads;
* the first ``warmup`` full batches train eagerly on a side stream (lazy initialisation: the
  optimizer's state, cuBLAS and cuDNN workspaces), then the next full batch is captured
  (capture runs nothing) and replayed; every later full batch is a copy and a replay;
* the learning rate is a device tensor in the optimizer's param group (fused Adam and AdamW
  take one), set in place when a schedule changes it, so the graph follows the schedule;
* an epoch's last, shorter batch, and every batch while the folds' rates differ (a plateau
  one fold hit), run the eager step: the same arithmetic without the graph, so that each
  fold's rows, order, initialisation, optimizer state, schedule and early stopping are those
  of the eager loop.

Nothing is read back to the host: each replay's (K,) loss sums and correct counts are
copied out of the graph's buffers on the device. Dropout draws come from the default CUDA
generator, which CUDA graphs advance on every replay.

What cannot be captured is refused before training (:func:`capture_refusal`): a schedule
that changes Adam's betas every batch (OneCycle), an optimizer other than Adam or AdamW,
bf16 autocast, or a device other than CUDA.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import nn

from digitcnn.training.recipe import Recipe

__all__ = ["BatchedTrainer", "CapturedStep", "capture_refusal", "set_learning_rate"]


class BatchedTrainer(Protocol):
    """What :class:`CapturedStep` needs of a trainer
    (:class:`digitcnn.training.parallel.FoldBatch`): its batches apart from its loss."""

    def parameters(self) -> Iterator[nn.Parameter]:
        """Every trained parameter."""

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch ``index`` of the epoch: (inputs, (K, B) labels, (K, B) row weights)."""

    def loss_of(
        self, inputs: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss to minimise, (K,) loss sums, (K,) correct counts) of a batch."""


# Optimizers whose fused CUDA kernel keeps its step count on the device and takes the
# learning rate as a device tensor: what a graph needs to replay a step of any epoch.
CAPTURABLE_OPTIMIZERS = ("adam", "adamw")


def capture_refusal(recipe: Recipe, device: torch.device, autocast: torch.dtype | None) -> str:
    """Why the fold-batched step of ``recipe`` cannot be captured on ``device``; "" when it
    can."""
    if device.type != "cuda":
        return f"CUDA graphs need --device cuda, not {device.type}"
    if recipe.optimizer not in CAPTURABLE_OPTIMIZERS:
        return (
            f"--optimizer {recipe.optimizer} cannot be captured; the captured step supports "
            f"{' and '.join(CAPTURABLE_OPTIMIZERS)}"
        )
    if recipe.scheduler == "onecycle":
        return "--scheduler onecycle changes Adam's betas every batch, which a graph would freeze"
    if autocast is not None:
        return "--precision bf16 is not captured; use --precision fp32"
    return ""


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every param group at ``lr``: in place when the group's rate is a device tensor (a
    captured graph reads that tensor), else as a number."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


class CapturedStep:
    """The step of a :class:`BatchedTrainer` as a CUDA graph: ``step(index, rates)``, as
    :func:`digitcnn.training.loop.run_epoch` calls its step.

    Args:
        trainer: the fold-batched trainer, on a CUDA device.
        optimizer: its fused Adam or AdamW; its param groups' rates become device tensors.
        batch_size: the full batch (per fold): the shape the graph is captured for.
        update: ``update(loss, rates)``, the eager backward and optimizer step (rates: None,
            or (K,) per-fold rates), for the batches the graph does not replay.
        warmup: full batches trained eagerly on a side stream before the capture (default 3,
            as in PyTorch's examples).
    """

    def __init__(
        self,
        trainer: BatchedTrainer,
        optimizer: torch.optim.Optimizer,
        batch_size: int,
        update: Callable[[torch.Tensor, torch.Tensor | None], None],
        warmup: int = 3,
    ) -> None:
        self.trainer, self.optimizer, self.update = trainer, optimizer, update
        self.batch_size, self.warmup = batch_size, warmup
        self.device = next(iter(trainer.parameters())).device
        self.side_stream = torch.cuda.Stream(self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: dict[str, torch.Tensor] = {}
        self.eager_full_batches = 0

    def __call__(self, index: int, rates: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.trainer.batch(index)  # drawn once: the eager path trains on it too
        if rates is not None or batch[1].shape[1] != self.batch_size:
            return self.eager(batch, rates)
        if self.graph is None and self.eager_full_batches < self.warmup:
            self.eager_full_batches += 1
            return self.on_side_stream(lambda: self.eager(batch, None))
        graph = self.graph if self.graph is not None else self.capture(*batch)
        for name, value in zip(("inputs", "labels", "weights"), batch):
            self.static[name].copy_(value)
        graph.replay()
        # the next replay overwrites the graph's outputs; the epoch's sums keep copies
        return self.static["loss_sum"].clone(), self.static["correct"].clone()

    def eager(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], rates: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, loss_sum, correct = self.trainer.loss_of(*batch)
        with warnings.catch_warnings():
            # once captured the optimizer is capturable; torch warns that its uncaptured
            # steps (an epoch's last batch) are slower, which they are not for fused kernels
            warnings.filterwarnings("ignore", message="This instance was constructed with")
            self.update(loss, rates)
        return loss_sum, correct

    def on_side_stream(self, work: Callable[[], Any]) -> Any:
        """``work()`` on the side stream, ordered after and before the current stream's."""
        current = torch.cuda.current_stream(self.device)
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream):
            result = work()
        current.wait_stream(self.side_stream)
        return result

    def capture(
        self, inputs: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> torch.cuda.CUDAGraph:
        """Record forward, backward and the optimizer's step over static buffers of this
        batch's shapes (recording runs nothing: the replay that follows trains on it)."""
        self.static = {
            "inputs": inputs.clone(memory_format=torch.preserve_format),
            "labels": labels.clone(),
            "weights": weights.clone(),
        }
        for group in self.optimizer.param_groups:
            # the rate as a device tensor the graph reads (set_learning_rate fills it in
            # place); capturable: torch's check that the step may be recorded
            group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
            group["capturable"] = True
        self.optimizer.zero_grad(set_to_none=True)  # the graph's backward makes its own
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss, loss_sum, correct = self.trainer.loss_of(
                self.static["inputs"], self.static["labels"], self.static["weights"]
            )
            loss.backward()
            self.optimizer.step()
        self.static["loss_sum"], self.static["correct"] = loss_sum, correct
        self.graph = graph
        return graph
