"""MNIST adapter: the four IDX files (28x28 uint8 images, labels 0..9), read with numpy.

``load_mnist`` reads a folder of IDX files (gzipped or plain, ``train-*``/``t10k-*`` names with
dashes or dots, torchvision's ``MNIST/raw`` layout), else the cache
``$XDG_CACHE_HOME/digitcnn/mnist/MNIST/raw``, else downloads the files there from torchvision's
mirrors. Files with MNIST's names and official sizes are identified by checksum, so that
MNIST, Fashion-MNIST and Kuzushiji-MNIST (same names, same sizes) are told apart and a
corrupt download is refused.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from digitcnn.datasets.base import (FETCH_TIMEOUT_ENV, OFFLINE_ENV, SPLITS, DigitDataset, _call_with_timeout)
from digitcnn._io import cache_dir
from digitcnn.errors import DataError

__all__ = ["load_mnist", "parse_idx_images", "parse_idx_labels", "MNIST_CHECKSUMS",
           "OFFICIAL_SIZES", "IMAGES_MAGIC", "LABELS_MAGIC", "MNIST_HOW_TO_GET"]

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
IMAGE_SIDE = 28
MNIST_MAX = 255
IMAGES_HEADER_BYTES = 16
LABELS_HEADER_BYTES = 8
GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_FETCH_TIMEOUT_S = 30.0
# The most image bytes read at once (684,000 28x28 images; MNIST and its look-alikes have
# 70,000): a header announcing more is corrupt or a decompression bomb, refused before anything
# is read, and what is allowed fits in memory beside torch.
MAX_IDX_BYTES = 1 << 29
# Files are read (and gzip streams inflated) in chunks of this size, straight into the result.
IDX_CHUNK_BYTES = 1 << 22
# Bytes after the announced items that are counted for the message before giving up.
IDX_EXTRA_COUNTED = 1 << 24

# Each split's two files, by canonical name (the official name without ".gz").
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Decompressed sizes of the official files. A file of another size with an official name is
# somebody's own data in MNIST's format, so there is no official checksum to hold it to.
OFFICIAL_SIZES: dict[str, int] = {
    "train-images-idx3-ubyte": IMAGES_HEADER_BYTES + 60000 * IMAGE_SIDE * IMAGE_SIDE,
    "train-labels-idx1-ubyte": LABELS_HEADER_BYTES + 60000,
    "t10k-images-idx3-ubyte": IMAGES_HEADER_BYTES + 10000 * IMAGE_SIDE * IMAGE_SIDE,
    "t10k-labels-idx1-ubyte": LABELS_HEADER_BYTES + 10000,
}
# dataset -> canonical name -> (MD5 of the .gz file, MD5 of the decompressed file).
# The .gz MD5s are torchvision's (MNIST/FashionMNIST/KMNIST.resources). Repackagers recompress
# (Debian's Fashion-MNIST .gz files differ from Zalando's), so the MD5 of the contents is what
# identifies a file; those are the published MD5s of the extracted files (KMNIST's unknown).
MNIST_CHECKSUMS: dict[str, dict[str, tuple[str, str | None]]] = {
    "MNIST": {
        "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873",
                                    "6bbc9ace898e44ae57da46a324031adb"),
        "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432",
                                    "a25bea736e30d166cdddb491f175f624"),
        "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3",
                                   "2646ac647ad5339dbf082846283269ea"),
        "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c",
                                   "27ae3e4e09519cfbb04c329615203637"),
    },
    "Fashion-MNIST": {
        "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                    "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe",
                                    "9018921c3c673c538a1fc5bad174d6f9"),
        "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79",
                                   "8181f5470baa50b63fa0f6fddb340f0a"),
        "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310",
                                   "15d484375f8d13e6eb1aabb0c3f46965"),
    },
    "Kuzushiji-MNIST": {
        "train-images-idx3-ubyte": ("bdb82020997e1d708af4cf47b453dcf7", None),
        "train-labels-idx1-ubyte": ("e144d726b3acfaa3e44228e80efcd344", None),
        "t10k-images-idx3-ubyte": ("5c965bf0a639b31b8f53240b1b52f4d7", None),
        "t10k-labels-idx1-ubyte": ("7320c461ea6c1c855c0b718fb2a4b134", None),
    },
}
# Where torchvision and people put the files, relative to the folder given.
SEARCH_SUBFOLDERS = (".", "mnist", "MNIST/raw", "raw")
# train-images-idx3-ubyte, train-images.idx3-ubyte (the name inside the official .gz), ...
IDX_NAME = re.compile(r"(?P<part>train|t10k)-(?P<kind>images|labels)[-.]idx(?P<dims>[13])-ubyte"
                      r"(?P<gz>\.gz)?", re.IGNORECASE)
MNIST_PAGE = "http://yann.lecun.com/exdb/mnist/"
MNIST_HOW_TO_GET = ("pass --data-dir (or set $DIGITCNN_DATA_DIR to) a folder holding the four IDX "
                    "files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (from "
                    f"{MNIST_PAGE} or https://ossci-datasets.s3.amazonaws.com/mnist/), or run "
                    "once with network access so that digitcnn can download them into its cache")


@dataclass(frozen=True)
class _IdxFile:
    """One IDX file as read: its values and what its checksum says it is."""

    path: Path
    canonical: str
    values: np.ndarray  # images (N, 1, 28, 28) uint8 or labels (N,) int64
    sha256: str
    dataset: str | None  # "MNIST", "Fashion-MNIST", ... or None when not an official file


def load_mnist(data_dir: str | os.PathLike | None = None, split: str = "all", verify: bool = True,
               offline: bool | None = None, timeout: float | None = None) -> DigitDataset:
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
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if data_dir is not None:
        folder, found = _find_in_data_dir(Path(data_dir).expanduser())
        return _load_files(folder, found, _splits_to_read(folder, found, split), verify)
    return _load_cached_or_downloaded(split, verify, offline, timeout)


# ----------------------------------------------------------------------------- finding files

def _find_in_data_dir(data_dir: Path) -> tuple[Path, dict[str, Path]]:
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist; pass the folder that holds the "
                        "MNIST IDX files (train-images-idx3-ubyte.gz, ...)")
    located = _locate_idx_files(data_dir)
    if located is None:
        others = sorted(p.name for p in data_dir.iterdir())[:3]
        holds = f" (it holds {', '.join(others)}{', ...' if len(others) == 3 else ''})" if others \
            else " (it is empty)"
        raise DataError(f"{data_dir}: no MNIST IDX files found there or in its mnist/, MNIST/raw/ "
                        f"or raw/ subfolders{holds}; " + MNIST_HOW_TO_GET)
    return located


def _locate_idx_files(folder: Path) -> tuple[Path, dict[str, Path]] | None:
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
            raise DataError(f"{folder}: found {found[present[0]].name} but not {missing}[.gz]; "
                            f"add the missing file (the {part} images and labels come in pairs)")
    present_splits = [part for part, names in SPLIT_FILES.items() if names[0] in found]
    wanted = present_splits if split == "all" else [split]
    if split != "all" and split not in present_splits:
        images, labels = SPLIT_FILES[split]
        holds = f"it holds only the {present_splits[0]} split" if present_splits else \
            "it holds no complete split"
        raise DataError(f"{folder}: split={split!r} needs {images}[.gz] and {labels}[.gz], which "
                        f"are not there ({holds}); choose another split or add those files")
    return wanted


# ----------------------------------------------------------------------------- reading IDX

def _load_files(folder: Path, found: dict[str, Path], splits: list[str],
                verify: bool) -> DigitDataset:
    labels, groups, read = [], [], []
    # Every images header is checked before any payload is read, so that the limit holds for
    # the whole dataset and no file is decompressed whose header is wrong.
    counts = [_announced_count(found[SPLIT_FILES[part][0]], IMAGES_MAGIC) for part in splits]
    announced = sum(counts) * IMAGE_SIDE * IMAGE_SIDE
    if announced > MAX_IDX_BYTES:
        raise DataError(f"{folder}: the IDX headers announce {announced / 2**30:.1f} GiB of "
                        f"images, more than digitcnn reads at once ({MAX_IDX_BYTES >> 20} MiB); a header "
                        "is corrupt (download the files again), or load one split at a time")
    # The splits are read straight into their rows of one array: no concatenated copy.
    images = np.empty((sum(counts), 1, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    starts = np.cumsum([0] + counts)
    for index, part in enumerate(splits):
        images_name, labels_name = SPLIT_FILES[part]
        images_file = _read_idx_file(found[images_name], images_name, IMAGES_MAGIC, verify,
                                     out=images[starts[index]:starts[index + 1]])
        labels_file = _read_idx_file(found[labels_name], labels_name, LABELS_MAGIC, verify)
        if len(images_file.values) != len(labels_file.values):
            raise DataError(f"{images_file.path} holds {len(images_file.values)} images but "
                            f"{labels_file.path} holds {len(labels_file.values)} labels; images "
                            "and labels must come from the same download")
        labels.append(labels_file.values)
        groups.append(np.full(len(labels_file.values), part))
        read += [images_file, labels_file]
    if verify:
        _check_one_dataset(read)
    return DigitDataset(images=torch.from_numpy(images),
                        labels=torch.from_numpy(np.concatenate(labels)),
                        name="mnist", source=_describe_source(folder, read),
                        sha256={f.path.name: f.sha256 for f in read}, max_value=MNIST_MAX,
                        groups=np.concatenate(groups))


def _open_idx(path: Path):
    """A binary stream of the file's IDX bytes: decompressed on the fly when it is gzipped."""
    with open(path, "rb") as handle:
        # Decide by content, not by name: people gunzip files and keep the name, or the reverse.
        gzipped = handle.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_stream(stream, path: Path, size: int) -> bytes:
    try:
        return stream.read(size)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a readable gzip file ({err}); the download is truncated "
                        "or corrupt: download it again") from None


