"""Cross-validation: splits, the K-fold runner and resume, and the executors that run folds
in sequence, in fold processes, fold-parallel, or as Ray tasks."""
