"""``python -m digitcnn.predict``: predictions from a saved model or a K-fold ensemble.

    python -m digitcnn.predict --model RUN_DIR --input test.csv --out submission.csv

``--model`` takes one saved model (``.json``/``.safetensors``/its folder) or a K-fold run
directory run with ``--save-models``, whose fold models' probabilities are averaged. Inputs:

* a Kaggle CSV: ``test.csv`` gives Kaggle's ``ImageId,Label`` submission (ImageId from 1, in
  input order); a labelled ``train.csv`` also reports accuracy;
* a folder of IDX files (MNIST format), labelled;
* a folder of images (labelled by ``0``..``9`` subfolders or ``labels.csv``, or unlabelled
  files), an image file, or a ``.npy`` array of shape (N, H, W), (N, 1, H, W) or (N, H*W):
  these give ``file,label,probability`` rows.

``--labels FILE`` (a CSV with a ``Label`` column, or ``.npy``) supplies true labels for an
unlabelled input, so that accuracy is reported.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .config import OneLineParser
from .errors import CheckpointError, DataError, cli_entry, warnings_as_lines
from .results import atomic_write_text
from .runtime import select_device

if TYPE_CHECKING:  # torch is imported where it is used: --help answers without it
    import torch

    from .checkpoint import SavedModel

__all__ = ["PredictionInput", "read_input", "load_models", "ensemble_probabilities",
           "Predictions", "predict", "main"]


@dataclass
class PredictionInput:
    """Images to predict: uint8 (N, 1, H, W), optional int64 (N,) labels, a name per row."""

    images: torch.Tensor
    labels: torch.Tensor | None
    names: list[str]
    kaggle_test: bool = False


@dataclass
class Predictions:
    """Averaged class probabilities (N, C) and, per model, (N, C) probabilities."""

    probabilities: torch.Tensor
    per_model: list[torch.Tensor]

    @property
    def labels(self) -> torch.Tensor:
        return self.probabilities.argmax(dim=1)

    def accuracy(self, truth: torch.Tensor) -> float:
        return float((self.labels == truth).double().mean())

    def model_accuracies(self, truth: torch.Tensor) -> list[float]:
        return [float((p.argmax(dim=1) == truth).double().mean()) for p in self.per_model]


def _from_array(array: np.ndarray, path: Path) -> torch.Tensor:
    if array.ndim == 2:
        side = int(round(array.shape[1] ** 0.5))
        if side * side != array.shape[1]:
            raise DataError(f"{path}: rows of {array.shape[1]} values are not square images; "
                            "save an array of shape (N, H, W)")
        array = array.reshape(-1, side, side)
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] != 1:
        raise DataError(f"{path}: array of shape {array.shape}; expected (N, H, W), (N, 1, H, W) "
                        "or (N, H*W)")
    if np.issubdtype(array.dtype, np.floating) and array.size and array.max() <= 1.0:
        array = np.rint(array * 255)  # 0..1 floats, as many tutorials store them
    if array.size and (array.min() < 0 or array.max() > 255):
        raise DataError(f"{path}: values {array.min()}..{array.max()} are outside 0..255; save "
                        "pixel values 0..255 (or 0..1 floats)")
    import torch

    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))


def _unlabelled_images(paths: list[Path], names: list[str]) -> PredictionInput:
    import torch
    from PIL import Image, UnidentifiedImageError

    from .images import mnist_style

    pictures = []
    for path in paths:
        try:
            with Image.open(path) as image:
                pictures.append(mnist_style(image))
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{path}: not a readable image ({err}); remove it or convert it to "
                            "PNG") from None
    return PredictionInput(torch.from_numpy(np.stack(pictures))[:, None], None, names)


def read_input(path: str | Path) -> PredictionInput:
    """Read what ``--input`` names; see the module docstring for the accepted kinds."""
    from .images import IMAGE_SUFFIXES

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass a Kaggle CSV, an image folder, an "
                        "image or a .npy file to --input")
    if path.is_file() and path.suffix.lower() == ".csv":
        from .kaggle import load_kaggle

        dataset = load_kaggle(path)
        return PredictionInput(dataset.images, dataset.labels,
                               [str(i) for i in range(1, len(dataset) + 1)],
                               kaggle_test=dataset.labels is None)
    if path.is_file() and path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise DataError(f"{path}: not a plain numeric .npy file ({err}); save it with "
                            "np.save and a numeric dtype") from None
        images = _from_array(array, path)
        return PredictionInput(images, None, [str(i) for i in range(len(images))])
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return _unlabelled_images([path], [path.name])
    if path.is_dir():
        from .mnist import _locate_idx_files

        if _locate_idx_files(path) is not None:
            from .mnist import load_mnist

            dataset = load_mnist(path)
            return PredictionInput(dataset.images, dataset.labels,
                                   [str(i) for i in range(len(dataset))])
        top_level = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if top_level and not (path / "labels.csv").exists():
            return _unlabelled_images(top_level, [p.name for p in top_level])
        from .images import load_images

        dataset = load_images(path)
        return PredictionInput(dataset.images, dataset.labels, list(dataset.files))
    raise DataError(f"{path}: unsupported input; pass a .csv, .npy, image file or folder")


def read_labels(path: str | Path, count: int) -> torch.Tensor:
    """True labels for an unlabelled input: a CSV with a ``Label``/``label`` column, or .npy."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labels file not found; check --labels")
    if path.suffix.lower() == ".npy":
        labels = np.load(path, allow_pickle=False).reshape(-1)
    else:
        import pandas as pd

        frame = pd.read_csv(path)
        column = next((c for c in frame.columns if c.lower() == "label"), None)
        if column is None:
            raise DataError(f"{path}: no Label column; give a CSV with a Label column (e.g. "
                            "ImageId,Label) or a .npy of labels")
        labels = frame[column].to_numpy()
    if len(labels) != count:
        raise DataError(f"{path}: {len(labels)} labels for {count} inputs; give one label per "
                        "input row, in input order")
    import torch

    return torch.as_tensor(labels.astype(np.int64))


