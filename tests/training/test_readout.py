"""Final eigenvalue read-outs: deterministic quadrature for the presets, Monte Carlo otherwise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import neuralsvd as nsvd
from neuralsvd.operators import HarmonicOscillator, Hydrogen2D


class _Exact(nn.Module):
    """The model of the operator's exact eigenfunctions (``ψ`` over the operator's map to ``ψ``: ``√p``, times
    the cusp factor at a charge), times a (trainable, unused) scale."""

    def __init__(self, op, num_modes):
        super().__init__()
        self.op, self.num_modes = op, num_modes
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x):
        psi = self.op.exact_eigenfunctions(x.double(), self.num_modes)
        to_psi = self.op.eigenfunctions_from_model(torch.ones_like(psi[:, :1]), x.double())  # (n, 1)
        return (self.scale * psi / to_psi).to(x.dtype)


@pytest.mark.parametrize("op,num_modes", [(Hydrogen2D(), 9), (HarmonicOscillator(2), 6)])
def test_quadrature_readout_of_exact_functions_is_exact(op, num_modes):
    """Through the operator's own Laplacian (generic jvp path) and its evaluation quadrature, the exact
    eigenfunctions read out their exact energies, Coulomb singularity included, with no sampling noise."""
    model = _Exact(op, num_modes)
    res = nsvd.fit(model, op, nsvd.NestedLoRA(num_modes), steps=0, batch_size=8, progress=False, dtype=torch.float64)
    torch.testing.assert_close(res.eigenvalues, op.exact_eigenvalues(num_modes), rtol=1e-8, atol=0)


def test_monte_carlo_readout_without_a_quadrature():
    """A user potential (no quadrature): pooled Monte Carlo Rayleigh quotients, still exact for exact
    eigenfunctions (Tf = λf pointwise), from eval_batches fresh batches."""
    osc = HarmonicOscillator(2)
    op = nsvd.operators.Schrodinger(lambda x: (x * x).sum(-1), 2, shift=16.0, sampler=osc.sampler)
    assert op.evaluation_quadrature() is None
    res = nsvd.fit(_Exact(osc, 3), op, nsvd.NestedLoRA(3), steps=0, batch_size=8, progress=False,
                   dtype=torch.float64, eval_batches=2, eval_batch_size=256)
    torch.testing.assert_close(res.eigenvalues, osc.exact_eigenvalues(3), rtol=1e-10, atol=0)


class _Gaussians(nn.Module):
    """Fixed non-eigen functions ``exp(-a_l x²)`` (their Rayleigh quotients vary from sample to sample)."""

    def __init__(self, widths):
        super().__init__()
        self.a = nn.Parameter(torch.as_tensor(widths, dtype=torch.float64))

    def forward(self, x):
        return torch.exp(-self.a * (x.double() ** 2).sum(-1, keepdim=True)).to(x.dtype)  # (n, L)


def test_jackknife_of_a_mean_is_the_standard_error_of_the_mean():
    """For a linear statistic with one group per batch the jackknife is exactly s / sqrt(K)."""
    from neuralsvd.training.readout import jackknife_stderr

    values = torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # (K, L)
    parts = [(v, torch.tensor(1.0, dtype=torch.float64)) for v in values]
    se = jackknife_stderr(parts, lambda total, n: total / n)
    torch.testing.assert_close(se, values.std(0) / 12 ** 0.5, rtol=1e-12, atol=0)
    assert jackknife_stderr(parts[:1], lambda total, n: total / n) is None


def test_readout_stderr_matches_the_spread_over_independent_readouts():
    """A user potential read out by Monte Carlo: ``eigenvalue_stderr`` of one read-out agrees with the
    standard deviation of the read-out over 40 independent evaluation seeds (an independent measure)."""
    from neuralsvd.training.readout import estimate_eigenvalues

    op = nsvd.operators.Schrodinger(lambda x: (x * x).sum(-1) + 0.3 * x[:, 0] ** 4, 1, shift=20.0,
                                    sampler=nsvd.sampling.Gaussian(dim=1, std=1.5))
    model = _Gaussians([0.2, 0.9])
    reads = [estimate_eigenvalues(model, op, 32, 256, torch.Generator().manual_seed(s), torch.float64)
             for s in range(40)]
    spread = torch.stack([r.eigenvalues for r in reads]).std(0)  # (L,)
    stderr = torch.stack([r.stderr for r in reads]).mean(0)  # (L,)
    assert bool((spread > 0).all())
    ratio = stderr / spread
    assert bool(((ratio > 0.75) & (ratio < 1.33)).all()), ratio


@pytest.mark.filterwarnings("ignore:modes .* look unconverged")
def test_fit_reports_stderr_in_the_reporting_convention_and_none_when_not_sampled():
    """``FitResult.eigenvalue_stderr``: energies' errors for a Schrödinger read-out by Monte Carlo (the
    map E = shift - λ keeps their size), None for a quadrature read-out and for a whole dense matrix."""
    from neuralsvd.training.readout import estimate_eigenvalues

    op = nsvd.operators.Schrodinger(lambda x: (x * x).sum(-1), 1, shift=20.0, scale=2.0,
                                    sampler=nsvd.sampling.Gaussian(dim=1, std=1.5))
    model = _Gaussians([0.2, 0.9])
    res = nsvd.fit(model, op, nsvd.NestedLoRA(2), steps=0, batch_size=8, progress=False, dtype=torch.float64,
                   eval_batches=16, eval_batch_size=128, seed=3)
    direct = estimate_eigenvalues(model, op, 16, 128, torch.Generator().manual_seed(3 + 1_000_003), torch.float64)
    torch.testing.assert_close(res.eigenvalue_stderr, direct.stderr / 2.0)  # E = shift - λ/scale
    assert res.eigenvalue_stderr.shape == (2,) and bool((res.eigenvalue_stderr > 0).all())
    assert nsvd.evaluate(res)["eigenvalue_stderr"] == res.eigenvalue_stderr.tolist()

    osc = HarmonicOscillator(1)
    quad = nsvd.fit(_Exact(osc, 2), osc, nsvd.NestedLoRA(2), steps=0, batch_size=8, progress=False,
                    dtype=torch.float64)
    assert quad.eigenvalue_stderr is None
    matrix = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64))
    dense = nsvd.fit(nsvd.models.Tabular(4, 2).double(), nsvd.operators.DenseOperator(matrix), nsvd.NestedLoRA(2),
                     steps=0, batch_size=4, progress=False)
    assert dense.eigenvalue_stderr is None
