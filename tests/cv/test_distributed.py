"""--executor ray: folds as Ray tasks give the local executor's numbers and files; faults.

Two Ray instances serve the whole module, because starting one takes several seconds on two
cores: a local instance inside this process (what ``--executor ray`` starts when no
``--address`` is given), and a separate head started with ``ray start --head`` on 127.0.0.1,
which CLI runs join with ``--address`` (the real client path). Each is stopped by its own
process, never by ``ray stop`` (which would stop every Ray instance on the machine). Ports and
temporary folders are this module's own, so that other Ray users of the machine are safe.
"""

import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from conftest import REPO_ROOT, synthetic_optdigits, without_timings, write_table  # noqa: E402
from ray_faults import KILL_AFTER_CHECKPOINT, KILL_WORKER_MARKER, RESUMED  # noqa: E402

from digitcnn.commands import kfold, sweep  # noqa: E402
from digitcnn.config import RunConfig  # noqa: E402
from digitcnn.cv.distributed import RayExecutor  # noqa: E402
from digitcnn.cv.runner import load_for_config, run_kfold  # noqa: E402
from digitcnn.errors import ConfigError, ModelError  # noqa: E402
from digitcnn.runstore.files import write_final  # noqa: E402

START_TIMEOUT = 180  # seconds: Ray starts slowly on a busy 2-core machine
RUN_TIMEOUT = 300
FAST = dict(epochs=2, batch_size=32, threads=1, quiet=True, verify=False, plots=False)
# Slow enough per fold that a run is still going when the test interrupts it.
SLOW = [
    "--threads",
    "1",
    "--no-verify",
    "--epochs",
    "15",
    "--batch-size",
    "8",
    "--folds",
    "3",
    "--quiet",
    "--no-plots",
]


# Token authentication of the separate head: its processes and the drivers that join it.
CLUSTER_ENV: dict = {}


def _cluster_env() -> dict:
    return {**os.environ, **CLUSTER_ENV}


def _free_port(taken: set) -> int:
    """A port free now, outside the kernel's ephemeral range and Ray's worker ports.

    Ports from ``bind(0)`` come from the ephemeral range, where every other process's
    outgoing connections and port-0 servers (the local Ray instance's among them) land too,
    so one can be taken between this probe and the head's bind; that once failed CI.
    """
    low, high = (
        20000,
        32000,
    )  # Ray's workers use 10002-19999; Linux's ephemeral range starts at 32768
    while True:
        port = secrets.randbelow(high - low) + low
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port


@pytest.fixture(scope="module")
def ray_root():
    """A short private folder (Ray's socket paths must stay under 107 characters), and the
    environment every Ray process of this module shares: one token (token authentication,
    nothing written to ~/.ray) and the worker-kill marker's path."""
    root = Path(tempfile.mkdtemp(prefix="dcray-"))
    CLUSTER_ENV.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    saved = dict(os.environ)
    # The local instance lives and dies with this process: no token. The head and its
    # drivers (subprocesses) use token authentication with a token of their own (CLUSTER_ENV).
    os.environ.update(
        {
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            KILL_WORKER_MARKER: str(root / "kill-worker"),
            KILL_AFTER_CHECKPOINT: str(root / "kill-after-checkpoint"),
            RESUMED: str(root / "resumed.txt"),
            # the workers import the test's fault hook (tests/ray_faults.py) too
            "PYTHONPATH": os.pathsep.join(
                p for p in [str(REPO_ROOT), str(REPO_ROOT / "tests"), saved.get("PYTHONPATH")] if p
            ),
        }
    )
    yield root
    os.environ.clear()
    os.environ.update(saved)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray(ray_root):
    """A local 2-CPU Ray instance in this process, as ``--executor ray`` starts one, whose
    workers carry the test's fault hook (:mod:`ray_faults`); the executor uses it as it is."""
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(ray_root / "local"),
        logging_level="ERROR",
        runtime_env={"worker_process_setup_hook": "ray_faults.install"},
    )
    executor = RayExecutor()
    executor.connect()
    yield executor
    ray.shutdown()


HEAD_PORT_FLAGS = (
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "node-manager-port",
    "object-manager-port",
)