def load_models(path: str | Path) -> list[SavedModel]:
    """One saved model, or every fold model of a K-fold run directory."""
    from .checkpoint import find_saved_models, load_model

    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        found = find_saved_models(path)
        if not found:
            raise CheckpointError(f"{path}: this run kept no models; rerun it with --save-models "
                                  "(python -m digitcnn.train saves its model)")
        return [load_model(p) for p in found]
    return [load_model(path)]


def ensemble_probabilities(models: Sequence[SavedModel], images: torch.Tensor, *,
                           tta: int = 0, seed: int = 0, batch_size: int = 1000) -> Predictions:
    """Mean class probabilities over models and (with ``tta`` > 0) over ``tta`` augmented
    copies plus the original. Probabilities are averaged, not log-probabilities: that is the
    mixture the ensemble stands for."""
    import torch

    from .augment import PRESETS

    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        views = [images.float()] + [PRESETS["light"](images.float(), generator)
                                    for _ in range(tta)]
        per_model = []
        for model in models:
            probabilities = [model.predict_log_probs(view, batch_size).exp() for view in views]
            per_model.append(torch.stack(probabilities).mean(dim=0))
        return Predictions(torch.stack(per_model).mean(dim=0), per_model)


def predict(models: Sequence[SavedModel], inputs: PredictionInput, tta: int = 0) -> Predictions:
    shapes = {m.input_shape for m in models}
    if len(shapes) != 1:
        raise CheckpointError(f"the models take different input shapes {sorted(shapes)}; "
                              "ensemble models trained on the same data only")
    return ensemble_probabilities(models, inputs.images, tta=tta)


def output_csv(inputs: PredictionInput, predictions: Predictions) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    labels = predictions.labels.tolist()
    if inputs.kaggle_test:
        writer.writerow(["ImageId", "Label"])
        writer.writerows((i, label) for i, label in enumerate(labels, start=1))
    else:
        confidence = predictions.probabilities.max(dim=1).values.tolist()
        truth = inputs.labels.tolist() if inputs.labels is not None else None
        writer.writerow(["file", "label", "probability"] + (["true_label"] if truth else []))
        for row, (name, label, probability) in enumerate(zip(inputs.names, labels, confidence)):
            writer.writerow([name, label, f"{probability:.6f}"] + ([truth[row]] if truth else []))
    return buffer.getvalue()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m digitcnn.predict",
                           description="Predict digits with a saved model or a K-fold ensemble.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="saved model (.json/.safetensors) or K-fold run directory")
    parser.add_argument("--input", required=True,
                        help="Kaggle CSV, IDX folder, image folder, image file or .npy")
    parser.add_argument("--out", required=True, help="CSV to write (submission.csv for Kaggle)")
    parser.add_argument("--labels", default=None,
                        help="true labels for an unlabelled input (CSV with Label column or .npy)")
    parser.add_argument("--tta", type=int, default=0,
                        help="test-time augmentation: average over this many augmented copies")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


@cli_entry("digitcnn.predict")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tta < 0:
        raise DataError(f"--tta {args.tta} must be 0 or more")
    device = select_device(args.device)
    models = [m.to(device) for m in load_models(args.model)]
    with warnings_as_lines("digitcnn.predict"):
        inputs = read_input(args.input)
    if args.labels is not None:
        inputs.labels = read_labels(args.labels, len(inputs.images))
    expected = models[0].input_shape
    if tuple(inputs.images.shape[1:]) != expected:
        raise DataError(f"{args.input}: images are {tuple(inputs.images.shape[1:])} but the model "
                        f"takes {expected}; use a model trained on this kind of image")
    predictions = predict(models, inputs, args.tta)
    atomic_write_text(args.out, output_csv(inputs, predictions))
    if not args.quiet:
        print(f"{len(inputs.images)} predictions from {len(models)} model(s) written to {args.out}")
        if inputs.labels is not None:
            truth = inputs.labels
            for fold, accuracy in enumerate(predictions.model_accuracies(truth)):
                if len(models) > 1:
                    print(f"model {fold}: accuracy {100 * accuracy:.2f}%")
            correct = int((predictions.labels == truth).sum())
            print(f"{'ensemble' if len(models) > 1 else 'model'} accuracy "
                  f"{100 * predictions.accuracy(truth):.2f}% ({correct}/{len(truth)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
