"""The per-epoch hook: what a run tells its callbacks, and how a callback stops a fold.

A :class:`Callback` hears four events: :meth:`~Callback.on_run_start` once the run's folder
is started (a :class:`RunStart`: its settings, folder and the folds a resumed run found
finished), :meth:`~Callback.on_epoch_end` after every epoch of every fold (an
:class:`EpochEnd`: fold, epoch, metrics, and :meth:`EpochEnd.stop` to end that fold after
this epoch), :meth:`~Callback.on_fold_end` with each finished fold's
:class:`~digitcnn.results.FoldResult`, and :meth:`~Callback.on_run_end` with the run's
:class:`~digitcnn.results.KFoldResult`. Pass them as ``run_kfold(..., callbacks=[...])`` or
``fit(..., callbacks=[...])`` (which, training one model, has no run start or end).

Every way of training folds delivers them: folds in turn and fold-batched training call them
in this process as each epoch ends; fold processes send each epoch's event to the parent,
which calls them there and sends a stop back (the fold ends at its next epoch end); Ray tasks
deliver a fold's epochs when its task returns, when it can no longer be stopped.

Early stopping (:class:`digitcnn.training.recipe.EarlyStopping`), the divergence check
(:class:`DivergenceCheck`) and the progress bar (:class:`ProgressBar`) are callbacks too.
Nothing here imports torch.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from digitcnn.errors import TrainingDiverged

if TYPE_CHECKING:
    from pathlib import Path

    from digitcnn.results import FoldResult, KFoldResult

__all__ = [
    "RunSettings",
    "RunStart",
    "EpochEnd",
    "Callback",
    "DivergenceCheck",
    "ProgressBar",
    "notify_epoch",
    "epoch_events",
    "replay_epochs",
]

METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


class RunSettings(Protocol):
    """What a callback reads of a run's settings: a :class:`digitcnn.config.RunConfig`,
    named here by what it offers (the config module imports the recipe, which imports these
    callbacks: an import of the config from here would close a circle)."""

    @property
    def epochs(self) -> int:
        """Epochs per fold."""

    def to_dict(self) -> dict[str, Any]:
        """Every setting by name, as ``config.json`` stores it."""


@dataclass(frozen=True)
class RunStart:
    """A K-fold run about to train its folds.

    Attributes:
        config: the run's settings.
        folder: the run folder (its ``config.json`` and ``splits.json`` are written), or None
            when the run writes no files.
        folds: how many folds the run has.
        finished: the folds a resumed run found finished in ``folder``, by fold number; they
            are not trained again, so no epoch or fold event comes for them.
    """

    config: RunSettings
    folder: Path | None
    folds: int
    finished: dict[int, FoldResult] = field(default_factory=dict)


@dataclass
class EpochEnd:
    """One fold's finished epoch.

    Attributes:
        fold: the fold's number in the run (0 for a single model).
        epoch: the epoch that ended, from 0.
        epochs: the most epochs the fold trains.
        metrics: ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy`` and
            ``lr`` (the rate the epoch trained at), as Python floats.
        has_validation: False when the fold has no validation rows (``--full``).
        state: the fold's current weights (a state dict) when called; None where the model
            is in another process.
        stop_requested: set by :meth:`stop`.
    """

    fold: int
    epoch: int
    epochs: int
    metrics: dict[str, float]
    has_validation: bool = True
    state: Callable[[], dict[str, Any]] | None = None
    stop_requested: bool = field(default=False)

    def stop(self) -> None:
        """End this fold after this epoch (others train on); its weights stay as they are."""
        self.stop_requested = True


class Callback:
    """The hook's protocol, with nothing done by default: subclass and override."""

    @property
    def wants_epochs(self) -> bool:
        """Whether :meth:`on_epoch_end` does anything; fold processes send their epochs to
        this process only when a callback wants them."""
        return True

    def on_run_start(self, event: RunStart) -> None:
        """Once, before any fold trains (after a resumed run has read its finished folds)."""

    def on_epoch_end(self, event: EpochEnd) -> None:
        """After every epoch of every fold; ``event.stop()`` ends that fold."""

    def on_fold_end(self, result: FoldResult) -> None:
        """After each fold trained now (not those a resumed run found finished)."""

    def on_run_end(self, result: KFoldResult) -> None:
        """Once, with the run's pooled result."""


