"""Eigenvalue read-out after training: Rayleigh quotients or Rayleigh–Ritz, from quadrature or fresh
batches, and the norm-ratio convergence diagnostic of NestedLoRA."""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..losses.base import SpectralLoss
from ..numerics.quadrature import Quadrature
from ..operators.base import Operator
from .decomposition import Decomposition, Model, decomposition_of
from .result import NORM_RATIO_RANGE

__all__ = ["JACKKNIFE_GROUPS", "NORM_RATIO_RANGE", "READOUTS", "Readout", "estimate_eigenvalues", "jackknife_stderr",
           "norm_ratio"]

READOUTS = ("rayleigh", "ritz")



@dataclass
class Readout:
    """Final eigen/singular value estimates and how model outputs map to modes.

    Mode ``j`` is ``(model(x)[:, order] @ mixing)[:, j] / norms[j]`` (``mixing`` None: the identity).
    """

    eigenvalues: Tensor  # (L,) of the learned T, descending
    order: Tensor  # (L,) int64
    norms: Tensor  # (L,)
    right_norms: Tensor | None = None
    mixing: Tensor | None = None  # (L, L)
    stderr: Tensor | None = None  # (L,) Monte Carlo standard errors of ``eigenvalues`` (None: not sampled i.i.d.)


#: at most this many groups of evaluation batches for the jackknife standard errors
JACKKNIFE_GROUPS = 16


def jackknife_stderr(parts: list[tuple[Tensor, ...]], estimate) -> Tensor | None:
    """Grouped jackknife standard errors of ``estimate(*sums)`` (an ``(L,)`` tensor of values) where
    ``sums`` are the element-wise sums of the per-batch tuples in ``parts`` (i.i.d. batches). The batches
    are pooled into ``G = min(len(parts), JACKKNIFE_GROUPS)`` groups; with ``θ_i`` the estimate without
    group ``i``, ``se² = (G - 1)/G Σ (θ_i - θ̄)²``. None with fewer than two batches."""
    groups = min(len(parts), JACKKNIFE_GROUPS)
    if groups < 2:
        return None
    bounds = [round(i * len(parts) / groups) for i in range(groups + 1)]
    pooled = [tuple(sum(t) for t in zip(*parts[lo:hi])) for lo, hi in itertools.pairwise(bounds)]
    total = tuple(sum(t) for t in zip(*pooled))
    leave_out = torch.stack([estimate(*(a - b for a, b in zip(total, g))) for g in pooled])  # (G, L)
    spread = ((leave_out - leave_out.mean(0)) ** 2).sum(0)
    return (spread * (groups - 1) / groups).sqrt()


def check_readout(readout: str, decomposition: Decomposition) -> None:
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; valid: {', '.join(READOUTS)}")
    if decomposition.is_svd and readout == "ritz":
        raise ValueError("the 'ritz' readout is for self-adjoint operators (EVD); use 'rayleigh' for SVD")


def estimate_eigenvalues(model: Model, op: Operator, num_batches: int, batch_size: int,
                         generator: torch.Generator, dtype: torch.dtype, readout: str = "rayleigh") -> Readout:
    """Eigenvalue estimates of the learned ``T``: integrated by ``op.evaluation_quadrature()`` when the
    operator has one (deterministic; e.g. the hydrogen and oscillator presets), else from fresh batches
    (``op.evaluation_batches``: ``num_batches`` random batches, the whole population for finite
    operators), pooled over batches.

    ``stderr``: when the batches are i.i.d. samples (:meth:`~Operator.evaluation_is_iid`), the grouped
    jackknife standard errors of the sorted estimates (:func:`jackknife_stderr`): the read-out's own Monte
    Carlo error, not the model's error; None for quadrature and whole-population read-outs.

    ``"rayleigh"``: per-mode quotients ``Σ f·Tf / Σ f²`` (SVD: ``Σ g·Tf / sqrt(Σ f² Σ g²)``), modes
    sorted descending. ``"ritz"`` (EVD only): Rayleigh–Ritz in the learned span, the generalized
    eigenproblem ``sym(A) c = λ B c`` with ``A = E[f Tfᵀ]``, ``B = E[f fᵀ]``: the best estimates the span
    allows (each ≤ the true eigenvalue of ``T`` up to sampling error, by interlacing), and mode
    functions ``f c`` that undo mixing between modes.
    """
    decomposition = decomposition_of(model)
    check_readout(readout, decomposition)
    if decomposition.is_svd:
        return _svd_readout(model, op, num_batches, batch_size, generator, dtype)
    rule = op.evaluation_quadrature()
    if rule is not None:
        return _evd_readout(*_quadrature_moments(model, op, rule, dtype), readout)
    parts = []  # per batch: Σ f Tfᵀ, Σ f fᵀ (L, L) and the count
    with torch.no_grad():
        for x in op.evaluation_batches(num_batches, batch_size, generator, dtype, False):
            fx, tfx = op.apply(model, x)
            fx, tfx = fx.double(), tfx.double()
            parts.append((fx.T @ tfx, fx.T @ fx, torch.tensor(float(x.shape[0]), dtype=torch.float64)))
    a, b, count = (sum(t) for t in zip(*parts))
    est = _evd_readout(a / count, b / count, readout)
    if op.evaluation_is_iid(num_batches, batch_size, False):
        est.stderr = jackknife_stderr(parts, lambda a, b, n: _evd_readout(a / n, b / n, readout).eigenvalues)
    return est


