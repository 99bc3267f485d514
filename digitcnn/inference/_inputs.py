"""What ``python -m digitcnn.predict`` reads: the images to predict and, for an unlabelled input,
their true labels.

Accepted inputs (:func:`read_input`):

* a Kaggle CSV: ``test.csv`` (unlabelled; predictions become Kaggle's ``ImageId,Label``
  submission) or a labelled ``train.csv``;
* a folder of IDX files (MNIST format), labelled;
* a folder of images (labelled by ``0``..``9`` subfolders or ``labels.csv``, or unlabelled
  files), an image file, or a ``.npy`` array of shape (N, H, W), (N, 1, H, W) or (N, H*W).

Every value is checked before it is used: a ``.npy`` file's header (shape, dtype, length)
before anything is read, pixel values and labels a chunk at a time.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from digitcnn.datasets.images import IMAGE_SUFFIXES, load_images
from digitcnn.datasets.kaggle import load_kaggle
from digitcnn.datasets.mnist import load_mnist, locate_idx_files
from digitcnn.datasets.preprocess import mnist_style, open_image, optdigits_images
from digitcnn.datasets.utils import read_first_line
from digitcnn.errors import DataError

__all__ = ["PredictionInput", "read_input", "read_labels", "model_images", "MAX_INPUT_VALUES"]

# The most pixel values a .npy input may hold (268 million: 340,000 images of 28x28), checked
# from its header before anything is read, so that a corrupt header cannot exhaust memory.
MAX_INPUT_VALUES = 1 << 28
# Arrays are checked and converted this many values at a time (bounded temporaries).
CHUNK_VALUES = 1 << 22
MAX_LABELS_CSV_BYTES = 64 << 20


@dataclass
class PredictionInput:
    """Images to predict: uint8 (N, 1, H, W), optional int64 (N,) labels, a name per row."""

    images: torch.Tensor
    labels: torch.Tensor | None
    names: list[str]
    kaggle_test: bool = False
    as_given: bool = False  # an array (.npy): never converted to another input form


def _load_npy(path: Path, max_values: int, what: str) -> np.ndarray:
    """A .npy file, memory-mapped after its header (shape, dtype, length) has been checked."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            reader = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = reader(handle)
            offset = handle.tell()
    except (ValueError, OSError, EOFError) as err:
        raise DataError(
            f"{path}: not a readable .npy file ({_first_line(err)}); save the "
            f"{what} with numpy.save"
        ) from None
    if dtype.kind == "b":
        raise DataError(
            f"{path}: a boolean array; save the {what} as numbers (uint8 pixel "
            "values 0..255, or integer labels)"
        )
    if dtype.kind not in "iuf":
        raise DataError(
            f"{path}: dtype {dtype} is not a plain integer or float type; save the "
            f"{what} as uint8 or float32 with numpy.save"
        )
    values = int(np.prod(shape, dtype=object))
    if values > max_values:
        raise DataError(
            f"{path}: its header announces an array of shape {shape} ({values:,} "
            f"values), more than the {max_values:,} read here; the file is corrupt, "
            "or split the input into smaller files"
        )
    if values == 0:
        raise DataError(f"{path}: an empty array of shape {shape}; save at least one row")
    length = path.stat().st_size
    if length < offset + values * dtype.itemsize:
        raise DataError(
            f"{path}: its header announces shape {shape} of {dtype} "
            f"({offset + values * dtype.itemsize} bytes) but the file holds {length} "
            "bytes; it is truncated: save it again"
        )
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _from_array(array: np.ndarray, path: Path) -> torch.Tensor:
    """Pixel values (integers 0..255, or floats 0..1 or 0..255) as uint8 (N, 1, H, W)."""
    if array.dtype.kind not in "iuf":
        raise DataError(
            f"{path}: dtype {array.dtype} is not a pixel type; save pixel values "
            "0..255 as uint8 (or 0..1 floats)"
        )
    if array.ndim == 2:
        side = int(round(array.shape[1] ** 0.5))
        if side * side != array.shape[1]:
            raise DataError(
                f"{path}: rows of {array.shape[1]} values are not square images; "
                "save an array of shape (N, H, W)"
            )
        array = array.reshape(-1, side, side)
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] != 1 or array.size == 0:
        raise DataError(
            f"{path}: array of shape {array.shape}; expected (N, H, W), (N, 1, H, W) or (N, H*W)"
        )
    step = max(1, CHUNK_VALUES // int(np.prod(array.shape[1:])))
    floating = array.dtype.kind == "f"
    low, high = np.inf, -np.inf
    for start in range(0, len(array), step):  # checked a chunk at a time: no full-size copies
        chunk = np.asarray(array[start : start + step])
        if floating and not np.isfinite(chunk).all():
            bad = np.argwhere(~np.isfinite(chunk))[0]
            index = (start + int(bad[0]),) + tuple(int(i) for i in bad[1:])
            raise DataError(
                f"{path}: value {chunk[tuple(bad)]} at index {index} is not a "
                "number; save finite pixel values 0..255 (or 0..1 floats)"
            )
        low, high = min(low, chunk.min()), max(high, chunk.max())
    # 0..1 floats, as many tutorials store them, are scaled to 0..255.
    scale = 255.0 if floating and high <= 1.0 else 1.0
    if low * scale < 0 or high * scale > 255:
        raise DataError(
            f"{path}: values {low}..{high} are outside 0..255; save pixel values "
            "0..255 (or 0..1 floats)"
        )
    images = np.empty(array.shape, dtype=np.uint8)
    for start in range(0, len(array), step):
        chunk = np.asarray(array[start : start + step])
        images[start : start + step] = np.rint(chunk * scale) if floating else chunk
    return torch.from_numpy(images)


def _unlabelled_images(paths: list[Path], names: list[str]) -> PredictionInput:
    pictures = []
    for path in paths:
        try:
            pictures.append(mnist_style(open_image(path)))
        except DataError as err:
            message = str(err)
            raise DataError(
                message
                if message.startswith(str(path))
                else f"{path}: {message}; remove the file or redraw the digit"
            ) from None
    return PredictionInput(torch.from_numpy(np.stack(pictures))[:, None], None, names)


def read_input(path: str | Path) -> PredictionInput:
    """Read what ``--input`` names; see the module docstring for the accepted kinds."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder; pass a Kaggle CSV, an image folder, an "
            "image or a .npy file to --input"
        )
    if path.is_file() and path.suffix.lower() == ".csv":
        dataset = load_kaggle(path)
        return PredictionInput(
            dataset.images,
            dataset.labels,
            [str(i) for i in range(1, len(dataset) + 1)],
            kaggle_test=dataset.labels is None,
        )
    if path.is_file() and path.suffix.lower() == ".npy":
        images = _from_array(_load_npy(path, MAX_INPUT_VALUES, "images"), path)
        return PredictionInput(images, None, [str(i) for i in range(len(images))], as_given=True)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return _unlabelled_images([path], [path.name])
    if path.is_dir():
        if locate_idx_files(path) is not None:
            dataset = load_mnist(path)
            return PredictionInput(
                dataset.images, dataset.labels, [str(i) for i in range(len(dataset))]
            )
        top_level = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if top_level and not (path / "labels.csv").exists():
            return _unlabelled_images(top_level, [p.name for p in top_level])
        dataset = load_images(path)
        return PredictionInput(dataset.images, dataset.labels, list(dataset.files))
    raise DataError(f"{path}: unsupported input; pass a .csv, .npy, image file or folder")


def read_labels(path: str | Path, count: int, num_classes: int = 10) -> torch.Tensor:
    """True labels for an unlabelled input, int64 (count,) of values 0..num_classes-1.

    ``path``: a CSV with a ``Label``/``label`` column (e.g. Kaggle's ``ImageId,Label``), or a
    .npy of integers. Every label is checked: a missing, non-integer or out-of-range one is
    refused with its line (and column).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labels file not found; check --labels")
    if path.suffix.lower() == ".npy":
        labels = _npy_labels(path, count)
    else:
        labels = _csv_labels(path)
    if len(labels) != count:
        raise DataError(
            f"{path}: {len(labels)} labels for {count} inputs; give one label per "
            "input row, in input order"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        raise DataError(
            f"{path}: label {labels[bad]} of row {bad + 1} is out of range "
            f"0..{num_classes - 1}; fix that label"
        )
    return torch.from_numpy(labels)


def _npy_labels(path: Path, count: int) -> np.ndarray:
    array = _load_npy(path, MAX_INPUT_VALUES, "labels")
    if array.size != count:  # before reading: the header alone says how many there are
        raise DataError(
            f"{path}: {array.size} labels for {count} inputs; give one label per "
            "input row, in input order"
        )
    array = np.asarray(array).reshape(-1)
    if array.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(array) | (array != np.round(array)))
        if bad.size:
            raise DataError(
                f"{path}: label {array[bad[0]]} of row {bad[0] + 1} is not a whole "
                "number; save integer labels"
            )
    return array.astype(np.int64)


def _csv_labels(path: Path) -> np.ndarray:
    size = path.stat().st_size
    if size == 0:
        raise DataError(
            f"{path}: the labels file is empty; give a CSV with a Label column (e.g. "
            "ImageId,Label) or a .npy of labels"
        )
    if size > MAX_LABELS_CSV_BYTES:
        raise DataError(f"{path}: {size >> 20} MiB is too large for a labels CSV; check --labels")
    read_first_line(path)  # refuses compressed and binary files, with the reason
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: is not UTF-8 text; save the labels as a UTF-8 CSV") from None
    try:
        rows = list(csv.reader(lines))
    except csv.Error as err:
        raise DataError(
            f"{path}: not a readable CSV ({err}); save the labels as a plain CSV"
        ) from None
    header = [name.strip() for name in rows[0]] if rows else []
    column = next((i for i, name in enumerate(header) if name.lower() == "label"), None)
    if column is None:
        raise DataError(
            f"{path}: no Label column; give a CSV with a Label column (e.g. "
            "ImageId,Label) or a .npy of labels"
        )
    labels = []
    for line_number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        text = row[column].strip() if column < len(row) else ""
        where = f"{path}: line {line_number}, column {column + 1}"
        if not text:
            raise DataError(f"{where}: missing label; fill it in or delete that line")
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise DataError(f"{where}: label {text[:20]!r} is not a class number; fix that label")
        labels.append(int(text))
    if not labels:
        raise DataError(f"{path}: has a header but no labels; give one label per input row")
    return np.array(labels, dtype=np.int64)


def model_images(inputs: PredictionInput, input_shape: Sequence[int]) -> torch.Tensor:
    """The inputs' images as models of ``input_shape`` read them: 28x28 digits in UCI optdigits'
    form (:func:`digitcnn.datasets.preprocess.optdigits_images`) for an 8x8 model, unless they
    came as an array (``as_given``); else unchanged."""
    if (
        tuple(input_shape) == (1, 8, 8)
        and tuple(inputs.images.shape[1:]) == (1, 28, 28)
        and not inputs.as_given
    ):
        return optdigits_images(inputs.images)
    return inputs.images
