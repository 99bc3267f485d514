"""Experiment tracking: a run logged to TensorBoard and MLflow as it trains, or afterwards.

* :class:`Tracker`: the callback that hands a run's events to its backends, and never lets a
  backend's failure fail the run (:mod:`digitcnn.tracking.tracker`);
* :class:`TensorBoardBackend`: event files under ``OUT/tensorboard/``, one run per fold
  (:mod:`digitcnn.tracking.tensorboard`; the ``tensorboard`` extra);
* :class:`MlflowBackend`: a parent MLflow run with a child per fold
  (:mod:`digitcnn.tracking.mlflow`; the ``mlflow`` extra);
* :func:`make_tracker` (``--track``), :func:`track_folder` (``python -m digitcnn.track``):
  :mod:`digitcnn.tracking.runs`.

The run folder stays the source of truth: anything a backend missed can be logged from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from digitcnn._lazy import lazy_exports

if TYPE_CHECKING:  # the lazily imported names, for type checkers and IDEs
    from digitcnn.tracking.mlflow import MlflowBackend as MlflowBackend
    from digitcnn.tracking.runs import make_backends as make_backends
    from digitcnn.tracking.runs import make_tracker as make_tracker
    from digitcnn.tracking.runs import track_folder as track_folder
    from digitcnn.tracking.runs import track_sweep as track_sweep
    from digitcnn.tracking.tensorboard import TensorBoardBackend as TensorBoardBackend
    from digitcnn.tracking.tracker import Backend as Backend
    from digitcnn.tracking.tracker import Tracker as Tracker
    from digitcnn.tracking.tracker import TrackingWarning as TrackingWarning

_EXPORTS = {
    "Backend": "tracker",
    "Tracker": "tracker",
    "TrackingWarning": "tracker",
    "TensorBoardBackend": "tensorboard",
    "MlflowBackend": "mlflow",
    "make_backends": "runs",
    "make_tracker": "runs",
    "track_folder": "runs",
    "track_sweep": "runs",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
