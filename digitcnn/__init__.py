"""digitcnn: reproducible, fast K-fold experiments with handwritten-digit CNNs.

The public API is imported lazily (PEP 562), so that ``python -m digitcnn.kfold`` does not
import its own module twice and ``import digitcnn`` stays quick; the ``TYPE_CHECKING`` imports
below show the same names to type checkers and IDEs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from digitcnn._lazy import lazy_exports

if TYPE_CHECKING:  # the lazily imported names, for type checkers and IDEs
    from digitcnn.config import RunConfig as RunConfig
    from digitcnn.cv.baselines import run_baseline as run_baseline
    from digitcnn.cv.runner import run_kfold as run_kfold
    from digitcnn.cv.splits import make_splits as make_splits
    from digitcnn.datasets.base import (
        DigitDataset as DigitDataset,
    )
    from digitcnn.datasets.base import (
        list_datasets as list_datasets,
    )
    from digitcnn.datasets.base import (
        load as load,
    )
    from digitcnn.datasets.base import (
        register_dataset as register_dataset,
    )
    from digitcnn.errors import (
        ConfigError as ConfigError,
    )
    from digitcnn.errors import (
        DataError as DataError,
    )
    from digitcnn.errors import (
        DigitCNNError as DigitCNNError,
    )
    from digitcnn.errors import (
        ModelError as ModelError,
    )
    from digitcnn.estimator import DigitClassifier as DigitClassifier
    from digitcnn.metrics import (
        ConfusionAccumulator as ConfusionAccumulator,
    )
    from digitcnn.metrics import (
        accuracy_from_confusion as accuracy_from_confusion,
    )
    from digitcnn.metrics import (
        normalize_confusion as normalize_confusion,
    )
    from digitcnn.models import (
        count_parameters as count_parameters,
    )
    from digitcnn.models import (
        create_model as create_model,
    )
    from digitcnn.models import (
        list_models as list_models,
    )
    from digitcnn.models import (
        register_model as register_model,
    )
    from digitcnn.results import FoldResult as FoldResult
    from digitcnn.results import KFoldResult as KFoldResult
    from digitcnn.runstore.files import save_run as save_run
    from digitcnn.settings import SettingError as SettingError
    from digitcnn.training.callbacks import Callback as Callback
    from digitcnn.training.callbacks import EpochEnd as EpochEnd
    from digitcnn.training.loop import fit as fit
    from digitcnn.training.recipe import Recipe as Recipe
    from digitcnn.tuning.runner import tune_kfold as tune_kfold

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "config",
    "Recipe": "training.recipe",
    "fit": "training.loop",
    "Callback": "training.callbacks",
    "EpochEnd": "training.callbacks",
    "DigitDataset": "datasets.base",
    "list_datasets": "datasets.base",
    "load": "datasets.base",
    "register_dataset": "datasets.base",
    "ConfigError": "errors",
    "DataError": "errors",
    "DigitCNNError": "errors",
    "ModelError": "errors",
    "SettingError": "settings",
    "DigitClassifier": "estimator",
    "make_splits": "cv.splits",
    "run_kfold": "cv.runner",
    "run_baseline": "cv.baselines",
    "ConfusionAccumulator": "metrics",
    "accuracy_from_confusion": "metrics",
    "normalize_confusion": "metrics",
    "count_parameters": "models",
    "create_model": "models",
    "list_models": "models",
    "register_model": "models",
    "FoldResult": "results",
    "KFoldResult": "results",
    "save_run": "runstore.files",
    "tune_kfold": "tuning.runner",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, extra=["__version__"])
