"""Pixel scaling fitted on a training fold and applied on the device.

sklearn's ``StandardScaler`` computes the statistics (float64, ddof=0, unit scale for
constant pixels, exactly as S5 used it); applying them is a broadcast on device tensors, so
raw uint8 images can stay on the device and be scaled there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

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


def fit_scaler(kind: str, fit_images: torch.Tensor, max_value: int) -> Scaler:
    """Fit a scaler on ``fit_images`` (N, C, H, W).

    ``standard`` and ``global`` are the same computation; they differ in which rows the
    caller passes: the training fold (standard) or every row before splitting (global, S5's
    leak). ``max`` divides by the dataset's largest possible value; ``none`` keeps raw values.
    """
    features = int(np.prod(fit_images.shape[1:]))
    if kind in ("standard", "global"):
        from sklearn.preprocessing import StandardScaler

        flat = fit_images.reshape(len(fit_images), -1).cpu().numpy().astype(np.float64)
        fitted = StandardScaler().fit(flat)
        return Scaler(kind, fitted.mean_.copy(), fitted.scale_.copy())
    if kind == "max":
        return Scaler(kind, np.zeros(features), np.full(features, float(max_value)))
    if kind == "none":
        return Scaler(kind, np.zeros(features), np.ones(features))
    raise ValueError(f"unknown scaler {kind!r}")
