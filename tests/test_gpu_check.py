"""scripts/gpu_check.sh and the JSON scripts/gpu_summary.py makes of what it wrote: the
script's syntax and the flags it passes, and the summary's figures, test counts and
determinism check from real runs' files."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from digitcnn.commands import kfold

SCRIPTS = REPO_ROOT / "scripts"


def summary_module():
    spec = importlib.util.spec_from_file_location("gpu_summary", SCRIPTS / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_prepare.sh"])
def test_the_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_flags_the_check_passes_exist():
    """Every flag gpu_check.sh gives python -m benchmarks, run_all.py, digitcnn.kfold and
    gpu_summary.py is one of theirs."""
    text = (SCRIPTS / "gpu_check.sh").read_text()
    from benchmarks.__main__ import build_parser

    helps = {
        "run_all": [sys.executable, str(REPO_ROOT / "experiments" / "run_all.py"), "--help"],
        "kfold": [sys.executable, "-m", "digitcnn.kfold", "--help"],
        "summary": [sys.executable, str(SCRIPTS / "gpu_summary.py"), "--help"],
    }
    known = " ".join(
        subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT).stdout
        for command in helps.values()
    )
    # the benchmark's flags, its hidden child flags (--steady-state) included
    known += " ".join(f for action in build_parser()._actions for f in action.option_strings)
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", text))
    flags -= {"--kill-after", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"}
    flags -= {"--upgrade", "--target", "--junitxml", "--timeout"}  # pip's and pytest's
    assert {"--mnist-dir", "--keep-going", "--deterministic", "--cuda-graph"} <= flags
    assert sorted(flag for flag in flags if flag not in known) == []


def write_junit(folder, failing: bool):
    """A real pytest run's JUnit XML: two tests, one skipped, one failing when asked."""
    (folder / "test_tiny.py").write_text(
        "import pytest\n"
        f"def test_a():\n    assert {not failing}\n"
        "def test_b():\n    pytest.skip('no GPU here')\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_tiny.py",
            f"--junitxml={folder / 'junit.xml'}",
        ],
        cwd=folder,
        capture_output=True,
    )


def test_summary_of_a_check(tmp_path, optdigits_dir):
    out = tmp_path / "out"
    out.mkdir()
    flags = ["--data-dir", str(optdigits_dir), "--epochs", "1", "--quiet", "--no-plots",
             "--threads", "1", "--workers", "1", "--deterministic", "--no-verify"]  # fmt: skip
    for name in ("deterministic/1", "deterministic/2", "folds/2", "folds/10"):
        folds = name.split("/")[1] if name.startswith("folds") else "4"
        argv = ["--dataset", "uci", "--folds", folds, *flags, "--out", str(out / name)]
        assert kfold.main(argv) == 0
    uci = {
        "steady_state": {"first": {"wall_s": 0.9}, "steady": {"wall_s": 0.4}},
        "digitcnn_accuracy_median": 0.9810,
        "reference_accuracy_median": 0.9797,
        "ratio_median": 0.62,
        "digitcnn_wall_s_median": 6.2,
        "reference_wall_s_median": 10.0,
    }
    gpu = {"name": "NVIDIA H200", "capability": "9.0", "memory_gib": 139.8, "cuda": "13.0"}
    (out / "bench_uci").mkdir()
    (out / "bench_uci" / "bench.json").write_text(json.dumps({"cases": {"uci": uci}, "gpu": gpu}))
    write_junit(out, failing=True)
    steady = {
        "first": {"wall_s": 2.1, "accuracy": 0.98},
        "steady": {"wall_s": 0.3, "accuracy": 0.98},
    }
    (out / "uci_graph.log").write_text("a warning\n" + json.dumps(steady) + "\n")
    (out / "steps.jsonl").write_text('{"step": "bench_fashion", "rc": 124}\n')

    module = summary_module()
    figures = module.figures(out)
    table = figures["figures"]
    assert table["uci_steady_state_s"] == {
        "what": module.LIMITS["uci_steady_state_s"][0],
        "value": 0.4,
        "limit": 0.5,
        "met": True,
    }
    assert table["uci_accuracy_gap_points"]["value"] == pytest.approx(0.13)
    assert table["uci_accuracy_gap_points"]["met"]
    assert table["uci_process_ratio"]["met"] is False  # 0.62 > 0.5
    assert table["fashion_steady_state_s"] == {**table["fashion_steady_state_s"], "value": None}
    assert table["fashion_steady_state_s"]["met"] is False  # its step timed out
    two, ten = (json.loads((out / f"folds/{k}/metrics.json").read_text()) for k in (2, 10))
    assert table["folds_10_over_2"]["value"] == pytest.approx(ten["wall_s"] / two["wall_s"])
    assert table["deterministic_reruns_identical"]["value"] is True
    assert figures["gpu"] == gpu
    assert figures["other"]["uci_cuda_graph_steady_state_s"] == 0.3
    assert figures["other"]["uci_cuda_graph_first_run_s"] == 2.1

    tests = module.read_tests(out)
    assert (tests["tests"], tests["failures"], tests["skipped"]) == (2, 1, 1)
    assert tests["failed"] == ["test_tiny::test_a"]
    assert list(tests["skip_reasons"].values()) == [1]

    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "gpu_summary.py"), str(out), "--commit", "abc"],
        capture_output=True,
        text=True,
    )
    summary = json.loads(done.stdout)
    assert summary["commit"] == "abc" and summary["all_met"] is False
    assert summary["steps"] == [{"step": "bench_fashion", "rc": 124}]
    assert "s5_uci_pytorch" in summary["experiments"]["not_finished"]

    # a rerun that differs in one fold's figures is not identical
    second = out / "deterministic" / "2" / "metrics.json"
    metrics = json.loads(second.read_text())
    metrics["folds"][0]["correct"] += 1
    second.write_text(json.dumps(metrics))
    assert module.figures(out)["figures"]["deterministic_reruns_identical"]["met"] is False
    shutil.rmtree(out / "deterministic" / "2")
    assert module.figures(out)["figures"]["deterministic_reruns_identical"]["value"] is None
