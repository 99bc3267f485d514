"""Reporting: the run folder, evaluation scores, plots and report.html."""
