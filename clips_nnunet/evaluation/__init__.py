"""Metrics on arrays + spacing, evaluation and comparison reports and plots, and prediction from DICOM."""
