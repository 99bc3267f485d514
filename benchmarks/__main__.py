"""``python -m benchmarks``: digitcnn against the hand-written loop, back to back.

The command line of :mod:`benchmarks` (its cases are described there): runs the chosen
cases, writes ``bench.json`` (and ``scaling.png``) to ``--out`` and prints a summary. The
hidden flags ``--plain-loop``, ``--steady-state`` and ``--sklearn-side`` make it one of the
benchmark's own child processes, which prints its result as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import processes
from benchmarks.plots import plot_scaling
from digitcnn._io import write_json
from digitcnn.errors import exit_cli
from digitcnn.training.runtime import cpu_description, gpu_description, library_versions

__all__ = ["CASE_NAMES", "build_parser", "main"]

CASE_NAMES = (
    "uci",
    "mnist",
    "scaling",
    "augment",
    "choices",
    "skorch",
    "startup",
    "ray",
    "track",
    "checkpoint",
    "report",
    "tune",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--cases", nargs="+", default=["uci", "mnist", "scaling"], choices=CASE_NAMES
    )
    parser.add_argument(
        "--augment-rows",
        type=int,
        default=6000,
        help="training rows per timed epoch in the augment case",
    )
    parser.add_argument("--repeats", type=int, default=3, help="A/B pairs per case")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where both sides of every case train",
    )
    parser.add_argument("--uci-dir", default="../shared/data/optdigits")
    parser.add_argument(
        "--uci-config",
        metavar="FILE.toml",
        default=None,
        help="run this recipe in the uci case instead of S5's (e.g. "
        "experiments/uci_fast.toml); the reference loop stays S5",
    )
    parser.add_argument("--mnist-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--mnist-limit", type=int, default=None, help="use fewer MNIST rows")
    parser.add_argument(
        "--mnist-epochs",
        type=int,
        default=1,
        help="epochs per fold in the mnist case, for both sides",
    )
    parser.add_argument(
        "--ray-grid",
        default="experiments/s2_optimizers.toml",
        help="the sweep of the ray case (run with --epochs 1 --limit 2000)",
    )
    parser.add_argument(
        "--tune-space",
        default="experiments/spaces/uci.toml",
        help="the study of the tune case (run with --pruner median and none)",
    )
    parser.add_argument("--tune-trials", type=int, default=40, help="trials per study")
    parser.add_argument("--reference", default="../shared/bench/reference_loop.py")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="further flags for digitcnn.kfold (last on the line)",
    )
    parser.add_argument(
        "--skorch-epochs", type=int, default=10, help="epochs per fold in the skorch case"
    )
    parser.add_argument("--plain-loop", metavar="MNIST_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--sklearn-side", choices=("digitcnn", "skorch"), help=argparse.SUPPRESS)
    parser.add_argument("--steady-state", action="store_true", help=argparse.SUPPRESS)
    return parser


def in_process():
    """:mod:`benchmarks.inprocess`: the yardsticks written in Python and the cases timed
    in this process."""
    # Imported here, not at the top: it imports torch, which `--help` must not, and the
    # process that times the others must stay small until a case needs it (a child's peak
    # RSS from wait4 counts the copy of this process that it starts as).
    from benchmarks import inprocess

    return inprocess


def child_result(args: argparse.Namespace) -> dict | None:
    """What a child invocation (a hidden flag) computes, or None for a benchmark run."""
    if args.plain_loop:  # the yardstick's own process
        return in_process().plain_loop(
            args.plain_loop, epochs=args.mnist_epochs, device=args.device, limit=args.mnist_limit
        )
    if args.steady_state:  # the same K-fold run twice in one process
        return in_process().steady_state(args.extra)
    if args.sklearn_side:  # one side of the skorch case, in its own process
        return in_process().sklearn_side(
            args.sklearn_side, args.uci_dir, args.device, args.skorch_epochs
        )
    return None


def case_runner(case: str) -> Callable[[argparse.Namespace, Path], dict]:
    """The function that runs ``case``: ``(args, scratch folder) -> its part of bench.json``."""
    return processes.CASES[case] if case in processes.CASES else in_process().CASES[case]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    child = child_result(args)
    if child is not None:
        print(json.dumps(child))
        return 0
    report = {
        "cases": {},
        "cpu_count": os.cpu_count(),
        "device": args.device,
        "repeats": args.repeats,
        "extra_flags": args.extra,
        "uci_config": args.uci_config,
        "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    out = Path(args.out)
    # Nothing heavy is imported before the timed runs: a child's peak RSS (wait4) counts the
    # copy of this process that it starts as, so this process must stay small.
    with tempfile.TemporaryDirectory() as scratch:
        for case in args.cases:
            report["cases"][case] = case_runner(case)(args, Path(scratch))
    report["cpu"] = cpu_description()
    if args.device == "cuda":
        report["gpu"] = gpu_description(args.device)  # the card every CUDA figure depends on
    report["versions"] = library_versions()
    write_json(out / "bench.json", report)
    if "scaling" in report["cases"]:
        plot_scaling(report["cases"]["scaling"], out / "scaling.png")
    for case, summarise in SUMMARIES:
        if case in report["cases"]:
            for line in summarise(case, report["cases"][case], args.repeats):
                print(line)
    print(f"written to {out}")
    return 0


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MiB"


def race_summary(case: str, result: dict, repeats: int) -> list[str]:
    """A race against a yardstick (uci, mnist, skorch): ratios, times, accuracies, memory."""

    def side(name: str) -> str:
        return (
            f"{result[f'{name}_wall_s_median']:.2f} s, "
            f"{100 * result[f'{name}_accuracy_median']:.2f}%, "
            f"peak {_mib(result[f'{name}_peak_tree_pss_mib'])}"
        )

    return [
        f"{case}: digitcnn/reference wall time ratio {result['ratio_median']:.3f} "
        f"(whole processes), {result['train_ratio_median']:.3f} (training and evaluation "
        f"in-process); medians of {repeats}: digitcnn {side('digitcnn')} (PSS, all "
        f"processes); reference {side('reference')}"
    ]


def uci_default_summary(case: str, result: dict, repeats: int) -> list[str]:
    """The uci case's default command (plots on) beside ``--no-plots``."""
    if "no_plots_ratio_median" not in result:
        return []
    return [
        f"uci: default command (plots and report on, at a terminal) "
        f"{result['digitcnn_wall_s_median']:.2f} s, ratio {result['ratio_median']:.3f}, "
        f"report ready after {result['digitcnn_report_ready_s_median'] or 0:.2f} s; "
        f"--no-plots {result['no_plots_wall_s_median']:.2f} s, ratio "
        f"{result['no_plots_ratio_median']:.3f}"
    ]


