"""A worker crash for the Ray tests, installed in each Ray worker process as it starts
(``runtime_env={"worker_process_setup_hook": "ray_faults.install"}``), so that the library
carries no test-only code.

Once installed, the first fold task to find the file named by ``$DIGITCNN_TEST_KILL_WORKER``
deletes it and kills its own worker process, as a crash would; the others run as usual.
"""

import os

KILL_WORKER_MARKER = "DIGITCNN_TEST_KILL_WORKER"
# the first fold task to find this file, once it has written an epoch checkpoint, deletes it
# and kills its worker; a task that continues from a checkpoint appends its epoch to
# $DIGITCNN_TEST_RESUMED
KILL_AFTER_CHECKPOINT = "DIGITCNN_TEST_KILL_AFTER_CHECKPOINT"
RESUMED = "DIGITCNN_TEST_RESUMED"


def _take(marker):
    """True for the one process that deletes the file named ``marker`` (if any)."""
    if not marker:
        return False
    try:
        os.remove(marker)
    except FileNotFoundError:
        return False
    return True


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
    _install_checkpoint_faults()


def _install_checkpoint_faults() -> None:
    from digitcnn.runstore.checkpoints import EpochCheckpoints

    real_save, real_restore = EpochCheckpoints.save, EpochCheckpoints.restore

    def save_then_die(self, state, epoch):
        real_save(self, state, epoch)
        if _take(os.environ.get(KILL_AFTER_CHECKPOINT)):
            os._exit(1)

    def restore_and_say(self, load):
        epoch = real_restore(self, load)
        if epoch is not None and os.environ.get(RESUMED):
            with open(os.environ[RESUMED], "a", encoding="utf-8") as said:
                said.write(f"{self.name} {epoch}\n")
        return epoch

    EpochCheckpoints.save, EpochCheckpoints.restore = save_then_die, restore_and_say
