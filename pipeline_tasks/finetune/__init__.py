"""Fine-tuning on the labels: linear probe, full fine-tune and the scratch baseline."""
