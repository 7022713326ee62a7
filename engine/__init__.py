"""The training side of kdtui. Only worker/train/data/models/distill import torch."""