def _read_header(stream, path: Path, magic: int) -> tuple[int, int, str]:
    """(count, bytes per item, description) from an IDX header, checked; the stream is left at
    the first item."""
    images = magic == IMAGES_MAGIC
    size = IMAGES_HEADER_BYTES if images else LABELS_HEADER_BYTES
    head = _read_stream(stream, path, size)
    kind = "images" if images else "labels"
    if len(head) < size:
        raise DataError(f"{path}: {len(head)} bytes, too short for an IDX {kind} header "
                        f"({size} bytes); the file is truncated: download it again")
    found, count = struct.unpack(">II", head[:8])
    _check_magic(path, found, magic, kind)
    if images:
        rows, columns = struct.unpack(">II", head[8:])
        if (rows, columns) != (IMAGE_SIDE, IMAGE_SIDE):
            raise DataError(f"{path}: images are {rows}x{columns}, MNIST's are {IMAGE_SIDE}x"
                            f"{IMAGE_SIDE}; resize them to 28x28, or load them with the 'images' "
                            "dataset")
    if count == 0:
        raise DataError(f"{path}: the header announces 0 {kind}: the file holds no data; "
                        "download it again or use the right file")
    described = f"{count} images of {IMAGE_SIDE}x{IMAGE_SIDE}" if images else f"{count} labels"
    return count, IMAGE_SIDE * IMAGE_SIDE if images else 1, described


