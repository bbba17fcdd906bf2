"""Where runs and data versions are recorded: MLflow runs and their tags, DVC, and the project root
both resolve against.
"""
