"""Every experiment in experiments/index.toml still loads and runs (one epoch, tiny data), so
the configs behind results/README.md cannot rot."""

import importlib
import json
import sys

import pytest
from conftest import REPO_ROOT, real_data
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


def test_epochs_below_one_is_refused(capsys):
    with pytest.raises(SystemExit) as stopped:
        run_all.main(["--epochs", "0", "s5_uci_pytorch"])
    assert stopped.value.code == 2
    assert "--epochs 0: give a whole number of at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_a_smoke_run_trains_one_epoch_and_leaves_the_readme(tmp_path):
    """``--epochs 1 --no-readme``, as scripts/gpu_check.sh runs every experiment on a new
    machine: the override reaches the command, and results/README.md is not rewritten."""
    real_data("optdigits")  # the configs read ../shared/data beside the repository
    readme = (REPO_ROOT / "results" / "README.md").read_bytes()
    args = ["s5_uci_pytorch", "uci_svm", "--epochs", "1", "--results", str(tmp_path)]
    assert run_all.main([*args, "--no-readme"]) == 0
    recorded = json.loads((tmp_path / "s5_uci_pytorch" / "command.json").read_text())
    assert recorded["command"].endswith("--epochs 1")
    history = json.loads((tmp_path / "s5_uci_pytorch" / "metrics.json").read_text())
    assert [fold["epochs_run"] for fold in history["folds"]] == [1, 1, 1, 1]
    svm = json.loads((tmp_path / "uci_svm" / "command.json").read_text())
    assert "--epochs" not in svm["command"]  # baselines train no network
    assert not (tmp_path / "README.md").exists()
    assert (REPO_ROOT / "results" / "README.md").read_bytes() == readme


@pytest.mark.slow
def test_keep_going_runs_the_others_and_names_the_failed(monkeypatch, tmp_path, capsys):
    real_data("optdigits")
    broken = run_all.Experiment("broken", "kfold", "no_such.toml", "-", "-", "-")
    index = {"broken": broken, "uci_svm": EXPERIMENTS["uci_svm"]}
    monkeypatch.setattr(run_all, "load_index", lambda: index)
    args = ["--results", str(tmp_path), "--no-readme"]
    assert run_all.main(args) == 1  # stops at the first failure
    assert "run_all.py: broken: exit code 2" in capsys.readouterr().err
    assert not (tmp_path / "uci_svm").exists()
    assert run_all.main([*args, "--keep-going"]) == 1
    assert "run_all.py: failed: broken" in capsys.readouterr().err
    assert (tmp_path / "uci_svm" / "command.json").is_file()
