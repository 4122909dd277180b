"""How close VL's finite-difference μ-gradient is to the exact one, by precision and step.

    python benchmarks/finite_difference_accuracy.py [--device cuda] [--emulate-tf32]

One VL-uniform step (σ = 0.05, a large σ, so that the regulariser's share of the gradient is
large) on three networks: an MLP, the small CNN and a BatchNorm ResNet-20 (width 16, 16x16
inputs). The reference is autograd's gradient in float64; every row is the whole μ- and
σ-gradient in another precision or path, as cosine similarity and relative error
‖g − g_ref‖/‖g_ref‖ against it. The last table varies the step length of the finite
difference around its rule, √ε of the forward's precision
(gradreg.curvature.finite_difference.step_size),
including the textbook √ε·(1 + ‖μ‖).

The finite difference runs its passes in true float32 (gradreg.curvature.finite_difference);
the path ``fd, flags`` runs them as torch's flags say (TF32 convolutions on NVIDIA GPUs, what
the path did before issue 29). `--emulate-tf32` rounds float32 convolutions as TF32 would on
any device (gradreg.curvature.precision.EmulatedTF32).
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack, contextmanager

import torch

import gradreg.curvature.finite_difference as fd
import gradreg.posteriors.variational_laplace as objective
from gradreg import posterior
from gradreg.curvature.precision import EmulatedTF32, tf32_convolutions
from gradreg.device import resolve_device
from gradreg.models import build_model

NETWORKS = {
    "mlp": ((64,), {"hidden": [128, 128]}),
    "cnn": ((3, 16, 16), {}),
    "resnet20": ((3, 16, 16), {"width": 16}),
}


def gradient(name, dtype, path, device, bf16=False, batch=64):
    shape, options = NETWORKS[name]
    torch.manual_seed(0)
    model = build_model(name, shape, 10, **options).to(device=device, dtype=dtype)
    flags = path == "fd, flags"
    grad = "finite_difference" if flags else path
    post = posterior(model, "vl-uniform", n_data=1000, noise_scale=0.05, regulariser_grad=grad)
    if flags:
        post.finite_difference = fd.Variant(precision="flags")
    torch.manual_seed(1)
    x = torch.randn(batch, *shape).to(device=device, dtype=dtype)
    y = torch.randint(0, 10, (batch,), device=device)
    generator = torch.Generator(device=device).manual_seed(3)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        terms = post.loss(x, y, generator=generator)
    terms.loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in post.model.parameters()]).double()


def compare(reference, other) -> tuple[float, float]:
    cosine = float(torch.nn.functional.cosine_similarity(reference, other, dim=0))
    return cosine, float((reference - other).norm() / reference.norm())


@contextmanager
def step_scaled(scale):
    """The step length √ε·scale (scale "mu": the textbook √ε·(1 + ‖μ‖))."""
    rule = fd.step_size
    original = fd.objective_gradient

    def scaled_gradient(model, names, params, score_gradient, variance, *rest):
        mu_norm = float(torch.cat([p.detach().reshape(-1) for p in params]).norm())
        factor = (1 + mu_norm) if scale == "mu" else scale

        def step_size(v_norm, epsilon, exponent=0.5):
            return rule(v_norm, epsilon, exponent) * factor

        fd.step_size = step_size
        try:
            return original(model, names, params, score_gradient, variance, *rest)
        finally:
            fd.step_size = rule

    objective.objective_gradient = scaled_gradient  # what VariationalLaplace calls
    try:
        yield
    finally:
        objective.objective_gradient = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument(
        "--no-tf32", action="store_true", help="float32 convolutions in float32, not TF32"
    )
    parser.add_argument(
        "--emulate-tf32", action="store_true", help="round float32 convolutions as TF32 would"
    )
    args = parser.parse_args()
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
    with ExitStack() as stack:
        if args.emulate_tf32:
            stack.enter_context(EmulatedTF32())
        tables(args)


def tables(args) -> None:
    device = resolve_device(args.device)
    names = [n for n in args.networks.split(",") if n]
    print(
        f"# {device}, torch {torch.__version__}, TF32 convolutions {tf32_convolutions()}, "
        f"TF32 emulated {args.emulate_tf32}; reference: float64"
    )
    print(f"{'network':<9} {'precision':<10} {'path':<18} {'cosine':>9} {'rel. error':>11}")
    for name in names:
        reference = gradient(name, torch.float64, "autograd", device)
        for label, dtype, bf16 in (
            ("float64", torch.float64, False),
            ("float32", torch.float32, False),
            ("bf16 amp", torch.float32, True),
        ):
            for path in ("autograd", "finite_difference", "fd, flags"):
                if dtype == torch.float64 and path != "finite_difference":
                    continue
                cosine, relative = compare(reference, gradient(name, dtype, path, device, bf16))
                print(f"{name:<9} {label:<10} {path:<18} {cosine:>9.6f} {relative:>11.2e}")
    print()
    print("# the finite difference's step length, as a multiple of √ε (the rule is 1)")
    print(f"{'network':<9} {'precision':<10} {'× √ε':>8} {'cosine':>9} {'rel. error':>11}")
    for name in names:
        reference = gradient(name, torch.float64, "autograd", device)
        for label, bf16 in (("float32", False), ("bf16 amp", True)):
            for scale in (0.1, 1, 10, "mu"):
                with step_scaled(scale):
                    other = gradient(name, torch.float32, "finite_difference", device, bf16)
                cosine, relative = compare(reference, other)
                shown = "1+‖μ‖" if scale == "mu" else f"{scale:g}"
                print(f"{name:<9} {label:<10} {shown:>8} {cosine:>9.6f} {relative:>11.2e}")


if __name__ == "__main__":
    main()
