"""Training: one loop for every objective (pretraining and fine-tuning), its config, schedule and checkpoints."""
