"""MNIST adapter: the four IDX files (28x28 uint8 images, labels 0..9), read with numpy.

``load_mnist`` reads a folder of IDX files (gzipped or plain, ``train-*``/``t10k-*`` names with
dashes or dots, torchvision's ``MNIST/raw`` layout), else the cache
``$XDG_CACHE_HOME/digitcnn/mnist/MNIST/raw``, else downloads the files there from torchvision's
mirrors. Files with MNIST's names and official sizes are identified by checksum, so that
MNIST, Fashion-MNIST and Kuzushiji-MNIST (same names, same sizes) are told apart and a
corrupt download is refused (:mod:`digitcnn.datasets._idx` reads and checks each file).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from digitcnn._io import cache_dir
from digitcnn.datasets._idx import (
    IMAGE_SIDE,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    MAX_IDX_BYTES,
    IdxFile,
    announced_count,
    read_idx_file,
)
from digitcnn.datasets.base import DigitDataset, check_split, register_dataset
from digitcnn.datasets.utils import OFFLINE_ENV, call_with_timeout, fetch_timeout, is_offline
from digitcnn.errors import DataError

__all__ = [
    "load_mnist",
    "locate_idx_files",
    "SPLIT_FILES",
    "SEARCH_SUBFOLDERS",
    "IDX_NAME",
    "MNIST_HOW_TO_GET",
    "MNIST_MAX",
]

MNIST_MAX = 255
DEFAULT_FETCH_TIMEOUT_S = 30.0

# Each split's two files, by canonical name (the official name without ".gz").
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Where torchvision and people put the files, relative to the folder given.
SEARCH_SUBFOLDERS = (".", "mnist", "MNIST/raw", "raw")
# train-images-idx3-ubyte, train-images.idx3-ubyte (the name inside the official .gz), ...
IDX_NAME = re.compile(
    r"(?P<part>train|t10k)-(?P<kind>images|labels)[-.]idx(?P<dims>[13])-ubyte"
    r"(?P<gz>\.gz)?",
    re.IGNORECASE,
)
MNIST_PAGE = "http://yann.lecun.com/exdb/mnist/"
MNIST_HOW_TO_GET = (
    "pass --data-dir (or set $DIGITCNN_DATA_DIR to) a folder holding the four IDX "
    "files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (from "
    f"{MNIST_PAGE} or https://ossci-datasets.s3.amazonaws.com/mnist/), or run "
    "once with network access so that digitcnn can download them into its cache"
)


@register_dataset("mnist")
def load_mnist(
    data_dir: str | os.PathLike | None = None,
    split: str = "all",
    verify: bool = True,
    offline: bool | None = None,
    timeout: float | None = None,
) -> DigitDataset:
    """MNIST (or any set in its IDX format): uint8 images (N, 1, 28, 28), int64 labels (N,).

    Sources, in order: ``data_dir`` (also its ``mnist/``, ``MNIST/raw/`` and ``raw/``
    subfolders); the cache ``$XDG_CACHE_HOME/digitcnn/mnist/MNIST/raw``; a download from
    torchvision's MNIST mirrors into that cache. There is no fallback: when nothing works, a
    DataError says why and how to get the files.

    Args:
        data_dir: folder holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
            ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]`` (dots instead of
            the dash before ``idx`` are accepted).
        split: ``"train"`` (60,000 rows), ``"test"`` (10,000) or ``"all"`` (default: every split
            present in ``data_dir``; both splits when reading the cache or downloading).
        verify: refuse a file that has an official name and size but none of the official
            checksums (MNIST, Fashion-MNIST, Kuzushiji-MNIST).
        offline: skip the download (default: ``$DIGITCNN_OFFLINE`` is set).
        timeout: seconds allowed per downloaded file (default ``$DIGITCNN_FETCH_TIMEOUT`` or 30).

    Returns:
        DigitDataset named ``"mnist"``, ``max_value`` 255, ``groups`` "train"/"test" per row,
        ``source`` naming the dataset found by checksum and the folder.
    """
    check_split(split)
    if data_dir is not None:
        folder, found = _find_in_data_dir(Path(data_dir).expanduser())
        return _load_files(folder, found, _splits_to_read(folder, found, split), verify)
    return _load_cached_or_downloaded(split, verify, offline, timeout)


# ----------------------------------------------------------------------------- finding files


def _find_in_data_dir(data_dir: Path) -> tuple[Path, dict[str, Path]]:
    if not data_dir.is_dir():
        raise DataError(
            f"data folder {data_dir} does not exist; pass the folder that holds the "
            "MNIST IDX files (train-images-idx3-ubyte.gz, ...)"
        )
    located = locate_idx_files(data_dir)
    if located is None:
        others = sorted(p.name for p in data_dir.iterdir())[:3]
        holds = (
            f" (it holds {', '.join(others)}{', ...' if len(others) == 3 else ''})"
            if others
            else " (it is empty)"
        )
        raise DataError(
            f"{data_dir}: no MNIST IDX files found there or in its mnist/, MNIST/raw/ "
            f"or raw/ subfolders{holds}; " + MNIST_HOW_TO_GET
        )
    return located


def locate_idx_files(folder: Path) -> tuple[Path, dict[str, Path]] | None:
    """The first of ``folder`` and its usual subfolders that holds IDX files, and those files."""
    for sub in SEARCH_SUBFOLDERS:
        candidate = folder / sub if sub != "." else folder
        found = _idx_files_in(candidate)
        if found:
            return candidate, found
    return None


def _idx_files_in(folder: Path) -> dict[str, Path]:
    """canonical name -> path. Plain files win over .gz: torchvision keeps both, plain is faster."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir(), key=lambda p: (p.suffix.lower() == ".gz", p.name)):
        match = IDX_NAME.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        dims_fit_kind = (match["kind"].lower() == "images") == (match["dims"] == "3")
        if dims_fit_kind:
            canonical = f"{match['part']}-{match['kind']}-idx{match['dims']}-ubyte".lower()
            found.setdefault(canonical, path)
    return found


