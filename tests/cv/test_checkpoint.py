"""Saved models: safetensors + JSON round trips, refusal of unsafe or broken files, K-fold."""

import hashlib
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import synthetic_optdigits

from digitcnn.checkpoint import find_saved_models, load_model, save_model
from digitcnn.config import RunConfig
from digitcnn.cv.folds import run_fold
from digitcnn.cv.runner import run_kfold
from digitcnn.cv.splits import make_splits
from digitcnn.datasets.base import DigitDataset
from digitcnn.errors import CheckpointError
from digitcnn.models import create_model
from digitcnn.training.scaling import fit_scaler


class NotATensor:
    """Any Python class: unpickling it would run code from wherever it is defined."""


def raw_images(count: int = 50, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0,
        17,
        (count, 1, size, size),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(seed),
    )


def trained_like_model(name: str = "digitnet", seed: int = 0) -> torch.nn.Module:
    """A model whose BatchNorm running statistics are not the defaults, in eval mode."""
    torch.manual_seed(seed)
    model = create_model(name, (1, 8, 8), 10)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 1, 8, 8) * 2 + 1)
    return model.eval()


def meta_for(name: str = "digitnet", images: torch.Tensor | None = None) -> dict:
    scaler = fit_scaler("standard", raw_images() if images is None else images, 16)
    return {
        "model": name,
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "model_options": {},
        "init": "kaiming-xavier",
        "scaler": scaler.to_dict(),
        "classes": list(range(10)),
    }


def expected_log_probs(model, meta, images) -> torch.Tensor:
    mean = torch.as_tensor(meta["scaler"]["mean"], dtype=torch.float32)
    scale = torch.as_tensor(meta["scaler"]["scale"], dtype=torch.float32)
    inputs = ((images.float().reshape(len(images), -1) - mean) / scale).reshape(images.shape)
    with torch.no_grad():
        return model.eval()(inputs)


@pytest.fixture
def saved(tmp_path):
    model = trained_like_model()
    meta = meta_for()
    json_path = save_model(model, tmp_path / "model" / "digits.safetensors", meta=meta)
    return model, meta, json_path


def test_round_trip_gives_the_same_log_probs(saved):
    model, meta, json_path = saved
    assert json_path.name == "digits.json"
    stored = json.loads(json_path.read_text())
    assert stored["format"] == "digitcnn-model" and stored["weights"] == "digits.safetensors"
    assert stored["scaler"]["mean"] == meta["scaler"]["mean"]
    loaded = load_model(json_path)
    assert not loaded.model.training
    assert loaded.input_shape == (1, 8, 8)
    images = raw_images(seed=1)
    log_probs = loaded.predict_log_probs(images, batch_size=16)
    assert log_probs.shape == (50, 10)
    expected = expected_log_probs(model, meta, images)
    assert torch.allclose(log_probs, expected, atol=1e-5)  # batches of 16 vs one of 50
    assert torch.equal(loaded.predict_log_probs(images), expected)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_float_images_predict_like_uint8(saved):
    _, _, json_path = saved
    loaded = load_model(json_path)
    images = raw_images(seed=2)
    assert torch.equal(loaded.predict_log_probs(images), loaded.predict_log_probs(images.float()))
    assert loaded.predict_log_probs(images[:0]).shape == (0, 10)


def test_channels_last_model_saves(tmp_path):
    model = trained_like_model("s5").to(memory_format=torch.channels_last)
    assert not model[2].weight.is_contiguous()  # 32 -> 64 channels: really channels_last
    meta = meta_for("s5")
    json_path = save_model(model, tmp_path / "cl.safetensors", meta=meta)
    loaded = load_model(json_path)
    images = raw_images(seed=3)
    expected = expected_log_probs(model, meta, images)
    assert torch.allclose(loaded.predict_log_probs(images), expected, atol=1e-5)
    assert torch.equal(loaded.predict_log_probs(images).argmax(1), expected.argmax(1))


