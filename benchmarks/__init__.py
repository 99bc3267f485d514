"""digitcnn against the hand-written loop, back to back (``python -m benchmarks``).

Every figure is a whole process (imports, data loading, training, evaluation, writing),
timed from outside, the two commands alternating A B A B so that drift in the machine's
speed hits both; the ratio is taken pair by pair and its median reported, beside the ratio
of the two programs' own in-process training times. Peak memory is given as the largest
single process's peak RSS (``wait4``) and as the sampled peak PSS summed over the process
and its fold workers. Cases:

* ``uci``: pipeline S5 on UCI optdigits, 4 folds x 10 epochs, against
  ``../shared/bench/reference_loop.py`` (the yardstick): digitcnn's default command (plots
  and report on, run at a terminal as a person runs it) and the same with ``--no-plots``;
* ``startup``: what a run costs beyond its training: ``--help``, ``import digitcnn``,
  ``import digitcnn.kfold`` against ``import torch``, and S5's default command at a terminal
  (report drawn in the background), with ``--no-plots``, and in a script (no terminal: the
  command waits for its report), each as whole process minus the run's own ``wall_s``, with
  the time until ``report.html`` is in place;
* ``mnist``: MNIST scale, Fashion-MNIST's 60,000 training images (Debian's
  ``dataset-fashion-mnist``), S2's model, 4 folds x 1 epoch (``--mnist-epochs``), against
  :func:`~benchmarks.inprocess.plain_loop`, the same work written as a tutorial would
  (DataLoader, one fold after another);
* ``scaling``: digitcnn's wall time against the number of folds and the number of rows;
* ``augment``: the cost of S1's augmentation in an epoch of S1's model (in one process);
* ``choices``: one UCI S5 fold under each CPU choice (precision, memory format, threads),
  one change at a time (in one process);
* ``skorch``: scikit-learn's ``cross_val_score`` (4 shuffled folds) of
  :class:`digitcnn.DigitClassifier` against skorch's ``NeuralNetClassifier`` on the same
  model (S5's), folds, epochs, batch size, optimizer, schedule and device, UCI
  (:func:`~benchmarks.inprocess.sklearn_side`; skorch is needed for this case only);
* ``ray``: S2's optimizer sweep (``experiments/s2_optimizers.toml``, 6 cells x 4 folds, with
  ``--epochs 1 --limit 2000``) through ``--executor ray`` on a local Ray instance against the
  local executor: Ray's overhead as a ratio, and whether ``sweep.csv`` (accuracies, t, p) and
  ``comparisons.csv`` came out equal;
* ``track``: what ``--track tensorboard`` and ``--track mlflow`` (a fresh SQLite store) add to
  S5's default command, at a terminal and in a script, the three variants alternating;
* ``checkpoint``: what epoch checkpoints (``--checkpoint-every 1``, the default) add to S5's
  training time and whole process against ``--checkpoint-every 0``;
* ``report``: what the report (seven SVG figures and ``report.html``) costs a script: the
  README's command (``--dataset uci --folds 4``) with plots on and with ``--no-plots``, both
  in a script (each waits for its whole report), against the reference loop.

``uci`` and ``mnist`` also run digitcnn's side twice in one fresh process and report the second
run, the steady state after the one-time warm-up (set-up, training and evaluation seconds from
its metrics), beside the whole process. ``--device cuda`` runs every case on the GPU.

Writes ``bench.json`` and ``scaling.png`` to ``--out`` (default ``results/bench``).

"At a terminal" means the command's stdout is a pseudo-terminal, exactly what a person's
shell gives it; digitcnn then draws its report in a background process after
``metrics.json`` (see :mod:`digitcnn.reporting.report`). The benchmark waits for that process
to finish (``report.log`` gone) before the next command starts, so no run pays for the one before.

Modules: :mod:`~benchmarks.measure` (timing and memory of a process,
:func:`~benchmarks.measure.compare`), :mod:`~benchmarks.processes` (the cases timed as
whole processes), :mod:`~benchmarks.inprocess` (the yardsticks written in Python and the
cases timed in-process; it imports torch), :mod:`~benchmarks.plots` (``scaling.png``) and
``__main__`` (the command line, ``bench.json`` and the printed summary).
"""
