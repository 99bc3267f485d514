"""--cuda-graph: refused, before anything is written, where the fold-batched step cannot be
captured; on CUDA, the captured step trains the folds as the eager one does."""

import numpy as np
import pytest
import torch

import digitcnn
from digitcnn.cv.runner import check_cuda_graph, load_for_config, run_kfold
from digitcnn.errors import ConfigError
from digitcnn.training.graphs import capture_refusal
from digitcnn.training.recipe import Recipe

ON_CUDA = torch.cuda.is_available()
CUDA, CPU = torch.device("cuda"), torch.device("cpu")
FAST = dict(epochs=3, batch_size=16, quiet=True, verify=False, precision="fp32")


@pytest.mark.parametrize(
    "recipe, device, autocast, why",
    [
        (Recipe(), CPU, None, "CUDA graphs need --device cuda, not cpu"),
        (Recipe(optimizer="sgd"), CUDA, None, "--optimizer sgd cannot be captured"),
        (Recipe(optimizer="rmsprop"), CUDA, None, "supports adam and adamw"),
        (Recipe(scheduler="onecycle"), CUDA, None, "changes Adam's betas every batch"),
        (Recipe(), CUDA, torch.bfloat16, "--precision bf16 is not captured"),
    ],
)
def test_capture_refusal_says_why(recipe, device, autocast, why):
    assert why in capture_refusal(recipe, device, autocast)


@pytest.mark.parametrize(
    "recipe", [Recipe(), Recipe(optimizer="adamw", scheduler="plateau"), Recipe(scheduler="none")]
)
def test_adam_and_adamw_with_per_epoch_schedules_can_be_captured(recipe):
    assert capture_refusal(recipe, CUDA, None) == ""


@pytest.mark.parametrize(
    "changes, device, message",
    [
        ({}, CPU, r"--cuda-graph: CUDA graphs need --device cuda, not cpu, or leave --cuda-graph"),
        ({"fold_parallel": False}, CUDA, r"without --no-fold-parallel"),
        ({"cv": "holdout"}, CUDA, r"it needs --cv kfold or stratified"),
        ({"optimizer": "sgd"}, CUDA, r"--cuda-graph: --optimizer sgd cannot be captured"),
    ],
)
def test_a_run_that_cannot_be_captured_is_refused(changes, device, message):
    config = digitcnn.RunConfig(cuda_graph=True, **changes)
    with pytest.raises(ConfigError, match=message):
        check_cuda_graph(config, device)
    check_cuda_graph(config.replace(cuda_graph=False), device)  # without the flag: no check


def test_the_cli_refuses_it_on_the_cpu_writing_nothing(optdigits_dir, tmp_path, capsys):
    from digitcnn.commands import kfold

    out = tmp_path / "run"
    argv = ["--data-dir", str(optdigits_dir), "--no-verify", "--device", "cpu", "--cuda-graph"]
    assert kfold.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--cuda-graph: CUDA graphs need --device cuda, not cpu" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.skipif(not ON_CUDA, reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize(
    "changes",
    [
        dict(dropout=0.0),
        dict(dropout=0.0, optimizer="adamw", scheduler="step", step_size=1, gamma=0.5),
        dict(  # per-fold plateaus: the batches while the rates differ run eagerly
            dropout=0.0, scheduler="plateau", plateau_monitor="val_loss", plateau_patience=0
        ),
    ],
)
def test_the_captured_step_trains_as_the_eager_one(optdigits_dir, monkeypatch, changes):
    # TF32 off: both sides in float32, the graph replays the same kernels as the eager step
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    config = digitcnn.RunConfig(
        data_dir=str(optdigits_dir), device="cuda", fold_parallel=True, **{**FAST, **changes}
    )
    dataset = load_for_config(config)
    captured = run_kfold(dataset, config.replace(cuda_graph=True))
    eager = run_kfold(dataset, config)
    assert captured.extra["execution"]["cuda_graph"] is True
    assert captured.ran_on == "cuda, fold-parallel, CUDA graph"
    for c, e in zip(captured.folds, eager.folds):
        assert np.array_equal(c.val_indices, e.val_indices)
        assert np.allclose(c.train_loss, e.train_loss, rtol=1e-3)
        assert np.allclose(c.val_loss, e.val_loss, rtol=1e-3)
        assert c.lrs == pytest.approx(e.lrs)


@pytest.mark.skipif(not ON_CUDA, reason="CUDA graphs need a CUDA device")
def test_captured_reruns_are_identical(optdigits_dir):
    config = digitcnn.RunConfig(
        data_dir=str(optdigits_dir), device="cuda", cuda_graph=True, deterministic=True, **FAST
    )
    dataset = load_for_config(config)
    first, second = run_kfold(dataset, config), run_kfold(dataset, config)
    for a, b in zip(first.folds, second.folds):
        assert a.train_loss == b.train_loss and a.val_loss == b.val_loss
        assert np.array_equal(a.confusion, b.confusion)
