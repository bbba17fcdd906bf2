"""The stages as tracked steps: one runner per stage, what they read and write under `artifacts/`,
and the lineage that keeps a run's outputs together.
"""
