"""The MNIST IDX adapter: layouts, splits, every kind of bad file, cache, download, real data."""

import gzip
import hashlib
import re
import struct
import time
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from conftest import real_data
from idx_files import (
    OFFICIAL_NAMES,
    idx_images,
    idx_labels,
    synthetic_digits,
    write_file,
    write_mnist,
)

import digitcnn
from digitcnn._io import cache_dir
from digitcnn.datasets._idx import IMAGES_MAGIC, LABELS_MAGIC
from digitcnn.datasets.mnist import load_mnist
from digitcnn.errors import DataError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
    folder = tmp_path / "idx"
    write_mnist(folder)
    return folder


def test_reads_idx_files_into_a_digit_dataset(mnist_dir):
    written = write_mnist(mnist_dir)
    dataset = load_mnist(mnist_dir)
    assert dataset.images.shape == (42, 1, 28, 28) and dataset.images.dtype == torch.uint8
    assert dataset.labels.dtype == torch.int64
    assert dataset.name == "mnist" and dataset.max_value == 255
    expected_images = np.concatenate([written["train"][0], written["test"][0]])
    expected_labels = np.concatenate([written["train"][1], written["test"][1]])
    assert np.array_equal(dataset.images[:, 0].numpy(), expected_images)
    assert np.array_equal(dataset.labels.numpy(), expected_labels)
    assert list(dataset.groups) == ["train"] * 30 + ["test"] * 12
    labels_file = mnist_dir / "t10k-labels-idx1-ubyte.gz"
    assert dataset.sha256[labels_file.name] == hashlib.sha256(labels_file.read_bytes()).hexdigest()
    assert len(dataset.sha256) == 4
    assert dataset.source == f"IDX files not identified as an official dataset from {mnist_dir}"


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("dots", [False, True], ids=["dashes", "dots"])
def test_gzipped_and_plain_files_with_dashes_or_dots(tmp_path, gz, dots):
    written = write_mnist(tmp_path, gz=gz, dots=dots)
    dataset = load_mnist(tmp_path)
    assert len(dataset) == 42
    assert np.array_equal(dataset.labels[:30].numpy(), written["train"][1])
    assert np.array_equal(dataset.images[30:, 0].numpy(), written["test"][0])


def test_content_decides_whether_a_file_is_gzipped(tmp_path):
    """A gunzipped file that kept its .gz name still loads (and the reverse)."""
    images, labels = synthetic_digits(5, seed=3)
    write_file(tmp_path / "t10k-images-idx3-ubyte.gz", idx_images(images), gz=False)
    write_file(tmp_path / "t10k-labels-idx1-ubyte", idx_labels(labels), gz=True)
    dataset = load_mnist(tmp_path)
    assert np.array_equal(dataset.images[:, 0].numpy(), images)
    assert np.array_equal(dataset.labels.numpy(), labels)


@pytest.mark.parametrize("layout", ["MNIST/raw", "mnist", "raw"])
def test_usual_subfolders_are_searched(tmp_path, layout):
    write_mnist(tmp_path / layout)
    dataset = load_mnist(tmp_path)
    assert len(dataset) == 42
    assert dataset.source.endswith(str(tmp_path / layout))


def test_torchvision_raw_folder_with_gz_and_extracted_files(tmp_path):
    """torchvision keeps the .gz and the extracted file side by side; the plain one is read."""
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw, gz=True)
    written = write_mnist(raw, gz=False)
    dataset = load_mnist(tmp_path)
    assert len(dataset) == 42
    assert sorted(dataset.sha256) == sorted(n for pair in OFFICIAL_NAMES.values() for n in pair)
    assert np.array_equal(dataset.labels[30:].numpy(), written["test"][1])


@pytest.mark.parametrize("split, rows, group", [("train", 30, "train"), ("test", 12, "test")])
def test_each_split(mnist_dir, split, rows, group):
    dataset = load_mnist(mnist_dir, split=split)
    assert len(dataset) == rows and set(dataset.groups) == {group}
    assert len(dataset.sha256) == 2


