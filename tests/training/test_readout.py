"""Final eigenvalue read-outs: deterministic quadrature for the presets, Monte Carlo otherwise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import neuralsvd as nsvd
from neuralsvd.operators import HarmonicOscillator, Hydrogen2D


class _Exact(nn.Module):
    """f = ψ/√p for the operator's exact eigenfunctions, times a (trainable, unused) scale."""

    def __init__(self, op, num_modes):
        super().__init__()
        self.op, self.num_modes = op, num_modes
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x):
        psi = self.op.exact_eigenfunctions(x.double(), self.num_modes)
        return (self.scale * psi / torch.exp(0.5 * self.op.sampler.log_prob(x.double())).unsqueeze(-1)).to(x.dtype)


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
