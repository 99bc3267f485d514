import hashlib
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import real_data, synthetic_optdigits, write_table

import digitcnn
from digitcnn._io import cache_dir
from digitcnn.datasets import uci as data
from digitcnn.datasets.base import DigitDataset
from digitcnn.errors import DataError


def test_uci_from_original_files(optdigits_dir):
    dataset = digitcnn.load("uci", optdigits_dir, verify=False)
    assert dataset.images.shape == (180, 1, 8, 8)
    assert dataset.images.dtype == torch.uint8
    assert dataset.labels.dtype == torch.int64
    assert dataset.name == "uci" and dataset.max_value == 16
    expected = np.concatenate([synthetic_optdigits(120, 1), synthetic_optdigits(60, 2)])
    assert np.array_equal(dataset.images.reshape(180, 64).numpy(), expected[:, :64])
    assert np.array_equal(dataset.labels.numpy(), expected[:, 64])
    digest = hashlib.sha256((optdigits_dir / "optdigits.tra").read_bytes()).hexdigest()
    assert dataset.sha256["optdigits.tra"] == digest
    assert list(np.unique(dataset.groups, return_counts=True)[1]) == [60, 120]


@pytest.mark.parametrize("split, rows", [("train", 120), ("test", 60), ("all", 180)])
def test_uci_splits(optdigits_dir, split, rows):
    assert len(digitcnn.load("uci", optdigits_dir, split=split, verify=False)) == rows


def test_uci_parent_folder_and_env_variable(optdigits_dir, monkeypatch):
    assert len(digitcnn.load("uci", optdigits_dir.parent, verify=False)) == 180
    monkeypatch.setenv("DIGITCNN_DATA_DIR", str(optdigits_dir))
    assert len(digitcnn.load("uci", verify=False)) == 180


def test_uci_checksum_is_verified(optdigits_dir):
    with pytest.raises(DataError, match=r"optdigits.tra: SHA-256 .* does not match .*--no-verify"):
        digitcnn.load("uci", optdigits_dir)


def test_ucimlrepo_csv_in_data_dir(tmp_path):
    write_table(tmp_path / "optdigits.csv", synthetic_optdigits(50), list(data.UCI_CSV_HEADER))
    dataset = digitcnn.load("uci", tmp_path)
    assert len(dataset) == 50 and dataset.groups is None
    with pytest.raises(DataError, match="does not mark which rows"):
        digitcnn.load("uci", tmp_path, split="train")


def fake_ucimlrepo(monkeypatch, fetch) -> None:
    """Stand in for ucimlrepo (imported by digitcnn when it fetches), installed or not."""
    module = types.ModuleType("ucimlrepo")
    module.fetch_ucirepo = fetch
    monkeypatch.setitem(sys.modules, "ucimlrepo", module)


def test_cache_is_read_before_network(monkeypatch):
    cached = cache_dir("uci") / "optdigits.csv"
    write_table(cached, synthetic_optdigits(40), list(data.UCI_CSV_HEADER))
    monkeypatch.delenv("DIGITCNN_OFFLINE")
    fake_ucimlrepo(monkeypatch, lambda **_: pytest.fail("network was used"))
    dataset = digitcnn.load("uci")
    assert len(dataset) == 40 and str(cached) in dataset.source


def test_ucimlrepo_result_is_cached(monkeypatch):
    table = synthetic_optdigits(data.UCI_ROWS)
    frame = pd.DataFrame(table, columns=list(data.UCI_CSV_HEADER))
    calls = []

    class Fetched:
        class data:
            original = frame

    def fake_fetch(id):
        calls.append(id)
        return Fetched

    monkeypatch.delenv("DIGITCNN_OFFLINE")
    fake_ucimlrepo(monkeypatch, fake_fetch)
    first = digitcnn.load("uci")
    second = digitcnn.load("uci")
    assert calls == [80]
    assert len(first) == len(second) == 5620
    assert torch.equal(first.images, second.images)
    assert (cache_dir("uci") / "optdigits.csv").is_file()


def test_offline_falls_back_to_sklearn_with_warning():
    with pytest.warns(
        RuntimeWarning,
        match=r"sklearn's bundled copy instead: 1,797 of the 5,620 "
        r"rows .* --data-dir",
    ):
        dataset = digitcnn.load("uci")
    assert len(dataset) == 1797
    assert dataset.images.shape == (1797, 1, 8, 8)
    assert "load_digits" in dataset.source


