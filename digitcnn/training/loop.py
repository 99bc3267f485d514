"""THE epoch loop: one model, or K folds trained together, through the same loop.

:func:`fit_folds` is the fit loop (skorch's ``fit_loop``): it delegates each epoch to
:meth:`FitLoop.run_single_epoch`, whose training pass is :func:`run_epoch` over a
:class:`~digitcnn.training._steps.Trainer`'s ``train_step`` and whose evaluation is the
trainer's ``validation_step``. Sequential and fold-process training run it on a
:class:`~digitcnn.training._steps.SingleModel` (:func:`fit`), fold-parallel training on a
:class:`~digitcnn.training.parallel.FoldBatch`. Nothing is read back to the host inside an
epoch: losses and correct counts are summed on the device and read once per epoch.

The engine's public names live where they are made (steps, recipe) and are importable from
here too, as ``digitcnn.training.loop`` is the training API the rest of digitcnn calls.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, cast

import torch
from torch import nn

from digitcnn.training._steps import (
    Evaluation,
    FoldTensors,
    SingleModel,
    Trainer,
    autocast,
    epoch_order,
    evaluate,
    predict_log_probs,
    smoothed_nll,
    training_forward,
)
from digitcnn.training.augment import Augmentation
from digitcnn.training.callbacks import Callback, EpochEnd, notify_epoch
from digitcnn.training.graphs import BatchedTrainer, CapturedStep, set_learning_rate
from digitcnn.training.recipe import (
    EarlyStopping,
    FoldSchedule,
    Recipe,
    make_optimizer,
    make_scheduler,
    recipe_optimizer,
)

__all__ = [
    "EpochCheckpoints",
    "EpochRecord",
    "FitOutcome",
    "FoldRun",
    "FitLoop",
    "run_epoch",
    "eager_step",
    "backward_and_step",
    "fit_folds",
    "fit",
    "train_epoch",
    "rate_scaled_step",
    "Recipe",
    # made in steps and recipe, the engine's API all the same
    "Evaluation",
    "FoldTensors",
    "SingleModel",
    "Trainer",
    "autocast",
    "epoch_order",
    "evaluate",
    "predict_log_probs",
    "smoothed_nll",
    "training_forward",
    "EarlyStopping",
    "FoldSchedule",
    "make_optimizer",
    "make_scheduler",
]


class EpochCheckpoints(Protocol):
    """Where a fit keeps its epoch checkpoints
    (:class:`digitcnn.runstore.checkpoints.EpochCheckpoints`)."""

    def save(self, state: Callable[[], dict[str, Any]], epoch: int) -> None:
        """After epoch ``epoch``: keep ``state()`` when a checkpoint is due."""

    def restore(self, load: Callable[[dict[str, Any]], None]) -> int | None:
        """Give the newest usable checkpoint to ``load``; its epoch, or None."""


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


@dataclass
class FoldRun:
    """One fold's state in the loop: its own schedule, early stopping and history.

    Attributes:
        active: still training (False once it stopped early).
        stopped_state: its weights when it stopped while other folds trained on.
        evaluation: its latest :class:`Evaluation`.
        epochs_run: epochs it trained.
    """

    schedule: FoldSchedule
    stopper: EarlyStopping
    history: EpochRecord = field(default_factory=EpochRecord)
    active: bool = True
    stopped_state: dict[str, torch.Tensor] | None = None
    evaluation: Evaluation | None = None
    epochs_run: int = 0


@torch.no_grad()
def rate_scaled_step(optimizer: torch.optim.Optimizer, rates: torch.Tensor) -> None:
    """``optimizer.step()`` at rate 1, then each fold's change scaled by its own rate.

    Exact for Adam, AdamW, SGD and RMSprop, whose change is linear in the rate (decoupled
    weight decay included); parameters are fold-stacked along dimension 0, K blocks. Called
    for every batch while the folds' rates differ (a plateau one fold hit).
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    before = [p.detach().clone() for p in params]
    optimizer.step()
    for param, old in zip(params, before):
        change = (param - old).unflatten(0, (len(rates), -1))
        scale = rates.view(-1, *([1] * (change.dim() - 1))).to(change.dtype)
        param.copy_((old.unflatten(0, change.shape[:2]) + scale * change).reshape(param.shape))


