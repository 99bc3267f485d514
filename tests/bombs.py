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
_MEASURE = ("import resource, subprocess, sys\n"
            "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "sys.stdout.write(done.stdout)\n"
            "sys.stderr.write(done.stderr)\n"
            "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
            "sys.stdout.write(f'\\nPEAK_RSS_KB {peak}\\n')\n"
            "sys.exit(done.returncode)\n")


def run_measured(argv: list[str], timeout: float = 120) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in bytes) of ``python argv...`` run in a fresh process."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, *argv],
                          capture_output=True, text=True, timeout=timeout, env=env)
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
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the row's pixels
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def npy_header_only(path: Path, shape: tuple[int, ...], dtype: str = "|u1") -> Path:
    """A .npy whose header announces ``shape`` but which holds a few bytes of data."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": dtype, "fortran_order": False, "shape": shape})
        handle.write(bytes(64))
    return path
