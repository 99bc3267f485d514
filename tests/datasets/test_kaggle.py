"""Kaggle Digit Recognizer adapter: validation, splits, pixel order, speed on 42,000 rows."""

from __future__ import annotations

import gzip
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import real_data

import digitcnn
from digitcnn._io import cache_dir
from digitcnn.datasets import kaggle
from digitcnn.errors import DataError

# Built here from the format's description rather than taken from the module under test.
PIXEL_NAMES = [f"pixel{i}" for i in range(784)]
TRAIN_HEADER = ",".join(["label"] + PIXEL_NAMES)
TEST_HEADER = ",".join(PIXEL_NAMES)

# The warning is shown once per process; every test here starts as a fresh process would,
# and the tests that are not about the warning do not want to see it.
pytestmark = pytest.mark.filterwarnings("ignore:Kaggle's Digit Recognizer:RuntimeWarning")


@pytest.fixture(autouse=True)
def fresh_process_warning_state():
    kaggle._warn_contamination_once.cache_clear()
    yield
    kaggle._warn_contamination_once.cache_clear()


def synthetic_rows(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, 784) pixels 0..255, mostly background as in digits, and labels 0..9."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(rows, 784)) * (rng.random((rows, 784)) < 0.2)
    return pixels.astype(np.uint8), rng.integers(0, 10, size=rows)


def csv_lines(pixels: np.ndarray, labels: np.ndarray | None = None) -> list[str]:
    header = TRAIN_HEADER if labels is not None else TEST_HEADER
    table = pixels if labels is None else np.column_stack([labels, pixels])
    return [header] + [",".join(map(str, row)) for row in table]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def kaggle_dir(tmp_path) -> Path:
    """train.csv (50 labelled rows) and test.csv (30 unlabelled rows)."""
    folder = tmp_path / "kaggle-data"
    folder.mkdir()
    write_lines(folder / "train.csv", csv_lines(*synthetic_rows(50, seed=1)))
    write_lines(folder / "test.csv", csv_lines(synthetic_rows(30, seed=2)[0]))
    return folder


def test_train_csv_rows_become_images_and_labels(kaggle_dir):
    pixels, labels = synthetic_rows(50, seed=1)
    data = kaggle.load_kaggle(kaggle_dir, split="train")
    assert data.name == "kaggle" and len(data) == 50 and data.max_value == 255
    assert data.images.dtype == torch.uint8 and data.images.shape == (50, 1, 28, 28)
    assert data.labels.dtype == torch.int64
    assert torch.equal(data.labels, torch.from_numpy(labels.astype(np.int64)))
    assert np.array_equal(data.images.reshape(50, 784).numpy(), pixels)
    assert data.source == str(kaggle_dir / "train.csv")
    expected = hashlib.sha256((kaggle_dir / "train.csv").read_bytes()).hexdigest()
    assert data.sha256 == {"train.csv": expected}


def test_pixel_column_lands_at_row_and_column(tmp_path):
    pixels = np.zeros((3, 784), dtype=np.int64)
    pixels[0, 3 * 28 + 17] = 200  # pixel101: row 3, column 17
    pixels[1, 27 * 28 + 0] = 7  # pixel756: row 27, column 0
    pixels[2] = np.arange(784) % 251  # every position distinct within a row
    write_lines(tmp_path / "train.csv", csv_lines(pixels, np.array([1, 2, 3])))
    images = kaggle.load_kaggle(tmp_path).images
    assert images[0, 0, 3, 17] == 200 and int(images[0].sum()) == 200
    assert images[1, 0, 27, 0] == 7 and int(images[1].sum()) == 7
    rows, columns = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    assert np.array_equal(images[2, 0].numpy(), (rows * 28 + columns) % 251)


def test_test_csv_has_no_labels(kaggle_dir):
    data = kaggle.load_kaggle(kaggle_dir, split="test")
    assert data.labels is None and not data.has_labels and len(data) == 30
    assert np.array_equal(data.images.reshape(30, 784).numpy(), synthetic_rows(30, seed=2)[0])
    assert list(data.sha256) == ["test.csv"]


