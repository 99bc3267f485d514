"""The command layer: one module per command line (``python -m digitcnn.kfold`` runs
:mod:`digitcnn.commands.kfold`), over the Python API, and the flow they share
(:mod:`~digitcnn.commands._session`: claim the run folder, handle signals, run, write, print
the resume hint; :mod:`~digitcnn.commands._flags`: the shared flags). No library module imports
this package. Its modules import torch only once a run starts, so ``--help`` answers at once.
"""
