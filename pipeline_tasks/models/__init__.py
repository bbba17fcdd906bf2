"""Encoders, starting weights, heads, and saving, loading and running a classifier."""
