"""The cases timed as whole processes: digitcnn's commands against their yardsticks.

Each case builds command lines and times them through :mod:`benchmarks.measure`; the
work itself runs in child processes (``python -m digitcnn.kfold``, ``digitcnn.sweep``, or
``python -m benchmarks`` with a hidden flag for the yardsticks written in Python, see
:mod:`benchmarks.inprocess`). Nothing here imports torch, so the measuring process stays
small. Each case takes the parsed command line (``args``) and a scratch folder and returns
its part of ``bench.json``.
"""

from __future__ import annotations

import csv
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.measure import (
    clear_out,
    compare,
    read_digitcnn,
    read_reference,
    run_checked,
    wait_for_report,
)

__all__ = [
    "digitcnn_command",
    "plots_and_no_plots",
    "bench_uci",
    "bench_mnist",
    "steady_state_child",
    "SCALING_MODES",
    "bench_scaling",
    "bench_ray",
    "bench_skorch",
    "STARTUP_COMMANDS",
    "bench_startup",
    "TRACK_VARIANTS",
    "bench_track",
    "bench_checkpoint",
    "bench_report",
    "read_study",
    "bench_tune",
    "CASES",
]


def digitcnn_command(out: Path, flags: Sequence[str], plots: bool = False) -> list[str]:
    """``python -m digitcnn.kfold --quiet`` writing to ``out``, with ``--no-plots`` unless
    ``plots``."""
    return [
        sys.executable,
        "-m",
        "digitcnn.kfold",
        "--quiet",
        *([] if plots else ["--no-plots"]),
        "--out",
        str(out),
        *flags,
    ]


def plots_and_no_plots(out: Path, flags: Sequence[str], terminal: bool) -> dict[str, dict]:
    """``compare``'s two commands of a case: ``flags`` with plots on (into ``out``, the
    headline) and with ``--no-plots`` (into ``out-no-plots``), at a terminal or not."""
    no_plots = out.with_name(f"{out.name}-no-plots")
    return {
        "default": {
            "command": digitcnn_command(out, flags, plots=True),
            "out": out,
            "terminal": terminal,
        },
        "no_plots": {
            "command": digitcnn_command(no_plots, flags),
            "out": no_plots,
            "terminal": terminal,
        },
    }


def bench_command(*flags: str) -> list[str]:
    """``python -m benchmarks`` with ``flags``: a child that prints one JSON line."""
    return [sys.executable, "-m", "benchmarks", *flags]


def bench_uci(args, scratch: Path) -> dict:
    """The default command (plots and report on, at a terminal) and ``--no-plots``, each
    against the reference loop."""
    # S5's recipe by default; --uci-config races another recipe against the same yardstick
    recipe = (
        ["--config", args.uci_config]
        if args.uci_config
        else ["--dataset", "uci", "--scaler", "global"]
    )
    flags = [*recipe, "--data-dir", args.uci_dir, "--device", args.device, *args.extra]
    ours = plots_and_no_plots(scratch / "uci", flags, terminal=True)
    theirs = [sys.executable, args.reference, args.uci_dir, "--device", args.device]
    result = compare(ours, theirs, args.repeats, "uci", read_reference)
    return {**result, "steady_state": steady_state_child(ours["no_plots"]["command"], "uci")}


def bench_mnist(args, scratch: Path) -> dict:
    """S2's model on MNIST-scale data against the plain DataLoader loop
    (:func:`benchmarks.inprocess.plain_loop`), 4 folds x ``--mnist-epochs``."""
    out = scratch / "mnist"
    limit = ["--limit", str(args.mnist_limit)] if args.mnist_limit else []
    command = digitcnn_command(
        out,
        [
            "--dataset",
            "mnist",
            "--data-dir",
            args.mnist_dir,
            "--split",
            "train",
            "--no-verify",
            "--model",
            "s2",
            "--scaler",
            "max",
            "--epochs",
            str(args.mnist_epochs),
            "--device",
            args.device,
            *limit,
            *args.extra,
        ],
    )
    ours = {"no_plots": {"out": out, "terminal": True, "command": command}}
    theirs = bench_command(
        "--plain-loop",
        args.mnist_dir,
        "--device",
        args.device,
        "--mnist-epochs",
        str(args.mnist_epochs),
    ) + (["--mnist-limit", str(args.mnist_limit)] if args.mnist_limit else [])
    result = compare(ours, theirs, args.repeats, "mnist", read_reference)
    return {**result, "steady_state": steady_state_child(command, "mnist")}


