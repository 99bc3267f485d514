"""Cross-validation: ``splits`` (the folds: a scheme's name or any scikit-learn splitter),
``folds`` (one fold's data, model and training), ``executors`` (folds in turn, in fold
processes or fold-parallel), ``distributed`` (folds as Ray tasks), ``runner`` (``run_kfold``:
plan, train, collect, resume) and ``baselines`` (SVC and kNN on a run's folds).

The public names below are imported lazily: importing the package imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from digitcnn._lazy import lazy_exports

if TYPE_CHECKING:  # the lazily imported names, for type checkers and IDEs
    from digitcnn.cv.baselines import run_baseline as run_baseline
    from digitcnn.cv.distributed import RayExecutor as RayExecutor
    from digitcnn.cv.runner import load_for_config as load_for_config
    from digitcnn.cv.runner import run_kfold as run_kfold
    from digitcnn.cv.splits import Splitter as Splitter
    from digitcnn.cv.splits import make_splits as make_splits
    from digitcnn.cv.splits import splits_sha256 as splits_sha256

_EXPORTS = {
    "run_kfold": "runner",
    "load_for_config": "runner",
    "make_splits": "splits",
    "splits_sha256": "splits",
    "Splitter": "splits",
    "run_baseline": "baselines",
    "RayExecutor": "distributed",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
