"""The flags every command that writes a run shares (``kfold``, ``train``, ``baselines``,
``sweep``): the run-folder and executor flags, the default ``--out`` folder, the settings a
command line gives explicitly, and the stored settings of a run it resumes.

Nothing here imports torch: a command imports this module at its top and still answers
``--help`` at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from digitcnn.config import Argument, RunConfig, build_parser, load_toml
from digitcnn.errors import ConfigError
from digitcnn.runstore.folder import check_out_dir
from digitcnn.runstore.resume import resume_config
from digitcnn.settings import flag_name

__all__ = [
    "RUN_FLAGS",
    "EXECUTOR_ARGUMENTS",
    "default_out_dir",
    "given_settings",
    "resumed_config",
    "executor_settings",
    "executor_flags",
    "executor_from_argv",
]

# The run-folder flags of every CLI that writes a run (kfold, train, sweep, baselines).
RUN_FLAGS: list[Argument] = [
    (
        ("--resume",),
        {
            "metavar": "DIR",
            "default": None,
            "help": "continue the interrupted run in DIR with its stored settings; "
            "finished folds are kept",
        },
    ),
    (
        ("--overwrite",),
        {
            "action": "store_true",
            "help": "replace the run already in --out: it is moved to "
            "OUT.old-<UTC time> and deleted once the new run has finished",
        },
    ),
]


def default_out_dir(config: RunConfig, root: str | Path = "results", prefix: str = "") -> Path:
    """``results/<prefix><dataset>-<model>-<UTC timestamp>``, never an existing folder."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = Path(root) / f"{prefix}{config.dataset}-{config.model}-{stamp}"
    candidate, suffix = base, 1
    while candidate.exists():
        candidate, suffix = Path(f"{base}-{suffix}"), suffix + 1
    return candidate


def given_settings(
    argv: Sequence[str] | None,
    prog: str,
    exclude: Sequence[str] = (),
    extra_arguments: Sequence[Argument] = (),
    keep: Sequence[str] = (),
) -> dict[str, Any]:
    """The run settings a command line sets explicitly: its flags and its ``--config`` file's
    keys (not the defaults), for checking them against a run being resumed. Of the CLI's own
    ``extra_arguments`` only those named in ``keep`` (by their dest) are included."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # the CLI's own flags, with their defaults suppressed too: only those given remain
    extras = [(args, {**kwargs, "default": argparse.SUPPRESS}) for args, kwargs in extra_arguments]
    given = vars(
        build_parser(
            prog, "", suppress_defaults=True, exclude=exclude, extra_arguments=extras
        ).parse_args(argv)
    )
    for args, kwargs in extra_arguments:
        name = kwargs.get("dest") or args[0].lstrip("-").replace("-", "_")
        if name not in keep:
            given.pop(name, None)
    toml_path = given.pop("config", None)
    return {**(load_toml(toml_path) if toml_path else {}), **given}


def resumed_config(
    argv: Sequence[str] | None,
    prog: str,
    command: str,
    resume_dir: str,
    overwrite: bool,
    exclude: Sequence[str] = (),
    extra_arguments: Sequence[Argument] = (),
    given: dict | None = None,
) -> RunConfig:
    """The stored config of the run ``command`` continues in ``resume_dir``, with the command
    line's presentation settings; refused when the folder is not such a run or a setting
    given on the command line differs from the run's (``given`` adds settings to check)."""
    if overwrite:
        raise ConfigError(
            "--resume and --overwrite exclude each other: --resume continues the "
            "run in its folder, --overwrite replaces it"
        )
    check_out_dir(resume_dir, command, resume=True)
    settings = given_settings(argv, f"python -m {command}", exclude, extra_arguments)
    return resume_config(resume_dir, {**settings, **(given or {})})


EXECUTOR_ARGUMENTS: list[Argument] = [
    (
        ("--executor",),
        {
            "choices": ("local", "ray"),
            "default": "local",
            "help": "where the work runs: on this machine, or as Ray tasks (one per "
            "fold; one per trial in digitcnn.tune; see --address)",
        },
    ),
    (
        ("--address",),
        {
            "default": None,
            "metavar": "ADDRESS",
            "help": "with --executor ray: the Ray cluster to join: auto (the one "
            "running on this machine), HOST:PORT of its head (from a node of "
            "the cluster) or ray://HOST:10001 (Ray Client, from elsewhere); "
            "default: start a local Ray instance on this machine's cores",
        },
    ),
    (
        ("--task-cpus",),
        {
            "type": float,
            "default": 1.0,
            "metavar": "N",
            "help": "with --executor ray: CPUs each task reserves (its torch "
            "threads: the whole number, at least 1)",
        },
    ),
    (
        ("--task-gpus",),
        {
            "type": float,
            "default": None,
            "metavar": "N",
            "help": "with --executor ray: GPUs each task reserves; fractions "
            "let tasks share a GPU (0.25: four per GPU); default: 1 on a "
            "cluster with GPUs unless --device cpu, else 0",
        },
    ),
    (
        ("--max-retries",),
        {
            "type": int,
            "default": 3,
            "metavar": "N",
            "help": "with --executor ray: times a task is rerun after its "
            "worker process dies (never after a digitcnn error)",
        },
    ),
]
# The settings of digitcnn.cv.distributed.RayExecutor that EXECUTOR_ARGUMENTS set.
EXECUTOR_SETTINGS = ("address", "task_cpus", "task_gpus", "max_retries")


def _executor_default(name: str) -> Any:
    return next(
        kwargs["default"]
        for args, kwargs in EXECUTOR_ARGUMENTS
        if args[0] == f"--{flag_name(name)}"
    )


def executor_settings(namespace: argparse.Namespace) -> dict | None:
    """The :class:`digitcnn.cv.distributed.RayExecutor` settings that the parsed
    :data:`EXECUTOR_ARGUMENTS` ask for; None for ``--executor local``, where a Ray flag is
    refused."""
    if namespace.executor != "ray":
        given = [
            f"--{flag_name(name)}"
            for name in EXECUTOR_SETTINGS
            if getattr(namespace, name) != _executor_default(name)
        ]
        if given:
            raise ConfigError(
                f"{given[0]} applies to --executor ray only; add --executor ray "
                f"or leave {given[0]} out"
            )
        return None
    return {name: getattr(namespace, name) for name in EXECUTOR_SETTINGS}


def executor_flags(executor: dict | None) -> str:
    """The flags that run with the executor ``settings`` (from :func:`executor_settings`;
    None for a local run) again, for a resume hint (empty for a local run)."""
    if executor is None:
        return ""
    flags = " --executor ray"
    for name in EXECUTOR_SETTINGS:
        value = executor[name]
        if value != _executor_default(name):
            shown = f"{value:g}" if isinstance(value, float) else value
            flags += f" --{flag_name(name)} {shown}"
    return flags


def executor_from_argv(argv: Sequence[str] | None) -> dict | None:
    """:func:`executor_settings` of the executor flags among ``argv`` (others are ignored)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for args, kwargs in EXECUTOR_ARGUMENTS:
        parser.add_argument(*args, **kwargs)
    argv = list(sys.argv[1:] if argv is None else argv)
    return executor_settings(parser.parse_known_args(argv)[0])