def steady_state_child(command: Sequence[str], label: str) -> dict:
    """:func:`benchmarks.inprocess.steady_state` in a fresh process, for the
    digitcnn.kfold ``command``'s flags."""
    run = run_checked(
        bench_command("--steady-state", "--extra", *command[3:]),  # after
        f"{label}: steady-state run",
    )  # "python -m digitcnn.kfold"
    result = json.loads(run["stdout"].strip().splitlines()[-1])
    steady, first = result["steady"], result["first"]
    print(
        f"{label} steady state on {result['device']}: {steady['wall_s']:.2f} s (training "
        f"{steady['train_s']:.2f} s, evaluation {steady['eval_s']:.2f} s, set-up "
        f"{steady['setup_s']:.2f} s); first run in the process {first['wall_s']:.2f} s",
        flush=True,
    )
    return {**result, "process_wall_s": run["wall_s"]}


# The ways digitcnn can train K folds, as kfold flags: one after another in one process, in
# forked single-thread processes (the CPU default), all at once as one fold-batched model (the
# GPU default).
SCALING_MODES = {
    "sequential": ["--no-fold-parallel", "--workers", "1"],
    "fold processes": ["--no-fold-parallel"],
    "fold-parallel": ["--fold-parallel"],
}


def bench_scaling(args, scratch: Path) -> dict:
    """digitcnn's in-process training time against folds, per mode, and against rows (S5
    recipe on UCI, 10 epochs per fold)."""

    def timed(out: Path, flags: list[str]) -> tuple[dict, dict]:
        clear_out(out)  # the modes share folders: a run never overwrites a finished one
        run = run_checked(
            digitcnn_command(
                out,
                [
                    "--dataset",
                    "uci",
                    "--data-dir",
                    args.uci_dir,
                    *flags,
                    "--device",
                    args.device,
                    *args.extra,
                ],
            ),
            f"scaling: {shlex.join(flags)}",
        )
        return run, json.loads((out / "metrics.json").read_text())

    table = {"folds": [], "rows": []}
    for mode, mode_flags in SCALING_MODES.items():
        for folds in (2, 4, 8, 10):
            run, metrics = timed(scratch / f"folds{folds}", ["--folds", str(folds), *mode_flags])
            table["folds"].append(
                {
                    "mode": mode,
                    "folds": folds,
                    "train_s": metrics["wall_s"],
                    "wall_s": run["wall_s"],
                    "accuracy": metrics["accuracy"],
                    "peak_rss_mib": run["peak_rss_mib"],
                }
            )
            print(f"scaling {mode} folds={folds}: {metrics['wall_s']:.2f} s", flush=True)
    for fraction in (0.25, 0.5, 1.0):
        rows = int(5620 * fraction)
        _, metrics = timed(scratch / f"rows{rows}", ["--limit", str(rows)])
        table["rows"].append(
            {"rows": metrics["n"], "train_s": metrics["wall_s"], "accuracy": metrics["accuracy"]}
        )
        print(f"scaling rows={metrics['n']}: {metrics['wall_s']:.2f} s", flush=True)
    return table


def sweep_command(out: Path, flags: Sequence[str]) -> list[str]:
    """``python -m digitcnn.sweep --quiet`` into ``out``, emptied first: a sweep never
    overwrites another, so each repeat starts from an empty ``--out``."""
    command = [sys.executable, "-m", "digitcnn.sweep", "--quiet", "--out", str(out), *flags]
    return ["sh", "-c", f"rm -rf {shlex.quote(str(out))} && exec {shlex.join(command)}"]


