"""Pixel scaling fitted on a training fold and applied on the device.

sklearn's ``StandardScaler`` computes the statistics (float64, ddof=0, unit scale for
constant pixels, exactly as S5 used it); applying them is a broadcast on device tensors, so
raw uint8 images can stay on the device and be scaled there.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from digitcnn.config import SCALERS
from digitcnn.errors import CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = ["Scaler", "fit_scaler"]


@dataclass(frozen=True)
class Scaler:
    """Per-pixel affine scaling ``(x - mean) / scale``.

    Attributes:
        kind: ``"standard"``, ``"global"``, ``"max"`` or ``"none"``.
        mean: (C*H*W,) float64 per-pixel offsets.
        scale: (C*H*W,) float64 per-pixel divisors.
    """

    kind: str
    mean: np.ndarray
    scale: np.ndarray

    def apply(self, images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        """(N, C, H, W) uint8 or float images -> (N, C, H, W) float32 on ``device``."""
        import torch

        device = images.device if device is None else torch.device(device)
        shape = images.shape
        flat = images.to(device=device, dtype=torch.float32).reshape(shape[0], -1)
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=device)
        scale = torch.as_tensor(self.scale, dtype=torch.float32, device=device)
        return ((flat - mean) / scale).reshape(shape)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, values, features: int, where: str) -> Scaler:
        """The scaler a saved model's ``{kind, mean, scale}`` describes, for ``features``
        pixels; anything else (a wrong length, text, NaN, a scale of 0 or below, which would
        divide by zero or flip the pixels) raises CheckpointError naming ``where`` (the file)."""
        fix = "save the model again"
        if not isinstance(values, dict):
            raise CheckpointError(
                f"{where}: scaler must be an object with kind, mean and scale, "
                f"not {type(values).__name__}; {fix}"
            )
        if values.get("kind") not in SCALERS:
            raise CheckpointError(
                f"{where}: scaler kind {values.get('kind')!r} is not one of "
                f"{', '.join(SCALERS)}; {fix}"
            )
        mean, scale = (
            _numbers(values.get(name), name, features, where) for name in ("mean", "scale")
        )
        positive = scale.astype(np.float32) > 0  # float32: 1e-300 would divide by zero
        if not positive.all():
            bad = int(np.flatnonzero(~positive)[0])
            raise CheckpointError(
                f"{where}: scaler scale[{bad}] is {scale[bad]}; every scale must "
                f"be a positive number (pixels are divided by it); {fix}"
            )
        return cls(values["kind"], mean, scale)


def _numbers(values, name: str, count: int, where: str) -> np.ndarray:
    """``values``, a JSON list of ``count`` finite numbers, as float64; else CheckpointError."""
    if not isinstance(values, list) or len(values) != count:
        got = f"{len(values)} values" if isinstance(values, list) else type(values).__name__
        raise CheckpointError(
            f"{where}: scaler {name} must be a list of {count} numbers (one per "
            f"pixel of the input), got {got}; save the model again"
        )
    for position, value in enumerate(values):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise CheckpointError(
                f"{where}: scaler {name}[{position}] is {value!r}, not a "
                "number; save the model again"
            )
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond float's range
            finite = False
        if not finite:
            raise CheckpointError(
                f"{where}: scaler {name}[{position}] is {value!r}, not a "
                "finite number; save the model again"
            )
    array = np.asarray(values, dtype=np.float64)
    # applied in float32: a value beyond its range would become inf there
    too_large = np.flatnonzero(np.abs(array) > np.finfo(np.float32).max)
    if len(too_large):
        raise CheckpointError(
            f"{where}: scaler {name}[{too_large[0]}] is "
            f"{values[too_large[0]]!r}, beyond float32's range; save the model "
            "again"
        )
    return array


def fit_scaler(kind: str, fit_images: torch.Tensor, max_value: float) -> Scaler:
    """Fit a scaler on ``fit_images`` (N, C, H, W).

    ``standard`` and ``global`` are the same computation; they differ in which rows the
    caller passes: the training fold (standard) or every row before splitting (global, S5's
    leak). ``max`` divides by the dataset's largest possible value; ``none`` keeps raw values.
    """
    features = int(np.prod(fit_images.shape[1:]))
    if kind in ("standard", "global"):
        flat = fit_images.reshape(len(fit_images), -1).cpu().numpy().astype(np.float64)
        from sklearn.preprocessing import StandardScaler

        fitted = StandardScaler().fit(flat)
        return Scaler(kind, fitted.mean_.copy(), fitted.scale_.copy())
    if kind == "max":
        return Scaler(kind, np.zeros(features), np.full(features, float(max_value)))
    if kind == "none":
        return Scaler(kind, np.zeros(features), np.ones(features))
    raise ValueError(f"unknown scaler {kind!r}")
