"""Digit datasets: one dataset type, a registry of adapters, and one ``load`` entry point.

Every adapter returns a :class:`DigitDataset` holding uint8 images of shape (N, 1, H, W) and
int64 labels of shape (N,), with the dataset's name, where it came from and the SHA-256 of
the files actually read. Images stay uint8 until a run scales them, so that statistics can be
fitted on a training fold alone and a GPU can hold the raw data compactly.

The built-in adapters (:mod:`~digitcnn.datasets.uci`, :mod:`~digitcnn.datasets.mnist`,
:mod:`~digitcnn.datasets.kaggle`, :mod:`~digitcnn.datasets.images`) register themselves with
:func:`register_dataset` when imported; ``digitcnn/datasets/__init__.py`` imports them, so
importing anything from ``digitcnn.datasets`` makes them all available to :func:`load`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from digitcnn.errors import DataError

__all__ = [
    "DigitDataset",
    "load",
    "list_datasets",
    "register_dataset",
    "resolve_data_dir",
    "check_split",
    "DATA_DIR_ENV",
    "SPLITS",
]

DATA_DIR_ENV = "DIGITCNN_DATA_DIR"
SPLITS = ("train", "test", "all")


@dataclass(frozen=True, eq=False)
class DigitDataset:
    """A labelled (or unlabelled) set of single-channel digit images.

    Attributes:
        images: uint8 tensor of shape (N, 1, H, W); ink is bright, background is 0.
        labels: int64 tensor of shape (N,) with values in ``classes``, or None when the set is
            for prediction only (e.g. Kaggle's ``test.csv``).
        name: the adapter's name (``"uci"``, ``"mnist"``, ...).
        source: where the rows came from, in words a person can follow (paths or a URL).
        sha256: file name -> SHA-256 of each file actually read.
        max_value: the largest value a pixel can take (16 for optdigits, 255 for MNIST).
        groups: optional (N,) array naming each row's original split (``"train"``/``"test"``);
            used for the writer-disjoint evaluation.
        files: optional (N,) array of the file each row came from (own images).
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    name: str
    source: str
    sha256: Mapping[str, str] = field(default_factory=dict)
    max_value: int = 255
    groups: np.ndarray | None = None
    files: np.ndarray | None = None
    classes: tuple[int, ...] = tuple(range(10))

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[1] != 1:
            raise DataError(
                f"{self.name}: images must have shape (N, 1, H, W), got "
                f"{tuple(self.images.shape)}; reshape them before building the dataset"
            )
        if self.images.dtype != torch.uint8:
            raise DataError(
                f"{self.name}: images must be uint8, got {self.images.dtype}; "
                "convert with .to(torch.uint8) after checking the value range"
            )
        if self.labels is not None:
            if self.labels.shape != (len(self.images),):
                raise DataError(
                    f"{self.name}: {len(self.images)} images but labels of shape "
                    f"{tuple(self.labels.shape)}; give one label per image"
                )
            if self.labels.dtype != torch.int64:
                raise DataError(f"{self.name}: labels must be int64, got {self.labels.dtype}")
            if len(self.labels) and (
                int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)
            ):
                bad = int(((self.labels < 0) | (self.labels >= len(self.classes))).nonzero()[0])
                raise DataError(
                    f"{self.name}: label {int(self.labels[bad])} at row {bad} is out of "
                    f"range 0..{len(self.classes) - 1}; fix that row's label"
                )
        for name in ("groups", "files"):
            column = getattr(self, name)
            if column is not None and len(column) != len(self.images):
                raise DataError(
                    f"{self.name}: {name} has {len(column)} entries for {len(self.images)} images"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def targets(self) -> torch.Tensor:
        """The (N,) int64 labels; a DataError for a set without them (a Kaggle test.csv)."""
        if self.labels is None:
            raise DataError(
                f"{self.source}: has no labels, so it can only be predicted on, not trained or "
                "cross-validated; use the labelled training file"
            )
        return self.labels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def has_labels(self) -> bool:
        """Whether every row has a label (a Kaggle ``test.csv`` has none)."""
        return self.labels is not None

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> DigitDataset:
        """The rows at ``indices``, in that order, with the same name and provenance."""
        index = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        pick = index.numpy()
        return replace(
            self,
            images=self.images[index],
            labels=None if self.labels is None else self.labels[index],
            groups=None if self.groups is None else self.groups[pick],
            files=None if self.files is None else self.files[pick],
        )

    def info(self) -> dict:
        """JSON-ready provenance: name, row count, source, checksums, input shape."""
        return {
            "name": self.name,
            "n": len(self),
            "source": self.source,
            "sha256": dict(self.sha256),
            "input_shape": list(self.input_shape),
            "max_value": self.max_value,
        }


# ----------------------------------------------------------------------------- registry

# name -> loader, or a "module:function" path imported on first use (for a user's adapter
# whose dependencies should load only when it is used).
_ADAPTERS: dict[str, str | Callable[..., DigitDataset]] = {}


def register_dataset(name: str, loader: str | Callable[..., DigitDataset] | None = None):
    """Register an adapter ``loader(data_dir=None, split="all", **options) -> DigitDataset``.

    Use as a decorator (``@register_dataset("mine")``) or call with a loader or a
    ``"module:function"`` path.
    """

    def decorate(fn):
        _ADAPTERS[name] = fn
        return fn

    return decorate(loader) if loader is not None else decorate


def list_datasets() -> list[str]:
    """Names accepted by :func:`load` and ``--dataset``."""
    return sorted(_ADAPTERS)


def load(
    name: str, data_dir: str | os.PathLike | None = None, split: str = "all", **options
) -> DigitDataset:
    """Load a dataset by name.

    Args:
        name: one of :func:`list_datasets`.
        data_dir: folder holding the dataset's files. Defaults to ``$DIGITCNN_DATA_DIR`` when
            set; otherwise each adapter tries its cache, then the network, then any bundled
            fallback.
        split: ``"train"``, ``"test"`` or ``"all"`` (default: every split present).
        **options: adapter-specific options (e.g. ``verify=False``).
    """
    if name not in _ADAPTERS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    check_split(split)
    loader = _ADAPTERS[name]
    if isinstance(loader, str):
        module_name, function_name = loader.split(":")
        loader = getattr(importlib.import_module(module_name), function_name)
    return loader(data_dir=resolve_data_dir(data_dir), split=split, **options)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir``, else ``$DIGITCNN_DATA_DIR``, else None. A given path must exist.

    Usually a folder; an adapter may also accept one of its files (e.g. Kaggle's train.csv).
    """
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.exists():
        origin = "--data-dir" if data_dir is not None else f"${DATA_DIR_ENV}"
        raise DataError(
            f"data folder {path} ({origin}) does not exist; "
            "pass the folder that holds the dataset's files"
        )
    return path


def check_split(split: str) -> None:
    """Refuse a split other than ``"train"``, ``"test"`` and ``"all"``, listing them."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
