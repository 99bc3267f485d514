"""A worker crash for the Ray tests, installed in each Ray worker process as it starts
(``runtime_env={"worker_process_setup_hook": "ray_faults.install"}``), so that the library
carries no test-only code.

Once installed, the first fold task to find the file named by ``$DIGITCNN_TEST_KILL_WORKER``
deletes it and kills its own worker process, as a crash would; the others run as usual.
"""

import os

KILL_WORKER_MARKER = "DIGITCNN_TEST_KILL_WORKER"


def install() -> None:
    from digitcnn.cv import distributed

    real_run_fold = distributed.run_fold

    def run_fold_or_die(*args, **kwargs):
        marker = os.environ.get(KILL_WORKER_MARKER)
        if marker:
            try:
                os.remove(marker)  # only one task wins the marker
            except FileNotFoundError:
                pass
            else:
                os._exit(1)
        return real_run_fold(*args, **kwargs)

    distributed.run_fold = run_fold_or_die