def _announced_count(path: Path, magic: int) -> int:
    with _open_idx(path) as stream:
        return _read_header(stream, path, magic)[0]


def _read_idx_file(path: Path, canonical: str, magic: int, verify: bool,
                   out: np.ndarray | None = None) -> _IdxFile:
    """Stream one IDX file: header first, then exactly the items it announces, checked.

    ``out``: where the items go, when its size is the one announced (else a new array)."""
    header_bytes = IMAGES_HEADER_BYTES if magic == IMAGES_MAGIC else LABELS_HEADER_BYTES
    with _open_idx(path) as stream:
        count, item_bytes, described = _read_header(stream, path, magic)
        expected = header_bytes + count * item_bytes
        if count * item_bytes > MAX_IDX_BYTES:
            raise DataError(f"{path}: the header announces {described} ({expected} bytes), more "
                            f"than digitcnn reads at once ({MAX_IDX_BYTES >> 20} MiB); the "
                            "header is corrupt: download the file again")
        # The MD5 of the contents identifies an official file; only one of official size can be.
        official = expected == OFFICIAL_SIZES[canonical]
        payload_md5 = hashlib.md5(usedforsecurity=False) if official else None
        if payload_md5 is not None:
            stream.seek(0)
            payload_md5.update(_read_stream(stream, path, header_bytes))
        fits = out is not None and out.size == count * item_bytes
        values = out.reshape(-1) if fits else np.empty(count * item_bytes, dtype=np.uint8)
        view = memoryview(values)
        done = 0
        while done < len(values):
            chunk = _read_stream(stream, path, min(IDX_CHUNK_BYTES, len(values) - done))
            if not chunk:
                raise DataError(f"{path}: the header announces {described} ({expected} bytes) "
                                f"but the file holds {header_bytes + done} bytes; it is "
                                "truncated: download it again")
            view[done:done + len(chunk)] = chunk
            if payload_md5 is not None:
                payload_md5.update(chunk)
            done += len(chunk)
        extra = _count_rest(stream, path)
    if extra:
        at_least = "at least " if extra >= IDX_EXTRA_COUNTED else ""
        raise DataError(f"{path}: the header announces {described} ({expected} bytes) but the "
                        f"file holds {at_least}{expected + extra} bytes ({at_least}{extra} "
                        "extra); it is corrupt: download it again")
    sha256, stored_md5 = _file_digests(path)
    dataset = _identify(path, canonical, payload_md5.hexdigest() if payload_md5 else None,
                        stored_md5, verify)
    if magic == IMAGES_MAGIC:
        values = values.reshape(count, 1, IMAGE_SIDE, IMAGE_SIDE)  # a view of ``out`` if given
    else:
        values = _checked_labels(values, path)
    return _IdxFile(path=path, canonical=canonical, values=values, sha256=sha256,
                    dataset=dataset)


