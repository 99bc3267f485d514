"""Batched random affine augmentation: per-sample draws, geometry, presets, validation."""

import math

import pytest
import torch
from conftest import synthetic_optdigits

from digitcnn.config import RunConfig
from digitcnn.errors import ConfigError
from digitcnn.models import create_model
from digitcnn.training import loop as engine
from digitcnn.training.augment import PRESETS, Augmentation, augmentation_from_preset
from digitcnn.training.scaling import fit_scaler


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def single_pixel(count: int, size: int = 8, row: int = 3, col: int = 3) -> torch.Tensor:
    images = torch.zeros(count, 1, size, size)
    images[:, 0, row, col] = 16.0
    return images


def centred_digit(count: int, size: int = 28) -> torch.Tensor:
    """A bright ring well inside the frame, so that no small warp pushes ink out."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    radius = (coords[:, None] ** 2 + coords[None, :] ** 2).sqrt()
    ring = ((radius > 3) & (radius < 6)).float() * 255
    return ring.expand(count, 1, size, size).clone()


def column_centroid(images: torch.Tensor) -> torch.Tensor:
    columns = torch.arange(images.shape[-1], dtype=images.dtype)
    return (images.sum(dim=(1, 2)) * columns).sum(dim=1) / images.sum(dim=(1, 2, 3))


def test_each_sample_gets_its_own_draw():
    images = centred_digit(16)
    out = Augmentation(rotation=20, zoom=0.1, shift_x=0.1, shift_y=0.1)(images, generator())
    distinct = {tuple(o.flatten().round(decimals=3).tolist()) for o in out}
    assert len(distinct) == 16
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_device_are_kept(dtype):
    images = centred_digit(5, size=8).to(dtype)
    out = PRESETS["s1"](images, generator())
    assert out.shape == images.shape
    assert out.dtype == dtype
    assert out.device == images.device


def test_none_is_the_identity():
    images = centred_digit(4)
    assert not PRESETS["none"].active
    assert PRESETS["none"](images, generator()) is images
    assert Augmentation()(images) is images


def test_horizontal_shift_moves_content_within_the_bound():
    """shift_x=0.25 of an 8-pixel width moves a pixel by at most 2 columns, rows untouched."""
    images = single_pixel(64, row=3, col=3)
    out = Augmentation(shift_x=0.25)(images, generator(1))
    moved = column_centroid(out) - 3
    assert moved.abs().max() <= 0.25 * 8 + 1e-4
    assert (moved.abs() > 0.5).sum() > 10  # most draws really move the pixel
    assert moved.min() < -0.5 and moved.max() > 0.5  # both directions
    assert torch.equal(out.sum(dim=(1, 3)).nonzero()[:, 1].unique(), torch.tensor([3]))
    # Bilinear resampling spreads the pixel over two columns but keeps its ink.
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.full((64,), 16.0), atol=1e-3)


def test_vertical_shift_moves_rows_only():
    images = single_pixel(32, row=4, col=2)
    out = Augmentation(shift_y=0.2)(images, generator(2))
    assert torch.equal(out.sum(dim=(1, 2)).nonzero()[:, 1].unique(), torch.tensor([2]))
    rows = torch.arange(8, dtype=torch.float32)
    moved = (out.sum(dim=(1, 3)) * rows).sum(dim=1) / 16 - 4
    assert moved.abs().max() <= 0.2 * 8 + 1e-4
    assert (moved.abs() > 0.3).any()


@pytest.mark.parametrize("flag, dims", [("hflip", [-1]), ("vflip", [-2])])
def test_flip_alone_mirrors_or_keeps_each_sample(flag, dims):
    images = torch.rand(40, 1, 8, 8, generator=generator(3)) * 16
    out = Augmentation(**{flag: True})(images, generator(4))
    mirrored = images.flip(dims)
    flipped = [bool(torch.allclose(o, m, atol=1e-4)) for o, m in zip(out, mirrored)]
    kept = [bool(torch.allclose(o, i, atol=1e-4)) for o, i in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept))  # exactly one of the two, every sample
    assert 10 <= sum(flipped) <= 30


def test_flip_with_rotation_is_the_mirror_of_the_rotation():
    """The flip must mirror the rotated digit, not shear it: same draws with and without it."""
    images = centred_digit(24)
    images[:, :, 8:12, 14:20] = 255  # break the ring's mirror symmetry
    rotated = Augmentation(rotation=45)(images, generator(5))
    both = Augmentation(rotation=45, hflip=True)(images, generator(5))
    flipped = 0
    for with_flip, without in zip(both, rotated):
        if torch.allclose(with_flip, without, atol=1e-3):
            continue
        assert torch.allclose(with_flip, without.flip(-1), atol=1e-3)
        flipped += 1
    assert 4 <= flipped <= 20
    assert torch.allclose(both.sum(dim=(1, 2, 3)), rotated.sum(dim=(1, 2, 3)), rtol=1e-4)


@pytest.mark.parametrize("degrees", [15, 90, 180])
def test_rotation_keeps_the_ink_of_a_centred_digit(degrees):
    images = centred_digit(16)
    out = Augmentation(rotation=degrees)(images, generator(6))
    mass = out.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    assert torch.all((mass - 1).abs() < 0.1)
    assert not torch.allclose(out, images, atol=1.0)


def test_zoom_scales_the_ink():
    """Zooming by s scales a centred digit's area, hence its ink, by about s**2."""
    images = centred_digit(32)
    out = Augmentation(zoom=0.3)(images, generator(7))
    mass = out.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    assert mass.min() < 0.85 and mass.max() > 1.15
    assert mass.min() > 0.7**2 * 0.9 and mass.max() < 1.3**2 * 1.1


