"""MLflow: a parent run per K-fold run, with a nested child run per fold.

Layout, in experiment ``--experiment`` (default ``digitcnn``) of store ``--mlflow-uri``
(default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the current folder, as
MLflow itself defaults):

* the **parent** run, named after the run folder: every setting as a param, the pooled
  metrics (``accuracy``, ``accuracy_mean``, ``accuracy_std``, ``loss``, ``n``, ``correct``,
  ``wall_s``), and the folder's files as artifacts (``metrics.json``, ``config.json``,
  ``folds.csv``, ``report.html``, the figures, the saved models);
* one **child** per fold (``fold-0``, tag ``digitcnn.fold``), nested under it: its per-epoch
  ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy`` and ``lr`` (steps are
  epochs from 1) and its final ``accuracy``, ``loss`` and ``best_epoch``. A fold's child is
  logged in one batch when the fold ends, so an interrupted fold leaves nothing half-logged.
* a **sweep** is a parent of its cells, each cell a parent of its folds.

The parent's id is kept in the run folder (``tracking.json``): ``--resume`` continues the
same parent and logs only the folds it lacks, and the parent of a run interrupted is marked
KILLED until then.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitcnn._io import read_json, write_json
from digitcnn.errors import ConfigError, OutputError
from digitcnn.tracking.tracker import Backend

if TYPE_CHECKING:
    from digitcnn.results import FoldResult
    from digitcnn.training.callbacks import RunStart

__all__ = ["MlflowBackend", "STATE_FILE", "resolve_uri", "FOLD_TAG", "PARENT_TAG"]

STATE_FILE = "tracking.json"
FOLD_TAG = "digitcnn.fold"
PARENT_TAG = "mlflow.parentRunId"
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
POOLED_METRICS = ("accuracy", "accuracy_mean", "accuracy_std", "loss", "n", "correct", "wall_s")
# what of a run folder is not an artifact: the tracker's own state, the lock, the event files
NOT_ARTIFACTS = (STATE_FILE, "tracking.log", "report.log", "tensorboard", "checkpoints")
BATCH = 1000  # MLflow's limit of metrics per log_batch call


def resolve_uri(uri: str | None) -> str:
    """The tracking URI: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``
    in the current folder. A relative SQLite path is made absolute, so that a run resumed from
    another folder finds its store."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