def test_all_means_every_split_present_and_a_missing_split_is_named(tmp_path):
    write_mnist(tmp_path, counts={"test": 12})
    assert len(load_mnist(tmp_path)) == 12
    with pytest.raises(
        DataError,
        match=r"split='train' needs train-images-idx3-ubyte\[\.gz\] and "
        r"train-labels-idx1-ubyte\[\.gz\].*only the test split",
    ):
        load_mnist(tmp_path, split="train")


def test_images_without_their_labels_file(mnist_dir):
    (mnist_dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        DataError,
        match=r"found train-images-idx3-ubyte\.gz but not "
        r"train-labels-idx1-ubyte\[\.gz\]; add the missing file",
    ):
        load_mnist(mnist_dir)


def test_wrong_magic_number(mnist_dir):
    images, _ = synthetic_digits(30, seed=0)
    write_file(
        mnist_dir / "train-images-idx3-ubyte.gz", idx_images(images, magic=LABELS_MAGIC), gz=True
    )
    with pytest.raises(
        DataError,
        match=r"train-images-idx3-ubyte\.gz: magic number 2049 \(that of "
        r"an IDX labels file\) where an IDX images file has 2051",
    ):
        load_mnist(mnist_dir)


def test_wrong_magic_number_in_labels(mnist_dir):
    write_file(mnist_dir / "t10k-labels-idx1-ubyte.gz", b"PK\x03\x04" + bytes(20), gz=True)
    with pytest.raises(
        DataError,
        match=r"t10k-labels-idx1-ubyte\.gz: magic number 1347093252 "
        r"where an IDX labels file has 2049",
    ):
        load_mnist(mnist_dir)


def test_truncated_images_file(mnist_dir):
    images, _ = synthetic_digits(30, seed=0)
    write_file(mnist_dir / "train-images-idx3-ubyte.gz", idx_images(images)[:-100], gz=True)
    with pytest.raises(
        DataError,
        match=r"train-images-idx3-ubyte\.gz: the header announces 30 "
        r"images of 28x28 \(23536 bytes\) but the file holds "
        r"23436 bytes; it is truncated",
    ):
        load_mnist(mnist_dir)


def test_truncated_gzip_stream(mnist_dir):
    path = mnist_dir / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: not a readable gzip file"):
        load_mnist(mnist_dir)


def test_header_only_fragment_and_extra_bytes(mnist_dir):
    write_file(mnist_dir / "t10k-labels-idx1-ubyte.gz", b"\x00\x00\x08", gz=True)
    with pytest.raises(DataError, match=r"3 bytes, too short for an IDX labels header"):
        load_mnist(mnist_dir, split="test")
    _, labels = synthetic_digits(12, seed=1)
    write_file(mnist_dir / "t10k-labels-idx1-ubyte.gz", idx_labels(labels) + b"\x01\x02", gz=True)
    with pytest.raises(
        DataError,
        match=r"announces 12 labels \(20 bytes\) but the file holds 22 "
        r"bytes \(2 extra\)",
    ):
        load_mnist(mnist_dir, split="test")


def test_image_and_label_counts_differ(mnist_dir):
    _, labels = synthetic_digits(29, seed=0)
    write_file(mnist_dir / "train-labels-idx1-ubyte.gz", idx_labels(labels), gz=True)
    with pytest.raises(
        DataError,
        match=r"train-images-idx3-ubyte\.gz holds 30 images but .*"
        r"train-labels-idx1-ubyte\.gz holds 29 labels",
    ):
        load_mnist(mnist_dir)


def test_label_out_of_range(mnist_dir):
    labels = np.arange(12) % 10
    labels[5] = 12
    write_file(mnist_dir / "t10k-labels-idx1-ubyte.gz", idx_labels(labels), gz=True)
    with pytest.raises(
        DataError,
        match=r"t10k-labels-idx1-ubyte\.gz: label 12 at item 5 is out "
        r"of range 0\.\.9",
    ):
        load_mnist(mnist_dir)


