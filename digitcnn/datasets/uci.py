"""UCI optdigits adapter: 8x8 images of ink counts 0..16, 5,620 rows (3,823 train + 1,797 test).

Read from the original ``optdigits.tra``/``optdigits.tes`` (checked against their SHA-256) or
ucimlrepo's CSV in a folder, else from the cache, else fetched with ucimlrepo (and cached),
else sklearn's bundled 1,797 rows with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from digitcnn._io import atomic_write_text, cache_dir, sha256_of
from digitcnn.datasets.base import DigitDataset, register_dataset
from digitcnn.datasets.utils import (
    call_with_timeout,
    fetch_timeout,
    is_offline,
    read_int_csv,
    verify_checksum,
)
from digitcnn.errors import DataError

__all__ = [
    "load_uci",
    "UCI_RESOURCES",
    "UCI_ID",
    "UCI_ROWS",
    "UCI_FEATURES",
    "UCI_MAX",
    "UCI_CSV_NAMES",
    "UCI_CSV_HEADER",
    "UCI_HOW_TO_GET",
]

UCI_ID = 80
UCI_ROWS = 5620
UCI_FEATURES = 64
UCI_MAX = 16
# The original files (UCI dataset 80): name -> (SHA-256, rows, original split).
UCI_RESOURCES: dict[str, tuple[str, int, str]] = {
    "optdigits.tra": (
        "e1b683cc211604fe8fd8c4417e6a69f31380e0c61d4af22e93cc21e9257ffedd",
        3823,
        "train",
    ),
    "optdigits.tes": (
        "85f89a0333cbbcf5b1a42f3d4d74013ee35f5e44dbeb5f9b54f78ce5b4f94910",
        1797,
        "test",
    ),
}
# What ucimlrepo serves for id 80, cached by digitcnn under this name.
UCI_CSV_NAMES = ("optdigits.csv", "data.csv")
UCI_CSV_HEADER = tuple(f"Attribute{i}" for i in range(1, UCI_FEATURES + 1)) + ("class",)
DEFAULT_FETCH_TIMEOUT_S = 20.0
UCI_HOW_TO_GET = (
    "pass --data-dir (or set $DIGITCNN_DATA_DIR to) a folder holding optdigits.tra "
    "and optdigits.tes from https://archive.ics.uci.edu/dataset/80, or run once "
    "with network access so that ucimlrepo can fetch and digitcnn can cache them"
)


@register_dataset("uci")
def load_uci(
    data_dir: Path | None = None,
    split: str = "all",
    verify: bool = True,
    offline: bool | None = None,
    timeout: float | None = None,
) -> DigitDataset:
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
            raise DataError(
                f"{data_dir}: no optdigits.tra/optdigits.tes (or ucimlrepo's "
                f"{UCI_CSV_NAMES[0]}) found there or in its optdigits/ subfolder; " + UCI_HOW_TO_GET
            )
        return found
    cached = _uci_from_dir(cache_dir("uci"), split, verify)
    if cached is not None:
        return cached
    offline = is_offline(offline)
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
        wanted = [name for name, (_, _, part) in UCI_RESOURCES.items() if split in ("all", part)]
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
        table = read_int_csv(
            path, UCI_FEATURES + 1, (0, UCI_MAX), column_ranges={UCI_FEATURES: (0, 9)}
        )
        if verify and len(table) != expected_rows:
            raise DataError(
                f"{path}: {len(table)} rows, the official file has {expected_rows}; "
                "download it again or pass --no-verify"
            )
        tables.append(table)
        groups.append(np.full(len(table), part))
        digests[path.name] = digest
    table = np.concatenate(tables)
    source = ", ".join(str(p) for p in paths)
    return _uci_dataset(table, source, digests, np.concatenate(groups))


def _uci_from_csv(path: Path, split: str) -> DigitDataset:
    table = read_int_csv(
        path,
        UCI_FEATURES + 1,
        (0, UCI_MAX),
        header=UCI_CSV_HEADER,
        column_ranges={UCI_FEATURES: (0, 9)},
    )
    if split != "all":
        raise DataError(
            f"{path}: ucimlrepo's CSV does not mark which rows are optdigits.tra "
            f"and which optdigits.tes, so split={split!r} is not available; use the "
            "original files for the writer-disjoint split, or split='all'"
        )
    return _uci_dataset(table, str(path), {path.name: sha256_of(path)}, None)


def _uci_dataset(table: np.ndarray, source: str, digests: dict, groups) -> DigitDataset:
    images = torch.from_numpy(table[:, :UCI_FEATURES].astype(np.uint8)).view(-1, 1, 8, 8)
    labels = torch.from_numpy(table[:, UCI_FEATURES].astype(np.int64))
    return DigitDataset(
        images=images,
        labels=labels,
        name="uci",
        source=source,
        sha256=digests,
        max_value=UCI_MAX,
        groups=groups,
    )


def _uci_from_ucimlrepo(split: str, timeout: float | None) -> DigitDataset:
    if split != "all":
        raise DataError(
            f"ucimlrepo's copy does not mark the original splits, so split={split!r} "
            "needs the original files; " + UCI_HOW_TO_GET
        )
    from ucimlrepo import fetch_ucirepo

    timeout = fetch_timeout(timeout, DEFAULT_FETCH_TIMEOUT_S)
    frame = call_with_timeout(lambda: fetch_ucirepo(id=UCI_ID).data.original, timeout)
    missing = [c for c in UCI_CSV_HEADER if c not in frame.columns]
    if missing or len(frame) != UCI_ROWS:
        raise DataError(
            f"ucimlrepo returned {len(frame)} rows with columns missing {missing[:3]}; "
            "expected 5,620 rows of Attribute1..Attribute64 and class"
        )
    # ucimlrepo fetches on every call; keep what it returned so that later runs are offline.
    target = cache_dir("uci") / UCI_CSV_NAMES[0]
    atomic_write_text(target, frame[list(UCI_CSV_HEADER)].to_csv(index=False))
    return _uci_from_csv(target, split)


def _uci_from_sklearn(split: str, failure: str | None) -> DigitDataset:
    from importlib import resources

    from sklearn.datasets import load_digits

    if split == "train":
        raise DataError(
            "UCI optdigits could not be fetched and sklearn's bundled copy holds only "
            "the test part (optdigits.tes); " + UCI_HOW_TO_GET
        )
    message = (
        f"UCI optdigits could not be fetched ({failure}); using sklearn's bundled copy "
        f"instead: 1,797 of the 5,620 rows (optdigits.tes only). To get the full set, "
        + UCI_HOW_TO_GET
    )
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    digits = load_digits()
    bundled = Path(str(resources.files("sklearn.datasets") / "data" / "digits.csv.gz"))
    images = torch.from_numpy(digits.images.astype(np.uint8)).view(-1, 1, 8, 8)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    digests = {bundled.name: sha256_of(bundled)} if bundled.is_file() else {}
    return DigitDataset(
        images=images,
        labels=labels,
        name="uci",
        source=f"sklearn.datasets.load_digits ({bundled})",
        sha256=digests,
        max_value=UCI_MAX,
        groups=np.full(len(labels), "test"),
    )
