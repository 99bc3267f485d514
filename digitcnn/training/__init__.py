"""Training one model, or all folds at once, on tensors: no run configuration needed.

``fit(model, data, recipe)`` trains a model on a :class:`FoldTensors` (device tensors) with a
:class:`Recipe` (epochs, optimizer, schedule, augmentation, early stopping); callbacks
(:class:`Callback`) hear every epoch and may stop the fold. The names are imported lazily,
so that ``import digitcnn.training.recipe`` (which the torch-free config uses) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from digitcnn._lazy import lazy_exports

if TYPE_CHECKING:  # the lazily imported names, for type checkers and IDEs
    from digitcnn.training._steps import FoldTensors as FoldTensors
    from digitcnn.training.callbacks import Callback as Callback
    from digitcnn.training.callbacks import EpochEnd as EpochEnd
    from digitcnn.training.loop import FitOutcome as FitOutcome
    from digitcnn.training.loop import fit as fit
    from digitcnn.training.recipe import (
        EarlyStopping as EarlyStopping,
    )
    from digitcnn.training.recipe import (
        Recipe as Recipe,
    )
    from digitcnn.training.recipe import (
        make_optimizer as make_optimizer,
    )

_EXPORTS = {
    "fit": "loop",
    "FitOutcome": "loop",
    "FoldTensors": "_steps",
    "Recipe": "recipe",
    "make_optimizer": "recipe",
    "EarlyStopping": "recipe",
    "Callback": "callbacks",
    "EpochEnd": "callbacks",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
