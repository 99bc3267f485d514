"""Test-only: every process started with this folder on PYTHONPATH appends a line
``<fold> <epoch>`` to ``$DIGITCNN_EPOCH_COUNTER`` for every epoch a fold finishes, so that a
test can count the epochs trained across a run's interruptions (fold processes, forked,
inherit the patch)."""

import os

if os.environ.get("DIGITCNN_EPOCH_COUNTER"):
    from digitcnn.training import loop

    _original = loop.FitLoop.run_single_epoch

    def _counted(self, epoch):
        trained = _original(self, epoch)
        with open(os.environ["DIGITCNN_EPOCH_COUNTER"], "a", encoding="utf-8") as counter:
            counter.write("".join(f"{self.fold_numbers[i]} {epoch}\n" for i in trained))
        return trained

    loop.FitLoop.run_single_epoch = _counted
