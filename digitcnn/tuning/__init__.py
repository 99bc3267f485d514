"""Hyperparameter search that knows it is K-fold: an Optuna study whose trials are whole K-fold
runs, pruned by their fold mean after every epoch, resumable, and confirmed on fresh seeds.

:mod:`~digitcnn.tuning.space` reads the ``[space]`` of a tune file, :mod:`~digitcnn.tuning.study`
runs the trials (Optuna, the ``digitcnn[tune]`` extra) on this machine and
:mod:`~digitcnn.tuning.distributed` as Ray tasks, :mod:`~digitcnn.tuning.confirm` reruns
the winner on fresh seeds, :mod:`~digitcnn.tuning.outputs` and :mod:`~digitcnn.tuning.report`
write the study folder, and :mod:`~digitcnn.tuning.runner` ties them together
(:func:`tune_kfold`); the command line is ``python -m digitcnn.tune``. The public names are
imported lazily: importing the package imports neither Optuna nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from digitcnn._lazy import lazy_exports

if TYPE_CHECKING:  # the lazily imported names, for type checkers and IDEs
    from digitcnn.tuning.runner import TuneResult as TuneResult
    from digitcnn.tuning.runner import tune_kfold as tune_kfold
    from digitcnn.tuning.space import SearchSpace as SearchSpace
    from digitcnn.tuning.space import load_tune_file as load_tune_file
    from digitcnn.tuning.study import TuneConfig as TuneConfig

_EXPORTS = {
    "SearchSpace": "space",
    "load_tune_file": "space",
    "TuneConfig": "study",
    "TuneResult": "runner",
    "tune_kfold": "runner",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
