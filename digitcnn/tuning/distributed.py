"""``python -m digitcnn.tune --executor ray``: a study's trials as Ray tasks.

The tune process (the driver) keeps the study: it asks for every trial, draws its settings
and tells its end, so the study's storage (``OUT/study.journal`` by default) needs to be
reachable from the driver only. Each trial is one Ray task that trains all its folds with
:func:`~digitcnn.tuning.study.train_trial` on a worker of the cluster, as ``kfold
--executor ray`` runs each fold as a task. After every epoch the task sends its fold mean to
the driver through a small actor and waits for the pruner's answer, so a pruned trial ends
its task and frees its CPUs (or GPU) at once.

``--jobs N`` trials are out at once, each task reserving ``--task-cpus`` CPUs and
``--task-gpus`` GPUs. In a task the folds train as one fold-batched model (K-fold and
stratified splits: every fold reaches each epoch together, and nothing is forked inside
Ray's worker), else in turn; that choice, the device and the threads are written into the
trials' settings, and so into ``best.toml``.

Faults: a task whose worker dies is retried (``--max-retries``); a killed driver leaves its
trials running in the storage, and the next run of the command fails and requeues them, as
for local trial processes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import torch
from optuna.trial import TrialState

from digitcnn.config import RunConfig
from digitcnn.cv.distributed import RayExecutor
from digitcnn.datasets.base import DigitDataset
from digitcnn.training.runtime import configure_determinism
from digitcnn.tuning.study import (
    StudySearch,
    ask_trial,
    draw_config,
    fail_and_requeue,
    load_study,
    record_trial,
    show_progress,
    train_trial,
)

__all__ = ["ray_trial_base", "run_trials_on_ray"]


def ray_trial_base(base: RunConfig, executor: RayExecutor) -> RunConfig:
    """The settings every trial task starts from: ``base``, quiet, on the device its task
    reserves (``auto``: a GPU when the task reserves one), with the folds fold-batched in
    one process unless ``base`` chooses fold-batched training or workers itself, and the
    task's CPUs as torch threads."""
    config = base.replace(quiet=True, out=None)
    if config.device == "auto":
        config = config.replace(device="cuda" if executor.gpus_for(config) > 0 else "cpu")
    if config.fold_parallel is None and config.workers is None:
        config = config.replace(fold_parallel=True, workers=1)
    return config.replace(threads=executor.threads_for(config))


class _Reports:
    """A Ray actor between the trial tasks and the driver: a task's :meth:`report` waits
    until the driver, having collected it (:meth:`collect`), tells the pruner's answer
    (:meth:`decide`). Async, so that many tasks can wait in it at once."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, int, float]] = []
        self.arrived = asyncio.Event()
        self.answers: dict[tuple[int, int], asyncio.Future] = {}

    async def report(self, number: int, step: int, value: float) -> bool:
        answer = asyncio.get_running_loop().create_future()
        self.answers[(number, step)] = answer
        self.pending.append((number, step, value))
        self.arrived.set()
        return await answer

    async def collect(self) -> list[tuple[int, int, float]]:
        await self.arrived.wait()
        self.arrived.clear()
        reports, self.pending = self.pending, []
        return reports

    async def decide(self, number: int, step: int, prune: bool) -> None:
        self.answers.pop((number, step)).set_result(prune)


class _RemoteTrial:
    """What :class:`~digitcnn.tuning.study.FoldMeanReport` needs of an Optuna trial, in a
    task: ``report`` keeps the value, ``should_prune`` sends it to the driver and waits."""

    def __init__(self, reports: Any, number: int) -> None:
        self.reports, self.number = reports, number
        self.step, self.value = -1, 0.0

    def report(self, value: float, step: int) -> None:
        self.value, self.step = value, step

    def should_prune(self) -> bool:
        import ray  # in a Ray task: ray is there

        return bool(ray.get(self.reports.report.remote(self.number, self.step, self.value)))


def _trial_task(
    dataset: DigitDataset, config: RunConfig, metric: str, reports: Any, number: int
) -> tuple[TrialState, float | None, dict]:
    """One trial on a Ray worker: :func:`~digitcnn.tuning.study.train_trial`."""
    torch.set_num_threads(config.threads or 1)  # workers are reused: set it for every task
    configure_determinism(config.deterministic)
    return train_trial(dataset, config, _RemoteTrial(reports, number), metric)


def run_trials_on_ray(search: StudySearch, executor: RayExecutor) -> None:
    """Run the study's trials as Ray tasks, ``search.settings.jobs`` at once, until
    ``trials`` have finished or the deadline has passed (see the module). Ctrl-C or an
    error fails and requeues the trials still out and ends their tasks."""
    ray = executor.ray
    study = load_study(search, 0)
    reports = ray.remote(_Reports).options(num_cpus=0).remote()
    task = ray.remote(_trial_task).options(**executor.task_options(search.base))
    data = ray.put(search.dataset)
    out: dict[Any, tuple[Any, float, float]] = {}  # task -> (trial, started, drawing seconds)
    collecting = reports.collect.remote()
    asking = True
    try:
        while True:
            while asking and len(out) < search.settings.jobs and time.time() < search.deadline:
                trial = ask_trial(study, search)
                if trial is None:
                    asking = False
                    break
                started = time.perf_counter()
                config, attrs, drawn_s = draw_config(search, trial)
                if config is None:  # settings the run refuses: pruned at once
                    record_trial(trial, attrs, drawn_s, time.perf_counter() - started)
                    _tell(study, trial, TrialState.PRUNED, None, search)
                    continue
                ref = task.remote(data, config, search.settings.metric, reports, trial.number)
                out[ref] = (trial, started, drawn_s)
            if not out:
                return
            done, _ = ray.wait([*out, collecting], num_returns=1)
            for ref in done:
                if ref == collecting:
                    _answer(out, ray.get(ref), reports)
                    collecting = reports.collect.remote()
                    continue
                trial, started, drawn_s = out.pop(ref)
                try:
                    state, value, attrs = executor.result(ref)
                except BaseException:
                    fail_and_requeue(study, trial)
                    raise
                record_trial(trial, attrs, drawn_s, time.perf_counter() - started)
                _tell(study, trial, state, value, search)
    except BaseException as err:
        for trial, _, _ in out.values():
            fail_and_requeue(study, trial)
        if isinstance(err, KeyboardInterrupt):
            # Ctrl-C or SIGTERM: leave a Ray instance this executor started, which ends its
            # tasks, rather than cancel them one by one (see RayExecutor.run_many)
            executor.close()
        if ray.is_initialized():
            for ref in out:
                ray.cancel(ref, force=True)
        raise
    finally:
        if ray.is_initialized():
            ray.kill(reports)


def _answer(out: dict, collected: list, reports: Any) -> None:
    """Report each collected fold mean to its trial and send back the pruner's answer."""
    trials = {trial.number: trial for trial, _, _ in out.values()}
    for number, step, value in collected:
        trial = trials[number]
        trial.report(value, step)
        reports.decide.remote(number, step, trial.should_prune())


def _tell(study: Any, trial: Any, state: TrialState, value: float | None, s: StudySearch) -> None:
    study.tell(trial, value, state=state)
    if not s.quiet:
        show_progress(study, trial.number, state, value, s.settings)
