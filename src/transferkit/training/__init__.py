"""Training: the stages (head, then fine-tuning), their schedules and callbacks, checkpoints, the activation cache."""
