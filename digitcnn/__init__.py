"""digitcnn: reproducible, fast K-fold experiments with handwritten-digit CNNs.

The public API is imported lazily (PEP 562), so that ``python -m digitcnn.kfold`` does not
import its own module twice and ``import digitcnn`` stays quick.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "config",
    "DigitDataset": "datasets.base", "list_datasets": "datasets.base", "load": "datasets.base",
    "register_dataset": "datasets.base",
    "ConfigError": "errors", "DataError": "errors", "DigitCNNError": "errors",
    "ModelError": "errors",
    "DigitClassifier": "estimator",
    "make_splits": "cv.splits", "run_kfold": "cv.runner", "run_baseline": "baselines",
    "ConfusionAccumulator": "metrics", "accuracy_from_confusion": "metrics",
    "normalize_confusion": "metrics",
    "count_parameters": "models", "create_model": "models", "list_models": "models",
    "register_model": "models",
    "FoldResult": "results", "KFoldResult": "results", "save_run": "reporting.runfolder",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'digitcnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
