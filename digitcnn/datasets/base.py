"""Digit datasets: one dataset type, one ``load`` entry point, and the UCI optdigits adapter.

Every adapter returns a :class:`DigitDataset` holding uint8 images of shape (N, 1, H, W) and
int64 labels of shape (N,), with the dataset's name, where it came from and the SHA-256 of
the files actually read. Images stay uint8 until a run scales them, so that statistics can be
fitted on a training fold alone and a GPU can hold the raw data compactly.
"""
from __future__ import annotations

import importlib
import io
import os
import re
import socket
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from digitcnn._io import cache_dir, sha256_of
from digitcnn.errors import DataError

__all__ = ["DigitDataset", "load", "list_datasets", "register_dataset", "read_int_csv", "read_first_line", "resolve_data_dir", "UCI_RESOURCES", "load_uci",
           "DATA_DIR_ENV", "OFFLINE_ENV", "FETCH_TIMEOUT_ENV"]

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
    "uci": "digitcnn.datasets.base:load_uci",
    "mnist": "digitcnn.datasets.mnist:load_mnist",
    "kaggle": "digitcnn.datasets.kaggle:load_kaggle",
    "images": "digitcnn.datasets.images:load_images",
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


def verify_checksum(path: Path, expected: str | None, digest: str, verify: bool) -> None:
    """Refuse a file whose official name promises contents that it does not have."""
    if verify and expected is not None and digest != expected:
        raise DataError(f"{path}: SHA-256 {digest[:12]}... does not match the official file's "
                        f"{expected[:12]}...; the file is corrupt or modified: download it again, "
                        "or pass --no-verify to use it as it is")


# Blocks of this many bytes are parsed at a time, so that memory stays bounded whatever the
# file's size (a 2 GB file of NUL bytes is refused after its first block, not after reading it).
CSV_BLOCK_BYTES = 1 << 22
# Longest line accepted, per value: digits, a separator and generous whitespace.
CSV_BYTES_PER_VALUE = 32
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
UTF8_BOM = b"\xef\xbb\xbf"
_CELL = re.compile(r"[ \t]*(-?)([0-9]+)[ \t]*", re.ASCII)
_BLANK = " \t\r\n\f\v"
# Bytes the fast path accepts: digits, commas and line ends. Anything else (spaces, signs,
# letters, other encodings) goes to the line-by-line parser, which accepts or names it.
_FAST_BYTES = b"0123456789,\r\n"


def read_first_line(path: Path, limit: int = 1 << 16) -> str:
    """The first line of a text file, without its line end or a UTF-8 byte-order mark.

    Reads at most ``limit`` bytes, and refuses (DataError) a compressed file, a binary file
    and a first line longer than ``limit``.
    """
    with open(path, "rb") as handle:
        raw = handle.readline(limit + 1)
    _refuse_compressed(path, raw)
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM):]
    if b"\x00" in raw:
        raise DataError(f"{path}: line 1: holds a NUL byte: the file is binary or UTF-16 text, "
                        "not a CSV; save it as a UTF-8 (or ASCII) CSV")
    if len(raw) > limit and not raw.endswith(b"\n"):
        raise DataError(f"{path}: line 1 is longer than {limit} bytes; this is not the CSV "
                        "expected here: check the file")
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: line 1: byte 0x{raw[err.start]:02x} is not UTF-8 text; save "
                        "the file as a UTF-8 (or ASCII) CSV") from None


def _refuse_compressed(path: Path, start: bytes) -> None:
    if start.startswith(GZIP_MAGIC):
        raise DataError(f"{path}: is gzip-compressed, not a plain CSV; decompress it first "
                        f"(gunzip -c {path} > {Path(path).stem}-plain.csv) and pass that file")
    if start.startswith(ZIP_MAGIC):
        raise DataError(f"{path}: is a zip archive, not a plain CSV; unzip it first and pass "
                        "the CSV inside")


