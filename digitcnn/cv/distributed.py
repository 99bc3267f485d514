"""More than one machine: every fold of every run (or sweep cell) as one Ray task.

``--executor ray`` (``python -m digitcnn.kfold`` and ``python -m digitcnn.sweep``) hands each
fold to Ray: a task runs :func:`digitcnn.cv.folds.run_fold`, the very function a local run
trains a fold with, on a worker of the cluster, and returns its :class:`FoldResult`. The
driver (the process you started) keeps every file: it writes each fold into the run folder
as its task ends, then ``oof.npz``, ``metrics.json``, the sweep tables, exactly as a local
run does, so ``--out`` needs no shared storage. The dataset goes into Ray's object store once
(``ray.put``) and reaches the workers from there.

Python API::

    from digitcnn.cv.distributed import RayExecutor

    with RayExecutor(address="auto", task_cpus=1) as executor:   # None: a local instance
        result = digitcnn.run_kfold(data, config, out_dir="runs/x", executor=executor)

Faults: a task whose worker dies (killed, out of memory, node lost) is retried up to
``max_retries`` times; a fold is a pure function of its config, data and seed, so a retry
gives the same numbers. A digitcnn error raised in a task (bad settings, bad data) is not
retried: the driver re-raises it, and the CLI prints its one line and exits 2. Ctrl-C on the
driver cancels the outstanding tasks; ``--resume`` then trains only the missing folds.

Ray is an optional dependency (``pip install -e ".[ray]"``) and is imported only here,
inside the functions that use it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitcnn._io import atomic_write_bytes
from digitcnn.cv.folds import run_fold
from digitcnn.cv.runner import collect_run, fold_ended, folds_ended, plan_run
from digitcnn.errors import ConfigError, DigitCNNError, one_line
from digitcnn.training.callbacks import Callback, RunStart
from digitcnn.training.runtime import configure_determinism, resolve_precision, select_device

__all__ = ["RayExecutor", "connected", "INSTALL_COMMAND"]

INSTALL_COMMAND = 'pip install -e ".[ray]"'


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"--executor ray needs Ray, which is not installed; install it with: {INSTALL_COMMAND}"
        ) from None
    return ray


def _fold_task(
    dataset,
    extra,
    config,
    fold: int,
    train_rows,
    val_rows,
    global_scaler,
    use_gpu: bool,
    threads: int,
    run_folder: str | None = None,
    scratch_name: str | None = None,
):
    """One fold on a Ray worker: :func:`digitcnn.cv.folds.run_fold`, as a local run trains it.

    Its epoch checkpoints go straight to ``run_folder`` (the driver's run folder, which a
    cluster shares: a task retried after its worker died continues from them; on a machine
    that does not see that folder they serve only retries there).

    Returns (FoldResult, precision used, {path relative to the run folder: bytes} of the files
    the fold wrote: its saved model with ``--save-models``), for the driver to write.
    """
    torch.set_num_threads(threads)  # workers are reused: set it for every task
    configure_determinism(config.deterministic)
    # A task uses a GPU only when it reserved one; "auto" must not grab a GPU Ray gave
    # to another task.
    device = select_device(
        "cuda"
        if use_gpu and config.device == "auto"
        else "cpu"
        if config.device == "auto"
        else config.device
    )
    # Ray hands numpy arguments over read-only, straight from the object store.
    train_rows, val_rows = np.array(train_rows), np.array(val_rows)
    if run_folder is None:  # a run without a folder keeps no checkpoints
        config = config.replace(checkpoint_every=0, checkpoint_seconds=0.0)
    # The fold's own files go to a scratch folder named by the driver, the same for every
    # attempt of this task: a retry after a killed worker removes what that attempt left.
    scratch = Path(tempfile.gettempdir()) / (scratch_name or f"digitcnn-fold-{uuid.uuid4().hex}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        result = run_fold(
            dataset,
            config,
            fold,
            train_rows,
            val_rows,
            device,
            global_scaler,
            (),
            extra,
            scratch,
            None if run_folder is None else Path(run_folder),
        )
        files = {
            str(path.relative_to(scratch)): path.read_bytes()
            for path in sorted(scratch.rglob("*"))
            if path.is_file()
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result, resolve_precision(config.precision, device), files


@dataclass
class _Run:
    """Bookkeeping of one run (a K-fold run or a sweep cell) while its tasks are out."""

    key: Any
    dataset: Any
    config: Any
    out_dir: Path | None
    plan: Any
    device: str
    started: float
    remaining: int
    gpus: float
    trained: list = field(default_factory=list)
    precisions: set = field(default_factory=set)


@dataclass
class RayExecutor:
    """Runs folds as Ray tasks; use it as a context manager (connects, and shuts down a Ray
    instance it started itself).

    Args:
        address: None starts a local Ray instance (``num_cpus`` cores, default all; temporary
            files under ``temp_dir``, default Ray's); ``"auto"``, ``"HOST:PORT"`` or
            ``"ray://HOST:PORT"`` join a running cluster. A Ray already initialised in this
            process (``ray.init`` by the caller) is used as it is.
        task_cpus: CPUs each fold task reserves; its torch threads are ``config.threads`` or
            the whole number of these (at least 1).
        task_gpus: GPUs each fold task reserves (fractions share a GPU); None: 1 on a
            cluster with GPUs unless the config says ``device = "cpu"``, else 0.
        max_retries: reruns of a task whose worker process died.
    """

    address: str | None = None
    task_cpus: float = 1.0
    task_gpus: float | None = None
    max_retries: int = 3
    num_cpus: int | None = None
    temp_dir: str | None = None
    _ray: Any = field(default=None, init=False, repr=False)
    _started: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.task_cpus > 0:
            raise ConfigError(f"--task-cpus {self.task_cpus:g} must be positive (e.g. 1)")
        if self.task_gpus is not None and self.task_gpus < 0:
            raise ConfigError(f"--task-gpus {self.task_gpus:g} must not be negative")
        if self.task_gpus is not None and self.task_gpus > 1 and self.task_gpus % 1:
            raise ConfigError(
                f"--task-gpus {self.task_gpus:g}: more than one GPU must be a "
                "whole number (fractions share one GPU)"
            )
        if self.max_retries < 0:
            raise ConfigError(f"--max-retries {self.max_retries} must not be negative")
        if importlib.util.find_spec("ray") is None:  # say so before any data are loaded
            _import_ray()

    # ------------------------------------------------------------------ connection

    def __enter__(self) -> RayExecutor:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def ray(self) -> Any:
        """The ``ray`` module, connected (joins the cluster or starts the local instance)."""
        self.connect()
        return self._ray

    def task_options(self, config) -> dict:
        """Ray's options for a task running (part of) a run of ``config``: its CPUs, GPUs
        and retries after its worker died (a digitcnn error raised in it is not retried)."""
        return {
            "num_cpus": self.task_cpus,
            "num_gpus": self.gpus_for(config),
            "max_retries": self.max_retries,
            "retry_exceptions": False,
        }

    def connect(self) -> None:
        """Join the cluster (or start the local instance); a no-op when already connected."""
        ray = self._ray = self._ray or _import_ray()
        if ray.is_initialized():
            return
        options = {"logging_level": logging.WARNING, "configure_logging": True}
        # ray.init replaces the SIGTERM handler with sys.exit; the CLI's own (SIGTERM ends a
        # run as Ctrl-C does, with the resume hint) must stay.
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            if self.address is None:
                # "local": never join another Ray instance that happens to run on this machine.
                ray.init(
                    address="local",
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    _temp_dir=self.temp_dir,
                    **options,
                )
            else:
                ray.init(address=self.address, **options)
        except Exception as err:  # Ray raises several types (ConnectionError, auth, value)
            where = (
                "start a local Ray instance"
                if self.address is None
                else f"join the Ray cluster at --address {self.address}"
            )
            raise ConfigError(
                f"--executor ray: could not {where} ({one_line(err)[:300]}); "
                "start a cluster with `ray start --head` and pass the address "
                "it prints (on a cluster with token authentication, set "
                "RAY_AUTH_MODE=token and give this machine the cluster's token)"
            ) from None
        finally:
            if threading.current_thread() is threading.main_thread() and sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)
        self._started = True

    def close(self) -> None:
        """Shut down the Ray instance this executor started (not one it joined)."""
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._started = False

    # ------------------------------------------------------------------ resources

    def gpus_for(self, config) -> float:
        """GPUs each task of a run of ``config`` reserves (``task_gpus``, or its default); a
        reservation no node of the cluster can hold is a ConfigError."""
        cluster = self._ray.cluster_resources()
        gpus = self.task_gpus
        if gpus is None:
            gpus = 1.0 if cluster.get("GPU", 0) > 0 and config.device != "cpu" else 0.0
        if gpus > 0 and config.device == "cpu":
            raise ConfigError(
                f"--task-gpus {gpus:g} with --device cpu: leave --task-gpus out "
                "or use --device auto"
            )
        if gpus == 0 and config.device == "cuda":
            raise ConfigError(
                "--device cuda with --executor ray needs GPUs per task: give "
                "--task-gpus (e.g. 0.25: four folds share a GPU)"
            )
        if config.device == "mps":
            raise ConfigError("--device mps is not available to Ray tasks; use --device auto")
        nodes = [node.get("Resources", {}) for node in self._ray.nodes() if node.get("Alive")]
        # A task that no node can hold would wait forever: refuse it now.
        for name, amount, flag in (
            ("CPU", self.task_cpus, "--task-cpus"),
            ("GPU", gpus, "--task-gpus"),
        ):
            largest = max((node.get(name, 0.0) for node in nodes), default=0.0)
            if amount > largest:
                raise ConfigError(
                    f"{flag} {amount:g}: no node of the Ray cluster has that many "
                    f"{name}s (the largest has {largest:g}); ask for at most "
                    f"{largest:g}"
                )
        return gpus

    def threads_for(self, config) -> int:
        """torch threads of a task of ``config``: its ``threads``, else the task's whole CPUs."""
        return config.threads or max(1, int(self.task_cpus))

    def _execution(self, config, gpus: float, precisions: set) -> dict:
        if not precisions:  # every fold was already on disk: what this machine would use
            precisions = {
                resolve_precision(config.precision, torch.device("cuda" if gpus > 0 else "cpu"))
            }
        cpus = self._ray.cluster_resources().get("CPU", 0.0)
        return {
            "executor": "ray",
            "address": self.address or "local",
            "precision": "+".join(sorted(precisions)),
            "fold_parallel": False,
            "workers": max(1, int(cpus // self.task_cpus)),
            "threads_per_worker": self.threads_for(config),
            "task_cpus": self.task_cpus,
            "task_gpus": gpus,
            "max_retries": self.max_retries,
        }

    # ------------------------------------------------------------------ running

    def run_kfold(
        self,
        dataset,
        config,
        out_dir=None,
        resume: bool = False,
        command: str = "digitcnn.kfold",
        splitter=None,
        callbacks: Sequence[Callback] = (),
    ):
        """:func:`digitcnn.cv.runner.run_kfold` with one Ray task per fold."""
        ((_, result),) = list(
            self.run_many([(None, dataset, config, out_dir)], resume, command, splitter, callbacks)
        )
        return result

    def run_many(
        self,
        runs: Sequence[tuple[Any, Any, Any, Any]],
        resume: bool = False,
        command: str = "digitcnn.kfold",
        splitter=None,
        callbacks: Sequence[Callback] = (),
    ) -> Iterator[tuple[Any, Any]]:
        """Train the folds of all ``runs`` ((key, dataset, config, out_dir) each) as Ray tasks
        at once; yield (key, :class:`KFoldResult`) as each run's last fold ends.

        ``splitter`` (a scikit-learn splitter) splits every run; ``callbacks`` hear each
        fold's epochs when its task returns (a task out on the cluster cannot be stopped),
        then its end, and each run's end.

        Each fold is written to its run's ``out_dir`` as its task ends (``--resume`` needs no
        more); each dataset is put into the object store once. Leaving early ends the tasks
        still out: an error or closing the iterator cancels them; Ctrl-C or SIGTERM disconnects
        from the Ray instance this executor connected to (which ends them), then re-raises.
        """
        if self._ray is None or not self._ray.is_initialized():
            self.connect()
        ray = self._ray
        remote = ray.remote(_fold_task)
        stored: dict[int, Any] = {}  # id(dataset) -> its object reference

        def put(value):
            if value is None:
                return None
            if id(value) not in stored:
                stored[id(value)] = ray.put(value)
            return stored[id(value)]

        states: list[_Run] = []
        jobs: dict[Any, tuple[_Run, int]] = {}
        try:
            for key, dataset, config, out_dir in runs:
                options = self.task_options(config)
                gpus = options["num_gpus"]
                plan = plan_run(dataset, config, out_dir, resume, command, splitter)
                state = _Run(
                    key,
                    dataset,
                    config,
                    None if out_dir is None else Path(out_dir),
                    plan,
                    "cuda" if gpus > 0 else "cpu",
                    time.perf_counter(),
                    len(plan.pending),
                    gpus,
                )
                states.append(state)
                start = RunStart(config, state.out_dir, len(plan.splits), dict(plan.finished))
                for callback in callbacks:
                    callback.on_run_start(start)
                task = remote.options(**options)
                for fold, train_rows, val_rows in plan.pending:
                    ref = task.remote(
                        put(dataset),
                        put(plan.extra),
                        config,
                        fold,
                        train_rows,
                        val_rows,
                        plan.global_scaler,
                        gpus > 0,
                        self.threads_for(config),
                        None if out_dir is None else str(out_dir),
                        f"digitcnn-fold-{uuid.uuid4().hex}",
                    )
                    jobs[ref] = (state, fold)
            for state in states:
                if state.remaining == 0:  # a resumed run whose folds were all finished
                    yield state.key, self._collect(state, callbacks)
            while jobs:
                done, _ = ray.wait(list(jobs), num_returns=1, timeout=1.0)
                for ref in done:
                    state, fold = jobs.pop(ref)
                    result, precision, files = self.result(ref)
                    state.trained.append(result)
                    state.precisions.add(precision)
                    state.remaining -= 1
                    _write_files(state.out_dir, files)
                    fold_ended(
                        callbacks,
                        result,
                        state.out_dir,
                        state.config.epochs,
                        replay=True,
                        keep_checkpoints=state.config.keep_checkpoints,
                    )
                    if state.remaining == 0:
                        yield state.key, self._collect(state, callbacks)
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM: leave the cluster rather than cancel. ray.cancel of a task that
            # is finishing at that moment can abort the driver inside Ray ("Tried to complete
            # task that was not pending", ray-project/ray#54798, seen with Ray 2.60), and the
            # interrupt handler must still print the resume line. A driver that disconnects
            # ends the tasks it owns.
            if self._started:
                self.close()
                jobs.clear()
            raise
        finally:
            for ref in jobs:  # an error, or the caller stopped early (or joined its own Ray)
                ray.cancel(ref, force=True)

    def result(self, ref):
        """A task's return value; a digitcnn error raised in the task is raised as itself."""
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, DigitCNNError):  # bad input: the same line as a local run
                raise cause from None
            raise

    def _collect(self, state: _Run, callbacks: Sequence[Callback]):
        folds_ended(state.out_dir, state.config.keep_checkpoints)
        execution = self._execution(state.config, state.gpus, state.precisions)
        result = collect_run(
            state.dataset,
            state.config,
            state.plan,
            state.trained,
            state.device,
            time.perf_counter() - state.started,
            execution,
            overlapping=True,
        )
        for callback in callbacks:
            callback.on_run_end(result)
        return result


def _write_files(out_dir: Path | None, files: dict[str, bytes]) -> None:
    """A fold task's files (its saved model) where a local run puts them."""
    if out_dir is not None:
        for relative, data in files.items():
            atomic_write_bytes(out_dir / relative, data)


@contextlib.contextmanager
def connected(executor: RayExecutor | None) -> Iterator[RayExecutor | None]:
    """``with connected(executor):`` connects a Ray executor and closes it after; None (a
    local run) passes through."""
    if executor is None:
        yield None
        return
    with executor:
        yield executor