def _splits_to_read(folder: Path, found: dict[str, Path], split: str) -> list[str]:
    """The splits to load; a split with one of its two files is an error, not a skipped split."""
    for part, names in SPLIT_FILES.items():
        present = [name for name in names if name in found]
        if len(present) == 1:
            missing = next(name for name in names if name not in found)
            raise DataError(
                f"{folder}: found {found[present[0]].name} but not {missing}[.gz]; "
                f"add the missing file (the {part} images and labels come in pairs)"
            )
    present_splits = [part for part, names in SPLIT_FILES.items() if names[0] in found]
    wanted = present_splits if split == "all" else [split]
    if split != "all" and split not in present_splits:
        images, labels = SPLIT_FILES[split]
        holds = (
            f"it holds only the {present_splits[0]} split"
            if present_splits
            else "it holds no complete split"
        )
        raise DataError(
            f"{folder}: split={split!r} needs {images}[.gz] and {labels}[.gz], which "
            f"are not there ({holds}); choose another split or add those files"
        )
    return wanted


# ----------------------------------------------------------------------------- reading IDX


def _load_files(
    folder: Path, found: dict[str, Path], splits: list[str], verify: bool
) -> DigitDataset:
    labels, groups, read = [], [], []
    # Every images header is checked before any payload is read, so that the limit holds for
    # the whole dataset and no file is decompressed whose header is wrong.
    counts = [announced_count(found[SPLIT_FILES[part][0]], IMAGES_MAGIC) for part in splits]
    announced = sum(counts) * IMAGE_SIDE * IMAGE_SIDE
    if announced > MAX_IDX_BYTES:
        raise DataError(
            f"{folder}: the IDX headers announce {announced / 2**30:.1f} GiB of "
            f"images, more than digitcnn reads at once ({MAX_IDX_BYTES >> 20} MiB); a header "
            "is corrupt (download the files again), or load one split at a time"
        )
    # The splits are read straight into their rows of one array: no concatenated copy.
    images = np.empty((sum(counts), 1, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    starts = np.cumsum([0] + counts)
    for index, part in enumerate(splits):
        images_name, labels_name = SPLIT_FILES[part]
        images_file = read_idx_file(
            found[images_name],
            images_name,
            IMAGES_MAGIC,
            verify,
            out=images[starts[index] : starts[index + 1]],
        )
        labels_file = read_idx_file(found[labels_name], labels_name, LABELS_MAGIC, verify)
        if len(images_file.values) != len(labels_file.values):
            raise DataError(
                f"{images_file.path} holds {len(images_file.values)} images but "
                f"{labels_file.path} holds {len(labels_file.values)} labels; images "
                "and labels must come from the same download"
            )
        labels.append(labels_file.values)
        groups.append(np.full(len(labels_file.values), part))
        read += [images_file, labels_file]
    if verify:
        _check_one_dataset(read)
    return DigitDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(np.concatenate(labels)),
        name="mnist",
        source=_describe_source(folder, read),
        sha256={f.path.name: f.sha256 for f in read},
        max_value=MNIST_MAX,
        groups=np.concatenate(groups),
    )


def _check_one_dataset(read: list[IdxFile]) -> None:
    """Images of one dataset with labels of another would train on nonsense without a sign."""
    named = {f.dataset for f in read if f.dataset is not None}
    if len(named) > 1:
        listing = ", ".join(f"{f.path.name} is {f.dataset}" for f in read if f.dataset)
        raise DataError(
            f"{read[0].path.parent}: the files come from different datasets "
            f"({listing}); use the four files of one dataset, or pass --no-verify"
        )


def _describe_source(folder: Path, read: list[IdxFile]) -> str:
    datasets = {f.dataset for f in read}
    if len(datasets) == 1 and None not in datasets:
        return f"{read[0].dataset} (by checksum) from {folder}"
    if datasets == {None}:
        return f"IDX files not identified as an official dataset from {folder}"
    listing = ", ".join(f"{f.path.name}: {f.dataset or 'not official'}" for f in read)
    return f"IDX files from {folder} ({listing})"


# ----------------------------------------------------------------------------- cache, network


def _load_cached_or_downloaded(
    split: str, verify: bool, offline: bool | None, timeout: float | None
) -> DigitDataset:
    raw_folder = cache_dir("mnist") / "MNIST" / "raw"
    wanted = list(SPLIT_FILES) if split == "all" else [split]
    cached = _idx_files_in(raw_folder)
    missing = [name for part in wanted for name in SPLIT_FILES[part] if name not in cached]
    if missing:
        if is_offline(offline):
            raise DataError(
                f"MNIST is not in the cache {raw_folder} and offline mode "
                f"(${OFFLINE_ENV} or offline=True) forbids downloading it; " + MNIST_HOW_TO_GET
            )
        _download(raw_folder, [f"{name}.gz" for name in missing], timeout)
    found = _idx_files_in(raw_folder)
    return _load_files(raw_folder, found, wanted, verify)


def _download(raw_folder: Path, file_names: list[str], timeout: float | None) -> None:
    """Fetch ``file_names`` into ``raw_folder``, trying torchvision's MNIST mirrors in turn.

    torchvision's own ``MNIST(download=True)`` waits without a time limit on a mirror that does
    not answer, so each file gets ``timeout`` seconds before the next mirror is tried.
    """
    from torchvision.datasets import MNIST
    from torchvision.datasets import utils as tv_utils

    timeout = fetch_timeout(timeout, DEFAULT_FETCH_TIMEOUT_S)
    official_md5 = dict(MNIST.resources)
    raw_folder.mkdir(parents=True, exist_ok=True)
    failures = []
    for mirror in MNIST.mirrors:
        try:
            for name in file_names:
                if not (raw_folder / name).is_file():
                    _download_file(
                        tv_utils, mirror + name, raw_folder, name, official_md5.get(name), timeout
                    )
            return
        except Exception as err:  # any network or mirror failure: try the next mirror
            failures.append(f"{mirror}: {type(err).__name__}: {' '.join(str(err).split())[:200]}")
    raise DataError(f"downloading MNIST failed ({'; '.join(failures)}); " + MNIST_HOW_TO_GET)


def _download_file(
    tv_utils, url: str, raw_folder: Path, name: str, md5: str | None, timeout: float
) -> None:
    # A private folder, moved into place only once complete and checked, so that an
    # interrupted or timed-out download never leaves a truncated file in the cache.
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=raw_folder))
    try:
        call_with_timeout(
            lambda: tv_utils.download_url(url, str(staging), filename=name, md5=md5), timeout
        )
        os.replace(staging / name, raw_folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
