"""Fuzzing the readers: mutated Kaggle CSV, UCI, IDX and labels.csv files.

Each mutated file must either load exactly the values that an independent reading of the
format's rules gives, or raise DataError; never another exception, never a wrong value. The
reference readers here follow the documented formats, not the code under test: a row is
valid when it has the right number of comma-separated ASCII integers (spaces around them
allowed) within range; blank lines are skipped; a UTF-8 byte-order mark may start the file.

Bounded: a fixed set of examples (derandomized), a few hundred in all, well under a minute.
"""

from __future__ import annotations

import csv
import gzip
import posixpath
import re
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from digitcnn.errors import DataError  # noqa: E402

FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


def examples(count: int) -> settings:
    """The fixed, derandomized settings with ``count`` examples."""
    return settings(FUZZ, max_examples=count)


pytestmark = pytest.mark.filterwarnings("ignore:Kaggle's Digit Recognizer:RuntimeWarning")

BOM = b"\xef\xbb\xbf"
BLANK = " \t\r\n\f\v"
CELL = re.compile(r"[ \t]*(-?)([0-9]+)[ \t]*", re.ASCII)
# Texts a cell may be replaced by: out of range for pixels or labels, at the edges of the
# integer types a parser might narrow to, malformed, missing.
VALID_TEXTS = ["0", "9", "16", "255", " 5 ", "007", "-0", "\t3"]
CELL_TEXTS = [
    "256",
    "-1",
    "10",
    "17",
    "255",
    "0",
    "16",
    "9",
    "300",
    "0256",
    "65536",
    "-129",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999",
    "",
    "NA",
    "nan",
    "1.0",
    "1e2",
    " 5 ",
    "+3",
    "\u0663",
    "0x1f",
    "7;8",
    "1,",
    ",1",
]
INSERTS = [
    b",",
    b"\n",
    b"\r\n",
    b"\r",
    b"-",
    b"256",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
    b";",
    b"999999999999999999999",
    BOM,
    b"NaN",
    b'"',
    b"\n\n",
    b"\xc3\xa9",
]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]


# ----------------------------------------------------------------------------- mutations


@st.composite
def text_edits(draw, lines: list[str], first_row: int, edges: list[str]) -> list[str]:
    """Replace a few cells of the data lines (index >= first_row) by hostile texts; ``edges``
    are values just outside the format's ranges, which a narrowing parser would wrap."""
    lines = list(lines)
    for _ in range(draw(st.integers(0, 2))):
        row = draw(st.integers(first_row, len(lines) - 1))
        cells = lines[row].split(",")
        # The first and last columns (labels in one format or the other) as often as the rest.
        column = draw(st.integers(0, len(cells) - 1) | st.sampled_from([0, len(cells) - 1]))
        cells[column] = draw(
            st.sampled_from(VALID_TEXTS) | st.sampled_from(edges) | st.sampled_from(CELL_TEXTS)
        )
        lines[row] = ",".join(cells)
    return lines


@st.composite
def byte_edits(draw, data: bytes) -> bytes:
    """Truncate, flip, insert, delete bytes; or encode differently."""
    # Often none or one: files with a single defect, or none, must be common.
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "encode"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "truncate":
            data = data[:at]
        elif kind == "flip" and data:
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        elif kind == "insert":
            data = data[:at] + draw(st.sampled_from(INSERTS)) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 8)) :]
        elif kind == "encode":
            try:
                data = data.decode("utf-8").encode(draw(st.sampled_from(ENCODINGS)))
            except (UnicodeDecodeError, UnicodeEncodeError):
                pass
    return data


# ----------------------------------------------------------------------------- CSV readers


