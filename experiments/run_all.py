#!/usr/bin/env python3
"""Run the experiments of ``experiments/index.toml`` into ``results/`` and rewrite its README.

    python experiments/run_all.py                    # every experiment, then the README
    python experiments/run_all.py uci_best uci_svm   # some of them
    python experiments/run_all.py --list             # names, commands and whether they ran
    python experiments/run_all.py --readme           # only rewrite results/README.md
    python experiments/run_all.py --epochs 1 --results /tmp/check --no-readme   # a smoke run

Run from the repository root, with ``../shared/data`` beside it (the configs' data folders are
relative to the root). Each experiment is one digitcnn command line (printed before it runs);
its whole wall time and the command are saved as ``results/<name>/command.json``. An
experiment with ``seeds`` runs once per seed into ``results/<name>/seed<k>/``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "experiments" / "index.toml"


@dataclass(frozen=True)
class Experiment:
    name: str
    command: str
    config: str
    pipeline: str
    data: str
    reported: str
    flags: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    note: str = ""

    def runs(self, results: Path) -> list[tuple[Path, list[str]]]:
        """(output folder, command line) of each run, the command as a user would type it."""
        # a sweep's file holds its grid as well as its settings
        option = "--grid-file" if self.command == "sweep" else "--config"
        base = [
            "python",
            "-m",
            f"digitcnn.{self.command}",
            option,
            f"experiments/{self.config}",
            *self.flags,
        ]
        if not self.seeds:
            return [(results / self.name, [*base, "--out", _shown(results / self.name)])]
        return [
            (
                results / self.name / f"seed{seed}",
                [*base, "--seed", str(seed), "--out", _shown(results / self.name / f"seed{seed}")],
            )
            for seed in self.seeds
        ]


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def load_index(path: Path = INDEX) -> dict[str, Experiment]:
    table = tomllib.loads(path.read_text())
    experiments = {}
    for name, entry in table.items():
        unknown = set(entry) - set(Experiment.__dataclass_fields__)
        if unknown:
            raise SystemExit(f"{path}: [{name}] has unknown key(s) {', '.join(sorted(unknown))}")
        entry = {
            **entry,
            "flags": tuple(entry.get("flags", ())),
            "seeds": tuple(entry.get("seeds", ())),
        }
        experiments[name] = Experiment(name=name, **entry)
    return experiments


class ExperimentFailed(RuntimeError):
    """A run of an experiment exited with an error (its output says why)."""


# the commands that train networks, which take --epochs (baselines fit sklearn estimators)
TRAINS = {"kfold", "train", "sweep", "tune"}


def run_experiment(experiment: Experiment, results: Path, epochs: int | None = None) -> None:
    """Each run of ``experiment`` into ``results``; ``epochs`` overrides the config's (a
    smoke run, e.g. on a new machine)."""
    for out, command in experiment.runs(results):
        if epochs is not None and experiment.command in TRAINS:
            command = [*command, "--epochs", str(epochs)]
        print(f"\n$ {shlex.join(command)}", flush=True)
        started = time.perf_counter()
        # a rerun replaces the previous results (kept aside until the new run has finished)
        replace = ["--overwrite"] if out.exists() else []
        done = subprocess.run([sys.executable, *command[1:], *replace], cwd=ROOT)
        if done.returncode != 0:
            raise ExperimentFailed(f"{experiment.name}: exit code {done.returncode}")
        wall = time.perf_counter() - started
        record = {
            "command": shlex.join(command),
            "wall_s": round(wall, 2),
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (out / "command.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"{experiment.name}: {wall:.1f} s", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="experiments to run (default: all)")
    parser.add_argument("--results", default=str(ROOT / "results"), help="results folder")
    parser.add_argument("--list", action="store_true", help="list the experiments and stop")
    parser.add_argument("--readme", action="store_true", help="only rewrite the README")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="train every network this many epochs instead of its config's (a smoke run)",
    )
    parser.add_argument(
        "--no-readme", action="store_true", help="run without rewriting results/README.md"
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="run the other experiments when one fails; exit 1 naming the failed ones",
    )
    args = parser.parse_args(argv)
    experiments = load_index()
    results = Path(args.results)
    unknown = [name for name in args.names if name not in experiments]
    if unknown:
        parser.error(
            f"unknown experiment(s) {', '.join(unknown)}; choose from: {', '.join(experiments)}"
        )
    if args.list:
        for experiment in experiments.values():
            for out, command in experiment.runs(results):
                done = "done" if (out / "command.json").exists() else "not run"
                print(f"{experiment.name:22} {done:8} {shlex.join(command)}")
        return 0
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: give a whole number of at least 1")
    failed = []
    if not args.readme:
        for name in args.names or list(experiments):
            try:
                run_experiment(experiments[name], results, args.epochs)
            except ExperimentFailed as error:
                if not args.keep_going:
                    print(f"run_all.py: {error}", file=sys.stderr)
                    return 1
                failed.append(name)
    if failed:
        print(f"run_all.py: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if args.no_readme:
        return 0
    sys.path.insert(0, str(ROOT / "experiments"))
    from summarize import write_readme

    write_readme(experiments, results)
    print(f"\nwrote {results / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