def sweep_rows(out: Path) -> list[dict]:
    """The rows of the sweep's ``sweep.csv`` in ``out``, as strings."""
    with (out / "sweep.csv").open(newline="") as table:
        return list(csv.DictReader(table))


def read_sweep(out: Path) -> Callable[[dict], dict]:
    """A reader of the sweep run into ``out``: its cells' mean accuracy and summed wall time."""

    def read(run: dict) -> dict:
        rows = sweep_rows(out)
        return {
            "accuracy": statistics.mean(float(r["accuracy_mean"]) for r in rows),
            "train_s": sum(float(r["wall_s"]) for r in rows),
        }

    return read


def bench_ray(args, scratch: Path) -> dict:
    """S2's optimizer sweep through ``--executor ray`` (a local Ray instance on this machine's
    cores, one task of 1 CPU per fold) against the local executor (cells in turn, folds in
    fold processes); "train_s" of a side is the sum of its cells' wall times."""
    flags = ["--grid-file", args.ray_grid, "--epochs", "1", "--limit", "2000", *args.extra]
    ray_out, local_out = scratch / "ray-sweep", scratch / "local-sweep"
    result = compare(
        {
            "ray": {
                "command": sweep_command(ray_out, [*flags, "--executor", "ray"]),
                "read": read_sweep(ray_out),
            }
        },
        sweep_command(local_out, flags),
        args.repeats,
        "ray",
        read_sweep(local_out),
    )

    def table(out: Path) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in sweep_rows(out)]

    result["sweep_csv_equal"] = table(ray_out) == table(local_out)
    result["comparisons_csv_equal"] = (ray_out / "comparisons.csv").read_text() == (
        local_out / "comparisons.csv"
    ).read_text()
    result["commands"] = {
        "ray": shlex.join(["python", "-m", "digitcnn.sweep", *flags, "--executor", "ray"]),
        "local": shlex.join(["python", "-m", "digitcnn.sweep", *flags]),
    }
    return result


def bench_skorch(args, scratch: Path) -> dict:
    """The two sides of :func:`benchmarks.inprocess.sklearn_side` as whole processes,
    alternating."""

    def side(name: str) -> list[str]:
        return bench_command(
            "--sklearn-side",
            name,
            "--uci-dir",
            args.uci_dir,
            "--device",
            args.device,
            "--skorch-epochs",
            str(args.skorch_epochs),
        )

    result = compare(
        {"digitcnn": {"command": side("digitcnn"), "read": read_reference}},
        side("skorch"),
        args.repeats,
        "skorch",
        read_reference,
    )
    return {**result, "yardstick": "skorch.NeuralNetClassifier", "epochs": args.skorch_epochs}


# What each start-up command is: interpreter start, the imports a user pays for, the help.
STARTUP_COMMANDS = {
    "python": ["-c", "pass"],
    "import digitcnn": ["-c", "import digitcnn"],
    "import torch": ["-c", "import torch"],
    "import digitcnn.kfold": ["-c", "import digitcnn.kfold"],
    "kfold --help": ["-m", "digitcnn.kfold", "--help"],
}

# S5's command three ways, as (plots, at a terminal)
STARTUP_RUNS = {
    "plots, at a terminal": (True, True),
    "--no-plots, at a terminal": (False, True),
    "plots, in a script": (True, False),
}