def test_wrong_image_size(mnist_dir):
    images, _ = synthetic_digits(30, seed=0, side=32)
    write_file(mnist_dir / "train-images-idx3-ubyte.gz", idx_images(images), gz=True)
    with pytest.raises(
        DataError,
        match=r"train-images-idx3-ubyte\.gz: images are 32x32, MNIST's "
        r"are 28x28",
    ):
        load_mnist(mnist_dir)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"data folder .*nowhere does not exist"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"data folder .*nowhere \(--data-dir\) does not exist"):
        digitcnn.load("mnist", tmp_path / "nowhere")


def test_folder_without_idx_files(tmp_path):
    with pytest.raises(
        DataError,
        match=rf"{tmp_path}: no MNIST IDX files found there or in its "
        r"mnist/, MNIST/raw/ or raw/ subfolders \(it is empty\); "
        r"pass --data-dir",
    ):
        load_mnist(tmp_path)
    (tmp_path / "train.csv").write_text("label,pixel0\n")
    (tmp_path / "train-images-idx1-ubyte.gz").write_bytes(b"")  # idx1 is never an images file
    with pytest.raises(
        DataError,
        match=r"\(it holds train-images-idx1-ubyte\.gz, train\.csv\).*"
        r"yann\.lecun\.com/exdb/mnist",
    ):
        load_mnist(tmp_path)


def write_official_size_test_set(folder: Path) -> None:
    """10,000 images and labels: the size of the official t10k files, but not their contents."""
    images = np.zeros((10000, 28, 28), dtype=np.uint8)
    write_file(folder / "t10k-images-idx3-ubyte", idx_images(images), gz=False)
    write_file(folder / "t10k-labels-idx1-ubyte.gz", idx_labels(np.arange(10000) % 10), gz=True)


def test_official_name_and_size_with_a_foreign_checksum_needs_no_verify(tmp_path):
    write_official_size_test_set(tmp_path)
    with pytest.raises(
        DataError,
        match=r"t10k-images-idx3-ubyte: has the name and size of the "
        r"official t10k-images-idx3-ubyte but not the checksum .*"
        r"pass --no-verify to use it as it is",
    ):
        load_mnist(tmp_path)
    dataset = load_mnist(tmp_path, verify=False)
    assert len(dataset) == 10000 and int(dataset.labels[1234]) == 4
    assert "not identified" in dataset.source


def test_offline_without_cache_or_data_dir():
    with pytest.raises(
        DataError,
        match=r"MNIST is not in the cache .*MNIST/raw and offline mode "
        r"\(\$DIGITCNN_OFFLINE or offline=True\) forbids "
        r"downloading it; pass --data-dir",
    ):
        load_mnist()
    with pytest.raises(DataError, match=r"forbids downloading"):
        digitcnn.load("mnist")


def test_cache_is_read_before_the_network(monkeypatch):
    raw = cache_dir("mnist") / "MNIST" / "raw"
    write_mnist(raw)
    monkeypatch.delenv("DIGITCNN_OFFLINE")
    monkeypatch.setattr(
        "torchvision.datasets.utils.download_url",
        lambda *a, **k: pytest.fail("the network was used"),
    )
    dataset = load_mnist(split="all")
    assert len(dataset) == 42 and dataset.source.endswith(str(raw))


def fake_mirrors(monkeypatch, failing: set[str], delay_s: float = 0.0) -> list[str]:
    """Fake torchvision download_url: mirrors in ``failing`` raise, others serve small files."""
    served = {}
    for seed, (part, count) in enumerate({"train": 30, "test": 12}.items()):
        images, labels = synthetic_digits(count, seed)
        images_name, labels_name = OFFICIAL_NAMES[part]
        served[images_name + ".gz"] = gzip.compress(idx_images(images))
        served[labels_name + ".gz"] = gzip.compress(idx_labels(labels))
    requested = []

    def download_url(url, root, filename=None, md5=None):
        requested.append(url)
        time.sleep(delay_s)
        if any(url.startswith(mirror) for mirror in failing):
            raise URLError("Name or service not known")
        Path(root, filename).write_bytes(served[filename])

    monkeypatch.delenv("DIGITCNN_OFFLINE")
    monkeypatch.setattr("torchvision.datasets.utils.download_url", download_url)
    return requested