def _count_rest(stream, path: Path) -> int:
    """Bytes left in the stream, counted up to IDX_EXTRA_COUNTED (a bomb is not inflated)."""
    extra = 0
    while extra < IDX_EXTRA_COUNTED:
        chunk = _read_stream(stream, path, min(IDX_CHUNK_BYTES, IDX_EXTRA_COUNTED - extra))
        if not chunk:
            break
        extra += len(chunk)
    return extra


def _file_digests(path: Path) -> tuple[str, str]:
    """SHA-256 and MD5 of the file as stored."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(block)
            md5.update(block)
    return sha256.hexdigest(), md5.hexdigest()


def _identify(path: Path, canonical: str, payload_md5: str | None, stored_md5: str,
              verify: bool) -> str | None:
    """Which official dataset the file is, by MD5; None for a file that is not an official one.

    ``payload_md5`` is None when the contents do not have the official size."""
    if payload_md5 is None:
        return None
    for dataset, files in MNIST_CHECKSUMS.items():
        if payload_md5 == files[canonical][1]:
            return dataset
    for dataset, files in MNIST_CHECKSUMS.items():
        if stored_md5 == files[canonical][0]:
            return dataset
    if verify:
        raise DataError(f"{path}: has the name and size of the official {canonical} but not the "
                        f"checksum of MNIST's, Fashion-MNIST's or Kuzushiji-MNIST's (MD5 of its "
                        f"contents {payload_md5}); the file is corrupt or modified: download it "
                        "again, or pass --no-verify to use it as it is")
    return None


def _checked_labels(labels: np.ndarray, path) -> np.ndarray:
    if len(labels) and labels.max() > 9:
        bad = int(np.flatnonzero(labels > 9)[0])
        raise DataError(f"{path}: label {labels[bad]} at item {bad} is out of range 0..9; "
                        "fix that label or use the right labels file")
    return labels.astype(np.int64)


def parse_idx_images(payload: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Decompressed IDX images -> uint8 array (N, 1, 28, 28), a read-only view of ``payload``."""
    stream = io.BytesIO(payload)
    count, item_bytes, described = _read_header(stream, Path(path), IMAGES_MAGIC)
    _check_length(path, len(payload), IMAGES_HEADER_BYTES, count, item_bytes, described)
    pixels = np.frombuffer(payload, dtype=np.uint8, offset=IMAGES_HEADER_BYTES)
    return pixels.reshape(count, 1, IMAGE_SIDE, IMAGE_SIDE)


