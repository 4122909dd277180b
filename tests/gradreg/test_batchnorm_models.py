"""How each Fisher estimator meets the BatchNorm ResNets."""

from __future__ import annotations

import pytest
import torch

from gradreg import VariationalLaplace, fisher_diagonal
from gradreg.models import build_model


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model("resnet20", (3, 8, 8), 4, width=2).double()


def test_sampled_trains_a_batchnorm_resnet(resnet):
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    vl = VariationalLaplace(resnet, n_data=100, variance="uniform", noise_scale=0.01).double()
    terms = vl.loss(x, y, generator=torch.Generator().manual_seed(0))
    terms.loss.backward()
    assert all(p.grad is not None for p in resnet.parameters())
    assert float(terms.sqgrad) > 0


def test_per_example_refuses_the_resnet_and_points_to_sampled(resnet):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"BatchNorm2d.*batch statistics.*fisher='sampled'"):
        VariationalLaplace(resnet, n_data=10, fisher="per_example").loss(x, torch.tensor([0, 1]))


def test_exact_on_the_resnet_is_the_coupled_fisher_that_sampled_estimates(resnet):
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = torch.cat([f.flatten() for f in fisher_diagonal(resnet, x, estimator="exact")])
    g = torch.Generator().manual_seed(2)
    draws = torch.stack(
        [
            torch.cat(
                [f.flatten() for f in fisher_diagonal(resnet, x, estimator="sampled", generator=g)]
            )
            for _ in range(400)
        ]
    )
    # Aggregate check (many weights): the sampled mean of Σ_λ F_λ sits within 5 standard errors.
    totals = draws.sum(1)
    stderr = totals.std() / len(totals) ** 0.5
    assert abs(float(totals.mean() - exact.sum())) < 5 * float(stderr)