def test_a_seeded_generator_reproduces_the_output():
    images = centred_digit(8)
    first = PRESETS["s1"](images, generator(11))
    again = PRESETS["s1"](images, generator(11))
    other = PRESETS["s1"](images, generator(12))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_presets():
    assert PRESETS["s1"] == Augmentation(
        rotation=15, zoom=0.15, shift_x=0.15, shift_y=0.15, hflip=True
    )
    digits = PRESETS["digits"]
    assert (digits.rotation, digits.zoom, digits.shift_x, digits.shift_y) == (15, 0.15, 0.15, 0.15)
    assert not digits.hflip and not digits.vflip
    assert augmentation_from_preset("digits") is digits
    changed = augmentation_from_preset("s1", rotation=5, hflip=False, zoom=None)
    assert changed == Augmentation(rotation=5, zoom=0.15, shift_x=0.15, shift_y=0.15)
    assert RunConfig(augment="s1", hflip=False).augmentation() == PRESETS["digits"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rotation": -1}, r"rotation=-1(\.0)? must be in \[0, 180\] \(degrees\)"),
        ({"rotation": 181}, r"rotation=181(\.0)? must be in \[0, 180\] \(degrees\)"),
        ({"zoom": 1.0}, r"zoom=1\.0 must be in \[0, 1\)"),
        ({"shift_x": 1.5}, r"shift_x=1\.5 must be in \[0, 1\)"),
        ({"shift_y": -0.1}, r"shift_y=-0\.1 must be in \[0, 1\)"),
        ({"rotation": math.nan}, r"rotation=nan (must be in|is not a finite number)"),
    ],
)
def test_invalid_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        Augmentation(**changes)
    with pytest.raises(ConfigError, match=message):
        RunConfig(augment="digits", **changes)


def test_unknown_preset_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"unknown augmentation 'mirror'; choose one of: none, "
        r"s1, digits, light",
    ):
        augmentation_from_preset("mirror")


# ----------------------------------------------------------------------------- in training


def small_fold(rows: int = 120, val: int = 40) -> engine.FoldTensors:
    table = synthetic_optdigits(rows + val, seed=3)
    images = torch.as_tensor(table[:, :64], dtype=torch.uint8).reshape(-1, 1, 8, 8)
    labels = torch.as_tensor(table[:, 64])
    scaler = fit_scaler("standard", images[:rows], 16)
    return engine.FoldTensors(
        images[:rows],
        labels[:rows],
        images[rows:],
        labels[rows:],
        torch.as_tensor(scaler.mean, dtype=torch.float32),
        torch.as_tensor(scaler.scale, dtype=torch.float32),
    )


def test_only_training_batches_are_augmented(monkeypatch):
    calls = []
    original = Augmentation.__call__

    def recording(self, images, generator=None):
        calls.append(len(images))
        return original(self, images, generator)

    monkeypatch.setattr(Augmentation, "__call__", recording)
    data = small_fold()
    config = RunConfig(epochs=2, batch_size=32, test_batch_size=1000, augment="digits", quiet=True)
    torch.manual_seed(0)
    model = create_model("s5", (1, 8, 8), 10)
    outcome = engine.fit(model, data, config, num_classes=10, generator=generator())
    # 120 training rows in batches of 32, two epochs; the 40 validation rows never.
    assert calls == [32, 32, 32, 24] * 2
    calls.clear()
    again = engine.evaluate(model, data, 1000, 10)
    assert calls == []
    assert torch.equal(again.log_probs, outcome.evaluation.log_probs)
    model.eval()
    with torch.no_grad():
        plain = model(data.inputs(data.val_images))
    assert torch.equal(again.log_probs, plain)


def test_augmentation_changes_training():
    data = small_fold()
    losses = {}
    for preset in ("none", "digits"):
        torch.manual_seed(0)
        model = create_model("s5", (1, 8, 8), 10)
        config = RunConfig(epochs=1, batch_size=32, augment=preset, quiet=True)
        losses[preset] = engine.fit(
            model, data, config, num_classes=10, generator=generator()
        ).history.train_loss
    assert losses["none"] != losses["digits"]