def test_download_tries_the_next_mirror_and_fills_the_cache(monkeypatch):
    from torchvision.datasets import MNIST

    first, second = MNIST.mirrors[:2]
    requested = fake_mirrors(monkeypatch, failing={first})
    dataset = load_mnist(split="test")
    assert requested == [
        first + "t10k-images-idx3-ubyte.gz",
        second + "t10k-images-idx3-ubyte.gz",
        second + "t10k-labels-idx1-ubyte.gz",
    ]
    raw = cache_dir("mnist") / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert len(dataset) == 12
    assert np.array_equal(dataset.labels.numpy(), synthetic_digits(12, seed=1)[1])
    # split="all" downloads only what the cache lacks
    assert len(load_mnist()) == 42
    assert requested[3:] == [
        first + "train-images-idx3-ubyte.gz",
        second + "train-images-idx3-ubyte.gz",
        second + "train-labels-idx1-ubyte.gz",
    ]


def test_download_failure_says_why_and_how_to_get_the_files(monkeypatch):
    from torchvision.datasets import MNIST

    fake_mirrors(monkeypatch, failing=set(MNIST.mirrors))
    with pytest.raises(
        DataError,
        match=r"downloading MNIST failed \(https://ossci-datasets.*"
        r"URLError: .*Name or service not known.*\); pass "
        r"--data-dir .* four IDX files",
    ):
        load_mnist()
    assert list((cache_dir("mnist") / "MNIST" / "raw").iterdir()) == []


def test_download_times_out_per_mirror(monkeypatch):
    requested = fake_mirrors(monkeypatch, failing=set(), delay_s=2.0)
    started = time.perf_counter()
    with pytest.raises(
        DataError,
        match=r"downloading MNIST failed .*TimeoutError: no answer "
        r"within 0\.1 s",
    ):
        load_mnist(timeout=0.1)
    assert time.perf_counter() - started < 1.5
    assert len(requested) == 2  # one attempt per mirror, then the error


def test_registry_goes_through_load_mnist(mnist_dir):
    assert "mnist" in digitcnn.list_datasets()
    dataset = digitcnn.load("mnist", mnist_dir, split="test")
    assert dataset.name == "mnist" and len(dataset) == 12
    assert np.array_equal(dataset.labels.numpy(), synthetic_digits(12, seed=1)[1])


# ----------------------------------------------------------------------------- real data


def test_real_mnist_test_set_is_verified_by_checksum():
    folder = real_data("mnist")
    dataset = digitcnn.load("mnist", folder, split="test")
    assert dataset.images.shape == (10000, 1, 28, 28)
    assert dataset.source == f"MNIST (by checksum) from {folder}"
    assert dataset.sha256["t10k-images-idx3-ubyte.gz"] == (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
    )
    assert dataset.labels[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
    assert dataset.labels.bincount().tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    assert int(dataset.images.max()) == 255 and set(dataset.groups) == {"test"}
    with pytest.raises(DataError, match=r"split='train' needs train-images-idx3-ubyte"):
        digitcnn.load("mnist", folder, split="train")


def fashion_mnist() -> Path:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(
            f"Fashion-MNIST not found at {FASHION_MNIST} (apt-get install dataset-fashion-mnist)"
        )
    return FASHION_MNIST


def test_fashion_mnist_from_debian_is_identified_and_full_size():
    folder = fashion_mnist()
    dataset = load_mnist(folder)
    assert dataset.images.shape == (70000, 1, 28, 28)
    assert dataset.source == f"Fashion-MNIST (by checksum) from {folder}"
    assert dataset.labels.bincount().tolist() == [7000] * 10
    assert (dataset.groups == "train").sum() == 60000
    train = load_mnist(folder, split="train")
    assert len(train) == 60000 and torch.equal(train.images, dataset.images[:60000])


def test_files_of_two_datasets_are_refused(tmp_path):
    mnist = real_data("mnist")
    fashion = fashion_mnist()
    (tmp_path / "t10k-images-idx3-ubyte.gz").symlink_to(mnist / "t10k-images-idx3-ubyte.gz")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").symlink_to(fashion / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(
        DataError,
        match=r"the files come from different datasets \(t10k-images-"
        r"idx3-ubyte\.gz is MNIST, t10k-labels-idx1-ubyte\.gz is "
        r"Fashion-MNIST\); use the four files of one dataset",
    ):
        load_mnist(tmp_path)
    mixed = load_mnist(tmp_path, verify=False)
    assert "t10k-labels-idx1-ubyte.gz: Fashion-MNIST" in mixed.source


