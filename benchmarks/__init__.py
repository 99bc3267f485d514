"""digitcnn against the hand-written loop, back to back (``python -m benchmarks``).

Every figure is a whole process, timed from outside, digitcnn's command and its yardstick
alternating so that drift in the machine's speed hits both; ratios are taken pair by pair.
The cases and how to read them are on the documentation's performance page
(docs/performance.md). Modules: :mod:`~benchmarks.measure` (timing and memory of a process),
:mod:`~benchmarks.processes` (the cases timed as whole processes), :mod:`~benchmarks.inprocess`
(the yardsticks written in Python and the cases timed in-process), :mod:`~benchmarks.plots`
(``scaling.png``) and ``__main__`` (the command line, ``bench.json``, the summary).
"""
