"""Write ``results/README.md`` from the run folders that ``run_all.py`` filled.

Every number in the README is read from a file under ``results/`` (``metrics.json``,
``sweep.csv``, ``command.json``, ``bench*/bench.json``); nothing is typed in by hand except
the reference pipelines' reported figures, which come from ``experiments/index.toml``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from digitcnn.results import describe_execution

__all__ = ["write_readme"]

# S2's own table (SPEC.md): train % / test % per optimizer and dropout.
S2_REPORTED = {
    ("sgd", "0.3"): ("96.4", "97.33"),
    ("rmsprop", "0.3"): ("99.47", "99.2"),
    ("adam", "0.3"): ("99.54", "99.4"),
    ("adam", "0.2"): ("99.33", "99.2"),
}


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _run_cells(out: Path, name: str, metrics: dict, command: dict | None) -> dict:
    folds = metrics["folds"]
    kfold = len(folds) > 1
    accuracy = (
        f"{_pct(metrics['accuracy_mean'])} ± {_pct(metrics['accuracy_std'])}"
        if kfold
        else _pct(metrics["accuracy"])
    )
    device = describe_execution(metrics.get("device", "cpu"), metrics.get("execution"))
    return {
        "accuracy": accuracy,
        "pooled": _pct(metrics["accuracy"]),
        "train_s": f"{metrics['wall_s']:.1f}",
        "whole_s": f"{command['wall_s']:.1f}" if command else "n/a",
        "device": device,
        "command": command["command"] if command else "(not run)",
        "link": f"[{name}]({out.name}/)",
    }


def _seeded_cells(experiment, out: Path) -> dict | None:
    runs = [
        (_read(out / f"seed{s}" / "metrics.json"), _read(out / f"seed{s}" / "command.json"))
        for s in experiment.seeds
    ]
    if any(m is None for m, _ in runs):
        return None
    totals = [m["accuracy"] for m, _ in runs]
    fold_spread = [m["accuracy_std"] for m, _ in runs]
    first = _run_cells(out / "seed0", experiment.name, runs[0][0], runs[0][1])
    return {
        **first,
        "accuracy": (
            f"{_pct(np.mean(totals))} ± {_pct(np.std(totals, ddof=1))} over seeds "
            f"{', '.join(map(str, experiment.seeds))} ("
            + " / ".join(_pct(t) for t in totals)
            + f"; fold std {_pct(np.mean(fold_spread))})"
        ),
        "pooled": " / ".join(_pct(t) for t in totals),
        "train_s": " / ".join(f"{m['wall_s']:.1f}" for m, _ in runs),
        "whole_s": " / ".join(f"{c['wall_s']:.1f}" if c else "n/a" for _, c in runs),
        "command": runs[0][1]["command"]
        .replace("--seed 0", "--seed {0,1,2}")
        .replace("seed0", "seed{0,1,2}")
        if runs[0][1]
        else "(not run)",
        "link": f"[{experiment.name}]({out.name}/)",
    }


def _sweep_cells(experiment, out: Path) -> dict | None:
    rows = _sweep_rows(out)
    command = _read(out / "command.json")
    if not rows:
        return None
    best = max(rows, key=lambda r: float(r["accuracy_mean"]))
    accuracy = (
        f"best cell {best['cell']}: {_pct(float(best['accuracy_mean']))} ± "
        f"{_pct(float(best['accuracy_std']))} ({len(rows)} cells; all in its sweep.md)"
    )
    device = "cpu"
    metrics = _read(out / "cells" / best["cell"] / "metrics.json")
    if metrics:
        device = _run_cells(out, experiment.name, metrics, None)["device"]
    return {
        "accuracy": accuracy,
        "pooled": _pct(float(best["accuracy_pooled"])),
        "train_s": f"{sum(float(r['wall_s']) for r in rows):.0f} (all cells)",
        "whole_s": f"{command['wall_s']:.0f}" if command else "n/a",
        "device": device,
        "command": command["command"] if command else "(not run)",
        "link": f"[{experiment.name}]({out.name}/sweep.md)",
    }


def _sweep_rows(out: Path) -> list[dict]:
    path = out / "sweep.csv"
    if not path.is_file():
        return []
    with path.open() as stream:
        return list(csv.DictReader(stream))


def _row_of(experiment, results: Path) -> dict | None:
    out = results / experiment.name
    if experiment.command == "sweep":
        return _sweep_cells(experiment, out)
    if experiment.seeds:
        return _seeded_cells(experiment, out)
    metrics = _read(out / "metrics.json")
    if metrics is None:
        return None
    return _run_cells(out, experiment.name, metrics, _read(out / "command.json"))


def main_table(experiments: dict, results: Path) -> list[str]:
    lines = [
        "| experiment | pipeline | data used here | ours: accuracy % (mean ± std over "
        "folds; holdout: one split) | reported | train + eval s | whole command s | "
        "device | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for experiment in experiments.values():
        row = _row_of(experiment, results)
        if row is None:
            lines.append(
                f"| {experiment.name} | {experiment.pipeline} | {experiment.data} | "
                f"not run yet | {experiment.reported} | | | | |"
            )
            continue
        lines.append(
            f"| {row['link']} | {experiment.pipeline} | {experiment.data} | "
            f"{row['accuracy']} | {experiment.reported} | {row['train_s']} | "
            f"{row['whole_s']} | {row['device']} | `{row['command']}` |"
        )
    return lines


def s2_table(results: Path) -> list[str]:
    rows = _sweep_rows(results / "s2_optimizers")
    if not rows:
        return ["(s2_optimizers has not been run.)"]
    lines = [
        "| optimizer | dropout | ours: val. acc % (mean ± std, 4 folds) | ours: train acc % "
        "(last epoch) | S2: train % | S2: test % | best − cell (points) | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        key = (row["optimizer"], row["dropout"])
        reported = S2_REPORTED.get(key, ("—", "—"))
        difference = float(row["difference_best_minus_cell"])
        p = row["p"] if row["p"] else "(best)"
        lines.append(
            f"| {row['optimizer']} | {row['dropout']} | "
            f"{_pct(float(row['accuracy_mean']))} ± {_pct(float(row['accuracy_std']))} | "
            f"{_pct(float(row['train_accuracy']))} | {reported[0]} | {reported[1]} | "
            f"{100 * difference:+.2f} | {_p(p)} |"
        )
    return lines


def _p(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.3g}" if value >= 1e-4 else f"{value:.1e}"


def best_against_svm(experiments: dict, results: Path) -> list[str]:
    from digitcnn.comparison import compare_runs, format_comparison

    best = experiments.get("uci_best")
    seeds = [results / "uci_best" / f"seed{s}" for s in (best.seeds if best else ())]
    svm = results / "uci_svm"
    if not seeds or not all((p / "metrics.json").is_file() for p in [*seeds, svm]):
        return ["(uci_best and uci_svm have not both been run.)"]
    comparison = compare_runs(seeds, [svm])
    for side in ("first", "second"):  # named from the repository root, wherever it lies
        comparison[side]["runs"] = [
            str(Path(run).relative_to(results.parent)) for run in comparison[side]["runs"]
        ]
    (results / "uci_best" / "against_svm.json").write_text(json.dumps(comparison, indent=2) + "\n")
    lines = [
        "First side: the best recipe, per-fold accuracy averaged over its seeds; second "
        "side: SVC(C=10) on the same folds.",
        "",
        format_comparison(comparison),
        "",
        "Command: `python -m digitcnn.compare "
        + " ".join(str(p.relative_to(results.parent)) for p in seeds)
        + f" --against {svm.relative_to(results.parent)}`",
    ]
    writers = [
        (name, _read(results / name / "metrics.json"))
        for name in ("uci_best_writers", "uci_svm_writers")
    ]
    if all(m for _, m in writers):
        lines += [
            "",
            "Writer-disjoint split (train on `optdigits.tra`, test on `optdigits.tes`, "
            "written by different people):",
            "",
            "| run | accuracy % | correct / rows |",
            "|---|---|---|",
        ]
        lines += [
            f"| {name} | {_pct(m['accuracy'])} | {m['correct']} / {m['n']} |" for name, m in writers
        ]
    return lines


# The UCI studies, each with its command (their folders hold tune.json, trials.csv,
# best.toml, confirm.json and the confirmation's runs)
STUDIES = (
    (
        "tune_uci_best",
        "python -m digitcnn.tune --space experiments/spaces/uci_best.toml --trials 40 "
        "--out results/tune_uci_best",
    ),
    (
        "tune_uci_long",
        "python -m digitcnn.tune --space experiments/spaces/uci_long.toml --trials 16 "
        "--pruner none --out results/tune_uci_long",
    ),
)
SVM_FRESH = "uci_svm_fresh/rs{}"  # SVC(C=10) on the fresh folds of a confirmation seed


def tuning_section(results: Path) -> list[str]:
    """Each UCI study of :data:`STUDIES` that has been run (:func:`study_lines`)."""
    lines = []
    for name, command in STUDIES:
        lines += study_lines(results, name, command)
    return lines or ["(no tuning study has been run.)", ""]


def study_lines(results: Path, name: str, command: str) -> list[str]:
    """A study: its budget, its winner, the winner and the base recipe on fresh seeds (new
    folds), the winner against SVC(C=10) on those same folds (corrected repeated k-fold
    t-test), and the winner on the writer-disjoint split (chosen without it)."""
    from digitcnn.comparison import compare_repeated, format_repeated

    study = results / name
    confirm = _read(study / "confirm.json")
    if confirm is None or not (study / "trials.csv").is_file():
        return []
    with open(study / "trials.csv", newline="") as handle:
        trials = list(csv.DictReader(handle))
    pruned = sum(row["state"] == "pruned" for row in trials)
    minutes = sum(float(row["seconds"]) for row in trials) / 60
    root = results.parent
    lines = [
        f"**{name}** (`{command}`): {len(trials)} trials, {pruned} pruned; {minutes:.1f} "
        f"minutes of trials on a 2-core CPU, both cores busy (the confirmation's "
        f"{2 * len(confirm['seeds'])} runs come on top). Best trial {confirm['best_trial']}: "
        f"fold mean {_pct(confirm['best_tuning_value'])}% on S5's folds "
        f"(`{name}/best.toml`). On {len(confirm['seeds'])} fresh seeds with new folds "
        f"(random states {', '.join(map(str, confirm['random_states']))}): best "
        f"**{_pct(confirm['best_fresh_mean'])}%** against the base recipe "
        f"{_pct(confirm['base_fresh_mean'])}% (p = {confirm['comparison']['p']:.3f}); "
        f"selection bias {100 * confirm['selection_bias']:+.2f} points.",
        "",
    ]
    best_runs = [study / run for run in confirm["runs"]["best"]]
    svm_runs = [results / SVM_FRESH.format(rs) for rs in confirm["random_states"]]
    if all((run / "metrics.json").is_file() for run in [*best_runs, *svm_runs]):
        comparison = compare_repeated(list(zip(best_runs, svm_runs)))
        for pair in comparison["pairs"]:  # named from the repository root
            for side in ("first", "second"):
                pair[side]["runs"] = [str(Path(r).relative_to(root)) for r in pair[side]["runs"]]
        (study / "against_svm.json").write_text(json.dumps(comparison, indent=2) + "\n")
        lines += [
            "The best trial's recipe against SVC(C=10) on the same fresh folds (first: "
            "the recipe; second: the SVM):",
            "",
            format_repeated(comparison),
            "",
            "Commands: `python -m digitcnn.baselines --config experiments/uci_folds.toml "
            f"--estimator svm --random-state R --out results/{SVM_FRESH.format('R')}` for R in "
            f"{', '.join(map(str, confirm['random_states']))}, then `python -m digitcnn.compare "
            + " ".join(str(r.relative_to(root)) for r in best_runs)
            + " --against "
            + " ".join(str(r.relative_to(root)) for r in svm_runs)
            + " --repeated`.",
            "",
        ]
    writers = sorted((results / f"{name}_writers").glob("seed*/metrics.json"))
    if writers:
        values = [json.loads(path.read_text())["accuracy"] for path in writers]
        lines += [
            "The best trial's recipe on the writer-disjoint split (chosen on S5's folds, "
            "without `optdigits.tes`): "
            + " / ".join(f"{_pct(v)}%" for v in values)
            + f" over seeds {', '.join(p.parent.name[4:] for p in writers)}, mean "
            f"**{_pct(float(np.mean(values)))}%** (`python -m digitcnn.kfold --config "
            f"results/{name}/best.toml --cv writers --seed S --out "
            f"results/{name}_writers/seedS`).",
            "",
        ]
    return lines


def speed_section(results: Path) -> list[str]:
    lines = []
    # `--cases uci --out results/bench_uci` refreshes the UCI race alone; it then stands for
    # the one in bench/
    uci_folder = "bench_uci" if _read(results / "bench_uci" / "bench.json") else "bench"
    for folder, name, what in (
        (uci_folder, "uci", "UCI, S5 recipe, against `reference_loop.py` (its own work)"),
        (
            "bench",
            "mnist",
            "MNIST scale: Fashion-MNIST's 60,000 training images, S2's "
            "model, 4 folds x 1 epoch, against the plain DataLoader loop "
            "`benchmarks.inprocess.plain_loop`",
        ),
        ("bench_fast", "uci", "the fast UCI recipe against the S5 reference loop"),
        (
            "bench_skorch",
            "skorch",
            "scikit-learn's `cross_val_score` of `DigitClassifier` "
            "against skorch's `NeuralNetClassifier` (UCI, S5's "
            "model, the same 4 shuffled folds, 10 epochs, batch "
            "64, Adam 1e-3, StepLR 0.7, CPU)",
        ),
    ):
        report = _read(results / folder / "bench.json")
        if not report or name not in report.get("cases", {}):
            continue
        case = report["cases"][name]
        # since the startup case, uci measures the default command (plots and report on, at a
        # terminal) beside --no-plots; older files measured --no-plots alone
        default = (
            "no_plots_ratio_median" in case
            and f"the default command (plots and report on, at a terminal; report.html "
            f"ready after {case['digitcnn_report_ready_s_median']:.2f} s): "
        )
        lines += [
            f"**{what}** (`{folder}/bench.json`, {report['repeats']} alternating pairs, "
            f"medians{_cpu(report)}; command in the file): {default or ''}whole process "
            f"{case['digitcnn_wall_s_median']:.2f} s against "
            f"{case['reference_wall_s_median']:.2f} s, ratio "
            f"**{case['ratio_median']:.3f}**"
            + (
                f"; with `--no-plots` {case['no_plots_wall_s_median']:.2f} s, ratio "
                f"**{case['no_plots_ratio_median']:.3f}**"
                if default
                else ""
            )
            + "; training and evaluation in-process "
            f"{case['digitcnn_train_s_median']:.2f} s against "
            f"{case['reference_train_s_median']:.2f} s, ratio "
            f"**{case['train_ratio_median']:.3f}**; accuracy "
            f"{_pct(case['digitcnn_accuracy_median'])}% against "
            f"{_pct(case['reference_accuracy_median'])}%; peak memory (PSS, all "
            f"processes) {case['digitcnn_peak_tree_pss_mib']:.0f} MiB against "
            f"{case['reference_peak_tree_pss_mib']:.0f} MiB.",
            "",
        ]
    lines += ray_lines(results)
    lines += startup_lines(results)
    lines += report_lines(results)
    lines += track_lines(results)
    lines += checkpoint_lines(results)
    lines += tune_lines(results)
    scaling = (_read(results / "bench" / "bench.json") or {}).get("cases", {}).get("scaling")
    if scaling:
        modes = list(dict.fromkeys(r["mode"] for r in scaling["folds"]))
        lines += [
            "**Time against folds** (`bench/scaling.png`; S5 recipe on UCI, 10 epochs, "
            "training and evaluation in-process, seconds):",
            "",
            "| folds | " + " | ".join(modes) + " |",
            "|---|" + "---|" * len(modes),
        ]
        for folds in dict.fromkeys(r["folds"] for r in scaling["folds"]):
            times = {r["mode"]: r["train_s"] for r in scaling["folds"] if r["folds"] == folds}
            lines.append(f"| {folds} | " + " | ".join(f"{times[m]:.2f}" for m in modes) + " |")
        lines += [
            "",
            "Time against rows (4 folds): "
            + ", ".join(f"{r['rows']:,} rows {r['train_s']:.2f} s" for r in scaling["rows"])
            + ".",
            "",
        ]
    choices = (_read(results / "bench_choices" / "bench.json") or {}).get("cases", {})
    if "choices" in choices:
        lines += [
            "**Each CPU choice** (`bench_choices/bench.json`; one UCI S5 fold, 10 epochs, "
            "in-process, median seconds; digitcnn runs two such folds at once, one per "
            "core): "
            + "; ".join(
                f"{name} {result['median_s']:.2f} s" for name, result in choices["choices"].items()
            )
            + ".",
            "",
        ]
    return lines or ["(no benchmark in results/ yet: `python -m benchmarks`.)"]


def _cpu(report: dict) -> str:
    """ ", on CPU_MODEL (AMX|no AMX)" for a bench.json that records its CPU (older ones do
    not): ratios compare within one machine only."""
    cpu = report.get("cpu")
    if not cpu:
        return ""
    return f", on {cpu['model']} ({'AMX' if cpu['amx'] else 'no AMX'})"


def ray_lines(results: Path) -> list[str]:
    """The ray case of ``python -m benchmarks``: ``--executor ray`` against the local
    executor on S2's optimizer sweep."""
    report = _read(results / "bench_ray" / "bench.json")
    case = (report or {}).get("cases", {}).get("ray")
    if not case:
        return []
    equal = {True: "equal", False: "**not equal**"}
    return [
        f"**Ray against the local executor** (`bench_ray/bench.json`, {report['repeats']} "
        f"alternating pairs, medians{_cpu(report)}): `{case['commands']['ray']}` "
        f"{case['digitcnn_wall_s_median']:.2f} s against the same without `--executor ray` "
        f"{case['reference_wall_s_median']:.2f} s, ratio **{case['ratio_median']:.3f}**; "
        f"sweep.csv {equal[case['sweep_csv_equal']]} apart from wall_s, comparisons.csv "
        f"{equal[case['comparisons_csv_equal']]}; peak memory (PSS, all processes) "
        f"{case['digitcnn_peak_tree_pss_mib']:.0f} MiB against "
        f"{case['reference_peak_tree_pss_mib']:.0f} MiB.",
        "",
    ]


