"""Shared fixtures: small synthetic data files in tmp_path, and the real data when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from digitcnn.results import TIMING_KEYS

# cuBLAS reads this when CUDA starts; tests that ask for --deterministic may not be the first
# to touch the GPU in the session (digitcnn.training.runtime.configure_determinism sets it for a run).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# The browser tests drive Debian's Chromium through Playwright (.ci/run installs it); Playwright
# never downloads a browser of its own.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def playwright_or_skip():
    """Playwright's sync API, or a skip naming what is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    return pytest.importorskip("playwright.sync_api", reason="pip install playwright")


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DIGITCNN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# How a run was executed (fold processes, threads) may differ between a run and its resumed
# copy; what it computed may not.
NOT_RESULTS = (*TIMING_KEYS, "execution")


def without_timings(value):
    """``value`` (metrics.json's content) without its timings and execution details."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in NOT_RESULTS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, monkeypatch):
    """No test reads the user's cache or data folder, or reaches for the network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("DIGITCNN_DATA_DIR", raising=False)
    monkeypatch.setenv("DIGITCNN_OFFLINE", "1")


@pytest.fixture(autouse=True)
def one_thread():
    """Test tensors are tiny: one thread is faster than two that wait on each other, and on a
    busy 2-core machine two spinning threads can slow a test tenfold."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def real_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test saying why."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set DIGITCNN_SHARED_DATA to its folder)")
    return path


def synthetic_optdigits(rows: int, seed: int = 0) -> np.ndarray:
    """(rows, 65) int table shaped like optdigits: 64 values 0..16 then a class 0..9.

    Each class has its own mean image plus noise, so that a model can learn something.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % 10
    rng.shuffle(labels)
    prototypes = rng.integers(0, 17, size=(10, 64))
    noise = rng.integers(-3, 4, size=(rows, 64))
    pixels = np.clip(prototypes[labels] + noise, 0, 16)
    return np.column_stack([pixels, labels]).astype(np.int64)


def write_table(path: Path, table: np.ndarray, header: list[str] | None = None) -> Path:
    lines = [",".join(header)] if header else []
    lines += [",".join(str(v) for v in row) for row in table]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def optdigits_dir(tmp_path) -> Path:
    """A folder with small synthetic optdigits.tra (120 rows) and optdigits.tes (60 rows)."""
    folder = tmp_path / "optdigits"
    folder.mkdir()
    write_table(folder / "optdigits.tra", synthetic_optdigits(120, seed=1))
    write_table(folder / "optdigits.tes", synthetic_optdigits(60, seed=2))
    return folder
