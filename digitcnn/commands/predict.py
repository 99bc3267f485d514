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

A model trained on UCI optdigits (8x8 inputs) reads 28x28 digits (pictures, MNIST, Kaggle; not
a .npy array, taken as it is) in optdigits' form
(:func:`digitcnn.datasets.preprocess.optdigits_images`), as ``python -m digitcnn.board`` does.

``--labels FILE`` (a CSV with a ``Label`` column, or ``.npy``) supplies true labels for an
unlabelled input, so that accuracy is reported.

This module is the command line; the Python API is :mod:`digitcnn.inference`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from digitcnn._io import atomic_write_text
from digitcnn.config import OneLineParser
from digitcnn.errors import DataError, cli_entry, warnings_as_lines

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m digitcnn.predict",
        description="Predict digits with a saved model or a K-fold ensemble.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", required=True, help="saved model (.json/.safetensors) or K-fold run directory"
    )
    parser.add_argument(
        "--input", required=True, help="Kaggle CSV, IDX folder, image folder, image file or .npy"
    )
    parser.add_argument("--out", required=True, help="CSV to write (submission.csv for Kaggle)")
    parser.add_argument(
        "--labels",
        default=None,
        help="true labels for an unlabelled input (CSV with Label column or .npy)",
    )
    parser.add_argument(
        "--tta",
        type=int,
        default=0,
        help="test-time augmentation: average over this many augmented copies",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


@cli_entry("digitcnn.predict")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imported here, not at the top: `--help` must answer without importing torch.
    from digitcnn.inference import (
        check_tta,
        load_models,
        model_images,
        output_csv,
        predict,
        read_input,
        read_labels,
    )

    check_tta(args.tta)
    models = load_models(args.model, args.device)
    with warnings_as_lines("digitcnn.predict"):
        inputs = read_input(args.input)
    if args.labels is not None:
        inputs.labels = read_labels(args.labels, len(inputs.images), len(models[0].meta["classes"]))
    expected = models[0].input_shape
    inputs.images = model_images(inputs, expected)
    if tuple(inputs.images.shape[1:]) != expected:
        raise DataError(
            f"{args.input}: images are {tuple(inputs.images.shape[1:])} but the model "
            f"takes {expected}; use a model trained on this kind of image"
        )
    predictions = predict(models, inputs, args.tta)
    atomic_write_text(args.out, output_csv(inputs, predictions))
    if not args.quiet:
        _print_summary(args.out, len(models), inputs.labels, predictions)
    return 0


def _print_summary(out: str, model_count: int, truth, predictions) -> None:
    """How many predictions went where and, with labels, each model's and the ensemble's
    accuracy."""
    print(f"{len(predictions.labels)} predictions from {model_count} model(s) written to {out}")
    if truth is None:
        return
    if model_count > 1:
        for fold, accuracy in enumerate(predictions.model_accuracies(truth)):
            print(f"model {fold}: accuracy {100 * accuracy:.2f}%")
    correct = int((predictions.labels == truth).sum())
    print(
        f"{'ensemble' if model_count > 1 else 'model'} accuracy "
        f"{100 * predictions.accuracy(truth):.2f}% ({correct}/{len(truth)})"
    )
