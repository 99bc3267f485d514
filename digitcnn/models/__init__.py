"""Digit classifiers by name (:mod:`._registry`), the library's models (:mod:`._zoo`) and
fold-batched models for fold-parallel training (:mod:`.stacked`).

    >>> from digitcnn.models import create_model, list_models
    >>> model = create_model("s5", input_shape=(1, 8, 8), num_classes=10)

The names are imported lazily (PEP 562): ``python -m digitcnn.models --help`` imports this
package before its ``__main__``, and must answer without importing torch. Any name taken from
here first imports :mod:`._zoo`, so the library's models are registered whatever is asked for.
"""

from __future__ import annotations

from digitcnn._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        [
            "ModelSpec",
            "register_model",
            "create_model",
            "list_models",
            "model_spec",
            "count_parameters",
            "flat_features",
            "initialize",
            "INITS",
            "describe_models",
            "format_models",
        ],
        "_registry",
    ),
    **dict.fromkeys(
        ["Dropout", "s1", "s2", "s3", "s4", "s5", "digitnet", "digitnet_small"], "_zoo"
    ),
    **dict.fromkeys(
        ["FoldLinear", "FoldFlatten", "stack_folds", "fold_state", "load_fold_state"], "stacked"
    ),
    "main": "__main__",
}

# any name first imports _zoo, whose import registers the library's models
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, first="_zoo")
