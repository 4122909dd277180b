"""Every way of taking VL's regulariser gradient: its error, time, memory and FLOPs (issue 29).

    python benchmarks/regulariser_grad_variants.py --device cpu --emulate-tf32 \\
        --models cnn,resnet20 --batch-sizes 128                  # TF32's rounding, on a CPU
    python benchmarks/regulariser_grad_variants.py --device cuda \\
        --models resnet20,resnet18 --batch-sizes 128,512        # on an NVIDIA GPU

One VL-uniform step (sampled Fisher, σ = --noise-scale, kl_weight 0) on CIFAR-shaped
synthetic tensors, each variant's μ-gradient against autograd's in float64 on the same
batch and label draws, all in one run:

- ``total``: the whole μ-gradient's relative error ‖g − g_ref‖/‖g_ref‖;
- ``regulariser``: the same for the regulariser's part, the whole gradient less the NLL's
  gradient at μ taken in the arithmetic in which the variant takes its NLL's gradient (so a
  finite difference's shift of the NLL's gradient to μ + h·v counts against it, and TF32's
  rounding of the NLL's gradient, which MAP's step has too, does not);
- ms/step, the median of --steps SGD steps after --warmup, with the ratio to MAP's in the
  same run and arithmetic (torch's flags); peak memory on CUDA (MiB, and × MAP's); GFLOPs of
  one loss and its backward (torch's FlopCounterMode: convolutions and matrix products, the
  arithmetic of a step that does not depend on the device), and × MAP's.

Torch's TF32 flags are left as they are (on NVIDIA: TF32 convolutions, float32 matrix
products), as a user's default run has them; `--emulate-tf32` rounds float32 convolutions'
inputs to TF32 on any device as a GPU would with those flags
(gradreg.curvature.precision.EmulatedTF32). The variants
(gradreg.curvature.finite_difference.Variant): the arithmetic ``flags`` is torch's,
``float32`` both passes with TF32 off, ``perturbed`` the perturbed pass only.
"""

from __future__ import annotations

import argparse
import json
from contextlib import AbstractContextManager, ExitStack, nullcontext

import torch
import torch.nn.functional as F
from _step_timer import time_steps
from torch.utils.flop_counter import FlopCounterMode

from gradreg.curvature.finite_difference import Variant
from gradreg.curvature.precision import EmulatedTF32, tf32, tf32_convolutions, tf32_matmuls
from gradreg.device import resolve_device
from gradreg.models import build_model
from gradreg.posteriors.baselines import MAP
from gradreg.posteriors.variational_laplace import VariationalLaplace

N_DATA = 50_000
# label: (regulariser_grad, finite-difference variant, the whole step with TF32 off)
VARIANTS: dict[str, tuple[str, Variant | None, bool]] = {
    "autograd": ("autograd", None, False),
    "autograd fp32": ("autograd", None, True),
    "forward fp32": ("finite_difference", Variant(), False),
    "forward flags": ("finite_difference", Variant(precision="flags"), False),
    "forward perturbed-fp32": ("finite_difference", Variant(precision="perturbed"), False),
    "central flags": ("finite_difference", Variant("central", precision="flags"), False),
    "central fp32": ("finite_difference", Variant("central"), False),
    "method-scale flags": (
        "finite_difference",
        Variant(step="method_scale", precision="flags"),
        False,
    ),
    "method-scale fp32": ("finite_difference", Variant(step="method_scale"), False),
    "fwd-over-rev flags": (
        "finite_difference",
        Variant("forward_over_reverse", precision="flags"),
        False,
    ),
}
MODELS = {"cnn": {}, "resnet20": {"width": 16}, "resnet18": {"width": 64}}


def build(args, name: str, label: str | None, device, dtype=torch.float32):
    """The posterior of a row (MAP where ``label`` is None), on the same initial weights."""
    torch.manual_seed(0)
    shape = (3, args.image_size, args.image_size)
    options = MODELS[name] if args.width is None else {**MODELS[name], "width": args.width}
    model = build_model(name, shape, 10, **options).to(device=device, dtype=dtype)
    if label is None:
        return MAP(model, n_data=N_DATA)
    path, variant, _ = VARIANTS[label]
    post = VariationalLaplace(
        model,
        n_data=N_DATA,
        variance="uniform",
        noise_scale=args.noise_scale,
        fisher="sampled",
        regulariser_grad=path,
        kl_weight=0.0,
    )
    if variant is not None:
        post.finite_difference = variant
    return post.to(device)


def arithmetic(label: str | None) -> AbstractContextManager[None]:
    """The whole step's arithmetic: TF32 off for the rows that ask for it, else the flags."""
    return tf32(False) if label is not None and VARIANTS[label][2] else nullcontext()


def nll_arithmetic(label: str) -> AbstractContextManager[None]:
    """The arithmetic in which the row takes its NLL's gradient."""
    _, variant, off = VARIANTS[label]
    if variant is None:
        return tf32(False) if off else nullcontext()
    return variant.perturbed()


