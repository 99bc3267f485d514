"""Classical baselines on exactly the folds of a K-fold run: sklearn's SVC and kNN.

The bar a digit CNN must clear (SPEC, measured on UCI's 4 folds): ``SVC(C=10)`` (RBF) on
features/16 gets 99.18%, kNN (k=3) 98.61%. A baseline run uses the same fold splitter, rows
and result files as :func:`digitcnn.cv.runner.run_kfold`, so its per-fold accuracies pair with a
CNN run's for the corrected t-test (``python -m digitcnn.compare``).

Python API::

    result = digitcnn.run_baseline(data, digitcnn.RunConfig(folds=4), estimator="svm")

CLI: ``python -m digitcnn.baselines --estimator svm --data-dir ../shared/data/optdigits``.
"""
from __future__ import annotations

import math
import numbers
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from digitcnn._io import read_json
from digitcnn.cli import RUN_FLAGS, default_out_dir, resumed_config
from digitcnn.config import BASELINE_SETTINGS, RunConfig, config_from_args
from digitcnn.errors import ConfigError, cli_entry, exit_cli
from digitcnn.cv.splits import make_splits, splits_sha256
from digitcnn.reporting.rundir import check_out_dir, claim_out_dir
from digitcnn.reporting.runcontrol import (given_settings, refuse_changed_settings,
                                           sigterm_as_interrupt)
from digitcnn.reporting.runfolder import finish_run, write_run_start
from digitcnn.results import FoldResult, KFoldResult
from digitcnn.training.runtime import library_versions

if TYPE_CHECKING:  # the data readers import torch: not needed for --help
    from digitcnn.datasets.base import DigitDataset

__all__ = ["ESTIMATORS", "make_estimator", "check_baseline_settings", "baseline_scores",
           "run_baseline", "main"]

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
        raise ConfigError(f"--C {c!r} must be a positive finite number (the SVC's "
                          "regularisation strength; SPEC used 10)")
    if isinstance(neighbors, bool) or not isinstance(neighbors, numbers.Integral) \
            or neighbors < 1:
        raise ConfigError(f"--neighbors {neighbors!r} must be a whole number of at least 1 "
                          "(kNN's k; SPEC used 3)")


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


def run_baseline(dataset: DigitDataset, config: RunConfig = RunConfig(),
                 estimator: str = "svm", c: float = 10.0, neighbors: int = 3) -> KFoldResult:
    """Fit ``estimator`` on each training fold of ``config``'s splits; pixels divided by the
    dataset's maximum (features/16 on UCI, /255 on MNIST). Returns a :class:`KFoldResult`
    with the same folds, counts and out-of-fold scores as a CNN run on the same config."""
    if dataset.labels is None:
        raise ConfigError(f"{dataset.name}: the dataset has no labels; a baseline needs them")
    make_estimator(estimator, c, neighbors)  # an unknown name fails before any work
    check_baseline_settings(c, neighbors)
    splits = make_splits(dataset, config)
    smallest = min(len(train_rows) for train_rows, _ in splits)
    if estimator == "knn" and neighbors > smallest:
        raise ConfigError(f"--neighbors {neighbors} is more than the {smallest} rows of the "
                          f"smallest training fold; choose at most {smallest} (SPEC used 3)")
    features = dataset.images.reshape(len(dataset), -1).numpy().astype(np.float64)
    features /= dataset.max_value
    labels = dataset.labels.numpy()
    num_classes = len(dataset.classes)
    started = time.perf_counter()
    folds = []
    for fold, (train_rows, val_rows) in enumerate(splits):
        fold_started = time.perf_counter()
        model = make_estimator(estimator, c, neighbors).fit(features[train_rows],
                                                             labels[train_rows])
        scores = baseline_scores(model, features[val_rows], num_classes)
        predicted = scores.argmax(axis=1)
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(confusion, (labels[val_rows], predicted), 1)
        folds.append(FoldResult(
            fold=fold, n_train=len(train_rows), n_val=len(val_rows),
            correct=int(np.trace(confusion)), loss=float("nan"), confusion=confusion,
            train_loss=[], val_loss=[], val_accuracy=[], lrs=[], lr=float("nan"),
            seed=config.seed, val_indices=np.asarray(val_rows),
            wall_s=time.perf_counter() - fold_started, val_log_probs=scores))
    settings = {"estimator": estimator, **({"C": c, "kernel": "rbf"}
                                           if estimator == "svm" else {"n_neighbors": neighbors}),
                "features": f"pixels / {dataset.max_value}"}
    return KFoldResult(config=config.replace(model=estimator), dataset=dataset.info(),
                       folds=folds, device="cpu", versions=library_versions(),
                       splits_sha256=splits_sha256(splits),
                       wall_s=time.perf_counter() - started, num_classes=num_classes,
                       labels=labels, extra={"baseline": settings})


