"""Suite-wide settings."""

import os

import torch

# The suite's models are tiny: a second intra-op thread only adds contention on a 2-core box
# (a 4×4 BatchNorm step went from 1.5 ms to 40 ms with both threads and another process busy).
torch.set_num_threads(1)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