def flat_grad(module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()]).double()


def gradients(args, name, label, batch, device, dtype=torch.float32):
    """(whole μ-gradient, the regulariser's part, GFLOPs of the loss and its backward) of one
    step of the row's posterior (MAP's where ``label`` is None: its gradient is the NLL's)."""
    x, y = batch
    post = build(args, name, label, device, dtype)
    generator = torch.Generator(device=device).manual_seed(3)
    counter = FlopCounterMode(display=False)
    with arithmetic(label), counter:
        post.loss(x.to(dtype), y, generator=generator).loss.backward()
    whole = flat_grad(post.model)
    if label is None:
        return whole, None, counter.get_total_flops() / 1e9
    post.model.zero_grad(set_to_none=True)
    with nll_arithmetic(label):
        F.cross_entropy(post.model(x.to(dtype)), y).backward()
    return whole, whole - flat_grad(post.model), counter.get_total_flops() / 1e9


def relative(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other).norm() / reference.norm())


def cost(args, name, label, batch, device) -> dict:
    """ms/step (median) and peak MiB on CUDA of the row's SGD steps."""
    x, y = batch
    post = build(args, name, label, device)
    optimiser = torch.optim.SGD(post.param_groups(lr=0.01), momentum=0.9)
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        with arithmetic(label):
            loss = post.loss(x, y, generator=generator).loss
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
        optimiser.step()

    for _ in range(args.warmup):
        step()
    ms_per_step, peak = time_steps(step, args.steps, device)
    return {"ms_per_step": ms_per_step, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--models", default="resnet20", help=f"comma-separated: {', '.join(MODELS)}"
    )
    parser.add_argument("--batch-sizes", default="128", help="comma-separated, e.g. 128,512")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, help="the ResNets' width (default 16 and 64)")
    parser.add_argument("--noise-scale", type=float, default=0.05)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated labels")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-timing", action="store_true", help="errors and FLOPs only")
    parser.add_argument(
        "--emulate-tf32", action="store_true", help="round float32 convolutions as TF32 would"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    labels = [label for label in args.variants.split(",") if label]
    unknown = sorted(set(labels) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; accepted: {', '.join(VARIANTS)}")
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    print(
        f"# {device}, torch {torch.__version__}, TF32 convolutions {tf32_convolutions()}, "
        f"TF32 matmuls {tf32_matmuls()}, TF32 emulated {args.emulate_tf32}, "
        f"σ {args.noise_scale}, {args.image_size}x{args.image_size} inputs; "
        "reference: autograd in float64"
    )
    print(
        f"{'model':<9} {'batch':>5} {'variant':<23} {'total':>9} {'regul.':>9} "
        f"{'ms/step':>9} {'× MAP':>6} {'peak MiB':>9} {'× MAP':>6} {'GFLOP':>8} {'× MAP':>6}"
    )
    rows = []
    with ExitStack() as stack:
        if args.emulate_tf32:
            stack.enter_context(EmulatedTF32())
        for name in [n for n in args.models.split(",") if n]:
            for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
                rows += measure_all(args, name, batch_size, labels, device)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


def measure_all(args, name: str, batch_size: int, labels: list[str], device) -> list[dict]:
    torch.manual_seed(1)
    x = torch.randn(batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    whole_ref, regulariser_ref, _ = gradients(args, name, "autograd", (x, y), device, torch.float64)
    rows: list[dict] = []
    for label in [None, *labels]:
        row = {"model": name, "batch_size": batch_size, "variant": label or "map"}
        whole, regulariser, row["gflops"] = gradients(args, name, label, (x, y), device)
        if regulariser is not None:
            row["total_error"] = relative(whole_ref, whole)
            row["regulariser_error"] = relative(regulariser_ref, regulariser)
        if not args.no_timing:
            row.update(cost(args, name, label, (x, y), device))
        base = rows[0] if rows else row
        for key in ("ms_per_step", "peak_mib", "gflops"):
            value, unit = row.get(key), base.get(key)
            row[f"{key}_ratio"] = value / unit if value is not None and unit else None
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    def cell(key: str, spec: str, width: int) -> str:
        value = row.get(key)
        return f"{value:>{width}{spec}}" if value is not None else f"{'-':>{width}}"

    return (
        f"{row['model']:<9} {row['batch_size']:>5} {row['variant']:<23} "
        f"{cell('total_error', '.2e', 9)} {cell('regulariser_error', '.2e', 9)} "
        f"{cell('ms_per_step', '.1f', 9)} {cell('ms_per_step_ratio', '.2f', 6)} "
        f"{cell('peak_mib', '.0f', 9)} {cell('peak_mib_ratio', '.2f', 6)} "
        f"{cell('gflops', '.2f', 8)} {cell('gflops_ratio', '.2f', 6)}"
    )


if __name__ == "__main__":
    main()
