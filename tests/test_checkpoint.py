"""Saved models: safetensors + JSON round trips, refusal of unsafe or broken files, K-fold."""
import json
import shutil

import numpy as np
import pytest
import torch

from digitcnn import kfold
from digitcnn.checkpoint import find_saved_models, load_model, save_model
from digitcnn.config import RunConfig
from digitcnn.data import DigitDataset
from digitcnn.errors import CheckpointError
from digitcnn.models import create_model
from digitcnn.scaling import fit_scaler

from conftest import synthetic_optdigits


class NotATensor:
    """Any Python class: unpickling it would run code from wherever it is defined."""


def raw_images(count: int = 50, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 17, (count, 1, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


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
    return {"model": name, "input_shape": [1, 8, 8], "num_classes": 10, "model_options": {},
            "init": "kaiming-xavier", "scaler": scaler.to_dict(), "classes": list(range(10))}


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
    with pytest.raises(CheckpointError, match=r"expected one model \.json in the folder, found 2; "
                                              r"pass the model file itself"):
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
    with pytest.raises(CheckpointError, match=r"weights\.pt: refused: loading it would unpickle "
                                              r"arbitrary Python objects \(.*NotATensor\); save "
                                              r"only a state_dict of tensors, or use safetensors"):
        load_model(path)


@pytest.mark.parametrize("content, kind", [
    ([torch.zeros(1)], "list"),
    ({"w": torch.zeros(1), "epoch": 3}, "dict"),
    (torch.zeros(3), "Tensor"),
])
def test_non_state_dict_is_refused(tmp_path, saved, content, kind):
    path = write_pt(tmp_path, saved, content)
    with pytest.raises(CheckpointError, match=rf"weights\.pt: holds a {kind}, not a state_dict of "
                                              r"tensors; save model\.state_dict\(\)"):
        load_model(path)


@pytest.mark.parametrize("content", [
    bytes(range(256)) * 3,                     # junk the weights-only unpickler trips over
    b"this is not a pytorch file at all\n",    # junk the legacy reader fails on with KeyError
    b"",
], ids=["binary", "text", "empty"])
def test_unreadable_pt_is_not_called_unsafe(tmp_path, saved, content):
    path = write_pt(tmp_path, saved, content)
    with pytest.raises(CheckpointError, match=r"weights\.pt: not a readable PyTorch file \(.*\); "
                                              r"save the model again$"):
        load_model(path)


def test_truncated_pt_is_refused(tmp_path, saved):
    model, _, _ = saved
    path = write_pt(tmp_path, saved, model.state_dict())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"weights\.pt: (not a readable PyTorch file|"
                                              r"refused)"):
        load_model(path)


@pytest.mark.parametrize("damage", ["junk", "truncate", "empty"])
def test_corrupt_safetensors_is_refused(saved, damage):
    _, _, json_path = saved
    weights = json_path.with_suffix(".safetensors")
    data = weights.read_bytes()
    weights.write_bytes({"junk": b"\xff" * 300, "truncate": data[:-40], "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"digits\.safetensors: corrupt safetensors file "
                                              r"\(.+\); save the model again"):
        load_model(json_path)


def test_missing_weights(saved):
    _, _, json_path = saved
    json_path.with_suffix(".safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"digits\.safetensors: weights file not found; keep "
                                              r"the weights beside their \.json"):
        load_model(json_path)


def test_missing_metadata(saved):
    _, _, json_path = saved
    json_path.unlink()
    with pytest.raises(CheckpointError, match=r"digits\.json: model metadata not found; a "
                                              r"digitcnn model is a \.safetensors file with a "
                                              r"\.json beside"):
        load_model(json_path.with_suffix(".safetensors"))


@pytest.mark.parametrize("text, message", [
    ("{not json", r"digits\.json: unreadable model metadata \(.*\); save the model again"),
    ("[1, 2]", r"digits\.json: holds a JSON list, not digitcnn model metadata"),
    ('{"format": "digitcnn-model", "model": "s5"}',
     r"digits\.json: not digitcnn model metadata \(missing input_shape, num_classes, scaler, "
     r"classes\)"),
    ('{"model": "s5", "input_shape": [1, 8, 8], "num_classes": 10, "scaler": {}, '
     '"classes": []}', r"not digitcnn model metadata \(missing format\)"),
])
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
    with pytest.raises(CheckpointError, match=r"digits\.safetensors: weights do not fit model 's5' "
                                              r"\((Missing|Unexpected) key.*\); check the \.json"):
        load_model(json_path)


def test_weights_of_another_input_size_are_refused(tmp_path):
    model = trained_like_model("s5")
    json_path = save_model(model, tmp_path / "s5.safetensors", meta=meta_for("s5"))
    edit_meta(json_path, input_shape=[1, 16, 16],
              scaler={"kind": "none", "mean": [0.0] * 256, "scale": [1.0] * 256})
    with pytest.raises(CheckpointError, match=r"weights do not fit model 's5' \(size mismatch for "
                                              r"7\.weight"):
        load_model(json_path)


def test_unknown_model_name_says_which_file(saved):
    _, _, json_path = saved
    edit_meta(json_path, model="resnet9000")
    with pytest.raises(CheckpointError, match=r"digits\.json: unknown model 'resnet9000'"):
        load_model(json_path)


def test_scaler_of_the_wrong_size_is_refused(saved):
    _, _, json_path = saved
    edit_meta(json_path, scaler={"kind": "standard", "mean": [0.0] * 63, "scale": [1.0] * 64})
    with pytest.raises(CheckpointError, match=r"digits\.json: scaler has \(63,\) means and \(64,\) "
                                              r"scales for 64 pixels of input \(1, 8, 8\)"):
        load_model(json_path)


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (3, 8, 8), (3, 2, 8, 8)])
def test_wrong_input_shape_is_refused(saved, shape):
    _, _, json_path = saved
    loaded = load_model(json_path)
    images = torch.zeros(shape, dtype=torch.uint8)
    with pytest.raises(CheckpointError, match=rf"images of shape {re_tuple(shape[1:])} given to a "
                                              r"model trained on \(1, 8, 8\); use a model trained "
                                              r"on this size"):
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
    return DigitDataset(torch.as_tensor(table[:, :64], dtype=torch.uint8).reshape(-1, 1, 8, 8),
                        torch.as_tensor(labels), name="synthetic", source="tests", max_value=16)


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
SAVE_CONFIG = RunConfig(folds=3, epochs=6, batch_size=20, lr=0.01, scheduler="none", quiet=True,
                        save_models=True, early_stopping=True, monitor="val_loss", patience=1,
                        precision="fp32")


