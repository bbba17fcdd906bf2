"""Prefect: the stage graph, the flow that runs it, its deployment, the project lock and what a run
shows in the Prefect UI.
"""
