"""Where a trial runs: its Ray node and GPUs, and the device it trains on.

The rule for a trial that reserves a GPU (``resources.gpu > 0``) on a node whose process sees
no CUDA device: with ``device: auto`` (the default) it trains on the CPU and its run says so
(``gradreg.device: cpu`` and a ``gradreg.device_warning`` naming the node), so a CPU-only
cluster (or a test harness with logical GPUs) stays usable and the mismatch is visible; with
``device: cuda`` it fails, naming the node. Runs in the trial's process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
import torch

from gradreg.device import resolve_device

NODE_ID_TAG = "gradreg.node_id"
NODE_IP_TAG = "gradreg.node_ip"
GPU_IDS_TAG = "gradreg.gpu_ids"
DEVICE_TAG = "gradreg.device"
DEVICE_WARNING_TAG = "gradreg.device_warning"


@dataclass(frozen=True)
class Placement:
    node_id: str
    node_ip: str
    gpu_ids: tuple[str, ...]  # the GPUs Ray assigned to the trial

    @classmethod
    def here(cls) -> Placement:
        context = ray.get_runtime_context()
        gpus = context.get_accelerator_ids().get("GPU", [])
        return cls(context.get_node_id(), ray.util.get_node_ip_address(), tuple(map(str, gpus)))

    def tags(self) -> dict[str, str]:
        return {
            NODE_ID_TAG: self.node_id,
            NODE_IP_TAG: self.node_ip,
            GPU_IDS_TAG: ",".join(self.gpu_ids) or "none",
        }

    def describe(self) -> str:
        gpus = ", ".join(self.gpu_ids) or "none"
        return f"node {self.node_ip} (Ray node {self.node_id[:12]}, GPU ids {gpus})"


def trial_device(name: str, gpu: float, placement: Placement) -> tuple[torch.device, str | None]:
    """The device a trial trains on (config ``device`` ``name``, ``gpu`` reserved per trial),
    and a warning when it reserved a GPU but trains on the CPU."""
    wants_cuda = name.startswith("cuda")
    if wants_cuda and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r}: {placement.describe()} shows this trial no CUDA device "
            f"(resources.gpu={gpu}); check the node's driver and CUDA_VISIBLE_DEVICES"
        )
    device = resolve_device(name)
    if gpu > 0 and device.type != "cuda":
        return device, (
            f"resources.gpu={gpu}, but {placement.describe()} shows this trial no CUDA device: "
            f"it trained on {device} (device: {name}; give device: cuda to fail instead)"
        )
    return device, None


def reported(placement: Placement, device: torch.device) -> dict[str, Any]:
    """What the trial reports to Tune with every result, for the store and the API."""
    return {
        "node_id": placement.node_id,
        "node_ip": placement.node_ip,
        "gpu_ids": list(placement.gpu_ids),
        "device": str(device),
    }


def device_tags(device: torch.device, warning: str | None) -> dict[str, str]:
    return {DEVICE_TAG: str(device), **({DEVICE_WARNING_TAG: warning} if warning else {})}
