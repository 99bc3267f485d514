"""Device choice, seeding, determinism and the library versions recorded with each run.

torch is imported inside the functions that use it, so that the CLIs, which import this
module, answer ``--help`` without importing torch.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import TYPE_CHECKING

from digitcnn.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "select_device",
    "seed_everything",
    "configure_determinism",
    "library_versions",
    "fold_seed",
    "fold_generator",
    "warm_up",
    "resolve_precision",
    "autocast_dtype",
    "cpu_cores",
    "fold_workers",
    "cpu_description",
    "gpu_description",
    "die_with_parent",
]


def select_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU. A named device must be available."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but torch sees no CUDA device; "
            "use --device cpu or --device auto"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("--device mps was asked for but is not available; use --device auto")
    return torch.device(name)


def _cpu_has_amx() -> bool:
    import torch

    # torch has no public query for AMX; the private one is guarded so that a torch without it
    # simply means "no".
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # pragma: no cover - a torch build that cannot tell
        return False


def cpu_description() -> dict:
    """``{"model": name, "amx": bool}``: the CPU that CPU timings (and ``--precision auto``)
    depend on. The name is Linux's ``/proc/cpuinfo`` model name, else ``platform.processor()``.
    """
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:  # not Linux
        pass
    return {"model": model, "amx": _cpu_has_amx()}


def gpu_description(device: str | torch.device = "cuda") -> dict | None:
    """``{"name", "capability", "memory_gib", "cuda"}`` of the CUDA device that GPU timings
    depend on (e.g. ``"NVIDIA H200"``, ``"9.0"``); None when ``device`` is not CUDA or torch
    sees no GPU."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    properties = torch.cuda.get_device_properties(device)
    return {
        "name": properties.name,
        "capability": f"{properties.major}.{properties.minor}",
        "memory_gib": round(properties.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
    }


def resolve_precision(name: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"`` for the ``--precision`` setting on ``device``.

    ``auto`` picks bf16 only where it was measured to pay: on CPUs with AMX tiles, where oneDNN
    runs bf16 convolutions on them (``python -m benchmarks --cases choices``; the figures are
    in results/README.md). On CUDA, auto
    stays fp32 until bf16 is measured there; ``--precision bf16`` asks for it.
    """
    import torch

    if name == "fp32":
        return "fp32"
    if name == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                "--precision bf16: this GPU has no bfloat16 support; use --precision fp32"
            )
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(
                f"--precision bf16 is supported on the CPU and CUDA, not on "
                f"{device.type}; use --precision fp32"
            )
        return "bf16"
    return "bf16" if device.type == "cpu" and _cpu_has_amx() else "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: plain float32)."""
    import torch

    return torch.bfloat16 if precision == "bf16" else None


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux's PR_SET_PDEATHSIG; a
    no-op elsewhere): a fold worker or trial process of a killed run then leaves no
    CPU-eating orphan that goes on writing into its folder."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def fold_workers(requested: int | None, folds: int, device: torch.device) -> int:
    """How many fold processes to run: ``--workers``, or by default one per core up to the
    number of folds, on a CPU where processes can be forked; 1 elsewhere."""
    # fork shares the loaded data with the workers for free; it is safe on Linux only (macOS
    # system libraries are not fork-safe), and CUDA does not survive a fork.
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return 1
    wanted = cpu_cores() if requested is None else requested
    return max(1, min(wanted, folds))


def configure_determinism(deterministic: bool) -> None:
    """Turn torch's deterministic algorithms on or off.

    cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when CUDA initialises, so it is set here, before
    any tensor reaches the GPU; setting it later has no effect.
    """
    import torch

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    # torch.use_deterministic_algorithms imports torch._inductor (seconds of start-up), so it
    # is called only to change the setting.
    if (
        torch.are_deterministic_algorithms_enabled() != deterministic
        or torch.is_deterministic_algorithms_warn_only_enabled()
    ):
        torch.use_deterministic_algorithms(deterministic, warn_only=False)


def warm_up(device: torch.device) -> None:
    """Pay a device's one-time start-up costs now, so that they count as set-up, not training.

    On CUDA the first convolution and matrix product create the cuDNN and cuBLAS handles and
    load their kernels lazily (seconds on a fresh process); a tiny forward and backward pass
    of both, with no random numbers drawn, does it here. Nothing to do on the CPU.
    """
    import torch

    if device.type != "cuda":
        return
    images = torch.ones(2, 2, 4, 4, device=device, requires_grad=True)
    kernels = torch.ones(2, 1, 3, 3, device=device, requires_grad=True)
    maps = torch.nn.functional.conv2d(images, kernels, padding=1, groups=2).flatten(1)
    (torch.baddbmm(maps[None, :, :2], maps[None], maps[None].transpose(1, 2)).sum()).backward()
    torch.cuda.synchronize(device)


def fold_seed(seed: int, fold: int) -> int:
    """Fold ``fold``'s seed: each fold is reproducible on its own, whatever ran before it."""
    return seed + fold


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (initialisation, dropout) and return a CPU generator for
    shuffling, seeded the same."""
    import torch

    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def fold_generator(seed: int, device: torch.device) -> torch.Generator:
    """Fold ``seed``'s generator for batch order and augmentation: on the CPU the one
    :func:`seed_everything` returns; on CUDA a generator on the GPU, so that shuffling and
    augmentation draws happen there with no copy from the host."""
    import torch

    if device.type == "cuda":
        return torch.Generator(device=device).manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries whose behaviour shapes the results."""
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("digitcnn", "torchvision", "scikit-learn", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