def test_load_by_json_weights_or_folder(saved):
    _, _, json_path = saved
    images = raw_images(seed=4)
    reference = load_model(json_path).predict_log_probs(images)
    by_weights = load_model(json_path.with_suffix(".safetensors"))
    by_folder = load_model(json_path.parent)
    by_string = load_model(str(json_path))
    for loaded in (by_weights, by_folder, by_string):
        assert torch.equal(loaded.predict_log_probs(images), reference)


def test_folder_with_run_files_still_finds_the_model(saved):
    _, _, json_path = saved
    (json_path.parent / "metrics.json").write_text("{}")
    assert load_model(json_path.parent).meta["model"] == "digitnet"


def test_folder_with_two_models_is_ambiguous(saved):
    _, _, json_path = saved
    shutil.copy(json_path, json_path.with_name("other.json"))
    with pytest.raises(
        CheckpointError,
        match=r"expected one model \.json in the folder, found 2; "
        r"pass the model file itself",
    ):
        load_model(json_path.parent)


def test_plain_state_dict_pt_loads(tmp_path, saved):
    model, meta, json_path = saved
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    shutil.copy(json_path, tmp_path / "plain.json")
    loaded = load_model(tmp_path / "plain.pt")
    images = raw_images(seed=5)
    assert torch.equal(loaded.predict_log_probs(images), expected_log_probs(model, meta, images))


def write_pt(tmp_path, saved, content, name: str = "weights.pt"):
    _, _, json_path = saved
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    shutil.copy(json_path, path.with_suffix(".json"))
    return path


def test_pickled_python_object_is_refused(tmp_path, saved):
    path = write_pt(tmp_path, saved, {"w": torch.zeros(1), "obj": NotATensor()})
    with pytest.raises(
        CheckpointError,
        match=r"weights\.pt: refused: loading it would unpickle "
        r"arbitrary Python objects \(.*NotATensor\); save "
        r"only a state_dict of tensors, or use safetensors",
    ):
        load_model(path)


@pytest.mark.parametrize(
    "content, kind",
    [
        ([torch.zeros(1)], "list"),
        ({"w": torch.zeros(1), "epoch": 3}, "dict"),
        (torch.zeros(3), "Tensor"),
    ],
)
def test_non_state_dict_is_refused(tmp_path, saved, content, kind):
    path = write_pt(tmp_path, saved, content)
    with pytest.raises(
        CheckpointError,
        match=rf"weights\.pt: holds a {kind}, not a state_dict of "
        r"tensors; save model\.state_dict\(\)",
    ):
        load_model(path)


@pytest.mark.parametrize(
    "content",
    [
        bytes(range(256)) * 3,  # junk the weights-only unpickler trips over
        b"this is not a pytorch file at all\n",  # junk the legacy reader fails on with KeyError
        b"",
    ],
    ids=["binary", "text", "empty"],
)
def test_unreadable_pt_is_not_called_unsafe(tmp_path, saved, content):
    path = write_pt(tmp_path, saved, content)
    with pytest.raises(
        CheckpointError,
        match=r"weights\.pt: not a readable PyTorch file \(.*\); "
        r"save the model again$",
    ):
        load_model(path)


def test_truncated_pt_is_refused(tmp_path, saved):
    model, _, _ = saved
    path = write_pt(tmp_path, saved, model.state_dict())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(
        CheckpointError,
        match=r"weights\.pt: (not a readable PyTorch file|"
        r"refused)",
    ):
        load_model(path)


@pytest.mark.parametrize("damage", ["junk", "truncate", "empty"])
def test_corrupt_safetensors_is_refused(saved, damage):
    _, _, json_path = saved
    weights = json_path.with_suffix(".safetensors")
    data = weights.read_bytes()
    weights.write_bytes({"junk": b"\xff" * 300, "truncate": data[:-40], "empty": b""}[damage])
    with pytest.raises(
        CheckpointError,
        match=r"digits\.safetensors: corrupt safetensors file "
        r"\(.+\); save the model again",
    ):
        load_model(json_path)


def test_missing_weights(saved):
    _, _, json_path = saved
    json_path.with_suffix(".safetensors").unlink()
    with pytest.raises(
        CheckpointError,
        match=r"digits\.safetensors: weights file not found; keep "
        r"the weights beside their \.json",
    ):
        load_model(json_path)