PROG = "python -m digitcnn.baselines"
# The baseline's own flags, besides the run settings of BASELINE_SETTINGS and RUN_FLAGS.
ESTIMATOR_ARGUMENTS = [
    (("--estimator",), {"choices": ESTIMATORS, "default": "svm",
                        "help": "svm: SVC with an RBF kernel; knn: k nearest neighbours"}),
    (("--C",), {"dest": "c", "type": float, "default": 10.0, "help": "the SVC's C"}),
    (("--neighbors",), {"type": int, "default": 3, "help": "kNN's k"}),
    *RUN_FLAGS]
# the stored name (in config.json) of each of those flags' settings
_STORED_NAMES = {"estimator": "estimator", "c": "C", "neighbors": "n_neighbors"}


def _excluded() -> list[str]:
    return [name for name in RunConfig.__dataclass_fields__ if name not in BASELINE_SETTINGS]


def _resumed(argv: Sequence[str] | None, extras) -> tuple[RunConfig, str, float, int]:
    """(config, estimator, C, k) of the baseline run being resumed in ``extras.resume``; a
    setting given on the command line that differs from the run's is refused."""
    config = resumed_config(argv, PROG, "digitcnn.baselines", extras.resume, extras.overwrite,
                            exclude=_excluded(), extra_arguments=ESTIMATOR_ARGUMENTS)
    stored = read_json(Path(extras.resume) / "config.json", "start the run again with "
                       "--overwrite")
    given = given_settings(argv, PROG, _excluded(), ESTIMATOR_ARGUMENTS,
                           keep=tuple(_STORED_NAMES))
    refuse_changed_settings({key: stored.get(key) for key in _STORED_NAMES.values()},
                            {_STORED_NAMES[k]: v for k, v in given.items() if k in _STORED_NAMES},
                            Path(extras.resume))
    return (config, stored.get("estimator", config.model), stored.get("C", extras.c),
            stored.get("n_neighbors", extras.neighbors))


@cli_entry("digitcnn.baselines")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m digitcnn.baselines``: an sklearn baseline on a K-fold run's folds."""
    config, extras = config_from_args(
        argv, PROG,
        "Cross-validate an sklearn baseline (SVC or kNN) on the folds digitcnn.kfold uses.",
        exclude=_excluded(), extra_arguments=ESTIMATOR_ARGUMENTS)
    estimator, c, neighbors = extras.estimator, extras.c, extras.neighbors
    resume = extras.resume is not None
    if resume:
        config, estimator, c, neighbors = _resumed(argv, extras)
    config = config.replace(model=estimator)
    check_baseline_settings(c, neighbors)  # before the data are read
    out = Path(config.out) if config.out else default_out_dir(config)
    with sigterm_as_interrupt() as received:
        check_out_dir(out, "digitcnn.baselines", resume, extras.overwrite)
        make_estimator(estimator, c, neighbors)  # an unknown name fails before any work
        # Imported here, not at the top: the data readers import torch, which --help must not.
        from digitcnn.cv.command import load_quietly

        dataset = load_quietly(config, "digitcnn.baselines")
        try:
            with claim_out_dir(out, "digitcnn.baselines", "digitcnn.baselines", resume,
                               extras.overwrite):
                result = run_baseline(dataset, config, estimator, c, neighbors)
                write_run_start(out, config, result.splits_sha256, result.versions,
                                [(f.fold, f.seed, f.val_indices) for f in result.folds],
                                command="digitcnn.baselines", extra=result.extra["baseline"])
                finish_run(result, out, config, dataset, "results")
        except KeyboardInterrupt as interrupt:
            hint = (f"; start it again with: {PROG} --resume {out}"
                    if (out / "config.json").is_file() and not (out / "metrics.json").is_file()
                    else "")
            print(f"digitcnn.baselines: interrupted{hint}", file=sys.stderr)
            return received.exit_code(interrupt)
    return 0


if __name__ == "__main__":
    exit_cli(main())