def test_all_means_the_labelled_train_csv(kaggle_dir):
    data = digitcnn.load("kaggle", kaggle_dir)  # split="all" through the registry
    assert len(data) == 50 and data.labels is not None
    (kaggle_dir / "train.csv").unlink()
    only_test = kaggle.load_kaggle(kaggle_dir, split="all")
    assert len(only_test) == 30 and only_test.labels is None


def test_missing_split_file_is_named(kaggle_dir):
    (kaggle_dir / "train.csv").unlink()
    with pytest.raises(
        DataError,
        match=r"no train.csv, only test.csv, which has no labels; "
        r"split='train' needs Kaggle's train.csv",
    ):
        kaggle.load_kaggle(kaggle_dir, split="train")
    write_lines(kaggle_dir / "train.csv", csv_lines(*synthetic_rows(5)))
    (kaggle_dir / "test.csv").unlink()
    with pytest.raises(DataError, match=r"no test.csv, only train.csv; split='test' needs"):
        kaggle.load_kaggle(kaggle_dir, split="test")


def test_subfolder_and_single_file(kaggle_dir):
    assert len(kaggle.load_kaggle(kaggle_dir.parent / "kaggle-data" / "train.csv")) == 50
    unlabelled = kaggle.load_kaggle(kaggle_dir / "test.csv")
    assert unlabelled.labels is None and len(unlabelled) == 30
    nested = kaggle_dir / "digit-recognizer"
    nested.mkdir()
    (kaggle_dir / "train.csv").rename(nested / "train.csv")
    (kaggle_dir / "test.csv").rename(nested / "test.csv")
    assert len(kaggle.load_kaggle(kaggle_dir)) == 50
    with pytest.raises(DataError, match=r"test.csv: has no label column .* split='train' cannot"):
        kaggle.load_kaggle(nested / "test.csv", split="train")
    with pytest.raises(DataError, match=r"train.csv: has a label column .* split='test' means"):
        kaggle.load_kaggle(nested / "train.csv", split="test")


def test_without_files_says_how_to_get_them(tmp_path):
    how = r"kaggle competitions download -c digit-recognizer.*--data-dir"
    with pytest.raises(
        DataError,
        match=r"no --data-dir given and no Kaggle train.csv/test.csv "
        r"in the cache .*" + how,
    ):
        kaggle.load_kaggle()
    with pytest.raises(DataError, match=r"no --data-dir given"):
        digitcnn.load("kaggle")
    with pytest.raises(
        DataError,
        match=r"no train.csv or test.csv there or in its "
        r"digit-recognizer/ or kaggle/ subfolder; .*" + how,
    ):
        kaggle.load_kaggle(tmp_path)
    (tmp_path / "digit-recognizer.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    with pytest.raises(
        DataError,
        match=r"found digit-recognizer.zip but no train.csv or "
        r"test.csv; unzip it first",
    ):
        kaggle.load_kaggle(tmp_path)
    with pytest.raises(DataError, match=r"nowhere: no such file or folder"):
        kaggle.load_kaggle(tmp_path / "nowhere")


def test_cache_is_read_without_data_dir():
    write_lines(cache_dir("kaggle") / "train.csv", csv_lines(*synthetic_rows(12, seed=5)))
    data = kaggle.load_kaggle()
    assert len(data) == 12 and str(cache_dir("kaggle")) in data.source


def _replace_line(number: int, change):
    def edit(lines: list[str]) -> list[str]:
        lines[number - 1] = change(lines[number - 1])
        return lines

    return edit


