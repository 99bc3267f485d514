"""Small files that claim to be huge, and a way to run a command and measure its peak memory.

Each bomb takes little disk and little time to make: sparse files, gzip members of zeros
repeated, a PNG whose rows of zeros compress to almost nothing.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

PEAK_RSS_LIMIT = int(1.5e9)  # bytes

# Runs the command in a child of its own and reports that child's peak RSS: the test
# process's RUSAGE_CHILDREN would include every earlier test's children.
_MEASURE = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stdout.write(done.stdout)\n"
    "sys.stderr.write(done.stderr)\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "sys.stdout.write(f'\\nPEAK_RSS_KB {peak}\\n')\n"
    "sys.exit(done.returncode)\n"
)


def run_measured(argv: list[str], timeout: float = 120) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in bytes) of ``python argv...`` run in a fresh process."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    peak_kb = int(done.stdout.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    return done.returncode, done.stderr, peak_kb * 1024


def sparse_file(path: Path, size: int, prefix: bytes = b"") -> Path:
    """``prefix`` then NUL bytes up to ``size``, stored as a hole: no disk is used."""
    with open(path, "wb") as handle:
        handle.write(prefix)
        handle.truncate(size)
    return path


def gzip_of_zeros(path: Path, head: bytes, total: int, member: int = 1 << 26) -> Path:
    """A gzip file that inflates to ``head`` followed by zeros, ``total`` bytes in all.

    Concatenated gzip members form one stream, so one compressed member of zeros is written
    as often as needed: 4 GB take 4 MB on disk and a fraction of a second to make.
    """
    zeros = gzip.compress(bytes(member), compresslevel=9)
    with open(path, "wb") as handle:
        handle.write(gzip.compress(head))
        remaining = total - len(head)
        while remaining >= member:
            handle.write(zeros)
            remaining -= member
        if remaining:
            handle.write(gzip.compress(bytes(remaining)))
    return path


def blank_png(path: Path, width: int, height: int) -> Path:
    """A grayscale PNG of ``width`` x ``height`` zeros, written without holding its pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the row's pixels
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )
    return path


def npy_header_only(path: Path, shape: tuple[int, ...], dtype: str = "|u1") -> Path:
    """A .npy whose header announces ``shape`` but which holds a few bytes of data."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": dtype, "fortran_order": False, "shape": shape}
        )
        handle.write(bytes(64))
    return path


def main() -> None:
    """``python tests/bombs.py``: every bomb through its CLI; exit code and peak RSS of each."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bombs-") as name:
        _measure_all(Path(name))


def _measure_all(folder: Path) -> None:
    import digitcnn
    from digitcnn.checkpoint import save_model

    def report(name: str, argv: list[str]) -> None:
        code, err, peak = run_measured(argv)
        print(f"{name}: exit {code}, peak RSS {peak / 1e6:.0f} MB; {err.strip()[:110]}")

    def kfold(dataset: str, data_dir: Path) -> list[str]:
        return [
            "-m",
            "digitcnn.kfold",
            "--dataset",
            dataset,
            "--data-dir",
            str(data_dir),
            "--out",
            str(folder / f"run-{dataset}"),
        ]

    report("baseline (missing --data-dir)", kfold("kaggle", folder / "missing"))
    (folder / "kaggle").mkdir()
    header = ",".join(["label"] + [f"pixel{i}" for i in range(784)]) + "\n"
    sparse_file(folder / "kaggle" / "train.csv", 2 << 30, header.encode())
    report("2 GB sparse Kaggle CSV", kfold("kaggle", folder / "kaggle"))
    for announced in (60000, 5_478_000):
        mnist = folder / f"mnist-{announced}"
        mnist.mkdir()
        gzip_of_zeros(
            mnist / "train-images-idx3-ubyte.gz",
            struct.pack(">IIII", 2051, announced, 28, 28),
            4 << 30,
        )
        (mnist / "train-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">II", 2049, 60000) + bytes(60000))
        )
        report(f"IDX .gz inflating to 4 GB, header of {announced} images", kfold("mnist", mnist))
    (folder / "images" / "3").mkdir(parents=True)
    blank_png(folder / "images" / "3" / "huge.png", 13000, 13000)
    report("13000x13000 PNG", kfold("images", folder / "images"))
    save_model(
        digitcnn.create_model("s5", (1, 28, 28)),
        folder / "m.safetensors",
        meta={
            "model": "s5",
            "input_shape": [1, 28, 28],
            "num_classes": 10,
            "classes": list(range(10)),
            "model_options": {},
            "init": "default",
            "scaler": {"kind": "max", "mean": [0.0] * 784, "scale": [255.0] * 784},
        },
    )
    np.save(folder / "x.npy", np.zeros((3, 28, 28), dtype=np.uint8))
    npy_header_only(folder / "huge.npy", (10**9, 28, 28))
    predict = [
        "-m",
        "digitcnn.predict",
        "--model",
        str(folder / "m.json"),
        "--out",
        str(folder / "out.csv"),
        "--input",
    ]
    report("--tta 100000", predict + [str(folder / "x.npy"), "--tta", "100000"])
    report(".npy claiming 730 GiB", predict + [str(folder / "huge.npy")])
    report("baseline predict (3 images)", predict + [str(folder / "x.npy")])


if __name__ == "__main__":
    main()