def backward_and_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, rates: torch.Tensor | None
) -> None:
    """Backward from ``loss`` and the optimizer's step: at its rate, or with (K,) ``rates``
    each fold's change scaled by its own (:func:`rate_scaled_step`)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if rates is None:
        optimizer.step()
    else:
        rate_scaled_step(optimizer, rates)


def eager_step(
    trainer: Trainer, optimizer: torch.optim.Optimizer, index: int, rates: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``index`` of ``trainer``, trained: (K,) loss sums and (K,) correct counts."""
    loss, loss_sum, correct = trainer.train_step(index)
    backward_and_step(optimizer, loss, rates)
    return loss_sum, correct


# a batch's training: step(index, rates) -> (K,) loss sums, (K,) correct counts
Step = Callable[[int, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]


def run_epoch(
    trainer: Trainer,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    *,
    before_step: Callable[[], torch.Tensor | None] | None = None,
    after_step: Callable[[], None] | None = None,
    step: Step | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of ``trainer`` (K folds) over its training rows: THE training pass.

    Returns (K,) summed losses and (K,) correct counts, on the device: nothing is read back
    to the host inside the epoch. ``before_step`` may set the optimizer's rates and return a
    (K,) tensor of per-fold rates to apply by scaling each fold's update (None: the
    optimizer's own rate serves every fold); ``after_step`` steps per-batch schedules.
    ``step(index, rates)`` trains one batch (default :func:`eager_step`; a
    :class:`~digitcnn.training.graphs.CapturedStep` replays a CUDA graph).
    """
    steps = trainer.start_epoch(batch_size)
    if steps == 0:
        raise ValueError("an epoch needs at least one training row")
    if step is None:
        step = functools.partial(eager_step, trainer, optimizer)
    loss_sums: torch.Tensor | None = None
    corrects: torch.Tensor | None = None
    for index in range(steps):
        rates = before_step() if before_step is not None else None
        loss_sum, correct = step(index, rates)
        loss_sums = loss_sum if loss_sums is None else loss_sums + loss_sum
        corrects = correct if corrects is None else corrects + correct
        if after_step is not None:
            after_step()
    return cast(torch.Tensor, loss_sums), cast(torch.Tensor, corrects)  # steps > 0: set


class FitLoop:
    """Train the K folds of ``trainer`` with ``recipe``, evaluating every epoch.

    Each fold gets a fresh schedule and early-stopping state here; one optimizer (fused where
    torch has it) steps all folds' parameters, which is K independent optimizers because
    Adam, AdamW, SGD and RMSprop act elementwise. When the running folds' rates agree (every
    schedule but a plateau that one fold hit) the optimizer steps at that rate; otherwise
    each fold's change is scaled by its own rate. After every epoch each fold's
    :class:`~digitcnn.training.callbacks.EpochEnd` goes to its early stopping, then to
    ``callbacks``; a fold asked to stop keeps the state it stopped with (or its best, with
    ``restore_best``), whatever the others still do. ``folds`` numbers the trainer's folds in
    the events (default 0..K-1). ``timing`` sums the seconds spent training and evaluating
    (all folds together).
    """

    def __init__(
        self,
        trainer: Trainer,
        recipe: Recipe,
        num_classes: int,
        folds: Sequence[int] | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoints: EpochCheckpoints | None = None,
        cuda_graph: bool = False,
    ) -> None:
        recipe = Recipe.of(recipe)
        self.trainer, self.config, self.num_classes = trainer, recipe, num_classes
        self.checkpoints = checkpoints
        self.fold_numbers = list(range(trainer.folds) if folds is None else folds)
        self.callbacks = list(callbacks)
        steps_per_epoch = math.ceil(max(trainer.train_counts) / recipe.batch_size)
        self.optimizer = recipe_optimizer(trainer.parameters(), recipe)
        self.folds = [
            FoldRun(
                FoldSchedule(recipe, steps_per_epoch),
                EarlyStopping(
                    recipe.monitor, recipe.min_delta, recipe.patience, stops=recipe.early_stopping
                ),
            )
            for _ in range(trainer.folds)
        ]
        self.device = next(iter(trainer.parameters())).device
        # the fold-batched step replayed as a CUDA graph (a FoldBatch on CUDA; the caller
        # checked capture_refusal)
        self.step: Step | None = (
            CapturedStep(
                cast(BatchedTrainer, trainer),
                self.optimizer,
                recipe.batch_size,
                functools.partial(backward_and_step, self.optimizer),
            )
            if cuda_graph
            else None
        )
        self.rate_cache: dict[tuple[float, ...], torch.Tensor] = {}
        self.lr_set: float | None = None  # the optimizer's rate as set_rates last set it
        self.timing = {"train_s": 0.0, "eval_s": 0.0}

    def run(self) -> list[FitOutcome]:
        """The fit loop: epochs until ``recipe.epochs`` or every fold has stopped, from the
        newest epoch checkpoint when there is one."""
        for epoch in range(self.resume(), self.config.epochs):
            trained = self.run_single_epoch(epoch)
            for index in trained:
                self.end_epoch(epoch, index, trained)
            if not any(fold.active for fold in self.folds):
                break
            if self.checkpoints is not None and epoch + 1 < self.config.epochs:
                self.checkpoints.save(functools.partial(self.state_dict, epoch), epoch)
        if self.folds[0].evaluation is None:
            raise ValueError("fit needs at least one epoch")
        return self.finish()

    def resume(self) -> int:
        """Load the newest usable checkpoint; the epoch to start from (0 without one). The
        epochs it holds are told to the callbacks again (not to early stopping, whose state
        it holds), so that a progress bar or a tracker sees the whole fold."""
        if self.checkpoints is None:
            return 0
        fresh = copy.deepcopy(self.state_dict(-1))  # the state dicts hold live tensors

        def load(state: dict[str, Any]) -> None:
            try:
                self.load_state_dict(state)
            except BaseException:
                self.load_state_dict(fresh)  # a state that did not fit leaves nothing behind
                raise

        restored = self.checkpoints.restore(load)
        if restored is None:
            return 0
        for index, fold in enumerate(self.folds):
            for epoch in range(len(fold.history.train_loss)):
                notify_epoch(self.callbacks, self.epoch_event(epoch, index, epoch))
        return restored + 1

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """Everything the epoch after ``epoch`` depends on: the trainer's weights and
        generators, the optimizer, each fold's schedule, early stopping and history, and
        the global random-number generators (dropout)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "epoch": epoch,
            "trainer": self.trainer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "folds": [_fold_state(fold) for fold in self.folds],
            "rng": rng,
            "timing": dict(self.timing),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (raises when it does not fit these folds)."""
        if len(state["folds"]) != len(self.folds):
            raise ValueError(f"{len(state['folds'])} folds, not {len(self.folds)}")
        self.trainer.load_state_dict(state["trainer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_set = None  # the loaded param groups hold the saved rate
        for fold, saved in zip(self.folds, state["folds"]):
            _load_fold_state(fold, saved)
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.timing = dict(state["timing"])

    def run_single_epoch(self, epoch: int) -> list[int]:
        """Train every running fold one epoch, evaluate, and record what each fold did;
        returns the indices of the folds that trained."""
        trained = [index for index, fold in enumerate(self.folds) if fold.active]
        for index in trained:
            self.folds[index].history.lr.append(self.folds[index].schedule.lr)
        with self.timed("train_s"):
            loss_sums, corrects = run_epoch(
                self.trainer,
                self.optimizer,
                self.config.batch_size,
                before_step=self.set_rates,
                after_step=self.step_schedules,
                step=self.step,
            )
            losses, counts = loss_sums.tolist(), corrects.tolist()  # the epoch's one read
        evaluations = self.validate()
        for index in trained:
            self.folds[index].evaluation = evaluations[index]
            self.record(epoch, index, losses[index], counts[index])
        return trained

    def epoch_event(self, epoch: int, index: int, entry: int = -1) -> EpochEnd:
        """Fold ``index``'s event for ``epoch``, from its history's ``entry``."""
        fold, history = self.folds[index], self.folds[index].history
        return EpochEnd(
            self.fold_numbers[index],
            epoch,
            self.config.epochs,
            {
                name: getattr(history, name)[entry]
                for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
            },
            has_validation=fold.evaluation is not None and fold.evaluation.n > 0,
            state=lambda: self.trainer.fold_state(index),
        )

    def end_epoch(self, epoch: int, index: int, trained: Sequence[int]) -> None:
        """Fold ``index``'s epoch event to its early stopping and the callbacks; a fold asked
        to stop stops here."""
        fold = self.folds[index]
        event = self.epoch_event(epoch, index)
        if notify_epoch([fold.stopper, *self.callbacks], event):
            fold.active = False
            if any(self.folds[other].active for other in trained if other != index):
                fold.stopped_state = self.trainer.fold_state(index)  # the others train on

    def set_rates(self) -> torch.Tensor | None:
        """Before each step: the optimizer's rate, or (K,) per-fold rates when they differ."""
        running = [fold.schedule for fold in self.folds if fold.active]
        rates = {schedule.lr for schedule in running}
        common = rates.pop() if len(rates) == 1 else None
        for group in self.optimizer.param_groups:
            group.update(running[0].momentum_settings())  # OneCycle's: the same for all folds
        lr = 1.0 if common is None else common
        if lr != self.lr_set:  # rates change per epoch (or OneCycle's per batch), not per step
            set_learning_rate(self.optimizer, lr)
            self.lr_set = lr
        if common is not None:
            return None  # one rate: stopped folds may drift, their stopping state is kept
        key = tuple(fold.schedule.lr if fold.active else 0.0 for fold in self.folds)
        if key not in self.rate_cache:  # rates change per epoch, not per step (plateaus)
            self.rate_cache.clear()
            self.rate_cache[key] = torch.tensor(key, device=self.device)
        return self.rate_cache[key]

    def step_schedules(self) -> None:
        """After each step: per-batch schedules (OneCycle) of the running folds."""
        for fold in self.folds:
            if fold.active:
                fold.schedule.batch_step()

    def validate(self) -> list[Evaluation]:
        with self.timed("eval_s"):
            return self.trainer.validation_step(self.config.test_batch_size, self.num_classes)

    def record(self, epoch: int, index: int, loss_sum: float, correct: int) -> None:
        """Fold ``index``'s epoch in its history, schedule and early stopping."""
        config, fold = self.config, self.folds[index]
        count, history = self.trainer.train_counts[index], fold.history
        evaluation = cast(Evaluation, fold.evaluation)  # set by run_single_epoch before this
        history.train_loss.append(loss_sum / count)
        history.train_accuracy.append(correct / count)
        history.val_loss.append(evaluation.loss)
        history.val_accuracy.append(evaluation.accuracy)
        fold.schedule.epoch_step(history.metric(config.plateau_monitor))
        fold.epochs_run = epoch + 1

    def finish(self) -> list[FitOutcome]:
        """Each fold back to its best (``restore_best``) or stopping weights; the outcomes."""
        restored = [index for index, fold in enumerate(self.folds) if self.restore(index, fold)]
        if restored:
            again = self.validate()
            for index in restored:
                self.folds[index].evaluation = again[index]
        return [
            FitOutcome(
                fold.history,
                cast(Evaluation, fold.evaluation),  # every fold trained an epoch: run() checks
                fold.epochs_run,
                fold.stopper.best_epoch,
                not fold.active,
                fold.schedule.lr,
                **self.timing,
            )
            for fold in self.folds
        ]

    def restore(self, index: int, fold: FoldRun) -> bool:
        """Load fold ``index``'s best or stopping weights; True when its best were loaded."""
        config = self.config
        if (
            config.early_stopping
            and config.restore_best
            and fold.stopper.best_epoch != fold.epochs_run - 1
            and fold.stopper.best_state is not None
        ):
            self.trainer.load_fold_state(index, fold.stopper.best_state)
            return True
        if fold.stopped_state is not None:
            self.trainer.load_fold_state(index, fold.stopped_state)
        return False

    @contextlib.contextmanager
    def timed(self, key: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.timing[key] += time.perf_counter() - started


def _fold_state(fold: FoldRun) -> dict[str, Any]:
    evaluation = fold.evaluation
    return {
        "schedule": fold.schedule.state_dict(),
        "stopper": fold.stopper.state_dict(),
        "history": asdict(fold.history),
        "active": fold.active,
        "stopped_state": fold.stopped_state,
        "evaluation": None if evaluation is None else asdict(evaluation),
        "epochs_run": fold.epochs_run,
    }


def _load_fold_state(fold: FoldRun, state: dict[str, Any]) -> None:
    fold.schedule.load_state_dict(state["schedule"])
    fold.stopper.load_state_dict(state["stopper"])
    fold.history = EpochRecord(**state["history"])
    fold.active, fold.stopped_state = state["active"], state["stopped_state"]
    saved = state["evaluation"]
    fold.evaluation = None if saved is None else Evaluation(**saved)
    fold.epochs_run = state["epochs_run"]


def fit_folds(
    trainer: Trainer,
    recipe: Recipe,
    *,
    num_classes: int,
    folds: Sequence[int] | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoints: EpochCheckpoints | None = None,
    cuda_graph: bool = False,
) -> list[FitOutcome]:
    """Train the K folds of ``trainer`` with ``recipe`` (:class:`FitLoop`); one
    :class:`FitOutcome` per fold. ``callbacks`` hear every fold's epochs (numbered ``folds``);
    with ``checkpoints`` the fit continues from the newest one and keeps one per epoch;
    ``cuda_graph`` replays a fold-batched trainer's step as a CUDA graph
    (:mod:`digitcnn.training.graphs`)."""
    loop = FitLoop(trainer, recipe, num_classes, folds, callbacks, checkpoints, cuda_graph)
    return loop.run()


def fit(
    model: nn.Module,
    data: FoldTensors,
    recipe: Recipe | None = None,
    *,
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
    callbacks: Sequence[Callback] = (),
    autocast_dtype: torch.dtype | None = None,
    fold: int = 0,
    checkpoints: EpochCheckpoints | None = None,
) -> FitOutcome:
    """Train ``model`` on ``data`` with ``recipe`` (default :class:`Recipe`: S5's),
    evaluating on the validation rows each epoch. No run configuration is needed::

        data = FoldTensors.of(train_x, train_y, val_x, val_y)   # (N, C, H, W), (N,)
        outcome = fit(model, data, Recipe(epochs=5, lr=3e-3), num_classes=10)

    A fresh optimizer, schedule and early-stopping state are made here, so nothing carries
    over from an earlier call. With early stopping and ``restore_best``, the model ends with
    its best weights and the returned evaluation is of those weights. Training runs under
    autocast to ``autocast_dtype`` when given; evaluation is always float32, so reported
    probabilities are not rounded to bf16. ``generator`` draws the batch order and the
    augmentation (default: seeded with 0, on the data's device). ``num_classes``: default one
    more than the largest label. ``callbacks`` hear each epoch as fold ``fold``.
    ``checkpoints``: continue from the newest epoch checkpoint there and keep one per epoch
    (see :mod:`digitcnn.runstore.checkpoints`).
    """
    recipe = Recipe() if recipe is None else Recipe.of(recipe)
    if num_classes is None:
        labels = torch.cat([data.train_labels, data.val_labels])
        num_classes = int(labels.max()) + 1
    if generator is None:
        generator = torch.Generator(device=data.train_images.device).manual_seed(0)
    trainer = SingleModel(
        model,
        data,
        generator,
        augmentation=recipe.augmentation(),
        label_smoothing=recipe.label_smoothing,
        autocast_dtype=autocast_dtype,
    )
    return fit_folds(
        trainer,
        recipe,
        num_classes=num_classes,
        folds=[fold],
        callbacks=callbacks,
        checkpoints=checkpoints,
    )[0]


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: FoldTensors,
    batch_size: int,
    generator: torch.Generator,
    *,
    augmentation: Augmentation | None = None,
    label_smoothing: float = 0.0,
    batch_scheduler=None,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """One pass over the training rows in a random order; returns (mean loss, accuracy).

    The permutation is drawn from ``generator`` (:func:`epoch_order`). ``autocast_dtype``
    (e.g. ``torch.bfloat16``) trains under autocast; weights, optimizer state and the loss
    stay float32.
    """
    trainer = SingleModel(
        model,
        data,
        generator,
        augmentation=augmentation,
        label_smoothing=label_smoothing,
        autocast_dtype=autocast_dtype,
    )
    loss_sum, correct = run_epoch(
        trainer,
        optimizer,
        batch_size,
        after_step=None if batch_scheduler is None else batch_scheduler.step,
    )
    count = trainer.train_counts[0]
    return float(loss_sum[0]) / count, int(correct[0]) / count