def test_missing_metadata(saved):
    _, _, json_path = saved
    json_path.unlink()
    with pytest.raises(
        CheckpointError,
        match=r"digits\.json: model metadata not found; a "
        r"digitcnn model is a \.safetensors file with a "
        r"\.json beside",
    ):
        load_model(json_path.with_suffix(".safetensors"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", r"digits\.json: unreadable model metadata \(.*\); save the model again"),
        ("[1, 2]", r"digits\.json: holds a JSON list, not digitcnn model metadata"),
        (
            '{"format": "digitcnn-model", "model": "s5"}',
            r"digits\.json: not digitcnn model metadata \(missing input_shape, num_classes, scaler, "
            r"classes\)",
        ),
        (
            '{"model": "s5", "input_shape": [1, 8, 8], "num_classes": 10, "scaler": {}, '
            '"classes": []}',
            r"not digitcnn model metadata \(missing format\)",
        ),
    ],
)
def test_bad_metadata(saved, text, message):
    _, _, json_path = saved
    json_path.write_text(text)
    with pytest.raises(CheckpointError, match=message):
        load_model(json_path)


def edit_meta(json_path, **changes):
    meta = json.loads(json_path.read_text())
    meta.update(changes)
    json_path.write_text(json.dumps(meta))


def test_weights_of_another_architecture_are_refused(saved):
    _, _, json_path = saved
    edit_meta(json_path, model="s5")
    with pytest.raises(
        CheckpointError,
        match=r"digits\.safetensors: weights do not fit model 's5' "
        r"\(missing tensor\(s\) '0\.bias', '2\.weight', "
        r"'2\.bias', '7\.bias' and 1 more; unexpected "
        r"tensor\(s\) .*\); check the \.json beside it",
    ):
        load_model(json_path)


def test_weights_of_another_input_size_are_refused(tmp_path):
    model = trained_like_model("s5")
    json_path = save_model(model, tmp_path / "s5.safetensors", meta=meta_for("s5"))
    edit_meta(
        json_path,
        input_shape=[1, 16, 16],
        scaler={"kind": "none", "mean": [0.0] * 256, "scale": [1.0] * 256},
    )
    with pytest.raises(
        CheckpointError,
        match=r"s5\.safetensors: weights do not fit model 's5' "
        r"\('7\.weight' is \[128, 1024\] F32, the model "
        r"needs \[128, 4096\] F32\); check the \.json",
    ):
        load_model(json_path)


def test_unknown_model_name_says_which_file(saved):
    _, _, json_path = saved
    edit_meta(json_path, model="resnet9000")
    with pytest.raises(CheckpointError, match=r"digits\.json: unknown model 'resnet9000'"):
        load_model(json_path)


def scaler_with(**changes) -> dict:
    return {"kind": "standard", "mean": [0.0] * 64, "scale": [1.0] * 64, **changes}


