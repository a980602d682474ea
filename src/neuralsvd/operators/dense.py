"""Finite operators given by a matrix, acting on functions of indices.

Functions live on ``{0..n-1}`` with the **uniform** measure (``⟨a, b⟩ = mean_i a_i b_i``), sampled by
:class:`~neuralsvd.sampling.Index`. With that measure a symmetric ``A (n, n)`` acts as
``(Tf)(i) = Σ_j A_ij f(j)`` and its eigenvalues are those of ``A``; eigenfunctions are ``sqrt(n) v``.
A rectangular ``A (m, n)`` maps functions on ``n`` input indices to functions on ``m`` output indices,
scaled so that the singular values are those of ``A``: with ``A = U S Vᵀ`` the left singular functions
(input side, the paper's ``φ``) are ``sqrt(n) V`` and the right ones (output side, ``ψ``) ``sqrt(m) U``.
``T f`` is computed exactly from ``f`` on all indices (no sampling noise in the operator term).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..numerics.quadrature import Quadrature
from ..numerics.sampling import Index
from .base import CrossOperator, Function, check_model_output

__all__ = ["DenseOperator"]


class DenseOperator(CrossOperator):
    """A finite matrix as an operator: EVD if it is square and symmetric, SVD otherwise.

    Batches are index samples (:class:`~neuralsvd.sampling.Index`, ``replacement`` as there); a
    ``batch_size`` of at least the matrix size (both sides for SVD) trains on the whole population, with
    exact second moments (:meth:`batch_is_population`).
    """

    def __init__(self, matrix: Tensor | np.ndarray, symmetric_atol: float = 1e-12, replacement: bool = False):
        super().__init__()
        a = torch.as_tensor(matrix)
        if a.ndim != 2 or a.numel() == 0 or not a.is_floating_point():
            raise ValueError(f"matrix must be a non-empty 2D float array (m, n), got shape {tuple(a.shape)} dtype {a.dtype}")
        if not bool(torch.isfinite(a).all()):
            raise ValueError("matrix contains non-finite entries")
        self.register_buffer("matrix", a)
        m, n = a.shape
        self.self_adjoint = m == n and bool(torch.allclose(a, a.T, rtol=0, atol=symmetric_atol))
        self.in_sampler, self.out_sampler = Index(n, replacement), Index(m, replacement)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)

    def sample(self, n, generator=None, dtype=None):
        return self.in_sampler.sample(n, generator)

    def sample_pair(self, n, generator=None, dtype=None):
        return self.in_sampler.sample(n, generator), self.out_sampler.sample(n, generator)

    def batch_is_population(self, batch_size, svd=False):
        samplers = (self.in_sampler, self.out_sampler) if svd else (self.in_sampler,)
        return all(s.is_population(batch_size) for s in samplers)

    def evaluation_is_iid(self, num_batches, batch_size, svd=False):
        return False

    def evaluation_batches(self, num_batches, batch_size, generator, dtype, svd=False):
        """The whole population once: estimates are exact, not sampled."""
        device = generator.device if generator is not None else self.matrix.device
        m, n = self.shape
        x = torch.arange(n, device=device)
        yield (x, torch.arange(m, device=device)) if svd else x

    def _apply_operator(self, f: Function, x: Tensor) -> tuple[Tensor, Tensor]:
        fx = f(x)
        check_model_output(fx, x.shape[0])
        with torch.no_grad():
            full = f(torch.arange(self.shape[1], device=x.device))  # (n, L)
            tfx = (self.matrix.to(full) @ full)[x]
        return fx, tfx

    def _apply_operator_svd(self, f: Function, g: Function, x: Tensor, y: Tensor):
        m, n = self.shape
        fx, gy = f(x), g(y)
        check_model_output(fx, x.shape[0], "left model")
        check_model_output(gy, y.shape[0], "right model")
        with torch.no_grad():
            a = self.matrix.to(fx)
            f_all = f(torch.arange(n, device=x.device))  # (n, L)
            g_all = g(torch.arange(m, device=y.device))  # (m, L)
            tfy = (math.sqrt(m / n) * (a @ f_all))[y]
            tadj_gx = (math.sqrt(n / m) * (a.T @ g_all))[x]
        return fx, gy, tfy, tadj_gx

    # -- closed forms (from LAPACK) -------------------------------------------------------------------
    def _decomposition(self) -> tuple[Tensor, Tensor, Tensor]:
        a = self.matrix.double().cpu()
        if self.self_adjoint:
            w, v = torch.linalg.eigh(a)
            return w.flip(0), v.flip(1), v.flip(1)
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        return s, vh.T, u

    def _check_modes(self, num_modes: int) -> None:
        if num_modes > min(self.shape):
            raise ValueError(f"num_modes={num_modes} exceeds the rank bound min{self.shape}")

    def exact_eigenvalues(self, num_modes: int) -> Tensor:
        self._check_modes(num_modes)
        return self._decomposition()[0][:num_modes]

    def exact_eigenfunctions(self, x: Tensor, num_modes: int) -> Tensor:
        self._check_modes(num_modes)
        return math.sqrt(self.shape[1]) * self._decomposition()[1][x.reshape(-1).cpu(), :num_modes].to(x.device)

    def exact_right_functions(self, y: Tensor, num_modes: int) -> Tensor:
        self._check_modes(num_modes)
        return math.sqrt(self.shape[0]) * self._decomposition()[2][y.reshape(-1).cpu(), :num_modes].to(y.device)

    def quadrature(self) -> Quadrature:
        n = self.shape[1]
        return Quadrature(torch.arange(n), torch.full((n,), 1.0 / n, dtype=torch.float64))

    def right_quadrature(self) -> Quadrature:
        m = self.shape[0]
        return Quadrature(torch.arange(m), torch.full((m,), 1.0 / m, dtype=torch.float64))