def read_int_csv(path: Path, n_columns: int, value_range: tuple[int, int], *,
                 header: Sequence[str] | None = None, dtype=np.int64,
                 column_ranges: Mapping[int, tuple[int, int]] | None = None) -> np.ndarray:
    """Read a comma-separated table of integers, validated; returns an (rows, n_columns) array.

    Values are parsed into int64 from text that cannot overflow it (the fast path takes only
    cells of at most as many digits as the largest bound), checked against their ranges in
    int64, and only then narrowed to ``dtype``: no parser's overflow behaviour is relied on
    (pandas 3.0 wraps 256 to 0 when asked for uint8). The file is read in blocks of
    :data:`CSV_BLOCK_BYTES`, so memory stays bounded by the result. A block that the fast path
    (pandas' C parser) cannot take is parsed line by line, which accepts what is valid
    (surrounding spaces, CRLF, blank lines) and names the first bad line and column otherwise.

    Args:
        path: the file. A UTF-8 byte-order mark at its start is ignored.
        n_columns: the number of values on every row.
        value_range: inclusive (low, high) for every value.
        header: the exact column names of a header line, or None for a file without one.
        dtype: the integer type returned; every allowed value must fit it.
        column_ranges: inclusive ranges overriding ``value_range`` for some columns (labels).

    Raises:
        DataError: naming the file, the 1-based line (and column) and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path or download the dataset")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: the file is empty; download it again")
    bounds = _column_bounds(n_columns, value_range, column_ranges)
    info = np.iinfo(dtype)
    if bounds.min() < info.min or bounds.max() > info.max:
        raise ValueError(f"value ranges {value_range}/{column_ranges} do not fit {dtype}")
    max_line = max(1 << 12, n_columns * CSV_BYTES_PER_VALUE)
    header_text = None
    if header is not None:
        header_text = read_first_line(path, max_line)
        _check_header(path, header_text, header)
    with open(path, "rb") as handle:
        _refuse_compressed(path, handle.read(4))
        handle.seek(0)
        if handle.read(len(UTF8_BOM)) != UTF8_BOM:
            handle.seek(0)
        first_line = 1
        if header is not None:
            handle.readline(max_line + 1)
            first_line = 2
        # Every row takes at least 2 bytes per value (a digit and a separator), so this is
        # an upper bound on the rows; pages of it that no row fills are never touched.
        capacity = (size - handle.tell()) // (2 * n_columns) + 1
        table = np.empty((capacity, n_columns), dtype=dtype)
        rows = 0
        for block, line_number in _csv_blocks(handle, path, first_line, max_line):
            values = _parse_fast(block, n_columns, bounds)
            if values is None:
                values = _parse_lines(path, block, line_number, n_columns, bounds, header_text)
            table[rows:rows + len(values)] = values
            rows += len(values)
    if rows == 0:
        raise DataError(f"{path}: has {'a header but ' if header is not None else ''}no rows; "
                        "download the file again")
    table.resize((rows, n_columns), refcheck=False)
    return table


def _check_header(path: Path, text: str, header: Sequence[str]) -> None:
    if [name.strip() for name in text.split(",")] == list(header):
        return
    shown = text[:60] + ("..." if len(text) > 60 else "")
    for separator, name in ((";", "semicolons"), ("\t", "tabs")):
        if [cell.strip() for cell in text.split(separator)] == list(header):
            raise DataError(f"{path}: line 1: the header {shown!r} separates the columns with "
                            f"{name}; this file must be comma-separated: save it again with "
                            f"commas (e.g. pandas.read_csv(path, sep={separator!r}).to_csv(path, "
                            "index=False))")
    expected = ",".join(header[:3]) + ",..." + header[-1]
    raise DataError(f"{path}: line 1: header {shown!r} is not the expected {expected!r} "
                    f"({len(header)} columns); is this the right file?")


def _csv_blocks(handle, path: Path, line_number: int, max_line: int):
    """Yield (bytes ending at a line end, number of its first line) until the file ends."""
    carry = b""
    while True:
        chunk = handle.read(CSV_BLOCK_BYTES)
        nul = chunk.find(b"\x00")
        if nul >= 0:
            where = line_number + carry.count(b"\n") + chunk.count(b"\n", 0, nul)
            raise DataError(f"{path}: line {where}: holds a NUL byte: the file is binary, "
                            "UTF-16 text or a corrupt (sparse) copy, not a CSV; save it as a "
                            "UTF-8 (or ASCII) CSV, or download it again")
        if not chunk:
            if carry.strip():
                yield carry, line_number
            return
        data = carry + chunk
        cut = data.rfind(b"\n") + 1
        block, carry = data[:cut], data[cut:]
        if block:
            yield block, line_number
            line_number += block.count(b"\n")
        if len(carry) > max_line:
            raise DataError(f"{path}: line {line_number} is longer than {max_line} bytes; this "
                            "is not the CSV expected here: check the file or download it again")


def _parse_fast(block: bytes, n_columns: int, bounds: np.ndarray) -> np.ndarray | None:
    """int64 (rows, n_columns) of a block of plain digits and commas, or None to parse it line
    by line. Cells have at most as many digits as the largest bound, so int64 cannot overflow
    however the parser treats a too-large value."""
    import pandas as pd

    if block.translate(None, _FAST_BYTES):
        return None
    codes = np.frombuffer(block, dtype=np.uint8)
    if b"\r" in block:
        carriage = np.flatnonzero(codes == ord("\r"))
        if carriage[-1] + 1 >= codes.size or (codes[carriage + 1] != ord("\n")).any():
            return None  # a lone CR ends a line for pandas but not for the line-by-line parser
    width = len(str(int(np.abs(bounds).max())))
    digits = codes >= ord("0")  # only digits, ',', CR and LF are left, and '0' is above them
    run = digits[:codes.size - width].copy()
    for shift in range(1, width + 1):
        run &= digits[shift:codes.size - width + shift]
    if run.any():
        return None
    try:
        with warnings.catch_warnings():
            # index_col=False keeps pandas from silently taking the first column as an index
            # when every row has one value too many; it warns instead.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.BytesIO(block), header=None, dtype=np.int64, engine="c",
                                na_filter=True, skip_blank_lines=True, index_col=False)
    except (ValueError, OverflowError, pd.errors.ParserError, pd.errors.ParserWarning):
        return None
    values = frame.to_numpy()
    if values.dtype != np.int64 or values.ndim != 2 or values.shape[1] != n_columns \
            or not _in_range(values, bounds):
        return None
    return values


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


def _parse_lines(path: Path, block: bytes, line_number: int, n_columns: int,
                 bounds: np.ndarray, header_text: str | None) -> np.ndarray:
    """int64 (rows, n_columns) of a block parsed line by line; DataError at the first bad one."""
    rows = []
    for offset, raw in enumerate(block.split(b"\n")):
        number = line_number + offset
        try:
            line = raw.decode("utf-8").strip(_BLANK)
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: line {number}: byte 0x{raw[err.start]:02x} is not UTF-8 "
                            "text; save the file as a UTF-8 (or ASCII) CSV") from None
        if not line:
            continue
        if header_text is not None and line == header_text.strip(_BLANK):
            raise DataError(f"{path}: line {number}: the header line is repeated; delete "
                            "that line")
        fields = line.split(",")
        if len(fields) != n_columns:
            hint = " (truncated row?)" if len(fields) < n_columns else ""
            if len(fields) == 1 and len(line.split(";")) == n_columns:
                hint = " (the values are separated by ';': save the file with commas)"
            raise DataError(f"{path}: line {number}: expected {n_columns} comma-separated "
                            f"values, found {len(fields)}{hint}; fix or delete that line")
        rows.append([_parse_cell(path, number, column, text, bounds[:, column])
                     for column, text in enumerate(fields)])
    return np.array(rows, dtype=np.int64).reshape(-1, n_columns)


def _parse_cell(path: Path, line_number: int, column: int, text: str, bounds) -> int:
    where = f"{path}: line {line_number}, column {column + 1}"
    match = _CELL.fullmatch(text)
    if match is None:
        if text.strip(_BLANK).upper() in ("", "NA", "NAN", "NULL", "NONE"):
            raise DataError(f"{where}: missing value; fill it in or delete that line")
        raise DataError(f"{where}: {text.strip(_BLANK)[:20]!r} is not an integer; fix that "
                        "value")
    sign, digits = match.groups()
    low, high = int(bounds[0]), int(bounds[1])
    significant = digits.lstrip("0")
    if len(significant) > 18:  # beyond int64, and beyond Python's int-from-text limit
        raise DataError(f"{where}: value {sign}{significant[:12]}... ({len(significant)} "
                        f"digits) is out of range {low}..{high}; fix that value")
    value = int(sign + digits)
    if not low <= value <= high:
        raise DataError(f"{where}: value {value} is out of range {low}..{high}; fix that value")
    return value


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
    from digitcnn._io import atomic_write_text
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