@pytest.mark.parametrize(
    "scaler, message",
    [
        (
            scaler_with(mean=[0.0] * 63),
            r"scaler mean must be a list of 64 numbers \(one per pixel "
            r"of the input\), got 63 values",
        ),
        (
            scaler_with(scale=[1.0] * 63 + [0.0]),
            r"scaler scale\[63\] is 0\.0; every scale must be a "
            r"positive number \(pixels are divided by it\)",
        ),
        (
            scaler_with(scale=[1.0] * 10 + [-2.0] + [1.0] * 53),
            r"scaler scale\[10\] is -2\.0; every scale must be a positive number.*",
        ),
        (
            scaler_with(scale=[math.nan] + [1.0] * 63),
            r"scaler scale\[0\] is nan, not a finite number",
        ),
        (
            scaler_with(mean=[0.0] * 63 + [math.inf]),
            r"scaler mean\[63\] is inf, not a finite number",
        ),
        (
            scaler_with(mean=[0.0] * 63 + [10**400]),
            r"scaler mean\[63\] is 1000*, not a finite number",
        ),
        (
            scaler_with(scale=[1e-300] * 64),
            r"scaler scale\[0\] is 1e-300; every scale must be a "
            r"positive number.*",
        ),
        (scaler_with(mean=[1e39] * 64), r"scaler mean\[0\] is 1e\+39, beyond float32's range"),
        (scaler_with(scale=["1"] * 64), r"scaler scale\[0\] is '1', not a number"),
        (scaler_with(scale=[True] * 64), r"scaler scale\[0\] is True, not a number"),
        (scaler_with(scale=None), r"scaler scale must be a list of 64 numbers .*got NoneType"),
        (
            scaler_with(kind="minmax"),
            r"scaler kind 'minmax' is not one of standard, global, max, "
            r"none",
        ),
        ([0, 1], r"scaler must be an object with kind, mean and scale, not list"),
    ],
)
def test_bad_scaler_is_refused(saved, scaler, message):
    _, _, json_path = saved
    edit_meta(json_path, scaler=scaler)
    with pytest.raises(CheckpointError, match=rf"digits\.json: {message}; save the model again$"):
        load_model(json_path)


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (3, 8, 8), (3, 2, 8, 8)])
def test_wrong_input_shape_is_refused(saved, shape):
    _, _, json_path = saved
    loaded = load_model(json_path)
    images = torch.zeros(shape, dtype=torch.uint8)
    with pytest.raises(
        CheckpointError,
        match=rf"images of shape {re_tuple(shape[1:])} given to a "
        r"model trained on \(1, 8, 8\); use a model trained "
        r"on this size",
    ):
        loaded.predict_log_probs(images)


def re_tuple(values) -> str:
    return r"\(" + ", ".join(str(v) for v in values) + r"\)"


def test_find_saved_models_in_fold_order(tmp_path):
    for fold in (10, 2, 0, 1):
        folder = tmp_path / "folds" / f"fold{fold}"
        folder.mkdir(parents=True)
        (folder / "model.json").write_text("{}")
    (tmp_path / "folds" / "fold_old").mkdir()
    (tmp_path / "folds" / "fold_old" / "model.json").write_text("{}")
    (tmp_path / "folds" / "fold3").mkdir()  # a fold without a saved model
    found = find_saved_models(tmp_path)
    assert [p.parent.name for p in found] == ["fold0", "fold1", "fold2", "fold10"]
    assert find_saved_models(tmp_path / "nowhere") == []


# ----------------------------------------------------------------------------- K-fold models


def small_dataset(rows: int = 120, noisy_labels: int = 0) -> DigitDataset:
    """Synthetic 8x8 digits; ``noisy_labels`` random rows get a random label, so that the
    models make mistakes and matching a fold's accuracy means matching its predictions."""
    table = synthetic_optdigits(rows, seed=7)
    labels = table[:, 64].copy()
    rng = np.random.default_rng(0)
    noisy = rng.choice(rows, noisy_labels, replace=False)
    labels[noisy] = rng.integers(0, 10, noisy_labels)
    return DigitDataset(
        torch.as_tensor(table[:, :64], dtype=torch.uint8).reshape(-1, 1, 8, 8),
        torch.as_tensor(labels),
        name="synthetic",
        source="tests",
        max_value=16,
    )


def assert_reproduces_fold(json_path, dataset: DigitDataset, fold) -> None:
    """The saved model predicts the fold's validation rows exactly as the fold did."""
    loaded = load_model(json_path)
    assert loaded.meta["fold"] == fold.fold
    assert loaded.meta["metrics"]["accuracy"] == fold.accuracy
    rows = torch.as_tensor(fold.val_indices)
    log_probs = loaded.predict_log_probs(dataset.images[rows])
    predicted = log_probs.argmax(dim=1)
    assert int((predicted == dataset.labels[rows]).sum()) == fold.correct
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (dataset.labels[rows].numpy(), predicted.numpy()), 1)
    assert np.array_equal(confusion, fold.confusion)
    nll = float(torch.nn.functional.nll_loss(log_probs, dataset.labels[rows]))
    assert nll == pytest.approx(fold.loss, rel=1e-4)


