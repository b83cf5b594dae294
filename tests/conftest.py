"""Shared by several test groups: the fast training settings for models trained in tests."""
from workers.engine.training import TrainConfig

FAST = TrainConfig(epochs=3, batch_size=64, seed=0)


def pytest_unconfigure(config):
    """Stop the throwaway PostgreSQL and Redis the session started, if any (never others)."""
    from tests.servers import stop_started

    stop_started()