def _start_head(ray_root: Path, attempt: int) -> tuple[subprocess.Popen, int, str]:
    """One ``ray start --head --block`` on fresh ports; waits until it is up or has failed.

    Returns the process (still running if the head started), its GCS port, and its log.
    """
    taken: set = set()
    port = _free_port(taken)
    ports = [item for name in HEAD_PORT_FLAGS for item in (f"--{name}", str(_free_port(taken)))]
    log_path = ray_root / f"head-{attempt}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            ["ray", "start", "--head", "--block", "--port", str(port)]
            + ["--node-ip-address", "127.0.0.1", "--num-cpus", "2"]
            + ["--include-dashboard=false", "--disable-usage-stats"]
            + ["--temp-dir", str(ray_root / f"head-{attempt}"), *ports],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=_cluster_env(),
        )
    deadline = time.monotonic() + START_TIMEOUT
    while "Ray runtime started" not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            break
        time.sleep(0.5)
    return process, port, log_path.read_text()


def _stop(process: subprocess.Popen) -> None:
    process.terminate()  # --block: stops the processes this head started, and only those
    try:
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def head(ray_root):
    """``ray start --head`` on 127.0.0.1 with free ports; yields its address.

    A port found free can still be taken before Ray binds it, so a head that fails to
    start is tried again on other ports (three times in all) before the test fails.
    """
    for attempt in range(3):
        process, port, log = _start_head(ray_root, attempt)
        if process.poll() is None:
            break
    else:
        pytest.fail(f"ray start --head failed 3 times; the last log ends: {log[-2000:]}")
    yield f"127.0.0.1:{port}"
    _stop(process)


@pytest.fixture(scope="module")
def data_dir(ray_root):
    folder = ray_root / "optdigits"
    folder.mkdir()
    write_table(folder / "optdigits.tra", synthetic_optdigits(120, seed=1))
    write_table(folder / "optdigits.tes", synthetic_optdigits(60, seed=2))
    return folder


def _config(data_dir, **changes):
    return RunConfig(data_dir=str(data_dir), **{**FAST, **changes})


@pytest.fixture(scope="module")
def local_reference(data_dir, ray_root):
    """The local executor's run (one process), its folder and metrics."""
    config = _config(data_dir, workers=1, save_models=True)
    out = ray_root / "local-reference"
    write_final(run_kfold(load_for_config(config), config, out_dir=out), out, False)
    return out, _metrics(out)


def _metrics(out: Path) -> dict:
    return without_timings(json.loads((out / "metrics.json").read_text()))


def _cli(*args, timeout=RUN_TIMEOUT, **popen):
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


# ----------------------------------------------------------------------------- local instance