# float32 on every machine: the early-stopping checks below rely on fold 1's trajectory, and
# --precision auto would take bf16 on CPUs with AMX.
SAVE_CONFIG = RunConfig(
    folds=3,
    epochs=6,
    batch_size=20,
    lr=0.01,
    scheduler="none",
    quiet=True,
    save_models=True,
    early_stopping=True,
    monitor="val_loss",
    patience=1,
    precision="fp32",
)


def test_kfold_saves_each_fold_model(tmp_path):
    dataset = small_dataset(noisy_labels=30)
    result = run_kfold(dataset, SAVE_CONFIG, out_dir=tmp_path)
    found = find_saved_models(tmp_path)
    assert [p.parent.name for p in found] == ["fold0", "fold1", "fold2"]
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("model.*"))] == [
        f"folds/fold{k}/model.{ext}" for k in range(3) for ext in ("json", "safetensors")
    ]
    # Mistakes on some rows make "same accuracy" mean "same predictions".
    assert any(fold.correct < fold.n_val for fold in result.folds)
    for fold, json_path in zip(result.folds, found):
        assert_reproduces_fold(json_path, dataset, fold)


def test_run_fold_saves_its_best_model(tmp_path):
    """One fold trained on its own, stopped early: the saved weights are the restored best."""
    dataset = small_dataset(noisy_labels=30)
    train_rows, val_rows = make_splits(dataset, SAVE_CONFIG)[1]
    fold = run_fold(
        dataset, SAVE_CONFIG, 1, train_rows, val_rows, torch.device("cpu"), out_dir=tmp_path
    )
    assert fold.best_epoch < fold.epochs_run - 1  # the restore mattered
    assert fold.loss == pytest.approx(fold.val_loss[fold.best_epoch])
    assert_reproduces_fold(tmp_path / "folds" / "fold1" / "model.json", dataset, fold)


def test_kfold_saves_nothing_unless_asked(tmp_path):
    dataset = small_dataset(60)
    run_kfold(dataset, RunConfig(folds=2, epochs=1, quiet=True), out_dir=tmp_path)
    assert find_saved_models(tmp_path) == []
    assert not list(tmp_path.rglob("*.safetensors"))


# ----------------------------------------------------------------------------- model.json validation


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"num_classes": 1_000_000_000},
            r"num_classes 1000000000 does not match the 10 entries of "
            r"classes; make num_classes the number of classes",
        ),
        ({"num_classes": 9}, r"num_classes 9 does not match the 10 entries of classes"),
        ({"num_classes": True}, r"num_classes True does not match"),
        (
            {"classes": list(range(1001)), "num_classes": 1001},
            r"classes must be a list of 1 to 1000 class labels",
        ),
        ({"classes": [0, 1, 1, 3, 4, 5, 6, 7, 8, 9]}, r"classes lists a class twice"),
        ({"classes": [[0]] * 10}, r"classes must be a list of 1 to 1000 class labels"),
        (
            {"input_shape": [1, 100000, 100000]},
            r"input_shape 100000x100000 is outside the sizes model "
            r"'digitnet' accepts here \(3 to 128 pixels a side\)",
        ),
        ({"input_shape": [1, 2, 8]}, r"input_shape 2x8 is outside the sizes"),
        (
            {"input_shape": [1000, 8, 8]},
            r"input_shape has 1000 channels; a digit model takes 1 to 4",
        ),
        (
            {"input_shape": [1, 8.0, 8]},
            r"input_shape \[1, 8\.0, 8\] is not \[channels, height, "
            r"width\] of whole numbers",
        ),
        ({"input_shape": [8, 8]}, r"input_shape \[8, 8\] is not \[channels, height, width\]"),
        ({"model": ["s5"]}, r"model \['s5'\] is not a model name"),
        (
            {"model_options": {"widht": 8}},
            r"model_options 'widht' is not an option of model "
            r"'digitnet'",
        ),
        ({"model_options": {"num_classes": 8}}, r"model_options 'num_classes' is not an option"),
        (
            {"model_options": {"width": 8.5}},
            r"model_options width = 8\.5 is not a value like its "
            r"default 32",
        ),
        (
            {"model_options": {"dropout": float("nan")}},
            r"model_options dropout = nan is not a value",
        ),
        (
            {"model_options": {"dropout": 3.0}},
            r"model_options \{'dropout': 3\.0\} do not build model "
            r"'digitnet' \(dropout probability has to be between 0 "
            r"and 1, but got 3\.0\)",
        ),
        (
            {"model_options": {"width": 100000}},
            r"the model it describes needs [\d,]+ bytes of weights "
            r"\(at most 536,870,912\)",
        ),
        ({"model_options": [1]}, r"model_options \[1\] is not an object of builder options"),
        (
            {"format_version": 2},
            r"format_version 2 is not one this digitcnn reads \(1\.\.1\); upgrade "
            r"digitcnn",
        ),
    ],
)
def test_bad_model_json_fields_are_refused(saved, changes, message):
    _, _, json_path = saved
    edit_meta(json_path, **changes)
    with pytest.raises(CheckpointError, match=rf"^\S*digits\.json: {message}"):
        load_model(json_path)