def _svd_readout(model: tuple[nn.Module, nn.Module], op: Operator, num_batches: int, batch_size: int,
                 generator: torch.Generator, dtype: torch.dtype) -> Readout:
    """Per-mode ``Σ g·Tf / sqrt(Σ f² Σ g²)`` pooled over :meth:`~Operator.evaluation_batches` pairs."""
    parts = []  # per batch: Σ g·Tf, Σ f², Σ g² (L,) and the counts of x and y
    with torch.no_grad():
        for x, y in op.evaluation_batches(num_batches, batch_size, generator, dtype, True):
            fx, gy, tfy, _ = op.apply_svd(model[0], model[1], x, y)
            parts.append(((gy * tfy).sum(0).double(), (fx * fx).sum(0).double(), (gy * gy).sum(0).double(),
                          torch.tensor(float(x.shape[0]), dtype=torch.float64),
                          torch.tensor(float(y.shape[0]), dtype=torch.float64)))

    def values(cross: Tensor, ff: Tensor, gg: Tensor, nx: Tensor, ny: Tensor) -> Tensor:
        return cross / ny / ((ff / nx) * (gg / ny)).sqrt()

    sums = tuple(sum(t) for t in zip(*parts))
    _, ff, gg, nx, ny = sums
    norms, right = (ff / nx).sqrt(), (gg / ny).sqrt()
    value = values(*sums)
    order = torch.argsort(value, descending=True)
    stderr = None
    if op.evaluation_is_iid(num_batches, batch_size, True):
        stderr = jackknife_stderr(parts, lambda *t: values(*t).sort(descending=True).values)
    return Readout(value[order], order, norms[order], right[order], stderr=stderr)


def _quadrature_moments(model: nn.Module, op: Operator, rule: Quadrature, dtype: torch.dtype,
                        chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """``A = E_p[f Tfᵀ]`` and ``B = E_p[f fᵀ]`` integrated by ``rule`` (weights for ``L²(p)``)."""
    a = b = 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(rule), chunk):
            x = rule.points[i : i + chunk].to(device=device, dtype=dtype)
            w = rule.weights[i : i + chunk].to(device=device, dtype=torch.float64).unsqueeze(1)
            fx, tfx = op.apply(model, x)
            fx, tfx = fx.double(), tfx.double()
            a = a + fx.T @ (w * tfx)
            b = b + fx.T @ (w * fx)
    return a, b


def _evd_readout(a: Tensor, b: Tensor, readout: str) -> Readout:
    """Rayleigh quotients or Rayleigh–Ritz from ``A = E[f Tfᵀ]`` and ``B = E[f fᵀ]``, each (L, L)."""
    if readout == "rayleigh":
        values = a.diagonal() / b.diagonal()
        order = torch.argsort(values, descending=True)
        return Readout(values[order], order, b.diagonal()[order].sqrt())
    chol = torch.linalg.cholesky(b)  # B = R Rᵀ
    inv = torch.linalg.solve_triangular(chol, torch.eye(b.shape[0], dtype=b.dtype, device=b.device), upper=False)
    values, vecs = torch.linalg.eigh(inv @ (0.5 * (a + a.T)) @ inv.T)
    mixing = (inv.T @ vecs).flip(1)  # (L, L), columns: Ritz coefficients, descending; cᵀ B c = 1
    ident = torch.arange(b.shape[0], device=b.device)
    return Readout(values.flip(0), ident, torch.ones_like(values), mixing=mixing)


def norm_ratio(loss: SpectralLoss, est: Readout, decomposition: Decomposition, readout: str) -> Tensor | None:
    """``‖f_l‖² / λ_l`` per mode (SVD: ``‖f_l‖‖g_l‖ / σ_l``), 1 at the NestedLoRA optimum; warns about modes
    outside :data:`NORM_RATIO_RANGE`. None where it means nothing (other losses, the Ritz read-out)."""
    if not loss.norms_are_eigenvalues or readout != "rayleigh":
        return None
    learned = decomposition.learned_from_norms(est.norms, est.right_norms)
    ratio = (learned / est.eigenvalues).cpu()
    lo, hi = NORM_RATIO_RANGE
    bad = [(i, r) for i, r in enumerate(ratio.tolist()) if not lo <= r <= hi]
    if bad:
        listed = ", ".join(f"{i} ({r:.3g})" for i, r in bad)
        warnings.warn(
            f"modes {listed} look unconverged: squared norm / eigenvalue far from 1 (its value at the NestedLoRA "
            "optimum), so their eigenvalue estimates are unreliable; a low ratio is typical of a mode stuck near "
            "f = 0 or absorbing the residual of earlier modes. Train longer, or see docs/hydrogen-study.md",
            RuntimeWarning, stacklevel=3)
    return ratio