def bench_startup(args, scratch: Path) -> dict:
    """What a run costs beyond its training, alternating every command in each repeat.

    S5's command (``--dataset uci --folds 4 --scaler global --quiet``) runs three ways: at a
    terminal as a person runs it (the report drawn in the background), the same with
    ``--no-plots``, and in a script (stdout not a terminal: the command waits for its
    report). For each: whole process, the run's own ``wall_s`` (training), the difference
    (start-up, data, writing, and whatever of the report the command waits for) and the time
    until ``report.html`` is in place.
    """
    flags = [
        "--dataset",
        "uci",
        "--folds",
        "4",
        "--scaler",
        "global",
        "--data-dir",
        args.uci_dir,
        "--device",
        args.device,
        *args.extra,
    ]
    commands: dict[str, list[float]] = {name: [] for name in STARTUP_COMMANDS}
    table: dict[str, dict[str, list]] = {
        name: {"wall_s": [], "train_s": [], "overhead_s": [], "report_ready_s": [], "accuracy": []}
        for name in STARTUP_RUNS
    }
    for repeat in range(args.repeats):
        for name, command in STARTUP_COMMANDS.items():
            commands[name].append(
                run_checked([sys.executable, *command], f"startup: {name}")["wall_s"]
            )
        for name, (plots, terminal) in STARTUP_RUNS.items():
            out = scratch / f"startup-{len(table[name]['wall_s'])}-{name.replace(' ', '')}"
            _time_startup_run(
                table[name],
                digitcnn_command(out, flags, plots=plots),
                out,
                terminal,
                f"startup: {name}",
            )
        print(
            f"startup {repeat + 1}/{args.repeats}: "
            + ", ".join(f"{name} {commands[name][-1]:.2f} s" for name in commands)
            + "; "
            + ", ".join(
                f"{name}: {table[name]['wall_s'][-1]:.2f} s, beyond training "
                f"{table[name]['overhead_s'][-1]:.2f} s"
                for name in table
            ),
            flush=True,
        )
    medians = {name: statistics.median(times) for name, times in commands.items()}
    result = {
        "commands": {
            name: {"seconds": commands[name], "median_s": medians[name]} for name in commands
        },
        "kfold_command": " ".join(map(str, digitcnn_command(Path("OUT"), flags, plots=True))),
        "runs": {
            name: {**row, **{f"{key}_median": statistics.median(row[key]) for key in row}}
            for name, row in table.items()
        },
    }
    # The acceptance figures, as differences of medians (the same machine, back to back)
    result["import_kfold_minus_torch_s"] = (
        medians["import digitcnn.kfold"] - medians["import torch"]
    )
    for row in result["runs"].values():
        row["overhead_minus_torch_s"] = row["overhead_s_median"] - medians["import torch"]
    return result


def _time_startup_run(
    row: dict[str, list], command: list[str], out: Path, terminal: bool, what: str
) -> None:
    """Run one S5 command of the startup case and append its figures to ``row``."""
    run = run_checked(command, what, terminal=terminal)
    measured = read_digitcnn(out)
    ready = wait_for_report(out, run["started"])
    row["wall_s"].append(run["wall_s"])
    row["train_s"].append(measured["train_s"])
    row["overhead_s"].append(run["wall_s"] - measured["train_s"])
    row["report_ready_s"].append(run["wall_s"] if ready is None else ready)
    row["accuracy"].append(measured["accuracy"])


# The track case's variants of S5's default command: flags added
TRACK_VARIANTS = {
    "untracked": [],
    "tensorboard": ["--track", "tensorboard"],
    "mlflow": ["--track", "mlflow"],
}