def reference_int_csv(
    data: bytes, n_columns: int, bounds: list[tuple[int, int]], header: list[str] | None
) -> np.ndarray | None:
    """The rows of an integer CSV by the format's rules, or None when the file is invalid."""
    if data.startswith(BOM):
        data = data[len(BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    lines = text.split("\n")
    if header is not None:
        if [name.strip() for name in lines[0].rstrip("\r").split(",")] != header:
            return None
        header_text, lines = lines[0].strip(BLANK), lines[1:]
    rows = []
    for line in lines:
        line = line.strip(BLANK)
        if not line:
            continue
        if header is not None and line == header_text:
            return None
        cells = line.split(",")
        if len(cells) != n_columns:
            return None
        row = []
        for text_cell, (low, high) in zip(cells, bounds):
            match = CELL.fullmatch(text_cell)
            if match is None or len(match.group(2)) > 30:
                return None
            value = int(match.group(1) + match.group(2))
            if not low <= value <= high:
                return None
            row.append(value)
        rows.append(row)
    return np.array(rows, dtype=np.int64).reshape(-1, n_columns) if rows else None


def expect(load, reference):
    """Run ``load``: DataError exactly when the reference finds the file invalid."""
    try:
        loaded = load()
    except DataError:
        event("refused")  # --hypothesis-show-statistics shows how often each outcome came
        assert reference is None, "a valid file was refused"
        return None
    event("loaded")
    assert reference is not None, "an invalid file was accepted"
    return loaded


def kaggle_lines(rows: int = 3) -> list[str]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(rows, 784)) * (rng.random((rows, 784)) < 0.3)
    labels = rng.integers(0, 10, size=rows)
    header = ",".join(["label"] + [f"pixel{i}" for i in range(784)])
    return [header] + [",".join(map(str, row)) for row in np.column_stack([labels, pixels])]


@examples(120)
@given(st.data())
def test_fuzzed_kaggle_csv(data):
    from digitcnn.datasets.kaggle import load_kaggle

    lines = data.draw(text_edits(kaggle_lines(), 1, ["256", "300", "999", "-1", "10", "-0"]))
    raw = data.draw(byte_edits(("\n".join(lines) + "\n").encode()))
    header = ["label"] + [f"pixel{i}" for i in range(784)]
    reference = reference_int_csv(raw, 785, [(0, 9)] + [(0, 255)] * 784, header)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.csv"
        path.write_bytes(raw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            loaded = expect(lambda: load_kaggle(path, split="train"), reference)
    if loaded is not None:
        assert np.array_equal(loaded.labels.numpy(), reference[:, 0])
        assert np.array_equal(loaded.images.reshape(len(loaded), 784).numpy(), reference[:, 1:])


def uci_lines(rows: int = 6) -> list[str]:
    rng = np.random.default_rng(1)
    table = np.column_stack([rng.integers(0, 17, size=(rows, 64)), rng.integers(0, 10, rows)])
    return [",".join(map(str, row)) for row in table]


@examples(120)
@given(st.data())
def test_fuzzed_uci_file(data):
    from digitcnn.datasets.uci import load_uci

    lines = data.draw(text_edits(uci_lines(), 0, ["17", "99", "-1", "10", "255", "256"]))
    raw = data.draw(byte_edits(("\n".join(lines) + "\n").encode()))
    reference = reference_int_csv(raw, 65, [(0, 16)] * 64 + [(0, 9)], None)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "optdigits.tra").write_bytes(raw)
        loaded = expect(lambda: load_uci(Path(folder), split="train", verify=False), reference)
    if loaded is not None:
        assert np.array_equal(loaded.images.reshape(len(loaded), 64).numpy(), reference[:, :64])
        assert np.array_equal(loaded.labels.numpy(), reference[:, 64])


# ----------------------------------------------------------------------------- IDX


def reference_idx(stored: bytes, magic: int) -> np.ndarray | None:
    """Images (N, 28, 28) or labels (N,) of an IDX file by the format's rules, or None."""
    if stored[:2] == b"\x1f\x8b":
        try:
            stored = gzip.decompress(stored)
        except Exception:  # noqa: BLE001 - OSError, EOFError, zlib.error: not a gzip stream
            return None
    header = 16 if magic == 2051 else 8
    if len(stored) < header:
        return None
    found, count = struct.unpack(">II", stored[:8])
    if found != magic or count == 0:
        return None
    if magic == 2051 and struct.unpack(">II", stored[8:16]) != (28, 28):
        return None
    item = 784 if magic == 2051 else 1
    if len(stored) != header + count * item:
        return None
    values = np.frombuffer(stored, dtype=np.uint8, offset=header)
    if magic == 2049:
        return None if values.max() > 9 else values.astype(np.int64)
    return values.reshape(count, 28, 28)


@examples(80)
@given(st.data())
def test_fuzzed_idx_files(data):
    from digitcnn.datasets.mnist import load_mnist

    rng = np.random.default_rng(2)
    count = 4
    images = (
        struct.pack(">IIII", 2051, count, 28, 28)
        + rng.integers(0, 256, count * 784, dtype=np.uint8).tobytes()
    )
    labels = struct.pack(">II", 2049, count) + bytes([3, 1, 4, 1])
    gz = data.draw(st.booleans())
    which = data.draw(st.sampled_from(["images", "labels"]))
    stored = {
        "images": gzip.compress(images) if gz else images,
        "labels": gzip.compress(labels) if gz else labels,
    }
    stored[which] = data.draw(byte_edits(stored[which]))
    ref_images = reference_idx(stored["images"], 2051)
    ref_labels = reference_idx(stored["labels"], 2049)
    valid = ref_images is not None and ref_labels is not None and len(ref_images) == len(ref_labels)
    suffix = ".gz" if gz else ""
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "t10k-images-idx3-ubyte" + suffix).write_bytes(stored["images"])
        Path(folder, "t10k-labels-idx1-ubyte" + suffix).write_bytes(stored["labels"])
        loaded = expect(
            lambda: load_mnist(Path(folder), split="test", verify=False), True if valid else None
        )
    if loaded is not None:
        assert np.array_equal(loaded.images[:, 0].numpy(), ref_images)
        assert np.array_equal(loaded.labels.numpy(), ref_labels)


