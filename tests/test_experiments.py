"""Every experiment in experiments/index.toml still loads and runs (one epoch, tiny data), so
the configs behind results/README.md cannot rot."""

import importlib
import json
import sys

import pytest
from conftest import REPO_ROOT
from idx_files import write_mnist

sys.path.insert(0, str(REPO_ROOT / "experiments"))
import run_all  # noqa: E402

EXPERIMENTS = run_all.load_index()
CONFIGS = sorted(p.name for p in (REPO_ROOT / "experiments").glob("*.toml"))


def test_every_config_file_is_an_indexed_experiment():
    used = {experiment.config for experiment in EXPERIMENTS.values()}
    assert set(CONFIGS) - {"index.toml"} == used


def test_list_shows_each_command(capsys):
    assert run_all.main(["--list", "--results", "/nonexistent"]) == 0
    listed = capsys.readouterr().out
    for experiment in EXPERIMENTS.values():
        for _, command in experiment.runs(REPO_ROOT / "results"):
            assert " ".join(command[:5]) in listed


def test_unknown_experiment_names_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as stopped:
        run_all.main(["no_such_run"])
    assert stopped.value.code == 2
    assert (
        "unknown experiment(s) no_such_run; choose from: s5_uci_pytorch" in capsys.readouterr().err
    )


@pytest.fixture
def tiny_mnist(tmp_path):
    folder = tmp_path / "mnist"
    write_mnist(folder, counts={"test": 80})  # 8 rows of holdouts: no stratifying
    return folder


# every experiment as its command runs it, and those that train networks with --fold-parallel
RUNS = [pytest.param(name, False, id=name) for name in EXPERIMENTS] + [
    pytest.param(name, True, id=f"{name}-fold-parallel")
    for name, experiment in EXPERIMENTS.items()
    if experiment.command != "baselines"
]


@pytest.mark.parametrize("name, fold_parallel", RUNS)
def test_experiment_runs_one_epoch_on_a_small_subset(
    name, fold_parallel, optdigits_dir, tiny_mnist, tmp_path
):
    """Each experiment as its command runs it, and again with --fold-parallel, the default on
    CUDA (channels_last DigitNet once failed there): on the CPU the same code path runs."""
    experiment = EXPERIMENTS[name]
    out, command = experiment.runs(tmp_path / "results")[0]
    argv = command[3 : command.index("--out")]  # after "python -m digitcnn.<module>"
    config_text = (REPO_ROOT / "experiments" / experiment.config).read_text()
    data_dir = tiny_mnist if 'dataset = "mnist"' in config_text else optdigits_dir
    argv += ["--data-dir", str(data_dir), "--no-verify", "--quiet", "--no-plots", "--out", str(out)]
    if experiment.command != "baselines":
        argv += ["--epochs", "1", "--threads", "1", "--workers", "1"]
        argv += ["--fold-parallel"] if fold_parallel else []
    module = importlib.import_module(f"digitcnn.commands.{experiment.command}")
    assert module.main(argv) == 0
    if experiment.command == "sweep":
        assert (out / "sweep.csv").is_file()
    else:
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["n"] > 0 and 0 <= metrics["accuracy"] <= 1
        folds = len(metrics["folds"])
        if fold_parallel and experiment.command == "kfold":
            assert metrics["execution"]["fold_parallel"] == (folds > 1)
