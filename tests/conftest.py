"""Shared by several test groups: the fast training settings for models trained in tests."""
from workers.engine.training import TrainConfig

FAST = TrainConfig(epochs=3, batch_size=64, seed=0)
