"""The MLflow model registry: models as MLflow logs them, registration, the promotion gate and its
alias moves, the champion re-scored, and prediction with a registered model.
"""