def test_network_failure_falls_back(monkeypatch):
    def broken(**_):
        raise ConnectionError("no route to host")

    monkeypatch.delenv("DIGITCNN_OFFLINE")
    fake_ucimlrepo(monkeypatch, broken)
    with pytest.warns(RuntimeWarning, match="ConnectionError: no route to host"):
        assert len(digitcnn.load("uci")) == 1797


def test_slow_network_times_out(monkeypatch):
    import time

    monkeypatch.delenv("DIGITCNN_OFFLINE")
    fake_ucimlrepo(monkeypatch, lambda **_: time.sleep(5))
    started = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="TimeoutError"):
        data.load_uci(timeout=0.2)
    assert time.perf_counter() - started < 3


def write_bad(folder, line_number, replacement):
    table = synthetic_optdigits(30)
    lines = [",".join(str(v) for v in row) for row in table]
    lines[line_number - 1] = replacement(lines[line_number - 1])
    (folder / "optdigits.tra").write_text("\n".join(lines) + "\n")
    write_table(folder / "optdigits.tes", synthetic_optdigits(10))


@pytest.mark.parametrize(
    "line, change, message",
    [
        (
            7,
            lambda l: l.rsplit(",", 20)[0],
            r"optdigits.tra: line 7: expected 65 comma-separated values, "
            r"found 45 \(truncated row\?\)",
        ),
        (3, lambda l: l + ",4", r"line 3: expected 65 comma-separated values, found 66"),
        (
            5,
            lambda l: "17" + l[l.index(",") :],
            r"line 5, column 1: value 17 is out of range 0..16",
        ),
        (
            9,
            lambda l: l.rsplit(",", 1)[0] + ",12",
            r"line 9, column 65: value 12 is out of range 0..9",
        ),
        (2, lambda l: "x" + l[l.index(",") :], r"line 2, column 1: 'x' is not an integer"),
        (4, lambda l: "," + l[l.index(",") + 1 :], r"line 4, column 1: missing value"),
    ],
)
def test_bad_rows_are_named(tmp_path, line, change, message):
    write_bad(tmp_path, line, change)
    with pytest.raises(DataError, match=message):
        digitcnn.load("uci", tmp_path, verify=False)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match=r"does not exist; pass the folder"):
        digitcnn.load("uci", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"no optdigits.tra/optdigits.tes .* found there"):
        digitcnn.load("uci", tmp_path)
    (tmp_path / "optdigits.tra").write_text("")
    (tmp_path / "optdigits.tes").write_text("")
    with pytest.raises(DataError, match=r"optdigits.tra: the file is empty"):
        digitcnn.load("uci", tmp_path, verify=False)


def test_wrong_csv_header(tmp_path):
    header = list(data.UCI_CSV_HEADER)
    header[-1] = "label"
    write_table(tmp_path / "optdigits.csv", synthetic_optdigits(5), header)
    with pytest.raises(DataError, match=r"optdigits.csv: line 1: header .* is not the expected"):
        digitcnn.load("uci", tmp_path)


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match=r"unknown dataset 'emnist'; choose one of: .*uci"):
        digitcnn.load("emnist")
    with pytest.raises(DataError, match=r"unknown split 'dev'"):
        digitcnn.load("uci", split="dev")


def test_dataset_validates_labels():
    with pytest.raises(DataError, match=r"label 12 at row 1 is out of range 0..9"):
        DigitDataset(
            torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([1, 12]), "toy", "test"
        )
    with pytest.raises(DataError, match=r"3 images but labels of shape \(2,\)"):
        DigitDataset(
            torch.zeros(3, 1, 8, 8, dtype=torch.uint8), torch.tensor([1, 2]), "toy", "test"
        )


def test_subset_keeps_rows_and_provenance(optdigits_dir):
    dataset = digitcnn.load("uci", optdigits_dir, verify=False)
    part = dataset.subset([5, 2, 170])
    assert torch.equal(part.images, dataset.images[[5, 2, 170]])
    assert list(part.groups) == ["train", "train", "test"]
    assert part.sha256 == dataset.sha256


def test_real_uci_optdigits():
    folder = real_data("optdigits")
    dataset = digitcnn.load("uci", folder)
    assert len(dataset) == 5620
    assert dataset.sha256["optdigits.tra"] == data.UCI_RESOURCES["optdigits.tra"][0]
    assert np.bincount(dataset.labels.numpy()).min() >= 550  # classes are balanced
    assert int(dataset.images.max()) == 16
    # optdigits.tes is row for row sklearn's load_digits
    from sklearn.datasets import load_digits

    test_part = dataset.subset(np.flatnonzero(dataset.groups == "test"))
    assert np.array_equal(test_part.images.reshape(-1, 64).numpy(), load_digits().data)
