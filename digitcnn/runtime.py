"""Device choice, seeding, determinism and the library versions recorded with each run."""
from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

from .errors import ConfigError

__all__ = ["select_device", "seed_everything", "configure_determinism", "library_versions",
           "fold_seed"]


def select_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU. A named device must be available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; "
                          "use --device cpu or --device auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for but is not available; use --device auto")
    return torch.device(name)


def configure_determinism(deterministic: bool) -> None:
    """Turn torch's deterministic algorithms on or off.

    cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when CUDA initialises, so it is set here, before
    any tensor reaches the GPU; setting it later has no effect.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic, warn_only=False)


def fold_seed(seed: int, fold: int) -> int:
    """Fold ``fold``'s seed: each fold is reproducible on its own, whatever ran before it."""
    return seed + fold


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (initialisation, dropout) and return a CPU generator for
    shuffling, seeded the same."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries whose behaviour shapes the results."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("digitcnn", "torchmetrics", "torchvision", "scikit-learn", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
