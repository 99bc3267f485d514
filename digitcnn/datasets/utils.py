"""What the dataset adapters share: validated CSV readers, checksum checks and network timeouts.

:func:`read_int_csv` reads a comma-separated table of integers in bounded memory and names the
file, line and column of the first bad value; :func:`read_first_line` reads a header safely;
:func:`verify_checksum` refuses a modified official file; :func:`call_with_timeout`,
:func:`is_offline` and :func:`fetch_timeout` bound what a download may cost.
"""

from __future__ import annotations

import io
import os
import re
import socket
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from digitcnn.errors import DataError

__all__ = [
    "read_int_csv",
    "read_first_line",
    "verify_checksum",
    "call_with_timeout",
    "is_offline",
    "fetch_timeout",
    "OFFLINE_ENV",
    "FETCH_TIMEOUT_ENV",
    "CSV_BLOCK_BYTES",
    "CSV_BYTES_PER_VALUE",
    "GZIP_MAGIC",
    "ZIP_MAGIC",
    "UTF8_BOM",
]

OFFLINE_ENV = "DIGITCNN_OFFLINE"
FETCH_TIMEOUT_ENV = "DIGITCNN_FETCH_TIMEOUT"


def verify_checksum(path: Path, expected: str | None, digest: str, verify: bool) -> None:
    """Refuse a file whose official name promises contents that it does not have."""
    if verify and expected is not None and digest != expected:
        raise DataError(
            f"{path}: SHA-256 {digest[:12]}... does not match the official file's "
            f"{expected[:12]}...; the file is corrupt or modified: download it again, "
            "or pass --no-verify to use it as it is"
        )


# ----------------------------------------------------------------------------- CSV

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
        raw = raw[len(UTF8_BOM) :]
    if b"\x00" in raw:
        raise DataError(
            f"{path}: line 1: holds a NUL byte: the file is binary or UTF-16 text, "
            "not a CSV; save it as a UTF-8 (or ASCII) CSV"
        )
    if len(raw) > limit and not raw.endswith(b"\n"):
        raise DataError(
            f"{path}: line 1 is longer than {limit} bytes; this is not the CSV "
            "expected here: check the file"
        )
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: line 1: byte 0x{raw[err.start]:02x} is not UTF-8 text; save "
            "the file as a UTF-8 (or ASCII) CSV"
        ) from None


def _refuse_compressed(path: Path, start: bytes) -> None:
    if start.startswith(GZIP_MAGIC):
        raise DataError(
            f"{path}: is gzip-compressed, not a plain CSV; decompress it first "
            f"(gunzip -c {path} > {Path(path).stem}-plain.csv) and pass that file"
        )
    if start.startswith(ZIP_MAGIC):
        raise DataError(
            f"{path}: is a zip archive, not a plain CSV; unzip it first and pass the CSV inside"
        )


def read_int_csv(
    path: Path,
    n_columns: int,
    value_range: tuple[int, int],
    *,
    header: Sequence[str] | None = None,
    dtype=np.int64,
    column_ranges: Mapping[int, tuple[int, int]] | None = None,
) -> np.ndarray:
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
            table[rows : rows + len(values)] = values
            rows += len(values)
    if rows == 0:
        raise DataError(
            f"{path}: has {'a header but ' if header is not None else ''}no rows; "
            "download the file again"
        )
    table.resize((rows, n_columns), refcheck=False)
    return table


def _check_header(path: Path, text: str, header: Sequence[str]) -> None:
    if [name.strip() for name in text.split(",")] == list(header):
        return
    shown = text[:60] + ("..." if len(text) > 60 else "")
    for separator, name in ((";", "semicolons"), ("\t", "tabs")):
        if [cell.strip() for cell in text.split(separator)] == list(header):
            raise DataError(
                f"{path}: line 1: the header {shown!r} separates the columns with "
                f"{name}; this file must be comma-separated: save it again with "
                f"commas (e.g. pandas.read_csv(path, sep={separator!r}).to_csv(path, "
                "index=False))"
            )
    expected = ",".join(header[:3]) + ",..." + header[-1]
    raise DataError(
        f"{path}: line 1: header {shown!r} is not the expected {expected!r} "
        f"({len(header)} columns); is this the right file?"
    )


