"""What every CLI that writes a run shares (``digitcnn.kfold``, ``.train``, ``.baselines``,
``.sweep``): the run-folder and executor flags, the default ``--out`` folder, the settings of a
resumed run, and :func:`run_from_cli`, which starts the run.

Nothing here imports torch: a CLI imports this module at its top and still answers ``--help``
at once; :func:`run_from_cli` imports the runner when a run starts.
"""
from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from digitcnn._io import read_json
from digitcnn.config import PRESENTATION_KEYS, RunConfig, flag_name
from digitcnn.errors import ConfigError
from digitcnn.reporting.rundir import check_out_dir
from digitcnn.reporting.runcontrol import given_settings, refuse_changed_settings

__all__ = ["RUN_FLAGS", "EXECUTOR_ARGUMENTS", "default_out_dir", "resume_config",
           "resumed_config", "executor_settings", "executor_flags", "run_from_cli"]

# The run-folder flags of every CLI that writes a run (kfold, train, sweep, baselines).
RUN_FLAGS = [
    (("--resume",), {"metavar": "DIR", "default": None,
                     "help": "continue the interrupted run in DIR with its stored settings; "
                             "finished folds are kept"}),
    (("--overwrite",), {"action": "store_true",
                        "help": "replace the run already in --out: it is moved to "
                                "OUT.old-<UTC time> and deleted once the new run has finished"}),
]


def default_out_dir(config: RunConfig, root: str | Path = "results", prefix: str = "") -> Path:
    """``results/<prefix><dataset>-<model>-<UTC timestamp>``, never an existing folder."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = Path(root) / f"{prefix}{config.dataset}-{config.model}-{stamp}"
    candidate, suffix = base, 1
    while candidate.exists():
        candidate, suffix = Path(f"{base}-{suffix}"), suffix + 1
    return candidate


def resume_config(run_dir: str | Path, given: RunConfig | dict | None = None) -> RunConfig:
    """The config stored in ``run_dir/config.json``, with ``out`` pointing at ``run_dir``.

    ``given``: the settings of the resuming command line (see
    :func:`digitcnn.reporting.runcontrol.given_settings`). Those that change only how the run is shown
    (``PRESENTATION_KEYS``) replace the stored ones; any other that differs is refused. A
    RunConfig passes on only its ``quiet``.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no config.json, so there is no run to resume there; pass "
                          "the folder a K-fold run wrote (its --out)")
    stored = read_json(path, "the run's settings are lost, so it cannot be resumed: start it "
                             "again with --overwrite")
    if not isinstance(stored, dict):
        raise ConfigError(f"{path}: not a run's settings (a JSON object); start the run again "
                          "with --overwrite")
    known = set(RunConfig.__dataclass_fields__)
    config = RunConfig.from_dict({k: v for k, v in stored.items() if k in known}, str(path))
    if isinstance(given, RunConfig):
        given = {"quiet": given.quiet}
    given = dict(given or {})
    refuse_changed_settings(stored, given, run_dir)
    shown = {k: v for k, v in given.items() if k in PRESENTATION_KEYS and k != "out"}
    return config.replace(out=str(run_dir), **shown)


def resumed_config(argv: Sequence[str] | None, prog: str, command: str, resume_dir: str,
                   overwrite: bool, exclude: Sequence[str] = (),
                   extra_arguments: Sequence[tuple[tuple, dict]] = (),
                   given: dict | None = None) -> RunConfig:
    """The stored config of the run ``command`` continues in ``resume_dir``, with the command
    line's presentation settings; refused when the folder is not such a run or a setting
    given on the command line differs from the run's (``given`` adds settings to check)."""
    if overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: --resume continues the "
                          "run in its folder, --overwrite replaces it")
    check_out_dir(resume_dir, command, resume=True)
    settings = given_settings(argv, f"python -m {command}", exclude, extra_arguments)
    return resume_config(resume_dir, {**settings, **(given or {})})


EXECUTOR_ARGUMENTS = [
    (("--executor",), {"choices": ("local", "ray"), "default": "local",
                       "help": "where the folds train: on this machine, or one Ray task per "
                               "fold (see --address)"}),
    (("--address",), {"default": None, "metavar": "ADDRESS",
                      "help": "with --executor ray: the Ray cluster to join: auto (the one "
                              "running on this machine), HOST:PORT of its head (from a node of "
                              "the cluster) or ray://HOST:10001 (Ray Client, from elsewhere); "
                              "default: start a local Ray instance on this machine's cores"}),
    (("--task-cpus",), {"type": float, "default": 1.0, "metavar": "N",
                        "help": "with --executor ray: CPUs each fold task reserves (its torch "
                                "threads: the whole number, at least 1)"}),
    (("--task-gpus",), {"type": float, "default": None, "metavar": "N",
                        "help": "with --executor ray: GPUs each fold task reserves; fractions "
                                "let folds share a GPU (0.25: four per GPU); default: 1 on a "
                                "cluster with GPUs unless --device cpu, else 0"}),
    (("--max-retries",), {"type": int, "default": 3, "metavar": "N",
                          "help": "with --executor ray: times a fold task is rerun after its "
                                  "worker process dies (never after a digitcnn error)"}),
]
# The settings of digitcnn.cv.distributed.RayExecutor that EXECUTOR_ARGUMENTS set.
EXECUTOR_SETTINGS = ("address", "task_cpus", "task_gpus", "max_retries")


def _executor_default(name: str) -> Any:
    return next(kwargs["default"] for args, kwargs in EXECUTOR_ARGUMENTS
                if args[0] == f"--{flag_name(name)}")


def executor_settings(namespace: argparse.Namespace) -> dict | None:
    """The :class:`digitcnn.cv.distributed.RayExecutor` settings that the parsed
    :data:`EXECUTOR_ARGUMENTS` ask for; None for ``--executor local``, where a Ray flag is
    refused."""
    if namespace.executor != "ray":
        given = [f"--{flag_name(name)}" for name in EXECUTOR_SETTINGS
                 if getattr(namespace, name) != _executor_default(name)]
        if given:
            raise ConfigError(f"{given[0]} applies to --executor ray only; add --executor ray "
                              f"or leave {given[0]} out")
        return None
    return {name: getattr(namespace, name) for name in EXECUTOR_SETTINGS}


def executor_flags(executor) -> str:
    """The flags that run ``executor`` (a RayExecutor, or None for a local run) again, for a
    resume hint (empty for a local run)."""
    if executor is None:
        return ""
    flags = " --executor ray"
    for name in EXECUTOR_SETTINGS:
        value = getattr(executor, name)
        if value != _executor_default(name):
            shown = f"{value:g}" if isinstance(value, float) else value
            flags += f" --{flag_name(name)} {shown}"
    return flags


def run_from_cli(config: RunConfig, prog: str, command: str, resume: bool = False,
                 overwrite: bool = False, what: str = "results",
                 executor: dict | None = None) -> int:
    """A CLI run (see :func:`digitcnn.cv.command.run_command`); ``executor``: the settings
    :func:`executor_settings` returned. Returns the exit status."""
    # Imported here, not at the top: `--help` and a bad flag must answer without importing
    # torch, the data readers and the trainer.
    from digitcnn.cv.command import run_command

    return run_command(config, prog, command, resume, overwrite, what, executor)