def _set_value(column: int, text: str):
    """Replace the value in 1-based ``column`` of a line."""

    def change(line: str) -> str:
        values = line.split(",")
        values[column - 1] = text
        return ",".join(values)

    return change


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            _replace_line(1, lambda l: l.replace("label", "Label", 1)),
            r"train.csv: line 1: header 'Label,pixel0,pixel1.*is not the expected "
            r"'label,pixel0,pixel1,...pixel783' \(785 columns\)",
        ),
        (
            _replace_line(1, lambda l: l.rsplit(",", 1)[0]),
            r"train.csv: line 1: header .* is not the expected",
        ),
        (
            lambda lines: lines[:-1] + [lines[-1][: len(lines[-1]) // 2]],
            r"train.csv: line 51: expected 785 comma-separated values, found \d+ \(truncated row\?\); "
            r"fix or delete that line",
        ),
        (
            lambda lines: lines[:20] + [lines[0]] + lines[20:],
            r"train.csv: line 21: the header line is repeated; delete that line",
        ),
        (
            _replace_line(7, _set_value(300, "abc")),
            r"train.csv: line 7, column 300: 'abc' is not an integer; fix that value",
        ),
        (
            _replace_line(9, _set_value(2, "256")),
            r"train.csv: line 9, column 2: value 256 is out of range 0..255; fix that value",
        ),
        (
            _replace_line(10, _set_value(5, "-1")),
            r"train.csv: line 10, column 5: value -1 is out of range 0..255",
        ),
        (
            _replace_line(4, _set_value(1, "10")),
            r"train.csv: line 4, column 1: value 10 is out of range 0..9; fix that value",
        ),
        (
            _replace_line(5, _set_value(10, "")),
            r"train.csv: line 5, column 10: missing value; fill it in or delete that line",
        ),
        (_replace_line(6, _set_value(33, "NA")), r"train.csv: line 6, column 33: missing value"),
        (
            _replace_line(6, lambda l: l + ",0"),
            r"train.csv: line 6: expected 785 comma-separated values, found 786; fix or delete",
        ),
        (
            _replace_line(8, lambda l: l.rsplit(",", 1)[0]),
            r"train.csv: line 8: expected 785 comma-separated values, found 784 \(truncated row\?\)",
        ),
        # One value too many on every row: pandas would silently take column 1 as an index.
        (
            lambda lines: lines[:1] + [line + ",0" for line in lines[1:]],
            r"train.csv: line 2: expected 785 comma-separated values, found 786",
        ),
        (lambda lines: lines[:1], r"train.csv: has a header but no rows; download the file again"),
        (lambda lines: [], r"train.csv: the file is empty"),
    ],
)
def test_bad_train_csv_names_file_line_and_problem(tmp_path, edit, message):
    lines = edit(csv_lines(*synthetic_rows(50)))
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    with pytest.raises(DataError, match=message):
        kaggle.load_kaggle(tmp_path)


def test_bad_test_csv_is_named(tmp_path):
    lines = csv_lines(synthetic_rows(20)[0])
    lines[3] = _set_value(1, "300")(lines[3])
    write_lines(tmp_path / "test.csv", lines)
    with pytest.raises(
        DataError,
        match=r"test.csv: line 4, column 1: value 300 is out of range "
        r"0..255",
    ):
        kaggle.load_kaggle(tmp_path, split="test")
    write_lines(tmp_path / "test.csv", [TRAIN_HEADER] + lines[1:])
    with pytest.raises(
        DataError,
        match=r"test.csv: line 1: header 'label,pixel0.* is not the "
        r"expected 'pixel0,pixel1,pixel2,...pixel783' \(784",
    ):
        kaggle.load_kaggle(tmp_path, split="test")


def test_mnist_contamination_warning_once_per_process(kaggle_dir):
    with pytest.warns(
        RuntimeWarning,
        match=r"Kaggle's Digit Recognizer digits .* are MNIST's "
        r"70,000 images .* contaminated",
    ):
        kaggle.load_kaggle(kaggle_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kaggle.load_kaggle(kaggle_dir, split="test")
    assert not [w for w in caught if "Digit Recognizer" in str(w.message)]


def _mnist_test_set() -> tuple[np.ndarray, np.ndarray]:
    folder = real_data("mnist")
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(), dtype=np.uint8, offset=16).reshape(-1, 784)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), dtype=np.uint8, offset=8)
    return images, labels


