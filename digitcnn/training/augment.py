"""Batched random affine augmentation on the device, one random draw per sample.

Keras' ImageDataGenerator (S1) transforms images one at a time on the CPU. Here a whole batch
is warped by one ``affine_grid`` + ``grid_sample`` call on whatever device holds it, each
sample with its own rotation, zoom, shifts and flips, so augmentation costs a few kernels per
batch instead of per-sample Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from digitcnn.errors import ConfigError
from digitcnn.settings import check_settings, setting

if TYPE_CHECKING:
    import torch

__all__ = ["Augmentation", "PRESETS", "augmentation_from_preset"]


@dataclass(frozen=True)
class Augmentation:
    """Random affine settings, in Keras ImageDataGenerator's terms.

    Attributes:
        rotation: maximum rotation in degrees (uniform in [-rotation, rotation]).
        zoom: zoom range; the scale is uniform in [1 - zoom, 1 + zoom].
        shift_x: maximum horizontal shift as a fraction of the width.
        shift_y: maximum vertical shift as a fraction of the height.
        hflip: flip half the images left-right (wrong for digits: a flipped 2 is not a 2).
        vflip: flip half the images upside down.
    """

    rotation: float = setting("train", 0.0, "maximum rotation", low=0, high=180, why="degrees")
    zoom: float = setting("train", 0.0, "zoom range", low=0, high=1, high_open=True)
    shift_x: float = setting(
        "train", 0.0, "maximum horizontal shift", low=0, high=1, high_open=True
    )
    shift_y: float = setting("train", 0.0, "maximum vertical shift", low=0, high=1, high_open=True)
    hflip: bool = setting("train", False, "flip half the images left-right")
    vflip: bool = setting("train", False, "flip half the images upside down")

    def __post_init__(self) -> None:
        check_settings(self)  # the limits above: SettingError naming the setting

    @property
    def active(self) -> bool:
        return bool(
            self.rotation or self.zoom or self.shift_x or self.shift_y or self.hflip or self.vflip
        )

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Warp (N, C, H, W) float ``images``; background (0) fills the uncovered area.

        Call it on raw pixel values, before scaling, so that the fill is true background.
        """
        # imported here: RunConfig validates its settings through this module, and building a
        # config (or --help) must not import torch
        import torch
        import torch.nn.functional as F

        if not self.active:
            return images
        count = images.shape[0]
        device = images.device

        def uniform(limit: float) -> torch.Tensor:
            draw = torch.rand(
                count, generator=generator, device=generator.device if generator else "cpu"
            )
            return ((draw * 2 - 1) * limit).to(device)

        def flips(enabled: bool) -> torch.Tensor:
            if not enabled:
                return torch.ones(count, device=device)
            draw = torch.rand(
                count, generator=generator, device=generator.device if generator else "cpu"
            )
            return torch.where(draw < 0.5, -1.0, 1.0).to(device)

        angle = uniform(math.radians(self.rotation))
        scale = 1 + uniform(self.zoom)
        # affine_grid maps output coordinates to input ones in [-1, 1]: a shift of a fraction f
        # of the width is 2f in those units, and zooming in by s samples a 1/s smaller area.
        shift_x, shift_y = uniform(2 * self.shift_x), uniform(2 * self.shift_y)
        flip_x, flip_y = flips(self.hflip), flips(self.vflip)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # The linear part is (rotation / scale) @ diag(flip_x, flip_y): each flip negates a
        # whole column, so a flipped sample is the exact mirror image of the unflipped one.
        # Flipping single entries instead would turn a rotation into a shear that can squash
        # the digit to a line (at 45 degrees the matrix is singular).
        theta = torch.stack(
            [
                torch.stack([cos * flip_x, -sin * flip_y, shift_x], dim=1),
                torch.stack([sin * flip_x, cos * flip_y, shift_y], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )


# S1's ImageDataGenerator settings. S1 also flipped horizontally, which is wrong for digits;
# "s1" keeps that for faithfulness, "digits" is the same without the flip.
PRESETS: dict[str, Augmentation] = {
    "none": Augmentation(),
    "s1": Augmentation(rotation=15, zoom=0.15, shift_x=0.15, shift_y=0.15, hflip=True),
    "digits": Augmentation(rotation=15, zoom=0.15, shift_x=0.15, shift_y=0.15),
    "light": Augmentation(rotation=10, zoom=0.1, shift_x=0.1, shift_y=0.1),
}


def augmentation_from_preset(name: str, **overrides) -> Augmentation:
    """A preset by name, with some fields replaced (``None`` values are ignored)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown augmentation {name!r}; choose one of: {', '.join(PRESETS)}")
    changes = {key: value for key, value in overrides.items() if value is not None}
    return PRESETS[name] if not changes else Augmentation(**{**PRESETS[name].__dict__, **changes})
