"""Own digit images: a folder of labelled PNG/JPG files, each brought to 28x28 by
:func:`~digitcnn.datasets.preprocess.mnist_style`.

Layouts :func:`load_images` reads (``DIR`` is ``data_dir``)::

    DIR/0/*.png, DIR/1/*.jpg, ... DIR/9/...     label = the subfolder's digit
    DIR/*.png + DIR/labels.csv                  label from the CSV (columns file,label)
    DIR/train/<one of the above>, DIR/test/...  two parts: split="train"/"test", groups
"""

from __future__ import annotations

import csv
import hashlib
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch

from digitcnn.datasets.base import DigitDataset, check_split, register_dataset
from digitcnn.datasets.preprocess import MNIST_SIDE, mnist_style, open_image, read_image_bytes
from digitcnn.errors import DataError

__all__ = ["load_images", "IMAGE_SUFFIXES", "LABELS_CSV", "HOW_TO_LAY_OUT"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABELS_CSV = "labels.csv"
LABELS_HEADER = ["file", "label"]
SPLIT_FOLDERS = ("train", "test")
DIGITS = tuple(str(d) for d in range(10))
HOW_TO_LAY_OUT = (
    "PNG/JPG images in subfolders named 0..9 after their digit, or listed in a "
    f"{LABELS_CSV} with columns file,label"
)


@dataclass(frozen=True)
class _Entry:
    file: str  # path relative to the images folder, with forward slashes
    label: int
    group: str | None  # "train"/"test" in the two-part layout


@register_dataset("images")
def load_images(
    data_dir: str | os.PathLike | None = None,
    split: str = "all",
    verify: bool = True,
    labels_csv: str | os.PathLike | None = None,
) -> DigitDataset:
    """Own digit images, each brought to 28x28 by :func:`mnist_style`: uint8 (N, 1, 28, 28).

    Labels come from the subfolder an image is in (``0`` .. ``9``) or from a labels CSV
    (``labels.csv`` in ``data_dir``, or ``labels_csv``) with a header ``file,label`` and one
    line per image; its file names are relative to ``data_dir``. With a CSV, every image in
    the folder must be listed in it. Only ``.png``, ``.jpg`` and ``.jpeg`` files are read (any
    case); other files, and names starting with ``.``, are ignored. Rows are in the order of
    the file paths (folder layout) or of the CSV's lines.

    Args:
        data_dir: the folder (required: own images have no download).
        split: ``"all"`` (default) reads every image. ``"train"``/``"test"`` need ``data_dir``
            to hold ``train/`` and ``test/`` subfolders, each laid out as above (without a CSV
            in ``data_dir``); ``"all"`` then reads both and sets ``groups``.
        verify: accepted for the common loader signature; own images have no official
            checksums. Each file's SHA-256 is recorded in ``sha256``.
        labels_csv: a labels CSV elsewhere than ``data_dir/labels.csv``.

    Returns:
        DigitDataset named ``"images"``, ``max_value`` 255, ``files`` the relative path of each
        row's file, ``sha256`` {relative path: SHA-256} for every image and the labels CSV.
    """
    check_split(split)
    if data_dir is None:
        raise DataError(
            "the images dataset reads your own digit pictures and has nothing to "
            "download: pass --data-dir FOLDER holding " + HOW_TO_LAY_OUT
        )
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"{folder}: no such folder; pass --data-dir FOLDER holding " + HOW_TO_LAY_OUT
        )
    found = _image_files(folder)
    csv_path = _labels_csv_path(folder, labels_csv)
    digests: dict[str, str] = {}
    if csv_path is not None:
        if split != "all":
            raise DataError(
                f"{folder}: split={split!r} needs train/ and test/ subfolders, but "
                f"{csv_path.name} labels the folder as one set; use split='all'"
            )
        entries = _entries_from_csv(csv_path, folder, found)
        digests[csv_path.name] = _sha256_of_bytes(csv_path.read_bytes())
    else:
        entries = _entries_from_folders(folder, found, split)
    if not entries:
        where = folder / split if split != "all" else folder
        raise DataError(
            f"{where}: no images found; add " + HOW_TO_LAY_OUT + ", or pass the right folder"
        )
    return _read_entries(folder, entries, digests, csv_path)