def notify_epoch(callbacks: Iterable[Callback], event: EpochEnd) -> bool:
    """Give ``event`` to every callback in turn; True when one asked the fold to stop."""
    for callback in callbacks:
        callback.on_epoch_end(event)
    return event.stop_requested


def epoch_events(result: FoldResult, epochs: int) -> list[EpochEnd]:
    """The epoch events of a finished fold, rebuilt from its history (``train_accuracy`` is
    NaN where a record has none)."""
    events = []
    for epoch in range(len(result.train_loss)):
        metrics = {
            "train_loss": result.train_loss[epoch],
            "train_accuracy": (
                result.train_accuracy[epoch] if epoch < len(result.train_accuracy) else math.nan
            ),
            "val_loss": result.val_loss[epoch],
            "val_accuracy": result.val_accuracy[epoch],
            "lr": result.lrs[epoch],
        }
        events.append(EpochEnd(result.fold, epoch, epochs, metrics, result.n_val > 0))
    return events


def replay_epochs(callbacks: Sequence[Callback], result: FoldResult, epochs: int) -> None:
    """The epoch events of a fold that trained out of reach (a Ray task), from its history."""
    for event in epoch_events(result, epochs):
        notify_epoch(callbacks, event)


class DivergenceCheck(Callback):
    """Stop the run when a fold's loss turns NaN or infinite: its numbers would mean nothing.

    Raises :class:`~digitcnn.errors.TrainingDiverged` (a ConfigError) naming the fold, the
    epoch and ``hint`` (the settings to look at).
    The losses are the epoch's, already read to the host: no extra device sync.
    """

    def __init__(self, hint: str = "lower the learning rate (try a tenth)") -> None:
        self.hint = hint

    def on_epoch_end(self, event: EpochEnd) -> None:
        val_loss = event.metrics["val_loss"] if event.has_validation else 0.0
        for name, value in (("training", event.metrics["train_loss"]), ("validation", val_loss)):
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"fold {event.fold}, epoch {event.epoch + 1}: the {name} loss is {value}: "
                    f"training diverged, so the run is stopped and no results are written; "
                    f"{self.hint}"
                )


class ProgressBar(Callback):
    """A tqdm bar over every fold's epochs, on stderr, drawn only at a terminal."""

    def __init__(
        self, folds: int, epochs: int, done: int = 0, desc: str = "", show: bool | None = None
    ) -> None:
        # tqdm.auto would add asyncio's import for a notebook widget that cannot appear: the
        # bar is drawn only when stderr is a terminal, which a notebook's is not
        from tqdm import tqdm

        self.epochs = epochs
        self.bar = tqdm(
            total=folds * epochs,
            initial=done * epochs,
            desc=desc,
            leave=False,
            file=sys.stderr,
            disable=not (sys.stderr.isatty() if show is None else show),
        )

    @property
    def wants_epochs(self) -> bool:
        return not self.bar.disable

    def on_epoch_end(self, event: EpochEnd) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            fold=event.fold, epoch=event.epoch + 1, loss=f"{event.metrics['train_loss']:.4f}"
        )

    def on_fold_end(self, result: FoldResult) -> None:
        # a fold that stopped early leaves its remaining epochs to count; a fold trained out
        # of reach (fold processes report each epoch; Ray tasks replay theirs first) none
        self.bar.update(max(0, self.epochs - max(result.epochs_run, len(result.train_loss))))

    def close(self) -> None:
        self.bar.close()