@pytest.mark.parametrize(
    "weights",
    [
        "../../../../etc/hostname",
        "/etc/hostname",
        "sub/digits.safetensors",
        "..",
        "",
        3,
        "digits.json",
        "..\\digits.safetensors",
    ],
)
def test_weights_must_be_a_bare_file_name(saved, weights):
    _, _, json_path = saved
    edit_meta(json_path, weights=weights)
    with pytest.raises(
        CheckpointError,
        match=r"digits\.json: weights .* is not the bare name of a "
        r"weights file \(\.safetensors, \.pt or \.pth\) in "
        r"the model's folder; name the file beside",
    ):
        load_model(json_path)


def test_weights_symlinked_from_outside_are_refused(saved, tmp_path):
    _, _, json_path = saved
    outside = tmp_path / "elsewhere.safetensors"
    json_path.with_suffix(".safetensors").rename(outside)
    json_path.with_suffix(".safetensors").symlink_to(outside)
    with pytest.raises(
        CheckpointError,
        match=r"digits\.safetensors: the weights lead outside the "
        r"model's folder",
    ):
        load_model(json_path)


def rewrite_header(weights, change) -> None:
    """Apply ``change`` to the safetensors header (a dict) and write the file back."""
    data = weights.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    change(header)
    text = json.dumps(header).encode()
    weights.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length :])


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda h: h["0.weight"].update(dtype="I32"),
            r"'0\.weight' is \[32, 1, 3, 3\] I32, the model needs \[32, 1, 3, 3\] F32",
        ),
        (
            lambda h: h.update({"extra": h.pop("0.weight")}),
            r"missing tensor\(s\) '0\.weight'; unexpected tensor\(s\) 'extra'",
        ),
        (
            lambda h: h["0.weight"].update(shape=[16, 2, 3, 3]),
            r"'0\.weight' is \[16, 2, 3, 3\] F32, the model needs \[32, 1, 3, 3\] F32",
        ),
    ],
)
def test_header_that_does_not_fit_is_refused_before_reading(saved, monkeypatch, change, message):
    _, _, json_path = saved
    weights = json_path.with_suffix(".safetensors")
    rewrite_header(weights, change)
    import safetensors.torch

    def no_reading(*args, **kwargs):
        raise AssertionError("a tensor was read before the header was checked")

    monkeypatch.setattr(safetensors.torch, "load_file", no_reading)
    with pytest.raises(
        CheckpointError,
        match=rf"digits\.safetensors: weights do not fit model "
        rf"'digitnet' \({message}\)",
    ):
        load_model(json_path)


def test_header_claiming_a_huge_tensor_is_refused(saved):
    _, _, json_path = saved
    weights = json_path.with_suffix(".safetensors")
    rewrite_header(weights, lambda h: h["0.weight"].update(shape=[10**12, 1, 3, 3]))
    with pytest.raises(CheckpointError, match=r"digits\.safetensors: corrupt safetensors file"):
        load_model(json_path)


