"""The tracker: a run's events, handed to each tracking backend, whose failures never fail the run.

A :class:`Tracker` is a :class:`~digitcnn.training.callbacks.Callback`. It hears the run start
(the folder and the folds a resumed run found finished), every epoch, every fold's end and
the run's end, and passes each to its backends (:class:`Backend`: TensorBoard, MLflow). What a
backend did not hear live (the finished folds of a resumed run, a whole run logged after the
fact by :func:`digitcnn.tracking.track_folder`) is replayed to it from the fold records,
through the same methods, so that a run tracked live and one tracked afterwards log the same
values.

A backend that raises (a locked or unwritable store, a full disk) is dropped for the rest of
the run with one warning; the run goes on and its folder, the source of truth, is complete.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitcnn.errors import OutputError
from digitcnn.training.callbacks import Callback, EpochEnd, RunStart, epoch_events

if TYPE_CHECKING:
    from digitcnn.results import FoldResult, KFoldResult

__all__ = ["Backend", "Tracker", "TrackingWarning"]


class TrackingWarning(RuntimeWarning):
    """A tracking backend failed; the run went on without it (the commands show it as one
    line)."""


class Backend:
    """One tracking destination. Subclasses override what they log; nothing by default.

    ``start`` returns the finished folds (of ``event.finished``) the backend has not logged
    yet: the tracker replays those to it (their epochs, then their end) before training goes
    on. Steps are epochs counted from 1.
    """

    name = "backend"
    #: whether :meth:`epoch` logs anything (fold processes then send their epochs here)
    wants_epochs = False
    #: whether :meth:`files` keeps the run's files (the report must then be drawn first)
    keeps_files = False

    def start(self, event: RunStart) -> set[int]:
        """The run begins; returns the folds this backend already holds (not logged again)."""
        return set(event.finished)

    def connect(self) -> str:
        """Reach the store now rather than when first needed; the run's id there, if any."""
        return ""

    def epoch(self, event: EpochEnd) -> None:
        """One epoch of one fold."""

    def fold(self, result: FoldResult) -> None:
        """A finished fold: its history and final numbers."""

    def run_end(self, metrics: dict[str, Any]) -> None:
        """The pooled results (``metrics.json``'s content)."""

    def files(self, folder: Path) -> None:
        """The run folder is complete (metrics, report, figures, models)."""

    def close(self, status: str) -> None:
        """The run ended: ``FINISHED``, ``KILLED`` (interrupted) or ``FAILED``."""


class Tracker(Callback):
    """Logs a K-fold run to ``backends`` (see the module docstring).

    Pass it to :func:`digitcnn.run_kfold` with an ``out_dir`` as one of ``callbacks``; after
    the run's files are written (:func:`digitcnn.save_run` or
    :func:`digitcnn.runstore.files.write_final`), call :meth:`log_files` with the folder, and
    :meth:`close` in any case (``"KILLED"`` after an interrupt). ``strict``: a backend's
    failure raises :class:`~digitcnn.errors.OutputError` instead of a warning.
    """

    def __init__(self, backends: list[Backend], strict: bool = False) -> None:
        self.backends = list(backends)
        self.strict = strict
        self.folder: Path | None = None
        self.epochs = 0

    @property
    def wants_epochs(self) -> bool:
        """Whether any backend logs per-epoch values."""
        return any(backend.wants_epochs for backend in self.backends)

    @property
    def keeps_files(self) -> bool:
        """Whether a backend keeps the finished folder's files (:meth:`log_files`)."""
        return any(backend.keeps_files for backend in self.backends)

    def _each(self, what: str, call: Any) -> None:
        """``call(backend)`` for every backend; one that raises is dropped with a warning."""
        for backend in list(self.backends):
            try:
                call(backend)
            except Exception as err:  # any failure: tracking must never fail the run
                self.backends.remove(backend)
                detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                if self.strict:
                    raise OutputError(
                        f"--to {backend.name}: {what} failed ({type(err).__name__}: {detail})"
                    ) from None
                where = f"python -m digitcnn.track {self.folder} --to {backend.name}"
                warnings.warn(
                    TrackingWarning(
                        f"--track {backend.name}: {what} failed ({type(err).__name__}: "
                        f"{detail}); nothing more of this run goes to {backend.name}, and "
                        f"its folder is complete: log it later with {where}"
                    ),
                    stacklevel=2,
                )

    def on_run_start(self, event: RunStart) -> None:
        self.folder, self.epochs = event.folder, event.config.epochs
        self._each("starting", lambda backend: self._start(backend, event))

    def _start(self, backend: Backend, event: RunStart) -> None:
        for fold in sorted(backend.start(event)):
            result = event.finished[fold]
            for epoch in epoch_events(result, self.epochs):
                backend.epoch(epoch)
            backend.fold(result)

    def connect(self) -> None:
        """Every backend reaches its store now (see :meth:`Backend.connect`)."""
        self._each("starting", lambda backend: backend.connect())

    def on_epoch_end(self, event: EpochEnd) -> None:
        self._each(
            f"logging fold {event.fold}'s epoch {event.epoch + 1}",
            lambda backend: backend.epoch(event) if backend.wants_epochs else None,
        )

    def on_fold_end(self, result: FoldResult) -> None:
        self._each(f"logging fold {result.fold}", lambda backend: backend.fold(result))

    def on_run_end(self, result: KFoldResult) -> None:
        self.log_metrics(result.metrics())

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """The pooled results, as ``metrics.json`` holds them."""
        self._each("logging the pooled metrics", lambda backend: backend.run_end(metrics))

    def log_files(self, folder: str | Path) -> None:
        """Attach the finished run folder's files (where a backend keeps files)."""
        self._each("logging the run's files", lambda backend: backend.files(Path(folder)))

    def close(self, status: str = "FINISHED") -> None:
        """End every backend's run with ``status``."""
        self._each("closing", lambda backend: backend.close(status))