class MlflowBackend(Backend):
    """Logs to an MLflow tracking store (see the module docstring).

    Args:
        uri: the tracking URI (see :func:`resolve_uri`).
        experiment: the experiment's name; made when missing.
        parent_run_id: a run to nest this run under (a sweep's), or None.
        kind: ``run`` (a K-fold or single run) or ``sweep`` (whose cells are its children,
            logged each as a run of its own; its artifacts are its own files, not its cells').
    """

    name = "mlflow"
    keeps_files = True

    def __init__(
        self,
        uri: str | None = None,
        experiment: str = "digitcnn",
        parent_run_id: str | None = None,
        kind: str = "run",
    ) -> None:
        if importlib.util.find_spec("mlflow") is None:  # refused now; imported when used
            raise ModuleNotFoundError("No module named 'mlflow'", name="mlflow")
        self.uri = resolve_uri(uri)
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.kind = kind
        self.client: Any = None
        self.experiment_id = ""
        self.run_id = ""
        self.folder: Path | None = None
        self.was_finished = False
        self.pending: RunStart | None = None
        self.partial: dict[int, Any] = {}  # fold -> its child run, cut off while being logged

    # ------------------------------------------------------------------ the parent run

    def start(self, event: RunStart) -> set[int]:
        """Remembers the run; MLflow is imported and reached at the first fold's end
        (:meth:`connect`), while the other folds train, not before the first one starts."""
        if event.folder is None:
            raise ConfigError(
                "--track mlflow keeps its run id in the run's folder; give the run an out_dir"
            )
        self.folder, self.pending = Path(event.folder), event
        return set()

    def connect(self) -> str:
        """The parent run, made or found again, with the folds it lacks logged; its id."""
        if self.pending is None:
            return self.run_id
        event, self.pending = self.pending, None
        # why here: MLflow's import takes a second, paid while folds train
        from mlflow.tracking import MlflowClient

        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.run_id = self._stored_run() or self._new_run(event)
        except Exception as err:  # what failed is the store: say which
            detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise OutputError(f"the MLflow store {self.uri} failed: {detail}") from err
        children = self._children()
        # a child cut off while being logged is completed, not doubled
        self.partial = {f: run for f, run in children.items() if run.info.status != "FINISHED"}
        logged = {fold for fold, run in children.items() if run.info.status == "FINISHED"}
        for fold in sorted(set(event.finished) - logged):
            self.fold(event.finished[fold])
        return self.run_id

    def _stored_run(self) -> str | None:
        """The parent of an earlier attempt at this run, in this store, set running again."""
        path = self._state_path()
        if not path.is_file():
            return None
        stored = read_json(path, f"delete {path} to log this run as a new MLflow run").get(
            "mlflow", {}
        )
        if stored.get("uri") != self.uri or not stored.get("run_id"):
            return None
        try:
            run = self.client.get_run(stored["run_id"])
        except Exception:  # deleted from the store, or not there: start a new parent
            return None
        if run.info.lifecycle_stage != "active":
            return None
        self.experiment_id = run.info.experiment_id
        self.was_finished = run.info.status == "FINISHED"
        if not self.was_finished:
            self.client.update_run(run.info.run_id, status="RUNNING")
        return str(run.info.run_id)

    def _new_run(self, event: RunStart) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        self.experiment_id = (
            found.experiment_id if found else self.client.create_experiment(self.experiment)
        )
        tags = {"digitcnn.folder": str(self._folder().resolve()), "digitcnn.kind": self.kind}
        if self.parent_run_id:
            tags[PARENT_TAG] = self.parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=self._folder().name, tags=tags)
        run_id = str(run.info.run_id)
        from mlflow.entities import Param

        params = [Param(k, _param_text(v)) for k, v in event.config.to_dict().items()]
        for first in range(0, len(params), 100):  # MLflow takes 100 params per call
            self.client.log_batch(run_id, params=params[first : first + 100])
        write_json(self._state_path(), {"mlflow": {"uri": self.uri, "run_id": run_id}})
        return run_id

    def _children(self) -> dict[int, Any]:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.run_id}'"
        )
        return {int(run.data.tags[FOLD_TAG]): run for run in runs if FOLD_TAG in run.data.tags}

    def _folder(self) -> Path:
        if self.folder is None:
            raise ConfigError("the MLflow backend was not started (on_run_start)")
        return self.folder

    def _state_path(self) -> Path:
        return self._folder() / STATE_FILE

    # ------------------------------------------------------------------ folds and the end

    def fold(self, result: FoldResult) -> None:
        from mlflow.entities import Param

        tags = {PARENT_TAG: self.connect(), FOLD_TAG: str(result.fold)}
        params = [Param(name, str(getattr(result, name))) for name in ("seed", "n_train", "n_val")]
        metrics = self._fold_metrics(result)
        partial = self.partial.pop(result.fold, None)
        if partial is not None and partial.data.metrics and len(metrics) > BATCH - len(params):
            self.client.delete_run(partial.info.run_id)  # which of its batches landed is unknown
            partial = None
        if partial is None:
            child = self.client.create_run(
                self.experiment_id, run_name=f"fold-{result.fold}", tags=tags
            ).info.run_id
        else:
            child = partial.info.run_id
        if partial is None or not partial.data.metrics:
            # one batch (one transaction) for a fold of up to ~1000 values: all of it or nothing
            first = BATCH - len(params)
            self.client.log_batch(child, metrics=metrics[:first], params=params)
            for start in range(first, len(metrics), BATCH):
                self.client.log_batch(child, metrics=metrics[start : start + BATCH])
        self.client.set_terminated(child, "FINISHED")

    def _fold_metrics(self, result: FoldResult) -> list[Any]:
        from mlflow.entities import Metric

        history = {
            "train_loss": result.train_loss,
            "train_accuracy": result.train_accuracy,
            "val_loss": result.val_loss if result.n_val else [],
            "val_accuracy": result.val_accuracy if result.n_val else [],
            "lr": result.lrs,
        }
        now = _milliseconds()
        metrics = [
            Metric(name, float(value), now, epoch + 1)
            for name, values in history.items()
            for epoch, value in enumerate(values)
        ]
        last = len(result.train_loss)
        finals: dict[str, float] = {"best_epoch": result.best_epoch}
        if result.n_val:
            finals.update(accuracy=result.accuracy, loss=result.loss)
        metrics += [Metric(k, float(v), now, last) for k, v in finals.items()]
        return metrics

    def run_end(self, metrics: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        self.connect()
        if self.was_finished:  # logged before (a finished run tracked again): no repeats
            return
        pooled = [
            Metric(name, float(metrics[name]), _milliseconds(), 0)
            for name in POOLED_METRICS
            if isinstance(metrics.get(name), (int, float))
        ]
        self.client.log_batch(self.run_id, metrics=pooled)

    def files(self, folder: Path) -> None:
        self.connect()
        for path in sorted(folder.iterdir()):
            if path.name in NOT_ARTIFACTS or path.name.startswith("."):
                continue
            if path.is_dir() and self.kind == "run":
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        if status == "FINISHED":
            self.connect()
        if self.run_id and not self.was_finished:
            self.client.set_terminated(self.run_id, status)


def _milliseconds() -> int:
    return int(time.time() * 1000)


def _param_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)