def bench_track(args, scratch: Path) -> dict:
    """What ``--track`` adds to S5's default command (plots on), whole process, at a terminal
    (the report drawn in the background; MLflow's files follow it there) and in a script
    (the report awaited; MLflow's files logged before the command returns), alternating the
    variants in each repeat. MLflow writes to one SQLite store, made before the timed runs
    (a user's first run makes its tables once; each later run finds them)."""
    flags = ["--dataset", "uci", "--folds", "4", "--scaler", "global"]
    flags += ["--data-dir", args.uci_dir, "--device", args.device, *args.extra]
    modes = {"at a terminal": True, "in a script": False}
    seconds: dict[str, dict[str, list[float]]] = {
        mode: {name: [] for name in TRACK_VARIANTS} for mode in modes
    }
    store = f"sqlite:///{scratch / 'track-mlflow.db'}"
    # the experiment's artifacts in the scratch folder, not under the current folder
    artifacts = str(scratch / "mlartifacts")
    make_store = (
        "from mlflow.tracking import MlflowClient; "
        f"MlflowClient({store!r}).create_experiment('digitcnn', artifact_location={artifacts!r})"
    )
    run_checked([sys.executable, "-c", make_store], "track: making the MLflow store")
    for repeat in range(args.repeats):
        for mode, terminal in modes.items():
            for name, extra in TRACK_VARIANTS.items():
                out = scratch / f"track-{repeat}-{terminal}-{name}"
                more = [*extra, "--mlflow-uri", store] if name == "mlflow" else extra
                command = digitcnn_command(out, [*flags, *more], plots=True)
                run = run_checked(command, f"track: {name}, {mode}", terminal=terminal)
                seconds[mode][name].append(run["wall_s"])
                wait_for_report(out, run["started"])  # the next run starts on a quiet machine
                _wait_for_tracking(out)
        print(
            f"track {repeat + 1}/{args.repeats}: "
            + "; ".join(
                f"{mode}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in row.items())
                for mode, row in seconds.items()
            ),
            flush=True,
        )
    result: dict = {"command": " ".join(map(str, digitcnn_command(Path("OUT"), flags, True)))}
    for mode, row in seconds.items():
        medians = {name: statistics.median(values) for name, values in row.items()}
        result[mode] = {
            "seconds": row,
            "median_s": medians,
            "added_fraction": {
                name: medians[name] / medians["untracked"] - 1
                for name in TRACK_VARIANTS
                if name != "untracked"
            },
        }
    return result


def bench_checkpoint(args, scratch: Path) -> dict:
    """What epoch checkpoints cost S5's default command (one per fold per epoch) against
    ``--checkpoint-every 0``: the run's own training seconds (``train_s`` summed over the
    folds, from its metrics) and the whole process, the two alternating in each repeat."""
    flags = ["--dataset", "uci", "--folds", "4", "--scaler", "global"]
    flags += ["--data-dir", args.uci_dir, "--device", args.device, *args.extra]
    variants = {"checkpoints": [], "none": ["--checkpoint-every", "0"]}
    rows: dict[str, dict[str, list[float]]] = {
        name: {"wall_s": [], "train_s": []} for name in variants
    }
    for repeat in range(args.repeats):
        for name, extra in variants.items():
            out = scratch / f"checkpoint-{repeat}-{name}"
            run = run_checked(digitcnn_command(out, [*flags, *extra]), f"checkpoint: {name}")
            rows[name]["wall_s"].append(run["wall_s"])
            rows[name]["train_s"].append(read_digitcnn(out)["train_s"])
        print(
            f"checkpoint {repeat + 1}/{args.repeats}: "
            + ", ".join(
                f"{n} {r['train_s'][-1]:.2f} s training, {r['wall_s'][-1]:.2f} s whole"
                for n, r in rows.items()
            ),
            flush=True,
        )
    medians = {
        name: {key: statistics.median(values) for key, values in row.items()}
        for name, row in rows.items()
    }
    return {
        "command": " ".join(map(str, digitcnn_command(Path("OUT"), flags))),
        "runs": rows,
        "median": medians,
        "added_train_fraction": medians["checkpoints"]["train_s"] / medians["none"]["train_s"] - 1,
        "added_wall_fraction": medians["checkpoints"]["wall_s"] / medians["none"]["wall_s"] - 1,
    }


def bench_report(args, scratch: Path) -> dict:
    """What the report costs a script: the README's command (``--dataset uci --folds 4``,
    plots on) and the same with ``--no-plots``, both with stdout not a terminal (so each
    waits for its whole report), and the reference loop, alternating in each repeat.

    ``plots_cost_s`` is the difference of the two commands' median whole-process times,
    ``plots_cost_pairs_s`` the difference within each repeat."""
    flags = ["--dataset", "uci", "--folds", "4", "--data-dir", args.uci_dir]
    flags += ["--device", args.device, *args.extra]
    ours = plots_and_no_plots(scratch / "report", flags, terminal=False)
    theirs = [sys.executable, args.reference, args.uci_dir, "--device", args.device]
    result = compare(ours, theirs, args.repeats, "report", read_reference)
    result["plots_cost_s"] = result["digitcnn_wall_s_median"] - result["no_plots_wall_s_median"]
    result["plots_cost_pairs_s"] = [
        run["default"]["wall_s"] - run["no_plots"]["wall_s"] for run in result["runs"]
    ]
    return result