def test_ray_run_equals_the_local_run_file_for_file(local_ray, data_dir, local_reference, tmp_path):
    reference_dir, reference = local_reference
    config = _config(data_dir, save_models=True)
    out = tmp_path / "ray"
    result = run_kfold(load_for_config(config), config, out_dir=out, executor=local_ray)
    write_final(result, out, plots=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert without_timings(metrics) == reference
    assert metrics["execution"]["executor"] == "ray"
    assert metrics["execution"]["task_cpus"] == 1.0 and metrics["execution"]["task_gpus"] == 0
    assert "Ray tasks of 1 CPU" in result.summary()
    # the driver wrote every fold file and saved model where a local run puts them
    for k in range(4):
        for name in (f"folds/fold{k}.npz", f"folds/fold{k}/model.safetensors"):
            assert (out / name).read_bytes() == (reference_dir / name).read_bytes(), name
        assert (
            json.loads((out / f"folds/fold{k}/model.json").read_text())["metrics"]
            == json.loads((reference_dir / f"folds/fold{k}/model.json").read_text())["metrics"]
        )
    assert (out / "oof.npz").read_bytes() == (reference_dir / "oof.npz").read_bytes()


def test_a_killed_worker_is_retried_with_identical_results(
    local_ray, data_dir, local_reference, tmp_path
):
    marker = Path(os.environ[KILL_WORKER_MARKER])
    marker.touch()  # arms ray_faults' hook: the first fold task to see it kills its worker
    config = _config(data_dir, save_models=True)
    out = tmp_path / "ray"
    write_final(
        run_kfold(load_for_config(config), config, out_dir=out, executor=local_ray),
        out,
        plots=False,
    )
    assert not marker.exists()  # a worker did die in the middle of this run
    assert _metrics(out) == local_reference[1]


def test_a_task_retried_after_its_worker_died_continues_from_its_checkpoint(
    local_ray, data_dir, local_reference, tmp_path
):
    marker, resumed = Path(os.environ[KILL_AFTER_CHECKPOINT]), Path(os.environ[RESUMED])
    marker.touch()  # the first fold task to write a checkpoint then kills its worker
    scratch = Path(tempfile.gettempdir())  # the workers' too: they inherit this environment
    before = set(scratch.glob("digitcnn-fold-*"))
    config = _config(data_dir, save_models=True)
    out = tmp_path / "ray"
    write_final(
        run_kfold(load_for_config(config), config, out_dir=out, executor=local_ray),
        out,
        plots=False,
    )
    assert not marker.exists()  # a worker died after its fold's first epoch
    (line,) = resumed.read_text().splitlines()  # and its retry went on from there
    assert line.startswith("fold-") and line.endswith(" 0")
    assert _metrics(out) == local_reference[1]
    assert not (out / "checkpoints").exists()
    # the killed attempt's scratch folder went with its retry
    assert set(scratch.glob("digitcnn-fold-*")) <= before


def test_a_digitcnn_error_in_a_task_is_one_line_exit_2(local_ray, data_dir, tmp_path, capsys):
    # s1 needs 24x24 images: the error is raised inside each fold task, on the worker
    argv = ["--data-dir", str(data_dir), "--model", "s1", "--quiet", "--no-verify", "--epochs", "1"]
    with pytest.raises(ModelError, match="needs images of at least 24x24"):
        config = _config(data_dir, model="s1")
        run_kfold(load_for_config(config), config, executor=local_ray)
    assert kfold.main([*argv, "--workers", "1", "--out", str(tmp_path / "local")]) == 2
    local_err = capsys.readouterr().err
    started = time.monotonic()
    assert kfold.main([*argv, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 2
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == local_err.strip().splitlines()[-1]
    assert err.strip().splitlines()[-1].startswith("digitcnn.kfold: error: model 's1' needs")
    assert "Traceback" not in err and elapsed < 120
    assert not list((tmp_path / "ray").glob("folds/fold*.json"))


def test_sweep_through_ray_gives_the_local_tables(local_ray, data_dir, tmp_path):
    grid = [
        "--data-dir",
        str(data_dir),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--threads",
        "1",
        "--no-verify",
        "--quiet",
        "--no-plots",
        "--grid",
        "dropout=0.2,0.6",
        "lr=0.001,0.003",
    ]
    assert sweep.main([*grid, "--workers", "1", "--out", str(tmp_path / "local")]) == 0
    assert sweep.main([*grid, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    local = list(csv.DictReader((tmp_path / "local" / "sweep.csv").open()))
    remote = list(csv.DictReader((tmp_path / "ray" / "sweep.csv").open()))
    assert len(remote) == 4
    for a, b in zip(local, remote):
        assert {k: v for k, v in a.items() if k != "wall_s"} == {
            k: v for k, v in b.items() if k != "wall_s"
        }
    assert (tmp_path / "ray" / "comparisons.csv").read_text() == (
        tmp_path / "local" / "comparisons.csv"
    ).read_text()
    for cell in (tmp_path / "ray" / "cells").iterdir():
        assert json.loads((cell / "metrics.json").read_text())["execution"]["executor"] == "ray"


def test_impossible_resources_are_refused_instead_of_waiting_forever(local_ray, data_dir):
    config = _config(data_dir)
    dataset = load_for_config(config)
    for executor, message in [
        (RayExecutor(task_cpus=64), "--task-cpus 64: no node"),
        (RayExecutor(task_gpus=0.5), "--task-gpus 0.5: no node"),
    ]:
        with pytest.raises(ConfigError, match=message):
            run_kfold(dataset, config, executor=executor)


# ----------------------------------------------------------------------------- bad usage


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task-cpus", "2"], "--task-cpus applies to --executor ray only"),
        (["--executor", "ray", "--task-cpus", "0"], "--task-cpus 0 must be positive"),
        (["--executor", "ray", "--task-gpus", "1.5"], "more than one GPU must be a whole number"),
    ],
)
def test_executor_flag_errors(argv, message, data_dir, capsys):
    assert kfold.main(["--data-dir", str(data_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_without_ray_the_cli_names_the_install_command(data_dir, tmp_path, monkeypatch, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ray" else real_find_spec(name, *a),
    )
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    common = ["--data-dir", str(data_dir), "--executor", "ray", "--quiet"]
    for main, argv in [
        (kfold.main, common + ["--out", str(tmp_path / "run")]),
        (sweep.main, common + ["--out", str(tmp_path / "sweep"), "--grid", "dropout=0.2,0.3"]),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.strip().endswith('install it with: pip install -e ".[ray]"')
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "run" / "config.json").exists()


# ----------------------------------------------------------------------------- a separate head


@pytest.fixture(scope="module")
def slow_reference(data_dir, ray_root):
    """metrics.json of the local executor's uninterrupted run with the SLOW settings."""
    config = RunConfig(
        data_dir=str(data_dir),
        threads=1,
        verify=False,
        epochs=15,
        batch_size=8,
        folds=3,
        quiet=True,
        plots=False,
        workers=1,
    )
    out = ray_root / "slow-reference"
    write_final(run_kfold(load_for_config(config), config, out_dir=out), out, False)
    return _metrics(out)


def _free_cpus_after_driver(head: str, timeout: float = 60.0) -> float:
    """The head's free CPUs once no task holds one (or when ``timeout`` runs out), read by a
    new driver: 2.0 when the interrupted driver's tasks ended with it."""
    code = (
        "import sys, time, ray\n"
        f"ray.init(address={head!r}, logging_level='ERROR')\n"
        f"deadline = time.monotonic() + {timeout}\n"
        "while ray.available_resources().get('CPU', 0.0) < 2.0 and "
        "time.monotonic() < deadline:\n"
        "    time.sleep(0.5)\n"
        "print(ray.available_resources().get('CPU', 0.0))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        env=_cluster_env(),
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.split()[-1])


def _default_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("how, exit_code", [("kill", None), ("ctrl-c", 130), ("sigterm", 143)])
def test_driver_interrupted_on_a_cluster_then_resumed(
    head, data_dir, slow_reference, tmp_path, how, exit_code
):
    """The CLI joins the head with --address (the real client path); the driver dies or is
    interrupted after its first fold; --resume trains only the missing folds."""
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "digitcnn.kfold",
        "--data-dir",
        str(data_dir),
        *SLOW,
        "--executor",
        "ray",
        "--address",
        head,
    ]
    process = subprocess.Popen(
        [*command, "--out", str(out)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_ctrl_c,
        env=_cluster_env(),
    )
    deadline = time.monotonic() + RUN_TIMEOUT
    while not list((out / "folds").glob("fold*.json")):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no fold finished: {process.communicate()[1][-3000:]}")
        time.sleep(0.05)
    process.send_signal(
        {"kill": signal.SIGKILL, "ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM}[how]
    )
    _, err = process.communicate(timeout=120)
    assert not (out / "metrics.json").exists()
    finished = {path.name: path.read_bytes() for path in (out / "folds").glob("fold*.json")}
    assert 1 <= len(finished) < 3
    if exit_code is not None:  # Ctrl-C and SIGTERM: tasks cancelled, the resume command shown
        assert process.returncode == exit_code, err
        assert (
            f"continue with: python -m digitcnn.kfold --resume {out} --executor ray "
            f"--address {head}"
        ) in err
        assert "Traceback" not in err
    assert _free_cpus_after_driver(head) == 2.0  # its tasks ended with the driver

    resumed = _cli(
        "digitcnn.kfold",
        "--resume",
        str(out),
        "--quiet",
        "--executor",
        "ray",
        "--address",
        head,
        env=_cluster_env(),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(out.rglob("*.tmp"))
    for name, content in finished.items():  # only the missing folds were trained
        assert (out / "folds" / name).read_bytes() == content
    assert _metrics(out) == slow_reference
