"""Training: losses, metrics, recipes and the training loop."""
