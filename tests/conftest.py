"""Suite-wide settings."""

import os

import pytest
import torch

# The suite's models are tiny: a second intra-op thread only adds contention on a 2-core box
# (a 4×4 BatchNorm step went from 1.5 ms to 40 ms with both threads and another process busy).
torch.set_num_threads(1)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every test that drives sweeps in-process (start-ups cost seconds)."""
    import ray

    # One logical GPU, as a worker node started with --num-gpus=1 declares on a CPU machine.
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
