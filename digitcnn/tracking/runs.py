"""Which trackers a run's settings ask for, and logging a finished run folder after the fact.

:func:`make_tracker` turns ``RunConfig.track`` (``--track``) into a
:class:`~digitcnn.tracking.tracker.Tracker`; :func:`track_folder` logs a finished run folder
from its files (what ``python -m digitcnn.track`` does, and how a sweep logs each cell as it
finishes); :func:`track_sweep` gives a sweep its parent run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from digitcnn._io import read_json
from digitcnn.config import TRACKERS
from digitcnn.errors import ConfigError
from digitcnn.runstore.folder import inspect_folder
from digitcnn.tracking.tracker import Backend, Tracker
from digitcnn.training.callbacks import RunStart

if TYPE_CHECKING:
    from digitcnn.config import RunConfig

__all__ = [
    "TRACKING_LOG",
    "make_backends",
    "make_tracker",
    "track_folder",
    "track_sweep",
    "wait_for_report",
]

EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
# In a run folder while its files are logged in the background (after its report); kept with
# the error when that failed.
TRACKING_LOG = "tracking.log"


def make_backends(
    names: Sequence[str],
    mlflow_uri: str | None = None,
    experiment: str = "digitcnn",
    parent_run_id: str | None = None,
    kind: str = "run",
) -> list[Backend]:
    """The backends ``names`` (of ``tensorboard``, ``mlflow``), their libraries imported now.

    Raises ConfigError naming the extra to install when a library is missing, and for an
    unknown name.
    """
    backends: list[Backend] = []
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"unknown tracker {name!r}; choose from: {', '.join(TRACKERS)}")
        try:
            if name == "tensorboard":
                # why here: each backend imports its library, an optional extra
                from digitcnn.tracking.tensorboard import TensorBoardBackend

                backends.append(TensorBoardBackend())
            else:
                # why here: as above
                from digitcnn.tracking.mlflow import MlflowBackend

                backends.append(MlflowBackend(mlflow_uri, experiment, parent_run_id, kind))
        except ModuleNotFoundError as err:
            raise ConfigError(
                f"--track {name} needs {err.name}, which is not installed: "
                f"pip install 'digitcnn[{EXTRAS[name]}]'"
            ) from None
    return backends


def make_tracker(config: RunConfig, parent_run_id: str | None = None) -> Tracker | None:
    """The tracker ``config.track`` asks for (None when it asks for none)."""
    if not config.track:
        return None
    return Tracker(make_backends(config.track, config.mlflow_uri, config.experiment, parent_run_id))


def track_folder(
    folder: str | Path,
    to: Sequence[str],
    mlflow_uri: str | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
) -> None:
    """Log the finished run in ``folder`` to the trackers ``to``, from its files: the same
    values as tracking it live (a run already logged there is completed, not repeated).

    ``mlflow_uri`` and ``experiment`` default to the run's own settings. Raises ConfigError
    when ``folder`` holds no finished run, and OutputError when a tracker fails.
    """
    # why here: the fold records need NumPy, the run store's readers
    from digitcnn.runstore.files import read_fold
    from digitcnn.runstore.resume import resume_config

    folder = Path(folder)
    state = inspect_folder(folder)
    if state.kind != "run" or not state.finished:
        raise ConfigError(
            f"{folder}: not a finished run (no config.json and metrics.json); pass a run "
            "folder, or finish the run with --resume first"
        )
    config = resume_config(folder)
    records = {}
    for path in (folder / "folds").glob("fold*.json"):
        record = read_fold(path)
        records[record.fold] = record
    metrics = read_json(folder / "metrics.json", "run the run again: its results are lost")
    backends = make_backends(
        to, mlflow_uri or config.mlflow_uri, experiment or config.experiment, parent_run_id
    )
    tracker = Tracker(backends, strict=True)
    tracker.on_run_start(RunStart(config, folder, len(records), records))
    tracker.log_metrics(metrics)
    tracker.log_files(folder)
    tracker.close("FINISHED")


def track_sweep(folder: str | Path, config: RunConfig) -> tuple[Tracker, str | None]:
    """A sweep's tracker (its MLflow parent run, whose children are the cells, started) and
    that run's id for the cells (None without ``--track mlflow``). TensorBoard needs nothing
    at the sweep's level: each cell writes its own events."""
    names = [name for name in config.track if name == "mlflow"]
    tracker = Tracker(make_backends(names, config.mlflow_uri, config.experiment, kind="sweep"))
    tracker.on_run_start(RunStart(config, Path(folder), 0))
    tracker.connect()
    run_ids = [backend.connect() for backend in tracker.backends]
    return tracker, next((run_id for run_id in run_ids if run_id), None)


def wait_for_report(folder: str | Path, timeout: float = 600.0) -> None:
    """Return once the report being drawn in the background for ``folder`` is done: its
    ``report.log`` removed (drawn), or its process gone (failed, the log kept)."""
    # why here: the reporting module imports NumPy, which the commands' --help must not
    from digitcnn.reporting.report import REPORT_LOG

    log = Path(folder) / REPORT_LOG
    deadline = time.monotonic() + timeout
    while log.is_file() and time.monotonic() < deadline:
        words = log.read_text(encoding="utf-8", errors="replace").split()
        pid = next((int(w) for w, before in zip(words[1:], words) if before == "process"), None)
        if pid is not None and not _alive(pid):
            return
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process of that number
        return True
    return True