def startup_summary(case: str, result: dict, repeats: int) -> list[str]:
    """Start-up commands, then each way of running S5's command."""
    lines = [
        "startup: "
        + ", ".join(f"{name} {row['median_s']:.2f} s" for name, row in result["commands"].items())
        + f"; import digitcnn.kfold - import torch "
        f"{result['import_kfold_minus_torch_s']:+.2f} s"
    ]
    for name, row in result["runs"].items():
        lines.append(
            f"startup: S5 {name}: {row['wall_s_median']:.2f} s, training "
            f"{row['train_s_median']:.2f} s, beyond training "
            f"{row['overhead_s_median']:.2f} s (import torch "
            f"{row['overhead_minus_torch_s']:+.2f} s), report ready after "
            f"{row['report_ready_s_median']:.2f} s, accuracy "
            f"{100 * row['accuracy_median']:.2f}% (medians of {repeats})"
        )
    return lines


def ray_summary(case: str, result: dict, repeats: int) -> list[str]:
    """Ray's overhead against the local executor, and whether their tables agree."""
    return [
        f"ray: --executor ray / local wall time ratio {result['ratio_median']:.3f} (whole "
        f"processes, median of {repeats}): ray "
        f"{result['digitcnn_wall_s_median']:.2f} s, local "
        f"{result['reference_wall_s_median']:.2f} s; sweep.csv equal apart from wall_s: "
        f"{result['sweep_csv_equal']}, comparisons.csv equal: "
        f"{result['comparisons_csv_equal']}"
    ]


