"""Own digit images: MNIST-style preprocessing, folder and CSV labelling, and their errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

import digitcnn
from digitcnn.datasets.images import load_images
from digitcnn.datasets.preprocess import mnist_style
from digitcnn.errors import DataError

BLACK, WHITE = 0, 255


def draw_digit(digit: int, ink: int, paper: int, size=(120, 160)) -> Image.Image:
    """A thick slanted "1" stroke or a "0" ring, grayscale, ``ink`` on ``paper``."""
    picture = Image.new("L", size, paper)
    pen = ImageDraw.Draw(picture)
    width, height = size
    if digit == 1:
        pen.line(
            [(width * 0.58, height * 0.12), (width * 0.42, height * 0.88)],
            fill=ink,
            width=max(3, width // 10),
        )
    else:
        pen.ellipse(
            [width * 0.22, height * 0.15, width * 0.78, height * 0.85],
            outline=ink,
            width=max(3, width // 12),
        )
    return picture


def ink_box(image: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(image.any(axis=1))
    columns = np.flatnonzero(image.any(axis=0))
    return rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1


def assert_mnist_like(image: np.ndarray) -> None:
    assert image.shape == (28, 28) and image.dtype == np.uint8
    assert image.max() == 255
    # Ink bright on black: the border, far from the digit, is background.
    assert image[0].max() == image[-1].max() == image[:, 0].max() == image[:, -1].max() == 0
    height, width = ink_box(image)
    assert height <= 20 and width <= 20 and max(height, width) >= 19
    row, column = ndimage.center_of_mass(image.astype(np.float64))
    assert abs(row - 14) <= 1 and abs(column - 14) <= 1, (row, column)


@pytest.mark.parametrize("digit", [0, 1])
@pytest.mark.parametrize("ink, paper", [(BLACK, WHITE), (WHITE, BLACK), (40, 200)])
def test_mnist_style_inverts_fits_20x20_and_centres(digit, ink, paper):
    image = mnist_style(draw_digit(digit, ink, paper))
    assert_mnist_like(image)


def test_light_and_dark_paper_give_the_same_digit():
    on_paper = mnist_style(draw_digit(0, BLACK, WHITE)).astype(int)
    on_board = mnist_style(draw_digit(0, WHITE, BLACK)).astype(int)
    assert np.abs(on_paper - on_board).max() <= 2
    assert (on_paper > 128).sum() > 60  # a ring, not a speck


def test_aspect_ratio_is_kept():
    wide = Image.new("L", (300, 60), WHITE)
    ImageDraw.Draw(wide).rectangle([20, 20, 279, 39], fill=BLACK)  # 260 x 20 bar
    height, width = ink_box(mnist_style(wide))
    assert width == 20 and height in (1, 2, 3)


def test_arrays_and_colour_modes_match_grayscale():
    reference = mnist_style(draw_digit(1, BLACK, WHITE))
    gray = np.asarray(draw_digit(1, BLACK, WHITE))
    assert np.array_equal(mnist_style(gray), reference)
    assert np.array_equal(mnist_style(gray / 255.0), reference)
    assert np.array_equal(mnist_style(gray.astype(np.uint16) * 257), reference)
    assert np.array_equal(mnist_style(np.repeat(gray[:, :, None], 3, axis=2)), reference)
    assert np.array_equal(mnist_style(Image.fromarray(gray.astype(np.uint16) * 257)), reference)
    # A drawing app's export: black ink on a transparent background whose colour is black too.
    alpha = 255 - gray
    rgba = np.stack([np.zeros_like(gray)] * 3 + [alpha], axis=2)
    assert (
        np.abs(mnist_style(Image.fromarray(rgba, "RGBA")).astype(int) - reference.astype(int)).max()
        <= 2
    )


def test_blank_and_shapeless_images_are_refused():
    with pytest.raises(
        DataError,
        match=r"blank image: no pixel differs from the background by "
        r"more than 0 of 255 \(ink needs 32\)",
    ):
        mnist_style(Image.new("L", (40, 40), WHITE))
    with pytest.raises(
        DataError,
        match=r"an image must have shape \(H, W\), \(H, W, 3\) or "
        r"\(H, W, 4\), got \(4, 4, 2\)",
    ):
        mnist_style(np.zeros((4, 4, 2)))


# ----------------------------------------------------------------------------- folders


def save(picture: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


@pytest.fixture
def digit_folder(tmp_path) -> Path:
    """0/ and 1/ subfolders, PNG and JPG, dark ink on paper and light ink on black."""
    folder = tmp_path / "digits"
    save(draw_digit(0, BLACK, WHITE), folder / "0" / "paper.png")
    save(draw_digit(0, WHITE, BLACK).convert("RGB"), folder / "0" / "board.jpg")
    save(draw_digit(1, BLACK, WHITE, size=(90, 140)), folder / "1" / "paper.JPG")
    save(draw_digit(1, WHITE, BLACK), folder / "1" / "board.png")
    (folder / "1" / "notes.txt").write_text("not an image, ignored")
    (folder / ".thumbnails").mkdir()
    (folder / ".thumbnails" / "x.png").write_bytes(b"hidden, ignored")
    return folder


def test_subfolders_label_the_images(digit_folder):
    data = load_images(digit_folder)
    assert data.name == "images" and len(data) == 4 and data.max_value == 255
    assert data.images.shape == (4, 1, 28, 28) and data.images.dtype == torch.uint8
    assert list(data.files) == ["0/board.jpg", "0/paper.png", "1/board.png", "1/paper.JPG"]
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.groups is None
    for file in data.files:
        assert data.sha256[file] == hashlib.sha256((digit_folder / file).read_bytes()).hexdigest()
    for image in data.images[:, 0].numpy():
        assert_mnist_like(image)
    assert torch.equal(digitcnn.load("images", digit_folder).images, data.images)


def test_labels_csv_in_the_folder_and_elsewhere(tmp_path):
    folder = tmp_path / "flat"
    save(draw_digit(1, BLACK, WHITE), folder / "a.png")
    save(draw_digit(0, BLACK, WHITE), folder / "sub" / "b.png")
    (folder / "labels.csv").write_text("file,label\nsub/b.png,0\na.png,7\n")
    data = load_images(folder)
    assert list(data.files) == ["sub/b.png", "a.png"] and data.labels.tolist() == [0, 7]
    assert "labels.csv" in data.sha256 and "labels.csv" in data.source
    elsewhere = tmp_path / "mine.csv"
    elsewhere.write_text("file,label\na.png,4\nsub/b.png,8\n")
    assert load_images(folder, labels_csv=elsewhere).labels.tolist() == [4, 8]


def test_train_and_test_parts(tmp_path):
    save(draw_digit(1, BLACK, WHITE), tmp_path / "train" / "1" / "a.png")
    save(draw_digit(0, BLACK, WHITE), tmp_path / "train" / "0" / "b.png")
    save(draw_digit(0, WHITE, BLACK), tmp_path / "test" / "0" / "c.png")
    both = load_images(tmp_path)
    assert list(both.files) == ["test/0/c.png", "train/0/b.png", "train/1/a.png"]
    assert list(both.groups) == ["test", "train", "train"] and both.labels.tolist() == [0, 0, 1]
    assert list(load_images(tmp_path, split="train").files) == ["train/0/b.png", "train/1/a.png"]
    assert load_images(tmp_path, split="test").labels.tolist() == [0]


def test_exif_orientation_is_applied(tmp_path):
    lying = Image.new("L", (160, 60), WHITE)
    ImageDraw.Draw(lying).rectangle([10, 20, 149, 39], fill=BLACK)  # a wide bar
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display": the bar stands upright
    path = tmp_path / "1" / "photo.jpg"
    path.parent.mkdir()
    lying.convert("RGB").save(path, exif=exif)
    height, width = ink_box(load_images(tmp_path).images[0, 0].numpy())
    assert height == 20 and width < 6


# ----------------------------------------------------------------------------- errors


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match=r"has nothing to download: pass --data-dir FOLDER"):
        load_images(None)
    with pytest.raises(DataError, match=r"has nothing to download"):
        digitcnn.load("images")
    with pytest.raises(DataError, match=r"missing: no such folder; pass --data-dir FOLDER"):
        load_images(tmp_path / "missing")
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "readme.txt").write_text("no images here")
    with pytest.raises(
        DataError,
        match=r"no images found; add PNG/JPG images in subfolders "
        r"named 0..9",
    ):
        load_images(tmp_path)
    with pytest.raises(DataError, match=r"split='train' needs train/ and test/ subfolders"):
        load_images(tmp_path, split="train")
    with pytest.raises(DataError, match=r"unknown split 'dev'"):
        load_images(tmp_path, split="dev")


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda d: (d / "3" / "bad.png").write_text("this is text"),
            r"3/bad.png: cannot be decoded as an image \(Pillow cannot identify its format\); remove "
            r"it from the folder or replace it with a valid PNG/JPG",
        ),
        (
            lambda d: (d / "3" / "cut.png").write_bytes((d / "3" / "ok.png").read_bytes()[:150]),
            r"3/cut.png: cannot be decoded as an image",
        ),
        (
            lambda d: save(Image.new("L", (50, 50), WHITE), d / "3" / "blank.png"),
            r"3/blank.png: blank image: no pixel differs from the background by more than 0 of 255 "
            r"\(ink needs 32\); remove the file or redraw the digit",
        ),
        (
            lambda d: save(draw_digit(1, BLACK, WHITE), d / "ones" / "x.png"),
            r"ones: subfolder name 'ones' is not a digit 0..9; rename it",
        ),
        (
            lambda d: save(draw_digit(1, BLACK, WHITE), d / "loose.png"),
            r"loose.png: has no label; move it into the subfolder named after its digit",
        ),
    ],
)
def test_bad_files_are_named(tmp_path, make, message):
    save(draw_digit(1, BLACK, WHITE), tmp_path / "3" / "ok.png")
    make(tmp_path)
    with pytest.raises(DataError, match=message):
        load_images(tmp_path)


def test_files_outside_train_and_test_are_refused(tmp_path):
    save(draw_digit(1, BLACK, WHITE), tmp_path / "train" / "1" / "a.png")
    save(draw_digit(1, BLACK, WHITE), tmp_path / "1" / "b.png")
    with pytest.raises(DataError, match=r"1/b.png: lies outside train/ and test/"):
        load_images(tmp_path)
    with pytest.raises(DataError, match=r"no test/ subfolder"):
        load_images(tmp_path, split="test")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "file,label\na.png,1\nnope.png,2\n",
            r"labels.csv: line 3: file 'nope.png' is not found in .*; fix the name or delete that line",
        ),
        (
            "file,label\na.png,1\n",
            r"b.png: is not listed in .*labels.csv; add a line 'b.png,DIGIT'",
        ),
        (
            "file,label\na.png,10\nb.png,2\n",
            r"labels.csv: line 2: label '10' is not a digit 0..9; fix that label",
        ),
        ("file,label\na.png,x\nb.png,2\n", r"labels.csv: line 2: label 'x' is not a digit 0..9"),
        ("file,label\na.png,\nb.png,2\n", r"labels.csv: line 2: label '' is not a digit 0..9"),
        (
            "file,digit\na.png,1\nb.png,2\n",
            r"labels.csv: line 1: header 'file,digit' is not 'file,label'",
        ),
        ("", r"labels.csv: line 1: header '' is not 'file,label'"),
        (
            "file,label\na.png,1\nb.png,2,3\n",
            r"labels.csv: line 3: expected 2 values \(file,label\), found 3",
        ),
        (
            "file,label\na.png,1\nb.png,2\na.png,3\n",
            r"labels.csv: line 4: file 'a.png' is listed again \(first on line 2\)",
        ),
        (
            "file,label\na.png,1\nb.png,2\nnotes.txt,3\n",
            r"labels.csv: line 4: file 'notes.txt' is not a PNG/JPG file",
        ),
        ("file,label\na.png,1\n,2\n", r"labels.csv: line 3: missing file name"),
    ],
)
def test_bad_labels_csv_is_named(tmp_path, text, message):
    save(draw_digit(1, BLACK, WHITE), tmp_path / "a.png")
    save(draw_digit(0, BLACK, WHITE), tmp_path / "b.png")
    (tmp_path / "notes.txt").write_text("ignored unless listed")
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        load_images(tmp_path)


def test_labels_csv_option_errors(tmp_path):
    save(draw_digit(1, BLACK, WHITE), tmp_path / "a.png")
    with pytest.raises(DataError, match=r"absent.csv: labels CSV not found"):
        load_images(tmp_path, labels_csv=tmp_path / "absent.csv")
    (tmp_path / "labels.csv").write_text("file,label\na.png,1\n")
    with pytest.raises(
        DataError,
        match=r"split='test' needs train/ and test/ subfolders, but "
        r"labels.csv labels the folder as one set",
    ):
        load_images(tmp_path, split="test")


# ----------------------------------------------------------------------------- hostile files


@pytest.mark.parametrize("outside_exists", [True, False])
def test_labels_csv_naming_a_file_outside_the_folder(tmp_path, outside_exists):
    folder = tmp_path / "images"
    save(draw_digit(1, BLACK, WHITE), folder / "a.png")
    if outside_exists:  # a valid PNG, so only its place can be wrong
        save(draw_digit(0, BLACK, WHITE), tmp_path / "x.png")
    messages = []
    for name in ("../x.png", "sub/../../x.png", str(tmp_path / "x.png")):
        (folder / "labels.csv").write_text(f"file,label\na.png,1\n{name},0\n")
        with pytest.raises(
            DataError,
            match=r"labels.csv: line 3: file .* lies outside the images "
            r"folder; labels.csv may name only images inside the "
            r"folder, relative to it",
        ) as caught:
            load_images(folder)
        messages.append(str(caught.value))
    # The same words whether or not the outside file exists: nothing is revealed.
    assert all("not found" not in m and "not a PNG" not in m for m in messages)


def test_labels_csv_naming_a_file_through_a_hidden_link(tmp_path):
    folder = tmp_path / "images"
    save(draw_digit(1, BLACK, WHITE), folder / "a.png")
    save(draw_digit(0, BLACK, WHITE), tmp_path / "outside" / "x.png")
    (folder / ".link").symlink_to(tmp_path / "outside", target_is_directory=True)
    for name in ("x.png", "missing.png"):  # the same words whether the target exists or not
        (folder / "labels.csv").write_text(f"file,label\na.png,1\n.link/{name},0\n")
        with pytest.raises(
            DataError,
            match=r"line 3: file '.link/.*' lies outside the images "
            r"folder \(through a symbolic link\)",
        ):
            load_images(folder)


def test_labels_csv_names_are_normalised_inside_the_folder(tmp_path):
    save(draw_digit(1, BLACK, WHITE), tmp_path / "sub" / "a.png")
    save(draw_digit(0, BLACK, WHITE), tmp_path / "b.png")
    (tmp_path / "labels.csv").write_text("file,label\n./sub/../sub/a.png,1\nb.png,0\n")
    data = load_images(tmp_path)
    assert list(data.files) == ["sub/a.png", "b.png"] and data.labels.tolist() == [1, 0]


def test_symlinked_images_outside_the_folder_are_refused(tmp_path):
    folder = tmp_path / "images"
    save(draw_digit(1, BLACK, WHITE), folder / "1" / "a.png")
    save(draw_digit(0, BLACK, WHITE), tmp_path / "elsewhere.png")
    (folder / "0").mkdir()
    (folder / "0" / "b.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(
        DataError,
        match=r"0/b.png: is a symbolic link to a file outside the images "
        r"folder .*; copy the image into the folder instead",
    ):
        load_images(folder)
    (folder / "0" / "b.png").unlink()
    (folder / "0" / "b.png").symlink_to(tmp_path / "does-not-exist.png")
    with pytest.raises(
        DataError,
        match=r"0/b.png: is a symbolic link to a file outside the images "
        r"folder",
    ):
        load_images(folder)
    # A link to an image inside the folder reads that image.
    (folder / "0" / "b.png").unlink()
    save(draw_digit(0, BLACK, WHITE), folder / "0" / "real.png")
    (folder / "0" / "b.png").symlink_to(folder / "0" / "real.png")
    data = load_images(folder)
    assert list(data.files) == ["0/b.png", "0/real.png", "1/a.png"]
    assert torch.equal(data.images[0], data.images[1])


def test_symlinked_class_folder_is_refused_not_dropped(tmp_path):
    folder = tmp_path / "images"
    for digit in (1, 2):
        save(draw_digit(digit % 2, BLACK, WHITE), folder / str(digit) / "a.png")
    save(draw_digit(1, BLACK, WHITE), tmp_path / "threes" / "a.png")
    (folder / "3").symlink_to(tmp_path / "threes", target_is_directory=True)
    with pytest.raises(
        DataError,
        match=r"images/3: is a symbolic link to a folder, which digitcnn "
        r"does not follow .*; replace it with a real folder",
    ):
        load_images(folder)


def test_picture_too_large_is_refused_before_decoding_in_bounded_memory(tmp_path):
    from bombs import PEAK_RSS_LIMIT, blank_png, run_measured

    folder = tmp_path / "images"
    save(draw_digit(1, BLACK, WHITE), folder / "1" / "a.png")
    (folder / "3").mkdir()
    blank_png(folder / "3" / "huge.png", 13000, 13000)
    assert (folder / "3" / "huge.png").stat().st_size < 300_000
    with pytest.raises(
        DataError,
        match=r"3/huge.png: 13000x13000 pixels \(169 megapixels\), more "
        r"than the 50 megapixels digitcnn decodes; scale the "
        r"picture down",
    ):
        load_images(folder)
    code, err, peak = run_measured(
        [
            "-m",
            "digitcnn.kfold",
            "--dataset",
            "images",
            "--data-dir",
            str(folder),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2 and err.count("\n") == 1 and "13000x13000 pixels" in err, err
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 1e9:.2f} GB"


def test_large_photos_are_reduced_before_processing(tmp_path):
    """A 24 MP photo gives the digit that its 1/3 reduction gives, without the full-size floats."""
    big = draw_digit(0, BLACK, WHITE, size=(4800, 5000))
    image = mnist_style(big)
    assert_mnist_like(image)
    assert np.array_equal(image, mnist_style(big.reduce(3)))
    save(big.convert("RGB"), tmp_path / "0" / "photo.jpg")
    assert_mnist_like(load_images(tmp_path).images[0, 0].numpy())
