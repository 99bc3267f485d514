"""Cross-validation: ``splits`` (the folds), ``folds`` (one fold's data, model and training),
``executors`` (folds in turn, in fold processes or fold-parallel), ``distributed`` (folds as
Ray tasks), ``runner`` (run_kfold: plan, train, collect, resume) and ``command`` (a CLI's run)."""