def parse_idx_labels(payload: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Decompressed IDX labels -> int64 array (N,) of values 0..9."""
    stream = io.BytesIO(payload)
    count, item_bytes, described = _read_header(stream, Path(path), LABELS_MAGIC)
    _check_length(path, len(payload), LABELS_HEADER_BYTES, count, item_bytes, described)
    labels = np.frombuffer(payload, dtype=np.uint8, offset=LABELS_HEADER_BYTES)
    return _checked_labels(labels, path)


def _check_magic(path, found: int, expected: int, kind: str) -> None:
    if found == expected:
        return
    other = {IMAGES_MAGIC: " (that of an IDX images file)", LABELS_MAGIC: " (that of an IDX "
             "labels file)"}.get(found, "")
    raise DataError(f"{path}: magic number {found}{other} where an IDX {kind} file has "
                    f"{expected}; this is not an MNIST {kind} file: check the file name or "
                    "download it again")


def _check_length(path, actual: int, header: int, count: int, item_bytes: int,
                  described: str) -> None:
    expected = header + count * item_bytes
    if actual < expected:
        raise DataError(f"{path}: the header announces {described} ({expected} bytes) but the "
                        f"file holds {actual} bytes; it is truncated: download it again")
    if actual > expected:
        raise DataError(f"{path}: the header announces {described} ({expected} bytes) but the "
                        f"file holds {actual} bytes ({actual - expected} extra); it is corrupt: "
                        "download it again")


def _check_one_dataset(read: list[_IdxFile]) -> None:
    """Images of one dataset with labels of another would train on nonsense without a sign."""
    named = {f.dataset for f in read if f.dataset is not None}
    if len(named) > 1:
        listing = ", ".join(f"{f.path.name} is {f.dataset}" for f in read if f.dataset)
        raise DataError(f"{read[0].path.parent}: the files come from different datasets "
                        f"({listing}); use the four files of one dataset, or pass --no-verify")


def _describe_source(folder: Path, read: list[_IdxFile]) -> str:
    datasets = {f.dataset for f in read}
    if len(datasets) == 1 and None not in datasets:
        return f"{read[0].dataset} (by checksum) from {folder}"
    if datasets == {None}:
        return f"IDX files not identified as an official dataset from {folder}"
    listing = ", ".join(f"{f.path.name}: {f.dataset or 'not official'}" for f in read)
    return f"IDX files from {folder} ({listing})"


# ----------------------------------------------------------------------------- cache, network

def _load_cached_or_downloaded(split: str, verify: bool, offline: bool | None,
                               timeout: float | None) -> DigitDataset:
    raw_folder = cache_dir("mnist") / "MNIST" / "raw"
    wanted = list(SPLIT_FILES) if split == "all" else [split]
    cached = _idx_files_in(raw_folder)
    missing = [name for part in wanted for name in SPLIT_FILES[part] if name not in cached]
    if missing:
        if offline is None:
            offline = bool(os.environ.get(OFFLINE_ENV))
        if offline:
            raise DataError(f"MNIST is not in the cache {raw_folder} and offline mode "
                            f"(${OFFLINE_ENV} or offline=True) forbids downloading it; "
                            + MNIST_HOW_TO_GET)
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

    if timeout is None:
        timeout = float(os.environ.get(FETCH_TIMEOUT_ENV, DEFAULT_FETCH_TIMEOUT_S))
    official_md5 = dict(MNIST.resources)
    raw_folder.mkdir(parents=True, exist_ok=True)
    failures = []
    for mirror in MNIST.mirrors:
        try:
            for name in file_names:
                if not (raw_folder / name).is_file():
                    _download_file(tv_utils, mirror + name, raw_folder, name,
                                   official_md5.get(name), timeout)
            return
        except Exception as err:  # any network or mirror failure: try the next mirror
            failures.append(f"{mirror}: {type(err).__name__}: {' '.join(str(err).split())[:200]}")
    raise DataError(f"downloading MNIST failed ({'; '.join(failures)}); " + MNIST_HOW_TO_GET)


def _download_file(tv_utils, url: str, raw_folder: Path, name: str, md5: str | None,
                   timeout: float) -> None:
    # A private folder, moved into place only once complete and checked, so that an
    # interrupted or timed-out download never leaves a truncated file in the cache.
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=raw_folder))
    try:
        _call_with_timeout(lambda: tv_utils.download_url(url, str(staging), filename=name,
                                                         md5=md5), timeout)
        os.replace(staging / name, raw_folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