# ----------------------------------------------------------------------------- hostile files


def test_count_zero_is_refused(mnist_dir):
    write_file(mnist_dir / "t10k-images-idx3-ubyte.gz", idx_images(np.zeros((0, 28, 28))), gz=True)
    with pytest.raises(
        DataError,
        match=r"t10k-images-idx3-ubyte\.gz: the header announces 0 "
        r"images: the file holds no data; download it again",
    ):
        load_mnist(mnist_dir, split="test")
    write_file(mnist_dir / "t10k-images-idx3-ubyte.gz", idx_images(np.zeros((12, 28, 28))), gz=True)
    write_file(mnist_dir / "t10k-labels-idx1-ubyte.gz", idx_labels(np.zeros(0)), gz=True)
    with pytest.raises(
        DataError,
        match=r"t10k-labels-idx1-ubyte\.gz: the header announces 0 "
        r"labels",
    ):
        load_mnist(mnist_dir, split="test")


def test_extra_bytes_of_a_plain_file_are_counted_exactly(mnist_dir):
    images, _ = synthetic_digits(30, seed=0)
    write_file(mnist_dir / "train-images-idx3-ubyte", idx_images(images) + bytes(1000), gz=False)
    with pytest.raises(
        DataError,
        match=r"train-images-idx3-ubyte: the header announces 30 images "
        r"of 28x28 \(23536 bytes\) but the file holds 24536 bytes "
        r"\(1000 extra\); it is corrupt",
    ):
        load_mnist(mnist_dir, split="train")


def test_header_too_large_is_refused_before_reading(tmp_path):
    header = struct.pack(">IIII", IMAGES_MAGIC, 5_000_000, 28, 28)
    write_file(tmp_path / "train-images-idx3-ubyte", header + bytes(100), gz=False)
    write_file(tmp_path / "train-labels-idx1-ubyte", idx_labels(np.zeros(3)), gz=False)
    with pytest.raises(
        DataError,
        match=r"IDX headers announce 3.7 GiB of images, more than "
        r"digitcnn reads at once \(512 MiB\); a header is corrupt",
    ):
        load_mnist(tmp_path)


@pytest.mark.parametrize(
    "announced, message",
    [
        # The official train count, then 4 GB of zeros: the extra data are found after the
        # announced 47 MB, without inflating the rest.
        (
            60000,
            r"train-images-idx3-ubyte\.gz: the header announces 60000 images of 28x28 "
            r"\(47040016 bytes\) but the file holds at least 63817232 bytes \(at least 16777216 "
            r"extra\); it is corrupt",
        ),
        # A header that announces all 4 GB: refused from the header alone.
        (5_478_000, r"IDX headers announce 4.0 GiB of images, more than digitcnn reads at once"),
    ],
    ids=["extra-data", "announced"],
)
def test_gzip_bomb_is_refused_in_bounded_memory(tmp_path, announced, message):
    from bombs import PEAK_RSS_LIMIT, gzip_of_zeros, run_measured

    header = struct.pack(">IIII", IMAGES_MAGIC, announced, 28, 28)
    gzip_of_zeros(tmp_path / "train-images-idx3-ubyte.gz", header, 4 << 30)
    write_file(tmp_path / "train-labels-idx1-ubyte.gz", idx_labels(np.arange(60000) % 10), gz=True)
    assert (tmp_path / "train-images-idx3-ubyte.gz").stat().st_size < 10 << 20
    code, err, peak = run_measured(
        [
            "-m",
            "digitcnn.kfold",
            "--dataset",
            "mnist",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2, err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 1e9:.2f} GB"
