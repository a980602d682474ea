"""The operator contract, run by every operator class: symmetry ``⟨f, Tg⟩ = ⟨Tf, g⟩`` (SVD:
``⟨g, Tf⟩ = ⟨T*g, f⟩``) on its quadrature or population, and its exact pairs satisfy ``T φ = λ φ``
(SVD: ``T φ = σ ψ``) where it has them. A new operator class without a case here fails
:func:`test_every_operator_class_has_a_case`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralsvd import models, operators
from neuralsvd.numerics import quadrature, sampling
from neuralsvd.operators.base import CrossOperator, Operator
from neuralsvd.operators.kernels import RBF

F64 = torch.float64
L = 3


def _symmetric_matrix(n: int) -> torch.Tensor:
    a = torch.from_numpy(np.random.default_rng(0).normal(size=(n, n)))
    return a + a.T


def _graph() -> operators.GraphOperator:
    rng = np.random.default_rng(1)
    a = (rng.random((12, 12)) < 0.4).astype(float)
    a = np.triu(a, 1)
    a = a + a.T + np.diag(np.ones(11), 1) + np.diag(np.ones(11), -1)  # a path keeps it connected
    return operators.GraphOperator(a)


def _walks() -> np.ndarray:
    """3 trajectories of 300 frames in 2D, ``(3, 300, 2)``."""
    return 0.1 * np.random.default_rng(6).normal(size=(3, 300, 2)).cumsum(1)


def _schrodinger_rule(op: operators.Schrodinger) -> quadrature.Quadrature:
    """A Lebesgue box rule turned into weights for the operator's values (``Σ w_dx q a b``, ``q`` the draws' density)."""
    rule = quadrature.box([9.0] * op.dim, panels=12, nodes=16)
    return quadrature.Quadrature(rule.points, rule.weights * op.draws.log_prob(rule.points).exp())


# name -> (operator factory, tolerance of the symmetry check, tolerance of the exact pairs or None)
CASES = {
    "Schrodinger": (lambda: operators.Schrodinger(lambda x: (x * x).sum(1), 2, shift=10.0,
                                                  sampler=sampling.Gaussian(2, 2.0)), 1e-6, None),
    "HarmonicOscillator": (lambda: operators.HarmonicOscillator(2), 1e-6, 1e-6),
    "Hydrogen2D": (lambda: operators.Hydrogen2D(sampler=sampling.RadialExponential(2, 2.0), model_output="psi"),
                   1e-4, 1e-4),  # a polar rule: the cusp at the nucleus limits its accuracy
    "Hydrogen3D": (lambda: operators.Hydrogen3D(model_output="psi"), 1e-3, 1e-4),  # the envelope's kink at r = 0
    "BoxLaplacian": (lambda: operators.BoxLaplacian(2), 1e-10, 1e-10),  # functions that vanish on the faces
    "DenseOperator": (lambda: operators.DenseOperator(_symmetric_matrix(9)), 1e-12, 1e-10),
    "DenseOperator-rectangular": (lambda: operators.DenseOperator(
        torch.from_numpy(np.random.default_rng(2).normal(size=(7, 5)))), 1e-12, 1e-10),
    "KernelOperator": (lambda: operators.KernelOperator(RBF(0.5), torch.from_numpy(
        np.random.default_rng(3).normal(size=(40, 2)))), 1e-12, 1e-8),
    "GaussianRBF": (lambda: operators.GaussianRBF(dim=1, gamma=2.0), 1e-12, 1e-3),
    "GraphOperator": (_graph, 1e-12, 1e-8),
    "CycleGraph": (lambda: operators.CycleGraph(10), 1e-12, 1e-10),
    "GridGraph": (lambda: operators.GridGraph(3, 4), 1e-12, 1e-10),
    "PairedSamples": (lambda: operators.PairedSamples(*torch.randn(2, 200, 2, generator=torch.Generator().manual_seed(4),
                                                                   dtype=F64)), 1e-12, None),
    "GaussianPairs": (lambda: operators.GaussianPairs.bivariate(0.6, proposal_scale=1.5), 1e-12, 0.05),
    # lagged pairs of 3 random-walk trajectories: exactly symmetric (reversible) / adjoint (SVD) on the pairs
    "TrajectoryOperator": (lambda: operators.TrajectoryOperator(_walks(), 3), 1e-12, None),
    "TrajectoryOperator-nonreversible": (lambda: operators.TrajectoryOperator(_walks(), 3, reversible=False),
                                         1e-12, None),
}


def _concrete_classes(base: type) -> set[type]:
    out = set()
    for sub in base.__subclasses__():
        out |= _concrete_classes(sub)
        if not sub.__name__.startswith("_") and sub.__module__.startswith("neuralsvd."):
            out.add(sub)
    return out


def test_every_operator_class_has_a_case():
    abstract = {CrossOperator, operators.PairedOperator}
    names = {name.split("-")[0] for name in CASES}
    missing = sorted(c.__name__ for c in _concrete_classes(Operator) - abstract if c.__name__ not in names)
    assert not missing, f"operator classes without a contract case: {missing}"


def _points_and_weights(op: Operator, svd: bool):
    """The operator's own rule in ``L²(p)``: its evaluation quadrature, else its population or
    evaluation batch (uniform weights), else (a Schrödinger operator without one) a box rule."""
    rule = None if svd else op.evaluation_quadrature()
    if rule is not None:
        return rule.points.to(F64), rule.weights.to(F64)
    if isinstance(op, operators.Schrodinger):
        rule = _schrodinger_rule(op)
        return rule.points, rule.weights
    batch = next(iter(op.evaluation_batches(1, 4096, torch.Generator().manual_seed(0), F64, svd)))
    n = (batch[0] if svd else batch).shape[0]
    return batch, torch.full((n,), 1.0 / n, dtype=F64)


def _random_functions(op: Operator, in_features: int | None, num_points: int | None) -> torch.nn.Module:
    torch.manual_seed(5)
    if num_points is not None:  # functions of indices
        return models.Tabular(num_points, L).double()
    if isinstance(op, operators.BoxLaplacian):  # the Dirichlet condition is the model's
        return models.MLP(in_features, L, hidden=(16,), box=(0.0, 1.0)).double()
    return models.MLP(in_features, L, hidden=(16,), envelope=True, envelope_scale=2.0).double()


def _index_size(op: Operator, side: str = "in") -> int | None:
    if isinstance(op, operators.DenseOperator):
        return op.shape[1] if side == "in" else op.shape[0]
    if isinstance(op, operators.GraphOperator):
        return op.num_nodes
    return None


@pytest.mark.parametrize("name", sorted(CASES))
def test_symmetry(name):
    make, tol, _ = CASES[name]
    op = make()
    if op.self_adjoint:
        x, w = _points_and_weights(op, svd=False)
        f = _random_functions(op, getattr(op, "dim", None), _index_size(op))
        fx, tfx = op.apply(f, x)
        a = fx.T.double() @ (w.unsqueeze(1) * tfx.double())  # (L, L): ⟨f_l, T f_m⟩
        assert float((a - a.T).abs().max()) <= tol * float(a.abs().max())
        return
    (x, y), w = _points_and_weights(op, svd=True)
    wy = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=F64)
    dx, dy = getattr(op, "dim_x", None), getattr(op, "dim_y", None)
    f = _random_functions(op, dx, _index_size(op, "in"))
    g = _random_functions(op, dy, _index_size(op, "out"))
    fx, gy, tfy, tadj_gx = op.apply_svd(f, g, x, y)
    forward = gy.T.double() @ (wy.unsqueeze(1) * tfy.double())  # ⟨g_l, T f_m⟩ on the output side
    adjoint = (fx.T.double() @ (w.unsqueeze(1) * tadj_gx.double())).T  # ⟨T* g_l, f_m⟩ on the input side
    assert float((forward - adjoint).abs().max()) <= tol * float(forward.abs().max())


def _model_space(op: Operator, exact):
    """``x -> f(x)`` with ``op.eigenfunctions_from_model(f(x), x) = exact(x)`` (the maps are pointwise
    scalings), as a callable the operator can differentiate."""
    def f(x):
        values = exact(x)
        scale = op.eigenfunctions_from_model(torch.ones_like(values[:, :1]), x)
        return values / scale
    return f


@pytest.mark.parametrize("name", sorted(n for n, case in CASES.items() if case[2] is not None))
def test_exact_pairs(name):
    make, _, tol = CASES[name]
    op = make()
    exact_values = op.exact_eigenvalues(L).double()
    if op.self_adjoint:
        x, w = _points_and_weights(op, svd=False)
        f = _model_space(op, lambda p: op.exact_eigenfunctions(p, L).to(p.dtype if p.is_floating_point() else F64))
        fx, tfx = op.apply(f, x)
        fx, tfx, w = fx.double(), tfx.double(), w.unsqueeze(1)
        learned = (w * fx * tfx).sum(0) / (w * fx * fx).sum(0)  # Rayleigh quotients of T
        residual = ((w * (tfx - learned * fx) ** 2).sum(0) / (w * (learned * fx) ** 2).sum(0)).sqrt()
        assert float(residual.max()) <= tol, residual
        torch.testing.assert_close(op.eigenvalues_from_learned(learned), exact_values, rtol=tol, atol=tol)
        return
    (x, y), _ = _points_and_weights(op, svd=True)
    if isinstance(op, operators.GaussianPairs):  # Monte Carlo over pairs: ⟨ψ_l, T φ_l⟩ = σ_l
        x, y = op.sample_pair(40_000, torch.Generator().manual_seed(0), F64)
    fx, gy, tfy, _ = op.apply_svd(lambda p: op.exact_eigenfunctions(p, L), lambda p: op.exact_right_functions(p, L), x, y)
    if isinstance(op, operators.DenseOperator):
        torch.testing.assert_close(tfy, gy * exact_values, rtol=tol, atol=tol)  # T φ = σ ψ pointwise
    else:
        torch.testing.assert_close((gy * tfy).mean(0), exact_values, rtol=tol, atol=tol)
