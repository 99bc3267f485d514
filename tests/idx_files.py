"""Small MNIST-format (IDX) files for tests: written in tmp_path, gzipped or plain."""

import gzip
import struct
from pathlib import Path

import numpy as np

from digitcnn.datasets._idx import IMAGES_MAGIC, LABELS_MAGIC

OFFICIAL_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_images(images: np.ndarray, magic: int = IMAGES_MAGIC) -> bytes:
    """IDX bytes for uint8 images of shape (N, H, W)."""
    count, rows, columns = images.shape
    return struct.pack(">IIII", magic, count, rows, columns) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray, magic: int = LABELS_MAGIC) -> bytes:
    return struct.pack(">II", magic, len(labels)) + np.asarray(labels, dtype=np.uint8).tobytes()


def synthetic_digits(count: int, seed: int, side: int = 28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, size=(count, side, side), dtype=np.uint8),
        rng.integers(0, 10, size=count).astype(np.int64),
    )


def idx_name(name: str, dots: bool = False, gz: bool = True) -> str:
    if dots:  # "train-images.idx3-ubyte", the name inside the official .gz files
        name = name.replace("-idx", ".idx")
    return name + (".gz" if gz else "")


def write_file(path: Path, payload: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_mnist(folder: Path, counts=None, gz: bool = True, dots: bool = False) -> dict:
    """Write small IDX files (default 30 train + 12 test images); return the arrays written."""
    counts = {"train": 30, "test": 12} if counts is None else counts
    written = {}
    for seed, (part, count) in enumerate(counts.items()):
        images, labels = synthetic_digits(count, seed)
        images_name, labels_name = OFFICIAL_NAMES[part]
        write_file(folder / idx_name(images_name, dots, gz), idx_images(images), gz)
        write_file(folder / idx_name(labels_name, dots, gz), idx_labels(labels), gz)
        written[part] = (images, labels)
    return written
