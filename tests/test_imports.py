"""Import-cost guards: heavy libraries are imported where they are used, not at start-up.

Each check runs in a fresh interpreter (the test process has long imported everything) and
reads ``sys.modules`` there, so it fails as soon as a module-level import of a heavy library
creeps back into the path it guards.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What `import digitcnn.kfold` must not import: the plotting, reporting and statistics stacks.
HEAVY = ("torchmetrics", "torchvision", "matplotlib", "seaborn", "pandas", "scipy", "ray")
CLIS = ("kfold", "train", "predict", "sweep", "baselines", "compare", "models", "track")


def printed_and_modules_after(code: str) -> tuple[str, set[str]]:
    """What running ``code`` in a new interpreter printed, and every module name in its
    ``sys.modules`` afterwards."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    *printed, modules = done.stdout.splitlines()
    return "\n".join(printed), set(json.loads(modules))


def modules_after(code: str) -> set[str]:
    """Every module name in ``sys.modules`` after running ``code`` in a new interpreter."""
    return printed_and_modules_after(code)[1]


def imported_after(code: str) -> set[str]:
    """Top-level package names in ``sys.modules`` after running ``code`` in a new interpreter."""
    return {name.split(".")[0] for name in modules_after(code)}


def test_import_kfold_leaves_heavy_libraries_alone():
    loaded = imported_after("import digitcnn.kfold")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert "digitcnn" in loaded


def test_import_digitcnn_imports_neither_torch_nor_numpy():
    loaded = imported_after("import digitcnn")
    assert not loaded & {"torch", "numpy", *HEAVY}


def test_building_a_config_does_not_import_torch():
    # RunConfig validates its augmentation settings; that must not need torch
    loaded = imported_after(
        "import digitcnn\ndigitcnn.RunConfig(folds=3, augment='digits', rotation=5)"
    )
    assert "torch" not in loaded


# Per CLI: flags its help must show, and packages it must not import besides torch and HEAVY
# (the board's help needs neither numpy, PIL nor its web stack).
HELP_EXPECTATIONS = {
    **{cli: ((), ()) for cli in CLIS},
    # the run-writing commands' shared layer (flags, session, the run store's folder and
    # resume modules) is NumPy-free: the record writers load with the run
    "kfold": ((), ("numpy",)),
    "train": ((), ("numpy",)),
    "predict": ((), ("numpy",)),
    "sweep": (("--executor {local,ray}", "--task-gpus"), ("numpy",)),
    # --help and a wrong [space] answer before Optuna is imported
    "tune": (("--space", "--pruner {median,hyperband,none}"), ("numpy", "optuna")),
    "board": (("--model", "--save-dir"), ("numpy", "PIL", "starlette", "uvicorn")),
}


@pytest.mark.parametrize("cli", HELP_EXPECTATIONS)
def test_cli_help_does_not_import_torch(cli):
    flags, forbidden = HELP_EXPECTATIONS[cli]
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['python -m digitcnn.{cli}', '--help']\n"
        "try:\n"
        f"    runpy.run_module('digitcnn.{cli}', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as stop:\n"
        "    assert stop.code in (0, None), stop.code\n"
    )
    printed, modules = printed_and_modules_after(code)
    loaded = {name.split(".")[0] for name in modules}
    assert "torch" not in loaded, f"python -m digitcnn.{cli} --help imported torch"
    assert not loaded & {*HEAVY, *forbidden}, sorted(loaded & {*HEAVY, *forbidden})
    assert all(flag in printed for flag in flags), printed


def test_help_is_printed_in_full():
    # the lazy structure must not cost the help text anything
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "digitcnn.kfold", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--dataset" in done.stdout and "--resume" in done.stdout and "--no-plots" in done.stdout


def test_evaluating_a_run_imports_neither_torchmetrics_nor_dynamo():
    # evaluation.json is written at the end of every run: torchmetrics' import (torchvision,
    # torch._dynamo and its exit hooks) would cost seconds of a run that trained for seconds
    loaded = modules_after(
        "import numpy as np\n"
        "from digitcnn.reporting.evaluation import evaluate_run\n"
        "rng = np.random.default_rng(0)\n"
        "logits = rng.normal(size=(60, 10))\n"
        "log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))\n"
        "oof = {'true': rng.integers(0, 10, 60), 'fold': rng.integers(0, 3, 60),\n"
        "       'log_probs': log_probs}\n"
        "report = evaluate_run(oof, curves=True)\n"
        "assert len(report['folds']) == 3 and 'roc' in report['pooled']['curves']\n"
    )
    pulled_in = loaded & {"torchmetrics", "torchvision", "torch._dynamo"}
    assert not pulled_in, sorted(pulled_in)
    assert "sklearn.metrics" in loaded  # what evaluates
