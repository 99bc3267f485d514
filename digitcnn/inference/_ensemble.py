"""Predictions of one saved model or a K-fold run's fold ensemble: the class probabilities
averaged over the models and, with test-time augmentation, over augmented copies of the inputs.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from digitcnn.checkpoint import SavedModel, find_saved_models, load_model
from digitcnn.errors import CheckpointError, ConfigError
from digitcnn.inference._inputs import PredictionInput, model_images
from digitcnn.training.augment import PRESETS
from digitcnn.training.runtime import select_device

__all__ = [
    "Predictions",
    "load_models",
    "ensemble_probabilities",
    "check_tta",
    "predict",
    "output_csv",
    "MAX_TTA",
]

# Test-time augmentation costs one full pass over the inputs per copy, and past a few dozen
# copies the average no longer changes: a larger --tta is a typo, refused at once.
MAX_TTA = 100


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


def load_models(path: str | Path, device: str | None = None) -> list[SavedModel]:
    """One saved model, or every fold model of a K-fold run directory.

    ``device``: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"`` (see
    :func:`~digitcnn.training.runtime.select_device`) to move the models there; None leaves
    them where they were loaded.
    """
    target = select_device(device) if device is not None else None  # refused before loading
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        found = find_saved_models(path)
        if not found:
            raise CheckpointError(
                f"{path}: this run kept no models; rerun it with --save-models "
                "(python -m digitcnn.train saves its model)"
            )
        models = [load_model(p) for p in found]
    else:
        models = [load_model(path)]
    return models if target is None else [model.to(target) for model in models]


def ensemble_probabilities(
    models: Sequence[SavedModel],
    images: torch.Tensor,
    *,
    tta: int = 0,
    seed: int = 0,
    batch_size: int = 1000,
) -> Predictions:
    """Mean class probabilities over models and (with ``tta`` > 0) over ``tta`` augmented
    copies plus the original. Probabilities are averaged, not log-probabilities: that is the
    mixture the ensemble stands for."""
    check_tta(tta)
    generator = torch.Generator().manual_seed(seed)
    sums: list[torch.Tensor] = []
    # One augmented view at a time, used by every model and dropped: memory does not grow
    # with tta. The views are drawn in the same order as when all were made up front.
    with torch.no_grad():
        for index in range(tta + 1):
            view = images.float() if index == 0 else PRESETS["light"](images.float(), generator)
            for k, model in enumerate(models):
                probabilities = model.predict_log_probs(view, batch_size).exp()
                if index == 0:
                    sums.append(probabilities)
                else:
                    sums[k] += probabilities
    per_model = [total / (tta + 1) for total in sums]
    return Predictions(torch.stack(per_model).mean(dim=0), per_model)


def check_tta(tta: int) -> None:
    """Refuse a number of test-time augmented copies outside 0..MAX_TTA."""
    if not 0 <= tta <= MAX_TTA:
        raise ConfigError(
            f"--tta {tta} must be 0 or more, at most {MAX_TTA} (each copy is one "
            "more pass over every input, and the average settles after a few "
            "dozen)"
        )


def predict(models: Sequence[SavedModel], inputs: PredictionInput, tta: int = 0) -> Predictions:
    """The ensemble's predictions of ``inputs``, read as the models read them
    (:func:`~digitcnn.inference._inputs.model_images`); the models must share one input shape."""
    shapes = {m.input_shape for m in models}
    if len(shapes) != 1:
        raise CheckpointError(
            f"the models take different input shapes {sorted(shapes)}; "
            "ensemble models trained on the same data only"
        )
    return ensemble_probabilities(models, model_images(inputs, shapes.pop()), tta=tta)


def output_csv(inputs: PredictionInput, predictions: Predictions) -> str:
    """The CSV ``--out`` holds: Kaggle's ``ImageId,Label`` for Kaggle's test.csv, else
    ``file,label,probability`` (and ``true_label`` when the labels are known)."""
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