def _image_files(folder: Path) -> list[str]:
    """Relative paths (forward slashes, sorted) of the image files under ``folder``.

    A linked folder is refused rather than skipped (its digits would silently be missing) or
    followed (it could list images twice or pull them in from anywhere); a linked image is
    read only when it points inside ``folder``.
    """
    root = folder.resolve()
    found = []
    for directory, subfolders, files in os.walk(folder):
        # Hidden names: .ipynb_checkpoints, macOS "._x.png" resource forks, .Trash ...
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in subfolders:
            if os.path.islink(os.path.join(directory, name)):
                raise DataError(
                    f"{Path(directory, name)}: is a symbolic link to a folder, which "
                    "digitcnn does not follow (it could pull in images from "
                    "elsewhere or list them twice); replace it with a real folder "
                    "(e.g. cp -rL) holding the images"
                )
        for name in files:
            path = Path(directory, name)
            if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    raise DataError(
                        f"{path}: is a symbolic link to a file outside the images "
                        f"folder {folder}; copy the image into the folder instead"
                    )
                if not target.is_file():
                    raise DataError(
                        f"{path}: is a broken symbolic link; remove it or copy the "
                        "image in its place"
                    )
            if path.is_file():
                found.append(path.relative_to(folder).as_posix())
    return sorted(found)


def _labels_csv_path(folder: Path, labels_csv: str | os.PathLike | None) -> Path | None:
    if labels_csv is not None:
        path = Path(labels_csv).expanduser()
        if not path.is_file():
            raise DataError(
                f"{path}: labels CSV not found; pass an existing file with columns file,label"
            )
        return path
    default = folder / LABELS_CSV
    return default if default.is_file() else None


def _entries_from_folders(folder: Path, found: list[str], split: str) -> list[_Entry]:
    two_parts = any((folder / name).is_dir() for name in SPLIT_FOLDERS)
    if split != "all" and not two_parts:
        raise DataError(
            f"{folder}: split={split!r} needs train/ and test/ subfolders (each with "
            "digit subfolders 0..9); use split='all' to read every image"
        )
    if split != "all" and not (folder / split).is_dir():
        raise DataError(
            f"{folder}: no {split}/ subfolder; add one (with digit subfolders 0..9) "
            "or use split='all'"
        )
    entries = []
    for relative in found:
        parts = PurePosixPath(relative).parts
        group = None
        if two_parts:
            if parts[0] not in SPLIT_FOLDERS:
                raise DataError(
                    f"{folder / relative}: lies outside train/ and test/; move it into "
                    "one of them (e.g. train/DIGIT/) or remove it"
                )
            group, parts = parts[0], parts[1:]
            if split not in ("all", group):
                continue
        # A labels.csv labels only a whole folder, not a train/ or test/ part of one.
        or_csv = f", or list {{}} in a {LABELS_CSV} (columns file,label)" if group is None else ""
        if len(parts) < 2:
            raise DataError(
                f"{folder / relative}: has no label; move it into the subfolder named "
                f"after its digit (0..9){or_csv.format('it')}"
            )
        if parts[0] not in DIGITS:
            subfolder = folder / group / parts[0] if group else folder / parts[0]
            raise DataError(
                f"{subfolder}: subfolder name {parts[0]!r} is not a digit 0..9; "
                f"rename it to the digit its images show{or_csv.format('them')}"
            )
        entries.append(_Entry(relative, int(parts[0]), group))
    return entries