def read_study(out: Path) -> dict:
    """The figures of the study in ``out`` from its ``trials.csv``: finished trials, epochs
    trained, the best value, and where the study's time went.

    The study's time is Optuna's span, from the first trial's creation (``ask``) to the last
    one's ``tell``. Training is each trial's seconds less its own Optuna calls (drawing its
    settings, reporting, pruning decisions); everything else in the span is counted as
    Optuna's overhead (sampling, storage writes and reads, the ask lock), so the figure is an
    upper bound."""
    from datetime import datetime

    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    finished = [row for row in rows if row["state"] in ("complete", "pruned")]
    values = [float(row["value"]) for row in rows if row["state"] == "complete"]
    started = min(datetime.fromisoformat(row["started"]) for row in rows)
    ended = max(datetime.fromisoformat(row["finished"]) for row in rows)
    span = (ended - started).total_seconds()
    training = sum(float(row["seconds"]) - float(row["optuna_s"]) for row in rows)
    return {
        "trials": len(finished),
        "pruned": sum(row["state"] == "pruned" for row in rows),
        "epochs_trained": sum(int(row["epochs_trained"]) for row in rows),
        "best_value": max(values),
        "span_s": span,
        "training_s": training,
        "optuna_s": span - training,
        "optuna_fraction": (span - training) / span,
    }


def bench_tune(args, scratch: Path) -> dict:
    """The same UCI study (``--tune-space``, ``--tune-trials`` trials, seed 0, no
    confirmation) with the median pruner and with ``--pruner none``: epochs trained, best
    fold-mean accuracy, and Optuna's share of each study's time (:func:`read_study`), with
    each whole process's wall time and peak memory. One study per pruner: the figures
    compared are counts and values, which do not vary with the machine's speed."""
    flags = ["--space", args.tune_space, "--trials", str(args.tune_trials)]
    flags += ["--confirm-seeds", "0", "--seed", "0", "--data-dir", args.uci_dir]
    flags += ["--device", args.device, "--quiet", *args.extra]
    result: dict = {"command": "python -m digitcnn.tune " + shlex.join(flags)}
    for pruner in ("median", "none"):
        out = scratch / f"tune-{pruner}"
        clear_out(out)
        command = [sys.executable, "-m", "digitcnn.tune", *flags, "--pruner", pruner]
        run = run_checked(
            [*command, "--out", str(out)], f"tune: --pruner {pruner}", sample_memory=True
        )
        study = read_study(out)
        study.update(wall_s=run["wall_s"], peak_tree_pss_mib=run["peak_tree_pss_mib"])
        result[pruner] = study
        print(
            f"tune --pruner {pruner}: {study['trials']} trials, {study['epochs_trained']} "
            f"epochs, best {100 * study['best_value']:.2f}%, {run['wall_s']:.1f} s",
            flush=True,
        )
    result["epochs_ratio"] = result["median"]["epochs_trained"] / result["none"]["epochs_trained"]
    result["best_difference_points"] = 100 * (
        result["median"]["best_value"] - result["none"]["best_value"]
    )
    return result


def _wait_for_tracking(out: Path, timeout: float = 120) -> None:
    """Until MLflow's background logging of the run's files is done (``tracking.log`` gone)."""
    deadline = time.monotonic() + timeout
    while (out / "tracking.log").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{out}: tracking.log still there after {timeout:.0f} s")
        time.sleep(0.05)


# The cases of this module by their --cases name
CASES = {
    "uci": bench_uci,
    "mnist": bench_mnist,
    "scaling": bench_scaling,
    "skorch": bench_skorch,
    "startup": bench_startup,
    "ray": bench_ray,
    "track": bench_track,
    "checkpoint": bench_checkpoint,
    "report": bench_report,
    "tune": bench_tune,
}
