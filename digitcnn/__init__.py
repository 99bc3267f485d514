"""digitcnn: reproducible, fast K-fold experiments with handwritten-digit CNNs.

The public API is imported lazily (PEP 562), so that ``python -m digitcnn.kfold`` does not
import its own module twice and ``import digitcnn`` stays quick; the ``TYPE_CHECKING`` imports
below show the same names to type checkers and IDEs.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from digitcnn.config import RunConfig
    from digitcnn.cv.baselines import run_baseline
    from digitcnn.cv.runner import run_kfold
    from digitcnn.cv.splits import make_splits
    from digitcnn.datasets.base import DigitDataset, list_datasets, load, register_dataset
    from digitcnn.errors import ConfigError, DataError, DigitCNNError, ModelError
    from digitcnn.estimator import DigitClassifier
    from digitcnn.metrics import (ConfusionAccumulator, accuracy_from_confusion,
                                  normalize_confusion)
    from digitcnn.models import count_parameters, create_model, list_models, register_model
    from digitcnn.results import FoldResult, KFoldResult
    from digitcnn.runstore.files import save_run
    from digitcnn.settings import SettingError
    from digitcnn.training.callbacks import Callback, EpochEnd
    from digitcnn.training.loop import fit
    from digitcnn.training.recipe import Recipe

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "config", "Recipe": "training.recipe", "fit": "training.loop",
    "Callback": "training.callbacks", "EpochEnd": "training.callbacks",
    "DigitDataset": "datasets.base", "list_datasets": "datasets.base", "load": "datasets.base",
    "register_dataset": "datasets.base",
    "ConfigError": "errors", "DataError": "errors", "DigitCNNError": "errors",
    "ModelError": "errors", "SettingError": "settings",
    "DigitClassifier": "estimator",
    "make_splits": "cv.splits", "run_kfold": "cv.runner", "run_baseline": "cv.baselines",
    "ConfusionAccumulator": "metrics", "accuracy_from_confusion": "metrics",
    "normalize_confusion": "metrics",
    "count_parameters": "models", "create_model": "models", "list_models": "models",
    "register_model": "models",
    "FoldResult": "results", "KFoldResult": "results", "save_run": "runstore.files",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'digitcnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
