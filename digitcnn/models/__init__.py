"""Digit classifiers by name (:mod:`._registry`), the library's models (:mod:`._zoo`) and
fold-batched models for fold-parallel training (:mod:`.stacked`).

    >>> from digitcnn.models import create_model, list_models
    >>> model = create_model("s5", input_shape=(1, 8, 8), num_classes=10)

The names are imported lazily (PEP 562): ``python -m digitcnn.models --help`` imports this
package before its ``__main__``, and must answer without importing torch. Any name taken from
here first imports :mod:`._zoo`, so the library's models are registered whatever is asked for.
"""

from __future__ import annotations

import importlib

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

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        importlib.import_module("._zoo", __name__)  # registers the library's models
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