def _entries_from_csv(csv_path: Path, folder: Path, found: list[str]) -> list[_Entry]:
    labels = _read_labels_csv(csv_path)
    images = set(found)
    for name, (_, line_number) in labels.items():
        if name not in images:
            candidate = folder / name
            if not candidate.resolve().is_relative_to(folder.resolve()):
                # Through a link (e.g. a hidden one): said without looking at the target.
                raise DataError(
                    f"{csv_path}: line {line_number}: file {name!r} lies outside the "
                    f"images folder (through a symbolic link); {LABELS_CSV} may name "
                    "only images inside the folder: copy the image into it"
                )
            what = "is not a PNG/JPG file" if candidate.is_file() else f"is not found in {folder}"
            raise DataError(
                f"{csv_path}: line {line_number}: file {name!r} {what}; fix the name "
                "or delete that line"
            )
    for name in found:
        if name not in labels:
            raise DataError(
                f"{folder / name}: is not listed in {csv_path}; add a line "
                f"'{name},DIGIT' to it, or remove the image"
            )
    return [_Entry(name, label, None) for name, (label, _) in labels.items()]


def _read_labels_csv(csv_path: Path) -> dict[str, tuple[int, int]]:
    """Relative file name -> (label, line number), in the CSV's order."""
    try:
        lines = csv_path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DataError(
            f"{csv_path}: is not a text file; write it as UTF-8 CSV with columns file,label"
        ) from None
    reader = csv.reader(lines)
    try:
        header = next(reader, [])
        # line_num: the line a row ends on, also when a quoted name spans lines.
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as err:
        raise DataError(
            f"{csv_path}: line {reader.line_num}: not readable as CSV ({err}); "
            "write it as a plain UTF-8 CSV with columns file,label"
        ) from None
    if [cell.strip() for cell in header] != LABELS_HEADER:
        first = lines[0][:40] if lines else ""
        raise DataError(
            f"{csv_path}: line 1: header {first!r} is not 'file,label'; the first "
            "line must name the columns file,label"
        )
    labels: dict[str, tuple[int, int]] = {}
    for line_number, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise DataError(
                f"{csv_path}: line {line_number}: expected 2 values (file,label), "
                f"found {len(row)}; fix that line"
            )
        name, label = row[0].strip(), row[1].strip()
        if not name:
            raise DataError(
                f"{csv_path}: line {line_number}: missing file name; fill it in or delete that line"
            )
        if label not in DIGITS:
            raise DataError(
                f"{csv_path}: line {line_number}: label {label!r} is not a digit "
                "0..9; fix that label"
            )
        key = posixpath.normpath(name.replace("\\", "/"))
        if (
            PurePosixPath(key).is_absolute()
            or key == ".."
            or key.startswith("../")
            or PureWindowsPath(name).drive
        ):
            # Said without looking at the path: whether it exists outside is none of our business.
            raise DataError(
                f"{csv_path}: line {line_number}: file {name!r} lies outside the "
                f"images folder; {LABELS_CSV} may name only images inside the folder, "
                "relative to it: move the image into the folder and name it so"
            )
        if key in labels:
            raise DataError(
                f"{csv_path}: line {line_number}: file {name!r} is listed again "
                f"(first on line {labels[key][1]}); keep one line per file"
            )
        labels[key] = (int(label), line_number)
    return labels


def _read_entries(
    folder: Path, entries: list[_Entry], digests: dict[str, str], csv_path: Path | None
) -> DigitDataset:
    images = np.empty((len(entries), 1, MNIST_SIDE, MNIST_SIDE), dtype=np.uint8)
    for row, entry in enumerate(entries):
        path = folder / entry.file
        stored = read_image_bytes(path)  # read once: hashed and decoded from the same bytes
        digests[entry.file] = _sha256_of_bytes(stored)
        picture = open_image(path, stored)
        try:
            images[row, 0] = mnist_style(picture)
        except DataError as err:
            raise DataError(f"{path}: {err}; remove the file or redraw the digit") from None
    groups = [entry.group for entry in entries]
    source = str(folder) + (f" (labels from {csv_path})" if csv_path is not None else "")
    return DigitDataset(
        images=torch.from_numpy(images),
        labels=torch.tensor([entry.label for entry in entries], dtype=torch.int64),
        name="images",
        source=source,
        sha256=digests,
        max_value=255,
        groups=None if groups[0] is None else np.array(groups),
        files=np.array([entry.file for entry in entries]),
    )


def _sha256_of_bytes(stored: bytes) -> str:
    return hashlib.sha256(stored).hexdigest()