def test_kfold_saves_each_fold_model(tmp_path):
    dataset = small_dataset(noisy_labels=30)
    result = kfold.run_kfold(dataset, SAVE_CONFIG, out_dir=tmp_path)
    found = find_saved_models(tmp_path)
    assert [p.parent.name for p in found] == ["fold0", "fold1", "fold2"]
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("model.*"))] == [
        f"folds/fold{k}/model.{ext}" for k in range(3) for ext in ("json", "safetensors")]
    # Mistakes on some rows make "same accuracy" mean "same predictions".
    assert any(fold.correct < fold.n_val for fold in result.folds)
    for fold, json_path in zip(result.folds, found):
        assert_reproduces_fold(json_path, dataset, fold)


def test_run_fold_saves_its_best_model(tmp_path):
    """One fold trained on its own, stopped early: the saved weights are the restored best."""
    dataset = small_dataset(noisy_labels=30)
    train_rows, val_rows = kfold.make_splits(dataset, SAVE_CONFIG)[1]
    fold = kfold.run_fold(dataset, SAVE_CONFIG, 1, train_rows, val_rows, torch.device("cpu"),
                          out_dir=tmp_path)
    assert fold.best_epoch < fold.epochs_run - 1  # the restore mattered
    assert fold.loss == pytest.approx(fold.val_loss[fold.best_epoch])
    assert_reproduces_fold(tmp_path / "folds" / "fold1" / "model.json", dataset, fold)


def test_kfold_saves_nothing_unless_asked(tmp_path):
    dataset = small_dataset(60)
    kfold.run_kfold(dataset, RunConfig(folds=2, epochs=1, quiet=True), out_dir=tmp_path)
    assert find_saved_models(tmp_path) == []
    assert not list(tmp_path.rglob("*.safetensors"))
