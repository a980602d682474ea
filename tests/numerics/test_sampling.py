"""Samplers: every density integrates to 1 (a quadrature independent of the sampler), and a batch of at
least the population without replacement is the population."""

from __future__ import annotations

import math

import pytest
import torch

from neuralsvd.numerics import quadrature, sampling


def _line(edges: list[float]) -> quadrature.Quadrature:
    t, w = quadrature.gauss_legendre(edges, 24)
    return quadrature.Quadrature(t.unsqueeze(1), w)


CASES = {
    "Gaussian-1d": (lambda: sampling.Gaussian(1, 1.5, mean=0.3), lambda: quadrature.box([15.0], 16, 16)),
    "Gaussian-2d-per-axis": (lambda: sampling.Gaussian(2, [1.0, 2.0], mean=[0.5, -1.0]),
                             lambda: quadrature.box([12.0, 24.0], 12, 16)),
    "RadialExponential-2d": (lambda: sampling.RadialExponential(2, 1.5),
                             lambda: quadrature.polar([0, 2, 8, 30, 90], 24, 16)),
    "RadialExponential-1d": (lambda: sampling.RadialExponential(1, 0.7), lambda: _line([-40, -10, -2, 0, 2, 10, 40])),
    "TruncatedGaussian-2d": (lambda: sampling.TruncatedGaussian(2, 1.0, 1.5), lambda: quadrature.box([1.5, 1.5], 8, 16)),
    "UniformBox-2d": (lambda: sampling.UniformBox(2, 2.0), lambda: quadrature.box([2.0, 2.0], 2, 4)),
    "Mixture-2d": (lambda: sampling.Mixture([sampling.Gaussian(2, 0.5), sampling.RadialExponential(2, 2.0)], [0.3, 0.7]),
                   lambda: quadrature.polar([0, 1, 4, 16, 60, 120], 24, 32)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_density_integrates_to_one(name):
    make, rule = CASES[name]
    sampler, quad = make(), rule()
    mass = (quad.weights * sampler.log_prob(quad.points.to(torch.float64)).exp().to(torch.float64)).sum()
    assert float(mass) == pytest.approx(1.0, abs=1e-6)


def test_index_density_and_population():
    index = sampling.Index(7)
    assert float(index.log_prob(torch.arange(7)).exp().sum()) == pytest.approx(1.0, abs=1e-12)
    gen = torch.Generator().manual_seed(0)
    assert sorted(index.sample(7, gen).tolist()) == list(range(7)) and index.is_population(7)
    assert sorted(index.sample(10, gen).tolist()) == list(range(7)) and index.is_population(10)
    assert not index.is_population(6) and len(set(index.sample(6, gen).tolist())) == 6
    assert not sampling.Index(7, replacement=True).is_population(100)
    assert not sampling.Gaussian(1).is_population(10**6)


def test_log_prob_matches_closed_forms():
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0]], dtype=torch.float64)
    expected = -0.5 * (x**2).sum(1) / 4 - math.log(2 * math.pi * 4)
    torch.testing.assert_close(sampling.Gaussian(2, 2.0).log_prob(x), expected)
