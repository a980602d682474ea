"""The Dirichlet Laplacian on [0, 1]^d: closed forms through the operator, the boundary factor of the models,
the quadrature rules and the metrics on them."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from neuralsvd.models import ParallelMLP
from neuralsvd.models.separable import SeparableMLP
from neuralsvd.numerics.autodiff import _exact_functional, laplacian
from neuralsvd.numerics.sampling import UniformBox
from neuralsvd.operators import BoxLaplacian
from neuralsvd.operators.box_laplacian import box_multi_indices
from neuralsvd.training.evaluation import evaluate
from neuralsvd.training.result import FitResult

F64 = torch.float64


def _interior(n, d, seed=0):
    return torch.rand(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("d,num", [(1, 4), (3, 8), (5, 17)])
def test_multi_indices_against_brute_force(d, num):
    brute = sorted(itertools.product(range(1, 5), repeat=d), key=lambda k: (sum(i * i for i in k), k))
    assert box_multi_indices(d, num) == brute[:num]


def test_spectrum_shells():
    ev = BoxLaplacian(5).exact_eigenvalues(17) / math.pi**2
    expected = torch.tensor([5.0] + [8.0] * 5 + [11.0] * 10 + [13.0], dtype=F64)
    torch.testing.assert_close(ev, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("d", [2, 5, 10])
def test_exact_eigenfunctions_through_operator(d):
    """T ψ = (shift - λ) ψ by the library's Laplacian (nested jvp, float64), and ψ = 0 on the faces."""
    op = BoxLaplacian(d)
    L = 2 * d + 1
    x = _interior(64, d)
    fx, tfx = op.apply(lambda y: op.exact_eigenfunctions(y, L), x)
    expected = (op.shift - op.exact_eigenvalues(L)) * fx
    torch.testing.assert_close(tfx, expected, rtol=1e-10, atol=1e-9)
    face = x.clone()
    face[:, 0] = torch.where(torch.arange(64) % 2 == 0, 0.0, 1.0).to(F64)
    assert op.exact_eigenfunctions(face, L).abs().max() < 1e-12


def test_learned_eigenvalues_are_laplacian_eigenvalues():
    op = BoxLaplacian(3, shift=40.0, scale=2.0)
    assert op.eigenvalues_from_learned(torch.tensor([2.0 * (40.0 - 3 * math.pi**2)])).item() == pytest.approx(
        3 * math.pi**2)


@pytest.mark.parametrize("make", [
    lambda d: ParallelMLP(d, 3, hidden=(8, 8), box=(0.0, 1.0)),
    lambda d: SeparableMLP(d, 3, rank=2, hidden=(8, 8), box=(0.0, 1.0)),
], ids=["parallel-mlp", "separable"])
@pytest.mark.parametrize("d", [1, 4])
def test_box_factor_vanishes_on_faces_and_jets_match_autodiff(make, d):
    torch.manual_seed(0)
    model = make(d).double()
    x = _interior(20, d)
    for axis, side in itertools.product(range(d), (0.0, 1.0)):
        face = x.clone()
        face[:, axis] = side
        assert model(face).abs().max() < 1e-12
    value, grad, lap = laplacian(model, x)
    ref = _exact_functional(lambda y: model(y), x)
    for a, b in zip((value, grad, lap), ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_uniform_box_with_center():
    s = UniformBox(4, 0.5, center=0.5)
    x = s.sample(1000, torch.Generator().manual_seed(0), F64)
    assert x.min() >= 0 and x.max() <= 1
    assert torch.equal(s.log_prob(x), torch.zeros(1000, dtype=F64))
    assert s.log_prob(torch.tensor([[1.2, 0.5, 0.5, 0.5]], dtype=F64)).item() == -math.inf


class _RotatedExact(torch.nn.Module):
    """The exact eigenfunctions mixed by an orthogonal ``q`` inside the first shell (a valid learned basis)."""

    def __init__(self, op, num_modes):
        super().__init__()
        self.op, self.num_modes = op, num_modes
        q = torch.eye(num_modes, dtype=F64)
        q[1:, 1:], _ = torch.linalg.qr(torch.randn(num_modes - 1, num_modes - 1, dtype=F64,
                                                   generator=torch.Generator().manual_seed(1)))
        self.register_buffer("q", q)

    def forward(self, x):
        return self.op.exact_eigenfunctions(x, self.num_modes) @ self.q.to(x)


@pytest.mark.parametrize("d,tol", [(3, 1e-12), (5, 1e-7), (10, 0.3)])
def test_quadrature_error_and_zero_distance_for_exact_functions(d, tol):
    """The exact functions (rotated in the first shell) as a 'learned' result: zero distances under every
    rule (the true functions are orthonormalized under the rule), and the rule's own error reported."""
    op = BoxLaplacian(d, quadrature_points=2**13)
    L = d + 1
    result = FitResult(model=_RotatedExact(op, L), operator=op, eigenvalues=op.exact_eigenvalues(L),
                       learned_eigenvalues=torch.zeros(L), order=torch.arange(L), norms=torch.ones(L, dtype=F64),
                       history={}, steps=0, wall_seconds=0.0, steps_per_second=math.nan)
    m = evaluate(result)
    assert m["mean_eigenvalue_relative_error"] == 0.0
    assert m["subspace_distance_all"] < 1e-9 and m["subspace_distance_avg"] < 1e-9
    assert m["quadrature_error"] < tol
    # the angle distance aligns unit-norm (not orthonormalized) learned functions: a second-order floor
    assert m["angle_distance"] <= max(m["quadrature_error"] ** 2, 1e-12)
    assert (d <= 5) == (m["quadrature_error"] < 1e-6)  # Sobol in 10D: a visible error, removed above


def test_distances_see_a_wrong_function_under_sobol():
    """Replacing one shell function by the next shell's is a subspace distance 1/5 of the shell, also in 10D."""
    op = BoxLaplacian(10, quadrature_points=2**13)

    class OneWrong(torch.nn.Module):
        def forward(self, x):
            f = op.exact_eigenfunctions(x, 12)
            return torch.cat([f[:, :10], f[:, 11:12]], 1)  # mode 10 replaced by mode 11 (second shell)

    L = 11
    result = FitResult(model=OneWrong(), operator=op, eigenvalues=op.exact_eigenvalues(L),
                       learned_eigenvalues=torch.zeros(L), order=torch.arange(L), norms=torch.ones(L, dtype=F64),
                       history={}, steps=0, wall_seconds=0.0, steps_per_second=math.nan)
    m = evaluate(result)
    assert m["subspace_distance_blocks"][1] == pytest.approx(0.1, abs=0.02)
    assert m["subspace_distance_all"] == pytest.approx(1 / 11, abs=0.02)