# ----------------------------------------------------------------------------- labels.csv

IMAGE_NAMES = ("a.png", "b.png", "sub/c.png")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """Three drawn digits, and each one's MNIST-style array."""
    from PIL import Image, ImageDraw

    from digitcnn.datasets.preprocess import mnist_style

    folder = tmp_path_factory.mktemp("labelled")
    expected = {}
    for index, name in enumerate(IMAGE_NAMES):
        picture = Image.new("L", (40, 50), 255)
        ImageDraw.Draw(picture).line([(10 + 5 * index, 5), (25, 45)], fill=0, width=5)
        path = folder / name
        path.parent.mkdir(exist_ok=True)
        picture.save(path)
        expected[name] = mnist_style(picture)
    return folder, expected


def reference_labels_csv(raw: bytes) -> list[tuple[str, int]] | None:
    """(file, label) rows of a labels.csv by its rules, or None when it is invalid."""
    try:
        lines = raw.decode("utf-8-sig").splitlines()
        rows = list(csv.reader(lines))
    except (UnicodeDecodeError, csv.Error):
        return None
    if not rows or [cell.strip() for cell in rows[0]] != ["file", "label"]:
        return None
    entries, seen = [], set()
    for row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 2 or not row[0].strip() or row[1].strip() not in list("0123456789"):
            return None
        name = posixpath.normpath(row[0].strip().replace("\\", "/"))
        if name in seen or name not in IMAGE_NAMES:
            return None
        seen.add(name)
        entries.append((name, int(row[1].strip())))
    return entries if seen == set(IMAGE_NAMES) else None


@examples(60)
@given(data=st.data())
def test_fuzzed_labels_csv(image_folder, data):
    from digitcnn.datasets.images import load_images

    folder, expected = image_folder
    base = ["file,label", "a.png,3", "b.png,1", "sub/c.png,7"]
    lines = list(base)
    for _ in range(data.draw(st.integers(0, 2))):
        row = data.draw(st.integers(1, len(lines) - 1))
        cell = data.draw(st.integers(0, 1))
        cells = lines[row].split(",")
        cells[cell] = data.draw(
            st.sampled_from(["0", "5", " 9 ", "2"])
            | st.sampled_from(
                [
                    "12",
                    "-1",
                    "",
                    "nan",
                    " 4 ",
                    "../a.png",
                    "/etc/passwd",
                    "sub/../a.png",
                    "./b.png",
                    "B.PNG",
                    "sub\\c.png",
                    '"a.png"',
                    "x.png",
                    "a.png ",
                ]
            )
        )
        lines[row] = ",".join(cells)
    raw = data.draw(byte_edits(("\n".join(lines) + "\n").encode()))
    reference = reference_labels_csv(raw)
    (folder / "labels.csv").write_bytes(raw)
    try:
        loaded = expect(lambda: load_images(folder), reference)
    finally:
        (folder / "labels.csv").unlink()
    if loaded is not None:
        assert list(loaded.files) == [name for name, _ in reference]
        assert loaded.labels.tolist() == [label for _, label in reference]
        for row, (name, _) in enumerate(reference):
            assert np.array_equal(loaded.images[row, 0].numpy(), expected[name])