def test_real_digits_at_kaggle_size_load_exactly(tmp_path):
    # Kaggle's 42,000 rows of real digits; how fast they load is the benchmark's business
    # (a timed unit test fails whenever the machine is busy), that every value survives is ours.
    images, labels = _mnist_test_set()
    rows = np.arange(42000) % len(images)
    # One formatted line per distinct image, repeated: writing 33 million values one by one
    # would take longer than the load itself.
    text_of = np.array([str(v) for v in range(256)])
    lines = [",".join(text_of[row]) for row in np.column_stack([labels, images])]
    (tmp_path / "train.csv").write_text(
        TRAIN_HEADER + "\n" + "\n".join(lines[i] for i in rows) + "\n"
    )
    data = kaggle.load_kaggle(tmp_path, split="train")
    assert data.images.shape == (42000, 1, 28, 28)
    assert np.array_equal(data.images.reshape(42000, 784).numpy(), images[rows])
    assert np.array_equal(data.labels.numpy(), labels[rows].astype(np.int64))


# ----------------------------------------------------------------------------- hostile files


def _train_lines(rows: int = 5) -> list[str]:
    return csv_lines(*synthetic_rows(rows, seed=3))


@pytest.mark.parametrize(
    "text, message",
    [
        # Values that a narrowing parser could wrap (pandas 3.0 read 256 as 0 and -1 as 255),
        # and values beyond every integer type.
        ("0256", r"line 3, column 2: value 256 is out of range 0..255"),
        ("65536", r"line 3, column 2: value 65536 is out of range 0..255"),
        ("4294967296", r"line 3, column 2: value 4294967296 is out of range 0..255"),
        (
            "99999999999999999999999",
            r"line 3, column 2: value 999999999999\.\.\. \(23 digits\) is "
            r"out of range 0..255",
        ),
        ("-0", None),
        (" 7 ", None),
        ("1.5", r"line 3, column 2: '1.5' is not an integer"),
        ("1e2", r"line 3, column 2: '1e2' is not an integer"),
        ("\u0663", r"line 3, column 2: '\u0663' is not an integer"),  # Arabic-Indic digit three
    ],
)
def test_cell_values_are_checked_in_a_wide_type(tmp_path, text, message):
    lines = _train_lines()
    lines[2] = _set_value(2, text)(lines[2])
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if message is None:
        data = kaggle.load_kaggle(path)
        assert int(data.images[1, 0, 0, 0]) == int(text)
        return
    with pytest.raises(DataError, match=r"train.csv: " + message):
        kaggle.load_kaggle(path)


def test_bom_crlf_blank_lines_and_spaces_load_the_same_values(tmp_path):
    pixels, labels = synthetic_rows(6, seed=4)
    lines = csv_lines(pixels, labels)
    lines[3] = " , ".join(lines[3].split(","))  # spaces around every value
    text = "\ufeff" + "\r\n".join(lines[:4] + ["", "  "] + lines[4:]) + "\r\n"
    (tmp_path / "train.csv").write_bytes(text.encode("utf-8"))
    data = kaggle.load_kaggle(tmp_path)
    assert np.array_equal(data.images.reshape(6, 784).numpy(), pixels)
    assert np.array_equal(data.labels.numpy(), labels)


@pytest.mark.parametrize(
    "separator, shown, name", [(";", ";", "semicolons"), ("\t", r"\\t", "tabs")]
)
def test_semicolon_or_tab_header_says_how_to_fix(tmp_path, separator, shown, name):
    lines = [line.replace(",", separator) for line in _train_lines()]
    write_lines(tmp_path / "train.csv", lines)
    with pytest.raises(
        DataError,
        match=rf"train.csv: line 1: the header 'label{shown}pixel0"
        rf"{shown}.*' separates the columns with {name}; "
        r"this file must be comma-separated: save it again with "
        r"commas \(e.g. pandas.read_csv",
    ):
        kaggle.load_kaggle(tmp_path / "train.csv")


