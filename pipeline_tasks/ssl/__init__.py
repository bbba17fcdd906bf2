"""Self-supervised pretraining: views, losses, methods, the trainer, checkpoints, distributed
state, monitors and optimisers."""
