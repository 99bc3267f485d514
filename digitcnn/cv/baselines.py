"""Classical baselines on exactly the folds of a K-fold run: sklearn's SVC and kNN.

The bar a digit CNN must clear (SPEC, measured on UCI's 4 folds): ``SVC(C=10)`` (RBF) on
features/16 gets 99.18%, kNN (k=3) 98.61%. A baseline run uses the same fold splitter, rows
and result files as :func:`digitcnn.cv.runner.run_kfold`, so its per-fold accuracies pair with a
CNN run's for the corrected t-test (``python -m digitcnn.compare``).

Python API::

    result = digitcnn.run_baseline(data, digitcnn.RunConfig(folds=4), estimator="svm")

CLI: ``python -m digitcnn.baselines --estimator svm`` (:mod:`digitcnn.commands.baselines`).
"""

from __future__ import annotations

import math
import numbers
import time
from typing import TYPE_CHECKING

import numpy as np

from digitcnn.config import RunConfig
from digitcnn.cv.splits import make_splits, splits_sha256
from digitcnn.errors import ConfigError
from digitcnn.results import FoldResult, KFoldResult
from digitcnn.training.runtime import library_versions

if TYPE_CHECKING:  # the data readers import torch: not needed for --help
    from digitcnn.datasets.base import DigitDataset

__all__ = [
    "ESTIMATORS",
    "make_estimator",
    "check_baseline_settings",
    "baseline_scores",
    "run_baseline",
]

ESTIMATORS = ("svm", "knn")


def make_estimator(name: str, c: float = 10.0, neighbors: int = 3):
    """``svm``: ``SVC(C=c)`` with an RBF kernel, as SPEC ran it; ``knn``:
    ``KNeighborsClassifier(neighbors)``."""
    if name == "svm":
        from sklearn.svm import SVC

        return SVC(C=c, kernel="rbf", decision_function_shape="ovr")
    if name == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        return KNeighborsClassifier(n_neighbors=neighbors)
    raise ConfigError(f"unknown estimator {name!r}; choose one of: {', '.join(ESTIMATORS)}")


def check_baseline_settings(c: float, neighbors: int) -> None:
    """``c`` a positive finite number, ``neighbors`` a whole number of at least 1 (the upper
    bound, the training rows, is checked once the folds are known); else ConfigError."""
    if isinstance(c, bool) or not isinstance(c, numbers.Real) or not (math.isfinite(c) and c > 0):
        raise ConfigError(
            f"--C {c!r} must be a positive finite number (the SVC's "
            "regularisation strength; SPEC used 10)"
        )
    if isinstance(neighbors, bool) or not isinstance(neighbors, numbers.Integral) or neighbors < 1:
        raise ConfigError(
            f"--neighbors {neighbors!r} must be a whole number of at least 1 (kNN's k; SPEC used 3)"
        )


def baseline_scores(estimator, features: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C) float32 log-scores whose argmax is the estimator's prediction.

    kNN gives class probabilities (clipped at 1e-6 before the log: a class no neighbour voted
    for has probability 0). The SVC gives one-vs-rest decision values (its one-vs-one votes
    plus a confidence below one vote), not probabilities; their log-softmax ranks rows as the
    SVC does, which is what ROC and PR curves need, but it is not calibrated, so a baseline's
    loss is left undefined. In a tied vote the SVC predicts the lowest tied class while the
    decision values may favour another; there the predicted class's score is raised just
    above the top, so that the stored scores always give the SVC's own predictions.
    """
    classes = estimator.classes_
    if hasattr(estimator, "decision_function"):
        decision = estimator.decision_function(features).astype(np.float64)
        predicted = np.searchsorted(classes, estimator.predict(features))
        rows = np.arange(len(features))
        top = decision.max(axis=1)
        tied = decision[rows, predicted] < top
        decision[rows[tied], predicted[tied]] = top[tied] + 1e-6
        shifted = decision - decision.max(axis=1, keepdims=True)
        known = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    else:
        known = np.log(np.clip(estimator.predict_proba(features), 1e-6, 1.0))
    scores = np.full((len(features), num_classes), np.log(1e-6), dtype=np.float64)
    scores[:, classes] = known  # a class absent from the training fold keeps the floor
    return scores.astype(np.float32)


def run_baseline(
    dataset: DigitDataset,
    config: RunConfig | None = None,
    estimator: str = "svm",
    c: float = 10.0,
    neighbors: int = 3,
) -> KFoldResult:
    """Fit ``estimator`` on each training fold of ``config``'s splits; pixels divided by the
    dataset's maximum (features/16 on UCI, /255 on MNIST). Returns a :class:`KFoldResult`
    with the same folds, counts and out-of-fold scores as a CNN run on the same config."""
    config = RunConfig() if config is None else config
    if dataset.labels is None:
        raise ConfigError(f"{dataset.name}: the dataset has no labels; a baseline needs them")
    make_estimator(estimator, c, neighbors)  # an unknown name fails before any work
    check_baseline_settings(c, neighbors)
    splits = make_splits(dataset, config)
    smallest = min(len(train_rows) for train_rows, _ in splits)
    if estimator == "knn" and neighbors > smallest:
        raise ConfigError(
            f"--neighbors {neighbors} is more than the {smallest} rows of the "
            f"smallest training fold; choose at most {smallest} (SPEC used 3)"
        )
    features = dataset.images.reshape(len(dataset), -1).numpy().astype(np.float64)
    features /= dataset.max_value
    labels = dataset.labels.numpy()
    num_classes = len(dataset.classes)
    started = time.perf_counter()
    folds = []
    for fold, (train_rows, val_rows) in enumerate(splits):
        fold_started = time.perf_counter()
        model = make_estimator(estimator, c, neighbors).fit(
            features[train_rows], labels[train_rows]
        )
        scores = baseline_scores(model, features[val_rows], num_classes)
        predicted = scores.argmax(axis=1)
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(confusion, (labels[val_rows], predicted), 1)
        folds.append(
            FoldResult(
                fold=fold,
                n_train=len(train_rows),
                n_val=len(val_rows),
                correct=int(np.trace(confusion)),
                loss=float("nan"),
                confusion=confusion,
                train_loss=[],
                val_loss=[],
                val_accuracy=[],
                lrs=[],
                lr=float("nan"),
                seed=config.seed,
                val_indices=np.asarray(val_rows),
                wall_s=time.perf_counter() - fold_started,
                val_log_probs=scores,
            )
        )
    settings = {
        "estimator": estimator,
        **({"C": c, "kernel": "rbf"} if estimator == "svm" else {"n_neighbors": neighbors}),
        "features": f"pixels / {dataset.max_value}",
    }
    return KFoldResult(
        config=config.replace(model=estimator),
        dataset=dataset.info(),
        folds=folds,
        device="cpu",
        versions=library_versions(),
        splits_sha256=splits_sha256(splits),
        wall_s=time.perf_counter() - started,
        num_classes=num_classes,
        labels=labels,
        extra={"baseline": settings},
    )
