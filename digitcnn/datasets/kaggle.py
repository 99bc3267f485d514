"""Kaggle Digit Recognizer adapter: ``train.csv`` (labelled) and ``test.csv`` (unlabelled).

Kaggle's files are MNIST's 28x28 digits as CSV: ``train.csv`` has a header ``label,pixel0,...,
pixel783`` and 42,000 rows, ``test.csv`` the same without ``label`` and 28,000 rows. Column
``pixelX`` with X = i*28 + j is row i, column j of the image; values are 0..255, ink high, so
they map onto :class:`~digitcnn.datasets.base.DigitDataset`'s convention unchanged.

Kaggle serves the files only to a logged-in user who accepted the competition's rules, so
there is no download here: the files come from ``data_dir`` or the cache.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from digitcnn._io import cache_dir, sha256_of
from digitcnn.datasets.base import DigitDataset, check_split, register_dataset
from digitcnn.datasets.utils import read_first_line, read_int_csv
from digitcnn.errors import DataError

__all__ = [
    "load_kaggle",
    "KAGGLE_FILES",
    "KAGGLE_SIDE",
    "KAGGLE_MAX",
    "PIXEL_COLUMNS",
    "TRAIN_COLUMNS",
    "KAGGLE_HOW_TO_GET",
    "CONTAMINATION_WARNING",
]

KAGGLE_SIDE = 28
KAGGLE_MAX = 255
PIXEL_COLUMNS = tuple(f"pixel{i}" for i in range(KAGGLE_SIDE * KAGGLE_SIDE))
# The longest header line read to tell train.csv from test.csv (Kaggle's is 6.9 kB).
KAGGLE_MAX_LINE = 1 << 16
TRAIN_COLUMNS = ("label",) + PIXEL_COLUMNS
# split -> file name, as Kaggle names them.
KAGGLE_FILES = {"train": "train.csv", "test": "test.csv"}
KAGGLE_ZIP = "digit-recognizer.zip"
# Where a user may have put the files inside --data-dir, besides the folder itself.
KAGGLE_SUBFOLDERS = ("digit-recognizer", "kaggle")
KAGGLE_HOW_TO_GET = (
    "Kaggle serves these files only to logged-in users: accept the rules at "
    "https://www.kaggle.com/competitions/digit-recognizer, run `kaggle "
    "competitions download -c digit-recognizer`, unzip digit-recognizer.zip, "
    "then pass --data-dir FOLDER (or set $DIGITCNN_DATA_DIR)"
)
CONTAMINATION_WARNING = (
    "Kaggle's Digit Recognizer digits (train.csv and test.csv) are MNIST's 70,000 images "
    "reshuffled: a model trained on MNIST (its train or test part) has seen Kaggle's test "
    "images, so its Kaggle score is contaminated; train on Kaggle's train.csv alone for a "
    "submission"
)


@register_dataset("kaggle")
def load_kaggle(
    data_dir: str | os.PathLike | None = None, split: str = "all", verify: bool = True
) -> DigitDataset:
    """Kaggle Digit Recognizer: uint8 images (N, 1, 28, 28), int64 labels (N,) or None.

    Sources, in order: ``data_dir`` (the folder itself, or its ``digit-recognizer/`` or
    ``kaggle/`` subfolder; ``data_dir`` may also be the path of one of the CSV files), then the
    cache ``$XDG_CACHE_HOME/digitcnn/kaggle``. There is no network source: Kaggle needs a login.

    Every value is validated (exact header, 785 or 784 values per row, integers 0..255, labels
    0..9, nothing missing); a bad file gives a DataError naming the file, the 1-based line
    (the header is line 1) and what is wrong. The first load in a process warns
    (RuntimeWarning) that Kaggle's digits are MNIST's, see :data:`CONTAMINATION_WARNING`.

    Args:
        data_dir: folder holding ``train.csv`` and/or ``test.csv``, or one such file. A file's
            header decides what it is: ``label,pixel0,...`` is labelled, ``pixel0,...`` is not.
        split: ``"train"``: ``train.csv``, labelled (42,000 rows in Kaggle's file).
            ``"test"``: ``test.csv``, ``labels=None``, for prediction only (28,000 rows).
            ``"all"`` (default): every labelled row, which is ``train.csv``: ``test.csv`` cannot
            join it, because its rows have no labels and a dataset is labelled throughout
            (K-fold needs labels). When only ``test.csv`` is present, ``"all"`` gives it,
            unlabelled, so that a prediction run can use the default split.
        verify: accepted for the common loader signature. Kaggle publishes no checksums, so
            there is nothing official to compare with; the files are always validated in full,
            and the SHA-256 of each file read is recorded in ``sha256`` to trace a run.

    Returns:
        DigitDataset named ``"kaggle"``, ``max_value`` 255, ``source`` the file's path,
        ``sha256`` {file name: SHA-256}.
    """
    check_split(split)
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if path.is_file():
            dataset = _read_single_file(path, split)
        elif path.is_dir():
            dataset = _read_from_folder(path, split, origin="")
        else:
            raise DataError(
                f"{path}: no such file or folder; pass the folder holding Kaggle's "
                "train.csv and test.csv"
            )
    else:
        dataset = _read_from_folder(cache_dir("kaggle"), split, origin="the cache ")
    _warn_contamination_once()
    return dataset


@functools.cache
def _warn_contamination_once() -> None:
    # Cached so that it warns once per process, not once per fold or per call.
    warnings.warn(CONTAMINATION_WARNING, RuntimeWarning, stacklevel=3)


# ----------------------------------------------------------------------------- finding files


def _read_from_folder(folder: Path, split: str, origin: str) -> DigitDataset:
    found = _kaggle_files_in(folder)
    if not found:
        raise DataError(_nothing_found_message(folder, origin))
    if split == "all":
        part = "train" if "train" in found else "test"
    else:
        part = split
    if part not in found:
        raise DataError(_missing_part_message(folder, origin, part, found))
    return _read_kaggle_csv(found[part], labelled=part == "train")


def _kaggle_files_in(folder: Path) -> dict[str, Path]:
    """split -> path of the Kaggle files in the first of ``folder`` and its subfolders with any."""
    for candidate in (folder, *(folder / name for name in KAGGLE_SUBFOLDERS)):
        found = {
            part: candidate / name
            for part, name in KAGGLE_FILES.items()
            if (candidate / name).is_file()
        }
        if found:
            return found
    return {}


def _nothing_found_message(folder: Path, origin: str) -> str:
    if (folder / KAGGLE_ZIP).is_file():
        return (
            f"{folder}: found {KAGGLE_ZIP} but no train.csv or test.csv; unzip it first "
            f"(unzip {folder / KAGGLE_ZIP} -d {folder})"
        )
    if origin:
        return (
            f"no --data-dir given and no Kaggle train.csv/test.csv in {origin}({folder}); "
            + KAGGLE_HOW_TO_GET
        )
    return (
        f"{folder}: no train.csv or test.csv there or in its "
        f"{'/ or '.join(KAGGLE_SUBFOLDERS)}/ subfolder; " + KAGGLE_HOW_TO_GET
    )


def _missing_part_message(folder: Path, origin: str, part: str, found: dict[str, Path]) -> str:
    present = next(iter(found.values()))
    if part == "train":
        return (
            f"{origin}{present.parent}: no train.csv, only test.csv, which has no labels; "
            f"split='train' needs Kaggle's train.csv: " + KAGGLE_HOW_TO_GET
        )
    return (
        f"{origin}{present.parent}: no test.csv, only train.csv; split='test' needs Kaggle's "
        "test.csv (or use split='train' for the labelled rows): " + KAGGLE_HOW_TO_GET
    )


def _read_single_file(path: Path, split: str) -> DigitDataset:
    # Bounded: a file of one endless line (or binary junk) must not be read whole here.
    # Split on ';' and tabs too, so that a file saved with them is told what to fix.
    first_field = re.split(r"[,;\t]", read_first_line(path, KAGGLE_MAX_LINE), maxsplit=1)[0].strip()
    labelled = first_field == TRAIN_COLUMNS[0]
    if split == "train" and not labelled:
        raise DataError(
            f"{path}: has no label column (it is a test.csv), so split='train' "
            "cannot use it; pass Kaggle's train.csv"
        )
    if split == "test" and labelled:
        raise DataError(
            f"{path}: has a label column (it is a train.csv), but split='test' "
            "means Kaggle's unlabelled test.csv; pass that file, or use "
            "split='train' or 'all'"
        )
    return _read_kaggle_csv(path, labelled)


# ----------------------------------------------------------------------------- reading


def _read_kaggle_csv(path: Path, labelled: bool) -> DigitDataset:
    """One Kaggle CSV, validated, as a DigitDataset (labels None when ``labelled`` is False)."""
    columns = TRAIN_COLUMNS if labelled else PIXEL_COLUMNS
    # Returned as uint8: the reader checks each block's values in int64 before narrowing,
    # so no int64 copy of the whole table is ever made and nothing wraps.
    table = read_int_csv(
        path,
        len(columns),
        (0, KAGGLE_MAX),
        header=columns,
        dtype=np.uint8,
        column_ranges={0: (0, 9)} if labelled else None,
    )
    first_pixel = 1 if labelled else 0
    # Row-major pixel order (X = i*28 + j) is exactly what a C-order reshape produces.
    pixels = np.ascontiguousarray(table[:, first_pixel:])
    images = torch.from_numpy(pixels).view(-1, 1, KAGGLE_SIDE, KAGGLE_SIDE)
    labels = torch.from_numpy(table[:, 0].astype(np.int64)) if labelled else None
    return DigitDataset(
        images=images,
        labels=labels,
        name="kaggle",
        source=str(path),
        sha256={path.name: sha256_of(path)},
        max_value=KAGGLE_MAX,
    )
