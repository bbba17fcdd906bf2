"""Scoring a classifier on the held-out test split: metrics, plots, sweeps."""