def test_oversized_or_deep_metadata_is_refused(saved):
    _, _, json_path = saved
    json_path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=r"digits\.json: unreadable model metadata"):
        load_model(json_path)
    json_path.write_text('{"num_classes": ' + "9" * 5000 + "}")
    with pytest.raises(CheckpointError, match=r"digits\.json: unreadable model metadata"):
        load_model(json_path)
    with open(json_path, "wb") as handle:
        handle.truncate(40 * 1024 * 1024)  # sparse: 40 MiB of zeros
    with pytest.raises(
        CheckpointError,
        match=r"digits\.json: 41,943,040 bytes is too large for "
        r"model metadata",
    ):
        load_model(json_path)


def run_with_peak_rss(argv: list[str], tmp_path) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak RSS in bytes) of ``python argv...``, measured alone.

    A small launcher runs the command and reports its peak: a child forked straight from this
    test process starts its ru_maxrss at the test process's own peak (Linux carries the old
    address space's high-water mark over exec), which after a long suite exceeds any bound.
    """
    import subprocess
    import sys

    peak_file = tmp_path / "peak_rss_kb.txt"
    launcher = (
        "import resource, subprocess, sys\n"
        "code = subprocess.call(sys.argv[2:])\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "open(sys.argv[1], 'w').write(str(peak))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", launcher, str(peak_file), sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout, done.stderr, int(peak_file.read_text()) * 1024


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"num_classes": 1_000_000_000},
            r"model\.json: num_classes 1000000000 does not match the 10 "
            r"entries of classes",
        ),
        (
            {"weights": "../../../../etc/hostname"},
            r"model\.json: weights '\.\./\.\./\.\./\.\./etc/"
            r"hostname' is not the bare name",
        ),
    ],
)
def test_predict_cli_refuses_a_tampered_fold_model(tmp_path, changes, message):
    dataset = small_dataset(60)
    config = RunConfig(folds=2, epochs=1, quiet=True, save_models=True, plots=False)
    run_kfold(dataset, config, out_dir=tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text("{}")  # what predict looks for in a run folder
    edit_meta(tmp_path / "run" / "folds" / "fold0" / "model.json", **changes)
    np.save(tmp_path / "x.npy", dataset.images[:5, 0].numpy())
    code, stdout, stderr, peak = run_with_peak_rss(
        [
            "-m",
            "digitcnn.predict",
            "--model",
            str(tmp_path / "run"),
            "--input",
            str(tmp_path / "x.npy"),
            "--out",
            str(tmp_path / "out.csv"),
        ],
        tmp_path,
    )
    assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
    assert re.match(rf"digitcnn\.predict: error: \S*fold0/{message}", stderr), stderr
    assert peak < 1.5e9
    assert not (tmp_path / "out.csv").exists()


def test_weights_changed_after_saving_are_refused(saved):
    model, meta, json_path = saved
    stored = json.loads(json_path.read_text())
    assert (
        stored["weights_sha256"]
        == hashlib.sha256(json_path.with_suffix(".safetensors").read_bytes()).hexdigest()
    )
    # same names, shapes and dtypes, other values: only the digest can tell
    other = trained_like_model(seed=1)
    save_model(other, json_path.parent / "other.safetensors", meta=meta)
    json_path.with_name("other.json").unlink()
    json_path.with_name("other.safetensors").replace(json_path.with_suffix(".safetensors"))
    with pytest.raises(
        CheckpointError,
        match=r"digits\.safetensors: contents differ from the "
        r"weights_sha256 in digits\.json; the weights were "
        r"changed or belong to another model",
    ):
        load_model(json_path)
    edit_meta(json_path, weights_sha256=None)  # a model saved before digests were kept
    assert torch.equal(
        load_model(json_path).model.state_dict()["0.weight"], other.state_dict()["0.weight"]
    )
    edit_meta(json_path, weights_sha256="abc")
    with pytest.raises(
        CheckpointError,
        match=r"digits\.json: weights_sha256 'abc' is not a "
        r"SHA-256 hex digest",
    ):
        load_model(json_path)
