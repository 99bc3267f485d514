"""The IDX format of MNIST and its look-alikes, read with numpy and checked.

:func:`read_idx_file` streams one IDX file (gzipped or plain, decided by content) straight into
its array: header first (magic number, 28x28, a size limit against corrupt headers and
decompression bombs), then exactly the items announced, then the MD5 that tells MNIST,
Fashion-MNIST and Kuzushiji-MNIST apart (same names, same sizes) and refuses a corrupt copy.
:func:`parse_idx_images` and :func:`parse_idx_labels` do the same for bytes already in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitcnn.datasets.utils import GZIP_MAGIC
from digitcnn.errors import DataError

__all__ = [
    "IdxFile",
    "read_idx_file",
    "announced_count",
    "parse_idx_images",
    "parse_idx_labels",
    "MNIST_CHECKSUMS",
    "OFFICIAL_SIZES",
    "IMAGES_MAGIC",
    "LABELS_MAGIC",
    "IMAGE_SIDE",
    "IMAGES_HEADER_BYTES",
    "LABELS_HEADER_BYTES",
    "MAX_IDX_BYTES",
    "IDX_CHUNK_BYTES",
    "IDX_EXTRA_COUNTED",
]

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
IMAGE_SIDE = 28
IMAGES_HEADER_BYTES = 16
LABELS_HEADER_BYTES = 8
# The most image bytes read at once (684,000 28x28 images; MNIST and its look-alikes have
# 70,000): a header announcing more is corrupt or a decompression bomb, refused before anything
# is read, and what is allowed fits in memory beside torch.
MAX_IDX_BYTES = 1 << 29
# Files are read (and gzip streams inflated) in chunks of this size, straight into the result.
IDX_CHUNK_BYTES = 1 << 22
# Bytes after the announced items that are counted for the message before giving up.
IDX_EXTRA_COUNTED = 1 << 24

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
        "train-images-idx3-ubyte": (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "6bbc9ace898e44ae57da46a324031adb",
        ),
        "train-labels-idx1-ubyte": (
            "d53e105ee54ea40749a09fcbcd1e9432",
            "a25bea736e30d166cdddb491f175f624",
        ),
        "t10k-images-idx3-ubyte": (
            "9fb629c4189551a2d022fa330f9573f3",
            "2646ac647ad5339dbf082846283269ea",
        ),
        "t10k-labels-idx1-ubyte": (
            "ec29112dd5afa0611ce80d1b7f02629c",
            "27ae3e4e09519cfbb04c329615203637",
        ),
    },
    "Fashion-MNIST": {
        "train-images-idx3-ubyte": (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        ),
        "train-labels-idx1-ubyte": (
            "25c81989df183df01b3e8a0aad5dffbe",
            "9018921c3c673c538a1fc5bad174d6f9",
        ),
        "t10k-images-idx3-ubyte": (
            "bef4ecab320f06d8554ea6380940ec79",
            "8181f5470baa50b63fa0f6fddb340f0a",
        ),
        "t10k-labels-idx1-ubyte": (
            "bb300cfdad3c16e7a12a480ee83cd310",
            "15d484375f8d13e6eb1aabb0c3f46965",
        ),
    },
    "Kuzushiji-MNIST": {
        "train-images-idx3-ubyte": ("bdb82020997e1d708af4cf47b453dcf7", None),
        "train-labels-idx1-ubyte": ("e144d726b3acfaa3e44228e80efcd344", None),
        "t10k-images-idx3-ubyte": ("5c965bf0a639b31b8f53240b1b52f4d7", None),
        "t10k-labels-idx1-ubyte": ("7320c461ea6c1c855c0b718fb2a4b134", None),
    },
}


@dataclass(frozen=True)
class IdxFile:
    """One IDX file as read: its values and what its checksum says it is."""

    path: Path
    canonical: str
    values: np.ndarray  # images (N, 1, 28, 28) uint8 or labels (N,) int64
    sha256: str
    dataset: str | None  # "MNIST", "Fashion-MNIST", ... or None when not an official file


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
        raise DataError(
            f"{path}: not a readable gzip file ({err}); the download is truncated "
            "or corrupt: download it again"
        ) from None


def _read_header(stream, path: Path, magic: int) -> tuple[int, int, str]:
    """(count, bytes per item, description) from an IDX header, checked; the stream is left at
    the first item."""
    images = magic == IMAGES_MAGIC
    size = IMAGES_HEADER_BYTES if images else LABELS_HEADER_BYTES
    head = _read_stream(stream, path, size)
    kind = "images" if images else "labels"
    if len(head) < size:
        raise DataError(
            f"{path}: {len(head)} bytes, too short for an IDX {kind} header "
            f"({size} bytes); the file is truncated: download it again"
        )
    found, count = struct.unpack(">II", head[:8])
    _check_magic(path, found, magic, kind)
    if images:
        rows, columns = struct.unpack(">II", head[8:])
        if (rows, columns) != (IMAGE_SIDE, IMAGE_SIDE):
            raise DataError(
                f"{path}: images are {rows}x{columns}, MNIST's are {IMAGE_SIDE}x"
                f"{IMAGE_SIDE}; resize them to 28x28, or load them with the 'images' "
                "dataset"
            )
    if count == 0:
        raise DataError(
            f"{path}: the header announces 0 {kind}: the file holds no data; "
            "download it again or use the right file"
        )
    described = f"{count} images of {IMAGE_SIDE}x{IMAGE_SIDE}" if images else f"{count} labels"
    return count, IMAGE_SIDE * IMAGE_SIDE if images else 1, described


def announced_count(path: Path, magic: int) -> int:
    with _open_idx(path) as stream:
        return _read_header(stream, path, magic)[0]


def read_idx_file(
    path: Path, canonical: str, magic: int, verify: bool, out: np.ndarray | None = None
) -> IdxFile:
    """Stream one IDX file: header first, then exactly the items it announces, checked.

    ``out``: where the items go, when its size is the one announced (else a new array)."""
    header_bytes = IMAGES_HEADER_BYTES if magic == IMAGES_MAGIC else LABELS_HEADER_BYTES
    with _open_idx(path) as stream:
        count, item_bytes, described = _read_header(stream, path, magic)
        expected = header_bytes + count * item_bytes
        if count * item_bytes > MAX_IDX_BYTES:
            raise DataError(
                f"{path}: the header announces {described} ({expected} bytes), more "
                f"than digitcnn reads at once ({MAX_IDX_BYTES >> 20} MiB); the "
                "header is corrupt: download the file again"
            )
        # The MD5 of the contents identifies an official file; only one of official size can be.
        official = expected == OFFICIAL_SIZES[canonical]
        payload_md5 = hashlib.md5(usedforsecurity=False) if official else None
        if payload_md5 is not None:
            stream.seek(0)
            payload_md5.update(_read_stream(stream, path, header_bytes))
        values: np.ndarray = (
            out.reshape(-1)
            if out is not None and out.size == count * item_bytes
            else np.empty(count * item_bytes, dtype=np.uint8)
        )
        view = memoryview(values)  # type: ignore[arg-type]  # numpy's stubs: an array is a buffer
        done = 0
        while done < len(values):
            chunk = _read_stream(stream, path, min(IDX_CHUNK_BYTES, len(values) - done))
            if not chunk:
                raise DataError(
                    f"{path}: the header announces {described} ({expected} bytes) "
                    f"but the file holds {header_bytes + done} bytes; it is "
                    "truncated: download it again"
                )
            view[done : done + len(chunk)] = chunk
            if payload_md5 is not None:
                payload_md5.update(chunk)
            done += len(chunk)
        extra = _count_rest(stream, path)
    if extra:
        at_least = "at least " if extra >= IDX_EXTRA_COUNTED else ""
        raise DataError(
            f"{path}: the header announces {described} ({expected} bytes) but the "
            f"file holds {at_least}{expected + extra} bytes ({at_least}{extra} "
            "extra); it is corrupt: download it again"
        )
    sha256, stored_md5 = _file_digests(path)
    dataset = _identify(
        path, canonical, payload_md5.hexdigest() if payload_md5 else None, stored_md5, verify
    )
    if magic == IMAGES_MAGIC:
        values = values.reshape(count, 1, IMAGE_SIDE, IMAGE_SIDE)  # a view of ``out`` if given
    else:
        values = _checked_labels(values, path)
    return IdxFile(path=path, canonical=canonical, values=values, sha256=sha256, dataset=dataset)


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


def _identify(
    path: Path, canonical: str, payload_md5: str | None, stored_md5: str, verify: bool
) -> str | None:
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
        raise DataError(
            f"{path}: has the name and size of the official {canonical} but not the "
            f"checksum of MNIST's, Fashion-MNIST's or Kuzushiji-MNIST's (MD5 of its "
            f"contents {payload_md5}); the file is corrupt or modified: download it "
            "again, or pass --no-verify to use it as it is"
        )
    return None


def _checked_labels(labels: np.ndarray, path) -> np.ndarray:
    if len(labels) and labels.max() > 9:
        bad = int(np.flatnonzero(labels > 9)[0])
        raise DataError(
            f"{path}: label {labels[bad]} at item {bad} is out of range 0..9; "
            "fix that label or use the right labels file"
        )
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
    other = {
        IMAGES_MAGIC: " (that of an IDX images file)",
        LABELS_MAGIC: " (that of an IDX labels file)",
    }.get(found, "")
    raise DataError(
        f"{path}: magic number {found}{other} where an IDX {kind} file has "
        f"{expected}; this is not an MNIST {kind} file: check the file name or "
        "download it again"
    )


def _check_length(
    path, actual: int, header: int, count: int, item_bytes: int, described: str
) -> None:
    expected = header + count * item_bytes
    if actual < expected:
        raise DataError(
            f"{path}: the header announces {described} ({expected} bytes) but the "
            f"file holds {actual} bytes; it is truncated: download it again"
        )
    if actual > expected:
        raise DataError(
            f"{path}: the header announces {described} ({expected} bytes) but the "
            f"file holds {actual} bytes ({actual - expected} extra); it is corrupt: "
            "download it again"
        )
