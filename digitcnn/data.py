"""Digit datasets: one dataset type, one ``load`` entry point, and the UCI optdigits adapter.

Every adapter returns a :class:`DigitDataset` holding uint8 images of shape (N, 1, H, W) and
int64 labels of shape (N,), with the dataset's name, where it came from and the SHA-256 of
the files actually read. Images stay uint8 until a run scales them, so that statistics can be
fitted on a training fold alone and a GPU can hold the raw data compactly.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import socket
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .errors import DataError

__all__ = ["DigitDataset", "load", "list_datasets", "register_dataset", "cache_dir", "sha256_of",
           "read_int_csv", "resolve_data_dir", "UCI_RESOURCES", "load_uci", "DATA_DIR_ENV",
           "OFFLINE_ENV", "FETCH_TIMEOUT_ENV"]

DATA_DIR_ENV = "DIGITCNN_DATA_DIR"
OFFLINE_ENV = "DIGITCNN_OFFLINE"
FETCH_TIMEOUT_ENV = "DIGITCNN_FETCH_TIMEOUT"
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
            raise DataError(f"{self.name}: images must have shape (N, 1, H, W), got "
                            f"{tuple(self.images.shape)}; reshape them before building the dataset")
        if self.images.dtype != torch.uint8:
            raise DataError(f"{self.name}: images must be uint8, got {self.images.dtype}; "
                            "convert with .to(torch.uint8) after checking the value range")
        if self.labels is not None:
            if self.labels.shape != (len(self.images),):
                raise DataError(f"{self.name}: {len(self.images)} images but labels of shape "
                                f"{tuple(self.labels.shape)}; give one label per image")
            if self.labels.dtype != torch.int64:
                raise DataError(f"{self.name}: labels must be int64, got {self.labels.dtype}")
            if len(self.labels) and (int(self.labels.min()) < 0
                                     or int(self.labels.max()) >= len(self.classes)):
                bad = int(((self.labels < 0) | (self.labels >= len(self.classes))).nonzero()[0])
                raise DataError(f"{self.name}: label {int(self.labels[bad])} at row {bad} is out of "
                                f"range 0..{len(self.classes) - 1}; fix that row's label")
        for name in ("groups", "files"):
            column = getattr(self, name)
            if column is not None and len(column) != len(self.images):
                raise DataError(f"{self.name}: {name} has {len(column)} entries for "
                                f"{len(self.images)} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> "DigitDataset":
        """The rows at ``indices``, in that order, with the same name and provenance."""
        index = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        pick = index.numpy()
        return replace(self, images=self.images[index],
                       labels=None if self.labels is None else self.labels[index],
                       groups=None if self.groups is None else self.groups[pick],
                       files=None if self.files is None else self.files[pick])

    def info(self) -> dict:
        """JSON-ready provenance: name, row count, source, checksums, input shape."""
        return {"name": self.name, "n": len(self), "source": self.source,
                "sha256": dict(self.sha256), "input_shape": list(self.input_shape),
                "max_value": self.max_value}


# ----------------------------------------------------------------------------- registry

# Adapters are registered by dotted path and imported on first use, so that ``import
# digitcnn`` stays quick and an adapter's optional dependencies load only when it is used.
_ADAPTERS: dict[str, str | Callable[..., DigitDataset]] = {
    "uci": "digitcnn.data:load_uci",
    "mnist": "digitcnn.mnist:load_mnist",
    "kaggle": "digitcnn.kaggle:load_kaggle",
    "images": "digitcnn.images:load_images",
}


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


def load(name: str, data_dir: str | os.PathLike | None = None, split: str = "all",
         **options) -> DigitDataset:
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
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
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
        raise DataError(f"data folder {path} ({origin}) does not exist; "
                        "pass the folder that holds the dataset's files")
    return path


def cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/digitcnn/...`` (default ``~/.cache/digitcnn/...``), created."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base.joinpath("digitcnn", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: Path, expected: str | None, digest: str, verify: bool) -> None:
    """Refuse a file whose official name promises contents that it does not have."""
    if verify and expected is not None and digest != expected:
        raise DataError(f"{path}: SHA-256 {digest[:12]}... does not match the official file's "
                        f"{expected[:12]}...; the file is corrupt or modified: download it again, "
                        "or pass --no-verify to use it as it is")


def read_int_csv(path: Path, n_columns: int, value_range: tuple[int, int], *,
                 header: Sequence[str] | None = None, dtype=np.int64,
                 column_ranges: Mapping[int, tuple[int, int]] | None = None) -> np.ndarray:
    """Read a comma-separated table of integers, validated; returns an (rows, n_columns) array.

    The fast path is pandas' C parser. It reports some defects vaguely (a short row just
    becomes NaN), so when it fails or the values are out of range we re-read the file line by
    line to name the first bad line and what is wrong with it.

    Args:
        path: the file.
        n_columns: the number of values on every row.
        value_range: inclusive (low, high) for every value.
        header: the exact column names of a header line, or None for a file without one.
        column_ranges: inclusive ranges overriding ``value_range`` for some columns (labels).
    """
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path or download the dataset")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; download it again")
    if header is not None:
        with open(path, "r", newline="") as handle:
            first = handle.readline().strip()
        names = first.split(",")
        if names != list(header):
            expected = ",".join(header[:3]) + ",..." + header[-1]
            raise DataError(f"{path}: line 1: header {first[:60]!r}... is not the expected "
                            f"{expected!r} ({len(header)} columns); is this the right file?")
    bounds = _column_bounds(n_columns, value_range, column_ranges)
    try:
        with warnings.catch_warnings():
            # index_col=False keeps pandas from silently taking the first column as an index
            # when every row has one value too many; it warns instead, and we refuse the file.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # The narrowest type that holds every valid value: 42,000 x 785 pixels parse to
            # 33 MB as uint8 instead of 264 MB as int64. pandas refuses a value that does not
            # fit (negative, too large) rather than wrapping it, and we then diagnose the file.
            frame = pd.read_csv(path, header=0 if header is not None else None,
                                dtype=_parse_dtype(bounds), engine="c", na_filter=True,
                                skip_blank_lines=True, index_col=False)
        values = frame.to_numpy()
    except (ValueError, pd.errors.ParserError, pd.errors.ParserWarning, OverflowError):
        values = None
    if values is not None and values.shape[1] == n_columns and _in_range(values, bounds):
        return values.astype(dtype, copy=False)
    _diagnose_int_csv(path, n_columns, value_range, header is not None, column_ranges)
    raise DataError(f"{path}: could not be read as {n_columns} integer columns; "
                    "check that it is the right file")


def _parse_dtype(bounds: np.ndarray) -> type:
    unsigned = bounds.min() >= 0
    candidates = (np.uint8, np.uint16, np.uint32) if unsigned else (np.int8, np.int16, np.int32)
    for candidate in candidates:
        info = np.iinfo(candidate)
        if info.min <= bounds.min() and bounds.max() <= info.max:
            return candidate
    return np.int64


def _in_range(values: np.ndarray, bounds: np.ndarray) -> bool:
    """Whether every column lies within its (low, high) ``bounds`` (shape (2, columns))."""
    if len(values) == 0:
        return True
    # Column extremes first: comparing the full table would build large temporaries.
    return bool((values.min(axis=0) >= bounds[0]).all()
                and (values.max(axis=0) <= bounds[1]).all())


def _column_bounds(n_columns, value_range, column_ranges) -> np.ndarray:
    bounds = np.tile(np.asarray(value_range, dtype=np.int64)[:, None], (1, n_columns))
    for column, (low, high) in (column_ranges or {}).items():
        bounds[:, column] = (low, high)
    return bounds


def _diagnose_int_csv(path: Path, n_columns: int, value_range, has_header: bool,
                      column_ranges) -> None:
    """Raise a DataError naming the first bad line of ``path`` (slow path, errors only)."""
    bounds = _column_bounds(n_columns, value_range, column_ranges)
    with open(path, "r", newline="") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if has_header and line_number == 1:
                header_line = raw
                continue
            line = raw.strip()
            if not line:
                continue
            if has_header and line == header_line.strip():
                raise DataError(f"{path}: line {line_number}: the header line is repeated; "
                                "delete that line")
            fields = line.split(",")
            if len(fields) != n_columns:
                hint = " (truncated row?)" if len(fields) < n_columns else ""
                raise DataError(f"{path}: line {line_number}: expected {n_columns} comma-separated "
                                f"values, found {len(fields)}{hint}; fix or delete that line")
            if not _line_is_valid(fields, bounds):
                _diagnose_fields(path, line_number, fields, bounds)


def _line_is_valid(fields: list[str], bounds: np.ndarray) -> bool:
    # One vectorised conversion per line instead of one int() per value: a bad last line of
    # a 42,000 x 785 file is then found in seconds, not half a minute.
    try:
        values = np.array(fields, dtype=np.int64)
    except (ValueError, OverflowError):
        return False
    return bool(((values >= bounds[0]) & (values <= bounds[1])).all())


def _diagnose_fields(path: Path, line_number: int, fields: list[str], bounds: np.ndarray) -> None:
    """Raise a DataError naming the first bad value among ``fields``, if there is one."""
    for column, text in enumerate(fields):
        text = text.strip()
        if text == "" or text.upper() in ("NA", "NAN"):
            raise DataError(f"{path}: line {line_number}, column {column + 1}: missing "
                            "value; fill it in or delete that line")
        try:
            value = int(text)
        except ValueError:
            raise DataError(f"{path}: line {line_number}, column {column + 1}: {text[:20]!r} "
                            "is not an integer; fix that value") from None
        low, high = bounds[:, column]
        if not low <= value <= high:
            raise DataError(f"{path}: line {line_number}, column {column + 1}: value "
                            f"{value} is out of range {low}..{high}; fix that value")


# ----------------------------------------------------------------------------- UCI optdigits

UCI_ID = 80
UCI_ROWS = 5620
UCI_FEATURES = 64
UCI_MAX = 16
# The original files (UCI dataset 80): name -> (SHA-256, rows, original split).
UCI_RESOURCES: dict[str, tuple[str, int, str]] = {
    "optdigits.tra": ("e1b683cc211604fe8fd8c4417e6a69f31380e0c61d4af22e93cc21e9257ffedd", 3823,
                      "train"),
    "optdigits.tes": ("85f89a0333cbbcf5b1a42f3d4d74013ee35f5e44dbeb5f9b54f78ce5b4f94910", 1797,
                      "test"),
}
# What ucimlrepo serves for id 80, cached by digitcnn under this name.
UCI_CSV_NAMES = ("optdigits.csv", "data.csv")
UCI_CSV_HEADER = tuple(f"Attribute{i}" for i in range(1, UCI_FEATURES + 1)) + ("class",)
UCI_HOW_TO_GET = ("pass --data-dir (or set $DIGITCNN_DATA_DIR to) a folder holding optdigits.tra "
                  "and optdigits.tes from https://archive.ics.uci.edu/dataset/80, or run once "
                  "with network access so that ucimlrepo can fetch and digitcnn can cache them")


def load_uci(data_dir: Path | None = None, split: str = "all", verify: bool = True,
             offline: bool | None = None, timeout: float | None = None) -> DigitDataset:
    """UCI optdigits: 8x8 images of ink counts 0..16, 5,620 rows (3,823 train + 1,797 test).

    Sources, in order: ``data_dir`` (the original ``optdigits.tra``/``.tes`` or ucimlrepo's
    CSV); the cache ``$XDG_CACHE_HOME/digitcnn/uci``; ``ucimlrepo.fetch_ucirepo(id=80)`` with
    a timeout (cached on success); sklearn's bundled ``load_digits`` (1,797 rows) with a
    warning.

    Args:
        split: ``"train"`` (optdigits.tra), ``"test"`` (optdigits.tes) or ``"all"``.
        verify: check the original files' SHA-256 against :data:`UCI_RESOURCES`.
        offline: skip the network (default: ``$DIGITCNN_OFFLINE`` is set).
        timeout: seconds to wait for ucimlrepo (default ``$DIGITCNN_FETCH_TIMEOUT`` or 20).
    """
    if data_dir is not None:
        found = _uci_from_dir(data_dir, split, verify)
        if found is None:
            raise DataError(f"{data_dir}: no optdigits.tra/optdigits.tes (or ucimlrepo's "
                            f"{UCI_CSV_NAMES[0]}) found there or in its optdigits/ subfolder; "
                            + UCI_HOW_TO_GET)
        return found
    cached = _uci_from_dir(cache_dir("uci"), split, verify)
    if cached is not None:
        return cached
    if offline is None:
        offline = bool(os.environ.get(OFFLINE_ENV))
    failure = "offline mode ($DIGITCNN_OFFLINE)" if offline else None
    if not offline:
        try:
            return _uci_from_ucimlrepo(split, timeout)
        except Exception as err:  # any network or service failure leads to the fallback
            failure = f"{type(err).__name__}: {err}"
    return _uci_from_sklearn(split, failure)


def _uci_from_dir(folder: Path, split: str, verify: bool) -> DigitDataset | None:
    for candidate in (folder, folder / "optdigits", folder / "uci"):
        originals = {name: candidate / name for name in UCI_RESOURCES}
        wanted = [name for name, (_, _, part) in UCI_RESOURCES.items()
                  if split in ("all", part)]
        if all(originals[name].is_file() for name in wanted):
            return _uci_from_originals([originals[name] for name in wanted], verify)
        for csv_name in UCI_CSV_NAMES:
            if (candidate / csv_name).is_file():
                return _uci_from_csv(candidate / csv_name, split)
    return None


def _uci_from_originals(paths: list[Path], verify: bool) -> DigitDataset:
    tables, groups, digests = [], [], {}
    for path in paths:
        expected, expected_rows, part = UCI_RESOURCES[path.name]
        digest = sha256_of(path)
        verify_checksum(path, expected, digest, verify)
        table = read_int_csv(path, UCI_FEATURES + 1, (0, UCI_MAX),
                             column_ranges={UCI_FEATURES: (0, 9)})
        if verify and len(table) != expected_rows:
            raise DataError(f"{path}: {len(table)} rows, the official file has {expected_rows}; "
                            "download it again or pass --no-verify")
        tables.append(table)
        groups.append(np.full(len(table), part))
        digests[path.name] = digest
    table = np.concatenate(tables)
    source = ", ".join(str(p) for p in paths)
    return _uci_dataset(table, source, digests, np.concatenate(groups))


def _uci_from_csv(path: Path, split: str) -> DigitDataset:
    table = read_int_csv(path, UCI_FEATURES + 1, (0, UCI_MAX), header=UCI_CSV_HEADER,
                         column_ranges={UCI_FEATURES: (0, 9)})
    if split != "all":
        raise DataError(f"{path}: ucimlrepo's CSV does not mark which rows are optdigits.tra "
                        f"and which optdigits.tes, so split={split!r} is not available; use the "
                        "original files for the writer-disjoint split, or split='all'")
    return _uci_dataset(table, str(path), {path.name: sha256_of(path)}, None)


def _uci_dataset(table: np.ndarray, source: str, digests: dict, groups) -> DigitDataset:
    images = torch.from_numpy(table[:, :UCI_FEATURES].astype(np.uint8)).view(-1, 1, 8, 8)
    labels = torch.from_numpy(table[:, UCI_FEATURES].astype(np.int64))
    return DigitDataset(images=images, labels=labels, name="uci", source=source, sha256=digests,
                        max_value=UCI_MAX, groups=groups)


def _uci_from_ucimlrepo(split: str, timeout: float | None) -> DigitDataset:
    if split != "all":
        raise DataError(f"ucimlrepo's copy does not mark the original splits, so split={split!r} "
                        "needs the original files; " + UCI_HOW_TO_GET)
    from ucimlrepo import fetch_ucirepo

    if timeout is None:
        timeout = float(os.environ.get(FETCH_TIMEOUT_ENV, "20"))
    frame = _call_with_timeout(lambda: fetch_ucirepo(id=UCI_ID).data.original, timeout)
    missing = [c for c in UCI_CSV_HEADER if c not in frame.columns]
    if missing or len(frame) != UCI_ROWS:
        raise DataError(f"ucimlrepo returned {len(frame)} rows with columns missing {missing[:3]}; "
                        "expected 5,620 rows of Attribute1..Attribute64 and class")
    # ucimlrepo fetches on every call; keep what it returned so that later runs are offline.
    target = cache_dir("uci") / UCI_CSV_NAMES[0]
    from .results import atomic_write_text
    atomic_write_text(target, frame[list(UCI_CSV_HEADER)].to_csv(index=False))
    return _uci_from_csv(target, split)


def _call_with_timeout(fn: Callable, timeout: float):
    """Run ``fn`` in a daemon thread; raise TimeoutError when it takes longer than ``timeout``.

    ucimlrepo opens URLs without a timeout, so a dead network could hang a run for minutes;
    the socket default covers reads, the thread join covers everything else.
    """
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as err:  # handed back to the caller's thread
            outcome["error"] = err

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        worker = threading.Thread(target=target, daemon=True)
        worker.start()
        worker.join(timeout)
    finally:
        socket.setdefaulttimeout(previous)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _uci_from_sklearn(split: str, failure: str | None) -> DigitDataset:
    from importlib import resources

    from sklearn.datasets import load_digits

    if split == "train":
        raise DataError("UCI optdigits could not be fetched and sklearn's bundled copy holds only "
                        "the test part (optdigits.tes); " + UCI_HOW_TO_GET)
    message = (f"UCI optdigits could not be fetched ({failure}); using sklearn's bundled copy "
               f"instead: 1,797 of the 5,620 rows (optdigits.tes only). To get the full set, "
               + UCI_HOW_TO_GET)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    digits = load_digits()
    bundled = Path(str(resources.files("sklearn.datasets") / "data" / "digits.csv.gz"))
    images = torch.from_numpy(digits.images.astype(np.uint8)).view(-1, 1, 8, 8)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    digests = {bundled.name: sha256_of(bundled)} if bundled.is_file() else {}
    return DigitDataset(images=images, labels=labels, name="uci",
                        source=f"sklearn.datasets.load_digits ({bundled})", sha256=digests,
                        max_value=UCI_MAX, groups=np.full(len(labels), "test"))
