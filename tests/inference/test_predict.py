"""python -m digitcnn.train and python -m digitcnn.predict, end to end on small data."""

import csv
import json

import numpy as np
import pytest
import torch
from conftest import synthetic_optdigits, write_table
from PIL import Image, ImageDraw

from digitcnn import inference, kfold, predict, train
from digitcnn.checkpoint import load_model
from digitcnn.errors import DataError

TRAIN_FLAGS = ["--no-verify", "--epochs", "2", "--quiet", "--no-plots"]


@pytest.fixture
def kfold_run(optdigits_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        kfold.main(
            ["--data-dir", str(optdigits_dir), "--save-models", "--folds", "3", "--out", str(out)]
            + TRAIN_FLAGS
        )
        == 0
    )
    return out


def test_train_holdout_keeps_one_model(optdigits_dir, tmp_path):
    out = tmp_path / "holdout"
    assert (
        train.main(
            ["--data-dir", str(optdigits_dir), "--val-fraction", "0.3", "--out", str(out)]
            + TRAIN_FLAGS
        )
        == 0
    )
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
    assert (
        train.main(
            [
                "--data-dir",
                str(optdigits_dir),
                "--full",
                "--out",
                str(out),
                "--no-verify",
                "--epochs",
                "2",
                "--no-plots",
            ]
        )
        == 0
    )
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
    assert (
        predict.main(
            [
                "--model",
                str(kfold_run),
                "--input",
                str(tmp_path / "x.npy"),
                "--labels",
                str(tmp_path / "y.npy"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "3 model(s)" in printed and "model 2: accuracy" in printed
    rows = read_rows(out)
    assert rows[0] == ["file", "label", "probability", "true_label"] and len(rows) == 41
    # the ensemble is the mean of the fold models' probabilities
    models = inference.load_models(kfold_run)
    images = torch.from_numpy(np.load(tmp_path / "x.npy"))[:, None]
    mean = torch.stack([m.predict_log_probs(images).exp() for m in models]).mean(0)
    assert [int(r[1]) for r in rows[1:]] == mean.argmax(1).tolist()
    assert [float(r[2]) for r in rows[1:]] == pytest.approx(mean.max(1).values.tolist(), abs=1e-5)


def save_mnist_sized_model(path):
    """An untrained S5 for 28x28 images, scaled by /255, saved as digitcnn saves models."""
    import digitcnn
    from digitcnn.checkpoint import save_model

    save_model(
        digitcnn.create_model("s5", (1, 28, 28)),
        path,
        meta={
            "model": "s5",
            "input_shape": [1, 28, 28],
            "num_classes": 10,
            "classes": list(range(10)),
            "model_options": {},
            "init": "default",
            "scaler": {"kind": "max", "mean": [0.0] * 784, "scale": [255.0] * 784},
        },
    )


def test_kaggle_submission_format(tmp_path):
    """A 28x28 model on a Kaggle-format test.csv gives ImageId,Label from 1, in input order."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    header = [f"pixel{i}" for i in range(784)]
    write_table(tmp_path / "test.csv", images.reshape(30, 784), header)
    model_dir = tmp_path / "model"
    save_mnist_sized_model(model_dir / "model.safetensors")
    out = tmp_path / "submission.csv"
    assert (
        predict.main(
            [
                "--model",
                str(model_dir),
                "--input",
                str(tmp_path / "test.csv"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
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
    assert (
        predict.main(
            [
                "--model",
                str(tmp_path / "m.json"),
                "--input",
                str(folder),
                "--out",
                str(out),
                "--tta",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    rows = read_rows(out)
    assert [r[0] for r in rows[1:]] == ["digit0.png", "digit1.png", "digit2.png"]
    assert all(0 <= float(r[2]) <= 1 for r in rows[1:])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--input", "missing.npy"], r"missing.npy: no such file or folder"),
        (["--tta", "-1"], r"--tta -1 must be 0 or more"),
    ],
)
def test_predict_bad_input(kfold_run, tmp_path, capsys, argv, message):
    import re

    base = {
        "--model": str(kfold_run),
        "--input": str(tmp_path / "x.npy"),
        "--out": str(tmp_path / "o.csv"),
    }
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8), dtype=np.uint8))
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = str(tmp_path / value) if flag == "--input" else value
    assert predict.main([item for pair in base.items() for item in pair]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err)


def test_predict_refuses_wrong_image_size(kfold_run, tmp_path, capsys):
    np.save(tmp_path / "big.npy", np.zeros((2, 28, 28), dtype=np.uint8))
    assert (
        predict.main(
            [
                "--model",
                str(kfold_run),
                "--input",
                str(tmp_path / "big.npy"),
                "--out",
                str(tmp_path / "o.csv"),
            ]
        )
        == 2
    )
    assert "images are (1, 28, 28) but the model takes (1, 8, 8)" in capsys.readouterr().err


def test_predict_needs_saved_models(optdigits_dir, tmp_path, capsys):
    out = tmp_path / "nomodels"
    assert kfold.main(["--data-dir", str(optdigits_dir), "--out", str(out)] + TRAIN_FLAGS) == 0
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8), dtype=np.uint8))
    assert (
        predict.main(
            [
                "--model",
                str(out),
                "--input",
                str(tmp_path / "x.npy"),
                "--out",
                str(tmp_path / "o.csv"),
            ]
        )
        == 2
    )
    assert "rerun it with --save-models" in capsys.readouterr().err


# ----------------------------------------------------------------------------- hostile inputs


def run_predict(tmp_path, *extra):
    import subprocess
    import sys

    save_mnist_sized_model(tmp_path / "m.safetensors")
    if not (tmp_path / "x.npy").exists():
        np.save(tmp_path / "x.npy", np.zeros((3, 28, 28), dtype=np.uint8))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "digitcnn.predict",
            "--model",
            str(tmp_path / "m.json"),
            "--input",
            str(tmp_path / "x.npy"),
            "--out",
            str(tmp_path / "o.csv"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "array, message",
    [
        (np.array([[[0.5, np.nan]]]), r"x.npy: value nan at index \(0, 0, 0, 1\) is not a number"),
        (np.full((2, 2, 2), np.inf), r"x.npy: value inf at index \(0, 0, 0, 0\) is not a number"),
        (np.ones((2, 8, 8), dtype=bool), r"x.npy: a boolean array; save the images as numbers"),
        (np.ones((2, 8, 8), dtype=np.complex64), r"x.npy: dtype complex64 is not a plain integer"),
        (np.array(["a", "b"]), r"x.npy: dtype <U1 is not a plain integer or float type"),
        (np.full((2, 8, 8), 256, dtype=np.int64), r"x.npy: values 256..256 are outside 0..255"),
        (np.full((2, 8, 8), -1.0), r"x.npy: values -1.0..-1.0 are outside 0..255"),
        (np.zeros((0, 8, 8), dtype=np.uint8), r"x.npy: an empty array of shape \(0, 8, 8\)"),
        (np.zeros((2, 7)), r"x.npy: rows of 7 values are not square images"),
    ],
)
def test_npy_inputs_are_checked(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DataError, match=message):
        inference.read_input(tmp_path / "x.npy")


def test_npy_values_are_scaled_and_rounded(tmp_path):
    np.save(tmp_path / "x.npy", np.array([[[0.0, 0.5], [1.0, 0.2]]]))
    assert inference.read_input(tmp_path / "x.npy").images.flatten().tolist() == [0, 128, 255, 51]
    np.save(tmp_path / "y.npy", np.array([[[0.0, 12.6], [255.0, 3.0]]]))
    assert inference.read_input(tmp_path / "y.npy").images.flatten().tolist() == [0, 13, 255, 3]
    np.save(tmp_path / "z.npy", np.arange(64, dtype=np.int32).reshape(1, 64))
    assert inference.read_input(tmp_path / "z.npy").images.shape == (1, 1, 8, 8)


def test_npy_claiming_730_gib_is_refused_from_its_header(tmp_path):
    from bombs import PEAK_RSS_LIMIT, npy_header_only, run_measured

    npy_header_only(tmp_path / "x.npy", (10**9, 28, 28))
    with pytest.raises(
        DataError,
        match=r"x.npy: its header announces an array of shape \(1000000000, 28, "
        r"28\) \(784,000,000,000 values\), more than the 268,435,456 read "
        r"here; the file is corrupt",
    ):
        inference.read_input(tmp_path / "x.npy")
    npy_header_only(tmp_path / "short.npy", (1000, 28, 28))
    with pytest.raises(
        DataError,
        match=r"short.npy: its header announces shape \(1000, 28, 28\) of uint8 "
        r"\(784128 bytes\) but the file holds 192 bytes; it is truncated",
    ):
        inference.read_input(tmp_path / "short.npy")
    save_mnist_sized_model(tmp_path / "m.safetensors")
    code, err, peak = run_measured(
        [
            "-m",
            "digitcnn.predict",
            "--model",
            str(tmp_path / "m.json"),
            "--input",
            str(tmp_path / "x.npy"),
            "--out",
            str(tmp_path / "o.csv"),
        ]
    )
    assert code == 2 and err.count("\n") == 1 and "784,000,000,000 values" in err, err
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 1e9:.2f} GB"


def test_huge_tta_is_refused_at_once(tmp_path):
    from bombs import PEAK_RSS_LIMIT, run_measured

    save_mnist_sized_model(tmp_path / "m.safetensors")
    np.save(tmp_path / "x.npy", np.zeros((3, 28, 28), dtype=np.uint8))
    code, err, peak = run_measured(
        [
            "-m",
            "digitcnn.predict",
            "--model",
            str(tmp_path / "m.json"),
            "--input",
            str(tmp_path / "x.npy"),
            "--tta",
            "100000",
            "--out",
            str(tmp_path / "o.csv"),
        ]
    )
    assert code == 2 and err.count("\n") == 1, err
    assert "--tta 100000 must be 0 or more, at most 100" in err
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 1e9:.2f} GB"
    assert not (tmp_path / "o.csv").exists()


def test_tta_views_are_averaged_one_at_a_time(tmp_path):
    """The running sum equals the mean of the views made up front (the old way)."""
    from digitcnn.training.augment import PRESETS

    save_mnist_sized_model(tmp_path / "m.safetensors")
    model = load_model(tmp_path / "m.json")
    images = torch.from_numpy(
        np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    )
    generator = torch.Generator().manual_seed(0)
    views = [images.float()] + [PRESETS["light"](images.float(), generator) for _ in range(3)]
    expected = torch.stack([model.predict_log_probs(v).exp() for v in views]).mean(0)
    got = inference.ensemble_probabilities([model], images, tta=3)
    assert torch.allclose(got.probabilities, expected, atol=1e-6)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "ImageId,Label\n1,3\n2,nan\n3,1\n",
            r"labels.csv: line 3, column 2: label 'nan' is not a "
            r"class number; fix that label",
        ),
        ("ImageId,Label\n1,3\n2,12\n3,1\n", r"labels.csv: label 12 of row 2 is out of range 0..9"),
        (
            "ImageId,Label\n1,3\n2,-1\n3,1\n",
            r"labels.csv: line 3, column 2: label '-1' is not a "
            r"class number",
        ),
        (
            "ImageId,Label\n1,3\n2,2.5\n3,1\n",
            r"line 3, column 2: label '2.5' is not a class number",
        ),
        ("ImageId,Label\n1,3\n2,\n3,1\n", r"labels.csv: line 3, column 2: missing label"),
        ("ImageId,Label\n1,3\n2\n3,1\n", r"labels.csv: line 3, column 2: missing label"),
        ("ImageId,Label\n1,3\n", r"labels.csv: 1 labels for 3 inputs"),
        ("ImageId,Label\n", r"labels.csv: has a header but no labels"),
        ("ImageId,Digit\n1,3\n", r"labels.csv: no Label column"),
        ("", r"labels.csv: the labels file is empty; give a CSV with a Label column"),
    ],
)
def test_labels_csv_is_checked(tmp_path, text, message):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        inference.read_labels(tmp_path / "labels.csv", 3)


def test_labels_files_that_are_not_text_or_not_integers(tmp_path):
    import gzip

    (tmp_path / "labels.csv").write_bytes(gzip.compress(b"Label\n1\n2\n3\n"))
    with pytest.raises(DataError, match=r"labels.csv: is gzip-compressed"):
        inference.read_labels(tmp_path / "labels.csv", 3)
    for array, message in [
        (np.array([1.0, np.nan, 2.0]), r"label nan of row 2 is not a whole"),
        (np.array([1, 12, 2]), r"label 12 of row 2 is out of range 0..9"),
        (np.array([True, False, True]), r"a boolean array"),
        (np.array([1, 2]), r"2 labels for 3 inputs"),
    ]:
        np.save(tmp_path / "y.npy", array)
        with pytest.raises(DataError, match=message):
            inference.read_labels(tmp_path / "y.npy", 3)
    np.save(tmp_path / "y.npy", np.array([1.0, 0.0, 9.0]))
    assert inference.read_labels(tmp_path / "y.npy", 3).tolist() == [1, 0, 9]
    (tmp_path / "l.csv").write_text("ImageId,Label\n1,3\n\n2, 0 \n3,9\n")
    assert inference.read_labels(tmp_path / "l.csv", 3).tolist() == [3, 0, 9]


def test_empty_labels_file_is_one_line_on_the_command_line(tmp_path):
    (tmp_path / "labels.csv").write_text("")
    done = run_predict(tmp_path, "--labels", str(tmp_path / "labels.csv"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "labels.csv: the labels file is empty" in done.stderr
    (tmp_path / "labels.csv").write_text("ImageId,Label\n1,3\n2,nan\n3,1\n")
    done = run_predict(tmp_path, "--labels", str(tmp_path / "labels.csv"))
    assert done.returncode == 2 and "line 3, column 2: label 'nan'" in done.stderr
    assert not (tmp_path / "o.csv").exists()


def test_refused_pickle_never_suggests_weights_only_false(tmp_path, capsys):
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    save_mnist_sized_model(tmp_path / "m.safetensors")
    for protocol in (0, 2):
        (tmp_path / "m.pt").write_bytes(pickle.dumps(Payload(), protocol=protocol))
        np.save(tmp_path / "x.npy", np.zeros((3, 28, 28), dtype=np.uint8))
        assert (
            predict.main(
                [
                    "--model",
                    str(tmp_path / "m.pt"),
                    "--input",
                    str(tmp_path / "x.npy"),
                    "--out",
                    str(tmp_path / "o.csv"),
                ]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "weights_only" not in err.lower()
        assert "m.pt: refused: loading it would unpickle arbitrary Python objects" in err
        assert "system" in err
