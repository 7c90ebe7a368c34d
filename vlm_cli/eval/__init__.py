"""Evaluation: QA files, answer normalisation and scoring."""