def test_semicolon_rows_under_a_comma_header_are_named(tmp_path):
    lines = _train_lines()
    lines[2] = lines[2].replace(",", ";")
    write_lines(tmp_path / "train.csv", lines)
    with pytest.raises(
        DataError,
        match=r"train.csv: line 3: expected 785 comma-separated values, "
        r"found 1 \(the values are separated by ';': save the "
        r"file with commas\)",
    ):
        kaggle.load_kaggle(tmp_path)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda text: gzip.compress(text.encode()),
            r"train.csv: is gzip-compressed, not a plain CSV; decompress it first \(gunzip -c",
        ),
        (
            lambda text: b"PK\x03\x04" + bytes(40),
            r"train.csv: is a zip archive, not a plain CSV; "
            r"unzip it first",
        ),
        (
            lambda text: text.encode("utf-16"),
            r"train.csv: line 1: holds a NUL byte: the file is "
            r"binary or UTF-16 text",
        ),
        (
            lambda text: text.encode()[:9000] + b"\x00" * 5000 + b"\n1,2\n",
            r"train.csv: line 3: holds a NUL byte: the file is binary, UTF-16 text or a corrupt "
            r"\(sparse\) copy",
        ),
        (
            lambda text: text.encode()[:9000] + b"\xff\xfe1,2\n",
            r"train.csv: line 3: byte 0xff is not UTF-8 text; save the file as a UTF-8",
        ),
        (
            lambda text: text.encode().split(b"\n")[0] + b"\n" + b"1," * 40000,
            r"train.csv: line 2 is longer than 25120 bytes; this is not the CSV expected here",
        ),
        (
            lambda text: text.encode().replace(b"\n", b"\r", 3),
            r"train.csv: line 1: header '.*' is not the expected",
        ),
    ],
    ids=["gzip", "zip", "utf16", "nul", "latin1", "endless-line", "cr-only"],
)
def test_files_that_are_not_plain_csv_are_named(tmp_path, make, message):
    path = tmp_path / "train.csv"
    path.write_bytes(make("\n".join(_train_lines()) + "\n"))
    with pytest.raises(DataError, match=message):
        kaggle.load_kaggle(tmp_path)


def test_gzip_named_csv_is_one_line_on_the_command_line(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "train.csv"
    path.write_bytes(gzip.compress(("\n".join(_train_lines()) + "\n").encode()))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "digitcnn.kfold",
            "--dataset",
            "kaggle",
            "--data-dir",
            str(path),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "train.csv: is gzip-compressed, not a plain CSV; decompress it first" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_bad_value_far_into_a_large_file_names_its_line(tmp_path):
    """The file is read in blocks: line numbers and values must carry across them."""
    from digitcnn.datasets import utils as data_module

    pixels, labels = synthetic_rows(3000, seed=6)
    lines = csv_lines(pixels, labels)
    lines[2901] = _set_value(700, "256")(lines[2901])
    write_lines(tmp_path / "train.csv", lines)
    assert (tmp_path / "train.csv").stat().st_size > 2 * data_module.CSV_BLOCK_BYTES // 2
    with pytest.raises(
        DataError,
        match=r"train.csv: line 2902, column 700: value 256 is out of "
        r"range 0..255",
    ):
        kaggle.load_kaggle(tmp_path)
    lines[2901] = _set_value(700, "255")(lines[2901])
    pixels[2900, 698] = 255
    write_lines(tmp_path / "train.csv", lines)
    assert np.array_equal(kaggle.load_kaggle(tmp_path).images.reshape(-1, 784).numpy(), pixels)


def test_two_gigabyte_sparse_csv_is_refused_in_bounded_memory(tmp_path):
    from bombs import PEAK_RSS_LIMIT, run_measured, sparse_file

    sparse_file(tmp_path / "train.csv", 2 << 30, (TRAIN_HEADER + "\n").encode())
    code, err, peak = run_measured(
        [
            "-m",
            "digitcnn.kfold",
            "--dataset",
            "kaggle",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2, err
    assert err.count("\n") == 1 and "train.csv: line 2: holds a NUL byte" in err
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 1e9:.2f} GB"
