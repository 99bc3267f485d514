"""How a run's rows are split into folds: sklearn's KFold/StratifiedKFold, a stratified
holdout, the original train/test split, or every row (``--full``), and the fingerprint that
tells whether two runs validated on the same rows."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from digitcnn.config import RunConfig
from digitcnn.errors import ConfigError

if TYPE_CHECKING:
    from digitcnn.datasets.base import DigitDataset

__all__ = ["Splitter", "make_splits", "holdout_split", "splits_sha256"]


class Splitter(Protocol):
    """What :func:`make_splits` takes besides a scheme's name: any scikit-learn splitter
    (``KFold``, ``StratifiedKFold``, ``GroupKFold``, any ``BaseCrossValidator``)."""

    def split(self, X: Any, y: Any = None, groups: Any = None) -> Iterator[tuple[Any, Any]]:
        """(train rows, validation rows) of each fold, as scikit-learn's splitters."""


def make_splits(
    dataset: DigitDataset, config: RunConfig | str = "kfold", splitter: Splitter | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_indices, val_indices) per fold of ``dataset``.

    ``splitter``: a scikit-learn splitter object, given the rows, their labels and the
    dataset's groups (writers, or the original split) where it has them. Without one, the
    scheme ``config.cv`` names (or ``config`` itself, a scheme's name with the default
    settings): sklearn's KFold/StratifiedKFold, a holdout, the original split, or every row.
    """
    if splitter is not None:
        return _split_with(splitter, dataset)
    if isinstance(config, str):
        config = RunConfig(cv=config)
    n = len(dataset)
    if config.cv == "full":
        return [(np.arange(n), np.arange(0))]
    if config.cv == "holdout":
        return [holdout_split(dataset.targets().numpy(), config.val_fraction, config.random_state)]
    if config.cv == "writers":
        if dataset.groups is None or not {"train", "test"} <= set(np.unique(dataset.groups)):
            raise ConfigError(
                f"--cv writers needs the original train/test split of "
                f"{dataset.name!r}, and this copy ({dataset.source}) does not have "
                "it; use the original files (optdigits.tra and .tes) with --split all"
            )
        return [
            (np.flatnonzero(dataset.groups == "train"), np.flatnonzero(dataset.groups == "test"))
        ]
    if config.folds > n:
        raise ConfigError(
            f"--folds {config.folds} is more than the {n} rows of {dataset.name!r}; "
            f"use at most {n} folds"
        )
    from sklearn.model_selection import KFold, StratifiedKFold

    random_state = config.random_state if config.shuffle else None
    if config.cv == "stratified":
        counts = np.bincount(dataset.targets().numpy(), minlength=len(dataset.classes))
        smallest = int(counts[counts > 0].min())
        if config.folds > smallest:
            raise ConfigError(
                f"--cv stratified with --folds {config.folds}: the rarest class has "
                f"only {smallest} rows; use at most {smallest} folds or --cv kfold"
            )
        splitter = StratifiedKFold(config.folds, shuffle=config.shuffle, random_state=random_state)
        return list(splitter.split(np.zeros(n), dataset.targets().numpy()))
    splitter = KFold(config.folds, shuffle=config.shuffle, random_state=random_state)
    return list(splitter.split(np.zeros(n)))


def _split_with(splitter: Splitter, dataset: DigitDataset) -> list[tuple[np.ndarray, np.ndarray]]:
    if not callable(getattr(splitter, "split", None)):
        raise ConfigError(
            f"splitter {splitter!r} has no split() method; pass a scikit-learn "
            "splitter such as StratifiedKFold(4, shuffle=True, random_state=0)"
        )
    labels = None if dataset.labels is None else dataset.targets().numpy()
    rows = np.zeros((len(dataset), 1))
    try:
        try:
            folds = list(splitter.split(rows, labels))
        except ValueError as err:  # a group splitter: given the groups only then, since the
            if "groups" not in str(err) or dataset.groups is None:  # others warn about them
                raise
            folds = list(splitter.split(rows, labels, dataset.groups))
        splits = [
            (np.asarray(train, dtype=np.int64), np.asarray(val, dtype=np.int64))
            for train, val in folds
        ]
    except ValueError as err:
        raise ConfigError(
            f"splitter {splitter!r} cannot split {dataset.name!r} ({len(dataset)} rows): {err}"
        ) from None
    if not splits:
        raise ConfigError(f"splitter {splitter!r} gave no folds for {dataset.name!r}")
    return splits


def holdout_split(
    labels: np.ndarray, val_fraction: float, random_state: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_rows, val_rows) of one shuffled holdout split of (N,) int ``labels``,
    stratified when the classes allow it."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    classes = np.unique(labels)
    val_rows = int(np.ceil(val_fraction * n))
    # sklearn can only stratify when every class has 2 rows and each side can hold one
    # row of every class; a tiny or skewed set is split at random instead.
    can_stratify = np.bincount(labels)[classes].min() >= 2 and len(classes) <= min(
        val_rows, n - val_rows
    )
    stratify = labels if can_stratify else None
    train_rows, val_rows = train_test_split(
        np.arange(n),
        test_size=val_fraction,
        shuffle=True,
        random_state=random_state,
        stratify=stratify,
    )
    return np.sort(train_rows), np.sort(val_rows)


def splits_sha256(splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> str:
    """A fingerprint of the fold assignment: equal hashes mean the same validation rows."""
    digest = hashlib.sha256()
    for _, val in splits:
        digest.update(np.asarray(val, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()
