"""Training-step cost on a GPU: ResNet-18 (CIFAR shape), every method, bf16 on and off.

    python benchmarks/gpu_step_cost.py --batch-sizes 128,512 --compile   # on a CUDA machine
    python benchmarks/gpu_step_cost.py --device cpu --model resnet20 --width 4 \\
        --batch-sizes 8 --steps 2 --warmup 1                # a smoke run anywhere

Synthetic tensors (no download). Prints ms/step, peak GPU memory and the ratio to (eager) MAP
with the same precision and batch, all measured in one run. VL's sampled rows come with each
way of computing the regulariser's μ-gradient (`autograd`, `finite_difference`, whose passes
run in true float32; benchmarks/regulariser_grad_variants.py measures the other ways); with
`--compile`, MAP and MC-VI also run with the model under torch.compile, the methods whose
`compile=true` gradreg accepts (at the first batch size: each compiled row pays its
compilation once, in its warm-up).
`per_example` cannot run on BatchNorm networks (the batch statistics couple the examples) and
is reported as refused; `exact` enumerates classes with one backward per (example, class) on
such networks and is left out unless asked for.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch
from _step_timer import time_steps

from gradreg.curvature.precision import tf32_convolutions
from gradreg.device import resolve_device
from gradreg.models import build_model
from gradreg.posteriors.baselines import MAP, SamplingVI
from gradreg.posteriors.variational_laplace import VariationalLaplace

N_DATA = 50_000


def variants(include_exact: bool, compiled: bool) -> list[tuple[str, str, str, dict, bool]]:
    """(method, fisher, gradient path, posterior options, compile) for every row."""
    rows = [("map", "-", "-", {}, False)]
    for variance in ("uniform", "diagonal"):
        for grad in ("autograd", "finite_difference"):
            options = {"variance": variance, "fisher": "sampled", "regulariser_grad": grad}
            rows.append((f"vl-{variance}", "sampled", grad, options, False))
        for fisher in ["per_example"] + (["exact"] if include_exact else []):
            options = {"variance": variance, "fisher": fisher, "regulariser_grad": "autograd"}
            rows.append((f"vl-{variance}", fisher, "autograd", options, False))
    rows.append(("mcvi", "K=1", "-", {}, False))
    if compiled:  # what compile=true accepts (gradreg.methods: VL and Laplace refuse it)
        rows += [("map", "-", "-", {}, True), ("mcvi", "K=1", "-", {}, True)]
    return rows


def build(method: str, options: dict, model: torch.nn.Module):
    if method == "map":
        return MAP(model, n_data=N_DATA)
    if method == "mcvi":
        return SamplingVI(model, n_data=N_DATA, mc_samples=1)
    noise = {"noise_scale": 1e-3} if options["variance"] == "uniform" else {}
    return VariationalLaplace(model, n_data=N_DATA, **options, **noise)


def measure(
    args,
    method: str,
    options: dict,
    bf16: bool,
    device: torch.device,
    batch_size: int,
    compiled: bool = False,
) -> dict:
    torch.manual_seed(0)
    model = build_model(args.model, (3, 32, 32), 10, width=args.width).to(device)
    if compiled:
        model.compile()
    posterior = build(method, options, model).to(device)
    optimiser = torch.optim.SGD(posterior.param_groups(lr=0.01), momentum=0.9)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step() -> None:
        with autocast:
            loss = posterior.loss(x, y, generator=generator).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    started = time.perf_counter()
    try:
        for _ in range(args.warmup):
            step()
    except ValueError as refused:
        return {"ms_per_step": None, "peak_mib": None, "note": str(refused).split(":")[0]}
    except RuntimeError as failed:  # torch.compile's refusals are RuntimeErrors
        if not compiled:
            raise
        return {"ms_per_step": None, "peak_mib": None, "note": str(failed).splitlines()[0]}
    warmup_s = time.perf_counter() - started
    ms_per_step, peak = time_steps(step, args.steps, device)
    note = f"warm-up (compile) {warmup_s:.0f} s" if compiled else ""
    return {"ms_per_step": ms_per_step, "peak_mib": peak, "note": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="resnet18", choices=["resnet18", "resnet20"])
    parser.add_argument("--width", type=int, default=None, help="default: the model's own")
    parser.add_argument("--batch-sizes", default="128", help="comma-separated, e.g. 128,512")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--include-exact", action="store_true")
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows")
    parser.add_argument(
        "--no-tf32", action="store_true", help="float32 convolutions in float32, not TF32"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
    if args.width is None:
        args.width = 64 if args.model == "resnet18" else 16
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    tf32 = tf32_convolutions()
    print(f"# {args.model} (width {args.width}), {device}, TF32 convolutions {tf32}")
    header = f"{'batch':>5} {'method':<12} {'fisher':<12} {'grad':<18} {'compile':<7} {'bf16':<5}"
    print(f"{header} {'ms/step':>9} {'× MAP':>7} {'peak MiB':>9}")
    rows = []
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    for batch_size in batch_sizes:
        for bf16 in (False, True):
            base = None
            for method, fisher, grad, options, compiled in variants(
                args.include_exact, args.compile and batch_size == batch_sizes[0]
            ):
                row = {
                    "batch_size": batch_size,
                    "method": method,
                    "fisher": fisher,
                    "grad": grad,
                    "compile": compiled,
                    "bf16": bf16,
                    **measure(args, method, options, bf16, device, batch_size, compiled),
                }
                ms = row["ms_per_step"]
                if method == "map" and not compiled:
                    base = ms
                row["ratio_to_map"] = ms / base if ms is not None and base else None
                rows.append(row)
                cells = [
                    f"{ms:>9.2f}" if ms is not None else f"{'refused':>9}",
                    f"{row['ratio_to_map']:>7.2f}" if row["ratio_to_map"] else f"{'-':>7}",
                    f"{row['peak_mib']:>9.0f}" if row["peak_mib"] is not None else f"{'-':>9}",
                ]
                print(
                    f"{batch_size:>5} {method:<12} {fisher:<12} {grad:<18} {compiled!s:<7} "
                    f"{bf16!s:<5} {' '.join(cells)} {row['note']}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
