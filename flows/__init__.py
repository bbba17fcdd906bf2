"""The wiring around the framework-free core (`pipeline_tasks`): the command line, Prefect
orchestration, the stage runners, MLflow tracking and the model registry. No training math lives
here.
"""
