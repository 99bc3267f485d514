"""python -m digitcnn.train and python -m digitcnn.predict, end to end on small data."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from digitcnn import kfold, predict, train
from digitcnn.checkpoint import load_model

from conftest import synthetic_optdigits, write_table

TRAIN_FLAGS = ["--no-verify", "--epochs", "2", "--quiet", "--no-plots"]


@pytest.fixture
def kfold_run(optdigits_dir, tmp_path):
    out = tmp_path / "run"
    assert kfold.main(["--data-dir", str(optdigits_dir), "--save-models", "--folds", "3",
                       "--out", str(out)] + TRAIN_FLAGS) == 0
    return out


def test_train_holdout_keeps_one_model(optdigits_dir, tmp_path):
    out = tmp_path / "holdout"
    assert train.main(["--data-dir", str(optdigits_dir), "--val-fraction", "0.3",
                       "--out", str(out)] + TRAIN_FLAGS) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["folds"]) == 1
    assert (metrics["folds"][0]["n_train"], metrics["folds"][0]["n_val"]) == (126, 54)
    # stratified: every class has its share of the validation rows
    val = np.asarray(json.loads((out / "splits.json").read_text())["folds"][0]["val_indices"])
    labels = np.concatenate([synthetic_optdigits(120, 1), synthetic_optdigits(60, 2)])[:, 64]
    assert np.bincount(labels[val], minlength=10).min() >= 5
    saved = load_model(out / "folds" / "fold0" / "model.json")
    assert saved.meta["metrics"]["accuracy"] == pytest.approx(metrics["accuracy"])


def test_train_full_uses_every_row(optdigits_dir, tmp_path, capsys):
    out = tmp_path / "full"
    assert train.main(["--data-dir", str(optdigits_dir), "--full", "--out", str(out),
                       "--no-verify", "--epochs", "2", "--no-plots"]) == 0
    assert "trained on all 180 rows, no validation" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["folds"][0]["n_train"] == 180 and metrics["accuracy"] is None
    assert (out / "folds" / "fold0" / "model.safetensors").is_file()


def test_full_rejects_early_stopping(optdigits_dir, capsys):
    assert train.main(["--data-dir", str(optdigits_dir), "--full", "--early-stopping"]) == 2
    assert "leaves no validation rows for early stopping" in capsys.readouterr().err


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_ensemble_on_npy_with_labels(kfold_run, optdigits_dir, tmp_path, capsys):
    table = synthetic_optdigits(40, seed=9)
    np.save(tmp_path / "x.npy", table[:, :64].reshape(-1, 8, 8).astype(np.uint8))
    np.save(tmp_path / "y.npy", table[:, 64])
    out = tmp_path / "pred.csv"
    assert predict.main(["--model", str(kfold_run), "--input", str(tmp_path / "x.npy"),
                         "--labels", str(tmp_path / "y.npy"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 model(s)" in printed and "model 2: accuracy" in printed
    rows = read_rows(out)
    assert rows[0] == ["file", "label", "probability", "true_label"] and len(rows) == 41
    # the ensemble is the mean of the fold models' probabilities
    models = predict.load_models(kfold_run)
    images = torch.from_numpy(np.load(tmp_path / "x.npy"))[:, None]
    mean = torch.stack([m.predict_log_probs(images).exp() for m in models]).mean(0)
    assert [int(r[1]) for r in rows[1:]] == mean.argmax(1).tolist()
    assert [float(r[2]) for r in rows[1:]] == pytest.approx(mean.max(1).values.tolist(), abs=1e-5)


def save_mnist_sized_model(path):
    """An untrained S5 for 28x28 images, scaled by /255, saved as digitcnn saves models."""
    import digitcnn
    from digitcnn.checkpoint import save_model

    save_model(digitcnn.create_model("s5", (1, 28, 28)), path,
               meta={"model": "s5", "input_shape": [1, 28, 28], "num_classes": 10,
                     "classes": list(range(10)), "model_options": {}, "init": "default",
                     "scaler": {"kind": "max", "mean": [0.0] * 784, "scale": [255.0] * 784}})


def test_kaggle_submission_format(tmp_path):
    """A 28x28 model on a Kaggle-format test.csv gives ImageId,Label from 1, in input order."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    header = [f"pixel{i}" for i in range(784)]
    write_table(tmp_path / "test.csv", images.reshape(30, 784), header)
    model_dir = tmp_path / "model"
    save_mnist_sized_model(model_dir / "model.safetensors")
    out = tmp_path / "submission.csv"
    assert predict.main(["--model", str(model_dir), "--input", str(tmp_path / "test.csv"),
                         "--out", str(out), "--quiet"]) == 0
    rows = read_rows(out)
    assert rows[0] == ["ImageId", "Label"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 31))
    expected = load_model(model_dir).predict_log_probs(torch.from_numpy(images)[:, None]).argmax(1)
    assert [int(r[1]) for r in rows[1:]] == expected.tolist()


def test_unlabelled_image_folder_and_tta(tmp_path):
    folder = tmp_path / "drawn"
    folder.mkdir()
    for index in range(3):
        picture = Image.new("L", (60, 80), 255)
        ImageDraw.Draw(picture).line([(30, 10), (30 + 5 * index, 70)], fill=0, width=8)
        picture.save(folder / f"digit{index}.png")
    save_mnist_sized_model(tmp_path / "m.safetensors")
    out = tmp_path / "drawn.csv"
    assert predict.main(["--model", str(tmp_path / "m.json"), "--input", str(folder),
                         "--out", str(out), "--tta", "4", "--quiet"]) == 0
    rows = read_rows(out)
    assert [r[0] for r in rows[1:]] == ["digit0.png", "digit1.png", "digit2.png"]
    assert all(0 <= float(r[2]) <= 1 for r in rows[1:])


@pytest.mark.parametrize("argv, message", [
    (["--input", "missing.npy"], r"missing.npy: no such file or folder"),
    (["--tta", "-1"], r"--tta -1 must be 0 or more"),
])
def test_predict_bad_input(kfold_run, tmp_path, capsys, argv, message):
    import re

    base = {"--model": str(kfold_run), "--input": str(tmp_path / "x.npy"),
            "--out": str(tmp_path / "o.csv")}
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8), dtype=np.uint8))
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = str(tmp_path / value) if flag == "--input" else value
    assert predict.main([item for pair in base.items() for item in pair]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err)


def test_predict_refuses_wrong_image_size(kfold_run, tmp_path, capsys):
    np.save(tmp_path / "big.npy", np.zeros((2, 28, 28), dtype=np.uint8))
    assert predict.main(["--model", str(kfold_run), "--input", str(tmp_path / "big.npy"),
                         "--out", str(tmp_path / "o.csv")]) == 2
    assert "images are (1, 28, 28) but the model takes (1, 8, 8)" in capsys.readouterr().err


def test_predict_needs_saved_models(optdigits_dir, tmp_path, capsys):
    out = tmp_path / "nomodels"
    assert kfold.main(["--data-dir", str(optdigits_dir), "--out", str(out)] + TRAIN_FLAGS) == 0
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8), dtype=np.uint8))
    assert predict.main(["--model", str(out), "--input", str(tmp_path / "x.npy"),
                         "--out", str(tmp_path / "o.csv")]) == 2
    assert "rerun it with --save-models" in capsys.readouterr().err
