"""How a run's rows are split into folds: sklearn's KFold/StratifiedKFold, a stratified
holdout, the original train/test split, or every row (``--full``), and the fingerprint that
tells whether two runs validated on the same rows."""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Sequence

import numpy as np

from digitcnn.config import RunConfig
from digitcnn.errors import ConfigError

if TYPE_CHECKING:
    from digitcnn.datasets.base import DigitDataset

__all__ = ["make_splits", "holdout_split", "splits_sha256"]


def make_splits(dataset: DigitDataset, config: RunConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_indices, val_indices) per fold, from sklearn's splitters or the original split."""
    n = len(dataset)
    if config.cv == "full":
        return [(np.arange(n), np.arange(0))]
    if config.cv == "holdout":
        return [holdout_split(dataset.labels.numpy(), config.val_fraction, config.random_state)]
    if config.cv == "writers":
        if dataset.groups is None or not {"train", "test"} <= set(np.unique(dataset.groups)):
            raise ConfigError(f"--cv writers needs the original train/test split of "
                              f"{dataset.name!r}, and this copy ({dataset.source}) does not have "
                              "it; use the original files (optdigits.tra and .tes) with --split all")
        return [(np.flatnonzero(dataset.groups == "train"), np.flatnonzero(dataset.groups == "test"))]
    if config.folds > n:
        raise ConfigError(f"--folds {config.folds} is more than the {n} rows of {dataset.name!r}; "
                          f"use at most {n} folds")
    from sklearn.model_selection import KFold, StratifiedKFold

    random_state = config.random_state if config.shuffle else None
    if config.cv == "stratified":
        counts = np.bincount(dataset.labels.numpy(), minlength=len(dataset.classes))
        smallest = int(counts[counts > 0].min())
        if config.folds > smallest:
            raise ConfigError(f"--cv stratified with --folds {config.folds}: the rarest class has "
                              f"only {smallest} rows; use at most {smallest} folds or --cv kfold")
        splitter = StratifiedKFold(config.folds, shuffle=config.shuffle, random_state=random_state)
        return list(splitter.split(np.zeros(n), dataset.labels.numpy()))
    splitter = KFold(config.folds, shuffle=config.shuffle, random_state=random_state)
    return list(splitter.split(np.zeros(n)))


def holdout_split(labels: np.ndarray, val_fraction: float,
                  random_state: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_rows, val_rows) of one shuffled holdout split of (N,) int ``labels``,
    stratified when the classes allow it."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    classes = np.unique(labels)
    val_rows = int(np.ceil(val_fraction * n))
    # sklearn can only stratify when every class has 2 rows and each side can hold one
    # row of every class; a tiny or skewed set is split at random instead.
    can_stratify = (np.bincount(labels)[classes].min() >= 2
                    and len(classes) <= min(val_rows, n - val_rows))
    stratify = labels if can_stratify else None
    train_rows, val_rows = train_test_split(
        np.arange(n), test_size=val_fraction, shuffle=True, random_state=random_state,
        stratify=stratify)
    return np.sort(train_rows), np.sort(val_rows)


def splits_sha256(splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> str:
    """A fingerprint of the fold assignment: equal hashes mean the same validation rows."""
    digest = hashlib.sha256()
    for _, val in splits:
        digest.update(np.asarray(val, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()