def choices_summary(case: str, result: dict, repeats: int) -> list[str]:
    """One UCI S5 fold's time under each CPU choice."""
    return [
        f"choices: {name}: {row['median_s']:.2f} s for one UCI S5 fold (median of {repeats})"
        for name, row in result.items()
    ]


def augment_summary(case: str, result: dict, repeats: int) -> list[str]:
    """What S1's augmentation adds to an epoch."""
    return [
        f"augment: S1's augmentation adds {result['extra_percent_median']:.1f}% to an epoch "
        f"of S1's model ({result['rows']} rows, batch 128; median of {repeats})"
    ]


def track_summary(case: str, result: dict, repeats: int) -> list[str]:
    """What --track tensorboard and --track mlflow add to S5's default command."""
    lines = []
    for mode in ("at a terminal", "in a script"):
        row = result[mode]
        added = ", ".join(
            f"{name} {row['median_s'][name]:.2f} s ({100 * fraction:+.1f}%)"
            for name, fraction in row["added_fraction"].items()
        )
        lines.append(
            f"track: S5 {mode}, {repeats} alternating rounds, medians: untracked "
            f"{row['median_s']['untracked']:.2f} s; {added}"
        )
    return lines


def checkpoint_summary(case: str, result: dict, repeats: int) -> list[str]:
    """What epoch checkpoints add to S5's training and whole process."""
    median = result["median"]
    return [
        f"checkpoint: {repeats} alternating rounds, medians: training "
        f"{median['checkpoints']['train_s']:.2f} s against {median['none']['train_s']:.2f} s "
        f"without checkpoints ({100 * result['added_train_fraction']:+.1f}%), whole process "
        f"{median['checkpoints']['wall_s']:.2f} s against {median['none']['wall_s']:.2f} s "
        f"({100 * result['added_wall_fraction']:+.1f}%)"
    ]


# The printed summary, in this order: (case, lines of its summary)
def report_summary(case: str, result: dict, repeats: int) -> list[str]:
    """What the report costs a script, and the default command against the reference."""
    pairs = ", ".join(f"{cost:+.2f}" for cost in result["plots_cost_pairs_s"])
    return [
        f"report: in a script, plots on {result['digitcnn_wall_s_median']:.2f} s, --no-plots "
        f"{result['no_plots_wall_s_median']:.2f} s: the report costs "
        f"{result['plots_cost_s']:+.2f} s (per pair {pairs}); plots on / reference "
        f"{result['ratio_median']:.3f}, --no-plots / reference "
        f"{result['no_plots_ratio_median']:.3f} (whole processes, medians of {repeats})"
    ]


def tune_summary(case: str, result: dict, repeats: int) -> list[str]:
    """The median pruner against none: epochs, best values, Optuna's share of the time."""

    def side(name: str) -> str:
        study = result[name]
        return (
            f"--pruner {name}: {study['trials']} trials ({study['pruned']} pruned), "
            f"{study['epochs_trained']} epochs, best {100 * study['best_value']:.2f}%, "
            f"{study['wall_s']:.1f} s, Optuna {100 * study['optuna_fraction']:.2f}% of "
            f"the study's {study['span_s']:.1f} s, peak {_mib(study['peak_tree_pss_mib'])}"
        )

    return [
        f"tune: median pruner / none epochs trained {result['epochs_ratio']:.3f}, best "
        f"value difference {result['best_difference_points']:+.2f} points",
        f"tune: {side('median')}",
        f"tune: {side('none')}",
    ]


SUMMARIES: tuple[tuple[str, Callable[[str, dict, int], list[str]]], ...] = (
    ("uci", race_summary),
    ("mnist", race_summary),
    ("skorch", race_summary),
    ("uci", uci_default_summary),
    ("startup", startup_summary),
    ("track", track_summary),
    ("checkpoint", checkpoint_summary),
    ("report", report_summary),
    ("ray", ray_summary),
    ("choices", choices_summary),
    ("augment", augment_summary),
    ("tune", tune_summary),
)


if __name__ == "__main__":
    exit_cli(main())
