"""Predictions from a saved model or a K-fold run's fold ensemble: what ``python -m
digitcnn.predict`` and ``python -m digitcnn.board`` compute.

* :mod:`digitcnn.inference._inputs`: reading the images to predict (Kaggle CSV, IDX folder,
  image folder or file, ``.npy``) and their labels, and bringing them to the model's input;
* :mod:`digitcnn.inference._ensemble`: loading the models, averaging their probabilities (with
  test-time augmentation), and the predictions' CSV.

Example::

    from digitcnn.inference import load_models, predict, read_input
    models = load_models("runs/s2")                    # a run saved with --save-models
    predictions = predict(models, read_input("test.csv"), tta=4)
    predictions.labels                                 # (N,) int64
"""

from digitcnn.inference._ensemble import (
    MAX_TTA,
    Predictions,
    check_tta,
    ensemble_probabilities,
    load_models,
    output_csv,
    predict,
)
from digitcnn.inference._inputs import (
    MAX_INPUT_VALUES,
    PredictionInput,
    model_images,
    read_input,
    read_labels,
)

__all__ = [
    "PredictionInput",
    "read_input",
    "read_labels",
    "model_images",
    "Predictions",
    "load_models",
    "ensemble_probabilities",
    "check_tta",
    "predict",
    "output_csv",
    "MAX_TTA",
    "MAX_INPUT_VALUES",
]