def _csv_blocks(handle, path: Path, line_number: int, max_line: int):
    """Yield (bytes ending at a line end, number of its first line) until the file ends."""
    carry = b""
    while True:
        chunk = handle.read(CSV_BLOCK_BYTES)
        nul = chunk.find(b"\x00")
        if nul >= 0:
            where = line_number + carry.count(b"\n") + chunk.count(b"\n", 0, nul)
            raise DataError(
                f"{path}: line {where}: holds a NUL byte: the file is binary, "
                "UTF-16 text or a corrupt (sparse) copy, not a CSV; save it as a "
                "UTF-8 (or ASCII) CSV, or download it again"
            )
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
            raise DataError(
                f"{path}: line {line_number} is longer than {max_line} bytes; this "
                "is not the CSV expected here: check the file or download it again"
            )


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
    run = digits[: codes.size - width].copy()
    for shift in range(1, width + 1):
        run &= digits[shift : codes.size - width + shift]
    if run.any():
        return None
    try:
        with warnings.catch_warnings():
            # index_col=False keeps pandas from silently taking the first column as an index
            # when every row has one value too many; it warns instead.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.BytesIO(block),
                header=None,
                dtype=np.int64,
                engine="c",
                na_filter=True,
                skip_blank_lines=True,
                index_col=False,
            )
    except (ValueError, OverflowError, pd.errors.ParserError, pd.errors.ParserWarning):
        return None
    values = frame.to_numpy()
    if (
        values.dtype != np.int64
        or values.ndim != 2
        or values.shape[1] != n_columns
        or not _in_range(values, bounds)
    ):
        return None
    return values


def _in_range(values: np.ndarray, bounds: np.ndarray) -> bool:
    """Whether every column lies within its (low, high) ``bounds`` (shape (2, columns))."""
    if len(values) == 0:
        return True
    # Column extremes first: comparing the full table would build large temporaries.
    return bool((values.min(axis=0) >= bounds[0]).all() and (values.max(axis=0) <= bounds[1]).all())


def _column_bounds(n_columns, value_range, column_ranges) -> np.ndarray:
    bounds = np.tile(np.asarray(value_range, dtype=np.int64)[:, None], (1, n_columns))
    for column, (low, high) in (column_ranges or {}).items():
        bounds[:, column] = (low, high)
    return bounds


def _parse_lines(
    path: Path,
    block: bytes,
    line_number: int,
    n_columns: int,
    bounds: np.ndarray,
    header_text: str | None,
) -> np.ndarray:
    """int64 (rows, n_columns) of a block parsed line by line; DataError at the first bad one."""
    rows = []
    for offset, raw in enumerate(block.split(b"\n")):
        number = line_number + offset
        try:
            line = raw.decode("utf-8").strip(_BLANK)
        except UnicodeDecodeError as err:
            raise DataError(
                f"{path}: line {number}: byte 0x{raw[err.start]:02x} is not UTF-8 "
                "text; save the file as a UTF-8 (or ASCII) CSV"
            ) from None
        if not line:
            continue
        if header_text is not None and line == header_text.strip(_BLANK):
            raise DataError(f"{path}: line {number}: the header line is repeated; delete that line")
        fields = line.split(",")
        if len(fields) != n_columns:
            hint = " (truncated row?)" if len(fields) < n_columns else ""
            if len(fields) == 1 and len(line.split(";")) == n_columns:
                hint = " (the values are separated by ';': save the file with commas)"
            raise DataError(
                f"{path}: line {number}: expected {n_columns} comma-separated "
                f"values, found {len(fields)}{hint}; fix or delete that line"
            )
        rows.append(
            [
                _parse_cell(path, number, column, text, bounds[:, column])
                for column, text in enumerate(fields)
            ]
        )
    return np.array(rows, dtype=np.int64).reshape(-1, n_columns)


def _parse_cell(path: Path, line_number: int, column: int, text: str, bounds) -> int:
    where = f"{path}: line {line_number}, column {column + 1}"
    match = _CELL.fullmatch(text)
    if match is None:
        if text.strip(_BLANK).upper() in ("", "NA", "NAN", "NULL", "NONE"):
            raise DataError(f"{where}: missing value; fill it in or delete that line")
        raise DataError(f"{where}: {text.strip(_BLANK)[:20]!r} is not an integer; fix that value")
    sign, digits = match.groups()
    low, high = int(bounds[0]), int(bounds[1])
    significant = digits.lstrip("0")
    if len(significant) > 18:  # beyond int64, and beyond Python's int-from-text limit
        raise DataError(
            f"{where}: value {sign}{significant[:12]}... ({len(significant)} "
            f"digits) is out of range {low}..{high}; fix that value"
        )
    value = int(sign + digits)
    if not low <= value <= high:
        raise DataError(f"{where}: value {value} is out of range {low}..{high}; fix that value")
    return value


# ----------------------------------------------------------------------------- network


def is_offline(offline: bool | None) -> bool:
    """``offline`` when given, else whether ``$DIGITCNN_OFFLINE`` is set (to anything)."""
    if offline is None:
        return bool(os.environ.get(OFFLINE_ENV))
    return offline


def fetch_timeout(timeout: float | None, default: float) -> float:
    """``timeout`` when given, else ``$DIGITCNN_FETCH_TIMEOUT``, else ``default`` (seconds)."""
    if timeout is None:
        return float(os.environ.get(FETCH_TIMEOUT_ENV, default))
    return timeout


def call_with_timeout(fn: Callable, timeout: float):
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
