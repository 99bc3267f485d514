"""One digit picture: decoded safely, and brought to 28x28 the way MNIST was made.

:func:`open_image` decodes a PNG/JPG with its size checked before any pixel is decoded.
:func:`mnist_style` turns one picture of a digit (dark ink on light paper or the reverse, any
size, colour or grayscale) into an MNIST-like 28x28 uint8 image: ink bright on black, the ink's
bounding box scaled to fit 20x20 with its aspect ratio kept (anti-aliased), and placed so that
its centre of mass lies at (14, 14), as in LeCun's MNIST. :func:`optdigits_style` turns that
into UCI optdigits' 8x8 counts. :func:`~digitcnn.datasets.images.load_images` applies
:func:`mnist_style` to a folder of labelled files; a drawing-board app or a predict command
calls it on one image.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from digitcnn.errors import DataError

__all__ = [
    "mnist_style",
    "optdigits_style",
    "optdigits_images",
    "open_image",
    "read_image_bytes",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_FILE_BYTES",
    "MNIST_SIDE",
    "MNIST_BOX",
    "MNIST_CENTRE",
    "MIN_INK_CONTRAST",
]

MNIST_SIDE = 28
MNIST_BOX = 20
# MNIST's centres of mass lie within half a pixel of (14, 14) (row, column; pixel centres at
# integer coordinates): LeCun shifted each 20x20 digit by whole pixels to put it there.
MNIST_CENTRE = 14.0
# The least difference from the background, of 255, that counts as ink; below it an image is
# blank (JPEG noise and paper grain stay well under it).
MIN_INK_CONTRAST = 32
# Pixels fainter than this fraction of the ink's contrast are paper (grain, shadows, JPEG
# ringing), so that they do not stretch the bounding box.
NOISE_FLOOR = 0.2
# Pictures with more pixels are refused before they are decoded (a 13000x13000 PNG of 210 kB
# would take gigabytes): 50 MP holds the largest phone photos (48-50 MP).
MAX_IMAGE_PIXELS = 50_000_000
MAX_IMAGE_FILE_BYTES = 256 << 20
# Larger pictures are box-reduced by a whole factor to at most this many pixels before the
# float steps of mnist_style: a digit that ends as 20x20 loses nothing, and memory stays small.
WORK_PIXELS = 4_000_000
# UCI optdigits: 32x32 bitmaps of normalised digits, on-pixels counted in 4x4 blocks (8x8, 0..16).
OPTDIGITS_BITMAP = 32
OPTDIGITS_BLOCK = 4
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as Pillow's convert("L")


# ----------------------------------------------------------------------------- one image


def mnist_style(image: Image.Image | np.ndarray) -> np.ndarray:
    """One digit picture as an MNIST-style image: uint8 array (28, 28), ink bright on 0.

    Steps, as MNIST was made: grayscale; ink made bright on a dark background (a light
    background, judged by the median of the border pixels, is inverted); the background level
    subtracted and the contrast stretched to 0..255; cropped to the ink's bounding box; scaled
    (Lanczos, anti-aliased) so that the longer side is 20 px, aspect ratio kept; shifted by
    whole pixels so that the centre of mass is at (14, 14) of the 28x28 field (never cutting
    ink off, so a very lopsided digit may stay off centre).

    Args:
        image: a PIL image of any mode (transparency is flattened onto a background that
            contrasts with the ink), or an array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4):
            uint8 0..255, 16-bit 0..65535, bool, or float (0..1 when its maximum is <= 1,
            else 0..255).

    Raises:
        DataError: the image is blank (no pixel differs from the background by at least
            :data:`MIN_INK_CONTRAST` of 255) or has an unusable shape.
    """
    ink = _ink_on_dark(_as_gray(image))
    return _place_by_centre_of_mass(_fit_box(_crop_to_ink(ink), MNIST_BOX), MNIST_SIDE)


def _as_gray(image: Image.Image | np.ndarray) -> np.ndarray:
    """float64 (H, W) with values 0..255, any transparency flattened."""
    if isinstance(image, Image.Image):
        image = _pil_to_array(image)
    values = np.asarray(image)
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[:, :, 0]
    if (
        values.ndim not in (2, 3)
        or (values.ndim == 3 and values.shape[2] not in (3, 4))
        or values.size == 0
    ):
        raise DataError(
            f"an image must have shape (H, W), (H, W, 3) or (H, W, 4), got "
            f"{values.shape}; pass a grayscale or RGB(A) picture"
        )
    values = _to_0_255(values)
    if values.ndim == 2:
        return values
    luma = values[:, :, :3] @ LUMA_WEIGHTS
    if values.shape[2] == 3:
        return luma
    return _flatten_alpha(luma, values[:, :, 3] / 255.0)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    factor = _reduction_factor(*image.size)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        # keep 16-bit and float precision; scaled by _to_0_255
        if factor > 1:
            image = image.convert("F").reduce(factor)
    elif image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        image = image.convert("RGBA")
    else:
        image = image.convert("L")
    if factor > 1 and image.mode != "F":
        image = image.reduce(factor)
    return np.asarray(image)


def _reduction_factor(width: int, height: int) -> int:
    """The least whole factor that brings ``width`` x ``height`` to at most WORK_PIXELS."""
    return max(1, math.ceil(math.sqrt(width * height / WORK_PIXELS)))


def _to_0_255(values: np.ndarray) -> np.ndarray:
    if values.dtype == bool:
        return values.astype(np.float64) * 255.0
    scaled = values.astype(np.float64)
    top = float(scaled.max())
    if np.issubdtype(values.dtype, np.floating) and top <= 1.0:
        return scaled * 255.0
    if top > 255:  # a 16-bit picture
        return np.clip(scaled * (255.0 / 65535.0), 0, 255)
    return scaled


def _flatten_alpha(luma: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    # Drawing apps save ink on a transparent background whose hidden colour is arbitrary
    # (often black, like the ink): put the ink on paper of the opposite brightness.
    weight = float(alpha.sum())
    if weight == 0.0:
        return np.zeros_like(luma)
    ink_brightness = float((luma * alpha).sum()) / weight
    paper = 255.0 if ink_brightness < 127.5 else 0.0
    return luma * alpha + paper * (1.0 - alpha)


def _ink_on_dark(gray: np.ndarray) -> np.ndarray:
    """Ink as 0..255 on a background of exactly 0; DataError when there is no ink."""
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    background = float(np.median(border))
    ink = gray - background if background < 127.5 else background - gray
    ink = np.clip(ink, 0.0, None)
    contrast = float(ink.max())
    if contrast < MIN_INK_CONTRAST:
        raise DataError(
            f"blank image: no pixel differs from the background by more than "
            f"{contrast:.0f} of 255 (ink needs {MIN_INK_CONTRAST})"
        )
    ink[ink < NOISE_FLOOR * contrast] = 0.0
    return ink * (255.0 / contrast)


def _crop_to_ink(ink: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(ink.any(axis=1))
    columns = np.flatnonzero(ink.any(axis=0))
    return ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]


def _fit_box(patch: np.ndarray, box: int) -> np.ndarray:
    """``patch`` scaled so that its longer side is ``box`` px, brightest pixel 255 again."""
    height, width = patch.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL wants (w, h)
    resized = Image.fromarray(patch.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    # Lanczos overshoots a little on both sides of an edge.
    scaled = np.clip(np.asarray(resized, dtype=np.float64), 0.0, 255.0)
    top = float(scaled.max())
    # Thin strokes fade when shrunk; MNIST's ink reaches 255, so stretch back to it.
    return scaled * (255.0 / top) if top > 0 else scaled


def _place_by_centre_of_mass(patch: np.ndarray, side: int) -> np.ndarray:
    height, width = patch.shape
    total = float(patch.sum())
    centre_row = float(patch.sum(axis=1) @ np.arange(height)) / total
    centre_column = float(patch.sum(axis=0) @ np.arange(width)) / total
    top = int(np.clip(np.floor(MNIST_CENTRE - centre_row + 0.5), 0, side - height))
    left = int(np.clip(np.floor(MNIST_CENTRE - centre_column + 0.5), 0, side - width))
    canvas = np.zeros((side, side), dtype=np.float64)
    canvas[top : top + height, left : left + width] = patch
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def optdigits_style(image: np.ndarray) -> np.ndarray:
    """An MNIST-style digit (:func:`mnist_style`'s (28, 28) output) in UCI optdigits' form:
    uint8 (8, 8) of on-pixel counts 0..16.

    As optdigits was made from the NIST forms: the digit's bounding box is scaled so that its
    longer side fills a 32x32 bitmap (aspect ratio kept, centred), the bitmap is made on/off at
    half intensity, and the on pixels are counted in each 4x4 block.

    Raises:
        DataError: no pixel reaches half intensity (a blank image).
    """
    ink = np.asarray(image, dtype=np.float64)
    half = 127.5
    rows, columns = np.flatnonzero(ink.max(axis=1) > half), np.flatnonzero(ink.max(axis=0) > half)
    if rows.size == 0:
        raise DataError(
            "the image is blank: no pixel reaches half intensity; draw the digit darker or larger"
        )
    patch = ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    height, width = patch.shape
    factor = OPTDIGITS_BITMAP / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    scaled = np.asarray(
        Image.fromarray(patch.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    )
    bitmap = np.zeros((OPTDIGITS_BITMAP, OPTDIGITS_BITMAP), dtype=bool)
    top, left = (OPTDIGITS_BITMAP - size[1]) // 2, (OPTDIGITS_BITMAP - size[0]) // 2
    bitmap[top : top + size[1], left : left + size[0]] = scaled > half
    blocks = OPTDIGITS_BITMAP // OPTDIGITS_BLOCK
    counts = bitmap.reshape(blocks, OPTDIGITS_BLOCK, blocks, OPTDIGITS_BLOCK).sum(axis=(1, 3))
    return counts.astype(np.uint8)


def optdigits_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) MNIST-style digits -> uint8 (N, 1, 8, 8) in UCI optdigits' form
    (:func:`optdigits_style` of each): how a model trained on optdigits reads 28x28 digits."""
    return torch.from_numpy(
        np.stack([optdigits_style(image) for image in images[:, 0].numpy()])[:, None]
    )


# ----------------------------------------------------------------------------- decoding


def read_image_bytes(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_IMAGE_FILE_BYTES:
        raise DataError(
            f"{path}: {size >> 20} MiB, more than the {MAX_IMAGE_FILE_BYTES >> 20} MiB "
            "digitcnn reads for one picture; scale it down or save it compressed"
        )
    return path.read_bytes()


def open_image(path: str | os.PathLike, stored: bytes | None = None) -> Image.Image:
    """Decode one picture file (its bytes ``stored`` when already read), EXIF-rotated.

    The size is checked from the header before any pixel is decoded: more than
    :data:`MAX_IMAGE_PIXELS` is refused, and a JPEG larger than needed is decoded at a reduced
    scale. Raises DataError naming the file for anything that is not a readable picture.
    """
    path = Path(path)
    if stored is None:
        stored = read_image_bytes(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 MP on; the stricter bound below refuses such a picture.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(stored))
        width, height = picture.size
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(
                f"{path}: {width}x{height} pixels ({width * height / 1e6:.0f} "
                f"megapixels), more than the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels "
                "digitcnn decodes; scale the picture down (a digit needs no more "
                "than a few hundred pixels a side) and try again"
            )
        factor = _reduction_factor(width, height)
        if factor > 1 and picture.format == "JPEG":
            # JPEG decodes at 1/2, 1/4 or 1/8 scale directly, without the full-size pixels.
            picture.draft(picture.mode, (width // factor, height // factor))
        picture.load()
        # Phone cameras store the orientation in EXIF rather than rotating the pixels.
        return ImageOps.exif_transpose(picture)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, DataError):
            raise
        # Pillow's own message would name the in-memory buffer, not the file.
        reason = (
            "Pillow cannot identify its format"
            if isinstance(err, UnidentifiedImageError)
            else f"{type(err).__name__}: {err}"
        )
        raise DataError(
            f"{path}: cannot be decoded as an image ({reason}); remove it from the "
            "folder or replace it with a valid PNG/JPG"
        ) from None
