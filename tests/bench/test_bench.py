"""The benchmark's own machinery on tiny work (its figures come from full runs, not tests)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import real_data

from benchmarks import inprocess, measure, processes
from benchmarks.__main__ import build_parser, main


def test_run_with_rusage_reports_the_childs_own_peak():
    # Measured from a small parent, as benchmarks does: a child's peak RSS counts the copy
    # of its parent it starts as, and this pytest process holds torch.
    probe = (
        "import json, sys\n"
        "from benchmarks.measure import run_with_rusage\n"
        "small = run_with_rusage([sys.executable, '-c', \"print('ok')\"])\n"
        "big = run_with_rusage([sys.executable, '-c', 'x = bytearray(200 * 2**20)'])\n"
        "print(json.dumps([small['peak_rss_mib'], big['peak_rss_mib'], small['stdout']]))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    small, big, printed = json.loads(completed.stdout)
    assert printed.strip() == "ok"
    assert big > small + 150


def test_augment_case_times_both_settings(tmp_path):
    mnist = real_data("mnist")
    assert (
        main(
            [
                "--cases",
                "augment",
                "--repeats",
                "1",
                "--augment-rows",
                "256",
                "--mnist-dir",
                str(mnist),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "bench.json").read_text())["cases"]["augment"]
    assert len(report["plain_s"]) == len(report["augmented_s"]) == 1
    assert report["ratio_median"] == pytest.approx(report["augmented_s"][0] / report["plain_s"][0])


def test_plain_loop_yardstick_runs(tmp_path):
    mnist = real_data("mnist")
    result = inprocess.plain_loop(str(mnist), folds=2, epochs=1, limit=400, split="test")
    assert result["n"] == 400 and 0 <= result["accuracy"] <= 100


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc")
def test_tree_memory_counts_forked_workers_that_wait4_misses():
    # A parent of ~20 MiB forks two workers that each touch 150 MiB of their own: the largest
    # single process stays near 170 MiB, while the tree holds over 300 MiB.
    workers = (
        "import os, time\n"
        "pids = []\n"
        "for _ in range(2):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        x = bytearray(150 * 2**20); time.sleep(1.5); os._exit(0)\n"
        "    pids.append(pid)\n"
        "for pid in pids:\n"
        "    os.waitpid(pid, 0)\n"
    )
    probe = (
        "import json, sys\n"
        "from benchmarks.measure import run_with_rusage\n"
        f"run = run_with_rusage([sys.executable, '-c', {workers!r}], sample_memory=True)\n"
        "print(json.dumps([run['peak_rss_mib'], run['peak_tree_pss_mib']]))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    largest_process, tree = json.loads(completed.stdout)
    assert largest_process < 250
    assert tree > 300


@pytest.mark.slow  # five processes that each import torch
def test_uci_case_reports_the_steady_state_beside_the_whole_process(optdigits_dir, tmp_path):
    """``--device cpu`` on tiny work: both sides run, and digitcnn's side runs twice more in one
    process, whose second run (after the warm-up) is reported with its time split."""
    reference = tmp_path / "reference_loop.py"
    reference.write_text(  # a stand-in yardstick that prints what the real one prints
        "import json\nprint(json.dumps({'accuracy': 50.0, 'wall_s': 0.5, 'device': 'cpu'}))\n"
    )
    assert (
        main(
            [
                "--cases",
                "uci",
                "--device",
                "cpu",
                "--repeats",
                "1",
                "--uci-dir",
                str(optdigits_dir),
                "--reference",
                str(reference),
                "--out",
                str(tmp_path / "out"),
                "--extra",
                "--epochs",
                "1",
                "--no-verify",
                "--workers",
                "1",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    case = json.loads((tmp_path / "out" / "bench.json").read_text())["cases"]["uci"]
    steady = case["steady_state"]
    assert steady["device"] == "cpu" and steady["process_wall_s"] > steady["steady"]["wall_s"]
    for run in (steady["first"], steady["steady"]):
        assert set(run) == {"accuracy", "setup_s", "train_s", "eval_s", "wall_s"}
        assert run["train_s"] > 0 and run["setup_s"] + run["train_s"] + run[
            "eval_s"
        ] == pytest.approx(run["wall_s"])
    assert steady["first"]["accuracy"] == steady["steady"]["accuracy"]  # the same run, twice


def test_mnist_epochs_reach_both_sides():
    args = build_parser().parse_args(["--mnist-epochs", "3"])
    assert args.mnist_epochs == 3 and args.device == "cpu"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--device", "tpu"])


@pytest.mark.slow
def test_startup_case_measures_help_imports_and_the_three_commands(tmp_path, optdigits_dir):
    """Tiny work (1 epoch): every figure is there and consistent; the timings come from full
    runs, not from this test."""
    assert (
        main(
            [
                "--cases",
                "startup",
                "--repeats",
                "1",
                "--uci-dir",
                str(optdigits_dir),
                "--out",
                str(tmp_path),
                "--extra",
                "--epochs",
                "1",
                "--threads",
                "1",
                "--no-verify",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "bench.json").read_text())["cases"]["startup"]
    assert set(report["commands"]) == set(processes.STARTUP_COMMANDS)
    assert report["import_kfold_minus_torch_s"] == pytest.approx(
        report["commands"]["import digitcnn.kfold"]["median_s"]
        - report["commands"]["import torch"]["median_s"]
    )
    runs = report["runs"]
    assert set(runs) == {"plots, at a terminal", "--no-plots, at a terminal", "plots, in a script"}
    for row in runs.values():
        assert row["overhead_s"][0] == pytest.approx(row["wall_s"][0] - row["train_s"][0])
        assert row["report_ready_s"][0] >= row["wall_s"][0] * 0.999
        assert 0 < row["accuracy"][0] <= 1
    # in a script the command waited for its report; at a terminal it came later
    script = runs["plots, in a script"]
    assert script["report_ready_s"][0] == script["wall_s"][0]


def test_a_terminal_run_returns_before_its_report(tmp_path, optdigits_dir):
    out = tmp_path / "run"
    command = processes.digitcnn_command(
        out,
        [
            "--data-dir",
            str(optdigits_dir),
            "--epochs",
            "1",
            "--folds",
            "2",
            "--threads",
            "1",
            "--no-verify",
        ],
        plots=True,
    )
    run = measure.run_with_rusage(command, terminal=True)
    assert run["returncode"] == 0, run["stderr"]
    assert (out / "metrics.json").is_file()
    ready = measure.wait_for_report(out, run["started"])
    assert ready is not None and ready > run["wall_s"]  # drawn by the background process
    assert (out / "report.html").is_file() and not (out / "report.log").exists()


@pytest.mark.slow  # a local Ray instance and four sweeps, each importing torch
def test_ray_case_races_both_executors_and_compares_their_tables(tmp_path, optdigits_dir):
    """Tiny work: the ray case runs both sides, every run from an empty folder, and records
    that their sweep.csv and comparisons.csv agree."""
    pytest.importorskip("ray")
    grid = tmp_path / "grid.toml"
    grid.write_text(
        f'dataset = "uci"\ndata-dir = "{optdigits_dir}"\nmodel = "s5"\n'
        "folds = 2\nverify = false\n[grid]\nlr = [0.001, 0.002]\n"
    )
    assert (
        main(
            [
                "--cases",
                "ray",
                "--repeats",
                "1",
                "--ray-grid",
                str(grid),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    case = json.loads((tmp_path / "out" / "bench.json").read_text())["cases"]["ray"]
    assert case["sweep_csv_equal"] and case["comparisons_csv_equal"]
    assert case["ratio_median"] > 0 and case["digitcnn_peak_tree_pss_mib"] > 0
    assert case["digitcnn_accuracy_median"] == case["reference_accuracy_median"]


@pytest.mark.slow  # three processes that import torch, and the memory runs
def test_report_case_times_the_report_in_a_script(optdigits_dir, tmp_path):
    """Plots on and --no-plots both wait for their report (not a terminal); the cost is the
    difference of the two, and each folder holds what its flags ask for."""
    reference = tmp_path / "reference_loop.py"
    reference.write_text(
        "import json\nprint(json.dumps({'accuracy': 50.0, 'wall_s': 0.5, 'device': 'cpu'}))\n"
    )
    flags = ["--cases", "report", "--repeats", "1", "--uci-dir", str(optdigits_dir)]
    flags += ["--reference", str(reference), "--out", str(tmp_path / "out"), "--extra"]
    assert main([*flags, "--epochs", "1", "--no-verify", "--threads", "1"]) == 0
    case = json.loads((tmp_path / "out" / "bench.json").read_text())["cases"]["report"]
    (pair,) = case["runs"]
    assert pair["default"]["report_ready_s"] is None  # drawn before the command returned
    assert case["plots_cost_pairs_s"] == [pair["default"]["wall_s"] - pair["no_plots"]["wall_s"]]
    assert case["plots_cost_s"] == pytest.approx(case["plots_cost_pairs_s"][0])
    assert "--no-plots" in case["commands"]["no_plots"]
    assert "--no-plots" not in case["commands"]["default"]
    assert "--folds 4" in case["commands"]["default"]
