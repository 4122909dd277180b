"""Cost of one training step: MAP against every VL variant, measured in the same run.

    python benchmarks/step_cost.py [--batch-size 128] [--steps 40] [--repeats 7]

Prints ms/step (median over repeats) and the ratio to the MAP step of the same model, timed
round-robin in the same run so that load on the machine affects both alike.
MAP here is the same network trained on NLL + weight decay 1/(N s²)·½‖μ‖² with Adam.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gradreg import VariationalLaplace
from gradreg.data import load_dataset
from gradreg.models import build_model

# (variance family, Fisher estimator, how the regulariser's μ-gradient is computed)
VARIANTS = [
    (variance, fisher, grad)
    for variance in ("uniform", "diagonal")
    for fisher, grad in (
        ("sampled", "autograd"),
        ("sampled", "finite_difference"),
        ("per_example", "autograd"),
        ("exact", "autograd"),
    )
]
MODELS = {"mlp": {"hidden": [128, 128]}, "cnn": {}}


def time_interleaved(
    steps: dict[str, Callable[[], None]], n: int, repeats: int
) -> dict[str, list[float]]:
    """ms/step of every variant, measured round-robin so that drift hits all of them alike."""
    for step in steps.values():
        for _ in range(5):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            for _ in range(n):
                step()
            samples[name].append((time.perf_counter() - started) * 1000 / n)
    return samples


def map_step(model, x, y, n_data: int, prior_variance: float) -> Callable[[], None]:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        decay = sum(p.square().sum() for p in model.parameters()) / (2 * prior_variance * n_data)
        loss = F.cross_entropy(model(x), y) + decay
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    return step


def vl_step(model, x, y, n_data: int, variance: str, fisher: str, grad: str) -> Callable[[], None]:
    posterior = VariationalLaplace(
        model,
        n_data=n_data,
        variance=variance,
        fisher=fisher,
        noise_scale=0.01 if variance == "uniform" else None,
        regulariser_grad=grad,
    )
    optimiser = torch.optim.Adam(posterior.param_groups(lr=1e-3))
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        loss = posterior.loss(x, y, generator=generator).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--no-exact", action="store_true", help="leave out the exact estimator (slow, a reference)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("digits")
    x, y = data.x_train[: args.batch_size], data.y_train[: args.batch_size]
    print(
        f"# digits, batch {args.batch_size}, torch {torch.__version__}, "
        f"{args.threads} threads, {platform.processor() or platform.machine()}"
    )
    print(f"{'model':<5} {'method':<12} {'fisher':<12} {'grad':<18} {'ms/step':>9} {'× MAP':>7}")
    for name, options in MODELS.items():

        def fresh(name=name, options=options):
            torch.manual_seed(0)
            return build_model(name, data.input_shape, data.n_classes, **options)

        steps = {("map", "-", "-"): map_step(fresh(), x, y, data.n_train, 1.0)}
        for variance, fisher, grad in VARIANTS:
            if fisher == "exact" and args.no_exact:
                continue
            steps[(f"vl-{variance}", fisher, grad)] = vl_step(
                fresh(), x, y, data.n_train, variance, fisher, grad
            )
        samples = time_interleaved(steps, args.steps, args.repeats)
        base = samples[("map", "-", "-")]
        for (method, fisher, grad), times in samples.items():
            # The ratio is the median of per-round ratios: each round times MAP and VL together.
            ratio = statistics.median(t / b for t, b in zip(times, base, strict=True))
            ms = statistics.median(times)
            print(f"{name:<5} {method:<12} {fisher:<12} {grad:<18} {ms:>9.3f} {ratio:>7.2f}")


if __name__ == "__main__":
    main()