def startup_lines(results: Path) -> list[str]:
    """The startup case of ``python -m benchmarks`` (in ``bench/`` or ``bench_startup/``):
    what a run costs beyond its training."""
    for folder in ("bench_startup", "bench"):
        report = _read(results / folder / "bench.json")
        startup = (report or {}).get("cases", {}).get("startup")
        if startup:
            break
    else:
        return []
    commands = startup["commands"]
    lines = [
        f"**Start-up** (`{folder}/bench.json`, {report['repeats']} rounds, "
        f"medians{_cpu(report)}, whole processes): "
        + ", ".join(f"`{name}` {row['median_s']:.2f} s" for name, row in commands.items())
        + f"; `import digitcnn.kfold` minus `import torch`: "
        f"{startup['import_kfold_minus_torch_s']:+.2f} s.",
        "",
        "| S5 command (`" + startup["kfold_command"].split(" -m ", 1)[-1] + "`) | whole "
        "process s | training (`wall_s`) s | beyond training s | beyond training minus "
        "`import torch` s | report.html ready after s | accuracy % |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in startup["runs"].items():
        lines.append(
            f"| {name} | {row['wall_s_median']:.2f} | {row['train_s_median']:.2f} | "
            f"{row['overhead_s_median']:.2f} | {row['overhead_minus_torch_s']:+.2f} | "
            f"{row['report_ready_s_median']:.2f} | {_pct(row['accuracy_median'])} |"
        )
    lines += [
        "",
        "At a terminal the command returns once `metrics.json` is written and draws "
        "`evaluation.json`, the plots and `report.html` in a background process; in a "
        "script (stdout not a terminal) it waits for them.",
        "",
    ]
    return lines


def track_lines(results: Path) -> list[str]:
    """The track case of ``python -m benchmarks``: what --track adds to S5's command."""
    report = _read(results / "bench_track" / "bench.json")
    case = (report or {}).get("cases", {}).get("track")
    if not case:
        return []
    lines = [
        f"**Tracking** (`bench_track/bench.json`, {report['repeats']} alternating rounds, "
        f"medians{_cpu(report)}, whole processes; `{case['command'].split(' -m ', 1)[-1]}` "
        "plus `--track tensorboard` or `--track mlflow` on one SQLite store made before the "
        "timed runs):",
        "",
        "| S5 command | untracked s | --track tensorboard s | added | --track mlflow s | added |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("at a terminal", "in a script"):
        row = case[mode]
        medians, added = row["median_s"], row["added_fraction"]
        lines.append(
            f"| {mode} | {medians['untracked']:.2f} | {medians['tensorboard']:.2f} | "
            f"{100 * added['tensorboard']:+.1f}% | {medians['mlflow']:.2f} | "
            f"{100 * added['mlflow']:+.1f}% |"
        )
    fresh = _read(results / "bench_track" / "bench_fresh_store.json")
    first = (fresh or {}).get("cases", {}).get("track")
    if first:
        lines += [
            "",
            "A run that makes a new SQLite store pays for its tables once more (measured "
            "with a fresh store per run, `bench_track/bench_fresh_store.json`): MLflow "
            + ", ".join(
                f"{100 * first[mode]['added_fraction']['mlflow']:+.1f}% {mode}"
                for mode in ("at a terminal", "in a script")
            )
            + ".",
        ]
    return [*lines, ""]


def report_lines(results: Path) -> list[str]:
    """The report case of ``python -m benchmarks``: what the report costs a script."""
    report = _read(results / "bench_report" / "bench.json")
    case = (report or {}).get("cases", {}).get("report")
    if not case:
        return []
    pairs = ", ".join(f"{cost:+.2f}" for cost in case["plots_cost_pairs_s"])
    command = case["commands"]["default"].split(" -m ", 1)[-1]
    command = re.sub(r"--out \S+", "--out OUT", command)  # the bench's scratch folder
    return [
        f"**The report in a script** (`bench_report/bench.json`, {report['repeats']} "
        f"alternating rounds, medians{_cpu(report)}, whole processes; `{command}`, stdout not a "
        "terminal, so the command waits for its whole report): plots on "
        f"{case['digitcnn_wall_s_median']:.2f} s, `--no-plots` "
        f"{case['no_plots_wall_s_median']:.2f} s: the seven SVG figures and `report.html` cost "
        f"**{case['plots_cost_s']:+.2f} s** (per round {pairs}; matplotlib's PNGs cost 3 to 5 "
        "s before). Against the reference loop's whole process "
        f"({case['reference_wall_s_median']:.2f} s): plots on **{case['ratio_median']:.3f}**, "
        f"`--no-plots` {case['no_plots_ratio_median']:.3f}; accuracy "
        f"{_pct(case['digitcnn_accuracy_median'])}% against "
        f"{_pct(case['reference_accuracy_median'])}%.",
        "",
    ]


def checkpoint_lines(results: Path) -> list[str]:
    """The checkpoint case of ``python -m benchmarks``: what epoch checkpoints cost."""
    lines = []
    for folder, what in (
        ("bench_checkpoint", "UCI, S5's default command"),
        ("bench_checkpoint_mnist10k", "MNIST-10k, the best recipe (3 epochs)"),
    ):
        report = _read(results / folder / "bench.json")
        case = (report or {}).get("cases", {}).get("checkpoint")
        if not case:
            continue
        median = case["median"]
        lines.append(
            f"- {what} (`{folder}/bench.json`, {report['repeats']} alternating pairs, "
            f"medians{_cpu(report)}): training {median['checkpoints']['train_s']:.2f} s with a "
            f"checkpoint per fold per epoch against {median['none']['train_s']:.2f} s with "
            f"`--checkpoint-every 0` (**{100 * case['added_train_fraction']:+.1f}%**); whole "
            f"process {median['checkpoints']['wall_s']:.2f} s against "
            f"{median['none']['wall_s']:.2f} s ({100 * case['added_wall_fraction']:+.1f}%)."
        )
    if not lines:
        return []
    return [
        "**Epoch checkpoints** (what `--checkpoint-every 1`, the default, costs):",
        "",
        *lines,
        "",
    ]


def tune_lines(results: Path) -> list[str]:
    """The tune case of ``python -m benchmarks``: the median pruner against none."""
    report = _read(results / "bench_tune" / "bench.json")
    case = (report or {}).get("cases", {}).get("tune")
    if not case:
        return []

    def side(name: str) -> str:
        study = case[name]
        return (
            f"| `--pruner {name}` | {study['trials']} ({study['pruned']} pruned) | "
            f"{study['epochs_trained']} | {_pct(study['best_value'])} | {study['wall_s']:.1f} | "
            f"{study['span_s']:.1f} | {study['optuna_s']:.2f} "
            f"({100 * study['optuna_fraction']:.2f}%) | {study['peak_tree_pss_mib']:.0f} |"
        )

    return [
        f"**Tuning: the median pruner against none** (`bench_tune/bench.json`, one study "
        f"each{_cpu(report)}; `{case['command']}`): the median pruner trained "
        f"**{case['epochs_ratio']:.3f}** of the epochs, and its best fold-mean accuracy "
        f"differs by **{case['best_difference_points']:+.2f}** points. Optuna's share is "
        "the study's span (first trial created to last trial told) less the trials' "
        "training: sampling, storage, reporting and pruning decisions.",
        "",
        "| study | trials | epochs trained (fold epochs) | best fold mean % | whole process s "
        "| study span s | Optuna s (share) | peak PSS MiB |",
        "|---|---|---|---|---|---|---|---|",
        side("median"),
        side("none"),
        "",
    ]


NOTES = """\
- **MNIST:** the shared data holds only MNIST's 10,000 test images, not the 60,000 training
  images. Every MNIST row is therefore 4-fold cross-validation (7,500 training rows per fold)
  or a holdout split of those 10,000 images, while S1-S4 trained on 42,000-60,000 images and
  were scored on other test sets. Our MNIST figures are lower bounds on what the same recipes
  reach with the full training set, and not the same measurement as the reported ones.
- **Kaggle (S1, S4):** Kaggle's `train.csv`/`test.csv` are not in the shared data; the
  Kaggle-format reader is tested on files built from the MNIST images.
- **S5's leak:** S5 fitted its StandardScaler on all 5,620 rows before splitting. The S5 row
  keeps that leak (`--scaler global`) to reproduce the number; the leak-free row fits it per
  training fold, as every other digitcnn run does.
- **Precision:** on this machine's CPU (with AMX) digitcnn trains in bf16 autocast by default
  (`--precision auto`); weights, optimizer state, loss and evaluation stay float32. Each run's
  `metrics.json` records the precision and the fold processes it used under `execution`.
- **Timings** come from a shared 2-core machine; the ratios in the speed section are the
  figures to compare, since they were measured back to back.
"""


def write_readme(experiments: dict, results: Path) -> Path:
    text = "\n".join(
        [
            "# Results",
            "",
            "Generated by `python experiments/run_all.py` (the experiments are listed in "
            "`experiments/index.toml`; `--readme` only rewrites this page). Every figure below is "
            "read from the run folders beside this file; each row's command reproduces it from "
            "the repository root with `../shared/data` beside it. Folders hold `metrics.json`, "
            "`evaluation.json`, `folds.csv`, `config.json`, `command.json`, the key plots and a "
            "self-contained `report.html`; out-of-fold predictions and per-fold files are "
            "regenerated by the commands, not committed.",
            "",
            "## Every pipeline, ours beside the reported number",
            "",
            *main_table(experiments, results),
            "",
            "## S2's optimizer x dropout table",
            "",
            "S2 trained on MNIST's 60,000 training images and tested on its 10,000 test images; "
            "ours is 4-fold cross-validation on those 10,000 test images, every cell on the same "
            "folds, 15 epochs, batch 64, Keras' default learning rates, pixels / 255. p is the "
            "corrected resampled t-test (Nadeau and Bengio, 2003) of the best cell against each "
            "other cell.",
            "",
            *s2_table(results),
            "",
            "## The best UCI recipe against the SVM",
            "",
            *best_against_svm(experiments, results),
            "",
            "## Tuning",
            "",
            *tuning_section(results),
            "## Speed",
            "",
            *speed_section(results),
            "## Where our data differs from the pipelines'",
            "",
            NOTES,
        ]
    )
    path = results / "README.md"
    path.write_text(text)
    return path
